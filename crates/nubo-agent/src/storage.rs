//! The storage component: the host's volume files
//! (`DATA_DIR/volumes/<id>.qcow2`) and volume snapshots
//! (`DATA_DIR/snapshots/<id>.qcow2`) on the storage pool,
//! the volumes attached to each running VM (hot-plug, unplug, online
//! resize, each checked from inside the guest through its guest agent),
//! and instance snapshots (a point-in-time copy of the root disk, uploaded
//! to the control plane's registry).
//!
//! Like the rest of the agent it is level-triggered: every pass compares
//! the desired volumes, snapshots and attachments with what exists and
//! starts at most one task per object (and one disk task per instance, as
//! QEMU serves one monitor client at a time). What a task found is kept
//! here and reported on the following passes; nothing depends on a
//! message arriving once. After an agent restart the plugged disks are
//! read back from QEMU, so nothing is plugged twice.

use crate::host::Host;
use crate::instances::Instances;
use nubo_api::agent::{
    ActualAttachment, ActualCapture, ActualSnapshot, ActualSnapshotState, ActualVolume, ActualVolumeState,
    CaptureState, DesiredInstance, DesiredSnapshot, DesiredState, DesiredVolume,
};
use nubo_api::ids::{ImageId, InstanceId, SnapshotId, VolumeId};
use nubo_api::views::AttachState;
use nubo_hypervisor::{DataDisk, QgaClient};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::Instrument;

const GIB: u64 = 1 << 30;
/// How long the guest gets to let go of a disk being unplugged.
const DETACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a point-in-time copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Wait before trying a failed volume or disk operation again.
const RETRY: Duration = Duration::from_secs(5);
/// Wait before asking a booting guest's agent again whether it sees a disk.
const GUEST_RETRY: Duration = Duration::from_secs(1);
/// After this long without a guest agent, say why an attach does not finish.
const GUEST_SILENT: Duration = Duration::from_secs(60);

/// A data disk a running VM has, and what its guest makes of it.
#[derive(Debug, Clone, Default)]
struct Plugged {
    /// Virtual size in bytes as QEMU has it.
    size: u64,
    /// The guest's device name (`/dev/vdc`) and the size it sees.
    guest: Option<(String, u64)>,
}

/// The data disks of one running VM.
#[derive(Debug, Default)]
struct InstanceDisks {
    /// The QEMU process these facts are about; another pid means a restart.
    pid: u32,
    /// Read from QEMU (true) or unknown yet (after an agent restart).
    known: bool,
    plugged: HashMap<VolumeId, Plugged>,
    /// The last failure per volume (plug, unplug, resize).
    errors: HashMap<VolumeId, String>,
    /// When the guest agent was first found silent for this boot.
    guest_silent_since: Option<Instant>,
}

/// How an instance snapshot ended on this host.
#[derive(Debug, Clone)]
enum Capture {
    Uploaded,
    Failed(String),
}

#[derive(Default)]
struct StorageState {
    /// One task per object: `vol:<id>`, `snap:<id>`, `disk:<instance>`, `cap:<image>`.
    tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    /// Not before this instant may the task with this key start again.
    retry_at: HashMap<String, Instant>,
    /// Known volume file sizes in bytes.
    volume_sizes: HashMap<VolumeId, u64>,
    volume_errors: HashMap<VolumeId, String>,
    /// Snapshots taken (with their consistency) or failed, this run of the agent.
    snapshots: HashMap<SnapshotId, Result<String, String>>,
    disks: HashMap<InstanceId, InstanceDisks>,
    captures: HashMap<ImageId, Capture>,
}

impl StorageState {
    fn busy(&mut self, key: &str) -> bool {
        if let Some(t) = self.tasks.get(key) {
            if !t.is_finished() {
                return true;
            }
            self.tasks.remove(key);
        }
        self.retry_at.get(key).is_some_and(|t| Instant::now() < *t)
    }
}

fn vol_key(id: &VolumeId) -> String {
    format!("vol:{id}")
}

fn disk_key(id: &InstanceId) -> String {
    format!("disk:{id}")
}

/// `<path>.tmp`, for files written and then renamed into place.
fn tmp_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

/// `<path>.reverted`: the last revert applied to a volume's file (its
/// `DesiredRevert::seq`), written after the file was replaced.
fn revert_marker(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".reverted");
    PathBuf::from(s)
}

/// The revert last applied to the volume file at `path` (0: none).
fn reverted_seq(path: &Path) -> i64 {
    std::fs::read_to_string(revert_marker(path)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Lists the guest's disks as `name serial sectors` lines, for guest
/// agents without `guest-get-disks` (qemu-ga before 5.2).
const LIST_DISKS: &str = "for d in /sys/block/*; do [ -e \"$d/device\" ] || continue; \
    printf '%s %s %s\\n' \"${d##*/}\" \"$(cat \"$d/serial\" 2>/dev/null)\" \"$(cat \"$d/size\")\"; done";

/// A device name from the guest is used in a path: plain names only.
fn plain_device(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The serial → (device, size in bytes) the guest sees, through its agent.
async fn guest_disks(q: &mut QgaClient) -> Result<HashMap<String, (String, u64)>, nubo_hypervisor::QgaError> {
    let mut out = HashMap::new();
    let disks = match q.disks().await {
        Ok(d) => d,
        Err(nubo_hypervisor::QgaError::Guest { .. }) => return guest_disks_by_exec(q).await,
        Err(e) => return Err(e),
    };
    for d in disks {
        let Some(serial) = d.serial.filter(|s| !s.is_empty()) else { continue };
        let name = d.name.rsplit('/').next().unwrap_or_default().to_string();
        if d.partition || !plain_device(&name) {
            continue;
        }
        let raw = q.read_small_file(&format!("/sys/block/{name}/size"), 64).await?;
        let sectors: u64 = String::from_utf8_lossy(&raw).trim().parse().unwrap_or(0);
        out.insert(serial, (format!("/dev/{name}"), sectors * 512));
    }
    Ok(out)
}

async fn guest_disks_by_exec(q: &mut QgaClient) -> Result<HashMap<String, (String, u64)>, nubo_hypervisor::QgaError> {
    let cmd = nubo_hypervisor::GuestExec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), LIST_DISKS.into()],
        capture_output: true,
        ..Default::default()
    };
    let st = q.run(&cmd, Duration::from_secs(10)).await?;
    Ok(parse_disk_lines(&String::from_utf8_lossy(&st.stdout)))
}

fn parse_disk_lines(text: &str) -> HashMap<String, (String, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, serial, sectors] if plain_device(name) => {
                    Some((serial.to_string(), (format!("/dev/{name}"), sectors.parse::<u64>().ok()? * 512)))
                }
                _ => None,
            }
        })
        .collect()
}

/// Runs `start` (which starts point-in-time copies) with the guest's file
/// systems frozen when its guest agent answers, and thaws them at once:
/// the copy jobs keep the point in time by themselves. Returns what
/// `start` returned and whether the file systems were frozen (else the
/// copies are crash-consistent). Snapshots and backups both use it.
pub(crate) async fn while_frozen<T>(
    instances: &Instances,
    instance: &InstanceId,
    start: impl std::future::Future<Output = T>,
) -> (T, bool) {
    let mut frozen = false;
    match instances.guest_agent(instance, Duration::from_secs(3)).await {
        Ok(mut q) => {
            match q.client.fsfreeze_freeze().await {
                Ok(n) => frozen = n > 0,
                Err(e) => {
                    tracing::info!(error = %e, "cannot freeze the guest's file systems; the copy is crash-consistent")
                }
            }
            let out = start.await;
            if frozen {
                if let Err(e) = q.client.fsfreeze_thaw().await {
                    tracing::warn!(error = %e, "cannot thaw the guest's file systems (its agent thaws them after 60 s)");
                }
            }
            (out, frozen)
        }
        Err(_) => (start.await, false),
    }
}

/// The storage component: the state above, and the tasks that change files and disks.
pub(crate) struct Storage {
    host: Arc<Host>,
    /// For each instance's guest channel (what the guest sees, freezes).
    instances: Arc<Instances>,
    state: Mutex<StorageState>,
}

impl Storage {
    pub(crate) fn new(host: Arc<Host>, instances: Arc<Instances>) -> Self {
        Self { host, instances, state: Mutex::default() }
    }

    pub(crate) fn volume_path(&self, id: &VolumeId) -> PathBuf {
        self.host.config.volumes_root().join(format!("{id}.qcow2"))
    }

    fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.host.config.data_dir.join("snapshots").join(format!("{id}.qcow2"))
    }

    fn storage(&self) -> MutexGuard<'_, StorageState> {
        // Each step leaves the state whole; recover from a panicked holder.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `fut` as the task `key` unless one runs (or waits to retry).
    fn spawn_storage<F>(self: &Arc<Self>, key: String, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut s = self.storage();
        if s.busy(&key) {
            return;
        }
        let span = tracing::info_span!("storage", task = %key);
        s.tasks.insert(key, tokio::spawn(fut.instrument(span)));
    }

    fn retry_later(&self, key: &str, after: Duration) {
        self.storage().retry_at.insert(key.to_string(), Instant::now() + after);
    }

    /// The data disks to plug in when `want` starts: its volumes whose
    /// files exist and that no storage task is working on.
    pub(crate) fn cold_disks(&self, want: &DesiredInstance) -> Vec<DataDisk> {
        let mut s = self.storage();
        want.volumes
            .iter()
            .filter(|v| self.volume_path(&v.volume_id).is_file() && !s.busy(&vol_key(&v.volume_id)))
            .map(|v| DataDisk {
                id: v.volume_id.to_string(),
                path: self.volume_path(&v.volume_id),
                serial: v.serial.clone(),
                slot: v.slot,
            })
            .collect()
    }

    /// Records the disks a VM was started with (still to be seen by the guest).
    pub(crate) fn note_started(&self, id: &InstanceId, pid: u32, disks: &[DataDisk]) {
        let mut s = self.storage();
        let sizes = s.volume_sizes.clone();
        let plugged = disks
            .iter()
            .filter_map(|d| {
                let v: VolumeId = d.id.parse().ok()?;
                let size = sizes.get(&v).copied().unwrap_or(0);
                Some((v, Plugged { size, guest: None }))
            })
            .collect();
        // Sizes may be unknown here; the disk task reads them from QEMU.
        s.disks.insert(id.clone(), InstanceDisks { pid, known: false, plugged, ..Default::default() });
    }

    pub(crate) fn forget_disks(&self, id: &InstanceId) {
        self.storage().disks.remove(id);
    }

    /// Volumes plugged into some running VM (so their files are in use).
    fn volumes_in_use(&self, d: &DesiredState, running: &HashSet<InstanceId>) -> HashSet<VolumeId> {
        if d.volumes.is_empty() {
            // Nothing to look for (and no pass over every instance for it).
            return HashSet::new();
        }
        let s = self.storage();
        let mut out: HashSet<VolumeId> = s.disks.values().flat_map(|d| d.plugged.keys().cloned()).collect();
        for i in d.instances.iter().filter(|i| running.contains(&i.id)) {
            out.extend(i.volumes.iter().map(|v| v.volume_id.clone()));
        }
        out
    }

    // ---- attachments ----

    /// The attachments of `want` as they stand, starting a disk task when
    /// the running VM (pid `running`) does not match them yet.
    pub(crate) fn reconcile_attachments(
        self: &Arc<Self>,
        want: &DesiredInstance,
        running: Option<u32>,
    ) -> Vec<ActualAttachment> {
        self.attachments(want, running, true)
    }

    /// The attachments of `want` as last known, changing nothing: while a
    /// start or reboot is under way, a volume being detached must not look
    /// detached before it is.
    pub(crate) fn attachments_as_known(self: &Arc<Self>, want: &DesiredInstance) -> Vec<ActualAttachment> {
        let pid = self.storage().disks.get(&want.id).map(|d| d.pid);
        match pid {
            Some(pid) => self.attachments(want, Some(pid), false),
            None => want
                .volumes
                .iter()
                .map(|v| ActualAttachment {
                    volume_id: v.volume_id.clone(),
                    state: AttachState::Attaching,
                    guest_device: None,
                    guest_size_bytes: None,
                    error: None,
                })
                .collect(),
        }
    }

    fn attachments(
        self: &Arc<Self>,
        want: &DesiredInstance,
        running: Option<u32>,
        work: bool,
    ) -> Vec<ActualAttachment> {
        let Some(pid) = running else {
            self.forget_disks(&want.id);
            // A stopped VM has nothing plugged: wanted volumes go in at start.
            return want
                .volumes
                .iter()
                .map(|v| ActualAttachment {
                    volume_id: v.volume_id.clone(),
                    state: AttachState::Attached,
                    guest_device: None,
                    guest_size_bytes: None,
                    error: None,
                })
                .collect();
        };
        let (needs_work, report) = {
            let mut s = self.storage();
            let sizes = s.volume_sizes.clone();
            let state = s.disks.entry(want.id.clone()).or_default();
            if state.pid != pid {
                *state = InstanceDisks { pid, ..Default::default() };
            }
            let wanted: HashSet<&VolumeId> = want.volumes.iter().map(|v| &v.volume_id).collect();
            let mut needs_work = !state.known;
            let mut report = Vec::new();
            for v in &want.volumes {
                let size = v.size_gib * GIB;
                let plugged = state.plugged.get(&v.volume_id);
                let seen = plugged.and_then(|p| p.guest.clone());
                let done = plugged.is_some_and(|p| p.size >= size) && seen.as_ref().is_some_and(|g| g.1 >= size);
                // A volume whose file is not there yet is created first.
                let file_ready = sizes.contains_key(&v.volume_id);
                needs_work |= !done && file_ready;
                let mut error = state.errors.get(&v.volume_id).cloned();
                if !done && error.is_none() && state.guest_silent_since.is_some_and(|t| t.elapsed() > GUEST_SILENT) {
                    error = Some(format!(
                        "the guest agent has not answered for over {} s, so Nubo cannot check that the guest sees the disk; it stays attaching until it does",
                        GUEST_SILENT.as_secs()
                    ));
                }
                report.push(ActualAttachment {
                    volume_id: v.volume_id.clone(),
                    state: if done { AttachState::Attached } else { AttachState::Attaching },
                    guest_device: seen.as_ref().map(|g| g.0.clone()),
                    guest_size_bytes: seen.map(|g| g.1),
                    error,
                });
            }
            for (id, _) in state.plugged.iter().filter(|(id, _)| !wanted.contains(id)) {
                needs_work = true;
                report.push(ActualAttachment {
                    volume_id: id.clone(),
                    state: AttachState::Detaching,
                    guest_device: None,
                    guest_size_bytes: None,
                    error: state.errors.get(id).cloned(),
                });
            }
            (needs_work, report)
        };
        if needs_work && work {
            let this = self.clone();
            let want = want.clone();
            self.spawn_storage(disk_key(&want.id), async move { this.disk_task(want, pid).await });
        }
        report
    }

    /// Brings a running VM's data disks in line with `want`: unplug what is
    /// no longer wanted, plug what is, grow what is smaller, then ask the
    /// guest what it sees.
    async fn disk_task(self: Arc<Self>, want: DesiredInstance, pid: u32) {
        let dir = self.host.dir(&want.id);
        let key = disk_key(&want.id);
        let hv = self.host.hypervisor.clone();
        let attached = match hv.attached_disks(&dir).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the VM's disks yet");
                self.retry_later(&key, GUEST_RETRY);
                return;
            }
        };
        {
            let mut s = self.storage();
            let state = s.disks.entry(want.id.clone()).or_default();
            if state.pid != pid {
                return;
            }
            let old = std::mem::take(&mut state.plugged);
            for a in &attached {
                if let Ok(v) = a.id.parse::<VolumeId>() {
                    let guest = old.get(&v).and_then(|p| p.guest.clone());
                    state.plugged.insert(v, Plugged { size: a.size, guest });
                }
            }
            state.known = true;
        }
        let mut failed = false;
        let wanted: HashMap<&VolumeId, &nubo_api::agent::DesiredAttachment> =
            want.volumes.iter().map(|v| (&v.volume_id, v)).collect();
        for a in &attached {
            let Ok(v) = a.id.parse::<VolumeId>() else { continue };
            if wanted.contains_key(&v) {
                continue;
            }
            let result = hv.detach_disk(&dir, &a.id, DETACH_TIMEOUT).await;
            let mut s = self.storage();
            let state = s.disks.entry(want.id.clone()).or_default();
            match result {
                Ok(()) => {
                    state.plugged.remove(&v);
                    state.errors.remove(&v);
                    tracing::info!(volume = %v, "volume detached");
                }
                Err(e) => {
                    failed = true;
                    state.errors.insert(v, e.to_string());
                }
            }
        }
        for w in &want.volumes {
            let path = self.volume_path(&w.volume_id);
            let present = { self.storage().disks.get(&want.id).is_some_and(|d| d.plugged.contains_key(&w.volume_id)) };
            if present || !path.is_file() {
                continue;
            }
            let disk = DataDisk { id: w.volume_id.to_string(), path, serial: w.serial.clone(), slot: w.slot };
            // Recorded before plugging, so a report meanwhile never calls it detached.
            self.storage()
                .disks
                .entry(want.id.clone())
                .or_default()
                .plugged
                .insert(w.volume_id.clone(), Plugged::default());
            let result = hv.attach_disk(&dir, &disk).await;
            let mut s = self.storage();
            let size = s.volume_sizes.get(&w.volume_id).copied().unwrap_or(0);
            let state = s.disks.entry(want.id.clone()).or_default();
            match result {
                Ok(()) => {
                    state.plugged.insert(w.volume_id.clone(), Plugged { size, guest: None });
                    state.errors.remove(&w.volume_id);
                    tracing::info!(volume = %w.volume_id, slot = w.slot, "volume hot-plugged");
                }
                Err(e) => {
                    failed = true;
                    state.plugged.remove(&w.volume_id);
                    state.errors.insert(w.volume_id.clone(), e.to_string());
                }
            }
        }
        // The sizes QEMU has for what is plugged now (a new disk's file may
        // not have been measured here yet).
        if let Ok(now) = hv.attached_disks(&dir).await {
            let mut s = self.storage();
            for a in now {
                let Ok(v) = a.id.parse::<VolumeId>() else { continue };
                s.volume_sizes.entry(v.clone()).or_insert(a.size);
                if let Some(p) = s.disks.get_mut(&want.id).and_then(|d| d.plugged.get_mut(&v)) {
                    p.size = a.size;
                }
            }
        }
        // Online extends.
        for w in &want.volumes {
            let size = w.size_gib * GIB;
            let current =
                { self.storage().disks.get(&want.id).and_then(|d| d.plugged.get(&w.volume_id).map(|p| p.size)) };
            let Some(current) = current else { continue };
            if current >= size {
                continue;
            }
            let result = hv.resize_attached_disk(&dir, w.volume_id.as_str(), size).await;
            let mut s = self.storage();
            match result {
                Ok(()) => {
                    s.volume_sizes.insert(w.volume_id.clone(), size);
                    if let Some(p) = s.disks.get_mut(&want.id).and_then(|d| d.plugged.get_mut(&w.volume_id)) {
                        p.size = size;
                    }
                    tracing::info!(volume = %w.volume_id, size, "volume extended online");
                }
                Err(e) => {
                    failed = true;
                    if let Some(d) = s.disks.get_mut(&want.id) {
                        d.errors.insert(w.volume_id.clone(), e.to_string());
                    }
                }
            }
        }
        // What the guest sees.
        let seen = match self.instances.guest_agent(&want.id, Duration::from_secs(3)).await {
            Ok(mut q) => guest_disks(&mut q.client).await.ok(),
            Err(_) => None,
        };
        let mut s = self.storage();
        let state = s.disks.entry(want.id.clone()).or_default();
        match seen {
            Some(seen) => {
                state.guest_silent_since = None;
                for w in &want.volumes {
                    if let Some(p) = state.plugged.get_mut(&w.volume_id) {
                        p.guest = seen.get(&w.serial).cloned();
                    }
                }
            }
            None => {
                state.guest_silent_since.get_or_insert_with(Instant::now);
            }
        }
        let unconfirmed = want.volumes.iter().any(|w| {
            state.plugged.get(&w.volume_id).is_some_and(|p| p.guest.as_ref().is_none_or(|g| g.1 < w.size_gib * GIB))
        });
        drop(s);
        if failed {
            self.retry_later(&key, RETRY);
        } else if unconfirmed {
            self.retry_later(&key, GUEST_RETRY);
        }
    }

    // ---- volumes ----

    /// The state of every volume on this host, starting the work each needs.
    pub(crate) fn reconcile_volumes(
        self: &Arc<Self>,
        d: &DesiredState,
        running: &HashSet<InstanceId>,
    ) -> Vec<ActualVolume> {
        let in_use = self.volumes_in_use(d, running);
        let mut out = Vec::new();
        for v in &d.volumes {
            let path = self.volume_path(&v.id);
            let key = vol_key(&v.id);
            let (busy, size, error) = {
                let mut s = self.storage();
                (s.busy(&key), s.volume_sizes.get(&v.id).copied(), s.volume_errors.get(&v.id).cloned())
            };
            let exists = path.is_file();
            let state = if !v.present {
                if exists && !in_use.contains(&v.id) {
                    self.spawn_volume_task(v.clone(), false);
                }
                if exists {
                    ActualVolumeState::Available
                } else {
                    self.storage().volume_sizes.remove(&v.id);
                    ActualVolumeState::Deleted
                }
            } else if !exists {
                if !busy {
                    self.spawn_volume_task(v.clone(), false);
                }
                if error.is_some() {
                    ActualVolumeState::Error
                } else {
                    ActualVolumeState::Creating
                }
            } else if v.from_backup.as_ref().is_some_and(|r| crate::restores::pending(&path, r)) {
                // Written back from a backup (in place, or after an
                // evacuation); it waits while an instance uses the volume.
                if !busy && !in_use.contains(&v.id) {
                    self.spawn_volume_task(v.clone(), false);
                }
                if error.is_some() {
                    ActualVolumeState::Error
                } else {
                    ActualVolumeState::Creating
                }
            } else if v.revert.as_ref().is_some_and(|r| r.seq > reverted_seq(&path)) {
                // A revert not applied yet; it waits while an instance uses
                // the volume (the control plane asks only when none does).
                if !busy && !in_use.contains(&v.id) {
                    self.spawn_revert_task(v.clone());
                }
                if error.is_some() {
                    ActualVolumeState::Error
                } else {
                    ActualVolumeState::Creating
                }
            } else {
                match size {
                    // Learn the size of a file found on disk (agent restart).
                    None => {
                        self.spawn_volume_task(v.clone(), false);
                        ActualVolumeState::Creating
                    }
                    Some(bytes) => {
                        if bytes < v.size_gib * GIB && !in_use.contains(&v.id) {
                            self.spawn_volume_task(v.clone(), true);
                        }
                        ActualVolumeState::Available
                    }
                }
            };
            out.push(ActualVolume {
                id: v.id.clone(),
                state,
                size_gib: size.unwrap_or(0) / GIB,
                error: if state == ActualVolumeState::Deleted { None } else { error },
                reverted_seq: reverted_seq(&path),
            });
        }
        out
    }

    /// Creates, grows or deletes one volume's file.
    fn spawn_volume_task(self: &Arc<Self>, v: DesiredVolume, grow: bool) {
        let this = self.clone();
        let key = vol_key(&v.id);
        self.spawn_storage(key.clone(), async move {
            let path = this.volume_path(&v.id);
            let hv = this.host.hypervisor.clone();
            let want = v.size_gib * GIB;
            let result: Result<Option<u64>, String> = async {
                if !v.present {
                    let _ = std::fs::remove_file(revert_marker(&path));
                    let _ = std::fs::remove_file(crate::restores::marker(&path));
                    match std::fs::remove_file(&path) {
                        Ok(()) => tracing::info!("volume file deleted"),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("cannot delete {}: {e}", path.display())),
                    }
                    return Ok(None);
                }
                if let Some(r) = v.from_backup.as_ref().filter(|r| crate::restores::pending(&path, r)) {
                    // A volume restored from a backup: its file is the
                    // backup's disk (a new one, or written back in place).
                    let backup = r.backup_id.clone();
                    let progress: crate::restores::Progress =
                        Arc::new(move |pct: u64| tracing::info!(backup = %backup, "restoring volume {pct}%"));
                    crate::restores::restore(r, &path, progress).await.map_err(|e| e.to_string())?;
                    if hv.volume_size(&path).await.map_err(|e| e.to_string())? < want {
                        hv.resize_volume(&path, want).await.map_err(|e| e.to_string())?;
                    }
                    return hv.volume_size(&path).await.map(Some).map_err(|e| e.to_string());
                }
                if path.is_file() {
                    if grow {
                        hv.resize_volume(&path, want).await.map_err(|e| e.to_string())?;
                    }
                    return hv.volume_size(&path).await.map(Some).map_err(|e| e.to_string());
                }
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                match &v.from_snapshot {
                    Some(snap) => {
                        let src = this.snapshot_path(snap);
                        if !src.is_file() {
                            return Err(format!("snapshot {snap} is not on this host"));
                        }
                        let tmp = tmp_of(&path);
                        hv.copy_disk_file(&src, &tmp).await.map_err(|e| e.to_string())?;
                        if hv.volume_size(&tmp).await.map_err(|e| e.to_string())? < want {
                            hv.resize_volume(&tmp, want).await.map_err(|e| e.to_string())?;
                        }
                        std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
                        tracing::info!(snapshot = %snap, "volume created from a snapshot");
                    }
                    None => hv.create_volume(&path, want).await.map_err(|e| e.to_string())?,
                }
                hv.volume_size(&path).await.map(Some).map_err(|e| e.to_string())
            }
            .await;
            let mut s = this.storage();
            match result {
                Ok(Some(size)) => {
                    s.volume_sizes.insert(v.id.clone(), size);
                    s.volume_errors.remove(&v.id);
                }
                Ok(None) => {
                    s.volume_sizes.remove(&v.id);
                    s.volume_errors.remove(&v.id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "volume operation failed");
                    s.volume_errors.insert(v.id.clone(), e);
                    s.retry_at.insert(key, Instant::now() + RETRY * 6);
                }
            }
        });
    }

    /// Replaces a volume's file by a copy of a snapshot (a revert): the
    /// copy is made beside it and renamed over it, then the revert's count
    /// is recorded (also by rename), so a restart at any point leaves
    /// either the old file or the snapshot's, and at worst copies again.
    fn spawn_revert_task(self: &Arc<Self>, v: DesiredVolume) {
        let Some(revert) = v.revert.clone() else { return };
        let this = self.clone();
        let key = vol_key(&v.id);
        self.spawn_storage(key.clone(), async move {
            let path = this.volume_path(&v.id);
            let hv = this.host.hypervisor.clone();
            let result: Result<u64, String> = async {
                let src = this.snapshot_path(&revert.snapshot);
                if !src.is_file() {
                    return Err(format!("snapshot {} is not on this host", revert.snapshot));
                }
                let tmp = tmp_of(&path);
                hv.copy_disk_file(&src, &tmp).await.map_err(|e| e.to_string())?;
                // The volume may have grown since the snapshot was taken.
                let want = v.size_gib * GIB;
                if hv.volume_size(&tmp).await.map_err(|e| e.to_string())? < want {
                    hv.resize_volume(&tmp, want).await.map_err(|e| e.to_string())?;
                }
                std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
                let marker = revert_marker(&path);
                let marker_tmp = tmp_of(&marker);
                std::fs::write(&marker_tmp, revert.seq.to_string())
                    .and_then(|()| std::fs::rename(&marker_tmp, &marker))
                    .map_err(|e| format!("cannot record the revert in {}: {e}", marker.display()))?;
                tracing::info!(snapshot = %revert.snapshot, seq = revert.seq, "volume reverted to a snapshot");
                hv.volume_size(&path).await.map_err(|e| e.to_string())
            }
            .await;
            let mut s = this.storage();
            match result {
                Ok(size) => {
                    s.volume_sizes.insert(v.id.clone(), size);
                    s.volume_errors.remove(&v.id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "volume revert failed");
                    s.volume_errors.insert(v.id.clone(), e);
                    s.retry_at.insert(key, Instant::now() + RETRY * 6);
                }
            }
        });
    }

    // ---- volume snapshots ----

    /// The running instance (and its pid) a volume is plugged into, if any.
    fn plugged_into(&self, v: &VolumeId) -> Option<InstanceId> {
        self.storage().disks.iter().find(|(_, d)| d.plugged.contains_key(v)).map(|(i, _)| i.clone())
    }

    pub(crate) fn reconcile_snapshots(self: &Arc<Self>, d: &DesiredState) -> Vec<ActualSnapshot> {
        let mut out = Vec::new();
        for snap in &d.snapshots {
            let path = self.snapshot_path(&snap.id);
            let key = format!("snap:{}", snap.id);
            let (busy, result) = {
                let mut s = self.storage();
                (s.busy(&key), s.snapshots.get(&snap.id).cloned())
            };
            let exists = path.is_file();
            let (state, consistency, error) = if !snap.present {
                if exists && !busy {
                    self.spawn_snapshot_task(snap.clone());
                }
                (if exists { ActualSnapshotState::Completed } else { ActualSnapshotState::Deleted }, None, None)
            } else {
                match (exists, result) {
                    (true, Some(Ok(c))) => (ActualSnapshotState::Completed, Some(c), None),
                    (true, _) => (ActualSnapshotState::Completed, None, None),
                    (false, Some(Err(e))) => (ActualSnapshotState::Error, None, Some(e)),
                    (false, _) => {
                        if !busy {
                            self.spawn_snapshot_task(snap.clone());
                        }
                        (ActualSnapshotState::Pending, None, None)
                    }
                }
            };
            out.push(ActualSnapshot { id: snap.id.clone(), state, consistency, error });
        }
        out
    }

    fn spawn_snapshot_task(self: &Arc<Self>, snap: DesiredSnapshot) {
        let this = self.clone();
        self.spawn_storage(format!("snap:{}", snap.id), async move {
            let path = this.snapshot_path(&snap.id);
            if !snap.present {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(error = %e, "cannot delete the snapshot file");
                } else {
                    tracing::info!("snapshot deleted");
                }
                this.storage().snapshots.remove(&snap.id);
                return;
            }
            let result = this.take_volume_snapshot(&snap, &path).await;
            match &result {
                Ok(c) => tracing::info!(consistency = %c, "volume snapshot taken"),
                Err(e) => tracing::warn!(error = %e, "volume snapshot failed"),
            }
            this.storage().snapshots.insert(snap.id.clone(), result);
        });
    }

    async fn take_volume_snapshot(self: &Arc<Self>, snap: &DesiredSnapshot, path: &Path) -> Result<String, String> {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = tmp_of(path);
        let _ = std::fs::remove_file(&tmp);
        let consistency = match self.plugged_into(&snap.volume_id) {
            Some(instance) => self.copy_running_disk(&instance, snap.volume_id.as_str(), &tmp).await?,
            None => {
                let src = self.volume_path(&snap.volume_id);
                if !src.is_file() {
                    return Err(format!("volume {} has no file on this host", snap.volume_id));
                }
                self.host.hypervisor.copy_disk_file(&src, &tmp).await.map_err(|e| e.to_string())?;
                "offline".to_string()
            }
        };
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename {}: {e}", tmp.display()))?;
        Ok(consistency)
    }

    /// A point-in-time copy of a running VM's disk `node` into `target`,
    /// with the guest's file systems frozen for the instant the copy
    /// starts when its guest agent answers. Returns the consistency.
    async fn copy_running_disk(&self, instance: &InstanceId, node: &str, target: &Path) -> Result<String, String> {
        let dir = self.host.dir(instance);
        let hv = self.host.hypervisor.clone();
        let (job, frozen) = while_frozen(&self.instances, instance, hv.backup_start(&dir, node, target)).await;
        let job = job.map_err(|e| e.to_string())?;
        hv.backup_finish(&dir, &job, COPY_TIMEOUT).await.map_err(|e| e.to_string())?;
        Ok(if frozen { "filesystem" } else { "crash" }.to_string())
    }

    // ---- instance snapshots ----

    /// Instance snapshots of `want`: taken (root disk copy), kept in the
    /// local image cache and uploaded; failures are reported.
    pub(crate) fn reconcile_captures(self: &Arc<Self>, want: &DesiredInstance, running: bool) -> Vec<ActualCapture> {
        let mut out = Vec::new();
        for c in &want.captures {
            let key = format!("cap:{}", c.image_id);
            let (busy, done) = {
                let mut s = self.storage();
                (s.busy(&key), s.captures.get(&c.image_id).cloned())
            };
            match done {
                Some(Capture::Failed(e)) => out.push(ActualCapture {
                    image_id: c.image_id.clone(),
                    state: CaptureState::Failed,
                    error: Some(e),
                }),
                Some(Capture::Uploaded) => {}
                None => {
                    if !busy {
                        let this = self.clone();
                        let (instance, image) = (want.id.clone(), c.image_id.clone());
                        self.spawn_storage(key, async move { this.capture(instance, image, running).await });
                    }
                    out.push(ActualCapture { image_id: c.image_id.clone(), state: CaptureState::Saving, error: None });
                }
            }
        }
        out
    }

    async fn capture(self: Arc<Self>, instance: InstanceId, image: ImageId, running: bool) {
        let started = Instant::now();
        let work = self.host.config.data_dir.join("captures");
        let result: Result<(), (bool, String)> = async {
            std::fs::create_dir_all(&work).map_err(|e| (true, format!("cannot create {}: {e}", work.display())))?;
            let tmp = work.join(format!("{image}.qcow2"));
            let _ = std::fs::remove_file(&tmp);
            if running {
                self.copy_running_disk(&instance, "root", &tmp).await.map_err(|e| (true, e))?;
            } else {
                let disk = self.host.dir(&instance).disk();
                self.host.hypervisor.copy_disk_file(&disk, &tmp).await.map_err(|e| (true, e.to_string()))?;
            }
            // Keep it in the local cache too: booting it here needs no download.
            let cached = crate::blobs::adopt(&self.host.blob_root(), &tmp).await.map_err(|e| (true, e))?;
            tracing::info!(sha256 = %cached.sha256, size = cached.size, after = ?started.elapsed(), "root disk copied");
            match self.host.client.upload_capture(&image, &cached.path, cached.size, &cached.sha256).await {
                Ok(_) => Ok(()),
                Err(e @ nubo_client::ClientError::Api { status: 400..=499, .. }) => Err((true, e.to_string())),
                Err(e) => Err((false, e.to_string())),
            }
        }
        .await;
        let key = format!("cap:{image}");
        match result {
            Ok(()) => {
                tracing::info!(after = ?started.elapsed(), "instance snapshot uploaded");
                self.storage().captures.insert(image, Capture::Uploaded);
            }
            Err((true, e)) => {
                tracing::warn!(error = %e, "instance snapshot failed");
                self.storage().captures.insert(image, Capture::Failed(e));
            }
            Err((false, e)) => {
                tracing::warn!(error = %e, "instance snapshot upload failed; retrying");
                self.retry_later(&key, RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_lines_from_the_guest() {
        let got = parse_disk_lines("vda  2097152\nvdc vol0123456789abcdef0 4194304\n../x s 1\ngarbage\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got["vol0123456789abcdef0"], ("/dev/vdc".to_string(), 4194304 * 512));
        assert_eq!(tmp_of(Path::new("/v/a.qcow2")), PathBuf::from("/v/a.qcow2.tmp"));
    }
}
