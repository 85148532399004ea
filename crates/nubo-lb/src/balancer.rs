//! A running balancer: its listener task (HTTP or TCP), its health-check
//! task, and the shared state both read: the configuration and the pool
//! (each an `ArcSwap`, replaced whole by [`Balancer::reconfigure`]), and
//! the backends being drained. Stopping it stops accepting at once; what
//! is under way finishes in the background (or is cut after the drain
//! timeout).

use crate::backend::{Backend, BackendStats};
use crate::config::ListenerConfig;
use crate::pool::Pool;
use crate::LbError;
use arc_swap::ArcSwap;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often draining backends are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(250);

pub(crate) struct Shared {
    pub(crate) config: ArcSwap<ListenerConfig>,
    pub(crate) pool: ArcSwap<Pool>,
    /// Removed backends that still have requests or connections, with
    /// when they were removed.
    draining: Mutex<Vec<(Arc<Backend>, Instant)>>,
    /// Wakes the health checker when the backends changed.
    reconfigured: Notify,
    /// Makes connections to backends, in the balancer's network namespace.
    pub(crate) dialer: crate::dial::Dialer,
}

impl Shared {
    fn draining(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<Backend>, Instant)>> {
        self.draining.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of one balancer and its backends (draining ones included).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BalancerStats {
    pub id: String,
    pub listen: SocketAddr,
    pub protocol: String,
    pub algorithm: String,
    pub backends: Vec<BackendStats>,
}

pub struct Balancer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: CancellationToken,
}

impl Balancer {
    /// Binds the listener and starts serving (inside a tokio runtime).
    pub fn start(cfg: ListenerConfig) -> Result<Self, LbError> {
        Self::start_in(cfg, None)
    }

    /// Like [`Balancer::start`], with the listener and every connection to
    /// a backend made inside a network namespace (see [`crate::dial`]).
    pub fn start_in(cfg: ListenerConfig, netns: Option<Arc<crate::dial::Netns>>) -> Result<Self, LbError> {
        cfg.validate()?;
        let std_listener = match &netns {
            Some(ns) => ns.listen(cfg.listen),
            None => std::net::TcpListener::bind(cfg.listen),
        }
        .map_err(|source| LbError::Bind { addr: cfg.listen, source })?;
        std_listener.set_nonblocking(true).map_err(|source| LbError::Bind { addr: cfg.listen, source })?;
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|source| LbError::Bind { addr: cfg.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| LbError::Bind { addr: cfg.listen, source })?;
        let (pool, _) =
            Pool::new(cfg.algorithm, Vec::new()).reconfigure(cfg.algorithm, &cfg.backends, cfg.health.active);
        let span = tracing::info_span!("lb", lb = %cfg.id, listen = %local_addr);
        let protocol = cfg.protocol;
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(cfg),
            pool: ArcSwap::from_pointee(pool),
            draining: Mutex::new(Vec::new()),
            reconfigured: Notify::new(),
            dialer: crate::dial::Dialer::new(netns),
        });
        let stop = CancellationToken::new();
        match protocol {
            crate::Protocol::Http => {
                tokio::spawn(crate::http::serve(listener, shared.clone(), stop.clone()).instrument(span.clone()));
            }
            crate::Protocol::Tcp => {
                tokio::spawn(crate::tcp::serve(listener, shared.clone(), stop.clone()).instrument(span.clone()));
            }
        }
        tokio::spawn(health_loop(shared.clone(), stop.clone()).instrument(span.clone()));
        tokio::spawn(housekeeping(shared.clone(), stop.clone()).instrument(span.clone()));
        span.in_scope(|| tracing::info!(protocol = protocol.as_str(), "balancer listening"));
        Ok(Self { shared, local_addr, stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn config(&self) -> Arc<ListenerConfig> {
        self.shared.config.load_full()
    }

    /// Applies a new configuration without touching the listener:
    /// backends, weights, algorithm, health checks and timeouts change for
    /// the next request; requests and connections under way keep the
    /// backend they have. The listen address and protocol cannot change.
    pub fn reconfigure(&self, cfg: ListenerConfig) -> Result<(), LbError> {
        cfg.validate()?;
        let old = self.shared.config.load();
        if cfg.listen != old.listen {
            return Err(LbError::NeedsRestart("the listen address"));
        }
        if cfg.protocol != old.protocol {
            return Err(LbError::NeedsRestart("the protocol"));
        }
        if cfg == **old {
            return Ok(());
        }
        let (pool, removed) = self.shared.pool.load().reconfigure(cfg.algorithm, &cfg.backends, cfg.health.active);
        let now = Instant::now();
        {
            let mut draining = self.shared.draining();
            for b in removed {
                tracing::info!(lb = %cfg.id, backend = %b.id, in_flight = b.in_flight(), "backend removed: draining");
                b.start_draining();
                draining.push((b, now));
            }
            // A backend that comes back before its drain ended is a new one;
            // the old one finishes draining on its own.
        }
        tracing::info!(lb = %cfg.id, backends = pool.backends.len(), algorithm = %cfg.algorithm, "balancer reconfigured");
        self.shared.config.store(Arc::new(cfg));
        self.shared.pool.store(Arc::new(pool));
        self.shared.reconfigured.notify_one();
        Ok(())
    }

    /// The CPU utilisation (0..=1) of backend `id`, as measured by the
    /// owner; `None` when it cannot be measured.
    pub fn set_cpu(&self, id: &str, cpu: Option<f64>) {
        let now = Instant::now();
        for b in self.shared.pool.load().backends.iter().filter(|b| b.id == id) {
            b.set_cpu(cpu, now);
        }
    }

    pub fn stats(&self) -> BalancerStats {
        let now = Instant::now();
        let cfg = self.shared.config.load();
        let mut backends: Vec<BackendStats> = self.shared.pool.load().backends.iter().map(|b| b.stats(now)).collect();
        backends.extend(self.shared.draining().iter().map(|(b, _)| b.stats(now)));
        BalancerStats {
            id: cfg.id.clone(),
            listen: self.local_addr,
            protocol: cfg.protocol.as_str().into(),
            algorithm: cfg.algorithm.as_str().into(),
            backends,
        }
    }

    /// Stops accepting; requests and connections under way finish in the
    /// background, within the drain timeout.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
        // Connections the listener task still has are cut after the drain
        // timeout, like those of a removed backend.
        let shared = self.shared.clone();
        let drain = shared.config.load().timeouts.drain();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(drain).await;
                for b in shared.pool.load().backends.iter() {
                    b.cut.cancel();
                }
            });
        }
    }
}

/// Checks every backend every interval, and at once after a reconfiguration.
async fn health_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut client_timeout = Duration::ZERO;
    let mut client = crate::health::check_client(&shared.dialer, Duration::from_secs(1));
    loop {
        let cfg = shared.config.load_full();
        if cfg.health.active {
            if client_timeout != cfg.health.timeout() {
                client_timeout = cfg.health.timeout();
                client = crate::health::check_client(&shared.dialer, client_timeout);
            }
            let pool = shared.pool.load_full();
            let mut checks = tokio::task::JoinSet::new();
            for b in pool.backends.iter().cloned() {
                let cfg = cfg.clone();
                let client = client.clone();
                let dialer = shared.dialer.clone();
                checks.spawn(async move {
                    let timeout = cfg.health.timeout();
                    let result = match cfg.protocol {
                        crate::Protocol::Http => {
                            crate::health::check_http(
                                &client,
                                b.address,
                                cfg.health_path(),
                                cfg.health.expect_status,
                                timeout,
                            )
                            .await
                        }
                        crate::Protocol::Tcp => crate::health::check_tcp(&dialer, b.address, timeout).await,
                    };
                    b.record_check(result, &cfg.health);
                });
            }
            while checks.join_next().await.is_some() {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.reconfigured.notified() => {}
            _ = tokio::time::sleep(cfg.health.interval()) => {}
        }
    }
}

/// Forgets drained backends, and cuts those past the drain timeout.
async fn housekeeping(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
        }
        let drain = shared.config.load().timeouts.drain();
        shared.draining().retain(|(b, since)| {
            if b.in_flight() == 0 {
                tracing::info!(backend = %b.id, "backend drained");
                return false;
            }
            if since.elapsed() >= drain && !b.cut.is_cancelled() {
                tracing::warn!(backend = %b.id, in_flight = b.in_flight(), "drain timeout: cutting what is left");
                b.cut.cancel();
            }
            true
        });
    }
}
