//! The instance directory: where each VM's files live and what they are called.

use std::path::{Path, PathBuf};

use crate::HypervisorError;

/// Longest path a unix socket address can hold (`sun_path` is 108 bytes with a NUL).
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// One VM's directory. Holds `disk.qcow2`, `seed.img`, `console.log`,
/// `console.sock`, `qmp.sock`, `qga.sock`, `qemu.pid` and `qemu.log` (plus `qemu.log.1`, the previous run's);
/// with UEFI `efivars.fd`, with a TPM `tpm/`, `swtpm.sock`, `swtpm.pid` and
/// `swtpm.log`, with a display `vnc.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    path: PathBuf,
}

impl VmDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VmDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root disk, a qcow2 overlay on the base image.
    pub fn disk(&self) -> PathBuf {
        self.path.join("disk.qcow2")
    }

    /// Conventional place for the NoCloud seed image.
    pub fn seed(&self) -> PathBuf {
        self.path.join("seed.img")
    }

    /// Serial console output, appended across restarts and capped on disk
    /// (see [`crate::console`]).
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// Where QEMU offers the serial console's output to the agent's pump.
    pub fn console_socket(&self) -> PathBuf {
        self.path.join("console.sock")
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The instance metadata service's socket (served by the agent).
    pub fn imds_socket(&self) -> PathBuf {
        self.path.join("imds.sock")
    }

    /// The guest agent channel (QEMU Guest Agent protocol, see [`crate::QgaClient`]).
    pub fn qga_socket(&self) -> PathBuf {
        self.path.join("qga.sock")
    }

    pub fn pidfile(&self) -> PathBuf {
        self.path.join("qemu.pid")
    }

    /// QEMU's stderr of the current run.
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// QEMU's stderr of the previous run.
    pub fn previous_qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log.1")
    }

    /// The VM's own UEFI variable store, copied from OVMF's template on
    /// its first start and kept after (see [`crate::firmware`]).
    pub fn efi_vars(&self) -> PathBuf {
        self.path.join("efivars.fd")
    }

    /// The TPM's state directory (swtpm's `--tpmstate`), kept across starts.
    pub fn tpm_state(&self) -> PathBuf {
        self.path.join("tpm")
    }

    /// swtpm's control socket, which QEMU's TPM emulator backend connects to.
    pub fn swtpm_socket(&self) -> PathBuf {
        self.path.join("swtpm.sock")
    }

    pub fn swtpm_pidfile(&self) -> PathBuf {
        self.path.join("swtpm.pid")
    }

    pub fn swtpm_log(&self) -> PathBuf {
        self.path.join("swtpm.log")
    }

    /// The display's VNC server (VMs with a display only); only the agent
    /// connects to it, to relay the graphical console.
    pub fn vnc_socket(&self) -> PathBuf {
        self.path.join("vnc.sock")
    }

    /// The last path component, used as a label in logs.
    pub(crate) fn label(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// The same directory as an absolute path with symlinks resolved (when it
    /// exists), so that paths on QEMU's command line and the ones `status`
    /// compares against always agree.
    pub(crate) fn resolved(&self) -> Result<VmDir, HypervisorError> {
        match std::fs::canonicalize(&self.path) {
            Ok(p) => Ok(VmDir::new(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::path::absolute(&self.path)
                .map(VmDir::new)
                .map_err(|e| HypervisorError::io("resolve", &self.path, e)),
            Err(e) => Err(HypervisorError::io("resolve", &self.path, e)),
        }
    }
}
