//! The audit log's retention and the server's own request budgets: at a
//! quarter of the retention (between half a second and an hour), entries
//! past it are deleted, and the sign-in guard's and rate limiters' idle
//! keys are dropped. Runs on every server: the limiters are each server's
//! own memory, and a deletion done twice deletes nothing more.

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct AuditRetention {
    retention: Duration,
}

impl AuditRetention {
    pub fn of(config: &crate::Config) -> Self {
        Self { retention: config.audit_retention }
    }
}

impl Task for AuditRetention {
    fn info(&self) -> Info {
        Info {
            name: "audit_retention",
            about: "deletes audit entries past --audit-retention; forgets idle sign-in and rate-limit keys",
            scope: Scope::Server,
            every: (self.retention / 4).clamp(Duration::from_millis(500), Duration::from_secs(3600)),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            ctx.signin.prune();
            ctx.anonymous_audit.retain_recent();
            ctx.anonymous_audit.shrink_to_fit();
            ctx.limiter.retain_recent();
            let n = crate::audit::prune(ctx, self.retention)
                .await
                .map_err(|e| TaskError::new("cannot delete old audit entries", e))?;
            if n > 0 {
                tracing::info!(entries = n, "audit entries past their retention deleted");
            }
            Ok(())
        })
    }
}
