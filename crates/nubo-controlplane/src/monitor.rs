//! The control plane's own monitoring work, on timers: rolling up and
//! expiring metrics (every minute), judging host heartbeats and
//! evaluating alert rules (every couple of seconds), and handing due
//! webhook notifications to their delivery task (every second; the task
//! POSTs them, see `webhooks`, so no webhook can hold these rounds up),
//! and automation: service policies and instance groups (every 2 s).
//! One task per server; each round is a plain function so tests can run
//! one round and look. With several servers on one database, only the
//! holder of the `monitor` lease runs the rounds (see `leases`); the others
//! wait, and take over within `LEASE_TTL` of the holder's death.

use crate::Ctx;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROLLUP_EVERY: Duration = Duration::from_secs(60);
const EVALUATE_EVERY: Duration = Duration::from_secs(2);
const DELIVER_EVERY: Duration = Duration::from_secs(1);
/// The lease's name and lifetime. The holder renews it every round (about
/// a second), so this is also how long the others wait after it dies;
/// it is much longer than a round takes, or a slow round would let a
/// second server start the same work.
pub const LEASE: &str = "monitor";
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// One round of heartbeat checks and alert evaluation.
pub async fn evaluate(ctx: &Ctx) -> Result<(), sqlx::Error> {
    let timeout = ctx.config.heartbeat_timeout.as_millis() as i64;
    for (c, t) in ctx.store.run_heartbeat_checks(timeout).await? {
        let msg = format!("check {} on {} is {} ({}): {}", c.name, c.target, t.state, t.state_type, c.output);
        ctx.store.event(None, &c.target, "check_state", &msg).await?;
    }
    ctx.store.evaluate_alerts().await?;
    Ok(())
}

/// One round of automation: policies (judged, then their firings
/// advanced) and groups (kept at their counts).
pub async fn automate(ctx: &Arc<Ctx>) -> Result<(), sqlx::Error> {
    crate::policies::run_round(ctx).await?;
    crate::groups::reconcile(ctx).await
}

/// The lease holder's name: this machine and data directory, so that a
/// restarted server takes its own lease back at once instead of waiting
/// for its predecessor's to expire, while servers elsewhere (or in
/// another data directory) are other holders.
pub fn lease_holder(config: &crate::Config) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", hostname.trim(), config.data_dir.display())
}

/// Gives the monitor's lease up (a server stopping), so another server
/// takes the rounds over at its next round instead of after `LEASE_TTL`.
pub async fn release(ctx: &Ctx) {
    if ctx.store.backend() != crate::store::Backend::Postgres {
        return;
    }
    match ctx.store.release_lease(LEASE, &lease_holder(&ctx.config)).await {
        Ok(()) => tracing::info!("gave up the monitor lease"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot give up the monitor lease; another server takes it when it expires")
        }
    }
}

/// Runs until the process ends.
pub async fn run(ctx: Arc<Ctx>) {
    let dispatcher = match crate::webhooks::WebhookClient::new(&ctx.config.webhook_allow) {
        Ok(client) => Some(crate::webhooks::Dispatcher::start(ctx.store.clone(), client)),
        Err(e) => {
            // Alerts, automation and failover still run; only webhooks stop.
            tracing::error!(error = %e, "cannot build the webhook client; notifications will not be delivered");
            None
        }
    };
    let mut last_rollup: Option<Instant> = None;
    let mut last_eval: Option<Instant> = None;
    let holder = lease_holder(&ctx.config);
    let mut leading = false;
    loop {
        // SQLite is one server's own file: no lease, as before leases.
        let held = match ctx.store.backend() {
            crate::store::Backend::Sqlite => Ok(true),
            crate::store::Backend::Postgres => {
                ctx.store.take_lease(LEASE, &holder, LEASE_TTL.as_millis() as i64, crate::store::now_ms()).await
            }
        };
        match held {
            Ok(held) => {
                if held != leading && ctx.store.backend() == crate::store::Backend::Postgres {
                    if held {
                        tracing::info!(holder = %holder, "this server now runs the monitor's rounds");
                    } else {
                        tracing::info!(holder = %holder, "another server runs the monitor's rounds");
                    }
                }
                leading = held;
            }
            Err(e) => {
                // Unknown: skip rather than risk running twice.
                tracing::warn!(error = %e, "cannot take or renew the monitor lease; skipping this round");
                leading = false;
            }
        }
        if !leading {
            tokio::time::sleep(DELIVER_EVERY).await;
            continue;
        }
        if last_rollup.is_none_or(|t| t.elapsed() >= ROLLUP_EVERY) {
            last_rollup = Some(Instant::now());
            match ctx.store.rollup_and_expire(&ctx.config.retention, crate::store::now_ms()).await {
                Ok(n) => tracing::debug!(rollups = n, "metrics rolled up"),
                Err(e) => tracing::warn!(error = %e, "metrics rollup failed; retrying next minute"),
            }
        }
        if last_eval.is_none_or(|t| t.elapsed() >= EVALUATE_EVERY) {
            last_eval = Some(Instant::now());
            if let Err(e) = evaluate(&ctx).await {
                tracing::warn!(error = %e, "alert evaluation failed");
            }
            if let Err(e) = automate(&ctx).await {
                tracing::warn!(error = %e, "policy or group round failed");
            }
            if let Err(e) = crate::failover::run_once(&ctx).await {
                tracing::warn!(error = %e, "down-host round failed");
            }
        }
        if let Some(d) = &dispatcher {
            if let Err(e) = d.enqueue_due(&ctx.store).await {
                tracing::warn!(error = %e, "cannot hand notifications to the webhook task; retrying next round");
            }
        }
        tokio::time::sleep(DELIVER_EVERY).await;
    }
}
