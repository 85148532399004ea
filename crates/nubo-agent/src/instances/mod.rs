//! The instance manager: what the agent keeps about each instance of the
//! host between passes, in one record per instance: the operation under
//! way (start, stop, reboot, delete, a migration's side) and the last
//! failure, life events not yet delivered, the console offset the server
//! acknowledged, the runs under way and finished, the guest channel (one
//! guest-agent client at a time, as QEMU serves one) with the guest
//! status it polls, and the instance's part in a live migration. It also
//! keeps the last desired state, which monitoring, checks, fencing and
//! the metadata lookup read.
//!
//! The reconciler decides what to do; this module only records it, so
//! the components that need an instance's state (runs, checks, metrics,
//! storage, the lease) depend on it and never on the reconciler. Other
//! per-instance state belongs to the component that uses it: metadata
//! services to `metadata`, data disks to `storage`, taps to `network`.
//! What was last applied to an instance is kept in its directory
//! ([`applied`]).

pub(crate) mod applied;

use crate::clock::now_ms;
use nubo_api::agent::{DesiredInstance, DesiredRun, DesiredState};
use nubo_api::ids::{InstanceId, RunId};
use nubo_api::views::{GuestStatus, InstanceEvent};
use nubo_hypervisor::{QgaClient, VmDir};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How often the guest agent of each running instance is asked for status.
const GUEST_POLL: Duration = Duration::from_secs(5);
/// Most guest status (as JSON) one report carries, over all its instances;
/// the rest waits for the next report. Half the server's default body
/// limit (256 KiB), so that guests cannot make a report too large.
pub(crate) const GUEST_BYTES_PER_REPORT: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    Start,
    Stop,
    Reboot,
    Delete,
    /// Start the target copy of a live migration.
    Incoming,
    /// Send the instance to the target of a live migration.
    MigrateOut,
    /// Hot-add vCPUs to the running VM (`crate::vcpus`).
    SetVcpus,
}

struct Op {
    kind: OpKind,
    handle: JoinHandle<()>,
}

/// The newest guest status and network counters, and when they came.
type GuestLatest = (Instant, GuestStatus, Option<crate::guest::NetCounters>);

/// Everything the agent keeps about one instance between passes.
#[derive(Default)]
struct InstanceRecord {
    /// The operation under way, in its own task.
    op: Option<Op>,
    /// The last failure, with the start_seq it applies to.
    error: Option<(i64, String)>,
    /// Events not yet delivered to the control plane.
    events: Vec<InstanceEvent>,
    /// Console offset acknowledged by the server.
    console_offset: Option<u64>,
    /// Runs being carried out.
    runs: HashMap<RunId, JoinHandle<()>>,
    /// Runs this agent finished. A desired state fetched before the
    /// server saw the end may still list one; it must not run twice.
    runs_done: HashSet<RunId>,
    /// One guest-agent client at a time (QEMU serves one).
    guest_channel: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The guest status poll: when the last one started, and the task.
    guest_poll: Option<(Instant, JoinHandle<()>)>,
    /// Guest status collected and not yet reported, and the last reported.
    guest_new: Option<GuestStatus>,
    guest_sent: Option<GuestStatus>,
    /// The newest guest status and network counters, for monitoring.
    guest_latest: Option<GuestLatest>,
    /// The target of a live migration started here whose NBD server still runs.
    incoming: bool,
    /// Migrated away from this host (its VM and files are gone).
    migrated_out: bool,
}

impl InstanceRecord {
    /// Moves the runs whose tasks ended to `runs_done`.
    fn note_finished_runs(&mut self) {
        if !self.runs.values().any(JoinHandle::is_finished) {
            return;
        }
        let finished: Vec<RunId> =
            self.runs.iter().filter(|(_, t)| t.is_finished()).map(|(id, _)| id.clone()).collect();
        for id in finished {
            self.runs.remove(&id);
            self.runs_done.insert(id);
        }
    }

    /// Nothing left to remember: the record may go.
    fn is_empty(&self) -> bool {
        self.op.is_none()
            && self.error.is_none()
            && self.events.is_empty()
            && self.console_offset.is_none()
            && self.runs.is_empty()
            && self.runs_done.is_empty()
            && self.guest_channel.is_none()
            && self.guest_poll.is_none()
            && self.guest_new.is_none()
            && self.guest_sent.is_none()
            && self.guest_latest.is_none()
            && !self.incoming
            && !self.migrated_out
    }
}

#[derive(Default)]
struct State {
    records: HashMap<InstanceId, InstanceRecord>,
    /// The last desired state seen, shared (a host's can hold thousands
    /// of instances, and the loops that read it must not copy it).
    desired: Option<Arc<DesiredState>>,
}

impl State {
    fn record(&mut self, id: &InstanceId) -> &mut InstanceRecord {
        self.records.entry(id.clone()).or_default()
    }
}

/// A guest-agent connection, held with the instance's guest channel
/// (QEMU serves one client per socket).
pub(crate) struct QgaSession {
    pub(crate) client: QgaClient,
    pub(crate) _guard: tokio::sync::OwnedMutexGuard<()>,
}

pub(crate) struct Instances {
    /// Where instance directories live (the guest-agent sockets among them).
    root: PathBuf,
    state: Mutex<State>,
}

impl Instances {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root, state: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicked task cannot leave a record half-updated in a way that
        // matters (each field is replaced whole), so recover.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: &InstanceId) -> VmDir {
        VmDir::new(self.root.join(id.as_str()))
    }

    // ---- the desired state ----

    pub(crate) fn set_desired(&self, d: Arc<DesiredState>) {
        self.lock().desired = Some(d);
    }

    /// Reads the last desired state (none before the first).
    pub(crate) fn with_desired<R>(&self, f: impl FnOnce(Option<&DesiredState>) -> R) -> R {
        f(self.lock().desired.as_deref())
    }

    /// The last desired state (none before the first).
    pub(crate) fn desired(&self) -> Option<Arc<DesiredState>> {
        self.lock().desired.clone()
    }

    // ---- events and failures ----

    pub(crate) fn event(&self, id: &InstanceId, stage: &str, detail: impl Into<String>) {
        self.event_at(id, now_ms(), stage, detail.into());
    }

    pub(crate) fn event_at(&self, id: &InstanceId, at_ms: i64, stage: &str, detail: String) {
        self.lock().record(id).events.push(InstanceEvent { at_ms, stage: stage.to_string(), detail });
    }

    /// The events not yet delivered, now to be reported.
    pub(crate) fn take_events(&self, id: &InstanceId) -> Vec<InstanceEvent> {
        self.lock().records.get_mut(id).map(|r| std::mem::take(&mut r.events)).unwrap_or_default()
    }

    /// A report with `events` failed: they go first in the next one.
    pub(crate) fn put_back_events(&self, id: InstanceId, mut events: Vec<InstanceEvent>) {
        let mut s = self.lock();
        let list = &mut s.record(&id).events;
        events.append(list);
        *list = events;
    }

    pub(crate) fn error(&self, id: &InstanceId) -> Option<(i64, String)> {
        self.lock().records.get(id).and_then(|r| r.error.clone())
    }

    pub(crate) fn set_error(&self, id: &InstanceId, start_seq: i64, error: String) {
        self.lock().record(id).error = Some((start_seq, error));
    }

    // ---- operations ----

    /// The instances where something is under way that a pass must
    /// follow: an operation, a run, or events not yet reported.
    pub(crate) fn active(&self) -> HashSet<InstanceId> {
        self.lock()
            .records
            .iter()
            .filter(|(_, r)| r.op.is_some() || !r.runs.is_empty() || !r.events.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The operation under way on `id`, if any.
    pub(crate) fn op(&self, id: &InstanceId) -> Option<OpKind> {
        self.lock().records.get(id).and_then(|r| r.op.as_ref()).map(|o| o.kind)
    }

    pub(crate) fn set_op(&self, id: &InstanceId, kind: OpKind, handle: JoinHandle<()>) {
        self.lock().record(id).op = Some(Op { kind, handle });
    }

    /// Forgets finished operations, and records with nothing left in them.
    pub(crate) fn forget_finished_ops(&self) {
        self.lock().records.retain(|_, r| {
            if r.op.as_ref().is_some_and(|o| o.handle.is_finished()) {
                r.op = None;
            }
            !r.is_empty()
        });
    }

    // ---- console ----

    pub(crate) fn console_offset(&self, id: &InstanceId) -> Option<u64> {
        self.lock().records.get(id).and_then(|r| r.console_offset)
    }

    pub(crate) fn set_console_offset(&self, id: &InstanceId, offset: Option<u64>) {
        self.lock().record(id).console_offset = offset;
    }

    // ---- live migration ----

    pub(crate) fn mark_incoming(&self, id: &InstanceId) {
        self.lock().record(id).incoming = true;
    }

    /// Whether a migration into this host was under way (and forgets it).
    pub(crate) fn take_incoming(&self, id: &InstanceId) -> bool {
        self.lock().records.get_mut(id).is_some_and(|r| std::mem::take(&mut r.incoming))
    }

    pub(crate) fn mark_migrated_out(&self, id: &InstanceId) {
        self.lock().record(id).migrated_out = true;
    }

    pub(crate) fn migrated_out(&self, id: &InstanceId) -> bool {
        self.lock().records.get(id).is_some_and(|r| r.migrated_out)
    }

    /// The instance comes back to this host: it is no longer migrated away.
    pub(crate) fn coming_back(&self, id: &InstanceId) {
        if let Some(r) = self.lock().records.get_mut(id) {
            r.migrated_out = false;
        }
    }

    // ---- runs ----

    /// Starts, through `spawn`, the runs of `want` not under way yet and
    /// not finished here.
    pub(crate) fn ensure_runs(&self, want: &DesiredInstance, mut spawn: impl FnMut(&DesiredRun) -> JoinHandle<()>) {
        let mut s = self.lock();
        // Only this instance's record: visiting every record here made a
        // pass quadratic in the host's instances.
        let record = s.record(&want.id);
        record.note_finished_runs();
        for run in &want.runs {
            if record.runs.contains_key(&run.id) || record.runs_done.contains(&run.id) {
                continue;
            }
            record.runs.insert(run.id.clone(), spawn(run));
        }
    }

    /// Forgets finished runs the server no longer lists (it has their end).
    pub(crate) fn forget_runs_done(&self, d: &DesiredState) {
        let listed: HashSet<&RunId> = d.instances.iter().flat_map(|i| i.runs.iter().map(|r| &r.id)).collect();
        for r in self.lock().records.values_mut() {
            // Also those of instances that stopped meanwhile (whose runs
            // `ensure_runs` no longer visits).
            r.note_finished_runs();
            r.runs_done.retain(|id| listed.contains(id));
        }
    }

    // ---- the guest channel ----

    /// A connection to the instance's guest agent, holding the instance's
    /// guest channel until dropped.
    pub(crate) async fn guest_agent(
        &self,
        id: &InstanceId,
        timeout: Duration,
    ) -> Result<QgaSession, nubo_hypervisor::QgaError> {
        let channel = self.lock().record(id).guest_channel.get_or_insert_with(Default::default).clone();
        let guard = channel.lock_owned().await;
        let client = QgaClient::connect(&self.dir(id).qga_socket(), timeout).await?;
        Ok(QgaSession { client, _guard: guard })
    }

    /// Asks the guest agent for the guest's status every [`GUEST_POLL`].
    pub(crate) fn poll_guest(self: &Arc<Self>, id: &InstanceId) {
        let mut s = self.lock();
        let record = s.record(id);
        if let Some((at, task)) = &record.guest_poll {
            if !task.is_finished() || at.elapsed() < GUEST_POLL {
                return;
            }
        }
        // No channel (a driver that starts no QEMU, or a VM still coming
        // up): nothing to ask, and no task to spawn for it.
        if !self.dir(id).qga_socket().exists() {
            record.guest_poll = None;
            return;
        }
        let this = self.clone();
        let instance = id.clone();
        let task = tokio::spawn(async move {
            // Short timeouts: a guest without an agent is normal, not an error.
            let Ok(mut session) = this.guest_agent(&instance, Duration::from_secs(2)).await else { return };
            match crate::guest::collect(&mut session.client, now_ms()).await {
                Ok((status, counters)) => {
                    let mut s = this.lock();
                    let record = s.record(&instance);
                    record.guest_latest = Some((Instant::now(), status.clone(), counters));
                    record.guest_new = Some(status);
                }
                Err(e) => tracing::debug!(instance = %instance, error = %e, "guest status not available"),
            }
        });
        record.guest_poll = Some((Instant::now(), task));
    }

    /// The guest status to report for `id`, when it changed since the
    /// last one the control plane accepted and fits in `budget` (bytes of
    /// guest status left for this report, reduced by what it takes). It
    /// stays pending until [`Self::guest_reported`]: a report that fails
    /// (or has no room) sends it again next time.
    pub(crate) fn guest_to_report(&self, id: &InstanceId, budget: &mut usize) -> Option<GuestStatus> {
        let mut s = self.lock();
        let record = s.records.get_mut(id)?;
        let new = record.guest_new.as_ref()?;
        if !crate::guest::changed(record.guest_sent.as_ref(), new) {
            record.guest_new = None;
            return None;
        }
        let size = serde_json::to_vec(new).map_or(usize::MAX, |b| b.len());
        if size > *budget {
            return None;
        }
        *budget -= size;
        Some(new.clone())
    }

    /// The control plane accepted these guest statuses: they are sent.
    pub(crate) fn guest_reported(&self, sent: Vec<(InstanceId, GuestStatus)>) {
        let mut s = self.lock();
        for (id, g) in sent {
            let record = s.record(&id);
            if record.guest_new.as_ref() == Some(&g) {
                record.guest_new = None;
            }
            record.guest_sent = Some(g);
        }
    }

    /// The newest guest status and network counters, when younger than `max_age`.
    pub(crate) fn guest_latest(
        &self,
        id: &InstanceId,
        max_age: Duration,
    ) -> Option<(GuestStatus, Option<crate::guest::NetCounters>)> {
        let s = self.lock();
        let (seen, status, counters) = s.records.get(id)?.guest_latest.as_ref()?;
        (seen.elapsed() < max_age).then(|| (status.clone(), *counters))
    }

    /// The VM is gone: its guest channel and what it said go too.
    pub(crate) fn drop_guest(&self, id: &InstanceId) {
        let mut s = self.lock();
        let Some(record) = s.records.get_mut(id) else { return };
        if let Some((_, task)) = record.guest_poll.take() {
            task.abort();
        }
        record.guest_new = None;
        record.guest_sent = None;
        record.guest_latest = None;
        record.guest_channel = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest status goes in every report until one is accepted, and
    /// waits when the report has no room for it.
    #[test]
    fn guest_status_is_sent_until_a_report_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = Instances::new(dir.path().join("instances"));
        let id: InstanceId = "i-0123456789abcdef0".parse().unwrap();
        let status = GuestStatus { os: Some("Nubo tiny".into()), ..Default::default() };
        r.lock().record(&id).guest_new = Some(status.clone());
        let mut budget = GUEST_BYTES_PER_REPORT;
        assert_eq!(r.guest_to_report(&id, &mut budget), Some(status.clone()));
        assert!(budget < GUEST_BYTES_PER_REPORT);
        // That report failed: the next one carries it again.
        let mut budget = GUEST_BYTES_PER_REPORT;
        assert_eq!(r.guest_to_report(&id, &mut budget), Some(status.clone()));
        // No room left in this report: it waits.
        let mut none = 10;
        assert_eq!(r.guest_to_report(&id, &mut none), None);
        assert_eq!(none, 10);
        // Accepted: not sent again while it does not change.
        r.guest_reported(vec![(id.clone(), status.clone())]);
        assert_eq!(r.guest_to_report(&id, &mut budget), None);
        r.lock().record(&id).guest_new = Some(GuestStatus { updated_at_ms: 5, ..status.clone() });
        assert_eq!(r.guest_to_report(&id, &mut budget), None, "only the time changed");
        let changed = GuestStatus { kernel: Some("6.1".into()), ..status };
        r.lock().record(&id).guest_new = Some(changed.clone());
        assert_eq!(r.guest_to_report(&id, &mut budget), Some(changed));
    }
}
