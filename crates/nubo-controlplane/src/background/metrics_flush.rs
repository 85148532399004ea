//! Metric flushes: every server writes its in-memory head of metric
//! samples and newest values to the database every
//! [`crate::tsdb::FLUSH_INTERVAL`] (see `tsdb`): what another server's
//! view lags by, and what a crash loses.

use super::{Info, Scope, Task, TaskError, TaskFuture};
use crate::Ctx;
use std::sync::Arc;

pub struct MetricsFlush;

impl Task for MetricsFlush {
    fn info(&self) -> Info {
        Info {
            name: "metrics_flush",
            about: "writes the metric samples and newest values this server received to the database",
            // Each server holds its own head.
            scope: Scope::Server,
            every: crate::tsdb::FLUSH_INTERVAL,
        }
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            let n = ctx
                .store
                .flush_metrics(&ctx.config.retention)
                .await
                .map_err(|e| TaskError::new("cannot write metric samples to the database", e))?;
            tracing::debug!(chunks = n, "metrics flushed");
            Ok(())
        })
    }
}
