//! Provisioning: the project's key pairs (imported or generated), the
//! recipe catalogue (built-in recipes and the project's own, every
//! version), and the runs of recipes and commands inside instances. Runs
//! are only recorded here; the instance's host agent runs them through
//! the guest agent and reports back.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::provisioning::{KeypairRow, NewRun, RecipeRow, RunRow};
use crate::store::{char_boundary_from, now_ms, InstanceRow};
use crate::{keys, recipes, Ctx};
use nubo_api::agent::PowerState;
use nubo_api::agent::RunAction;
use nubo_api::ids::{KeypairId, RunId};
use nubo_api::params::{ExecCreate, KeypairCreate, RecipeCreate, RunCreate};
use nubo_api::views::InstanceState;
use nubo_api::views::{Keypair, KeypairCreated, Recipe, Run};
use std::sync::Arc;

/// Log bytes shown with a run when no `log_from` is asked (its tail).
const LOG_TAIL_BYTES: usize = 4096;
const DEFAULT_EXEC_TIMEOUT_SECS: u64 = 60;
const MAX_EXEC_TIMEOUT_SECS: u64 = 3600;

fn keypair_view(k: KeypairRow) -> AppResult<Keypair> {
    Ok(Keypair {
        id: k.id.parse().map_err(AppError::internal)?,
        name: k.name,
        fingerprint: k.fingerprint,
        key_type: k.key_type,
        public_key: k.public_key,
        created_at_ms: k.created_at_ms,
        // Filled by `app::tags::fill` where a view is answered.
        tags: Default::default(),
    })
}

/// Imports `p.public_key`, or generates an Ed25519 pair without one; the
/// private key is in the answer, and only in it.
pub async fn create_keypair(ctx: &Arc<Ctx>, caller: &Caller, p: &KeypairCreate) -> AppResult<KeypairCreated> {
    let project = authz::creation_project(caller)?;
    crate::validate::name(&p.name)?;
    let (public, private) = match &p.public_key {
        Some(text) => (keys::check_public_key(text).map_err(|e| AppError::BadRequest(e.to_string()))?, None),
        None => {
            let (public, private) =
                keys::generate(&format!("{}@nubo", p.name)).map_err(|e| AppError::internal(e.to_string()))?;
            (public, Some(private))
        }
    };
    let row = KeypairRow {
        id: KeypairId::generate().to_string(),
        project_id: project,
        name: p.name.clone(),
        key_type: public.key_type,
        fingerprint: public.fingerprint,
        public_key: public.line,
        created_at_ms: now_ms(),
    };
    if !ctx.store.insert_keypair(&row).await? {
        return Err(AppError::Conflict(format!(
            "key pair '{}' already exists in this project: delete it first or choose another name",
            p.name
        )));
    }
    Ok(KeypairCreated { keypair: keypair_view(row)?, private_key: private })
}

/// The project's key pairs.
pub async fn list_keypairs(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Keypair>> {
    let project = authz::caller_project(caller)?;
    let rows = ctx.store.keypairs(&project).await?;
    rows.into_iter().map(keypair_view).collect()
}

/// Deletes the project's key pair `name`. Instances launched with it keep
/// their key.
pub async fn delete_keypair(ctx: &Arc<Ctx>, caller: &Caller, name: &str) -> AppResult<()> {
    let project = authz::creation_project(caller)?;
    if ctx.store.delete_keypair(&project, name).await? {
        Ok(())
    } else {
        Err(AppError::NotFound { kind: "keypair", id: name.chars().take(64).collect() })
    }
}

fn recipe_view(r: RecipeRow) -> Recipe {
    Recipe {
        params: recipes::params_of(&r),
        source: r.project_id.map(|_| "project".to_string()).unwrap_or_else(|| "builtin".into()),
        name: r.name,
        version: r.version,
        description: r.description,
        kind: r.kind,
        body: r.body,
        timeout_secs: r.timeout_secs as u64,
        created_at_ms: r.created_at_ms,
    }
}

/// The recipe catalogue: built-in recipes and the project's own, every
/// version.
pub async fn list_recipes(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Recipe>> {
    let rows = ctx.store.recipes(authz::readable_project(caller)).await?;
    Ok(rows.into_iter().map(recipe_view).collect())
}

/// Adds a recipe, or a new version of one, to the project's catalogue. A
/// version, once added, cannot change.
pub async fn create_recipe(ctx: &Arc<Ctx>, caller: &Caller, p: &RecipeCreate) -> AppResult<Recipe> {
    let project = authz::creation_project(caller)?;
    let row = recipes::check(p, Some(&project))?;
    if !ctx.store.insert_recipe(&row).await? {
        return Err(AppError::Conflict(format!(
            "recipe {}@{} already exists: a version cannot change; give the new text a new version",
            p.name, p.version
        )));
    }
    let row = ctx
        .store
        .recipe(Some(&project), &p.name, Some(&p.version))
        .await?
        .ok_or_else(|| AppError::internal("recipe vanished"))?;
    Ok(recipe_view(row))
}

async fn find_recipe(ctx: &Ctx, caller: &Caller, name: &str, version: Option<&str>) -> AppResult<RecipeRow> {
    ctx.store.recipe(authz::readable_project(caller), name, version).await?.ok_or_else(|| AppError::NotFound {
        kind: "recipe",
        id: match version {
            Some(v) => format!("{name}@{v}"),
            None => name.to_string(),
        }
        .chars()
        .take(80)
        .collect(),
    })
}

/// One recipe: `version`, or the newest.
pub async fn show_recipe(ctx: &Arc<Ctx>, caller: &Caller, name: &str, version: Option<&str>) -> AppResult<Recipe> {
    Ok(recipe_view(find_recipe(ctx, caller, name, version).await?))
}

/// Deletes a project recipe: `version`, or every version. Built-in ones
/// stay.
pub async fn delete_recipe(ctx: &Arc<Ctx>, caller: &Caller, name: &str, version: Option<&str>) -> AppResult<()> {
    let project = authz::creation_project(caller)?;
    if ctx.store.delete_recipe(&project, name, version).await? > 0 {
        Ok(())
    } else {
        Err(AppError::NotFound { kind: "recipe", id: name.chars().take(64).collect() })
    }
}

/// The run's view; `log_from` picks the log from that byte offset,
/// otherwise the last few KiB are shown.
pub fn run_view(r: RunRow, log_from: Option<u64>) -> AppResult<Run> {
    let total = r.log_offset.max(0) as u64;
    // The stored log may have been trimmed at the front: it is the last
    // `log.len()` bytes before `total` (in the guest's bytes, close enough
    // after UTF-8 repair for paging).
    let kept_from = total.saturating_sub(r.log.len() as u64);
    let from = match log_from {
        Some(from) if from >= total => r.log.len(),
        Some(from) => from.saturating_sub(kept_from) as usize,
        None => r.log.len().saturating_sub(LOG_TAIL_BYTES),
    };
    let log = r.log[char_boundary_from(&r.log, from)..].to_string();
    Ok(Run {
        id: r.id.parse().map_err(AppError::internal)?,
        instance_id: r.instance_id.parse().map_err(AppError::internal)?,
        kind: r.kind,
        what: r.what,
        params: serde_json::from_str(&r.params_json).unwrap_or_default(),
        state: r.state,
        exit_code: r.exit_code.map(|c| c as i32),
        error: r.error,
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        log,
        log_next: total,
    })
}

/// Records a recipe run for an instance (at launch or later); returns the
/// run's id and, for a cloud-config recipe at launch, the rendered
/// cloud-config.
pub async fn start_recipe_run(
    ctx: &Ctx,
    caller: &Caller,
    instance_id: &str,
    p: &RunCreate,
    at_launch: bool,
) -> AppResult<(String, Option<String>)> {
    let recipe = find_recipe(ctx, caller, &p.recipe, p.version.as_deref()).await?;
    let (action, values) = recipes::render(&recipe, &p.params)?;
    let cloud_config = match action {
        RunAction::CloudInit if !at_launch => {
            return Err(AppError::BadRequest(format!(
                "recipe {}@{} is a cloud-config recipe: cloud-init applies those only at launch (`nubo instance run --recipe {}`); use a script recipe on a running instance",
                recipe.name, recipe.version, recipe.name
            )))
        }
        RunAction::CloudInit => Some(recipes::render_cloud_config(&recipe, &values)),
        _ => None,
    };
    let id = RunId::generate().to_string();
    let what = format!("{}@{}", recipe.name, recipe.version);
    let params_json = serde_json::to_string(&values).map_err(AppError::internal)?;
    ctx.store
        .insert_run(&NewRun {
            id: &id,
            instance_id,
            kind: "recipe",
            what: &what,
            params_json: &params_json,
            action: &action,
            timeout_secs: recipe.timeout_secs as u64,
        })
        .await?;
    Ok((id, cloud_config))
}

/// A recipe or cloud-config check before an instance exists: the same
/// errors as a run would give, so a bad launch is refused up front.
pub async fn check_launch_recipe(
    ctx: &Ctx,
    caller: &Caller,
    p: &RunCreate,
    user_data: Option<&str>,
) -> AppResult<Option<String>> {
    let recipe = find_recipe(ctx, caller, &p.recipe, p.version.as_deref()).await?;
    let (action, values) = recipes::render(&recipe, &p.params)?;
    if action == RunAction::CloudInit {
        if user_data.is_some() {
            return Err(AppError::BadRequest(format!(
                "recipe {}@{} is a cloud-config recipe and becomes the instance's user-data: give either --user-data or this recipe, or put both in one #cloud-config",
                recipe.name, recipe.version
            )));
        }
        return Ok(Some(recipes::render_cloud_config(&recipe, &values)));
    }
    Ok(None)
}

/// An instance the caller may use; runs cannot go to a terminated one.
async fn load_instance(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<InstanceRow> {
    let row = super::instances::load(ctx, caller, id, access).await?;
    if access == Access::Write && (row.desired == PowerState::Deleted || row.state == InstanceState::Terminated) {
        return Err(AppError::Conflict(format!("instance {} is terminated: nothing can run in it", row.id)));
    }
    Ok(row)
}

/// Runs a recipe in instance `id` (provisioning a running instance).
pub async fn create_run(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &RunCreate) -> AppResult<Run> {
    let row = load_instance(ctx, caller, id, Access::Write).await?;
    let (run, _) = start_recipe_run(ctx, caller, &row.id, p, false).await?;
    ctx.bump();
    let run = ctx.store.run(&run).await?.ok_or_else(|| AppError::internal("run vanished"))?;
    run_view(run, None)
}

/// Runs one command in instance `id` through its guest agent (like
/// `guest-exec`).
pub async fn create_exec(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &ExecCreate) -> AppResult<Run> {
    let row = load_instance(ctx, caller, id, Access::Write).await?;
    if p.command.is_empty() || p.command[0].is_empty() {
        return Err(AppError::BadRequest("the command is empty: give a program and its arguments".into()));
    }
    if p.command.len() > 256 || p.command.iter().map(String::len).sum::<usize>() > 64 * 1024 {
        return Err(AppError::BadRequest("the command is too long: at most 256 arguments and 64 KiB".into()));
    }
    if p.command.iter().any(|a| a.contains('\0')) {
        return Err(AppError::BadRequest("an argument contains a NUL byte".into()));
    }
    let timeout = p.timeout_secs.unwrap_or(DEFAULT_EXEC_TIMEOUT_SECS);
    if timeout == 0 || timeout > MAX_EXEC_TIMEOUT_SECS {
        return Err(AppError::BadRequest(format!("timeout_secs is {timeout}; use 1 to {MAX_EXEC_TIMEOUT_SECS}")));
    }
    let run_id = RunId::generate().to_string();
    let what: String = p.command.join(" ").chars().take(200).collect();
    let action = RunAction::Exec { command: p.command.clone() };
    ctx.store
        .insert_run(&NewRun {
            id: &run_id,
            instance_id: &row.id,
            kind: "exec",
            what: &what,
            params_json: "{}",
            action: &action,
            timeout_secs: timeout,
        })
        .await?;
    ctx.bump();
    let run = ctx.store.run(&run_id).await?.ok_or_else(|| AppError::internal("run vanished"))?;
    run_view(run, None)
}

/// Instance `id`'s last 100 runs, newest first (log tails).
pub async fn list_runs(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Vec<Run>> {
    let row = load_instance(ctx, caller, id, Access::Read).await?;
    let runs = ctx.store.runs(&row.id, 100).await?;
    runs.into_iter().map(|r| run_view(r, None)).collect()
}

/// One run with its state and log: from byte `log_from` (the previous
/// answer's `log_next`, to follow it), or its tail.
pub async fn show_run(ctx: &Arc<Ctx>, caller: &Caller, id: &str, log_from: Option<u64>) -> AppResult<Run> {
    let id: RunId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let run = ctx.store.run(id.as_str()).await?.ok_or(AppError::NotFound { kind: "run", id: id.to_string() })?;
    let instance = ctx.store.instance(&run.instance_id).await?;
    authz::check(caller, Access::Read, instance.and_then(|i| i.project_id).as_deref(), "run", id.as_str())?;
    run_view(run, log_from)
}
