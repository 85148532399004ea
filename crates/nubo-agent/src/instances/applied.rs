//! What the agent last did to an instance, kept in its directory
//! (`applied.json`), so that a restarted agent re-adopts running VMs and
//! neither restarts nor forgets them.

use nubo_hypervisor::VmDir;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) start_seq: i64,
    pub(crate) reboot_count: i64,
    /// The VM was stopped on purpose (so its absence is not a crash).
    pub(crate) stopped_on_purpose: bool,
    /// The last rebuild whose fresh root disk was made (`DesiredInstance::rebuild_seq`).
    #[serde(default)]
    pub(crate) rebuild_seq: i64,
    /// The vCPUs the running VM has (booted with, or hot-added); 0 for a
    /// VM started before this was recorded.
    #[serde(default)]
    pub(crate) vcpus: u32,
    /// A vCPU count the running VM refused (see `crate::vcpus`), not asked
    /// again until the desired count changes; 0: none.
    #[serde(default)]
    pub(crate) vcpus_refused: u32,
    /// The vCPUs the VM booted with (`vcpus` minus those hot-added since).
    #[serde(default)]
    pub(crate) booted_vcpus: u32,
}

/// The file's identity when it was read: a file replaced since (by
/// [`write_applied`], which renames a new file in) has another inode.
type Stamp = (u64, u64, std::time::SystemTime);

/// The records read, by file: every reconcile pass reads each instance's,
/// and on a host with thousands of instances opening and parsing them all
/// was the largest part of an idle pass. A `stat` tells whether the
/// cached one is still the file's.
static CACHE: LazyLock<Mutex<HashMap<PathBuf, (Stamp, Applied)>>> = LazyLock::new(Default::default);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

fn cache() -> std::sync::MutexGuard<'static, HashMap<PathBuf, (Stamp, Applied)>> {
    // Entries are replaced whole: a panic cannot leave one half-written.
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn read_applied(dir: &VmDir) -> Applied {
    let path = dir.path().join("applied.json");
    let Some(now) = stamp(&path) else {
        cache().remove(&path);
        return Applied::default();
    };
    if let Some((at, a)) = cache().get(&path) {
        if *at == now {
            return a.clone();
        }
    }
    let a: Applied = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    cache().insert(path, (now, a.clone()));
    a
}

pub(crate) fn write_applied(dir: &VmDir, a: &Applied) {
    let path = dir.path().join("applied.json");
    let tmp = dir.path().join("applied.json.tmp");
    let result = serde_json::to_vec(a)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    match result.map(|()| stamp(&path)) {
        Ok(Some(at)) => {
            cache().insert(path, (at, a.clone()));
        }
        Ok(None) => {
            cache().remove(&path);
        }
        Err(e) => {
            cache().remove(&path);
            tracing::error!(path = %path.display(), error = %e, "cannot record applied state");
        }
    }
}

/// The instance is gone from this host: its cached record goes too.
pub(crate) fn forget_applied(dir: &VmDir) {
    cache().remove(&dir.path().join("applied.json"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_replaced_file_is_read_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path().to_path_buf());
        assert_eq!(read_applied(&dir).start_seq, 0, "no file: the default");
        write_applied(&dir, &Applied { start_seq: 3, ..Default::default() });
        assert_eq!(read_applied(&dir).start_seq, 3);
        // Another writer (an agent before a restart) replaces the file.
        std::fs::write(
            tmp.path().join("applied.json.new"),
            br#"{"start_seq":7,"reboot_count":0,"stopped_on_purpose":false}"#,
        )
        .unwrap();
        std::fs::rename(tmp.path().join("applied.json.new"), tmp.path().join("applied.json")).unwrap();
        assert_eq!(read_applied(&dir).start_seq, 7);
        std::fs::remove_file(tmp.path().join("applied.json")).unwrap();
        assert_eq!(read_applied(&dir).start_seq, 0, "removed: the default again");
    }
}
