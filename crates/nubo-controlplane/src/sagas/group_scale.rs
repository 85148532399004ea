//! Group scaling as sagas (see `crate::saga`): launching one member
//! (launch the instance, give it the group's health check, note it in the
//! group's activity history), and scaling in (note which members go, then
//! terminate them). `groups::reconcile` decides how many; these do it, so
//! a server that dies halfway neither loses a member nor launches one
//! twice, and a member whose health check cannot be made is not left
//! running unwatched.
//!
//! Terminating is the one thing that cannot be taken back, so in the
//! scale-in saga it is the last step: nothing after it can fail.

use crate::auth::{Caller, Role};
use crate::checks::{CheckSpec, NewCheck};
use crate::groups::{GroupRow, HEALTH_CHECK};
use crate::saga::{self, Outputs, SagaDef, SagaId, Status, Step, Undo};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::automation::GroupHealthCheck;
use nubo_api::ids::CheckId;
use nubo_api::params::InstanceCreate;
use nubo_api::views::InstanceState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a member's launch needs of its group, copied when the saga is
/// made (a resumed saga launches what was decided then).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchParams {
    pub group_id: String,
    pub group_name: String,
    pub project_id: String,
    pub template_json: String,
    /// The launch template members come from (resolved at each launch,
    /// so `$Default` and `$Latest` follow the template); None: `template_json`.
    #[serde(default)]
    pub launch_template: Option<String>,
    pub health_json: Option<String>,
    /// The member's number (its name is `GROUP-N`), taken from the group's
    /// counter before the saga was made.
    pub n: i64,
    /// For the activity's text: "(POSITION of DESIRED)".
    pub position: usize,
    pub desired: usize,
}

impl LaunchParams {
    fn template(&self) -> Option<InstanceCreate> {
        serde_json::from_str(&self.template_json).ok()
    }

    fn health(&self) -> Option<GroupHealthCheck> {
        self.health_json.as_deref().and_then(|h| serde_json::from_str(h).ok())
    }

    fn member_name(&self) -> String {
        format!("{}-{}", self.group_name, self.n)
    }
}

/// Launching one member of a group.
pub struct MemberLaunch;

impl SagaDef for MemberLaunch {
    const NAME: &'static str = "group-member-launch";
    type Params = LaunchParams;
    type Env = Arc<Ctx>;

    fn steps(_: &LaunchParams) -> Vec<&'static str> {
        vec!["launch", "health-check", "record"]
    }

    async fn action(ctx: &Arc<Ctx>, p: &LaunchParams, step: &'static str, done: &Outputs) -> Result<Step, sqlx::Error> {
        match step {
            "launch" => launch_instance(ctx, p).await,
            "health-check" => {
                let Some(instance) = done.get::<String>("launch") else {
                    return Ok(Step::Fail("the launch step recorded no instance".into()));
                };
                health_check(ctx, p, &instance).await
            }
            _ => {
                let Some(instance) = done.get::<String>("launch") else {
                    return Ok(Step::Fail("the launch step recorded no instance".into()));
                };
                let detail = format!("launched {instance} ({} of {})", p.position, p.desired);
                record_once(ctx, &p.group_id, "launch", &detail).await?;
                Ok(Step::done(instance))
            }
        }
    }

    async fn undo(ctx: &Arc<Ctx>, _: &LaunchParams, step: &'static str, done: &Outputs) -> Result<Undo, sqlx::Error> {
        match step {
            "launch" => {
                if let Some(instance) = done.get::<String>("launch") {
                    terminate(ctx, &instance).await?;
                }
            }
            "health-check" => {
                if let Some(check) = done.get::<String>("health-check") {
                    ctx.store.delete_check(&check).await?;
                }
            }
            // The last step: never undone (nothing follows it to fail).
            _ => {}
        }
        Ok(Undo::Done)
    }
}

/// The identity a group launches as: a member of its project.
fn group_caller(p: &LaunchParams) -> Caller {
    Caller {
        user_id: format!("group:{}", p.group_name),
        user_name: format!("group:{}", p.group_name),
        admin: false,
        project_id: Some(p.project_id.clone()),
        project_name: None,
        role: Role::Member,
    }
}

/// Launches the member, or finds the one an earlier try launched (its
/// name is the saga's own: `GROUP-N`).
async fn launch_instance(ctx: &Arc<Ctx>, p: &LaunchParams) -> Result<Step, sqlx::Error> {
    let name = p.member_name();
    let earlier: Option<String> = sqlx::query_scalar(
        "SELECT id FROM instances WHERE group_id = $1 AND name = $2 AND desired <> 'deleted' ORDER BY id LIMIT 1",
    )
    .bind(&p.group_id)
    .bind(&name)
    .fetch_optional(&ctx.store.pool)
    .await?;
    if let Some(id) = earlier {
        return Ok(Step::done(id));
    }
    let caller = group_caller(p);
    let (mut template, instance_type) = match &p.launch_template {
        Some(reference) => match from_launch_template(ctx, &caller, reference).await {
            Ok(t) => t,
            Err(e) => return Ok(Step::Fail(format!("launch template {reference}: {e}"))),
        },
        None => match p.template() {
            Some(t) => (t, None),
            None => return Ok(Step::Fail("the group's template does not parse".into())),
        },
    };
    template.name = Some(name);
    template.tags.insert("nubo:group".into(), p.group_name.clone());
    let record = crate::launch::LaunchRecord {
        group_id: Some(&p.group_id),
        instance_type: instance_type.as_deref(),
        ..Default::default()
    };
    match crate::app::instances::launch(ctx, &caller, &template, record).await {
        Ok(row) => Ok(Step::done(row.id)),
        Err(e) => Ok(Step::Fail(e.to_string())),
    }
}

/// What a member launched from a launch template asks for, and its type.
async fn from_launch_template(
    ctx: &Ctx,
    caller: &Caller,
    reference: &str,
) -> crate::error::AppResult<(InstanceCreate, Option<String>)> {
    let (_, _, data) = crate::app::launch_templates::resolve(ctx, caller, reference).await?;
    crate::app::launch_templates::instance_create(ctx, &caller.project_id.clone().unwrap_or_default(), &data, None)
        .await
}

/// Gives the member the group's health check (if it has one), or finds
/// the one an earlier try made. Its output is the check's id, or null.
async fn health_check(ctx: &Ctx, p: &LaunchParams, instance: &str) -> Result<Step, sqlx::Error> {
    let Some(h) = p.health() else { return Ok(Step::Done(serde_json::Value::Null)) };
    let earlier: Option<String> = sqlx::query_scalar("SELECT id FROM checks WHERE target = $1 AND name = $2")
        .bind(instance)
        .bind(HEALTH_CHECK)
        .fetch_optional(&ctx.store.pool)
        .await?;
    if let Some(id) = earlier {
        return Ok(Step::done(id));
    }
    let spec = match h.kind.as_str() {
        "http" => {
            CheckSpec::Http { port: h.port, path: h.path.clone().unwrap_or_else(|| "/".into()), expect_status: 200 }
        }
        _ => CheckSpec::Tcp { port: h.port },
    };
    let interval = h.interval_secs.unwrap_or(10).clamp(1, 3600);
    let id = CheckId::generate();
    ctx.store
        .insert_check(&NewCheck {
            id: &id,
            project_id: Some(&p.project_id),
            name: HEALTH_CHECK,
            target: instance,
            spec: &spec,
            interval_secs: interval,
            retry_interval_secs: (interval / 2).max(1),
            max_attempts: h.max_attempts.unwrap_or(3).clamp(1, 10),
            timeout_secs: 5,
        })
        .await?;
    Ok(Step::done(id.to_string()))
}

/// Asks for `instance` to be terminated (a no-op if it already is).
async fn terminate(ctx: &Ctx, instance: &str) -> Result<bool, sqlx::Error> {
    let changed = ctx.store.terminate(instance).await?;
    if changed {
        ctx.bump();
    }
    Ok(changed)
}

/// Notes an activity of the group unless the same one is noted already
/// (a step run again after a crash notes it once).
async fn record_once(ctx: &Ctx, group: &str, kind: &str, detail: &str) -> Result<(), sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM group_activities WHERE group_id = $1 AND kind = $2 AND detail = $3")
            .bind(group)
            .bind(kind)
            .bind(detail)
            .fetch_one(&ctx.store.pool)
            .await?;
    if n == 0 {
        ctx.store.group_activity(group, kind, detail).await?;
    }
    Ok(())
}

/// Makes the saga launching member number `n` of `g` (one per number:
/// made again, it is the same saga), `position` of `desired`.
pub async fn new_launch(
    ctx: &Ctx,
    g: &GroupRow,
    n: i64,
    position: usize,
    desired: usize,
) -> Result<SagaId, sqlx::Error> {
    let p = LaunchParams {
        group_id: g.id.clone(),
        group_name: g.name.clone(),
        project_id: g.project_id.clone(),
        template_json: g.template_json.clone(),
        launch_template: g.launch_template.clone(),
        health_json: g.health_json.clone(),
        n,
        position,
        desired,
    };
    saga::create::<MemberLaunch>(&ctx.store, &format!("group-launch:{}:{n}", g.id), &p).await
}

/// Launches one member of `g` through its saga: the new instance's id,
/// or why it could not be launched (then nothing of it is left).
pub async fn launch_member(
    ctx: &Arc<Ctx>,
    g: &GroupRow,
    position: usize,
    desired: usize,
) -> Result<Result<String, String>, sqlx::Error> {
    let n = ctx.store.next_member_number(&g.id).await?;
    let id = new_launch(ctx, g, n, position, desired).await?;
    let s = saga::run::<MemberLaunch>(&ctx.store, ctx, &id).await?;
    Ok(outcome(s))
}

/// What a group saga's status means to the reconciler: its result, or
/// why it failed (or that it is still under way).
fn outcome(s: Status) -> Result<String, String> {
    match s.state {
        saga::SagaState::Done => Ok(s.output.and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
        saga::SagaState::Unwound => Err(s.error.unwrap_or_else(|| "the launch failed".into())),
        _ => Err(s.error.unwrap_or_else(|| "the launch is still under way".into())),
    }
}

/// Which members a scale-in terminates, and to what count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleInParams {
    pub group_id: String,
    pub desired: usize,
    /// Instance ids, newest first.
    pub victims: Vec<String>,
}

impl ScaleInParams {
    fn detail(&self, victim: &str) -> String {
        format!("terminating {victim} (scale in to {})", self.desired)
    }
}

/// Scaling a group in: note the members that go, then terminate them.
pub struct ScaleIn;

impl SagaDef for ScaleIn {
    const NAME: &'static str = "group-scale-in";
    type Params = ScaleInParams;
    type Env = Arc<Ctx>;

    fn steps(_: &ScaleInParams) -> Vec<&'static str> {
        vec!["record", "terminate"]
    }

    async fn action(ctx: &Arc<Ctx>, p: &ScaleInParams, step: &'static str, _: &Outputs) -> Result<Step, sqlx::Error> {
        if step == "record" {
            // Only members still running or stopped: one already being
            // terminated (by someone else) is not noted, as it is not
            // terminated by this saga; nor one protected since it was
            // chosen (a saga resumed after a crash may run much later).
            let mut noted = Vec::new();
            for v in &p.victims {
                let Some(r) = ctx.store.instance(v).await? else { continue };
                if matches!(r.desired, PowerState::Running | PowerState::Stopped)
                    && r.state != InstanceState::Terminated
                    && r.termination_protection == 0
                {
                    record_once(ctx, &p.group_id, "terminate", &p.detail(v)).await?;
                    noted.push(v.clone());
                }
            }
            return Ok(Step::done(noted));
        }
        for v in &p.victims {
            // Termination protection turned on since the victims were chosen holds.
            if ctx.store.instance(v).await?.is_some_and(|r| r.termination_protection == 1) {
                continue;
            }
            terminate(ctx, v).await?;
        }
        Ok(Step::done(&p.victims))
    }

    async fn undo(ctx: &Arc<Ctx>, p: &ScaleInParams, step: &'static str, done: &Outputs) -> Result<Undo, sqlx::Error> {
        // Only the notes can be undone (terminating is the last step).
        if step == "record" {
            for v in done.get::<Vec<String>>("record").unwrap_or_default() {
                sqlx::query("DELETE FROM group_activities WHERE group_id = $1 AND kind = 'terminate' AND detail = $2")
                    .bind(&p.group_id)
                    .bind(p.detail(&v))
                    .execute(&ctx.store.pool)
                    .await?;
            }
        }
        Ok(Undo::Done)
    }
}

/// Makes the saga scaling `group` in to `desired` by terminating `victims`.
pub async fn new_scale_in(ctx: &Ctx, group: &str, desired: usize, victims: Vec<String>) -> Result<SagaId, sqlx::Error> {
    let p = ScaleInParams { group_id: group.to_string(), desired, victims };
    let key = format!("group-scale-in:{group}:{}", SagaId::generate());
    saga::create::<ScaleIn>(&ctx.store, &key, &p).await
}

/// Scales `g` in to `desired`, terminating `victims`, through its saga.
pub async fn scale_in(ctx: &Arc<Ctx>, g: &GroupRow, desired: usize, victims: Vec<String>) -> Result<(), sqlx::Error> {
    let id = new_scale_in(ctx, &g.id, desired, victims).await?;
    saga::run::<ScaleIn>(&ctx.store, ctx, &id).await?;
    Ok(())
}

/// Finishes the group sagas a crash (or a database error) left unfinished:
/// run first each round, so that the members they launch count.
pub async fn resume(ctx: &Arc<Ctx>) -> Result<(), sqlx::Error> {
    saga::resume_all::<MemberLaunch>(&ctx.store, ctx).await?;
    saga::resume_all::<ScaleIn>(&ctx.store, ctx).await?;
    Ok(())
}
