//! The records of restores from backups (migration 0035, columns of
//! `instances` and `volumes`): which disk (an instance's root disk, a
//! volume) a host must write from which backup, once per `restore_seq`;
//! restored volumes made in one transaction with their restore; the two
//! lookups of `backups` rows (`crate::backups::BackupRow`) a restore
//! makes. A repository's access comes from `app::backups::repository_access`.

pub use crate::backups::BackupRow;
use crate::store::{now_ms, Store, Tx};

/// What a new instance restored from a backup records with its launch
/// (in the transaction that claims its host: the host never sees the
/// instance without it, so it never boots the image instead).
#[derive(Debug, Clone)]
pub struct LaunchRestore {
    pub backup_id: String,
    pub repository_id: String,
    pub data_as_of_ms: i64,
    /// Only this host (by id), chosen by an operator.
    pub pin: Option<String>,
}

/// Records (or bumps) the restore of an instance's root disk, in `tx`.
pub(crate) async fn restore_root(
    tx: &mut Tx<'_>,
    instance: &str,
    backup: &str,
    repository: &str,
    data_as_of_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE instances SET restore_backup_id = $1, restore_repository_id = $2, restore_seq = restore_seq + 1,
           restore_data_ms = $3
         WHERE id = $4",
    )
    .bind(backup)
    .bind(repository)
    .bind(data_as_of_ms)
    .bind(instance)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records (or bumps) the restore of an existing volume from disk `disk`.
pub(crate) async fn restore_volume(
    tx: &mut Tx<'_>,
    volume: &str,
    backup: &str,
    disk: &str,
    repository: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE volumes SET restore_backup_id = $1, restore_disk = $2, restore_repository_id = $3,
           restore_seq = restore_seq + 1
         WHERE id = $4",
    )
    .bind(backup)
    .bind(disk)
    .bind(repository)
    .bind(volume)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A new volume filled from a backup's disk, already placed.
pub struct NewRestoredVolume<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub name: &'a str,
    pub host_id: &'a str,
    pub size_gib: u64,
    pub backup_id: &'a str,
    pub disk: &'a str,
    pub repository_id: &'a str,
    /// Attached to this instance at this slot as it is made (its first
    /// boot has it).
    pub attach: Option<(&'a str, i64)>,
}

/// The launch's part: the new instance's root disk comes from the backup.
pub(crate) async fn record_at_launch(tx: &mut Tx<'_>, instance: &str, r: &LaunchRestore) -> Result<(), sqlx::Error> {
    restore_root(tx, instance, &r.backup_id, &r.repository_id, r.data_as_of_ms).await?;
    crate::store::insert_event(
        tx,
        instance,
        now_ms(),
        "restore",
        &format!("restored from {}, data as of {}", r.backup_id, time_text(r.data_as_of_ms)),
    )
    .await
}

/// `ms` since the epoch as `2026-12-07 14:03:00 UTC` (chrono, as
/// `backups::rfc3339` formats the same instants for views).
pub fn time_text(ms: i64) -> String {
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration in milliseconds as `3 h 12 min` / `2 d 4 h` / `40 s`.
pub fn age_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

impl Store {
    pub async fn backup_for_restore(&self, id: &str) -> Result<Option<BackupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM backups WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// The newest completed backup of `instance` (any repository).
    pub async fn newest_completed_backup(&self, instance: &str) -> Result<Option<BackupRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM backups WHERE instance_id = $1 AND state = 'completed'
             ORDER BY created_at_ms DESC, id DESC LIMIT 1",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
        .await
    }

    /// Claims quota and pool space and inserts a volume to be filled from
    /// a backup, with its restore in the same row (its host never sees it
    /// without one, so never makes it empty).
    pub async fn create_restored_volume(
        &self,
        v: &NewRestoredVolume<'_>,
        pool_limit: i64,
    ) -> Result<(), crate::volumes::StorageClaimError> {
        let mut tx = self.begin().await?;
        crate::volumes::claim_quota(&mut tx, v.project_id, v.size_gib as i64).await?;
        crate::volumes::claim_pool(&mut tx, v.host_id, v.size_gib as i64, pool_limit).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO volumes (id, project_id, name, host_id, size_gib, desired, state, created_at_ms, updated_at_ms,
               instance_id, attach_state, slot, restore_backup_id, restore_disk, restore_repository_id, restore_seq)
             VALUES ($1, $2, $3, $4, $5, 'present', 'creating', $6, $6, $7, $8, $9, $10, $11, $12, 1)",
        )
        .bind(v.id)
        .bind(v.project_id)
        .bind(v.name)
        .bind(v.host_id)
        .bind(v.size_gib as i64)
        .bind(now)
        .bind(v.attach.map(|a| a.0))
        .bind(v.attach.map(|_| "attaching"))
        .bind(v.attach.map(|a| a.1))
        .bind(v.backup_id)
        .bind(v.disk)
        .bind(v.repository_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changed_hosts.mark(v.host_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ages_read_as_people_write_them() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time_text(1_796_652_180_000), "2026-12-07 14:03:00 UTC");
        assert_eq!(age_text(40_000), "40 s");
        assert_eq!(age_text(3_600_000 * 3 + 60_000 * 12), "3 h 12 min");
        assert_eq!(age_text(86_400_000 * 2 + 3_600_000 * 4), "2 d 4 h");
    }
}
