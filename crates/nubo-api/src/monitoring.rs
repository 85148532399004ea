//! Monitoring's vocabulary: metric samples as agents send them and series
//! as users read them, Nagios-style health checks (what a host runs and
//! what it found), alert rules and alerts. Inputs (`*Create`) are kept
//! apart from outputs, as in `params` and `views`.

use crate::ids::{AlertId, AlertRuleId, CheckId};
use serde::{Deserialize, Serialize};

/// Longest metric name: `[a-z][a-z0-9_:.]*`.
pub const MAX_METRIC_NAME: usize = 100;

/// Whether `name` is a valid metric name (Prometheus-like: lower case,
/// digits, `_`, `:` and `.`, starting with a letter).
pub fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_:.".contains(&b))
}

// ---- agent protocol ----

/// One measurement of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSample {
    /// The host (`h-...`) or instance (`i-...`) it is about.
    pub resource: String,
    /// e.g. `cpu_percent`, `disk_read_bytes_per_second`, `fs_used_bytes`.
    pub metric: String,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    pub value: f64,
}

/// Most samples one [`MetricsBatch`] may carry; an agent with more sends
/// several batches.
pub const MAX_METRICS_BATCH: usize = 20_000;

/// `POST /api/v1/agent/hosts/{id}/metrics`: samples of the host and its instances.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsBatch {
    pub samples: Vec<MetricSample>,
}

/// What a check does, resolved for the host that runs it (macros such as
/// `$PORT:80$` already replaced by the forwarded host port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CheckAction {
    /// A Nagios plugin: program (a name in the agent's plugin directory)
    /// and arguments; exit code 0/1/2/3 is OK/WARNING/CRITICAL/UNKNOWN.
    Plugin { command: Vec<String> },
    /// A TCP connect to `127.0.0.1:port` on the host.
    Tcp { port: u16 },
    /// An HTTP GET of `path` on `127.0.0.1:port`, expecting `expect_status`.
    Http { port: u16, path: String, expect_status: u16 },
    /// The instance's QEMU answers QMP and runs, and its guest agent answers.
    Liveness { instance: crate::ids::InstanceId },
}

/// A check this host runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredCheck {
    pub id: CheckId,
    pub action: CheckAction,
    /// Seconds between runs now (the retry interval while a problem is soft).
    pub interval_secs: u64,
    pub timeout_secs: u64,
}

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckResult {
    pub check_id: CheckId,
    /// 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios plugin exit codes).
    pub status: u8,
    /// The first line of output (before `|`).
    pub output: String,
    /// Nagios performance data (after `|`), e.g. `time=0.002s;;;0 size=120B;;;0`.
    #[serde(default)]
    pub perfdata: String,
    pub at_ms: i64,
}

/// `POST /api/v1/agent/hosts/{id}/checks`: results of checks the host ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckResults {
    pub results: Vec<CheckResult>,
}

/// `GET /api/v1/agent/hosts/{id}/checks`: the checks the host should run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostChecks {
    pub checks: Vec<DesiredCheck>,
}

// ---- user API: inputs ----

/// `POST /api/v1/checks`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique per target.
    pub name: String,
    /// The instance (`i-...`) or, for operators, host (`h-...`) to watch.
    pub target: String,
    /// `tcp`, `http`, `liveness` or `plugin` (operators only: it runs a
    /// program on the host).
    pub kind: String,
    /// Guest port for `tcp` and `http` (its forwarded host port is used).
    #[serde(default)]
    pub port: Option<u16>,
    /// `http`: the path (default `/`) and the status expected (default 200).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// `plugin`: the plugin and its arguments, e.g. `["check_http", "-H",
    /// "$HOSTADDRESS$", "-p", "$PORT:80$"]`. `$HOSTADDRESS$` is where the
    /// target answers from the host (127.0.0.1 for an instance's forwarded
    /// ports); `$PORT:N$` is the host port forwarded to the guest's port N.
    #[serde(default)]
    pub command: Vec<String>,
    /// Seconds between checks (default 60), between retries of a soft
    /// problem (default: a fifth of that, at least 1), attempts before a
    /// problem is hard (default 3), and the timeout (default 10).
    #[serde(default)]
    pub interval_secs: Option<u64>,
    #[serde(default)]
    pub retry_interval_secs: Option<u64>,
    #[serde(default)]
    pub max_attempts: Option<u64>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `POST /api/v1/alert-rules`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    /// `metric` (a threshold on a metric) or `check` (a check's hard state).
    pub kind: String,
    /// An instance or host id, or `*` for every instance of the project.
    pub target: String,
    /// `metric` rules: the metric, the comparison (`>`, `>=`, `<`, `<=`),
    /// the threshold and how long it must hold before the alert fires.
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub for_secs: Option<u64>,
    /// `check` rules: one check (default: any check of the target), and the
    /// lowest hard state that fires: `WARNING` or `CRITICAL` (default).
    #[serde(default)]
    pub check_id: Option<CheckId>,
    #[serde(default)]
    pub min_state: Option<String>,
    /// Where notifications are POSTed (JSON); always written to the event log too.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// `POST /api/v1/alerts/{id}/silence`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSilence {
    /// For how long no notification is sent (at most 30 days).
    pub for_secs: u64,
}

// ---- user API: outputs ----

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricPoint {
    pub at_ms: i64,
    pub value: f64,
}

/// `GET /api/v1/metrics`: one series over a time range.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricSeries {
    pub resource: String,
    pub metric: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    /// `raw` (samples of the last day) or `rollup` (one-minute rollups).
    pub source: String,
    /// The average of each step that has data, oldest first.
    pub points: Vec<MetricPoint>,
}

/// The newest value of one series.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetricLatest {
    pub metric: String,
    pub at_ms: i64,
    pub value: f64,
}

crate::state_enum! {
    /// A check's state, Nagios' spelling: `PENDING` (not run yet), then
    /// what its plugin's exit code says (`OK`, `WARNING`, `CRITICAL`,
    /// `UNKNOWN`).
    pub enum CheckState("check") {
        Pending = "PENDING",
        Ok = "OK",
        Warning = "WARNING",
        Critical = "CRITICAL",
        Unknown = "UNKNOWN",
    }
}

impl CheckState {
    /// The states a plugin's exit code gives, in exit-code order (0-3).
    pub const BY_STATUS: [CheckState; 4] =
        [CheckState::Ok, CheckState::Warning, CheckState::Critical, CheckState::Unknown];

    /// What a plugin exit code means; any other code is `UNKNOWN`.
    pub fn from_status(status: u8) -> CheckState {
        Self::BY_STATUS.get(usize::from(status)).copied().unwrap_or(CheckState::Unknown)
    }

    /// The exit code that gives this state; none for `PENDING`.
    pub fn status(self) -> Option<u8> {
        Self::BY_STATUS.iter().position(|s| *s == self).map(|p| p as u8)
    }

    /// Every result moves a check to the state its exit code gives; no
    /// result makes it `PENDING` again.
    pub fn can_become(self, to: CheckState) -> bool {
        to != CheckState::Pending
    }

    /// A hard check in this state fires a rule whose lowest firing state
    /// is `min`: `WARNING` fires on anything but OK, `CRITICAL` (or
    /// anything else) on CRITICAL only.
    pub fn fires(self, min: CheckState) -> bool {
        match min {
            CheckState::Warning => {
                matches!(self, CheckState::Warning | CheckState::Critical | CheckState::Unknown)
            }
            _ => self == CheckState::Critical,
        }
    }
}

crate::state_enum! {
    /// Whether a check's state is `SOFT` (being retried) or `HARD` (confirmed).
    pub enum CheckStateType("check state type") {
        Soft = "SOFT",
        Hard = "HARD",
    }
}

crate::state_enum! {
    /// Where an alert is: `pending` (its condition holds, not for long
    /// enough yet), `firing`, or `resolved`.
    pub enum AlertState("alert") {
        Pending = "pending",
        Firing = "firing",
        Resolved = "resolved",
    }
}

impl AlertState {
    /// Pending, then firing once the condition has held long enough, then
    /// resolved; a pending alert whose condition cleared is resolved
    /// without having fired (and so is any alert of a deleted rule).
    pub fn can_become(self, to: AlertState) -> bool {
        matches!(
            (self, to),
            (AlertState::Pending, AlertState::Firing | AlertState::Resolved)
                | (AlertState::Firing, AlertState::Resolved)
        )
    }
}

crate::state_enum! {
    /// A webhook delivery (of an alert's notification): `pending` (being
    /// retried), `sent` or `failed` (gave up).
    pub enum NotificationState("notification") {
        Pending = "pending",
        Sent = "sent",
        Failed = "failed",
    }
}

impl NotificationState {
    /// A pending delivery is sent, or failed once it has run out of
    /// attempts (an attempt that failed but may be retried leaves it
    /// pending); then it never changes.
    pub fn can_become(self, to: NotificationState) -> bool {
        matches!((self, to), (NotificationState::Pending, _))
    }
}

/// One state change of a check.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckEvent {
    pub at_ms: i64,
    pub state: CheckState,
    pub state_type: CheckStateType,
    pub attempt: u64,
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Check {
    pub id: CheckId,
    pub name: String,
    pub target: String,
    pub kind: String,
    /// What it runs, as given (macros unresolved).
    pub spec: serde_json::Value,
    pub interval_secs: u64,
    pub retry_interval_secs: u64,
    pub max_attempts: u64,
    pub timeout_secs: u64,
    /// `PENDING` (not run yet), `OK`, `WARNING`, `CRITICAL` or `UNKNOWN`.
    pub state: CheckState,
    /// `SOFT` (being retried) or `HARD` (confirmed).
    pub state_type: CheckStateType,
    pub attempt: u64,
    pub output: String,
    pub perfdata: String,
    pub last_check_ms: Option<i64>,
    pub last_change_ms: Option<i64>,
    /// State changes, newest first (show only).
    #[serde(default)]
    pub history: Vec<CheckEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRule {
    pub id: AlertRuleId,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub metric: Option<String>,
    pub op: Option<String>,
    pub threshold: Option<f64>,
    pub for_secs: u64,
    pub check_id: Option<CheckId>,
    pub min_state: Option<CheckState>,
    pub webhook_url: Option<String>,
    pub created_at_ms: i64,
}

/// A notification of an alert to a webhook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    /// `firing` or `resolved`.
    pub kind: String,
    pub url: String,
    /// `pending` (being retried), `sent` or `failed` (gave up).
    pub state: NotificationState,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: AlertId,
    pub rule_id: AlertRuleId,
    pub rule: String,
    pub resource: String,
    /// `firing` or `resolved`.
    pub state: AlertState,
    pub summary: String,
    pub value: Option<f64>,
    pub started_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at_ms: Option<i64>,
    pub silenced_until_ms: Option<i64>,
    #[serde(default)]
    pub notifications: Vec<Notification>,
}

/// An entry of the cloud's event log (alerts, check state changes).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloudEvent {
    pub at_ms: i64,
    pub resource: String,
    pub kind: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_names() {
        for ok in ["cpu_percent", "check:web:time", "fs.used", "a1"] {
            assert!(super::valid_metric_name(ok), "{ok}");
        }
        for bad in ["", "Cpu", "1x", "cpu percent", "cpu{x}", &"a".repeat(101)] {
            assert!(!super::valid_metric_name(bad), "{bad}");
        }
    }
}
