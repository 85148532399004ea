//! The portal's interactive consoles: an instance's terminal (xterm.js on
//! the serial console's websocket) and its screen (noVNC, admitted by a
//! ticket the page asks for), and the browser libraries they load, served
//! under `/ui/vendor/` from the server's `--web-assets` directory (as
//! `scripts/web-assets.sh` installs them). Without those files the pages
//! say what to run instead of showing a dead terminal.

use super::html::{self, Nav};
use super::session::{Posted, Session};
use super::{Empty, PageResult};
use crate::app;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::{html, Markup};
use std::sync::Arc;

const CONSOLE_JS: &str = include_str!("static/console.js");
const SCREEN_JS: &str = include_str!("static/screen.js");

/// The files of `--web-assets` each page needs (under `node_modules`).
const XTERM_JS: &str = "@xterm/xterm/lib/xterm.js";
const XTERM_CSS: &str = "@xterm/xterm/css/xterm.css";
const NOVNC_RFB: &str = "@novnc/novnc/core/rfb.js";

/// The console pages' policy: the portal's, except that xterm.js and
/// noVNC set styles from script (their own `<style>` elements).
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
                   script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/instances/{id}/terminal", get(terminal))
        .route("/ui/instances/{id}/screen", get(screen))
        .route("/ui/instances/{id}/screen/ticket", post(ticket))
        .route("/ui/static/console.js", get(|| async { js(CONSOLE_JS) }))
        .route("/ui/static/screen.js", get(|| async { js(SCREEN_JS) }))
}

/// The browser libraries, from `dir` (`--web-assets`).
pub fn vendor(dir: std::path::PathBuf) -> Router<Arc<Ctx>> {
    Router::new().nest_service("/ui/vendor", tower_http::services::ServeDir::new(dir.join("node_modules")))
}

fn js(body: &'static str) -> axum::response::Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=300")], body)
        .into_response()
}

/// What to do when `file` of the web assets is missing, if it is.
fn missing(ctx: &Ctx, file: &str) -> Option<Markup> {
    let dir = ctx.config.web_assets_dir();
    if dir.join("node_modules").join(file).is_file() {
        return None;
    }
    Some(html! {
        p.error id="console-status" data-event="missing" {
            "This server does not have the browser library this page needs (" code { (file) } " in " code { (dir.display().to_string()) }
            "). Run " code { "scripts/web-assets.sh" } " from Nubo's source and start the server with "
            code { "--web-assets DIR" } " (or NUBO_WEB_ASSETS=DIR), DIR being the directory it printed."
        }
    })
}

/// A console page, with the console pages' policy.
async fn console_page(ctx: &Ctx, s: &Session, title: &str, body: Markup) -> PageResult {
    let mut resp = html::page(ctx, s, title, Nav::Instances, body).await?;
    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    Ok(resp)
}

async fn terminal(State(ctx): State<Arc<Ctx>>, s: Session, Path(id): Path<String>) -> PageResult {
    let row = app::instances::load(&ctx, &s.caller, &id, crate::authz::Access::Read).await?;
    let writable =
        crate::authz::check(&s.caller, crate::authz::Access::Write, row.project_id.as_deref(), "instance", &row.id)
            .is_ok();
    let body = html! {
        section {
            h2 { "Serial console of " a href=(format!("/ui/instances/{}", row.id)) { (row.name) } }
            @if let Some(m) = missing(&ctx, XTERM_JS) { (m) } @else {
                p id="console-status" { "Connecting..." }
                @if !writable { p.note { "Your role lets you watch this console, not type into it (typing needs the member role)." } }
                link rel="stylesheet" href=(format!("/ui/vendor/{XTERM_CSS}"));
                div id="terminal" data-ws=(format!("/ui/instances/{}/console/ws", row.id)) {}
                script src=(format!("/ui/vendor/{XTERM_JS}")) {}
                script src="/ui/static/console.js" {}
            }
        }
    };
    console_page(&ctx, &s, &format!("Console of {}", row.name), body).await
}

async fn screen(State(ctx): State<Arc<Ctx>>, s: Session, Path(id): Path<String>) -> PageResult {
    let row = app::instances::load(&ctx, &s.caller, &id, crate::authz::Access::Read).await?;
    let body = html! {
        section {
            h2 { "Graphical console of " a href=(format!("/ui/instances/{}", row.id)) { (row.name) } }
            @if let Some(m) = missing(&ctx, NOVNC_RFB) { (m) } @else {
                p id="console-status" { "Connecting..." }
                p { button id="ctrl-alt-del" type="button" disabled { "Send Ctrl-Alt-Del" } }
                div id="screen" data-ticket=(format!("/ui/instances/{}/screen/ticket", row.id)) data-ws=(format!("/ui/instances/{}/console/vnc", row.id)) data-csrf=(s.csrf) {}
                script type="module" src="/ui/static/screen.js" {}
            }
        }
    };
    console_page(&ctx, &s, &format!("Screen of {}", row.name), body).await
}

/// A graphical console ticket for the page's user (a form post: the
/// session's CSRF token and origin are checked).
async fn ticket(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    posted: Posted<Empty>,
) -> Result<Json<nubo_api::console::VncTicket>, super::PortalError> {
    Ok(Json(app::consoles::vnc_ticket(&ctx, &posted.session.caller, &id).await?))
}
