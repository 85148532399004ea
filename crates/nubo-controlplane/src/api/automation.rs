//! `/api/v1/policies` and `/api/v1/groups`: service policies (applied as
//! whole documents, by name) with their firings, and instance groups
//! with their members and activity. The work is `app::automation`'s.

use crate::app::automation as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::automation::{Group, GroupCreate, GroupDesired, Policy, PolicyDoc};
use std::sync::Arc;

/// Create or replace (by name) a policy.
#[utoipa::path(post, path = "/api/v1/policies", tag = "automation", operation_id = "apply_policy", request_body = PolicyDoc,
    responses((status = 200, body = Policy), (status = 400, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn apply(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(doc): ApiJson<PolicyDoc>,
) -> AppResult<Json<Policy>> {
    Ok(Json(app::apply(&ctx, &caller, doc).await?))
}

/// List policies.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/policies", tag = "automation", operation_id = "list_policies",
    params(crate::pagination::ListQuery),
    responses((status = 200, body = Vec<Policy>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>, page: Page) -> AppResult<Paged<Policy>> {
    Ok(Paged(app::list(&ctx, &caller).await?, page))
}

/// A policy with its newest firings (the values that caused each, and each action's outcome).
#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "automation", operation_id = "show_policy",
    params(("name" = String, Path, description = "policy name")),
    responses((status = 200, body = Policy), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> AppResult<Json<Policy>> {
    Ok(Json(app::show(&ctx, &caller, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "automation", operation_id = "delete_policy",
    params(("name" = String, Path, description = "policy name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> AppResult<StatusCode> {
    app::delete(&ctx, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an instance group; it launches its members at once.
#[utoipa::path(post, path = "/api/v1/groups", tag = "automation", operation_id = "create_group", request_body = GroupCreate,
    responses((status = 201, body = Group), (status = 400, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_group(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(g): ApiJson<GroupCreate>,
) -> AppResult<(StatusCode, Json<Group>)> {
    Ok((StatusCode::CREATED, Json(app::create_group(&ctx, &caller, g).await?)))
}

/// List instance groups.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/groups", tag = "automation", operation_id = "list_groups",
    params(crate::pagination::ListQuery),
    responses((status = 200, body = Vec<Group>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody)))]
pub async fn list_groups(caller: Caller, State(ctx): State<Arc<Ctx>>, page: Page) -> AppResult<Paged<Group>> {
    Ok(Paged(app::list_groups(&ctx, &caller).await?, page))
}

/// A group with its members' health and its activity history.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "automation", operation_id = "show_group",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = Group), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_group(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
) -> AppResult<Json<Group>> {
    Ok(Json(app::show_group(&ctx, &caller, &name).await?))
}

/// Set the desired count (within min and max).
#[utoipa::path(post, path = "/api/v1/groups/{name}/desired", tag = "automation", operation_id = "set_group_desired",
    request_body = GroupDesired, params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = Group), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn set_desired(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    ApiJson(d): ApiJson<GroupDesired>,
) -> AppResult<Json<Group>> {
    Ok(Json(app::set_desired(&ctx, &caller, &name, d.desired).await?))
}

/// Delete a group and terminate its members.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "automation", operation_id = "delete_group",
    params(("name" = String, Path, description = "group name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_group(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
) -> AppResult<StatusCode> {
    app::delete_group(&ctx, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
