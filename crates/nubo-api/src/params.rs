//! Request bodies (inputs). Unknown fields are refused so a typo is an
//! error, not a silently ignored option.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/instances`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// Image name, e.g. `tiny`.
    pub image: String,
    /// Number of virtual CPUs (1..=64).
    pub vcpus: u32,
    /// Memory in MiB (64..=1048576).
    pub memory_mib: u64,
    /// Root disk size in GiB (1..=16384).
    pub disk_gib: u64,
    /// Optional name: 1-63 letters, digits, `-`, `_` or `.`.
    #[serde(default)]
    pub name: Option<String>,
    /// User-data (a `#!` script runs at boot on `tiny`), at most 64 KiB.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Guest TCP ports to forward from the host's 127.0.0.1.
    #[serde(default)]
    pub ports: Vec<u16>,
}
