//! EC2 snapshots: CreateSnapshot, DescribeSnapshots and DeleteSnapshot on
//! Nubo's volume snapshots (the operations in `app::volumes` do the work,
//! so a `snap-...` is the same snapshot through REST, the CLI and EC2).
//! States are EC2's: `pending` while the host takes it, `completed`,
//! `error`; one being deleted is no longer shown, as on EC2.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::app::volumes as app;
use crate::auth::Caller;
use crate::authz::Access;
use crate::error::AppError;
use crate::pagination::{cut_in_memory, Cursor, PageRequest, MAX_PAGE};
use crate::volumes::SnapshotRow;
use crate::Ctx;
use nubo_api::ids::SnapshotId;
use nubo_api::params::SnapshotCreate;
use nubo_api::views::SnapshotState;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub fn parse_snapshot_id(id: &str) -> Ec2Result<SnapshotId> {
    id.parse().map_err(|_| {
        Ec2Error::bad(
            "InvalidSnapshotID.Malformed",
            format!("Invalid id: \"{}\" (expected snap- and 17 hex digits)", id.chars().take(64).collect::<String>()),
        )
    })
}

/// EC2's name for a snapshot's state (`None`: not shown, being deleted).
fn status(state: SnapshotState) -> Option<&'static str> {
    match state {
        SnapshotState::Pending => Some("pending"),
        SnapshotState::Completed => Some("completed"),
        SnapshotState::Error => Some("error"),
        SnapshotState::Deleting | SnapshotState::Deleted => None,
    }
}

fn progress(state: SnapshotState) -> &'static str {
    if state == SnapshotState::Completed {
        "100%"
    } else {
        "0%"
    }
}

/// The members of a snapshot (CreateSnapshot's answer, DescribeSnapshots' items).
fn snapshot_fields(s: &SnapshotRow, description: &str, tags: Option<&BTreeMap<String, String>>) -> Vec<El> {
    let empty = BTreeMap::new();
    vec![
        El::text("snapshotId", &s.id),
        El::text("volumeId", &s.volume_id),
        El::text("status", status(s.state).unwrap_or("pending")),
        El::text("startTime", xml::time(s.created_at_ms)),
        El::text("progress", progress(s.state)),
        El::text("ownerId", &s.project_id),
        El::text("volumeSize", s.size_gib),
        El::text("description", description),
        El::text("encrypted", "false"),
        El::text("storageTier", "standard"),
    ]
    .into_iter()
    .chain(s.error.as_ref().filter(|_| s.state == SnapshotState::Error).map(|e| El::text("statusMessage", e)))
    .chain([xml::tag_set(tags.unwrap_or(&empty))])
    .collect()
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let volume = super::volumes::parse_volume_id(p.required("VolumeId")?)?;
    let description = p.str("Description").unwrap_or_default();
    let tags = super::query::tag_specs(p, "snapshot")?;
    // A `Name` tag names the snapshot for REST and the CLI too, when it is a valid name.
    let name =
        tags.iter().find(|(k, _)| k == "Name").map(|(_, v)| v.clone()).filter(|n| crate::validate::name(n).is_ok());
    let body = SnapshotCreate { name };
    let row = app::create_described_snapshot(ctx, caller, volume.as_str(), &body, description)
        .await
        .in_domain(Domain::Volume)?;
    if !tags.is_empty() {
        ctx.store
            .set_tags(&[(row.id.clone(), "snapshot", row.project_id.clone())], &tags)
            .await
            .map_err(|e| Ec2Error::from_app(AppError::internal(e), Domain::Volume))?;
    }
    let tags: BTreeMap<String, String> = tags.into_iter().collect();
    Ok(snapshot_fields(&row, description, Some(&tags)))
}

const FILTERS: &[&str] = &[
    "snapshot-id",
    "volume-id",
    "status",
    "owner-id",
    "owner-alias",
    "description",
    "volume-size",
    "progress",
    "start-time",
    "encrypted",
    "storage-tier",
];

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids: Vec<SnapshotId> = p.list("SnapshotId").iter().map(|i| parse_snapshot_id(i)).collect::<Ec2Result<_>>()?;
    if !ids.is_empty() && p.str("MaxResults").is_some() {
        return Err(Ec2Error::bad(
            "InvalidParameterCombination",
            "The parameter snapshotSet cannot be used with the parameter maxResults",
        ));
    }
    let owners = p.list("Owner");
    let filters = p.filters()?;
    query::check_filters(&filters, FILTERS, true)?;
    let page = PageRequest::parse("MaxResults", p.int("MaxResults")?, p.str("NextToken"), 5..=MAX_PAGE)
        .map_err(Ec2Error::from_page)?;
    let rows: Vec<SnapshotRow> = if ids.is_empty() {
        ctx.store.snapshots(Some(&project)).await?
    } else {
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        for id in &ids {
            match app::load_snapshot(ctx, caller, id.as_str(), Access::Read).await {
                Ok(r) if status(r.state).is_some() => rows.push(r),
                Ok(_) | Err(AppError::NotFound { .. }) => missing.push(id.to_string()),
                Err(e) => return Err(Ec2Error::from_app(e, Domain::Volume)),
            }
        }
        if !missing.is_empty() {
            return Err(Ec2Error::not_found("snapshot", &missing));
        }
        rows
    };
    let descriptions = app::snapshot_descriptions(ctx, caller).await.in_domain(Domain::Volume)?;
    let tags: HashMap<String, BTreeMap<String, String>> = ctx.store.tags_by_resource(Some(&project)).await?;
    let rows: Vec<SnapshotRow> = rows
        .into_iter()
        .filter(|s| status(s.state).is_some())
        .filter(|s| {
            // `self` is the caller's project; snapshots are no one else's to show.
            owners.is_empty() || owners.iter().any(|o| o == "self" || *o == s.project_id)
        })
        .filter(|s| {
            query::matches(&filters, |name| match name {
                "snapshot-id" => vec![s.id.clone()],
                "volume-id" => vec![s.volume_id.clone()],
                "status" => status(s.state).map(str::to_string).into_iter().collect(),
                "owner-id" => vec![s.project_id.clone()],
                "owner-alias" => Vec::new(),
                "description" => vec![descriptions.get(&s.id).cloned().unwrap_or_default()],
                "volume-size" => vec![s.size_gib.to_string()],
                "progress" => vec![progress(s.state).to_string()],
                "start-time" => vec![xml::time(s.created_at_ms)],
                "encrypted" => vec!["false".into()],
                "storage-tier" => vec!["standard".into()],
                other => query::tag_field(other, tags.get(&s.id)),
            })
        })
        .collect();
    let (rows, next) = cut_in_memory(rows, &page, |s| Cursor::of(s.created_at_ms, &s.id));
    let items = rows.iter().map(|s| {
        let description = descriptions.get(&s.id).map(String::as_str).unwrap_or("");
        snapshot_fields(s, description, tags.get(&s.id)).into_iter().fold(El::item(), El::child)
    });
    let mut out = vec![El::list("snapshotSet", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = parse_snapshot_id(p.required("SnapshotId")?)?;
    let s = app::load_snapshot(ctx, caller, id.as_str(), Access::Write).await.in_domain(Domain::Volume)?;
    if status(s.state).is_none() {
        // Already being deleted: gone, as far as EC2 shows.
        return Err(Ec2Error::not_found("snapshot", &[s.id]));
    }
    let busy = ctx.store.volumes_from_snapshot(&s.id).await?;
    if !busy.is_empty() {
        return Err(Ec2Error::bad(
            "InvalidSnapshot.InUse",
            format!(
                "The snapshot {} is in use: volumes {} are being created from it; delete it once they are available",
                s.id,
                busy.join(", ")
            ),
        ));
    }
    app::delete_snapshot(ctx, caller, &s.id).await.in_domain(Domain::Volume)?;
    ctx.store.delete_tags(std::slice::from_ref(&s.id), &[]).await?;
    Ok(vec![El::text("return", "true")])
}

/// DescribeSnapshotAttribute: `createVolumePermission` (who else may make
/// volumes from it: nobody, as snapshots are not shared between projects
/// here) and `productCodes` (none). Ansible's ec2_snapshot_info asks for
/// the first of every snapshot it lists.
pub async fn describe_attribute(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = parse_snapshot_id(p.required("SnapshotId")?)?;
    let attribute = p.required("Attribute")?;
    let s = app::load_snapshot(ctx, caller, id.as_str(), Access::Read).await.in_domain(Domain::Volume)?;
    if status(s.state).is_none() {
        return Err(Ec2Error::not_found("snapshot", &[s.id]));
    }
    let list = match attribute {
        "createVolumePermission" => "createVolumePermission",
        "productCodes" => "productCodes",
        other => {
            return Err(Ec2Error::invalid(format!(
                "Value ({}) for parameter attribute is invalid: use createVolumePermission or productCodes",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    Ok(vec![El::text("snapshotId", s.id), El::new(list)])
}
