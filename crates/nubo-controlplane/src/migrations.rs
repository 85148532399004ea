//! Live migrations in SQL: one row per move of a running instance from
//! its host to another. The steps (driven by the saga in
//! `sagas::migration`), each a transaction that is safe to repeat:
//!
//! 1. `start`: claim the target's capacity, row in `preparing`. The target
//!    host now lists the instance with role `target` and starts an empty
//!    copy that waits for disks and state.
//! 2. `ready` (the target): row in `migrating` with the target's NBD and
//!    migration addresses; the source host is told them.
//! 3. `finish` (the source): on success the instance and its volumes move
//!    to the target and the source's capacity is freed; on failure the
//!    target's claim is freed and the target removes its copy.
//!
//! A target that never gets to step 2 (its agent died, QEMU would not
//! start) is given up on by the control plane after the prepare timeout:
//! see `failover::expire_unready_migrations`.

use crate::store::{now_ms, Size, Store};
use nubo_api::views::MigrationState;
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct MigrationRow {
    pub id: String,
    pub instance_id: String,
    pub source_host: String,
    pub target_host: String,
    pub state: MigrationState,
    pub nbd_host: Option<String>,
    pub nbd_port: Option<i64>,
    pub migrate_uri: Option<String>,
    pub downtime_ms: Option<i64>,
    pub total_ms: Option<i64>,
    pub disk_bytes: Option<i64>,
    pub ram_bytes: Option<i64>,
    pub error: Option<String>,
    pub cleaned: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl MigrationRow {
    pub fn active(&self) -> bool {
        self.state.active()
    }
}

/// Why a migration did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("instance {0} is already being migrated ({1})")]
    Busy(String, String),
    #[error("host {0} has no room for the instance any more; pick another or retry")]
    Lost(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What a finished migration reports.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: bool,
    pub error: Option<String>,
    pub downtime_ms: Option<u64>,
    pub total_ms: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub ram_bytes: Option<u64>,
}

impl Store {
    /// Claims the target's capacity (under `limits`: vCPUs, MiB, GiB) and
    /// records the migration `id` in `preparing` (its saga chose the id, so
    /// that a claim made by a try that crashed is found again by it).
    pub async fn start_migration(
        &self,
        id: &str,
        instance: &crate::store::InstanceRow,
        source: &str,
        target: &str,
        limits: Size,
    ) -> Result<MigrationRow, StartError> {
        let mut tx = self.begin().await?;
        let busy: Option<String> =
            sqlx::query_scalar("SELECT id FROM migrations WHERE instance_id = $1 AND state IN ($2, $3)")
                .bind(&instance.id)
                .bind(MigrationState::Preparing)
                .bind(MigrationState::Migrating)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(m) = busy {
            return Err(StartError::Busy(instance.id.clone(), m));
        }
        if !crate::store::claim_capacity(&mut tx, target, Size::of(instance), limits).await? {
            self.changed_hosts.mark(target);
            return Err(StartError::Lost(target.to_string()));
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO migrations (id, instance_id, source_host, target_host, state, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $6, $5, $5)",
        )
        .bind(id)
        .bind(&instance.id)
        .bind(source)
        .bind(target)
        .bind(now)
        .bind(MigrationState::Preparing)
        .execute(&mut *tx)
        .await?;
        crate::store::insert_event(&mut tx, &instance.id, now, "migration_started", &format!("{id} to {target}"))
            .await?;
        tx.commit().await?;
        self.changed_hosts.mark(target);
        Ok(self.migration(id).await?.ok_or_else(|| sqlx::Error::RowNotFound)?)
    }

    pub async fn migration(&self, id: &str) -> Result<Option<MigrationRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM migrations WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Migrations, newest first: of one instance, or all.
    pub async fn migrations(&self, instance: Option<&str>) -> Result<Vec<MigrationRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM migrations WHERE ($1 IS NULL OR instance_id = $1) ORDER BY created_at_ms DESC, id LIMIT 200",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await
    }

    /// Migrations a host takes part in now: active ones (either side), and
    /// failed ones whose target copy is not removed yet.
    pub async fn migrations_of_host(&self, host: &str) -> Result<Vec<MigrationRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM migrations WHERE (state IN ('preparing', 'migrating') AND (source_host = $1 OR target_host = $1))
               OR (state = 'failed' AND cleaned = 0 AND target_host = $1)",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await
    }

    /// Migrations still `preparing` that started before `before`.
    pub async fn preparing_since(&self, before: i64) -> Result<Vec<MigrationRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM migrations WHERE state = 'preparing' AND created_at_ms < $1 ORDER BY created_at_ms",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await
    }

    /// The target is ready; false when the migration is not preparing on it.
    pub async fn migration_ready(
        &self,
        id: &str,
        target: &str,
        t: &nubo_api::agent::MigrationTarget,
    ) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE migrations SET state = 'migrating', nbd_host = $1, nbd_port = $2, migrate_uri = $3, updated_at_ms = $4
             WHERE id = $5 AND target_host = $6 AND state IN ('preparing', 'migrating')",
        )
        .bind(&t.nbd_host)
        .bind(i64::from(t.nbd_port))
        .bind(&t.migrate_uri)
        .bind(now_ms())
        .bind(id)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends a migration (reported by `host`, either side: the target may
    /// report that it could not prepare). Returns the row when this call
    /// ended it; None when it was not active.
    pub async fn finish_migration(
        &self,
        id: &str,
        host: &str,
        o: &Outcome,
    ) -> Result<Option<MigrationRow>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let Some(m): Option<MigrationRow> = sqlx::query_as(
            "SELECT * FROM migrations WHERE id = $1 AND state IN ('preparing', 'migrating')
               AND (source_host = $2 OR target_host = $2)",
        )
        .bind(id)
        .bind(host)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        // Only the source can say it worked: it saw QEMU complete.
        let ok = o.ok && host == m.source_host;
        let to = if ok { MigrationState::Completed } else { MigrationState::Failed };
        if !m.state.can_become(to) {
            return Ok(None);
        }
        let now = now_ms();
        let Some(inst): Option<crate::store::InstanceRow> = sqlx::query_as("SELECT * FROM instances WHERE id = $1")
            .bind(&m.instance_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let freed = if ok { &m.source_host } else { &m.target_host };
        crate::store::release_capacity(&mut tx, freed, Size::of(&inst)).await?;
        if ok {
            sqlx::query("UPDATE instances SET host_id = $1, updated_at_ms = $2 WHERE id = $3")
                .bind(&m.target_host)
                .bind(now)
                .bind(&m.instance_id)
                .execute(&mut *tx)
                .await?;
            // Its volumes went with it (mirrored into the target's pool).
            let moved = sqlx::query("UPDATE volumes SET host_id = $1 WHERE instance_id = $2")
                .bind(&m.target_host)
                .bind(&m.instance_id)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() > 0 {
                let gib: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(size_gib), 0) AS BIGINT) FROM volumes WHERE instance_id = $1",
                )
                .bind(&m.instance_id)
                .fetch_one(&mut *tx)
                .await?;
                for (h, sign) in [(&m.source_host, -1i64), (&m.target_host, 1)] {
                    sqlx::query("UPDATE hosts SET used_disk_gib = used_disk_gib + $1 WHERE id = $2")
                        .bind(sign * gib)
                        .bind(h)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        sqlx::query(
            "UPDATE migrations SET state = $1, error = $2, downtime_ms = $3, total_ms = $4, disk_bytes = $5,
               ram_bytes = $6, updated_at_ms = $7 WHERE id = $8",
        )
        .bind(to)
        .bind(&o.error)
        .bind(o.downtime_ms.map(|v| v as i64))
        .bind(o.total_ms.map(|v| v as i64))
        .bind(o.disk_bytes.map(|v| v as i64))
        .bind(o.ram_bytes.map(|v| v as i64))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let detail = match (ok, &o.error) {
            (true, _) => format!(
                "{id} to {}: downtime {} ms, total {} ms",
                m.target_host,
                o.downtime_ms.unwrap_or(0),
                o.total_ms.unwrap_or(0)
            ),
            (false, e) => format!("{id}: {}", e.as_deref().unwrap_or("failed")),
        };
        let stage = if ok { "migrated" } else { "migration_failed" };
        crate::store::insert_event(&mut tx, &m.instance_id, now, stage, &detail).await?;
        tx.commit().await?;
        self.changed_hosts.mark(&m.source_host);
        self.changed_hosts.mark(&m.target_host);
        self.migration(id).await
    }

    /// The target of a failed migration removed its copy.
    pub async fn migration_cleaned(&self, instance: &str, target: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE migrations SET cleaned = 1 WHERE instance_id = $1 AND target_host = $2 AND state = 'failed'",
        )
        .bind(instance)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stops (true) or resumes (false) new placements on a host.
    pub async fn set_host_drained(&self, host: &str, drained: bool) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE hosts SET enabled = $1 WHERE id = $2")
            .bind(if drained { 0i64 } else { 1 })
            .bind(host)
            .execute(&self.pool)
            .await?;
        self.changed_hosts.mark(host);
        Ok(r.rows_affected() == 1)
    }
}
