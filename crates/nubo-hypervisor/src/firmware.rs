//! A VM's firmware and the devices that keep state beside its disk: UEFI
//! (OVMF from Debian's `ovmf` package) with its per-VM variable store,
//! Secure Boot, a TPM 2.0 (one `swtpm` process per VM, its state in the
//! instance directory) and the display (a VGA card served by VNC on a unix
//! socket). [`VmHardware`] is what a VM asks for; this module prepares the
//! files and processes before QEMU starts and stops `swtpm` after it.
//!
//! Both the variable store and the TPM state live in the instance
//! directory, so they survive stop and start. A live migration carries
//! both in QEMU's own migration stream (the pflash contents as RAM, which
//! the target writes back to its variable file once it runs; the TPM state
//! through swtpm's control channel), so the target only needs fresh files of
//! the same kind, which [`prepare`] makes as for a first start.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{HypervisorError, VmDir};

/// Where Debian's `ovmf` package puts the firmware.
pub const OVMF_DIR: &str = "/usr/share/OVMF";
/// The firmware code (read-only) without and with Secure Boot.
const OVMF_CODE: &str = "OVMF_CODE_4M.fd";
const OVMF_CODE_SECBOOT: &str = "OVMF_CODE_4M.secboot.fd";
/// The variable store templates: empty, and with Microsoft's keys enrolled
/// and Secure Boot turned on.
const OVMF_VARS: &str = "OVMF_VARS_4M.fd";
const OVMF_VARS_MS: &str = "OVMF_VARS_4M.ms.fd";
/// How long swtpm gets to create its control socket.
const SWTPM_WAIT: Duration = Duration::from_secs(5);

/// The virtual hardware beyond CPUs, memory, disks and NICs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmHardware {
    /// OVMF instead of SeaBIOS.
    pub uefi: bool,
    /// Secure Boot (UEFI only): the Secure Boot build of OVMF, SMM, and a
    /// variable store with Microsoft's keys enrolled.
    pub secure_boot: bool,
    /// A TPM 2.0 (CRB interface), emulated by swtpm.
    pub tpm: bool,
    /// A VGA card and a VNC server on `vnc.sock` in the instance directory.
    pub display: bool,
}

impl VmHardware {
    pub fn validate(&self) -> Result<(), HypervisorError> {
        if self.secure_boot && !self.uefi {
            return Err(HypervisorError::InvalidConfig("secure_boot needs UEFI firmware; set uefi too".to_string()));
        }
        Ok(())
    }
}

/// The read-only firmware code QEMU maps as the first flash chip.
pub fn ovmf_code(secure_boot: bool) -> PathBuf {
    Path::new(OVMF_DIR).join(if secure_boot { OVMF_CODE_SECBOOT } else { OVMF_CODE })
}

/// The template a VM's variable store is copied from on its first start.
pub fn ovmf_vars_template(secure_boot: bool) -> PathBuf {
    Path::new(OVMF_DIR).join(if secure_boot { OVMF_VARS_MS } else { OVMF_VARS })
}

fn missing_ovmf(path: PathBuf) -> HypervisorError {
    HypervisorError::MissingFile {
        what: "UEFI firmware (OVMF)",
        path,
        hint: "install Debian's ovmf package (apt-get install ovmf) on this host, or launch the instance with BIOS firmware",
    }
}

/// Before QEMU starts: checks that the firmware is installed, copies the
/// variable store template on the first start (later starts keep the
/// guest's variables), and starts swtpm when the VM has a TPM.
/// `cgroup_procs` is the VM's cgroup, which swtpm joins as QEMU does.
pub(crate) async fn prepare(
    dir: &VmDir,
    hw: &VmHardware,
    swtpm: &Path,
    cgroup_procs: Option<&std::ffi::CStr>,
) -> Result<(), HypervisorError> {
    hw.validate()?;
    if hw.uefi {
        let code = ovmf_code(hw.secure_boot);
        if !code.is_file() {
            return Err(missing_ovmf(code));
        }
        let vars = dir.efi_vars();
        if !vars.is_file() {
            let template = ovmf_vars_template(hw.secure_boot);
            if !template.is_file() {
                return Err(missing_ovmf(template));
            }
            // Copied to a temporary name and renamed, so a crash never
            // leaves a half-written store that later starts would keep.
            let tmp = dir.path().join("efivars.fd.tmp");
            std::fs::copy(&template, &tmp).map_err(|e| HypervisorError::io("copy the UEFI variable store", &tmp, e))?;
            std::fs::rename(&tmp, &vars).map_err(|e| HypervisorError::io("rename", &tmp, e))?;
            info!(template = %template.display(), "new UEFI variable store");
        }
    }
    if hw.tpm {
        start_swtpm(dir, swtpm, cgroup_procs).await?;
    }
    Ok(())
}

/// Starts this VM's swtpm (unless it already runs) and waits for its
/// control socket. It ends by itself when QEMU closes that socket
/// (`--terminate`), and [`stop_swtpm`] makes sure of it.
async fn start_swtpm(dir: &VmDir, swtpm: &Path, cgroup_procs: Option<&std::ffi::CStr>) -> Result<(), HypervisorError> {
    let state = dir.tpm_state();
    let sock = dir.swtpm_socket();
    if swtpm_pid(dir).is_some() && sock.exists() {
        return Ok(());
    }
    stop_swtpm(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state)
        .map_err(|e| HypervisorError::io("create the TPM state directory", &state, e))?;
    for p in [&sock, &dir.swtpm_pidfile()] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HypervisorError::io("remove", p, e)),
        }
    }
    let utf8 = |what: &str, p: &Path| {
        p.to_str().map(|s| s.replace(',', ",,")).ok_or_else(|| {
            HypervisorError::InvalidConfig(format!("{what} path {} is not valid UTF-8; rename it", p.display()))
        })
    };
    let args = [
        "socket".to_string(),
        "--tpm2".to_string(),
        "--tpmstate".to_string(),
        format!("dir={}", utf8("TPM state", &state)?),
        "--ctrl".to_string(),
        format!("type=unixio,path={}", utf8("swtpm socket", &sock)?),
        "--pid".to_string(),
        format!("file={}", utf8("swtpm pidfile", &dir.swtpm_pidfile())?),
        "--log".to_string(),
        format!("file={},level=1", utf8("swtpm log", &dir.swtpm_log())?),
        "--terminate".to_string(),
        "--daemon".to_string(),
    ];
    let mut cmd = tokio::process::Command::new(swtpm);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(p) = cgroup_procs {
        let p = p.to_owned();
        // SAFETY: join_cgroup makes only raw syscalls on a path allocated
        // before the fork.
        unsafe {
            cmd.pre_exec(move || crate::qemu::join_cgroup(&p));
        }
    }
    let out = cmd.output().await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            HypervisorError::MissingTool {
                tool: swtpm.display().to_string(),
                package: "swtpm (apt-get install swtpm swtpm-tools)",
            }
        } else {
            HypervisorError::io("start", swtpm, source)
        }
    })?;
    if !out.status.success() {
        return Err(HypervisorError::Tpm(format!(
            "swtpm exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let deadline = tokio::time::Instant::now() + SWTPM_WAIT;
    while !sock.exists() {
        if tokio::time::Instant::now() > deadline {
            return Err(HypervisorError::Tpm(format!(
                "swtpm did not create {} within {SWTPM_WAIT:?}; see {}",
                sock.display(),
                dir.swtpm_log().display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!(pid = ?swtpm_pid(dir), "swtpm started");
    Ok(())
}

/// The pid of this VM's live swtpm: the pidfile's process, if it is an
/// swtpm working on this VM's state directory (so a recycled pid is never
/// taken for it).
fn swtpm_pid(dir: &VmDir) -> Option<u32> {
    let pid = crate::process::read_pidfile(&dir.swtpm_pidfile())?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = format!("dir={}", dir.tpm_state().to_str()?.replace(',', ",,"));
    cmdline.split(|&b| b == 0).any(|a| a == want.as_bytes()).then_some(pid)
}

/// Stops this VM's swtpm if it still runs (QEMU is gone by now; swtpm
/// normally ended with it). Its state directory stays.
pub(crate) fn stop_swtpm(dir: &VmDir) {
    if let Some(pid) = swtpm_pid(dir) {
        if let Err(e) = crate::process::signal(pid, libc::SIGTERM) {
            warn!(pid, error = %e, "cannot stop swtpm");
        }
    }
    for p in [dir.swtpm_socket(), dir.swtpm_pidfile()] {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_paths_and_checks() {
        assert_eq!(ovmf_code(false), Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
        assert_eq!(ovmf_code(true), Path::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"));
        assert_eq!(ovmf_vars_template(true), Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"));
        let bad = VmHardware { secure_boot: true, ..VmHardware::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("UEFI"));
        let msg = missing_ovmf(ovmf_code(false)).to_string();
        assert!(msg.contains("apt-get install ovmf"), "{msg}");
    }

    #[tokio::test]
    async fn uefi_vars_are_copied_once_and_kept() {
        if !ovmf_vars_template(false).is_file() {
            eprintln!("skipping: Debian's ovmf package is not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        let hw = VmHardware { uefi: true, ..VmHardware::default() };
        prepare(&dir, &hw, Path::new("swtpm"), None).await.unwrap();
        let template = std::fs::read(ovmf_vars_template(false)).unwrap();
        assert_eq!(std::fs::read(dir.efi_vars()).unwrap(), template);
        // What the guest wrote survives the next start.
        std::fs::write(dir.efi_vars(), b"guest variables").unwrap();
        prepare(&dir, &hw, Path::new("swtpm"), None).await.unwrap();
        assert_eq!(std::fs::read(dir.efi_vars()).unwrap(), b"guest variables");
    }

    #[tokio::test]
    async fn a_missing_swtpm_names_its_package() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path());
        let hw = VmHardware { tpm: true, ..VmHardware::default() };
        let err = prepare(&dir, &hw, Path::new("/nonexistent/swtpm"), None).await.unwrap_err().to_string();
        assert!(err.contains("apt-get install swtpm"), "{err}");
    }
}
