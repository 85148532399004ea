//! Nubo's load balancer data plane. A [`Balancer`] is one listener (L7
//! HTTP or L4 TCP) on a local address in front of a set of backends. It
//! owns the per-request choice of backend ([`algorithm`]), each backend's
//! health ([`health`]: active checks and passive marks), draining of
//! removed backends, and reconfiguration in place: the backend set lives
//! behind an `ArcSwap`, so a new set takes effect for the next request
//! while requests and connections under way keep the backend they have.
//!
//! The owner (the compute agent, or `nubo lb serve`) starts balancers,
//! feeds `least-loaded` with each backend's CPU utilisation
//! ([`Balancer::set_cpu`]) and reads per-backend counters
//! ([`Balancer::stats`]).

pub mod algorithm;
pub mod backend;
pub mod balancer;
pub mod config;
pub mod dial;
pub mod health;
mod http;
pub mod pool;
pub mod serve;
mod tcp;

pub use backend::BackendStats;
pub use balancer::{Balancer, BalancerStats};
pub use config::{Algorithm, BackendConfig, HealthConfig, ListenerConfig, Protocol, ServeConfig, Timeouts};

use std::net::SocketAddr;
use std::path::PathBuf;

/// The next client connection of a listener (HTTP or TCP), or `None` once
/// `stop` is cancelled. A failed accept (out of file descriptors and the
/// like) is logged and retried after a pause: the listener keeps serving.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// What can go wrong starting, configuring or serving a balancer.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot listen on {addr}: {source}; is another process using that port?")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the load balancer configuration is not valid: {0}")]
    Config(String),
    #[error("{0} cannot change on a running balancer: stop it and start a new one")]
    NeedsRestart(&'static str),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid balancer configuration: {message}")]
    Parse { path: PathBuf, message: String },
}
