//! `nubo lb serve --config FILE`: balancers outside an agent. Starts one
//! balancer per listener of the file, answers `GET /stats` (every
//! listener's counters as JSON) on `stats_listen`, re-reads the file on
//! SIGHUP (reconfiguring in place; a listener whose address or protocol
//! changed is restarted), and stops on SIGINT or SIGTERM.

use crate::balancer::{Balancer, BalancerStats};
use crate::config::ServeConfig;
use crate::LbError;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

type Running = Arc<Mutex<HashMap<String, Balancer>>>;

/// Starts, reconfigures or stops balancers so that `running` matches `cfg`.
pub fn apply(running: &Running, cfg: &ServeConfig) -> Result<(), LbError> {
    let mut map = running.lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|id, _| cfg.listeners.iter().any(|l| &l.id == id));
    for l in &cfg.listeners {
        match map.get(&l.id) {
            Some(b) => match b.reconfigure(l.clone()) {
                Ok(()) => {}
                Err(LbError::NeedsRestart(what)) => {
                    tracing::info!(lb = %l.id, "{what} changed: restarting the listener");
                    map.remove(&l.id);
                    map.insert(l.id.clone(), Balancer::start(l.clone())?);
                }
                Err(e) => return Err(e),
            },
            None => {
                map.insert(l.id.clone(), Balancer::start(l.clone())?);
            }
        }
    }
    Ok(())
}

pub fn stats(running: &Running) -> Vec<BalancerStats> {
    let map = running.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<BalancerStats> = map.values().map(|b| b.stats()).collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Runs the balancers of `path` until SIGINT or SIGTERM.
pub async fn run(path: &Path) -> Result<(), LbError> {
    use tokio::signal::unix::{signal, SignalKind};
    let cfg = ServeConfig::from_file(path)?;
    let running: Running = Arc::default();
    apply(&running, &cfg)?;
    if let Some(addr) = cfg.stats_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| LbError::Bind { addr, source })?;
        tracing::info!(%addr, "stats on GET /stats");
        tokio::spawn(stats_server(listener, running.clone()));
    }
    let sig = |kind| signal(kind).map_err(|e| LbError::Config(format!("cannot watch signals: {e}")));
    let (mut hup, mut term, mut int) =
        (sig(SignalKind::hangup())?, sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    loop {
        tokio::select! {
            _ = hup.recv() => match ServeConfig::from_file(path).and_then(|c| apply(&running, &c)) {
                Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                // A bad file leaves the running balancers as they are.
                Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    running.lock().unwrap_or_else(|p| p.into_inner()).clear();
    Ok(())
}

async fn stats_server(listener: tokio::net::TcpListener, running: Running) {
    while let Ok((stream, _)) = listener.accept().await {
        let running = running.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let running = running.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/stats" {
                        (200, serde_json::to_string_pretty(&stats(&running)).unwrap_or_default())
                    } else {
                        (404, "not found: the only path is /stats\n".to_string())
                    };
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
