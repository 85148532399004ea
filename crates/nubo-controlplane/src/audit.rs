//! The audit log: every mutating request (POST, PUT, PATCH, DELETE) is
//! recorded with who made it, in which project, from where, and how it
//! ended. The credential extractors name the actor; this middleware
//! writes the entry once the response is known. Agents' heartbeat
//! reports and console chunks are not audited (they arrive twice a second
//! per host); their registration and joins are.
//!
//! Anyone can send requests, so the log must not grow at an anonymous
//! client's pace: entries of unauthenticated requests (no credential, or
//! one that is not valid) are written within a per-address budget, and
//! past it only counted in the server's log. Entries older than the
//! retention are deleted in batches by a background task.

use crate::auth::AuditSlot;
use crate::Ctx;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Rows deleted by one statement of the retention task.
const PRUNE_BATCH: i64 = 1000;

/// The per-address budget of anonymous audit entries: `per_min` a minute,
/// as many at once.
pub fn anonymous_limiter(per_min: u32) -> governor::DefaultKeyedRateLimiter<String> {
    let n = NonZeroU32::new(per_min.max(1)).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(n).allow_burst(n))
}

/// Whether the actor the extractors named is a real principal (a user or a
/// host), not a refused credential or nobody.
fn authenticated(actor: Option<&str>) -> bool {
    actor.is_some_and(|a| !a.starts_with("invalid-") && a != "anonymous")
}

fn audited(method: &Method, path: &str) -> bool {
    let mutating = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    // The EC2 Query API takes any action as `GET /?Action=...` too: its
    // handler marks the reads read-only, so only changes are logged.
    let ec2_query = *method == Method::GET && path == "/";
    let heartbeat = path.starts_with("/api/v1/agent/hosts/")
        || path.starts_with("/api/v1/agent/instances/")
        || path.starts_with("/api/v1/agent/runs/");
    (mutating || ec2_query) && !heartbeat
}

pub async fn middleware(State(ctx): State<Arc<Ctx>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path: String = req.uri().path().chars().take(300).collect();
    if !audited(&method, &path) {
        return next.run(req).await;
    }
    let source = crate::auth::SourceAddr::of(req.extensions()).0;
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
    if !authenticated(info.actor.as_deref()) && ctx.anonymous_audit.check_key(&source).is_err() {
        tracing::debug!(%source, %path, status, "unauthenticated request over its audit budget: not logged");
        return resp;
    }
    let actor = info.actor.unwrap_or_else(|| "anonymous".into());
    if let Err(e) =
        ctx.store.audit(&actor, info.project_id.as_deref(), method.as_str(), &path, &source, status, outcome).await
    {
        tracing::error!(error = %e, %path, "cannot write the audit log");
    }
    resp
}

/// One pass of the retention: every entry older than `retention` goes.
pub async fn prune(ctx: &Ctx, retention: Duration) -> Result<u64, sqlx::Error> {
    let before = crate::store::now_ms().saturating_sub(retention.as_millis() as i64);
    let mut total = 0;
    loop {
        let n = ctx.store.prune_audit(before, PRUNE_BATCH).await?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
        // Let other statements in between batches.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_principals_escape_the_anonymous_budget() {
        assert!(authenticated(Some("alice")));
        assert!(authenticated(Some("host:h-1")));
        for a in [None, Some("anonymous"), Some("invalid-token"), Some("invalid-signature:AKIA")] {
            assert!(!authenticated(a), "{a:?}");
        }
    }

    #[test]
    fn the_anonymous_budget_is_per_address() {
        let l = anonymous_limiter(2);
        assert!(l.check_key(&"a".to_string()).is_ok());
        assert!(l.check_key(&"a".to_string()).is_ok());
        assert!(l.check_key(&"a".to_string()).is_err());
        assert!(l.check_key(&"b".to_string()).is_ok());
    }
}
