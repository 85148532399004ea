//! Heartbeats written together. Every host renews its lease every few
//! seconds, each renewal an `UPDATE` of its row: at a thousand hosts that
//! is more than a hundred statements a second, and a statement's cost is
//! mostly its round trip (the hop to SQLite's worker thread, or to
//! PostgreSQL), not the row. So the renewals that arrive within
//! [`GATHER`] of each other are written as one `UPDATE ... WHERE id IN
//! (...)`: at 133 renewals a second that is about 20 statements, at 1,333
//! still about 20. Each heartbeat is answered only after its own row was
//! written, so what failover reads from the database is unchanged; the
//! wait adds at most [`GATHER`] to a renewal, against a lease of seconds.
//!
//! The queue holds only renewals whose requests are waiting for their
//! answer, so it is bounded by the requests in flight; a batch is at most
//! [`MOST_PER_BATCH`] hosts.

use crate::store::Store;
use nubo_api::ids::HostId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most hosts in one `UPDATE` (bound parameters stay well under both
/// databases' limits).
pub const MOST_PER_BATCH: usize = 500;

/// How long the first renewal of a batch waits for others.
pub const GATHER: Duration = Duration::from_millis(50);

/// One renewal waiting to be written: the host, and where its stored
/// `last_heartbeat_ms` goes (None: no such host).
struct Pending {
    host: HostId,
    answer: oneshot::Sender<Option<i64>>,
}

/// The writer of renewals, started on first use (in the server's runtime).
#[derive(Default)]
pub struct Heartbeats {
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
    /// Statements the writer ran (each a batch).
    statements: Arc<AtomicU64>,
}

impl Heartbeats {
    /// Renews `host`'s lease: its stored `last_heartbeat_ms` afterwards,
    /// or None when there is no such host. Written with the renewals that
    /// queued meanwhile; when the batch cannot be written (or the writer
    /// is gone), this host's row is written alone, so the caller sees its
    /// own error.
    pub async fn renew(&self, store: &Store, host: &HostId) -> Result<Option<i64>, sqlx::Error> {
        let queue = self.queue.get_or_init(|| start(store.clone(), self.statements.clone()));
        let (answer, written) = oneshot::channel();
        if queue.send(Pending { host: host.clone(), answer }).is_ok() {
            if let Ok(value) = written.await {
                return Ok(value);
            }
        }
        store.heartbeat(host).await
    }

    /// How many batches were written so far (each one statement).
    pub fn batches_written(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

fn start(store: Store, statements: Arc<AtomicU64>) -> mpsc::UnboundedSender<Pending> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_batches(store, rx, statements));
    tx
}

/// Takes what is queued within [`GATHER`], writes it as one statement,
/// answers each; a failed batch drops its answers (each caller then
/// writes its own row).
async fn write_batches(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>, statements: Arc<AtomicU64>) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MOST_PER_BATCH).await > 0 {
        tokio::time::sleep(GATHER).await;
        while batch.len() < MOST_PER_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut ids: Vec<&str> = batch.iter().map(|p| p.host.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        statements.fetch_add(1, Ordering::Relaxed);
        match store.heartbeats(&ids).await {
            Ok(values) => {
                let values: HashMap<String, i64> = values.into_iter().collect();
                for p in batch.drain(..) {
                    let _ = p.answer.send(values.get(p.host.as_str()).copied());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, hosts = ids.len(), "heartbeats not written together; each is written alone");
                batch.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests;
