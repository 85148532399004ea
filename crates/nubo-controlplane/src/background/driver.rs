//! Runs the tasks on their timers and records each run on the board. The
//! cluster-wide tasks run in one loop, in their order, while this server
//! holds the lease; each of the others runs in a loop of its own. A task
//! that fails stops no other: its error is recorded and logged (the span
//! names the task), and it runs again at its next interval.

use super::{leader, NotStarted, Task};
use crate::Ctx;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How often the cluster-wide loop looks for due tasks and renews the
/// lease: the shortest interval of its tasks (webhooks', a second).
const TICK: Duration = Duration::from_secs(1);

/// Runs `task` once, recording the run on the board; a failure is
/// recorded and logged, never returned.
pub async fn run_recorded(ctx: &Arc<Ctx>, task: &dyn Task) {
    let info = task.info();
    let started = Instant::now();
    ctx.background.started(info.name, crate::store::now_ms());
    let span = tracing::info_span!("background_task", task = info.name);
    let result = task.run(ctx).instrument(span.clone()).await;
    let error = result.err().map(|e| {
        span.in_scope(|| tracing::warn!(error = %e, "background task failed; it runs again in {:?}", info.every));
        format!("{e}; it runs again in {:?} (every failure is in the server's log)", info.every)
    });
    ctx.background.finished(info.name, started.elapsed(), error);
}

/// Lists the cluster-wide tasks on the board, those that could not be set
/// up with their error (logged once); returns those that can run.
pub fn register_cluster_tasks(ctx: &Ctx, tasks: Vec<Result<Box<dyn Task>, NotStarted>>) -> Vec<Box<dyn Task>> {
    let mut ready = Vec::new();
    for task in tasks {
        match task {
            Ok(task) => {
                ctx.background.register(task.info());
                ready.push(task);
            }
            Err(NotStarted { info, error }) => {
                ctx.background.register(info);
                tracing::error!(task = info.name, error = %error, "background task cannot start; the others run");
                ctx.background.started(info.name, crate::store::now_ms());
                let hint = "it does not run until the server restarts with this fixed";
                ctx.background.finished(info.name, Duration::ZERO, Some(format!("{error}; {hint}")));
            }
        }
    }
    ready
}

/// Tasks in their order, each with the time its last run started.
struct Round {
    tasks: Vec<(Box<dyn Task>, Option<Instant>)>,
}

impl Round {
    fn new(tasks: Vec<Box<dyn Task>>) -> Self {
        Self { tasks: tasks.into_iter().map(|t| (t, None)).collect() }
    }

    /// Runs, in order, each task whose interval has passed since its last
    /// run started (every task, the first time).
    async fn run_due(&mut self, ctx: &Arc<Ctx>) {
        for (task, last) in &mut self.tasks {
            if last.is_none_or(|t| t.elapsed() >= task.info().every) {
                *last = Some(Instant::now());
                run_recorded(ctx, &**task).await;
            }
        }
    }
}

/// Runs the cluster-wide tasks while this server holds the lease, until
/// the process ends.
pub async fn cluster(ctx: Arc<Ctx>, tasks: Vec<Box<dyn Task>>) {
    let mut round = Round::new(tasks);
    let holder = leader::lease_holder(&ctx.config);
    let postgres = ctx.store.backend() == crate::store::Backend::Postgres;
    let mut leading = false;
    loop {
        match leader::take(&ctx, &holder).await {
            Ok(held) => {
                if held != leading && postgres {
                    if held {
                        tracing::info!(holder = %holder, "this server now runs the monitor's rounds (the cluster-wide background tasks)");
                    } else {
                        tracing::info!(holder = %holder, "another server runs the monitor's rounds (the cluster-wide background tasks)");
                    }
                }
                leading = held;
            }
            Err(e) => {
                // Unknown: skip rather than risk running twice.
                tracing::warn!(error = %e, "cannot take or renew the monitor lease; skipping this round");
                leading = false;
            }
        }
        ctx.background.set_leading(leading);
        if leading {
            round.run_due(&ctx).await;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Runs one of the tasks every server runs, at its interval (the first
/// run at once; a run that overruns delays the next rather than bunching
/// them), until the process ends.
pub async fn every_server(ctx: Arc<Ctx>, task: Box<dyn Task>) {
    let mut tick = tokio::time::interval(task.info().every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        run_recorded(&ctx, &*task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Info, Scope, TaskError, TaskFuture};
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A task whose every run fails as the database's would.
    struct Failing;

    impl Task for Failing {
        fn info(&self) -> Info {
            Info { name: "failing", about: "fails", scope: Scope::Cluster, every: Duration::from_secs(2) }
        }
        fn run<'a>(&'a self, _: &'a Arc<Ctx>) -> TaskFuture<'a> {
            Box::pin(async { Err(TaskError::new("cannot read the rules", sqlx::Error::PoolTimedOut)) })
        }
    }

    /// A task that counts its runs.
    struct Counting(Arc<AtomicU32>);

    impl Task for Counting {
        fn info(&self) -> Info {
            Info { name: "counting", about: "counts", scope: Scope::Cluster, every: Duration::from_secs(60) }
        }
        fn run<'a>(&'a self, _: &'a Arc<Ctx>) -> TaskFuture<'a> {
            Box::pin(async {
                self.0.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_failing_task_is_recorded_and_the_next_one_still_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(crate::Config::new(dir.path().to_path_buf())).await.unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let tasks = register_cluster_tasks(&ctx, vec![Ok(Box::new(Failing)), Ok(Box::new(Counting(runs.clone())))]);
        let mut round = Round::new(tasks);
        round.run_due(&ctx).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the task after the failing one ran");
        let board = ctx.background.tasks();
        let failing = board.iter().find(|t| t.name == "failing").unwrap();
        assert_eq!(failing.last_outcome.as_deref(), Some("failed"));
        let error = failing.last_error.as_deref().unwrap();
        assert!(error.starts_with("cannot read the rules: ") && error.contains("runs again in 2s"), "{error}");
        let counting = board.iter().find(|t| t.name == "counting").unwrap();
        assert_eq!((counting.last_outcome.as_deref(), counting.last_error.as_deref()), (Some("ok"), None));
        // Neither is due again at once: a round runs only what its interval allows.
        round.run_due(&ctx).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(ctx.background.tasks().iter().map(|t| t.runs).sum::<u64>(), 2);
    }

    #[tokio::test]
    async fn a_task_that_cannot_start_is_listed_with_its_error_and_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Ctx::new(crate::Config::new(dir.path().to_path_buf())).await.unwrap();
        let info = Failing.info();
        let error = TaskError::new("cannot build the client", std::io::Error::other("no TLS roots"));
        let ready = register_cluster_tasks(&ctx, vec![Err(NotStarted { info, error })]);
        assert!(ready.is_empty());
        let t = &ctx.background.tasks()[0];
        assert_eq!((t.name.as_str(), t.last_outcome.as_deref()), ("failing", Some("failed")));
        assert!(t.last_error.as_deref().unwrap().contains("cannot build the client: no TLS roots"), "{t:?}");
    }
}
