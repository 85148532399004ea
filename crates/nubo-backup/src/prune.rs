//! Pruning: mark every chunk an index of a finished backup (one with a
//! manifest) names, then delete every other chunk. The indexes of
//! unfinished backups (no manifest: cut short, or half deleted) are
//! deleted first, so their chunks are freed too; that is why the caller
//! must not prune while a backup to the repository is being written.

use std::collections::{HashMap, HashSet};

use crate::{BackupError, PruneStats, Repository};

pub(crate) async fn prune(repo: &Repository) -> Result<PruneStats, BackupError> {
    // backup id -> its index objects (disk names), and whether it has a manifest.
    let mut backups: HashMap<String, (bool, Vec<String>)> = HashMap::new();
    for (key, _) in repo.backend.list("backups/").await? {
        let Some((id, file)) = key.strip_prefix("backups/").and_then(|r| r.split_once('/')) else { continue };
        let entry = backups.entry(id.to_string()).or_default();
        if file == "manifest" {
            entry.0 = true;
        } else if let Some(disk) = file.strip_suffix(".index") {
            entry.1.push(disk.to_string());
        }
    }
    let mut live: HashSet<[u8; 32]> = HashSet::new();
    for (id, (finished, disks)) in &backups {
        if !finished {
            for (key, _) in repo.backend.list(&format!("backups/{id}/")).await? {
                repo.backend.delete(&key).await?;
            }
            continue;
        }
        for disk in disks {
            let index = repo.disk_index(id, disk).await?;
            live.extend(index.chunks.iter().flatten());
        }
    }
    let mut stats = PruneStats::default();
    for (key, size) in repo.backend.list("chunks/").await? {
        let name = key.rsplit('/').next().and_then(|h| hex::decode(h).ok()).and_then(|v| <[u8; 32]>::try_from(v).ok());
        match name {
            Some(n) if live.contains(&n) => {
                stats.chunks_kept += 1;
                stats.bytes_kept += size;
            }
            // Not named by any finished backup (or not a chunk name at
            // all: nothing this crate wrote).
            _ => {
                repo.backend.delete(&key).await?;
                stats.chunks_deleted += 1;
                stats.bytes_freed += size;
            }
        }
    }
    Ok(stats)
}
