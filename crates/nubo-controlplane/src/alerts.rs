//! Alerts: rules on metrics (a threshold held for a while) and on checks'
//! hard states, the alerts they raise (pending, firing, resolved; with
//! acknowledgement and silences), and their notifications: always an
//! entry in the event log, and a JSON POST to the rule's webhook, retried
//! with backoff and then marked failed (delivered by `webhooks`, which
//! also decides where a webhook may go). An alert fires once per breach:
//! it notifies when it starts firing and when it is resolved, never again
//! in between.

use crate::checks::CheckRow;
use crate::store::{now_ms, Store};
use nubo_api::ids::{AlertId, AlertRuleId};
use nubo_api::monitoring::{AlertState, CheckState, CheckStateType, NotificationState};
use serde_json::json;
use sqlx::FromRow;
use std::time::Duration;

/// Webhook attempts before a notification is marked failed.
pub const MAX_ATTEMPTS: i64 = 6;
/// Metric values older than this do not count (the series stopped).
const STALE_MS: i64 = 5 * 60_000;

#[derive(Debug, Clone, FromRow)]
pub struct RuleRow {
    pub id: String,
    pub project_id: Option<String>,
    pub name: String,
    pub kind: String,
    pub target: String,
    pub metric: Option<String>,
    pub op: Option<String>,
    pub threshold: Option<f64>,
    pub for_secs: i64,
    pub check_id: Option<String>,
    pub min_state: Option<CheckState>,
    pub webhook_url: Option<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct AlertRow {
    pub id: String,
    pub rule_id: String,
    pub project_id: Option<String>,
    pub resource: String,
    pub state: AlertState,
    pub summary: String,
    pub value: Option<f64>,
    pub started_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at_ms: Option<i64>,
    pub silenced_until_ms: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct NotificationRow {
    pub id: String,
    pub alert_id: String,
    pub kind: String,
    pub url: String,
    pub payload: String,
    pub state: NotificationState,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
}

/// Whether `value op threshold` holds.
pub fn compare(value: f64, op: &str, threshold: f64) -> bool {
    match op {
        ">" => value > threshold,
        ">=" => value >= threshold,
        "<" => value < threshold,
        "<=" => value <= threshold,
        _ => false,
    }
}

/// What one evaluation found for one (rule, resource).
struct Finding {
    resource: String,
    holds: bool,
    value: Option<f64>,
    summary: String,
}

/// Exponential backoff before attempt `n + 1` (1, 2, 4, ... at most 60 s).
pub fn backoff(attempts: i64) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 6)).min(Duration::from_secs(60))
}

impl Store {
    pub async fn insert_rule(&self, r: &RuleRow) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "INSERT INTO alert_rules (id, project_id, name, kind, target, metric, op, threshold, for_secs, check_id,
               min_state, webhook_url, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING",
        )
        .bind(&r.id)
        .bind(&r.project_id)
        .bind(&r.name)
        .bind(&r.kind)
        .bind(&r.target)
        .bind(&r.metric)
        .bind(&r.op)
        .bind(r.threshold)
        .bind(r.for_secs)
        .bind(&r.check_id)
        .bind(r.min_state)
        .bind(&r.webhook_url)
        .bind(r.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn rules(&self, project: Option<&str>) -> Result<Vec<RuleRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM alert_rules WHERE ($1 IS NULL OR project_id = $1) ORDER BY name")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// How many alert rules `project` has.
    pub async fn rule_count(&self, project: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM alert_rules WHERE project_id = $1")
            .bind(project)
            .fetch_one(&self.pool)
            .await
    }

    pub async fn rule(&self, id: &str) -> Result<Option<RuleRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM alert_rules WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Deletes a rule; its open alerts are resolved without notifications.
    pub async fn delete_rule(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE alerts SET state = 'resolved', resolved_at_ms = $1 WHERE rule_id = $2 AND state <> 'resolved'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM alert_rules WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Alerts (firing first, then the newest), of one project or all.
    pub async fn alerts(&self, project: Option<&str>, include_resolved: bool) -> Result<Vec<AlertRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM alerts WHERE state <> 'pending' AND ($1 IS NULL OR project_id = $1)
               AND ($2 OR state = 'firing')
             ORDER BY CASE state WHEN 'firing' THEN 0 ELSE 1 END, started_at_ms DESC LIMIT 500",
        )
        .bind(project)
        .bind(include_resolved)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn alert(&self, id: &str) -> Result<Option<AlertRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM alerts WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    pub async fn notifications_of(&self, alert: &str) -> Result<Vec<NotificationRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM notifications WHERE alert_id = $1 ORDER BY created_at_ms")
            .bind(alert)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn acknowledge_alert(&self, id: &str, by: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE alerts SET acknowledged_by = $1, acknowledged_at_ms = $2 WHERE id = $3")
            .bind(by)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.event(None, id, "alert_acknowledged", &format!("alert {id} acknowledged by {by}")).await
    }

    pub async fn silence_alert(&self, id: &str, until_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE alerts SET silenced_until_ms = $1 WHERE id = $2")
            .bind(until_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Appends to the event log.
    pub async fn event(
        &self,
        project: Option<&str>,
        resource: &str,
        kind: &str,
        message: &str,
    ) -> Result<(), sqlx::Error> {
        let insert = sqlx::query(
            "INSERT INTO cloud_events (seq, at_ms, project_id, resource, kind, message)
             VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM cloud_events), $1, $2, $3, $4, $5)",
        )
        .bind(now_ms())
        .bind(project)
        .bind(resource)
        .bind(kind)
        .bind(message);
        crate::store::insert_numbered(&self.pool, "cloud_events", insert).await?;
        Ok(())
    }

    pub async fn cloud_events(
        &self,
        project: Option<&str>,
        limit: i64,
    ) -> Result<Vec<nubo_api::monitoring::CloudEvent>, sqlx::Error> {
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT at_ms, resource, kind, message FROM cloud_events WHERE ($1 IS NULL OR project_id = $1)
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(project)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at_ms, resource, kind, message)| nubo_api::monitoring::CloudEvent { at_ms, resource, kind, message })
            .collect())
    }

    /// What a rule's condition says about each resource it covers now.
    async fn findings(&self, rule: &RuleRow) -> Result<Vec<Finding>, sqlx::Error> {
        let now = now_ms();
        if rule.kind == "metric" {
            let (Some(metric), Some(op), Some(threshold)) = (&rule.metric, &rule.op, rule.threshold) else {
                return Ok(Vec::new());
            };
            let resources: Vec<String> = if rule.target == "*" {
                sqlx::query_scalar("SELECT id FROM instances WHERE project_id = $1 AND state = 'running'")
                    .bind(&rule.project_id)
                    .fetch_all(&self.pool)
                    .await?
            } else {
                vec![rule.target.clone()]
            };
            let mut out = Vec::new();
            for r in resources {
                let value = self.latest_value(&r, metric, now - STALE_MS).await?;
                let holds = value.is_some_and(|v| compare(v, op, threshold));
                let shown = value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "no data".into());
                out.push(Finding {
                    summary: format!("{metric} of {r} is {shown} ({op} {threshold} for {} s)", rule.for_secs),
                    resource: r,
                    holds,
                    value,
                });
            }
            return Ok(out);
        }
        let checks: Vec<CheckRow> = match &rule.check_id {
            Some(id) => self.check(id).await?.into_iter().collect(),
            None => {
                sqlx::query_as("SELECT * FROM checks WHERE target = $1 OR ($1 = '*' AND project_id = $2)")
                    .bind(&rule.target)
                    .bind(&rule.project_id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let min = rule.min_state.unwrap_or(CheckState::Critical);
        Ok(checks
            .into_iter()
            .map(|c| Finding {
                holds: c.state_type == CheckStateType::Hard && c.state.fires(min),
                value: None,
                summary: format!("check {} on {} is {} ({}): {}", c.name, c.target, c.state, c.state_type, c.output),
                resource: c.id,
            })
            .collect())
    }

    /// Evaluates every rule once: starts, fires and resolves alerts, and
    /// queues their notifications. Returns how many notifications it queued.
    pub async fn evaluate_alerts(&self) -> Result<usize, sqlx::Error> {
        let mut queued = 0;
        for rule in self.rules(None).await? {
            for f in self.findings(&rule).await? {
                queued += self.advance_alert(&rule, f).await?;
            }
        }
        Ok(queued)
    }

    async fn advance_alert(&self, rule: &RuleRow, f: Finding) -> Result<usize, sqlx::Error> {
        let now = now_ms();
        let open: Option<AlertRow> = sqlx::query_as(
            "SELECT * FROM alerts WHERE rule_id = $1 AND resource = $2 AND state IN ('pending', 'firing')",
        )
        .bind(&rule.id)
        .bind(&f.resource)
        .fetch_optional(&self.pool)
        .await?;
        match (open, f.holds) {
            (None, true) => {
                let id = AlertId::generate();
                sqlx::query(
                    "INSERT INTO alerts (id, rule_id, project_id, resource, state, summary, value, started_at_ms)
                     VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
                )
                .bind(id.as_str())
                .bind(&rule.id)
                .bind(&rule.project_id)
                .bind(&f.resource)
                .bind(&f.summary)
                .bind(f.value)
                .bind(now)
                .execute(&self.pool)
                .await?;
                if rule.for_secs == 0 {
                    return self.fire(rule, id.as_str(), &f).await;
                }
                Ok(0)
            }
            (Some(a), true)
                if a.state == AlertState::Pending
                    && a.state.can_become(AlertState::Firing)
                    && now - a.started_at_ms >= rule.for_secs * 1000 =>
            {
                self.fire(rule, &a.id, &f).await
            }
            (Some(a), true) => {
                sqlx::query("UPDATE alerts SET value = $1, summary = $2 WHERE id = $3")
                    .bind(f.value)
                    .bind(&f.summary)
                    .bind(&a.id)
                    .execute(&self.pool)
                    .await?;
                Ok(0)
            }
            (Some(a), false) if a.state == AlertState::Pending => {
                // It did not hold for long enough: never an alert.
                sqlx::query("DELETE FROM alerts WHERE id = $1").bind(&a.id).execute(&self.pool).await?;
                Ok(0)
            }
            (Some(a), false) if a.state.can_become(AlertState::Resolved) => {
                let r = sqlx::query(
                    "UPDATE alerts SET state = 'resolved', resolved_at_ms = $1, value = $2 WHERE id = $3 AND state = 'firing'",
                )
                .bind(now)
                .bind(f.value)
                .bind(&a.id)
                .execute(&self.pool)
                .await?;
                if r.rows_affected() != 1 {
                    return Ok(0);
                }
                self.notify(rule, &a, AlertState::Resolved, &f.summary, f.value).await
            }
            (Some(_), false) | (None, false) => Ok(0),
        }
    }

    async fn fire(&self, rule: &RuleRow, id: &str, f: &Finding) -> Result<usize, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE alerts SET state = 'firing', fired_at_ms = $1, summary = $2, value = $3 WHERE id = $4 AND state = 'pending'",
        )
        .bind(now_ms())
        .bind(&f.summary)
        .bind(f.value)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(0);
        }
        let Some(a) = self.alert(id).await? else { return Ok(0) };
        self.notify(rule, &a, AlertState::Firing, &f.summary, f.value).await
    }

    /// The event log entry and, unless silenced, the webhook notification.
    async fn notify(
        &self,
        rule: &RuleRow,
        a: &AlertRow,
        kind: AlertState,
        summary: &str,
        value: Option<f64>,
    ) -> Result<usize, sqlx::Error> {
        let now = now_ms();
        self.event(
            a.project_id.as_deref(),
            &a.resource,
            &format!("alert_{kind}"),
            &format!("{} {kind}: {summary}", rule.name),
        )
        .await?;
        let Some(url) = &rule.webhook_url else { return Ok(0) };
        if a.silenced_until_ms.is_some_and(|t| t > now) {
            return Ok(0);
        }
        // What the alert is about: a check rule's alerts are per check.
        let target = match rule.kind.as_str() {
            "check" => self.check(&a.resource).await?.map(|c| c.target).unwrap_or_else(|| a.resource.clone()),
            _ => a.resource.clone(),
        };
        let payload = json!({
            "alert_id": a.id,
            "rule": rule.name,
            "rule_id": rule.id,
            "resource": a.resource,
            "target": target,
            "project_id": a.project_id,
            "state": kind.as_str(),
            "summary": summary,
            "value": value,
            "started_at_ms": a.started_at_ms,
            "at_ms": now,
        });
        self.queue_notification(&a.id, kind.as_str(), url, &payload.to_string()).await?;
        Ok(1)
    }

    /// Queues a webhook POST for `source` (an alert or a policy firing);
    /// returns its id.
    pub async fn queue_notification(
        &self,
        source: &str,
        kind: &str,
        url: &str,
        payload: &str,
    ) -> Result<String, sqlx::Error> {
        let id = format!("ntf-{:017x}", rand::random::<u64>() & 0x000f_ffff_ffff_ffff_u64);
        sqlx::query(
            "INSERT INTO notifications (id, alert_id, kind, url, payload, state, attempts, next_attempt_ms, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
        )
        .bind(&id)
        .bind(source)
        .bind(kind)
        .bind(url)
        .bind(payload)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// `pending`, `sent` or `failed`.
    pub async fn notification_state(&self, id: &str) -> Result<Option<NotificationState>, sqlx::Error> {
        sqlx::query_scalar("SELECT state FROM notifications WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Makes every pending notification due now (skips the backoff).
    pub async fn make_notifications_due(&self) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE notifications SET next_attempt_ms = 0 WHERE state = 'pending'").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn due_notifications(&self) -> Result<Vec<NotificationRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM notifications WHERE state = 'pending' AND next_attempt_ms <= $1 ORDER BY next_attempt_ms LIMIT 50",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await
    }

    /// Records a delivery attempt: sent, or retried later, or (after
    /// [`MAX_ATTEMPTS`]) failed.
    pub async fn record_delivery(&self, n: &NotificationRow, error: Option<String>) -> Result<(), sqlx::Error> {
        let attempts = n.attempts + 1;
        let (state, next) = match &error {
            None => (NotificationState::Sent, n.next_attempt_ms),
            Some(_) if attempts >= MAX_ATTEMPTS => (NotificationState::Failed, n.next_attempt_ms),
            Some(_) => (NotificationState::Pending, now_ms() + backoff(attempts).as_millis() as i64),
        };
        if !n.state.can_become(state) {
            return Ok(());
        }
        sqlx::query(
            "UPDATE notifications SET state = $1, attempts = $2, next_attempt_ms = $3, last_error = $4 WHERE id = $5",
        )
        .bind(state)
        .bind(attempts)
        .bind(next)
        .bind(&error)
        .bind(&n.id)
        .execute(&self.pool)
        .await?;
        if state == NotificationState::Failed {
            self.event(
                None,
                &n.alert_id,
                "notification_failed",
                &format!("webhook {} gave up after {attempts} attempts: {}", n.url, error.unwrap_or_default()),
            )
            .await?;
        }
        Ok(())
    }
}

/// One round of delivery, all at once, waiting for every attempt (each
/// at most `webhooks::REQUEST_TIMEOUT`): for tests that run a round and
/// look. The server delivers from its own task (`webhooks::Dispatcher`).
pub async fn deliver(store: &Store, client: &crate::webhooks::WebhookClient) -> Result<usize, sqlx::Error> {
    let mut attempts = tokio::task::JoinSet::new();
    for n in store.due_notifications().await? {
        let (store, client) = (store.clone(), client.clone());
        attempts.spawn(async move { crate::webhooks::attempt(&store, &client, &n).await });
    }
    let mut sent = 0;
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok(Ok(true)) => sent += 1,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => tracing::error!(error = %e, "a webhook delivery task failed"),
        }
    }
    Ok(sent)
}

/// A fresh rule id.
pub fn new_rule_id() -> AlertRuleId {
    AlertRuleId::generate()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a hard check spelled `state` fires a rule whose lowest
    /// firing state is spelled `min_state`.
    fn state_fires(state: &str, min_state: &str) -> bool {
        state.parse::<CheckState>().unwrap().fires(min_state.parse().unwrap())
    }

    #[test]
    fn comparisons_states_and_backoff() {
        assert!(compare(81.0, ">=", 80.0) && compare(80.0, ">=", 80.0) && !compare(79.9, ">=", 80.0));
        assert!(compare(1.0, "<", 2.0) && !compare(1.0, "??", 2.0));
        assert!(state_fires("CRITICAL", "CRITICAL") && !state_fires("WARNING", "CRITICAL"));
        assert!(
            state_fires("WARNING", "WARNING") && state_fires("UNKNOWN", "WARNING") && !state_fires("OK", "WARNING")
        );
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(20), Duration::from_secs(60));
    }
}
