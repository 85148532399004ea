//! Launching an instance with a recipe as a saga (see `crate::saga`):
//! place and record the instance, then start the recipe's run. A run that
//! cannot start terminates the instance it was for, so a launch that
//! fails leaves no instance running without its provisioning; and a
//! server that dies between the two starts the run from its next round
//! (`resume`), never placing the instance twice. `app::instances::launch`
//! checks the request first, as for any launch, and makes the saga with
//! what it decided (the instance's id, name, image, size, networks).

use crate::auth::{Caller, Role};
use crate::error::AppError;
use crate::saga::{self, Outputs, SagaDef, SagaState, Step, Undo};
use crate::store::{InstanceRow, NewInstance};
use crate::Ctx;
use nubo_api::ids::InstanceId;
use nubo_api::params::RunCreate;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// The launcher, as the run's recipe lookup needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallerParams {
    pub user_id: String,
    pub user_name: String,
    pub admin: bool,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub role: String,
}

impl CallerParams {
    pub fn of(c: &Caller) -> Self {
        Self {
            user_id: c.user_id.clone(),
            user_name: c.user_name.clone(),
            admin: c.admin,
            project_id: c.project_id.clone(),
            project_name: c.project_name.clone(),
            role: c.role.as_str().to_string(),
        }
    }

    fn caller(&self) -> Caller {
        let role = match self.role.as_str() {
            "admin" => Role::Admin,
            "member" => Role::Member,
            "reader" => Role::Reader,
            _ => Role::None,
        };
        Caller {
            user_id: self.user_id.clone(),
            user_name: self.user_name.clone(),
            admin: self.admin,
            project_id: self.project_id.clone(),
            project_name: self.project_name.clone(),
            role,
        }
    }
}

/// The instance as `launch` decided it (an owned [`NewInstance`]), and
/// the recipe to run in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchParams {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub user_data: Option<String>,
    pub guest_ports: Vec<u16>,
    pub key: Option<(String, String)>,
    pub imds_tokens: String,
    pub instance_type: Option<String>,
    pub reservation_id: Option<String>,
    pub launch_index: u32,
    pub client_token: Option<String>,
    pub security_groups: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub group_id: Option<String>,
    pub networks: Vec<String>,
    /// Firmware, Secure Boot, TPM, display (the `hardware` column's JSON).
    #[serde(default)]
    pub hardware: Option<String>,
    pub caller: CallerParams,
    pub recipe: RunCreate,
}

impl LaunchParams {
    pub fn new(new: &NewInstance<'_>, caller: &Caller, recipe: &RunCreate) -> Self {
        let r = &new.ec2;
        Self {
            id: new.id.to_string(),
            project_id: new.project_id.to_string(),
            name: new.name.to_string(),
            image: new.image.to_string(),
            image_id: new.image_id.to_string(),
            vcpus: new.vcpus,
            memory_mib: new.memory_mib,
            disk_gib: new.disk_gib,
            user_data: new.user_data.map(String::from),
            guest_ports: new.guest_ports.to_vec(),
            key: new.key.map(|(n, k)| (n.to_string(), k.to_string())),
            imds_tokens: new.imds_tokens.to_string(),
            instance_type: r.instance_type.map(String::from),
            reservation_id: r.reservation_id.map(String::from),
            launch_index: r.launch_index,
            client_token: r.client_token.map(String::from),
            security_groups: r.security_groups.to_vec(),
            tags: r.tags.to_vec(),
            group_id: r.group_id.map(String::from),
            networks: r.networks.to_vec(),
            hardware: r.hardware.map(String::from),
            caller: CallerParams::of(caller),
            recipe: recipe.clone(),
        }
    }
}

/// What the launch saga's steps work with: the server, and where a step
/// leaves the error that failed it for the caller waiting on the launch
/// (a resumed saga's is not read).
pub struct LaunchEnv {
    pub ctx: Arc<Ctx>,
    failure: Mutex<Option<AppError>>,
}

impl LaunchEnv {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx, failure: Mutex::new(None) }
    }

    fn fail(&self, e: AppError) -> Step {
        let why = e.to_string();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        Step::Fail(why)
    }

    fn take_failure(&self) -> Option<AppError> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The steps of a launch with a recipe.
pub struct RecipeLaunch;

impl SagaDef for RecipeLaunch {
    const NAME: &'static str = "recipe-launch";
    type Params = LaunchParams;
    type Env = LaunchEnv;

    fn steps(_: &LaunchParams) -> Vec<&'static str> {
        vec!["place", "start-run"]
    }

    async fn action(
        env: &LaunchEnv,
        p: &LaunchParams,
        step: &'static str,
        done: &Outputs,
    ) -> Result<Step, sqlx::Error> {
        let ctx = &env.ctx;
        if step == "place" {
            // Placed by a try that crashed: that is the instance.
            if let Some(row) = ctx.store.instance(&p.id).await? {
                return Ok(Step::done(row.host_id));
            }
            let id: InstanceId = match p.id.parse() {
                Ok(id) => id,
                Err(_) => return Ok(Step::Fail(format!("the instance id {} does not parse", p.id))),
            };
            let new = NewInstance {
                id: &id,
                project_id: &p.project_id,
                name: &p.name,
                image: &p.image,
                image_id: &p.image_id,
                vcpus: p.vcpus,
                memory_mib: p.memory_mib,
                disk_gib: p.disk_gib,
                user_data: p.user_data.as_deref(),
                guest_ports: &p.guest_ports,
                key: p.key.as_ref().map(|(n, k)| (n.as_str(), k.as_str())),
                imds_tokens: &p.imds_tokens,
                ec2: crate::launch::LaunchRecord {
                    instance_type: p.instance_type.as_deref(),
                    reservation_id: p.reservation_id.as_deref(),
                    launch_index: p.launch_index,
                    client_token: p.client_token.as_deref(),
                    security_groups: &p.security_groups,
                    tags: &p.tags,
                    group_id: p.group_id.as_deref(),
                    networks: &p.networks,
                    // Launches with a recipe come through REST, which
                    // asks for no particular address.
                    private_address: None,
                    cdrom: None,
                    hardware: p.hardware.as_deref(),
                    restore: None,
                    verification_of: None,
                },
            };
            return match crate::placement::place(ctx, &new).await {
                Ok((host, _)) => {
                    tracing::info!(instance = %id, %host, "instance placed");
                    Ok(Step::done(Some(host)))
                }
                Err(e) => Ok(env.fail(e)),
            };
        }
        // The run started by a try that crashed: that is the run.
        if let Some(run) = ctx.store.runs(&p.id, 1).await?.into_iter().next() {
            return Ok(Step::done(run.id));
        }
        let run =
            match crate::app::provisioning::start_recipe_run(ctx, &p.caller.caller(), &p.id, &p.recipe, true).await {
                Ok((run, _)) => run,
                Err(e) => return Ok(env.fail(e)),
            };
        let host = done.get::<Option<String>>("place").flatten().unwrap_or_default();
        announce(ctx, &host, !p.networks.is_empty());
        Ok(Step::done(run))
    }

    async fn undo(env: &LaunchEnv, p: &LaunchParams, step: &'static str, _: &Outputs) -> Result<Undo, sqlx::Error> {
        // Terminate what was launched (the run, the last step, goes with it).
        if step == "place" && env.ctx.store.terminate(&p.id).await? {
            env.ctx.bump();
        }
        Ok(Undo::Done)
    }
}

/// Tells the hosts of a placed instance: its own; with networks, every
/// host (they gain a VXLAN peer and, through source-group rules, maybe a
/// new allowed address).
pub fn announce(ctx: &Ctx, host: &str, networks: bool) {
    if networks {
        ctx.bump();
    } else {
        ctx.bump_host(host);
    }
}

/// Makes the saga launching `p` (one per instance id) and runs it: the
/// instance, or the error that failed it (then nothing of it runs).
pub async fn launch(ctx: &Arc<Ctx>, p: &LaunchParams) -> Result<InstanceRow, AppError> {
    let id = new_launch(ctx, p).await?;
    let env = LaunchEnv::new(ctx.clone());
    let s = saga::run::<RecipeLaunch>(&ctx.store, &env, &id).await?;
    match s.state {
        SagaState::Done => ctx.store.instance(&p.id).await?.ok_or_else(|| AppError::internal("instance vanished")),
        _ => Err(env
            .take_failure()
            .unwrap_or_else(|| AppError::internal(s.error.unwrap_or_else(|| "the launch did not finish".into())))),
    }
}

/// Makes the saga launching `p`.
pub async fn new_launch(ctx: &Ctx, p: &LaunchParams) -> Result<saga::SagaId, sqlx::Error> {
    saga::create::<RecipeLaunch>(&ctx.store, &format!("recipe-launch:{}", p.id), p).await
}

/// Runs on the launches a crash (or a database error) left unfinished.
pub async fn resume(ctx: &Arc<Ctx>) -> Result<usize, sqlx::Error> {
    saga::resume_all::<RecipeLaunch>(&ctx.store, &LaunchEnv::new(ctx.clone())).await
}
