//! EC2 volumes: CreateVolume, DescribeVolumes, AttachVolume, DetachVolume
//! and DeleteVolume on Nubo's volumes (the operations in `app::volumes`
//! do the work, so quotas, pools and the agent's hot-plug are the same as
//! over REST). The device name an attach asks for is kept and echoed; the
//! guest sees the disk by its serial (`vol<hex>`).

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Page, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::app::volumes as app;
use crate::auth::Caller;
use crate::authz::Access;
use crate::error::AppError;
use crate::volumes::VolumeRow;
use crate::Ctx;
use nubo_api::ids::{SnapshotId, VolumeId};
use nubo_api::params::{VolumeAttach, VolumeCreate};
use nubo_api::views::{AttachState, VolumeState};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The device name reported for an attachment: the one asked for, else
/// the guest's own name, else a name in EC2's range by slot.
pub fn device_of(v: &VolumeRow) -> String {
    if let Some(d) = &v.device_name {
        return d.clone();
    }
    if let Some(d) = &v.guest_device {
        return d.clone();
    }
    let slot = v.slot.unwrap_or(0).clamp(0, 9) as u8;
    format!("/dev/sd{}", (b'f' + slot) as char)
}

pub(crate) fn parse_volume_id(id: &str) -> Ec2Result<VolumeId> {
    id.parse().map_err(|_| {
        Ec2Error::bad(
            "InvalidVolumeID.Malformed",
            format!("Invalid id: \"{}\" (expected vol- and 17 hex digits)", id.chars().take(64).collect::<String>()),
        )
    })
}

async fn load(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> Ec2Result<VolumeRow> {
    let id = parse_volume_id(id)?;
    app::load(ctx, caller, id.as_str(), access).await.in_domain(Domain::Volume)
}

fn attachment_el(name: &'static str, v: &VolumeRow, status: AttachState) -> El {
    El::new(name)
        .field("volumeId", &v.id)
        .opt("instanceId", v.instance_id.as_deref())
        .field("device", device_of(v))
        .field("status", status.as_str())
        .field("attachTime", xml::time(v.updated_at_ms))
        .field("deleteOnTermination", "false")
}

/// The members of a volume (CreateVolume's answer, DescribeVolumes' items).
fn volume_fields(ctx: &Ctx, v: &VolumeRow, tags: Option<&BTreeMap<String, String>>) -> Vec<El> {
    let attachments = match (&v.instance_id, v.attach_state) {
        (Some(_), Some(state)) => vec![attachment_el("item", v, state)],
        _ => Vec::new(),
    };
    let empty = BTreeMap::new();
    let mut out = vec![
        El::text("volumeId", &v.id),
        El::text("size", v.size_gib),
        El::text("snapshotId", v.snapshot_id.as_deref().unwrap_or("")),
        El::text("availabilityZone", &ctx.config.availability_zone),
        El::text("status", v.state.as_str()),
        El::text("createTime", xml::time(v.created_at_ms)),
        El::list("attachmentSet", attachments),
        El::text("volumeType", "gp3"),
        El::text("encrypted", "false"),
        El::text("multiAttachEnabled", "false"),
        xml::tag_set(tags.unwrap_or(&empty)),
    ];
    out.push(El::text("ownerId", &v.project_id));
    out
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let snapshot_id = match p.str("SnapshotId").filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<SnapshotId>().map_err(|_| {
            Ec2Error::bad(
                "InvalidSnapshotID.Malformed",
                format!("Invalid id: \"{}\"", s.chars().take(64).collect::<String>()),
            )
        })?),
        None => None,
    };
    let size = p.int_in("Size", 1..=crate::validate::MAX_DISK_GIB as i64)?;
    let size_gib = match (size, &snapshot_id) {
        (Some(s), _) => s as u64,
        (None, Some(s)) => {
            let snap = app::load_snapshot(ctx, caller, s.as_str(), Access::Read).await.in_domain(Domain::Volume)?;
            snap.size_gib as u64
        }
        (None, None) => return Err(Ec2Error::missing("Size")),
    };
    if let Some(z) = p.str("AvailabilityZone").filter(|z| !z.is_empty()) {
        if z != ctx.config.availability_zone {
            return Err(Ec2Error::invalid(format!(
                "Invalid availability zone: [{}]; this region has {}",
                z.chars().take(40).collect::<String>(),
                ctx.config.availability_zone
            )));
        }
    }
    let tags = super::query::tag_specs(p, "volume")?;
    let name =
        tags.iter().find(|(k, _)| k == "Name").map(|(_, v)| v.clone()).filter(|n| crate::validate::name(n).is_ok());
    let body = VolumeCreate { size_gib, name, snapshot_id, instance_id: None };
    let row = app::create(ctx, caller, &body).await.in_domain(Domain::Volume)?;
    if !tags.is_empty() {
        ctx.store
            .set_tags(&[(row.id.clone(), "volume", row.project_id.clone())], &tags)
            .await
            .map_err(|e| Ec2Error::from_app(AppError::internal(e), Domain::Volume))?;
    }
    let tags: BTreeMap<String, String> = tags.into_iter().collect();
    Ok(volume_fields(ctx, &row, Some(&tags)))
}

const FILTERS: &[&str] = &[
    "volume-id",
    "status",
    "size",
    "availability-zone",
    "snapshot-id",
    "attachment.instance-id",
    "attachment.status",
    "attachment.device",
    "volume-type",
];

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids: Vec<VolumeId> = p.list("VolumeId").iter().map(|i| parse_volume_id(i)).collect::<Ec2Result<_>>()?;
    let filters = p.filters()?;
    query::check_filters(&filters, FILTERS, true)?;
    let page = Page::parse(p, 5, 500)?;
    let rows: Vec<VolumeRow> = if ids.is_empty() {
        ctx.store.volumes(Some(&project)).await?
    } else {
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        for id in &ids {
            match app::load(ctx, caller, id.as_str(), Access::Read).await {
                Ok(r) => rows.push(r),
                Err(AppError::NotFound { .. }) => missing.push(id.to_string()),
                Err(e) => return Err(Ec2Error::from_app(e, Domain::Volume)),
            }
        }
        if !missing.is_empty() {
            return Err(Ec2Error::not_found("volume", &missing));
        }
        rows
    };
    let tags: HashMap<String, BTreeMap<String, String>> = ctx.store.tags_by_resource(Some(&project)).await?;
    let rows: Vec<VolumeRow> = rows
        .into_iter()
        .filter(|v| {
            query::matches(&filters, |name| match name {
                "volume-id" => vec![v.id.clone()],
                "status" => vec![v.state.to_string()],
                "size" => vec![v.size_gib.to_string()],
                "availability-zone" => vec![ctx.config.availability_zone.clone()],
                "snapshot-id" => v.snapshot_id.clone().into_iter().collect(),
                "attachment.instance-id" => v.instance_id.clone().into_iter().collect(),
                "attachment.status" => v.attach_state.map(|a| a.to_string()).into_iter().collect(),
                "attachment.device" => v.instance_id.as_ref().map(|_| device_of(v)).into_iter().collect(),
                "volume-type" => vec!["gp3".into()],
                other => query::tag_field(other, tags.get(&v.id)),
            })
        })
        .collect();
    let (rows, next) = page.apply(rows);
    let items = rows.iter().map(|v| volume_fields(ctx, v, tags.get(&v.id)).into_iter().fold(El::item(), El::child));
    let mut out = vec![El::list("volumeSet", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

pub async fn attach(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let vol = parse_volume_id(p.required("VolumeId")?)?;
    let instance = super::instances::parse_ids(&[p.required("InstanceId")?.to_string()])?.remove(0);
    let device = p.required("Device")?.to_string();
    if !super::block_devices::valid_device(&device) {
        return Err(Ec2Error::invalid(format!(
            "Value ({}) for parameter device is invalid: use a name like /dev/sdf",
            device.chars().take(40).collect::<String>()
        )));
    }
    // The instance first, so that an unknown one is named as such.
    crate::app::instances::load(ctx, caller, instance.as_str(), Access::Write).await.in_domain(Domain::Instance)?;
    let v = load(ctx, caller, vol.as_str(), Access::Write).await?;
    if v.state == VolumeState::InUse {
        return Err(Ec2Error::bad(
            "VolumeInUse",
            format!("vol {} is already attached to an instance ({})", v.id, v.instance_id.as_deref().unwrap_or("?")),
        ));
    }
    let body = VolumeAttach { instance_id: instance };
    app::attach(ctx, caller, &v.id, &body).await.in_domain(Domain::Volume)?;
    ctx.store.set_volume_device_name(&v.id, Some(&device)).await?;
    let row = ctx.store.volume(&v.id).await?.ok_or_else(Ec2Error::internal)?;
    Ok(attachment_fields(&row, row.attach_state.unwrap_or(AttachState::Attaching)))
}

fn attachment_fields(v: &VolumeRow, status: AttachState) -> Answer {
    let el = attachment_el("x", v, status);
    el.into_children()
}

pub async fn detach(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let v = load(ctx, caller, p.required("VolumeId")?, Access::Write).await?;
    if let Some(i) = p.str("InstanceId").filter(|i| !i.is_empty()) {
        if v.instance_id.as_deref() != Some(i) {
            return Err(Ec2Error::bad(
                "IncorrectState",
                format!("Volume '{}' is not attached to instance '{}'", v.id, i.chars().take(64).collect::<String>()),
            ));
        }
    }
    if v.instance_id.is_none() {
        return Err(Ec2Error::bad(
            "IncorrectState",
            format!("Volume '{}' is in the '{}' state (not attached)", v.id, v.state),
        ));
    }
    app::detach(ctx, caller, &v.id).await.in_domain(Domain::Volume)?;
    let row = ctx.store.volume(&v.id).await?.unwrap_or(v);
    Ok(attachment_fields(&row, AttachState::Detaching))
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let v = load(ctx, caller, p.required("VolumeId")?, Access::Write).await?;
    if let Some(i) = &v.instance_id {
        return Err(Ec2Error::bad(
            "VolumeInUse",
            format!("Volume {} is currently attached to {i}: detach it first", v.id),
        ));
    }
    app::delete(ctx, caller, &v.id).await.in_domain(Domain::Volume)?;
    ctx.store.delete_tags(std::slice::from_ref(&v.id), &[]).await?;
    Ok(vec![El::text("return", "true")])
}
