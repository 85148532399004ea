//! Security groups as one nftables ruleset for the host.
//!
//! The kernels Nubo runs on may lack conntrack in nftables' bridge family
//! (`CONFIG_NF_CONNTRACK_BRIDGE`), so the stateful part runs in the `inet`
//! family, which br_netfilter feeds with bridged IPv4. The bridge family,
//! which sees the bridge ports, does the rest: it drops frames a port sends
//! from a MAC or address that is not its own, and marks each frame with the
//! port it leaves by; the inet chain of that mark then accepts replies
//! (conntrack), DHCP answers and what the port's rules allow, and drops the
//! rest. Outbound is open. The whole ruleset is replaced in one `nft -f`
//! transaction, so a change never leaves a port half-filtered, and
//! connections already open stay open.

use nubo_api::agent::{DesiredNetwork, FirewallRule};
use std::fmt::Write;

/// Marks are this base plus the port's index in the ruleset.
const MARK_BASE: u32 = 0x4e75_0000;

/// The ruleset text for `nft -f`. `tap_of(instance, vni)` names the tap
/// of the instance's NIC on that network (None: not plugged here, no rules).
pub fn render(networks: &[DesiredNetwork], tap_of: &dyn Fn(&str, u32) -> Option<String>) -> String {
    let mut bridge = String::new();
    let mut inet_jumps = String::new();
    let mut chains = String::new();
    let mut index = 0u32;
    for net in networks {
        for port in &net.ports {
            let Some(tap) = tap_of(port.instance_id.as_str(), net.vni) else { continue };
            index += 1;
            let mark = MARK_BASE + index;
            let chain = format!("port_{tap}");
            let _ = writeln!(bridge, "    iifname \"{tap}\" ether saddr != {} drop", port.mac);
            let _ = writeln!(bridge, "    iifname \"{tap}\" ip saddr != {{ {}, 0.0.0.0 }} drop", port.address);
            let _ = writeln!(bridge, "    oifname \"{tap}\" meta mark set {mark:#x}");
            let _ = writeln!(inet_jumps, "    meta mark {mark:#x} jump {chain}");
            let _ = writeln!(chains, "  chain {chain} {{");
            chains.push_str("    ct state established,related accept\n    ct state invalid drop\n");
            chains.push_str("    udp sport 67 udp dport 68 accept\n");
            for r in &port.ingress {
                if let Some(line) = rule_line(r) {
                    let _ = writeln!(chains, "    {line}");
                }
            }
            chains.push_str("    drop\n  }\n");
        }
    }
    let mut out = String::new();
    // Declaring then deleting makes the delete safe when the table is absent.
    out.push_str("table bridge nubo {}\ndelete table bridge nubo\ntable inet nubo {}\ndelete table inet nubo\n");
    let _ = write!(
        out,
        "table bridge nubo {{\n  chain forward {{\n    type filter hook forward priority -200; policy accept;\n{bridge}  }}\n}}\n"
    );
    let _ = write!(
        out,
        "table inet nubo {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{inet_jumps}  }}\n{chains}}}\n"
    );
    out
}

/// A forwarded port of an instance on a private network: the host's
/// `host_port` (on its underlay address) reaches `address:guest_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub vni: u32,
    pub address: String,
    pub guest_port: u16,
    pub host_port: u16,
}

/// The forwarded ports of `d`'s bridged instances, to their first NIC.
pub fn forwards(d: &nubo_api::agent::DesiredState) -> Vec<Forward> {
    let mut out = Vec::new();
    for i in d.instances.iter().filter(|i| i.power != nubo_api::agent::PowerState::Deleted) {
        let Some(nic) = i.nics.first() else { continue };
        let Some(net) = d.networks.iter().find(|n| n.id == nic.network_id) else { continue };
        for p in &i.ports {
            out.push(Forward {
                vni: net.vni,
                address: nic.address.clone(),
                guest_port: p.guest_port,
                host_port: p.host_port,
            });
        }
    }
    out
}

/// The host's NAT: forwarded ports to the routers' uplinks, and
/// masquerade of what the routers send out.
pub fn render_host_nat(underlay: std::net::Ipv4Addr, forwards: &[Forward]) -> String {
    let mut dnat = String::new();
    for f in forwards {
        let (_, router) = super::uplink_addresses(f.vni);
        let _ = writeln!(dnat, "    ip daddr {underlay} tcp dport {} dnat to {router}:{}", f.host_port, f.host_port);
    }
    format!(
        "table ip nubo_nat {{}}\ndelete table ip nubo_nat\ntable ip nubo_nat {{\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{dnat}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr 100.64.0.0/10 oifname != \"nu*\" masquerade\n  }}\n}}\n"
    )
}

/// A router's NAT: forwarded ports on to the instances, masquerade out.
pub fn render_router(forwards: &[Forward]) -> String {
    let mut dnat = String::new();
    for f in forwards {
        let _ =
            writeln!(dnat, "    iifname \"uplink\" tcp dport {} dnat to {}:{}", f.host_port, f.address, f.guest_port);
    }
    format!(
        "table ip nubo_router {{}}\ndelete table ip nubo_router\ntable ip nubo_router {{\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{dnat}  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"uplink\" masquerade\n  }}\n}}\n"
    )
}

/// One accept rule, or None when it can match nothing (no sources).
fn rule_line(r: &FirewallRule) -> Option<String> {
    if r.sources.is_empty() {
        return None;
    }
    let sources = format!("ip saddr {{ {} }}", r.sources.join(", "));
    let ports =
        if r.from_port == r.to_port { r.from_port.to_string() } else { format!("{}-{}", r.from_port, r.to_port) };
    Some(match r.protocol.as_str() {
        "tcp" | "udp" => format!("{sources} {} dport {ports} accept", r.protocol),
        "icmp" => format!("{sources} meta l4proto icmp accept"),
        _ => format!("{sources} accept"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_api::agent::DesiredPort;

    fn net(rules: Vec<FirewallRule>) -> DesiredNetwork {
        DesiredNetwork {
            id: "net-0123456789abcdef0".parse().unwrap(),
            vni: 1000,
            cidr: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            peers: vec![],
            ports: vec![DesiredPort {
                instance_id: "i-0123456789abcdef0".parse().unwrap(),
                mac: "52:54:00:00:00:01".into(),
                address: "10.20.0.2".into(),
                ingress: rules,
            }],
        }
    }

    #[test]
    fn a_port_gets_anti_spoofing_a_mark_and_its_rules_then_drop() {
        let rules = vec![
            FirewallRule { protocol: "tcp".into(), from_port: 8080, to_port: 8080, sources: vec!["0.0.0.0/0".into()] },
            FirewallRule {
                protocol: "udp".into(),
                from_port: 5000,
                to_port: 5010,
                sources: vec!["10.20.0.0/24".into()],
            },
            FirewallRule {
                protocol: "icmp".into(),
                from_port: 0,
                to_port: 65535,
                sources: vec!["10.20.0.3/32".into()],
            },
            FirewallRule { protocol: "all".into(), from_port: 0, to_port: 65535, sources: vec![] },
        ];
        let text = render(&[net(rules)], &|i, vni| (vni == 1000 && i.starts_with("i-")).then(|| "nt1".to_string()));
        assert!(text.contains("iifname \"nt1\" ether saddr != 52:54:00:00:00:01 drop"), "{text}");
        assert!(text.contains("iifname \"nt1\" ip saddr != { 10.20.0.2, 0.0.0.0 } drop"));
        assert!(text.contains("oifname \"nt1\" meta mark set 0x4e750001"));
        assert!(text.contains("meta mark 0x4e750001 jump port_nt1"));
        assert!(text.contains("ip saddr { 0.0.0.0/0 } tcp dport 8080 accept"));
        assert!(text.contains("ip saddr { 10.20.0.0/24 } udp dport 5000-5010 accept"));
        assert!(text.contains("ip saddr { 10.20.0.3/32 } meta l4proto icmp accept"));
        // A rule with no sources (a source group with no members) matches nothing.
        assert_eq!(text.matches(" accept\n").count(), 5, "{text}");
        let chain = text.split("chain port_nt1 {").nth(1).unwrap();
        assert!(chain.trim_end().ends_with("drop\n  }\n}") || chain.contains("    drop\n  }"));
    }

    #[test]
    fn forwarded_ports_are_dnat_twice_and_egress_masqueraded() {
        let f = [Forward { vni: 1001, address: "10.20.0.5".into(), guest_port: 80, host_port: 20005 }];
        let host = render_host_nat("192.0.2.1".parse().unwrap(), &f);
        assert!(host.contains("ip daddr 192.0.2.1 tcp dport 20005 dnat to 100.64.0.6:20005"), "{host}");
        assert!(host.contains("ip saddr 100.64.0.0/10 oifname != \"nu*\" masquerade"));
        let router = render_router(&f);
        assert!(router.contains("iifname \"uplink\" tcp dport 20005 dnat to 10.20.0.5:80"), "{router}");
        assert!(router.contains("oifname \"uplink\" masquerade"));
        assert_eq!(
            super::super::uplink_addresses(1000),
            ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap())
        );
    }

    #[test]
    fn ports_not_plugged_here_get_nothing() {
        let text = render(&[net(vec![])], &|_, _| None);
        assert!(!text.contains("port_"), "{text}");
        assert!(text.starts_with("table bridge nubo {}\ndelete table bridge nubo\n"));
    }
}
