//! One backend at run time: its address and weight, its counters
//! (requests, errors, in flight), its health, its CPU utilisation as the
//! owner last reported it, and whether it is draining. A backend outlives
//! reconfigurations that keep it (same id and address), so its counters
//! and health carry over; requests hold an `Arc` to theirs, so a removed
//! backend stays alive until its last request ends.

use crate::config::{BackendConfig, HealthConfig};
use crate::health::{HealthState, Status, Usable};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A CPU figure older than this is treated as unknown.
pub const CPU_STALE_AFTER: Duration = Duration::from_secs(5);

pub struct Backend {
    pub id: String,
    pub address: SocketAddr,
    weight: AtomicU32,
    in_flight: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    draining: AtomicBool,
    health: Mutex<HealthState>,
    /// CPU utilisation (0..=1) and when it was measured.
    cpu: Mutex<Option<(Instant, f64)>>,
    /// Cancelled when draining runs out of time: open connections end.
    pub(crate) cut: CancellationToken,
}

/// Counters and state of one backend, as its owner sees them.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BackendStats {
    pub id: String,
    pub address: SocketAddr,
    pub weight: u32,
    /// `up`, `down`, `unknown` (not checked yet), `failing` (passively out
    /// of rotation) or `draining` (removed, finishing what it has).
    pub health: String,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    /// CPU utilisation in percent, when known.
    pub cpu_percent: Option<f64>,
    pub last_error: Option<String>,
}

impl Backend {
    pub fn new(cfg: &BackendConfig, active_checks: bool) -> Arc<Self> {
        Arc::new(Self {
            id: cfg.id.clone(),
            address: cfg.address,
            weight: AtomicU32::new(cfg.weight.max(1)),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            health: Mutex::new(HealthState::new(active_checks)),
            cpu: Mutex::new(None),
            cut: CancellationToken::new(),
        })
    }

    fn health(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // Each update leaves the state whole; a panic elsewhere cannot tear it.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn usable(&self, now: Instant) -> Usable {
        if self.is_draining() {
            return Usable::No;
        }
        self.health().usable(now)
    }

    pub fn status(&self) -> Status {
        self.health().status()
    }

    /// CPU utilisation (0..=1) if measured recently.
    pub fn cpu(&self, now: Instant) -> Option<f64> {
        let cpu = *self.cpu.lock().unwrap_or_else(|p| p.into_inner());
        cpu.filter(|(at, _)| now.saturating_duration_since(*at) < CPU_STALE_AFTER).map(|(_, v)| v)
    }

    pub(crate) fn set_cpu(&self, value: Option<f64>, now: Instant) {
        let v = value.filter(|v| v.is_finite()).map(|v| (now, v.clamp(0.0, 1.0)));
        *self.cpu.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    /// A request (or connection) starts: counted until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A request failed before any response; may mark it out of rotation.
    pub(crate) fn failed(&self, cfg: &HealthConfig, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.health().record_failure(Instant::now(), cfg, error.clone()) {
            tracing::warn!(backend = %self.id, address = %self.address, %error, "backend out of rotation after failed requests");
        }
    }

    /// A request failed in a way that says nothing about the backend's
    /// health (a timeout while it works): counted only.
    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn succeeded(&self) {
        self.health().record_success();
    }

    pub(crate) fn record_check(&self, result: Result<(), String>, cfg: &HealthConfig) {
        let changed = self.health().record_check(result.clone(), cfg.rise, cfg.fall);
        match (changed, result) {
            (Some(Status::Down), Err(error)) => {
                tracing::warn!(backend = %self.id, address = %self.address, %error, "backend down")
            }
            (Some(status), _) => tracing::info!(backend = %self.id, address = %self.address, ?status, "backend health"),
            _ => {}
        }
    }

    pub fn stats(&self, now: Instant) -> BackendStats {
        let h = self.health();
        BackendStats {
            id: self.id.clone(),
            address: self.address,
            weight: self.weight(),
            health: if self.is_draining() { "draining".into() } else { h.label(now).into() },
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight(),
            cpu_percent: self.cpu(now).map(|c| (c * 1000.0).round() / 10.0),
            last_error: h.last_error.clone(),
        }
    }
}

/// One request or connection to a backend; dropping it ends it.
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
