//! The legs of load balancers that run on private networks: each such
//! balancer has a network namespace of its own on its host, with one
//! interface on the network's bridge carrying the balancer's address and
//! MAC, and a default route through the network's gateway (the router,
//! which translates its floating IP). The balancer's listener and its
//! connections to backends are made inside it (see `nubo_lb::dial`), so it
//! reaches targets on every host of the network over VXLAN, and nothing of
//! the host's own namespace. Unlike the router's, the leg is not an
//! isolated bridge port: it must reach the VXLAN port.

use super::netlink::{Netlink, Route, Set};
use super::{ipv4, Plumbing, Result, GUEST_MTU};
use nubo_api::ids::LoadBalancerId;
use nubo_api::lb::DesiredBalancer;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// 8 hex digits of a balancer id's hash: names fit IFNAMSIZ.
fn short(lb: &LoadBalancerId) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in lb.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The namespace prefix of this host's balancers.
fn prefix(host_netns: Option<&str>) -> String {
    match host_netns {
        Some(ns) => format!("{ns}-lb"),
        None => "nubo-lb".to_string(),
    }
}

/// The namespace a balancer on a network runs in.
pub fn balancer_netns(host_netns: Option<&str>, lb: &LoadBalancerId) -> String {
    format!("{}{}", prefix(host_netns), short(lb))
}

impl Plumbing {
    /// Makes the legs of `balancers` that run on networks, and removes
    /// the namespaces of balancers no longer here.
    pub(super) async fn sync_balancer_legs(&self, balancers: &[DesiredBalancer]) -> Result<()> {
        let mut wanted = HashSet::new();
        let mut host = None;
        for b in balancers {
            let Some(leg) = &b.network else { continue };
            let nl = match &host {
                Some(nl) => nl,
                None => host.insert(self.host_nl().await?),
            };
            let ns = balancer_netns(self.cfg.netns.as_deref(), &b.id);
            wanted.insert(ns.clone());
            let host_side = format!("nl{}", short(&b.id));
            let ns_file = super::netns_file(&ns);
            if !ns_file.exists() {
                tracing::info!(lb = %b.id, netns = %ns, "creating a load balancer's namespace");
                super::add_netns(&ns).await?;
            }
            if !nl.exists(&host_side).await? {
                nl.add_veth(&host_side, "eth0", Some(&ns_file)).await?;
            }
            let br = format!("nb{}", leg.vni);
            nl.set(&host_side, &[Set::Master(&br), Set::Mtu(GUEST_MTU), Set::Up]).await?;
            let len = super::prefix_len(&leg.cidr)?;
            let address = ipv4("a load balancer's address", &leg.address)?;
            let gateway = ipv4("a load balancer's gateway", &leg.gateway)?;
            let mac = super::garp::parse_mac(&leg.mac).ok_or_else(|| {
                super::NetworkError::Other(format!(
                    "load balancer {}'s MAC {:?} is not a MAC address; the control plane sent it: check its version matches this agent's",
                    b.id, leg.mac
                ))
            })?;
            let ln = Netlink::open(Some(&ns_file)).await?;
            ln.set("lo", &[Set::Up]).await?;
            ln.set("eth0", &[Set::Mac(mac), Set::Mtu(GUEST_MTU), Set::Up]).await?;
            ln.ensure_address("eth0", address, len).await?;
            let default = Route { dst: Ipv4Addr::UNSPECIFIED, len: 0, via: Some(gateway), dev: None, metric: None };
            ln.replace_route(default).await?;
        }
        let pre = prefix(self.cfg.netns.as_deref());
        let Ok(entries) = std::fs::read_dir("/run/netns") else { return Ok(()) };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours =
                name.strip_prefix(&pre).is_some_and(|h| h.len() == 8 && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if ours && !wanted.contains(&name) {
                tracing::info!(netns = %name, "removing the namespace of a load balancer no longer here");
                // Deleting the namespace deletes the veth pair with it.
                super::del_netns(&name).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit() {
        let id: LoadBalancerId = "lb-0123456789abcdef0".parse().unwrap();
        assert_eq!(balancer_netns(None, &id), balancer_netns(None, &id));
        assert!(balancer_netns(Some("nx1h1"), &id).starts_with("nx1h1-lb"));
        assert!(format!("nl{}", short(&id)).len() <= 15);
    }
}
