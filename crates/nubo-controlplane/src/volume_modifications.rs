//! Volume modifications and snapshot descriptions in SQL (migration
//! 0023): the records EC2 keeps of each grown volume (ModifyVolume,
//! DescribeVolumesModifications) and the free-text description a
//! snapshot was taken with. `app::volumes` decides when a modification
//! moves on; this module only reads and writes the rows.

use crate::store::{now_ms, Store};
use sqlx::FromRow;
use std::collections::HashMap;

nubo_api::state_enum! {
    /// How far a volume modification got, as EC2 names it.
    pub enum ModificationState("volume modification") {
        /// The host has not grown the volume's file yet.
        Modifying = "modifying",
        /// The file is grown; the attached guest does not see it yet.
        Optimizing = "optimizing",
        /// Done: the volume (and its guest) has the new size.
        Completed = "completed",
        /// The host could not grow it; `status_message` says why.
        Failed = "failed",
    }
}

impl ModificationState {
    /// Whether it is still under way (a new modification must wait).
    pub fn is_open(self) -> bool {
        matches!(self, ModificationState::Modifying | ModificationState::Optimizing)
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct VolumeModificationRow {
    pub volume_id: String,
    pub project_id: String,
    pub state: ModificationState,
    pub original_size_gib: i64,
    pub target_size_gib: i64,
    pub status_message: Option<String>,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

impl Store {
    /// Records a modification just asked for (`modifying`); returns it.
    pub async fn insert_volume_modification(
        &self,
        volume_id: &str,
        project_id: &str,
        original_size_gib: i64,
        target_size_gib: i64,
    ) -> Result<VolumeModificationRow, sqlx::Error> {
        // Two modifications of one volume within a millisecond would share
        // the key: the later one starts a millisecond on.
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(started_at_ms) FROM volume_modifications WHERE volume_id = $1")
                .bind(volume_id)
                .fetch_one(&self.pool)
                .await?;
        let started = now_ms().max(latest.map_or(0, |l| l + 1));
        sqlx::query(
            "INSERT INTO volume_modifications (volume_id, project_id, state, original_size_gib, target_size_gib,
               started_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(volume_id)
        .bind(project_id)
        .bind(ModificationState::Modifying)
        .bind(original_size_gib)
        .bind(target_size_gib)
        .bind(started)
        .execute(&self.pool)
        .await?;
        Ok(VolumeModificationRow {
            volume_id: volume_id.to_string(),
            project_id: project_id.to_string(),
            state: ModificationState::Modifying,
            original_size_gib,
            target_size_gib,
            status_message: None,
            started_at_ms: started,
            ended_at_ms: None,
        })
    }

    /// Each volume's latest modification, of one project or (for `None`) all.
    pub async fn latest_volume_modifications(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<VolumeModificationRow>, sqlx::Error> {
        let rows: Vec<VolumeModificationRow> = sqlx::query_as(
            "SELECT * FROM volume_modifications WHERE ($1 IS NULL OR project_id = $1)
             ORDER BY started_at_ms, volume_id",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        let mut latest: HashMap<String, VolumeModificationRow> = HashMap::new();
        for r in rows {
            latest.insert(r.volume_id.clone(), r);
        }
        let mut out: Vec<VolumeModificationRow> = latest.into_values().collect();
        out.sort_by(|a, b| (a.started_at_ms, &a.volume_id).cmp(&(b.started_at_ms, &b.volume_id)));
        Ok(out)
    }

    /// The latest modification of one volume.
    pub async fn latest_volume_modification(
        &self,
        volume_id: &str,
    ) -> Result<Option<VolumeModificationRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM volume_modifications WHERE volume_id = $1 ORDER BY started_at_ms DESC LIMIT 1")
            .bind(volume_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Moves a modification on from `from` (false if another request
    /// moved it meanwhile); a final state records its end time.
    pub async fn move_volume_modification(
        &self,
        m: &VolumeModificationRow,
        to: ModificationState,
        message: Option<&str>,
    ) -> Result<bool, sqlx::Error> {
        let ended = (!to.is_open()).then(now_ms);
        let r = sqlx::query(
            "UPDATE volume_modifications SET state = $1, status_message = COALESCE($2, status_message),
               ended_at_ms = COALESCE($3, ended_at_ms)
             WHERE volume_id = $4 AND started_at_ms = $5 AND state = $6",
        )
        .bind(to)
        .bind(message)
        .bind(ended)
        .bind(&m.volume_id)
        .bind(m.started_at_ms)
        .bind(m.state)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Sets a snapshot's description.
    pub async fn set_snapshot_description(&self, id: &str, description: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE snapshots SET description = $1 WHERE id = $2")
            .bind(description)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The descriptions of the snapshots (not deleted) of one project or
    /// (for `None`) all, by id; snapshots without one are left out.
    pub async fn snapshot_descriptions(&self, project: Option<&str>) -> Result<HashMap<String, String>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, description FROM snapshots
             WHERE state <> 'deleted' AND description <> '' AND ($1 IS NULL OR project_id = $1)",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }
}
