//! Networks and security groups: a project's private networks, and the
//! firewall groups that say what may reach its instances on them, with
//! the check of a rule's CIDR that the REST API and the EC2 API share.
//! Changes here change what hosts run (bridges, DHCP, nftables), so each
//! rule change ends by waking the agents.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::networks::{Cidr, CreateError, NetworkRow};
use crate::security_groups::{NewRule, RuleError, SecurityGroupRow};
use crate::{validate, Ctx};
use nubo_api::params::{NetworkCreate, SecurityGroupCreate, SecurityGroupRuleCreate};
use nubo_api::views::{Network, NetworkPort, SecurityGroup, SecurityGroupRule};
use std::sync::Arc;

async fn network_view(ctx: &Ctx, n: NetworkRow) -> AppResult<Network> {
    let ports = ctx
        .store
        .network_ports(Some(&n.id))
        .await?
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
    authz::check(caller, access, Some(&row.project_id), "network", &row.id)?;
    Ok(row)
}

/// The networks the caller may see.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Network>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for n in ctx.store.networks(project.as_deref()).await? {
        out.push(network_view(ctx, n).await?);
    }
    Ok(out)
}

/// Creates a private network: an IPv4 range whose first address is the gateway.
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: NetworkCreate) -> AppResult<Network> {
    let project = authz::creation_project(caller)?;
    validate::name(&p.name)?;
    let cidr = Cidr::parse_network(&p.cidr).map_err(AppError::BadRequest)?;
    let row = ctx.store.create_network(&project, &p.name, cidr).await.map_err(|e| match e {
        CreateError::Duplicate(_) => AppError::Conflict(format!("{e}: pick another name, or use that one")),
        CreateError::Db(e) => e.into(),
    })?;
    tracing::info!(network = %row.id, cidr = %row.cidr, vni = row.vni, "network created");
    network_view(ctx, row).await
}

/// One network, by id or name, with the instances on it.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Network> {
    let n = load_network(ctx, caller, id, Access::Read).await?;
    network_view(ctx, n).await
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
        ctx.store.create_security_group(&project, &p.name, &p.description).await?.ok_or_else(|| {
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
