//! The driver-independent interface the compute agent uses to run VMs.

use std::path::Path;
use std::time::Duration;

use crate::{AttachedDisk, BackupJob, DataDisk, HypervisorError, VmConfig, VmDir};

/// Whether a VM's process is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStatus {
    NotRunning,
    /// `paused` is true when the vCPUs are not running (QMP `query-status`
    /// says `running: false`: paused, guest-panicked, internal-error, ...).
    /// If the monitor cannot be asked in time, `paused` is reported as false.
    Running {
        pid: u32,
        paused: bool,
    },
}

impl VmStatus {
    pub fn is_running(&self) -> bool {
        matches!(self, VmStatus::Running { .. })
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            VmStatus::Running { pid, .. } => Some(*pid),
            VmStatus::NotRunning => None,
        }
    }
}

/// What a running VM's process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmUsage {
    pub pid: u32,
    /// CPU time of the vCPU threads (all of the process when they cannot be told apart).
    pub vcpu_time: Duration,
    pub rss_bytes: u64,
}

/// Cumulative I/O counters of a VM's disks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

/// One way of running VMs (QEMU today, a simulated driver later).
///
/// Every method works from the instance directory alone, so a fresh driver
/// object (e.g. after an agent restart) sees and controls VMs started by an
/// earlier one.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// Short driver name, e.g. "qemu".
    fn name(&self) -> &'static str;

    /// Create the instance directory and the root disk overlay if missing.
    /// Idempotent; grows an existing disk to `disk_gib` but never shrinks it.
    async fn prepare_disk(&self, dir: &VmDir, cfg: &VmConfig) -> Result<(), HypervisorError>;

    /// Start the VM and return its pid. Refused with
    /// [`HypervisorError::AlreadyRunning`] if it is already running.
    async fn start(&self, dir: &VmDir, cfg: &VmConfig) -> Result<u32, HypervisorError>;

    /// Whether the VM's process is alive (pid reuse is detected).
    async fn status(&self, dir: &VmDir) -> VmStatus;

    /// Ask the guest to power off; after `grace`, make QEMU quit; if that
    /// fails too, SIGKILL. Ok if the VM was not running.
    async fn shutdown(&self, dir: &VmDir, grace: Duration) -> Result<(), HypervisorError>;

    /// Hard-reset the guest (QMP `system_reset`).
    async fn reboot(&self, dir: &VmDir) -> Result<(), HypervisorError>;

    /// Stop the VM now without asking the guest, wait for the process to exit
    /// and remove the pidfile and socket. Ok if it was not running.
    async fn kill(&self, dir: &VmDir) -> Result<(), HypervisorError>;

    /// [`Self::kill`] and remove the whole instance directory. Ok if it is gone.
    async fn destroy(&self, dir: &VmDir) -> Result<(), HypervisorError>;

    /// Keep the running VM's console log flowing and within its cap on
    /// disk: starts the console pump if none runs (after an agent restart,
    /// or when QEMU dropped the connection). Cheap; call it every pass.
    fn watch_console(&self, _dir: &VmDir) {}

    /// A live viewer of the running VM's serial console (its output from
    /// now on, and its input); `None` when there is none to attach to.
    fn attach_console(&self, _dir: &VmDir) -> Option<crate::console::ConsoleViewer> {
        None
    }

    /// CPU time the VM's process has used, if known.
    fn cpu_time(&self, _dir: &VmDir) -> Option<Duration> {
        None
    }

    /// What the VM's process uses, for monitoring: its vCPUs' CPU time and
    /// its resident memory. `None` when it is not running.
    fn usage(&self, _dir: &VmDir) -> Option<VmUsage> {
        None
    }

    /// Cumulative I/O of all the VM's disks (QMP `query-blockstats`).
    async fn block_stats(&self, dir: &VmDir) -> Result<BlockStats, HypervisorError>;

    // ---- data disks (volumes) ----

    /// Create a sparse volume file of `size` bytes (kept, or grown, if it exists).
    async fn create_volume(&self, path: &Path, size: u64) -> Result<(), HypervisorError>;

    /// Grow a volume file no running VM has open.
    async fn resize_volume(&self, path: &Path, size: u64) -> Result<(), HypervisorError>;

    /// Virtual size in bytes of a volume (or disk) file.
    async fn volume_size(&self, path: &Path) -> Result<u64, HypervisorError>;

    /// Copy a disk file no running VM writes into a new self-contained file
    /// at `dst` (any backing chain flattened).
    async fn copy_disk_file(&self, src: &Path, dst: &Path) -> Result<(), HypervisorError>;

    /// Hot-plug a data disk into the running VM. Ok if it is attached already.
    async fn attach_disk(&self, dir: &VmDir, disk: &DataDisk) -> Result<(), HypervisorError>;

    /// Hot-unplug data disk `id`, waiting up to `timeout` for the guest to
    /// release it. Ok if it is not attached.
    async fn detach_disk(&self, dir: &VmDir, id: &str, timeout: Duration) -> Result<(), HypervisorError>;

    /// The data disks the running VM has.
    async fn attached_disks(&self, dir: &VmDir) -> Result<Vec<AttachedDisk>, HypervisorError>;

    /// Grow an attached data disk while the guest runs.
    async fn resize_attached_disk(&self, dir: &VmDir, id: &str, size: u64) -> Result<(), HypervisorError>;

    /// Gives the running VM `vcpus` vCPUs by hot-adding CPUs into the
    /// empty slots it was started with ([`crate::VmConfig::max_vcpus`]),
    /// and brings them online in the guest. Ok if it has that many
    /// already. Fewer vCPUs are refused (unplug needs the guest's
    /// cooperation; stop the VM instead), and so is more than its slots.
    async fn set_vcpus(&self, dir: &VmDir, vcpus: u32) -> Result<(), HypervisorError>;

    /// Puts `media` (an ISO file, read-only) in the running VM's CD-ROM
    /// drive, or empties it (`None`), forcing the tray open if the guest
    /// locked it. Ok if the drive already holds that.
    async fn change_cdrom(&self, dir: &VmDir, media: Option<&Path>) -> Result<(), HypervisorError>;

    /// Start a point-in-time copy of the running VM's disk `node` (`root`,
    /// or a data disk id) into a new self-contained file at `target`.
    async fn backup_start(&self, dir: &VmDir, node: &str, target: &Path) -> Result<BackupJob, HypervisorError>;

    /// Wait for a copy to complete; on failure the partial file is removed.
    async fn backup_finish(&self, dir: &VmDir, job: &BackupJob, timeout: Duration) -> Result<(), HypervisorError>;

    // ---- backups (see the `bitmaps` and `storage_daemon` modules) ----

    /// The dirty bitmaps of disk `node` of the VM (or storage daemon) in `dir`.
    async fn dirty_bitmaps(&self, _dir: &VmDir, _node: &str) -> Result<Vec<crate::DirtyBitmap>, HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "track disk changes for backups" })
    }

    /// Start a copy that begins a new dirty bitmap in the same instant;
    /// finish it with [`Hypervisor::backup_finish`].
    async fn backup_start_tracked(
        &self,
        _dir: &VmDir,
        _copy: &crate::TrackedCopy,
    ) -> Result<BackupJob, HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "take backups" })
    }

    /// Remove a dirty bitmap; Ok if it is not there.
    async fn remove_dirty_bitmap(&self, _dir: &VmDir, _node: &str, _name: &str) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "track disk changes for backups" })
    }

    /// The extents of a finished copy (see [`crate::MapExtent`]).
    async fn allocation_map(&self, _path: &Path) -> Result<Vec<crate::MapExtent>, HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "map a disk copy" })
    }

    /// Open a stopped VM's disks so that the methods above work on them
    /// through the returned daemon's [`crate::StorageDaemon::dir`].
    async fn open_disks_offline(
        &self,
        _work: &Path,
        _disks: &[crate::OfflineDisk],
    ) -> Result<crate::StorageDaemon, HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "back up a stopped instance" })
    }

    // ---- live migration (see the `migration` module) ----

    /// Target side: export `nodes` over NBD and wait for the state.
    async fn migration_listen(
        &self,
        _dir: &VmDir,
        _host: &str,
        _nbd_port: u16,
        _migrate_port: u16,
        _nodes: &[String],
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "live-migrate" })
    }

    /// Target side, once the instance runs here.
    async fn migration_target_finish(&self, _dir: &VmDir) -> Result<(), HypervisorError> {
        Ok(())
    }

    /// Source side: copy the disks and the state to the target.
    async fn migration_send(
        &self,
        _dir: &VmDir,
        _nbd_host: &str,
        _nbd_port: u16,
        _uri: &str,
        _disks: &[crate::MigratingDisk],
        _timeout: Duration,
    ) -> Result<crate::MigrationStats, HypervisorError> {
        Err(HypervisorError::Unsupported { driver: self.name(), what: "live-migrate" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn usable_as_trait_object() {
        let hv: Arc<dyn Hypervisor> = Arc::new(crate::Qemu::default());
        assert_eq!(hv.name(), "qemu");
        let dir = VmDir::new("/nonexistent/nubo-vm");
        assert_eq!(hv.status(&dir).await, VmStatus::NotRunning);
        assert_eq!(hv.cpu_time(&dir), None);
        // Stopping or destroying a VM that does not exist is not an error.
        hv.destroy(&dir).await.unwrap();
        let handle = tokio::spawn(async move { hv.status(&dir).await });
        assert_eq!(handle.await.unwrap(), VmStatus::NotRunning);
    }
}
