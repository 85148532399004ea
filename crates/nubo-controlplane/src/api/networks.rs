//! `/api/v1/networks` and `/api/v1/security-groups`: a project's private
//! networks, and the firewall groups that say what may reach its instances
//! on them. The work is `app::networks`'s.

use crate::app::networks as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{NetworkCreate, SecurityGroupCreate, SecurityGroupRuleCreate};
use nubo_api::views::{Network, SecurityGroup};
use std::sync::Arc;

/// List networks.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", operation_id = "list_networks",
    params(crate::pagination::ListQuery, crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<Network>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    page: Page,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Paged<Network>> {
    Ok(Paged(crate::app::tags::select(&ctx, &caller, app::list(&ctx, &caller).await?, &tags).await?, page))
}

/// Create a private network: an IPv4 range whose first address is the
/// gateway. Hosts set it up when an instance on it lands there.
#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", operation_id = "create_network", request_body = NetworkCreate,
    responses((status = 201, body = Network), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<NetworkCreate>,
) -> AppResult<(StatusCode, Json<Network>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, p).await?)))
}

/// Show one network, with the instances on it.
#[utoipa::path(get, path = "/api/v1/networks/{id}", tag = "networks", operation_id = "show_network",
    params(("id" = String, Path, description = "network id or name")),
    responses((status = 200, body = Network), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Network>> {
    Ok(Json(crate::app::tags::fill_one(&ctx, &caller, app::show(&ctx, &caller, &id).await?).await?))
}

/// Delete a network no instance is attached to.
#[utoipa::path(delete, path = "/api/v1/networks/{id}", tag = "networks", operation_id = "delete_network",
    params(("id" = String, Path, description = "network id or name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn delete(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::delete(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List security groups with their rules.
#[utoipa::path(get, path = "/api/v1/security-groups", tag = "networks", operation_id = "list_security_groups",
    params(crate::api::tags::TagQuery),
    responses((status = 200, body = Vec<SecurityGroup>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list_groups(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    crate::api::tags::TagFilters(tags): crate::api::tags::TagFilters,
) -> AppResult<Json<Vec<SecurityGroup>>> {
    Ok(Json(crate::app::tags::select(&ctx, &caller, app::list_groups(&ctx, &caller).await?, &tags).await?))
}

/// Create a security group (no rules: nothing may come in until a rule says so).
#[utoipa::path(post, path = "/api/v1/security-groups", tag = "networks", operation_id = "create_security_group",
    request_body = SecurityGroupCreate,
    responses((status = 201, body = SecurityGroup), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_group(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<SecurityGroupCreate>,
) -> AppResult<(StatusCode, Json<SecurityGroup>)> {
    Ok((StatusCode::CREATED, Json(app::create_group(&ctx, &caller, p).await?)))
}

/// Let traffic in: applied on every host at once (running instances
/// included), as nftables rules on their ports.
#[utoipa::path(post, path = "/api/v1/security-groups/{id}/rules", tag = "networks", operation_id = "add_security_group_rule",
    request_body = SecurityGroupRuleCreate, params(("id" = String, Path, description = "group id or name")),
    responses((status = 201, body = SecurityGroup), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn add_rule(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<SecurityGroupRuleCreate>,
) -> AppResult<(StatusCode, Json<SecurityGroup>)> {
    Ok((StatusCode::CREATED, Json(app::add_rule(&ctx, &caller, &id, p).await?)))
}

/// Remove a rule: connections it let in that are open stay, new ones are refused.
#[utoipa::path(delete, path = "/api/v1/security-groups/{id}/rules/{rule}", tag = "networks",
    operation_id = "delete_security_group_rule",
    params(("id" = String, Path, description = "group id or name"), ("rule" = String, Path, description = "rule id, sgr-...")),
    responses((status = 200, body = SecurityGroup), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_rule(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path((id, rule)): Path<(String, String)>,
) -> AppResult<Json<SecurityGroup>> {
    Ok(Json(app::delete_rule(&ctx, &caller, &id, &rule).await?))
}
