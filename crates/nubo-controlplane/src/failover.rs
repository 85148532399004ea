//! What happens to the instances of a host that stopped renewing its
//! lease (its heartbeat). Once it has been silent for the lease it is down
//! (the scheduler skips it); after as long again, each of its instances is
//! dealt with once:
//!
//! * its disks are on storage another up host shares: it moves to the
//!   best such host, and one that should run is started there from its
//!   disk (a new `start_seq`), with its address and volumes;
//! * otherwise it is marked `lost`, with the reason: its disks went down
//!   with the host.
//!
//! Each instance's failover is a saga (`sagas::failover`), so a server
//! that dies halfway through a round finishes it from the next one.
//!
//! The same round gives up on live migrations whose target never got
//! ready (`expire_unready_migrations`).
//!
//! Fencing. A host that is only cut off still runs its VMs, and two
//! copies on one shared disk would corrupt it (QEMU's image locks do not
//! cross hosts on NFS). So the heartbeat is a lease ([`Lease`]): the agent
//! stops its shared-storage VMs once it has not renewed it for `lease`
//! (counted from when it *sent* the last renewal that was answered), and
//! this round restarts them elsewhere only after `lease + margin` without a
//! renewal, counted from when *this server saw* the last one. Both count
//! on monotonic clocks, each its own: no wall clocks are compared, and
//! since the server sees a renewal after the agent sent it, the agent's
//! deadline always comes first; the margin is the time the agent has to
//! stop its VMs (a QEMU gets 5 s to quit before SIGKILL) plus the
//! granularity of its watchdog and of these rounds. The only assumption is
//! that the two clocks run at about the same rate (drift of parts per
//! million). Both numbers derive from the one `heartbeat_timeout`, and the
//! agent learns them from each heartbeat's answer, so they cannot disagree.

use crate::sagas::failover::{self as failover_saga, FailoverParams};
use crate::store::{now_ms, Size};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::views::InstanceState;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lease timing, all derived from the server's `heartbeat_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// How long a renewal keeps the host's VMs allowed to run.
    pub ttl: Duration,
}

/// The least time an agent gets, after its lease ran out, to have stopped
/// its VMs (QEMU's 5 s to quit before SIGKILL, with room to spare).
const MIN_FENCE_MARGIN: Duration = Duration::from_secs(10);

impl Lease {
    pub fn of(config: &crate::Config) -> Lease {
        Lease { ttl: config.heartbeat_timeout }
    }

    /// The time between the agent's deadline and the restart elsewhere:
    /// as long as the lease (the documented "silent twice as long"), and
    /// never less than the time an agent needs to stop its VMs.
    pub fn margin(&self) -> Duration {
        self.ttl.max(MIN_FENCE_MARGIN)
    }

    /// How long after the last renewal it saw this server may restart a
    /// host's instances elsewhere.
    pub fn restart_after(&self) -> Duration {
        self.ttl + self.margin()
    }

    /// What each heartbeat's answer tells the agent.
    pub fn ack(&self) -> nubo_api::agent::HeartbeatAck {
        nubo_api::agent::HeartbeatAck {
            lease_ms: self.ttl.as_millis() as u64,
            restart_after_ms: self.restart_after().as_millis() as u64,
        }
    }
}

/// When this server saw each host's last renewal, on its monotonic clock.
/// The database keeps each host's `last_heartbeat_ms` (written by whichever
/// server took the heartbeat); this notes when the value last changed as
/// seen from here. A server that just started, or just took the monitor
/// over, knows of no renewal before its first look, and so waits a full
/// `restart_after` from then: later than needed, never earlier.
#[derive(Debug, Default)]
pub struct Renewals {
    seen: Mutex<HashMap<String, (i64, Instant)>>,
}

impl Renewals {
    /// How long `host`, whose stored heartbeat is `last_heartbeat_ms`, has
    /// been silent as this server saw it at `now`.
    pub fn silent_for(&self, host: &str, last_heartbeat_ms: i64, now: Instant) -> Duration {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(host) {
            Some(&(value, at)) if value == last_heartbeat_ms => now.saturating_duration_since(at),
            _ => {
                seen.insert(host.to_string(), (last_heartbeat_ms, now));
                Duration::ZERO
            }
        }
    }

    /// Notes a renewal this server took itself (so it need not wait for
    /// its next look at the database).
    pub fn renewed(&self, host: &str, last_heartbeat_ms: i64, now: Instant) {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), (last_heartbeat_ms, now));
    }
}

/// Fails the live migrations whose target has not said it is ready within
/// the prepare timeout. Nothing has moved while a migration prepares (the
/// source starts copying only once the target is ready), so failing it is
/// safe: the instance runs on at the source, the target's claim is freed,
/// and the target removes its copy if it ever made one.
pub async fn expire_unready_migrations(ctx: &Ctx) -> Result<(), sqlx::Error> {
    let timeout = ctx.config.migration_prepare_timeout;
    let before = now_ms() - timeout.as_millis() as i64;
    for m in ctx.store.preparing_since(before).await? {
        let target = ctx.store.host(&m.target_host).await?.map(|h| h.name).unwrap_or_else(|| m.target_host.clone());
        let outcome = crate::migrations::Outcome {
            ok: false,
            error: Some(format!(
                "the target host {target} was not ready within {} s; check its agent (`nubo host list`, its log), then migrate again",
                timeout.as_secs()
            )),
            ..Default::default()
        };
        if ctx.store.finish_migration(&m.id, &m.target_host, &outcome).await?.is_some() {
            tracing::warn!(migration = %m.id, instance = %m.instance_id, target = %target,
                "live migration given up: its target never got ready");
            ctx.bump();
        }
    }
    Ok(())
}

/// One round: handles the instances of hosts that have not renewed their
/// lease for [`Lease::restart_after`] as this server saw it.
pub async fn run_once(ctx: &Ctx) -> Result<(), sqlx::Error> {
    expire_unready_migrations(ctx).await?;
    // The sagas a crash left under way go on first (see `sagas`).
    crate::sagas::migration::resume(ctx).await?;
    failover_saga::resume(ctx).await?;
    let restart_after = Lease::of(&ctx.config).restart_after();
    let now = Instant::now();
    let hosts = ctx.store.hosts().await?;
    let silent: Vec<_> =
        hosts.iter().filter(|h| ctx.renewals.silent_for(&h.id, h.last_heartbeat_ms, now) > restart_after).collect();
    for dead in silent {
        let instances = ctx.store.instances_on_host(&dead.id).await?;
        for row in instances.into_iter().filter(|r| !matches!(r.state, InstanceState::Lost | InstanceState::Terminated))
        {
            // One saga at a time per instance: one a crash left under way
            // was run on above.
            if failover_saga::unfinished(ctx, &row.id).await?.is_some() {
                continue;
            }
            let p = FailoverParams {
                instance_id: row.id.clone(),
                dead_host: dead.id.clone(),
                dead_name: dead.name.clone(),
                heartbeat_ms: dead.last_heartbeat_ms,
                shared_storage: dead.shared_storage.clone(),
                vcpus: row.vcpus as u32,
                memory_mib: row.memory_mib as u64,
                disk_gib: row.disk_gib as u64,
            };
            failover_saga::fail_over(ctx, &p).await?;
        }
        move_balancers(ctx, dead).await?;
    }
    Ok(())
}

/// A dead host's balancers on networks go to another up host that runs
/// networks (and maps their floating IP's external network), keeping their
/// address and floating IP: a balancer has no disk, so nothing is lost,
/// and the new host announces the floating IP. Balancers on a host's
/// 127.0.0.1 stay: their backends are that host's forwarded ports.
async fn move_balancers(ctx: &Ctx, dead: &crate::store::HostRow) -> Result<(), sqlx::Error> {
    for lb in ctx.store.lbs_on_host(&dead.id).await?.into_iter().filter(|l| l.network_id.is_some()) {
        let externals = match ctx.store.lb_floating_ip(&lb.id).await? {
            Some((_, external)) => ctx.store.external_names(&[external]).await?,
            None => Vec::new(),
        };
        let nothing = crate::placement::Demand { vcpus: 0, memory_mib: 0, disk_gib: 0 };
        let c = crate::placement::Constraints {
            underlay: true,
            externals: &externals,
            exclude: Some(&dead.id),
            ..crate::placement::Constraints::default()
        };
        let target = match crate::placement::choose(ctx, nothing, &c).await {
            Ok(choice) => choice.best.id,
            Err(crate::placement::Refusal::Db(e)) => return Err(e),
            Err(refusal) => {
                tracing::warn!(lb = %lb.id, host = %dead.id, %refusal, "a dead host's load balancer has nowhere to go; retrying next round");
                continue;
            }
        };
        if ctx.store.move_lb(&lb.id, &dead.id, dead.last_heartbeat_ms, &target).await? {
            tracing::info!(lb = %lb.id, from = %dead.id, to = %target, "load balancer moved off a host that stopped reporting");
            ctx.bump();
        }
    }
    Ok(())
}

impl crate::store::Store {
    /// Moves an instance of a dead host to `target` (capacity claimed under
    /// `limits`, the dead host's freed), with its volumes; a running one is
    /// started there. False when the target had no room, it moved already,
    /// or the dead host renewed its lease since `dead` was read (its
    /// `last_heartbeat_ms` changed): then it is alive and kept its VMs.
    pub async fn restart_elsewhere(
        &self,
        row: &crate::store::InstanceRow,
        dead_host: &crate::store::HostRow,
        target: &str,
        limits: Size,
    ) -> Result<bool, sqlx::Error> {
        let dead = dead_host.id.as_str();
        let mut tx = self.begin().await?;
        if !crate::store::claim_capacity(&mut tx, target, Size::of(row), limits).await? {
            // Another claim filled it: the index reads it again.
            self.changed_hosts.mark(target);
            return Ok(false);
        }
        let now = now_ms();
        let start = i64::from(row.desired == PowerState::Running);
        let moved = sqlx::query(
            "UPDATE instances SET host_id = $1, start_seq = start_seq + $2,
               state = CASE WHEN desired = 'running' THEN 'pending' ELSE state END, error = NULL, updated_at_ms = $3
             WHERE id = $4 AND host_id = $5
               AND (SELECT last_heartbeat_ms FROM hosts WHERE id = $5) = $6",
        )
        .bind(target)
        .bind(start)
        .bind(now)
        .bind(&row.id)
        .bind(dead)
        .bind(dead_host.last_heartbeat_ms)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        crate::store::release_capacity(&mut tx, dead, Size::of(row)).await?;
        sqlx::query("UPDATE volumes SET host_id = $1 WHERE instance_id = $2")
            .bind(target)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        // Forwarded ports belonged to the dead host's 127.0.0.1.
        sqlx::query("DELETE FROM instance_ports WHERE instance_id = $1").bind(&row.id).execute(&mut *tx).await?;
        crate::store::insert_event(
            &mut tx,
            &row.id,
            now,
            "restarted_elsewhere",
            &format!("{dead} stopped reporting; now on {target}"),
        )
        .await?;
        tx.commit().await?;
        self.changed_hosts.mark(target);
        self.changed_hosts.mark(dead);
        Ok(true)
    }

    /// Marks an instance of a dead host lost, with why.
    pub async fn mark_lost(&self, id: &str, reason: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE instances SET state = 'lost', error = $1, updated_at_ms = $2 WHERE id = $3 AND state <> 'lost'",
        )
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            crate::store::insert_event(&mut tx, id, now, "lost", reason).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_timing_derives_from_the_heartbeat_timeout() {
        let mut config = crate::Config::new(std::path::PathBuf::from("/nonexistent"));
        config.heartbeat_timeout = Duration::from_secs(30);
        let lease = Lease::of(&config);
        assert_eq!(lease.ttl, Duration::from_secs(30));
        assert_eq!(lease.restart_after(), Duration::from_secs(60), "silent twice as long");
        let ack = lease.ack();
        assert_eq!((ack.lease_ms, ack.restart_after_ms), (30_000, 60_000));
        // A short lease still leaves the agent time to stop its VMs.
        config.heartbeat_timeout = Duration::from_secs(3);
        let lease = Lease::of(&config);
        assert_eq!(lease.margin(), MIN_FENCE_MARGIN);
        assert_eq!(lease.restart_after(), Duration::from_secs(13));
        // The agent's deadline (from when it sent the renewal) comes a
        // whole margin before the server's (from when it saw it).
        for ttl in [11, 15, 30, 300] {
            config.heartbeat_timeout = Duration::from_secs(ttl);
            let lease = Lease::of(&config);
            assert!(lease.restart_after() >= lease.ttl + MIN_FENCE_MARGIN, "{ttl}");
        }
    }

    #[test]
    fn silence_counts_from_the_last_change_this_server_saw() {
        let r = Renewals::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // First look: no renewal known before it, so silence starts now.
        assert_eq!(r.silent_for("h", 1000, t0), Duration::ZERO);
        assert_eq!(r.silent_for("h", 1000, t0 + s(20)), s(20));
        // A renewal (by any server) shows as a new stored value.
        assert_eq!(r.silent_for("h", 1001, t0 + s(21)), Duration::ZERO);
        assert_eq!(r.silent_for("h", 1001, t0 + s(50)), s(29));
        // One this server took itself counts at once.
        r.renewed("h", 2000, t0 + s(55));
        assert_eq!(r.silent_for("h", 2000, t0 + s(56)), s(1));
        // Hosts are apart; a clock read out of order never underflows.
        assert_eq!(r.silent_for("other", 5, t0 + s(60)), Duration::ZERO);
        assert_eq!(r.silent_for("h", 2000, t0), Duration::ZERO);
    }
}
