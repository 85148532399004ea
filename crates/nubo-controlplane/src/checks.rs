//! Health checks, Nagios-style: what each host must run (with `$PORT:N$`
//! and `$HOSTADDRESS$` resolved for it), and the state machine its
//! results drive. A problem is first SOFT and re-checked at the retry
//! interval; after `max_attempts` non-OK results in a row it is HARD.
//! A HARD state change is what alerts fire on. Every change is kept in
//! the check's history, perfdata becomes metrics, and host heartbeats (and
//! backup verifications, `app::backup_verification`) are judged by the
//! control plane itself.

use crate::store::{now_ms, Store};
use nubo_api::ids::{CheckId, InstanceId};
use nubo_api::monitoring::{
    CheckAction, CheckEvent, CheckResult, CheckState, CheckStateType, DesiredCheck, MetricSample,
};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct CheckRow {
    pub id: String,
    pub project_id: Option<String>,
    pub name: String,
    pub target: String,
    pub kind: String,
    pub spec_json: String,
    pub interval_secs: i64,
    pub retry_interval_secs: i64,
    pub max_attempts: i64,
    pub timeout_secs: i64,
    pub state: CheckState,
    pub state_type: CheckStateType,
    pub attempt: i64,
    pub output: String,
    pub perfdata: String,
    pub last_check_ms: Option<i64>,
    pub last_change_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// What a check does, as stored (macros unresolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum CheckSpec {
    Plugin {
        command: Vec<String>,
    },
    Tcp {
        port: u16,
    },
    Http {
        port: u16,
        path: String,
        expect_status: u16,
    },
    Liveness,
    Heartbeat,
    /// The result of verifying an instance's backups (booted from the
    /// backup, its checks run): judged by the control plane, like
    /// `Heartbeat`, never by a host (see `app::backup_verification`).
    BackupVerification,
}

/// One state transition of a check, as [`next_state`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: CheckState,
    pub state_type: CheckStateType,
    pub attempt: i64,
    /// The state or its type changed (history gets an entry).
    pub changed: bool,
    /// A HARD state was entered or changed (what notifications follow).
    pub hard_change: bool,
}

/// Nagios' soft/hard logic: `status` (0-3) after `state`/`state_type`/`attempt`.
pub fn next_state(
    state: CheckState,
    state_type: CheckStateType,
    attempt: i64,
    max_attempts: i64,
    status: u8,
) -> Transition {
    use CheckState::{Ok as OK, Pending};
    use CheckStateType::{Hard, Soft};
    let new = CheckState::from_status(status);
    debug_assert!(state.can_become(new));
    let was_ok = state == OK || state == Pending;
    if new == OK {
        // A recovery is hard at once; it is news only after a hard problem.
        let hard_change = state != OK && (state_type == Hard || state == Pending);
        return Transition { state: OK, state_type: Hard, attempt: 1, changed: state != OK, hard_change };
    }
    if was_ok {
        if max_attempts <= 1 {
            return Transition { state: new, state_type: Hard, attempt: 1, changed: true, hard_change: true };
        }
        return Transition { state: new, state_type: Soft, attempt: 1, changed: true, hard_change: false };
    }
    if state_type == Soft {
        let attempt = attempt + 1;
        if attempt >= max_attempts {
            return Transition { state: new, state_type: Hard, attempt, changed: true, hard_change: true };
        }
        return Transition { state: new, state_type: Soft, attempt, changed: state != new, hard_change: false };
    }
    // Already a hard problem: a different problem state is a hard change.
    Transition { state: new, state_type: Hard, attempt, changed: state != new, hard_change: state != new }
}

/// A perfdata value in base units (seconds, bytes), from `12ms`, `3KB`, `80%`...
fn perf_value(v: &str) -> Option<f64> {
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E'))
        .unwrap_or(v.len());
    let (num, uom) = v.split_at(end);
    let n: f64 = num.parse().ok()?;
    let scale = match uom {
        "" | "s" | "%" | "c" | "B" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    Some(n * scale)
}

/// Turns a Nagios label into a metric name part: lower case, `[a-z0-9_]`.
fn metric_part(label: &str) -> String {
    let s: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    s.trim_matches('_').chars().take(40).collect()
}

/// Perfdata (`label=value[uom];warn;crit;min;max ...`, labels may be
/// quoted) as `(label, value in base units)`.
pub fn parse_perfdata(perf: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut rest = perf.trim();
    while !rest.is_empty() {
        let (label, after) = if let Some(r) = rest.strip_prefix('\'') {
            match r.split_once("'=") {
                Some((l, a)) => (l, a),
                None => break,
            }
        } else {
            match rest.split_once('=') {
                Some((l, a)) => (l, a),
                None => break,
            }
        };
        let (value_part, next) = after.split_once(' ').unwrap_or((after, ""));
        let value = value_part.split(';').next().unwrap_or("");
        if let Some(v) = perf_value(value) {
            let name = metric_part(label.trim());
            if !name.is_empty() {
                out.push((name, v));
            }
        }
        rest = next.trim_start();
    }
    out
}

impl CheckRow {
    pub fn spec(&self) -> Option<CheckSpec> {
        serde_json::from_str(&self.spec_json).ok()
    }

    /// Seconds until the next run: the retry interval while a problem is soft.
    pub fn effective_interval(&self) -> u64 {
        let secs = if self.state_type == CheckStateType::Soft && self.state != CheckState::Ok {
            self.retry_interval_secs
        } else {
            self.interval_secs
        };
        secs.max(1) as u64
    }
}

/// Replaces `$HOSTADDRESS$`, `$INSTANCE$` and `$PORT:N$` in a plugin's
/// argument; `ports` maps guest ports to the host ports forwarding them.
pub fn resolve_macros(arg: &str, instance: &str, ports: &[(u16, u16)]) -> Result<String, String> {
    let mut out = arg.replace("$HOSTADDRESS$", "127.0.0.1").replace("$INSTANCE$", instance);
    while let Some(start) = out.find("$PORT:") {
        let rest = &out[start + 6..];
        let end = rest.find('$').ok_or_else(|| format!("unterminated $PORT: macro in {arg:?}"))?;
        let guest: u16 = rest[..end].parse().map_err(|_| format!("$PORT:{}$ is not a port number", &rest[..end]))?;
        let host = ports
            .iter()
            .find(|(g, _)| *g == guest)
            .map(|(_, h)| *h)
            .ok_or_else(|| format!("guest port {guest} is not forwarded for this instance"))?;
        out = format!("{}{host}{}", &out[..start], &rest[end + 1..]);
    }
    Ok(out)
}

pub struct NewCheck<'a> {
    pub id: &'a CheckId,
    pub project_id: Option<&'a str>,
    pub name: &'a str,
    pub target: &'a str,
    pub spec: &'a CheckSpec,
    pub interval_secs: u64,
    pub retry_interval_secs: u64,
    pub max_attempts: u64,
    pub timeout_secs: u64,
}

impl Store {
    /// Inserts a check; false when the target has one by that name.
    pub async fn insert_check(&self, c: &NewCheck<'_>) -> Result<bool, sqlx::Error> {
        let kind = match c.spec {
            CheckSpec::Plugin { .. } => "plugin",
            CheckSpec::Tcp { .. } => "tcp",
            CheckSpec::Http { .. } => "http",
            CheckSpec::Liveness => "liveness",
            CheckSpec::Heartbeat => "heartbeat",
            CheckSpec::BackupVerification => "backup_verification",
        };
        let r = sqlx::query(
            "INSERT INTO checks (id, project_id, name, target, kind, spec_json, interval_secs, retry_interval_secs,
               max_attempts, timeout_secs, state, state_type, attempt, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'PENDING', 'HARD', 1, $11)
             ON CONFLICT DO NOTHING",
        )
        .bind(c.id.as_str())
        .bind(c.project_id)
        .bind(c.name)
        .bind(c.target)
        .bind(kind)
        .bind(serde_json::to_string(c.spec).unwrap_or_default())
        .bind(c.interval_secs as i64)
        .bind(c.retry_interval_secs as i64)
        .bind(c.max_attempts as i64)
        .bind(c.timeout_secs as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every host gets a heartbeat check, watched by the control plane.
    pub async fn ensure_heartbeat_check(&self, host: &str, interval_secs: u64) -> Result<(), sqlx::Error> {
        let id = CheckId::generate();
        self.insert_check(&NewCheck {
            id: &id,
            project_id: None,
            name: "heartbeat",
            target: host,
            spec: &CheckSpec::Heartbeat,
            interval_secs,
            retry_interval_secs: interval_secs,
            max_attempts: 1,
            timeout_secs: interval_secs,
        })
        .await
        .map(drop)
    }

    pub async fn check(&self, id: &str) -> Result<Option<CheckRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM checks WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Checks of one project, or (for `None`) all.
    pub async fn checks(&self, project: Option<&str>) -> Result<Vec<CheckRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM checks WHERE ($1 IS NULL OR project_id = $1) ORDER BY target, name")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn delete_check(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM check_history WHERE check_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM checks WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }

    pub async fn check_history(&self, id: &str, limit: i64) -> Result<Vec<CheckEvent>, sqlx::Error> {
        let rows: Vec<(i64, CheckState, CheckStateType, i64, String)> = sqlx::query_as(
            "SELECT at_ms, state, state_type, attempt, output FROM check_history WHERE check_id = $1
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at_ms, state, state_type, attempt, output)| CheckEvent {
                at_ms,
                state,
                state_type,
                attempt: attempt as u64,
                output,
            })
            .collect())
    }

    /// The checks `host` runs: its own, and those of its running instances,
    /// with their macros resolved against the instance's forwarded ports.
    pub async fn host_checks(&self, host: &str) -> Result<Vec<DesiredCheck>, sqlx::Error> {
        let rows: Vec<CheckRow> = sqlx::query_as(
            "SELECT checks.* FROM checks LEFT JOIN instances ON instances.id = checks.target
             WHERE checks.kind NOT IN ('heartbeat', 'backup_verification') AND (checks.target = $1
               OR (instances.host_id = $1 AND instances.desired = 'running' AND instances.state = 'running'))
             ORDER BY checks.id",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        let ports = self.ports_on_host(host).await?;
        let mut out = Vec::new();
        for c in rows {
            let Some(spec) = c.spec() else { continue };
            let forwarded: Vec<(u16, u16)> = ports
                .iter()
                .filter(|p| p.instance_id == c.target)
                .map(|p| (p.guest_port as u16, p.host_port as u16))
                .collect();
            let host_port = |guest: u16| forwarded.iter().find(|(g, _)| *g == guest).map(|(_, h)| *h);
            let action = match spec {
                CheckSpec::Plugin { command } => {
                    let resolved: Result<Vec<String>, String> =
                        command.iter().map(|a| resolve_macros(a, &c.target, &forwarded)).collect();
                    match resolved {
                        Ok(command) => CheckAction::Plugin { command },
                        Err(e) => {
                            tracing::warn!(check = %c.id, error = %e, "check skipped");
                            continue;
                        }
                    }
                }
                CheckSpec::Tcp { port } => match host_port(port) {
                    Some(port) => CheckAction::Tcp { port },
                    None => continue,
                },
                CheckSpec::Http { port, path, expect_status } => match host_port(port) {
                    Some(port) => CheckAction::Http { port, path, expect_status },
                    None => continue,
                },
                CheckSpec::Liveness => match c.target.parse::<InstanceId>() {
                    Ok(instance) => CheckAction::Liveness { instance },
                    Err(_) => continue,
                },
                CheckSpec::Heartbeat | CheckSpec::BackupVerification => continue,
            };
            out.push(DesiredCheck {
                id: c.id.parse().map_err(|e: nubo_api::ids::IdError| sqlx::Error::Decode(Box::new(e)))?,
                action,
                interval_secs: c.effective_interval(),
                timeout_secs: c.timeout_secs as u64,
            });
        }
        Ok(out)
    }

    /// Applies one result: the soft/hard transition, history, perfdata as
    /// metrics. Returns the transition (None for an unknown check).
    pub async fn apply_check_result(&self, c: &CheckRow, r: &CheckResult) -> Result<Transition, sqlx::Error> {
        let t = next_state(c.state, c.state_type, c.attempt, c.max_attempts, r.status);
        let now = now_ms();
        let output: String = r.output.chars().take(4096).collect();
        let perfdata: String = r.perfdata.chars().take(4096).collect();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE checks SET state = $1, state_type = $2, attempt = $3, output = $4, perfdata = $5,
               last_check_ms = $6, last_change_ms = CASE WHEN $7 THEN $6 ELSE last_change_ms END
             WHERE id = $8",
        )
        .bind(t.state)
        .bind(t.state_type)
        .bind(t.attempt)
        .bind(&output)
        .bind(&perfdata)
        .bind(now)
        .bind(t.changed)
        .bind(&c.id)
        .execute(&mut *tx)
        .await?;
        if t.changed {
            crate::store::lock_series(&mut tx, &format!("check_history/{}", c.id)).await?;
            sqlx::query(
                "INSERT INTO check_history (check_id, seq, at_ms, state, state_type, attempt, output)
                 VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM check_history WHERE check_id = $1), $2, $3, $4, $5, $6)",
            )
            .bind(&c.id)
            .bind(now)
            .bind(t.state)
            .bind(t.state_type)
            .bind(t.attempt)
            .bind(&output)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let name = metric_part(&c.name);
        let samples: Vec<MetricSample> = parse_perfdata(&perfdata)
            .into_iter()
            .map(|(label, value)| MetricSample {
                resource: c.target.clone(),
                metric: format!("check_{name}_{label}"),
                at_ms: r.at_ms,
                value,
            })
            .collect();
        if !samples.is_empty() {
            self.ingest(&samples).await?;
        }
        Ok(t)
    }

    /// Heartbeat checks are the control plane's own: due ones are judged
    /// from each host's last report. Returns what changed.
    pub async fn run_heartbeat_checks(
        &self,
        heartbeat_timeout_ms: i64,
    ) -> Result<Vec<(CheckRow, Transition)>, sqlx::Error> {
        let rows: Vec<CheckRow> =
            sqlx::query_as("SELECT * FROM checks WHERE kind = 'heartbeat'").fetch_all(&self.pool).await?;
        let now = now_ms();
        let mut changed = Vec::new();
        for c in rows {
            if c.last_check_ms.is_some_and(|t| now - t < (c.effective_interval() as i64) * 1000) {
                continue;
            }
            let Some(host) = self.host(&c.target).await? else { continue };
            let age = now - host.last_heartbeat_ms;
            let (status, output) = if age <= heartbeat_timeout_ms {
                (0, format!("HEARTBEAT OK - host {} reported {:.1} s ago", host.name, age as f64 / 1000.0))
            } else {
                (2, format!("HEARTBEAT CRITICAL - host {} last reported {} s ago", host.name, age / 1000))
            };
            let r = CheckResult {
                check_id: c.id.parse().map_err(|e: nubo_api::ids::IdError| sqlx::Error::Decode(Box::new(e)))?,
                status,
                output,
                perfdata: format!("age={:.3}s", age as f64 / 1000.0),
                at_ms: now,
            };
            let t = self.apply_check_result(&c, &r).await?;
            if t.hard_change {
                changed.push((c, t));
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transition with its states spelled, as the assertions below read.
    struct Spelled {
        state: &'static str,
        state_type: &'static str,
        attempt: i64,
        changed: bool,
        hard_change: bool,
    }

    /// [`super::next_state`] from spelled states.
    fn next_state(state: &str, state_type: &str, attempt: i64, max_attempts: i64, status: u8) -> Spelled {
        let t = super::next_state(state.parse().unwrap(), state_type.parse().unwrap(), attempt, max_attempts, status);
        Spelled {
            state: t.state.as_str(),
            state_type: t.state_type.as_str(),
            attempt: t.attempt,
            changed: t.changed,
            hard_change: t.hard_change,
        }
    }

    #[test]
    fn soft_then_hard_then_recovery() {
        // OK -> CRITICAL soft 1 -> soft 2 -> hard at the 3rd attempt.
        let t = next_state("OK", "HARD", 1, 3, 2);
        assert_eq!((t.state, t.state_type, t.attempt, t.hard_change), ("CRITICAL", "SOFT", 1, false));
        let t = next_state(t.state, t.state_type, t.attempt, 3, 2);
        assert_eq!((t.state_type, t.attempt, t.hard_change), ("SOFT", 2, false));
        let t = next_state(t.state, t.state_type, t.attempt, 3, 2);
        assert_eq!((t.state_type, t.attempt, t.hard_change), ("HARD", 3, true));
        // Staying critical is no news; turning WARNING is.
        let same = next_state(t.state, t.state_type, t.attempt, 3, 2);
        assert!(!same.changed && !same.hard_change);
        let warn = next_state("CRITICAL", "HARD", 3, 3, 1);
        assert!(warn.hard_change && warn.state == "WARNING");
        // Recovery from hard is a hard change; from soft it is not.
        let rec = next_state("WARNING", "HARD", 3, 3, 0);
        assert_eq!((rec.state, rec.state_type, rec.hard_change), ("OK", "HARD", true));
        let soft_rec = next_state("CRITICAL", "SOFT", 1, 3, 0);
        assert!(soft_rec.changed && !soft_rec.hard_change);
        // The first result of a new check is hard news either way; an OK one too.
        assert!(next_state("PENDING", "HARD", 1, 1, 2).hard_change);
        assert!(next_state("PENDING", "HARD", 1, 3, 0).hard_change);
        assert_eq!(next_state("OK", "HARD", 1, 3, 9).state, "UNKNOWN");
    }

    #[test]
    fn perfdata() {
        let p = parse_perfdata("time=0.002345s;;;0.000000;10.000000 size=612B;;;0 'used space'=80%;90;95 load1=0.5");
        assert_eq!(
            p,
            vec![("time".into(), 0.002345), ("size".into(), 612.0), ("used_space".into(), 80.0), ("load1".into(), 0.5)]
        );
        assert_eq!(parse_perfdata("rta=1.5ms;;"), vec![("rta".into(), 0.0015)]);
        assert!(parse_perfdata("garbage").is_empty());
        assert!(parse_perfdata("x=abc y=").is_empty());
    }

    #[test]
    fn macros() {
        let ports = [(80, 20001), (22, 20000)];
        assert_eq!(resolve_macros("-H$HOSTADDRESS$", "i-1", &ports).unwrap(), "-H127.0.0.1");
        assert_eq!(resolve_macros("$PORT:80$", "i-1", &ports).unwrap(), "20001");
        assert_eq!(resolve_macros("a$PORT:22$b$PORT:80$", "i-1", &ports).unwrap(), "a20000b20001");
        assert!(resolve_macros("$PORT:443$", "i-1", &ports).unwrap_err().contains("not forwarded"));
        assert!(resolve_macros("$PORT:80", "i-1", &ports).is_err());
    }
}
