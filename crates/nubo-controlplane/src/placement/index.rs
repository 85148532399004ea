//! The server's index of hosts by free capacity (`nubo_scheduler::HostIndex`),
//! so that a placement reads a few rows instead of every host.
//!
//! It is a cache of the hosts table. It is built from the table on first
//! use and read again in full every [`Index::reload_every`]
//! (`Config::placement_reload`, 10 s, or a third of the heartbeat timeout
//! if shorter): that is how changes made
//! by other servers on the same database, and hosts coming back up, reach
//! it. Between full reads, a host this server changed (a claim or a
//! release, a registration, an enable or disable) is marked in
//! [`ChangedHosts`] and its one row is read again before the next choice;
//! so is a host whose claim failed (another server or a race moved it),
//! and a chosen host whose last heartbeat, as read, is now too old.
//!
//! A stale index can only cost a retry, never an overshoot: the claim in
//! the database stays the source of truth, one conditional UPDATE that
//! re-checks `used + asked <= limit` against the row as it is
//! (`store::claim_capacity`, `volumes::claim_pool`). A host the index
//! thinks emptier than it is makes that claim fail, and the caller moves
//! to the next candidate; one it thinks fuller than it is is passed over
//! until its row is read again. Refusals are never given from the cache:
//! before saying no, the index is read again in full.

use crate::store::HostRow;
use crate::Ctx;
use nubo_scheduler::{Constraints, HostIndex, HostSnapshot, Need, Refusal};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many hosts a choice offers (the best and its alternatives): a
/// launch tries them in turn when concurrent claims win, then chooses
/// again.
pub const ALTERNATIVES: usize = 8;

/// More changed hosts than this since the last choice: read them all at once.
const ROWS_BEFORE_A_RELOAD: usize = 64;

/// Hosts whose row this server changed since the index last read them.
#[derive(Debug, Default)]
pub struct ChangedHosts(Mutex<HashSet<String>>);

impl ChangedHosts {
    pub fn mark(&self, host: &str) {
        if let Ok(mut set) = self.0.lock() {
            set.insert(host.to_string());
        }
    }

    fn take(&self) -> HashSet<String> {
        self.0.lock().map(|mut set| std::mem::take(&mut *set)).unwrap_or_default()
    }
}

/// A host as the scheduler sees it: `up` when enabled and heard from
/// within the heartbeat timeout at `now_ms`.
pub(crate) fn snapshot(h: HostRow, now_ms: i64, timeout_ms: i64) -> HostSnapshot {
    HostSnapshot {
        up: h.enabled == 1 && now_ms - h.last_heartbeat_ms <= timeout_ms,
        id: h.id,
        name: h.name,
        vcpus: h.vcpus as u32,
        memory_mib: h.memory_mib as u64,
        disk_gib: h.disk_gib as u64,
        used_vcpus: h.used_vcpus as u32,
        used_memory_mib: h.used_memory_mib as u64,
        used_disk_gib: h.used_disk_gib as u64,
        underlay: h.underlay.is_some(),
        shared_storage: h.shared_storage,
        externals: h.externals.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect(),
    }
}

struct Loaded {
    hosts: HostIndex,
    at: Instant,
    /// Each host's last heartbeat as read (by position), to tell when a
    /// host that was up may since have gone down.
    heartbeats: Vec<i64>,
}

/// The hosts as this server last read them, indexed for placement.
#[derive(Default)]
pub struct Index {
    loaded: Mutex<Option<Loaded>>,
    /// Full reads so far (tests tell a row re-read from a reload by it).
    reloads: AtomicU64,
}

impl Index {
    /// How old the index may grow before it is read again in full.
    pub fn reload_every(ctx: &Ctx) -> Duration {
        (ctx.config.heartbeat_timeout / 3).min(ctx.config.placement_reload)
    }

    /// How many times the index was read in full.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The hosts as the index holds them (for tests and checks), in its
    /// tie-break order.
    pub fn hosts(&self) -> Vec<HostSnapshot> {
        self.lock().as_ref().map(|l| l.hosts.hosts().to_vec()).unwrap_or_default()
    }

    /// Forgets everything: the next choice reads every host.
    pub fn invalidate(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Loaded>> {
        // A panic while holding the lock leaves a consistent index (each
        // update is applied whole), so a poisoned lock is used as is.
        self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Brings the index up to date with this server's changes (or reads it
    /// in full when it is old or was never read).
    pub async fn refresh(&self, ctx: &Ctx) -> Result<(), sqlx::Error> {
        let fresh = self.lock().as_ref().is_some_and(|l| l.at.elapsed() < Self::reload_every(ctx));
        let changed = ctx.store.changed_hosts.take();
        if !fresh || changed.len() > ROWS_BEFORE_A_RELOAD {
            return self.reload(ctx).await;
        }
        self.reread(ctx, changed).await
    }

    /// Reads every host again.
    pub async fn reload(&self, ctx: &Ctx) -> Result<(), sqlx::Error> {
        // Marks made from here on are applied by the next choice.
        ctx.store.changed_hosts.take();
        let rows = ctx.store.hosts().await?;
        let (now, timeout) = (crate::store::now_ms(), heartbeat_timeout_ms(ctx));
        let heartbeats = rows.iter().map(|r| r.last_heartbeat_ms).collect();
        let hosts = rows.into_iter().map(|r| snapshot(r, now, timeout)).collect();
        let hosts = HostIndex::new(hosts, ctx.config.policy);
        *self.lock() = Some(Loaded { hosts, at: Instant::now(), heartbeats });
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reads these hosts' rows again (one query each).
    async fn reread(&self, ctx: &Ctx, ids: HashSet<String>) -> Result<(), sqlx::Error> {
        for id in ids {
            let row = ctx.store.host(&id).await?;
            let mut guard = self.lock();
            let Some(loaded) = guard.as_mut() else { return Ok(()) };
            match row {
                Some(row) => {
                    let heartbeat = row.last_heartbeat_ms;
                    loaded.hosts.push(snapshot(row, crate::store::now_ms(), heartbeat_timeout_ms(ctx)));
                    if let Some(i) = loaded.hosts.position(&id) {
                        match loaded.heartbeats.get_mut(i) {
                            Some(h) => *h = heartbeat,
                            None => loaded.heartbeats.push(heartbeat),
                        }
                    }
                }
                // A host removed: the next full read drops it; until then
                // it is kept out of every choice.
                None => {
                    if let Some(mut gone) = loaded.hosts.get(&id).cloned() {
                        gone.up = false;
                        gone.used_vcpus = u32::MAX;
                        gone.used_memory_mib = u64::MAX;
                        gone.used_disk_gib = u64::MAX;
                        loaded.hosts.update(gone);
                    }
                }
            }
        }
        Ok(())
    }

    /// The best few hosts for the need (at most [`ALTERNATIVES`]), or a
    /// refusal made from a full read of the hosts.
    pub async fn choose(
        &self,
        ctx: &Ctx,
        need: &Need,
        c: &Constraints<'_>,
    ) -> Result<Result<Vec<HostSnapshot>, Refusal>, sqlx::Error> {
        self.refresh(ctx).await?;
        let mut reloaded = false;
        for _ in 0..3 {
            match self.choose_cached(ctx, need, c, true) {
                Ok(Ok(hosts)) => return Ok(Ok(hosts)),
                Ok(Err(refusal)) if reloaded => return Ok(Err(refusal)),
                Ok(Err(_)) => {
                    self.reload(ctx).await?;
                    reloaded = true;
                }
                Err(aged) => self.reread(ctx, aged).await?,
            }
        }
        // Hosts still aging as they are read: the rows just read decide.
        self.reload(ctx).await?;
        Ok(self.choose_cached(ctx, need, c, false).unwrap_or_else(|_| Ok(Vec::new())))
    }

    /// The index's answer, or (when `heartbeats` are checked) the chosen
    /// hosts whose heartbeat, as read, is now older than the timeout: to
    /// read again before trusting them.
    #[allow(clippy::type_complexity)] // an answer, inside "trust it or re-read these"
    fn choose_cached(
        &self,
        ctx: &Ctx,
        need: &Need,
        c: &Constraints<'_>,
        heartbeats: bool,
    ) -> Result<Result<Vec<HostSnapshot>, Refusal>, HashSet<String>> {
        let guard = self.lock();
        let Some(loaded) = guard.as_ref() else {
            return Ok(Err(Refusal { rejections: Vec::new() }));
        };
        let chosen = match loaded.hosts.choose(need, c, ALTERNATIVES) {
            Ok(chosen) => chosen,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let now = crate::store::now_ms();
        let timeout = heartbeat_timeout_ms(ctx);
        let aged: HashSet<String> = chosen
            .iter()
            .filter(|h| heartbeats && h.up && c.require_up)
            .filter(|h| {
                let i = loaded.hosts.position(&h.id);
                i.and_then(|i| loaded.heartbeats.get(i)).is_none_or(|&beat| now - beat > timeout)
            })
            .map(|h| h.id.clone())
            .collect();
        if !aged.is_empty() {
            return Err(aged);
        }
        Ok(Ok(chosen.into_iter().cloned().collect()))
    }
}

fn heartbeat_timeout_ms(ctx: &Ctx) -> i64 {
    ctx.config.heartbeat_timeout.as_millis() as i64
}
