//! The host's lease with the control plane: the heartbeat that renews it,
//! and the fence that stops this host's VMs when it cannot.
//!
//! The control plane restarts the instances of a silent host on another
//! host that shares its storage. A host that is only cut off would then
//! run a second copy on the same disk. So the heartbeat is a lease: its
//! answer says how long it lasts (`lease`) and when the control plane may
//! restart this host's instances elsewhere (`restart_after`, counted from
//! when the server saw the renewal, which is after this agent sent it).
//! When no renewal has been answered for `lease`, counted from when the
//! last answered one was *sent*, on this host's monotonic clock, the agent
//! kills its VMs and starts none until a renewal is answered again; it
//! keeps killing any it finds for half the margin, and then stops looking
//! (another host may by then run them on the same disk, and on a machine
//! where both hosts share a pid namespace, as in tests, their QEMU could
//! look like ours).
//!
//! Only hosts with shared storage fence: without it the control plane
//! never restarts their instances elsewhere (it marks them lost), so
//! stopping them would only add an outage. On a host with shared storage,
//! every instance's disks live there, so all its VMs are stopped.

use crate::host::Host;
use crate::instances::Instances;
use nubo_api::agent::{HeartbeatAck, RegisterHost};
use nubo_hypervisor::VmStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease assumed before the first answer: the shortest a server
/// allows (`nubo server --heartbeat-timeout-secs` is at least 11), so an
/// agent that restarts during a partition still stops its VMs in time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(11);
/// The margin assumed before the first answer (the server's least).
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(10);
/// How often the watchdog looks at the lease.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(250);

/// Where the host stands with its lease at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Renewed within the lease: VMs may run and start.
    Live,
    /// The lease ran out: kill every VM of this host, start none.
    Fencing,
    /// Fenced, and the kill window is over: start none, kill no more.
    Fenced,
}

/// The lease as this agent knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// When the last answered renewal was sent (or the agent started).
    pub renewed_at: Instant,
    pub lease: Duration,
    /// The control plane's margin after the lease before a restart elsewhere.
    pub margin: Duration,
}

impl LeaseTiming {
    pub fn phase(&self, now: Instant) -> Phase {
        let silent = now.saturating_duration_since(self.renewed_at);
        if silent < self.lease {
            Phase::Live
        } else if silent < self.lease + self.margin / 2 {
            Phase::Fencing
        } else {
            Phase::Fenced
        }
    }

    /// How often to renew: several times per lease, so that one slow or
    /// lost heartbeat does not fence the host.
    pub fn renew_every(&self) -> Duration {
        (self.lease / 4).clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Takes an answer to a renewal sent at `sent`.
    pub fn renewed(&mut self, sent: Instant, ack: &HeartbeatAck) {
        // Answers can arrive out of order; the latest send counts.
        self.renewed_at = self.renewed_at.max(sent);
        self.lease = Duration::from_millis(ack.lease_ms);
        self.margin = Duration::from_millis(ack.restart_after_ms.saturating_sub(ack.lease_ms));
    }
}

/// The lease, shared by the heartbeat, the watchdog and the reconciler.
#[derive(Debug)]
pub struct Lease {
    timing: Mutex<LeaseTiming>,
    /// False on hosts without shared storage (they never fence).
    fences: bool,
    /// Heartbeats that failed or timed out since the agent started: the
    /// reporter sends every entry again after any (see `report`).
    failures: std::sync::atomic::AtomicU64,
}

impl Lease {
    /// A lease counted from now (the agent has just registered).
    pub fn new(fences: bool) -> Lease {
        Lease {
            timing: Mutex::new(LeaseTiming {
                renewed_at: Instant::now(),
                lease: DEFAULT_LEASE,
                margin: DEFAULT_MARGIN,
            }),
            fences,
            failures: Default::default(),
        }
    }

    /// Heartbeats that failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn failed(&self) {
        self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn timing(&self) -> LeaseTiming {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn renewed(&self, sent: Instant, ack: &HeartbeatAck) {
        self.timing.lock().unwrap_or_else(|p| p.into_inner()).renewed(sent, ack);
    }

    /// The phase now; always live on a host that does not fence.
    pub fn phase(&self) -> Phase {
        if self.fences {
            self.timing().phase(Instant::now())
        } else {
            Phase::Live
        }
    }

    /// Whether VMs may start now.
    pub fn may_start(&self) -> bool {
        self.phase() == Phase::Live
    }

    pub fn fences(&self) -> bool {
        self.fences
    }

    /// Renews the lease every [`LeaseTiming::renew_every`], each try
    /// bounded by that too, so one hung request never holds up the next.
    pub(crate) async fn heartbeat_loop(self: Arc<Self>, host: Arc<Host>, registration: RegisterHost) {
        loop {
            let every = self.timing().renew_every();
            let sent = Instant::now();
            match tokio::time::timeout(every, host.client.heartbeat(&host.id)).await {
                Ok(Ok(ack)) => {
                    let was = self.phase();
                    self.renewed(sent, &ack);
                    if was != Phase::Live {
                        tracing::warn!(
                            "lease renewed: back in touch with the control plane; VMs stopped meanwhile stay \
                             stopped (or run on another host now)"
                        );
                    }
                }
                Ok(Err(e)) => {
                    self.failed();
                    tracing::warn!(error = %e, "heartbeat failed; retrying");
                    if e.status() == Some(404) {
                        // The control plane forgot this host (new database): join again.
                        let _ = host.client.register(&registration).await;
                    }
                }
                Err(_) => {
                    self.failed();
                    tracing::warn!(after = ?every, "heartbeat timed out; retrying");
                }
            }
            tokio::time::sleep_until((sent + every).into()).await;
        }
    }

    /// Watches the lease; while it is [`Phase::Fencing`], kills every VM
    /// of this host's instances (again at each tick, in case a start was
    /// under way).
    pub(crate) async fn fence_loop(self: Arc<Self>, host: Arc<Host>, instances: Arc<Instances>) {
        if !self.fences() {
            return;
        }
        let mut fencing = false;
        loop {
            tokio::time::sleep(WATCHDOG_TICK).await;
            let phase = self.phase();
            if phase == Phase::Fencing && !fencing {
                let t = self.timing();
                tracing::error!(
                    silent_secs = t.renewed_at.elapsed().as_secs(),
                    lease_secs = t.lease.as_secs(),
                    "lease expired: the control plane has not answered a heartbeat within the lease, and may \
                     restart this host's instances on another host sharing its storage; stopping their VMs here \
                     so that no disk has two writers"
                );
            }
            fencing = phase == Phase::Fencing;
            if fencing {
                fence(&host, &instances).await;
            }
        }
    }
}

/// Kills the running VMs of the instances this host last had.
async fn fence(host: &Host, instances: &Instances) {
    let ids: Vec<_> =
        instances.with_desired(|d| d.iter().flat_map(|d| d.instances.iter().map(|i| i.id.clone())).collect());
    for id in ids {
        let dir = host.dir(&id);
        let VmStatus::Running { pid, .. } = host.hypervisor.status(&dir).await else { continue };
        match host.hypervisor.kill(&dir).await {
            Ok(()) => {
                tracing::warn!(instance = %id, pid, "VM stopped: fenced (lease expired)");
                instances.event(
                    &id,
                    "fenced",
                    "its host lost touch with the control plane for longer than the lease; the VM was \
                     stopped so that it cannot run twice on its shared disk",
                );
            }
            Err(e) => tracing::error!(instance = %id, pid, error = %e, "cannot stop a fenced VM; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_last_answered_renewal() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = LeaseTiming { renewed_at: t0, lease: s(30), margin: s(30) };
        assert_eq!(t.phase(t0), Phase::Live);
        assert_eq!(t.phase(t0 + s(29)), Phase::Live);
        assert_eq!(t.phase(t0 + s(30)), Phase::Fencing);
        assert_eq!(t.phase(t0 + s(44)), Phase::Fencing);
        assert_eq!(t.phase(t0 + s(45)), Phase::Fenced);
        // The server's numbers replace the defaults; a late answer to an
        // older renewal does not move the lease back.
        t.renewed(t0 + s(40), &HeartbeatAck { lease_ms: 11_000, restart_after_ms: 21_000 });
        assert_eq!((t.lease, t.margin), (s(11), s(10)));
        t.renewed(t0 + s(35), &HeartbeatAck { lease_ms: 11_000, restart_after_ms: 21_000 });
        assert_eq!(t.renewed_at, t0 + s(40));
        assert_eq!(t.phase(t0 + s(50)), Phase::Live);
        assert_eq!(t.phase(t0 + s(51)), Phase::Fencing);
        assert_eq!(t.phase(t0 + s(56)), Phase::Fenced);
        // The kill window ends before the server may restart elsewhere
        // (lease + margin from a moment no earlier than the send).
        assert!(s(11) + s(10) / 2 < s(11) + s(10));
        // A clock read before the renewal never underflows.
        assert_eq!(t.phase(t0), Phase::Live);
    }

    #[test]
    fn renewals_come_several_times_a_lease() {
        let t = |lease| LeaseTiming { renewed_at: Instant::now(), lease, margin: lease };
        assert_eq!(t(Duration::from_secs(11)).renew_every(), Duration::from_millis(2750));
        assert_eq!(t(Duration::from_secs(300)).renew_every(), Duration::from_secs(10));
        assert_eq!(t(Duration::from_secs(1)).renew_every(), Duration::from_millis(500));
    }

    #[test]
    fn hosts_without_shared_storage_never_fence() {
        let l = Lease::new(false);
        l.timing.lock().unwrap().renewed_at = Instant::now() - Duration::from_secs(3600);
        assert_eq!(l.phase(), Phase::Live);
        let l = Lease::new(true);
        l.timing.lock().unwrap().renewed_at = Instant::now() - Duration::from_secs(3600);
        assert_eq!(l.phase(), Phase::Fenced);
        assert!(!l.may_start());
    }
}
