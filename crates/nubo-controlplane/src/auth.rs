//! Who is calling. Every request's credential is resolved here, in one
//! place: user API tokens to a `Caller` (user, project, role), host
//! credentials to a `HostCaller`. Secrets are random 256-bit tokens kept
//! only as SHA-256 hashes. Requests are rate limited per user (every token
//! and access key of one user share one budget, so minting tokens buys no
//! more requests) and per host, and what was resolved is handed to the
//! audit log.

use crate::error::AppError;
use crate::Ctx;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

/// Names what an audited request did (the EC2 action), and whether it was
/// only a read (a POST that changed nothing is then left out of the log).
pub(crate) fn record_detail(extensions: &axum::http::Extensions, detail: String, read_only: bool) {
    if let Some(slot) = extensions.get::<AuditSlot>() {
        let mut info = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        info.detail = Some(detail);
        info.read_only = read_only;
    }
}

/// A new random token, `nubo_` + 64 hex digits.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("nubo_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a caller may do inside its project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The operator: everything, everywhere.
    Admin,
    /// Manages the project's resources.
    Member,
    /// Reads the project's resources.
    Reader,
    /// Signed in, but no longer a member of the token's project.
    None,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Reader => "reader",
            Self::None => "none",
        }
    }
}

/// An authenticated user, working in one project.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub user_name: String,
    pub admin: bool,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub role: Role,
}

/// An authenticated compute host: it may act only as itself.
#[derive(Debug, Clone)]
pub struct HostCaller {
    pub host_id: String,
}

/// Filled by the extractors, read by the audit middleware.
#[derive(Debug, Default, Clone)]
pub struct AuditInfo {
    pub actor: Option<String>,
    pub project_id: Option<String>,
    /// What the request did when the path alone does not say (an EC2 action).
    pub detail: Option<String>,
    /// A read that arrived as a POST (EC2 Describe* actions): not audited.
    pub read_only: bool,
}

#[derive(Clone, Default)]
pub struct AuditSlot(pub Arc<Mutex<AuditInfo>>);

pub(crate) fn record(parts: &Parts, actor: String, project: Option<String>) {
    if let Some(slot) = parts.extensions.get::<AuditSlot>() {
        let mut info = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        info.actor = Some(actor);
        info.project_id = project;
    }
}

fn bearer(parts: &Parts) -> Result<&str, AppError> {
    let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        AppError::Unauthorized(
            "no credential: send 'Authorization: Bearer <token>' (the CLI reads NUBO_TOKEN; `nubo login` or admin.env sets it)"
                .into(),
        )
    })?;
    header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| AppError::Unauthorized("the Authorization header must be 'Bearer <token>'".into()))
}

/// Counts one request against a principal's budget: `user:ID` or `host:ID`.
pub(crate) fn rate_limit(ctx: &Ctx, key: &str) -> Result<(), AppError> {
    ctx.limiter.check_key(&key.to_string()).map_err(|_| {
        AppError::TooManyRequests(format!(
            "too many requests for this user or host (limit {} per second, all its tokens together): slow down \
             and retry",
            ctx.config.rate_per_sec
        ))
    })
}

/// The budget key of a resolved user credential: the user, not the token.
pub(crate) fn user_key(owner: &crate::identity::TokenOwner) -> String {
    format!("user:{}", owner.user_id)
}

/// The address a request came from (`in-process` when served without a
/// socket, as in tests), for per-address limits and the audit log.
#[derive(Debug, Clone)]
pub struct SourceAddr(pub String);

impl SourceAddr {
    pub fn of(parts_extensions: &axum::http::Extensions) -> Self {
        Self(
            parts_extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_else(|| "in-process".into()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SourceAddr {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

impl FromRequestParts<Arc<Ctx>> for Caller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AppError> {
        let token = bearer(parts)?;
        let owner = match ctx.store.token_owner(token).await? {
            Some(o) => o,
            None => {
                record(parts, "invalid-token".into(), None);
                return Err(AppError::Unauthorized(
                    "the token is not valid, has expired or was revoked: sign in again with `nubo login`".into(),
                ));
            }
        };
        rate_limit(ctx, &user_key(&owner))?;
        record(parts, owner.user_name.clone(), owner.project_id.clone());
        Ok(caller_of(owner))
    }
}

/// The caller an API token stands for, if it is valid: for the server's
/// own start-up work done as its admin (`nubo up`'s host network).
pub async fn token_caller(ctx: &Ctx, token: &str) -> Result<Option<Caller>, sqlx::Error> {
    Ok(ctx.store.token_owner(token).await?.map(caller_of))
}

/// The caller a resolved credential (API token or access key) stands for.
pub(crate) fn caller_of(owner: crate::identity::TokenOwner) -> Caller {
    let admin = owner.is_admin == 1;
    let role = if admin {
        Role::Admin
    } else {
        match owner.role.as_deref() {
            Some("member") => Role::Member,
            Some("reader") => Role::Reader,
            _ => Role::None,
        }
    };
    Caller {
        user_id: owner.user_id,
        user_name: owner.user_name,
        admin,
        project_id: owner.project_id,
        project_name: owner.project_name,
        role,
    }
}

impl FromRequestParts<Arc<Ctx>> for HostCaller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AppError> {
        let token = bearer(parts)?;
        match ctx.store.credential_host(token).await? {
            Some(host_id) => {
                rate_limit(ctx, &format!("host:{host_id}"))?;
                record(parts, format!("host:{host_id}"), None);
                Ok(HostCaller { host_id })
            }
            None => {
                record(parts, "invalid-host-credential".into(), None);
                Err(AppError::Unauthorized(
                    "not a valid host credential: join the host with a join token (`nubo host join-token`)".into(),
                ))
            }
        }
    }
}
