//! The backend set a balancer chooses from, swapped whole on every
//! reconfiguration. A new pool reuses the backends of the old one that
//! have the same id and address (their counters, health and connections
//! carry over; a changed weight is applied in place); backends that are
//! no longer listed start draining: they get no new traffic, and what
//! they have runs to its end (or is cut after the drain timeout).

use crate::algorithm::{self, View};
use crate::backend::Backend;
use crate::config::{Algorithm, BackendConfig};
use crate::health::Usable;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Pool {
    pub algorithm: Algorithm,
    pub backends: Vec<Arc<Backend>>,
    /// Round-robin credit per backend (indexed like `backends`).
    credit: Mutex<Vec<i64>>,
    /// Where least-connections starts looking, so ties rotate.
    next: AtomicUsize,
}

impl Pool {
    pub fn new(algorithm: Algorithm, backends: Vec<Arc<Backend>>) -> Self {
        let n = backends.len();
        Self { algorithm, backends, credit: Mutex::new(vec![0; n]), next: AtomicUsize::new(0) }
    }

    /// The pool for `wanted`: backends of `self` reused where id and
    /// address match, new ones for the rest. Returns it with the backends
    /// of `self` that are not in it (to drain).
    pub fn reconfigure(
        &self,
        algorithm: Algorithm,
        wanted: &[BackendConfig],
        active_checks: bool,
    ) -> (Pool, Vec<Arc<Backend>>) {
        let mut old: HashMap<(&str, std::net::SocketAddr), &Arc<Backend>> =
            self.backends.iter().map(|b| ((b.id.as_str(), b.address), b)).collect();
        let mut kept = Vec::with_capacity(wanted.len());
        for w in wanted {
            match old.remove(&(w.id.as_str(), w.address)) {
                Some(b) => {
                    b.set_weight(w.weight);
                    kept.push(b.clone());
                }
                None => kept.push(Backend::new(w, active_checks)),
            }
        }
        let removed: Vec<Arc<Backend>> = old.into_values().cloned().collect();
        (Pool::new(algorithm, kept), removed)
    }

    /// The backend for the next request, skipping `exclude` (backends this
    /// request already failed on). Backends that are up come first; if
    /// none is, backends not checked yet are tried; else none.
    pub fn pick(&self, exclude: &[Arc<Backend>], now: Instant) -> Option<Arc<Backend>> {
        let mut eligible: Vec<usize> = Vec::with_capacity(self.backends.len());
        let mut unchecked: Vec<usize> = Vec::new();
        for (i, b) in self.backends.iter().enumerate() {
            if exclude.iter().any(|e| Arc::ptr_eq(e, b)) {
                continue;
            }
            match b.usable(now) {
                Usable::Yes => eligible.push(i),
                Usable::Unchecked => unchecked.push(i),
                Usable::No => {}
            }
        }
        if eligible.is_empty() {
            eligible = unchecked;
        }
        if eligible.is_empty() {
            return None;
        }
        let views: Vec<View> = eligible
            .iter()
            .map(|&i| {
                let b = &self.backends[i];
                View { weight: b.weight(), in_flight: b.in_flight(), cpu: b.cpu(now) }
            })
            .collect();
        let chosen = match self.algorithm {
            Algorithm::RoundRobin => {
                let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
                let mut sub: Vec<i64> = eligible.iter().map(|&i| credit[i]).collect();
                let k = algorithm::round_robin(&mut sub, &views)?;
                for (j, &i) in eligible.iter().enumerate() {
                    credit[i] = sub[j];
                }
                k
            }
            Algorithm::LeastConnections => {
                algorithm::least_connections(&views, self.next.fetch_add(1, Ordering::Relaxed))?
            }
            Algorithm::LeastLoaded => algorithm::least_loaded(&views, &mut rand::thread_rng())?,
        };
        Some(self.backends[eligible[chosen]].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthConfig;
    use std::collections::HashMap;

    fn cfg(id: &str, port: u16, weight: u32) -> BackendConfig {
        BackendConfig { id: id.into(), address: format!("127.0.0.1:{port}").parse().unwrap(), weight }
    }

    fn up(pool: &Pool) {
        for b in &pool.backends {
            b.record_check(Ok(()), &HealthConfig::default());
        }
    }

    fn spread(pool: &Pool, n: usize) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let b = pool.pick(&[], Instant::now()).unwrap();
            *out.entry(b.id.clone()).or_default() += 1;
        }
        out
    }

    #[test]
    fn round_robin_spreads_by_weight_over_healthy_backends() {
        let (pool, _) = Pool::new(Algorithm::RoundRobin, vec![]).reconfigure(
            Algorithm::RoundRobin,
            &[cfg("a", 1, 1), cfg("b", 2, 1), cfg("c", 3, 2)],
            true,
        );
        up(&pool);
        let s = spread(&pool, 400);
        assert_eq!((s["a"], s["b"], s["c"]), (100, 100, 200));
        // c goes down: a and b share everything.
        pool.backends[2].record_check(Err("refused".into()), &HealthConfig::default());
        let s = spread(&pool, 100);
        assert_eq!((s["a"], s["b"], s.get("c")), (50, 50, None));
        // All down: nothing.
        for b in &pool.backends {
            b.record_check(Err("refused".into()), &HealthConfig::default());
        }
        assert!(pool.pick(&[], Instant::now()).is_none());
    }

    #[test]
    fn unchecked_backends_are_a_fallback_and_exclusions_hold() {
        let (pool, _) = Pool::new(Algorithm::RoundRobin, vec![]).reconfigure(
            Algorithm::RoundRobin,
            &[cfg("a", 1, 1), cfg("b", 2, 1)],
            true,
        );
        // Nothing checked yet: unchecked ones are used.
        assert!(pool.pick(&[], Instant::now()).is_some());
        pool.backends[0].record_check(Ok(()), &HealthConfig::default());
        assert!((0..10).all(|_| pool.pick(&[], Instant::now()).unwrap().id == "a"), "up beats unchecked");
        let a = pool.backends[0].clone();
        assert_eq!(pool.pick(&[a], Instant::now()).unwrap().id, "b", "a retry goes elsewhere");
    }

    #[test]
    fn least_connections_favours_the_backend_with_fewer_open_requests() {
        let (pool, _) = Pool::new(Algorithm::LeastConnections, vec![]).reconfigure(
            Algorithm::LeastConnections,
            &[cfg("a", 1, 1), cfg("b", 2, 1), cfg("c", 3, 1)],
            false,
        );
        let held_a = pool.backends[0].begin();
        let held_b = pool.backends[1].begin();
        assert!((0..20).all(|_| pool.pick(&[], Instant::now()).unwrap().id == "c"));
        drop(held_a);
        let s = spread(&pool, 20);
        assert_eq!((s["a"], s.get("b"), s["c"]), (10, None, 10), "idle a and c share; busy b gets none");
        drop(held_b);
    }

    #[test]
    fn least_loaded_sends_less_to_a_busy_backend() {
        let (pool, _) = Pool::new(Algorithm::LeastLoaded, vec![]).reconfigure(
            Algorithm::LeastLoaded,
            &[cfg("busy", 1, 1), cfg("idle1", 2, 1), cfg("idle2", 3, 1)],
            false,
        );
        let now = Instant::now();
        pool.backends[0].set_cpu(Some(0.98), now);
        pool.backends[1].set_cpu(Some(0.05), now);
        pool.backends[2].set_cpu(None, now);
        // Hold requests open on the idle ones as a queue would build.
        let mut held = Vec::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..60 {
            let b = pool.pick(&[], now).unwrap();
            *counts.entry(b.id.clone()).or_default() += 1;
            held.push(b.begin());
        }
        let busy = counts.get("busy").copied().unwrap_or(0);
        assert!(busy * 5 < counts["idle1"], "{counts:?}");
        assert!(busy > 0, "a long enough queue elsewhere still uses the busy backend: {counts:?}");
    }

    #[test]
    fn reconfiguring_keeps_matching_backends_and_drains_the_rest() {
        let (pool, _) = Pool::new(Algorithm::RoundRobin, vec![]).reconfigure(
            Algorithm::RoundRobin,
            &[cfg("a", 1, 1), cfg("b", 2, 1)],
            false,
        );
        let a = pool.backends[0].clone();
        let open = a.begin();
        let (next, removed) = pool.reconfigure(Algorithm::LeastConnections, &[cfg("a", 1, 3), cfg("c", 3, 1)], false);
        assert!(Arc::ptr_eq(&next.backends[0], &a), "same id and address: same backend");
        assert_eq!((a.weight(), a.in_flight()), (3, 1), "weight changed in place, its request still counted");
        assert_eq!(removed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(next.algorithm, Algorithm::LeastConnections);
        // The same id on a new address is a new backend.
        let (moved, removed) = next.reconfigure(Algorithm::RoundRobin, &[cfg("a", 9, 1)], false);
        assert!(!Arc::ptr_eq(&moved.backends[0], &a));
        assert_eq!(removed.len(), 2);
        drop(open);
        assert_eq!(a.in_flight(), 0);
    }
}
