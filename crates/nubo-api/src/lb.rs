//! Load balancers: what a user asks for (`LoadBalancerCreate`), what they
//! see (`LoadBalancer`, with each backend's health and counters), and the
//! agent protocol's part (`DesiredBalancer` in the host's desired state,
//! `ActualBalancer` in its report).

use crate::ids::{HostId, InstanceId, LoadBalancerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Algorithms a balancer can use.
pub const ALGORITHMS: &[&str] = &["round-robin", "least-connections", "least-loaded"];

/// The balancer's own health checks of its backends (active: every
/// `interval_secs`; a backend that fails `unhealthy_threshold` checks in a
/// row gets no traffic until it passes `healthy_threshold` in a row).
/// HTTP balancers GET `path`; TCP balancers connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LbHealthCheck {
    /// HTTP balancers: the path checked (default `/`). Not for TCP balancers.
    #[serde(default)]
    pub path: Option<String>,
    /// Seconds between checks, 1 to 300 (default 5).
    #[serde(default)]
    pub interval_secs: Option<u32>,
    /// Seconds a check may take, 1 to 60 (default: the interval, at most 2).
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// The status a passing HTTP check answers (default: any 2xx or 3xx).
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// 1 to 10 (default 1).
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// 1 to 10 (default 1).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
}

/// `POST /api/v1/load-balancers` (or `nubo lb create`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    /// `http` (L7, each request balanced) or `tcp` (L4, each connection).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// `round-robin` (default), `least-connections` or `least-loaded`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// The guest port the targets serve on; each target must forward it (`--port`).
    pub port: u16,
    /// Instances to balance to.
    #[serde(default)]
    pub targets: Vec<InstanceId>,
    /// An instance group whose members are targets (they join and leave as it scales).
    #[serde(default)]
    pub group: Option<String>,
    /// Weights by instance id (1 to 1000, default 1).
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub health_check: Option<LbHealthCheck>,
    /// A private network (id or name) to run on: the balancer gets an
    /// address of its own there and reaches its targets at theirs, on any
    /// host, instead of through forwarded ports of its own host. Without
    /// it, the balancer listens on `127.0.0.1` of its targets' host.
    #[serde(default)]
    pub network: Option<String>,
    /// With `network`: a floating IP of the project (id or address), not
    /// associated, to listen on; the LAN reaches the balancer there, and it
    /// keeps the address when it moves to another host.
    #[serde(default)]
    pub floating_ip: Option<String>,
}

fn default_protocol() -> String {
    "http".into()
}

crate::state_enum! {
    /// A backend's health as the balancer judges it (`up`, `down`,
    /// `unknown` before its first check, `failing` when out of rotation
    /// after failed requests, `draining` once removed), or why the control
    /// plane does not make it a backend.
    pub enum BackendHealth("backend health") {
        Up = "up",
        Down = "down",
        Unknown = "unknown",
        Failing = "failing",
        Draining = "draining",
        Terminated = "terminated",
        NotRunning = "not running",
        /// The instance has no NIC on the balancer's network.
        OffNetwork = "not on the network",
        OnAnotherHost = "on another host",
        NoForwardedPort = "no forwarded port",
    }
}

impl BackendHealth {
    /// The balancer sends it traffic (or finishes what it has).
    pub fn reported(self) -> bool {
        matches!(
            self,
            BackendHealth::Up
                | BackendHealth::Down
                | BackendHealth::Unknown
                | BackendHealth::Failing
                | BackendHealth::Draining
        )
    }

    /// As the balancer checks it: unknown becomes up or down, up and down
    /// swap, a failing backend is up or down again after its pause, and
    /// any backend may be drained; a drained one is gone, not back. The
    /// control plane's reasons are not health and do not change this way.
    pub fn can_become(self, to: BackendHealth) -> bool {
        if !self.reported() || !to.reported() || self == BackendHealth::Draining {
            return false;
        }
        to != BackendHealth::Unknown
    }
}

crate::state_enum! {
    /// A balancer's state: `pending` (its host has not started it yet),
    /// `active`, or `error`.
    pub enum BalancerState("load balancer") {
        Pending = "pending",
        Active = "active",
        Error = "error",
    }
}

impl BalancerState {
    /// Pending until its host first reports it, then active or error as
    /// each report says (a reconfiguration may fail or recover); never
    /// pending again.
    pub fn can_become(self, to: BalancerState) -> bool {
        to != BalancerState::Pending
    }
}

/// One backend of a balancer: a target instance, where the balancer
/// reaches it, and what the balancer last reported about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LbBackend {
    pub instance_id: String,
    /// `127.0.0.1:<the instance's forwarded host port>` on the balancer's host.
    pub address: Option<String>,
    pub weight: u32,
    /// `up`, `down`, `unknown` (not checked yet), `failing` (out of
    /// rotation after failed requests), `draining` (removed), or why it is
    /// not a backend (`not running`, `on another host`, `no forwarded port`).
    pub health: BackendHealth,
    /// Requests (HTTP) or connections (TCP) sent to it.
    #[serde(default)]
    pub requests: u64,
    /// Of those, how many failed in the balancer (refused, reset, timed out).
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub in_flight: u64,
    /// CPU utilisation of its vCPUs as the balancer's host measures it (least-loaded uses it).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadBalancer {
    pub id: LoadBalancerId,
    pub name: String,
    pub protocol: String,
    pub algorithm: String,
    /// The targets' guest port.
    pub port: u16,
    pub targets: Vec<InstanceId>,
    pub group: Option<String>,
    pub weights: BTreeMap<String, u32>,
    /// With defaults filled in.
    pub health_check: LbHealthCheck,
    /// The host it runs on (where its targets are).
    pub host_id: HostId,
    /// Where clients connect: `127.0.0.1:<port>` on that host; for a
    /// balancer on a network, its floating IP or its address there.
    pub listen: String,
    /// The private network it runs on, if any.
    #[serde(default)]
    pub network_id: Option<crate::ids::NetworkId>,
    /// Its own address on that network.
    #[serde(default)]
    pub address: Option<String>,
    /// The floating IP it listens on, if any.
    #[serde(default)]
    pub floating_ip: Option<String>,
    /// `pending` (the host has not started it yet), `active`, or `error`.
    pub state: BalancerState,
    pub error: Option<String>,
    /// When the host started the current listener (it stays the same across reconfigurations).
    pub started_at_ms: Option<i64>,
    /// When the host last reported it.
    pub reported_at_ms: Option<i64>,
    pub backends: Vec<LbBackend>,
    pub created_at_ms: i64,
}

/// A backend as the host's balancer should have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredBackend {
    pub instance_id: InstanceId,
    /// `127.0.0.1:<host port>`: the instance's forward of the balancer's
    /// guest port; for a balancer on a network, the instance's address
    /// there and the guest port.
    pub address: String,
    pub weight: u32,
}

/// A balancer the host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredBalancer {
    pub id: LoadBalancerId,
    pub name: String,
    pub protocol: String,
    pub algorithm: String,
    /// Listen on `127.0.0.1:<listen_port>`, or with `network` on every
    /// address of the balancer's namespace.
    pub listen_port: u16,
    pub backends: Vec<DesiredBackend>,
    /// With defaults filled in.
    pub health_check: LbHealthCheck,
    /// Set for a balancer on a private network: it runs in a namespace of
    /// its own with this leg on the network's bridge.
    #[serde(default)]
    pub network: Option<BalancerLeg>,
}

/// A balancer's place on a private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BalancerLeg {
    pub vni: u32,
    pub cidr: String,
    pub gateway: String,
    pub address: String,
    pub mac: String,
}

/// A balancer as the host runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActualBalancer {
    pub id: LoadBalancerId,
    /// `active` or `error`.
    pub state: BalancerState,
    pub error: Option<String>,
    pub started_at_ms: Option<i64>,
    #[serde(default)]
    pub backends: Vec<LbBackend>,
}
