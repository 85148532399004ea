//! A short-lived `qemu-storage-daemon` serving a stopped VM's disks over
//! QMP, so that backups of a stopped instance use the same QMP path as a
//! running one ([`crate::bitmaps`]): its persistent dirty bitmaps are
//! loaded from the qcow2 files, changed, and stored back when the daemon
//! quits. The daemon is addressed through a [`VmDir`] of its own (its QMP
//! socket and pidfile), so every QMP method of [`Qemu`] that takes a
//! `VmDir` works on it.
//!
//! It holds the disks' write locks while it runs, so a VM cannot start on
//! them meanwhile (its start fails and is retried); it dies with the
//! agent (parent-death signal) so a crashed agent never leaves a disk locked.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use crate::process::running_pid;
use crate::qmp::QmpClient;
use crate::{HypervisorError, Qemu, VmDir};

/// How long the daemon may take to open the disks and listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to store its bitmaps and exit after `quit`.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A disk file to open, under the block node name QEMU gives it in a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineDisk {
    /// `root`, or a data disk's id.
    pub node: String,
    /// The disk's qcow2 file (its backing chain is opened with it).
    pub path: PathBuf,
}

/// A running `qemu-storage-daemon`; stop it with [`StorageDaemon::stop`]
/// (dropping it kills the daemon, which may leave its bitmaps inconsistent).
#[derive(Debug)]
pub struct StorageDaemon {
    dir: VmDir,
    child: Option<tokio::process::Child>,
}

/// A chardev option value: QEMU's option syntax doubles commas.
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The daemon's command line.
fn daemon_args(dir: &VmDir, disks: &[OfflineDisk]) -> Result<Vec<OsString>, HypervisorError> {
    let mut args: Vec<OsString> = Vec::new();
    for d in disks {
        crate::validate_id(&d.node)?;
        let filename = d.path.to_str().filter(|_| d.path.is_absolute()).ok_or_else(|| {
            HypervisorError::InvalidConfig(format!("disk path {} must be an absolute UTF-8 path", d.path.display()))
        })?;
        let node = json!({
            "discard": "unmap",
            "driver": "qcow2",
            "file": {"discard": "unmap", "driver": "file", "filename": filename},
            "node-name": d.node,
        });
        args.push("--blockdev".into());
        args.push(node.to_string().into());
    }
    let sock = dir.qmp_socket();
    let sock = sock
        .to_str()
        .ok_or_else(|| HypervisorError::InvalidConfig(format!("{} is not valid UTF-8", sock.display())))?;
    args.push("--chardev".into());
    args.push(format!("socket,id=qmp,path={},server=on,wait=off", opt_escape(sock)).into());
    args.push("--monitor".into());
    args.push("chardev=qmp".into());
    args.push("--pidfile".into());
    args.push(dir.pidfile().into());
    Ok(args)
}

/// The last lines of the daemon's log, for an error message.
fn log_tail(dir: &VmDir) -> String {
    let text = std::fs::read_to_string(dir.qemu_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

impl StorageDaemon {
    /// Start the daemon at `binary` with `disks`, its socket, pidfile and
    /// log in `work` (created; a daemon left there before is stopped).
    pub async fn start(binary: &Path, work: &Path, disks: &[OfflineDisk]) -> Result<Self, HypervisorError> {
        std::fs::create_dir_all(work).map_err(|e| HypervisorError::io("create", work, e))?;
        let dir = VmDir::new(work).resolved()?;
        Self::stop_stale(&dir).await;
        let _ = std::fs::remove_file(dir.qmp_socket());
        let _ = std::fs::remove_file(dir.pidfile());
        let args = daemon_args(&dir, disks)?;
        let log_path = dir.qemu_log();
        let log = std::fs::File::create(&log_path).map_err(|e| HypervisorError::io("create", &log_path, e))?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log)).kill_on_drop(true);
        // SAFETY: prctl is a raw syscall, async-signal-safe; nothing is
        // allocated in the child. The daemon gets SIGTERM (and so stores
        // its bitmaps) when the agent dies, instead of locking the disks.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => {
                HypervisorError::MissingTool { tool: binary.display().to_string(), package: "qemu-system-common" }
            }
            _ => HypervisorError::BinaryNotFound { binary: binary.to_path_buf(), source },
        })?;
        let mut daemon = StorageDaemon { dir, child: Some(child) };
        let started = Instant::now();
        loop {
            if let Some(child) = daemon.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    daemon.child = None;
                    return Err(HypervisorError::StorageDaemon(format!(
                        "it exited ({status}) while opening the disks: {}",
                        log_tail(&daemon.dir)
                    )));
                }
            }
            if running_pid(&daemon.dir.pidfile()).is_some()
                && QmpClient::connect(&daemon.dir.qmp_socket(), Duration::from_secs(2)).await.is_ok()
            {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(HypervisorError::StorageDaemon(format!(
                    "it did not answer within {START_TIMEOUT:?}: {}",
                    log_tail(&daemon.dir)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        info!(dir = %daemon.dir.path().display(), disks = disks.len(), "storage daemon started");
        Ok(daemon)
    }

    /// Where its QMP socket and pidfile are: pass it where a VM's
    /// directory is taken.
    pub fn dir(&self) -> &VmDir {
        &self.dir
    }

    /// Quit it, so the disks are closed and their persistent bitmaps
    /// stored; killed if it does not exit in time (then an error).
    pub async fn stop(mut self) -> Result<(), HypervisorError> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let asked = match QmpClient::connect(&self.dir.qmp_socket(), Duration::from_secs(5)).await {
            Ok(mut c) => c.quit().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &asked {
            warn!(error = %e, "cannot ask the storage daemon to quit; terminating it");
            let _ = child.start_kill();
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() && asked.is_ok() => {
                info!("storage daemon stopped");
                Ok(())
            }
            Ok(Ok(status)) => Err(HypervisorError::StorageDaemon(format!(
                "it did not quit cleanly ({status}); its disks' bitmaps may be inconsistent: {}",
                log_tail(&self.dir)
            ))),
            Ok(Err(e)) => Err(HypervisorError::io("wait for", self.dir.pidfile(), e)),
            Err(_) => {
                let _ = child.kill().await;
                Err(HypervisorError::StorageDaemon(format!(
                    "it did not quit within {STOP_TIMEOUT:?} and was killed; its disks' bitmaps may be inconsistent"
                )))
            }
        }
    }

    /// Stop a daemon a previous agent left working in `work`, if any (it
    /// should have died with that agent).
    pub async fn stop_left_behind(work: &Path) {
        if let Ok(dir) = VmDir::new(work).resolved() {
            Self::stop_stale(&dir).await;
        }
    }

    /// A daemon a previous agent left in `dir`: asked to terminate, so it
    /// stores its bitmaps and lets go of the disks.
    async fn stop_stale(dir: &VmDir) {
        let pidfile = dir.pidfile();
        if let Some(pid) = running_pid(&pidfile) {
            warn!(pid, "stopping a storage daemon left behind");
            let _ = crate::process::signal(pid, libc::SIGTERM);
            if !crate::process::wait_gone(pid, &pidfile, STOP_TIMEOUT).await {
                let _ = crate::process::signal(pid, libc::SIGKILL);
                crate::process::wait_gone(pid, &pidfile, Duration::from_secs(5)).await;
            }
        }
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

impl Qemu {
    /// Open a stopped VM's disk files in a [`StorageDaemon`] working in `work`.
    pub async fn open_disks_offline(
        &self,
        work: &Path,
        disks: &[OfflineDisk],
    ) -> Result<StorageDaemon, HypervisorError> {
        StorageDaemon::start(self.storage_daemon_binary(), work, disks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let dir = VmDir::new("/w/a,b");
        let disks = [
            OfflineDisk { node: "root".into(), path: "/i/vm-1/disk.qcow2".into() },
            OfflineDisk { node: "vol-1".into(), path: "/v/vol-1.qcow2".into() },
        ];
        let args: Vec<String> =
            daemon_args(&dir, &disks).unwrap().into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(args[0], "--blockdev");
        let node: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(node["node-name"], "root");
        assert_eq!(node["file"]["filename"], "/i/vm-1/disk.qcow2");
        assert_eq!(args[4], "--chardev");
        assert!(args[5].contains("path=/w/a,,b/"), "{}", args[5]);
        assert_eq!(args[8], "--pidfile");
        assert!(daemon_args(&dir, &[OfflineDisk { node: "root".into(), path: "rel.qcow2".into() }]).is_err());
        assert!(daemon_args(&dir, &[OfflineDisk { node: "a b".into(), path: "/x.qcow2".into() }]).is_err());
    }
}
