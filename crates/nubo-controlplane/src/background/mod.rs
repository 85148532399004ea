//! The control plane's periodic work, one named task per job, behind one
//! driver. This module owns what a task is ([`Task`]), the list of tasks a
//! server runs and the order they run in; `driver` runs them on their
//! timers (the cluster-wide ones only while this server holds the lease,
//! see `leader`), and `board` records each one's last run for operators
//! (`GET /api/v1/background-tasks`, `nubo task list`, the operator portal).
//!
//! Each task's work is a plain function too, so tests can run one round of
//! it and look.

pub mod alert_rules;
pub mod audit_retention;
pub mod backups;
pub mod board;
pub mod driver;
pub mod failover;
pub mod groups;
pub mod ldap_refresh;
pub mod leader;
pub mod metrics_flush;
pub mod policies;
pub mod rollups;
pub mod webhooks;

use crate::Ctx;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use board::Board;
pub use leader::{lease_holder, release, LEASE, LEASE_TTL};

/// Where a task runs when several servers share one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On the server holding the lease only: work on the shared state that
    /// must not be done twice (a policy acting twice, two failovers).
    Cluster,
    /// On every server: work on the server's own memory, or harmless twice.
    Server,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Cluster => "cluster",
            Scope::Server => "server",
        }
    }
}

/// What one run of a task returns.
pub type TaskFuture<'a> = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send + 'a>>;

/// What a task is, for the driver and for operators.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    /// Its name, as operators see it (`rollups`, `alert_rules`...).
    pub name: &'static str,
    /// What it does, in a line.
    pub about: &'static str,
    pub scope: Scope,
    /// How often it runs.
    pub every: Duration,
}

/// One named piece of periodic work.
pub trait Task: Send + Sync {
    fn info(&self) -> Info;
    /// One run.
    fn run<'a>(&'a self, ctx: &'a Arc<Ctx>) -> TaskFuture<'a>;
}

/// A task that could not be set up: it is listed with this error and
/// never runs (until the server restarts).
#[derive(Debug)]
pub struct NotStarted {
    pub info: Info,
    pub error: TaskError,
}

/// Why a run failed: what the task could not do, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct TaskError {
    what: &'static str,
    #[source]
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl TaskError {
    pub fn new(what: &'static str, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { what, cause: cause.into() }
    }
}

/// What an operator sees of the background work: this server, the one
/// running the cluster-wide tasks, and each task's last run here. The
/// REST API and the portal both show this; operators only.
pub async fn overview(
    ctx: &Ctx,
    caller: &crate::auth::Caller,
) -> Result<nubo_api::views::BackgroundTasks, crate::error::AppError> {
    crate::authz::require_admin(caller)?;
    Ok(nubo_api::views::BackgroundTasks {
        server: lease_holder(&ctx.config),
        cluster_tasks_on: leader::current(ctx).await?,
        tasks: ctx.background.tasks(),
    })
}

/// The cluster-wide tasks, in the order one round runs them. The order
/// matters where one task's output is the next one's input:
///
/// * rollups first, as the monitor always ran them;
/// * alert rules (heartbeat checks, then the rules) before webhooks, so a
///   notification queued by a rule is handed over in the same round;
/// * policies before groups, so a policy's new desired count for a group
///   is acted on in the same round;
/// * failover after the automation, as it always ran;
/// * backups after failover, so a plan skips instances failover is moving;
/// * webhooks last: it hands over whatever the round queued.
pub fn cluster_tasks(ctx: &Ctx) -> Vec<Result<Box<dyn Task>, NotStarted>> {
    vec![
        Ok(Box::new(rollups::Rollups)),
        Ok(Box::new(alert_rules::AlertRules)),
        Ok(Box::new(policies::Policies)),
        Ok(Box::new(groups::Groups)),
        Ok(Box::new(failover::Failover)),
        Ok(Box::new(backups::Backups)),
        webhooks::Webhooks::start(ctx).map(|w| Box::new(w) as Box<dyn Task>),
    ]
}

/// The tasks every server runs, each on its own timer (they touch no
/// shared state that two servers could both change wrongly, and one that
/// waits on the network or on a long deletion holds up no other).
pub fn server_tasks(ctx: &Ctx) -> Vec<Box<dyn Task>> {
    let mut tasks: Vec<Box<dyn Task>> =
        vec![Box::new(audit_retention::AuditRetention::of(&ctx.config)), Box::new(metrics_flush::MetricsFlush)];
    if let Some(ldap) = ldap_refresh::LdapRefresh::of(&ctx.config) {
        tasks.push(Box::new(ldap));
    }
    tasks
}

/// Starts every task on its timer; returns the cluster-wide tasks' driver,
/// which runs until the process ends.
pub fn start(ctx: Arc<Ctx>) -> tokio::task::JoinHandle<()> {
    let tasks = driver::register_cluster_tasks(&ctx, cluster_tasks(&ctx));
    for task in server_tasks(&ctx) {
        ctx.background.register(task.info());
        tokio::spawn(driver::every_server(ctx.clone(), task));
    }
    tokio::spawn(driver::cluster(ctx, tasks))
}

/// What a server does on a graceful stop: writes its metrics head (see
/// `tsdb`) so that no sample it received is lost, then gives up the lease.
pub async fn shutdown(ctx: &Ctx) {
    match ctx.store.flush_metrics(&ctx.config.retention).await {
        Ok(n) => tracing::info!(chunks = n, "metric samples written"),
        Err(e) => tracing::warn!(error = %e, "cannot write the last metric samples; up to a minute of them is lost"),
    }
    release(ctx).await;
}

/// Runs every task once, in order, whatever the lease (for tests: one
/// round of everything this server would run, recorded on the board).
pub async fn run_all_once(ctx: &Arc<Ctx>) {
    let mut tasks = driver::register_cluster_tasks(ctx, cluster_tasks(ctx));
    for task in server_tasks(ctx) {
        ctx.background.register(task.info());
        tasks.push(task);
    }
    for task in &tasks {
        driver::run_recorded(ctx, &**task).await;
    }
}
