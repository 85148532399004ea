//! `/api/v1/keypairs`, `/api/v1/recipes` and the runs of recipes and
//! commands inside instances (`/api/v1/instances/{id}/runs`, `.../exec`,
//! `/api/v1/runs/{id}`). Handlers record what should run; the instance's
//! host agent runs it through the guest agent and reports back.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{ApiJson, ApiQuery, AppError, AppResult};
use crate::provisioning::{KeypairRow, NewRun, RecipeRow, RunRow};
use crate::store::{char_boundary_from, now_ms};
use crate::{keys, recipes, Ctx};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::agent::RunAction;
use nubo_api::ids::{KeypairId, RunId};
use nubo_api::params::{ExecCreate, KeypairCreate, RecipeCreate, RunCreate};
use nubo_api::views::{Keypair, KeypairCreated, Recipe, Run};
use serde::Deserialize;
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
    })
}

/// Import a public key, or generate a key pair (the private key is returned once).
#[utoipa::path(post, path = "/api/v1/keypairs", tag = "keypairs", request_body = KeypairCreate,
    responses((status = 201, body = KeypairCreated),
        (status = 400, description = "invalid name or not an OpenSSH public key", body = nubo_api::error::ErrorBody),
        (status = 409, description = "the project has a key pair of that name", body = nubo_api::error::ErrorBody)))]
pub async fn create_keypair(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<KeypairCreate>,
) -> AppResult<(StatusCode, Json<KeypairCreated>)> {
    let project = authz::creation_project(&caller)?;
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
    Ok((StatusCode::CREATED, Json(KeypairCreated { keypair: keypair_view(row)?, private_key: private })))
}

/// The project's key pairs.
#[utoipa::path(get, path = "/api/v1/keypairs", tag = "keypairs", operation_id = "list_keypairs",
    responses((status = 200, body = Vec<Keypair>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_keypairs(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Keypair>>> {
    let project = authz::caller_project(&caller)?;
    let rows = ctx.store.keypairs(&project).await?;
    Ok(Json(rows.into_iter().map(keypair_view).collect::<AppResult<_>>()?))
}

/// Delete a key pair. Instances launched with it keep their key.
#[utoipa::path(delete, path = "/api/v1/keypairs/{name}", tag = "keypairs",
    params(("name" = String, Path, description = "key pair name")),
    responses((status = 204, description = "deleted"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_keypair(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
) -> AppResult<StatusCode> {
    let project = authz::creation_project(&caller)?;
    if ctx.store.delete_keypair(&project, &name).await? {
        Ok(StatusCode::NO_CONTENT)
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

/// The recipe catalogue: built-in recipes and the project's own, every version.
#[utoipa::path(get, path = "/api/v1/recipes", tag = "recipes", operation_id = "list_recipes",
    responses((status = 200, body = Vec<Recipe>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_recipes(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Recipe>>> {
    let rows = ctx.store.recipes(authz::readable_project(&caller)).await?;
    Ok(Json(rows.into_iter().map(recipe_view).collect()))
}

/// Add a recipe, or a new version of one, to the project's catalogue.
#[utoipa::path(post, path = "/api/v1/recipes", tag = "recipes", request_body = RecipeCreate,
    responses((status = 201, body = Recipe), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 409, description = "that name and version exist", body = nubo_api::error::ErrorBody)))]
pub async fn create_recipe(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<RecipeCreate>,
) -> AppResult<(StatusCode, Json<Recipe>)> {
    let project = authz::creation_project(&caller)?;
    let row = recipes::check(&p, Some(&project))?;
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
    Ok((StatusCode::CREATED, Json(recipe_view(row))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct VersionQuery {
    /// A version; the newest when absent.
    pub version: Option<String>,
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

/// One recipe (the newest version unless `version` is given).
#[utoipa::path(get, path = "/api/v1/recipes/{name}", tag = "recipes", operation_id = "show_recipe",
    params(("name" = String, Path, description = "recipe name"), VersionQuery),
    responses((status = 200, body = Recipe), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_recipe(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> AppResult<Json<Recipe>> {
    Ok(Json(recipe_view(find_recipe(&ctx, &caller, &name, q.version.as_deref()).await?)))
}

/// Delete a project recipe (every version, or one). Built-in ones stay.
#[utoipa::path(delete, path = "/api/v1/recipes/{name}", tag = "recipes",
    params(("name" = String, Path, description = "recipe name"), VersionQuery),
    responses((status = 204, description = "deleted"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_recipe(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> AppResult<StatusCode> {
    let project = authz::creation_project(&caller)?;
    if ctx.store.delete_recipe(&project, &name, q.version.as_deref()).await? > 0 {
        Ok(StatusCode::NO_CONTENT)
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

/// Records a recipe run for an instance (at launch or later).
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
async fn load_instance(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<crate::store::InstanceRow> {
    let row = super::instances::load(ctx, caller, id, access).await?;
    if access == Access::Write && (row.desired == "deleted" || row.state == "terminated") {
        return Err(AppError::Conflict(format!("instance {} is terminated: nothing can run in it", row.id)));
    }
    Ok(row)
}

/// Run a recipe in an instance (provisioning a running instance).
#[utoipa::path(post, path = "/api/v1/instances/{id}/runs", tag = "runs", request_body = RunCreate,
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Run), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_run(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<RunCreate>,
) -> AppResult<(StatusCode, Json<Run>)> {
    let row = load_instance(&ctx, &caller, &id, Access::Write).await?;
    let (run, _) = start_recipe_run(&ctx, &caller, &row.id, &p, false).await?;
    ctx.bump();
    let run = ctx.store.run(&run).await?.ok_or_else(|| AppError::internal("run vanished"))?;
    Ok((StatusCode::ACCEPTED, Json(run_view(run, None)?)))
}

/// Run one command in an instance through its guest agent (like `guest-exec`).
#[utoipa::path(post, path = "/api/v1/instances/{id}/exec", tag = "runs", request_body = ExecCreate,
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Run), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_exec(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<ExecCreate>,
) -> AppResult<(StatusCode, Json<Run>)> {
    let row = load_instance(&ctx, &caller, &id, Access::Write).await?;
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
    Ok((StatusCode::ACCEPTED, Json(run_view(run, None)?)))
}

/// An instance's runs, newest first (log tails).
#[utoipa::path(get, path = "/api/v1/instances/{id}/runs", tag = "runs", operation_id = "list_runs",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = Vec<Run>), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn list_runs(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<Run>>> {
    let row = load_instance(&ctx, &caller, &id, Access::Read).await?;
    let runs = ctx.store.runs(&row.id, 100).await?;
    Ok(Json(runs.into_iter().map(|r| run_view(r, None)).collect::<AppResult<_>>()?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RunQuery {
    /// Return the log from this byte offset (the previous answer's `log_next`) to follow it.
    pub log_from: Option<u64>,
}

/// One run with its state and log.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", operation_id = "show_run",
    params(("id" = String, Path, description = "run id, run-..."), RunQuery),
    responses((status = 200, body = Run), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_run(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<RunQuery>,
) -> AppResult<Json<Run>> {
    let id: RunId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let run = ctx.store.run(id.as_str()).await?.ok_or(AppError::NotFound { kind: "run", id: id.to_string() })?;
    let instance = ctx.store.instance(&run.instance_id).await?;
    authz::check(&caller, Access::Read, instance.and_then(|i| i.project_id).as_deref(), "run", id.as_str())?;
    Ok(Json(run_view(run, q.log_from)?))
}
