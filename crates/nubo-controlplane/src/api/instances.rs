//! `/api/v1/instances`: launch, inspect, power and terminate instances.
//! The handlers are adapters over `app::instances`, which records the
//! desired state; the host's agent makes it so.

use crate::app::instances as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{InstanceCreate, InstanceProtection};
use nubo_api::views::{ConsoleOutput, Instance};
use std::sync::Arc;

/// List instances, terminated ones included (as EC2 shows them for a
/// while), oldest first. With `limit`, one page of them: the
/// `Next-Page-Token` header says where the next one starts. With `tag`,
/// only those with the tags named.
#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", operation_id = "list_instances",
    params(crate::pagination::ListQuery, crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<Instance>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody),
        (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<crate::pagination::ListQuery>,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<axum::response::Response> {
    let (page, next) = crate::app::tags::instances(&ctx, &caller, q.page()?, &tags).await?;
    Ok(crate::pagination::paged_json(page, next))
}

/// Launch an instance: validate, place on a host (atomic claim), record.
#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = InstanceCreate,
    responses((status = 201, body = Instance),
        (status = 400, description = "invalid input", body = nubo_api::error::ErrorBody),
        (status = 409, description = "no host can take it; the message gives each host's reason", body = nubo_api::error::ErrorBody)))]
pub async fn create(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<InstanceCreate>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, &p).await?)))
}

/// Show one instance, with its life events.
#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "instance id, i-...")),
    responses((status = 200, body = Instance), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Instance>> {
    Ok(Json(app::show(&ctx, &caller, &id).await?))
}

/// Stop (ACPI power-off, then forced after a grace period).
#[utoipa::path(post, path = "/api/v1/instances/{id}/stop", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn stop(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::stop(&ctx, &caller, &id).await?)))
}

/// Start a stopped instance.
#[utoipa::path(post, path = "/api/v1/instances/{id}/start", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn start(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::start(&ctx, &caller, &id).await?)))
}

/// Reboot a running instance (hardware reset).
#[utoipa::path(post, path = "/api/v1/instances/{id}/reboot", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn reboot(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::reboot(&ctx, &caller, &id).await?)))
}

/// Terminate: the VM and its disk are deleted and the host's capacity freed.
#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn terminate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(app::terminate(&ctx, &caller, &id).await?)))
}

/// The serial console's output (the last 1 MiB).
#[utoipa::path(get, path = "/api/v1/instances/{id}/console", tag = "instances", operation_id = "instance_console",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = ConsoleOutput), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn console(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<ConsoleOutput>> {
    Ok(Json(app::console(&ctx, &caller, &id).await?))
}

/// Turn termination or stop protection on or off, or choose what a
/// poweroff from inside the guest does (`stop` or `terminate`); what the
/// body leaves out stays as it is.
#[utoipa::path(put, path = "/api/v1/instances/{id}/protection", tag = "instances", operation_id = "protect_instance",
    request_body = InstanceProtection,
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, description = "the instance is terminated", body = nubo_api::error::ErrorBody)))]
pub async fn protect(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<InstanceProtection>,
) -> AppResult<Json<Instance>> {
    Ok(Json(crate::app::instance_attributes::set_protection(&ctx, &caller, &id, &p).await?))
}

// ---- CD-ROM drive and boot order (`app::cdrom`) ----

/// Empty the instance's CD-ROM drive: at once while it runs (even if the
/// guest locked the tray), and it stays empty across restarts.
#[utoipa::path(post, path = "/api/v1/instances/{id}/cdrom/eject", tag = "instances", operation_id = "eject_cdrom",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn eject_cdrom(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(crate::app::cdrom::eject(&ctx, &caller, &id).await?)))
}

/// Put an ISO image in the instance's CD-ROM drive, in place of what is there.
#[utoipa::path(post, path = "/api/v1/instances/{id}/cdrom/insert", tag = "instances", operation_id = "insert_cdrom",
    request_body = nubo_api::params::CdromInsert, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn insert_cdrom(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<nubo_api::params::CdromInsert>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::ACCEPTED, Json(crate::app::cdrom::insert(&ctx, &caller, &id, &p.image).await?)))
}

/// Set what a stopped instance with a CD-ROM drive boots first.
#[utoipa::path(post, path = "/api/v1/instances/{id}/boot-order", tag = "instances", operation_id = "set_boot_order",
    request_body = nubo_api::params::BootOrder, params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn boot_order(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<nubo_api::params::BootOrder>,
) -> AppResult<Json<Instance>> {
    Ok(Json(crate::app::cdrom::set_boot_order(&ctx, &caller, &id, &p.boot).await?))
}
