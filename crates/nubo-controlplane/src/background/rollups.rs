//! Metric rollups: every minute, complete minutes of raw samples become
//! rollups (min, max, sum, count) and whatever is past retention goes
//! (see `tsdb`).

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct Rollups;

impl Task for Rollups {
    fn info(&self) -> Info {
        Info {
            name: "rollups",
            about: "rolls complete minutes of metric samples up and drops what is past retention",
            scope: Scope::Cluster,
            every: Duration::from_secs(60),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            let n = ctx
                .store
                .rollup_and_expire(&ctx.config.retention, crate::store::now_ms())
                .await
                .map_err(|e| TaskError::new("cannot roll up or expire metrics", e))?;
            tracing::debug!(rollups = n, "metrics rolled up");
            Ok(())
        })
    }
}
