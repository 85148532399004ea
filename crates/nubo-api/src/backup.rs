//! Backups that leave the host: repositories (where backups are kept),
//! plans (what is backed up, when, and for how long), backups (one
//! instance's disks at one point in time), restores, and the protocol
//! between the control plane and the agent that takes or restores them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::ids::{BackupId, BackupPlanId, BackupRepositoryId, InstanceId, ProjectId, VolumeId};

/// Where a repository keeps its objects. The secret of each kind (the
/// SFTP private key, the S3 secret key) is sealed by the control plane
/// and never shown again; views carry [`RepositoryLocationView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RepositoryLocation {
    /// A directory every host that backs up or restores sees at the same
    /// path: an NFS mount, or a disk of a backup server.
    Dir { path: String },
    /// A directory on an SSH server, over SFTP.
    Sftp {
        host: String,
        #[serde(default = "default_ssh_port")]
        port: u16,
        user: String,
        /// The directory on the server (created if missing).
        path: String,
        /// The client's OpenSSH private key (unencrypted PEM).
        private_key: String,
        /// The server's public host key, as in `known_hosts` without the
        /// host name (`ssh-ed25519 AAAA...`): the connection is refused
        /// when the server shows another.
        host_key: String,
    },
    /// A bucket of any S3-compatible store.
    S3 {
        /// `https://s3.eu-west-1.amazonaws.com`, or the store's URL.
        endpoint: String,
        #[serde(default = "default_region")]
        region: String,
        bucket: String,
        /// Key prefix inside the bucket ("" for the whole bucket).
        #[serde(default)]
        prefix: String,
        access_key_id: String,
        secret_access_key: String,
    },
}

fn default_ssh_port() -> u16 {
    22
}

fn default_region() -> String {
    "us-east-1".to_string()
}

impl RepositoryLocation {
    /// `dir`, `sftp` or `s3`.
    pub fn kind(&self) -> &'static str {
        match self {
            RepositoryLocation::Dir { .. } => "dir",
            RepositoryLocation::Sftp { .. } => "sftp",
            RepositoryLocation::S3 { .. } => "s3",
        }
    }

    /// The location as users may see it: every secret left out.
    pub fn view(&self) -> RepositoryLocationView {
        match self {
            RepositoryLocation::Dir { path } => {
                RepositoryLocationView { kind: "dir".into(), url: format!("file://{path}") }
            }
            RepositoryLocation::Sftp { host, port, user, path, .. } => {
                RepositoryLocationView { kind: "sftp".into(), url: format!("sftp://{user}@{host}:{port}{path}") }
            }
            RepositoryLocation::S3 { endpoint, bucket, prefix, .. } => {
                RepositoryLocationView { kind: "s3".into(), url: format!("s3://{bucket}/{prefix} at {endpoint}") }
            }
        }
    }
}

/// A repository's location without its secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepositoryLocationView {
    pub kind: String,
    /// `file:///mnt/backups`, `sftp://nubo@backup:22/srv/nubo`, `s3://bucket/prefix at URL`.
    pub url: String,
}

/// What a host needs to read or write a repository: where it is and the
/// key that encrypts it (64 hex digits). Sent only to the host doing the
/// job, over its authenticated channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryAccess {
    pub id: BackupRepositoryId,
    pub location: RepositoryLocation,
    pub key_hex: String,
}

crate::state_enum! {
    /// A backup's life.
    pub enum BackupState("backup") {
        /// Waiting for its host to take it.
        Pending = "pending",
        /// Being copied.
        Running = "running",
        /// In the repository; it can be restored.
        Completed = "completed",
        /// Could not be taken; `error` says why. Nothing of it is kept.
        Failed = "failed",
    }
}

impl BackupState {
    /// The moves a backup may make.
    pub fn can_become(self, next: BackupState) -> bool {
        use BackupState::*;
        matches!((self, next), (Pending, Running) | (Pending | Running, Completed | Failed) | (Running, Pending))
    }
}

crate::state_enum! {
    /// Whether a backup was proven by restoring it.
    pub enum VerifyState("backup verification") {
        /// Its plan does not ask for it (or it is not this period's latest).
        None = "none",
        /// To be restored and booted.
        Pending = "pending",
        /// Restored onto a throwaway network, booting, being checked.
        Running = "running",
        /// It booted, the guest agent answered, and its checks passed.
        Verified = "verified",
        /// It did not; `verify_detail` says why.
        Failed = "failed",
    }
}

crate::state_enum! {
    /// Which backups of a plan are verified.
    pub enum VerifyMode("verification mode") {
        None = "none",
        /// Every backup.
        Each = "each",
        /// The newest backup of each instance per day.
        Daily = "daily",
    }
}

/// Which backups a plan keeps; a backup is kept when any rule keeps it
/// (as Proxmox's and restic's `keep-*`). The newest is always kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// The newest N.
    #[serde(default)]
    pub last: u32,
    /// The newest of each of the last N days (UTC) that have a backup.
    #[serde(default)]
    pub daily: u32,
    /// The newest of each of the last N ISO weeks that have a backup.
    #[serde(default)]
    pub weekly: u32,
    /// The newest of each of the last N months that have a backup.
    #[serde(default)]
    pub monthly: u32,
}

/// Which instances a plan backs up: any instance of the project matching
/// one of the lists (an instance's attached volumes come with it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSelector {
    /// Instance ids.
    #[serde(default)]
    pub instances: Vec<InstanceId>,
    /// Instances having all these tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Instance groups, by name or id.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `POST /api/v1/backup-repositories` (administrators).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepositoryCreate {
    pub name: String,
    pub location: RepositoryLocation,
}

/// `POST /api/v1/backup-plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCreate {
    pub name: String,
    /// Repository name or id.
    pub repository: String,
    pub selector: PlanSelector,
    /// Cron, five fields, UTC (`0 3 * * *`; `*/5 * * * *`).
    pub schedule: String,
    pub retention: Retention,
    #[serde(default = "verify_none")]
    pub verify: VerifyMode,
}

fn verify_none() -> VerifyMode {
    VerifyMode::None
}

/// `POST /api/v1/instances/{id}/backups`: back it up now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupRun {
    /// Repository name or id; default: the only one, or the plan's.
    #[serde(default)]
    pub repository: Option<String>,
    /// Count it as a backup of this plan (its retention then applies).
    #[serde(default)]
    pub plan: Option<String>,
}

/// `POST /api/v1/backups/{id}/restore`: a new instance from a backup,
/// with all its disks and its size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreInstance {
    /// The new instance's name (default: the original's with `-restored`).
    #[serde(default)]
    pub name: Option<String>,
    /// Put it on the original's private networks (default: the host's
    /// user-mode network only, so it does not clash with the original).
    #[serde(default)]
    pub with_networks: bool,
    /// Pin it to a host (administrators), e.g. for a test.
    #[serde(default)]
    pub host: Option<String>,
}

/// `POST /api/v1/backups/{id}/restore-volume`: a new volume from one
/// disk of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreVolume {
    /// `root`, or the id of a volume the backup holds.
    pub disk: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /api/v1/instances/{id}/restore`: write a stopped instance's
/// disks back from one of its backups (before its next start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreInPlace {
    /// The backup (`bak-...`), one of this instance's.
    pub backup: BackupId,
}

/// One instance of a dead host, after `nubo host evacuate --from-backups`:
/// where it now runs and how old its data is, or why it was left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EvacuatedInstance {
    pub instance_id: InstanceId,
    pub name: String,
    /// The host it was re-placed on (none: left behind).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub host_name: Option<String>,
    /// The backup its disks are restored from.
    #[serde(default)]
    pub backup_id: Option<BackupId>,
    /// The backup's point in time (UTC), and how long before the
    /// evacuation it was: the data written since is lost.
    #[serde(default)]
    pub data_as_of: Option<String>,
    #[serde(default)]
    pub data_age: Option<String>,
    /// Why it was left behind (no completed backup, no host has room, ...).
    #[serde(default)]
    pub left_behind: Option<String>,
}

/// A backup repository as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupRepository {
    pub id: BackupRepositoryId,
    pub name: String,
    pub location: RepositoryLocationView,
    pub created_at: String,
    /// When unreferenced chunks were last deleted, and how many bytes that freed.
    #[serde(default)]
    pub last_prune_at: Option<String>,
    #[serde(default)]
    pub last_prune_bytes_freed: Option<u64>,
    /// True while a prune runs (no backup into it starts meanwhile).
    #[serde(default)]
    pub pruning: bool,
}

/// A backup plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupPlan {
    pub id: BackupPlanId,
    pub project_id: ProjectId,
    pub name: String,
    pub repository_id: BackupRepositoryId,
    pub selector: PlanSelector,
    pub schedule: String,
    pub retention: Retention,
    pub verify: VerifyMode,
    pub next_run_at: Option<String>,
    pub last_run_at: Option<String>,
    pub created_at: String,
}

/// One disk of a backup, with what copying it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupDisk {
    /// `root`, or the volume's id.
    pub name: String,
    #[serde(default)]
    pub volume_id: Option<VolumeId>,
    /// Virtual size in bytes.
    pub size_bytes: u64,
    /// True when only what changed since `parent` was read.
    pub incremental: bool,
    /// Why a full copy was made (first backup, bitmap lost, ...).
    #[serde(default)]
    pub full_reason: Option<String>,
    /// Bytes read from the disk (changed chunks only, when incremental).
    pub bytes_read: u64,
    /// Bytes sent to the repository (new chunks, compressed and encrypted).
    pub bytes_sent: u64,
    /// Bytes this disk added to the repository.
    pub bytes_stored: u64,
    /// Chunks in the disk's index, and how many were new to the repository.
    pub chunks: u64,
    pub chunks_new: u64,
}

/// A backup as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Backup {
    pub id: BackupId,
    pub project_id: ProjectId,
    pub instance_id: InstanceId,
    pub instance_name: String,
    pub plan_id: Option<BackupPlanId>,
    pub repository_id: BackupRepositoryId,
    /// The backup it counts changes from.
    pub parent_id: Option<BackupId>,
    pub state: BackupState,
    /// `filesystem` (frozen through the guest agent) or `crash`.
    pub consistency: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_stored: u64,
    pub disks: Vec<BackupDisk>,
    pub error: Option<String>,
    pub verify: VerifyState,
    /// Why verification failed (with the console's last lines), or what passed.
    pub verify_detail: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

// ---- the agent's side ----

/// One disk to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupJobDisk {
    /// `root`, or the volume's id (the disk's block node name in QEMU).
    pub name: String,
    #[serde(default)]
    pub volume_id: Option<VolumeId>,
}

/// `POST /api/v1/agent/hosts/{id}/backup-jobs`: the next backup this host
/// should take (claimed for it), or 204.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupJob {
    pub backup_id: BackupId,
    pub instance_id: InstanceId,
    pub repository: RepositoryAccess,
    pub disks: Vec<BackupJobDisk>,
    /// The newest completed backup of this instance in this repository:
    /// changes are counted from it when the disk's dirty bitmap is its.
    #[serde(default)]
    pub parent: Option<BackupId>,
    /// What the control plane keeps in the manifest beside the disks
    /// (the instance's size, image, volumes, networks, tags), so that a
    /// repository restores even without the control plane's database.
    #[serde(default)]
    pub meta: serde_json::Value,
}

/// `POST /api/v1/agent/hosts/{id}/backup-jobs/{backup}`: progress, or the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupJobReport {
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    /// Set once, at the end: the disks as stored.
    #[serde(default)]
    pub completed: Option<Vec<BackupDisk>>,
    #[serde(default)]
    pub consistency: Option<String>,
    /// Set once, at the end: why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A disk to be written from a backup before the VM boots (an instance's
/// root disk) or the volume is used. Applied once per `seq`, as rebuilds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredRestore {
    pub seq: i64,
    pub backup_id: BackupId,
    /// `root`, or a volume id of the backup.
    pub disk: String,
    pub repository: RepositoryAccess,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_hide_their_secrets() {
        let l: RepositoryLocation = serde_json::from_value(serde_json::json!({
            "kind": "s3", "endpoint": "http://127.0.0.1:9000", "bucket": "b",
            "access_key_id": "AK", "secret_access_key": "SECRET"
        }))
        .unwrap();
        assert_eq!(l.kind(), "s3");
        let v = serde_json::to_string(&l.view()).unwrap();
        assert!(!v.contains("SECRET"), "{v}");
        let bad =
            serde_json::from_value::<RepositoryLocation>(serde_json::json!({"kind": "dir", "path": "/x", "extra": 1}));
        assert!(bad.is_err());
    }

    #[test]
    fn backup_moves() {
        assert!(BackupState::Pending.can_become(BackupState::Running));
        assert!(BackupState::Running.can_become(BackupState::Completed));
        assert!(!BackupState::Completed.can_become(BackupState::Running));
        assert!(!BackupState::Failed.can_become(BackupState::Completed));
    }
}
