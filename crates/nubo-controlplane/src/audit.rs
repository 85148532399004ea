//! The audit log: every mutating request (POST, PUT, PATCH, DELETE) is
//! recorded with who made it, in which project, from where, and how it
//! ended. The credential extractors name the actor; this middleware
//! writes the entry once the response is known. Agents' heartbeat
//! reports and console chunks are not audited (they arrive twice a second
//! per host); their registration and joins are.

use crate::auth::AuditSlot;
use crate::Ctx;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;

fn audited(method: &Method, path: &str) -> bool {
    let mutating = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let heartbeat = path.starts_with("/api/v1/agent/hosts/")
        || path.starts_with("/api/v1/agent/instances/")
        || path.starts_with("/api/v1/agent/runs/");
    mutating && !heartbeat
}

pub async fn middleware(State(ctx): State<Arc<Ctx>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(300).collect();
    if !audited(&method, &path) {
        return next.run(req).await;
    }
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "in-process".into());
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let outcome = match status {
        200..=399 => "ok",
        401 | 403 | 404 => "denied",
        _ => "failed",
    };
    let info = slot.0.lock().map(|i| i.clone()).unwrap_or_default();
    if info.read_only {
        return resp;
    }
    let path = match &info.detail {
        Some(d) => format!("{path} ({d})"),
        None => path,
    };
    let actor = info.actor.unwrap_or_else(|| "anonymous".into());
    if let Err(e) =
        ctx.store.audit(&actor, info.project_id.as_deref(), method.as_str(), &path, &source, status, outcome).await
    {
        tracing::error!(error = %e, %path, "cannot write the audit log");
    }
    resp
}
