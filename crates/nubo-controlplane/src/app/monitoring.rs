//! Monitoring: metric series and latest values, health checks and their
//! history, alert rules, alerts (acknowledge, silence), the event log, the
//! Prometheus exposition, and the agent's side (samples in, checks out,
//! check results in). Also the metric-name and duration helpers that
//! policies share (`canonical_metric`, `parse_duration_ms`).

use crate::alerts::{AlertRow, RuleRow};
use crate::auth::{Caller, HostCaller};
use crate::authz::{self, Access};
use crate::checks::{CheckRow, CheckSpec, NewCheck};
use crate::error::{AppError, AppResult};
use crate::Ctx;
use nubo_api::ids::{CheckId, HostId, InstanceId};
use nubo_api::monitoring::CheckState;
use nubo_api::monitoring::{
    valid_metric_name, Alert, AlertRule, AlertRuleCreate, Check, CheckCreate, CheckResults, CloudEvent, HostChecks,
    MetricLatest, MetricSeries, MetricsBatch, Notification,
};
use std::sync::Arc;

/// Most samples one agent batch may carry.
const MAX_BATCH: usize = nubo_api::monitoring::MAX_METRICS_BATCH;

/// `15m`, `2h`, `30s`, `1d` or plain seconds, as milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A point in time: `now`, milliseconds since the epoch, or a duration ago (`15m`).
fn parse_time(s: &str, now: i64) -> AppResult<i64> {
    let bad = || {
        AppError::BadRequest(format!(
            "time '{}' is not understood: use milliseconds since the epoch, `now`, or a duration ago like 15m, 2h, 1d",
            s.chars().take(40).collect::<String>()
        ))
    };
    if s == "now" {
        return Ok(now);
    }
    match s.parse::<i64>() {
        // Large numbers are instants; small ones are seconds ago.
        Ok(ms) if ms > 1_000_000_000_000 => Ok(ms),
        _ => parse_duration_ms(s).map(|d| now - d).ok_or_else(bad),
    }
}

/// May the caller read the metrics of `resource`?
async fn check_resource(ctx: &Ctx, caller: &Caller, resource: &str, access: Access) -> AppResult<()> {
    if resource.parse::<InstanceId>().is_ok() {
        crate::app::instances::load(ctx, caller, resource, access).await.map(drop)
    } else if resource.parse::<HostId>().is_ok() {
        authz::require_admin(caller)
    } else {
        Err(AppError::BadRequest(format!(
            "resource '{}' is neither an instance id (i-...) nor a host id (h-...)",
            resource.chars().take(64).collect::<String>()
        )))
    }
}

/// The series a caller asks for: which resource and metric, over which
/// range, at which step (each as the user typed it).
#[derive(Debug, Clone)]
pub struct SeriesSpec {
    /// An instance (`i-...`) or host (`h-...`) id.
    pub resource: String,
    /// e.g. `cpu_percent`, or a short name (`cpu`).
    pub metric: String,
    /// Start: ms since the epoch, `now`, or a duration ago; default 15m.
    pub from: Option<String>,
    /// End; default now.
    pub to: Option<String>,
    /// Step: `10s`, `1m`, or seconds; default the range over 60.
    pub step: Option<String>,
}

/// A metric series: the average per step over the range (raw samples for
/// the last day, one-minute rollups before that).
pub async fn series(ctx: &Arc<Ctx>, caller: &Caller, q: SeriesSpec) -> AppResult<MetricSeries> {
    check_resource(ctx, caller, &q.resource, Access::Read).await?;
    let metric = canonical_metric(&q.metric);
    if !valid_metric_name(&metric) {
        return Err(AppError::BadRequest(format!(
            "metric '{}' is not a valid metric name",
            q.metric.chars().take(64).collect::<String>()
        )));
    }
    let now = crate::store::now_ms();
    let from = parse_time(q.from.as_deref().unwrap_or("15m"), now)?;
    let to = parse_time(q.to.as_deref().unwrap_or("now"), now)?;
    if to <= from {
        return Err(AppError::BadRequest("`to` must be after `from`".into()));
    }
    let mut step = match &q.step {
        Some(s) => parse_duration_ms(s)
            .filter(|s| *s > 0)
            .ok_or_else(|| AppError::BadRequest(format!("step '{s}' is not a duration like 10s or 1m")))?,
        None => ((to - from) / 60).max(1000),
    };
    // Never more points than a chart could use.
    step = step.max((to - from) / crate::tsdb::MAX_POINTS).max(1000);
    let (source, points) = ctx.store.query_series(&q.resource, &metric, from, to, step, &ctx.config.retention).await?;
    Ok(MetricSeries {
        resource: q.resource,
        metric,
        from_ms: from,
        to_ms: to,
        step_ms: step,
        source: source.as_str().into(),
        points,
    })
}

/// Short names users may type for common metrics.
pub fn canonical_metric(name: &str) -> String {
    match name {
        "cpu" => "cpu_percent",
        "memory" => "memory_rss_bytes",
        "disk" | "fs" => "fs_used_percent",
        "load" => "load1",
        other => other,
    }
    .to_string()
}

/// The newest value of every metric of a resource.
pub async fn latest(ctx: &Arc<Ctx>, caller: &Caller, resource: &str) -> AppResult<Vec<MetricLatest>> {
    check_resource(ctx, caller, resource, Access::Read).await?;
    Ok(ctx.store.latest_of(resource).await?)
}

fn same_host(caller: &HostCaller, id: &str) -> AppResult<HostId> {
    let host: HostId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    if caller.host_id != host.as_str() {
        return Err(AppError::Forbidden(format!("this credential belongs to host {}, not {host}", caller.host_id)));
    }
    Ok(host)
}

/// Stores a host's samples of itself and its instances (`id` is the
/// host the caller says it is).
pub async fn ingest(ctx: &Arc<Ctx>, caller: &HostCaller, id: &str, b: MetricsBatch) -> AppResult<()> {
    let host = same_host(caller, id)?;
    if b.samples.len() > MAX_BATCH {
        return Err(AppError::BadRequest(format!("at most {MAX_BATCH} samples per batch")));
    }
    // A host speaks only for itself and the instances it runs (a set
    // read again when the host's desired state changes, see
    // `metric_owners`).
    let generation = ctx.subscribe().borrow().changed_for(host.as_str());
    let mine = ctx.metric_owners.of(&ctx.store, host.as_str(), generation).await?;
    // Remote write labels an instance's series with its project and host.
    if let Some(w) = ctx.store.metrics_remote().and_then(|r| r.writer.as_ref()) {
        w.labels().note_instances(host.as_str(), mine.iter().map(|(id, project)| (id.as_str(), project.as_deref())));
    }
    let samples: Vec<_> = b
        .samples
        .into_iter()
        .filter(|s| {
            (s.resource == host.as_str() || mine.contains_key(&s.resource))
                && valid_metric_name(&s.metric)
                && s.value.is_finite()
                && s.at_ms > 0
        })
        .collect();
    ctx.store.ingest(&samples).await?;
    Ok(())
}

/// The checks a host runs now.
pub async fn host_checks(ctx: &Arc<Ctx>, caller: &HostCaller, id: &str) -> AppResult<HostChecks> {
    let host = same_host(caller, id)?;
    Ok(HostChecks { checks: ctx.store.host_checks(host.as_str()).await? })
}

/// Applies the results of the checks a host ran (of those it runs).
pub async fn check_results(ctx: &Arc<Ctx>, caller: &HostCaller, id: &str, r: CheckResults) -> AppResult<()> {
    let host = same_host(caller, id)?;
    let allowed: std::collections::HashSet<String> =
        ctx.store.host_checks(host.as_str()).await?.into_iter().map(|c| c.id.to_string()).collect();
    for result in r.results.iter().filter(|x| x.status <= 3) {
        if !allowed.contains(result.check_id.as_str()) {
            continue;
        }
        let Some(c) = ctx.store.check(result.check_id.as_str()).await? else { continue };
        let t = ctx.store.apply_check_result(&c, result).await?;
        if t.hard_change {
            let msg = format!("check {} on {} is {} ({}): {}", c.name, c.target, t.state, t.state_type, result.output);
            ctx.store.event(c.project_id.as_deref(), &c.target, "check_state", &msg).await?;
            tracing::info!(check = %c.id, target = %c.target, state = %t.state, "check state changed");
        }
    }
    Ok(())
}

fn check_view(c: CheckRow, history: Vec<nubo_api::monitoring::CheckEvent>) -> AppResult<Check> {
    Ok(Check {
        id: c.id.parse().map_err(AppError::internal)?,
        spec: serde_json::from_str(&c.spec_json).unwrap_or_default(),
        name: c.name,
        target: c.target,
        kind: c.kind,
        interval_secs: c.interval_secs as u64,
        retry_interval_secs: c.retry_interval_secs as u64,
        max_attempts: c.max_attempts as u64,
        timeout_secs: c.timeout_secs as u64,
        state: c.state,
        state_type: c.state_type,
        attempt: c.attempt as u64,
        output: c.output,
        perfdata: c.perfdata,
        last_check_ms: c.last_check_ms,
        last_change_ms: c.last_change_ms,
        history,
    })
}

async fn load_check(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<CheckRow> {
    let id: CheckId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let c = ctx.store.check(id.as_str()).await?.ok_or(AppError::NotFound { kind: "check", id: id.to_string() })?;
    match &c.project_id {
        Some(p) => authz::check(caller, access, Some(p), "check", id.as_str())?,
        None => authz::require_admin(caller).map_err(|_| AppError::NotFound { kind: "check", id: id.to_string() })?,
    }
    Ok(c)
}

/// Creates a health check of an instance (or, for operators, a host).
pub async fn create_check(ctx: &Arc<Ctx>, caller: &Caller, p: CheckCreate) -> AppResult<Check> {
    crate::validate::name(&p.name)?;
    let (project, ports) = if p.target.parse::<InstanceId>().is_ok() {
        let inst = crate::app::instances::load(ctx, caller, &p.target, Access::Write).await?;
        let ports: Vec<u16> = ctx.store.ports(&inst.id).await?.into_iter().map(|p| p.guest_port as u16).collect();
        (inst.project_id, ports)
    } else if p.target.parse::<HostId>().is_ok() {
        authz::require_admin(caller)?;
        if ctx.store.host(&p.target).await?.is_none() {
            return Err(AppError::NotFound { kind: "host", id: p.target.chars().take(64).collect() });
        }
        (None, Vec::new())
    } else {
        return Err(AppError::BadRequest("target must be an instance (i-...) or host (h-...) id".into()));
    };
    let forwarded = |port: Option<u16>| -> AppResult<u16> {
        let port =
            port.ok_or_else(|| AppError::BadRequest(format!("a {} check needs `port` (a guest port)", p.kind)))?;
        if ports.contains(&port) {
            Ok(port)
        } else {
            Err(AppError::BadRequest(format!(
                "guest port {port} is not forwarded for {}; its forwarded ports are {:?} (launch with --port {port})",
                p.target, ports
            )))
        }
    };
    let spec = match p.kind.as_str() {
        "tcp" => CheckSpec::Tcp { port: forwarded(p.port)? },
        "http" => {
            let path = p.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.len() > 1024 || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(AppError::BadRequest("path must start with / and hold no spaces".into()));
            }
            CheckSpec::Http { port: forwarded(p.port)?, path, expect_status: p.expect_status.unwrap_or(200) }
        }
        "liveness" if p.target.parse::<InstanceId>().is_ok() => CheckSpec::Liveness,
        "plugin" => {
            // A plugin runs a program on the host: as in Nagios, the operator decides what runs.
            authz::require_admin(caller).map_err(|_| {
                AppError::Forbidden("plugin checks run programs on the host, so only operators create them; use a tcp, http or liveness check".into())
            })?;
            let name = p.command.first().map(String::as_str).unwrap_or("");
            let plain =
                name.starts_with("check_") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !plain || p.command.len() > 64 || p.command.iter().any(|a| a.len() > 1024) {
                return Err(AppError::BadRequest(
                    "command must start with a plugin name like check_http (found in the agent's plugin directory), with at most 64 arguments".into(),
                ));
            }
            for a in &p.command {
                crate::checks::resolve_macros(a, &p.target, &ports.iter().map(|g| (*g, 1)).collect::<Vec<_>>())
                    .map_err(AppError::BadRequest)?;
            }
            CheckSpec::Plugin { command: p.command.clone() }
        }
        other => {
            return Err(AppError::BadRequest(format!(
                "check kind '{}' is unknown: use tcp, http, liveness (instances) or plugin",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    let interval = p.interval_secs.unwrap_or(60);
    let range = |what: &str, v: u64, lo: u64, hi: u64| -> AppResult<u64> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(AppError::BadRequest(format!("{what} must be between {lo} and {hi}, got {v}")))
        }
    };
    let interval = range("interval_secs", interval, 1, 86_400)?;
    let retry = range("retry_interval_secs", p.retry_interval_secs.unwrap_or((interval / 5).max(1)), 1, 86_400)?;
    let attempts = range("max_attempts", p.max_attempts.unwrap_or(3), 1, 10)?;
    let timeout = range("timeout_secs", p.timeout_secs.unwrap_or(10), 1, 300)?;
    let id = CheckId::generate();
    let new = NewCheck {
        id: &id,
        project_id: project.as_deref(),
        name: &p.name,
        target: &p.target,
        spec: &spec,
        interval_secs: interval,
        retry_interval_secs: retry,
        max_attempts: attempts,
        timeout_secs: timeout,
    };
    if !ctx.store.insert_check(&new).await? {
        return Err(AppError::Conflict(format!("{} already has a check named '{}'", p.target, p.name)));
    }
    let c = ctx.store.check(id.as_str()).await?.ok_or_else(|| AppError::internal("check vanished"))?;
    check_view(c, Vec::new())
}

/// The checks the caller may see.
pub async fn list_checks(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Check>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let rows = ctx.store.checks(project.as_deref()).await?;
    rows.into_iter().map(|c| check_view(c, Vec::new())).collect()
}

/// A check with its state history.
pub async fn show_check(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Check> {
    let c = load_check(ctx, caller, id, Access::Read).await?;
    let history = ctx.store.check_history(&c.id, 100).await?;
    check_view(c, history)
}

pub async fn delete_check(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let c = load_check(ctx, caller, id, Access::Write).await?;
    ctx.store.delete_check(&c.id).await?;
    Ok(())
}

fn rule_view(r: RuleRow) -> AppResult<AlertRule> {
    Ok(AlertRule {
        id: r.id.parse().map_err(AppError::internal)?,
        name: r.name,
        kind: r.kind,
        target: r.target,
        metric: r.metric,
        op: r.op,
        threshold: r.threshold,
        for_secs: r.for_secs as u64,
        check_id: r.check_id.and_then(|c| c.parse().ok()),
        min_state: r.min_state,
        webhook_url: r.webhook_url,
        created_at_ms: r.created_at_ms,
    })
}

/// Creates an alert rule on a metric or on checks.
pub async fn create_rule(ctx: &Arc<Ctx>, caller: &Caller, p: AlertRuleCreate) -> AppResult<AlertRule> {
    let project = authz::creation_project(caller)?;
    crate::validate::name(&p.name)?;
    if p.target != "*" {
        check_resource(ctx, caller, &p.target, Access::Write).await?;
    }
    let mut rule = RuleRow {
        id: crate::alerts::new_rule_id().to_string(),
        project_id: Some(project),
        name: p.name.clone(),
        kind: p.kind.clone(),
        target: p.target.clone(),
        metric: None,
        op: None,
        threshold: None,
        for_secs: p.for_secs.unwrap_or(0).min(86_400) as i64,
        check_id: None,
        min_state: None,
        webhook_url: None,
        created_at_ms: crate::store::now_ms(),
    };
    match p.kind.as_str() {
        "metric" => {
            let metric = canonical_metric(p.metric.as_deref().unwrap_or(""));
            if !valid_metric_name(&metric) {
                return Err(AppError::BadRequest("a metric rule needs `metric`, e.g. cpu_percent".into()));
            }
            let op = p.op.clone().unwrap_or_else(|| ">".into());
            if !matches!(op.as_str(), ">" | ">=" | "<" | "<=") {
                return Err(AppError::BadRequest("op must be one of >, >=, <, <=".into()));
            }
            let threshold = p
                .threshold
                .filter(|t| t.is_finite())
                .ok_or_else(|| AppError::BadRequest("a metric rule needs a finite `threshold`".into()))?;
            rule.metric = Some(metric);
            rule.op = Some(op);
            rule.threshold = Some(threshold);
        }
        "check" => {
            if let Some(c) = &p.check_id {
                let c = load_check(ctx, caller, c.as_str(), Access::Read).await?;
                rule.check_id = Some(c.id);
            }
            let min = p.min_state.clone().unwrap_or_else(|| "CRITICAL".into()).to_uppercase();
            let min = match CheckState::parse(&min) {
                Some(s @ (CheckState::Warning | CheckState::Critical)) => s,
                _ => return Err(AppError::BadRequest("min_state must be WARNING or CRITICAL".into())),
            };
            rule.min_state = Some(min);
        }
        other => {
            return Err(AppError::BadRequest(format!(
                "rule kind '{}' is unknown: use metric or check",
                other.chars().take(32).collect::<String>()
            )))
        }
    }
    if let Some(url) = &p.webhook_url {
        crate::webhooks::check_url(url, &ctx.config.webhook_allow)
            .map_err(|e| AppError::BadRequest(format!("alert rule '{}': webhook_url {e}", p.name)))?;
        rule.webhook_url = Some(url.clone());
    }
    let max = ctx.config.max_alert_rules_per_project;
    if ctx.store.rule_count(rule.project_id.as_deref().unwrap_or_default()).await? >= i64::from(max) {
        return Err(AppError::QuotaExceeded(format!(
            "alert rule '{}' not created: the project already has {max} alert rules, the most this cloud allows; \
             delete rules it no longer needs (`nubo alert rule delete ID`) or ask an operator to raise the limit \
             (nubo server --max-alert-rules-per-project N)",
            p.name
        )));
    }
    if !ctx.store.insert_rule(&rule).await? {
        return Err(AppError::Conflict(format!("the project already has an alert rule named '{}'", p.name)));
    }
    rule_view(rule)
}

/// The alert rules the caller may see.
pub async fn list_rules(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<AlertRule>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let rows = ctx.store.rules(project.as_deref()).await?;
    rows.into_iter().map(rule_view).collect()
}

pub async fn delete_rule(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let r = ctx
        .store
        .rule(id)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: "alert rule", id: id.chars().take(64).collect() })?;
    authz::check(caller, Access::Write, r.project_id.as_deref(), "alert rule", &r.id)?;
    ctx.store.delete_rule(&r.id).await?;
    Ok(())
}

/// An alert as users see it; its notifications only when asked (lists of
/// many alerts leave them out).
pub async fn alert_view(ctx: &Ctx, a: AlertRow, with_notifications: bool) -> AppResult<Alert> {
    let rule = ctx.store.rule(&a.rule_id).await?.map(|r| r.name).unwrap_or_default();
    let notifications = if with_notifications {
        ctx.store
            .notifications_of(&a.id)
            .await?
            .into_iter()
            .map(|n| Notification {
                kind: n.kind,
                url: n.url,
                state: n.state,
                attempts: n.attempts as u64,
                last_error: n.last_error,
                created_at_ms: n.created_at_ms,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Alert {
        id: a.id.parse().map_err(AppError::internal)?,
        rule_id: a.rule_id.parse().map_err(AppError::internal)?,
        rule,
        resource: a.resource,
        state: a.state,
        summary: a.summary,
        value: a.value,
        started_at_ms: a.started_at_ms,
        fired_at_ms: a.fired_at_ms,
        resolved_at_ms: a.resolved_at_ms,
        acknowledged_by: a.acknowledged_by,
        acknowledged_at_ms: a.acknowledged_at_ms,
        silenced_until_ms: a.silenced_until_ms,
        notifications,
    })
}

/// Firing alerts the caller may see (with `all`, resolved ones too).
pub async fn list_alerts(ctx: &Arc<Ctx>, caller: &Caller, all: bool) -> AppResult<Vec<Alert>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for a in ctx.store.alerts(project.as_deref(), all).await? {
        out.push(alert_view(ctx, a, true).await?);
    }
    Ok(out)
}

async fn load_alert(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<AlertRow> {
    let a = ctx
        .store
        .alert(id)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: "alert", id: id.chars().take(64).collect() })?;
    match &a.project_id {
        Some(p) => authz::check(caller, access, Some(p), "alert", &a.id)?,
        None => authz::require_admin(caller)?,
    }
    Ok(a)
}

/// An alert with its notifications.
pub async fn show_alert(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Alert> {
    let a = load_alert(ctx, caller, id, Access::Read).await?;
    alert_view(ctx, a, true).await
}

/// Acknowledges an alert (someone is on it), in the caller's name.
pub async fn acknowledge(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Alert> {
    let a = load_alert(ctx, caller, id, Access::Write).await?;
    ctx.store.acknowledge_alert(&a.id, &caller.user_name).await?;
    let a = load_alert(ctx, caller, id, Access::Read).await?;
    alert_view(ctx, a, true).await
}

/// Silences an alert's notifications for `for_secs` (at most 30 days).
pub async fn silence(ctx: &Arc<Ctx>, caller: &Caller, id: &str, for_secs: u64) -> AppResult<Alert> {
    let a = load_alert(ctx, caller, id, Access::Write).await?;
    if for_secs == 0 || for_secs > 30 * 86_400 {
        return Err(AppError::BadRequest("for_secs must be between 1 and 2592000 (30 days)".into()));
    }
    ctx.store.silence_alert(&a.id, crate::store::now_ms() + for_secs as i64 * 1000).await?;
    let a = load_alert(ctx, caller, id, Access::Read).await?;
    alert_view(ctx, a, true).await
}

/// The event log the caller may see: alerts firing and resolving, check
/// state changes.
pub async fn events(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<CloudEvent>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    Ok(ctx.store.cloud_events(project.as_deref(), 200).await?)
}

/// The whole cloud's newest metrics in Prometheus' text format (operators only).
pub async fn prometheus(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<String> {
    authz::require_admin(caller)?;
    crate::exposition::render(ctx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration_ms("15m"), Some(900_000));
        assert_eq!(parse_duration_ms("10"), Some(10_000));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        assert_eq!(parse_duration_ms("1w"), None);
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("1m", now).unwrap(), now - 60_000);
        assert_eq!(parse_time("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert!(parse_time("yesterday", now).is_err());
        assert_eq!(canonical_metric("cpu"), "cpu_percent");
    }
}
