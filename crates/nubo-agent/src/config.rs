//! The agent's configuration: what `nubo agent` (or `nubo up`) was told
//! about the host, its control plane and where its files live. Every
//! component reads it; it depends on no component.

use crate::{guard, network};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server_url: String,
    /// One-time join token; needed only until the host has its own
    /// credential (kept in DATA_DIR/host-credential).
    pub join_token: Option<String>,
    /// Holds `host-id` and `instances/<id>/`.
    pub data_dir: PathBuf,
    pub image_cache: PathBuf,
    pub name: String,
    /// Capacity offered to the scheduler.
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// How often the agent re-checks reality without a desired-state change.
    pub interval: Duration,
    /// How long a guest gets to power off after ACPI shutdown before QEMU is stopped.
    pub stop_grace: Duration,
    /// Extra CA (PEM) to trust for an `https://` control plane with its own CA.
    pub ca_cert: Option<PathBuf>,
    /// Talk to a control plane on another machine over plain HTTP
    /// (`--insecure-http`); refused otherwise (see `trust`).
    pub insecure_http: bool,
    /// Program and leading arguments QEMU runs for each guest connection to
    /// the metadata service (169.254.169.254:80); the socket path is
    /// appended. `nubo agent` uses `[<itself>, "imds-relay"]`. `None`
    /// leaves instances without a metadata service.
    pub metadata_relay: Option<Vec<String>>,
    /// How often the host and its instances are sampled (monitoring).
    pub metrics_interval: Duration,
    /// Where Nagios plugins of plugin checks are looked up.
    pub plugin_dirs: Vec<PathBuf>,
    /// Private networks (bridges, VXLAN, DHCP, firewall); none: instances
    /// have user-mode networking only.
    pub network: Option<network::NetworkConfig>,
    /// The address migration targets here listen on (NBD and QEMU state).
    pub migration_address: String,
    /// Instance disks and volumes live here instead of in `data_dir`, on
    /// storage other hosts mount at the same path.
    pub shared_storage: Option<PathBuf>,
    /// The confinement of this host's guests (see [`guard`]); None when
    /// the operator turned it off or the driver starts no QEMU.
    pub guard: Option<Arc<guard::GuestGuard>>,
}

impl AgentConfig {
    /// Where instance directories (disk, seed, sockets, logs) live.
    pub fn instances_root(&self) -> PathBuf {
        self.shared_storage.as_ref().unwrap_or(&self.data_dir).join("instances")
    }

    /// Where volume files live.
    pub fn volumes_root(&self) -> PathBuf {
        self.shared_storage.as_ref().unwrap_or(&self.data_dir).join("volumes")
    }
}
