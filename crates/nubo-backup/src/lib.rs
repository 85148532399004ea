//! Backup repositories: an encrypted, deduplicating store of fixed-size
//! chunks on a directory, an SFTP server or an S3 bucket (see
//! docs/backups.md for the design and why it is written here).
//!
//! This file is the crate's interface to its users (the agent, which
//! writes and restores disks, and the control plane, which opens
//! repositories, lists, deletes and prunes) and owns the repository's
//! layout and its `config`; the work is done in the modules below.
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
use std::sync::Arc;

use nubo_api::backup::RepositoryLocation;
use serde::{Deserialize, Serialize};

pub mod backend;
pub mod crypto;
pub mod index;
mod prune;
mod restore;
mod write;

use backend::Backend;
use crypto::Keys;

/// The size of a chunk, and the granularity of the dirty bitmaps that
/// decide which chunks an incremental backup reads.
pub const CHUNK_SIZE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store could not be reached, or refused an operation.
    #[error("the backup repository at {location} failed: {detail}; check that this host reaches it and that its credentials and permissions are right")]
    Backend { location: String, detail: String },
    /// The SFTP server showed a host key other than the registered one.
    #[error("the SFTP server {location} showed host key {shown}, not the registered {expected}; if the server's key really changed, register the repository again with its new key, else someone may be intercepting the connection")]
    HostKey { location: String, shown: String, expected: String },
    /// The repository's key check does not open with this key.
    #[error("the repository at {location} was made with another key; use the key it was registered with")]
    WrongKey { location: String },
    /// The repository was written in a format this build does not read.
    #[error("the repository at {location} has format {found}, this build reads {supported}; use a nubo release that matches the repository")]
    Format { location: String, found: String, supported: String },
    /// An object that should be there is not.
    #[error("{what} is missing from the repository at {location}; the backup is incomplete or was deleted (list the repository's backups and pick another)")]
    Missing { location: String, what: String },
    /// An object is there but does not open or decode.
    #[error("{what} in the repository at {location} is damaged or was altered ({detail}); restore from another backup, and check the storage")]
    Corrupt { location: String, what: String, detail: String },
    /// A local file (the copy being backed up, or the restore target).
    #[error("cannot {what} {path}: {source}; check the file and the free space of its file system")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A caller's argument is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// A repository's 32-byte encryption key.
#[derive(Clone)]
pub struct RepoKey(pub [u8; 32]);

impl RepoKey {
    pub fn generate() -> Self {
        RepoKey(rand::random())
    }
    pub fn from_hex(s: &str) -> Result<Self, BackupError> {
        let bad = |why: String| {
            BackupError::Invalid(format!(
                "the repository key is not valid ({why}); it is 64 hex digits, as the control plane generated it"
            ))
        };
        let v = hex::decode(s.trim()).map_err(|e| bad(e.to_string()))?;
        Ok(RepoKey(v.try_into().map_err(|v: Vec<u8>| bad(format!("{} bytes, not 32", v.len())))?))
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
    /// Bytes read from the copy (the chunks it holds, or all of a full copy's data).
    pub bytes_read: u64,
    /// Bytes sent to the repository: the new chunks and the index, compressed and sealed.
    pub bytes_sent: u64,
    /// Bytes the repository grew by. Every object is sent whole and
    /// stored as sent, so this equals `bytes_sent` today; it is kept apart
    /// for a store that packs or compresses on its side.
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
    backend: Arc<dyn Backend>,
    keys: Arc<Keys>,
}

/// The `config` object: the only one in the clear, so that `open` can
/// tell a wrong key from a damaged repository.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    format: String,
    version: u32,
    chunk_size: u64,
    /// [`crypto::KEY_CHECK_TEXT`] sealed with the key, hex.
    key_check: String,
}

const FORMAT: &str = "nubo-backup";
const VERSION: u32 = 1;
const CONFIG_KEY: &str = "config";
/// Manifests and indexes are bounded when opened, as chunks are.
const MAX_META: usize = 256 << 20;

/// How many chunks are read, sealed and sent (or fetched and written) at
/// once: at least two per core so the cores stay busy, and at least 16,
/// because much of a chunk's time is waiting on storage (a flush to disk,
/// a round trip to an SFTP or S3 server) rather than on a core. Each holds
/// about 2 MiB.
pub(crate) fn in_flight() -> usize {
    std::thread::available_parallelism().map(|n| n.get() * 2).unwrap_or(4).max(16)
}

/// The object key of a chunk.
pub(crate) fn chunk_key(name: &[u8; 32]) -> String {
    let h = hex::encode(name);
    format!("chunks/{}/{h}", &h[..2])
}

/// Backup ids and disk names become object keys: only plain names.
fn check_name(kind: &str, s: &str) -> Result<(), BackupError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(BackupError::Invalid(format!(
            "{kind} {s:?} cannot name a repository object; use letters, digits, '-', '_' and '.' (at most 128, not starting with '.')"
        )))
    }
}

fn index_key(backup_id: &str, disk: &str) -> String {
    format!("backups/{backup_id}/{disk}.index")
}

fn manifest_key(backup_id: &str) -> String {
    format!("backups/{backup_id}/manifest")
}

impl Repository {
    /// Open the repository at `location`, creating its `config` on first
    /// use. A repository made with another key is refused.
    pub async fn open(location: &RepositoryLocation, key: &RepoKey) -> Result<Repository, BackupError> {
        let backend: Arc<dyn Backend> = match location {
            RepositoryLocation::Dir { path } => Arc::new(backend::dir::DirBackend::open(Path::new(path)).await?),
            RepositoryLocation::Sftp { host, port, user, path, private_key, host_key } => {
                Arc::new(backend::sftp::SftpBackend::open(host, *port, user, path, private_key, host_key).await?)
            }
            RepositoryLocation::S3 { endpoint, region, bucket, prefix, access_key_id, secret_access_key } => Arc::new(
                backend::s3::S3Backend::open(endpoint, region, bucket, prefix, access_key_id, secret_access_key)?,
            ),
        };
        Repository::with_backend(backend, key).await
    }

    /// Open the repository on `backend` (see [`Repository::open`]).
    pub async fn with_backend(backend: Arc<dyn Backend>, key: &RepoKey) -> Result<Repository, BackupError> {
        let keys = Arc::new(Keys::new(key));
        let repo = Repository { backend, keys };
        let location = repo.backend.describe();
        match repo.backend.get(CONFIG_KEY).await? {
            None => {
                let config = Config {
                    format: FORMAT.into(),
                    version: VERSION,
                    chunk_size: CHUNK_SIZE,
                    key_check: hex::encode(repo.keys.seal(CONFIG_KEY, crypto::KEY_CHECK_TEXT)),
                };
                let bytes = serde_json::to_vec_pretty(&config)
                    .map_err(|e| BackupError::Invalid(format!("cannot encode the repository's config: {e}")))?;
                repo.backend.put(CONFIG_KEY, bytes).await?;
            }
            Some(bytes) => {
                let config: Config = serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
                    location: location.clone(),
                    what: "the config".into(),
                    detail: e.to_string(),
                })?;
                let supported = format!("{FORMAT} version {VERSION} with {CHUNK_SIZE}-byte chunks");
                if config.format != FORMAT || config.version != VERSION || config.chunk_size != CHUNK_SIZE {
                    return Err(BackupError::Format {
                        location,
                        found: format!(
                            "{} version {} with {}-byte chunks",
                            config.format, config.version, config.chunk_size
                        ),
                        supported,
                    });
                }
                let check = hex::decode(&config.key_check).map_err(|e| BackupError::Corrupt {
                    location: location.clone(),
                    what: "the config's key check".into(),
                    detail: e.to_string(),
                })?;
                match repo.keys.open(CONFIG_KEY, &check, 1024) {
                    Ok(text) if text == crypto::KEY_CHECK_TEXT => {}
                    _ => return Err(BackupError::WrongKey { location }),
                }
            }
        }
        Ok(repo)
    }

    /// The repository's location, for messages.
    pub fn location(&self) -> String {
        self.backend.describe()
    }

    pub(crate) fn corrupt(&self, what: String, detail: impl std::fmt::Display) -> BackupError {
        BackupError::Corrupt { location: self.location(), what, detail: detail.to_string() }
    }

    pub(crate) fn missing(&self, what: String) -> BackupError {
        BackupError::Missing { location: self.location(), what }
    }

    /// Encrypt `plain` and store it at `key`.
    /// Seals `plain` and stores it at `key`; the bytes stored.
    async fn put_sealed(&self, key: &str, plain: Vec<u8>) -> Result<u64, BackupError> {
        let keys = self.keys.clone();
        let k = key.to_string();
        let sealed = tokio::task::spawn_blocking(move || keys.seal(&k, &plain))
            .await
            .map_err(|e| BackupError::Invalid(format!("sealing {key} failed: {e}")))?;
        let len = sealed.len() as u64;
        self.backend.put(key, sealed).await?;
        Ok(len)
    }

    /// The object at `key`, opened; `None` when it is missing.
    async fn get_sealed(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>, BackupError> {
        let Some(obj) = self.backend.get(key).await? else { return Ok(None) };
        let keys = self.keys.clone();
        let k = key.to_string();
        let r = tokio::task::spawn_blocking(move || keys.open(&k, &obj, max))
            .await
            .map_err(|e| BackupError::Invalid(format!("opening {key} failed: {e}")))?;
        r.map(Some).map_err(|e| self.corrupt(key.to_string(), e))
    }

    /// Fetch chunk `name` and check it is what its name says.
    pub(crate) async fn get_chunk(&self, name: [u8; 32]) -> Result<Vec<u8>, BackupError> {
        let key = chunk_key(&name);
        let Some(obj) = self.backend.get(&key).await? else {
            return Err(self.missing(format!("chunk {}", hex::encode(name))));
        };
        let keys = self.keys.clone();
        let k = key.clone();
        let r = tokio::task::spawn_blocking(move || {
            let plain = keys.open(&k, &obj, CHUNK_SIZE as usize).map_err(|e| e.to_string())?;
            if keys.chunk_name(&plain) != name {
                return Err("its content does not match its name".to_string());
            }
            Ok(plain)
        })
        .await
        .map_err(|e| BackupError::Invalid(format!("opening {key} failed: {e}")))?;
        r.map_err(|e| self.corrupt(key, e))
    }

    /// Store one disk of backup `backup_id` as `disk` from a point-in-time
    /// copy: every chunk `source` holds is read, hashed, and sent unless
    /// the repository has it; a chunk the copy does not hold (incremental)
    /// is taken from `parent`. Writes the disk's index; returns it and
    /// what it cost.
    pub async fn write_disk(
        &self,
        backup_id: &str,
        disk: &str,
        source: &CopySource,
        parent: Option<&DiskIndex>,
        progress: Progress<'_>,
    ) -> Result<(DiskIndex, WriteStats), BackupError> {
        check_name("backup id", backup_id)?;
        check_name("disk name", disk)?;
        let (index, mut stats) = write::write_disk(self, source, parent, progress).await?;
        // The index is sent and stored too: count it with the chunks.
        let index_bytes = self.put_sealed(&index_key(backup_id, disk), index::encode(&index)).await?;
        stats.bytes_sent += index_bytes;
        stats.bytes_stored += index_bytes;
        Ok((index, stats))
    }

    /// Write the manifest: last, so a backup without one is incomplete.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), BackupError> {
        check_name("backup id", &manifest.backup_id)?;
        for d in &manifest.disks {
            check_name("disk name", &d.name)?;
        }
        let bytes = serde_json::to_vec(manifest)
            .map_err(|e| BackupError::Invalid(format!("cannot encode the manifest of {}: {e}", manifest.backup_id)))?;
        self.put_sealed(&manifest_key(&manifest.backup_id), bytes).await.map(drop)
    }

    pub async fn manifest(&self, backup_id: &str) -> Result<Manifest, BackupError> {
        check_name("backup id", backup_id)?;
        let key = manifest_key(backup_id);
        let Some(bytes) = self.get_sealed(&key, MAX_META).await? else {
            return Err(self.missing(format!("backup {backup_id} (its manifest)")));
        };
        serde_json::from_slice(&bytes).map_err(|e| self.corrupt(key, e))
    }

    pub async fn disk_index(&self, backup_id: &str, disk: &str) -> Result<DiskIndex, BackupError> {
        check_name("backup id", backup_id)?;
        check_name("disk name", disk)?;
        let key = index_key(backup_id, disk);
        let Some(bytes) = self.get_sealed(&key, MAX_META).await? else {
            return Err(self.missing(format!("disk {disk} of backup {backup_id}")));
        };
        index::decode(&bytes).map_err(|e| self.corrupt(key, e))
    }

    /// The backups that have a manifest.
    pub async fn backups(&self) -> Result<Vec<String>, BackupError> {
        let mut out: Vec<String> = self
            .backend
            .list("backups/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix("backups/")?;
                let (id, file) = rest.split_once('/')?;
                (file == "manifest").then(|| id.to_string())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Write disk `disk` of `backup_id` into a new sparse raw file at
    /// `target` (zero chunks are holes). Returns the bytes written.
    pub async fn restore_disk(
        &self,
        backup_id: &str,
        disk: &str,
        target: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, BackupError> {
        let index = self.disk_index(backup_id, disk).await?;
        restore::restore(self, &index, target, progress).await
    }

    /// Delete a backup's manifest and indexes (its chunks go at the next prune).
    pub async fn delete_backup(&self, backup_id: &str) -> Result<(), BackupError> {
        check_name("backup id", backup_id)?;
        // The manifest first: a delete cut short leaves an unfinished
        // backup, which the next prune removes, never a manifest naming
        // indexes that are gone.
        self.backend.delete(&manifest_key(backup_id)).await?;
        for (key, _) in self.backend.list(&format!("backups/{backup_id}/")).await? {
            self.backend.delete(&key).await?;
        }
        Ok(())
    }

    /// Delete every chunk no remaining index names. The caller makes sure
    /// no backup is being written to the repository meanwhile.
    pub async fn prune(&self) -> Result<PruneStats, BackupError> {
        prune::prune(self).await
    }
}

/// The agent and the control plane run these on spawned tasks, so their
/// futures must be Send; this fails to compile when one is not.
#[cfg(test)]
fn _futures_are_send(repo: &'static Repository, source: &'static CopySource, target: &'static Path) {
    fn send<T: Send>(_: T) {}
    send(Repository::open(&RepositoryLocation::Dir { path: String::new() }, &RepoKey([0; 32])));
    send(repo.write_disk("b", "d", source, None, &|_, _| {}));
    send(repo.restore_disk("b", "d", target, &|_, _| {}));
    send(repo.put_manifest(&Manifest {
        backup_id: String::new(),
        instance_id: String::new(),
        taken_at_ms: 0,
        disks: vec![],
        meta: serde_json::Value::Null,
    }));
    send(repo.prune());
    send(repo.delete_backup("b"));
    send(repo.backups());
}
