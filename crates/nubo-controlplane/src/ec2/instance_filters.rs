//! DescribeInstances' filters: every name the EC2 API reference
//! documents for the action, each matched against what Nubo's answer
//! says of the instance (so a filter and the element it names agree).
//! A documented filter for something Nubo has no counterpart of (a
//! dedicated host's affinity, spot requests, IPv6, capacity
//! reservations, ...) matches no instance, as EC2's does for an instance
//! without it; an undocumented name is refused as EC2 refuses it.

use super::instances::{nic_hex, private_dns_name, state_reason, Lookups, ROOT_DEVICE};
use super::xml;
use crate::app;
use crate::store::InstanceRow;
use crate::Ctx;

/// Every filter EC2 documents for DescribeInstances (botocore's
/// `DescribeInstancesRequest`), `tag:KEY`, `tag-key` and `tag-value` aside.
pub const FILTERS: &[&str] = &[
    "affinity",
    "architecture",
    "availability-zone",
    "availability-zone-id",
    "block-device-mapping.attach-time",
    "block-device-mapping.delete-on-termination",
    "block-device-mapping.device-name",
    "block-device-mapping.status",
    "block-device-mapping.volume-id",
    "boot-mode",
    "capacity-reservation-id",
    "capacity-reservation-specification.capacity-reservation-preference",
    "capacity-reservation-specification.capacity-reservation-target.capacity-reservation-id",
    "capacity-reservation-specification.capacity-reservation-target.capacity-reservation-resource-group-arn",
    "client-token",
    "current-instance-boot-mode",
    "dns-name",
    "ebs-optimized",
    "ena-support",
    "enclave-options.enabled",
    "hibernation-options.configured",
    "host-id",
    "hypervisor",
    "iam-instance-profile.arn",
    "iam-instance-profile.id",
    "image-id",
    "instance-id",
    "instance-lifecycle",
    "instance-state-code",
    "instance-state-name",
    "instance-type",
    "instance.group-id",
    "instance.group-name",
    "ip-address",
    "ipv6-address",
    "kernel-id",
    "key-name",
    "launch-index",
    "launch-time",
    "maintenance-options.auto-recovery",
    "metadata-options.http-endpoint",
    "metadata-options.http-protocol-ipv4",
    "metadata-options.http-protocol-ipv6",
    "metadata-options.http-put-response-hop-limit",
    "metadata-options.http-tokens",
    "metadata-options.instance-metadata-tags",
    "metadata-options.state",
    "monitoring-state",
    "network-interface.addresses.association.allocation-id",
    "network-interface.addresses.association.association-id",
    "network-interface.addresses.association.carrier-ip",
    "network-interface.addresses.association.customer-owned-ip",
    "network-interface.addresses.association.ip-owner-id",
    "network-interface.addresses.association.public-dns-name",
    "network-interface.addresses.association.public-ip",
    "network-interface.addresses.primary",
    "network-interface.addresses.private-dns-name",
    "network-interface.addresses.private-ip-address",
    "network-interface.association.allocation-id",
    "network-interface.association.association-id",
    "network-interface.association.carrier-ip",
    "network-interface.association.customer-owned-ip",
    "network-interface.association.ip-owner-id",
    "network-interface.association.public-dns-name",
    "network-interface.association.public-ip",
    "network-interface.attachment.attach-time",
    "network-interface.attachment.attachment-id",
    "network-interface.attachment.delete-on-termination",
    "network-interface.attachment.device-index",
    "network-interface.attachment.instance-id",
    "network-interface.attachment.instance-owner-id",
    "network-interface.attachment.network-card-index",
    "network-interface.attachment.status",
    "network-interface.availability-zone",
    "network-interface.deny-all-igw-traffic",
    "network-interface.description",
    "network-interface.group-id",
    "network-interface.group-name",
    "network-interface.ipv4-prefixes.ipv4-prefix",
    "network-interface.ipv6-address",
    "network-interface.ipv6-addresses.ipv6-address",
    "network-interface.ipv6-addresses.is-primary-ipv6",
    "network-interface.ipv6-native",
    "network-interface.ipv6-prefixes.ipv6-prefix",
    "network-interface.mac-address",
    "network-interface.network-interface-id",
    "network-interface.operator.managed",
    "network-interface.operator.principal",
    "network-interface.outpost-arn",
    "network-interface.owner-id",
    "network-interface.private-dns-name",
    "network-interface.private-ip-address",
    "network-interface.public-dns-name",
    "network-interface.requester-id",
    "network-interface.requester-managed",
    "network-interface.status",
    "network-interface.source-dest-check",
    "network-interface.subnet-id",
    "network-interface.tag-key",
    "network-interface.tag-value",
    "network-interface.vpc-id",
    "network-performance-options.bandwidth-weighting",
    "operator.managed",
    "operator.principal",
    "outpost-arn",
    "owner-id",
    "placement-group-name",
    "placement-partition-number",
    "platform",
    "platform-details",
    "private-dns-name",
    "private-dns-name-options.enable-resource-name-dns-a-record",
    "private-dns-name-options.enable-resource-name-dns-aaaa-record",
    "private-dns-name-options.hostname-type",
    "private-ip-address",
    "product-code",
    "product-code.type",
    "ramdisk-id",
    "reason",
    "requester-id",
    "reservation-id",
    "root-device-name",
    "root-device-type",
    "source-dest-check",
    "spot-instance-request-id",
    "state-reason-code",
    "state-reason-message",
    "subnet-id",
    "tenancy",
    "tpm-support",
    "usage-operation",
    "usage-operation-update-time",
    "virtualization-type",
    "vpc-id",
];

/// What the answer reports as the instance's platform (Linux images only).
pub const PLATFORM_DETAILS: &str = "Linux/UNIX";
/// EC2's usage operation of a Linux instance launched on demand.
pub const USAGE_OPERATION: &str = "RunInstances";
/// EC2's hypervisor names are `ovm` and `xen`; Nitro's KVM-based
/// instances report `xen`, and so do Nubo's KVM ones.
pub const HYPERVISOR: &str = "xen";

fn one(v: impl ToString) -> Vec<String> {
    vec![v.to_string()]
}

/// The instance's values for filter `name` (none: it matches no value).
/// `name` is one of [`FILTERS`] or a tag filter.
pub(super) fn values(ctx: &Ctx, r: &InstanceRow, l: &Lookups, name: &str) -> Vec<String> {
    let (code, state) = super::instances::state_of(r);
    let groups = l.groups.get(&r.id).map(Vec::as_slice).unwrap_or_default();
    let nics = l.addresses.get(&r.id).map(Vec::as_slice).unwrap_or_default();
    let volumes = l.volumes.get(&r.id).map(Vec::as_slice).unwrap_or_default();
    let owner = r.project_id.clone().unwrap_or_default();
    let bool_str = |b: bool| one(b);
    // One value per NIC.
    let per_nic = |f: &dyn Fn(&crate::instance_batch::Address) -> Option<String>| -> Vec<String> {
        nics.iter().filter_map(f).collect()
    };
    let nic_constant = |v: &str| -> Vec<String> { nics.iter().map(|_| v.to_string()).collect() };
    match name {
        "instance-id" => one(&r.id),
        "network-interface.attachment.instance-id" => nic_constant(&r.id),
        "instance-state-name" => one(state),
        "instance-state-code" => one(code),
        "instance-type" => one(app::instances::instance_type_of(r)),
        "image-id" => r.image_id.clone().into_iter().collect(),
        "key-name" => r.key_name.clone().into_iter().collect(),
        "reservation-id" => one(super::instances::reservation_of(r)),
        "availability-zone" => one(&ctx.config.availability_zone),
        "availability-zone-id" => one(super::catalog::zone_id(ctx)),
        "client-token" => r.client_token.clone().into_iter().collect(),
        "launch-index" => one(r.launch_index),
        "launch-time" | "usage-operation-update-time" => one(xml::time(r.created_at_ms)),
        "instance.group-id" => groups.iter().map(|g| g.0.clone()).collect(),
        "instance.group-name" => groups.iter().map(|g| g.1.clone()).collect(),
        "architecture" => one("x86_64"),
        "hypervisor" => one(HYPERVISOR),
        "virtualization-type" => one("hvm"),
        "root-device-type" => one("ebs"),
        "root-device-name" => one(ROOT_DEVICE),
        "tenancy" => one("default"),
        "monitoring-state" => one("disabled"),
        "owner-id" => one(&owner),
        "platform-details" => one(PLATFORM_DETAILS),
        "usage-operation" => one(USAGE_OPERATION),
        "source-dest-check" => bool_str(r.source_dest_check == 1),
        "ebs-optimized" | "ena-support" | "enclave-options.enabled" | "hibernation-options.configured" => {
            bool_str(false)
        }
        "maintenance-options.auto-recovery" => one("default"),
        "metadata-options.state" => one("applied"),
        "metadata-options.http-tokens" => one(&r.imds_tokens),
        "metadata-options.http-endpoint" | "metadata-options.http-protocol-ipv4" => one("enabled"),
        "metadata-options.http-protocol-ipv6" | "metadata-options.instance-metadata-tags" => one("disabled"),
        "metadata-options.http-put-response-hop-limit" => one(1),
        "private-dns-name-options.hostname-type" => one("ip-name"),
        "private-dns-name-options.enable-resource-name-dns-a-record"
        | "private-dns-name-options.enable-resource-name-dns-aaaa-record" => bool_str(false),
        "reason" => state_reason(r).map(|_| "User initiated".to_string()).into_iter().collect(),
        "state-reason-code" => state_reason(r).map(|s| s.0.to_string()).into_iter().collect(),
        "state-reason-message" => state_reason(r).map(|s| s.1).into_iter().collect(),
        "private-dns-name" => nics.first().map(|n| private_dns_name(ctx, &n.port.address)).into_iter().collect(),
        "vpc-id" | "network-interface.vpc-id" => per_nic(&|n| Some(crate::networks::ec2_ids(&n.port.network_id).0)),
        "subnet-id" | "network-interface.subnet-id" => {
            per_nic(&|n| Some(crate::networks::ec2_ids(&n.port.network_id).1))
        }
        "private-ip-address"
        | "network-interface.private-ip-address"
        | "network-interface.addresses.private-ip-address" => per_nic(&|n| Some(n.port.address.clone())),
        "network-interface.private-dns-name" | "network-interface.addresses.private-dns-name" => {
            per_nic(&|n| Some(private_dns_name(ctx, &n.port.address)))
        }
        "ip-address"
        | "network-interface.association.public-ip"
        | "network-interface.addresses.association.public-ip" => per_nic(&|n| n.floating_ip.clone()),
        "network-interface.association.ip-owner-id" | "network-interface.addresses.association.ip-owner-id" => {
            per_nic(&|n| n.floating_ip.as_ref().map(|_| owner.clone()))
        }
        "network-interface.addresses.primary" => nic_constant("true"),
        "network-interface.attachment.attach-time" => nic_constant(&xml::time(r.created_at_ms)),
        "network-interface.attachment.attachment-id" => {
            per_nic(&|n| Some(format!("eni-attach-{}", nic_hex(&r.id, n.port.nic_index))))
        }
        "network-interface.network-interface-id" => {
            per_nic(&|n| Some(format!("eni-{}", nic_hex(&r.id, n.port.nic_index))))
        }
        "network-interface.attachment.delete-on-termination" => nic_constant("true"),
        "network-interface.attachment.device-index" => per_nic(&|n| Some(n.port.nic_index.to_string())),
        "network-interface.attachment.instance-owner-id" | "network-interface.owner-id" => nic_constant(&owner),
        "network-interface.attachment.network-card-index" => nic_constant("0"),
        "network-interface.attachment.status" => nic_constant("attached"),
        "network-interface.availability-zone" => nic_constant(&ctx.config.availability_zone),
        "network-interface.group-id" if !nics.is_empty() => groups.iter().map(|g| g.0.clone()).collect(),
        "network-interface.group-name" if !nics.is_empty() => groups.iter().map(|g| g.1.clone()).collect(),
        "network-interface.mac-address" => per_nic(&|n| Some(n.port.mac.clone())),
        "network-interface.requester-managed" => nic_constant("false"),
        "network-interface.status" => nic_constant("in-use"),
        "network-interface.source-dest-check" => nic_constant(if r.source_dest_check == 1 { "true" } else { "false" }),
        "block-device-mapping.device-name" => {
            std::iter::once(ROOT_DEVICE.to_string()).chain(volumes.iter().map(super::volumes::device_of)).collect()
        }
        "block-device-mapping.volume-id" => volumes.iter().map(|v| v.id.clone()).collect(),
        "block-device-mapping.status" => std::iter::once("attached".to_string())
            .chain(volumes.iter().map(|v| super::instances::volume_status(v).to_string()))
            .collect(),
        "block-device-mapping.attach-time" => std::iter::once(xml::time(r.created_at_ms))
            .chain(volumes.iter().map(|v| xml::time(v.updated_at_ms)))
            .collect(),
        "block-device-mapping.delete-on-termination" => {
            std::iter::once("true".to_string()).chain(volumes.iter().map(|_| "false".to_string())).collect()
        }
        other if other.starts_with("tag:") || other == "tag-key" || other == "tag-value" => {
            super::query::tag_field(other, l.tags.get(&r.id))
        }
        // A documented filter of something Nubo does not have: no value.
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_list_has_each_name_once() {
        let mut names = FILTERS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FILTERS.len());
        assert_eq!(FILTERS.len(), 134, "botocore documents 136, tag:KEY and tag-key are checked apart");
    }
}
