//! Counting the SQL statements a request runs: a tracing layer records
//! every `sqlx::query` event's summary (the store logs them when
//! `Config::log_statements` is on). The counter is the process's, so a
//! binary that counts runs its counting tests one at a time.

use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The summary of every statement run since the last `take`.
static STATEMENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Summary(String);

impl Visit for Summary {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" {
            self.0 = value.to_string();
        }
    }
}

struct CountStatements;

impl<S: tracing::Subscriber> Layer<S> for CountStatements {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "sqlx::query" {
            let mut summary = Summary(String::new());
            event.record(&mut summary);
            STATEMENTS.lock().unwrap().push(summary.0);
        }
    }
}

/// Installs the counting layer (once per process).
pub fn count_statements() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CountStatements)).unwrap();
    });
}

/// The statements run since the last call, leaving out what is not the
/// request's own work and may land in any window: the wake-up
/// notifications to other servers (PostgreSQL), which launches send from
/// tasks of their own, and the PRAGMAs that set up each new connection
/// the SQLite pool opens (when it opens one depends on the load).
pub fn take() -> Vec<String> {
    let mut s = STATEMENTS.lock().unwrap();
    std::mem::take(&mut *s).into_iter().filter(|q| !q.contains("pg_notify") && !q.starts_with("PRAGMA")).collect()
}

/// The statements one request runs, and its result; `request` is awaited alone.
pub async fn statements_of<F: std::future::Future<Output = R>, R>(request: F) -> (Vec<String>, R) {
    take();
    let r = request.await;
    (take(), r)
}
