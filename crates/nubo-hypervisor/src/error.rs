//! The crate's error type: every message says what went wrong and what to do.

use std::path::PathBuf;
use std::time::Duration;

use crate::qmp::QmpError;

/// Everything that can go wrong while preparing, starting or stopping a VM.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The VM id cannot be used as a directory/process name.
    #[error("invalid VM id {id:?}: {reason}; use 1-63 characters of [a-z0-9-] that do not start or end with '-'")]
    InvalidId { id: String, reason: &'static str },

    /// A field of [`crate::VmConfig`] (or a path derived from it) is unusable.
    #[error("invalid VM config: {0}")]
    InvalidConfig(String),

    /// A live migration step failed; the VM stays where it was.
    #[error("live migration failed at {0}; the instance keeps running on its host")]
    Migration(String),

    /// The driver cannot do this.
    #[error("the {driver} hypervisor driver cannot {what}")]
    Unsupported { driver: &'static str, what: &'static str },

    /// A NIC's tap device could not be opened.
    #[error("network: {0}")]
    Network(String),

    /// `--accel kvm` was asked for but KVM cannot run guests here.
    #[error("KVM is not usable on this host: {reason}; use --accel tcg (software emulation, slower) or --accel auto")]
    KvmUnavailable { reason: String },

    /// A QEMU binary could not be executed.
    #[error("cannot run `{binary}`: {source}; install QEMU (Debian: apt-get install qemu-system-x86 qemu-utils) or configure the binary path")]
    BinaryNotFound {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A helper program a VM's hardware needs (swtpm) is not installed.
    #[error("cannot run `{tool}`: it is not installed; install Debian's {package} on this host, or launch the instance without that hardware")]
    MissingTool { tool: String, package: &'static str },

    /// The VM's TPM emulator (swtpm) could not be started.
    #[error("TPM: {0}; check that swtpm works on this host (`swtpm --version`)")]
    Tpm(String),

    /// A filesystem operation on a VM's files failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file the VM needs (base image, kernel, seed, disk) is missing.
    #[error("{what} {path} does not exist; {hint}")]
    MissingFile { what: &'static str, path: PathBuf, hint: &'static str },

    /// `qemu-img` exited with an error.
    #[error("`qemu-img {args}` failed ({status}): {stderr}")]
    QemuImg { args: String, status: String, stderr: String },

    /// A host port asked for in a port forward is already taken.
    #[error("host port {host_port} on 127.0.0.1 is already in use (wanted for forwarding to guest port {guest_port}); stop whatever listens there or pick another host port")]
    PortInUse { host_port: u16, guest_port: u16 },

    /// `start` was called for a VM whose QEMU process is alive.
    #[error("VM {id} is already running (pid {pid}); stop it first, or use status() to adopt it")]
    AlreadyRunning { id: String, pid: u32 },

    /// The operation needs a running VM and there is none.
    #[error("VM in {dir} is not running; start it first")]
    NotRunning { dir: PathBuf },

    /// QEMU refused to start; `stderr` is the tail of what it printed.
    #[error("QEMU failed to start VM {id} ({status}): {stderr} (full log: {log})")]
    StartFailed { id: String, status: String, stderr: String, log: PathBuf },

    /// QEMU did not finish setting up the VM in time.
    #[error("QEMU did not finish starting VM {id} within {after:?}; it was killed; see {log}")]
    StartTimeout { id: String, after: Duration, log: PathBuf },

    /// The QEMU process survived every attempt to stop it.
    #[error("QEMU process {pid} did not exit after SIGKILL (waited {waited:?}); it may be stuck in the kernel (D state): check `cat /proc/{pid}/stack` and the host's storage")]
    StopFailed { pid: u32, waited: Duration },

    /// Sending a signal to the QEMU process failed.
    #[error("cannot send signal {signal} to QEMU process {pid}: {source}; the agent needs permission to signal the VM processes (run it as the same user)")]
    Signal {
        pid: u32,
        signal: i32,
        #[source]
        source: std::io::Error,
    },

    /// The guest did not let go of a data disk in time.
    #[error("the guest did not release disk {id} within {waited:?}; it may be in use (mounted) or the guest may not support PCIe hot-unplug: unmount it in the guest and detach again, or stop the instance and detach it then")]
    DetachTimeout { id: String, waited: Duration },

    /// A point-in-time copy of a disk did not complete.
    #[error("copying the disk to {what} failed: {reason}; check free space on the host and retry")]
    CopyFailed { what: String, reason: String },

    /// The storage daemon that opens a stopped VM's disks for a backup failed.
    #[error("qemu-storage-daemon (which opens a stopped instance's disks for a backup): {0}; check the disk files and that the instance is not starting meanwhile, then retry")]
    StorageDaemon(String),

    /// Talking to QEMU's monitor failed.
    /// The running VM's vCPU count cannot change as asked.
    #[error("cannot change the vCPUs of the running VM: {0}")]
    Vcpus(String),

    #[error(transparent)]
    Qmp(#[from] QmpError),
}

impl HypervisorError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HypervisorError::Io { op, path: path.into(), source }
    }
}
