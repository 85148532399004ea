//! Runs Nubo VMs on this host.
//!
//! This crate owns everything between "the agent wants VM X running with this
//! config" and a QEMU process: the [`Hypervisor`] trait (one implementation per
//! driver: [`Qemu`], and [`Simulated`], which starts no VM and exists for
//! scale tests and benchmarks), the per-VM instance directory layout ([`VmDir`]),
//! the QEMU command line ([`qemu_argv`]), accelerator detection
//! ([`detect_accel`]), a small typed QMP client ([`qmp`]) and a QEMU Guest
//! Agent client ([`QgaClient`]) for the agent channel every VM gets, and
//! data disks ([`DataDisk`]): hot-plug, unplug, online resize and
//! point-in-time copies, and backups' incremental copies through dirty
//! bitmaps (of a stopped VM through a storage daemon). Serial consoles are capped on disk ([`console`]).
//!
//! VMs run outside the caller's process group and session (QEMU `-daemonize`),
//! so a restarted agent re-adopts them through the pidfile and QMP socket kept
//! in the instance directory.

mod accel;
mod argv;
mod bitmaps;
mod config;
pub mod console;
mod dir;
mod disks;
mod error;
pub mod firmware;
mod hypervisor;
mod migration;
mod process;
mod qemu;
pub mod qga;
pub mod qmp;
mod simulated;
mod storage_daemon;
mod tap;
mod vcpus;

pub use accel::{detect_accel, Accel, AccelPreference, ParseAccelError};
pub use argv::{qemu_argv, restrict_user_net};
pub use bitmaps::{DirtyBitmap, MapExtent, TrackedCopy};
pub use config::{
    mac_for, validate_id, Boot, CdRom, DataDisk, PortForward, VmConfig, CDROM_DEVICE, DEFAULT_HOTPLUG_SLOTS,
    GUEST_ADDR, MAX_DISK_SERIAL, METADATA_ADDR, METADATA_NET,
};
pub use dir::VmDir;
pub use disks::{AttachedDisk, BackupJob};
pub use error::HypervisorError;
pub use firmware::VmHardware;
pub use hypervisor::{BlockStats, Hypervisor, VmStatus, VmUsage};
pub use migration::{MigratingDisk, MigrationStats};
pub use qemu::Qemu;
pub use qga::{
    GuestAgentInfo, GuestDisk, GuestExec, GuestExecStatus, GuestFileRead, GuestFilesystem, GuestIpAddress,
    GuestNetworkInterface, GuestOsInfo, QgaClient, QgaError, ShutdownMode,
};
pub use simulated::Simulated;
pub use storage_daemon::{OfflineDisk, StorageDaemon};
pub use tap::{TapNic, TAP_FD_BASE};
