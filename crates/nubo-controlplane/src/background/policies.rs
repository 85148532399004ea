//! Service policies: every couple of seconds each policy is judged over
//! its scope and its running firings are advanced a step (see `policies`).

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct Policies;

impl Task for Policies {
    fn info(&self) -> Info {
        Info {
            name: "policies",
            about: "judges every service policy and advances its firings' actions",
            scope: Scope::Cluster,
            every: Duration::from_secs(2),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            crate::policies::run_round(ctx).await.map_err(|e| TaskError::new("cannot run the policies' round", e))
        })
    }
}
