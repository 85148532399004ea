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

/// `POST /api/v1/auth/login`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// Project to work in; defaults to the user's first project.
    #[serde(default)]
    pub project: Option<String>,
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub name: String,
    /// Lifetime in seconds; none means it never expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// `POST /api/v1/projects`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    pub name: String,
    #[serde(default)]
    pub quota: Option<Quota>,
}

/// Limits of one project; absent fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default)]
    pub instances: Option<u64>,
    #[serde(default)]
    pub vcpus: Option<u64>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub volume_gib: Option<u64>,
}

/// `POST /api/v1/users`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub name: String,
    /// Local password (at least 8 characters).
    pub password: String,
    /// Operator with rights over everything.
    #[serde(default)]
    pub admin: bool,
}

/// `PUT /api/v1/projects/{id}/members/{user}`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSet {
    /// `member` or `reader`.
    pub role: String,
}

/// `POST /api/v1/agent/join`: a new host trades a one-time join token for
/// its own credential.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostJoin {
    pub join_token: String,
    pub host_id: crate::ids::HostId,
}
