//! Who is calling: bearer tokens checked in one place. Tokens are random
//! 256-bit secrets stored as SHA-256 hashes; a leaked database does not
//! leak a usable credential. Admin tokens reach the user API, agent
//! tokens only the agent protocol.

use crate::error::AppError;
use crate::Ctx;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const KIND_ADMIN: &str = "admin";
pub const KIND_AGENT: &str = "agent";

/// A new random token, `nubo_` + 64 hex digits.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("nubo_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

async fn caller_kind(parts: &Parts, ctx: &Ctx) -> Result<String, AppError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AppError::Unauthorized(
                "no credential: send 'Authorization: Bearer <token>' (the CLI reads NUBO_TOKEN; `nubo up` writes it to admin.env)"
                    .into(),
            )
        })?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| AppError::Unauthorized("the Authorization header must be 'Bearer <token>'".into()))?;
    ctx.store
        .token_kind(&hash_token(token.trim()))
        .await?
        .ok_or_else(|| AppError::Unauthorized("the token is not valid: check NUBO_TOKEN".into()))
}

/// An operator with full rights.
pub struct Admin;

impl FromRequestParts<Arc<Ctx>> for Admin {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AppError> {
        match caller_kind(parts, ctx).await?.as_str() {
            KIND_ADMIN => Ok(Admin),
            _ => Err(AppError::Forbidden("this credential may not use the user API".into())),
        }
    }
}

/// A compute agent.
pub struct Agent;

impl FromRequestParts<Arc<Ctx>> for Agent {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AppError> {
        match caller_kind(parts, ctx).await?.as_str() {
            KIND_AGENT => Ok(Agent),
            _ => Err(AppError::Forbidden("only a compute agent's credential may use the agent API".into())),
        }
    }
}
