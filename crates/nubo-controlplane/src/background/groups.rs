//! Instance groups: every couple of seconds each group's schedules are
//! applied and its members kept at the desired count (see `groups`).

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

pub struct Groups;

impl Task for Groups {
    fn info(&self) -> Info {
        Info {
            name: "groups",
            about: "applies instance groups' schedules and keeps each group at its desired count",
            scope: Scope::Cluster,
            every: Duration::from_secs(2),
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            crate::groups::reconcile(ctx).await.map_err(|e| TaskError::new("cannot reconcile the instance groups", e))
        })
    }
}
