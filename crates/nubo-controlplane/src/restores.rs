//! The rows of restores from backups (migration 0035, `disk_restores`):
//! which disk (an instance's root disk, a volume) a host must write from
//! which backup, once per `seq`; the `backups` rows a restore reads
//! (migration 0033) and a repository's access (its location with its
//! secret, and its key, unsealed with the server key). The `backups`
//! queries here are the few a restore needs, kept apart from the backup
//! jobs' own.

use crate::store::{now_ms, Store, Tx};
use nubo_api::backup::{BackupDisk, RepositoryAccess, RepositoryLocation};
use sqlx::FromRow;

/// One backup, as much of it as a restore reads.
#[derive(Debug, Clone, FromRow)]
pub struct BackupRow {
    pub id: String,
    pub project_id: String,
    pub instance_id: String,
    pub instance_name: String,
    pub repository_id: String,
    pub host_id: Option<String>,
    pub state: String,
    pub instance_json: String,
    pub disks_json: String,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl BackupRow {
    /// The disks it holds (`root` and volumes), as its host reported them.
    pub fn disks(&self) -> Vec<BackupDisk> {
        serde_json::from_str(&self.disks_json).unwrap_or_default()
    }

    /// What the instance was (its view, volumes, networks, tags).
    pub fn instance(&self) -> serde_json::Value {
        serde_json::from_str(&self.instance_json).unwrap_or(serde_json::Value::Null)
    }
}

/// A disk to be written from a backup.
#[derive(Debug, Clone, FromRow)]
pub struct DiskRestoreRow {
    pub target_id: String,
    pub target_kind: String,
    pub backup_id: String,
    pub disk: String,
    pub repository_id: String,
    pub seq: i64,
    pub data_as_of_ms: i64,
    pub created_at_ms: i64,
}

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

/// Records (or bumps) the restore of one disk, in `tx`.
pub(crate) async fn upsert(
    tx: &mut Tx<'_>,
    target: &str,
    kind: &str,
    backup: &str,
    disk: &str,
    repository: &str,
    data_as_of_ms: i64,
) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM disk_restores WHERE target_id = $1")
        .bind(target)
        .fetch_optional(&mut **tx)
        .await?;
    let next = seq.unwrap_or(0) + 1;
    sqlx::query("DELETE FROM disk_restores WHERE target_id = $1").bind(target).execute(&mut **tx).await?;
    sqlx::query(
        "INSERT INTO disk_restores (target_id, target_kind, backup_id, disk, repository_id, seq, data_as_of_ms, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(target)
    .bind(kind)
    .bind(backup)
    .bind(disk)
    .bind(repository)
    .bind(next)
    .bind(data_as_of_ms)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(next)
}

/// The launch's part: the new instance's root disk comes from the backup.
pub(crate) async fn record_at_launch(tx: &mut Tx<'_>, instance: &str, r: &LaunchRestore) -> Result<(), sqlx::Error> {
    upsert(tx, instance, "instance", &r.backup_id, "root", &r.repository_id, r.data_as_of_ms).await?;
    crate::store::insert_event(
        tx,
        instance,
        now_ms(),
        "restore",
        &format!("restored from {}, data as of {}", r.backup_id, crate::restores::time_text(r.data_as_of_ms)),
    )
    .await
}

/// `ms` since the epoch as `2026-12-07 14:03:00 UTC`.
pub fn time_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
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

/// Why a repository's access could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("backup repository {0} does not exist")]
    Missing(String),
    #[error("backup repository {0}: {1}")]
    Broken(String, String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Store {
    pub async fn backup_for_restore(&self, id: &str) -> Result<Option<BackupRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, project_id, instance_id, instance_name, repository_id, host_id, state, instance_json,
               disks_json, created_at_ms, finished_at_ms
             FROM backups WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// The newest completed backup of `instance` (any repository).
    pub async fn newest_completed_backup(&self, instance: &str) -> Result<Option<BackupRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, project_id, instance_id, instance_name, repository_id, host_id, state, instance_json,
               disks_json, created_at_ms, finished_at_ms
             FROM backups WHERE instance_id = $1 AND state = 'completed'
             ORDER BY created_at_ms DESC, id DESC LIMIT 1",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
        .await
    }

    /// The restores of the instances and volumes on `host`.
    pub async fn disk_restores_on_host(&self, host: &str) -> Result<Vec<DiskRestoreRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM disk_restores
             WHERE (target_kind = 'instance' AND target_id IN (SELECT id FROM instances WHERE host_id = $1))
                OR (target_kind = 'volume' AND target_id IN (SELECT id FROM volumes WHERE host_id = $1))",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await
    }

    /// The restore recorded for one instance or volume, if any.
    pub async fn disk_restore(&self, target: &str) -> Result<Option<DiskRestoreRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM disk_restores WHERE target_id = $1").bind(target).fetch_optional(&self.pool).await
    }

    /// Where repository `id` is and the key that opens it, its secrets
    /// unsealed with the server key.
    pub async fn repository_access(
        &self,
        sealer: &crate::secrets::Sealer,
        id: &str,
    ) -> Result<RepositoryAccess, AccessError> {
        let row: Option<(String, Option<String>, String)> =
            sqlx::query_as("SELECT location_json, sealed_secret, sealed_key FROM backup_repositories WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let (location_json, sealed_secret, sealed_key) = row.ok_or_else(|| AccessError::Missing(id.to_string()))?;
        let broken = |what: &str| AccessError::Broken(id.to_string(), what.to_string());
        let mut location: RepositoryLocation = serde_json::from_str(&location_json)
            .map_err(|e| broken(&format!("its stored location does not parse ({e}); register it again")))?;
        let unseal = |s: &str| {
            sealer
                .unseal(s)
                .map_err(|_| broken("its sealed secrets do not open with this server's key; register it again"))
        };
        if let Some(sealed) = sealed_secret.as_deref() {
            let secret = unseal(sealed)?;
            match &mut location {
                RepositoryLocation::Dir { .. } => {}
                RepositoryLocation::Sftp { private_key, .. } => *private_key = secret,
                RepositoryLocation::S3 { secret_access_key, .. } => *secret_access_key = secret,
            }
        }
        let key_hex = unseal(&sealed_key)?;
        let id = id.parse().map_err(|_| broken("its id is malformed"))?;
        Ok(RepositoryAccess { id, location, key_hex })
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
