//! What a balancer is told: its listeners, backends, algorithm, health
//! checks and timeouts, as the agent builds them from the control plane's
//! desired state or as `nubo lb serve` reads them from a TOML or JSON
//! file. Validation lives here so both owners refuse the same mistakes.

use crate::LbError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// How the next request (or connection) picks its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Smooth weighted round-robin (nginx's): over any window, each
    /// healthy backend gets its weight's share, interleaved.
    RoundRobin,
    /// The backend with the fewest requests in flight per unit of weight.
    LeastConnections,
    /// The backend with the lowest load score (CPU utilisation and
    /// requests in flight), by power-of-two-choices; see [`crate::algorithm::score`].
    LeastLoaded,
}

impl Algorithm {
    pub const NAMES: &'static [&'static str] = &["round-robin", "least-connections", "least-loaded"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::LeastConnections => "least-connections",
            Self::LeastLoaded => "least-loaded",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(Self::RoundRobin),
            "least-connections" => Ok(Self::LeastConnections),
            "least-loaded" => Ok(Self::LeastLoaded),
            other => Err(format!("unknown algorithm '{other}': use one of {}", Self::NAMES.join(", "))),
        }
    }
}

/// L7 (HTTP/1.1, requests balanced one by one) or L4 (TCP, connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Self::Http),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!("unknown protocol '{other}': use http or tcp")),
        }
    }
}

/// One backend: a stable id (the agent uses the instance id), where it
/// listens, and its weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub id: String,
    pub address: SocketAddr,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Active and passive health checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Active checks on (off: every backend counts as up unless passive
    /// failures mark it down).
    pub active: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// HTTP listeners: the path checked with a GET. `None` on an HTTP
    /// listener means `/`; TCP listeners always check by connecting.
    pub path: Option<String>,
    /// The status a passing HTTP check answers; `None`: any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// Consecutive passing checks that bring a backend (back) up.
    pub rise: u32,
    /// Consecutive failing checks that take it down.
    pub fall: u32,
    /// Consecutive failed requests (connection refused or closed before a
    /// response) that take a backend out of rotation for `passive_down_ms`.
    pub passive_failures: u32,
    pub passive_down_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            active: true,
            interval_ms: 2_000,
            timeout_ms: 1_000,
            path: None,
            expect_status: None,
            rise: 1,
            fall: 1,
            passive_failures: 1,
            passive_down_ms: 5_000,
        }
    }
}

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Time limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a backend.
    pub connect_ms: u64,
    /// From sending a request to the backend's response head (HTTP).
    pub response_ms: u64,
    /// A client connection that sends no request head for this long is closed (HTTP).
    pub client_header_ms: u64,
    /// Idle keep-alive connections to backends are closed after this long.
    pub backend_idle_ms: u64,
    /// A removed backend's connections still open after this long are cut.
    pub drain_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: 2_000,
            response_ms: 30_000,
            client_header_ms: 30_000,
            backend_idle_ms: 60_000,
            drain_ms: 30_000,
        }
    }
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub fn response(&self) -> Duration {
        Duration::from_millis(self.response_ms)
    }
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }
}

/// One listener and everything behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Names the balancer in logs and stats (the agent uses the balancer id).
    pub id: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub algorithm: Algorithm,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// Most backends one listener takes.
pub const MAX_BACKENDS: usize = 1_000;
/// Largest weight (weights are relative: 1..=1000).
pub const MAX_WEIGHT: u32 = 1_000;

impl ListenerConfig {
    /// Refuses what would misbehave at run time, saying what to change.
    pub fn validate(&self) -> Result<(), LbError> {
        let bad = |m: String| Err(LbError::Config(format!("listener {}: {m}", self.id)));
        if self.id.is_empty() {
            return Err(LbError::Config("a listener needs an id".into()));
        }
        if self.backends.len() > MAX_BACKENDS {
            return bad(format!("{} backends; at most {MAX_BACKENDS}", self.backends.len()));
        }
        let mut ids = HashSet::new();
        for b in &self.backends {
            if !ids.insert(b.id.as_str()) {
                return bad(format!("backend id '{}' appears twice; give each backend its own id", b.id));
            }
            if b.weight == 0 || b.weight > MAX_WEIGHT {
                return bad(format!("backend '{}' has weight {}; use 1 to {MAX_WEIGHT}", b.id, b.weight));
            }
        }
        let h = &self.health;
        if h.interval_ms < 100 || h.interval_ms > 3_600_000 {
            return bad("health.interval_ms must be 100 to 3600000".into());
        }
        if h.timeout_ms < 10 || h.timeout_ms > 60_000 {
            return bad("health.timeout_ms must be 10 to 60000".into());
        }
        if !(1..=100).contains(&h.rise) || !(1..=100).contains(&h.fall) || !(1..=100).contains(&h.passive_failures) {
            return bad("health.rise, health.fall and health.passive_failures must be 1 to 100".into());
        }
        if let Some(p) = &h.path {
            if !p.starts_with('/') || p.len() > 1024 || p.chars().any(|c| c.is_control() || c == ' ') {
                return bad(format!("health.path '{p}' must start with '/' and hold no spaces or control characters"));
            }
        }
        if let Some(s) = h.expect_status {
            if !(100..=599).contains(&s) {
                return bad(format!("health.expect_status {s} is not an HTTP status (100 to 599)"));
            }
        }
        let t = &self.timeouts;
        for (name, v) in [
            ("connect_ms", t.connect_ms),
            ("response_ms", t.response_ms),
            ("client_header_ms", t.client_header_ms),
            ("backend_idle_ms", t.backend_idle_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                return bad(format!("timeouts.{name} must be 1 to 3600000"));
            }
        }
        Ok(())
    }

    /// The path an HTTP check asks for.
    pub fn health_path(&self) -> &str {
        self.health.path.as_deref().unwrap_or("/")
    }
}

/// `nubo lb serve`: listeners and where to expose their counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// `GET /stats` on this address answers every listener's counters as JSON.
    #[serde(default)]
    pub stats_listen: Option<SocketAddr>,
    pub listeners: Vec<ListenerConfig>,
}

impl ServeConfig {
    /// Reads a `.json` file as JSON and anything else as TOML.
    pub fn from_file(path: &Path) -> Result<Self, LbError> {
        let text = std::fs::read_to_string(path).map_err(|source| LbError::Read { path: path.into(), source })?;
        let parsed: Result<Self, String> = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let cfg = parsed.map_err(|message| LbError::Parse { path: path.into(), message })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), LbError> {
        if self.listeners.is_empty() {
            return Err(LbError::Config("no listeners: add at least one [[listeners]] table".into()));
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for l in &self.listeners {
            l.validate()?;
            if !ids.insert(&l.id) {
                return Err(LbError::Config(format!("listener id '{}' appears twice", l.id)));
            }
            if !addrs.insert(l.listen) {
                return Err(LbError::Config(format!("two listeners on {}", l.listen)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_and_refuses_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb.toml");
        std::fs::write(
            &path,
            r#"
stats_listen = "127.0.0.1:9901"
[[listeners]]
id = "web"
listen = "127.0.0.1:8080"
protocol = "http"
algorithm = "least-loaded"
health = { interval_ms = 1000, path = "/healthz" }
backends = [
  { id = "a", address = "127.0.0.1:9001", weight = 2 },
  { id = "b", address = "127.0.0.1:9002" },
]
"#,
        )
        .unwrap();
        let cfg = ServeConfig::from_file(&path).unwrap();
        let l = &cfg.listeners[0];
        assert_eq!((l.algorithm, l.backends[1].weight, l.health_path()), (Algorithm::LeastLoaded, 1, "/healthz"));
        assert_eq!(l.health.fall, 1, "defaults fill what is not given");

        let mut bad = l.clone();
        bad.backends[1].id = "a".into();
        assert!(bad.validate().unwrap_err().to_string().contains("appears twice"));
        let mut bad = l.clone();
        bad.backends[0].weight = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("weight 0"));
        let mut bad = l.clone();
        bad.health.path = Some("healthz".into());
        assert!(bad.validate().unwrap_err().to_string().contains("must start with '/'"));
        std::fs::write(&path, "listeners = []").unwrap();
        assert!(ServeConfig::from_file(&path).unwrap_err().to_string().contains("no listeners"));
        assert_eq!(
            "fastest".parse::<Algorithm>().unwrap_err(),
            "unknown algorithm 'fastest': use one of round-robin, least-connections, least-loaded"
        );
    }
}
