//! `/api/v1/keypairs`, `/api/v1/recipes` and the runs of recipes and
//! commands inside instances (`/api/v1/instances/{id}/runs`, `.../exec`,
//! `/api/v1/runs/{id}`). The handlers are adapters over
//! `app::provisioning`, which records what should run; the instance's
//! host agent runs it through the guest agent and reports back.

use crate::app::provisioning as app;
use crate::auth::Caller;
use crate::error::{ApiJson, ApiQuery, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{ExecCreate, KeypairCreate, RecipeCreate, RunCreate};
use nubo_api::views::{Keypair, KeypairCreated, Recipe, Run};
use serde::Deserialize;
use std::sync::Arc;

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
    Ok((StatusCode::CREATED, Json(app::create_keypair(&ctx, &caller, &p).await?)))
}

/// The project's key pairs.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/keypairs", tag = "keypairs", operation_id = "list_keypairs",
    params(crate::pagination::ListQuery, crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<Keypair>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_keypairs(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    page: Page,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Paged<Keypair>> {
    Ok(Paged(crate::app::tags::select(&ctx, &caller, app::list_keypairs(&ctx, &caller).await?, &tags).await?, page))
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
    app::delete_keypair(&ctx, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The recipe catalogue: built-in recipes and the project's own, every version.
#[utoipa::path(get, path = "/api/v1/recipes", tag = "recipes", operation_id = "list_recipes",
    responses((status = 200, body = Vec<Recipe>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_recipes(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Recipe>>> {
    Ok(Json(app::list_recipes(&ctx, &caller).await?))
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
    Ok((StatusCode::CREATED, Json(app::create_recipe(&ctx, &caller, &p).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct VersionQuery {
    /// A version; the newest when absent.
    pub version: Option<String>,
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
    Ok(Json(app::show_recipe(&ctx, &caller, &name, q.version.as_deref()).await?))
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
    app::delete_recipe(&ctx, &caller, &name, q.version.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
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
    Ok((StatusCode::ACCEPTED, Json(app::create_run(&ctx, &caller, &id, &p).await?)))
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
    Ok((StatusCode::ACCEPTED, Json(app::create_exec(&ctx, &caller, &id, &p).await?)))
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
    Ok(Json(app::list_runs(&ctx, &caller, &id).await?))
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
    Ok(Json(app::show_run(&ctx, &caller, &id, q.log_from).await?))
}
