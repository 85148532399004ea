//! Day-two operations in SQL (migration 0029): a rebuild or an instance
//! revert (a new image for the root disk and a higher `rebuild_seq`), a
//! volume revert (a higher `revert_seq` and its snapshot), each one
//! conditional UPDATE that holds only in the state the operation needs,
//! with its life event in the same transaction. Resizes are
//! `instance_attributes`' (`Store::resize_while`). Who may ask what, and
//! the refusals' words, are `app::day_two`'s.

use crate::store::{insert_event, now_ms, Store};
use nubo_api::views::VolumeState;

/// An EC2 root volume replacement task as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReplaceRootTaskRow {
    pub id: String,
    pub project_id: String,
    pub instance_id: String,
    pub image_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub started_at_ms: i64,
}

impl Store {
    /// Points a stopped or running instance (desired and actual state
    /// both `power`) at `image` and asks its host for a fresh root disk
    /// from it; a running one is also asked to start again (its host stops
    /// it, replaces the disk and boots it). False: it is no longer `power`.
    #[allow(clippy::too_many_arguments)]
    pub async fn rebuild_instance(
        &self,
        id: &str,
        power: &str,
        image_name: &str,
        image_id: &str,
        stage: &str,
        detail: &str,
    ) -> Result<bool, sqlx::Error> {
        let restart = i64::from(power == "running");
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE instances SET image = $1, image_id = $2, rebuild_seq = rebuild_seq + 1,
               start_seq = start_seq + $3, error = NULL, updated_at_ms = $4
             WHERE id = $5 AND desired = $6 AND state = $6",
        )
        .bind(image_name)
        .bind(image_id)
        .bind(restart)
        .bind(now_ms())
        .bind(id)
        .bind(power)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        insert_event(&mut tx, id, now_ms(), stage, detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Asks the volume's host to replace its content by `snapshot`'s: the
    /// volume becomes `creating` until the host reports the revert done.
    /// Holds only for a live volume that is detached or whose instance is
    /// stopped (desired and actual); false otherwise. The instance (if
    /// any) gets a life event.
    pub async fn revert_volume(&self, id: &str, snapshot: &str, instance: Option<&str>) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE volumes SET revert_seq = revert_seq + 1, revert_snapshot_id = $1, state = $2, error = NULL,
               updated_at_ms = $3
             WHERE id = $4 AND state IN ($5, $6) AND (instance_id IS NULL OR EXISTS (
               SELECT 1 FROM instances i WHERE i.id = volumes.instance_id AND i.desired = 'stopped'
                 AND i.state = 'stopped'))",
        )
        .bind(snapshot)
        .bind(VolumeState::Creating)
        .bind(now_ms())
        .bind(id)
        .bind(VolumeState::Available)
        .bind(VolumeState::InUse)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(instance) = instance {
            insert_event(&mut tx, instance, now_ms(), "volume_revert", &format!("volume {id} to snapshot {snapshot}"))
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records an EC2 root volume replacement task.
    pub async fn insert_replace_root_task(&self, t: &ReplaceRootTaskRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO replace_root_volume_tasks (id, project_id, instance_id, image_id, snapshot_id, started_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(&t.project_id)
        .bind(&t.instance_id)
        .bind(&t.image_id)
        .bind(&t.snapshot_id)
        .bind(t.started_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A project's root volume replacement tasks, oldest first.
    pub async fn replace_root_tasks(&self, project: &str) -> Result<Vec<ReplaceRootTaskRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM replace_root_volume_tasks WHERE project_id = $1 ORDER BY started_at_ms, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// The volumes of `instance` whose revert is not done yet.
    pub async fn reverting_volumes(&self, instance: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM volumes WHERE instance_id = $1 AND state = $2 AND revert_seq > 0 ORDER BY id",
        )
        .bind(instance)
        .bind(VolumeState::Creating)
        .fetch_all(&self.pool)
        .await
    }
}
