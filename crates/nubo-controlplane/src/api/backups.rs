//! `/api/v1/backup-repositories`, `/api/v1/backup-plans`,
//! `/api/v1/backups` and `/api/v1/instances/{id}/backups`: the REST
//! adapter over `app::backups`; and the agent's side,
//! `/api/v1/agent/hosts/{id}/backup-jobs`, where hosts take backup jobs
//! and report on them.

use crate::app::backups as app;
use crate::auth::{Caller, HostCaller};
use crate::error::{ApiJson, ApiQuery, AppResult};
use crate::pagination::{paged_json, Page};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nubo_api::backup::{
    Backup, BackupJob, BackupJobReport, BackupPlan, BackupRepository, BackupRun, PlanCreate, RepositoryCreate,
};
use serde::Deserialize;
use std::sync::Arc;

/// Register a backup repository (operators): a directory every host sees,
/// an SFTP server or an S3 bucket. Its key is made here and kept sealed,
/// as is the location's secret; the repository is opened (and set up on
/// first use) before anything is stored.
#[utoipa::path(post, path = "/api/v1/backup-repositories", tag = "backups", operation_id = "create_backup_repository",
    request_body = RepositoryCreate,
    responses((status = 201, body = BackupRepository),
        (status = 400, description = "a bad location, or one that cannot be opened", body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_repository(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<RepositoryCreate>,
) -> AppResult<(StatusCode, Json<BackupRepository>)> {
    Ok((StatusCode::CREATED, Json(app::create_repository(&ctx, &caller, &p).await?)))
}

/// List the backup repositories (no secrets).
#[utoipa::path(get, path = "/api/v1/backup-repositories", tag = "backups", operation_id = "list_backup_repositories",
    responses((status = 200, body = Vec<BackupRepository>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_repositories(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<BackupRepository>>> {
    Ok(Json(app::list_repositories(&ctx, &caller).await?))
}

/// Show a backup repository, by id (`bkr-...`) or name.
#[utoipa::path(get, path = "/api/v1/backup-repositories/{id}", tag = "backups", operation_id = "show_backup_repository",
    params(("id" = String, Path, description = "repository id or name")),
    responses((status = 200, body = BackupRepository), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_repository(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<BackupRepository>> {
    Ok(Json(app::show_repository(&ctx, &caller, &id).await?))
}

/// Forget a backup repository (operators); refused while plans or backups use it.
#[utoipa::path(delete, path = "/api/v1/backup-repositories/{id}", tag = "backups", operation_id = "delete_backup_repository",
    params(("id" = String, Path, description = "repository id or name")),
    responses((status = 204), (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "in use", body = nubo_api::error::ErrorBody)))]
pub async fn delete_repository(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    app::delete_repository(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a backup plan: which instances (ids, tags, groups), when (cron,
/// UTC), into which repository, and which backups to keep.
#[utoipa::path(post, path = "/api/v1/backup-plans", tag = "backups", operation_id = "create_backup_plan",
    request_body = PlanCreate,
    responses((status = 201, body = BackupPlan), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_plan(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<PlanCreate>,
) -> AppResult<(StatusCode, Json<BackupPlan>)> {
    Ok((StatusCode::CREATED, Json(app::create_plan(&ctx, &caller, &p).await?)))
}

/// List the project's backup plans.
#[utoipa::path(get, path = "/api/v1/backup-plans", tag = "backups", operation_id = "list_backup_plans",
    responses((status = 200, body = Vec<BackupPlan>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_plans(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<BackupPlan>>> {
    Ok(Json(app::list_plans(&ctx, &caller).await?))
}

/// Show a backup plan, by id (`bkp-...`) or name.
#[utoipa::path(get, path = "/api/v1/backup-plans/{id}", tag = "backups", operation_id = "show_backup_plan",
    params(("id" = String, Path, description = "plan id or name")),
    responses((status = 200, body = BackupPlan), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_plan(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<BackupPlan>> {
    Ok(Json(app::show_plan(&ctx, &caller, &id).await?))
}

/// Delete a backup plan; its backups stay.
#[utoipa::path(delete, path = "/api/v1/backup-plans/{id}", tag = "backups", operation_id = "delete_backup_plan",
    params(("id" = String, Path, description = "plan id or name")),
    responses((status = 204), (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_plan(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::delete_plan(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Back an instance up now: a `pending` backup its host takes (its
/// progress shows in `GET /api/v1/backups/{id}`).
#[utoipa::path(post, path = "/api/v1/instances/{id}/backups", tag = "backups", operation_id = "run_backup",
    request_body = BackupRun, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Backup), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "no host, being deleted, or already being backed up", body = nubo_api::error::ErrorBody)))]
pub async fn run(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<BackupRun>,
) -> AppResult<(StatusCode, Json<Backup>)> {
    Ok((StatusCode::ACCEPTED, Json(app::run(&ctx, &caller, &id, &p).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BackupFilter {
    /// Only this instance's backups.
    pub instance: Option<String>,
    /// Only this plan's backups (id or name).
    pub plan: Option<String>,
}

/// List the project's backups, oldest first. With `limit`, one page:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/backups", tag = "backups", operation_id = "list_backups",
    params(crate::pagination::ListQuery, BackupFilter),
    responses((status = 200, body = Vec<Backup>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, body = nubo_api::error::ErrorBody), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Page(page): Page,
    ApiQuery(f): ApiQuery<BackupFilter>,
) -> AppResult<Response> {
    let (items, next) = app::list(&ctx, &caller, f.instance.as_deref(), f.plan.as_deref(), &page).await?;
    Ok(paged_json(items, next))
}

/// Show a backup: its state, progress, per-disk figures and verification.
#[utoipa::path(get, path = "/api/v1/backups/{id}", tag = "backups", operation_id = "show_backup",
    params(("id" = String, Path, description = "backup id (bak-...)")),
    responses((status = 200, body = Backup), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Backup>> {
    Ok(Json(app::show(&ctx, &caller, &id).await?))
}

/// Delete a backup, from its repository too; refused while it is being taken.
#[utoipa::path(delete, path = "/api/v1/backups/{id}", tag = "backups", operation_id = "delete_backup",
    params(("id" = String, Path, description = "backup id (bak-...)")),
    responses((status = 204), (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "being taken", body = nubo_api::error::ErrorBody),
        (status = 503, description = "the repository cannot be reached", body = nubo_api::error::ErrorBody)))]
pub async fn delete(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::delete(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- agent side ----

/// A host takes its oldest pending backup (now `running`); 204 when none
/// waits or its repository is being pruned.
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/backup-jobs", tag = "agent", operation_id = "agent_claim_backup_job",
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, body = BackupJob), (status = 204, description = "no backup waits"),
        (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn agent_claim(host: HostCaller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Response> {
    Ok(match app::claim(&ctx, &host, &id).await? {
        Some(job) => Json(job).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The host taking a backup reports its progress, or its end (the disks
/// as stored, or the error).
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/backup-jobs/{backup}", tag = "agent",
    operation_id = "agent_report_backup_job", request_body = BackupJobReport,
    params(("id" = String, Path, description = "host id"), ("backup" = String, Path, description = "backup id")),
    responses((status = 204), (status = 400, body = nubo_api::error::ErrorBody), (status = 403, body = nubo_api::error::ErrorBody),
        (status = 404, description = "no such backup on this host", body = nubo_api::error::ErrorBody),
        (status = 409, description = "the backup has ended", body = nubo_api::error::ErrorBody)))]
pub async fn agent_report(
    host: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path((id, backup)): Path<(String, String)>,
    ApiJson(r): ApiJson<BackupJobReport>,
) -> AppResult<StatusCode> {
    app::report(&ctx, &host, &id, &backup, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}
