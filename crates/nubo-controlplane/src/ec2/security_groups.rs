//! EC2 security groups: CreateSecurityGroup, DescribeSecurityGroups,
//! Authorize/RevokeSecurityGroupIngress, Authorize/RevokeSecurityGroupEgress
//! (stored as egress rules, with a destination CIDR or group) and
//! DeleteSecurityGroup, on the
//! project's groups (`crate::security_groups`), and the groups a
//! RunInstances names. Rules are checked here (protocol, ports, CIDR or a
//! source group of the same project) and stored for the enforcement that
//! comes later.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Page, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::security_groups::{DeleteOutcome, NewRule, RuleError, RuleRow, SecurityGroupRow};
use crate::Ctx;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

fn parse_group_id(id: &str) -> Ec2Result<()> {
    id.parse::<nubo_api::ids::SecurityGroupId>().map(|_| ()).map_err(|_| {
        Ec2Error::bad(
            "InvalidGroupId.Malformed",
            format!("Invalid id: \"{}\" (expected sg- and 17 hex digits)", id.chars().take(64).collect::<String>()),
        )
    })
}

fn group_not_found(what: &str) -> Ec2Error {
    Ec2Error::bad(
        "InvalidGroup.NotFound",
        format!("The security group '{}' does not exist", what.chars().take(64).collect::<String>()),
    )
}

/// Loads a group by id that the caller may access.
pub async fn load(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> Ec2Result<SecurityGroupRow> {
    parse_group_id(id)?;
    let g = ctx.store.security_group(id).await?.ok_or_else(|| group_not_found(id))?;
    authz::check(caller, access, Some(&g.project_id), "security group", id).map_err(|e| match e {
        crate::error::AppError::NotFound { .. } => group_not_found(id),
        other => Ec2Error::from_app(other, Domain::Other),
    })?;
    Ok(g)
}

/// A group named by `GroupId` or `GroupName` (in the caller's project).
async fn named(ctx: &Ctx, caller: &Caller, p: &Params, access: Access) -> Ec2Result<SecurityGroupRow> {
    if let Some(id) = p.str("GroupId").filter(|i| !i.is_empty()) {
        return load(ctx, caller, id, access).await;
    }
    let name = p.str("GroupName").filter(|n| !n.is_empty()).ok_or_else(|| Ec2Error::missing("GroupId"))?;
    let project = project_of(caller)?;
    if name == crate::security_groups::DEFAULT_GROUP {
        ctx.store.ensure_default_security_group(&project).await?;
    }
    let g = ctx.store.security_group_by_name(&project, name).await?.ok_or_else(|| group_not_found(name))?;
    load(ctx, caller, &g.id, access).await
}

/// The ids of the groups a launch names (by id or name), all of the
/// project; none named: none (the launch uses the default group).
pub async fn resolve(ctx: &Ctx, project: &str, ids: &[String], names: &[String]) -> Ec2Result<Vec<String>> {
    let mut out = Vec::new();
    for id in ids {
        parse_group_id(id)?;
        match ctx.store.security_group(id).await? {
            Some(g) if g.project_id == project => out.push(g.id),
            _ => return Err(group_not_found(id)),
        }
    }
    for name in names {
        if name == crate::security_groups::DEFAULT_GROUP {
            ctx.store.ensure_default_security_group(project).await?;
        }
        match ctx.store.security_group_by_name(project, name).await? {
            Some(g) => out.push(g.id),
            None => return Err(group_not_found(name)),
        }
    }
    out.dedup();
    Ok(out)
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = authz::creation_project(caller).in_domain(Domain::Other)?;
    let name = p.required("GroupName")?;
    let description = p.required("GroupDescription")?;
    if name.len() > 255 || name.starts_with("sg-") || name.chars().any(char::is_control) {
        return Err(Ec2Error::invalid("GroupName must be 1-255 characters, not starting with 'sg-'"));
    }
    if description.len() > 255 || description.chars().any(char::is_control) {
        return Err(Ec2Error::invalid("GroupDescription must be at most 255 characters"));
    }
    if name == crate::security_groups::DEFAULT_GROUP {
        ctx.store.ensure_default_security_group(&project).await?;
    }
    let tags = query::tag_specs(p, "security-group")?;
    // The VPC is remembered for DescribeSecurityGroups' vpcId and its
    // `vpc-id` filter; the group applies on every network of the project.
    let network = match p.str("VpcId").filter(|v| !v.is_empty()) {
        Some(vpc) => Some(super::vpcs::load_vpc(ctx, caller, vpc, Access::Write).await?.id),
        None => None,
    };
    let Some(g) = ctx.store.create_security_group(&project, name, description, network.as_deref()).await? else {
        return Err(Ec2Error::bad("InvalidGroup.Duplicate", format!("The security group '{name}' already exists")));
    };
    if !tags.is_empty() {
        ctx.store
            .set_tags(&[(g.id.clone(), "security-group", project.clone())], &tags)
            .await
            .map_err(|e| Ec2Error::invalid(e.to_string()))?;
    }
    Ok(vec![El::text("return", "true"), El::text("groupId", &g.id), xml::tag_set(tags.iter().map(|(k, v)| (k, v)))])
}

/// One EC2 permission: the rules of one protocol and port range, with
/// all their sources (EC2 answers a permission per protocol and ports,
/// listing every CIDR and group that it lets in).
fn permission_el(rules: &[&RuleRow], names: &HashMap<String, String>) -> El {
    let r = rules[0];
    let mut item = El::item().field("ipProtocol", &r.protocol);
    if r.protocol != "-1" {
        item = item.field("fromPort", r.from_port).field("toPort", r.to_port);
    }
    let groups = rules
        .iter()
        .filter_map(|r| r.source_group_id.as_ref())
        .map(|g| El::item().field("groupId", g).opt("groupName", names.get(g)).field("userId", ""));
    let ranges = rules.iter().filter_map(|r| r.cidr.as_ref().map(|c| (c, r))).map(|(c, r)| {
        El::item().field("cidrIp", c).opt("description", (!r.description.is_empty()).then_some(&r.description))
    });
    item.child(El::list("groups", groups))
        .child(El::list("ipRanges", ranges))
        .child(El::new("ipv6Ranges"))
        .child(El::new("prefixListIds"))
}

/// A rule's protocol and port range: what one EC2 permission covers.
type Ports<'a> = (&'a str, i64, i64);

/// A group's rules of one direction as EC2's permissions, in the order
/// their first rule was made.
fn permissions(rules: &[RuleRow], group: &str, direction: &str, names: &HashMap<String, String>) -> Vec<El> {
    let mut by_ports: Vec<(Ports, Vec<&RuleRow>)> = Vec::new();
    for r in rules.iter().filter(|r| r.group_id == group && r.direction == direction) {
        let key = (r.protocol.as_str(), r.from_port, r.to_port);
        match by_ports.iter_mut().find(|(k, _)| *k == key) {
            Some((_, same)) => same.push(r),
            None => by_ports.push((key, vec![r])),
        }
    }
    by_ports.iter().map(|(_, rules)| permission_el(rules, names)).collect()
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    ctx.store.ensure_default_security_group(&project).await?;
    let ids = p.list("GroupId");
    let names = p.list("GroupName");
    let filters = p.filters()?;
    query::check_filters(&filters, &["group-id", "group-name", "description", "vpc-id", "owner-id"], true)?;
    let page = Page::parse(p, 5, 1000)?;
    let groups = ctx.store.security_groups(Some(&project)).await?;
    for id in &ids {
        parse_group_id(id)?;
        if !groups.iter().any(|g| &g.id == id) {
            return Err(group_not_found(id));
        }
    }
    for n in &names {
        if !groups.iter().any(|g| &g.name == n) {
            return Err(group_not_found(n));
        }
    }
    let tags = ctx.store.tags_by_resource(Some(&project)).await?;
    let empty = BTreeMap::new();
    let rules = ctx.store.security_group_rules(Some(&project)).await?;
    let group_names: HashMap<String, String> = groups.iter().map(|g| (g.id.clone(), g.name.clone())).collect();
    let selected: Vec<&SecurityGroupRow> = groups
        .iter()
        .filter(|g| (ids.is_empty() || ids.contains(&g.id)) && (names.is_empty() || names.contains(&g.name)))
        .filter(|g| {
            query::matches(&filters, |f| match f {
                "group-id" => vec![g.id.clone()],
                "group-name" => vec![g.name.clone()],
                "description" => vec![g.description.clone()],
                "vpc-id" => vpc_of(g).into_iter().collect(),
                "owner-id" => vec![g.project_id.clone()],
                other => query::tag_field(other, tags.get(&g.id)),
            })
        })
        .collect();
    let (selected, next) = page.apply(selected);
    let items = selected.into_iter().map(|g| {
        let of = |direction: &str| permissions(&rules, &g.id, direction, &group_names);
        El::item()
            .field("ownerId", &g.project_id)
            .field("groupId", &g.id)
            .field("groupName", &g.name)
            .field("groupDescription", &g.description)
            .opt("vpcId", vpc_of(g).as_ref())
            .child(El::list("ipPermissions", of("ingress")))
            .child(El::list("ipPermissionsEgress", of("egress")))
            .child(xml::tag_set(tags.get(&g.id).unwrap_or(&empty)))
    });
    let mut out = vec![El::list("securityGroupInfo", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

/// The VPC id of the network a group was made in, if one was named.
fn vpc_of(g: &SecurityGroupRow) -> Option<String> {
    g.network_id.as_deref().map(|n| crate::networks::ec2_ids(n).0)
}

/// `tcp`/`6`, `udp`/`17`, `icmp`/`1` or `-1`/`all`, as EC2 accepts them.
fn protocol(p: &str) -> Ec2Result<&'static str> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        "icmp" | "1" => "icmp",
        "-1" | "all" => "-1",
        other => {
            return Err(Ec2Error::bad(
                "InvalidPermission.Malformed",
                format!(
                    "Invalid IP protocol '{}': use tcp, udp, icmp or -1 (all)",
                    other.chars().take(20).collect::<String>()
                ),
            ))
        }
    })
}

fn cidr(c: &str) -> Ec2Result<String> {
    // EC2 names a malformed CIDR `InvalidParameterValue`; the message is
    // the shared parser's, which says which form to use.
    crate::app::networks::rule_cidr(c).map_err(|e| Ec2Error::invalid(format!("CIDR block {e}")))
}

/// One `IpPermissions.N` (or the flat legacy form) into rules of
/// `direction` (`ingress`: CIDRs and groups are sources; `egress`:
/// destinations).
async fn rules_of(ctx: &Ctx, project: &str, perm: &Params, direction: &'static str) -> Ec2Result<Vec<NewRule>> {
    let proto = protocol(perm.required("IpProtocol")?)?;
    let (from, to) = if proto == "-1" {
        (-1, -1)
    } else {
        let from = perm.int_in("FromPort", -1..=65535)?.ok_or_else(|| Ec2Error::missing("FromPort"))?;
        let to = perm.int_in("ToPort", -1..=65535)?.ok_or_else(|| Ec2Error::missing("ToPort"))?;
        if proto != "icmp" && (from < 0 || to < from) {
            return Err(Ec2Error::bad(
                "InvalidParameterValue",
                format!("Invalid port range {from}-{to}: FromPort must be 0-65535 and at most ToPort"),
            ));
        }
        (from, to)
    };
    let mut out = Vec::new();
    let make = |cidr: Option<String>, source: Option<String>, description: String| NewRule {
        direction,
        protocol: proto.to_string(),
        from_port: from,
        to_port: to,
        cidr,
        source_group_id: source,
        description,
    };
    if !perm.structs("Ipv6Ranges").is_empty() {
        // Silently dropping them would leave a rule the caller believes in.
        return Err(Ec2Error::invalid(format!(
            "Ipv6Ranges are not supported: private networks and their firewall are IPv4 only; use IpRanges with {}",
            nubo_api::cidr::CIDR_FORM
        )));
    }
    for r in perm.structs("IpRanges") {
        let c = cidr(r.required("CidrIp")?)?;
        out.push(make(Some(c), None, r.str("Description").unwrap_or("").chars().take(255).collect()));
    }
    if let Some(c) = perm.str("CidrIp").filter(|c| !c.is_empty()) {
        out.push(make(Some(cidr(c)?), None, String::new()));
    }
    let mut sources: Vec<String> = Vec::new();
    for g in perm.structs("Groups") {
        if let Some(id) = g.str("GroupId").filter(|i| !i.is_empty()) {
            sources.extend(resolve(ctx, project, &[id.to_string()], &[]).await?);
        } else if let Some(n) = g.str("GroupName").filter(|n| !n.is_empty()) {
            sources.extend(resolve(ctx, project, &[], &[n.to_string()]).await?);
        }
    }
    if let Some(n) = perm.str("SourceSecurityGroupName").filter(|n| !n.is_empty()) {
        sources.extend(resolve(ctx, project, &[], &[n.to_string()]).await?);
    }
    for s in sources {
        out.push(make(None, Some(s), String::new()));
    }
    if out.is_empty() {
        return Err(Ec2Error::missing("IpPermissions.N.IpRanges or IpPermissions.N.Groups (a CIDR or a source group)"));
    }
    Ok(out)
}

/// The rules a call names: its `IpPermissions`, or the flat form
/// (`IpProtocol`, ...) of the older API; at least one.
async fn requested_rules(ctx: &Ctx, project: &str, p: &Params, direction: &'static str) -> Ec2Result<Vec<NewRule>> {
    let mut rules = Vec::new();
    for perm in p.structs("IpPermissions") {
        rules.extend(rules_of(ctx, project, &perm, direction).await?);
    }
    if p.str("IpProtocol").is_some() {
        rules.extend(rules_of(ctx, project, p, direction).await?);
    }
    if rules.is_empty() {
        return Err(Ec2Error::missing("IpPermissions"));
    }
    Ok(rules)
}

pub async fn authorize_ingress(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    authorize(ctx, caller, p, "ingress").await
}

/// AuthorizeSecurityGroupEgress: what the group's instances may open
/// connections to (EC2 names the group by GroupId only).
pub async fn authorize_egress(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    p.required("GroupId")?;
    authorize(ctx, caller, p, "egress").await
}

/// RevokeSecurityGroupEgress: removes the egress rules equal to the ones given.
pub async fn revoke_egress(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    p.required("GroupId")?;
    revoke(ctx, caller, p, "egress").await
}

async fn authorize(ctx: &Arc<Ctx>, caller: &Caller, p: &Params, direction: &'static str) -> Ec2Result<Answer> {
    let g = named(ctx, caller, p, Access::Write).await?;
    let rules = requested_rules(ctx, &g.project_id, p, direction).await?;
    let added = ctx.store.add_security_group_rules(&g.id, &rules).await.map_err(|e| match e {
        RuleError::Duplicate => Ec2Error::bad(
            "InvalidPermission.Duplicate",
            format!("the specified rule already exists in security group {}", g.id),
        ),
        RuleError::Db(e) => e.into(),
    })?;
    // Hosts enforce the rules: they re-read them now.
    ctx.bump();
    let items: Vec<El> = added
        .iter()
        .map(|r| {
            let el = El::item()
                .field("securityGroupRuleId", &r.id)
                .field("groupId", &r.group_id)
                .field("groupOwnerId", &g.project_id)
                .field("isEgress", direction == "egress")
                .field("ipProtocol", &r.protocol)
                .field("fromPort", r.from_port)
                .field("toPort", r.to_port)
                .opt("cidrIpv4", r.cidr.as_deref());
            match &r.source_group_id {
                Some(s) => el.child(El::new("referencedGroupInfo").field("groupId", s)),
                None => el,
            }
        })
        .collect();
    Ok(vec![El::text("return", "true"), El::list("securityGroupRuleSet", items)])
}

/// RevokeSecurityGroupIngress: removes the rules equal to the ones given.
/// Open connections they let in stay; new ones are refused.
pub async fn revoke_ingress(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    revoke(ctx, caller, p, "ingress").await
}

async fn revoke(ctx: &Arc<Ctx>, caller: &Caller, p: &Params, direction: &'static str) -> Ec2Result<Answer> {
    let g = named(ctx, caller, p, Access::Write).await?;
    let rules = requested_rules(ctx, &g.project_id, p, direction).await?;
    let removed = ctx.store.revoke_security_group_rules(&g.id, &rules).await?;
    if removed == 0 {
        return Err(Ec2Error::bad(
            "InvalidPermission.NotFound",
            format!("the specified rule does not exist in security group {}", g.id),
        ));
    }
    ctx.bump();
    Ok(vec![El::text("return", "true")])
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let g = named(ctx, caller, p, Access::Write).await?;
    match ctx.store.delete_security_group(&g).await? {
        DeleteOutcome::Deleted => Ok(vec![El::text("return", "true"), El::text("groupId", &g.id)]),
        DeleteOutcome::IsDefault => {
            Err(Ec2Error::bad("CannotDelete", format!("the default security group {} cannot be deleted", g.id)))
        }
        DeleteOutcome::InUse(i) => Err(Ec2Error::bad(
            "DependencyViolation",
            format!(
                "resource {} has a dependent object: instances {} are in it; terminate them first",
                g.id,
                i.join(", ")
            ),
        )),
        DeleteOutcome::Referenced(r) => Err(Ec2Error::bad(
            "DependencyViolation",
            format!(
                "resource {} has a dependent object: rules of groups {} name it; revoke them first",
                g.id,
                r.join(", ")
            ),
        )),
    }
}
