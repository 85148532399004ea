//! Backups in SQL and the rules that need no I/O: repositories (with
//! their sealed secret and key), plans, backups and the agent's claims on
//! them; which backups a plan's retention keeps ([`keep`], a pure
//! function); which instances a plan's selector picks ([`selects`]); and
//! when a plan's schedule (cron, UTC) next fires ([`next_run`]).
//! The operations over them are in `app::backups`, the periodic work in
//! `background::backups`.

use crate::store::{now_ms, Store};
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use nubo_api::backup::{PlanSelector, Retention};
use sqlx::FromRow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::str::FromStr;

/// A running backup whose host has not reported on it for this long is
/// failed: the host died or lost the job.
pub const SILENT_AFTER_MS: i64 = 10 * 60 * 1000;

/// A prune mark older than this is from a server that died while pruning:
/// it is cleared, so backups into the repository start again.
pub const STALE_PRUNE_MS: i64 = 6 * 60 * 60 * 1000;

#[derive(Debug, Clone, FromRow)]
pub struct RepositoryRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub location_json: String,
    pub sealed_secret: Option<String>,
    pub sealed_key: String,
    pub created_at_ms: i64,
    pub pruning_since_ms: Option<i64>,
    pub last_prune_ms: Option<i64>,
    pub last_prune_bytes_freed: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct PlanRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub repository_id: String,
    pub selector_json: String,
    pub schedule: String,
    pub keep_last: i64,
    pub keep_daily: i64,
    pub keep_weekly: i64,
    pub keep_monthly: i64,
    pub verify: String,
    pub next_run_ms: Option<i64>,
    pub last_run_ms: Option<i64>,
    pub created_at_ms: i64,
}

impl PlanRow {
    pub fn retention(&self) -> Retention {
        let n = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Retention {
            last: n(self.keep_last),
            daily: n(self.keep_daily),
            weekly: n(self.keep_weekly),
            monthly: n(self.keep_monthly),
        }
    }

    pub fn selector(&self) -> PlanSelector {
        serde_json::from_str(&self.selector_json).unwrap_or_default()
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct BackupRow {
    pub id: String,
    pub project_id: String,
    pub instance_id: String,
    pub instance_name: String,
    pub plan_id: Option<String>,
    pub repository_id: String,
    pub host_id: Option<String>,
    pub parent_id: Option<String>,
    pub state: nubo_api::backup::BackupState,
    pub instance_json: String,
    pub disks_json: String,
    pub consistency: Option<String>,
    pub bytes_done: i64,
    pub bytes_total: Option<i64>,
    pub bytes_sent: i64,
    pub bytes_stored: i64,
    pub error: Option<String>,
    pub verify_state: nubo_api::backup::VerifyState,
    pub verify_detail: Option<String>,
    pub verify_instance_id: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub reported_at_ms: Option<i64>,
}

impl BackupRow {
    /// The disks it holds (`root` and volumes), as its host reported them.
    pub fn disks(&self) -> Vec<nubo_api::backup::BackupDisk> {
        serde_json::from_str(&self.disks_json).unwrap_or_default()
    }

    /// What the instance was: its view (size, image, addresses, tags, key
    /// name) with what the backup keeps beside it (`user_data`,
    /// `volumes`, `hardware`, ...) as fields of the same object. A backup
    /// records them as `{"instance": view, "user_data": ..., ...}`
    /// (`app::backups::instance_meta`); a flat object is read as it is.
    pub fn instance(&self) -> serde_json::Value {
        let meta: serde_json::Value = serde_json::from_str(&self.instance_json).unwrap_or(serde_json::Value::Null);
        let Some(view) = meta.get("instance").and_then(serde_json::Value::as_object) else { return meta };
        let mut flat = view.clone();
        for (k, v) in meta.as_object().into_iter().flatten() {
            if k != "instance" {
                flat.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        serde_json::Value::Object(flat)
    }
}

/// A new backup row, `pending` for its host.
pub struct NewBackup<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub instance_id: &'a str,
    pub instance_name: &'a str,
    pub plan_id: Option<&'a str>,
    pub repository_id: &'a str,
    pub host_id: &'a str,
    pub instance_json: &'a str,
}

/// A new plan row.
pub struct NewPlan<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub name: &'a str,
    pub repository_id: &'a str,
    pub selector_json: &'a str,
    pub schedule: &'a str,
    pub retention: Retention,
    pub verify: &'a str,
    pub next_run_ms: Option<i64>,
}

/// How a report ended a backup.
pub enum Finish<'a> {
    Completed { disks_json: &'a str, consistency: Option<&'a str>, bytes_sent: u64, bytes_stored: u64 },
    Failed { error: &'a str },
}

/// What a claim, a report or a deletion found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The backup is not in a state that allows it.
    WrongState,
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-12-07T14:17:07.000Z`).
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a plan's schedule: five cron fields, UTC.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, String> {
    let fields = schedule.split_whitespace().count();
    let hint = "give five cron fields in UTC (minute hour day-of-month month day-of-week), e.g. '0 3 * * *' \
                for every day at 03:00 or '*/30 * * * *' for every half hour";
    if fields != 5 {
        return Err(format!(
            "schedule '{}' has {fields} fields: {hint}",
            schedule.chars().take(80).collect::<String>()
        ));
    }
    croner::Cron::from_str(schedule).map_err(|e| {
        format!("schedule '{}' is not a cron expression ({e}): {hint}", schedule.chars().take(80).collect::<String>())
    })
}

/// When `schedule` next fires strictly after `after_ms` (UTC).
pub fn next_run(schedule: &str, after_ms: i64) -> Option<i64> {
    let cron = parse_schedule(schedule).ok()?;
    // croner keeps the sub-second part of `from`: start on a whole second.
    let from = DateTime::<Utc>::from_timestamp_millis(after_ms.div_euclid(1000) * 1000)?;
    cron.find_next_occurrence(&from, false).ok().map(|t| t.timestamp_millis())
}

/// Whether a plan's selector picks an instance with these tags, in these
/// groups (ids): by id, by all of the selector's tags, or by group.
pub fn selects(
    selector: &PlanSelector,
    group_ids: &HashSet<String>,
    instance_id: &str,
    tags: &BTreeMap<String, String>,
    instance_group: Option<&str>,
) -> bool {
    selector.instances.iter().any(|i| i.as_str() == instance_id)
        || (!selector.tags.is_empty() && selector.tags.iter().all(|(k, v)| tags.get(k) == Some(v)))
        || instance_group.is_some_and(|g| group_ids.contains(g))
}

/// A calendar period (UTC) a time falls in, as a sortable key.
type Period = fn(&DateTime<Utc>) -> (i32, u32);

fn day(t: &DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.ordinal())
}

fn week(t: &DateTime<Utc>) -> (i32, u32) {
    (t.iso_week().year(), t.iso_week().week())
}

fn month(t: &DateTime<Utc>) -> (i32, u32) {
    (t.year(), t.month())
}

/// Which of one instance's completed backups of one plan `retention`
/// keeps, given as (id, taken at ms): the newest always, the newest
/// `last`, and the newest of each of the last `daily` days, `weekly` ISO
/// weeks and `monthly` months (UTC) that have a backup.
pub fn keep(backups: &[(String, i64)], retention: &Retention) -> BTreeSet<String> {
    let mut sorted: Vec<&(String, i64)> = backups.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept = BTreeSet::new();
    if let Some((id, _)) = sorted.first() {
        kept.insert(id.clone());
    }
    for (id, _) in sorted.iter().take(retention.last as usize) {
        kept.insert(id.clone());
    }
    let rules: [(u32, Period); 3] = [(retention.daily, day), (retention.weekly, week), (retention.monthly, month)];
    for (n, period) in rules {
        let mut seen = BTreeSet::new();
        for (id, at) in &sorted {
            if seen.len() >= n as usize {
                break;
            }
            let t = DateTime::<Utc>::from_timestamp_millis(*at).unwrap_or_default();
            // Newest first: the first backup of a period is its newest.
            if seen.insert(period(&t)) {
                kept.insert(id.clone());
            }
        }
    }
    kept
}

impl Store {
    // ---- repositories ----

    pub async fn insert_backup_repository(&self, r: &RepositoryRow) -> Result<bool, sqlx::Error> {
        let res = sqlx::query(
            "INSERT INTO backup_repositories (id, name, kind, location_json, sealed_secret, sealed_key, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.kind)
        .bind(&r.location_json)
        .bind(&r.sealed_secret)
        .bind(&r.sealed_key)
        .bind(r.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn backup_repositories(&self) -> Result<Vec<RepositoryRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backup_repositories ORDER BY created_at_ms, id").fetch_all(&self.pool).await
    }

    /// A repository by id or name.
    pub async fn backup_repository(&self, id_or_name: &str) -> Result<Option<RepositoryRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backup_repositories WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await
    }

    /// Deletes a repository no plan and no backup uses; false when one does
    /// (or it is gone).
    pub async fn delete_backup_repository(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "DELETE FROM backup_repositories WHERE id = $1
               AND NOT EXISTS (SELECT 1 FROM backups WHERE repository_id = $1)
               AND NOT EXISTS (SELECT 1 FROM backup_plans WHERE repository_id = $1)",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Marks a repository as being pruned, unless a backup into it is
    /// running (or it is already marked): true when marked.
    pub async fn mark_pruning(&self, id: &str, now: i64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE backup_repositories SET pruning_since_ms = $2
             WHERE id = $1 AND pruning_since_ms IS NULL
               AND NOT EXISTS (SELECT 1 FROM backups WHERE repository_id = $1 AND state = 'running')",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Clears the prune mark; with figures, records them as the last prune.
    pub async fn unmark_pruning(&self, id: &str, freed: Option<(i64, u64)>) -> Result<(), sqlx::Error> {
        match freed {
            Some((at, bytes)) => {
                sqlx::query(
                    "UPDATE backup_repositories SET pruning_since_ms = NULL, last_prune_ms = $2,
                       last_prune_bytes_freed = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(at)
                .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await?
            }
            None => {
                sqlx::query("UPDATE backup_repositories SET pruning_since_ms = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(())
    }

    /// Clears prune marks set before `before` (their server died pruning).
    pub async fn clear_stale_prune_marks(&self, before: i64) -> Result<u64, sqlx::Error> {
        let r = sqlx::query("UPDATE backup_repositories SET pruning_since_ms = NULL WHERE pruning_since_ms < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    // ---- plans ----

    pub async fn insert_backup_plan(&self, p: &NewPlan<'_>) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO backup_plans (id, project_id, name, repository_id, selector_json, schedule, keep_last,
               keep_daily, keep_weekly, keep_monthly, verify, next_run_ms, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (project_id, name) DO NOTHING",
        )
        .bind(p.id)
        .bind(p.project_id)
        .bind(p.name)
        .bind(p.repository_id)
        .bind(p.selector_json)
        .bind(p.schedule)
        .bind(i64::from(p.retention.last))
        .bind(i64::from(p.retention.daily))
        .bind(i64::from(p.retention.weekly))
        .bind(i64::from(p.retention.monthly))
        .bind(p.verify)
        .bind(p.next_run_ms)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Every plan, or one project's.
    pub async fn backup_plans(&self, project: Option<&str>) -> Result<Vec<PlanRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backup_plans WHERE ($1 IS NULL OR project_id = $1) ORDER BY created_at_ms, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn backup_plan(&self, id: &str) -> Result<Option<PlanRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backup_plans WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    pub async fn backup_plan_by_name(&self, project: &str, name: &str) -> Result<Option<PlanRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backup_plans WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn delete_backup_plan(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM backup_plans WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(r.rows_affected() == 1)
    }

    /// Plans whose schedule is due at `now`.
    pub async fn due_backup_plans(&self, now: i64) -> Result<Vec<PlanRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backup_plans WHERE next_run_ms IS NOT NULL AND next_run_ms <= $1 ORDER BY id")
            .bind(now)
            .fetch_all(&self.pool)
            .await
    }

    /// Records a plan's run; false when another server recorded it first
    /// (its `next_run_ms` is no longer `was`).
    pub async fn advance_backup_plan(
        &self,
        id: &str,
        was: Option<i64>,
        ran: i64,
        next: Option<i64>,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE backup_plans SET last_run_ms = $2, next_run_ms = $3
             WHERE id = $1 AND next_run_ms = $4",
        )
        .bind(id)
        .bind(ran)
        .bind(next)
        .bind(was)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- backups ----

    /// Inserts a pending backup unless the instance has one pending or
    /// running: false then. Its parent is the instance's newest completed
    /// backup in the same repository.
    pub async fn insert_backup(&self, b: &NewBackup<'_>) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin().await?;
        let busy: Option<String> = sqlx::query_scalar(
            "SELECT id FROM backups WHERE instance_id = $1 AND state IN ('pending', 'running') LIMIT 1",
        )
        .bind(b.instance_id)
        .fetch_optional(&mut *tx)
        .await?;
        if busy.is_some() {
            return Ok(false);
        }
        let parent: Option<String> = sqlx::query_scalar(
            "SELECT id FROM backups WHERE instance_id = $1 AND repository_id = $2 AND state = 'completed'
             ORDER BY created_at_ms DESC, id DESC LIMIT 1",
        )
        .bind(b.instance_id)
        .bind(b.repository_id)
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO backups (id, project_id, instance_id, instance_name, plan_id, repository_id, host_id,
               parent_id, state, instance_json, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
        )
        .bind(b.id)
        .bind(b.project_id)
        .bind(b.instance_id)
        .bind(b.instance_name)
        .bind(b.plan_id)
        .bind(b.repository_id)
        .bind(b.host_id)
        .bind(parent)
        .bind(b.instance_json)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn backup(&self, id: &str) -> Result<Option<BackupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backups WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Backups of a project (every project's: `None`), optionally of one
    /// instance or plan, oldest first.
    pub async fn backups(
        &self,
        project: Option<&str>,
        instance: Option<&str>,
        plan: Option<&str>,
    ) -> Result<Vec<BackupRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM backups WHERE ($1 IS NULL OR project_id = $1) AND ($2 IS NULL OR instance_id = $2)
               AND ($3 IS NULL OR plan_id = $3) ORDER BY created_at_ms, id",
        )
        .bind(project)
        .bind(instance)
        .bind(plan)
        .fetch_all(&self.pool)
        .await
    }

    /// Completed backups that a plan counts (for its retention).
    pub async fn completed_backups_of_plan(&self, plan: &str) -> Result<Vec<BackupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backups WHERE plan_id = $1 AND state = 'completed' ORDER BY created_at_ms, id")
            .bind(plan)
            .fetch_all(&self.pool)
            .await
    }

    /// Whether any backup uses the repository, or any plan.
    pub async fn backup_repository_in_use(&self, id: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM backups WHERE repository_id = $1)
                  + (SELECT COUNT(*) FROM backup_plans WHERE repository_id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// Gives `host` its oldest pending backup whose repository is not
    /// being pruned, now `running`.
    pub async fn claim_backup(&self, host: &str) -> Result<Option<BackupRow>, sqlx::Error> {
        // A candidate another server claimed meanwhile is skipped by the
        // conditional update; a few tries cover such races.
        for _ in 0..5 {
            let candidate: Option<String> = sqlx::query_scalar(
                "SELECT b.id FROM backups b JOIN backup_repositories r ON r.id = b.repository_id
                 WHERE b.host_id = $1 AND b.state = 'pending' AND r.pruning_since_ms IS NULL
                 ORDER BY b.created_at_ms, b.id LIMIT 1",
            )
            .bind(host)
            .fetch_optional(&self.pool)
            .await?;
            let Some(id) = candidate else { return Ok(None) };
            let now = now_ms();
            let r = sqlx::query(
                "UPDATE backups SET state = 'running', started_at_ms = $2, reported_at_ms = $2
                 WHERE id = $1 AND state = 'pending' AND host_id = $3
                   AND NOT EXISTS (SELECT 1 FROM backup_repositories r
                                   WHERE r.id = backups.repository_id AND r.pruning_since_ms IS NOT NULL)",
            )
            .bind(&id)
            .bind(now)
            .bind(host)
            .execute(&self.pool)
            .await?;
            if r.rows_affected() == 1 {
                return self.backup(&id).await;
            }
        }
        Ok(None)
    }

    /// Records a running backup's progress.
    pub async fn backup_progress(
        &self,
        id: &str,
        bytes_done: u64,
        bytes_total: Option<u64>,
    ) -> Result<Outcome, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE backups SET bytes_done = $2, bytes_total = COALESCE($3, bytes_total), reported_at_ms = $4
             WHERE id = $1 AND state = 'running'",
        )
        .bind(id)
        .bind(i64::try_from(bytes_done).unwrap_or(i64::MAX))
        .bind(bytes_total.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(if r.rows_affected() == 1 { Outcome::Done } else { Outcome::WrongState })
    }

    /// Ends a pending or running backup.
    pub async fn finish_backup(&self, id: &str, finish: Finish<'_>) -> Result<Outcome, sqlx::Error> {
        let now = now_ms();
        let r = match finish {
            Finish::Completed { disks_json, consistency, bytes_sent, bytes_stored } => {
                sqlx::query(
                    "UPDATE backups SET state = 'completed', disks_json = $2, consistency = $3, bytes_sent = $4,
                       bytes_stored = $5, bytes_done = COALESCE(bytes_total, bytes_done), finished_at_ms = $6,
                       reported_at_ms = $6, error = NULL
                     WHERE id = $1 AND state IN ('pending', 'running')",
                )
                .bind(id)
                .bind(disks_json)
                .bind(consistency)
                .bind(i64::try_from(bytes_sent).unwrap_or(i64::MAX))
                .bind(i64::try_from(bytes_stored).unwrap_or(i64::MAX))
                .bind(now)
                .execute(&self.pool)
                .await?
            }
            Finish::Failed { error } => {
                sqlx::query(
                    "UPDATE backups SET state = 'failed', error = $2, finished_at_ms = $3, reported_at_ms = $3
                     WHERE id = $1 AND state IN ('pending', 'running')",
                )
                .bind(id)
                .bind(error)
                .bind(now)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(if r.rows_affected() == 1 { Outcome::Done } else { Outcome::WrongState })
    }

    /// Fails running backups whose host last reported before `before`.
    pub async fn fail_silent_backups(&self, before: i64, error: &str) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE backups SET state = 'failed', error = $2, finished_at_ms = $3
             WHERE state = 'running' AND COALESCE(reported_at_ms, started_at_ms, created_at_ms) < $1",
        )
        .bind(before)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Removes a backup's row unless it is running; false then (or gone).
    pub async fn delete_backup_row(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM backups WHERE id = $1 AND state <> 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The instance's group (instance groups' members), if any.
    pub async fn instance_group_id(&self, instance: &str) -> Result<Option<String>, sqlx::Error> {
        let g: Option<Option<String>> = sqlx::query_scalar("SELECT group_id FROM instances WHERE id = $1")
            .bind(instance)
            .fetch_optional(&self.pool)
            .await?;
        Ok(g.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    /// 2026-01-05 00:00 UTC, a Monday.
    const MON: i64 = 1_767_571_200_000;

    fn r(last: u32, daily: u32, weekly: u32, monthly: u32) -> Retention {
        Retention { last, daily, weekly, monthly }
    }

    fn ids(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn retention_table() {
        // Two backups a day (02:00 and 14:00) for 14 days from Monday 5 January.
        let mut backups = Vec::new();
        for d in 0..14 {
            backups.push((format!("d{d:02}a"), MON + d * DAY + 2 * 3_600_000));
            backups.push((format!("d{d:02}b"), MON + d * DAY + 14 * 3_600_000));
        }
        let cases: Vec<(Retention, Vec<&str>)> = vec![
            // Nothing asked: the newest is kept all the same.
            (r(0, 0, 0, 0), vec!["d13b"]),
            (r(1, 0, 0, 0), vec!["d13b"]),
            (r(3, 0, 0, 0), vec!["d13b", "d13a", "d12b"]),
            // The newest of each of the last 3 days.
            (r(0, 3, 0, 0), vec!["d13b", "d12b", "d11b"]),
            // Weeks: Monday 5 .. Sunday 11 and Monday 12 .. Sunday 18.
            (r(0, 0, 2, 0), vec!["d13b", "d06b"]),
            (r(0, 0, 5, 0), vec!["d13b", "d06b"]),
            // One month holds them all.
            (r(0, 0, 0, 3), vec!["d13b"]),
            // Rules add up; a backup kept by two rules counts once.
            (r(2, 2, 2, 0), vec!["d13b", "d13a", "d12b", "d06b"]),
        ];
        for (retention, want) in cases {
            assert_eq!(keep(&backups, &retention), ids(&want), "{retention:?}");
        }
        // Order of the input does not matter; no backups, nothing kept.
        let mut rev = backups.clone();
        rev.reverse();
        assert_eq!(keep(&rev, &r(0, 3, 0, 0)), ids(&["d13b", "d12b", "d11b"]));
        assert!(keep(&[], &r(5, 5, 5, 5)).is_empty());
        // Months across a year's end.
        let months = vec![
            ("nov".to_string(), MON - 40 * DAY),
            ("dec1".to_string(), MON - 20 * DAY),
            ("dec2".to_string(), MON - 10 * DAY),
            ("jan".to_string(), MON),
        ];
        assert_eq!(keep(&months, &r(0, 0, 0, 2)), ids(&["jan", "dec2"]));
        assert_eq!(keep(&months, &r(0, 0, 0, 12)), ids(&["jan", "dec2", "nov"]));
    }

    #[test]
    fn schedules_parse_and_fire() {
        assert!(parse_schedule("0 3 * * *").is_ok());
        let e = parse_schedule("0 3 * *").unwrap_err();
        assert!(e.contains("4 fields") && e.contains("0 3 * * *"), "{e}");
        assert!(parse_schedule("every day").unwrap_err().contains("e.g."));
        assert!(parse_schedule("61 3 * * *").is_err());
        // Every day at 03:00 UTC: from Monday 00:00 it fires Monday 03:00,
        // and from then, Tuesday 03:00.
        assert_eq!(next_run("0 3 * * *", MON), Some(MON + 3 * 3_600_000));
        assert_eq!(next_run("0 3 * * *", MON + 3 * 3_600_000), Some(MON + DAY + 3 * 3_600_000));
    }

    #[test]
    fn selectors() {
        let tags: BTreeMap<String, String> =
            [("env", "prod"), ("tier", "db")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let groups: HashSet<String> = ["grp-1".to_string()].into();
        let id = "i-0123456789abcdef0";
        let by_id = PlanSelector { instances: vec![id.parse().unwrap()], ..Default::default() };
        assert!(selects(&by_id, &groups, id, &tags, None));
        assert!(!selects(&by_id, &groups, "i-0123456789abcdef1", &tags, None));
        let mut by_tags = PlanSelector::default();
        by_tags.tags.insert("env".into(), "prod".into());
        assert!(selects(&by_tags, &groups, id, &tags, None));
        by_tags.tags.insert("tier".into(), "web".into());
        assert!(!selects(&by_tags, &groups, id, &tags, None), "every tag must match");
        let by_group = PlanSelector { groups: vec!["web".into()], ..Default::default() };
        assert!(selects(&by_group, &groups, id, &BTreeMap::new(), Some("grp-1")));
        assert!(!selects(&by_group, &groups, id, &BTreeMap::new(), Some("grp-2")));
        assert!(!selects(&PlanSelector::default(), &groups, id, &tags, None));
    }
}
