//! The web portals under `/ui`: the user portal (a project's instances,
//! volumes, key pairs, images, policies, groups, load balancers,
//! networks, security groups, floating IPs, backups and alerts) and the
//! operator portal under `/ui/admin` (hosts, every project's instances,
//! alerts, the audit log, projects, quotas, users and the background
//! tasks).
//!
//! Pages are rendered on the server (maud) and call the same handlers
//! the REST API routes to, with the session's caller, so the portal can
//! do exactly what the API lets that user do, no more. A small script
//! (`/ui/static/portal.js`) refreshes the live parts (instance states,
//! the console, charts) by fetching HTML fragments; everything works
//! without it, only less live. Nothing is loaded from anywhere else: the
//! stylesheet and script are compiled into the binary, and the Content
//! Security Policy forbids any other source.

mod background;
mod backups;
mod balancers;
mod chart;
pub mod consoles;
mod day_two;
mod floating_ips;
mod html;
mod instances;
mod networks;
mod operator;
mod resources;
pub mod session;

use crate::error::AppError;
use crate::Ctx;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

pub use session::Transport;

/// What a portal page returns when it cannot show itself.
#[derive(Debug)]
pub enum PortalError {
    /// No valid session: go to the sign-in page, then come back.
    SignIn { next: String },
    /// Anything the API would have refused, shown as a page.
    App(AppError),
}

impl From<AppError> for PortalError {
    fn from(e: AppError) -> Self {
        Self::App(e)
    }
}

impl From<sqlx::Error> for PortalError {
    fn from(e: sqlx::Error) -> Self {
        Self::App(e.into())
    }
}

pub type PageResult = Result<Response, PortalError>;

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn { next } => {
                let next: String = form_urlencoded::byte_serialize(session::safe_next(&next).as_bytes()).collect();
                let mut r = Redirect::to(&format!("/ui/login?next={next}")).into_response();
                // Live fragments are fetched by the script, which reloads on 401.
                *r.status_mut() = StatusCode::SEE_OTHER;
                r
            }
            Self::App(e) => {
                let (status, _) = e.status_and_code();
                if let AppError::Internal { internal } = &e {
                    tracing::error!(error = %internal, "internal error in the portal");
                }
                (status, html::error_page(status, &e.public_message())).into_response()
            }
        }
    }
}

/// The page for a `/ui` address that does not exist.
pub fn not_found() -> Response {
    (StatusCode::NOT_FOUND, html::error_page(StatusCode::NOT_FOUND, "there is no portal page at this address"))
        .into_response()
}

/// A redirect after a successful form post (303: the browser GETs it).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A form that carries nothing but its CSRF token (a button).
#[derive(Debug, serde::Deserialize)]
pub struct Empty {}

/// A form field the portal could not use: a 400 page with the reason.
pub fn bad(e: impl std::fmt::Display) -> PortalError {
    PortalError::App(AppError::BadRequest(e.to_string()))
}

const CSS: &str = include_str!("static/portal.css");
const JS: &str = include_str!("static/portal.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Headers every portal response carries: nothing from elsewhere may
/// load, the page may not be framed, and pages are not cached (they show
/// live state and one-time secrets such as a generated private key).
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    // A page that set its own policy keeps it (the console pages).
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
            ),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The portal's home page: where `/ui` and a browser's `GET /` lead
/// (without a session it sends the browser on to the sign-in page).
pub const HOME: &str = "/ui/instances";

/// Every `/ui` route.
pub fn router() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui", get(|| async { see_other(HOME) }))
        .route("/ui/", get(|| async { see_other(HOME) }))
        .route("/ui/static/portal.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/static/portal.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/ui/login", get(resources::login_page).post(resources::login))
        .route("/ui/login/token", post(resources::login_with_token))
        .route("/ui/logout", post(resources::logout))
        .route("/ui/project", post(resources::switch_project))
        .merge(instances::routes())
        .merge(day_two::routes())
        .merge(balancers::routes())
        .merge(networks::routes())
        .merge(floating_ips::routes())
        .merge(backups::routes())
        .merge(resources::routes())
        .merge(operator::routes())
        .merge(background::routes())
        .merge(consoles::routes())
        .layer(axum::middleware::from_fn(security_headers))
}
