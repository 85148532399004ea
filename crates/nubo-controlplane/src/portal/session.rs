//! Portal sessions: who is signed in to the browser, and proof that a form
//! was posted by our own page.
//!
//! A session is an ordinary API token (issued by the same sign-in as
//! `nubo login`, with the session lifetime), kept in an `HttpOnly`,
//! `SameSite=Strict` cookie, `Secure` and `__Host-` prefixed when the
//! portal is served over HTTPS. Its permissions are exactly the token's,
//! so the portal can never do more than the API would let that user do.
//!
//! Forms carry a CSRF token derived from the session secret (a keyed hash
//! the page cannot compute without the cookie, which scripts cannot read);
//! every POST must carry it, and a POST whose `Origin` is another site is
//! refused before that. The sign-in form, which has no session yet, uses
//! a double-submit cookie instead.

use super::PortalError;
use crate::auth::{caller_of, Caller};
use crate::error::AppError;
use crate::Ctx;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The session cookie over plain HTTP (only sensible on loopback).
pub const COOKIE_HTTP: &str = "nubo_session";
/// The session cookie over HTTPS: `__Host-` makes browsers insist on
/// `Secure`, `Path=/` and no `Domain`, so no other site can plant it.
pub const COOKIE_HTTPS: &str = "__Host-nubo_session";
/// The sign-in form's double-submit CSRF cookie.
pub const LOGIN_COOKIE: &str = "nubo_login_csrf";

/// How the request reached the server; set by `serve` and `serve_tls`.
/// Absent (in-process tests) means plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https,
}

pub fn transport(parts: &Parts) -> Transport {
    parts.extensions.get::<Transport>().copied().unwrap_or(Transport::Http)
}

/// The `Set-Cookie` value that stores a session token.
pub fn session_cookie(t: Transport, token: &str, max_age_secs: u64) -> String {
    match t {
        Transport::Https => {
            format!("{COOKIE_HTTPS}={token}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict")
        }
        Transport::Http => {
            format!("{COOKIE_HTTP}={token}; Path=/ui; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict")
        }
    }
}

/// The `Set-Cookie` value that forgets the session.
pub fn clear_cookie(t: Transport) -> String {
    session_cookie(t, "", 0)
}

/// The login form's CSRF cookie (lives ten minutes, enough to type a password).
pub fn login_cookie(t: Transport, value: &str) -> String {
    let secure = if t == Transport::Https { "; Secure" } else { "" };
    format!("{LOGIN_COOKIE}={value}; Path=/ui; Max-Age=600; HttpOnly; SameSite=Strict{secure}")
}

/// One cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The CSRF token of a session: a hash of the secret with a fixed label,
/// so it needs no storage and means nothing without the cookie.
pub fn csrf_for(session_secret: &str) -> String {
    hex::encode(Sha256::digest(format!("nubo-portal-csrf\0{session_secret}").as_bytes()))
}

/// Equal strings, compared in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    pub token_id: String,
    /// Put in every form as `csrf`.
    pub csrf: String,
    pub transport: Transport,
}

impl Session {
    /// The session's project, once its role there is checked: a user
    /// removed from the project sees none of it.
    pub fn project_id(&self) -> Result<&str, PortalError> {
        let project = self.caller.project_id.as_deref().ok_or_else(|| {
            PortalError::App(AppError::Forbidden(
                "this session has no project: choose one in the menu at the top right".into(),
            ))
        })?;
        if !self.caller.admin && self.caller.role == crate::auth::Role::None {
            return Err(PortalError::App(crate::authz::no_role(&self.caller)));
        }
        Ok(project)
    }
}

/// The path to come back to after signing in: only our own portal pages.
pub fn safe_next(next: &str) -> String {
    let ok = next.starts_with("/ui") && !next.starts_with("//") && !next.contains('\\') && next.len() < 512;
    if ok {
        next.to_string()
    } else {
        "/ui/instances".to_string()
    }
}

impl FromRequestParts<Arc<Ctx>> for Session {
    type Rejection = PortalError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, PortalError> {
        let transport = transport(parts);
        let name = if transport == Transport::Https { COOKIE_HTTPS } else { COOKIE_HTTP };
        let next = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        let Some(secret) = cookie(&parts.headers, name) else {
            return Err(PortalError::SignIn { next });
        };
        let Some(owner) = ctx.store.token_owner(secret).await.map_err(AppError::from)? else {
            crate::auth::record(parts, "invalid-session".into(), None);
            return Err(PortalError::SignIn { next });
        };
        crate::auth::rate_limit(ctx, &crate::auth::user_key(&owner))?;
        crate::auth::record(parts, owner.user_name.clone(), owner.project_id.clone());
        let token_id = owner.token_id.clone();
        Ok(Session { caller: caller_of(owner), token_id, csrf: csrf_for(secret), transport })
    }
}

/// A signed-in operator: anyone else gets a refusal page, never the page.
#[derive(Debug, Clone)]
pub struct Operator(pub Session);

impl FromRequestParts<Arc<Ctx>> for Operator {
    type Rejection = PortalError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, PortalError> {
        let s = Session::from_request_parts(parts, ctx).await?;
        if !s.caller.admin {
            return Err(PortalError::App(AppError::Forbidden(format!(
                "the operator portal is for operators: {} is a {} of project {}; ask an operator if you need it",
                s.caller.user_name,
                s.caller.role.as_str(),
                s.caller.project_name.as_deref().unwrap_or("(none)")
            ))));
        }
        Ok(Operator(s))
    }
}

/// Refuses a POST sent from another site's page. Browsers send `Origin`
/// on every cross-origin POST; when present it must name this server.
pub fn check_origin(headers: &HeaderMap) -> Result<(), PortalError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or_default();
    if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
        return Err(PortalError::App(AppError::Forbidden(
            "this form was posted from another site's page and was refused; open the portal directly".into(),
        )));
    }
    Ok(())
}

/// Largest form the portal accepts (user-data is at most 64 KiB).
const MAX_FORM: usize = 256 * 1024;

/// The body of a form post as its raw bytes, size limited.
async fn form_bytes(body: axum::body::Body) -> Result<axum::body::Bytes, PortalError> {
    axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
        PortalError::App(AppError::PayloadTooLarge(format!(
            "the form is larger than {} KiB: shorten the user-data or parameters",
            MAX_FORM / 1024
        )))
    })
}

fn field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PortalError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|e| PortalError::App(AppError::BadRequest(format!("the form is not complete: {e}"))))
}

/// A form posted by a signed-in user from one of our pages: its session,
/// checked for origin and CSRF token, and its fields.
pub struct Posted<T> {
    pub session: Session,
    pub form: T,
}

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Ctx>> for Posted<T> {
    type Rejection = PortalError;
    async fn from_request(req: Request, ctx: &Arc<Ctx>) -> Result<Self, PortalError> {
        let (mut parts, body) = req.into_parts();
        check_origin(&parts.headers)?;
        let session = Session::from_request_parts(&mut parts, ctx).await?;
        let bytes = form_bytes(body).await?;
        let sent = field(&bytes, "csrf").unwrap_or_default();
        if !same_secret(&sent, &session.csrf) {
            return Err(PortalError::App(AppError::Forbidden(
                "the form's security token is missing or stale: reload the page and submit again".into(),
            )));
        }
        Ok(Posted { session, form: decode(&bytes)? })
    }
}

/// A form posted by an operator.
pub struct OperatorPosted<T> {
    pub session: Session,
    pub form: T,
}

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Ctx>> for OperatorPosted<T> {
    type Rejection = PortalError;
    async fn from_request(req: Request, ctx: &Arc<Ctx>) -> Result<Self, PortalError> {
        let (mut parts, body) = req.into_parts();
        let Operator(_) = Operator::from_request_parts(&mut parts, ctx).await?;
        let Posted { session, form } = Posted::from_request(Request::from_parts(parts, body), ctx).await?;
        Ok(OperatorPosted { session, form })
    }
}

/// The sign-in form: no session yet, so its CSRF token is the
/// double-submit cookie set when the form was shown.
pub struct LoginPosted<T> {
    pub transport: Transport,
    pub form: T,
    pub audit: AuditHandle,
}

/// Names the user of a sign-in in its audit entry once it succeeded.
pub struct AuditHandle(Option<crate::auth::AuditSlot>);

impl AuditHandle {
    pub fn actor(&self, name: &str) {
        if let Some(slot) = &self.0 {
            let mut info = slot.0.lock().unwrap_or_else(|p| p.into_inner());
            info.actor = Some(name.to_string());
        }
    }
}

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<Ctx>> for LoginPosted<T> {
    type Rejection = PortalError;
    async fn from_request(req: Request, _ctx: &Arc<Ctx>) -> Result<Self, PortalError> {
        let (parts, body) = req.into_parts();
        check_origin(&parts.headers)?;
        let expected = cookie(&parts.headers, LOGIN_COOKIE).unwrap_or_default().to_string();
        let bytes = form_bytes(body).await?;
        let sent = field(&bytes, "csrf").unwrap_or_default();
        if expected.is_empty() || !same_secret(&sent, &expected) {
            return Err(PortalError::App(AppError::Forbidden(
                "the sign-in form expired or was not opened here: reload the sign-in page and try again".into(),
            )));
        }
        let audit = AuditHandle(parts.extensions.get::<crate::auth::AuditSlot>().cloned());
        Ok(LoginPosted { transport: transport(&parts), form: decode(&bytes)?, audit })
    }
}

/// `Set-Cookie` as a header value (our cookies are plain ASCII).
pub fn set_cookie(value: &str) -> Result<HeaderValue, PortalError> {
    HeaderValue::from_str(value).map_err(|e| PortalError::App(AppError::internal(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; nubo_session=abc ; b=2"));
        assert_eq!(cookie(&h, COOKIE_HTTP), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        h.append(header::COOKIE, HeaderValue::from_static("__Host-nubo_session=def"));
        assert_eq!(cookie(&h, COOKIE_HTTPS), Some("def"));
    }

    #[test]
    fn https_cookies_are_secure_and_host_prefixed() {
        let c = session_cookie(Transport::Https, "t", 60);
        assert!(c.starts_with("__Host-nubo_session=t;"));
        for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/;"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        let plain = session_cookie(Transport::Http, "t", 60);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict") && !plain.contains("Secure"));
        assert!(clear_cookie(Transport::Http).contains("Max-Age=0"));
    }

    #[test]
    fn csrf_tokens_depend_on_the_session() {
        assert_ne!(csrf_for("a"), csrf_for("b"));
        assert_eq!(csrf_for("a"), csrf_for("a"));
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }

    #[test]
    fn next_stays_inside_the_portal() {
        assert_eq!(safe_next("/ui/instances/i-1"), "/ui/instances/i-1");
        for bad in ["https://evil.example/", "//evil.example/ui", "/api/v1/instances", "/ui\\..\\x"] {
            assert_eq!(safe_next(bad), "/ui/instances", "{bad}");
        }
    }

    #[test]
    fn foreign_origins_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(check_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(check_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&h).is_err());
    }
}
