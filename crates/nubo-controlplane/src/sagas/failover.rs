//! Failing one instance over off a down host as a saga (see
//! `crate::saga`): choose where it goes (an up host that shares the dead
//! one's storage, by `placement::choose`), then restart it there from its
//! shared disk, or mark it lost when no host can take it. The failover
//! round (`failover::run_once`) decides which instances are due (their
//! host silent past its lease) and makes one saga each; a server that dies
//! halfway finishes them from the next round, never restarting one twice.
//!
//! The restart (claim the target, move the instance and its volumes, free
//! the dead host's claim) is one transaction that holds only while the
//! dead host's stored heartbeat is the one the round saw, so it is the
//! last step and needs no undo: a host that renewed its lease meanwhile
//! keeps its instances. A resumed saga may restart on a server that has
//! not itself watched the host for a lease: the heartbeat check is what
//! makes that safe (the lease ran out on the one that made the saga, and
//! no renewal came since).

use crate::placement::{self, Chosen, Constraints, Demand, Refusal};
use crate::saga::{self, db, Outputs, SagaDef, SagaId, Step, Undo};
use crate::Ctx;
use serde::{Deserialize, Serialize};

/// One instance of one down host, as the round saw them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverParams {
    pub instance_id: String,
    pub dead_host: String,
    pub dead_name: String,
    /// The dead host's stored heartbeat when the round saw it silent: the
    /// restart holds only while it is unchanged.
    pub heartbeat_ms: i64,
    pub shared_storage: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// The steps of failing one instance over.
pub struct Failover;

impl SagaDef for Failover {
    const NAME: &'static str = "failover";
    type Params = FailoverParams;
    type Env = Ctx;

    fn steps(_: &FailoverParams) -> Vec<&'static str> {
        vec!["choose-target", "restart-or-mark-lost"]
    }

    async fn action(ctx: &Ctx, p: &FailoverParams, step: &'static str, done: &Outputs) -> Result<Step, sqlx::Error> {
        if step == "choose-target" {
            return choose_target(ctx, p).await;
        }
        match done.get::<Option<Chosen>>("choose-target").flatten() {
            Some(t) => restart(ctx, p, &t).await,
            None => {
                let reason = match &p.shared_storage {
                    Some(_) => format!(
                        "lost: host {} stopped reporting and no up host that shares its storage can take it; \
                         start the host again, or terminate the instance",
                        p.dead_name
                    ),
                    None => format!(
                        "lost: host {} stopped reporting and the instance's disks were local to it; \
                         start the host again to get it back, or terminate it",
                        p.dead_name
                    ),
                };
                ctx.store.mark_lost(&p.instance_id, &reason).await?;
                tracing::warn!(instance = %p.instance_id, host = %p.dead_name, "instance lost with its host");
                Ok(Step::done("lost"))
            }
        }
    }

    /// Choosing holds nothing, and the last step is never undone.
    async fn undo(_: &Ctx, _: &FailoverParams, _: &'static str, _: &Outputs) -> Result<Undo, sqlx::Error> {
        Ok(Undo::Done)
    }
}

/// Only a host that shares the dead one's storage has the disks.
async fn choose_target(ctx: &Ctx, p: &FailoverParams) -> Result<Step, sqlx::Error> {
    let Some(s) = &p.shared_storage else { return Ok(Step::done(None::<Chosen>)) };
    let demand = Demand { vcpus: p.vcpus, memory_mib: p.memory_mib, disk_gib: p.disk_gib };
    let c = Constraints { exclude: Some(&p.dead_host), shared_storage: Some(s), ..Constraints::default() };
    match placement::choose(ctx, demand, &c).await {
        // Where the instance goes, or null (nowhere: it is lost).
        Ok(choice) => Ok(Step::done(Some(choice.best))),
        Err(Refusal::NoHost { .. }) => Ok(Step::done(None::<Chosen>)),
        Err(Refusal::Db(e)) => Err(e),
    }
}

/// Restarts the instance on `t`, or finds that it needs no restart (an
/// earlier try moved it, or its host came back).
async fn restart(ctx: &Ctx, p: &FailoverParams, t: &Chosen) -> Result<Step, sqlx::Error> {
    let store = &ctx.store;
    let Some(row) = store.instance(&p.instance_id).await? else {
        return Ok(Step::done("gone"));
    };
    if row.host_id.as_deref() != Some(p.dead_host.as_str()) {
        // Moved already (by this step before a crash, or otherwise).
        return Ok(Step::done(format!("on {}", row.host_id.unwrap_or_default())));
    }
    let Some(dead) = store.host(&p.dead_host).await? else {
        return Ok(Step::Fail(format!("host {} is gone", p.dead_host)));
    };
    if dead.last_heartbeat_ms != p.heartbeat_ms {
        // It renewed its lease: it is alive and kept its VMs.
        return Ok(Step::done("host came back"));
    }
    if store.restart_elsewhere(&row, &dead, &t.id, t.limits).await? {
        tracing::warn!(instance = %row.id, from = %p.dead_name, to = %t.name,
            "host stopped reporting; instance restarted from its shared disk");
        ctx.bump();
        return Ok(Step::done(format!("on {}", t.id)));
    }
    // The target filled meanwhile, or the host renewed just now: the next
    // round makes a new saga if the instance is still due.
    Ok(Step::Fail(format!("host {} could not take instance {} after all", t.name, row.id)))
}

/// The failover saga of `p.instance_id` still under way, if any.
pub async fn unfinished(ctx: &Ctx, instance: &str) -> Result<Option<SagaId>, sqlx::Error> {
    db::unfinished_with_key_prefix(&ctx.store, Failover::NAME, &format!("failover:{instance}:")).await
}

/// Makes and runs the failover saga of one instance of a down host. One
/// that was refused (its target filled) ends unwound: the next round,
/// finding the instance still on the down host, makes a new one.
pub async fn fail_over(ctx: &Ctx, p: &FailoverParams) -> Result<(), sqlx::Error> {
    let id = new_failover(ctx, p).await?;
    saga::run::<Failover>(&ctx.store, ctx, &id).await?;
    Ok(())
}

/// Makes the failover saga of one instance (each a new one: see [`fail_over`]).
pub async fn new_failover(ctx: &Ctx, p: &FailoverParams) -> Result<SagaId, sqlx::Error> {
    let key = format!("failover:{}:{}", p.instance_id, SagaId::generate());
    saga::create::<Failover>(&ctx.store, &key, p).await
}

/// Runs on the failover sagas a crash (or a database error) left unfinished.
pub async fn resume(ctx: &Ctx) -> Result<usize, sqlx::Error> {
    saga::resume_all::<Failover>(&ctx.store, ctx).await
}
