//! Failover: every couple of seconds, live migrations whose target never
//! got ready are given up, and the instances of hosts silent past their
//! lease are restarted elsewhere or marked lost (see `failover`). The
//! same round runs on the sagas that wait on hosts or that a crash left
//! under way: live migrations, failovers, and launches with a recipe.

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct Failover;

impl Task for Failover {
    fn info(&self) -> Info {
        Info {
            name: "failover",
            about: "gives up unready live migrations; restarts a silent host's instances elsewhere or marks them lost",
            scope: Scope::Cluster,
            every: Duration::from_secs(2),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            crate::failover::run_once(ctx).await.map_err(|e| TaskError::new("cannot run the down-host round", e))?;
            crate::sagas::launch::resume(ctx)
                .await
                .map_err(|e| TaskError::new("cannot run on the launches with a recipe", e))?;
            Ok(())
        })
    }
}
