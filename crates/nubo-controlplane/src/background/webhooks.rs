//! Webhook delivery's intake: every second, due notifications are handed
//! to the delivery task (`webhooks::Dispatcher`), which POSTs them on its
//! own, so no webhook can hold a round up. This task only claims and
//! queues; it never waits for a delivery.

use super::{Info, NotStarted, Scope, Task, TaskError, TaskFuture};
use crate::webhooks::{Dispatcher, WebhookClient};
use crate::Ctx;
use std::sync::Arc;
use std::time::Duration;

const INFO: Info = Info {
    name: "webhooks",
    about: "hands due webhook notifications to the delivery task (which posts them, 32 at a time)",
    scope: Scope::Cluster,
    every: Duration::from_secs(1),
};

pub struct Webhooks {
    dispatcher: Dispatcher,
}

impl Webhooks {
    /// Starts the delivery task. Without a webhook client (it could not be
    /// built) only webhooks stop: alerts, automation and failover run on.
    pub fn start(ctx: &Ctx) -> Result<Self, NotStarted> {
        match WebhookClient::new(&ctx.config.webhook_allow) {
            Ok(client) => Ok(Self { dispatcher: Dispatcher::start(ctx.store.clone(), client) }),
            Err(e) => Err(NotStarted {
                info: INFO,
                error: TaskError::new("cannot build the webhook client, so notifications are not delivered", e),
            }),
        }
    }
}

impl Task for Webhooks {
    fn info(&self) -> Info {
        INFO
    }

    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a> {
        Box::pin(async move {
            let handed = self
                .dispatcher
                .enqueue_due(&ctx.store)
                .await
                .map_err(|e| TaskError::new("cannot hand notifications to the webhook delivery task", e))?;
            if handed > 0 {
                tracing::debug!(notifications = handed, "handed to the webhook delivery task");
            }
            Ok(())
        })
    }
}
