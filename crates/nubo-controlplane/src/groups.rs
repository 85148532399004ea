//! Instance groups: a launch template kept at a desired count between a
//! minimum and a maximum. Each round (in the monitor task) a group
//! applies its schedules (cron, UTC), judges its members (a member in
//! error, stopped, or whose health check is HARD CRITICAL is replaced),
//! then launches or terminates members until the count is right (the
//! newest go first on scale-in). Everything it does is in its activity
//! history. Launching a member and scaling in are sagas
//! (`sagas::group_scale`), resumed at the start of the next round when a
//! server died halfway. Launches go through the same path as `POST /api/v1/instances`
//! (placement, quotas), as a member of the group's project.

use crate::store::{now_ms, Store};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::automation::{GroupCreate, GroupHealthCheck, GroupSchedule};
use nubo_api::monitoring::{CheckState, CheckStateType};
use nubo_api::params::InstanceCreate;
use nubo_api::views::InstanceState;
use sqlx::FromRow;
use std::str::FromStr;
use std::sync::Arc;

/// The name of the check each member of a group with a health check gets.
pub const HEALTH_CHECK: &str = "group-health";
/// Wait this long before trying a failed launch again.
const LAUNCH_RETRY_MS: i64 = 10_000;

#[derive(Debug, Clone, FromRow)]
pub struct GroupRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub template_json: String,
    pub min_size: i64,
    pub max_size: i64,
    pub desired: i64,
    pub health_json: Option<String>,
    pub schedules_json: String,
    pub schedule_mark_ms: i64,
    pub launched: i64,
    pub launch_retry_ms: i64,
    pub created_at_ms: i64,
    /// The launch template members are launched from (see migration 0025).
    pub launch_template: Option<String>,
}

impl GroupRow {
    pub fn template(&self) -> Option<InstanceCreate> {
        serde_json::from_str(&self.template_json).ok()
    }

    pub fn health(&self) -> Option<GroupHealthCheck> {
        self.health_json.as_deref().and_then(|h| serde_json::from_str(h).ok())
    }

    pub fn schedules(&self) -> Vec<GroupSchedule> {
        serde_json::from_str(&self.schedules_json).unwrap_or_default()
    }
}

/// Checks a group: bounds, template (`g.template`, or the launch
/// template's version it resolved to), health check and schedules.
pub fn validate(g: &GroupCreate, template: &InstanceCreate) -> Result<(), String> {
    crate::validate::name(&g.name).map_err(|e| e.to_string())?;
    crate::validate::instance_create(template).map_err(|e| e.to_string())?;
    let desired = g.desired.unwrap_or(g.min);
    if g.max > 100 || g.min > g.max || desired < g.min || desired > g.max {
        return Err(format!("need min <= desired <= max <= 100; got min {}, desired {desired}, max {}", g.min, g.max));
    }
    if let Some(h) = &g.health_check {
        if !matches!(h.kind.as_str(), "tcp" | "http") {
            return Err("health_check.kind must be tcp or http".into());
        }
        if !template.ports.contains(&h.port) {
            return Err(format!(
                "health_check.port {} is not among the template's ports {:?}; add it to template.ports",
                h.port, template.ports
            ));
        }
    }
    for s in &g.schedules {
        croner::Cron::from_str(&s.cron).map_err(|e| format!("schedule '{}' is not a cron expression: {e}", s.cron))?;
        if s.desired < g.min || s.desired > g.max {
            return Err(format!(
                "schedule '{}' asks for {} members, outside min {} and max {}",
                s.cron, s.desired, g.min, g.max
            ));
        }
    }
    Ok(())
}

/// Whether a cron expression has an occurrence in `(after, until]` (ms, UTC).
pub fn fires_between(cron: &str, after: i64, until: i64) -> bool {
    // croner keeps the sub-second part of `from`: start on a whole second.
    let (Ok(c), Some(from)) =
        (croner::Cron::from_str(cron), chrono::DateTime::from_timestamp_millis(after.div_euclid(1000) * 1000))
    else {
        return false;
    };
    c.find_next_occurrence(&from, false).is_ok_and(|next| next.timestamp_millis() <= until)
}

/// How a member is doing, and whether it must be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Starting,
    /// Replace it, for this reason.
    Replace(String),
}

impl Health {
    pub fn describe(&self) -> String {
        match self {
            Self::Healthy => "healthy".into(),
            Self::Starting => "starting".into(),
            Self::Replace(why) => format!("replacing: {why}"),
        }
    }
}

impl Store {
    /// Records a group launching `template` (or from `g.launch_template`,
    /// whose version `template` is).
    pub async fn insert_group(
        &self,
        project: &str,
        g: &GroupCreate,
        template: &InstanceCreate,
    ) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO instance_groups (id, project_id, name, template_json, min_size, max_size, desired, health_json,
               schedules_json, schedule_mark_ms, launched, launch_retry_ms, created_at_ms, launch_template)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(format!("grp-{:017x}", rand::random::<u64>() & 0x000f_ffff_ffff_ffff_u64))
        .bind(project)
        .bind(&g.name)
        .bind(serde_json::to_string(template).unwrap_or_default())
        .bind(i64::from(g.min))
        .bind(i64::from(g.max))
        .bind(i64::from(g.desired.unwrap_or(g.min)))
        .bind(g.health_check.as_ref().map(|h| serde_json::to_string(h).unwrap_or_default()))
        .bind(serde_json::to_string(&g.schedules).unwrap_or_default())
        .bind(now)
        .bind(g.launch_template.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn groups(&self, project: Option<&str>) -> Result<Vec<GroupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM instance_groups WHERE ($1 IS NULL OR project_id = $1) ORDER BY name")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn group_by_name(&self, project: &str, name: &str) -> Result<Option<GroupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM instance_groups WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// Members not terminated (nor being terminated), oldest first.
    pub async fn group_members(&self, group: &str) -> Result<Vec<crate::store::InstanceRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM instances WHERE group_id = $1 AND state <> 'terminated' AND desired <> 'deleted'
             ORDER BY created_at_ms, id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await
    }

    /// Sets the desired count (clamped to the group's bounds) and notes why.
    pub async fn set_group_desired(&self, id: &str, desired: u32, why: &str) -> Result<(), sqlx::Error> {
        let r = sqlx::query(
            "UPDATE instance_groups SET desired = CASE WHEN $1 < min_size THEN min_size WHEN $1 > max_size THEN max_size
               ELSE $1 END WHERE id = $2 AND desired <> $1",
        )
        .bind(i64::from(desired))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            self.group_activity(id, "desired", &format!("desired count set to {desired} ({why})")).await?;
        }
        Ok(())
    }

    pub async fn group_activity(&self, group: &str, kind: &str, detail: &str) -> Result<(), sqlx::Error> {
        let insert = sqlx::query(
            "INSERT INTO group_activities (group_id, seq, at_ms, kind, detail)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM group_activities WHERE group_id = $1), $2, $3, $4)",
        )
        .bind(group)
        .bind(now_ms())
        .bind(kind)
        .bind(detail);
        crate::store::insert_numbered(&self.pool, &format!("group_activities/{group}"), insert).await?;
        Ok(())
    }

    pub async fn group_activities(
        &self,
        group: &str,
        limit: i64,
    ) -> Result<Vec<nubo_api::automation::GroupActivity>, sqlx::Error> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT at_ms, kind, detail FROM group_activities WHERE group_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(group)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at_ms, kind, detail)| nubo_api::automation::GroupActivity { at_ms, kind, detail })
            .collect())
    }

    pub async fn delete_group(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM group_activities WHERE group_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM instance_groups WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// How a member is doing.
    pub async fn member_health(&self, m: &crate::store::InstanceRow) -> Result<Health, sqlx::Error> {
        if m.state == InstanceState::Error {
            return Ok(Health::Replace(format!("it is in error: {}", m.error.clone().unwrap_or_default())));
        }
        if m.desired == PowerState::Stopped {
            return Ok(Health::Replace("it stopped (its VM died, or someone stopped it)".into()));
        }
        let check: Option<(CheckState, CheckStateType)> =
            sqlx::query_as("SELECT state, state_type FROM checks WHERE target = $1 AND name = $2")
                .bind(&m.id)
                .bind(HEALTH_CHECK)
                .fetch_optional(&self.pool)
                .await?;
        if let Some((state, kind)) = check {
            if state == CheckState::Critical && kind == CheckStateType::Hard {
                return Ok(Health::Replace("its health check is CRITICAL".into()));
            }
        }
        Ok(if m.state == InstanceState::Running { Health::Healthy } else { Health::Starting })
    }
}

/// One round for every group.
pub async fn reconcile(ctx: &Arc<Ctx>) -> Result<(), sqlx::Error> {
    // Sagas a crash left halfway first: the members they launch count below.
    crate::sagas::group_scale::resume(ctx).await?;
    let now = now_ms();
    for g in ctx.store.groups(None).await? {
        // Schedules first: they set the count this round works towards.
        for s in g.schedules() {
            if fires_between(&s.cron, g.schedule_mark_ms, now) {
                ctx.store.set_group_desired(&g.id, s.desired, &format!("schedule '{}'", s.cron)).await?;
            }
        }
        ctx.store.mark_schedules(&g.id, now).await?;
        let Some(g) = ctx.store.group_by_name(&g.project_id, &g.name).await? else { continue };
        let members = ctx.store.group_members(&g.id).await?;
        let mut alive = Vec::new();
        for m in members {
            match ctx.store.member_health(&m).await? {
                Health::Replace(why) => {
                    if ctx.store.terminate(&m.id).await? {
                        ctx.store.group_activity(&g.id, "replace", &format!("terminating {} ({why})", m.id)).await?;
                        ctx.bump();
                    }
                }
                _ => alive.push(m),
            }
        }
        let desired = g.desired as usize;
        if alive.len() > desired {
            // Scale in: the newest members go first, passing over those
            // with termination protection (as an auto scaling group
            // passes over members protected from scale-in): the group
            // stays above its count while only protected members are left.
            let excess = alive.len() - desired;
            let victims: Vec<String> = alive
                .iter()
                .rev()
                .filter(|m| m.termination_protection == 0)
                .take(excess)
                .map(|m| m.id.clone())
                .collect();
            if victims.len() < excess {
                tracing::info!(group = %g.name, protected = excess - victims.len(),
                    "scale-in passes over members with termination protection");
            }
            if victims.is_empty() {
                continue;
            }
            crate::sagas::group_scale::scale_in(ctx, &g, desired, victims).await?;
        } else if alive.len() < desired && now >= g.launch_retry_ms {
            for _ in alive.len()..desired {
                // The saga notes the launch in the activity history.
                if let Err(e) = crate::sagas::group_scale::launch_member(ctx, &g, alive.len() + 1, desired).await? {
                    ctx.store.group_activity(&g.id, "launch_failed", &e).await?;
                    ctx.store.delay_launches(&g.id, now + LAUNCH_RETRY_MS).await?;
                    break;
                }
            }
        }
    }
    Ok(())
}

impl Store {
    pub(crate) async fn next_member_number(&self, group: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("UPDATE instance_groups SET launched = launched + 1 WHERE id = $1 RETURNING launched")
            .bind(group)
            .fetch_one(&self.pool)
            .await
    }

    async fn mark_schedules(&self, group: &str, until: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE instance_groups SET schedule_mark_ms = $1 WHERE id = $2")
            .bind(until)
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delay_launches(&self, group: &str, until: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE instance_groups SET launch_retry_ms = $1 WHERE id = $2")
            .bind(until)
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_windows() {
        // 2026-12-01 08:00:00 UTC
        let eight = 1_796_112_000_000;
        assert!(fires_between("0 8 * * *", eight - 60_000, eight));
        assert!(!fires_between("0 8 * * *", eight, eight + 59 * 60_000));
        assert!(fires_between("*/5 * * * *", eight + 1, eight + 5 * 60_000));
        assert!(!fires_between("not cron", 0, eight));
    }
}
