//! Security groups as one nftables ruleset for the host.
//!
//! The kernels Nubo runs on may lack conntrack in nftables' bridge family
//! (`CONFIG_NF_CONNTRACK_BRIDGE`), so the stateful part runs in the `inet`
//! family, which br_netfilter feeds with bridged IPv4. The bridge family,
//! which sees the bridge ports, does the rest: it drops frames a port sends
//! from a MAC or address that is not its own, and marks each frame with the
//! port it leaves by; the inet chain of that mark then accepts replies
//! (conntrack), DHCP answers and what the port's rules allow, and drops the
//! rest. What a port sends is filtered in the inet family too, found by
//! the bridge it came in by (br_netfilter shows bridged packets there with
//! the bridge as `iifname`) and its source address (the bridge chain has
//! already dropped anything spoofed): replies, DHCP, DNS to the gateway
//! and metadata pass, then the egress rules, then it is dropped. A raw
//! prerouting chain puts each network's packets in a conntrack zone of its
//! own, so two networks with the same range on one host never share a
//! flow. The whole ruleset is replaced in one `nft -f` transaction, so a
//! change never leaves a port half-filtered, and connections already open
//! stay open.
//!
//! Because that one transaction carries every project's rules, nothing of
//! a rule reaches its text untyped: each rule is parsed into a protocol,
//! a port range and IPv4 networks first (merged, as nft refuses an
//! anonymous set with overlapping ranges), and a rule that does not parse
//! is left out (it allows nothing) and logged with its instance, instead
//! of failing the host's ruleset for everyone.

use nubo_api::agent::{DesiredNetwork, FirewallRule};
use nubo_api::cidr::Ipv4Net;
use std::fmt::Write;
use std::net::Ipv4Addr;

/// Marks are this base plus the port's index in the ruleset.
const MARK_BASE: u32 = 0x4e75_0000;

/// The ruleset text for `nft -f`. `tap_of(instance, vni)` names the tap
/// of the instance's NIC on that network (None: not plugged here, no rules).
pub fn render(networks: &[DesiredNetwork], tap_of: &dyn Fn(&str, u32) -> Option<String>) -> String {
    let mut bridge = String::new();
    let mut inet_jumps = String::new();
    let mut egress_jumps = String::new();
    let mut zones = String::new();
    let mut chains = String::new();
    let mut index = 0u32;
    for net in networks {
        let _ = writeln!(zones, "    iifname \"nb{}\" ct zone set {}", net.vni, ct_zone(net.vni));
        for port in &net.ports {
            let Some(tap) = tap_of(port.instance_id.as_str(), net.vni) else { continue };
            index += 1;
            let mark = MARK_BASE + index;
            let chain = format!("port_{tap}");
            let (Some(mac), Ok(address)) = (mac_of(&port.mac), port.address.parse::<Ipv4Addr>()) else {
                // Without its own addresses a port cannot be told from a
                // spoofer: it gets nothing in or out rather than everything.
                tracing::warn!(instance = %port.instance_id, network = %net.id, mac = %port.mac.escape_debug(),
                    address = %port.address.escape_debug(), "a port's MAC or address does not parse: its traffic is dropped");
                let _ = writeln!(bridge, "    iifname \"{tap}\" drop\n    oifname \"{tap}\" drop");
                continue;
            };
            let _ = writeln!(bridge, "    iifname \"{tap}\" ether saddr != {mac} drop");
            let _ = writeln!(bridge, "    iifname \"{tap}\" ip saddr != {{ {address}, 0.0.0.0 }} drop");
            let _ = writeln!(bridge, "    oifname \"{tap}\" meta mark set {mark:#x}");
            let _ = writeln!(inet_jumps, "    meta mark {mark:#x} jump {chain}");
            let _ = writeln!(chains, "  chain {chain} {{");
            chains.push_str("    ct state established,related accept\n    ct state invalid drop\n");
            chains.push_str("    udp sport 67 udp dport 68 accept\n");
            for r in &port.ingress {
                match TypedRule::parse(r) {
                    Ok(rule) => {
                        if let Some(line) = rule.line() {
                            let _ = writeln!(chains, "    {line}");
                        }
                    }
                    Err(e) => tracing::warn!(instance = %port.instance_id, network = %net.id, error = %e,
                        "left a security-group rule out of the host's firewall (it allows nothing); the host's other rules apply"),
                }
            }
            chains.push_str("    drop\n  }\n");
            if let Some(egress) = &port.egress {
                let _ = writeln!(egress_jumps, "    iifname \"nb{}\" ip saddr {address} jump egress_{tap}", net.vni);
                let _ = writeln!(chains, "  chain egress_{tap} {{");
                // Allowed: "return" (on to the ingress check of the port it
                // goes to, when that is on this host); refused: drop.
                chains.push_str("    ct state established,related return\n    ct state invalid drop\n");
                chains.push_str("    udp sport 68 udp dport 67 return\n");
                // As on EC2, the network's resolver and metadata are not filtered.
                if let Ok(gateway) = net.gateway.parse::<Ipv4Addr>() {
                    let _ = writeln!(chains, "    ip daddr {gateway} udp dport 53 return");
                    let _ = writeln!(chains, "    ip daddr {gateway} tcp dport 53 return");
                }
                chains.push_str("    ip daddr 169.254.169.254 tcp dport 80 return\n");
                for r in egress {
                    match TypedRule::parse(r) {
                        Ok(rule) => {
                            if let Some(line) = rule.egress_line() {
                                let _ = writeln!(chains, "    {line}");
                            }
                        }
                        Err(e) => tracing::warn!(instance = %port.instance_id, network = %net.id, error = %e,
                            "left an egress rule out of the host's firewall (it allows nothing); the host's other rules apply"),
                    }
                }
                chains.push_str("    drop\n  }\n");
            }
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
        "table inet nubo {{\n  chain zones {{\n    type filter hook prerouting priority raw; policy accept;\n{zones}  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{egress_jumps}{inet_jumps}  }}\n{chains}}}\n"
    );
    out
}

/// The conntrack zone of a network's packets on this host: its VNI (zones
/// are 16 bits; a VNI above 65535 folds, and shares a zone only with a
/// network 65535 VNIs away).
pub fn ct_zone(vni: u32) -> u16 {
    match u16::try_from(vni) {
        Ok(z) if z > 0 => z,
        _ => (vni % 65535) as u16 + 1,
    }
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
/// masquerade of what the routers send out. Never of what crosses a
/// network's bridge (br_netfilter shows bridged frames to these hooks
/// too): a connection from this host itself to a floating IP reaches the
/// instance from the host's uplink address, and masquerading it on the
/// bridge would drop it.
pub fn render_host_nat(underlay: std::net::Ipv4Addr, forwards: &[Forward]) -> String {
    let mut dnat = String::new();
    for f in forwards {
        let (_, router) = super::uplink_addresses(f.vni);
        let _ = writeln!(dnat, "    ip daddr {underlay} tcp dport {} dnat to {router}:{}", f.host_port, f.host_port);
    }
    format!(
        "table ip nubo_nat {{}}\ndelete table ip nubo_nat\ntable ip nubo_nat {{\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{dnat}  }}\n  chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr 100.64.0.0/10 oifname != \"nu*\" oifname != \"nb*\" masquerade\n  }}\n}}\n"
    )
}

/// A router's NAT: floating IPs 1:1 both ways, forwarded ports on to the
/// instances, masquerade out for the rest. A floating IP or private
/// address that does not parse is left out (logged), as a bad rule is.
pub fn render_router(forwards: &[Forward], floating: &[nubo_api::agent::FloatingNat]) -> String {
    let mut dnat = String::new();
    let mut snat = String::new();
    for f in floating {
        let (Ok(public), Ok(private)) = (f.address.parse::<Ipv4Addr>(), f.private.parse::<Ipv4Addr>()) else {
            tracing::warn!(floating_ip = %f.address.escape_debug(), private = %f.private.escape_debug(),
                "left a floating IP out of the router's NAT: an address does not parse");
            continue;
        };
        let _ = writeln!(dnat, "    iifname \"uplink\" ip daddr {public} dnat to {private}");
        let _ = writeln!(snat, "    oifname \"uplink\" ip saddr {private} snat to {public}");
    }
    for f in forwards {
        let _ =
            writeln!(dnat, "    iifname \"uplink\" tcp dport {} dnat to {}:{}", f.host_port, f.address, f.guest_port);
    }
    format!(
        "table ip nubo_router {{}}\ndelete table ip nubo_router\ntable ip nubo_router {{\n  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n{dnat}  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n{snat}    oifname \"uplink\" masquerade\n  }}\n}}\n"
    )
}

/// A MAC as nft takes it (`52:54:00:0a:0b:0c`), or None.
fn mac_of(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Icmp,
    All,
}

/// A rule in the only form rendered: typed fields, sources merged.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TypedRule {
    protocol: Protocol,
    from_port: u16,
    to_port: u16,
    sources: Vec<Ipv4Net>,
}

/// Why a rule was left out of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RuleError {
    #[error("unknown protocol '{0}' (tcp, udp, icmp or all)")]
    Protocol(String),
    #[error("empty port range {0}-{1}")]
    Ports(u16, u16),
    #[error("source {0}")]
    Source(#[from] nubo_api::cidr::CidrError),
}

impl TypedRule {
    fn parse(r: &FirewallRule) -> Result<Self, RuleError> {
        let protocol = match r.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "all" => Protocol::All,
            other => {
                return Err(RuleError::Protocol(other.chars().take(20).collect::<String>().escape_debug().to_string()))
            }
        };
        if matches!(protocol, Protocol::Tcp | Protocol::Udp) && r.from_port > r.to_port {
            return Err(RuleError::Ports(r.from_port, r.to_port));
        }
        let sources =
            r.sources.iter().map(|s| nubo_api::cidr::parse_rule_cidr(s)).collect::<Result<Vec<Ipv4Net>, _>>()?;
        // nft refuses an anonymous set whose ranges overlap (two groups'
        // members, 10.0.0.0/8 next to 10.1.0.0/16): merge them first.
        Ok(TypedRule { protocol, from_port: r.from_port, to_port: r.to_port, sources: Ipv4Net::aggregate(&sources) })
    }

    /// One accept rule, or None when it can match nothing (no sources).
    fn line(&self) -> Option<String> {
        self.render("saddr", "accept")
    }

    /// One egress rule (its `sources` are destinations): `return` when it
    /// matches, or None when it can match nothing.
    fn egress_line(&self) -> Option<String> {
        self.render("daddr", "return")
    }

    fn render(&self, field: &str, verdict: &str) -> Option<String> {
        if self.sources.is_empty() {
            return None;
        }
        let list = self.sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let sources = format!("ip {field} {{ {list} }}");
        let ports = if self.from_port == self.to_port {
            self.from_port.to_string()
        } else {
            format!("{}-{}", self.from_port, self.to_port)
        };
        Some(match self.protocol {
            Protocol::Tcp => format!("{sources} tcp dport {ports} {verdict}"),
            Protocol::Udp => format!("{sources} udp dport {ports} {verdict}"),
            Protocol::Icmp => format!("{sources} meta l4proto icmp {verdict}"),
            Protocol::All => format!("{sources} {verdict}"),
        })
    }
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
            external: None,
            floating: vec![],
            ports: vec![DesiredPort {
                instance_id: "i-0123456789abcdef0".parse().unwrap(),
                mac: "52:54:00:00:00:01".into(),
                address: "10.20.0.2".into(),
                ingress: rules,
                egress: None,
            }],
            domain: "blue.internal".into(),
            dns: vec![],
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
    fn egress_passes_replies_dhcp_dns_metadata_then_the_rules_then_drops() {
        let mut n = net(vec![]);
        n.ports[0].egress = Some(vec![
            FirewallRule {
                protocol: "tcp".into(),
                from_port: 8080,
                to_port: 8080,
                sources: vec!["10.20.0.0/24".into()],
            },
            FirewallRule { protocol: "all".into(), from_port: 0, to_port: 65535, sources: vec!["192.0.2.0/24".into()] },
            FirewallRule { protocol: "udp".into(), from_port: 53, to_port: 53, sources: vec!["0.0.0.0/+0".into()] },
            FirewallRule { protocol: "icmp".into(), from_port: 0, to_port: 65535, sources: vec![] },
        ]);
        let text = render(&[n], &|_, _| Some("nt1".to_string()));
        // Found by the bridge it came in by and its (anti-spoofed) address,
        // checked before the ingress check of the port it goes to.
        let jump = "iifname \"nb1000\" ip saddr 10.20.0.2 jump egress_nt1";
        let forward = text.split("chain forward {").nth(2).expect("the inet forward chain");
        assert!(forward.find(jump).unwrap() < forward.find("jump port_nt1").unwrap(), "{text}");
        let chain = text.split("chain egress_nt1 {\n").nth(1).unwrap().split("  }\n").next().unwrap();
        assert_eq!(
            chain,
            "    ct state established,related return
    ct state invalid drop
    udp sport 68 udp dport 67 return
    ip daddr 10.20.0.1 udp dport 53 return
    ip daddr 10.20.0.1 tcp dport 53 return
    ip daddr 169.254.169.254 tcp dport 80 return
    ip daddr { 10.20.0.0/24 } tcp dport 8080 return
    ip daddr { 192.0.2.0/24 } return
    drop
",
            "{text}"
        );
        // No egress rules at all: only the always-allowed, then drop.
        let mut closed = net(vec![]);
        closed.ports[0].egress = Some(vec![]);
        let text = render(&[closed], &|_, _| Some("nt1".to_string()));
        let chain = text.split("chain egress_nt1 {\n").nth(1).unwrap().split("  }\n").next().unwrap();
        assert!(chain.ends_with("tcp dport 80 return\n    drop\n") && !chain.contains("daddr {"), "{text}");
        // None (a control plane that sends no egress rules): not filtered.
        let text = render(&[net(vec![])], &|_, _| Some("nt1".to_string()));
        assert!(!text.contains("egress_"), "{text}");
    }

    #[test]
    fn each_network_has_its_own_conntrack_zone() {
        let mut other = net(vec![]);
        other.vni = 1001;
        other.ports.clear();
        let text = render(&[net(vec![]), other], &|_, _| Some("nt1".to_string()));
        let zones = text.split("chain zones {\n").nth(1).unwrap().split("  }\n").next().unwrap();
        assert_eq!(
            zones,
            "    type filter hook prerouting priority raw; policy accept;
    iifname \"nb1000\" ct zone set 1000
    iifname \"nb1001\" ct zone set 1001
"
        );
        assert_eq!((ct_zone(1000), ct_zone(65535), ct_zone(65536), ct_zone(0)), (1000, 65535, 2, 1));
        // Zones and rules are one transaction: one table each, replaced whole.
        assert_eq!(text.matches("delete table inet nubo\n").count(), 1);
        assert_eq!(text.matches("table inet nubo {\n").count(), 1);
    }

    #[test]
    fn forwarded_ports_are_dnat_twice_and_egress_masqueraded() {
        let f = [Forward { vni: 1001, address: "10.20.0.5".into(), guest_port: 80, host_port: 20005 }];
        let host = render_host_nat("192.0.2.1".parse().unwrap(), &f);
        assert!(host.contains("ip daddr 192.0.2.1 tcp dport 20005 dnat to 100.64.0.6:20005"), "{host}");
        assert!(host.contains("ip saddr 100.64.0.0/10 oifname != \"nu*\" oifname != \"nb*\" masquerade"));
        let router = render_router(&f, &[]);
        let floating = [
            nubo_api::agent::FloatingNat {
                address: "192.168.50.102".into(),
                private: "10.20.0.2".into(),
                external: "net-0123456789abcdef1".parse().unwrap(),
            },
            nubo_api::agent::FloatingNat {
                address: "192.168.50.103; flush ruleset".into(),
                private: "10.20.0.3".into(),
                external: "net-0123456789abcdef1".parse().unwrap(),
            },
        ];
        let one_to_one = render_router(&[], &floating);
        assert!(one_to_one.contains("iifname \"uplink\" ip daddr 192.168.50.102 dnat to 10.20.0.2\n"), "{one_to_one}");
        assert!(one_to_one.contains("oifname \"uplink\" ip saddr 10.20.0.2 snat to 192.168.50.102\n"), "{one_to_one}");
        assert!(!one_to_one.contains("flush"), "an address that does not parse is left out: {one_to_one}");
        // The 1:1 translation comes before the masquerade of everything else.
        assert!(one_to_one.find("snat to").unwrap() < one_to_one.find("masquerade").unwrap());
        assert!(router.contains("iifname \"uplink\" tcp dport 20005 dnat to 10.20.0.5:80"), "{router}");
        assert!(router.contains("oifname \"uplink\" masquerade"));
        assert_eq!(
            super::super::uplink_addresses(1000),
            ("100.64.0.1".parse().unwrap(), "100.64.0.2".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_rule_is_left_out_and_the_others_stay() {
        let rule = |protocol: &str, from_port: u16, to_port: u16, sources: &[&str]| FirewallRule {
            protocol: protocol.into(),
            from_port,
            to_port,
            sources: sources.iter().map(|s| s.to_string()).collect(),
        };
        let rules = vec![
            rule("tcp", 22, 22, &["0.0.0.0/+0"]),
            rule("tcp", 23, 23, &["10.0.0.0/8", "0.0.0.0/0 } accept; flush ruleset; #"]),
            rule("tcp", 24, 24, &["::/0"]),
            rule("sctp", 25, 25, &["10.0.0.0/8"]),
            rule("udp", 27, 26, &["10.0.0.0/8"]),
            rule("tcp", 8080, 8080, &["10.20.0.0/24"]),
            // Overlapping and adjacent sources merge into one range.
            rule("udp", 53, 53, &["10.30.0.0/25", "10.30.0.0/24", "10.31.0.0/24", "10.30.1.0/24"]),
        ];
        let text = render(&[net(rules)], &|_, _| Some("nt1".to_string()));
        let chain = text.split("chain port_nt1 {").nth(1).expect("the port's chain");
        assert!(chain.contains("ip saddr { 10.20.0.0/24 } tcp dport 8080 accept"), "{text}");
        assert!(chain.contains("ip saddr { 10.30.0.0/23, 10.31.0.0/24 } udp dport 53 accept"), "{text}");
        for port in ["22", "23", "24", "25", "26", "27"] {
            assert!(!chain.contains(&format!("dport {port} ")), "a bad rule was rendered: {text}");
        }
        assert!(!text.contains("flush") && !text.contains('+') && !text.contains("::"), "{text}");
    }

    #[test]
    fn a_port_with_a_bad_address_is_closed_not_open() {
        let mut n = net(vec![FirewallRule {
            protocol: "all".into(),
            from_port: 0,
            to_port: 65535,
            sources: vec!["0.0.0.0/0".into()],
        }]);
        n.ports[0].address = "10.20.0.2 }; flush ruleset".into();
        let text = render(&[n], &|_, _| Some("nt1".to_string()));
        assert!(text.contains("iifname \"nt1\" drop") && text.contains("oifname \"nt1\" drop"), "{text}");
        assert!(!text.contains("flush") && !text.contains("port_nt1"), "{text}");
    }

    #[test]
    fn ports_not_plugged_here_get_nothing() {
        let text = render(&[net(vec![])], &|_, _| None);
        assert!(!text.contains("port_"), "{text}");
        assert!(text.starts_with("table bridge nubo {}\ndelete table bridge nubo\n"));
    }
}
