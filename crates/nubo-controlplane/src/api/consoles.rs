//! The console routes: a viewer's websocket on an instance's serial or
//! graphical console, the graphical console's tickets, and the two
//! streams an agent opens to join a session (see `console_relay`).
//!
//! The websockets and the agent's byte streams are not JSON, so they are
//! not in the OpenAPI documents; the ticket call is. On a console
//! websocket, binary messages carry the guest's bytes both ways and the
//! server's text messages are `nubo_api::console::ConsoleNotice`s
//! (serial only: a VNC client gets the RFB bytes alone).

use crate::app::consoles as app;
use crate::auth::{Caller, HostCaller, SourceAddr};
use crate::console_relay::{Viewer, JOIN_TIMEOUT};
use crate::error::{AppError, AppResult};
use crate::Ctx;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use nubo_api::console::{ConsoleKind, ConsoleNotice, VncTicket};
use serde::Deserialize;
use std::sync::Arc;

/// Who opens a console: a token (`Authorization: Bearer`, the CLI) or the
/// portal's session cookie. A cookie is sent by the browser whichever
/// page asks, so with a cookie the websocket must come from a page of
/// this server (its `Origin` is this `Host`): another site's page could
/// otherwise open a console in its visitor's name.
pub struct ConsoleCaller(pub Caller);

impl FromRequestParts<Arc<Ctx>> for ConsoleCaller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> Result<Self, AppError> {
        if parts.headers.contains_key(axum::http::header::AUTHORIZATION) {
            return Ok(Self(Caller::from_request_parts(parts, ctx).await?));
        }
        let session = crate::portal::session::Session::from_request_parts(parts, ctx).await.map_err(|_| {
            AppError::Unauthorized(
                "no credential: send 'Authorization: Bearer <token>' (`nubo login`), or sign in to the portal".into(),
            )
        })?;
        if !same_origin(parts) {
            return Err(AppError::Forbidden(
                "a console websocket with the portal's cookie must come from the portal's own pages (its Origin \
                 differs from this server): open the console from the portal, or use a token"
                    .into(),
            ));
        }
        Ok(Self(session.caller))
    }
}

/// Whether the request's `Origin` names the host it was sent to.
fn same_origin(parts: &Parts) -> bool {
    let header = |name| parts.headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    let (Some(origin), Some(host)) = (header(axum::http::header::ORIGIN), header(axum::http::header::HOST)) else {
        return false;
    };
    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// `GET /api/v1/instances/{id}/console/ws`: the serial console, live.
pub async fn serial_ws(
    ConsoleCaller(caller): ConsoleCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    source: SourceAddr,
    ws: WebSocketUpgrade,
) -> AppResult<Response> {
    let viewer = app::open_serial(&ctx, &caller, &id, &source.0).await?;
    Ok(ws.on_upgrade(move |socket| relay(socket, viewer)))
}

/// A graphical console ticket for the instance: admits one websocket at
/// the returned path, of this user, within 30 seconds.
#[utoipa::path(post, path = "/api/v1/instances/{id}/console/vnc-ticket", tag = "instances",
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = VncTicket), (status = 403, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn vnc_ticket(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<VncTicket>> {
    Ok(Json(app::vnc_ticket(&ctx, &caller, &id).await?))
}

#[derive(Debug, Deserialize)]
pub struct TicketQuery {
    pub ticket: String,
}

/// `GET /api/v1/instances/{id}/console/vnc?ticket=...`: the graphical
/// console, as a binary websocket of the RFB protocol.
pub async fn vnc_ws(
    ConsoleCaller(caller): ConsoleCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    source: SourceAddr,
    crate::error::ApiQuery(q): crate::error::ApiQuery<TicketQuery>,
    ws: WebSocketUpgrade,
) -> AppResult<Response> {
    let viewer = app::open_vnc(&ctx, &caller, &id, &q.ticket, &source.0).await?;
    // noVNC asks for the `binary` subprotocol.
    Ok(ws.protocols(["binary"]).on_upgrade(move |socket| relay(socket, viewer)))
}

fn notice(event: &str, writable: bool, message: impl Into<String>) -> Message {
    let n = ConsoleNotice { event: event.into(), writable, message: message.into() };
    Message::Text(serde_json::to_string(&n).unwrap_or_default().into())
}

/// Ends the websocket, saying why (in a notice for a serial console, in
/// the close frame for both).
async fn close(socket: &mut WebSocket, kind: ConsoleKind, writable: bool, why: &str) {
    if kind == ConsoleKind::Serial {
        let _ = socket.send(notice("closed", writable, why)).await;
    }
    // A close reason is at most 123 bytes.
    let reason: String = why.chars().take(100).collect();
    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1000, reason: reason.into() }))).await;
}

/// Carries bytes between the websocket and the agent's streams until
/// either ends; dropping the viewer ends the session.
async fn relay(mut socket: WebSocket, mut viewer: Viewer) {
    let (kind, writable) = (viewer.kind, viewer.writable);
    let joined = tokio::time::timeout(JOIN_TIMEOUT, &mut viewer.joined).await;
    if !matches!(joined, Ok(Ok(()))) {
        let why = format!(
            "the instance's host did not join the console within {} s: its agent may be down (see `nubo host \
             list`); try again",
            JOIN_TIMEOUT.as_secs()
        );
        close(&mut socket, kind, writable, &why).await;
        return;
    }
    if kind == ConsoleKind::Serial {
        let message = if writable {
            "connected: what you type goes to the guest's serial port"
        } else {
            "connected read-only: your role lets you watch this console, not type into it (that needs the member role)"
        };
        if socket.send(notice("ready", writable, message)).await.is_err() {
            return;
        }
    }
    let mut told = false;
    loop {
        tokio::select! {
            out = viewer.output.recv() => match out {
                Some(bytes) => {
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                None => {
                    close(&mut socket, kind, writable, "the console closed: the instance stopped, or its host ended the session").await;
                    return;
                }
            },
            msg = socket.recv() => {
                let bytes = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => Bytes::from(t.as_str().to_owned()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                if !writable {
                    if !told {
                        told = true;
                        let why = "read-only: your keystrokes are not sent to the guest (typing needs the member role)";
                        if socket.send(notice("read-only", false, why)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                if viewer.input.send(bytes).await.is_err() {
                    close(&mut socket, kind, writable, "the console closed: its host ended the session").await;
                    return;
                }
            }
        }
    }
}

fn same_host(caller: &HostCaller, host: &str) -> AppResult<()> {
    if caller.host_id == host {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!("this credential belongs to host {}, not {host}", caller.host_id)))
    }
}

fn join_error(e: crate::console_relay::JoinError) -> AppError {
    match e {
        crate::console_relay::JoinError::Unknown(id) => AppError::NotFound { kind: "console session", id },
        e @ crate::console_relay::JoinError::Taken(_) => AppError::Conflict(e.to_string()),
    }
}

/// `GET /api/v1/agent/hosts/{host}/consoles/{id}/input`: the viewer's
/// input, as a body that streams until the viewer leaves.
pub async fn agent_input(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path((host, id)): Path<(String, String)>,
) -> AppResult<Response> {
    same_host(&caller, &host)?;
    let rx = ctx.consoles.take_input(&host, &id).map_err(join_error)?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], Body::from_stream(stream)).into_response())
}

/// `POST /api/v1/agent/hosts/{host}/consoles/{id}/output`: the guest's
/// output, as a body the agent streams until the console ends.
pub async fn agent_output(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path((host, id)): Path<(String, String)>,
    body: Body,
) -> AppResult<Json<()>> {
    same_host(&caller, &host)?;
    let tx = ctx.consoles.take_output(&host, &id).map_err(join_error)?;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        let Ok(chunk) = chunk else { break };
        if tx.send(chunk).await.is_err() {
            // The viewer left.
            break;
        }
    }
    Ok(Json(()))
}

/// The console routes outside the OpenAPI documents (websockets and byte
/// streams), without the JSON body limit: the agent's output is a stream.
pub fn router() -> axum::Router<Arc<Ctx>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/instances/{id}/console/ws", get(serial_ws))
        .route("/api/v1/instances/{id}/console/vnc", get(vnc_ws))
        // The same for the portal's pages: over plain HTTP its session
        // cookie is sent only under /ui.
        .route("/ui/instances/{id}/console/ws", get(serial_ws))
        .route("/ui/instances/{id}/console/vnc", get(vnc_ws))
        .route("/api/v1/agent/hosts/{host}/consoles/{id}/input", get(agent_input))
        .route("/api/v1/agent/hosts/{host}/consoles/{id}/output", post(agent_output))
        .layer(axum::extract::DefaultBodyLimit::disable())
}
