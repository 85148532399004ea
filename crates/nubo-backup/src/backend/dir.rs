//! A repository in a directory of this host: a local disk, or an NFS (or
//! other network file system) mount every host sees at the same path.
//! Objects are files under the directory, keys their relative paths.
//! A put writes `.<name>.tmp-<random>` beside the target, flushes it to
//! stable storage and renames it into place, so a crash leaves either the
//! whole object or a temporary file that listing ignores.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::Backend;
use crate::BackupError;

pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// The backend at `root`, created when missing.
    pub async fn open(root: &Path) -> Result<DirBackend, BackupError> {
        let b = DirBackend { root: root.to_path_buf() };
        tokio::fs::create_dir_all(root).await.map_err(|e| b.err("create the directory", e))?;
        Ok(b)
    }

    fn err(&self, what: &str, e: std::io::Error) -> BackupError {
        BackupError::Backend { location: self.describe(), detail: format!("cannot {what}: {e}") }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn put_blocking(target: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        // Durable before it has its name: a manifest written later never
        // names an object a crash could lose.
        f.sync_data()?;
        std::fs::rename(&tmp, target)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn list_blocking(root: &Path, prefix: &str) -> std::io::Result<Vec<(String, u64)>> {
    // Walk only the directory the prefix names (its part up to the last
    // '/'), not the whole repository.
    let base = match prefix.rfind('/') {
        Some(i) => &prefix[..i + 1],
        None => "",
    };
    let mut out = Vec::new();
    let mut stack = vec![(root.join(base), base.to_string())];
    while let Some((dir, key)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in rd {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // temporary files of puts under way or cut short
            }
            let k = format!("{key}{name}");
            let ft = entry.file_type()?;
            if ft.is_dir() {
                let sub = format!("{k}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    stack.push((entry.path(), sub));
                }
            } else if ft.is_file() && k.starts_with(prefix) {
                out.push((k, entry.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[async_trait]
impl Backend for DirBackend {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), BackupError> {
        let target = self.path(key);
        tokio::task::spawn_blocking(move || put_blocking(&target, &data))
            .await
            .map_err(|e| BackupError::Backend { location: self.describe(), detail: e.to_string() })?
            .map_err(|e| self.err(&format!("write {key}"), e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(&format!("read {key}"), e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        tokio::fs::try_exists(self.path(key)).await.map_err(|e| self.err(&format!("look for {key}"), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let root = self.root.clone();
        let p = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &p))
            .await
            .map_err(|e| BackupError::Backend { location: self.describe(), detail: e.to_string() })?
            .map_err(|e| self.err(&format!("list {prefix}"), e))
    }

    async fn delete(&self, key: &str) -> Result<(), BackupError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(&format!("delete {key}"), e)),
        }
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
