//! Desired-state deltas: what this server last sent each host's agent,
//! as a fingerprint per instance, so that a wake-up answers with only the
//! instances that changed since (and the ids of those gone) instead of
//! the host's whole set.
//!
//! An answer is named by a `view` token unique to this server process
//! (its random id and a counter); the agent passes it back. A delta is
//! made only when the token is the one this server last sent that host:
//! an agent new to this server (another server answered it before, this
//! one restarted, or its answer was lost) gets the whole set, and holds
//! the whole set again afterwards. The state itself is still computed
//! whole from the database at each wake-up (a fixed number of queries per
//! host); what the delta saves is encoding, sending and merging it. A
//! long-poll that runs out with nothing new for the host reads nothing:
//! it is answered "nothing changed" ([`DesiredViews::unchanged`]), except
//! once every [`RESYNC_EVERY`], when the state is read again.

use nubo_api::agent::{DesiredDelta, DesiredInstance, DesiredState};
use nubo_api::ids::InstanceId;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What was last sent to one host.
struct Sent {
    view: String,
    /// Each instance's fingerprint (a hash of its encoding).
    instances: HashMap<InstanceId, u64>,
    /// The rest of that answer (volumes, snapshots, balancers, networks),
    /// without its instances: what an answer that nothing changed repeats.
    rest: DesiredState,
    /// When the state was last read from the database for this host.
    read_at: Instant,
}

/// A host's state is read from the database at least this often, even
/// when nothing woke its agent: every change to a host's desired state
/// wakes it (`Ctx::bump_host`), and this bounds how late an agent learns
/// of a change made without that (a row written by hand, say).
pub const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// The last answer sent to each host, by host id.
#[derive(Default)]
pub struct DesiredViews {
    sent: Mutex<HashMap<String, Sent>>,
    counter: AtomicU64,
}

/// A hash of an instance's JSON encoding: any field that changes, the
/// agent must see.
fn fingerprint(i: &DesiredInstance) -> u64 {
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(Default::default());
    // Encoding into a hasher cannot fail but for a type that refuses to
    // encode, which none of these do; such an instance hashes as changed.
    if serde_json::to_writer(&mut w, i).is_err() {
        return rand::random();
    }
    w.0.finish()
}

impl DesiredViews {
    /// Names `full` (the host's whole desired state) and, when `base` is
    /// the view this server last sent `host`, cuts it to a delta from it.
    pub fn answer(&self, server_id: &str, host: &str, base: Option<&str>, mut full: DesiredState) -> DesiredState {
        let view = format!("{server_id}.{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let now: HashMap<InstanceId, u64> = full.instances.iter().map(|i| (i.id.clone(), fingerprint(i))).collect();
        let rest = without_instances(&full);
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let previous =
            sent.insert(host.to_string(), Sent { view: view.clone(), instances: now, rest, read_at: Instant::now() });
        full.view = Some(view);
        let (Some(base), Some(previous)) = (base, previous) else { return full };
        if previous.view != base {
            return full;
        }
        let Some(current) = sent.get(host) else { return full };
        let removed_instances: Vec<InstanceId> =
            previous.instances.keys().filter(|id| !current.instances.contains_key(*id)).cloned().collect();
        full.instances.retain(|i| previous.instances.get(&i.id) != current.instances.get(&i.id));
        full.delta = Some(DesiredDelta { base: base.to_string(), removed_instances });
        full
    }
}

impl DesiredViews {
    /// The answer to an agent holding view `base` when nothing changed for
    /// its host since (its long-poll ran out): an empty delta, made without
    /// reading the database; None when `base` is not the view this server
    /// last sent `host`, or that state was read [`RESYNC_EVERY`] ago or
    /// more (then the whole state is read, and a delta sent).
    pub fn unchanged(
        &self,
        server_id: &str,
        host: &str,
        base: &str,
        generation: u64,
        console_sessions: Vec<nubo_api::agent::DesiredConsoleSession>,
    ) -> Option<DesiredState> {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let last = sent.get_mut(host).filter(|s| s.view == base && s.read_at.elapsed() < RESYNC_EVERY)?;
        let view = format!("{server_id}.{}", self.counter.fetch_add(1, Ordering::Relaxed));
        last.view = view.clone();
        Some(DesiredState {
            generation,
            view: Some(view),
            delta: Some(DesiredDelta { base: base.to_string(), removed_instances: Vec::new() }),
            console_sessions,
            ..last.rest.clone()
        })
    }
}

/// A copy of `state` with no instances: the part of an answer that is
/// always sent whole.
fn without_instances(state: &DesiredState) -> DesiredState {
    DesiredState {
        generation: state.generation,
        instances: Vec::new(),
        volumes: state.volumes.clone(),
        snapshots: state.snapshots.clone(),
        balancers: state.balancers.clone(),
        networks: state.networks.clone(),
        console_sessions: state.console_sessions.clone(),
        view: state.view.clone(),
        delta: state.delta.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &InstanceId, vcpus: u32) -> DesiredInstance {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": "a", "image": "tiny", "vcpus": vcpus, "memory_mib": 256, "disk_gib": 1,
            "ports": [], "power": "running", "start_seq": 0, "reboot_count": 0
        }))
        .expect("a desired instance")
    }

    fn state(instances: Vec<DesiredInstance>) -> DesiredState {
        serde_json::from_value(serde_json::json!({ "generation": 1, "instances": instances })).expect("a desired state")
    }

    #[test]
    fn a_delta_holds_what_changed_and_names_what_is_gone_and_merges_back() {
        let views = DesiredViews::default();
        let (a, b, c) = (InstanceId::generate(), InstanceId::generate(), InstanceId::generate());
        let first = views.answer("s", "h", None, state(vec![instance(&a, 1), instance(&b, 1)]));
        assert!(first.delta.is_none());
        assert_eq!(first.instances.len(), 2);
        // b changes, a is gone, c is new.
        let second = views.answer("s", "h", first.view.as_deref(), state(vec![instance(&b, 2), instance(&c, 1)]));
        let delta = second.delta.clone().expect("a delta");
        assert_eq!(delta.removed_instances, vec![a.clone()]);
        let ids: Vec<&InstanceId> = second.instances.iter().map(|i| &i.id).collect();
        assert_eq!(ids, vec![&b, &c]);
        let merged = first.merge(second).expect("merges");
        let ids: Vec<(&InstanceId, u32)> = merged.instances.iter().map(|i| (&i.id, i.vcpus)).collect();
        assert_eq!(ids, vec![(&b, 2), (&c, 1)]);
        // Nothing changed: an empty delta.
        let third = views.answer("s", "h", merged.view.as_deref(), state(vec![instance(&b, 2), instance(&c, 1)]));
        assert!(third.instances.is_empty());
        assert!(third.delta.is_some());
    }

    #[test]
    fn nothing_changed_is_an_empty_delta_on_the_last_view_only() {
        let views = DesiredViews::default();
        let a = InstanceId::generate();
        let first = views.answer("s", "h", None, state(vec![instance(&a, 1)]));
        let view = first.view.clone().expect("a view");
        let quiet = views.unchanged("s", "h", &view, 5, Vec::new()).expect("the last view");
        assert!(quiet.instances.is_empty());
        assert_eq!(quiet.generation, 5);
        let merged = first.merge(quiet.clone()).expect("merges");
        assert_eq!(merged.instances.len(), 1, "the agent keeps what it holds");
        // The old view is no longer the last one, and another host's is not this one's.
        assert!(views.unchanged("s", "h", &view, 6, Vec::new()).is_none());
        assert!(views.unchanged("s", "other", quiet.view.as_deref().expect("a view"), 6, Vec::new()).is_none());
        // A delta then builds on the quiet answer's view.
        let next = views.answer("s", "h", quiet.view.as_deref(), state(vec![instance(&a, 2)]));
        assert_eq!(next.delta.expect("a delta").base, quiet.view.expect("a view"));
    }

    #[test]
    fn an_unknown_or_old_view_gets_the_whole_set() {
        let views = DesiredViews::default();
        let a = InstanceId::generate();
        let first = views.answer("s", "h", None, state(vec![instance(&a, 1)]));
        let _second = views.answer("s", "h", first.view.as_deref(), state(vec![instance(&a, 1)]));
        // The first view is no longer the last sent: whole again.
        let again = views.answer("s", "h", first.view.as_deref(), state(vec![instance(&a, 1)]));
        assert!(again.delta.is_none());
        assert_eq!(again.instances.len(), 1);
        // Another server's view (or one from before a restart).
        let other = views.answer("t", "h", Some("s.999"), state(vec![instance(&a, 1)]));
        assert!(other.delta.is_none());
        // A delta on a view the agent does not hold is refused.
        let held = state(vec![]);
        assert!(held.merge(views.answer("s", "h", other.view.as_deref(), state(vec![]))).is_err());
    }
}
