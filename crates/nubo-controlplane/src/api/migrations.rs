//! Moving running instances between hosts: `POST /instances/{id}/migrate`
//! (operators), host drain and evacuate, the migration records, and the
//! two agent calls that carry a migration along (the target is ready; the
//! source is done). The REST adapters over `app::migrations`; the hosts
//! do the copying; see `migrations` for the steps and what each one
//! claims and frees.

use crate::app::migrations as app;
use crate::auth::{Caller, HostCaller};
use crate::error::{ApiJson, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::agent::{MigrationDone, MigrationTarget};
use nubo_api::params::InstanceMigrate;
use nubo_api::views::Migration;
use std::sync::Arc;

/// Live-migrate a running instance to another host (operators).
#[utoipa::path(post, path = "/api/v1/instances/{id}/migrate", tag = "instances", operation_id = "migrate_instance",
    request_body = InstanceMigrate, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Migration), (status = 403, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn migrate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<InstanceMigrate>,
) -> AppResult<(StatusCode, Json<Migration>)> {
    Ok((StatusCode::ACCEPTED, Json(app::migrate(&ctx, &caller, &id, p.to.as_deref()).await?)))
}

/// Migrations, newest first (operators): the 200 newest. With `limit`,
/// one page of those same ones, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/migrations", tag = "hosts", operation_id = "list_migrations",
    params(crate::pagination::ListQuery),
    responses((status = 200, body = Vec<Migration>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>, page: Page) -> AppResult<Paged<Migration>> {
    Ok(Paged(app::list(&ctx, &caller).await?, page))
}

/// One migration (operators).
#[utoipa::path(get, path = "/api/v1/migrations/{id}", tag = "hosts", operation_id = "show_migration",
    params(("id" = String, Path, description = "migration id, mig-...")),
    responses((status = 200, body = Migration), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Migration>> {
    Ok(Json(app::show(&ctx, &caller, id).await?))
}

/// Stop new placements on a host (its instances keep running).
#[utoipa::path(post, path = "/api/v1/hosts/{id}/drain", tag = "hosts", operation_id = "drain_host",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn drain(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::drain(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Let the scheduler place instances on a drained host again.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/enable", tag = "hosts", operation_id = "enable_host",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn enable(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::enable(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drain a host and live-migrate each of its running instances away.
/// The answer lists the migrations started; instances that cannot move
/// (stopped, forwarded ports, no room) are named in the log and left.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/evacuate", tag = "hosts", operation_id = "evacuate_host",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 202, body = Vec<Migration>), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn evacuate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Vec<Migration>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::evacuate(&ctx, &caller, &id).await?)))
}

/// The target has its copy waiting (agent).
#[utoipa::path(post, path = "/api/v1/agent/migrations/{id}/ready", tag = "agent", operation_id = "migration_ready",
    request_body = MigrationTarget, params(("id" = String, Path, description = "migration id")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn ready(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(t): ApiJson<MigrationTarget>,
) -> AppResult<StatusCode> {
    app::ready(&ctx, &caller, id, &t).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The migration ended (agent: the source, or a target that could not prepare).
#[utoipa::path(post, path = "/api/v1/agent/migrations/{id}/done", tag = "agent", operation_id = "migration_done",
    request_body = MigrationDone, params(("id" = String, Path, description = "migration id")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn done(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<MigrationDone>,
) -> AppResult<StatusCode> {
    app::done(&ctx, &caller, &id, d).await?;
    Ok(StatusCode::NO_CONTENT)
}
