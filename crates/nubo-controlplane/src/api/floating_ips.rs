//! `/api/v1/floating-ips`: addresses of external networks a project
//! holds and points at its instances. The work is `app::floating_ips`'s.

use crate::app::floating_ips as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{FloatingIpAssociate, FloatingIpCreate};
use nubo_api::views::FloatingIp;
use std::sync::Arc;

/// List the project's floating IPs (an operator: every project's).
#[utoipa::path(get, path = "/api/v1/floating-ips", tag = "networks", operation_id = "list_floating_ips",
    params(crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<FloatingIp>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Json<Vec<FloatingIp>>> {
    Ok(Json(crate::app::tags::select(&ctx, &caller, app::list(&ctx, &caller).await?, &tags).await?))
}

/// Allocate a floating IP from an external network's pool, within the
/// project's floating-IP quota.
#[utoipa::path(post, path = "/api/v1/floating-ips", tag = "networks", operation_id = "allocate_floating_ip",
    request_body = FloatingIpCreate,
    responses((status = 201, body = FloatingIp), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn allocate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<FloatingIpCreate>,
) -> AppResult<(StatusCode, Json<FloatingIp>)> {
    Ok((StatusCode::CREATED, Json(app::allocate(&ctx, &caller, p).await?)))
}

/// Show one floating IP, by id or address.
#[utoipa::path(get, path = "/api/v1/floating-ips/{id}", tag = "networks", operation_id = "show_floating_ip",
    params(("id" = String, Path, description = "floating IP id or address")),
    responses((status = 200, body = FloatingIp), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<FloatingIp>> {
    Ok(Json(crate::app::tags::fill_one(&ctx, &caller, app::show(&ctx, &caller, &id).await?).await?))
}

/// Release a floating IP back to its pool (associated or not).
#[utoipa::path(delete, path = "/api/v1/floating-ips/{id}", tag = "networks", operation_id = "release_floating_ip",
    params(("id" = String, Path, description = "floating IP id or address")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn release(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::release(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Point a floating IP at an instance on a private network; its host
/// translates the address 1:1 and answers for it on the external network.
#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/associate", tag = "networks", operation_id = "associate_floating_ip",
    params(("id" = String, Path, description = "floating IP id or address")), request_body = FloatingIpAssociate,
    responses((status = 200, body = FloatingIp), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn associate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<FloatingIpAssociate>,
) -> AppResult<Json<FloatingIp>> {
    Ok(Json(app::associate(&ctx, &caller, &id, p).await?))
}

/// Point a floating IP at nothing; the project keeps it.
#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/disassociate", tag = "networks", operation_id = "disassociate_floating_ip",
    params(("id" = String, Path, description = "floating IP id or address")),
    responses((status = 200, body = FloatingIp), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn disassociate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<FloatingIp>> {
    Ok(Json(app::disassociate(&ctx, &caller, &id).await?))
}
