//! Volume and snapshot state in SQL: creation with its claims (the
//! project's volume quota and the host's storage pool, in one transaction
//! of conditional UPDATEs), attachments with their PCIe slots, extends,
//! snapshots, deletion, and how agents' reports move each of them along.
//!
//! A volume lives on one host's pool, like its instance's root disk; the
//! pool is the host's `disk_gib`, shared by root disks, volumes and
//! snapshots, all counted at their full (virtual) size so that a thin
//! file can never outgrow the disk beneath it.

use crate::store::{now_ms, Store};
use nubo_api::agent::{ActualAttachment, ActualSnapshot, ActualSnapshotState, ActualVolume, ActualVolumeState};
use nubo_api::views::{AttachState, SnapshotState, VolumeState};
use sqlx::FromRow;

nubo_api::state_enum! {
    /// Whether a volume's or snapshot's file is wanted on its host (the
    /// `desired` column); the host deletes an unwanted one.
    pub enum Presence("presence") {
        Present = "present",
        Deleted = "deleted",
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct VolumeRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub host_id: String,
    pub size_gib: i64,
    pub actual_size_gib: i64,
    pub desired: Presence,
    pub state: VolumeState,
    pub snapshot_id: Option<String>,
    pub instance_id: Option<String>,
    pub attach_state: Option<AttachState>,
    pub slot: Option<i64>,
    pub guest_device: Option<String>,
    pub guest_size_bytes: Option<i64>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The device name an EC2 AttachVolume asked for (`/dev/sdf`).
    pub device_name: Option<String>,
    /// 1: deleted when its instance is terminated (EC2's
    /// DeleteOnTermination; migration 0027).
    pub delete_on_termination: i64,
    /// Bumped by each revert to `revert_snapshot_id` (migration 0029; see
    /// `app::day_two`); the host reports the count it applied.
    pub revert_seq: i64,
    pub revert_snapshot_id: Option<String>,
    /// Written from disk `restore_disk` of this backup, once per
    /// `restore_seq` (migration 0035; see `restores`).
    #[sqlx(default)]
    pub restore_backup_id: Option<String>,
    #[sqlx(default)]
    pub restore_repository_id: Option<String>,
    #[sqlx(default)]
    pub restore_disk: Option<String>,
    #[sqlx(default)]
    pub restore_seq: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub volume_id: String,
    pub host_id: String,
    pub size_gib: i64,
    pub desired: Presence,
    pub state: SnapshotState,
    pub consistency: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

/// Why a storage claim did not go through.
#[derive(Debug)]
pub enum StorageClaimError {
    /// The project's volume quota would be exceeded; the text says how far.
    Quota(String),
    /// The host's storage pool has no room; the text says how much it has.
    Pool(String),
    /// The row was not in a state that allows this (someone else changed it).
    State,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for StorageClaimError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// What [`Store::attach_volume`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Attaching, on this slot.
    Attached(u32),
    /// The volume is not available (any more).
    NotAvailable,
    /// Every slot of the instance is taken.
    NoFreeSlot,
}

/// A new volume, already placed on `host_id`.
pub struct NewVolume<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub name: &'a str,
    pub host_id: &'a str,
    pub size_gib: u64,
    pub snapshot_id: Option<&'a str>,
}

use crate::store::Tx;

/// Which rows a listing covers.
enum Scope<'a> {
    /// One project's (`None`: every project's).
    Project(Option<&'a str>),
    /// One host's.
    Host(&'a str),
}

/// Takes `gib` of the project's volume quota, or says why not.
pub(crate) async fn claim_quota(tx: &mut Tx<'_>, project: &str, gib: i64) -> Result<(), StorageClaimError> {
    let r = sqlx::query(
        "UPDATE projects SET used_volume_gib = used_volume_gib + $1
         WHERE id = $2 AND used_volume_gib + $1 <= quota_volume_gib",
    )
    .bind(gib)
    .bind(project)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() == 1 {
        return Ok(());
    }
    let row: Option<(String, i64, i64)> =
        sqlx::query_as("SELECT name, used_volume_gib, quota_volume_gib FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&mut **tx)
            .await?;
    Err(StorageClaimError::Quota(match row {
        Some((name, used, quota)) => format!(
            "project {name} would go past its volume quota: {used} of {quota} GiB used, this needs {gib} GiB more; delete volumes or ask an operator to raise it (`nubo project quota {name} --volume-gib N`)"
        ),
        None => "the token's project no longer exists".into(),
    }))
}

/// Takes `gib` of `host`'s storage pool (at most `limit` in use), or says why not.
/// The condition is the scheduler's pool filter with the limit placement
/// chose the host under (`placement::Chosen::limits`), re-checked as one
/// conditional write.
pub(crate) async fn claim_pool(tx: &mut Tx<'_>, host: &str, gib: i64, limit: i64) -> Result<(), StorageClaimError> {
    let r =
        sqlx::query("UPDATE hosts SET used_disk_gib = used_disk_gib + $1 WHERE id = $2 AND used_disk_gib + $1 <= $3")
            .bind(gib)
            .bind(host)
            .bind(limit)
            .execute(&mut **tx)
            .await?;
    if r.rows_affected() == 1 {
        return Ok(());
    }
    let row: Option<(String, i64)> = sqlx::query_as("SELECT name, used_disk_gib FROM hosts WHERE id = $1")
        .bind(host)
        .fetch_optional(&mut **tx)
        .await?;
    Err(StorageClaimError::Pool(match row {
        Some((name, used)) => format!(
            "host {name}'s storage pool has {} GiB free ({used} of {limit} GiB in use by disks, volumes and snapshots), and this needs {gib} GiB; choose a smaller size or free space",
            (limit - used).max(0)
        ),
        None => "the host no longer exists".into(),
    }))
}

/// Gives `gib` back to `host`'s pool and, if `project` is given, to its quota.
async fn release(tx: &mut Tx<'_>, host: &str, project: Option<&str>, gib: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET used_disk_gib = CASE WHEN used_disk_gib > $1 THEN used_disk_gib - $1 ELSE 0 END WHERE id = $2")
        .bind(gib)
        .bind(host)
        .execute(&mut **tx)
        .await?;
    if let Some(p) = project {
        sqlx::query("UPDATE projects SET used_volume_gib = CASE WHEN used_volume_gib > $1 THEN used_volume_gib - $1 ELSE 0 END WHERE id = $2")
            .bind(gib)
            .bind(p)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Claims quota and pool space and inserts the volume (`creating`).
    pub async fn create_volume(&self, v: &NewVolume<'_>, pool_limit: i64) -> Result<(), StorageClaimError> {
        let mut tx = self.begin().await?;
        claim_quota(&mut tx, v.project_id, v.size_gib as i64).await?;
        claim_pool(&mut tx, v.host_id, v.size_gib as i64, pool_limit).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO volumes (id, project_id, name, host_id, size_gib, desired, state, snapshot_id,
               created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $8, $9, $6, $7, $7)",
        )
        .bind(v.id)
        .bind(v.project_id)
        .bind(v.name)
        .bind(v.host_id)
        .bind(v.size_gib as i64)
        .bind(v.snapshot_id)
        .bind(now)
        .bind(Presence::Present)
        .bind(VolumeState::Creating)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changed_hosts.mark(v.host_id);
        Ok(())
    }

    pub async fn volume(&self, id: &str) -> Result<Option<VolumeRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM volumes WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Volumes not yet deleted, of one project or (for `None`) all.
    pub async fn volumes(&self, project: Option<&str>) -> Result<Vec<VolumeRow>, sqlx::Error> {
        self.live_rows("volumes", Scope::Project(project)).await
    }

    pub async fn volumes_on_host(&self, host: &str) -> Result<Vec<VolumeRow>, sqlx::Error> {
        self.live_rows("volumes", Scope::Host(host)).await
    }

    /// Rows of `table` (volumes or snapshots) not yet deleted, in `scope`.
    async fn live_rows<T>(&self, table: &'static str, scope: Scope<'_>) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, crate::store::DbRow> + Send + Unpin,
    {
        // `table` is one of our own names, never user input.
        match scope {
            Scope::Project(project) => {
                sqlx::query_as(&format!(
                    "SELECT * FROM {table} WHERE state <> 'deleted' AND ($1 IS NULL OR project_id = $1)
                     ORDER BY created_at_ms, id"
                ))
                .bind(project)
                .fetch_all(&self.pool)
                .await
            }
            Scope::Host(host) => {
                sqlx::query_as(&format!("SELECT * FROM {table} WHERE host_id = $1 AND state <> 'deleted' ORDER BY id"))
                    .bind(host)
                    .fetch_all(&self.pool)
                    .await
            }
        }
    }

    pub async fn volumes_of_instance(&self, instance: &str) -> Result<Vec<VolumeRow>, sqlx::Error> {
        // Volumes without a slot first, as SQLite sorts NULLs and as
        // PostgreSQL (NULLs last) would not by `slot` alone.
        sqlx::query_as("SELECT * FROM volumes WHERE instance_id = $1 ORDER BY (slot IS NOT NULL), slot, id")
            .bind(instance)
            .fetch_all(&self.pool)
            .await
    }

    /// Attaches an available volume to `instance` on the lowest free slot
    /// below `slots`.
    pub async fn attach_volume(&self, id: &str, instance: &str, slots: u32) -> Result<AttachOutcome, sqlx::Error> {
        let mut tx = self.begin().await?;
        let used: Vec<i64> = sqlx::query_scalar("SELECT slot FROM volumes WHERE instance_id = $1 AND slot IS NOT NULL")
            .bind(instance)
            .fetch_all(&mut *tx)
            .await?;
        let Some(slot) = (0..slots).find(|s| !used.contains(&i64::from(*s))) else {
            return Ok(AttachOutcome::NoFreeSlot);
        };
        let r = sqlx::query(
            "UPDATE volumes SET instance_id = $1, attach_state = $5, slot = $2, state = $6,
               guest_device = NULL, guest_size_bytes = NULL, device_name = NULL, error = NULL, updated_at_ms = $3
             WHERE id = $4 AND state = $7 AND instance_id IS NULL AND desired = $8",
        )
        .bind(instance)
        .bind(i64::from(slot))
        .bind(now_ms())
        .bind(id)
        .bind(AttachState::Attaching)
        .bind(VolumeState::InUse)
        .bind(VolumeState::Available)
        .bind(Presence::Present)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(AttachOutcome::NotAvailable);
        }
        tx.commit().await?;
        Ok(AttachOutcome::Attached(slot))
    }

    /// Starts detaching; false when the volume was not attached (or attaching).
    /// Records the device name an EC2 AttachVolume asked for.
    pub async fn set_volume_device_name(&self, id: &str, device: Option<&str>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE volumes SET device_name = $1 WHERE id = $2")
            .bind(device)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the volume goes when its instance is terminated.
    pub async fn set_volume_delete_on_termination(&self, id: &str, delete: bool) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE volumes SET delete_on_termination = $1 WHERE id = $2")
            .bind(i64::from(delete))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Starts detaching; the flag to delete with the instance goes with
    /// the attachment (as on EC2).
    pub async fn detach_volume(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE volumes SET attach_state = $3, error = NULL, delete_on_termination = 0, updated_at_ms = $1
             WHERE id = $2 AND instance_id IS NOT NULL AND attach_state IN ($4, $5)",
        )
        .bind(now_ms())
        .bind(id)
        .bind(AttachState::Detaching)
        .bind(AttachState::Attaching)
        .bind(AttachState::Attached)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Grows a volume to `size_gib`, claiming the difference from the quota
    /// and the pool.
    pub async fn extend_volume(&self, v: &VolumeRow, size_gib: u64, pool_limit: i64) -> Result<(), StorageClaimError> {
        let delta = size_gib as i64 - v.size_gib;
        let mut tx = self.begin().await?;
        claim_quota(&mut tx, &v.project_id, delta).await?;
        claim_pool(&mut tx, &v.host_id, delta, pool_limit).await?;
        let r = sqlx::query(
            "UPDATE volumes SET size_gib = $1, error = NULL, updated_at_ms = $2
             WHERE id = $3 AND size_gib = $4 AND desired = $5 AND state IN ($6, $7)",
        )
        .bind(size_gib as i64)
        .bind(now_ms())
        .bind(&v.id)
        .bind(v.size_gib)
        .bind(Presence::Present)
        .bind(VolumeState::Available)
        .bind(VolumeState::InUse)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Err(StorageClaimError::State);
        }
        tx.commit().await?;
        self.changed_hosts.mark(&v.host_id);
        Ok(())
    }

    /// Asks for the volume's file to be deleted; false unless it is
    /// available (or failed) and attached nowhere.
    pub async fn delete_volume(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE volumes SET desired = $3, state = $4, updated_at_ms = $1
             WHERE id = $2 AND instance_id IS NULL AND state IN ($5, $6)",
        )
        .bind(now_ms())
        .bind(id)
        .bind(Presence::Deleted)
        .bind(VolumeState::Deleting)
        .bind(VolumeState::Available)
        .bind(VolumeState::Error)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Applies what the host says about one of its volume files.
    pub async fn apply_volume_report(&self, host: &str, a: &ActualVolume) -> Result<bool, sqlx::Error> {
        let Some(v) =
            self.volume(a.id.as_str()).await?.filter(|v| v.host_id == host && v.state != VolumeState::Deleted)
        else {
            return Ok(false);
        };
        let mut tx = self.begin().await?;
        let now = now_ms();
        match a.state {
            ActualVolumeState::Deleted
                if v.desired == Presence::Deleted && v.state.can_become(VolumeState::Deleted) =>
            {
                // Free the claims exactly once: only the report that moves
                // the row from deleting to deleted gets here.
                let r = sqlx::query("UPDATE volumes SET state = $3, updated_at_ms = $1 WHERE id = $2 AND state <> $3")
                    .bind(now)
                    .bind(&v.id)
                    .bind(VolumeState::Deleted)
                    .execute(&mut *tx)
                    .await?;
                if r.rows_affected() == 1 {
                    release(&mut tx, host, Some(&v.project_id), v.size_gib).await?;
                }
            }
            // A report from before the host took up a revert still shows
            // the old content: the volume stays `creating` until it has.
            ActualVolumeState::Available if a.reverted_seq < v.revert_seq => {}
            ActualVolumeState::Available => {
                let state = match v.desired {
                    Presence::Deleted => VolumeState::Deleting,
                    Presence::Present => VolumeState::live(v.instance_id.is_some()),
                };
                if !v.state.can_become(state) {
                    tracing::warn!(volume = %v.id, from = %v.state, to = %state, "a volume report asked for a move that is not allowed; ignored");
                    return Ok(true);
                }
                sqlx::query(
                    "UPDATE volumes SET actual_size_gib = $1, state = $2, error = COALESCE($3, error), updated_at_ms = $4
                     WHERE id = $5",
                )
                .bind(a.size_gib as i64)
                .bind(state)
                .bind(&a.error)
                .bind(now)
                .bind(&v.id)
                .execute(&mut *tx)
                .await?;
            }
            ActualVolumeState::Error => {
                // A volume that never came to be is in error; a later
                // failure (an extend) is only recorded.
                let state = if v.state == VolumeState::Creating { VolumeState::Error } else { v.state };
                sqlx::query("UPDATE volumes SET state = $1, error = $2, updated_at_ms = $3 WHERE id = $4")
                    .bind(state)
                    .bind(&a.error)
                    .bind(now)
                    .bind(&v.id)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        tx.commit().await?;
        self.changed_hosts.mark(host);
        Ok(true)
    }

    /// Whether the attachments a host reports for an instance whose
    /// volumes are `attached` (its rows) would change any of them (see
    /// [`Store::apply_attachment_report`], which writes exactly then).
    pub fn attachment_report_is_news(attached: &[VolumeRow], reported: &[ActualAttachment]) -> bool {
        attached.iter().any(|v| {
            let seen = reported.iter().find(|a| a.volume_id.as_str() == v.id);
            match (v.attach_state, seen) {
                (Some(AttachState::Detaching), None) => true,
                (Some(current), Some(a)) if current.is_wanted() => {
                    let next = current.after_report(a.state);
                    // As the write computes it.
                    let error = match (&a.error, next) {
                        (Some(e), _) => Some(e),
                        (None, AttachState::Attached) => None,
                        (None, _) => v.error.as_ref(),
                    };
                    next != current
                        || a.guest_device != v.guest_device
                        || a.guest_size_bytes.map(|b| b as i64) != v.guest_size_bytes
                        || error != v.error.as_ref()
                }
                (Some(AttachState::Detaching), Some(a)) => a.error.is_some(),
                _ => false,
            }
        })
    }

    /// Applies the attachments a host reports for `instance`: a volume it
    /// lists moves along (attaching -> attached once the guest sees it);
    /// a volume being detached that it no longer lists is detached.
    pub async fn apply_attachment_report(
        &self,
        instance: &str,
        reported: &[ActualAttachment],
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        for v in self.volumes_of_instance(instance).await? {
            let seen = reported.iter().find(|a| a.volume_id.as_str() == v.id);
            match (v.attach_state, seen) {
                (Some(AttachState::Detaching), None) => {
                    let state = match v.desired {
                        Presence::Deleted => VolumeState::Deleting,
                        Presence::Present => VolumeState::Available,
                    };
                    sqlx::query(
                        "UPDATE volumes SET instance_id = NULL, attach_state = NULL, slot = NULL, guest_device = NULL,
                           guest_size_bytes = NULL, state = $1, error = NULL, updated_at_ms = $2
                         WHERE id = $3 AND attach_state = $4",
                    )
                    .bind(state)
                    .bind(now)
                    .bind(&v.id)
                    .bind(AttachState::Detaching)
                    .execute(&self.pool)
                    .await?;
                }
                (Some(current), Some(a)) if current.is_wanted() => {
                    let next = current.after_report(a.state);
                    // A success clears an earlier failure; no news keeps it.
                    let error = match (&a.error, next) {
                        (Some(e), _) => Some(e.clone()),
                        (None, AttachState::Attached) => None,
                        (None, _) => v.error.clone(),
                    };
                    sqlx::query(
                        "UPDATE volumes SET attach_state = $1, guest_device = $2, guest_size_bytes = $3, error = $4,
                           updated_at_ms = $5
                         WHERE id = $6 AND attach_state IN ($7, $8)",
                    )
                    .bind(next)
                    .bind(&a.guest_device)
                    .bind(a.guest_size_bytes.map(|b| b as i64))
                    .bind(&error)
                    .bind(now)
                    .bind(&v.id)
                    .bind(AttachState::Attaching)
                    .bind(AttachState::Attached)
                    .execute(&self.pool)
                    .await?;
                }
                (Some(AttachState::Detaching), Some(a)) if a.error.is_some() => {
                    sqlx::query("UPDATE volumes SET error = $1, updated_at_ms = $2 WHERE id = $3")
                        .bind(&a.error)
                        .bind(now)
                        .bind(&v.id)
                        .execute(&self.pool)
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A terminated instance lets go of its volumes: kept (as EC2's
    /// default for volumes attached later), or deleted when they were to
    /// go with it (DeleteOnTermination, as for volumes made at launch).
    pub(crate) async fn release_volumes_of(tx: &mut Tx<'_>, instance: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE volumes SET instance_id = NULL, attach_state = NULL, slot = NULL, guest_device = NULL,
               guest_size_bytes = NULL,
               desired = CASE WHEN delete_on_termination = 1 THEN $3 ELSE desired END,
               state = CASE WHEN desired = $3 OR delete_on_termination = 1 THEN $4 ELSE $5 END,
               delete_on_termination = 0, updated_at_ms = $1
             WHERE instance_id = $2",
        )
        .bind(now_ms())
        .bind(instance)
        .bind(Presence::Deleted)
        .bind(VolumeState::Deleting)
        .bind(VolumeState::Available)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    // ---- snapshots ----

    /// Claims pool space on the volume's host and inserts a pending snapshot.
    pub async fn create_snapshot(
        &self,
        id: &str,
        name: &str,
        v: &VolumeRow,
        pool_limit: i64,
    ) -> Result<(), StorageClaimError> {
        let mut tx = self.begin().await?;
        claim_pool(&mut tx, &v.host_id, v.size_gib, pool_limit).await?;
        let ok: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM volumes WHERE id = $1 AND desired = $2 AND state IN ($3, $4)")
                .bind(&v.id)
                .bind(Presence::Present)
                .bind(VolumeState::Available)
                .bind(VolumeState::InUse)
                .fetch_one(&mut *tx)
                .await?;
        if ok != 1 {
            return Err(StorageClaimError::State);
        }
        sqlx::query(
            "INSERT INTO snapshots (id, project_id, name, volume_id, host_id, size_gib, desired, state, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $8, $9, $7)",
        )
        .bind(id)
        .bind(&v.project_id)
        .bind(name)
        .bind(&v.id)
        .bind(&v.host_id)
        .bind(v.size_gib)
        .bind(now_ms())
        .bind(Presence::Present)
        .bind(SnapshotState::Pending)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changed_hosts.mark(&v.host_id);
        Ok(())
    }

    pub async fn snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM snapshots WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    pub async fn snapshots(&self, project: Option<&str>) -> Result<Vec<SnapshotRow>, sqlx::Error> {
        self.live_rows("snapshots", Scope::Project(project)).await
    }

    pub async fn snapshots_on_host(&self, host: &str) -> Result<Vec<SnapshotRow>, sqlx::Error> {
        self.live_rows("snapshots", Scope::Host(host)).await
    }

    /// Asks for a snapshot to be deleted; false unless it is completed or failed.
    pub async fn delete_snapshot(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE snapshots SET desired = $2, state = $3
             WHERE id = $1 AND state IN ($4, $5)",
        )
        .bind(id)
        .bind(Presence::Deleted)
        .bind(SnapshotState::Deleting)
        .bind(SnapshotState::Completed)
        .bind(SnapshotState::Error)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Volumes (not deleted) being created from `snapshot`.
    pub async fn volumes_from_snapshot(&self, snapshot: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT id FROM volumes WHERE snapshot_id = $1 AND state = $2")
            .bind(snapshot)
            .bind(VolumeState::Creating)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn apply_snapshot_report(&self, host: &str, a: &ActualSnapshot) -> Result<bool, sqlx::Error> {
        let Some(s) =
            self.snapshot(a.id.as_str()).await?.filter(|s| s.host_id == host && s.state != SnapshotState::Deleted)
        else {
            return Ok(false);
        };
        let mut tx = self.begin().await?;
        let now = now_ms();
        match a.state {
            ActualSnapshotState::Deleted
                if s.desired == Presence::Deleted && s.state.can_become(SnapshotState::Deleted) =>
            {
                let r = sqlx::query("UPDATE snapshots SET state = $2 WHERE id = $1 AND state <> $2")
                    .bind(&s.id)
                    .bind(SnapshotState::Deleted)
                    .execute(&mut *tx)
                    .await?;
                if r.rows_affected() == 1 {
                    release(&mut tx, host, None, s.size_gib).await?;
                }
            }
            ActualSnapshotState::Completed if s.state == SnapshotState::Pending => {
                sqlx::query(
                    "UPDATE snapshots SET state = $4, consistency = $1, error = NULL, completed_at_ms = $2
                     WHERE id = $3 AND state = $5",
                )
                .bind(&a.consistency)
                .bind(now)
                .bind(&s.id)
                .bind(SnapshotState::Completed)
                .bind(SnapshotState::Pending)
                .execute(&mut *tx)
                .await?;
            }
            ActualSnapshotState::Error if s.state == SnapshotState::Pending => {
                sqlx::query("UPDATE snapshots SET state = $3, error = $1 WHERE id = $2 AND state = $4")
                    .bind(&a.error)
                    .bind(&s.id)
                    .bind(SnapshotState::Error)
                    .bind(SnapshotState::Pending)
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        tx.commit().await?;
        self.changed_hosts.mark(host);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use nubo_api::views::VolumeState;

    #[test]
    fn states() {
        assert_eq!(VolumeState::live(true).as_str(), "in-use");
        assert_eq!(VolumeState::live(false).as_str(), "available");
        assert_eq!(super::Presence::Present.as_str(), "present");
        assert_eq!(super::Presence::Deleted.as_str(), "deleted");
    }
}
