//! The L7 listener: HTTP/1.1 from clients (keep-alive), each request
//! balanced on its own to a backend over a pool of keep-alive
//! connections. The proxy adds `X-Forwarded-For` and `X-Forwarded-Proto`,
//! drops hop-by-hop headers both ways, and retries an idempotent request
//! (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) with a small body on another
//! backend when the one it tried failed before answering (connect refused,
//! or the connection closed before a response: QEMU's port forwards
//! accept on the guest's behalf, so a dead guest server shows as that).
//! A request keeps its backend, counted in flight, until its response
//! body has been sent.

use crate::backend::InFlight;
use crate::balancer::Shared;
use crate::health::error_chain;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type ProxyClient = Client<crate::dial::Dialer, ProxyBody>;

/// Bodies up to this size of idempotent requests are buffered, so the
/// request can be sent again to another backend.
const MAX_REPLAY_BYTES: u64 = 64 * 1024;
/// Backends one request tries at most.
const MAX_ATTEMPTS: usize = 3;

fn client(shared: &Shared) -> ProxyClient {
    let t = shared.config.load().timeouts.clone();
    let connector = shared.dialer.with_timeout(Duration::from_millis(t.connect_ms));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(t.backend_idle_ms))
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(256)
        .build(connector)
}

pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let client = client(&shared);
    loop {
        let Some((stream, peer)) = crate::accept(&listener, &stop).await else { return };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let client = client.clone();
        let stop = stop.clone();
        let header_timeout = Duration::from_millis(shared.config.load().timeouts.client_header_ms);
        tokio::spawn(
            async move {
                let svc = hyper::service::service_fn(move |req| proxy(shared.clone(), client.clone(), peer, req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stop.cancelled() => {
                        // Finish the request under way, then close.
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
            }
            .in_current_span(),
        );
    }
}

/// Idempotent methods (RFC 9110 9.2.2): safe to send twice.
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE)
}

/// What the request carries to the backend: bytes that can be sent again,
/// or a stream that can be sent once.
enum Payload {
    Buffered(Bytes),
    Stream(Option<Incoming>),
}

impl Payload {
    fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    fn take(&mut self) -> ProxyBody {
        match self {
            Self::Buffered(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            Self::Stream(s) => match s.take() {
                Some(body) => body.boxed(),
                None => Full::new(Bytes::new()).map_err(|never| match never {}).boxed(),
            },
        }
    }
}

async fn proxy(
    shared: Arc<Shared>,
    client: ProxyClient,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let cfg = shared.config.load_full();
    let (parts, body) = req.into_parts();
    let mut payload = if idempotent(&parts.method) && body.size_hint().upper().is_some_and(|u| u <= MAX_REPLAY_BYTES) {
        match body.collect().await {
            Ok(c) => Payload::Buffered(c.to_bytes()),
            Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &format!("the request body could not be read: {e}"))),
        }
    } else {
        Payload::Stream(Some(body))
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    forwarded_headers(&mut headers, peer);
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let attempts = if payload.replayable() { MAX_ATTEMPTS } else { 1 };
    let mut tried = Vec::new();
    let mut last_error: Option<String> = None;
    for _ in 0..attempts {
        let pool = shared.pool.load_full();
        let Some(backend) = pool.pick(&tried, Instant::now()) else { break };
        let guard = backend.begin();
        let uri = match format!("http://{}{path}", backend.address).parse::<hyper::Uri>() {
            Ok(u) => u,
            Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &format!("the request path is not valid: {e}"))),
        };
        let mut out = Request::new(payload.take());
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = headers.clone();
        match tokio::time::timeout(cfg.timeouts.response(), client.request(out)).await {
            Ok(Ok(resp)) => {
                backend.succeeded();
                return Ok(respond(resp, guard));
            }
            Ok(Err(e)) => {
                let msg = error_chain(&e);
                tracing::debug!(backend = %backend.id, error = %msg, "backend failed before answering");
                backend.failed(&cfg.health, msg.clone());
                last_error = Some(format!("{} ({}): {msg}", backend.id, backend.address));
                tried.push(backend);
            }
            Err(_) => {
                // It may still be working on it: not retried, not a health signal.
                backend.count_error();
                return Ok(error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "backend {} did not answer within {} ms (the balancer's response timeout)",
                        backend.id, cfg.timeouts.response_ms
                    ),
                ));
            }
        }
    }
    Ok(match last_error {
        Some(e) => error(StatusCode::BAD_GATEWAY, &format!("no backend answered; the last one tried: {e}")),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("load balancer {} has no healthy backend: check its targets and their health checks", cfg.id),
        ),
    })
}

fn respond(resp: Response<Incoming>, guard: InFlight) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Tracked { inner: body, _guard: guard }.boxed())
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{message}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Headers that belong to one connection, not to the message (RFC 9110
/// 7.6.1), including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        h.remove(n);
    }
}

fn forwarded_headers(h: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    // The listener speaks plain HTTP: that is the scheme the client used.
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

/// A backend's response body that keeps the request counted in flight
/// until it has been sent (or dropped).
struct Tracked {
    inner: Incoming,
    _guard: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarded_ones_come() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        forwarded_headers(&mut h, "127.0.0.9:5555".parse().unwrap());
        assert!(h.get("connection").is_none() && h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h["x-forwarded-for"], "10.1.1.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["accept"], "*/*");
        assert!(idempotent(&Method::PUT) && !idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}
