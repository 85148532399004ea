//! A live migration as a saga (see `crate::saga`): choose the target
//! (`placement::choose`), claim its capacity (the migration's row, in
//! `preparing`), ask the target to prepare, wait for it to say it is
//! ready, ask the source to send, and wait for the switch. Each step's
//! output is recorded, so a server that dies halfway picks the migration
//! up where it was; a migration that fails frees the target's claim,
//! ends `failed` and leaves the instance running on its source.
//!
//! The agent protocol is `migrations`' (the hosts read the row through
//! their desired state and report `ready` and `done`): the steps ask by
//! bumping the hosts and wait ([`Step::Wait`]) on the row's state. The
//! switch itself (the instance's host becomes the target, the source's
//! claim is freed) is made by the source's report, in one transaction with
//! it, so that no host ever sees the instance as nobody's or as two
//! hosts'; the last step waits for it and tells every host on the
//! instance's networks. A failure reported by a host (or the prepare
//! timeout, `failover::expire_unready_migrations`) ends the row `failed`
//! the same way, and the saga then unwinds with nothing left to free.

use crate::migrations::{Outcome, StartError};
use crate::placement::{self, Chosen, Constraints, Demand, Refusal, Weigher};
use crate::saga::{self, Outputs, SagaDef, SagaId, Status, Step, Undo};
use crate::Ctx;
use nubo_api::views::MigrationState;
use serde::{Deserialize, Serialize};

/// One migration, as decided when it was asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationParams {
    /// The migration's id, chosen up front: the claim step's row has it,
    /// so a claim made by a try that crashed is found, never made twice.
    pub migration_id: String,
    pub instance_id: String,
    pub source: String,
    /// The operator's target (a host id), if one was named.
    pub pin: Option<String>,
    /// The instance is on private networks: stay on their underlay.
    pub underlay: bool,
    /// External networks (interface names) the target must map: the
    /// instance's own and its floating IP's.
    #[serde(default)]
    pub externals: Vec<String>,
    pub weigher: Option<Weigher>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// The steps of a live migration.
pub struct Migration;

impl SagaDef for Migration {
    const NAME: &'static str = "live-migration";
    type Params = MigrationParams;
    type Env = Ctx;

    fn steps(_: &MigrationParams) -> Vec<&'static str> {
        vec!["choose-target", "claim", "prepare", "wait-ready", "send", "wait-switched"]
    }

    async fn action(ctx: &Ctx, p: &MigrationParams, step: &'static str, done: &Outputs) -> Result<Step, sqlx::Error> {
        if step == "choose-target" {
            return choose_target(ctx, p).await;
        }
        let Some(target) = done.get::<Chosen>("choose-target") else {
            return Ok(Step::Fail("the choose-target step recorded no target".into()));
        };
        let store = &ctx.store;
        match step {
            "claim" => claim(ctx, p, &target).await,
            "prepare" => {
                // The row in `preparing` lists the instance on the target
                // with role `target`: it starts an empty copy.
                tracing::info!(instance = %p.instance_id, migration = %p.migration_id, from = %p.source,
                    to = %target.id, "live migration started");
                ctx.bump_host(&p.source);
                ctx.bump_host(&target.id);
                Ok(Step::done(&p.migration_id))
            }
            "wait-ready" => match store.migration(&p.migration_id).await? {
                Some(m) if m.state == MigrationState::Preparing => Ok(Step::Wait),
                Some(m) if m.state == MigrationState::Migrating || m.state == MigrationState::Completed => {
                    Ok(Step::done(m.migrate_uri))
                }
                Some(m) => Ok(Step::Fail(ended(&p.migration_id, m.error))),
                None => Ok(Step::Fail(format!("migration {} is gone", p.migration_id))),
            },
            "send" => {
                // The row in `migrating` gives the source the target's
                // addresses: it copies the disks and the memory.
                ctx.bump_host(&p.source);
                Ok(Step::done(&p.source))
            }
            _ => match store.migration(&p.migration_id).await? {
                Some(m) if m.state == MigrationState::Completed => {
                    // Every host on its networks learns where it is now.
                    ctx.bump();
                    Ok(Step::done(format!(
                        "moved {} from {} to {} (downtime {} ms)",
                        m.instance_id,
                        m.source_host,
                        m.target_host,
                        m.downtime_ms.unwrap_or(0)
                    )))
                }
                Some(m) if m.active() => Ok(Step::Wait),
                Some(m) => Ok(Step::Fail(ended(&p.migration_id, m.error))),
                None => Ok(Step::Fail(format!("migration {} is gone", p.migration_id))),
            },
        }
    }

    async fn undo(ctx: &Ctx, p: &MigrationParams, step: &'static str, done: &Outputs) -> Result<Undo, sqlx::Error> {
        // Only the claim holds anything: fail the row (freeing the
        // target's claim; the target removes its copy). A row a host or
        // the timeout failed already is left as it is.
        if step != "claim" {
            return Ok(Undo::Done);
        }
        let Some(target) = done.get::<Chosen>("choose-target") else { return Ok(Undo::Done) };
        let outcome = Outcome {
            ok: false,
            error: Some(format!(
                "the migration was given up before it finished; the instance runs on at {}: migrate again",
                p.source
            )),
            ..Default::default()
        };
        if ctx.store.finish_migration(&p.migration_id, &target.id, &outcome).await?.is_some() {
            tracing::warn!(migration = %p.migration_id, instance = %p.instance_id, "live migration given up");
            ctx.bump();
        }
        Ok(Undo::Done)
    }
}

/// Why a migration that ended without completing failed.
fn ended(id: &str, error: Option<String>) -> String {
    format!("migration {id} failed: {}", error.unwrap_or_default())
}

/// Where the instance goes: placement's choice (never its own host; one
/// on its private networks' underlay if it is on any; the pin if named).
async fn choose_target(ctx: &Ctx, p: &MigrationParams) -> Result<Step, sqlx::Error> {
    let constraints = Constraints {
        pin: p.pin.as_deref(),
        exclude: Some(&p.source),
        underlay: p.underlay,
        externals: &p.externals,
        weigher: p.weigher,
        ..Constraints::default()
    };
    let demand = Demand { vcpus: p.vcpus, memory_mib: p.memory_mib, disk_gib: p.disk_gib };
    match placement::choose(ctx, demand, &constraints).await {
        // The chosen target and the limits its claim is checked against.
        Ok(choice) => Ok(Step::done(choice.best)),
        Err(Refusal::Db(e)) => Err(e),
        Err(no_host) => Ok(Step::Fail(no_host.to_string())),
    }
}

/// Claims the target's capacity with the migration's row, or finds the
/// row an earlier try made.
async fn claim(ctx: &Ctx, p: &MigrationParams, target: &Chosen) -> Result<Step, sqlx::Error> {
    if ctx.store.migration(&p.migration_id).await?.is_some() {
        return Ok(Step::done(&p.migration_id));
    }
    let Some(row) = ctx.store.instance(&p.instance_id).await? else {
        return Ok(Step::Fail(format!("instance {} no longer exists", p.instance_id)));
    };
    match ctx.store.start_migration(&p.migration_id, &row, &p.source, &target.id, target.limits).await {
        Ok(m) => Ok(Step::done(m.id)),
        Err(StartError::Db(e)) => Err(e),
        Err(e) => Ok(Step::Fail(e.to_string())),
    }
}

/// Makes the saga of migration `p.migration_id` (one per migration).
pub async fn new_migration(ctx: &Ctx, p: &MigrationParams) -> Result<SagaId, sqlx::Error> {
    saga::create::<Migration>(&ctx.store, &format!("migration:{}", p.migration_id), p).await
}

/// Makes the migration's saga and runs it as far as it goes now (to the
/// wait for the target, normally).
pub async fn begin(ctx: &Ctx, p: &MigrationParams) -> Result<Status, sqlx::Error> {
    let id = new_migration(ctx, p).await?;
    saga::run::<Migration>(&ctx.store, ctx, &id).await
}

/// Runs the migrations' sagas on from where they wait (the failover
/// round's tick, and a restarted server's first one).
pub async fn resume(ctx: &Ctx) -> Result<usize, sqlx::Error> {
    saga::resume_all::<Migration>(&ctx.store, ctx).await
}
