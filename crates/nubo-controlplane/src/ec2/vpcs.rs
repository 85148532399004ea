//! EC2 VPCs and subnets over the project's private networks
//! (`app::networks`): a Nubo network is one VPC with one subnet of the
//! same range. `net-<hex>` is `vpc-<hex>` and `subnet-<hex>` (the same
//! digits: `crate::networks::ec2_ids`). CreateVpc makes a network without
//! its subnet, CreateSubnet (of the VPC's range, no other) makes it,
//! DeleteSubnet and DeleteVpc are refused while instances use them. The
//! project's default network is the default VPC with its default subnet,
//! made on first use (DescribeVpcs with `is-default=true`, or a launch).

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Page, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::authz::Access;
use crate::error::AppError;
use crate::networks::{ec2_ids, network_of_ec2_id, Cidr, NetworkRow};
use crate::Ctx;
use nubo_api::ids::NetworkId;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Which EC2 resource a network is seen as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vpc,
    Subnet,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Vpc => "vpc",
            Kind::Subnet => "subnet",
        }
    }

    fn malformed(self, id: &str) -> Ec2Error {
        let (code, what) = match self {
            Kind::Vpc => ("InvalidVpcID.Malformed", "vpc"),
            Kind::Subnet => ("InvalidSubnetID.Malformed", "subnet"),
        };
        Ec2Error::bad(
            code,
            format!("Invalid id: \"{}\" (expected {what}- and 17 hex digits)", id.chars().take(64).collect::<String>()),
        )
    }

    fn not_found(self, id: &str) -> Ec2Error {
        let id: String = id.chars().take(64).collect();
        match self {
            Kind::Vpc => Ec2Error::bad("InvalidVpcID.NotFound", format!("The vpc ID '{id}' does not exist")),
            Kind::Subnet => Ec2Error::bad("InvalidSubnetID.NotFound", format!("The subnet ID '{id}' does not exist")),
        }
    }

    /// The network id an EC2 id names (its shape checked).
    fn network_of(self, id: &str) -> Ec2Result<String> {
        network_of_ec2_id(self.prefix(), id).ok_or_else(|| self.malformed(id))
    }
}

/// The network behind a VPC or subnet id that the caller may access; a
/// subnet must exist (the network may have none).
async fn load(ctx: &Ctx, caller: &Caller, kind: Kind, id: &str, access: Access) -> Ec2Result<NetworkRow> {
    let net = kind.network_of(id)?;
    let row = crate::app::networks::load_network(ctx, caller, &net, access).await.map_err(|e| match e {
        AppError::NotFound { .. } => kind.not_found(id),
        other => Ec2Error::from_app(other, Domain::Other),
    })?;
    if row.id != net || (kind == Kind::Subnet && row.has_subnet == 0) {
        return Err(kind.not_found(id));
    }
    Ok(row)
}

/// The network of a VPC id the caller may access (CreateTags' check).
pub async fn load_vpc(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> Ec2Result<NetworkRow> {
    load(ctx, caller, Kind::Vpc, id, access).await
}

/// The network of a subnet id the caller may access (RunInstances'
/// SubnetId, CreateTags' check).
pub async fn load_subnet(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> Ec2Result<NetworkRow> {
    load(ctx, caller, Kind::Subnet, id, access).await
}

async fn set_tags(ctx: &Ctx, id: &str, kind: &'static str, project: &str, tags: &[(String, String)]) -> Ec2Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    ctx.store.set_tags(&[(id.to_string(), kind, project.to_string())], tags).await.map_err(|e| match e {
        crate::tags::TagError::TooMany { .. } => Ec2Error::bad("TagLimitExceeded", e.to_string()),
        crate::tags::TagError::Db(e) => e.into(),
    })
}

/// A CIDR block as a network range: `code` names the refusal as EC2 does
/// for the call (`InvalidVpc.Range`, `InvalidSubnet.Range`).
fn range(code: &str, block: &str) -> Ec2Result<Cidr> {
    Cidr::parse_network(block).map_err(|e| Ec2Error::bad(code, format!("The CIDR '{block}' is invalid: {e}")))
}

fn vpc_item(n: &NetworkRow, tags: Option<&BTreeMap<String, String>>) -> El {
    let (vpc, _) = ec2_ids(&n.id);
    let empty = BTreeMap::new();
    El::item()
        .field("vpcId", &vpc)
        .field("ownerId", &n.project_id)
        .field("state", "available")
        .field("cidrBlock", &n.cidr)
        .child(El::list(
            "cidrBlockAssociationSet",
            [El::item()
                .field("cidrBlock", &n.cidr)
                .field("associationId", format!("vpc-cidr-assoc-{}", vpc.trim_start_matches("vpc-")))
                .child(El::new("cidrBlockState").field("state", "associated"))],
        ))
        .field("dhcpOptionsId", "default")
        .field("instanceTenancy", "default")
        .field("isDefault", n.is_default == 1)
        .child(xml::tag_set(tags.unwrap_or(&empty)))
}

fn subnet_item(ctx: &Ctx, n: &NetworkRow, used: usize, tags: Option<&BTreeMap<String, String>>) -> El {
    let (vpc, subnet) = ec2_ids(&n.id);
    let empty = BTreeMap::new();
    let free = Cidr::parse_network(&n.cidr).map(|c| c.host_count()).unwrap_or(0).saturating_sub(used);
    El::item()
        .field("subnetId", &subnet)
        .field("subnetArn", format!("arn:aws:ec2:{}:{}:subnet/{subnet}", ctx.config.region, n.project_id))
        .field("state", "available")
        .field("ownerId", &n.project_id)
        .field("vpcId", &vpc)
        .field("cidrBlock", &n.cidr)
        .field("availableIpAddressCount", free)
        .field("availabilityZone", &ctx.config.availability_zone)
        .field("defaultForAz", n.is_default == 1)
        .field("mapPublicIpOnLaunch", false)
        .field("assignIpv6AddressOnCreation", false)
        .child(El::new("ipv6CidrBlockAssociationSet"))
        .child(xml::tag_set(tags.unwrap_or(&empty)))
}

/// CreateVpc: a network of CidrBlock, without its subnet yet; named by
/// the Name tag of its TagSpecification when that is a valid, free name.
pub async fn create_vpc(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let block = p.required("CidrBlock")?;
    range("InvalidVpc.Range", block)?;
    if p.str("AmazonProvidedIpv6CidrBlock").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(Ec2Error::invalid("IPv6 blocks are not supported: private networks are IPv4 only"));
    }
    let tags = query::tag_specs(p, "vpc")?;
    let name = tags.iter().find(|(k, _)| k == "Name").map(|(_, v)| v.as_str());
    let id = NetworkId::generate();
    let (vpc, _) = ec2_ids(id.as_str());
    let row = crate::app::networks::create_with_id(ctx, caller, &id, name, &vpc, block, false)
        .await
        .in_domain(Domain::Other)?;
    set_tags(ctx, &vpc, "vpc", &row.project_id, &tags).await?;
    let tags: BTreeMap<String, String> = tags.into_iter().collect();
    Ok(vec![vpc_item(&row, Some(&tags)).renamed("vpc")])
}

/// Tags of the project's resources, read once per request.
async fn project_tags(ctx: &Ctx, project: &str) -> Ec2Result<HashMap<String, BTreeMap<String, String>>> {
    Ok(ctx.store.tags_by_resource(Some(project)).await?)
}

/// Whether a filter asks for the default VPC or subnet (EC2 always has
/// one: it is made now if the project has none yet).
fn asks_for_default(filters: &[query::Filter], name: &str) -> bool {
    filters.iter().any(|f| f.name == name && f.values.iter().any(|v| v == "true"))
}

/// The ids named by `prefix.N`, as networks, each checked to be of the
/// project (otherwise NotFound, as another project's are).
fn named(kind: Kind, ids: &[String], networks: &[NetworkRow]) -> Ec2Result<Vec<String>> {
    let mut out = Vec::new();
    for id in ids {
        let net = kind.network_of(id)?;
        match networks.iter().find(|n| n.id == net) {
            Some(n) if kind == Kind::Vpc || n.has_subnet == 1 => out.push(net),
            _ => return Err(kind.not_found(id)),
        }
    }
    Ok(out)
}

pub async fn describe_vpcs(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let filters = p.filters()?;
    query::check_filters(
        &filters,
        // `cidr-block` is not in EC2's list but EC2 takes it as `cidr`, and
        // Ansible's ec2_vpc_net looks VPCs up by it.
        &["vpc-id", "cidr", "cidr-block", "cidr-block-association.cidr-block", "is-default", "state", "owner-id"],
        true,
    )?;
    let page = Page::parse(p, 5, 1000)?;
    let networks = crate::app::networks::project_networks(ctx, caller, asks_for_default(&filters, "is-default"))
        .await
        .in_domain(Domain::Other)?;
    let wanted = named(Kind::Vpc, &p.list("VpcId"), &networks)?;
    let tags = project_tags(ctx, &project).await?;
    let selected: Vec<&NetworkRow> = networks
        .iter()
        .filter(|n| wanted.is_empty() || wanted.contains(&n.id))
        .filter(|n| {
            let (vpc, _) = ec2_ids(&n.id);
            query::matches(&filters, |f| match f {
                "vpc-id" => vec![vpc.clone()],
                "cidr" | "cidr-block" | "cidr-block-association.cidr-block" => vec![n.cidr.clone()],
                "is-default" => vec![(n.is_default == 1).to_string()],
                "state" => vec!["available".into()],
                "owner-id" => vec![n.project_id.clone()],
                other => query::tag_field(other, tags.get(&vpc)),
            })
        })
        .collect();
    let (selected, next) = page.apply(selected);
    let mut out = vec![El::list("vpcSet", selected.into_iter().map(|n| vpc_item(n, tags.get(&ec2_ids(&n.id).0))))];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

/// DeleteVpc: the network goes (with its subnet, and the tags of both);
/// refused with DependencyViolation while instances are on it.
pub async fn delete_vpc(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = p.required("VpcId")?;
    let n = load(ctx, caller, Kind::Vpc, id, Access::Write).await?;
    crate::app::networks::delete(ctx, caller, &n.id).await.map_err(|e| dependency(e, id))?;
    Ok(vec![El::text("return", "true")])
}

/// The VPC attributes EC2 lets a client read and set: DNS resolution and
/// DNS host names, both always on here (every Nubo network serves DNS and
/// names its instances), so reading answers `true` and setting `true`
/// changes nothing. Ansible's ec2_vpc_net reads both on every run.
const VPC_ATTRIBUTES: &[(&str, &str)] =
    &[("enableDnsSupport", "EnableDnsSupport"), ("enableDnsHostnames", "EnableDnsHostnames")];

/// DescribeVpcAttribute: `enableDnsSupport` or `enableDnsHostnames`.
pub async fn describe_vpc_attribute(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = p.required("VpcId")?;
    let attribute = p.required("Attribute")?;
    let n = load(ctx, caller, Kind::Vpc, id, Access::Read).await?;
    let Some((attribute, _)) = VPC_ATTRIBUTES.iter().find(|(a, _)| *a == attribute) else {
        return Err(Ec2Error::invalid(format!(
            "Value ({}) for parameter attribute is invalid: Nubo serves enableDnsSupport and enableDnsHostnames",
            attribute.chars().take(40).collect::<String>()
        )));
    };
    let (vpc, _) = ec2_ids(&n.id);
    Ok(vec![El::text("vpcId", vpc), El::new(attribute).field("value", true)])
}

/// ModifyVpcAttribute: `EnableDnsSupport.Value` or
/// `EnableDnsHostnames.Value` (one per request, as EC2 requires); `true`
/// is what they are, `false` is refused because networks cannot drop DNS.
pub async fn modify_vpc_attribute(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = p.required("VpcId")?;
    let mut asked = Vec::new();
    for (_, param) in VPC_ATTRIBUTES {
        if let Some(v) = p.bool(&format!("{param}.Value"))? {
            asked.push((*param, v));
        }
    }
    let (param, value) = match asked.as_slice() {
        [] => return Err(Ec2Error::missing("EnableDnsSupport.Value or EnableDnsHostnames.Value")),
        [one] => *one,
        _ => {
            return Err(Ec2Error::bad(
                "InvalidParameterCombination",
                "Only one attribute can be modified at a time: send EnableDnsSupport and EnableDnsHostnames in two requests",
            ))
        }
    };
    load(ctx, caller, Kind::Vpc, id, Access::Write).await?;
    if !value {
        return Err(Ec2Error::bad(
            "UnsupportedOperation",
            format!("{param} cannot be turned off: every Nubo network serves DNS to its instances and names them"),
        ));
    }
    Ok(vec![El::text("return", "true")])
}

/// A refusal because instances use the network, as EC2 words it.
fn dependency(e: AppError, id: &str) -> Ec2Error {
    match e {
        AppError::Conflict(m) => Ec2Error::bad(
            "DependencyViolation",
            format!("The {} '{}' has dependencies and cannot be deleted: {m}", id.split('-').next().unwrap_or(""), id),
        ),
        other => Ec2Error::from_app(other, Domain::Other),
    }
}

/// CreateSubnet: a network's one subnet, of the VPC's own range.
pub async fn create_subnet(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let vpc_id = p.required("VpcId")?;
    let block = p.required("CidrBlock")?;
    let n = load(ctx, caller, Kind::Vpc, vpc_id, Access::Write).await?;
    let asked = range("InvalidSubnet.Range", block)?;
    let own = Cidr::parse_network(&n.cidr).map_err(|e| Ec2Error::from_app(AppError::internal(e), Domain::Other))?;
    let one_subnet = "Nubo networks have one subnet, with the VPC's own range";
    if asked != own {
        return Err(Ec2Error::invalid(format!(
            "The CIDR '{block}' is not the VPC's range: {one_subnet}; create the subnet with CidrBlock {}, or a VPC of range {block} for it",
            n.cidr
        )));
    }
    if p.str("Ipv6CidrBlock").is_some_and(|v| !v.is_empty()) {
        return Err(Ec2Error::invalid("IPv6 blocks are not supported: private networks are IPv4 only"));
    }
    if let Some(z) = p.str("AvailabilityZone").filter(|z| !z.is_empty()) {
        if z != ctx.config.availability_zone {
            return Err(Ec2Error::invalid(format!(
                "Invalid availability zone: [{}]; this region has {}",
                z.chars().take(40).collect::<String>(),
                ctx.config.availability_zone
            )));
        }
    }
    let tags = query::tag_specs(p, "subnet")?;
    let n = crate::app::networks::set_subnet(ctx, caller, &n.id, true).await.map_err(|e| match e {
        AppError::Conflict(_) => Ec2Error::bad(
            "InvalidSubnet.Conflict",
            format!(
                "The CIDR '{block}' conflicts with another subnet: VPC {vpc_id} has its subnet already ({one_subnet})"
            ),
        ),
        other => Ec2Error::from_app(other, Domain::Other),
    })?;
    let (_, subnet) = ec2_ids(&n.id);
    set_tags(ctx, &subnet, "subnet", &n.project_id, &tags).await?;
    let tags: BTreeMap<String, String> = tags.into_iter().collect();
    let used = crate::app::networks::instances_on(ctx, &n.id).await.in_domain(Domain::Other)?.len();
    Ok(vec![subnet_item(ctx, &n, used, Some(&tags)).renamed("subnet")])
}

pub async fn describe_subnets(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let filters = p.filters()?;
    query::check_filters(
        &filters,
        &[
            "subnet-id",
            "vpc-id",
            "cidr",
            "cidr-block",
            "cidrBlock",
            "default-for-az",
            "availability-zone",
            "state",
            "owner-id",
        ],
        true,
    )?;
    let page = Page::parse(p, 5, 1000)?;
    let networks = crate::app::networks::project_networks(ctx, caller, asks_for_default(&filters, "default-for-az"))
        .await
        .in_domain(Domain::Other)?;
    let wanted = named(Kind::Subnet, &p.list("SubnetId"), &networks)?;
    let tags = project_tags(ctx, &project).await?;
    let mut used: HashMap<String, usize> = HashMap::new();
    for port in ctx.store.network_ports(None).await? {
        *used.entry(port.network_id).or_default() += 1;
    }
    let selected: Vec<&NetworkRow> = networks
        .iter()
        .filter(|n| n.has_subnet == 1 && (wanted.is_empty() || wanted.contains(&n.id)))
        .filter(|n| {
            let (vpc, subnet) = ec2_ids(&n.id);
            query::matches(&filters, |f| match f {
                "subnet-id" => vec![subnet.clone()],
                "vpc-id" => vec![vpc.clone()],
                "cidr" | "cidr-block" | "cidrBlock" => vec![n.cidr.clone()],
                "default-for-az" => vec![(n.is_default == 1).to_string()],
                "availability-zone" => vec![ctx.config.availability_zone.clone()],
                "state" => vec!["available".into()],
                "owner-id" => vec![n.project_id.clone()],
                other => query::tag_field(other, tags.get(&subnet)),
            })
        })
        .collect();
    let (selected, next) = page.apply(selected);
    let mut out = vec![El::list(
        "subnetSet",
        selected
            .into_iter()
            .map(|n| subnet_item(ctx, n, used.get(&n.id).copied().unwrap_or(0), tags.get(&ec2_ids(&n.id).1))),
    )];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

/// DeleteSubnet: the network stays (as a VPC without subnet); refused
/// with DependencyViolation while instances are on it.
pub async fn delete_subnet(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = p.required("SubnetId")?;
    let n = load(ctx, caller, Kind::Subnet, id, Access::Write).await?;
    match crate::app::networks::set_subnet(ctx, caller, &n.id, false).await {
        Ok(_) => {}
        // Deleted by a concurrent request meanwhile.
        Err(AppError::Conflict(m)) if m.ends_with("has no subnet") => return Err(Kind::Subnet.not_found(id)),
        Err(e) => return Err(dependency(e, id)),
    }
    ctx.store.delete_tags(&[id.to_string()], &[]).await?;
    Ok(vec![El::text("return", "true")])
}
