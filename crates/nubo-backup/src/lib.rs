//! Backup repositories: an encrypted, deduplicating store of fixed-size
//! chunks on a directory, an SFTP server or an S3 bucket (see
//! docs/backups.md for the design and why it is written here).
//!
//! THIS FILE IS THE CONTRACT between the crate and its users (the agent,
//! which writes and restores disks, and the control plane, which opens
//! repositories, lists, deletes and prunes). The signatures below are
//! settled; the bodies are being written.
//!
//! Layout of a repository (every object but `config` encrypted):
//! - `config`: format version, chunk size, and a key check (a known text
//!   sealed with the key), so a wrong key is a clear error;
//! - `chunks/<2 hex>/<64 hex>`: one chunk, named by HMAC-SHA256 of its
//!   plain content under the repository's id key (equal content, equal
//!   name: deduplication across disks, instances and backups, without the
//!   name revealing the content);
//! - `backups/<backup id>/manifest`: the backup (its disks and the
//!   control plane's metadata);
//! - `backups/<backup id>/<disk>.index`: one chunk name (or "zero") per
//!   chunk of the disk.

use std::path::{Path, PathBuf};

use nubo_api::backup::RepositoryLocation;
use serde::{Deserialize, Serialize};

/// The size of a chunk, and the granularity of the dirty bitmaps that
/// decide which chunks an incremental backup reads.
pub const CHUNK_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Todo(String),
}

/// A repository's 32-byte encryption key.
#[derive(Clone)]
pub struct RepoKey(pub [u8; 32]);

impl RepoKey {
    pub fn generate() -> Self {
        RepoKey(rand::random())
    }
    pub fn from_hex(s: &str) -> Result<Self, BackupError> {
        let v = hex::decode(s).map_err(|e| BackupError::Todo(e.to_string()))?;
        Ok(RepoKey(v.try_into().map_err(|_| BackupError::Todo("key must be 32 bytes".into()))?))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// One extent of a point-in-time copy, as `qemu-img map --output=json`
/// describes a qcow2 file: `present` false means the copy did not write
/// it (unchanged, in an incremental copy); `data` true means its bytes are
/// at `offset` in the file; present and not data means zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub start: u64,
    pub length: u64,
    #[serde(default = "yes")]
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    #[serde(default)]
    pub offset: Option<u64>,
}

fn yes() -> bool {
    true
}

/// A point-in-time copy of a disk to read: a qcow2 file (not compressed,
/// no backing file) and its allocation map.
#[derive(Debug, Clone)]
pub struct CopySource {
    pub file: PathBuf,
    /// The disk's virtual size.
    pub size: u64,
    pub extents: Vec<Extent>,
    /// True: extents not present are unchanged since the parent index.
    /// False: a full copy (absent extents are zeros).
    pub incremental: bool,
}

/// A disk's chunks in order: a chunk's name, or `None` for all zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIndex {
    pub size: u64,
    pub chunks: Vec<Option<[u8; 32]>>,
}

/// What writing one disk cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub bytes_stored: u64,
    pub chunks: u64,
    pub chunks_new: u64,
}

/// One disk of a backup in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDisk {
    pub name: String,
    pub size: u64,
}

/// A backup as the repository keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub backup_id: String,
    pub instance_id: String,
    /// Milliseconds since the epoch of the point in time it holds.
    pub taken_at_ms: i64,
    pub disks: Vec<ManifestDisk>,
    /// The control plane's metadata (BackupJob::meta).
    pub meta: serde_json::Value,
}

/// What a prune did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneStats {
    pub chunks_deleted: u64,
    pub bytes_freed: u64,
    pub chunks_kept: u64,
    pub bytes_kept: u64,
}

/// Progress callback: bytes done so far, of the total.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// An open repository.
pub struct Repository {
    _private: (),
}

impl Repository {
    /// Open the repository at `location`, creating its `config` on first
    /// use. A repository made with another key is refused.
    pub async fn open(_location: &RepositoryLocation, _key: &RepoKey) -> Result<Repository, BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    /// Store one disk of backup `backup_id` as `disk` from a point-in-time
    /// copy: every chunk `source` holds is read, hashed, and sent unless
    /// the repository has it; a chunk the copy does not hold (incremental)
    /// is taken from `parent`. Writes the disk's index; returns it and
    /// what it cost.
    pub async fn write_disk(
        &self,
        _backup_id: &str,
        _disk: &str,
        _source: &CopySource,
        _parent: Option<&DiskIndex>,
        _progress: Progress<'_>,
    ) -> Result<(DiskIndex, WriteStats), BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    /// Write the manifest: last, so a backup without one is incomplete.
    pub async fn put_manifest(&self, _manifest: &Manifest) -> Result<(), BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    pub async fn manifest(&self, _backup_id: &str) -> Result<Manifest, BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    pub async fn disk_index(&self, _backup_id: &str, _disk: &str) -> Result<DiskIndex, BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    /// The backups that have a manifest.
    pub async fn backups(&self) -> Result<Vec<String>, BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    /// Write disk `disk` of `backup_id` into a new sparse raw file at
    /// `target` (zero chunks are holes). Returns the bytes written.
    pub async fn restore_disk(
        &self,
        _backup_id: &str,
        _disk: &str,
        _target: &Path,
        _progress: Progress<'_>,
    ) -> Result<u64, BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    /// Delete a backup's manifest and indexes (its chunks go at the next prune).
    pub async fn delete_backup(&self, _backup_id: &str) -> Result<(), BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }

    /// Delete every chunk no remaining index names. The caller makes sure
    /// no backup is being written to the repository meanwhile.
    pub async fn prune(&self) -> Result<PruneStats, BackupError> {
        Err(BackupError::Todo("not written yet".into()))
    }
}
