//! The record of each background task's runs on this server: when the
//! last one started, how long it took, how it ended and the last error.
//! Kept in memory (a task runs every second or so; writing each run to the
//! shared database would cost more than the work). With several servers
//! each keeps its own, and the view says which server runs the
//! cluster-wide tasks, so an operator knows whose record to read.

use super::{Info, Scope};
use nubo_api::views::BackgroundTask;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Entry {
    name: &'static str,
    about: &'static str,
    scope: Scope,
    every: Duration,
    running: bool,
    last_started_at_ms: Option<i64>,
    last_duration: Option<Duration>,
    last_ok: Option<bool>,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
    runs: u64,
    failures: u64,
}

/// Every task this server runs, in the order they were registered (the
/// cluster-wide ones in their round's order, then the others).
#[derive(Debug, Default)]
pub struct Board {
    entries: Mutex<Vec<Entry>>,
    /// Whether this server holds the lease (runs the cluster-wide tasks).
    leading: AtomicBool,
}

impl Board {
    fn with_entry<R>(&self, name: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter_mut().find(|e| e.name == name).map(f)
    }

    /// Lists a task (once: registering it again changes nothing).
    pub fn register(&self, info: Info) {
        let Info { name, about, scope, every } = info;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.iter().any(|e| e.name == name) {
            return;
        }
        entries.push(Entry {
            name,
            about,
            scope,
            every,
            running: false,
            last_started_at_ms: None,
            last_duration: None,
            last_ok: None,
            last_error: None,
            last_error_at_ms: None,
            runs: 0,
            failures: 0,
        });
    }

    /// A run of `name` started at `at_ms` (wall clock).
    pub fn started(&self, name: &str, at_ms: i64) {
        self.with_entry(name, |e| {
            e.running = true;
            e.last_started_at_ms = Some(at_ms);
        });
    }

    /// The run of `name` that started last ended after `took`: well, or
    /// with `error` (kept until a later error replaces it, so an operator
    /// still sees why it failed after it recovered).
    pub fn finished(&self, name: &str, took: Duration, error: Option<String>) {
        self.with_entry(name, |e| {
            e.running = false;
            e.last_duration = Some(took);
            e.runs += 1;
            e.last_ok = Some(error.is_none());
            if let Some(error) = error {
                e.failures += 1;
                e.last_error_at_ms = e.last_started_at_ms;
                e.last_error = Some(error);
            }
        });
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    /// Whether this server runs the cluster-wide tasks now.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Every task's record, in the board's order.
    pub fn tasks(&self) -> Vec<BackgroundTask> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|e| BackgroundTask {
                name: e.name.into(),
                about: e.about.into(),
                scope: e.scope.as_str().into(),
                every_ms: e.every.as_millis() as u64,
                running: e.running,
                last_started_at_ms: e.last_started_at_ms,
                last_duration_ms: e.last_duration.map(|d| d.as_millis() as u64),
                last_outcome: e.last_ok.map(|ok| if ok { "ok" } else { "failed" }.into()),
                last_error: e.last_error.clone(),
                last_error_at_ms: e.last_error_at_ms,
                runs: e.runs,
                failures: e.failures,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_task_is_ok_and_still_shows_its_last_error() {
        let board = Board::default();
        board.register(Info { name: "t", about: "a task", scope: Scope::Cluster, every: Duration::from_secs(2) });
        board.register(Info { name: "t", about: "again", scope: Scope::Server, every: Duration::from_secs(9) });
        assert_eq!(board.tasks().len(), 1, "registering twice lists a task once");
        assert_eq!(board.tasks()[0].last_outcome, None, "never run");
        board.started("t", 1_000);
        assert!(board.tasks()[0].running);
        board.finished("t", Duration::from_millis(7), Some("cannot do it: disk full".into()));
        board.started("t", 3_000);
        board.finished("t", Duration::from_millis(5), None);
        let t = &board.tasks()[0];
        assert!(!t.running);
        assert_eq!((t.runs, t.failures), (2, 1));
        assert_eq!(t.last_outcome.as_deref(), Some("ok"));
        assert_eq!((t.last_started_at_ms, t.last_duration_ms), (Some(3_000), Some(5)));
        assert_eq!((t.last_error.as_deref(), t.last_error_at_ms), (Some("cannot do it: disk full"), Some(1_000)));
        assert_eq!((t.scope.as_str(), t.every_ms), ("cluster", 2_000));
    }
}
