//! Service policies: automation instead of an operator. Each round (every
//! couple of seconds, in the monitor task) every policy's condition is
//! judged over its scope, breach by breach:
//!
//! * the condition must hold for `for` before the policy fires, once per
//!   breach (a breach ends when the value is back past the threshold by the
//!   hysteresis), never within `cooldown` of the previous firing for the same
//!   target, and again during one long breach only with `repeat` (then
//!   after each cooldown, for step scaling);
//! * a firing is recorded first (with the values that caused it), then each
//!   of its actions runs as a saga (`sagas::policy_action`): each step
//!   records what it made (a volume id, a target size, a run id) before the
//!   next builds on it, so a retry or a server restart picks up where it
//!   was and never does anything twice; a failing step is retried with
//!   backoff, then the action is marked failed and what its saga made is
//!   undone;
//! * a dry run records what it would have done, and does nothing.

use crate::alerts::compare;
use crate::auth::{Caller, Role};
use crate::saga::{self, SagaState};
use crate::sagas::policy_action::PolicyActionSaga;
use crate::store::{now_ms, Store};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::automation::{ActionOutcome, ActionState, FiringState, PolicyAction, PolicyDoc, PolicyFiring};
use nubo_api::monitoring::{CheckState, CheckStateType};
use nubo_api::views::InstanceState;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use std::collections::BTreeMap;

/// Attempts of one step of an action (its saga's) before the action is
/// marked failed.
pub const MAX_ATTEMPTS: u64 = saga::MAX_ATTEMPTS;
/// Metric values older than this do not count.
const STALE_MS: i64 = 120_000;
/// "Busiest" for rebalance is the highest average CPU over this window:
/// one sample is noise (a guest that just booted, a burst), and moving the
/// wrong instance costs a migration.
const BUSY_WINDOW_MS: i64 = 30_000;

#[derive(Debug, Clone, FromRow)]
pub struct PolicyRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub doc_json: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl PolicyRow {
    pub fn doc(&self) -> Option<PolicyDoc> {
        serde_json::from_str(&self.doc_json).ok()
    }
}

#[derive(Debug, Clone, FromRow)]
struct StateRow {
    since_ms: Option<i64>,
    breaching: i64,
    last_fired_ms: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct FiringRow {
    pub id: String,
    pub policy_id: String,
    pub project_id: String,
    pub target: String,
    pub at_ms: i64,
    pub dry_run: i64,
    pub values_json: String,
    pub state: FiringState,
    pub actions_json: String,
    pub next_attempt_ms: i64,
}

/// What an action had made so far, as servers before the action sagas
/// recorded it: a firing still running from then reuses it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_gib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_id: Option<String>,
    #[serde(default)]
    pub done: bool,
}

/// One action of a firing, with its outcome and plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub spec: PolicyAction,
    pub outcome: ActionOutcome,
    #[serde(default)]
    pub plan: Plan,
}

/// `30s`, `5m`, `1h`, `2d` or seconds, in ms.
pub fn duration_ms(s: &str) -> Option<i64> {
    crate::app::monitoring::parse_duration_ms(s)
}

/// The breach logic for one target. Returns (new state, fire now).
pub fn breach_step(
    state: (Option<i64>, bool, Option<i64>),
    holds: bool,
    cleared: bool,
    now: i64,
    hold_ms: i64,
    cooldown_ms: i64,
    repeat: bool,
) -> ((Option<i64>, bool, Option<i64>), bool) {
    let (since, breaching, last) = state;
    if holds {
        let since = since.or(Some(now));
        let held = since.is_some_and(|s| now - s >= hold_ms);
        let cooled = last.is_none_or(|l| now - l >= cooldown_ms);
        let fire = held && cooled && (!breaching || repeat);
        if fire {
            return ((since, true, Some(now)), true);
        }
        return ((since, breaching, last), false);
    }
    // Not holding: the hold restarts; the breach ends only once cleared.
    ((None, breaching && !cleared, last), false)
}

/// Words for an action, as firings show it.
pub fn describe(a: &PolicyAction, target: &str) -> String {
    match a {
        PolicyAction::AttachVolume { size_gib } => format!("attach a new {size_gib} GiB volume to {target}"),
        PolicyAction::ExtendVolume { by_gib, volume } => match volume {
            Some(v) => format!("extend volume {v} of {target} by {by_gib} GiB"),
            None => format!("extend the newest volume of {target} by {by_gib} GiB"),
        },
        PolicyAction::Scale { by, group } => {
            format!("scale group {} by {by:+}", group.as_deref().unwrap_or("(of the scope)"))
        }
        PolicyAction::RunRecipe { recipe, .. } => format!("run recipe {recipe} on {target}"),
        PolicyAction::Reboot => format!("reboot {target}"),
        PolicyAction::Rebalance => format!("move the busiest instance off host {target}"),
        PolicyAction::Notify { webhook } => format!("notify {webhook}"),
    }
}

/// Checks a document: names, one scope, a well-formed condition, and
/// actions that make sense for the scope and aggregation.
pub fn validate(doc: &PolicyDoc) -> Result<(), String> {
    crate::validate::name(&doc.name).map_err(|e| e.to_string())?;
    let s = &doc.scope;
    let scopes = [s.instance.is_some(), s.group.is_some(), s.host.is_some(), s.tag.is_some()];
    if scopes.iter().filter(|x| **x).count() != 1 {
        return Err("scope must name exactly one of: instance, group, host, tag".into());
    }
    let c = &doc.condition;
    match (&c.metric, &c.check_state) {
        (Some(m), None) => {
            let m = crate::app::monitoring::canonical_metric(m);
            if !nubo_api::monitoring::valid_metric_name(&m) {
                return Err(format!("condition.metric '{m}' is not a metric name"));
            }
            if !matches!(c.op.as_deref(), Some(">" | ">=" | "<" | "<=")) {
                return Err("condition.op must be one of >, >=, <, <=".into());
            }
            if !c.threshold.is_some_and(f64::is_finite) {
                return Err("condition.threshold must be a number".into());
            }
        }
        (None, Some(state)) => {
            if !matches!(state.to_uppercase().as_str(), "WARNING" | "CRITICAL") {
                return Err("condition.check_state must be WARNING or CRITICAL".into());
            }
        }
        _ => return Err("condition needs exactly one of metric (with op and threshold) and check_state".into()),
    }
    if !matches!(c.aggregate.as_str(), "each" | "avg" | "max" | "min" | "sum") {
        return Err("condition.aggregate must be each, avg, max, min or sum".into());
    }
    for (what, d) in [("condition.for", &c.hold), ("cooldown", &doc.cooldown)] {
        if let Some(d) = d {
            if duration_ms(d).is_none_or(|ms| ms > 7 * 86_400_000) {
                return Err(format!("{what} '{d}' is not a duration like 30s, 5m or 1h (at most a week)"));
            }
        }
    }
    if c.hysteresis.is_some_and(|h| !h.is_finite() || h < 0.0) {
        return Err("condition.hysteresis must be a number of 0 or more".into());
    }
    if doc.actions.is_empty() || doc.actions.len() > 10 {
        return Err("a policy needs 1 to 10 actions".into());
    }
    let per_instance = c.aggregate == "each" && s.host.is_none();
    for a in &doc.actions {
        match a {
            PolicyAction::AttachVolume { size_gib } | PolicyAction::ExtendVolume { by_gib: size_gib, .. } => {
                if *size_gib == 0 || *size_gib > crate::validate::MAX_DISK_GIB {
                    return Err(format!("a volume size must be 1 to {} GiB", crate::validate::MAX_DISK_GIB));
                }
                if !per_instance {
                    return Err(format!("'{}' acts on one instance: use aggregate: each", describe(a, "an instance")));
                }
            }
            PolicyAction::Rebalance if s.host.is_none() => {
                return Err("rebalance moves instances off a host: scope the policy to a host".into());
            }
            PolicyAction::RunRecipe { .. } | PolicyAction::Reboot if !per_instance => {
                return Err(format!("'{}' acts on one instance: use aggregate: each", describe(a, "an instance")));
            }
            PolicyAction::Scale { by, group } => {
                if *by == 0 || by.abs() > 100 {
                    return Err("scale.by must be between -100 and 100, not 0".into());
                }
                if group.is_none() && s.group.is_none() {
                    return Err("scale needs a group: give scale.group, or scope the policy to a group".into());
                }
            }
            PolicyAction::Notify { webhook }
                if !(webhook.starts_with("http://") || webhook.starts_with("https://"))
                    || reqwest::Url::parse(webhook).is_err() =>
            {
                return Err(format!("notify.webhook '{webhook}' is not an http(s) URL"));
            }
            _ => {}
        }
    }
    Ok(())
}

impl Store {
    /// Creates or replaces the project's policy `doc.name`; its breach
    /// state starts over when the document changes.
    pub async fn upsert_policy(&self, project: &str, doc: &PolicyDoc) -> Result<PolicyRow, sqlx::Error> {
        let now = now_ms();
        let json = serde_json::to_string(doc).unwrap_or_default();
        let id = format!("pol-{:017x}", rand::random::<u64>() & 0x000f_ffff_ffff_ffff_u64);
        let mut tx = self.begin().await?;
        let existing: Option<(String, String)> =
            sqlx::query_as("SELECT id, doc_json FROM policies WHERE project_id = $1 AND name = $2")
                .bind(project)
                .bind(&doc.name)
                .fetch_optional(&mut *tx)
                .await?;
        match existing {
            Some((id, old)) => {
                if old != json {
                    sqlx::query("UPDATE policies SET doc_json = $1, updated_at_ms = $2 WHERE id = $3")
                        .bind(&json)
                        .bind(now)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM policy_states WHERE policy_id = $1").bind(&id).execute(&mut *tx).await?;
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO policies (id, project_id, name, doc_json, created_at_ms, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $5)",
                )
                .bind(&id)
                .bind(project)
                .bind(&doc.name)
                .bind(&json)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        let row = sqlx::query_as("SELECT * FROM policies WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(&doc.name)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn policies(&self, project: Option<&str>) -> Result<Vec<PolicyRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM policies WHERE ($1 IS NULL OR project_id = $1) ORDER BY name")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// How many policies `project` has.
    pub async fn policy_count(&self, project: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM policies WHERE project_id = $1")
            .bind(project)
            .fetch_one(&self.pool)
            .await
    }

    pub async fn policy_by_name(&self, project: &str, name: &str) -> Result<Option<PolicyRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM policies WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn delete_policy(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM policy_states WHERE policy_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM policies WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }

    pub async fn breaching_targets(&self, policy: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT target FROM policy_states WHERE policy_id = $1 AND breaching = 1 ORDER BY target")
            .bind(policy)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn firings(&self, policy: &str, limit: i64) -> Result<Vec<FiringRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM policy_firings WHERE policy_id = $1 ORDER BY at_ms DESC LIMIT $2")
            .bind(policy)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    async fn save_firing(&self, f: &FiringRow) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE policy_firings SET state = $1, actions_json = $2, next_attempt_ms = $3 WHERE id = $4")
            .bind(f.state)
            .bind(&f.actions_json)
            .bind(f.next_attempt_ms)
            .bind(&f.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The instances a scope covers now (running ones), or the host.
    async fn scope_targets(&self, p: &PolicyRow, doc: &PolicyDoc) -> Result<Vec<String>, sqlx::Error> {
        let s = &doc.scope;
        if let Some(i) = &s.instance {
            return Ok(self
                .instance(i.as_str())
                .await?
                .filter(|r| r.project_id.as_deref() == Some(p.project_id.as_str()) && r.state == InstanceState::Running)
                .map(|r| vec![r.id])
                .unwrap_or_default());
        }
        if let Some(h) = &s.host {
            return Ok(vec![h.clone()]);
        }
        if let Some(g) = &s.group {
            return sqlx::query_scalar(
                "SELECT instances.id FROM instances JOIN instance_groups ON instance_groups.id = instances.group_id
                 WHERE instance_groups.project_id = $1 AND instance_groups.name = $2 AND instances.state = 'running'
                   AND instances.desired = 'running' ORDER BY instances.id",
            )
            .bind(&p.project_id)
            .bind(g)
            .fetch_all(&self.pool)
            .await;
        }
        if let Some(t) = &s.tag {
            return sqlx::query_scalar(
                "SELECT instances.id FROM instances JOIN tags ON tags.resource_id = instances.id
                 WHERE instances.project_id = $1 AND tags.key = $2 AND ($3 IS NULL OR tags.value = $3)
                   AND instances.state = 'running' ORDER BY instances.id",
            )
            .bind(&p.project_id)
            .bind(&t.key)
            .bind(&t.value)
            .fetch_all(&self.pool)
            .await;
        }
        Ok(Vec::new())
    }

    /// The condition's value for one resource: the metric's newest value,
    /// or the worst hard state of its checks (0 OK .. 2 CRITICAL, UNKNOWN as 1).
    async fn condition_value(&self, doc: &PolicyDoc, resource: &str, now: i64) -> Result<Option<f64>, sqlx::Error> {
        if let Some(m) = &doc.condition.metric {
            let m = crate::app::monitoring::canonical_metric(m);
            return self.latest_value(resource, &m, now - STALE_MS).await;
        }
        let states: Vec<CheckState> =
            sqlx::query_scalar("SELECT state FROM checks WHERE target = $1 AND state_type = $2")
                .bind(resource)
                .bind(CheckStateType::Hard)
                .fetch_all(&self.pool)
                .await?;
        let worst = states
            .iter()
            .map(|s| match s {
                CheckState::Critical => 2.0,
                CheckState::Warning | CheckState::Unknown => 1.0,
                _ => 0.0,
            })
            .fold(0.0, f64::max);
        Ok(Some(worst))
    }

    async fn step_target(
        &self,
        p: &PolicyRow,
        doc: &PolicyDoc,
        target: &str,
        holds: bool,
        cleared: bool,
        values: BTreeMap<String, f64>,
    ) -> Result<Option<String>, sqlx::Error> {
        let now = now_ms();
        let row: Option<StateRow> = sqlx::query_as(
            "SELECT since_ms, breaching, last_fired_ms FROM policy_states WHERE policy_id = $1 AND target = $2",
        )
        .bind(&p.id)
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        let state = row.map(|r| (r.since_ms, r.breaching == 1, r.last_fired_ms)).unwrap_or((None, false, None));
        let hold = doc.condition.hold.as_deref().and_then(duration_ms).unwrap_or(0);
        let cooldown = doc.cooldown.as_deref().and_then(duration_ms).unwrap_or(0);
        let repeat = doc.repeat;
        let ((since, breaching, last), fire) = breach_step(state, holds, cleared, now, hold, cooldown, repeat);
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO policy_states (policy_id, target, since_ms, breaching, last_fired_ms) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (policy_id, target) DO UPDATE SET since_ms = excluded.since_ms, breaching = excluded.breaching,
               last_fired_ms = excluded.last_fired_ms",
        )
        .bind(&p.id)
        .bind(target)
        .bind(since)
        .bind(i64::from(breaching))
        .bind(last)
        .execute(&mut *tx)
        .await?;
        let mut fired = None;
        if fire {
            // The firing is recorded in the same transaction that marks the
            // breach, so a breach can never fire twice, even across a crash.
            let id = format!("fire-{:017x}", rand::random::<u64>() & 0x000f_ffff_ffff_ffff_u64);
            let records: Vec<ActionRecord> = doc
                .actions
                .iter()
                .map(|a| ActionRecord {
                    spec: a.clone(),
                    outcome: ActionOutcome {
                        action: if doc.dry_run {
                            format!("would {}", describe(a, target))
                        } else {
                            describe(a, target)
                        },
                        state: if doc.dry_run { ActionState::Skipped } else { ActionState::Pending },
                        attempts: 0,
                        error: None,
                        result: None,
                    },
                    plan: Plan::default(),
                })
                .collect();
            sqlx::query(
                "INSERT INTO policy_firings (id, policy_id, project_id, target, at_ms, dry_run, values_json, state,
                   actions_json, next_attempt_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $5)",
            )
            .bind(&id)
            .bind(&p.id)
            .bind(&p.project_id)
            .bind(target)
            .bind(now)
            .bind(i64::from(doc.dry_run))
            .bind(serde_json::to_string(&values).unwrap_or_default())
            .bind(if doc.dry_run { FiringState::Succeeded } else { FiringState::Running })
            .bind(serde_json::to_string(&records).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
            fired = Some(id);
        }
        tx.commit().await?;
        if let Some(id) = &fired {
            let what: Vec<String> = doc.actions.iter().map(|a| describe(a, target)).collect();
            let msg = format!(
                "policy {} {} on {target} (values {values:?}): {}",
                p.name,
                if doc.dry_run { "would fire (dry run)" } else { "fired" },
                what.join("; ")
            );
            self.event(Some(&p.project_id), target, "policy_fired", &msg).await?;
            tracing::info!(policy = %p.name, %target, firing = %id, dry_run = doc.dry_run, "policy fired");
        }
        Ok(fired)
    }

    /// Judges one policy over its scope; returns the firings it made.
    pub async fn evaluate_policy(&self, p: &PolicyRow) -> Result<Vec<String>, sqlx::Error> {
        let Some(doc) = p.doc() else { return Ok(Vec::new()) };
        let now = now_ms();
        let c = &doc.condition;
        let judge = |v: f64| -> (bool, bool) {
            match (&c.metric, c.op.as_deref(), c.threshold) {
                (Some(_), Some(op), Some(t)) => {
                    let h = c.hysteresis.unwrap_or(0.0);
                    let holds = compare(v, op, t);
                    let cleared = match op {
                        ">" | ">=" => v < t - h || (h == 0.0 && !holds),
                        _ => v > t + h || (h == 0.0 && !holds),
                    };
                    (holds, cleared)
                }
                _ => {
                    let min = if c.check_state.as_deref().and_then(|s| CheckState::parse(&s.to_uppercase()))
                        == Some(CheckState::Warning)
                    {
                        1.0
                    } else {
                        2.0
                    };
                    (v >= min, v < min)
                }
            }
        };
        let mut fired = Vec::new();
        let targets = self.scope_targets(p, &doc).await?;
        let mut values = BTreeMap::new();
        for t in &targets {
            if let Some(v) = self.condition_value(&doc, t, now).await? {
                values.insert(t.clone(), v);
            }
        }
        if c.aggregate == "each" {
            for t in &targets {
                let (holds, cleared) = values.get(t).map(|v| judge(*v)).unwrap_or((false, false));
                let v: BTreeMap<String, f64> = values.get(t).map(|v| (t.clone(), *v)).into_iter().collect();
                if let Some(id) = self.step_target(p, &doc, t, holds, cleared, v).await? {
                    fired.push(id);
                }
            }
            return Ok(fired);
        }
        let xs: Vec<f64> = values.values().copied().collect();
        let agg = match (c.aggregate.as_str(), xs.is_empty()) {
            (_, true) => None,
            ("avg", _) => Some(xs.iter().sum::<f64>() / xs.len() as f64),
            ("max", _) => xs.iter().copied().reduce(f64::max),
            ("min", _) => xs.iter().copied().reduce(f64::min),
            _ => Some(xs.iter().sum()),
        };
        let (holds, cleared) = agg.map(judge).unwrap_or((false, false));
        let mut v = values.clone();
        if let Some(a) = agg {
            v.insert(format!("{}()", c.aggregate), a);
        }
        if let Some(id) = self.step_target(p, &doc, "*", holds, cleared, v).await? {
            fired.push(id);
        }
        Ok(fired)
    }

    /// Makes every running firing due now (skips the backoff).
    pub async fn make_firings_due(&self) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE policy_firings SET next_attempt_ms = 0 WHERE state = 'running'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn due_firings(&self) -> Result<Vec<FiringRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM policy_firings WHERE state = 'running' AND next_attempt_ms <= $1 ORDER BY at_ms LIMIT 50",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
    }
}

/// The identity policies act as: a member of the policy's project.
fn policy_caller(project: &str, policy: &str) -> Caller {
    Caller {
        user_id: format!("policy:{policy}"),
        user_name: format!("policy:{policy}"),
        admin: false,
        project_id: Some(project.to_string()),
        project_name: None,
        role: Role::Member,
    }
}

/// Starts recipe run `req` on `instance` for a firing of `policy`: the
/// run's id, or why it could not start.
pub(crate) async fn start_run(
    ctx: &Ctx,
    project: &str,
    policy: &str,
    instance: &str,
    req: &nubo_api::params::RunCreate,
) -> Result<String, String> {
    let caller = policy_caller(project, policy);
    match crate::app::provisioning::start_recipe_run(ctx, &caller, instance, req, false).await {
        Ok((run_id, _)) => Ok(run_id),
        Err(e) => Err(e.to_string()),
    }
}

/// Starts moving the busiest running instance (newest `cpu_percent`) off
/// `host` to the up host with the most free CPU and memory; the error says
/// why nothing could move.
pub(crate) async fn rebalance_once(ctx: &Ctx, host: &str) -> Result<String, String> {
    let store = &ctx.store;
    let now = now_ms();
    let mut busiest: Option<(f64, crate::store::InstanceRow)> = None;
    for row in store.instances_on_host(host).await.map_err(|e| e.to_string())? {
        if row.state != InstanceState::Running || row.desired != PowerState::Running {
            continue;
        }
        let cpu = store.average_since(&row.id, "cpu_percent", now - BUSY_WINDOW_MS).await.map_err(|e| e.to_string())?;
        let cpu = cpu.unwrap_or(0.0);
        if busiest.as_ref().is_none_or(|(c, _)| cpu > *c) {
            busiest = Some((cpu, row));
        }
    }
    let (_, row) = busiest.ok_or_else(|| format!("host {host} runs no instance to move"))?;
    // The most headroom: the spread weigher's first choice, whatever
    // weigher placement uses.
    let m =
        crate::app::migrations::start(ctx, &row, None, Some(crate::placement::Weigher::Spread)).await.map_err(|e| {
            match e {
                crate::error::AppError::NoValidHost(why) => format!("no host can take {}: {why}", row.id),
                e => e.to_string(),
            }
        })?;
    Ok(m.id)
}

/// Runs the sagas of every due firing's actions as far as they go now
/// (see `sagas::policy_action`), and shows each saga's state as its
/// action's outcome.
pub async fn execute(ctx: &Ctx) -> Result<(), sqlx::Error> {
    for mut f in ctx.store.due_firings().await? {
        let policy = ctx.store.policy_name(&f.policy_id).await?.unwrap_or_else(|| f.policy_id.clone());
        let mut records: Vec<ActionRecord> = serde_json::from_str(&f.actions_json).unwrap_or_default();
        let mut retry_in: Option<i64> = None;
        for (i, r) in records.iter_mut().enumerate() {
            if r.outcome.state.ended() {
                continue;
            }
            let id = crate::sagas::policy_action::new_action(ctx, &f, &policy, i, &r.spec, &r.plan).await?;
            let s = saga::run::<PolicyActionSaga>(&ctx.store, ctx, &id).await?;
            set_action_state(&mut r.outcome, ActionState::Running);
            r.outcome.attempts = r.outcome.attempts.max(s.attempts);
            match s.state {
                SagaState::Done => {
                    set_action_state(&mut r.outcome, ActionState::Succeeded);
                    r.outcome.result = s.output.map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()));
                    r.outcome.error = None;
                }
                SagaState::Unwound => {
                    set_action_state(&mut r.outcome, ActionState::Failed);
                    r.outcome.error = s.error;
                }
                SagaState::Running | SagaState::Unwinding => {
                    // A step failed this time and is tried again after a backoff.
                    if s.state == SagaState::Running && s.attempts > 0 {
                        r.outcome.error = s.error;
                        let backoff = crate::alerts::backoff(s.attempts as i64).as_millis() as i64;
                        retry_in = Some(retry_in.map_or(backoff, |x| x.min(backoff)));
                    }
                }
            }
        }
        f.actions_json = serde_json::to_string(&records).unwrap_or_default();
        let ended = records.iter().all(|r| r.outcome.state.ended());
        let to = FiringState::of_ended(records.iter().map(|r| r.outcome.state));
        if ended && f.state.can_become(to) {
            f.state = to;
            let summary: Vec<String> =
                records.iter().map(|r| format!("{}: {}", r.outcome.action, r.outcome.state)).collect();
            ctx.store
                .event(
                    Some(&f.project_id),
                    &f.target,
                    "policy_done",
                    &format!("policy {policy} firing {} {}: {}", f.id, f.state, summary.join("; ")),
                )
                .await?;
        }
        f.next_attempt_ms = now_ms() + retry_in.unwrap_or(0);
        ctx.store.save_firing(&f).await?;
    }
    Ok(())
}

/// Moves an action's outcome to `to` when its state may become that (an
/// ended action never changes).
fn set_action_state(o: &mut ActionOutcome, to: ActionState) {
    if o.state.can_become(to) {
        o.state = to;
    }
}

/// One round: judge every policy, then advance the firings.
pub async fn run_round(ctx: &Ctx) -> Result<(), sqlx::Error> {
    for p in ctx.store.policies(None).await? {
        ctx.store.evaluate_policy(&p).await?;
    }
    execute(ctx).await
}

/// The view of a firing.
pub fn firing_view(f: &FiringRow, policy: &str) -> PolicyFiring {
    let records: Vec<ActionRecord> = serde_json::from_str(&f.actions_json).unwrap_or_default();
    PolicyFiring {
        id: f.id.clone(),
        policy: policy.to_string(),
        target: f.target.clone(),
        at_ms: f.at_ms,
        dry_run: f.dry_run == 1,
        values: serde_json::from_str(&f.values_json).unwrap_or_default(),
        state: f.state,
        actions: records.into_iter().map(|r| r.outcome).collect(),
    }
}

impl Store {
    pub async fn policy_name(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM policies WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    pub(crate) async fn policy_scope_group(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        let doc: Option<String> = sqlx::query_scalar("SELECT doc_json FROM policies WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(doc.and_then(|d| serde_json::from_str::<PolicyDoc>(&d).ok()).and_then(|d| d.scope.group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breach_fires_once_after_its_hold() {
        let s0 = (None, false, None);
        // Holds at t=0: not yet (hold 30 s).
        let (s1, fire) = breach_step(s0, true, false, 0, 30_000, 0, false);
        assert!(!fire && s1.0 == Some(0));
        let (s2, fire) = breach_step(s1, true, false, 29_999, 30_000, 0, false);
        assert!(!fire);
        let (s3, fire) = breach_step(s2, true, false, 30_000, 30_000, 0, false);
        assert!(fire && s3.1);
        // Still holding: no second firing for the same breach.
        let (s4, fire) = breach_step(s3, true, false, 90_000, 30_000, 0, false);
        assert!(!fire);
        // Dips into the hysteresis band: the breach stays, the hold restarts.
        let (s5, fire) = breach_step(s4, false, false, 91_000, 30_000, 0, false);
        assert!(!fire && s5.1 && s5.0.is_none());
        let (s6, fire) = breach_step(s5, true, false, 92_000, 0, 0, false);
        assert!(!fire, "back above without clearing: same breach");
        // Cleared: a new breach may fire again.
        let (s7, _) = breach_step(s6, false, true, 93_000, 0, 0, false);
        assert!(!s7.1);
        let (_, fire) = breach_step(s7, true, false, 94_000, 0, 0, false);
        assert!(fire);
    }

    #[test]
    fn cooldown_and_repeat() {
        let fired_at = (Some(0), false, Some(10_000));
        let (_, fire) = breach_step(fired_at, true, false, 20_000, 0, 60_000, false);
        assert!(!fire, "within the cooldown");
        let (_, fire) = breach_step(fired_at, true, false, 80_000, 0, 60_000, false);
        assert!(fire, "after the cooldown");
        let breaching = (Some(0), true, Some(10_000));
        let (_, fire) = breach_step(breaching, true, false, 80_000, 0, 60_000, true);
        assert!(fire, "repeat fires again during one breach");
    }

    #[test]
    fn documents_are_checked() {
        let ok = |yaml: &str| -> Result<(), String> {
            // As the CLI reads a document: YAML to JSON's data model, then the type.
            let v: serde_json::Value = yaml_serde::from_str(yaml).map_err(|e| e.to_string())?;
            let doc: PolicyDoc = serde_json::from_value(v).map_err(|e| e.to_string())?;
            validate(&doc)
        };
        ok("name: grow\nscope: {instance: i-0123456789abcdef0}\ncondition: {metric: fs_used_percent, op: '>=', threshold: 80, for: 30s}\nactions: [{attach_volume: {size_gib: 100}}]\n").unwrap();
        ok("name: out\nscope: {group: web}\ncondition: {metric: cpu, op: '>', threshold: 70, aggregate: avg, for: 1m}\nactions: [{scale: {by: 1}}]\ncooldown: 2m\n").unwrap();
        for (bad, why) in [
            ("name: a\nscope: {}\ncondition: {metric: cpu, op: '>', threshold: 1}\nactions: [reboot]\n", "exactly one"),
            ("name: a\nscope: {group: g}\ncondition: {metric: cpu, op: '>', threshold: 1, aggregate: avg}\nactions: [reboot]\n", "aggregate: each"),
            ("name: a\nscope: {tag: {key: k}}\ncondition: {metric: cpu, op: '=', threshold: 1}\nactions: [reboot]\n", "op"),
            ("name: a\nscope: {tag: {key: k}}\ncondition: {metric: cpu, op: '>', threshold: 1}\nactions: [{scale: {by: 1}}]\n", "needs a group"),
            ("name: a\nscope: {tag: {key: k}}\ncondition: {metric: cpu, op: '>', threshold: 1, for: soon}\nactions: [reboot]\n", "duration"),
        ] {
            let err = ok(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
