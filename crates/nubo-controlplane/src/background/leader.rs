//! Which server runs the cluster-wide tasks. With several servers on one
//! database only the holder of the `monitor` lease runs them (see
//! `leases`); the others wait, and take over within [`LEASE_TTL`] of the
//! holder's death, or at once when it gives the lease up at shutdown.
//! With SQLite (one server's own file) this server always runs them.

use crate::store::Backend;
use crate::Ctx;
use std::time::Duration;

/// The lease's name. It is still the monitor's, the loop these tasks
/// came from: a server of the previous release and one of this release on
/// the same database must compete for the same lease, or both would run
/// the tasks during an upgrade.
pub const LEASE: &str = "monitor";
/// The lease's lifetime. The holder renews it every round (about a
/// second), so this is also how long the others wait after it dies; it is
/// much longer than a round takes, or a slow round would let a second
/// server start the same work.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// The lease holder's name: this machine and data directory, so that a
/// restarted server takes its own lease back at once instead of waiting
/// for its predecessor's to expire, while servers elsewhere (or in
/// another data directory) are other holders.
pub fn lease_holder(config: &crate::Config) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", hostname.trim(), config.data_dir.display())
}

/// Takes or renews the lease for `holder`; true when this server is to
/// run the cluster-wide tasks this round.
pub async fn take(ctx: &Ctx, holder: &str) -> Result<bool, sqlx::Error> {
    match ctx.store.backend() {
        Backend::Sqlite => Ok(true),
        Backend::Postgres => {
            ctx.store.take_lease(LEASE, holder, LEASE_TTL.as_millis() as i64, crate::store::now_ms()).await
        }
    }
}

/// The server running the cluster-wide tasks now: the lease's live holder
/// (none while nobody holds it), or this server on SQLite.
pub async fn current(ctx: &Ctx) -> Result<Option<String>, sqlx::Error> {
    match ctx.store.backend() {
        Backend::Sqlite => Ok(Some(lease_holder(&ctx.config))),
        Backend::Postgres => Ok(ctx
            .store
            .lease(LEASE)
            .await?
            .filter(|(_, expires_at_ms)| *expires_at_ms > crate::store::now_ms())
            .map(|(holder, _)| holder)),
    }
}

/// Gives the lease up (a server stopping), so another server takes the
/// cluster-wide tasks over at its next round instead of after `LEASE_TTL`.
pub async fn release(ctx: &Ctx) {
    if ctx.store.backend() != Backend::Postgres {
        return;
    }
    match ctx.store.release_lease(LEASE, &lease_holder(&ctx.config)).await {
        Ok(()) => tracing::info!("gave up the monitor lease"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot give up the monitor lease; another server takes it when it expires")
        }
    }
}
