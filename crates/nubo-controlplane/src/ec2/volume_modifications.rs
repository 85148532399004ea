//! EC2 volume modifications: ModifyVolume (a larger size only: Nubo
//! volumes are one type, gp3 to EC2, and grow online through
//! `app::volumes::modify`) and DescribeVolumesModifications (each volume's
//! latest modification, kept in the store: modifying, optimizing while an
//! attached guest does not see the new size yet, completed or failed).

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::app::volumes as app;
use crate::auth::Caller;
use crate::authz::Access;
use crate::error::AppError;
use crate::pagination::{cut_in_memory, Cursor, PageRequest};
use crate::volume_modifications::{ModificationState, VolumeModificationRow};
use crate::Ctx;
use nubo_api::ids::VolumeId;
use nubo_api::params::VolumeExtend;
use std::sync::Arc;

/// The only volume type Nubo's volumes are, to EC2.
const VOLUME_TYPE: &str = "gp3";

fn progress(state: ModificationState) -> u32 {
    match state {
        ModificationState::Modifying | ModificationState::Failed => 0,
        ModificationState::Optimizing => 50,
        ModificationState::Completed => 100,
    }
}

fn modification_el(name: &'static str, m: &VolumeModificationRow) -> El {
    El::new(name)
        .field("volumeId", &m.volume_id)
        .field("modificationState", m.state.as_str())
        .opt("statusMessage", m.status_message.as_deref())
        .field("targetSize", m.target_size_gib)
        .field("targetVolumeType", VOLUME_TYPE)
        .field("targetMultiAttachEnabled", "false")
        .field("originalSize", m.original_size_gib)
        .field("originalVolumeType", VOLUME_TYPE)
        .field("originalMultiAttachEnabled", "false")
        .field("progress", progress(m.state))
        .field("startTime", xml::time(m.started_at_ms))
        .opt("endTime", m.ended_at_ms.map(xml::time))
}

pub async fn modify(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = super::volumes::parse_volume_id(p.required("VolumeId")?)?;
    if let Some(t) = p.str("VolumeType").filter(|t| !t.is_empty() && *t != VOLUME_TYPE) {
        return Err(Ec2Error::invalid(format!(
            "Volume type {} is not offered: Nubo volumes are all {VOLUME_TYPE}; change only their Size",
            t.chars().take(20).collect::<String>()
        )));
    }
    for unsupported in ["Iops", "Throughput"] {
        if p.str(unsupported).is_some() {
            return Err(Ec2Error::invalid(format!(
                "{unsupported} cannot be modified: Nubo volumes have one performance class; change only their Size"
            )));
        }
    }
    if p.bool("MultiAttachEnabled")? == Some(true) {
        return Err(Ec2Error::invalid("Multi-Attach is not offered: a Nubo volume attaches to one instance"));
    }
    let size = p.int_in("Size", 1..=crate::validate::MAX_DISK_GIB as i64)?.ok_or_else(|| Ec2Error::missing("Size"))?;
    let v = app::load(ctx, caller, id.as_str(), Access::Write).await.in_domain(Domain::Volume)?;
    if size < v.size_gib {
        return Err(Ec2Error::invalid(format!(
            "New size cannot be smaller than existing size: volume {} is {} GiB (shrinking would lose data)",
            v.id, v.size_gib
        )));
    }
    if size == v.size_gib {
        return Err(Ec2Error::invalid(format!(
            "New size must be different from the existing size: volume {} is already {} GiB",
            v.id, v.size_gib
        )));
    }
    if let Some(m) = app::modification(ctx, caller, &v.id).await.in_domain(Domain::Volume)? {
        if m.state == ModificationState::Modifying {
            return Err(Ec2Error::bad(
                "IncorrectModificationState",
                format!(
                    "Volume {} is still being modified to {} GiB: modify it again once DescribeVolumesModifications shows that done",
                    v.id, m.target_size_gib
                ),
            ));
        }
    }
    let (_, m) =
        app::modify(ctx, caller, &v.id, &VolumeExtend { size_gib: size as u64 }).await.in_domain(Domain::Volume)?;
    Ok(vec![modification_el("volumeModification", &m)])
}

const FILTERS: &[&str] = &[
    "volume-id",
    "modification-state",
    "original-size",
    "target-size",
    "original-volume-type",
    "target-volume-type",
    "start-time",
];

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    project_of(caller)?;
    let ids: Vec<VolumeId> =
        p.list("VolumeId").iter().map(|i| super::volumes::parse_volume_id(i)).collect::<Ec2Result<_>>()?;
    let filters = p.filters()?;
    query::check_filters(&filters, FILTERS, false)?;
    let page = PageRequest::parse("MaxResults", p.int("MaxResults")?, p.str("NextToken"), 1..=500)
        .map_err(Ec2Error::from_page)?;
    let rows = if ids.is_empty() {
        app::modifications(ctx, caller).await.in_domain(Domain::Volume)?
    } else {
        let mut rows = Vec::new();
        let (mut missing, mut unmodified) = (Vec::new(), Vec::new());
        for id in &ids {
            match app::modification(ctx, caller, id.as_str()).await {
                Ok(Some(m)) => rows.push(m),
                Ok(None) => unmodified.push(id.to_string()),
                Err(AppError::NotFound { .. }) => missing.push(id.to_string()),
                Err(e) => return Err(Ec2Error::from_app(e, Domain::Volume)),
            }
        }
        if !missing.is_empty() {
            return Err(Ec2Error::not_found("volume", &missing));
        }
        if !unmodified.is_empty() {
            return Err(Ec2Error::bad(
                "InvalidVolumeModification.NotFound",
                format!("Modification for volume '{}' does not exist: it was never modified", unmodified.join(", ")),
            ));
        }
        rows
    };
    let rows: Vec<VolumeModificationRow> = rows
        .into_iter()
        .filter(|m| {
            query::matches(&filters, |name| match name {
                "volume-id" => vec![m.volume_id.clone()],
                "modification-state" => vec![m.state.to_string()],
                "original-size" => vec![m.original_size_gib.to_string()],
                "target-size" => vec![m.target_size_gib.to_string()],
                "start-time" => vec![xml::time(m.started_at_ms)],
                _ => vec![VOLUME_TYPE.into()],
            })
        })
        .collect();
    let (rows, next) = cut_in_memory(rows, &page, |m| Cursor::of(m.started_at_ms, &m.volume_id));
    let mut out = vec![El::list("volumeModificationSet", rows.iter().map(|m| modification_el("x", m).renamed("item")))];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}
