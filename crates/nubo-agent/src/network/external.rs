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

use super::{run, strings, uplink_addresses, NetworkError, Plumbing, Result};
use nubo_api::agent::{DesiredNetwork, ExternalLink};
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// A route metric for the external networks' ranges on the host: above
/// any the operator's own network setup uses, so a LAN the host is itself
/// on keeps its route, and this one only serves when there is none.
const EXTERNAL_ROUTE_METRIC: &str = "4242";

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

    async fn is_bridge(&self, iface: &str) -> Result<bool> {
        let text = self.ip(&["-d", "-j", "link", "show", "dev", iface]).await?;
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .map_err(|e| NetworkError::Other(format!("cannot read `ip -j link show {iface}`: {e}")))?;
        Ok(v[0]["linkinfo"]["info_kind"] == "bridge")
    }

    /// The bridge of an external network, its uplink, DHCP and metadata.
    pub(super) async fn ensure_external(&mut self, net: &DesiredNetwork, link: &ExternalLink) -> Result<()> {
        let vni = net.vni;
        let iface = self.external_interface(link)?;
        if !self.link_exists(&iface).await {
            return Err(NetworkError::Other(format!(
                "interface {iface} (external network name '{}') does not exist on this host: fix `--external {}={iface}`",
                link.interface, link.interface
            )));
        }
        let br = format!("nb{vni}");
        if !self.link_exists(&br).await {
            tracing::info!(bridge = %br, iface = %iface, vlan = ?link.vlan, "creating an external network's bridge");
            self.ip(&["link", "add", &br, "type", "bridge"]).await?;
        }
        self.ip(&["link", "set", &br, "up"]).await?;
        self.ip(&["link", "set", &iface, "up"]).await?;
        // The port that leads to the LAN.
        let uplink = match link.vlan {
            Some(tag) => {
                let nv = format!("nv{vni}");
                if !self.link_exists(&nv).await {
                    let tag = tag.to_string();
                    self.ip(&["link", "add", "link", &iface, "name", &nv, "type", "vlan", "id", &tag]).await?;
                }
                nv
            }
            None if self.is_bridge(&iface).await? => {
                // A bridge of the operator's (Proxmox's vmbr0): joined by a
                // veth pair, as one bridge cannot be a port of another.
                let (ne, nf) = (format!("ne{vni}"), format!("nf{vni}"));
                if !self.link_exists(&nf).await {
                    self.ip(&["link", "add", &nf, "type", "veth", "peer", "name", &ne]).await?;
                }
                self.ip(&["link", "set", &ne, "master", &iface, "up"]).await?;
                nf
            }
            None => iface.clone(),
        };
        self.ip(&["link", "set", &uplink, "master", &br, "up"]).await?;
        self.bridge_cmd(&["link", "set", "dev", &uplink, "isolated", "on"]).await?;
        // The host routes floating IPs' replies onto the LAN by this range.
        self.ip(&["route", "replace", &net.cidr, "dev", &br, "metric", EXTERNAL_ROUTE_METRIC]).await?;
        // Proxy ARP answers at once (the default delays each answer by up
        // to 0.8 s, which a client's first connection would wait for).
        let delay = format!("net.ipv4.neigh.{br}.proxy_delay=0");
        self.host_exec("sysctl", &["-q", "-w", &delay], None).await?;

        // DHCP and metadata for this host's guests on the network.
        let router = self.router_ns(vni);
        let rv = format!("nr{vni}");
        if !PathBuf::from("/run/netns").join(&router).exists() {
            run("ip", &strings(&["netns", "add", &router]), None).await?;
        }
        if !self.link_exists(&rv).await {
            self.ip(&["link", "add", &rv, "type", "veth", "peer", "name", "gw", "netns", &router]).await?;
        }
        self.ip(&["link", "set", &rv, "master", &br, "up"]).await?;
        self.bridge_cmd(&["link", "set", "dev", &rv, "isolated", "on"]).await?;
        let len = super::prefix_len(&net.cidr)?;
        let service = format!("{}/{len}", link.service_address);
        let in_router = |args: &[&str]| {
            let mut v = strings(&["-n", &router]);
            v.extend(strings(args));
            v
        };
        let mac = super::gateway_mac(vni);
        run("ip", &in_router(&["link", "set", "lo", "up"]), None).await?;
        run("ip", &in_router(&["link", "set", "gw", "address", &mac, "up"]), None).await?;
        let addrs = run("ip", &in_router(&["-o", "addr", "show", "dev", "gw"]), None).await?;
        for a in [service.as_str(), "169.254.169.254/32"] {
            if !addrs.contains(&format!(" {a} ")) {
                run("ip", &in_router(&["addr", "add", a, "dev", "gw"]), None).await?;
            }
        }
        self.ensure_dhcp(net, &router).await?;
        self.ensure_metadata(vni, &router)?;
        Ok(())
    }

    /// Takes the operator's interface back out of a network's bridge
    /// before the bridge goes (deleting the bridge would do it too, but
    /// the interface would stay down-ported; this says so in the log).
    pub(super) async fn release_external_uplink(&self, vni: u32) -> Result<()> {
        let br = format!("nb{vni}");
        for iface in self.cfg.externals.values() {
            let text = self.ip(&["-j", "link", "show", "dev", iface]).await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
            if v[0]["master"] == br.as_str() {
                tracing::info!(iface = %iface, bridge = %br, "releasing an interface from an external network's bridge");
                self.ip(&["link", "set", iface, "nomaster"]).await?;
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
                let host = format!("{a}/32");
                self.ip(&["route", "replace", &host, "via", &router_side.to_string(), "dev", &nu]).await?;
                self.ip(&["neigh", "replace", "proxy", &a, "dev", &br]).await?;
                proxies.entry(br.clone()).or_default().insert(address);
                routes.entry(nu).or_default().insert(address);
                if !self.announced.contains(&a) {
                    fresh.push((br, address));
                }
            }
        }
        // Stale entries: proxies on the external bridges, /32 routes on uplinks.
        for (br, wanted) in &proxies {
            let text = self.ip(&["-j", "neigh", "show", "proxy", "dev", br]).await.unwrap_or_default();
            let have: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap_or_default();
            for old in have.iter().filter_map(|e| e["dst"].as_str()).filter_map(|d| d.parse::<Ipv4Addr>().ok()) {
                if !wanted.contains(&old) {
                    tracing::info!(floating_ip = %old, bridge = %br, "no longer answering for a floating IP");
                    self.ip(&["neigh", "del", "proxy", &old.to_string(), "dev", br]).await?;
                }
            }
        }
        for (nu, wanted) in &routes {
            let text = self.ip(&["-j", "route", "show", "dev", nu]).await.unwrap_or_default();
            let have: Vec<serde_json::Value> = serde_json::from_str(text.trim()).unwrap_or_default();
            for old in have.iter().filter_map(|e| e["dst"].as_str()).filter_map(|d| d.parse::<Ipv4Addr>().ok()) {
                if !wanted.contains(&old) {
                    self.ip(&["route", "del", &format!("{old}/32"), "dev", nu]).await?;
                }
            }
        }
        let now: HashSet<String> = proxies.values().flatten().map(|a| a.to_string()).collect();
        for (br, address) in fresh {
            tracing::info!(floating_ip = %address, bridge = %br, "announcing a floating IP");
            let text = self.ip(&["-j", "link", "show", "dev", &br]).await?;
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
            let Some(mac) = v[0]["address"].as_str().and_then(super::garp::parse_mac) else {
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
