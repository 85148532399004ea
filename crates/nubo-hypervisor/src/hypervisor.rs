//! The driver-independent interface the compute agent uses to run VMs.

use std::time::Duration;

use crate::{HypervisorError, VmConfig, VmDir};

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

    /// CPU time the VM's process has used, if known.
    fn cpu_time(&self, _dir: &VmDir) -> Option<Duration> {
        None
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
