//! `/api/v1/load-balancers`: create, list, show (with each backend's
//! health and counters as its host last reported them) and delete a
//! project's load balancers. The work is `app::load_balancers`'s.

use crate::app::load_balancers as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::lb::{LoadBalancer, LoadBalancerCreate};
use std::sync::Arc;

/// Create a load balancer in front of instances and/or a group.
#[utoipa::path(post, path = "/api/v1/load-balancers", tag = "load-balancers", operation_id = "create_load_balancer",
    request_body = LoadBalancerCreate,
    responses((status = 201, body = LoadBalancer), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(c): ApiJson<LoadBalancerCreate>,
) -> AppResult<(StatusCode, Json<LoadBalancer>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, c).await?)))
}

/// List load balancers.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/load-balancers", tag = "load-balancers", operation_id = "list_load_balancers",
    params(crate::pagination::ListQuery),
    responses((status = 200, body = Vec<LoadBalancer>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>, page: Page) -> AppResult<Paged<LoadBalancer>> {
    Ok(Paged(app::list(&ctx, &caller).await?, page))
}

/// A load balancer with each backend's health and counters.
#[utoipa::path(get, path = "/api/v1/load-balancers/{key}", tag = "load-balancers", operation_id = "show_load_balancer",
    params(("key" = String, Path, description = "load balancer id or name")),
    responses((status = 200, body = LoadBalancer), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(key): Path<String>,
) -> AppResult<Json<LoadBalancer>> {
    Ok(Json(app::show(&ctx, &caller, &key).await?))
}

/// Delete a load balancer: its host stops it (connections under way may finish within the drain timeout).
#[utoipa::path(delete, path = "/api/v1/load-balancers/{key}", tag = "load-balancers", operation_id = "delete_load_balancer",
    params(("key" = String, Path, description = "load balancer id or name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(key): Path<String>) -> AppResult<StatusCode> {
    app::delete(&ctx, &caller, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
