//! Alert rules: every couple of seconds, the hosts' heartbeat checks are
//! judged, then every alert rule is evaluated (pending, firing, resolved;
//! each change queues its notification for `webhooks`).

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct AlertRules;

/// One round: heartbeat checks, then the rules. The checks come first
/// because a rule on a host's liveness check reads the state they set.
pub async fn evaluate(ctx: &Ctx) -> Result<(), sqlx::Error> {
    let timeout = ctx.config.heartbeat_timeout.as_millis() as i64;
    for (c, t) in ctx.store.run_heartbeat_checks(timeout).await? {
        let msg = format!("check {} on {} is {} ({}): {}", c.name, c.target, t.state, t.state_type, c.output);
        ctx.store.event(None, &c.target, "check_state", &msg).await?;
    }
    ctx.store.evaluate_alerts().await?;
    Ok(())
}

impl Task for AlertRules {
    fn info(&self) -> Info {
        Info {
            name: "alert_rules",
            about: "judges the hosts' heartbeat checks, then evaluates every alert rule",
            scope: Scope::Cluster,
            every: Duration::from_secs(2),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move { evaluate(ctx).await.map_err(|e| TaskError::new("cannot evaluate the alert rules", e)) })
    }
}
