//! The host's load balancers: runs the data plane (`nubo-lb`) for every
//! balancer in the desired state, in this process. A new balancer is
//! started on `127.0.0.1:<its port>`, a changed one is reconfigured in
//! place (its listener and connections stay), a removed one is stopped.
//! Every second each local backend instance's CPU utilisation is measured
//! from its vCPU threads' CPU time (`Hypervisor::usage`, deltas over the
//! second) and handed to the balancers, which `least-loaded` scores by;
//! an instance that cannot be measured counts as unknown (in-flight
//! requests alone). Each pass reports every balancer's backends with
//! their health and counters. `LoadBalancing` is the component the
//! agent owns; [`Balancers`] the listeners it runs.

use crate::host::Host;
use crate::instances::Instances;
use nubo_api::agent::{DesiredState, PowerState};
use nubo_api::ids::LoadBalancerId;
use nubo_api::lb::{ActualBalancer, DesiredBalancer, LbBackend};
use nubo_api::lb::{BackendHealth, BalancerState};
use nubo_lb::{Balancer, LbError, ListenerConfig};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often backends' CPU utilisation is measured (least-loaded needs it
/// at least every second).
pub const LOAD_INTERVAL: Duration = Duration::from_secs(1);

struct Running {
    balancer: Balancer,
    started_at_ms: i64,
}

/// The balancers this agent runs, and why the others could not start.
#[derive(Default)]
pub struct Balancers {
    running: HashMap<LoadBalancerId, Running>,
    errors: HashMap<LoadBalancerId, String>,
    /// The host's network namespace (a test host), which names the
    /// namespaces balancers on networks run in.
    host_netns: Option<String>,
}

/// The data plane's configuration for a desired balancer.
pub fn listener_config(d: &DesiredBalancer) -> Result<ListenerConfig, String> {
    let h = &d.health_check;
    let interval_ms = u64::from(h.interval_secs.unwrap_or(5).max(1)) * 1000;
    let mut backends = Vec::with_capacity(d.backends.len());
    for b in &d.backends {
        let address: SocketAddr = b
            .address
            .parse()
            .map_err(|e| format!("backend {} has a bad address '{}': {e}", b.instance_id, b.address))?;
        backends.push(nubo_lb::BackendConfig { id: b.instance_id.to_string(), address, weight: b.weight.max(1) });
    }
    Ok(ListenerConfig {
        id: d.id.to_string(),
        // On a network, every address of the balancer's own namespace:
        // its address there and the floating IP translated to it.
        listen: match &d.network {
            Some(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, d.listen_port)),
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, d.listen_port)),
        },
        protocol: d.protocol.parse()?,
        algorithm: d.algorithm.parse()?,
        backends,
        health: nubo_lb::HealthConfig {
            active: true,
            interval_ms,
            timeout_ms: u64::from(h.timeout_secs.unwrap_or(2).max(1)) * 1000,
            path: h.path.clone(),
            expect_status: h.expect_status,
            rise: h.healthy_threshold.unwrap_or(1).max(1),
            fall: h.unhealthy_threshold.unwrap_or(1).max(1),
            passive_failures: 1,
            // Out of rotation for two check intervals (2 to 30 s): the
            // active checks bring it back sooner only by passing.
            passive_down_ms: (2 * interval_ms).clamp(2_000, 30_000),
        },
        timeouts: nubo_lb::Timeouts::default(),
    })
}

fn backend_view(s: nubo_lb::BackendStats) -> LbBackend {
    LbBackend {
        instance_id: s.id,
        address: Some(s.address.to_string()),
        weight: s.weight,
        // The balancer's labels are the view's spellings.
        health: s.health.parse().unwrap_or(BackendHealth::Unknown),
        requests: s.requests,
        errors: s.errors,
        in_flight: s.in_flight,
        cpu_percent: s.cpu_percent,
        last_error: s.last_error,
    }
}

impl Balancers {
    fn start(&mut self, w: &DesiredBalancer, cfg: ListenerConfig) {
        let id = &w.id;
        let netns = match &w.network {
            Some(_) => {
                let name = crate::network::balancer_netns(self.host_netns.as_deref(), id);
                match nubo_lb::dial::Netns::enter(&std::path::PathBuf::from("/run/netns").join(&name)) {
                    Ok(ns) => Some(ns),
                    Err(e) => {
                        // The network's pass makes it; the next pass retries.
                        self.fail(id, format!("cannot enter the balancer's namespace {name}: {e}"));
                        return;
                    }
                }
            }
            None => None,
        };
        match Balancer::start_in(cfg, netns) {
            Ok(balancer) => {
                self.errors.remove(id);
                self.running.insert(id.clone(), Running { balancer, started_at_ms: crate::clock::now_ms() });
            }
            Err(e) => self.fail(id, e.to_string()),
        }
    }

    fn fail(&mut self, id: &LoadBalancerId, error: String) {
        // Retried every pass: say it once.
        if self.errors.get(id) != Some(&error) {
            tracing::warn!(lb = %id, %error, "load balancer not running");
        }
        self.errors.insert(id.clone(), error);
    }

    /// Makes the running balancers match `wanted`; returns what to report.
    pub fn reconcile(&mut self, wanted: &[DesiredBalancer]) -> Vec<ActualBalancer> {
        self.running.retain(|id, r| {
            let keep = wanted.iter().any(|w| &w.id == id);
            if !keep {
                tracing::info!(lb = %id, listen = %r.balancer.local_addr(), "load balancer removed: stopping it");
            }
            keep
        });
        self.errors.retain(|id, _| wanted.iter().any(|w| &w.id == id));
        for w in wanted {
            let cfg = match listener_config(w) {
                Ok(c) => c,
                Err(e) => {
                    self.fail(&w.id, format!("the control plane sent a configuration this agent cannot use: {e}"));
                    continue;
                }
            };
            match self.running.get(&w.id).map(|r| r.balancer.reconfigure(cfg.clone())) {
                None => self.start(w, cfg),
                Some(Ok(())) => {}
                Some(Err(LbError::NeedsRestart(what))) => {
                    tracing::info!(lb = %w.id, "{what} changed: restarting the listener");
                    self.running.remove(&w.id);
                    self.start(w, cfg);
                }
                Some(Err(e)) => self.fail(&w.id, e.to_string()),
            }
        }
        wanted
            .iter()
            .map(|w| match self.running.get(&w.id) {
                Some(r) => ActualBalancer {
                    id: w.id.clone(),
                    state: BalancerState::Active,
                    error: self.errors.get(&w.id).cloned(),
                    started_at_ms: Some(r.started_at_ms),
                    backends: r.balancer.stats().backends.into_iter().map(backend_view).collect(),
                },
                None => ActualBalancer {
                    id: w.id.clone(),
                    state: BalancerState::Error,
                    error: Some(self.errors.get(&w.id).cloned().unwrap_or_else(|| "not started yet".into())),
                    started_at_ms: None,
                    backends: Vec::new(),
                },
            })
            .collect()
    }

    fn set_cpu(&self, instance: &str, cpu: Option<f64>) {
        for r in self.running.values() {
            r.balancer.set_cpu(instance, cpu);
        }
    }
}

/// The balancer component the agent owns: the running balancers, and the
/// loop that feeds them their backends' CPU use.
pub(crate) struct LoadBalancing {
    host: Arc<Host>,
    /// The desired state says which instances are backends.
    instances: Arc<Instances>,
    balancers: Mutex<Balancers>,
}

impl LoadBalancing {
    pub(crate) fn new(host: Arc<Host>, instances: Arc<Instances>) -> Self {
        let host_netns = host.config.network.as_ref().and_then(|n| n.netns.clone());
        let balancers = Balancers { host_netns, ..Balancers::default() };
        Self { host, instances, balancers: Mutex::new(balancers) }
    }

    fn balancers(&self) -> MutexGuard<'_, Balancers> {
        // Each step leaves the map whole; recover from a panicked holder.
        self.balancers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn reconcile(&self, d: &DesiredState) -> Vec<ActualBalancer> {
        self.balancers().reconcile(&d.balancers)
    }

    /// Every [`LOAD_INTERVAL`]: each backend instance's CPU utilisation, to the balancers.
    pub(crate) async fn load_loop(self: Arc<Self>) {
        let mut sampler = crate::metrics::Sampler::default();
        let mut tick = tokio::time::interval(LOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(d) = self.instances.desired() else { continue };
            if d.balancers.is_empty() {
                continue;
            }
            let mut sampled = Vec::new();
            for i in d.instances.iter().filter(|i| i.power == PowerState::Running) {
                let backend = d.balancers.iter().any(|b| b.backends.iter().any(|be| be.instance_id == i.id));
                if !backend {
                    continue;
                }
                sampled.push(i.id.clone());
                let cpu = self.host.hypervisor.usage(&self.host.dir(&i.id)).and_then(|u| {
                    sampler.instance_cpu(&i.id, Instant::now(), u.pid, u.vcpu_time, i.vcpus).map(|p| p / 100.0)
                });
                self.balancers().set_cpu(i.id.as_str(), cpu);
            }
            // Instances that stopped being backends start afresh if they come back.
            sampler.retain(&sampled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_api::lb::{DesiredBackend, LbHealthCheck};

    fn desired(port: u16, backends: &[(&str, u16)]) -> DesiredBalancer {
        DesiredBalancer {
            id: "lb-0123456789abcdef0".parse().unwrap(),
            name: "web".into(),
            protocol: "http".into(),
            algorithm: "least-loaded".into(),
            listen_port: port,
            network: None,
            backends: backends
                .iter()
                .map(|(id, p)| DesiredBackend {
                    instance_id: id.parse().unwrap(),
                    address: format!("127.0.0.1:{p}"),
                    weight: 2,
                })
                .collect(),
            health_check: LbHealthCheck {
                path: Some("/".into()),
                interval_secs: Some(1),
                timeout_secs: Some(1),
                expect_status: None,
                healthy_threshold: Some(1),
                unhealthy_threshold: Some(2),
            },
        }
    }

    #[tokio::test]
    async fn starts_reconfigures_in_place_and_stops() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = listener_config(&desired(port, &[("i-0123456789abcdef0", 1)])).unwrap();
        assert_eq!((cfg.health.interval_ms, cfg.health.fall, cfg.health.passive_down_ms), (1000, 2, 2000));
        assert_eq!(cfg.listen.to_string(), format!("127.0.0.1:{port}"));
        let mut b = Balancers::default();
        let r = b.reconcile(&[desired(port, &[("i-0123456789abcdef0", 1)])]);
        assert_eq!(r[0].state.as_str(), "active");
        let started = r[0].started_at_ms;
        let r = b.reconcile(&[desired(port, &[("i-0123456789abcdef0", 1), ("i-0123456789abcdef1", 2)])]);
        assert_eq!((r[0].started_at_ms, r[0].backends.len()), (started, 2), "reconfigured, not restarted");
        b.set_cpu("i-0123456789abcdef1", Some(0.5));
        let r = b.reconcile(&[desired(port, &[("i-0123456789abcdef0", 1), ("i-0123456789abcdef1", 2)])]);
        assert_eq!(r[0].backends[1].cpu_percent, Some(50.0));
        // Another balancer on a taken port reports why it is not running.
        let mut other = desired(port, &[]);
        other.id = "lb-0123456789abcdef1".parse().unwrap();
        let r = b.reconcile(&[desired(port, &[]), other]);
        assert_eq!(r[1].state.as_str(), "error");
        assert!(r[1].error.as_deref().unwrap().contains("cannot listen"), "{:?}", r[1]);
        assert!(b.reconcile(&[]).is_empty());
        assert!(b.running.is_empty() && b.errors.is_empty());
        // Its port is free again once the stopped listener's task ends.
        let start = Instant::now();
        while b.reconcile(&[desired(port, &[])])[0].state.as_str() != "active" {
            assert!(start.elapsed() < Duration::from_secs(5), "the port was not freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
