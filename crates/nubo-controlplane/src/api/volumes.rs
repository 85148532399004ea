//! `/api/v1/volumes` and `/api/v1/snapshots`: the REST adapter over
//! `app::volumes` (data disks on hosts' storage pools, attached to
//! instances, grown, copied at a point in time). Each handler extracts
//! the request, calls the operation and answers with its status.

use crate::app::volumes as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{SnapshotCreate, VolumeAttach, VolumeCreate, VolumeExtend};
use nubo_api::views::{Snapshot, Volume};
use std::sync::Arc;

/// List volumes (deleted ones are not shown).
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", operation_id = "list_volumes",
    params(crate::pagination::ListQuery, crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<Volume>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    page: Page,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Paged<Volume>> {
    Ok(Paged(crate::app::tags::select(&ctx, &caller, app::list(&ctx, &caller).await?, &tags).await?, page))
}

/// Create a volume: a sparse file on one host's storage pool, claimed up
/// front against the project's volume quota and the pool.
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", operation_id = "create_volume", request_body = VolumeCreate,
    responses((status = 201, body = Volume), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, description = "over the project's volume quota", body = nubo_api::error::ErrorBody),
        (status = 409, description = "no storage pool has room; the message says how much each has", body = nubo_api::error::ErrorBody)))]
pub async fn create(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<VolumeCreate>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    let row = app::create(&ctx, &caller, &p).await?;
    Ok((StatusCode::CREATED, Json(app::view(&ctx, row).await?)))
}

/// Show a volume with its attachment.
#[utoipa::path(get, path = "/api/v1/volumes/{id}", tag = "volumes", operation_id = "show_volume",
    params(("id" = String, Path, description = "volume id, vol-...")),
    responses((status = 200, body = Volume), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Volume>> {
    Ok(Json(app::show(&ctx, &caller, &id).await?))
}

/// Delete an available volume (detach it first).
#[utoipa::path(delete, path = "/api/v1/volumes/{id}", tag = "volumes", operation_id = "delete_volume",
    params(("id" = String, Path, description = "volume id")),
    responses((status = 202, body = Volume), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn delete(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    let row = app::delete(&ctx, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(app::view(&ctx, row).await?)))
}

/// Attach a volume to an instance on the same host: hot-plugged into a
/// running guest (done once the guest sees it), plugged in at start otherwise.
#[utoipa::path(post, path = "/api/v1/volumes/{id}/attach", tag = "volumes", operation_id = "attach_volume",
    request_body = VolumeAttach, params(("id" = String, Path, description = "volume id")),
    responses((status = 202, body = Volume), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn attach(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<VolumeAttach>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    let row = app::attach(&ctx, &caller, &id, &p).await?;
    Ok((StatusCode::ACCEPTED, Json(app::view(&ctx, row).await?)))
}

/// Detach a volume: hot-unplugged from a running guest once it lets go.
#[utoipa::path(post, path = "/api/v1/volumes/{id}/detach", tag = "volumes", operation_id = "detach_volume",
    params(("id" = String, Path, description = "volume id")),
    responses((status = 202, body = Volume), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn detach(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    let row = app::detach(&ctx, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(app::view(&ctx, row).await?)))
}

/// Grow a volume; an attached one is resized online and the guest sees it.
#[utoipa::path(post, path = "/api/v1/volumes/{id}/extend", tag = "volumes", operation_id = "extend_volume",
    request_body = VolumeExtend, params(("id" = String, Path, description = "volume id")),
    responses((status = 202, body = Volume), (status = 400, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn extend(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<VolumeExtend>,
) -> AppResult<(StatusCode, Json<Volume>)> {
    let row = app::extend(&ctx, &caller, &id, &p).await?;
    Ok((StatusCode::ACCEPTED, Json(app::view(&ctx, row).await?)))
}

/// Take a point-in-time snapshot of a volume (consistent: the guest's file
/// systems are frozen for it when it is attached and the guest agent answers).
#[utoipa::path(post, path = "/api/v1/volumes/{id}/snapshots", tag = "volumes", operation_id = "snapshot_volume",
    request_body = SnapshotCreate, params(("id" = String, Path, description = "volume id")),
    responses((status = 202, body = Snapshot), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_snapshot(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<SnapshotCreate>,
) -> AppResult<(StatusCode, Json<Snapshot>)> {
    let s = app::create_snapshot(&ctx, &caller, &id, &p).await?;
    Ok((StatusCode::ACCEPTED, Json(app::snapshot_view(s)?)))
}

/// List volume snapshots.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/snapshots", tag = "volumes", operation_id = "list_snapshots",
    params(crate::pagination::ListQuery, crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<Snapshot>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody)))]
pub async fn list_snapshots(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    page: Page,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Paged<Snapshot>> {
    Ok(Paged(crate::app::tags::select(&ctx, &caller, app::list_snapshots(&ctx, &caller).await?, &tags).await?, page))
}

#[utoipa::path(get, path = "/api/v1/snapshots/{id}", tag = "volumes", operation_id = "show_snapshot",
    params(("id" = String, Path, description = "snapshot id, snap-...")),
    responses((status = 200, body = Snapshot), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_snapshot(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<Snapshot>> {
    Ok(Json(crate::app::tags::fill_one(&ctx, &caller, app::show_snapshot(&ctx, &caller, &id).await?).await?))
}

/// Delete a snapshot (volumes made from it are independent copies).
#[utoipa::path(delete, path = "/api/v1/snapshots/{id}", tag = "volumes", operation_id = "delete_snapshot",
    params(("id" = String, Path, description = "snapshot id")),
    responses((status = 202, body = Snapshot), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn delete_snapshot(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Snapshot>)> {
    let s = app::delete_snapshot(&ctx, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(app::snapshot_view(s)?)))
}
