//! CD-ROM drives and the `blank` image on this host: the ISO file of each
//! drive (fetched into the blob cache like any registry image), the disc
//! each running VM has in its drive, and changing it over QMP when the
//! desired state asks for another (eject, insert). What a VM has is
//! recorded at its start and at each change, in memory and in its
//! directory (`cdrom.applied`), so a restarted agent does not yank a disc
//! an installer is reading. The empty base disk of `blank` instances is
//! made here too.

use crate::host::Host;
use nubo_api::agent::{DesiredCdrom, DesiredInstance};
use nubo_api::ids::InstanceId;
use nubo_hypervisor::CdRom;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A failed change is tried again after this long (not on every pass).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Size of the base file `blank` root disks are overlays of: all zeros.
const BLANK_BASE_BYTES: u64 = 1 << 20;

/// The disc wanted in a drive: its file's SHA-256, or None (empty).
fn wanted(cd: &DesiredCdrom) -> Option<String> {
    cd.media.as_ref().map(|m| m.sha256.clone())
}

/// The file in an instance's directory recording its VM's disc.
const APPLIED_FILE: &str = "cdrom.applied";
const EMPTY: &str = "empty";

#[derive(Default)]
struct State {
    /// The disc each running VM has (by SHA-256; None: empty).
    applied: HashMap<InstanceId, Option<String>>,
    /// Changes under way.
    busy: HashSet<InstanceId>,
    /// When a change last failed, to wait before the next try.
    failed_at: HashMap<InstanceId, Instant>,
}

pub(crate) struct Cdroms {
    host: Arc<Host>,
    state: Mutex<State>,
}

impl Cdroms {
    pub(crate) fn new(host: Arc<Host>) -> Self {
        Self { host, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The drive `want`'s VM starts with (its ISO fetched first), if any.
    pub(crate) async fn for_start(&self, want: &DesiredInstance) -> anyhow::Result<Option<CdRom>> {
        let Some(cd) = &want.cdrom else { return Ok(None) };
        let media = match &cd.media {
            Some(src) => Some(
                crate::blobs::ensure(&self.host.client, &self.host.blob_root(), src)
                    .await
                    .map_err(|e| anyhow::anyhow!("the CD-ROM's ISO image: {e}"))?,
            ),
            None => None,
        };
        Ok(Some(CdRom { media, boot_first: cd.boot_first }))
    }

    /// `want`'s VM has started with the drive `for_start` gave.
    pub(crate) fn started(&self, want: &DesiredInstance) {
        let mut s = self.state();
        match &want.cdrom {
            Some(cd) => {
                self.record(&want.id, &wanted(cd));
                s.applied.insert(want.id.clone(), wanted(cd))
            }
            None => s.applied.remove(&want.id),
        };
        s.failed_at.remove(&want.id);
    }

    /// Writes what the VM of `id` has in its drive to its directory.
    fn record(&self, id: &InstanceId, disc: &Option<String>) {
        let path = self.host.dir(id).path().join(APPLIED_FILE);
        if let Err(e) = std::fs::write(&path, disc.as_deref().unwrap_or(EMPTY)) {
            tracing::warn!(instance = %id, error = %e, "cannot record the CD-ROM's disc");
        }
    }

    /// What the VM of `id` has in its drive, as last recorded (an agent
    /// that restarted reads it back).
    fn recorded(&self, id: &InstanceId) -> Option<Option<String>> {
        let text = std::fs::read_to_string(self.host.dir(id).path().join(APPLIED_FILE)).ok()?;
        let text = text.trim();
        Some((text != EMPTY).then(|| text.to_string()))
    }

    /// The VM is gone: what was in its drive is no longer known.
    pub(crate) fn forget(&self, id: &InstanceId) {
        let mut s = self.state();
        s.applied.remove(id);
        s.failed_at.remove(id);
    }

    /// For a running VM: changes the disc in its drive (in its own task)
    /// when it is not the one wanted.
    pub(crate) fn reconcile(self: &Arc<Self>, want: &DesiredInstance) {
        let Some(cd) = want.cdrom.clone() else { return };
        let target = wanted(&cd);
        {
            let mut s = self.state();
            if !s.applied.contains_key(&want.id) {
                if let Some(disc) = self.recorded(&want.id) {
                    s.applied.insert(want.id.clone(), disc);
                }
            }
            if s.applied.get(&want.id) == Some(&target) || s.busy.contains(&want.id) {
                return;
            }
            if s.failed_at.get(&want.id).is_some_and(|at| at.elapsed() < RETRY_AFTER) {
                return;
            }
            s.busy.insert(want.id.clone());
        }
        let this = self.clone();
        let id = want.id.clone();
        tokio::spawn(async move {
            let result = this.change(&id, &cd).await;
            let mut s = this.state();
            s.busy.remove(&id);
            match result {
                Ok(()) => {
                    tracing::info!(instance = %id, disc = ?target, "CD-ROM disc changed");
                    this.record(&id, &target);
                    s.applied.insert(id.clone(), target);
                    s.failed_at.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %format!("{e:#}"), "cannot change the CD-ROM disc; trying again");
                    s.failed_at.insert(id, Instant::now());
                }
            }
        });
    }

    async fn change(&self, id: &InstanceId, cd: &DesiredCdrom) -> anyhow::Result<()> {
        let media = match &cd.media {
            Some(src) => Some(
                crate::blobs::ensure(&self.host.client, &self.host.blob_root(), src)
                    .await
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        self.host.hypervisor.change_cdrom(&self.host.dir(id), media.as_deref()).await?;
        Ok(())
    }

    /// The base file of `blank` root disks (zeros; the overlay on it has
    /// the instance's size), made on first use.
    pub(crate) async fn blank_base(&self) -> anyhow::Result<PathBuf> {
        let path = self.host.images.root().join("blank-base.raw");
        if path.is_file() {
            return Ok(path);
        }
        std::fs::create_dir_all(self.host.images.root())?;
        // Made under a unique name and renamed: agents may share the cache.
        let tmp = path.with_extension(format!("{}.part", rand::random::<u32>()));
        let file = std::fs::File::create(&tmp)?;
        file.set_len(BLANK_BASE_BYTES)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}
