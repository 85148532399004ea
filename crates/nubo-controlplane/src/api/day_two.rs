//! The day-two routes: `POST /api/v1/instances/{id}/resize`, `.../rebuild`,
//! `.../revert` and `POST /api/v1/volumes/{id}/revert`, the REST adapter
//! over `app::day_two`. Each records what is wanted and answers 202: the
//! host does the work, and the instance's events show each step.

use crate::app::day_two as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{InstanceRebuild, InstanceResize, InstanceRevert, VolumeRevert};
use nubo_api::views::{Instance, Volume};
use std::sync::Arc;

/// Resize an instance: a stopped one takes any size its host has room
/// for (at its next start); a running one takes more vCPUs online
/// (hot-added by its host), and must be stopped first for anything else.
/// Growth is claimed from the host by the scheduler, or refused with its
/// reasons.
#[utoipa::path(post, path = "/api/v1/instances/{id}/resize", tag = "instances", operation_id = "resize_instance",
    request_body = InstanceResize, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, description = "a reader, or over the project's quota", body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the instance is running and the change needs a stop, or its host has no room; the message says what to do", body = nubo_api::error::ErrorBody)))]
pub async fn resize(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<InstanceResize>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::resize(&ctx, &caller, &id, &p).await?)))
}

/// Rebuild an instance: a fresh root disk from an image, keeping its id,
/// addresses, volumes, tags, key and user-data (first boot runs again).
/// A running instance is stopped, rebuilt and started; a stopped one gets
/// the new disk at its next start.
#[utoipa::path(post, path = "/api/v1/instances/{id}/rebuild", tag = "instances", operation_id = "rebuild_instance",
    request_body = InstanceRebuild, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn rebuild(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<InstanceRebuild>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::rebuild(&ctx, &caller, &id, &p).await?)))
}

/// Revert a stopped instance's root disk to one of its snapshots (an
/// image taken with `POST /api/v1/instances/{id}/snapshot`); it is
/// replaced at the next start.
#[utoipa::path(post, path = "/api/v1/instances/{id}/revert", tag = "instances", operation_id = "revert_instance",
    request_body = InstanceRevert, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the instance is not stopped", body = nubo_api::error::ErrorBody)))]
pub async fn revert_instance(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<InstanceRevert>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::revert_instance(&ctx, &caller, &id, &p).await?)))
}

/// Revert a volume to one of its snapshots (detached, or its instance
/// stopped); it is `creating` until its host has replaced the content.
#[utoipa::path(post, path = "/api/v1/volumes/{id}/revert", tag = "volumes", operation_id = "revert_volume",
    request_body = VolumeRevert, params(("id" = String, Path, description = "volume id")),
    responses((status = 202, body = Volume), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "its instance is running, or the snapshot is not completed", body = nubo_api::error::ErrorBody)))]
pub async fn revert_volume(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<VolumeRevert>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    let row = app::revert_volume(&ctx, &caller, &id, &p).await?;
    Ok((StatusCode::ACCEPTED, Json(crate::app::volumes::view(&ctx, row).await?)))
}
