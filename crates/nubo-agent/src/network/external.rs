//! External (provider) networks and floating IPs on this host.
//!
//! ```text
//!  guest eth0 ── tap nt… ─┐
//!                         ├ bridge nb<vni> ── IFACE (or VLAN nv<vni> on it, or a
//!                         │                   veth nf<vni>═ne<vni> into IFACE when it is a bridge)
//!                         └─ veth nr<vni> ══ gw (namespace <prefix>r<vni>):
//!                              the pool's first address, 169.254.169.254, dnsmasq (DHCP)
//! ```
//!
//! The uplink port and the DHCP leg are both *isolated* bridge ports, so
//! this host's DHCP answers its own guests only and never the LAN, and
//! every host may use the same service address. There is no router: the
//! guests' gateway is the LAN's own.
//!
//! A floating IP is routed, not bridged: the host answers ARP for it on
//! the external network's bridge (a proxy entry), routes it to the router
//! of the instance's private network, and that router translates it 1:1
//! (see `firewall::render_router`). The instance's security groups see the
//! client's own address. A floating IP new on this host is announced by
//! gratuitous ARP, so the LAN forgets the host that had it before (after a
//! migration or a restart elsewhere).

use super::netlink::{self, Netlink, Route, Set};
use super::{uplink_addresses, NetworkError, Plumbing, Result};
use nubo_api::agent::{DesiredNetwork, ExternalLink};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

/// A route metric for the external networks' ranges on the host: above
/// any the operator's own network setup uses, so a LAN the host is itself
/// on keeps its route, and this one only serves when there is none.
const EXTERNAL_ROUTE_METRIC: u32 = 4242;

impl Plumbing {
    /// The host's interface mapped to `link`'s name, or what to do.
    fn external_interface(&self, link: &ExternalLink) -> Result<String> {
        self.cfg.externals.get(&link.interface).cloned().ok_or_else(|| {
            NetworkError::Other(format!(
                "this host maps no interface to external network name '{}': start its agent with --external {}=IFACE",
                link.interface, link.interface
            ))
        })
    }

    /// The bridge of an external network, its uplink, DHCP and metadata.
    pub(super) async fn ensure_external(&mut self, net: &DesiredNetwork, link: &ExternalLink) -> Result<()> {
        let vni = net.vni;
        let iface = self.external_interface(link)?;
        let nl = self.host_nl().await?;
        if !nl.exists(&iface).await? {
            return Err(NetworkError::Other(format!(
                "interface {iface} (external network name '{}') does not exist on this host: fix `--external {}={iface}`",
                link.interface, link.interface
            )));
        }
        let br = format!("nb{vni}");
        if !nl.exists(&br).await? {
            tracing::info!(bridge = %br, iface = %iface, vlan = ?link.vlan, "creating an external network's bridge");
            nl.add_bridge(&br).await?;
        }
        nl.set(&br, &[Set::Up]).await?;
        nl.set(&iface, &[Set::Up]).await?;
        // The port that leads to the LAN.
        let uplink = match link.vlan {
            Some(tag) => {
                let nv = format!("nv{vni}");
                if !nl.exists(&nv).await? {
                    nl.add_vlan(&nv, &iface, tag).await?;
                }
                nv
            }
            None if netlink::is_bridge_kind(nl.kind(&iface).await?.as_deref()) => {
                // A bridge of the operator's (Proxmox's vmbr0): joined by a
                // veth pair, as one bridge cannot be a port of another.
                let (ne, nf) = (format!("ne{vni}"), format!("nf{vni}"));
                if !nl.exists(&nf).await? {
                    nl.add_veth(&nf, &ne, None).await?;
                }
                nl.set(&ne, &[Set::Master(&iface), Set::Up]).await?;
                nf
            }
            None => iface.clone(),
        };
        nl.set(&uplink, &[Set::Master(&br), Set::Up]).await?;
        nl.isolate(&uplink).await?;
        // The host routes floating IPs' replies onto the LAN by this range.
        let (dst, len) = super::cidr(&net.cidr)?;
        let lan = Route { dst, len, via: None, dev: Some(&br), metric: Some(EXTERNAL_ROUTE_METRIC) };
        nl.replace_route(lan).await?;
        // Proxy ARP answers at once (the default delays each answer by up
        // to 0.8 s, which a client's first connection would wait for).
        netlink::write_sysctl(self.netns_path().as_deref(), &format!("net.ipv4.neigh.{br}.proxy_delay"), "0").await?;

        // DHCP and metadata for this host's guests on the network.
        let router = self.router_ns(vni);
        let rv = format!("nr{vni}");
        let ns_file = super::netns_file(&router);
        if !ns_file.exists() {
            super::add_netns(&router).await?;
        }
        if !nl.exists(&rv).await? {
            nl.add_veth(&rv, "gw", Some(&ns_file)).await?;
        }
        nl.set(&rv, &[Set::Master(&br), Set::Up]).await?;
        nl.isolate(&rv).await?;
        let service = super::ipv4("the external network's service address", &link.service_address)?;
        let rn = Netlink::open(Some(&ns_file)).await?;
        rn.set("lo", &[Set::Up]).await?;
        rn.set("gw", &[Set::Mac(super::gateway_mac_octets(vni)), Set::Up]).await?;
        rn.ensure_address("gw", service, len).await?;
        rn.ensure_address("gw", super::METADATA_ADDRESS, 32).await?;
        self.ensure_dhcp(net, &router).await?;
        self.ensure_metadata(vni, &router)?;
        Ok(())
    }

    /// Takes the operator's interface back out of a network's bridge
    /// before the bridge goes (deleting the bridge would do it too, but
    /// the interface would stay down-ported; this says so in the log).
    pub(super) async fn release_external_uplink(&self, nl: &Netlink, vni: u32) -> Result<()> {
        let br = format!("nb{vni}");
        let Some(bridge) = nl.index(&br).await? else { return Ok(()) };
        for iface in self.cfg.externals.values() {
            if nl.master(iface).await.unwrap_or_default() == Some(bridge) {
                tracing::info!(iface = %iface, bridge = %br, "releasing an interface from an external network's bridge");
                nl.set(iface, &[Set::NoMaster]).await?;
            }
        }
        Ok(())
    }

    /// Makes this host answer for exactly the floating IPs of `networks`:
    /// a proxy ARP entry on the external network's bridge and a route to
    /// the private network's router for each; stale ones go. New ones are
    /// announced once in place.
    pub(super) async fn sync_floating(&mut self, networks: &[DesiredNetwork]) -> Result<()> {
        // external bridge -> wanted addresses; uplink -> wanted routes.
        let mut proxies: BTreeMap<String, HashSet<Ipv4Addr>> = BTreeMap::new();
        let mut routes: BTreeMap<String, HashSet<Ipv4Addr>> = BTreeMap::new();
        let mut fresh = Vec::new();
        let nl = self.host_nl().await?;
        for ext in networks.iter().filter(|n| n.external.is_some()) {
            proxies.entry(format!("nb{}", ext.vni)).or_default();
        }
        for net in networks.iter().filter(|n| n.external.is_none()) {
            routes.entry(format!("nu{}", net.vni)).or_default();
            for f in &net.floating {
                let Ok(address) = f.address.parse::<Ipv4Addr>() else { continue };
                let Some(ext) = networks.iter().find(|n| n.id == f.external && n.external.is_some()) else {
                    tracing::warn!(floating_ip = %address, "a floating IP's external network is not in the desired state");
                    continue;
                };
                let br = format!("nb{}", ext.vni);
                let nu = format!("nu{}", net.vni);
                let (_, router_side) = uplink_addresses(net.vni);
                let a = address.to_string();
                let route = Route { dst: address, len: 32, via: Some(router_side), dev: Some(&nu), metric: None };
                nl.replace_route(route).await?;
                nl.replace_proxy(&br, address).await?;
                proxies.entry(br.clone()).or_default().insert(address);
                routes.entry(nu).or_default().insert(address);
                if !self.announced.contains(&a) {
                    fresh.push((br, address));
                }
            }
        }
        // Stale entries: proxies on the external bridges, /32 routes on uplinks.
        for (br, wanted) in &proxies {
            // (A bridge that is not there yet has no entries.)
            for old in nl.proxies(br).await.unwrap_or_default() {
                if !wanted.contains(&old) {
                    tracing::info!(floating_ip = %old, bridge = %br, "no longer answering for a floating IP");
                    nl.delete_proxy(br, old).await?;
                }
            }
        }
        for (nu, wanted) in &routes {
            for old in nl.host_routes(nu).await.unwrap_or_default() {
                if !wanted.contains(&old) {
                    nl.delete_host_route(old, nu).await?;
                }
            }
        }
        let now: HashSet<String> = proxies.values().flatten().map(|a| a.to_string()).collect();
        for (br, address) in fresh {
            tracing::info!(floating_ip = %address, bridge = %br, "announcing a floating IP");
            let Some(mac) = nl.mac(&br).await? else {
                tracing::warn!(bridge = %br, "cannot read the bridge's MAC; the LAN learns the floating IP on its next ARP");
                continue;
            };
            if let Err(e) = super::garp::announce(self.netns_path().as_deref(), &br, mac, address).await {
                tracing::warn!(floating_ip = %address, error = %e, "cannot announce a floating IP; the LAN learns it on its next ARP");
            }
        }
        self.announced = now;
        Ok(())
    }
}
