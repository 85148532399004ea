//! EC2 Elastic IPs over Nubo's floating IPs (`app::floating_ips`):
//! AllocateAddress, AssociateAddress, DisassociateAddress, ReleaseAddress
//! and DescribeAddresses, all of `Domain=vpc`.
//!
//! Ids map both ways without a table: floating IP `fip-<hex>` is the
//! allocation `eipalloc-<hex>` and, while associated, the association
//! `eipassoc-<hex>` (the same 17 digits). A floating IP has at most one
//! association at a time, so the association id names it; an old
//! association id therefore names the address's current association,
//! if any. An instance's network interface `eni-<instance hex><nic index>`
//! (see `instances`) is accepted in place of its instance id.
//!
//! The pool is an external network: AllocateAddress takes the only one,
//! or the one named by `NetworkBorderGroup` (Nubo's reading of that
//! parameter) when there are several. Addresses carry no tags yet, so a
//! `tag:` filter matches none.

use super::error::{Domain, Ec2Error, Ec2Result};
use super::query::{self, Params};
use super::xml::El;
use super::{project_of, Answer};
use crate::app;
use crate::auth::Caller;
use crate::error::AppError;
use crate::Ctx;
use nubo_api::ids::{FloatingIpId, InstanceId};
use nubo_api::params::{FloatingIpAssociate, FloatingIpCreate};
use nubo_api::views::FloatingIp;
use std::collections::HashMap;
use std::sync::Arc;

const ALLOC: &str = "eipalloc-";
const ASSOC: &str = "eipassoc-";

/// The allocation id of a floating IP.
pub fn allocation_id(fip: &str) -> String {
    format!("{ALLOC}{}", fip.trim_start_matches(FloatingIpId::PREFIX))
}

/// The association id of a floating IP (meaningful while associated).
pub fn association_id(fip: &str) -> String {
    format!("{ASSOC}{}", fip.trim_start_matches(FloatingIpId::PREFIX))
}

/// The floating IP id behind an `eipalloc-` or `eipassoc-` id (`prefix`
/// says which), or `None` when it is not of that shape.
pub fn floating_ip_of(prefix: &str, id: &str) -> Option<String> {
    let hex = id.strip_prefix(prefix)?;
    format!("{}{hex}", FloatingIpId::PREFIX).parse::<FloatingIpId>().ok().map(|f| f.to_string())
}

fn short(id: &str) -> String {
    id.chars().take(64).collect()
}

fn alloc_not_found(id: &str) -> Ec2Error {
    Ec2Error::bad("InvalidAllocationID.NotFound", format!("The allocation ID '{}' does not exist", short(id)))
}

fn assoc_not_found(id: &str) -> Ec2Error {
    Ec2Error::bad("InvalidAssociationID.NotFound", format!("The association ID '{}' does not exist", short(id)))
}

fn address_not_found(ip: &str) -> Ec2Error {
    Ec2Error::bad(
        "InvalidAddress.NotFound",
        format!(
            "Address '{}' not found: it is not an Elastic IP of this project (DescribeAddresses lists them)",
            short(ip)
        ),
    )
}

fn malformed(code: &str, prefix: &str, id: &str) -> Ec2Error {
    Ec2Error::bad(code, format!("Invalid id: \"{}\" (expected {prefix} and 17 hex digits)", short(id)))
}

/// How a request named an address: which error says it is missing.
#[derive(Debug, Clone, Copy)]
enum By {
    Allocation,
    Association,
    PublicIp,
}

/// The caller's project's floating IP named `reference` (an allocation or
/// association id, or a public address); another project's is NotFound.
async fn load(ctx: &Arc<Ctx>, caller: &Caller, by: By, reference: &str) -> Ec2Result<FloatingIp> {
    let (fip, missing) = match by {
        By::Allocation => (
            floating_ip_of(ALLOC, reference)
                .ok_or_else(|| malformed("InvalidAllocationID.Malformed", ALLOC, reference))?,
            alloc_not_found(reference),
        ),
        By::Association => (
            floating_ip_of(ASSOC, reference)
                .ok_or_else(|| malformed("InvalidAssociationID.Malformed", ASSOC, reference))?,
            assoc_not_found(reference),
        ),
        By::PublicIp => {
            if reference.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(Ec2Error::bad(
                    "InvalidParameterValue",
                    format!("Invalid value '{}' for PublicIp: expected an IPv4 address", short(reference)),
                ));
            }
            (reference.to_string(), address_not_found(reference))
        }
    };
    let project = project_of(caller)?;
    match app::floating_ips::show(ctx, caller, &fip).await {
        // An operator's key sees every project's; EC2 shows the key's own.
        Ok(f) if f.project_id.as_str() == project => Ok(f),
        Ok(_) | Err(AppError::NotFound { .. }) => Err(missing),
        Err(e) => Err(Ec2Error::from_app(e, Domain::Other)),
    }
}

/// The address a request names by `AllocationId` or `PublicIp`.
async fn named(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<FloatingIp> {
    match (p.str("AllocationId").filter(|s| !s.is_empty()), p.str("PublicIp").filter(|s| !s.is_empty())) {
        (Some(a), _) => load(ctx, caller, By::Allocation, a).await,
        (None, Some(ip)) => load(ctx, caller, By::PublicIp, ip).await,
        (None, None) => Err(Ec2Error::missing("AllocationId")),
    }
}

/// A refusal of the app layer, in EC2's words for addresses.
fn refusal(e: AppError) -> Ec2Error {
    match e {
        AppError::QuotaExceeded(m) => Ec2Error::bad("AddressLimitExceeded", m),
        AppError::Conflict(m) => Ec2Error::bad("InsufficientAddressCapacity", m),
        other => Ec2Error::from_app(other, Domain::Other),
    }
}

/// The external network AllocateAddress takes from: the one named, or the
/// only one there is.
async fn pool(ctx: &Ctx, project: &str, p: &Params) -> Ec2Result<String> {
    let externals: Vec<String> =
        ctx.store.networks(Some(project)).await?.into_iter().filter(|n| n.is_external()).map(|n| n.name).collect();
    let listed = || if externals.is_empty() { "none".to_string() } else { externals.join(", ") };
    match p.str("NetworkBorderGroup").filter(|s| !s.is_empty()) {
        Some(name) if externals.iter().any(|n| n == name) => Ok(name.to_string()),
        Some(name) => Err(Ec2Error::invalid(format!(
            "NetworkBorderGroup '{}' is not an external network; external networks: {}",
            short(name),
            listed()
        ))),
        None => match externals.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(Ec2Error::bad(
                "InsufficientAddressCapacity",
                "This cloud has no external network to take Elastic IPs from: an operator creates one with `nubo network create NAME --external ...`",
            )),
            _ => Err(Ec2Error::invalid(format!(
                "This cloud has several external networks ({}): name the one to take the address from with NetworkBorderGroup",
                listed()
            ))),
        },
    }
}

/// AllocateAddress: a floating IP for the caller's project.
pub async fn allocate(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    match p.str("Domain") {
        None | Some("") | Some("vpc") => {}
        Some(other) => {
            return Err(Ec2Error::invalid(format!(
                "Domain '{}' is not served: Elastic IPs here are Domain=vpc",
                short(other)
            )))
        }
    }
    for unsupported in ["Address", "PublicIpv4Pool", "CustomerOwnedIpv4Pool", "IpamPoolId"] {
        if p.str(unsupported).is_some_and(|v| !v.is_empty()) {
            return Err(Ec2Error::invalid(format!(
                "{unsupported} is not supported: addresses come from an external network's pool (name it with NetworkBorderGroup)"
            )));
        }
    }
    if !p.structs("TagSpecification").is_empty() {
        return Err(Ec2Error::invalid(
            "Elastic IPs cannot carry tags here: allocate the address without TagSpecification",
        ));
    }
    let network = pool(ctx, &project, p).await?;
    let f = app::floating_ips::allocate(ctx, caller, FloatingIpCreate { network: network.clone() })
        .await
        .map_err(refusal)?;
    Ok(vec![
        El::text("publicIp", &f.address),
        El::text("domain", "vpc"),
        El::text("allocationId", allocation_id(f.id.as_str())),
        El::text("publicIpv4Pool", &network),
        El::text("networkBorderGroup", &network),
    ])
}

/// The instance an AssociateAddress names, by InstanceId or by one of its
/// network interfaces (which must be the one a floating IP translates to).
async fn target(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<String> {
    let instance = p.str("InstanceId").filter(|s| !s.is_empty());
    let eni = p.str("NetworkInterfaceId").filter(|s| !s.is_empty());
    let (id, nic) = match (instance, eni) {
        (Some(i), _) => (super::instances::parse_ids(&[i.to_string()])?.remove(0).to_string(), None),
        (None, Some(eni)) => {
            let hex = eni.strip_prefix("eni-").unwrap_or("");
            let bad = || {
                Ec2Error::bad(
                    "InvalidNetworkInterfaceID.Malformed",
                    format!("Invalid id: \"{}\" (expected an eni- id from DescribeInstances)", short(eni)),
                )
            };
            let (i, index) = (hex.get(..17).ok_or_else(bad)?, hex.get(17..).ok_or_else(bad)?);
            let index = i64::from_str_radix(index, 16).map_err(|_| bad())?;
            let id = format!("{}{i}", InstanceId::PREFIX).parse::<InstanceId>().map_err(|_| bad())?;
            (id.to_string(), Some((index, eni)))
        }
        (None, None) => return Err(Ec2Error::missing("InstanceId")),
    };
    let nic_missing = |eni: &str| {
        Ec2Error::bad(
            "InvalidNetworkInterfaceID.NotFound",
            format!("The networkInterface ID '{}' does not exist", short(eni)),
        )
    };
    let row = match app::instances::load(ctx, caller, &id, crate::authz::Access::Write).await {
        Ok(r) => r,
        Err(AppError::NotFound { .. }) => {
            return Err(match nic {
                Some((_, eni)) => nic_missing(eni),
                None => Ec2Error::not_found("instance", &[id]),
            })
        }
        Err(e) => return Err(Ec2Error::from_app(e, Domain::Instance)),
    };
    let private = first_private_port(ctx, &row.id).await?;
    if let Some((index, eni)) = nic {
        match &private {
            Some(port) if port.nic_index == index => {}
            _ if ctx.store.instance_network_ports(&row.id).await?.iter().any(|q| q.nic_index == index) => {
                return Err(Ec2Error::invalid(format!(
                    "Network interface {} is not on a private network: an Elastic IP translates to the instance's first NIC on a private network",
                    short(eni)
                )))
            }
            _ => return Err(nic_missing(eni)),
        }
    }
    if let Some(want) = p.str("PrivateIpAddress").filter(|s| !s.is_empty()) {
        if private.as_ref().map(|q| q.address.as_str()) != Some(want) {
            return Err(Ec2Error::invalid(format!(
                "PrivateIpAddress {} is not the address an Elastic IP of instance {} translates to ({})",
                short(want),
                row.id,
                private.as_ref().map(|q| q.address.as_str()).unwrap_or("none: the instance is on no private network")
            )));
        }
    }
    Ok(row.id)
}

/// The instance's first NIC on a private network (what a floating IP
/// translates to), if any.
async fn first_private_port(ctx: &Ctx, instance: &str) -> Ec2Result<Option<crate::networks::NetworkPortRow>> {
    for port in ctx.store.instance_network_ports(instance).await? {
        if ctx.store.network(&port.network_id).await?.is_some_and(|n| !n.is_external()) {
            return Ok(Some(port));
        }
    }
    Ok(None)
}

/// AssociateAddress: points the address at an instance. An address
/// associated elsewhere moves only with AllowReassociation; an instance
/// that has another address loses that one (which stays allocated), as
/// on EC2.
pub async fn associate(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let f = named(ctx, caller, p).await?;
    let instance = target(ctx, caller, p).await?;
    let reassociate = p.bool("AllowReassociation")?.unwrap_or(false);
    match f.instance_id.as_ref().map(|i| i.as_str()) {
        Some(current) if current == instance => {
            return Ok(vec![El::text("return", "true"), El::text("associationId", association_id(f.id.as_str()))])
        }
        Some(current) if !reassociate => {
            return Err(Ec2Error::bad(
                "Resource.AlreadyAssociated",
                format!(
                    "Elastic IP {} ({}) is already associated with {current}: disassociate it first, or pass AllowReassociation=true",
                    allocation_id(f.id.as_str()),
                    f.address
                ),
            ))
        }
        _ => {}
    }
    for other in app::floating_ips::list(ctx, caller).await.map_err(refusal)? {
        if other.id != f.id && other.instance_id.as_ref().is_some_and(|i| i.as_str() == instance) {
            app::floating_ips::disassociate(ctx, caller, other.id.as_str()).await.map_err(refusal)?;
        }
    }
    app::floating_ips::associate(ctx, caller, f.id.as_str(), FloatingIpAssociate { instance }).await.map_err(|e| {
        match e {
            AppError::BadRequest(m) => Ec2Error::invalid(m),
            AppError::Conflict(m) => Ec2Error::bad("IncorrectInstanceState", m),
            other => Ec2Error::from_app(other, Domain::Instance),
        }
    })?;
    Ok(vec![El::text("return", "true"), El::text("associationId", association_id(f.id.as_str()))])
}

/// DisassociateAddress: the address stays allocated. Asking again is not
/// an error (EC2 documents the call as idempotent).
pub async fn disassociate(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let f = match (p.str("AssociationId").filter(|s| !s.is_empty()), p.str("PublicIp").filter(|s| !s.is_empty())) {
        (Some(a), _) => load(ctx, caller, By::Association, a).await?,
        (None, Some(ip)) => load(ctx, caller, By::PublicIp, ip).await?,
        (None, None) => return Err(Ec2Error::missing("AssociationId")),
    };
    if f.instance_id.is_some() {
        app::floating_ips::disassociate(ctx, caller, f.id.as_str()).await.map_err(refusal)?;
    }
    Ok(vec![El::text("return", "true")])
}

/// ReleaseAddress: back to the pool; refused while associated, as on EC2.
pub async fn release(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let f = named(ctx, caller, p).await?;
    if let Some(name) = p.str("NetworkBorderGroup").filter(|s| !s.is_empty()) {
        if name != f.network {
            return Err(Ec2Error::invalid(format!(
                "Elastic IP {} is of NetworkBorderGroup {}, not {}",
                f.address,
                f.network,
                short(name)
            )));
        }
    }
    if let Some(instance) = &f.instance_id {
        return Err(Ec2Error::bad(
            "InvalidIPAddress.InUse",
            format!(
                "Elastic IP {} is associated with {instance}: disassociate it (DisassociateAddress) before releasing it",
                f.address
            ),
        ));
    }
    app::floating_ips::release(ctx, caller, f.id.as_str()).await.map_err(refusal)?;
    Ok(vec![El::text("return", "true")])
}

const FILTERS: &[&str] = &[
    "allocation-id",
    "association-id",
    "domain",
    "instance-id",
    "network-border-group",
    "network-interface-id",
    "network-interface-owner-id",
    "private-ip-address",
    "public-ip",
];

/// The network interface id of an instance's NIC (as `instances` names it).
fn eni_of(instance: &str, index: i64) -> String {
    format!("eni-{}{index:x}", instance.trim_start_matches(InstanceId::PREFIX))
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let filters = p.filters()?;
    query::check_filters(&filters, FILTERS, true)?;
    let all: Vec<FloatingIp> = app::floating_ips::list(ctx, caller)
        .await
        .map_err(refusal)?
        .into_iter()
        // An address assigned automatically is the instance's public IP,
        // which EC2 does not list among Elastic IPs.
        .filter(|f| f.project_id.as_str() == project && !f.auto_assigned)
        .collect();
    // Every id and address named must be the project's.
    let mut wanted = Vec::new();
    for a in p.list("AllocationId") {
        let fip = floating_ip_of(ALLOC, &a).ok_or_else(|| malformed("InvalidAllocationID.Malformed", ALLOC, &a))?;
        if !all.iter().any(|f| f.id.as_str() == fip) {
            return Err(alloc_not_found(&a));
        }
        wanted.push(fip);
    }
    for ip in p.list("PublicIp") {
        match all.iter().find(|f| f.address == ip) {
            Some(f) => wanted.push(f.id.to_string()),
            None => return Err(address_not_found(&ip)),
        }
    }
    // The NIC each associated address translates to, for its interface id.
    let mut nics: HashMap<String, i64> = HashMap::new();
    for f in &all {
        if let Some(i) = &f.instance_id {
            if let Some(port) = first_private_port(ctx, i.as_str()).await? {
                nics.insert(f.id.to_string(), port.nic_index);
            }
        }
    }
    let items = all
        .iter()
        .filter(|f| wanted.is_empty() || wanted.iter().any(|w| w == f.id.as_str()))
        .filter(|f| {
            let instance = f.instance_id.as_ref().map(|i| i.to_string());
            let eni = instance.as_ref().and_then(|i| nics.get(f.id.as_str()).map(|n| eni_of(i, *n)));
            let assoc = instance.as_ref().map(|_| association_id(f.id.as_str()));
            query::matches(&filters, |name| match name {
                "allocation-id" => vec![allocation_id(f.id.as_str())],
                "association-id" => assoc.clone().into_iter().collect(),
                "domain" => vec!["vpc".into()],
                "instance-id" => instance.clone().into_iter().collect(),
                "network-border-group" => vec![f.network.clone()],
                "network-interface-id" => eni.clone().into_iter().collect(),
                "network-interface-owner-id" => eni.as_ref().map(|_| f.project_id.to_string()).into_iter().collect(),
                "private-ip-address" => f.private_address.clone().into_iter().collect(),
                "public-ip" => vec![f.address.clone()],
                // No tags on addresses: a tag filter matches none.
                _ => Vec::new(),
            })
        })
        .map(|f| {
            let instance = f.instance_id.as_ref().map(|i| i.to_string());
            let eni = instance.as_ref().and_then(|i| nics.get(f.id.as_str()).map(|n| eni_of(i, *n)));
            El::item()
                .field("publicIp", &f.address)
                .field("allocationId", allocation_id(f.id.as_str()))
                .field("domain", "vpc")
                .opt("instanceId", instance.as_deref())
                .opt("associationId", instance.as_ref().map(|_| association_id(f.id.as_str())))
                .opt("networkInterfaceId", eni.as_deref())
                .opt("networkInterfaceOwnerId", eni.as_ref().map(|_| f.project_id.to_string()))
                .opt("privateIpAddress", f.private_address.as_deref())
                .child(El::new("tagSet"))
                .field("publicIpv4Pool", &f.network)
                .field("networkBorderGroup", &f.network)
        });
    Ok(vec![El::list("addressesSet", items)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_back_to_the_floating_ip() {
        let fip = FloatingIpId::generate().to_string();
        let (alloc, assoc) = (allocation_id(&fip), association_id(&fip));
        assert!(alloc.starts_with("eipalloc-") && assoc.starts_with("eipassoc-"));
        assert_eq!(floating_ip_of(ALLOC, &alloc), Some(fip.clone()));
        assert_eq!(floating_ip_of(ASSOC, &assoc), Some(fip));
        assert_eq!(floating_ip_of(ALLOC, &assoc), None);
        assert_eq!(floating_ip_of(ALLOC, "eipalloc-zz"), None);
        assert_eq!(eni_of("i-0123456789abcdef0", 0), "eni-0123456789abcdef00");
    }
}
