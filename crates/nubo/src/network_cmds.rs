//! Client commands for private networks and security groups.

use crate::cli::Conn;
use crate::cli::{FloatingIpCmd, NetworkCmd, SecurityGroupCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use nubo_api::params::{
    ExternalNetworkCreate, FloatingIpAssociate, FloatingIpCreate, NetworkCreate, SecurityGroupCreate,
    SecurityGroupRuleCreate,
};
use nubo_api::views::{FloatingIp, Network, SecurityGroup};

fn print_networks(nets: &[Network]) {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.name.clone(),
                n.cidr.clone(),
                n.gateway.clone(),
                n.vni.to_string(),
                n.ports.len().to_string(),
                match &n.external {
                    Some(e) => format!(
                        "external {}{} pool {}-{}{}",
                        e.interface,
                        e.vlan.map(|v| format!(" vlan {v}")).unwrap_or_default(),
                        e.pool_start,
                        e.pool_end,
                        if e.auto_assign { " (auto-assign)" } else { "" }
                    ),
                    None if n.is_default => "private (default)".into(),
                    None => "private".into(),
                },
            ]
        })
        .collect();
    table(&["ID", "NAME", "CIDR", "GATEWAY", "VNI", "INSTANCES", "KIND"], &rows);
}

pub async fn network(cmd: NetworkCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create { name, cidr, external, interface, vlan, gateway, pool, auto_assign } => {
            let external = match (external, interface, gateway, pool) {
                (true, Some(interface), Some(gateway), Some(pool)) => {
                    Some(ExternalNetworkCreate { interface, vlan, gateway, pool, auto_assign })
                }
                _ => None,
            };
            let n = client(conn)?.create_network(&NetworkCreate { name, cidr, external }).await?;
            emit(conn.output, &n, |n| println!("{}", n.id))
        }
        NetworkCmd::List { filter } => {
            let nets: Vec<Network> = {
                let c = client(conn)?;
                if filter.is_empty() {
                    c.networks().await?
                } else {
                    c.list_tagged("/api/v1/networks", &crate::tag_cmds::tag_filters(&filter)?).await?
                }
            };
            emit(conn.output, &nets, |n| print_networks(n))
        }
        NetworkCmd::Show { network } => {
            let n = client(conn)?.network(&network).await?;
            emit(conn.output, &n, |n| {
                print_networks(std::slice::from_ref(n));
                println!();
                let rows: Vec<Vec<String>> =
                    n.ports.iter().map(|p| vec![p.instance_id.to_string(), p.address.clone(), p.mac.clone()]).collect();
                table(&["INSTANCE", "ADDRESS", "MAC"], &rows);
            })
        }
        NetworkCmd::Delete { network } => {
            client(conn)?.delete_network(&network).await?;
            Ok(())
        }
    }
}

fn print_groups(groups: &[SecurityGroup]) {
    let mut rows = Vec::new();
    for g in groups {
        if g.rules.is_empty() {
            rows.push(vec![g.id.to_string(), g.name.clone(), "-".into(), String::new(), String::new(), String::new()]);
        }
        for r in &g.rules {
            let ports = match (r.from_port, r.to_port) {
                (-1, _) => "all".to_string(),
                (a, b) if a == b => a.to_string(),
                (a, b) => format!("{a}-{b}"),
            };
            let from = r.cidr.clone().or(r.source_group_id.clone()).unwrap_or_default();
            let proto = if r.protocol == "-1" { "all".to_string() } else { r.protocol.clone() };
            rows.push(vec![
                g.id.to_string(),
                g.name.clone(),
                r.id.to_string(),
                format!("{} {proto}", r.direction),
                ports,
                from,
            ]);
        }
    }
    table(&["GROUP", "NAME", "RULE", "TRAFFIC", "PORTS", "FROM"], &rows);
}

pub async fn security_group(cmd: SecurityGroupCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        SecurityGroupCmd::Create { name, description } => {
            let g = client(conn)?.create_security_group(&SecurityGroupCreate { name, description }).await?;
            emit(conn.output, &g, |g| println!("{}", g.id))
        }
        SecurityGroupCmd::List { filter } => {
            let groups: Vec<SecurityGroup> = {
                let c = client(conn)?;
                if filter.is_empty() {
                    c.security_groups().await?
                } else {
                    c.list_tagged("/api/v1/security-groups", &crate::tag_cmds::tag_filters(&filter)?).await?
                }
            };
            emit(conn.output, &groups, |g| print_groups(g))
        }
        SecurityGroupCmd::Allow { group, protocol, port, cidr, source_group, egress } => {
            let (from_port, to_port) = match port.as_deref() {
                None => (None, None),
                Some(p) => match p.split_once('-') {
                    Some((a, b)) => (Some(parse_port(a)?), Some(parse_port(b)?)),
                    None => (Some(parse_port(p)?), None),
                },
            };
            // Refused here with the server's words, before anything is sent.
            let cidr = cidr
                .map(|c| nubo_api::cidr::parse_rule_cidr(&c).map(|n| nubo_api::cidr::canonical(&n)))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--cidr: {e}"))?;
            let rule = SecurityGroupRuleCreate { protocol, from_port, to_port, cidr, source_group, egress };
            let g = client(conn)?.add_security_group_rule(&group, &rule).await?;
            emit(conn.output, &g, |g| print_groups(std::slice::from_ref(g)))
        }
        SecurityGroupCmd::Revoke { group, rule } => {
            let g = client(conn)?.delete_security_group_rule(&group, &rule).await?;
            emit(conn.output, &g, |g| print_groups(std::slice::from_ref(g)))
        }
    }
}

fn parse_port(s: &str) -> anyhow::Result<u16> {
    s.trim().parse().map_err(|_| anyhow::anyhow!("'{s}' is not a port: use a number 1-65535 or a range LOW-HIGH"))
}

fn print_floating_ips(ips: &[FloatingIp]) {
    let rows: Vec<Vec<String>> = ips
        .iter()
        .map(|f| {
            vec![
                f.id.to_string(),
                f.address.clone(),
                f.network.clone(),
                f.instance_id.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into()),
                f.private_address.clone().unwrap_or_else(|| "-".into()),
                // An automatic address is the instance's (see `--auto-assign`).
                if f.auto_assigned { "instance's (automatic)" } else { "project's" }.into(),
            ]
        })
        .collect();
    table(&["ID", "ADDRESS", "NETWORK", "INSTANCE", "PRIVATE ADDRESS", "HELD BY"], &rows);
}

pub async fn floating_ip(cmd: FloatingIpCmd, conn: &Conn) -> anyhow::Result<()> {
    let c = client(conn)?;
    match cmd {
        FloatingIpCmd::Allocate { network } => {
            let f = c.allocate_floating_ip(&FloatingIpCreate { network }).await?;
            emit(conn.output, &f, |f| println!("{} {}", f.id, f.address))
        }
        FloatingIpCmd::List { filter } => {
            let ips: Vec<FloatingIp> = {
                if filter.is_empty() {
                    c.floating_ips().await?
                } else {
                    c.list_tagged("/api/v1/floating-ips", &crate::tag_cmds::tag_filters(&filter)?).await?
                }
            };
            emit(conn.output, &ips, |ips| print_floating_ips(ips))
        }
        FloatingIpCmd::Show { floating_ip } => {
            let f = c.floating_ip(&floating_ip).await?;
            emit(conn.output, &f, |f| print_floating_ips(std::slice::from_ref(f)))
        }
        FloatingIpCmd::Associate { floating_ip, instance } => {
            let f = c.associate_floating_ip(&floating_ip, &FloatingIpAssociate { instance }).await?;
            emit(conn.output, &f, |f| print_floating_ips(std::slice::from_ref(f)))
        }
        FloatingIpCmd::Disassociate { floating_ip } => {
            let f = c.disassociate_floating_ip(&floating_ip).await?;
            emit(conn.output, &f, |f| print_floating_ips(std::slice::from_ref(f)))
        }
        FloatingIpCmd::Release { floating_ip } => {
            c.release_floating_ip(&floating_ip).await?;
            Ok(())
        }
    }
}
