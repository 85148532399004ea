//! A firing policy's actions as sagas (see `crate::saga`): one saga per
//! action of a firing, its steps the action's parts (choose the volume,
//! create it, attach it, wait for the guest to see it). Each step's output
//! (a volume id, a target size, a run id) is recorded before the next
//! step builds on it, so a retry or a server restart picks up where it
//! was and never makes anything twice; an action that fails undoes what
//! its saga made (a volume created for an attachment that cannot be made
//! is detached and deleted). `policies::execute` runs the sagas of the due
//! firings and shows each saga's state as its action's outcome.
//!
//! What cannot be taken back (a recipe run started, a reboot, a migration,
//! a notification sent) has no undo; such steps come where only waiting
//! for them follows.

use crate::policies::{FiringRow, Plan};
use crate::saga::{self, Outputs, SagaDef, SagaId, Step, Undo};
use crate::volumes::{AttachOutcome, NewVolume, StorageClaimError};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::automation::PolicyAction;
use nubo_api::ids::VolumeId;
use nubo_api::monitoring::NotificationState;
use nubo_api::views::{AttachState, MigrationState, RunState, VolumeState};
use serde::{Deserialize, Serialize};

/// One action of one firing, as decided when the saga was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionParams {
    pub firing_id: String,
    pub policy_id: String,
    /// The policy's name (for names, texts and the identity it acts as).
    pub policy: String,
    pub project_id: String,
    /// The instance (or host, or `*`) the firing is for.
    pub target: String,
    pub at_ms: i64,
    pub values_json: String,
    pub spec: PolicyAction,
    /// What the action had made before it ran as a saga (a firing from
    /// an older server): reused, never made again.
    #[serde(default)]
    pub plan: Plan,
}

/// The sagas of policy actions.
pub struct PolicyActionSaga;

/// The output of a step that chose an existing volume and a size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extend {
    volume_id: String,
    to_gib: u64,
}

/// The output of the step that chose a group's new count.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Count {
    group_id: String,
    name: String,
    from: i64,
    to: u32,
}

impl SagaDef for PolicyActionSaga {
    const NAME: &'static str = "policy-action";
    type Params = ActionParams;
    type Env = Ctx;

    fn steps(p: &ActionParams) -> Vec<&'static str> {
        match p.spec {
            PolicyAction::AttachVolume { .. } => vec!["choose-volume", "create-volume", "attach", "wait-attached"],
            PolicyAction::ExtendVolume { .. } => vec!["choose-volume", "extend", "wait-extended"],
            PolicyAction::Scale { .. } => vec!["choose-count", "set-desired"],
            PolicyAction::RunRecipe { .. } => vec!["start-run", "wait-run"],
            PolicyAction::Reboot => vec!["reboot"],
            PolicyAction::Rebalance => vec!["start-migration", "wait-migration"],
            PolicyAction::Notify { .. } => vec!["queue", "wait-delivered"],
        }
    }

    async fn action(ctx: &Ctx, p: &ActionParams, step: &'static str, done: &Outputs) -> Result<Step, sqlx::Error> {
        match p.spec.clone() {
            PolicyAction::AttachVolume { size_gib } => attach_volume(ctx, p, step, done, size_gib).await,
            PolicyAction::ExtendVolume { by_gib, volume } => {
                extend_volume(ctx, p, step, done, by_gib, volume.map(|v| v.to_string())).await
            }
            PolicyAction::Scale { by, group } => scale(ctx, p, step, done, by, group).await,
            PolicyAction::RunRecipe { recipe, version, params } => {
                run_recipe(ctx, p, step, done, nubo_api::params::RunCreate { recipe, version, params }).await
            }
            PolicyAction::Reboot => reboot(ctx, p).await,
            PolicyAction::Rebalance => rebalance(ctx, p, step, done).await,
            PolicyAction::Notify { webhook } => notify(ctx, p, step, done, &webhook).await,
        }
    }

    async fn undo(ctx: &Ctx, p: &ActionParams, step: &'static str, done: &Outputs) -> Result<Undo, sqlx::Error> {
        let store = &ctx.store;
        let Some(vid) = done.get::<String>("choose-volume") else { return Ok(Undo::Done) };
        match (&p.spec, step) {
            // Let go of the volume; the agent detaches it.
            (PolicyAction::AttachVolume { .. }, "attach") => {
                if store.volume(&vid).await?.is_some_and(|v| v.instance_id.is_some()) {
                    store.detach_volume(&vid).await?;
                    ctx.bump();
                }
                Ok(Undo::Done)
            }
            // Delete it, once it is detached (and made: a volume still
            // being created cannot be deleted yet).
            (PolicyAction::AttachVolume { .. }, "create-volume") => match store.volume(&vid).await? {
                None => Ok(Undo::Done),
                Some(v) if v.desired == crate::volumes::Presence::Deleted => Ok(Undo::Done),
                Some(_) => {
                    if store.delete_volume(&vid).await? {
                        ctx.bump();
                        Ok(Undo::Done)
                    } else {
                        Ok(Undo::Wait)
                    }
                }
            },
            _ => Ok(Undo::Done),
        }
    }
}

async fn attach_volume(
    ctx: &Ctx,
    p: &ActionParams,
    step: &str,
    done: &Outputs,
    size_gib: u64,
) -> Result<Step, sqlx::Error> {
    let store = &ctx.store;
    let instance = p.target.as_str();
    let Some(inst) = store.instance(instance).await? else {
        return Ok(Step::Fail(format!("instance {instance} no longer exists")));
    };
    let Some(vid) = done.get::<String>("choose-volume") else {
        // Recorded first: whatever happens next, this is the volume.
        return Ok(Step::done(p.plan.volume_id.clone().unwrap_or_else(|| VolumeId::generate().to_string())));
    };
    let volume = store.volume(&vid).await?;
    if let Some(v) = volume.as_ref().filter(|v| v.state == VolumeState::Error) {
        return Ok(Step::Fail(format!("volume {vid} failed: {}", v.error.clone().unwrap_or_default())));
    }
    match (step, volume) {
        ("create-volume", Some(_)) => Ok(Step::done(&vid)),
        ("create-volume", None) => {
            let Some(host) = inst.host_id.clone() else {
                return Ok(Step::Retry("the instance has no host yet".into()));
            };
            let (host, limit) = match crate::placement::place_storage(ctx, size_gib, Some(&host)).await {
                Ok(x) => x,
                Err(e) => return Ok(Step::Retry(e.to_string())),
            };
            let name = format!("{}-{}", p.policy, &vid[4..12]);
            let new = NewVolume {
                id: &vid,
                project_id: &p.project_id,
                name: &name,
                host_id: &host,
                size_gib,
                snapshot_id: None,
            };
            match store.create_volume(&new, limit).await {
                Ok(()) => {
                    ctx.bump();
                    Ok(Step::done(&vid))
                }
                Err(StorageClaimError::Db(e)) => Err(e),
                Err(StorageClaimError::Quota(m) | StorageClaimError::Pool(m)) => Ok(Step::Retry(m)),
                Err(StorageClaimError::State) => Ok(Step::Retry("the volume changed meanwhile".into())),
            }
        }
        (_, None) => Ok(Step::Fail(format!("volume {vid} is gone"))),
        ("attach", Some(v)) => {
            if v.instance_id.as_deref() == Some(instance) {
                return Ok(Step::done(&vid));
            }
            if v.state != VolumeState::Available {
                // Still being made by its host.
                return Ok(Step::Wait);
            }
            match store.attach_volume(&vid, instance, nubo_api::MAX_VOLUMES_PER_INSTANCE).await? {
                AttachOutcome::Attached(_) => {
                    ctx.bump();
                    Ok(Step::done(&vid))
                }
                AttachOutcome::NoFreeSlot => Ok(Step::Fail(format!("instance {instance} has no free volume slot"))),
                AttachOutcome::NotAvailable => Ok(Step::Wait),
            }
        }
        (_, Some(v)) => {
            if v.instance_id.as_deref() == Some(instance) && v.attach_state == Some(AttachState::Attached) {
                Ok(Step::done(format!("{vid} attached as {}", v.guest_device.unwrap_or_else(|| "?".into()))))
            } else {
                Ok(Step::Wait)
            }
        }
    }
}

async fn extend_volume(
    ctx: &Ctx,
    p: &ActionParams,
    step: &str,
    done: &Outputs,
    by_gib: u64,
    volume: Option<String>,
) -> Result<Step, sqlx::Error> {
    let store = &ctx.store;
    let instance = p.target.as_str();
    let Some(Extend { volume_id: vid, to_gib: to }) = done.get::<Extend>("choose-volume") else {
        if let (Some(v), Some(to)) = (&p.plan.volume_id, p.plan.to_gib) {
            return Ok(Step::done(Extend { volume_id: v.clone(), to_gib: to }));
        }
        let vols = store.volumes_of_instance(instance).await?;
        let chosen = match &volume {
            Some(v) => vols.into_iter().find(|x| &x.id == v),
            None => vols.into_iter().max_by_key(|x| x.updated_at_ms.max(x.created_at_ms)),
        };
        let Some(v) = chosen else {
            return Ok(Step::Fail(format!("instance {instance} has no such volume attached")));
        };
        return Ok(Step::done(Extend { volume_id: v.id.clone(), to_gib: v.size_gib as u64 + by_gib }));
    };
    let Some(v) = store.volume(&vid).await? else { return Ok(Step::Fail(format!("volume {vid} is gone"))) };
    if step == "extend" {
        if (v.size_gib as u64) >= to {
            return Ok(Step::done(to));
        }
        let (_, limit) = match crate::placement::place_storage(ctx, to - v.size_gib as u64, Some(&v.host_id)).await {
            Ok(x) => x,
            Err(e) => return Ok(Step::Retry(e.to_string())),
        };
        return match store.extend_volume(&v, to, limit).await {
            Ok(()) => {
                ctx.bump();
                Ok(Step::done(to))
            }
            Err(StorageClaimError::Db(e)) => Err(e),
            Err(StorageClaimError::Quota(m) | StorageClaimError::Pool(m)) => Ok(Step::Retry(m)),
            Err(StorageClaimError::State) => Ok(Step::Retry("the volume is busy".into())),
        };
    }
    let seen = v.attach_state.is_none() || v.guest_size_bytes.is_some_and(|b| b as u64 >= to << 30);
    if v.actual_size_gib as u64 >= to && seen {
        Ok(Step::done(format!("{vid} is {to} GiB")))
    } else {
        Ok(Step::Wait)
    }
}

async fn scale(
    ctx: &Ctx,
    p: &ActionParams,
    step: &str,
    done: &Outputs,
    by: i64,
    group: Option<String>,
) -> Result<Step, sqlx::Error> {
    let store = &ctx.store;
    let Some(c) = done.get::<Count>("choose-count") else {
        let name = match group {
            Some(g) => g,
            None => match store.policy_scope_group(&p.policy_id).await? {
                Some(g) => g,
                None => return Ok(Step::Fail("the policy names no group".into())),
            },
        };
        let Some(g) = store.group_by_name(&p.project_id, &name).await? else {
            return Ok(Step::Fail(format!("group {name} does not exist")));
        };
        let to = match p.plan.desired {
            Some(d) => d,
            None => (g.desired + by).clamp(g.min_size, g.max_size) as u32,
        };
        return Ok(Step::done(Count { group_id: g.id, name, from: g.desired, to }));
    };
    debug_assert_eq!(step, "set-desired");
    store.set_group_desired(&c.group_id, c.to, &format!("policy {}: {by:+}", p.policy)).await?;
    ctx.bump();
    Ok(Step::done(format!("group {} desired {} -> {}", c.name, c.from, c.to)))
}

async fn run_recipe(
    ctx: &Ctx,
    p: &ActionParams,
    step: &str,
    done: &Outputs,
    req: nubo_api::params::RunCreate,
) -> Result<Step, sqlx::Error> {
    let Some(run_id) = done.get::<String>("start-run") else {
        if let Some(id) = &p.plan.run_id {
            return Ok(Step::done(id));
        }
        return match crate::policies::start_run(ctx, &p.project_id, &p.policy, &p.target, &req).await {
            Ok(run_id) => {
                ctx.bump();
                Ok(Step::done(run_id))
            }
            Err(e) => Ok(Step::Fail(e)),
        };
    };
    debug_assert_eq!(step, "wait-run");
    match ctx.store.run(&run_id).await? {
        Some(run) if run.state == RunState::Succeeded => Ok(Step::done(format!("run {run_id} succeeded"))),
        Some(run) if run.state == RunState::Failed => Ok(Step::Fail(format!(
            "run {run_id} failed: {}",
            run.error.unwrap_or_else(|| format!("exit {:?}", run.exit_code))
        ))),
        Some(_) => Ok(Step::Wait),
        None => Ok(Step::Fail(format!("run {run_id} is gone"))),
    }
}

async fn reboot(ctx: &Ctx, p: &ActionParams) -> Result<Step, sqlx::Error> {
    let instance = p.target.as_str();
    if p.plan.done {
        return Ok(Step::done(format!("{instance} rebooted")));
    }
    if ctx.store.set_desired(instance, &[PowerState::Running], PowerState::Running, false, true, "reboot").await? {
        ctx.bump();
        Ok(Step::done(format!("{instance} rebooted")))
    } else {
        Ok(Step::Fail(format!("{instance} is not running")))
    }
}

async fn rebalance(ctx: &Ctx, p: &ActionParams, step: &str, done: &Outputs) -> Result<Step, sqlx::Error> {
    let store = &ctx.store;
    let host = p.target.as_str();
    let Some(id) = done.get::<String>("start-migration") else {
        if let Some(id) = &p.plan.migration_id {
            return Ok(Step::done(id));
        }
        // A migration off this host already under way (this step's, if a
        // crash came between starting it and recording it) is the one to
        // follow.
        if let Some(m) = store.migrations_of_host(host).await?.into_iter().find(|m| m.active()) {
            return Ok(Step::done(m.id));
        }
        return match crate::policies::rebalance_once(ctx, host).await {
            Ok(id) => Ok(Step::done(id)),
            Err(e) => Ok(Step::Retry(e)),
        };
    };
    debug_assert_eq!(step, "wait-migration");
    match store.migration(&id).await? {
        Some(m) if m.state == MigrationState::Completed => Ok(Step::done(format!(
            "moved {} from {} to {} (downtime {} ms)",
            m.instance_id,
            m.source_host,
            m.target_host,
            m.downtime_ms.unwrap_or(0)
        ))),
        Some(m) if m.state == MigrationState::Failed => {
            Ok(Step::Fail(format!("migration {id} failed: {}", m.error.unwrap_or_default())))
        }
        Some(_) => Ok(Step::Wait),
        None => Ok(Step::Fail(format!("migration {id} is gone"))),
    }
}

async fn notify(ctx: &Ctx, p: &ActionParams, step: &str, done: &Outputs, webhook: &str) -> Result<Step, sqlx::Error> {
    let store = &ctx.store;
    let Some(id) = done.get::<String>("queue") else {
        if let Some(id) = &p.plan.notification_id {
            return Ok(Step::done(id));
        }
        let id = store.queue_notification(&p.firing_id, "policy", webhook, &payload(p)).await?;
        return Ok(Step::done(id));
    };
    debug_assert_eq!(step, "wait-delivered");
    match store.notification_state(&id).await? {
        Some(NotificationState::Sent) => Ok(Step::done("delivered")),
        Some(NotificationState::Failed) => Ok(Step::Fail("the webhook did not take it (see nubo event list)".into())),
        _ => Ok(Step::Wait),
    }
}

fn payload(p: &ActionParams) -> String {
    serde_json::json!({
        "firing_id": p.firing_id,
        "policy": p.policy,
        "target": p.target,
        "at_ms": p.at_ms,
        "values": serde_json::from_str::<serde_json::Value>(&p.values_json).unwrap_or_default(),
    })
    .to_string()
}

/// Makes (or finds) the saga of action `index` of firing `f`.
pub async fn new_action(
    ctx: &Ctx,
    f: &FiringRow,
    policy: &str,
    index: usize,
    spec: &PolicyAction,
    plan: &Plan,
) -> Result<SagaId, sqlx::Error> {
    let p = ActionParams {
        firing_id: f.id.clone(),
        policy_id: f.policy_id.clone(),
        policy: policy.to_string(),
        project_id: f.project_id.clone(),
        target: f.target.clone(),
        at_ms: f.at_ms,
        values_json: f.values_json.clone(),
        spec: spec.clone(),
        plan: plan.clone(),
    };
    saga::create::<PolicyActionSaga>(&ctx.store, &format!("policy-firing:{}:{index}", f.id), &p).await
}
