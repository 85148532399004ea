//! `/api/v1/images`: the REST adapter over `app::images` (the image
//! registry). An import is two requests: register the image, then `PUT`
//! its file, whose body streams to the registry. The agent side
//! (`/api/v1/agent/images/{id}/file`) lets hosts fetch image files and
//! upload the instance snapshots they take.

use crate::app::images as app;
use crate::auth::{Caller, HostCaller};
use crate::error::{ApiJson, ApiQuery, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyDataStream, BodyExt};
use nubo_api::params::ImageCreate;
use nubo_api::views::Image;
use serde::Deserialize;
use std::sync::Arc;

/// A request body as the plain reader the registry reads uploads from
/// (a broken body is the reader's error, so the upload is refused).
fn reader(body: Body) -> impl tokio::io::AsyncRead + Unpin {
    tokio_util::io::StreamReader::new(BodyDataStream::new(body.map_err(std::io::Error::other)))
}

/// List the images the caller can boot: builtin, the project's own, and public ones.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", operation_id = "list_images",
    params(crate::pagination::ListQuery, crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<Image>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    page: Page,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Paged<Image>> {
    Ok(Paged(crate::app::tags::select(&ctx, &caller, app::list(&ctx, &caller).await?, &tags).await?, page))
}

/// Show an image, by id (`ami-...`) or name.
#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", operation_id = "show_image",
    params(("id" = String, Path, description = "image id (ami-...) or name")),
    responses((status = 200, body = Image), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Image>> {
    Ok(Json(crate::app::tags::fill_one(&ctx, &caller, app::show(&ctx, &caller, &id).await?).await?))
}

/// Register an image (`queued`); upload its file next with `PUT /api/v1/images/{id}/file`.
#[utoipa::path(post, path = "/api/v1/images", tag = "images", operation_id = "create_image", request_body = ImageCreate,
    responses((status = 201, body = Image), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the project already has an image by that name", body = nubo_api::error::ErrorBody)))]
pub async fn create(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<ImageCreate>,
) -> AppResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, &p).await?)))
}

/// Upload a queued image's file (the raw bytes as the body). It is checked
/// (format, size, backing or data files, encryption, corruption) before the
/// image becomes `active`; a refused file leaves nothing behind.
#[utoipa::path(put, path = "/api/v1/images/{id}/file", tag = "images", operation_id = "upload_image",
    params(("id" = String, Path, description = "image id")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Image), (status = 400, description = "the file was refused", body = nubo_api::error::ErrorBody),
        (status = 409, description = "the image is not waiting for its file", body = nubo_api::error::ErrorBody),
        (status = 413, body = nubo_api::error::ErrorBody)))]
pub async fn upload(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> AppResult<Json<Image>> {
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    Ok(Json(app::upload(&ctx, &caller, &id, announced, reader(body)).await?))
}

/// Change what instances of an image need: firmware (`bios`/`uefi`),
/// Secure Boot, TPM, display. Fields left out stay as they are; instances
/// already launched keep the hardware they have.
#[utoipa::path(put, path = "/api/v1/images/{id}/hardware", tag = "images", operation_id = "set_image_hardware",
    params(("id" = String, Path, description = "image id or name")),
    request_body = nubo_api::hardware::HardwareRequest,
    responses((status = 200, body = Image), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn set_hardware(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<nubo_api::hardware::HardwareRequest>,
) -> AppResult<Json<Image>> {
    Ok(Json(
        crate::app::tags::fill_one(&ctx, &caller, crate::app::hardware::set_image(&ctx, &caller, &id, &p).await?)
            .await?,
    ))
}

/// Delete an image; refused while instances run it or snapshots came from it.
#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", operation_id = "delete_image",
    params(("id" = String, Path, description = "image id or name")),
    responses((status = 204), (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "in use", body = nubo_api::error::ErrorBody)))]
pub async fn delete(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::delete(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make an image of an instance's root disk (an instance snapshot): a
/// point-in-time copy taken on its host (the guest's file systems frozen
/// for it when the guest agent answers), uploaded to the registry, and
/// bootable like any image once `active`.
#[utoipa::path(post, path = "/api/v1/instances/{id}/snapshot", tag = "images", operation_id = "snapshot_instance",
    request_body = nubo_api::params::InstanceSnapshot, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Image), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn snapshot_instance(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<nubo_api::params::InstanceSnapshot>,
) -> AppResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::ACCEPTED, Json(app::snapshot_instance(&ctx, &caller, &id, &p).await?)))
}

// ---- agent side ----

/// An image file for a host to boot from, streamed.
#[utoipa::path(get, path = "/api/v1/agent/images/{id}/file", tag = "agent", operation_id = "agent_image_file",
    params(("id" = String, Path, description = "image id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn agent_download(
    _host: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let (file, len) = app::file(&ctx, &id).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::CONTENT_LENGTH, len.to_string())],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CaptureQuery {
    /// The file's size in bytes.
    pub size_bytes: u64,
    /// Its SHA-256, checked on arrival.
    pub sha256: String,
}

/// A host uploads an instance snapshot it took (a qcow2 of the root disk).
#[utoipa::path(put, path = "/api/v1/agent/images/{id}/file", tag = "agent", operation_id = "agent_image_capture",
    params(("id" = String, Path, description = "image id"), CaptureQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Image), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn agent_capture(
    host: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CaptureQuery>,
    body: Body,
) -> AppResult<Json<Image>> {
    Ok(Json(app::capture(&ctx, &host, &id, q.size_bytes, &q.sha256, reader(body)).await?))
}

// ---- images the cloud fetches ----

/// Import an image from a URL: the control plane fetches it in the
/// background (the image is `saving`; its `job` says how many bytes
/// arrived of how many), checks it as it checks an upload, and the image
/// becomes `active`, or `error` with the reason (a checksum mismatch, a
/// refused file, a server that failed), with nothing stored. The URL's
/// host must be one the operator allowed (`nubo server --image-url-allow`),
/// and never an internal address unless allowed exactly.
#[utoipa::path(post, path = "/api/v1/images/imports", tag = "images", operation_id = "import_image_url",
    request_body = nubo_api::params::ImageUrlImport,
    responses((status = 202, body = Image), (status = 400, description = "a bad or refused URL, name or format", body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the project already has an image by that name", body = nubo_api::error::ErrorBody)))]
pub async fn import_url(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<nubo_api::params::ImageUrlImport>,
) -> AppResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::ACCEPTED, Json(crate::app::image_imports::import_url(&ctx, &caller, &p).await?)))
}

/// Build an image in the cloud: a host builds `base` (`debian`) with the
/// extra `packages` and uploads the disk into the registry under `name`;
/// every host then fetches it like an imported image. The image is
/// `saving` meanwhile; its `job` says which host took the build, its last
/// step and the upload's progress.
#[utoipa::path(post, path = "/api/v1/images/builds", tag = "images", operation_id = "build_image",
    request_body = nubo_api::params::ImageBuildCreate,
    responses((status = 202, body = Image), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the project already has an image by that name", body = nubo_api::error::ErrorBody)))]
pub async fn build(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<nubo_api::params::ImageBuildCreate>,
) -> AppResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::ACCEPTED, Json(crate::app::image_imports::create_build(&ctx, &caller, &p).await?)))
}

/// A host asks for an image build to run: the one it took and has not
/// finished, else the oldest nobody took (now its); 204 when none waits.
#[utoipa::path(post, path = "/api/v1/agent/image-builds", tag = "agent", operation_id = "agent_claim_image_build",
    responses((status = 200, body = nubo_api::agent::ImageBuildJob), (status = 204, description = "no build waits")))]
pub async fn agent_claim_build(host: HostCaller, State(ctx): State<Arc<Ctx>>) -> AppResult<Response> {
    Ok(match crate::app::image_imports::claim_build(&ctx, &host).await? {
        Some(job) => Json(job).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The host running a build reports a step, or its failure.
#[utoipa::path(post, path = "/api/v1/agent/image-builds/{id}", tag = "agent", operation_id = "agent_report_image_build",
    params(("id" = String, Path, description = "image id")), request_body = nubo_api::agent::ImageBuildReport,
    responses((status = 204), (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn agent_report_build(
    host: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<nubo_api::agent::ImageBuildReport>,
) -> AppResult<StatusCode> {
    crate::app::image_imports::report_build(&ctx, &host, &id, &r).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The host that built an image uploads its disk (a qcow2).
#[utoipa::path(put, path = "/api/v1/agent/image-builds/{id}/file", tag = "agent", operation_id = "agent_upload_image_build",
    params(("id" = String, Path, description = "image id"), CaptureQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Image), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn agent_upload_build(
    host: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CaptureQuery>,
    body: Body,
) -> AppResult<Json<Image>> {
    Ok(Json(crate::app::image_imports::upload_build(&ctx, &host, &id, q.size_bytes, &q.sha256, reader(body)).await?))
}
