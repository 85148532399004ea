//! Backups' periodic work, every 15 seconds: running backups whose host
//! went silent are failed, due plans queue their backups, completed
//! backups are verified (`app::backup_verification`), each plan's
//! retention deletes the backups it no longer keeps, and the repositories
//! that lost backups are pruned (see `app::backups`). Pruning runs beside
//! the round, not in it, so a long prune holds up no other task; the
//! repository's prune mark keeps two prunes, and backups, out meanwhile.

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::app::backups as app;
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct Backups;

/// One round at `now` (ms); returns the repositories handed to pruning.
pub async fn round(ctx: &Arc<Ctx>, now: i64) -> Result<Vec<String>, TaskError> {
    app::expire(ctx, now).await.map_err(|e| TaskError::new("cannot fail the backups of silent hosts", e))?;
    app::fire_due_plans(ctx, now).await.map_err(|e| TaskError::new("cannot queue the due plans' backups", e))?;
    crate::app::backup_verification::step(ctx, now)
        .await
        .map_err(|e| TaskError::new("cannot advance the backups' verifications", e))?;
    let touched =
        app::apply_retention(ctx).await.map_err(|e| TaskError::new("cannot apply the plans' retention", e))?;
    for repo in &touched {
        let (ctx, repo) = (ctx.clone(), repo.clone());
        tokio::spawn(async move {
            if let Err(e) = app::prune(&ctx, &repo).await {
                tracing::warn!(repository = %repo, error = %e, "backup repository not pruned");
            }
        });
    }
    Ok(touched)
}

impl Task for Backups {
    fn info(&self) -> Info {
        Info {
            name: "backups",
            about: "queues due backup plans, verifies backups, applies their retention, prunes repositories, fails silent backups",
            scope: Scope::Cluster,
            every: Duration::from_secs(15),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move { round(ctx, crate::store::now_ms()).await.map(|_| ()) })
    }
}
