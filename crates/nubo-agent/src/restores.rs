//! Disks written from a backup: an instance's root disk before its VM
//! boots (a restore, in place or onto another host) and a volume before
//! it is used. The repository is opened with the access the control
//! plane sent; the disk is restored into a sparse raw file beside the
//! target, converted to a standalone qcow2 (no backing image), and
//! renamed over the target; then `<target>.restored` records the
//! restore's `seq`, so each restore is applied once and a crash at any
//! point leaves the old disk or the restored one, never half of one.

use nubo_api::backup::DesiredRestore;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a disk could not be restored; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot open backup repository {repo}: {error}; check that this host reaches it (`nubo backup repository show`)")]
    Open { repo: String, error: String },
    #[error("cannot read disk {disk} of backup {backup}: {error}")]
    Read { backup: String, disk: String, error: String },
    #[error("cannot convert the restored disk {path} to qcow2: {error}; check that qemu-img is installed and the disk has room")]
    Convert { path: PathBuf, error: String },
    #[error("cannot {what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `<target>.restored`: the last restore applied to the disk at `target`.
pub fn marker(target: &Path) -> PathBuf {
    with_suffix(target, ".restored")
}

/// The restore last applied to the disk at `target` (0: none).
pub fn restored_seq(target: &Path) -> i64 {
    std::fs::read_to_string(marker(target)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Whether `r` is still to be written onto `target`.
pub fn pending(target: &Path, r: &DesiredRestore) -> bool {
    r.seq > restored_seq(target)
}

/// Records that restore `seq` is in the disk at `target` (written by
/// rename, so a crash leaves the old count or the new one).
pub fn mark_applied(target: &Path, seq: i64) -> Result<(), RestoreError> {
    if restored_seq(target) >= seq {
        return Ok(());
    }
    let m = marker(target);
    let m_tmp = with_suffix(&m, ".tmp");
    std::fs::write(&m_tmp, seq.to_string()).map_err(io("write", &m_tmp))?;
    std::fs::rename(&m_tmp, &m).map_err(io("rename", &m_tmp))
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |error| RestoreError::Io { what, path: path.to_path_buf(), error }
}

/// How a restore reports the percentage done (each 10 %).
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// Writes disk `r.disk` of backup `r.backup_id` onto `target` unless this
/// restore was applied already; `progress` hears the percentage done.
/// True when it wrote the disk.
///
/// The copy runs on a thread of its own (with its own small runtime): it
/// is long, mostly blocking file work, and the repository's future is not
/// `Send` for every lifetime, which the agent's spawned tasks need.
pub async fn restore(r: &DesiredRestore, target: &Path, progress: Progress) -> Result<bool, RestoreError> {
    if !pending(target, r) {
        return Ok(false);
    }
    let (r, target) = (r.clone(), target.to_path_buf());
    let worker = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| RestoreError::Io {
            what: "start a runtime for",
            path: target.clone(),
            error: e,
        })?;
        rt.block_on(restore_now(&r, &target, &*progress))
    });
    match worker.await {
        Ok(result) => result,
        Err(e) => Err(RestoreError::Read { backup: String::new(), disk: String::new(), error: e.to_string() }),
    }
}

async fn restore_now(
    r: &DesiredRestore,
    target: &Path,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<bool, RestoreError> {
    if !pending(target, r) {
        return Ok(false);
    }
    let repo_id = r.repository.id.to_string();
    let open_error = |e: nubo_backup::BackupError| RestoreError::Open { repo: repo_id.clone(), error: e.to_string() };
    let key = nubo_backup::RepoKey::from_hex(&r.repository.key_hex).map_err(open_error)?;
    let repo = nubo_backup::Repository::open(&r.repository.location, &key).await.map_err(open_error)?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let raw = with_suffix(target, ".raw");
    let tmp = with_suffix(target, ".tmp");
    for p in [&raw, &tmp] {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", p)(e)),
            _ => {}
        }
    }
    let last = AtomicU64::new(0);
    let report = |done: u64, total: u64| {
        let pct = (done.saturating_mul(100)).checked_div(total).unwrap_or(0).min(100);
        // Each 10 %: a progress line per chunk would flood the events.
        if pct / 10 > last.load(Ordering::Relaxed) / 10 {
            last.store(pct, Ordering::Relaxed);
            progress(pct);
        }
    };
    let backup = r.backup_id.to_string();
    let read = repo.restore_disk(&backup, &r.disk, &raw, &report).await;
    if let Err(e) = read {
        let _ = std::fs::remove_file(&raw);
        return Err(RestoreError::Read { backup, disk: r.disk.clone(), error: e.to_string() });
    }
    let out = tokio::process::Command::new("qemu-img")
        .arg("convert")
        .arg("-q")
        .args(["-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&tmp)
        .output()
        .await;
    let _ = std::fs::remove_file(&raw);
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(RestoreError::Convert {
                path: tmp,
                error: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            });
        }
        Err(e) => return Err(RestoreError::Convert { path: tmp, error: e.to_string() }),
    }
    std::fs::rename(&tmp, target).map_err(io("rename", &tmp))?;
    mark_applied(target, r.seq)?;
    tracing::info!(backup = %r.backup_id, disk = %r.disk, seq = r.seq, target = %target.display(), "disk restored from a backup");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(seq: i64, repo: &Path) -> DesiredRestore {
        DesiredRestore {
            seq,
            backup_id: "bak-0123456789abcdef".parse().unwrap_or_else(|_| nubo_api::ids::BackupId::generate()),
            disk: "root".into(),
            repository: nubo_api::backup::RepositoryAccess {
                id: nubo_api::ids::BackupRepositoryId::generate(),
                location: nubo_api::backup::RepositoryLocation::Dir { path: repo.display().to_string() },
                key_hex: "00".repeat(32),
            },
        }
    }

    fn run(cmd: &str, args: &[&str]) -> String {
        let o = std::process::Command::new(cmd).args(args).output().unwrap();
        assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// A qcow2 disk with data at 0, 3 MiB and past 9 MiB, backed up into a
    /// directory repository as a backup job stores it, restored through
    /// [`restore`] over an older disk: the same content, as a standalone
    /// qcow2, marked applied; asked again, it is not redone.
    #[tokio::test]
    async fn a_disk_backed_up_to_a_directory_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.qcow2");
        let s = src.to_str().unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", s, "12M"]);
        for (pattern, at) in [("0x11", "0"), ("0x22", "3M"), ("0x33", "9437184")] {
            run("qemu-io", &["-f", "qcow2", "-c", &format!("write -P {pattern} {at} 700k"), s]);
        }
        let map = run("qemu-img", &["map", "--output=json", "-f", "qcow2", s]);
        let extents: Vec<nubo_backup::Extent> = serde_json::from_str(&map).unwrap();
        let repo_dir = dir.path().join("repo");
        let key = nubo_backup::RepoKey::generate();
        let location = nubo_api::backup::RepositoryLocation::Dir { path: repo_dir.display().to_string() };
        let repo = nubo_backup::Repository::open(&location, &key).await.unwrap();
        let backup = nubo_api::ids::BackupId::generate();
        let source = nubo_backup::CopySource { file: src.clone(), size: 12 << 20, extents, incremental: false };
        repo.write_disk(backup.as_str(), "root", &source, None, &|_, _| {}).await.unwrap();
        let manifest = nubo_backup::Manifest {
            backup_id: backup.to_string(),
            instance_id: "i-0123456789abcdef".into(),
            taken_at_ms: 1,
            disks: vec![nubo_backup::ManifestDisk { name: "root".into(), size: 12 << 20 }],
            meta: serde_json::Value::Null,
        };
        repo.put_manifest(&manifest).await.unwrap();

        let target = dir.path().join("instance").join("disk.qcow2");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", target.to_str().unwrap(), "12M"]);
        let r = DesiredRestore {
            seq: 1,
            backup_id: backup.clone(),
            disk: "root".into(),
            repository: nubo_api::backup::RepositoryAccess {
                id: nubo_api::ids::BackupRepositoryId::generate(),
                location,
                key_hex: key.to_hex(),
            },
        };
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        assert!(restore(&r, &target, {
            let seen = seen.clone();
            std::sync::Arc::new(move |pct| seen.lock().unwrap().push(pct))
        })
        .await
        .unwrap());
        let t = target.to_str().unwrap();
        run("qemu-img", &["compare", "-q", "-f", "qcow2", "-F", "qcow2", s, t]);
        let info: serde_json::Value =
            serde_json::from_str(&run("qemu-img", &["info", "--output=json", "-f", "qcow2", t])).unwrap();
        assert!(info.get("backing-filename").is_none(), "{info}");
        assert_eq!(restored_seq(&target), 1);
        assert!(!with_suffix(&target, ".raw").exists() && !with_suffix(&target, ".tmp").exists());
        assert_eq!(seen.lock().unwrap().last(), Some(&100), "{:?}", seen.lock().unwrap());
        // Applied once: a second pass leaves the disk alone.
        run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x44 0 4k", t]);
        assert!(!restore(&r, &target, std::sync::Arc::new(|_| {})).await.unwrap());
        let o = std::process::Command::new("qemu-img")
            .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2", s, t])
            .status()
            .unwrap();
        assert!(!o.success(), "the guest's later write was kept");
    }

    #[tokio::test]
    async fn a_restore_applied_once_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("disk.qcow2");
        std::fs::write(&target, b"old").unwrap();
        std::fs::write(marker(&target), "3").unwrap();
        // Under a regular file: a repository that can never be opened.
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let repo = dir.path().join("file").join("repo");
        assert_eq!(restored_seq(&target), 3);
        // Seq 3 was applied: nothing is opened, the disk stays.
        assert!(!restore(&desired(3, &repo), &target, std::sync::Arc::new(|_| {})).await.unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        // A newer one is tried; a repository that cannot be opened leaves
        // the old disk and no marker change, with an error naming it.
        assert!(pending(&target, &desired(4, &repo)));
        let e = restore(&desired(4, &repo), &target, std::sync::Arc::new(|_| {})).await.unwrap_err();
        assert!(e.to_string().contains("cannot open backup repository"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(restored_seq(&target), 3);
    }
}
