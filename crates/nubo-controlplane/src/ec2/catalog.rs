//! What the EC2 API offers to launch into and with: DescribeRegions and
//! DescribeAvailabilityZones (one region and its zone, as the metadata
//! service reports them), DescribeInstanceTypes (the configured table)
//! and DescribeImages (the images the project may boot, `ami-...`).

use super::error::{Ec2Error, Ec2Result};
use super::query::{self, Page, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::Ctx;
use nubo_api::views::ImageState;
use std::sync::Arc;

pub fn regions(ctx: &Ctx, p: &Params, host: &str) -> Ec2Result<Answer> {
    let names = p.list("RegionName");
    let filters = p.filters()?;
    query::check_filters(&filters, &["region-name", "endpoint", "opt-in-status"], false)?;
    let region = &ctx.config.region;
    if let Some(n) = names.iter().find(|n| *n != region) {
        return Err(Ec2Error::bad(
            "InvalidParameterValue",
            format!("Invalid region: {}; this endpoint is region {region}", n.chars().take(40).collect::<String>()),
        ));
    }
    let endpoint = if host.is_empty() { "127.0.0.1".to_string() } else { host.to_string() };
    let keep = query::matches(&filters, |f| match f {
        "region-name" => vec![region.clone()],
        "endpoint" => vec![endpoint.clone()],
        _ => vec!["opt-in-not-required".into()],
    });
    let items = keep.then(|| {
        El::item()
            .field("regionName", region)
            .field("regionEndpoint", &endpoint)
            .field("optInStatus", "opt-in-not-required")
    });
    Ok(vec![El::list("regionInfo", items)])
}

/// The availability zone's id (`<region without dashes>-az1`).
pub fn zone_id(ctx: &Ctx) -> String {
    format!("{}-az1", ctx.config.region.replace('-', ""))
}

pub fn zones(ctx: &Ctx, p: &Params) -> Ec2Result<Answer> {
    let zone = &ctx.config.availability_zone;
    let zone_id = zone_id(ctx);
    let names = p.list("ZoneName");
    if let Some(n) = names.iter().find(|n| *n != zone) {
        return Err(Ec2Error::bad(
            "InvalidParameterValue",
            format!("Invalid availability zone: [{}]; this region has {zone}", n.chars().take(40).collect::<String>()),
        ));
    }
    let filters = p.filters()?;
    query::check_filters(&filters, &["zone-name", "zone-id", "region-name", "state", "zone-type"], false)?;
    let keep = query::matches(&filters, |f| match f {
        "zone-name" => vec![zone.clone()],
        "zone-id" => vec![zone_id.clone()],
        "region-name" => vec![ctx.config.region.clone()],
        "state" => vec!["available".into()],
        _ => vec!["availability-zone".into()],
    });
    let items = keep.then(|| {
        El::item()
            .field("zoneName", zone)
            .field("zoneId", &zone_id)
            .field("zoneState", "available")
            .field("regionName", &ctx.config.region)
            .field("zoneType", "availability-zone")
            .field("optInStatus", "opt-in-not-required")
            .field("groupName", &ctx.config.region)
            .field("networkBorderGroup", &ctx.config.region)
            .child(El::new("messageSet"))
    });
    Ok(vec![El::list("availabilityZoneInfo", items)])
}

pub fn instance_types(ctx: &Ctx, p: &Params) -> Ec2Result<Answer> {
    let names = p.list("InstanceType");
    let missing: Vec<&String> = names.iter().filter(|n| ctx.config.instance_types.get(n).is_none()).collect();
    if !missing.is_empty() {
        return Err(Ec2Error::bad(
            "InvalidInstanceType",
            format!(
                "The following supplied instance types do not exist: [{}]",
                missing.iter().map(|m| m.chars().take(40).collect::<String>()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let filters = p.filters()?;
    query::check_filters(
        &filters,
        &["instance-type", "vcpu-info.default-vcpus", "memory-info.size-in-mib", "current-generation"],
        false,
    )?;
    let page = Page::parse(p, 5, 100)?;
    let types: Vec<_> = ctx
        .config
        .instance_types
        .iter()
        .filter(|t| names.is_empty() || names.contains(&t.name))
        .filter(|t| {
            query::matches(&filters, |f| match f {
                "instance-type" => vec![t.name.clone()],
                "vcpu-info.default-vcpus" => vec![t.vcpus.to_string()],
                "memory-info.size-in-mib" => vec![t.memory_mib.to_string()],
                _ => vec!["true".into()],
            })
        })
        .collect();
    let (types, next) = page.apply(types);
    let items = types.into_iter().map(|t| {
        El::item()
            .field("instanceType", &t.name)
            .field("currentGeneration", "true")
            .field("freeTierEligible", "false")
            .child(El::list("supportedUsageClasses", [El::text("item", "on-demand")]))
            .child(El::list("supportedRootDeviceTypes", [El::text("item", "ebs")]))
            .child(El::list("supportedVirtualizationTypes", [El::text("item", "hvm")]))
            .field("bareMetal", "false")
            .field("hypervisor", "nitro")
            .child(El::new("processorInfo").child(El::list("supportedArchitectures", [El::text("item", "x86_64")])))
            .child(
                El::new("vCpuInfo")
                    .field("defaultVCpus", t.vcpus)
                    .field("defaultCores", t.vcpus)
                    .field("defaultThreadsPerCore", 1),
            )
            .child(El::new("memoryInfo").field("sizeInMiB", t.memory_mib))
            .field("instanceStorageSupported", "false")
            .field("burstablePerformanceSupported", if t.name.starts_with('t') { "true" } else { "false" })
    });
    let mut out = vec![El::list("instanceTypeSet", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

/// EC2's name for an image's state.
fn image_state(state: ImageState) -> &'static str {
    match state {
        ImageState::Active => "available",
        ImageState::Error => "failed",
        ImageState::Queued | ImageState::Saving => "pending",
    }
}

pub async fn images(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids = p.list("ImageId");
    for id in &ids {
        if id.parse::<nubo_api::ids::ImageId>().is_err() {
            return Err(Ec2Error::bad(
                "InvalidAMIID.Malformed",
                format!("Invalid id: \"{}\"", id.chars().take(64).collect::<String>()),
            ));
        }
    }
    let owners = p.list("Owner");
    let filters = p.filters()?;
    query::check_filters(
        &filters,
        &["image-id", "name", "state", "owner-id", "is-public", "architecture", "image-type"],
        true,
    )?;
    let page = Page::parse(p, 5, 1000)?;
    let rows = ctx.store.images_visible(Some(&project)).await?;
    let missing: Vec<String> = ids.iter().filter(|i| !rows.iter().any(|r| &r.id == *i)).cloned().collect();
    if !missing.is_empty() {
        return Err(Ec2Error::not_found("image", &missing));
    }
    let tags = ctx.store.tags_by_resource(Some(&project)).await?;
    let empty = Default::default();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| ids.is_empty() || ids.contains(&r.id))
        .filter(|r| {
            // `self` is the caller's project; `amazon` stands for Nubo's builtin images.
            owners.is_empty()
                || owners.iter().any(|o| match o.as_str() {
                    "self" => r.project_id.as_deref() == Some(project.as_str()),
                    "amazon" | "nubo" => r.source == "builtin",
                    other => r.project_id.as_deref() == Some(other),
                })
        })
        .filter(|r| {
            query::matches(&filters, |f| match f {
                "image-id" => vec![r.id.clone()],
                "name" => vec![r.name.clone()],
                "state" => vec![image_state(r.state).into()],
                "owner-id" => vec![r.project_id.clone().unwrap_or_else(|| "nubo".into())],
                "is-public" => vec![(r.visibility == "public").to_string()],
                "architecture" => vec!["x86_64".into()],
                "image-type" => vec!["machine".into()],
                other => query::tag_field(other, tags.get(&r.id)),
            })
        })
        .collect();
    let (rows, next) = page.apply(rows);
    let items = rows.into_iter().map(|r| {
        El::item()
            .field("imageId", &r.id)
            .field("imageLocation", format!("nubo/{}", r.name))
            .field("imageState", image_state(r.state))
            .field("imageOwnerId", r.project_id.as_deref().unwrap_or("nubo"))
            .opt("imageOwnerAlias", (r.source == "builtin").then_some("nubo"))
            .field("creationDate", xml::time(r.created_at_ms))
            .field("isPublic", r.visibility == "public")
            .field("architecture", "x86_64")
            .field("imageType", "machine")
            .field("name", &r.name)
            .field("description", &r.description)
            .field("rootDeviceType", "ebs")
            .field("rootDeviceName", super::instances::ROOT_DEVICE)
            .field("virtualizationType", "hvm")
            .field("hypervisor", "xen")
            .field("bootMode", crate::hardware::ec2_boot_mode(&crate::hardware::parse(r.hardware.as_deref())))
            .opt("tpmSupport", crate::hardware::parse(r.hardware.as_deref()).tpm.then_some("v2.0"))
            .opt("sourceInstanceId", r.source_instance.as_deref())
            .child(El::list(
                "blockDeviceMapping",
                [El::item().field("deviceName", super::instances::ROOT_DEVICE).child(
                    El::new("ebs")
                        .field("volumeSize", (r.min_disk_gib as u64).max(1))
                        .field("deleteOnTermination", "true")
                        .field("volumeType", "gp3"),
                )],
            ))
            .child(xml::tag_set(tags.get(&r.id).unwrap_or(&empty)))
    });
    let mut out = vec![El::list("imagesSet", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}
