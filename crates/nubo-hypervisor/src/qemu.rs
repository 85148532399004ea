//! The QEMU driver: creates disk overlays with `qemu-img`, starts daemonized
//! `qemu-system-x86_64` processes (own session, so they outlive the agent),
//! and finds, controls and stops them again through the pidfile and QMP
//! socket in the instance directory.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::process::{self, running_pid};
use crate::qmp::{QmpClient, QmpError};
use crate::{
    qemu_argv, AttachedDisk, BackupJob, BlockStats, Boot, DataDisk, Hypervisor, HypervisorError, PortForward, VmConfig,
    VmDir, VmStatus, VmUsage,
};

const GIB: u64 = 1024 * 1024 * 1024;
/// How long QEMU gets to exit after `quit` or SIGTERM before SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// How long a SIGKILLed QEMU gets to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Cap on how long `status` waits for the monitor to say whether it is paused.
const STATUS_QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of QEMU's stderr goes into a start error.
const STDERR_TAIL_LINES: usize = 15;
const STDERR_TAIL_BYTES: u64 = 8 * 1024;

/// Runs VMs as QEMU processes.
#[derive(Debug, Clone)]
pub struct Qemu {
    binary: PathBuf,
    qemu_img: PathBuf,
    qmp_timeout: Duration,
    start_timeout: Duration,
    console_cap: u64,
    consoles: crate::console::Pumps,
    /// The cgroup v2 directory each QEMU is started in (one child per VM),
    /// so the host's firewall can tell guests' traffic apart (see
    /// `nubo_agent::guard`). None: QEMU stays in the caller's cgroup.
    cgroup: Option<PathBuf>,
    /// QEMU's user-mode network gets `restrict=on`: no egress, only
    /// forwarded ports and the metadata service.
    restrict_egress: bool,
    /// The TPM emulator, for VMs with a TPM.
    swtpm: PathBuf,
    /// Opens a stopped VM's disks for backups (see `storage_daemon`).
    storage_daemon: PathBuf,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu::new("qemu-system-x86_64", "qemu-img")
    }
}

impl Qemu {
    /// A driver using these binaries (names are looked up in `PATH`).
    pub fn new(binary: impl Into<PathBuf>, qemu_img: impl Into<PathBuf>) -> Self {
        Qemu {
            binary: binary.into(),
            qemu_img: qemu_img.into(),
            qmp_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
            console_cap: crate::console::DEFAULT_CONSOLE_CAP,
            consoles: crate::console::Pumps::default(),
            cgroup: None,
            restrict_egress: false,
            swtpm: PathBuf::from("swtpm"),
            storage_daemon: PathBuf::from("qemu-storage-daemon"),
        }
    }

    /// The swtpm binary VMs with a TPM use (default: `swtpm` in `PATH`).
    pub fn with_swtpm(mut self, binary: impl Into<PathBuf>) -> Self {
        self.swtpm = binary.into();
        self
    }

    /// Bytes of each VM's console output kept on disk (default 1 MiB; at
    /// least [`crate::console::MIN_CONSOLE_CAP`], rounded up to 4 KiB).
    pub fn with_console_cap(mut self, bytes: u64) -> Self {
        self.console_cap = crate::console::effective_cap(bytes);
        self
    }

    /// Starts every QEMU in its own child of the cgroup v2 directory `dir`
    /// (which must exist), moved there before it runs a single instruction
    /// of its own, so no connection of the VM ever leaves from elsewhere.
    pub fn with_cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    /// Cuts guests on the user-mode network off from everything but their
    /// forwarded ports and the metadata service (`restrict=on`).
    pub fn with_restricted_egress(mut self, restrict: bool) -> Self {
        self.restrict_egress = restrict;
        self
    }

    /// The cgroup directory of VM `id`, when QEMUs are started in cgroups.
    pub fn vm_cgroup(&self, id: &str) -> Option<PathBuf> {
        // Only a plain name, never a path that would leave the subtree.
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return None;
        }
        self.cgroup.as_ref().map(|c| c.join(id))
    }

    /// Timeout for each QMP call (default 5 s).
    pub fn with_qmp_timeout(mut self, timeout: Duration) -> Self {
        self.qmp_timeout = timeout;
        self
    }

    /// How long QEMU may take to set a VM up before `start` gives up (default 60 s).
    pub fn with_start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn qemu_img_binary(&self) -> &Path {
        &self.qemu_img
    }

    /// The qemu-storage-daemon binary backups of stopped VMs use
    /// (default: `qemu-storage-daemon` in `PATH`).
    pub fn with_storage_daemon(mut self, binary: impl Into<PathBuf>) -> Self {
        self.storage_daemon = binary.into();
        self
    }

    pub fn storage_daemon_binary(&self) -> &Path {
        &self.storage_daemon
    }

    /// Check that both binaries run; returns QEMU's version line.
    pub async fn check(&self) -> Result<String, HypervisorError> {
        let out = run_capture(&self.binary, &[OsString::from("--version")]).await?;
        run_capture(&self.qemu_img, &[OsString::from("--version")]).await?;
        Ok(out.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Open a QMP connection to a running VM (for operations the trait does
    /// not cover, e.g. disk hot-plug). Keep it short: QEMU serves one client.
    pub async fn qmp(&self, dir: &VmDir) -> Result<QmpClient, HypervisorError> {
        let dir = dir.resolved()?;
        if running_pid(&dir.pidfile()).is_none() {
            return Err(HypervisorError::NotRunning { dir: dir.path().to_path_buf() });
        }
        Ok(QmpClient::connect(&dir.qmp_socket(), self.qmp_timeout).await?)
    }

    /// Pause the vCPUs (QMP `stop`).
    pub async fn pause(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        Ok(self.qmp(dir).await?.stop().await?)
    }

    /// Resume the vCPUs (QMP `cont`).
    pub async fn resume(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        Ok(self.qmp(dir).await?.cont().await?)
    }

    pub(crate) async fn qemu_img(&self, args: &[OsString]) -> Result<String, HypervisorError> {
        run_capture(&self.qemu_img, args).await
    }

    /// Virtual size in bytes of the image at `path`.
    pub(crate) async fn virtual_size(&self, path: &Path, format: &str) -> Result<u64, HypervisorError> {
        let out = self
            .qemu_img(&["info".into(), "-U".into(), "--output=json".into(), "-f".into(), format.into(), path.into()])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| HypervisorError::QemuImg {
            args: format!("info {}", path.display()),
            status: "unparsable output".into(),
            stderr: e.to_string(),
        })?;
        v["virtual-size"].as_u64().ok_or_else(|| HypervisorError::QemuImg {
            args: format!("info {}", path.display()),
            status: "no virtual-size in output".into(),
            stderr: out.chars().take(500).collect(),
        })
    }

    /// SIGKILL `pid` (if it is still our QEMU) and wait for it to go.
    async fn sigkill(&self, pid: u32, pidfile: &Path) -> Result<(), HypervisorError> {
        if process::is_our_qemu(pid, pidfile) {
            process::signal(pid, libc::SIGKILL).map_err(|source| HypervisorError::Signal {
                pid,
                signal: libc::SIGKILL,
                source,
            })?;
        }
        if process::wait_gone(pid, pidfile, KILL_WAIT).await {
            Ok(())
        } else {
            Err(HypervisorError::StopFailed { pid, waited: KILL_WAIT })
        }
    }

    /// The QMP connection used by our own operations.
    async fn connect(&self, dir: &VmDir) -> Result<QmpClient, QmpError> {
        QmpClient::connect(&dir.qmp_socket(), self.qmp_timeout).await
    }
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    #[tracing::instrument(skip_all, fields(vm = %cfg.id))]
    async fn prepare_disk(&self, dir: &VmDir, cfg: &VmConfig) -> Result<(), HypervisorError> {
        cfg.validate()?;
        let dir = dir.resolved()?;
        // 0700: the directory holds the guest's disk and console output.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.path())
            .map_err(|e| HypervisorError::io("create directory", dir.path(), e))?;
        let want = cfg
            .disk_gib
            .checked_mul(GIB)
            .ok_or_else(|| HypervisorError::InvalidConfig(format!("disk_gib {} is too large", cfg.disk_gib)))?;
        let disk = dir.disk();
        if disk.exists() {
            let current = self.virtual_size(&disk, "qcow2").await?;
            if current >= want {
                debug!(current, want, "root disk already exists and is large enough");
                return Ok(());
            }
            if let Some(pid) = running_pid(&dir.pidfile()) {
                warn!(
                    pid,
                    current, want, "root disk is smaller than asked for but the VM is running; not resizing it now"
                );
                return Ok(());
            }
            info!(current, want, "growing root disk");
            self.qemu_img(&[
                "resize".into(),
                "-f".into(),
                "qcow2".into(),
                disk.clone().into(),
                want.to_string().into(),
            ])
            .await?;
            return Ok(());
        }

        let base =
            std::path::absolute(&cfg.base_disk).map_err(|e| HypervisorError::io("resolve", &cfg.base_disk, e))?;
        if !base.is_file() {
            return Err(HypervisorError::MissingFile {
                what: "base image",
                path: base,
                hint: "import or download the image first",
            });
        }
        let format = match cfg.base_format.as_deref() {
            Some("raw") => "raw",
            Some(_) => "qcow2",
            None => image_format(&base)?,
        };
        let base_size = self.virtual_size(&base, format).await?;
        let size = want.max(base_size);
        if size > want {
            info!(base_size, want, "base image is larger than disk_gib; using the base image's size");
        }
        let tmp = dir.path().join("disk.qcow2.tmp");
        remove_if_exists(&tmp)?;
        self.qemu_img(&[
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            format.into(),
            "-b".into(),
            base.clone().into(),
            tmp.clone().into(),
            size.to_string().into(),
        ])
        .await?;
        std::fs::rename(&tmp, &disk).map_err(|e| HypervisorError::io("rename", &tmp, e))?;
        info!(base = %base.display(), size, "created root disk overlay");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(vm = %cfg.id))]
    async fn start(&self, dir: &VmDir, cfg: &VmConfig) -> Result<u32, HypervisorError> {
        cfg.validate()?;
        let dir = dir.resolved()?;
        let pidfile = dir.pidfile();
        if let Some(pid) = running_pid(&pidfile) {
            return Err(HypervisorError::AlreadyRunning { id: cfg.id.clone(), pid });
        }
        if !dir.disk().is_file() {
            return Err(HypervisorError::MissingFile {
                what: "root disk",
                path: dir.disk(),
                hint: "call prepare_disk before start",
            });
        }
        let cfg = absolute_paths(cfg)?;
        check_ports_free(&cfg.port_forwards)?;
        let mut argv = qemu_argv(&dir, &cfg)?;
        if self.restrict_egress {
            crate::argv::restrict_user_net(&mut argv);
        }
        // The VM's cgroup: created here, joined by the child before exec
        // (a path prepared now, since the child may not allocate).
        let cgroup_procs = match self.vm_cgroup(&cfg.id) {
            Some(cg) => {
                match std::fs::create_dir(&cg) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(HypervisorError::io("create the VM's cgroup", &cg, e)),
                }
                let procs = cg.join("cgroup.procs");
                let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(procs.as_os_str())).map_err(
                    |_| HypervisorError::InvalidConfig(format!("cgroup path {} has a NUL byte", cg.display())),
                )?;
                Some((cg, c))
            }
            None => None,
        };
        let procs_path = cgroup_procs.as_ref().map(|(_, c)| c.clone());

        remove_if_exists(&pidfile)?;
        remove_if_exists(&dir.vnc_socket())?;
        // The firmware's variable store and the TPM, before QEMU needs them.
        crate::firmware::prepare(&dir, &cfg.hardware, &self.swtpm, procs_path.as_deref()).await?;
        remove_if_exists(&dir.console_socket())?;
        remove_if_exists(&dir.qmp_socket())?;
        remove_if_exists(&dir.qga_socket())?;
        let log_path = dir.qemu_log();
        match std::fs::rename(&log_path, dir.previous_qemu_log()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HypervisorError::io("rotate", &log_path, e)),
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| HypervisorError::io("create", &log_path, e))?;

        // Taps are opened here and inherited by QEMU; this process's
        // copies close when `taps` drops at the end of start.
        let taps = cfg.taps.iter().map(crate::tap::open).collect::<Result<Vec<_>, _>>()?;
        let tap_fds = crate::tap::raw(&taps);
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(&argv).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log)).kill_on_drop(false);
        // SAFETY: the closure makes only raw syscalls (open, write, close,
        // close_range, fcntl, dup2), which are async-signal-safe, and reads
        // `tap_fds` and `procs_path`, which were allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(p) = &procs_path {
                    join_cgroup(p)?;
                }
                mark_inherited_fds_cloexec();
                crate::tap::install_in_child(&tap_fds)
            });
        }
        debug!(binary = %self.binary.display(), ?argv, "starting QEMU");
        let mut child = cmd.spawn().map_err(|source| match &cgroup_procs {
            Some((cg, _)) if source.kind() != std::io::ErrorKind::NotFound => {
                HypervisorError::io("start QEMU in its cgroup", cg, source)
            }
            _ => HypervisorError::BinaryNotFound { binary: self.binary.clone(), source },
        })?;

        // With -daemonize, this process exits once the VM is set up (0) or
        // failed (non-zero); the VM itself keeps running in its own session.
        let status = match tokio::time::timeout(self.start_timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(HypervisorError::io("wait for", &self.binary, e)),
            Err(_) => {
                warn!("QEMU did not finish starting in time; killing it");
                let _ = child.start_kill();
                if let Some(pid) = process::read_pidfile(&pidfile) {
                    let _ = self.sigkill(pid, &pidfile).await;
                }
                let _ = child.wait().await;
                cleanup_runtime_files(&dir);
                return Err(HypervisorError::StartTimeout {
                    id: cfg.id.clone(),
                    after: self.start_timeout,
                    log: log_path,
                });
            }
        };
        if !status.success() {
            cleanup_runtime_files(&dir);
            let stderr = read_tail(&log_path);
            if let Some(pf) = failed_forward(&stderr, &cfg.port_forwards) {
                return Err(HypervisorError::PortInUse { host_port: pf.host_port, guest_port: pf.guest_port });
            }
            return Err(HypervisorError::StartFailed {
                id: cfg.id.clone(),
                status: status.to_string(),
                stderr: if stderr.is_empty() { "(QEMU printed nothing)".into() } else { stderr },
                log: log_path,
            });
        }
        match running_pid(&pidfile) {
            Some(pid) => {
                info!(pid, accel = %cfg.accel, "VM started");
                self.consoles.ensure(&dir, self.console_cap);
                Ok(pid)
            }
            None => {
                let stderr = read_tail(&log_path);
                Err(HypervisorError::StartFailed {
                    id: cfg.id.clone(),
                    status: "QEMU reported success but its process is gone".into(),
                    stderr: if stderr.is_empty() { "(QEMU printed nothing)".into() } else { stderr },
                    log: log_path,
                })
            }
        }
    }

    async fn status(&self, dir: &VmDir) -> VmStatus {
        let Ok(dir) = dir.resolved() else {
            return VmStatus::NotRunning;
        };
        let Some(pid) = running_pid(&dir.pidfile()) else {
            return VmStatus::NotRunning;
        };
        let timeout = self.qmp_timeout.min(STATUS_QMP_TIMEOUT);
        let paused = match QmpClient::connect(&dir.qmp_socket(), timeout).await {
            Ok(mut c) => match c.query_status().await {
                Ok(s) => !s.running,
                Err(e) => {
                    warn!(vm = %dir.label(), error = %e, "cannot query VM run state; reporting it as running");
                    false
                }
            },
            Err(e) => {
                warn!(vm = %dir.label(), error = %e, "cannot reach VM monitor; reporting it as running");
                false
            }
        };
        VmStatus::Running { pid, paused }
    }

    #[tracing::instrument(skip_all, fields(vm = %dir.label()))]
    async fn shutdown(&self, dir: &VmDir, grace: Duration) -> Result<(), HypervisorError> {
        let dir = dir.resolved()?;
        let pidfile = dir.pidfile();
        let Some(pid) = running_pid(&pidfile) else {
            cleanup_runtime_files(&dir);
            return Ok(());
        };

        let powerdown = async {
            let mut c = self.connect(&dir).await?;
            c.system_powerdown().await
        };
        match powerdown.await {
            Ok(()) => debug!(pid, ?grace, "sent ACPI power-down; waiting for the guest"),
            Err(e) => warn!(pid, error = %e, "could not send ACPI power-down"),
        }
        if process::wait_gone(pid, &pidfile, grace).await {
            info!(pid, "guest powered off");
            cleanup_runtime_files(&dir);
            return Ok(());
        }

        info!(pid, ?grace, "guest did not power off in time; asking QEMU to quit");
        let quit = async {
            let mut c = self.connect(&dir).await?;
            c.quit().await
        };
        if let Err(e) = quit.await {
            warn!(pid, error = %e, "QMP quit failed");
        }
        if process::wait_gone(pid, &pidfile, QUIT_WAIT).await {
            cleanup_runtime_files(&dir);
            return Ok(());
        }

        warn!(pid, "QEMU did not quit; sending SIGKILL");
        self.sigkill(pid, &pidfile).await?;
        cleanup_runtime_files(&dir);
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(vm = %dir.label()))]
    async fn reboot(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        let mut c = self.qmp(dir).await?;
        c.system_reset().await?;
        info!("VM reset");
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(vm = %dir.label()))]
    async fn kill(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        let dir = dir.resolved()?;
        let pidfile = dir.pidfile();
        let Some(pid) = running_pid(&pidfile) else {
            cleanup_runtime_files(&dir);
            return Ok(());
        };
        // SIGTERM makes QEMU exit at once without involving the guest, but
        // lets it flush its image metadata; SIGKILL if that does not work.
        process::signal(pid, libc::SIGTERM).map_err(|source| HypervisorError::Signal {
            pid,
            signal: libc::SIGTERM,
            source,
        })?;
        if !process::wait_gone(pid, &pidfile, QUIT_WAIT).await {
            warn!(pid, "QEMU ignored SIGTERM; sending SIGKILL");
            self.sigkill(pid, &pidfile).await?;
        }
        info!(pid, "VM stopped");
        cleanup_runtime_files(&dir);
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(vm = %dir.label()))]
    async fn destroy(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        if !dir.path().exists() {
            return Ok(());
        }
        self.kill(dir).await?;
        match std::fs::remove_dir_all(dir.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HypervisorError::io("remove", dir.path(), e)),
        }
        info!("VM directory removed");
        if let Some(cg) = self.vm_cgroup(&dir.label()) {
            // Empty now that QEMU is gone; a cgroup is removed with rmdir.
            if let Err(e) = std::fs::remove_dir(&cg) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(cgroup = %cg.display(), error = %e, "cannot remove the VM's cgroup");
                }
            }
        }
        Ok(())
    }

    fn watch_console(&self, dir: &VmDir) {
        let Ok(dir) = dir.resolved() else { return };
        if running_pid(&dir.pidfile()).is_some() {
            self.consoles.ensure(&dir, self.console_cap);
        }
    }

    fn attach_console(&self, dir: &VmDir) -> Option<crate::console::ConsoleViewer> {
        let dir = dir.resolved().ok()?;
        running_pid(&dir.pidfile())?;
        self.consoles.attach(&dir, self.console_cap)
    }

    fn cpu_time(&self, dir: &VmDir) -> Option<Duration> {
        let dir = dir.resolved().ok()?;
        let pid = running_pid(&dir.pidfile())?;
        process::cpu_time(pid)
    }

    fn usage(&self, dir: &VmDir) -> Option<VmUsage> {
        let dir = dir.resolved().ok()?;
        let pid = running_pid(&dir.pidfile())?;
        let vcpu_time = process::vcpu_time(pid).or_else(|| process::cpu_time(pid))?;
        Some(VmUsage { pid, vcpu_time, rss_bytes: process::rss_bytes(pid).unwrap_or(0) })
    }

    async fn block_stats(&self, dir: &VmDir) -> Result<BlockStats, HypervisorError> {
        let mut c = self.qmp(dir).await?;
        let v = c.execute("query-blockstats", None).await?;
        Ok(crate::disks::sum_blockstats(&v))
    }

    async fn create_volume(&self, path: &Path, size: u64) -> Result<(), HypervisorError> {
        self.create_volume_file(path, size).await
    }

    async fn resize_volume(&self, path: &Path, size: u64) -> Result<(), HypervisorError> {
        self.resize_volume_file(path, size).await
    }

    async fn volume_size(&self, path: &Path) -> Result<u64, HypervisorError> {
        self.qcow2_size(path).await
    }

    async fn copy_disk_file(&self, src: &Path, dst: &Path) -> Result<(), HypervisorError> {
        self.copy_qcow2_file(src, dst).await
    }

    async fn attach_disk(&self, dir: &VmDir, disk: &DataDisk) -> Result<(), HypervisorError> {
        self.attach_data_disk(&dir.resolved()?, disk).await
    }

    async fn detach_disk(&self, dir: &VmDir, id: &str, timeout: Duration) -> Result<(), HypervisorError> {
        self.detach_data_disk(&dir.resolved()?, id, timeout).await
    }

    async fn attached_disks(&self, dir: &VmDir) -> Result<Vec<AttachedDisk>, HypervisorError> {
        self.attached_data_disks(&dir.resolved()?).await
    }

    async fn resize_attached_disk(&self, dir: &VmDir, id: &str, size: u64) -> Result<(), HypervisorError> {
        self.resize_data_disk(&dir.resolved()?, id, size).await
    }

    #[tracing::instrument(skip_all, fields(vm = %dir.label()))]
    async fn set_vcpus(&self, dir: &VmDir, vcpus: u32) -> Result<(), HypervisorError> {
        crate::vcpus::set_vcpus(&mut self.qmp(dir).await?, vcpus).await
    }

    async fn change_cdrom(&self, dir: &VmDir, media: Option<&Path>) -> Result<(), HypervisorError> {
        let mut c = self.qmp(dir).await?;
        match media {
            // Forced: a guest that locked the tray (most installers do)
            // must not keep a disc the user ejected.
            None => {
                c.execute("eject", Some(serde_json::json!({"id": crate::config::CDROM_DEVICE, "force": true}))).await?;
                info!("CD-ROM ejected");
            }
            Some(iso) => {
                let filename = iso.to_str().filter(|_| iso.is_absolute()).ok_or_else(|| {
                    HypervisorError::InvalidConfig(format!(
                        "CD-ROM image path {} must be absolute and UTF-8",
                        iso.display()
                    ))
                })?;
                // Read as raw (never probed), read-only, as at start.
                c.execute(
                    "blockdev-change-medium",
                    Some(serde_json::json!({
                        "id": crate::config::CDROM_DEVICE,
                        "filename": filename,
                        "format": "raw",
                        "read-only-mode": "read-only",
                    })),
                )
                .await?;
                info!(iso = %filename, "CD-ROM disc inserted");
            }
        }
        Ok(())
    }

    async fn backup_start(&self, dir: &VmDir, node: &str, target: &Path) -> Result<BackupJob, HypervisorError> {
        Qemu::backup_start(self, &dir.resolved()?, node, target).await
    }

    async fn migration_listen(
        &self,
        dir: &VmDir,
        host: &str,
        nbd_port: u16,
        migrate_port: u16,
        nodes: &[String],
    ) -> Result<(), HypervisorError> {
        Qemu::migration_listen(self, dir, host, nbd_port, migrate_port, nodes).await
    }

    async fn migration_target_finish(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        Qemu::migration_target_finish(self, dir).await
    }

    async fn migration_send(
        &self,
        dir: &VmDir,
        nbd_host: &str,
        nbd_port: u16,
        uri: &str,
        disks: &[crate::MigratingDisk],
        timeout: Duration,
    ) -> Result<crate::MigrationStats, HypervisorError> {
        Qemu::migration_send(self, dir, nbd_host, nbd_port, uri, disks, timeout).await
    }

    async fn backup_finish(&self, dir: &VmDir, job: &BackupJob, timeout: Duration) -> Result<(), HypervisorError> {
        Qemu::backup_finish(self, &dir.resolved()?, job, timeout).await
    }

    async fn dirty_bitmaps(&self, dir: &VmDir, node: &str) -> Result<Vec<crate::DirtyBitmap>, HypervisorError> {
        Qemu::dirty_bitmaps(self, &dir.resolved()?, node).await
    }

    async fn backup_start_tracked(&self, dir: &VmDir, copy: &crate::TrackedCopy) -> Result<BackupJob, HypervisorError> {
        Qemu::backup_start_tracked(self, &dir.resolved()?, copy).await
    }

    async fn remove_dirty_bitmap(&self, dir: &VmDir, node: &str, name: &str) -> Result<(), HypervisorError> {
        Qemu::remove_dirty_bitmap(self, &dir.resolved()?, node, name).await
    }

    async fn allocation_map(&self, path: &Path) -> Result<Vec<crate::MapExtent>, HypervisorError> {
        Qemu::allocation_map(self, path).await
    }

    async fn open_disks_offline(
        &self,
        work: &Path,
        disks: &[crate::OfflineDisk],
    ) -> Result<crate::StorageDaemon, HypervisorError> {
        Qemu::open_disks_offline(self, work, disks).await
    }
}

/// Run a helper binary, returning its stdout or an error with its stderr.
async fn run_capture(binary: &Path, args: &[OsString]) -> Result<String, HypervisorError> {
    let out = tokio::process::Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| HypervisorError::BinaryNotFound { binary: binary.to_path_buf(), source })?;
    if !out.status.success() {
        let args = args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");
        return Err(HypervisorError::QemuImg {
            args,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// "qcow2" or "raw", from the file's magic.
fn image_format(path: &Path) -> Result<&'static str, HypervisorError> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| HypervisorError::io("open", path, e))?;
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"QFI\xfb" => Ok("qcow2"),
        Ok(()) => Ok("raw"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok("raw"),
        Err(e) => Err(HypervisorError::io("read", path, e)),
    }
}

/// A copy of `cfg` whose file paths are absolute and checked to exist.
fn absolute_paths(cfg: &VmConfig) -> Result<VmConfig, HypervisorError> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| HypervisorError::io("resolve", p, e));
    let must_exist = |what: &'static str, p: PathBuf, hint: &'static str| {
        if p.is_file() {
            Ok(p)
        } else {
            Err(HypervisorError::MissingFile { what, path: p, hint })
        }
    };
    let mut out = cfg.clone();
    if let Some(seed) = &cfg.seed_image {
        out.seed_image =
            Some(must_exist("seed image", abs(seed)?, "write the cloud-init seed before starting the VM")?);
    }
    if let Boot::Direct { kernel, initrd, cmdline } = &cfg.boot {
        out.boot = Boot::Direct {
            kernel: must_exist("kernel", abs(kernel)?, "extract the image's kernel first")?,
            initrd: must_exist("initrd", abs(initrd)?, "extract the image's initrd first")?,
            cmdline: cmdline.clone(),
        };
    }
    Ok(out)
}

/// Fail early, with a clear error, if a forwarded host port is taken.
fn check_ports_free(forwards: &[PortForward]) -> Result<(), HypervisorError> {
    for pf in forwards {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", pf.host_port)) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Err(HypervisorError::PortInUse { host_port: pf.host_port, guest_port: pf.guest_port });
            }
            // Other errors (e.g. EACCES for low ports) are left for QEMU to report.
            debug!(port = pf.host_port, error = %e, "port pre-check inconclusive");
        }
    }
    Ok(())
}

/// The forward QEMU could not set up, from its "Could not set up host
/// forwarding rule 'tcp:127.0.0.1:H-:G'" message.
fn failed_forward(stderr: &str, forwards: &[PortForward]) -> Option<PortForward> {
    let idx = stderr.find("Could not set up host forwarding rule")?;
    let rest = &stderr[idx..];
    forwards.iter().copied().find(|pf| rest.contains(&format!("tcp:127.0.0.1:{}-:{}", pf.host_port, pf.guest_port)))
}

/// The last lines of QEMU's log, for error messages.
fn read_tail(path: &Path) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(STDERR_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[from..].join("\n")
}

fn remove_if_exists(path: &Path) -> Result<(), HypervisorError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HypervisorError::io("remove", path, e)),
    }
}

/// Remove the pidfile and the QMP and guest agent sockets of a VM that is not running.
fn cleanup_runtime_files(dir: &VmDir) {
    crate::firmware::stop_swtpm(dir);
    for path in [dir.pidfile(), dir.console_socket(), dir.qmp_socket(), dir.qga_socket(), dir.vnc_socket()] {
        if let Err(e) = remove_if_exists(&path) {
            warn!(error = %e, "cannot clean up");
        }
    }
}

/// In the child before exec: move this process into the cgroup whose
/// `cgroup.procs` is `procs` (writing 0 means "the writer").
pub(crate) fn join_cgroup(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path made before the
    // fork; no allocation, async-signal-safe.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// In the child before exec: make every inherited descriptor above stderr
/// close-on-exec, so QEMU does not hold the agent's pipes and sockets open
/// for the VM's lifetime (e.g. a test harness's output pipe).
fn mark_inherited_fds_cloexec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's descriptors.
    // Kernels older than 5.11 return an error, which is ignored.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_hostfwd_failure() {
        let stderr = "2025-01-01T00:00:00.000000Z qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:22223-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:22223-:22'";
        let fwds = [PortForward { host_port: 8080, guest_port: 80 }, PortForward { host_port: 22223, guest_port: 22 }];
        assert_eq!(failed_forward(stderr, &fwds), Some(fwds[1]));
        assert_eq!(failed_forward("Could not open disk", &fwds), None);
    }

    #[test]
    fn detects_image_format() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        assert_eq!(image_format(&q).unwrap(), "qcow2");
        let r = dir.path().join("b");
        std::fs::write(&r, b"\0\0").unwrap();
        assert_eq!(image_format(&r).unwrap(), "raw");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let tail = read_tail(&p);
        assert!(tail.starts_with("line 25") && tail.ends_with("line 39"), "{tail}");
        assert_eq!(read_tail(&dir.path().join("missing")), "");
    }
}
