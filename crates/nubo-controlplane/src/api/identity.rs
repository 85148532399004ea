//! `/api/v1/auth`, `/tokens`, `/projects`, `/users`, `/audit` and
//! `/hosts/join-tokens`: signing in, API tokens, tenancy, quotas, the audit
//! log, and join tokens for new hosts. The work is `app::identity`'s.

use crate::app::identity as app;
use crate::auth::Caller;
use crate::auth::{AuditSlot, SourceAddr};
use crate::error::{ApiJson, AppResult};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{Login, MemberSet, ProjectCreate, Quota, TokenCreate, UserCreate};
use nubo_api::views::{AuditEntry, JoinToken, Project, Token, TokenIssued, User, WhoAmI};
use serde::Deserialize;
use std::sync::Arc;

/// Sign in with a local password (or LDAP, when configured); returns a token.
/// Attempts are limited per user name and per address (429 with
/// Retry-After past the limit, whatever the password).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "identity", request_body = Login,
    responses((status = 200, body = TokenIssued), (status = 401, body = nubo_api::error::ErrorBody),
        (status = 429, body = nubo_api::error::ErrorBody)))]
pub async fn login(
    State(ctx): State<Arc<Ctx>>,
    source: SourceAddr,
    audit: Option<axum::Extension<AuditSlot>>,
    ApiJson(l): ApiJson<Login>,
) -> AppResult<Json<TokenIssued>> {
    let issued = app::sign_in(&ctx, &source.0, l).await?;
    if let Some(axum::Extension(slot)) = audit {
        let mut info = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        info.actor = Some(issued.user.clone());
    }
    Ok(Json(issued))
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/auth/whoami", tag = "identity",
    responses((status = 200, body = WhoAmI), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(app::whoami(&caller))
}

/// Create an API token for yourself, in your current project.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "identity", request_body = TokenCreate,
    responses((status = 201, body = TokenIssued), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn create_token(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(t): ApiJson<TokenCreate>,
) -> AppResult<(StatusCode, Json<TokenIssued>)> {
    Ok((StatusCode::CREATED, Json(app::create_token(&ctx, &caller, t).await?)))
}

/// Your tokens (an operator sees everyone's).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "identity", responses((status = 200, body = Vec<Token>)))]
pub async fn list_tokens(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Token>>> {
    Ok(Json(app::list_tokens(&ctx, &caller).await?))
}

/// Revoke a token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "identity",
    params(("id" = String, Path, description = "token id, t-...")),
    responses((status = 200, description = "revoked"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn revoke_token(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<()>> {
    Ok(Json(app::revoke_token(&ctx, &caller, &id).await?))
}

/// Projects: an operator sees all, a user those it belongs to.
#[utoipa::path(get, path = "/api/v1/projects", tag = "identity", responses((status = 200, body = Vec<Project>)))]
pub async fn list_projects(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Project>>> {
    Ok(Json(app::list_projects(&ctx, &caller).await?))
}

/// Create a project (operators only).
#[utoipa::path(post, path = "/api/v1/projects", tag = "identity", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_project(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<ProjectCreate>,
) -> AppResult<(StatusCode, Json<Project>)> {
    Ok((StatusCode::CREATED, Json(app::create_project(&ctx, &caller, p).await?)))
}

/// Set a project's quota (operators only).
#[utoipa::path(put, path = "/api/v1/projects/{id}/quota", tag = "identity", request_body = Quota,
    params(("id" = String, Path, description = "project id or name")),
    responses((status = 200, body = Project), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn set_quota(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(q): ApiJson<Quota>,
) -> AppResult<Json<Project>> {
    Ok(Json(app::set_quota(&ctx, &caller, &id, q).await?))
}

/// Add a user to a project with a role, or change the role (operators only).
#[utoipa::path(put, path = "/api/v1/projects/{id}/members/{user}", tag = "identity", request_body = MemberSet,
    params(("id" = String, Path, description = "project id or name"), ("user" = String, Path, description = "user name")),
    responses((status = 200, description = "set"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn set_member(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path((id, user)): Path<(String, String)>,
    ApiJson(m): ApiJson<MemberSet>,
) -> AppResult<Json<()>> {
    Ok(Json(app::set_member(&ctx, &caller, &id, &user, m).await?))
}

/// Take a user's role in a project away (operators only). The user's
/// tokens for the project then read and change nothing of it.
#[utoipa::path(delete, path = "/api/v1/projects/{id}/members/{user}", tag = "identity",
    params(("id" = String, Path, description = "project id or name"), ("user" = String, Path, description = "user name")),
    responses((status = 200, description = "removed"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn remove_member(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path((id, user)): Path<(String, String)>,
) -> AppResult<Json<()>> {
    Ok(Json(app::remove_member(&ctx, &caller, &id, &user).await?))
}

/// Users (operators only).
#[utoipa::path(get, path = "/api/v1/users", tag = "identity", responses((status = 200, body = Vec<User>)))]
pub async fn list_users(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<User>>> {
    Ok(Json(app::list_users(&ctx, &caller).await?))
}

/// Create a local user, or reset its password (operators only).
#[utoipa::path(post, path = "/api/v1/users", tag = "identity", request_body = UserCreate,
    responses((status = 201, body = User), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn create_user(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(u): ApiJson<UserCreate>,
) -> AppResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(app::create_user(&ctx, &caller, u).await?)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Most recent entries to return (default 100, at most 10000).
    pub limit: Option<u32>,
}

/// The audit log, newest first (operators only).
#[utoipa::path(get, path = "/api/v1/audit", tag = "identity", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn audit(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<AuditQuery>,
) -> AppResult<Json<Vec<AuditEntry>>> {
    Ok(Json(app::audit(&ctx, &caller, q.limit).await?))
}

/// A one-time token that lets one new host join (operators only; valid 1 hour).
#[utoipa::path(post, path = "/api/v1/hosts/join-tokens", tag = "hosts",
    responses((status = 201, body = JoinToken), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn join_token(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<(StatusCode, Json<JoinToken>)> {
    Ok((StatusCode::CREATED, Json(app::join_token(&ctx, &caller).await?)))
}

/// Create an access-key pair for the EC2 API (SigV4), in your current project.
#[utoipa::path(post, path = "/api/v1/access-keys", tag = "identity",
    responses((status = 201, body = nubo_api::views::AccessKeyIssued)))]
pub async fn create_access_key(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
) -> AppResult<(StatusCode, Json<nubo_api::views::AccessKeyIssued>)> {
    Ok((StatusCode::CREATED, Json(app::create_access_key(&ctx, &caller).await?)))
}

/// Your access keys (an operator sees everyone's); secrets are never listed.
#[utoipa::path(get, path = "/api/v1/access-keys", tag = "identity",
    responses((status = 200, body = Vec<nubo_api::views::AccessKey>)))]
pub async fn list_access_keys(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
) -> AppResult<Json<Vec<nubo_api::views::AccessKey>>> {
    Ok(Json(app::list_access_keys(&ctx, &caller).await?))
}

/// Revoke an access key at once.
#[utoipa::path(delete, path = "/api/v1/access-keys/{id}", tag = "identity",
    params(("id" = String, Path, description = "access key id, AKIA...")),
    responses((status = 200, description = "revoked"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn revoke_access_key(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<()>> {
    Ok(Json(app::revoke_access_key(&ctx, &caller, &id).await?))
}
