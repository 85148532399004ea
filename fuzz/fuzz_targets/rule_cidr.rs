//! Security-group rule CIDRs and rules, as a tenant may type them and as
//! a host's desired state may carry them: arbitrary text through
//! `nubo_api::cidr::parse_rule_cidr`, and arbitrary rules through the
//! agent's firewall renderer. No panic; whatever parses has a canonical
//! form that parses back to itself; and the rendered ruleset never holds
//! a character that a parsed rule could not produce (no tenant text).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_api::agent::{DesiredNetwork, DesiredPort, FirewallRule};
use nubo_api::cidr::{canonical, parse_rule_cidr};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut sources = Vec::new();
    for piece in text.split(',') {
        if let Ok(net) = parse_rule_cidr(piece) {
            let c = canonical(&net);
            assert!(c.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/'), "{c}");
            assert_eq!(parse_rule_cidr(&c), Ok(net), "the canonical form does not parse back");
            assert_eq!(net.network(), net.addr(), "host bits kept: {c}");
        } else {
            let _ = parse_rule_cidr(piece).map_err(|e| e.to_string());
        }
        sources.push(piece.to_string());
    }
    // The first bytes choose the protocol and ports; every piece is a source.
    let b = |i: usize| data.get(i).copied().unwrap_or(0);
    let protocol = ["tcp", "udp", "icmp", "all", "-1", "sctp"][usize::from(b(0)) % 6].to_string();
    let rule = FirewallRule {
        protocol,
        from_port: u16::from_le_bytes([b(1), b(2)]),
        to_port: u16::from_le_bytes([b(3), b(4)]),
        sources,
    };
    let net = DesiredNetwork {
        id: "net-0123456789abcdef0".parse().expect("net id"),
        vni: 1000,
        cidr: "10.20.0.0/24".into(),
        gateway: "10.20.0.1".into(),
        peers: vec![],
        ports: vec![DesiredPort {
            instance_id: "i-0123456789abcdef0".parse().expect("instance id"),
            mac: "52:54:00:00:00:01".into(),
            address: "10.20.0.2".into(),
            // The same tenant text as an inbound and an outbound rule.
            ingress: vec![rule.clone()],
            egress: Some(vec![rule]),
        }],
        external: None,
        floating: vec![],
        domain: String::new(),
        dns: vec![],
    };
    let ruleset = nubo_agent::network::firewall::render(&[net], &|_, _| Some("nt1".to_string()));
    let chain = ruleset.split("chain port_nt1 {").nth(1).expect("the port's chain");
    assert!(
        chain.bytes().all(|c| c.is_ascii_alphanumeric() || b" \n.,/{}-_".contains(&c)),
        "tenant text reached the ruleset:\n{ruleset}"
    );
});
