//! EC2 instances: RunInstances (by instance type, with user-data, key
//! pair, security groups, tags, the root disk's size, a subnet and a
//! private address on it, and ClientToken idempotency), DescribeInstances
//! (ids, filters, pagination; the VPC, subnet and address of instances
//! on networks),
//! Start/Stop/Reboot/TerminateInstances and GetConsoleOutput. Launches
//! and power changes are the application layer's (`app::instances`), as
//! for the REST API, so quotas, placement and the agent's work are the
//! same.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::app;
use crate::auth::Caller;
use crate::authz::Access;
use crate::client_tokens::Claim;
use crate::error::AppError;
use crate::instance_batch::{Scope, Selection};
use crate::pagination::{PageRequest, MAX_PAGE};
use crate::store::InstanceRow;
use crate::volumes::VolumeRow;
use crate::Ctx;
use base64::Engine;
use nubo_api::agent::PowerState;
use nubo_api::ids::{InstanceId, ReservationId};
use nubo_api::params::{InstanceCreate, MetadataOptions};
use nubo_api::views::InstanceState;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The instance type used when RunInstances names none.
pub const DEFAULT_INSTANCE_TYPE: &str = "t2.micro";
/// The root disk when no block device mapping sets it (EC2's usual 8 GiB).
pub const DEFAULT_ROOT_GIB: u64 = 8;
/// The device name instances report for their root disk.
pub const ROOT_DEVICE: &str = "/dev/sda1";
/// Most instances one RunInstances may ask for.
pub const MAX_COUNT: i64 = 100;
/// Terminated instances stay visible in listings this long, as on EC2.
const TERMINATED_VISIBLE_MS: i64 = 3600 * 1000;

/// EC2's state code and name for an instance, from what the user asked
/// for and what the agent reported.
pub fn state_of(row: &InstanceRow) -> (u16, &'static str) {
    use InstanceState as S;
    use PowerState as P;
    match (row.desired, row.state) {
        (_, S::Terminated) => (48, "terminated"),
        (P::Deleted, _) => (32, "shutting-down"),
        // EC2 has no error state: a VM that failed is stopped, with the reason.
        (_, S::Error | S::Lost) => (80, "stopped"),
        (P::Stopped, S::Stopped) => (80, "stopped"),
        (P::Stopped, _) => (64, "stopping"),
        (P::Running, S::Running) => (16, "running"),
        _ => (0, "pending"),
    }
}

pub(super) fn state_el(name: &'static str, row: &InstanceRow) -> El {
    let (code, state) = state_of(row);
    El::new(name).field("code", code).field("name", state)
}

/// The reservation an instance belongs to; one of its own for instances
/// launched through REST.
pub fn reservation_of(row: &InstanceRow) -> String {
    row.reservation_id.clone().unwrap_or_else(|| format!("r-{}", row.id.trim_start_matches("i-")))
}

/// What listing instances needs beside their rows, read once per request.
pub(super) struct Lookups {
    pub(super) tags: HashMap<String, BTreeMap<String, String>>,
    pub(super) groups: HashMap<String, Vec<(String, String)>>,
    pub(super) volumes: HashMap<String, Vec<VolumeRow>>,
    pub(super) addresses: HashMap<String, Vec<crate::instance_batch::Address>>,
}

/// Tags, security groups, live volumes and NICs of the selection's
/// instances: four queries however many instances it holds.
async fn lookups(ctx: &Ctx, selection: &Selection<'_>) -> Ec2Result<Lookups> {
    Ok(Lookups {
        tags: ctx.store.tags_of_selection(selection).await?,
        groups: ctx.store.groups_of_selection(selection).await?,
        volumes: ctx.store.volumes_of_selection(selection, true).await?,
        addresses: ctx.store.addresses_of_selection(selection).await?,
    })
}

/// EC2's state reason of an instance: why it stopped or failed.
pub(super) fn state_reason(row: &InstanceRow) -> Option<(&'static str, String)> {
    let (code, _) = state_of(row);
    match (row.state, &row.error) {
        (InstanceState::Error, Some(e)) => Some(("Server.InternalError", e.clone())),
        // 64 and 80: EC2's stopping and stopped.
        _ if matches!(code, 64 | 80) => {
            Some(("Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown".to_string()))
        }
        _ => None,
    }
}

fn instance_item(ctx: &Ctx, row: &InstanceRow, l: &Lookups) -> El {
    let groups = l.groups.get(&row.id).map(Vec::as_slice).unwrap_or_default();
    let empty = BTreeMap::new();
    let tags = l.tags.get(&row.id).unwrap_or(&empty);
    let devices = block_devices(l.volumes.get(&row.id).map(Vec::as_slice).unwrap_or_default());
    let reason = state_reason(row).map(|(c, m)| El::new("stateReason").field("code", c).field("message", m));
    // On networks: the first NIC is the instance's VPC, subnet and
    // private address, as EC2's primary network interface.
    let nics = l.addresses.get(&row.id).map(Vec::as_slice).unwrap_or_default();
    let primary = nics.first().map(|n| {
        let (vpc, subnet) = crate::networks::ec2_ids(&n.port.network_id);
        (vpc, subnet, n.port.address.clone(), private_dns_name(ctx, &n.port.address))
    });
    let group_items = || groups.iter().map(|(id, name)| El::item().field("groupId", id).field("groupName", name));
    // A floating IP is the instance's public address, on the NIC it
    // translates to (EC2's association of an Elastic IP).
    let public_ip = nics.iter().find_map(|n| n.floating_ip.clone());
    let association = |n: &crate::instance_batch::Address| {
        n.floating_ip.as_ref().map(|ip| {
            El::new("association")
                .field("publicIp", ip)
                .field("publicDnsName", "")
                .field("ipOwnerId", row.project_id.as_deref().unwrap_or(""))
        })
    };
    let interfaces = nics.iter().map(|n| {
        let (vpc, subnet) = crate::networks::ec2_ids(&n.port.network_id);
        let dns = private_dns_name(ctx, &n.port.address);
        let mut private =
            El::item().field("privateIpAddress", &n.port.address).field("privateDnsName", &dns).field("primary", true);
        let mut nic = El::item();
        if let Some(a) = association(n) {
            private = private.child(a.clone());
            nic = nic.child(a);
        }
        nic.field("networkInterfaceId", format!("eni-{}", nic_hex(&row.id, n.port.nic_index)))
            .field("subnetId", &subnet)
            .field("vpcId", &vpc)
            .field("ownerId", row.project_id.as_deref().unwrap_or(""))
            .field("status", "in-use")
            .field("macAddress", &n.port.mac)
            .field("privateIpAddress", &n.port.address)
            .field("privateDnsName", &dns)
            .field("sourceDestCheck", row.source_dest_check == 1)
            .child(El::list("groupSet", group_items()))
            .child(
                El::new("attachment")
                    .field("attachmentId", format!("eni-attach-{}", nic_hex(&row.id, n.port.nic_index)))
                    .field("deviceIndex", n.port.nic_index)
                    .field("status", "attached")
                    .field("attachTime", xml::time(row.created_at_ms))
                    .field("deleteOnTermination", true),
            )
            .child(El::list("privateIpAddressesSet", [private]))
            .field("interfaceType", "interface")
    });
    let interfaces: Vec<El> = interfaces.collect();
    let mut item = El::item()
        .field("instanceId", &row.id)
        .field("imageId", row.image_id.as_deref().unwrap_or(&row.image))
        .child(state_el("instanceState", row))
        .field("privateDnsName", primary.as_ref().map(|p| p.3.as_str()).unwrap_or(""))
        .field("dnsName", "")
        .field("reason", reason.as_ref().map(|_| "User initiated").unwrap_or(""))
        .opt("keyName", row.key_name.as_deref())
        .field("amiLaunchIndex", row.launch_index)
        .child(El::new("productCodes"))
        .field("instanceType", app::instances::instance_type_of(row))
        .field("launchTime", xml::time(row.created_at_ms))
        .child(
            El::new("placement")
                .field("availabilityZone", &ctx.config.availability_zone)
                .field("availabilityZoneId", super::catalog::zone_id(ctx))
                .field("groupName", "")
                .field("tenancy", "default"),
        )
        .child(El::new("monitoring").field("state", "disabled"))
        .opt("subnetId", primary.as_ref().map(|p| &p.1))
        .opt("vpcId", primary.as_ref().map(|p| &p.0))
        .opt("privateIpAddress", primary.as_ref().map(|p| &p.2))
        .opt("ipAddress", public_ip.as_deref())
        .child(El::list("groupSet", group_items()))
        .field("architecture", "x86_64")
        .field("rootDeviceType", "ebs")
        .field("rootDeviceName", ROOT_DEVICE)
        .child(El::list("blockDeviceMapping", devices))
        .field("virtualizationType", "hvm")
        .field("hypervisor", super::instance_filters::HYPERVISOR)
        .field("sourceDestCheck", row.source_dest_check == 1)
        .field(
            "currentInstanceBootMode",
            crate::hardware::ec2_boot_mode(&crate::hardware::parse(row.hardware.as_deref())),
        )
        .field("ebsOptimized", false)
        .field("enaSupport", false)
        .child(El::new("hibernationOptions").field("configured", false))
        .child(El::new("enclaveOptions").field("enabled", false))
        .child(El::new("maintenanceOptions").field("autoRecovery", "default"))
        .child(
            El::new("privateDnsNameOptions")
                .field("hostnameType", "ip-name")
                .field("enableResourceNameDnsARecord", false)
                .field("enableResourceNameDnsAAAARecord", false),
        )
        .field("platformDetails", super::instance_filters::PLATFORM_DETAILS)
        .field("usageOperation", super::instance_filters::USAGE_OPERATION)
        .field("usageOperationUpdateTime", xml::time(row.created_at_ms))
        .opt("clientToken", row.client_token.as_deref())
        .child(xml::tag_set(tags))
        .child(El::new("cpuOptions").field("coreCount", row.vcpus).field("threadsPerCore", 1))
        .child(
            El::new("metadataOptions")
                .field("state", "applied")
                .field("httpTokens", &row.imds_tokens)
                .field("httpPutResponseHopLimit", 1)
                .field("httpEndpoint", "enabled")
                .field("httpProtocolIpv6", "disabled")
                .field("instanceMetadataTags", "disabled"),
        );
    if !interfaces.is_empty() {
        item = item.child(El::list("networkInterfaceSet", interfaces));
    }
    if let Some(r) = reason {
        item = item.child(r);
    }
    item
}

/// The block device mapping's items: the root disk, then the volumes
/// attached (or being attached or detached).
pub(super) fn block_devices(volumes: &[VolumeRow]) -> Vec<El> {
    let mut devices = vec![El::item()
        .field("deviceName", ROOT_DEVICE)
        .child(El::new("ebs").field("status", "attached").field("deleteOnTermination", "true"))];
    for v in volumes {
        devices.push(
            El::item().field("deviceName", super::volumes::device_of(v)).child(
                El::new("ebs")
                    .field("volumeId", &v.id)
                    .field("status", volume_status(v))
                    .field("attachTime", xml::time(v.updated_at_ms))
                    .field("deleteOnTermination", v.delete_on_termination == 1),
            ),
        );
    }
    devices
}

/// A volume's attachment status as EC2 names it.
pub(super) fn volume_status(v: &VolumeRow) -> &'static str {
    v.attach_state.unwrap_or(nubo_api::views::AttachState::Attaching).as_str()
}

/// EC2's private DNS name of an address (`ip-172-31-0-2.<region>.compute.internal`).
pub(super) fn private_dns_name(ctx: &Ctx, address: &str) -> String {
    format!("ip-{}.{}.compute.internal", address.replace('.', "-"), ctx.config.region)
}

/// The hex digits of a NIC's interface id: the instance's, then its NIC
/// index (an instance's NICs are fixed for its life, so the id is too).
pub(super) fn nic_hex(instance: &str, index: i64) -> String {
    format!("{}{index:x}", instance.trim_start_matches("i-"))
}

/// Reservations of `rows`, in the order their first instance comes.
fn reservations(ctx: &Ctx, rows: &[InstanceRow], l: &Lookups) -> Vec<El> {
    let mut order: Vec<String> = Vec::new();
    let mut by: HashMap<String, Vec<&InstanceRow>> = HashMap::new();
    for r in rows {
        let id = reservation_of(r);
        if !by.contains_key(&id) {
            order.push(id.clone());
        }
        by.entry(id).or_default().push(r);
    }
    order
        .into_iter()
        .map(|id| {
            let members = by.remove(&id).unwrap_or_default();
            let owner = members.first().and_then(|r| r.project_id.clone()).unwrap_or_default();
            El::item()
                .field("reservationId", &id)
                .field("ownerId", owner)
                .child(El::new("groupSet"))
                .child(El::list("instancesSet", members.into_iter().map(|r| instance_item(ctx, r, l))))
        })
        .collect()
}

/// Parses instance ids; the first malformed one refuses the request.
/// EC2's older ids (`i-` and 8 hex digits) are well-formed, but no Nubo
/// instance has one: such ids are not found, as EC2 says of an unknown id.
pub fn parse_ids(ids: &[String]) -> Ec2Result<Vec<InstanceId>> {
    let mut parsed = Vec::new();
    let mut unknown = Vec::new();
    for i in ids {
        match i.parse::<InstanceId>() {
            Ok(id) => parsed.push(id),
            Err(_) if is_short_instance_id(i) => unknown.push(i.clone()),
            Err(_) => {
                return Err(Ec2Error::bad(
                    "InvalidInstanceID.Malformed",
                    format!(
                        "Invalid id: \"{}\" (expected i- and 17 hex digits)",
                        i.chars().take(64).collect::<String>()
                    ),
                ))
            }
        }
    }
    if !unknown.is_empty() {
        return Err(Ec2Error::not_found("instance", &unknown));
    }
    Ok(parsed)
}

/// `i-` and 8 lowercase hex digits: EC2's instance ids before 2016.
fn is_short_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|h| h.len() == 8 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Loads every instance named, or names all that the caller cannot see.
async fn load_all(ctx: &Ctx, caller: &Caller, ids: &[InstanceId], access: Access) -> Ec2Result<Vec<InstanceRow>> {
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for id in ids {
        match app::instances::load(ctx, caller, id.as_str(), access).await {
            Ok(r) => rows.push(r),
            Err(AppError::NotFound { .. }) => missing.push(id.to_string()),
            Err(e) => return Err(Ec2Error::from_app(e, Domain::Instance)),
        }
    }
    if !missing.is_empty() {
        return Err(Ec2Error::not_found("instance", &missing));
    }
    Ok(rows)
}

/// The instances a Describe call answers about: those named (each must be
/// the caller's), or one page (`MaxResults`, `NextToken`) of the
/// project's, in SQL, terminated ones for an hour as EC2 shows them.
/// Filters apply to the page read, so a page may hold fewer than
/// MaxResults (even none) and still have a NextToken, as on EC2.
pub(super) async fn listed(
    ctx: &Ctx,
    caller: &Caller,
    project: &str,
    ids: &[InstanceId],
    p: &Params,
) -> Ec2Result<(Vec<InstanceRow>, Option<String>)> {
    if !ids.is_empty() && p.str("MaxResults").is_some() {
        return Err(Ec2Error::bad(
            "InvalidParameterCombination",
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    let page = PageRequest::parse("MaxResults", p.int("MaxResults")?, p.str("NextToken"), 5..=MAX_PAGE)
        .map_err(Ec2Error::from_page)?;
    if !ids.is_empty() {
        return Ok((load_all(ctx, caller, ids, Access::Read).await?, None));
    }
    let selection = project_selection(project).page(page);
    let rows = ctx.store.select_instances(&selection).await?;
    Ok(selection.page.cut(rows, app::instances::cursor_of))
}

/// The project's instances as Describe calls list them (terminated ones
/// for an hour); [`Selection::for_related`] of it reads their related rows.
fn project_selection(project: &str) -> Selection<'_> {
    Selection::new(Scope::Project(project)).terminated_since(crate::store::now_ms() - TERMINATED_VISIBLE_MS)
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids = parse_ids(&p.list("InstanceId"))?;
    let filters = p.filters()?;
    query::check_filters(&filters, super::instance_filters::FILTERS, true)?;
    let (rows, next) = listed(ctx, caller, &project, &ids, p).await?;
    let found: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let whole = project_selection(&project);
    let l = lookups(ctx, &whole.for_related(&found)).await?;
    let rows: Vec<InstanceRow> = rows
        .into_iter()
        .filter(|r| query::matches(&filters, |name| super::instance_filters::values(ctx, r, &l, name)))
        .collect();
    let mut out = vec![El::list("reservationSet", reservations(ctx, &rows, &l))];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

/// RunInstances' parameters, checked.
struct RunRequest {
    image: String,
    instance_type: String,
    min: u32,
    max: u32,
    user_data: Option<String>,
    key_name: Option<String>,
    group_ids: Vec<String>,
    group_names: Vec<String>,
    tags: Vec<(String, String)>,
    volume_tags: Vec<(String, String)>,
    root_gib: Option<u64>,
    volumes: Vec<crate::app::volumes::LaunchVolume>,
    client_token: Option<String>,
    http_tokens: Option<String>,
    subnet_id: Option<String>,
    private_address: Option<String>,
}

fn parse_run(ctx: &Ctx, p: &Params) -> Ec2Result<RunRequest> {
    let image = p.required("ImageId")?.to_string();
    if image.starts_with("ami-") && image.parse::<nubo_api::ids::ImageId>().is_err() {
        return Err(Ec2Error::bad(
            "InvalidAMIID.Malformed",
            format!("Invalid id: \"{}\"", image.chars().take(64).collect::<String>()),
        ));
    }
    let instance_type = p.str("InstanceType").unwrap_or(DEFAULT_INSTANCE_TYPE).to_string();
    let min = p.int_in("MinCount", 1..=MAX_COUNT)?.unwrap_or(1);
    let max = p.int_in("MaxCount", 1..=MAX_COUNT)?.unwrap_or(min);
    if min > max {
        return Err(Ec2Error::invalid(format!("MinCount ({min}) must not be above MaxCount ({max})")));
    }
    let user_data = match p.str("UserData") {
        None | Some("") => None,
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| Ec2Error::invalid("Invalid BASE64 encoding of user data"))?;
            Some(String::from_utf8(raw).map_err(|_| {
                Ec2Error::invalid("the user data is not UTF-8 text (compressed user data is not supported): send a script or #cloud-config")
            })?)
        }
    };
    let (mut tags, mut volume_tags) = (Vec::new(), Vec::new());
    for spec in p.structs("TagSpecification") {
        // Volume tags go to the volumes the launch makes from its block
        // device mappings (the root disk is part of the instance here).
        let to = match spec.str("ResourceType") {
            Some("instance") => &mut tags,
            Some("volume") => &mut volume_tags,
            other => {
                return Err(Ec2Error::invalid(format!(
                "TagSpecification ResourceType '{}' is not supported by RunInstances here: use 'instance' or 'volume'",
                other.unwrap_or("").chars().take(40).collect::<String>()
            )))
            }
        };
        for (k, v) in spec.tags("Tag")? {
            to.push((k, v.unwrap_or_default()));
        }
    }
    let mappings = super::block_devices::parse(p)?;
    if let Some(z) = p.str("Placement.AvailabilityZone").filter(|z| !z.is_empty()) {
        if z != ctx.config.availability_zone {
            return Err(Ec2Error::invalid(format!(
                "Invalid availability zone: [{}]; this region has {}",
                z.chars().take(40).collect::<String>(),
                ctx.config.availability_zone
            )));
        }
    }
    // The subnet, address and groups come flat, or in the one network
    // interface a launch may describe (NetworkInterface.1, device 0).
    let mut subnet_id = p.str("SubnetId").filter(|s| !s.is_empty()).map(str::to_string);
    let mut private_address = p.str("PrivateIpAddress").filter(|s| !s.is_empty()).map(str::to_string);
    let mut group_ids = p.list("SecurityGroupId");
    let interfaces = p.structs("NetworkInterface");
    if interfaces.len() > 1 || interfaces.iter().any(|i| i.str("DeviceIndex").is_some_and(|d| d != "0")) {
        return Err(Ec2Error::invalid(
            "an instance has one network interface here (DeviceIndex 0): its subnet's network; attach more networks through the REST API",
        ));
    }
    if let Some(i) = interfaces.first() {
        if subnet_id.is_some() || private_address.is_some() || !group_ids.is_empty() {
            return Err(Ec2Error::bad(
                "InvalidParameterCombination",
                "Network interfaces and an instance-level subnet ID, private IP address or security groups may not be specified on the same request",
            ));
        }
        subnet_id = i.str("SubnetId").filter(|s| !s.is_empty()).map(str::to_string);
        private_address = i.str("PrivateIpAddress").filter(|s| !s.is_empty()).map(str::to_string);
        group_ids = i.list("SecurityGroupId");
    }
    if private_address.is_some() && max > 1 {
        return Err(Ec2Error::bad(
            "InvalidParameterCombination",
            "PrivateIpAddress cannot be used with a MaxCount above 1: one address is one instance's",
        ));
    }
    let client_token = p.str("ClientToken").filter(|t| !t.is_empty()).map(str::to_string);
    if client_token.as_ref().is_some_and(|t| t.len() > 64 || !t.is_ascii()) {
        return Err(Ec2Error::invalid("ClientToken must be at most 64 ASCII characters"));
    }
    Ok(RunRequest {
        image,
        instance_type,
        min: min as u32,
        max: max as u32,
        user_data,
        key_name: p.str("KeyName").filter(|k| !k.is_empty()).map(str::to_string),
        group_ids,
        group_names: p.list("SecurityGroup"),
        tags,
        volume_tags,
        root_gib: mappings.root_gib,
        volumes: mappings.volumes,
        client_token,
        http_tokens: p.str("MetadataOptions.HttpTokens").map(str::to_string),
        subnet_id,
        private_address,
    })
}

/// A hash of the parameters that define a launch (not the signature's or
/// DryRun), to tell a retry from a different request with the same token.
fn request_hash(p: &Params) -> String {
    let mut h = Sha256::new();
    for (k, v) in p.iter().filter(|(k, _)| !matches!(k.as_str(), "DryRun" | "Version")) {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

pub async fn run(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = crate::authz::creation_project(caller).in_domain(Domain::Instance)?;
    // A LaunchTemplate fills in what the request leaves out.
    let merged = super::launch_templates::run_params(ctx, caller, p).await?;
    let p = merged.as_ref().unwrap_or(p);
    let req = parse_run(ctx, p)?;
    let itype = ctx.config.instance_types.get(&req.instance_type).cloned().ok_or_else(|| {
        Ec2Error::invalid(format!(
            "Invalid value '{}' for InstanceType; see DescribeInstanceTypes (e.g. t2.micro, t3.small, m5.large)",
            req.instance_type.chars().take(40).collect::<String>()
        ))
    })?;
    let image = ctx
        .store
        .resolve_image(Some(&project), &req.image)
        .await?
        .ok_or_else(|| Ec2Error::not_found("image", std::slice::from_ref(&req.image)))?;
    if let Some(k) = &req.key_name {
        if ctx.store.keypair(&project, k).await?.is_none() {
            return Err(Ec2Error::bad(
                "InvalidKeyPair.NotFound",
                format!("The key pair '{}' does not exist", k.chars().take(64).collect::<String>()),
            ));
        }
    }
    let groups = super::security_groups::resolve(ctx, &project, &req.group_ids, &req.group_names).await?;
    for (k, v) in req.tags.iter().chain(&req.volume_tags) {
        crate::validate::tag(k, v).in_domain(Domain::Instance)?;
    }
    let network = subnet_of(ctx, caller, &project, &req).await?;
    // ClientToken: a retry gets the first request's reservation.
    let reservation = ReservationId::generate().to_string();
    if let Some(token) = &req.client_token {
        match ctx.store.claim_client_token(&project, token, &request_hash(p), &reservation).await? {
            Claim::New => {}
            Claim::Existing(row) => return answer_retry(ctx, caller, &project, token, row, &request_hash(p)).await,
        }
    }
    let launched =
        launch_all(ctx, caller, &project, &req, &itype, &image, &groups, network.as_ref(), &reservation).await;
    let rows = match launched {
        Ok(rows) => rows,
        Err(e) => {
            if let Some(token) = &req.client_token {
                ctx.store.release_client_token(&project, token).await?;
            }
            return Err(e);
        }
    };
    if let Some(token) = &req.client_token {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        ctx.store.complete_client_token(&project, token, &ids).await?;
    }
    run_answer(ctx, &project, &reservation, &rows).await
}

/// The network a launch's SubnetId names (a PrivateIpAddress without one
/// is of the default subnet, as on EC2), with the address checked to be
/// one of its free instance addresses. None: the launch does as a REST
/// launch without networks does (the default network where a host can
/// bridge).
async fn subnet_of(
    ctx: &Ctx,
    caller: &Caller,
    project: &str,
    req: &RunRequest,
) -> Ec2Result<Option<crate::networks::NetworkRow>> {
    let network = match (&req.subnet_id, &req.private_address) {
        (Some(s), _) => super::vpcs::load_subnet(ctx, caller, s, Access::Write).await?,
        (None, Some(_)) => app::networks::ensure_default(ctx, project).await.in_domain(Domain::Other)?,
        (None, None) => return Ok(None),
    };
    if let Some(a) = &req.private_address {
        let (_, subnet) = crate::networks::ec2_ids(&network.id);
        let cidr = crate::networks::Cidr::parse_network(&network.cidr)
            .map_err(|e| Ec2Error::from_app(AppError::internal(e), Domain::Other))?;
        let addr: std::net::Ipv4Addr = a.parse().map_err(|_| {
            Ec2Error::invalid(format!(
                "Invalid value '{}' for PrivateIpAddress: expected an IPv4 address",
                a.chars().take(40).collect::<String>()
            ))
        })?;
        if !cidr.is_host(addr) {
            return Err(Ec2Error::invalid(format!(
                "Address {addr} does not fall within the subnet's address range: subnet {subnet} is {} (its first address is the gateway; the network and broadcast addresses are reserved)",
                network.cidr
            )));
        }
        if address_in_use(ctx, &network.id, &addr.to_string()).await? {
            return Err(in_use(&addr.to_string()));
        }
    }
    Ok(Some(network))
}

async fn address_in_use(ctx: &Ctx, network: &str, address: &str) -> Ec2Result<bool> {
    Ok(ctx.store.network_ports(Some(network)).await?.iter().any(|p| p.address == address))
}

fn in_use(address: &str) -> Ec2Error {
    Ec2Error::bad("InvalidIPAddress.InUse", format!("Address {address} is in use: ask for another, or for none"))
}

#[allow(clippy::too_many_arguments)]
async fn launch_all(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    project: &str,
    req: &RunRequest,
    itype: &crate::instance_types::InstanceType,
    image: &crate::images::ImageRow,
    groups: &[String],
    network: Option<&crate::networks::NetworkRow>,
    reservation: &str,
) -> Ec2Result<Vec<InstanceRow>> {
    // The quota must allow MinCount, or nothing is launched (as on EC2).
    if let Some(q) = ctx.store.project(project).await? {
        let n = i64::from(req.min);
        let (need_vcpus, need_mib) = (n * i64::from(itype.vcpus), n * itype.memory_mib as i64);
        if q.used_instances + n > q.quota_instances
            || q.used_vcpus + need_vcpus > q.quota_vcpus
            || q.used_memory_mib + need_mib > q.quota_memory_mib
        {
            return Err(Ec2Error::bad(
                "InstanceLimitExceeded",
                format!(
                    "Your quota allows no {} more {} instances: project {} uses instances {}/{}, vCPUs {}/{}, memory {}/{} MiB. Terminate instances or ask an operator to raise the quota",
                    req.min, itype.name, q.name, q.used_instances, q.quota_instances, q.used_vcpus, q.quota_vcpus,
                    q.used_memory_mib, q.quota_memory_mib
                ),
            ));
        }
    }
    let name_tag = req.tags.iter().find(|(k, _)| k == "Name").map(|(_, v)| v.clone());
    let create = InstanceCreate {
        image: image.id.clone(),
        vcpus: itype.vcpus,
        memory_mib: itype.memory_mib,
        disk_gib: req.root_gib.unwrap_or_else(|| DEFAULT_ROOT_GIB.max(image.min_disk_gib as u64)),
        // The Name tag names the instance for the CLI too, when it is a valid name.
        name: name_tag.filter(|n| crate::validate::name(n).is_ok()),
        user_data: req.user_data.clone(),
        ports: Vec::new(),
        key_name: req.key_name.clone(),
        recipe: None,
        metadata: req.http_tokens.clone().map(|t| MetadataOptions { http_tokens: Some(t) }),
        tags: Default::default(),
        networks: network.map(|n| n.id.clone()).into_iter().collect(),
        security_groups: Vec::new(),
        cdrom: None,
        boot: None,
        hardware: Default::default(),
    };
    let mut rows = Vec::new();
    for i in 0..req.max {
        let record = crate::launch::LaunchRecord {
            instance_type: Some(&itype.name),
            reservation_id: Some(reservation),
            launch_index: i,
            client_token: req.client_token.as_deref(),
            security_groups: groups,
            tags: &req.tags,
            group_id: None,
            networks: &[],
            private_address: req.private_address.as_deref(),
            cdrom: None,
            hardware: None,
            restore: None,
            verification_of: None,
        };
        let launched = match app::instances::launch(ctx, caller, &create, record).await {
            Ok(row) if req.volumes.is_empty() => Ok(row),
            Ok(row) => {
                match app::volumes::create_for_launch(ctx, caller, &row.id, &req.volumes, &req.volume_tags).await {
                    Ok(_) => Ok(row),
                    Err(e) => {
                        // Its volumes made so far go with it.
                        let _ = ctx.store.terminate(&row.id).await;
                        ctx.bump();
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        match launched {
            Ok(row) => rows.push(row),
            Err(e) if rows.len() >= req.min as usize => {
                tracing::info!(error = %e, launched = rows.len(), "RunInstances launched fewer than MaxCount");
                break;
            }
            Err(e) => {
                // Fewer than MinCount: undo what was launched, as EC2 launches none.
                for r in &rows {
                    let _ = ctx.store.terminate(&r.id).await;
                }
                if !rows.is_empty() {
                    ctx.bump();
                }
                // A concurrent launch took the address after it was checked.
                if let (AppError::Conflict(_), Some(a), Some(n)) = (&e, &req.private_address, network) {
                    if address_in_use(ctx, &n.id, a).await? {
                        return Err(in_use(a));
                    }
                }
                return Err(Ec2Error::from_app(e, Domain::Instance));
            }
        }
    }
    tracing::info!(reservation, count = rows.len(), instance_type = %itype.name, "RunInstances launched");
    Ok(rows)
}

async fn answer_retry(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    project: &str,
    token: &str,
    mut row: crate::client_tokens::ClientTokenRow,
    hash: &str,
) -> Ec2Result<Answer> {
    if row.request_hash != hash {
        return Err(Ec2Error::bad(
            "IdempotentParameterMismatch",
            format!("The client token '{}' was used before with other parameters: use a new ClientToken for a different request", token.chars().take(64).collect::<String>()),
        ));
    }
    // The first request may still be launching: give it a little time.
    for _ in 0..100 {
        if row.instance_ids.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match ctx.store.client_token(project, token).await? {
            Some(r) => row = r,
            None => {
                return Err(Ec2Error::bad("IncorrectState", "the first request with this ClientToken failed: retry it"))
            }
        }
    }
    let Some(ids) = row.instance_ids else {
        return Err(Ec2Error::bad(
            "IncorrectState",
            "the first request with this ClientToken is still launching: retry shortly",
        ));
    };
    let ids: Vec<InstanceId> = ids.split_whitespace().filter_map(|i| i.parse().ok()).collect();
    let rows = load_all(ctx, caller, &ids, Access::Read).await?;
    run_answer(ctx, project, &row.reservation_id, &rows).await
}

async fn run_answer(ctx: &Ctx, project: &str, reservation: &str, rows: &[InstanceRow]) -> Ec2Result<Answer> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let l = lookups(ctx, &Selection::new(Scope::Ids(&ids))).await?;
    Ok(vec![
        El::text("reservationId", reservation),
        El::text("ownerId", project),
        El::new("groupSet"),
        El::list("instancesSet", rows.iter().map(|r| instance_item(ctx, r, &l))),
    ])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    Stop,
    Reboot,
    Terminate,
}

pub async fn power(ctx: &Arc<Ctx>, caller: &Caller, p: &Params, op: Power) -> Ec2Result<Answer> {
    let ids = parse_ids(&p.list("InstanceId"))?;
    if ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId"));
    }
    let rows = load_all(ctx, caller, &ids, Access::Write).await?;
    // Protection refuses the whole request before anything changes, in
    // EC2's words (the app layer refuses it too, for every other caller).
    for row in &rows {
        let (refused, attribute, verb) = match op {
            Power::Terminate => {
                (app::instance_attributes::termination_refusal(row).is_some(), "disableApiTermination", "terminated")
            }
            Power::Stop => (app::instance_attributes::stop_refusal(row).is_some(), "disableApiStop", "stopped"),
            Power::Start | Power::Reboot => (false, "", ""),
        };
        if refused {
            return Err(Ec2Error::bad(
                "OperationNotPermitted",
                format!(
                    "The instance '{}' may not be {verb}. Modify its '{attribute}' instance attribute and try again.",
                    row.id
                ),
            ));
        }
    }
    let mut items = Vec::new();
    for row in rows {
        let before = row.clone();
        let terminated = row.desired == PowerState::Deleted || row.state == InstanceState::Terminated;
        // As on EC2, asking for the state an instance is already in (or
        // going to) succeeds and changes nothing.
        let result = match op {
            Power::Start if row.desired == PowerState::Running && row.state != InstanceState::Error => Ok(()),
            Power::Stop if row.desired == PowerState::Stopped => Ok(()),
            Power::Terminate if terminated => Ok(()),
            Power::Start => app::instances::start(ctx, caller, &row.id).await.map(drop),
            Power::Stop => app::instances::stop(ctx, caller, &row.id).await.map(drop),
            Power::Reboot => app::instances::reboot(ctx, caller, &row.id).await.map(drop),
            Power::Terminate => app::instances::terminate(ctx, caller, &row.id).await.map(drop),
        };
        result.in_domain(Domain::Instance)?;
        let after = ctx.store.instance(&row.id).await?.unwrap_or(row);
        items.push(
            El::item()
                .field("instanceId", &after.id)
                .child(state_el("currentState", &after))
                .child(state_el("previousState", &before)),
        );
    }
    if op == Power::Reboot {
        return Ok(vec![El::text("return", "true")]);
    }
    Ok(vec![El::list("instancesSet", items)])
}

/// EC2 sends at most the last 64 KiB with `Latest=true`; the whole kept
/// console (up to 1 MiB) otherwise, so boot messages are not cut off.
const LATEST_BYTES: usize = 64 * 1024;

pub async fn console(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = p.required("InstanceId")?.to_string();
    let id = parse_ids(&[id])?.remove(0);
    let rows = load_all(ctx, caller, std::slice::from_ref(&id), Access::Read).await?;
    let mut output = ctx.store.console(&rows[0].id).await?;
    if p.bool("Latest")? == Some(true) && output.len() > LATEST_BYTES {
        let cut = crate::store::char_boundary_from(&output, output.len() - LATEST_BYTES);
        output.drain(..cut);
    }
    Ok(vec![
        El::text("instanceId", id),
        El::text("timestamp", xml::time(crate::store::now_ms())),
        El::text("output", base64::engine::general_purpose::STANDARD.encode(output.as_bytes())),
    ])
}
