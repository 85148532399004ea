//! What the agent tells the control plane about its instances' actual
//! state, and how little it sends to say it.
//!
//! The control plane applies only the entries a report lists (an
//! instance missing from a report is not gone), so a report carries the
//! entries that changed since the control plane last took one, and the
//! host's volumes, snapshots and balancers when those changed. A full
//! report, every entry, goes out when the server's rows may differ from
//! what this ledger believes it took: at the first report, after a report
//! failed, after heartbeats failed (the control plane may have marked
//! the host's instances lost meanwhile), and every [`FULL_REPORT_EVERY`]
//! in case something else changed a row behind the agent's back.
//!
//! A host with thousands of instances would make a full report of
//! megabytes, over the server's body limit; reports are cut into chunks
//! of at most [`CHUNK_BYTES`] of entries, each a report of its own.

use nubo_api::agent::{ActualInstance, ActualSnapshot, ActualVolume, HostReport};
use nubo_api::ids::InstanceId;
use nubo_api::lb::ActualBalancer;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A report of every entry is sent at least this often.
pub(crate) const FULL_REPORT_EVERY: Duration = Duration::from_secs(60);
/// Most bytes of instance entries in one request: under the server's
/// default body limit (256 KiB) with room for the host-wide lists.
pub(crate) const CHUNK_BYTES: usize = 160 * 1024;

/// One instance's entry and its JSON (what the ledger compares).
pub(crate) struct Entry {
    pub(crate) actual: ActualInstance,
    pub(crate) json: Vec<u8>,
}

impl Entry {
    pub(crate) fn new(actual: ActualInstance) -> Entry {
        // An entry is plain data: encoding it cannot fail, and an empty
        // encoding would only make it look changed.
        let json = serde_json::to_vec(&actual).unwrap_or_default();
        Entry { actual, json }
    }
}

/// One request: a report, and what the ledger records once it is taken.
pub(crate) struct Chunk {
    pub(crate) report: HostReport,
    taken: Vec<(InstanceId, Vec<u8>)>,
    lists: Option<Vec<u8>>,
    full: bool,
}

/// What the control plane last took from this agent.
#[derive(Default)]
pub(crate) struct ReportLedger {
    /// Each instance's entry as last taken.
    taken: HashMap<InstanceId, Vec<u8>>,
    /// The volumes, snapshots and balancers as last taken.
    lists: Option<Vec<u8>>,
    /// When the last full report was taken.
    last_full: Option<Instant>,
    /// A report failed since: the next one is full.
    failed: bool,
    /// The heartbeat failures counted at the last full report.
    heartbeat_failures: u64,
}

impl ReportLedger {
    /// Whether the next report must list every entry.
    pub(crate) fn full_due(&self, heartbeat_failures: u64, now: Instant) -> bool {
        self.failed
            || heartbeat_failures != self.heartbeat_failures
            || self.last_full.is_none_or(|at| now.saturating_duration_since(at) >= FULL_REPORT_EVERY)
    }

    /// The requests of one pass. `entries` are the instances the pass
    /// visited; `full` (only when it visited every instance) sends them all.
    pub(crate) fn plan(
        &self,
        entries: Vec<Entry>,
        volumes: Vec<ActualVolume>,
        snapshots: Vec<ActualSnapshot>,
        balancers: Vec<ActualBalancer>,
        full: bool,
    ) -> Vec<Chunk> {
        let lists_json = serde_json::to_vec(&(&volumes, &snapshots, &balancers)).unwrap_or_default();
        let lists_changed = full || self.lists.as_ref() != Some(&lists_json);
        let mut chunks = Vec::new();
        let mut current: Option<Chunk> = None;
        let mut bytes = 0;
        for e in entries {
            if !full && !has_news(&e.actual) && self.taken.get(&e.actual.id) == Some(&e.json) {
                continue;
            }
            if current.as_ref().is_some_and(|c| !c.report.instances.is_empty()) && bytes + e.json.len() > CHUNK_BYTES {
                chunks.extend(current.take());
                bytes = 0;
            }
            let chunk = current.get_or_insert_with(|| empty_chunk(full));
            bytes += e.json.len() + 1;
            chunk.taken.push((e.actual.id.clone(), e.json));
            chunk.report.instances.push(e.actual);
        }
        chunks.extend(current);
        if lists_changed {
            if chunks.is_empty() {
                chunks.push(empty_chunk(full));
            }
            let first = &mut chunks[0];
            first.report.volumes = volumes;
            first.report.snapshots = snapshots;
            first.report.balancers = balancers;
            first.lists = Some(lists_json);
        }
        chunks
    }

    /// The control plane took `chunk`.
    pub(crate) fn took(&mut self, chunk: Chunk, heartbeat_failures: u64, now: Instant) {
        for (id, json) in chunk.taken {
            self.taken.insert(id, json);
        }
        if let Some(lists) = chunk.lists {
            self.lists = Some(lists);
        }
        if chunk.full {
            self.last_full = Some(now);
            self.failed = false;
            self.heartbeat_failures = heartbeat_failures;
        }
    }

    /// A request failed: what it carried is sent again, in full.
    pub(crate) fn failed(&mut self) {
        self.failed = true;
    }

    /// Forgets the entries of instances no longer on this host.
    pub(crate) fn retain(&mut self, ids: &HashSet<&InstanceId>) {
        self.taken.retain(|id, _| ids.contains(id));
    }
}

fn empty_chunk(full: bool) -> Chunk {
    Chunk {
        report: HostReport { instances: Vec::new(), volumes: Vec::new(), snapshots: Vec::new(), balancers: Vec::new() },
        taken: Vec::new(),
        lists: None,
        full,
    }
}

/// Whether an entry carries something that must be delivered even if it
/// looks like the last one taken: events, an unexpected exit, a guest poll.
fn has_news(a: &ActualInstance) -> bool {
    !a.events.is_empty() || a.exited_unexpectedly || a.guest.is_some()
}

#[cfg(test)]
mod tests;
