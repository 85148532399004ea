//! Nubo's public API vocabulary, shared by the control plane, the agent and
//! every client. Inputs (`params`) are kept apart from outputs (`views`);
//! ids are typed so an instance id can never be passed where a host id is
//! expected; `agent` holds the control-plane <-> compute-node protocol;
//! `monitoring` the metrics, checks and alerts vocabulary.

pub mod agent;
pub mod automation;
pub mod backup;
pub mod cidr;
pub mod console;
pub mod error;
pub mod hardware;
pub mod ids;
pub mod join;
pub mod launch_templates;
pub mod lb;
pub mod monitoring;
pub mod params;
pub mod state;
pub mod views;

/// The line the `tiny` image prints on its serial console once it has
/// finished booting. The agent watches for it to time boot-complete.
pub const BOOT_COMPLETE_MARKER: &str = "NUBO_BOOT_COMPLETE";

/// Largest user-data accepted, as EC2 does (16 KiB there, 64 KiB here).
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// Most volumes one instance can have attached (each takes one of the
/// PCIe root ports every VM gets at boot).
pub const MAX_VOLUMES_PER_INSTANCE: u32 = 8;
