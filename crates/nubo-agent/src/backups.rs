//! Backups this host takes (see docs/backups.md): the agent asks the
//! control plane for a backup job every few seconds and takes it. For
//! each disk of the instance it starts, in one instant (the guest's file
//! systems frozen through its guest agent when it answers), a copy that
//! begins a persistent dirty bitmap `nubo-<backup id>`; the copy holds the
//! whole disk, or only what changed since the parent backup when the
//! disk still has the parent's bitmap (else a full copy, which says why).
//! A stopped instance's disks are opened by a short-lived
//! qemu-storage-daemon instead, so their bitmaps work the same way. The
//! copies (in `DATA_DIR/backup-work/<backup id>/`, always removed) are
//! mapped and written to the repository, then the manifest; only then is
//! the parent's bitmap removed (the new one tracks changes since this
//! backup). On failure the new bitmap goes and the old one stays, as it
//! still holds every change since the parent.
//!
//! One backup at a time per host: copies and uploads compete for the same
//! disks and network, and jobs wait in the control plane meanwhile.

use crate::host::Host;
use crate::instances::Instances;
use nubo_api::backup::{BackupDisk, BackupJob, BackupJobDisk, BackupJobReport};
use nubo_api::ids::{BackupId, InstanceId};
use nubo_backup::{CopySource, DiskIndex, Extent, Manifest, ManifestDisk, RepoKey, Repository, CHUNK_SIZE};
use nubo_client::ClientError;
use nubo_hypervisor::{BackupJob as CopyJob, DirtyBitmap, MapExtent, OfflineDisk, StorageDaemon, TrackedCopy, VmDir};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How often an idle host asks for a backup job.
const POLL: Duration = Duration::from_secs(2);
/// How long to wait after the control plane could not be reached.
const RETRY: Duration = Duration::from_secs(5);
/// How long to wait when the control plane does not know backup jobs.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(60);
/// Progress goes to the control plane at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long one disk's copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Instances whose stopped disks a storage daemon holds (or is about to):
/// starting one waits (see [`wait_for_disks`]), as QEMU could not lock
/// the disks meanwhile and the start would fail.
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Marks an instance's disks as held by a backup until dropped.
struct Held(String);

impl Held {
    fn new(id: &InstanceId) -> Self {
        HELD.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string());
        Held(id.to_string())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.0);
    }
}

/// Waits while a backup's storage daemon holds the instance's disks (the
/// copies only: the daemon lets go before the upload).
pub(crate) async fn wait_for_disks(id: &InstanceId) {
    let held = || HELD.lock().unwrap_or_else(|p| p.into_inner()).contains(id.as_str());
    if held() {
        tracing::info!("waiting for a backup to let go of the instance's disks");
        while held() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The dirty bitmap that counts changes since backup `id`.
pub(crate) fn bitmap_name(id: &str) -> String {
    format!("nubo-{id}")
}

/// Where a backup's temporary copies go.
fn work_root(host: &Host) -> PathBuf {
    host.config.data_dir.join("backup-work")
}

/// Asks for backup jobs and takes them, one at a time, until the process ends.
pub(crate) async fn run(host: Arc<Host>, instances: Arc<Instances>) {
    clean_work(&work_root(&host)).await;
    loop {
        match host.client.claim_backup_job(&host.id).await {
            Ok(Some(job)) => {
                let span = tracing::info_span!("backup", backup = %job.backup_id, instance = %job.instance_id);
                take(&host, &instances, job).instrument(span).await;
            }
            Ok(None) => tokio::time::sleep(POLL).await,
            Err(ClientError::Api { status: 404 | 405, .. }) => {
                tracing::debug!("the control plane does not hand out backup jobs; asking again later");
                tokio::time::sleep(UNSUPPORTED_RETRY).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask for backup jobs; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Copies left by an agent that stopped mid-backup: their storage daemons
/// (if one outlived it) are stopped, the files removed.
async fn clean_work(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        StorageDaemon::stop_left_behind(&e.path().join("qsd")).await;
    }
    if let Err(e) = std::fs::remove_dir_all(root) {
        tracing::warn!(error = %e, dir = %root.display(), "cannot remove the backup work directory");
    }
}

/// Sends the end of a job, retrying while the control plane cannot be
/// reached (it refusing means the job is no longer this host's).
async fn report_end(host: &Host, backup: &BackupId, r: &BackupJobReport) {
    loop {
        match host.client.report_backup_job(&host.id, backup, r).await {
            Ok(()) => return,
            Err(e @ ClientError::Api { .. }) => {
                tracing::warn!(error = %e, "the control plane refused the backup's outcome");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot report the backup's outcome; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Bytes done and to do, shared by the copy (which counts) and the task
/// that reports them.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

/// Reports `progress` every [`PROGRESS_EVERY`] while it changes.
async fn report_progress(host: Arc<Host>, backup: BackupId, progress: Arc<Progress>) {
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let now = (progress.done.load(Ordering::Relaxed), progress.total.load(Ordering::Relaxed));
        if now == last || now.1 == 0 {
            continue;
        }
        last = now;
        let r = BackupJobReport { bytes_done: now.0.min(now.1), bytes_total: Some(now.1), ..Default::default() };
        if let Err(e) = host.client.report_backup_job(&host.id, &backup, &r).await {
            tracing::debug!(error = %e, "cannot report backup progress");
        }
    }
}

async fn take(host: &Arc<Host>, instances: &Arc<Instances>, job: BackupJob) {
    let started = Instant::now();
    tracing::info!(parent = ?job.parent, disks = job.disks.len(), "backup started");
    let progress = Arc::new(Progress::default());
    let reporter =
        tokio::spawn(report_progress(host.clone(), job.backup_id.clone(), progress.clone()).in_current_span());
    let work = work_root(host).join(job.backup_id.as_str());
    let outcome = back_up(host, instances, &job, &work, &progress).await;
    reporter.abort();
    if let Err(e) = std::fs::remove_dir_all(&work) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, dir = %work.display(), "cannot remove the backup's temporary copies");
        }
    }
    let report = match outcome {
        Ok((disks, consistency)) => {
            let read: u64 = disks.iter().map(|d| d.bytes_read).sum();
            tracing::info!(after = ?started.elapsed(), %consistency, bytes_read = read, "backup completed");
            BackupJobReport {
                bytes_done: progress.total.load(Ordering::Relaxed),
                bytes_total: Some(progress.total.load(Ordering::Relaxed)),
                completed: Some(disks),
                consistency: Some(consistency),
                error: None,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, after = ?started.elapsed(), "backup failed");
            BackupJobReport { error: Some(e), ..Default::default() }
        }
    };
    report_end(host, &job.backup_id, &report).await;
}

/// One disk of the job as this host has it.
struct Disk {
    job: BackupJobDisk,
    /// Its qcow2 file (for a stopped instance's storage daemon).
    file: PathBuf,
    /// Where its copy goes.
    copy: PathBuf,
    /// The parent's bitmap and index, when the copy takes only changes.
    since: Option<(String, DiskIndex)>,
    full_reason: Option<String>,
}

/// Why disk `node` cannot be copied from the parent's bitmap, or `None`
/// when it can.
fn full_reason(parent: Option<&str>, bitmaps: &[DirtyBitmap]) -> Option<String> {
    let Some(parent) = parent else { return Some("first backup".into()) };
    let want = bitmap_name(parent);
    let Some(b) = bitmaps.iter().find(|b| b.name == want) else {
        return Some(format!(
            "no dirty bitmap for parent {parent} (the VM was restarted uncleanly or migrated, or its disk was replaced)"
        ));
    };
    if b.inconsistent {
        Some(format!("the dirty bitmap for parent {parent} is inconsistent (QEMU did not close the disk cleanly)"))
    } else if b.busy {
        Some(format!("the dirty bitmap for parent {parent} is in use by another job"))
    } else if !b.recording {
        Some(format!("the dirty bitmap for parent {parent} is disabled"))
    } else if b.granularity != CHUNK_SIZE {
        Some(format!("the dirty bitmap for parent {parent} has granularity {}, not {CHUNK_SIZE}", b.granularity))
    } else {
        None
    }
}

/// A copy's extents as the repository takes them.
fn extents(map: Vec<MapExtent>) -> Vec<Extent> {
    map.into_iter()
        .map(|e| Extent {
            start: e.start,
            length: e.length,
            present: e.present,
            zero: e.zero,
            data: e.data,
            offset: e.offset,
        })
        .collect()
}

/// A storage daemon on a stopped instance's disks, and the mark that
/// keeps the instance from starting meanwhile.
struct Offline {
    daemon: StorageDaemon,
    _held: Held,
}

/// Where the disks are served over QMP: the running VM, or a storage
/// daemon opened on their files (kept so it can be stopped).
async fn open_disks(
    host: &Host,
    id: &InstanceId,
    instance: &VmDir,
    work: &Path,
    disks: &[Disk],
) -> Result<(VmDir, Option<Offline>), String> {
    // Marked before looking, so a start cannot slip in between.
    let held = Held::new(id);
    if host.hypervisor.status(instance).await.is_running() {
        return Ok((instance.clone(), None));
    }
    let offline: Vec<OfflineDisk> =
        disks.iter().map(|d| OfflineDisk { node: d.job.name.clone(), path: d.file.clone() }).collect();
    let daemon = host.hypervisor.open_disks_offline(&work.join("qsd"), &offline).await.map_err(|e| e.to_string())?;
    Ok((daemon.dir().clone(), Some(Offline { daemon, _held: held })))
}

async fn close_disks(offline: Option<Offline>) {
    if let Some(o) = offline {
        if let Err(e) = o.daemon.stop().await {
            tracing::warn!(error = %e, "the storage daemon did not stop cleanly");
        }
    }
}

/// Removes bitmap `name` from every disk, wherever the disks are now
/// (the instance may have started or stopped meanwhile). Best effort: a
/// bitmap left behind only costs the next backup of that disk nothing
/// but a little write tracking.
async fn remove_bitmaps(host: &Host, id: &InstanceId, instance: &VmDir, work: &Path, disks: &[Disk], name: &str) {
    let (monitor, daemon) = match open_disks(host, id, instance, work, disks).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, bitmap = name, "cannot open the disks to remove a dirty bitmap");
            return;
        }
    };
    for d in disks {
        if let Err(e) = host.hypervisor.remove_dirty_bitmap(&monitor, &d.job.name, name).await {
            tracing::warn!(error = %e, disk = %d.job.name, bitmap = name, "cannot remove a dirty bitmap");
        }
    }
    close_disks(daemon).await;
}

/// Takes the backup: returns its disks and consistency, or why it failed.
async fn back_up(
    host: &Arc<Host>,
    instances: &Arc<Instances>,
    job: &BackupJob,
    work: &Path,
    progress: &Arc<Progress>,
) -> Result<(Vec<BackupDisk>, String), String> {
    let instance = host.dir(&job.instance_id);
    if !instance.disk().is_file() {
        return Err(format!(
            "instance {} has no disk on host {}; it may have moved to another host: take the backup again",
            job.instance_id, host.id
        ));
    }
    if job.disks.is_empty() {
        return Err("the backup job names no disks; take the backup again".into());
    }
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let key = RepoKey::from_hex(&job.repository.key_hex)
        .map_err(|e| format!("the repository's key cannot be used: {e}; check the repository in the control plane"))?;
    let repo = Repository::open(&job.repository.location, &key)
        .await
        .map_err(|e| format!("cannot open backup repository {}: {e}", job.repository.id))?;

    let mut disks = Vec::new();
    for d in &job.disks {
        let file = match &d.volume_id {
            None if d.name == "root" => instance.disk(),
            Some(v) if d.name == v.as_str() => host.config.volumes_root().join(format!("{v}.qcow2")),
            _ => return Err(format!("disk {:?} of the backup job is neither root nor a volume id", d.name)),
        };
        if !file.is_file() {
            return Err(format!("disk {} has no file on this host ({})", d.name, file.display()));
        }
        let copy = work.join(format!("{}.qcow2", d.name));
        disks.push(Disk { job: d.clone(), file, copy, since: None, full_reason: None });
    }

    let new_bitmap = bitmap_name(job.backup_id.as_str());
    let (monitor, daemon) = open_disks(host, &job.instance_id, &instance, work, &disks).await?;
    let running = daemon.is_none();
    let copied = copy_disks(host, instances, job, &repo, &monitor, running, &new_bitmap, &mut disks).await;
    // The daemon holds the disks' locks: let go before the (long) upload.
    close_disks(daemon).await;
    let outcome = match copied {
        Ok((taken_at_ms, consistency)) => {
            store(host, job, &repo, taken_at_ms, &disks, progress).await.map(|stored| (stored, consistency))
        }
        Err(e) => Err(e),
    };
    match &outcome {
        Ok(_) => {
            if let Some(parent) = &job.parent {
                remove_bitmaps(host, &job.instance_id, &instance, work, &disks, &bitmap_name(parent.as_str())).await;
            }
        }
        Err(_) => remove_bitmaps(host, &job.instance_id, &instance, work, &disks, &new_bitmap).await,
    }
    outcome
}

/// Decides each disk's copy, starts them all in one instant (frozen when
/// running) and waits for them. Returns when they started and the
/// consistency.
#[allow(clippy::too_many_arguments)]
async fn copy_disks(
    host: &Arc<Host>,
    instances: &Arc<Instances>,
    job: &BackupJob,
    repo: &Repository,
    monitor: &VmDir,
    running: bool,
    new_bitmap: &str,
    disks: &mut [Disk],
) -> Result<(i64, String), String> {
    let hv = &host.hypervisor;
    let parent = job.parent.as_ref().map(|p| p.as_str().to_string());
    for d in disks.iter_mut() {
        let bitmaps = hv.dirty_bitmaps(monitor, &d.job.name).await.map_err(|e| e.to_string())?;
        // Left by an earlier attempt at this very backup.
        if bitmaps.iter().any(|b| b.name == new_bitmap) {
            hv.remove_dirty_bitmap(monitor, &d.job.name, new_bitmap).await.map_err(|e| e.to_string())?;
        }
        let mut reason = full_reason(parent.as_deref(), &bitmaps);
        if let (None, Some(p)) = (&reason, &parent) {
            match repo.disk_index(p, &d.job.name).await {
                Ok(index) => d.since = Some((bitmap_name(p), index)),
                Err(e) => reason = Some(format!("the index of disk {} in parent {p} cannot be read: {e}", d.job.name)),
            }
        }
        if let Some(r) = &reason {
            tracing::info!(disk = %d.job.name, reason = %r, "full copy");
        }
        d.full_reason = reason;
    }

    let copies: Vec<TrackedCopy> = disks
        .iter()
        .map(|d| TrackedCopy {
            node: d.job.name.clone(),
            target: d.copy.clone(),
            new_bitmap: new_bitmap.to_string(),
            granularity: CHUNK_SIZE,
            since: d.since.as_ref().map(|s| s.0.clone()),
        })
        .collect();
    let start_all = async {
        let mut started: Vec<CopyJob> = Vec::new();
        for c in &copies {
            match hv.backup_start_tracked(monitor, c).await {
                Ok(j) => started.push(j),
                Err(e) => return (started, Err(format!("cannot start copying disk {}: {e}", c.node))),
            }
        }
        (started, Ok(()))
    };
    let taken_at_ms = now_ms();
    let ((started, result), frozen) = if running {
        crate::storage::while_frozen(instances, &job.instance_id, start_all).await
    } else {
        (start_all.await, false)
    };
    // Every started copy is waited for, even after a failure, so none is
    // left writing into the work directory.
    let mut failed = result.err();
    for j in &started {
        if let Err(e) = hv.backup_finish(monitor, j, COPY_TIMEOUT).await {
            failed.get_or_insert_with(|| format!("copying {} failed: {e}", j.target.display()));
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let consistency = match (running, frozen) {
        (false, _) => "offline",
        (true, true) => "filesystem",
        (true, false) => "crash",
    };
    Ok((taken_at_ms, consistency.to_string()))
}

/// Writes every copied disk to the repository, then the manifest.
async fn store(
    host: &Host,
    job: &BackupJob,
    repo: &Repository,
    taken_at_ms: i64,
    disks: &[Disk],
    progress: &Arc<Progress>,
) -> Result<Vec<BackupDisk>, String> {
    let hv = &host.hypervisor;
    // Map every copy first, so the total is known from the start.
    let mut sources = Vec::new();
    for d in disks {
        let map = hv.allocation_map(&d.copy).await.map_err(|e| e.to_string())?;
        let size = hv.volume_size(&d.copy).await.map_err(|e| e.to_string())?;
        let source = CopySource { file: d.copy.clone(), size, extents: extents(map), incremental: d.since.is_some() };
        sources.push(source);
    }
    let total: u64 =
        sources.iter().flat_map(|s| s.extents.iter()).filter(|e| e.present && e.data).map(|e| e.length).sum();
    progress.total.store(total.max(1), Ordering::Relaxed);

    let mut out = Vec::new();
    let mut before = 0u64;
    for (d, source) in disks.iter().zip(&sources) {
        let counter = progress.clone();
        let base = before;
        let on_progress = move |done: u64, _total: u64| {
            counter.done.store(base + done, Ordering::Relaxed);
        };
        let parent = d.since.as_ref().map(|s| &s.1);
        let (_, stats) = repo
            .write_disk(job.backup_id.as_str(), &d.job.name, source, parent, &on_progress)
            .await
            .map_err(|e| format!("cannot write disk {} to repository {}: {e}", d.job.name, job.repository.id))?;
        before += stats.bytes_read;
        progress.done.store(before, Ordering::Relaxed);
        // Free the space at once: the next disk's copy may need it.
        let _ = std::fs::remove_file(&d.copy);
        tracing::info!(
            disk = %d.job.name,
            incremental = source.incremental,
            bytes_read = stats.bytes_read,
            bytes_sent = stats.bytes_sent,
            chunks_new = stats.chunks_new,
            "disk stored"
        );
        out.push(BackupDisk {
            name: d.job.name.clone(),
            volume_id: d.job.volume_id.clone(),
            size_bytes: source.size,
            incremental: source.incremental,
            full_reason: d.full_reason.clone(),
            bytes_read: stats.bytes_read,
            bytes_sent: stats.bytes_sent,
            bytes_stored: stats.bytes_stored,
            chunks: stats.chunks,
            chunks_new: stats.chunks_new,
        });
    }
    let manifest = Manifest {
        backup_id: job.backup_id.to_string(),
        instance_id: job.instance_id.to_string(),
        taken_at_ms,
        disks: out.iter().map(|d| ManifestDisk { name: d.name.clone(), size: d.size_bytes }).collect(),
        meta: job.meta.clone(),
    };
    repo.put_manifest(&manifest)
        .await
        .map_err(|e| format!("cannot write the manifest to repository {}: {e}", job.repository.id))?;
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(name: &str) -> DirtyBitmap {
        DirtyBitmap {
            name: name.into(),
            granularity: CHUNK_SIZE,
            count: 0,
            persistent: true,
            recording: true,
            busy: false,
            inconsistent: false,
        }
    }

    #[test]
    fn full_copies_say_why() {
        assert_eq!(full_reason(None, &[]).as_deref(), Some("first backup"));
        let none = full_reason(Some("bak-1"), &[bitmap("nubo-bak-0")]).unwrap();
        assert!(none.starts_with("no dirty bitmap for parent bak-1"), "{none}");
        assert_eq!(full_reason(Some("bak-1"), &[bitmap("nubo-bak-0"), bitmap("nubo-bak-1")]), None);
        let bad = DirtyBitmap { inconsistent: true, ..bitmap("nubo-bak-1") };
        assert!(full_reason(Some("bak-1"), &[bad]).unwrap().contains("inconsistent"));
        let busy = DirtyBitmap { busy: true, ..bitmap("nubo-bak-1") };
        assert!(full_reason(Some("bak-1"), &[busy]).unwrap().contains("in use"));
        let coarse = DirtyBitmap { granularity: 65536, ..bitmap("nubo-bak-1") };
        assert!(full_reason(Some("bak-1"), &[coarse]).unwrap().contains("granularity 65536"));
    }

    #[tokio::test]
    async fn a_start_waits_while_a_backup_holds_the_disks() {
        let id = InstanceId::generate();
        let held = Held::new(&id);
        let waiting = tokio::spawn({
            let id = id.clone();
            async move { wait_for_disks(&id).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the start went ahead while the disks were held");
        // Another instance is not held up.
        tokio::time::timeout(Duration::from_secs(1), wait_for_disks(&InstanceId::generate())).await.unwrap();
        drop(held);
        tokio::time::timeout(Duration::from_secs(2), waiting).await.unwrap().unwrap();
    }

    #[test]
    fn extents_carry_over() {
        let m = vec![
            MapExtent { start: 0, length: 1 << 20, present: true, zero: false, data: true, offset: Some(1 << 16) },
            MapExtent { start: 1 << 20, length: 1 << 20, present: false, zero: true, data: false, offset: None },
        ];
        let e = extents(m);
        assert_eq!(
            e[0],
            Extent { start: 0, length: 1 << 20, present: true, zero: false, data: true, offset: Some(1 << 16) }
        );
        assert!(!e[1].present && e[1].zero);
        assert_eq!(bitmap_name("bak-7"), "nubo-bak-7");
    }
}
