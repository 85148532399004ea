//! `/api/v1/auth`, `/tokens`, `/projects`, `/users`, `/audit` and
//! `/hosts/join-tokens`: signing in, API tokens, tenancy, quotas, the audit
//! log, and join tokens for new hosts.

use crate::auth::Caller;
use crate::auth::{AuditSlot, SourceAddr};
use crate::authz;
use crate::error::{ApiJson, AppError, AppResult};
use crate::identity::ProjectRow;
use crate::store::now_ms;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::params::{Login, MemberSet, ProjectCreate, Quota, TokenCreate, UserCreate};
use nubo_api::views::{AuditEntry, JoinToken, Project, QuotaUsage, Token, TokenIssued, User, WhoAmI};
use serde::Deserialize;
use std::sync::Arc;

fn project_view(p: ProjectRow) -> AppResult<Project> {
    Ok(Project {
        id: p.id.parse().map_err(AppError::internal)?,
        name: p.name,
        quota: QuotaUsage {
            instances: p.quota_instances as u64,
            vcpus: p.quota_vcpus as u64,
            memory_mib: p.quota_memory_mib as u64,
            volume_gib: p.quota_volume_gib as u64,
        },
        used: QuotaUsage {
            instances: p.used_instances as u64,
            vcpus: p.used_vcpus as u64,
            memory_mib: p.used_memory_mib as u64,
            volume_gib: p.used_volume_gib as u64,
        },
    })
}

const BAD_LOGIN: &str = "invalid username or password";

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
    let issued = sign_in(&ctx, &source.0, l).await?;
    if let Some(axum::Extension(slot)) = audit {
        let mut info = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        info.actor = Some(issued.user.clone());
    }
    Ok(Json(issued))
}

/// A password sign-in from `source` (the REST API's and the portal's).
pub async fn sign_in(ctx: &Ctx, source: &str, l: Login) -> AppResult<TokenIssued> {
    // Counted before anything else, the password included, so that a
    // right password during a lockout is refused like a wrong one.
    ctx.signin.admit_or_refuse(&l.username.chars().take(64).collect::<String>(), source)?;
    crate::validate::name(&l.username).map_err(|_| AppError::Unauthorized(BAD_LOGIN.into()))?;
    let local = ctx.store.user_by_name(&l.username).await?;
    let user = match local {
        Some(u) if u.source == "local" => {
            let ok = match u.password_hash.as_deref() {
                Some(h) => ctx.signin.verify(&l.password, h).await?,
                None => false,
            };
            if !ok {
                return Err(AppError::Unauthorized(BAD_LOGIN.into()));
            }
            u
        }
        _ => crate::api::ldap_login(ctx, &l.username, &l.password).await?,
    };
    let memberships = ctx.store.memberships(&user.id).await?;
    let chosen = match &l.project {
        Some(p) => memberships.iter().find(|(id, name, _)| id == p || name == p).cloned(),
        None => memberships.first().cloned(),
    };
    let (project_id, project_name, role) = match (chosen, user.is_admin == 1, &l.project) {
        (Some((id, name, role)), admin, _) => (Some(id), Some(name), if admin { "admin".into() } else { role }),
        (None, true, Some(p)) => {
            let proj = ctx.store.project(p).await?.ok_or(AppError::NotFound { kind: "project", id: p.clone() })?;
            (Some(proj.id), Some(proj.name), "admin".to_string())
        }
        (None, true, None) => (None, None, "admin".to_string()),
        (None, false, Some(p)) => {
            return Err(AppError::Forbidden(format!("you are not a member of project '{p}'")));
        }
        (None, false, None) => {
            return Err(AppError::Forbidden("you are not a member of any project: ask an operator to add you".into()));
        }
    };
    let expires = now_ms() + ctx.config.session_ttl.as_millis() as i64;
    let (id, token) = issue_session(ctx, &user.id, project_id.as_deref(), "login", expires).await?;
    Ok(TokenIssued { id, token, user: user.name, project: project_name, role, expires_at_ms: Some(expires) })
}

/// A sign-in session token (`login` or `portal`), within the user's token
/// cap: the oldest sessions make room.
pub async fn issue_session(
    ctx: &Ctx,
    user_id: &str,
    project_id: Option<&str>,
    name: &str,
    expires_at_ms: i64,
) -> AppResult<(nubo_api::ids::TokenId, String)> {
    let max = ctx.config.max_tokens_per_user;
    ctx.store
        .issue_token_capped(user_id, project_id, name, Some(expires_at_ms), max, true)
        .await?
        .map_err(|live| too_many_tokens(live, max))
}

fn too_many_tokens(live: u64, max: u32) -> AppError {
    AppError::Conflict(format!(
        "you hold {live} live API tokens, the most allowed is {max}: revoke one you no longer use with \
         `nubo token revoke ID` (see `nubo token list`), then try again"
    ))
}

/// The longest life a new token of `user_id` may have. A directory
/// user's tokens live no longer than a sign-in session: what the directory
/// takes away must not outlive it for months.
async fn max_token_life(ctx: &Ctx, user_id: &str, user_name: &str) -> AppResult<std::time::Duration> {
    let from_directory =
        ctx.store.user_by_name(user_name).await?.is_some_and(|u| u.id == user_id && u.source == "ldap");
    Ok(if from_directory {
        ctx.config.max_token_lifetime.min(ctx.config.session_ttl)
    } else {
        ctx.config.max_token_lifetime
    })
}

/// Who the token belongs to.
#[utoipa::path(get, path = "/api/v1/auth/whoami", tag = "identity",
    responses((status = 200, body = WhoAmI), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        user: caller.user_name,
        admin: caller.admin,
        project: caller.project_name,
        role: caller.role.as_str().into(),
    })
}

/// Create an API token for yourself, in your current project.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "identity", request_body = TokenCreate,
    responses((status = 201, body = TokenIssued), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn create_token(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(t): ApiJson<TokenCreate>,
) -> AppResult<(StatusCode, Json<TokenIssued>)> {
    crate::validate::name(&t.name)?;
    let max_secs = max_token_life(&ctx, &caller.user_id, &caller.user_name).await?.as_secs().max(1);
    let secs = match t.expires_in_secs {
        Some(0) => return Err(AppError::BadRequest("expires_in_secs must be at least 1".into())),
        Some(s) if s > max_secs => {
            return Err(AppError::BadRequest(format!(
                "expires_in_secs {s} is longer than the longest token life ({max_secs} s, {} days): ask for less, \
                 or leave it out to get the longest",
                max_secs / 86400
            )))
        }
        Some(s) => s,
        None => max_secs,
    };
    let expires = Some(now_ms().saturating_add((secs * 1000) as i64));
    let max = ctx.config.max_tokens_per_user;
    let (id, token) = ctx
        .store
        .issue_token_capped(&caller.user_id, caller.project_id.as_deref(), &t.name, expires, max, false)
        .await?
        .map_err(|live| too_many_tokens(live, max))?;
    Ok((
        StatusCode::CREATED,
        Json(TokenIssued {
            id,
            token,
            user: caller.user_name,
            project: caller.project_name,
            role: caller.role.as_str().into(),
            expires_at_ms: expires,
        }),
    ))
}

/// Your tokens (an operator sees everyone's).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "identity", responses((status = 200, body = Vec<Token>)))]
pub async fn list_tokens(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Token>>> {
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    let rows = ctx.store.tokens(scope).await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(Token {
            id: r.id.parse().map_err(AppError::internal)?,
            name: r.name,
            user: r.user_name,
            project: r.project_name,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            revoked: r.revoked_at_ms.is_some(),
        });
    }
    Ok(Json(out))
}

/// Revoke a token at once.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "identity",
    params(("id" = String, Path, description = "token id, t-...")),
    responses((status = 200, description = "revoked"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn revoke_token(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<()>> {
    let id: nubo_api::ids::TokenId =
        id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    if ctx.store.revoke_token(id.as_str(), scope).await? {
        Ok(Json(()))
    } else {
        Err(AppError::NotFound { kind: "token", id: id.to_string() })
    }
}

/// Projects: an operator sees all, a user those it belongs to.
#[utoipa::path(get, path = "/api/v1/projects", tag = "identity", responses((status = 200, body = Vec<Project>)))]
pub async fn list_projects(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Project>>> {
    let mine: Vec<String> = ctx.store.memberships(&caller.user_id).await?.into_iter().map(|m| m.0).collect();
    let mut out = Vec::new();
    for p in ctx.store.projects().await? {
        if caller.admin || mine.contains(&p.id) {
            out.push(project_view(p)?);
        }
    }
    Ok(Json(out))
}

/// Create a project (operators only).
#[utoipa::path(post, path = "/api/v1/projects", tag = "identity", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn create_project(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<ProjectCreate>,
) -> AppResult<(StatusCode, Json<Project>)> {
    authz::require_admin(&caller)?;
    crate::validate::name(&p.name)?;
    if ctx.store.project_by_name(&p.name).await?.is_some() {
        return Err(AppError::Conflict(format!("project '{}' already exists", p.name)));
    }
    let row = ctx.store.ensure_project(&p.name).await?;
    if let Some(q) = &p.quota {
        ctx.store.set_quota(&row.id, q).await?;
    }
    let row = ctx.store.project(&row.id).await?.ok_or_else(|| AppError::internal("project vanished"))?;
    Ok((StatusCode::CREATED, Json(project_view(row)?)))
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
    authz::require_admin(&caller)?;
    let p = ctx.store.project(&id).await?.ok_or(AppError::NotFound { kind: "project", id: id.clone() })?;
    ctx.store.set_quota(&p.id, &q).await?;
    let p = ctx.store.project(&p.id).await?.ok_or_else(|| AppError::internal("project vanished"))?;
    Ok(Json(project_view(p)?))
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
    authz::require_admin(&caller)?;
    if !["member", "reader"].contains(&m.role.as_str()) {
        return Err(AppError::BadRequest(format!(
            "role '{}' is not known: use member or reader (admin is a user flag)",
            m.role.chars().take(40).collect::<String>()
        )));
    }
    let p = ctx.store.project(&id).await?.ok_or(AppError::NotFound { kind: "project", id: id.clone() })?;
    let u = ctx.store.user_by_name(&user).await?.ok_or(AppError::NotFound { kind: "user", id: user.clone() })?;
    ctx.store.set_membership(&u.id, &p.id, &m.role).await?;
    Ok(Json(()))
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
    authz::require_admin(&caller)?;
    let p = ctx.store.project(&id).await?.ok_or(AppError::NotFound { kind: "project", id: id.clone() })?;
    let u = ctx.store.user_by_name(&user).await?.ok_or(AppError::NotFound { kind: "user", id: user.clone() })?;
    if !ctx.store.remove_membership(&u.id, &p.id).await? {
        return Err(AppError::NotFound { kind: "membership", id: format!("{user} in {}", p.name) });
    }
    tracing::info!(user = %u.name, project = %p.name, "membership removed");
    Ok(Json(()))
}

async fn user_view(ctx: &Ctx, u: crate::identity::UserRow) -> AppResult<User> {
    let projects = ctx.store.memberships(&u.id).await?.into_iter().map(|(_, name, role)| (name, role)).collect();
    Ok(User {
        id: u.id.parse().map_err(AppError::internal)?,
        name: u.name,
        source: u.source,
        admin: u.is_admin == 1,
        projects,
    })
}

/// Users (operators only).
#[utoipa::path(get, path = "/api/v1/users", tag = "identity", responses((status = 200, body = Vec<User>)))]
pub async fn list_users(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<User>>> {
    authz::require_admin(&caller)?;
    let mut out = Vec::new();
    for u in ctx.store.users().await? {
        out.push(user_view(&ctx, u).await?);
    }
    Ok(Json(out))
}

/// Create a local user, or reset its password (operators only).
#[utoipa::path(post, path = "/api/v1/users", tag = "identity", request_body = UserCreate,
    responses((status = 201, body = User), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn create_user(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(u): ApiJson<UserCreate>,
) -> AppResult<(StatusCode, Json<User>)> {
    authz::require_admin(&caller)?;
    crate::validate::name(&u.name)?;
    if u.password.chars().count() < 8 || u.password.len() > 1024 {
        return Err(AppError::BadRequest("the password must be 8 to 1024 characters".into()));
    }
    let hash = ctx.signin.hash(&u.password).await?;
    let row = ctx.store.upsert_user(&u.name, "local", Some(&hash), u.admin).await?;
    Ok((StatusCode::CREATED, Json(user_view(&ctx, row).await?)))
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
    authz::require_admin(&caller)?;
    let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 10_000));
    Ok(Json(ctx.store.audit_entries(limit).await?))
}

/// A one-time token that lets one new host join (operators only; valid 1 hour).
#[utoipa::path(post, path = "/api/v1/hosts/join-tokens", tag = "hosts",
    responses((status = 201, body = JoinToken), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn join_token(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<(StatusCode, Json<JoinToken>)> {
    authz::require_admin(&caller)?;
    let (token, expires_at_ms) = ctx.mint_join_token(3600 * 1000).await?;
    Ok((StatusCode::CREATED, Json(JoinToken { token, expires_at_ms })))
}

/// Create an access-key pair for the EC2 API (SigV4), in your current project.
#[utoipa::path(post, path = "/api/v1/access-keys", tag = "identity",
    responses((status = 201, body = nubo_api::views::AccessKeyIssued)))]
pub async fn create_access_key(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
) -> AppResult<(StatusCode, Json<nubo_api::views::AccessKeyIssued>)> {
    let (id, secret) = ctx.issue_access_key(&caller.user_id, caller.project_id.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(nubo_api::views::AccessKeyIssued {
            access_key_id: id,
            secret_access_key: secret,
            user: caller.user_name,
            project: caller.project_name,
        }),
    ))
}

/// Your access keys (an operator sees everyone's); secrets are never listed.
#[utoipa::path(get, path = "/api/v1/access-keys", tag = "identity",
    responses((status = 200, body = Vec<nubo_api::views::AccessKey>)))]
pub async fn list_access_keys(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
) -> AppResult<Json<Vec<nubo_api::views::AccessKey>>> {
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    Ok(Json(
        ctx.store
            .access_keys(scope)
            .await?
            .into_iter()
            .map(|k| nubo_api::views::AccessKey {
                access_key_id: k.id,
                user: k.user_name,
                project: k.project_name,
                created_at_ms: k.created_at_ms,
                revoked: k.revoked_at_ms.is_some(),
            })
            .collect(),
    ))
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
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    if ctx.store.revoke_access_key(&id, scope).await? {
        Ok(Json(()))
    } else {
        Err(AppError::NotFound { kind: "access-key", id: id.chars().take(64).collect() })
    }
}
