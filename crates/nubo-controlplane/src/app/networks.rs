//! Networks and security groups: a project's private networks (its
//! default network, made on first use, among them; and the EC2 API's
//! view of each as a VPC with one subnet), and the firewall groups that
//! say what may reach its instances on them, with the check of a rule's
//! CIDR that the REST API and the EC2 API share.
//! Changes here change what hosts run (bridges, DHCP, nftables), so each
//! rule change ends by waking the agents.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::networks::{Cidr, CreateError, NetworkRow};
use crate::security_groups::{DeleteOutcome, NewRule, RuleError, SecurityGroupRow};
use crate::{validate, Ctx};
use nubo_api::ids::NetworkId;
use nubo_api::params::{NetworkCreate, SecurityGroupCreate, SecurityGroupRuleCreate};
use nubo_api::views::{Network, NetworkPort, SecurityGroup, SecurityGroupRule};
use std::sync::Arc;

async fn network_view(ctx: &Ctx, caller: &Caller, n: NetworkRow) -> AppResult<Network> {
    let mut ports = ctx.store.network_ports(Some(&n.id)).await?;
    // An external network is shared: a project sees only its own
    // instances on it, never another tenant's addresses.
    if n.is_external() && !caller.admin {
        let mut mine = Vec::new();
        for p in ports {
            let owner = ctx.store.instance(&p.instance_id).await?.and_then(|i| i.project_id);
            if owner.is_some() && owner == caller.project_id {
                mine.push(p);
            }
        }
        ports = mine;
    }
    let ports = ports
        .into_iter()
        .map(|p| {
            Ok(NetworkPort {
                instance_id: p.instance_id.parse().map_err(AppError::internal)?,
                address: p.address,
                mac: p.mac,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok(Network {
        id: n.id.parse().map_err(AppError::internal)?,
        name: n.name,
        project_id: n.project_id.parse().map_err(AppError::internal)?,
        cidr: n.cidr,
        gateway: n.gateway,
        vni: n.vni as u32,
        ports,
        created_at_ms: n.created_at_ms,
        external: match (&n.external_interface, &n.pool_start, &n.pool_end) {
            (Some(interface), Some(start), Some(end)) => Some(nubo_api::views::ExternalNetwork {
                interface: interface.clone(),
                vlan: n.vlan.and_then(|v| u16::try_from(v).ok()),
                pool_start: start.clone(),
                pool_end: end.clone(),
                auto_assign: n.auto_assign == 1,
            }),
            _ => None,
        },
        is_default: n.is_default == 1,
        // Filled by `app::tags::fill` where a view is answered.
        tags: Default::default(),
    })
}

/// A network (by id or, in the caller's project, by name) the caller may access.
pub async fn load_network(ctx: &Ctx, caller: &Caller, reference: &str, access: Access) -> AppResult<NetworkRow> {
    let by_id = ctx.store.network(reference).await?;
    let row = match (by_id, &caller.project_id) {
        (Some(n), _) => Some(n),
        (None, Some(project)) => ctx.store.network_by_ref(project, reference).await?,
        (None, None) => None,
    }
    .ok_or(AppError::NotFound { kind: "network", id: reference.chars().take(64).collect() })?;
    // Every project sees and uses external networks; only operators change them.
    if row.is_external() && access == Access::Read {
        return Ok(row);
    }
    if row.is_external() && !caller.admin {
        return Err(AppError::Forbidden(format!(
            "network {} is external: only an operator may change or delete it",
            row.name
        )));
    }
    authz::check(caller, access, Some(&row.project_id), "network", &row.id)?;
    Ok(row)
}

/// The networks the caller may see.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Network>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for n in ctx.store.networks(project.as_deref()).await? {
        out.push(network_view(ctx, caller, n).await?);
    }
    Ok(out)
}

/// Checks a new network's name: valid, and not the one a launch names
/// to ask for user-mode networking.
fn check_name(name: &str) -> AppResult<()> {
    validate::name(name)?;
    if name == crate::networks::USER_MODE {
        return Err(AppError::BadRequest(format!(
            "the network name '{name}' is reserved: a launch with `--network {name}` asks for user-mode networking; pick another name"
        )));
    }
    Ok(())
}

/// Inserts a network, retrying when a concurrent create took the VXLAN
/// id first (a name taken is the caller's to resolve).
async fn insert(
    ctx: &Ctx,
    id: &NetworkId,
    project: &str,
    name: &str,
    cidr: Cidr,
    has_subnet: bool,
) -> AppResult<NetworkRow> {
    for _ in 0..5 {
        match ctx.store.insert_network(id, project, name, cidr, false, has_subnet).await {
            Ok(row) => {
                tracing::info!(network = %row.id, cidr = %row.cidr, vni = row.vni, "network created");
                return Ok(row);
            }
            Err(CreateError::Raced) => continue,
            Err(e @ CreateError::Duplicate(_)) => {
                return Err(AppError::Conflict(format!("{e}: pick another name, or use that one")))
            }
            Err(CreateError::Db(e)) => return Err(e.into()),
        }
    }
    Err(AppError::Unavailable("concurrent requests kept creating networks at the same time; retry".into()))
}

/// Creates a private network: an IPv4 range whose first address is the
/// gateway; or, for an operator, an external one (see [`create_external`]).
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: NetworkCreate) -> AppResult<Network> {
    let project = authz::creation_project(caller)?;
    check_name(&p.name)?;
    let cidr = Cidr::parse_network(&p.cidr).map_err(AppError::BadRequest)?;
    if let Some(external) = &p.external {
        return create_external(ctx, caller, &project, &p.name, cidr, external).await;
    }
    let row = insert(ctx, &NetworkId::generate(), &project, &p.name, cidr, true).await?;
    network_view(ctx, caller, row).await
}

/// An external (provider) network: the hosts' LAN or one of its VLANs,
/// which each host maps by name to an interface. Its gateway is the LAN's
/// router; its pool is what Nubo hands out, to instances attached
/// directly and as floating IPs.
async fn create_external(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    project: &str,
    name: &str,
    cidr: Cidr,
    e: &nubo_api::params::ExternalNetworkCreate,
) -> AppResult<Network> {
    if !caller.admin {
        return Err(AppError::Forbidden(
            "only an operator may create an external network: it bridges instances onto the hosts' own LAN".into(),
        ));
    }
    validate::name(&e.interface).map_err(|_| {
        AppError::BadRequest(format!(
            "interface name '{}' is not valid: use the name hosts map with `nubo agent --external NAME=IFACE`",
            e.interface.chars().take(64).collect::<String>()
        ))
    })?;
    if let Some(vlan) = e.vlan {
        if !(1..=4094).contains(&vlan) {
            return Err(AppError::BadRequest(format!("VLAN {vlan} is out of range: use 1 to 4094")));
        }
    }
    // Any address of the range but its network and broadcast addresses.
    let (first, size) = (u32::from(cidr.network()), 1u32 << (32 - u32::from(cidr.len)));
    let inside = |a: std::net::Ipv4Addr| u32::from(a) > first && u32::from(a) < first + size - 1;
    let gateway: std::net::Ipv4Addr = e.gateway.parse().map_err(|_| {
        AppError::BadRequest(format!(
            "gateway '{}' is not an IPv4 address",
            e.gateway.chars().take(64).collect::<String>()
        ))
    })?;
    if !inside(gateway) {
        return Err(AppError::BadRequest(format!("gateway {gateway} is not inside {}/{}", cidr.network(), cidr.len)));
    }
    let (start, end) = e
        .pool
        .split_once('-')
        .and_then(|(a, b)| {
            Some((a.trim().parse::<std::net::Ipv4Addr>().ok()?, b.trim().parse::<std::net::Ipv4Addr>().ok()?))
        })
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "pool '{}' is not FIRST-LAST: write it as 192.168.50.100-192.168.50.199",
                e.pool.chars().take(64).collect::<String>()
            ))
        })?;
    if !inside(start) || !inside(end) || u32::from(start) >= u32::from(end) {
        return Err(AppError::BadRequest(format!(
            "pool {start}-{end} must be at least two addresses of {}/{}, first before last",
            cidr.network(),
            cidr.len
        )));
    }
    if (u32::from(start)..=u32::from(end)).contains(&u32::from(gateway)) {
        return Err(AppError::BadRequest(format!("gateway {gateway} is inside the pool {start}-{end}: keep it out")));
    }
    let row = NetworkRow {
        id: nubo_api::ids::NetworkId::generate().to_string(),
        project_id: project.to_string(),
        name: name.to_string(),
        cidr: format!("{}/{}", cidr.network(), cidr.len),
        gateway: gateway.to_string(),
        vni: 0,
        created_at_ms: crate::store::now_ms(),
        external_interface: Some(e.interface.clone()),
        vlan: e.vlan.map(i64::from),
        pool_start: Some(start.to_string()),
        pool_end: Some(end.to_string()),
        is_default: 0,
        // Not an EC2 subnet: instances attach to it directly or through floating IPs.
        has_subnet: 0,
        auto_assign: i64::from(e.auto_assign),
    };
    if e.auto_assign {
        if let Some(other) = ctx.store.auto_assign_network().await? {
            return Err(AppError::Conflict(format!(
                "external network {} already assigns addresses automatically, and only one may: delete it (`nubo network delete {}`) or create this one without --auto-assign",
                other.name, other.name
            )));
        }
    }
    let row = ctx.store.create_external_network(&row).await.map_err(|e| match e {
        CreateError::Duplicate(_) => AppError::Conflict(format!("{e}: pick another name")),
        CreateError::Raced => AppError::Conflict("another network was created at the same moment; retry".into()),
        CreateError::Db(e) => e.into(),
    })?;
    tracing::info!(network = %row.id, cidr = %row.cidr, interface = ?row.external_interface, vlan = ?row.vlan, "external network created");
    network_view(ctx, caller, row).await
}

/// `nubo up`'s host network: the external network `name` on the
/// machine's own bridge (interface name `name` too), made at the first
/// start. It assigns addresses automatically unless another network
/// already does (an operator who made their LAN do it keeps that). A
/// network by that name already there is left as it is: None.
pub async fn ensure_host_network(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    name: &str,
    cidr: &str,
    gateway: &str,
    pool: &str,
) -> AppResult<Option<Network>> {
    let exists = ctx.store.networks(None).await?.into_iter().any(|n| n.is_external() && n.name == name);
    if exists {
        return Ok(None);
    }
    let auto_assign = ctx.store.auto_assign_network().await?.is_none();
    let external = nubo_api::params::ExternalNetworkCreate {
        interface: name.to_string(),
        vlan: None,
        gateway: gateway.to_string(),
        pool: pool.to_string(),
        auto_assign,
    };
    let p = NetworkCreate { name: name.to_string(), cidr: cidr.to_string(), external: Some(external) };
    create(ctx, caller, p).await.map(Some)
}

/// The project's default network, made now if it has none: named
/// `default` (or `default-2`... when the project already has a network of
/// its own by that name), range [`crate::networks::DEFAULT_CIDR`]. Two
/// launches that make it at once both end up with the one that was
/// inserted first: the store allows one default per project, and the
/// loser reads the winner's.
pub async fn ensure_default(ctx: &Ctx, project: &str) -> AppResult<NetworkRow> {
    let cidr = Cidr::parse_network(crate::networks::DEFAULT_CIDR).map_err(AppError::internal)?;
    for _ in 0..5 {
        if let Some(row) = ctx.store.default_network(project).await? {
            return Ok(row);
        }
        let taken: Vec<String> = ctx.store.networks(Some(project)).await?.into_iter().map(|n| n.name).collect();
        let name = std::iter::once(crate::networks::DEFAULT_NAME.to_string())
            .chain((2..100).map(|i| format!("{}-{i}", crate::networks::DEFAULT_NAME)))
            .find(|n| !taken.contains(n))
            .ok_or_else(|| {
                AppError::Conflict("the project has networks named default to default-99; rename some".into())
            })?;
        match ctx.store.insert_network(&NetworkId::generate(), project, &name, cidr, true, true).await {
            Ok(row) => {
                tracing::info!(network = %row.id, %project, cidr = %row.cidr, "default network created");
                return Ok(row);
            }
            // Another launch made it (or took the name or VXLAN id): read again.
            Err(CreateError::Raced | CreateError::Duplicate(_)) => continue,
            Err(CreateError::Db(e)) => return Err(e.into()),
        }
    }
    Err(AppError::Unavailable("concurrent requests kept creating the default network; retry".into()))
}

/// The networks of the caller's project, as rows (the EC2 API's VPCs);
/// `with_default` makes the default network first if there is none.
pub async fn project_networks(ctx: &Ctx, caller: &Caller, with_default: bool) -> AppResult<Vec<NetworkRow>> {
    let project = authz::caller_project(caller)?;
    if with_default {
        ensure_default(ctx, &project).await?;
    }
    // External networks are listed for every project but are none's VPC.
    Ok(ctx.store.networks(Some(&project)).await?.into_iter().filter(|n| !n.is_external()).collect())
}

/// Creates a network in the caller's project with its id chosen by the
/// caller (the EC2 API names it after its VPC id), with or without its
/// one subnet. `name` absent, invalid or taken: the network is named
/// `fallback` instead (EC2's Name tag need not be unique; a network's
/// name must).
pub async fn create_with_id(
    ctx: &Ctx,
    caller: &Caller,
    id: &NetworkId,
    name: Option<&str>,
    fallback: &str,
    cidr: &str,
    has_subnet: bool,
) -> AppResult<NetworkRow> {
    let project = authz::creation_project(caller)?;
    let cidr = Cidr::parse_network(cidr).map_err(AppError::BadRequest)?;
    if let Some(name) = name.filter(|n| check_name(n).is_ok()) {
        match insert(ctx, id, &project, name, cidr, has_subnet).await {
            Err(AppError::Conflict(_)) => {}
            other => return other,
        }
    }
    insert(ctx, id, &project, fallback, cidr, has_subnet).await
}

/// Makes (`present`) or removes the network's one subnet. Removing it is
/// refused while instances are on the network; making it twice, or
/// removing it when it is not there, is a conflict.
pub async fn set_subnet(ctx: &Ctx, caller: &Caller, id: &str, present: bool) -> AppResult<NetworkRow> {
    let n = load_network(ctx, caller, id, Access::Write).await?;
    if !present {
        let users = instances_on(ctx, &n.id).await?;
        if !users.is_empty() {
            return Err(AppError::Conflict(format!(
                "network {} has instances attached ({}); terminate them first",
                n.name,
                users.join(", ")
            )));
        }
    }
    if !ctx.store.set_network_subnet(&n.id, present).await? {
        return Err(AppError::Conflict(if present {
            format!("network {} already has its subnet: a network has one subnet, of its own range", n.name)
        } else {
            format!("network {} has no subnet", n.name)
        }));
    }
    load_network(ctx, caller, &n.id, Access::Read).await
}

/// The instances (not terminated) attached to a network.
pub async fn instances_on(ctx: &Ctx, network: &str) -> AppResult<Vec<String>> {
    Ok(ctx.store.network_ports(Some(network)).await?.into_iter().map(|p| p.instance_id).collect())
}

/// One network, by id or name, with the instances on it.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Network> {
    let n = load_network(ctx, caller, id, Access::Read).await?;
    network_view(ctx, caller, n).await
}

/// Deletes a network no instance is attached to.
pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let n = load_network(ctx, caller, id, Access::Write).await?;
    let users = ctx.store.delete_network(&n.id).await?;
    if !users.is_empty() {
        return Err(AppError::Conflict(format!(
            "network {} has instances attached ({}); terminate them first",
            n.name,
            users.join(", ")
        )));
    }
    // The EC2 API's tags of its VPC and subnet go with it.
    let (vpc, subnet) = crate::networks::ec2_ids(&n.id);
    ctx.store.delete_tags(&[vpc, subnet], &[]).await?;
    Ok(())
}

async fn group_view(ctx: &Ctx, g: SecurityGroupRow) -> AppResult<SecurityGroup> {
    let rules = ctx
        .store
        .security_group_rules_of(&g.id)
        .await?
        .into_iter()
        .map(|r| {
            Ok(SecurityGroupRule {
                id: r.id.parse().map_err(AppError::internal)?,
                direction: r.direction,
                protocol: r.protocol,
                from_port: r.from_port,
                to_port: r.to_port,
                cidr: r.cidr,
                source_group_id: r.source_group_id,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok(SecurityGroup {
        id: g.id.parse().map_err(AppError::internal)?,
        name: g.name,
        description: g.description,
        project_id: g.project_id.parse().map_err(AppError::internal)?,
        rules,
        // Filled by `app::tags::fill` where a view is answered.
        tags: Default::default(),
    })
}

/// A group (by id or, in the caller's project, by name) the caller may access.
pub async fn load_group(ctx: &Ctx, caller: &Caller, reference: &str, access: Access) -> AppResult<SecurityGroupRow> {
    let row = match (ctx.store.security_group(reference).await?, &caller.project_id) {
        (Some(g), _) => Some(g),
        (None, Some(project)) => {
            if reference == crate::security_groups::DEFAULT_GROUP {
                Some(ctx.store.ensure_default_security_group(project).await?)
            } else {
                ctx.store.security_group_by_name(project, reference).await?
            }
        }
        (None, None) => None,
    }
    .ok_or(AppError::NotFound { kind: "security group", id: reference.chars().take(64).collect() })?;
    authz::check(caller, access, Some(&row.project_id), "security group", &row.id)?;
    Ok(row)
}

/// The security groups the caller may see, with their rules (a project's
/// default group is made on first sight).
pub async fn list_groups(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<SecurityGroup>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    if let Some(p) = &project {
        ctx.store.ensure_default_security_group(p).await?;
    }
    let mut out = Vec::new();
    for g in ctx.store.security_groups(project.as_deref()).await? {
        out.push(group_view(ctx, g).await?);
    }
    Ok(out)
}

/// Creates a security group (no rules: nothing may come in until a rule says so).
pub async fn create_group(ctx: &Arc<Ctx>, caller: &Caller, p: SecurityGroupCreate) -> AppResult<SecurityGroup> {
    let project = authz::creation_project(caller)?;
    validate::name(&p.name)?;
    let g =
        ctx.store.create_security_group(&project, &p.name, &p.description, None).await?.ok_or_else(|| {
            AppError::Conflict(format!("the project already has a security group named '{}'", p.name))
        })?;
    group_view(ctx, g).await
}

/// Lets traffic in: applied on every host at once (running instances
/// included), as nftables rules on their ports.
pub async fn add_rule(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    id: &str,
    p: SecurityGroupRuleCreate,
) -> AppResult<SecurityGroup> {
    let g = load_group(ctx, caller, id, Access::Write).await?;
    let rule = new_rule(ctx, caller, &g, &p).await?;
    ctx.store.add_security_group_rules(&g.id, &[rule]).await.map_err(|e| match e {
        RuleError::Duplicate => AppError::Conflict(format!("security group {} already has this rule", g.name)),
        RuleError::Db(e) => e.into(),
    })?;
    ctx.bump();
    group_view(ctx, g).await
}

/// A rule's CIDR as stored: checked, then canonical (`10.0.0.7/24` is
/// stored `10.0.0.0/24`). The host's nftables ruleset is rendered from
/// it, and one bad rule would stop it for all. The REST API and the EC2
/// API both store rules through this; each words the error its own way.
pub fn rule_cidr(c: &str) -> Result<String, nubo_api::cidr::CidrError> {
    let net = nubo_api::cidr::parse_rule_cidr(c)?;
    Ok(nubo_api::cidr::canonical(&net))
}

/// Checks a rule as the user wrote it.
async fn new_rule(ctx: &Ctx, caller: &Caller, g: &SecurityGroupRow, p: &SecurityGroupRuleCreate) -> AppResult<NewRule> {
    let protocol = match p.protocol.as_str() {
        "tcp" | "udp" | "icmp" => p.protocol.clone(),
        "all" | "-1" => "-1".to_string(),
        other => {
            return Err(AppError::BadRequest(format!(
                "protocol '{}' is unknown: use tcp, udp, icmp or all",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    let (from_port, to_port) = if matches!(protocol.as_str(), "tcp" | "udp") {
        let from = p.from_port.ok_or_else(|| AppError::BadRequest(format!("a {protocol} rule needs a port")))?;
        let to = p.to_port.unwrap_or(from);
        if to < from {
            return Err(AppError::BadRequest(format!("the port range {from}-{to} is empty: write it low-high")));
        }
        (i64::from(from), i64::from(to))
    } else {
        (-1, -1)
    };
    let (cidr, source_group_id) = match (&p.cidr, &p.source_group) {
        (Some(c), None) => (Some(rule_cidr(c).map_err(|e| AppError::BadRequest(e.to_string()))?), None),
        (None, Some(s)) => {
            let src = load_group(ctx, caller, s, Access::Read).await?;
            if src.project_id != g.project_id {
                return Err(AppError::BadRequest("the source group must be in the same project".into()));
            }
            (None, Some(src.id))
        }
        _ => return Err(AppError::BadRequest("give a rule either a cidr or a source_group (one of them)".into())),
    };
    Ok(NewRule {
        direction: if p.egress { "egress" } else { "ingress" },
        protocol,
        from_port,
        to_port,
        cidr,
        source_group_id,
        description: String::new(),
    })
}

/// Removes a rule: connections it let in that are open stay, new ones are refused.
pub async fn delete_rule(ctx: &Arc<Ctx>, caller: &Caller, id: &str, rule: &str) -> AppResult<SecurityGroup> {
    let g = load_group(ctx, caller, id, Access::Write).await?;
    if !ctx.store.delete_security_group_rule(&g.id, rule).await? {
        return Err(AppError::NotFound { kind: "security group rule", id: rule.chars().take(64).collect() });
    }
    ctx.bump();
    group_view(ctx, g).await
}

/// Deletes a security group that no instance (not terminated) is in and
/// no other group's rule names; a project's default group stays.
pub async fn delete_group(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let g = load_group(ctx, caller, id, Access::Write).await?;
    match ctx.store.delete_security_group(&g).await? {
        DeleteOutcome::Deleted => Ok(()),
        DeleteOutcome::IsDefault => Err(AppError::Conflict(format!(
            "security group {} is the project's default group, which instances join when no group is named; it cannot be deleted",
            g.name
        ))),
        DeleteOutcome::InUse(i) => Err(AppError::Conflict(format!(
            "security group {} has instances in it ({}); terminate them first",
            g.name,
            i.join(", ")
        ))),
        DeleteOutcome::Referenced(r) => Err(AppError::Conflict(format!(
            "rules of security groups {} name {} as their source; delete those rules first",
            r.join(", "),
            g.name
        ))),
    }
}
