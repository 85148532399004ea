//! Identity: signing in (local passwords and LDAP, within the sign-in
//! limits), sign-in sessions and API tokens, projects with their quotas
//! and members, users, the audit log, join tokens for new hosts, and
//! access keys for the EC2 API. The REST API and the portal both sign in
//! and issue sessions through here.

use crate::auth::Caller;
use crate::authz;
use crate::error::{AppError, AppResult};
use crate::identity::{ProjectRow, UserRow};
use crate::store::now_ms;
use crate::Ctx;
use nubo_api::ids::TokenId;
use nubo_api::params::{Login, MemberSet, ProjectCreate, Quota, TokenCreate, UserCreate};
use nubo_api::views::{
    AccessKey, AccessKeyIssued, AuditEntry, JoinToken, Project, QuotaUsage, Token, TokenIssued, User, WhoAmI,
};
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
        _ => ldap_login(ctx, &l.username, &l.password).await?,
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

/// Sign-in through LDAP: bind as the user, read its groups, and map them
/// to projects and roles. Memberships follow the directory at every
/// sign-in, and between sign-ins at each re-check (`ldap_sync`). Without
/// an LDAP configuration, unknown users are refused.
pub async fn ldap_login(ctx: &Ctx, user: &str, password: &str) -> AppResult<UserRow> {
    use crate::ldap::{authenticate, LdapError};
    let refused = || AppError::Unauthorized(BAD_LOGIN.into());
    let Some(cfg) = &ctx.config.ldap else { return Err(refused()) };
    let identity = match authenticate(cfg, user, password).await {
        Ok(i) => i,
        Err(LdapError::InvalidCredentials) => return Err(refused()),
        Err(e @ LdapError::NoMatchingGroup { .. }) => return Err(AppError::Forbidden(e.to_string())),
        Err(e @ LdapError::Unreachable { .. }) => return Err(AppError::Unavailable(e.to_string())),
        Err(e) => {
            tracing::warn!(error = %e, "LDAP sign-in failed");
            return Err(refused());
        }
    };
    let admin = identity.grants.iter().any(|g| g.role == "admin");
    let row = ctx.store.upsert_user(user, "ldap", None, admin).await?;
    crate::ldap_sync::apply_grants(ctx, &row, &identity.grants).await?;
    Ok(row)
}

/// A sign-in session token (`login` or `portal`), within the user's token
/// cap: the oldest sessions make room.
pub async fn issue_session(
    ctx: &Ctx,
    user_id: &str,
    project_id: Option<&str>,
    name: &str,
    expires_at_ms: i64,
) -> AppResult<(TokenId, String)> {
    let max = ctx.config.max_tokens_per_user;
    ctx.store
        .issue_token_capped(user_id, project_id, name, Some(expires_at_ms), max, true)
        .await?
        .map_err(|live| too_many_tokens(live, max))
}

/// A new sign-in session (named `name`) of the caller in another
/// project, by id or name: one the caller belongs to, or any, for an
/// operator. Returns the session's secret; the caller's old session
/// stays until its holder revokes it.
pub async fn session_in_project(ctx: &Ctx, caller: &Caller, project: &str, name: &str) -> AppResult<String> {
    let memberships = ctx.store.memberships(&caller.user_id).await?;
    let target = match memberships.iter().find(|(id, pname, _)| id == project || pname == project) {
        Some((id, _, _)) => id.clone(),
        None if caller.admin => {
            ctx.store
                .project(project)
                .await?
                .ok_or(AppError::NotFound { kind: "project", id: project.chars().take(64).collect() })?
                .id
        }
        None => return Err(AppError::Forbidden("you are not a member of that project".into())),
    };
    let expires = now_ms() + ctx.config.session_ttl.as_millis() as i64;
    let (_, token) = issue_session(ctx, &caller.user_id, Some(&target), name, expires).await?;
    Ok(token)
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

/// Who the caller is.
pub fn whoami(caller: &Caller) -> WhoAmI {
    WhoAmI {
        user: caller.user_name.clone(),
        admin: caller.admin,
        project: caller.project_name.clone(),
        role: caller.role.as_str().into(),
    }
}

/// An API token for the caller, in its current project.
pub async fn create_token(ctx: &Arc<Ctx>, caller: &Caller, t: TokenCreate) -> AppResult<TokenIssued> {
    crate::validate::name(&t.name)?;
    let max_secs = max_token_life(ctx, &caller.user_id, &caller.user_name).await?.as_secs().max(1);
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
    Ok(TokenIssued {
        id,
        token,
        user: caller.user_name.clone(),
        project: caller.project_name.clone(),
        role: caller.role.as_str().into(),
        expires_at_ms: expires,
    })
}

/// The caller's tokens (an operator sees everyone's).
pub async fn list_tokens(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Token>> {
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
    Ok(out)
}

/// Revokes a token of the caller's (any, for an operator) at once.
pub async fn revoke_token(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let id: TokenId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    if ctx.store.revoke_token(id.as_str(), scope).await? {
        Ok(())
    } else {
        Err(AppError::NotFound { kind: "token", id: id.to_string() })
    }
}

/// Projects: an operator sees all, a user those it belongs to.
pub async fn list_projects(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Project>> {
    let mine: Vec<String> = ctx.store.memberships(&caller.user_id).await?.into_iter().map(|m| m.0).collect();
    let mut out = Vec::new();
    for p in ctx.store.projects().await? {
        if caller.admin || mine.contains(&p.id) {
            out.push(project_view(p)?);
        }
    }
    Ok(out)
}

/// Creates a project (operators only).
pub async fn create_project(ctx: &Arc<Ctx>, caller: &Caller, p: ProjectCreate) -> AppResult<Project> {
    authz::require_admin(caller)?;
    crate::validate::name(&p.name)?;
    if ctx.store.project_by_name(&p.name).await?.is_some() {
        return Err(AppError::Conflict(format!("project '{}' already exists", p.name)));
    }
    let row = ctx.store.ensure_project(&p.name).await?;
    if let Some(q) = &p.quota {
        ctx.store.set_quota(&row.id, q).await?;
    }
    let row = ctx.store.project(&row.id).await?.ok_or_else(|| AppError::internal("project vanished"))?;
    project_view(row)
}

/// Sets the quota of a project, by id or name (operators only).
pub async fn set_quota(ctx: &Arc<Ctx>, caller: &Caller, project: &str, q: Quota) -> AppResult<Project> {
    authz::require_admin(caller)?;
    let p = ctx.store.project(project).await?.ok_or(AppError::NotFound { kind: "project", id: project.to_string() })?;
    ctx.store.set_quota(&p.id, &q).await?;
    let p = ctx.store.project(&p.id).await?.ok_or_else(|| AppError::internal("project vanished"))?;
    project_view(p)
}

/// Adds a user to a project with a role, or changes the role (operators only).
pub async fn set_member(ctx: &Arc<Ctx>, caller: &Caller, project: &str, user: &str, m: MemberSet) -> AppResult<()> {
    authz::require_admin(caller)?;
    if !["member", "reader"].contains(&m.role.as_str()) {
        return Err(AppError::BadRequest(format!(
            "role '{}' is not known: use member or reader (admin is a user flag)",
            m.role.chars().take(40).collect::<String>()
        )));
    }
    let p = ctx.store.project(project).await?.ok_or(AppError::NotFound { kind: "project", id: project.to_string() })?;
    let u = ctx.store.user_by_name(user).await?.ok_or(AppError::NotFound { kind: "user", id: user.to_string() })?;
    ctx.store.set_membership(&u.id, &p.id, &m.role).await?;
    Ok(())
}

/// Takes a user's role in a project away (operators only).
pub async fn remove_member(ctx: &Arc<Ctx>, caller: &Caller, project: &str, user: &str) -> AppResult<()> {
    authz::require_admin(caller)?;
    let p = ctx.store.project(project).await?.ok_or(AppError::NotFound { kind: "project", id: project.to_string() })?;
    let u = ctx.store.user_by_name(user).await?.ok_or(AppError::NotFound { kind: "user", id: user.to_string() })?;
    if !ctx.store.remove_membership(&u.id, &p.id).await? {
        return Err(AppError::NotFound { kind: "membership", id: format!("{user} in {}", p.name) });
    }
    tracing::info!(user = %u.name, project = %p.name, "membership removed");
    Ok(())
}

async fn user_view(ctx: &Ctx, u: UserRow) -> AppResult<User> {
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
pub async fn list_users(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<User>> {
    authz::require_admin(caller)?;
    let mut out = Vec::new();
    for u in ctx.store.users().await? {
        out.push(user_view(ctx, u).await?);
    }
    Ok(out)
}

/// Creates a local user, or resets its password (operators only).
pub async fn create_user(ctx: &Arc<Ctx>, caller: &Caller, u: UserCreate) -> AppResult<User> {
    authz::require_admin(caller)?;
    crate::validate::name(&u.name)?;
    if u.password.chars().count() < 8 || u.password.len() > 1024 {
        return Err(AppError::BadRequest("the password must be 8 to 1024 characters".into()));
    }
    let hash = ctx.signin.hash(&u.password).await?;
    let row = ctx.store.upsert_user(&u.name, "local", Some(&hash), u.admin).await?;
    user_view(ctx, row).await
}

/// The newest `limit` entries of the audit log (default 100, at most
/// 10000), newest first (operators only).
pub async fn audit(ctx: &Arc<Ctx>, caller: &Caller, limit: Option<u32>) -> AppResult<Vec<AuditEntry>> {
    authz::require_admin(caller)?;
    let limit = i64::from(limit.unwrap_or(100).clamp(1, 10_000));
    Ok(ctx.store.audit_entries(limit).await?)
}

/// A one-time token that lets one new host join within an hour (operators only).
pub async fn join_token(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<JoinToken> {
    authz::require_admin(caller)?;
    let (token, expires_at_ms) = ctx.mint_join_token(3600 * 1000).await?;
    Ok(JoinToken { token, expires_at_ms })
}

/// An access-key pair for the EC2 API (SigV4), in the caller's current project.
pub async fn create_access_key(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<AccessKeyIssued> {
    let (id, secret) = ctx.issue_access_key(&caller.user_id, caller.project_id.as_deref()).await?;
    Ok(AccessKeyIssued {
        access_key_id: id,
        secret_access_key: secret,
        user: caller.user_name.clone(),
        project: caller.project_name.clone(),
    })
}

/// The caller's access keys (an operator sees everyone's); never their secrets.
pub async fn list_access_keys(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<AccessKey>> {
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    Ok(ctx
        .store
        .access_keys(scope)
        .await?
        .into_iter()
        .map(|k| AccessKey {
            access_key_id: k.id,
            user: k.user_name,
            project: k.project_name,
            created_at_ms: k.created_at_ms,
            revoked: k.revoked_at_ms.is_some(),
        })
        .collect())
}

/// Revokes an access key of the caller's (any, for an operator) at once.
pub async fn revoke_access_key(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let scope = if caller.admin { None } else { Some(caller.user_id.as_str()) };
    if ctx.store.revoke_access_key(id, scope).await? {
        Ok(())
    } else {
        Err(AppError::NotFound { kind: "access-key", id: id.chars().take(64).collect() })
    }
}
