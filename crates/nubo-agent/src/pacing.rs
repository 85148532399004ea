//! Which instances a reconcile pass visits.
//!
//! A pass used to visit every instance of the host every half second: its
//! VM's status, its applied record, its metadata service, its runs, its
//! console. At a few thousand instances that was most of an idle host's
//! CPU, for instances where nothing happens. As kubelet resyncs a pod on
//! its events and otherwise once a period, a pass now visits every
//! instance when the desired state changed and every [`FULL_PASS_EVERY`],
//! and in between only the instances where something is happening: an
//! operation under way, a live migration, or a reported state that
//! changed within [`HOT_FOR`] (a booting VM, an attaching volume, a guest
//! whose status moves). A VM that dies unprompted is seen by the next full
//! pass, at most [`FULL_PASS_EVERY`] later.

use nubo_api::agent::DesiredInstance;
use nubo_api::ids::InstanceId;
use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// Every instance is visited at least this often.
pub(crate) const FULL_PASS_EVERY: Duration = Duration::from_secs(10);
/// An instance whose reported state changed is visited by every pass for
/// this long after.
pub(crate) const HOT_FOR: Duration = Duration::from_secs(30);

/// When each instance's reported state last changed.
#[derive(Default)]
pub(crate) struct Pacing {
    last_full: Option<Instant>,
    /// A hash of the instance's last reported entry, and when it changed.
    changed: HashMap<InstanceId, (u64, Instant)>,
}

impl Pacing {
    /// Whether this pass visits every instance.
    pub(crate) fn full_pass_due(&self, desired_changed: bool, now: Instant) -> bool {
        desired_changed || self.last_full.is_none_or(|at| now.saturating_duration_since(at) >= FULL_PASS_EVERY)
    }

    /// The instances of `wants` a pass that is not full visits: those in
    /// `active` (an operation, a run or events under way), those in a live
    /// migration, those never seen, and those whose state changed within
    /// [`HOT_FOR`]. On an idle host that is none, found without a lookup
    /// per instance.
    pub(crate) fn quick_pass<'a>(
        &self,
        wants: &'a [DesiredInstance],
        active: &HashSet<InstanceId>,
        now: Instant,
    ) -> Vec<&'a DesiredInstance> {
        let mut picked: HashSet<&InstanceId> = active.iter().collect();
        picked.extend(
            self.changed.iter().filter(|(_, (_, at))| now.saturating_duration_since(*at) < HOT_FOR).map(|(id, _)| id),
        );
        let unseen = wants.len() > self.changed.len();
        if picked.is_empty() && !unseen {
            return wants.iter().filter(|w| w.migration.is_some()).collect();
        }
        wants
            .iter()
            .filter(|w| w.migration.is_some() || picked.contains(&w.id) || !self.changed.contains_key(&w.id))
            .collect()
    }

    /// The pass saw `id` report `entry` (its JSON).
    pub(crate) fn observed(&mut self, id: &InstanceId, entry: &[u8], now: Instant) {
        let mut h = DefaultHasher::new();
        entry.hash(&mut h);
        let hash = h.finish();
        match self.changed.get_mut(id) {
            Some((old, _)) if *old == hash => {}
            Some(slot) => *slot = (hash, now),
            None => {
                self.changed.insert(id.clone(), (hash, now));
            }
        }
    }

    /// A full pass over `ids` ended: instances no longer there are forgotten.
    pub(crate) fn full_pass_done(&mut self, ids: &HashSet<&InstanceId>, now: Instant) {
        self.last_full = Some(now);
        self.changed.retain(|id, _| ids.contains(id));
    }
}

#[cfg(test)]
mod tests;
