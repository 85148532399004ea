//! The restore routes: `POST /api/v1/backups/{id}/restore` (a new
//! instance), `.../restore-volume` (a new volume), `POST
//! /api/v1/instances/{id}/restore` (in place) and `POST
//! /api/v1/hosts/{id}/evacuate-from-backups`; the REST adapter over
//! `app::restores`. Each records which disk comes from which backup; the
//! host writes it, and the instance's events show it.

use crate::app::restores as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::backup::{EvacuatedInstance, RestoreInPlace, RestoreInstance, RestoreVolume};
use nubo_api::views::{Instance, Volume};
use std::sync::Arc;

/// Restore a backup as a new instance in its project: the backup's size,
/// disks and volumes; its private networks only with `with_networks`.
#[utoipa::path(post, path = "/api/v1/backups/{id}/restore", tag = "backups", operation_id = "restore_backup",
    request_body = RestoreInstance, params(("id" = String, Path, description = "backup id")),
    responses((status = 201, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the backup is not completed", body = nubo_api::error::ErrorBody)))]
pub async fn restore(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<RestoreInstance>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::CREATED, Json(app::restore_instance(&ctx, &caller, &id, &p).await?)))
}

/// Restore one disk of a backup (`root` or a volume id) as a new volume.
#[utoipa::path(post, path = "/api/v1/backups/{id}/restore-volume", tag = "backups", operation_id = "restore_backup_volume",
    request_body = RestoreVolume, params(("id" = String, Path, description = "backup id")),
    responses((status = 201, body = Volume), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn restore_volume(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<RestoreVolume>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    Ok((StatusCode::CREATED, Json(app::restore_volume(&ctx, &caller, &id, &p).await?)))
}

/// Write a stopped instance's disks back from one of its backups (before
/// its next start); it stays stopped.
#[utoipa::path(post, path = "/api/v1/instances/{id}/restore", tag = "instances", operation_id = "restore_instance",
    request_body = RestoreInPlace, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the instance is not stopped", body = nubo_api::error::ErrorBody)))]
pub async fn restore_in_place(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<RestoreInPlace>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::restore_in_place(&ctx, &caller, &id, &p).await?)))
}

/// Re-place each instance of a dead host on other hosts from its newest
/// backup (operators). Refused while the host is up.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/evacuate-from-backups", tag = "hosts", operation_id = "evacuate_host_from_backups",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 202, body = Vec<EvacuatedInstance>), (status = 403, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the host is up", body = nubo_api::error::ErrorBody)))]
pub async fn evacuate_from_backups(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Vec<EvacuatedInstance>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::evacuate_from_backups(&ctx, &caller, &id).await?)))
}
