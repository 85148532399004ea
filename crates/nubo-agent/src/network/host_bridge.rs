//! The all-in-one host network (`nubo up` as root), as libvirt's default
//! network is: a bridge on the machine with an address of its own (the
//! machine's side of the network), IPv4 forwarding, and masquerade for
//! what leaves the range by any other interface. The control plane maps it
//! as an external network, so instances get addresses of it (floating IPs
//! assigned automatically) that the machine reaches directly.
//!
//! ```text
//!  this machine ── bridge nubo0 192.168.123.1/24 ── veth ── nb<vni> (the external network)
//!                        └─ masquerade 192.168.123.0/24 towards eth0, wlan0, ...
//! ```

use super::netlink::{write_sysctl, Netlink, Set};
use super::{run, strings, NetworkError, Result};
use std::net::Ipv4Addr;

/// The bridge, its address and the range it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBridge {
    /// The bridge's name (also the external network's interface name).
    pub name: String,
    /// The machine's address on it: the range's first (the gateway).
    pub address: Ipv4Addr,
    /// The range's network address and prefix length.
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl HostBridge {
    /// The bridge `name` for `cidr` (`A.B.C.D/N`, N from 16 to 28): the
    /// machine takes the first address; the error says what to pass.
    pub fn new(name: &str, cidr: &str) -> Result<Self> {
        let bad = || {
            NetworkError::Other(format!(
                "host network {cidr:?} is not an IPv4 range from /16 to /28 such as 192.168.123.0/24: pass another with --host-network"
            ))
        };
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(16..=28).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(NetworkError::Other(format!(
                "host network {cidr} is not the start of its range: did you mean {network}/{prefix}?"
            )));
        }
        if name.is_empty() || name.len() > 15 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(NetworkError::Other(format!("bridge name {name:?} must be 1-15 letters, digits or '-'")));
        }
        Ok(Self { name: name.to_string(), address: Ipv4Addr::from(u32::from(network) + 1), network, prefix })
    }

    /// The range, `A.B.C.D/N`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// The addresses handed out: from the 10th (the first is each host's
    /// DHCP and metadata service) to the last before broadcast.
    pub fn pool(&self) -> String {
        let size = 1u32 << (32 - u32::from(self.prefix));
        let base = u32::from(self.network);
        format!("{}-{}", Ipv4Addr::from(base + 10), Ipv4Addr::from(base + size - 2))
    }

    /// The masquerade for the range (its own table, replaced whole), so
    /// instances reach what the machine reaches: routed packets only, not
    /// frames crossing a bridge (see `firewall::render_host_nat`).
    pub fn ruleset(&self) -> String {
        let cidr = self.cidr();
        format!(
            "table ip nubo_host_network {{}}\ndelete table ip nubo_host_network\ntable ip nubo_host_network {{\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr {cidr} ip daddr != {cidr} oifname != \"{}\" oifname != \"nb*\" masquerade\n  }}\n}}\n",
            self.name
        )
    }

    /// Makes the bridge, its address, forwarding and the masquerade, in the
    /// machine's namespace or `netns` (a test's machine). Safe to repeat.
    pub async fn ensure(&self, netns: Option<&str>) -> Result<()> {
        let ns_file = netns.map(|n| std::path::PathBuf::from("/run/netns").join(n));
        let nl = Netlink::open(ns_file.as_deref()).await?;
        // A range the machine already routes elsewhere would shadow (or
        // be shadowed by) this one: refuse, and say how to pick another.
        let cidr = self.cidr();
        if let Some(other) = nl.route_devices(self.network, self.prefix).await?.into_iter().find(|d| *d != self.name) {
            return Err(NetworkError::Other(format!(
                "{cidr} is already routed through {other} on this machine: pick a free range with --host-network"
            )));
        }
        if !nl.exists(&self.name).await? {
            tracing::info!(bridge = %self.name, %cidr, "creating the host network's bridge");
            nl.add_bridge(&self.name).await?;
        }
        nl.ensure_address(&self.name, self.address, self.prefix).await?;
        nl.set(&self.name, &[Set::Up]).await?;
        write_sysctl(ns_file.as_deref(), "net.ipv4.ip_forward", "1").await?;
        // nft, not a crate: the ruleset file is one atomic transaction, and
        // the nftables crates drive this same binary.
        let nft = match netns {
            Some(ns) => ("ip", strings(&["netns", "exec", ns, "nft", "-f", "-"])),
            None => ("nft", strings(&["-f", "-"])),
        };
        run(nft.0, &nft.1, Some(&self.ruleset())).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_and_split_into_gateway_and_pool() {
        let b = HostBridge::new("nubo0", "192.168.123.0/24").unwrap();
        assert_eq!(b.address, Ipv4Addr::new(192, 168, 123, 1));
        assert_eq!(b.cidr(), "192.168.123.0/24");
        assert_eq!(b.pool(), "192.168.123.10-192.168.123.254");
        assert_eq!(HostBridge::new("nubo0", "10.9.0.0/16").unwrap().pool(), "10.9.0.10-10.9.255.254");
        for bad in ["192.168.123.0", "192.168.123.0/8", "192.168.123.0/30", "nope/24", "192.168.123.7/24"] {
            let e = HostBridge::new("nubo0", bad).unwrap_err().to_string();
            assert!(e.contains("--host-network") || e.contains("did you mean"), "{bad}: {e}");
        }
        assert!(HostBridge::new("a name; rm", "192.168.123.0/24").is_err());
        assert!(HostBridge::new("waytoolongbridgename", "192.168.123.0/24").is_err());
    }

    #[test]
    fn the_range_is_masqueraded_only_when_it_leaves_by_another_interface() {
        let b = HostBridge::new("nubo0", "192.168.123.0/24").unwrap();
        let r = b.ruleset();
        assert!(r.starts_with("table ip nubo_host_network {}\ndelete table ip nubo_host_network\n"), "{r}");
        assert!(
            r.contains(
                "ip saddr 192.168.123.0/24 ip daddr != 192.168.123.0/24 oifname != \"nubo0\" oifname != \"nb*\" masquerade"
            ),
            "{r}"
        );
    }
}
