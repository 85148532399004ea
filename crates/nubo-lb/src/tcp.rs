//! The L4 listener: each client connection is balanced to a backend and
//! the bytes are copied both ways until either side closes. A backend
//! that refuses the connection (or does not accept it within the connect
//! timeout) is marked as failed and the next one is tried, which is always
//! safe since nothing was sent yet. A connection keeps its backend for its
//! whole life; a removed backend's connections run on until the drain
//! timeout cuts them.

use crate::balancer::Shared;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Backends one connection tries at most.
const MAX_ATTEMPTS: usize = 3;

pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let Some((inbound, peer)) = crate::accept(&listener, &stop).await else { return };
        let span = tracing::debug_span!("conn", %peer);
        tokio::spawn(relay(shared.clone(), inbound).instrument(span));
    }
}

async fn relay(shared: Arc<Shared>, mut inbound: TcpStream) {
    let _ = inbound.set_nodelay(true);
    let cfg = shared.config.load_full();
    let mut tried = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        let Some(backend) = shared.pool.load().pick(&tried, Instant::now()) else { break };
        let guard = backend.begin();
        let error = match tokio::time::timeout(cfg.timeouts.connect(), shared.dialer.connect(backend.address)).await {
            Ok(Ok(mut outbound)) => {
                let _ = outbound.set_nodelay(true);
                backend.succeeded();
                tokio::select! {
                    r = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                        if let Err(e) = r {
                            tracing::debug!(backend = %backend.id, error = %e, "connection ended with an error");
                        }
                    }
                    _ = backend.cut.cancelled() => {
                        tracing::debug!(backend = %backend.id, "connection cut: the backend's drain timed out");
                    }
                }
                drop(guard);
                return;
            }
            Ok(Err(e)) => format!("connect failed: {e}"),
            Err(_) => format!("connect did not complete within {} ms", cfg.timeouts.connect_ms),
        };
        backend.failed(&cfg.health, error);
        tried.push(backend);
    }
    tracing::debug!(tried = tried.len(), "no backend took the connection; closing it");
}
