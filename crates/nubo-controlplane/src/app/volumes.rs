//! Volumes and their snapshots: data disks on hosts' storage pools,
//! attached to instances, grown, copied at a point in time. This module
//! owns what may be asked of them (the checks, the quota and pool claims,
//! the refusals and their messages) and their views; the REST API, the
//! EC2 API and the portal all go through it. Operations record what is
//! wanted; the volume's host makes it so and reports back, and the states
//! move as EC2 users know them (creating, available, in-use, deleting;
//! attaching, attached, detaching).

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::volumes::{AttachOutcome, NewVolume, SnapshotRow, StorageClaimError, VolumeRow};
use crate::{placement, validate, Ctx};
use nubo_api::agent::PowerState;
use nubo_api::ids::{SnapshotId, VolumeId};
use nubo_api::params::{SnapshotCreate, VolumeAttach, VolumeCreate, VolumeExtend};
use nubo_api::views::{AttachState, InstanceState, Snapshot, SnapshotState, Volume, VolumeAttachment, VolumeState};
use std::sync::Arc;

fn parse<T: std::str::FromStr<Err = nubo_api::ids::IdError>>(id: &str) -> AppResult<T> {
    id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))
}

fn claim_error(e: StorageClaimError, what: &str) -> AppError {
    match e {
        StorageClaimError::Quota(m) => AppError::QuotaExceeded(m),
        StorageClaimError::Pool(m) => AppError::NoValidHost(format!("cannot {what}: {m}")),
        StorageClaimError::State => {
            AppError::Conflict(format!("cannot {what}: it changed meanwhile (another request); look at it and retry"))
        }
        StorageClaimError::Db(e) => e.into(),
    }
}

fn check_size(size_gib: u64) -> AppResult<()> {
    if size_gib == 0 || size_gib > validate::MAX_DISK_GIB {
        return Err(AppError::BadRequest(format!(
            "size_gib must be between 1 and {}, got {size_gib}",
            validate::MAX_DISK_GIB
        )));
    }
    Ok(())
}

/// Loads a volume the caller may access.
pub async fn load(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<VolumeRow> {
    let id: VolumeId = parse(id)?;
    let row = ctx
        .store
        .volume(id.as_str())
        .await?
        .filter(|v| v.state != VolumeState::Deleted)
        .ok_or(AppError::NotFound { kind: "volume", id: id.to_string() })?;
    authz::check(caller, access, Some(&row.project_id), "volume", id.as_str())?;
    Ok(row)
}

/// Loads a snapshot the caller may access.
pub async fn load_snapshot(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<SnapshotRow> {
    let id: SnapshotId = parse(id)?;
    let row = ctx
        .store
        .snapshot(id.as_str())
        .await?
        .filter(|s| s.state != SnapshotState::Deleted)
        .ok_or(AppError::NotFound { kind: "snapshot", id: id.to_string() })?;
    authz::check(caller, access, Some(&row.project_id), "snapshot", id.as_str())?;
    Ok(row)
}

/// The view of a volume row, with its host's name, attachment and tags.
pub async fn view(ctx: &Ctx, v: VolumeRow) -> AppResult<Volume> {
    let host = ctx.store.host(&v.host_id).await?;
    let attachment = match (&v.instance_id, v.attach_state) {
        (Some(i), Some(state)) => Some(VolumeAttachment {
            instance_id: i.parse().map_err(AppError::internal)?,
            state,
            serial: parse::<VolumeId>(&v.id)?.serial(),
            guest_device: v.guest_device.clone(),
            guest_size_bytes: v.guest_size_bytes.map(|b| b as u64),
        }),
        _ => None,
    };
    Ok(Volume {
        id: v.id.parse().map_err(AppError::internal)?,
        name: v.name,
        size_gib: v.size_gib as u64,
        actual_size_gib: v.actual_size_gib as u64,
        state: v.state,
        host: Some(v.host_id.parse().map_err(AppError::internal)?),
        host_name: host.map(|h| h.name),
        attachment,
        snapshot_id: v.snapshot_id.and_then(|s| s.parse().ok()),
        tags: ctx.store.tags_of(&v.id).await?,
        error: v.error,
        created_at_ms: v.created_at_ms,
        updated_at_ms: v.updated_at_ms,
    })
}

/// The view of a snapshot row.
pub fn snapshot_view(s: SnapshotRow) -> AppResult<Snapshot> {
    Ok(Snapshot {
        id: s.id.parse().map_err(AppError::internal)?,
        name: s.name,
        volume_id: s.volume_id.parse().map_err(AppError::internal)?,
        size_gib: s.size_gib as u64,
        state: s.state,
        consistency: s.consistency,
        host: s.host_id.parse().ok(),
        error: s.error,
        created_at_ms: s.created_at_ms,
        completed_at_ms: s.completed_at_ms,
        // Filled by `app::tags::fill` where a view is answered.
        tags: Default::default(),
    })
}

/// The volumes the caller may see (deleted ones are not shown).
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Volume>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for v in ctx.store.volumes(project.as_deref()).await? {
        out.push(view(ctx, v).await?);
    }
    Ok(out)
}

/// A volume the caller may see, as its view.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Volume> {
    let v = load(ctx, caller, id, Access::Read).await?;
    view(ctx, v).await
}

/// Creates a volume: a sparse file on one host's storage pool, claimed up
/// front against the project's volume quota and the pool. Returns its row.
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &VolumeCreate) -> AppResult<VolumeRow> {
    let project = authz::creation_project(caller)?;
    check_size(p.size_gib)?;
    if let Some(n) = &p.name {
        validate::name(n)?;
    }
    // Where it can go: the snapshot's host (its content is there), or the
    // named instance's host, or wherever the pool has room.
    let mut host_hint = None;
    if let Some(snap) = &p.snapshot_id {
        let s = load_snapshot(ctx, caller, snap.as_str(), Access::Read).await?;
        if s.state != SnapshotState::Completed {
            return Err(AppError::Conflict(format!("snapshot {} is {}; wait until it is completed", s.id, s.state)));
        }
        if p.size_gib < s.size_gib as u64 {
            return Err(AppError::BadRequest(format!(
                "a volume from snapshot {} needs at least its size, {} GiB",
                s.id, s.size_gib
            )));
        }
        host_hint = Some(s.host_id);
    }
    if let Some(i) = &p.instance_id {
        let inst = crate::app::instances::load(ctx, caller, i.as_str(), Access::Read).await?;
        let h = inst.host_id.ok_or_else(|| AppError::Conflict(format!("instance {i} is not on a host yet")))?;
        if host_hint.as_ref().is_some_and(|s| *s != h) {
            return Err(AppError::Conflict(format!(
                "the snapshot lives on another host than instance {i}; volumes from a snapshot are created on the snapshot's host"
            )));
        }
        host_hint = Some(h);
    }
    let id = VolumeId::generate();
    let name = p.name.clone().unwrap_or_else(|| id.to_string());
    let (host, limit) = placement::place_storage(ctx, p.size_gib, host_hint.as_deref()).await?;
    let new = NewVolume {
        id: id.as_str(),
        project_id: &project,
        name: &name,
        host_id: &host,
        size_gib: p.size_gib,
        snapshot_id: p.snapshot_id.as_ref().map(|s| s.as_str()),
    };
    ctx.store.create_volume(&new, limit).await.map_err(|e| claim_error(e, "create the volume"))?;
    ctx.bump();
    tracing::info!(volume = %id, %host, size_gib = p.size_gib, "volume placed");
    ctx.store.volume(id.as_str()).await?.ok_or_else(|| AppError::internal("volume vanished"))
}

/// Deletes an available volume (an attached one is refused: detach it
/// first). Returns its row, now being deleted.
pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<VolumeRow> {
    let v = load(ctx, caller, id, Access::Write).await?;
    if !ctx.store.delete_volume(&v.id).await? {
        return Err(AppError::Conflict(match &v.instance_id {
            Some(i) => format!("volume {} is attached to {i}: detach it first (`nubo volume detach {}`)", v.id, v.id),
            None => format!("volume {} is {}; it can be deleted once it is available", v.id, v.state),
        }));
    }
    ctx.bump();
    load(ctx, caller, id, Access::Read).await
}

/// Attaches a volume to an instance on the same host: hot-plugged into a
/// running guest (done once the guest sees it), plugged in at start
/// otherwise. Returns its row, now attaching.
pub async fn attach(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &VolumeAttach) -> AppResult<VolumeRow> {
    let v = load(ctx, caller, id, Access::Write).await?;
    let inst = crate::app::instances::load(ctx, caller, p.instance_id.as_str(), Access::Write).await?;
    if inst.project_id.as_deref() != Some(v.project_id.as_str()) {
        return Err(AppError::Conflict(format!(
            "volume {} and instance {} belong to different projects",
            v.id, inst.id
        )));
    }
    if inst.desired == PowerState::Deleted || inst.state == InstanceState::Terminated {
        return Err(AppError::Conflict(format!("instance {} is terminated", inst.id)));
    }
    if inst.host_id.as_deref() != Some(v.host_id.as_str()) {
        return Err(AppError::Conflict(format!(
            "volume {} lives on another host's storage pool than instance {}; a volume attaches to instances on its own host: create the volume with `--instance {}`",
            v.id, inst.id, inst.id
        )));
    }
    if v.state != VolumeState::Available {
        return Err(AppError::Conflict(match &v.instance_id {
            Some(i) => format!("volume {} is already attached to {i}", v.id),
            None => format!("volume {} is {}; it can be attached once it is available", v.id, v.state),
        }));
    }
    let slots = nubo_api::MAX_VOLUMES_PER_INSTANCE;
    match ctx.store.attach_volume(&v.id, &inst.id, slots).await? {
        AttachOutcome::Attached(slot) => {
            tracing::info!(volume = %v.id, instance = %inst.id, slot, "volume attaching")
        }
        AttachOutcome::NotAvailable => {
            return Err(AppError::Conflict(format!(
                "volume {} was attached or changed meanwhile; look at it again",
                v.id
            )))
        }
        AttachOutcome::NoFreeSlot => {
            return Err(AppError::Conflict(format!(
                "instance {} already has {slots} volumes attached, the most it can take; detach one first",
                inst.id
            )))
        }
    }
    ctx.bump();
    load(ctx, caller, id, Access::Read).await
}

/// Detaches a volume: hot-unplugged from a running guest once it lets go.
/// Returns its row, now detaching.
pub async fn detach(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<VolumeRow> {
    let v = load(ctx, caller, id, Access::Write).await?;
    if !ctx.store.detach_volume(&v.id).await? {
        return Err(AppError::Conflict(match v.attach_state {
            Some(AttachState::Detaching) => format!("volume {} is already being detached", v.id),
            _ => format!("volume {} is not attached", v.id),
        }));
    }
    ctx.bump();
    load(ctx, caller, id, Access::Read).await
}

/// Grows a volume (never shrinks: that would lose data); an attached one
/// is resized online and the guest sees it. The growth is claimed against
/// the quota and the volume's pool.
pub async fn extend(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &VolumeExtend) -> AppResult<VolumeRow> {
    let v = load(ctx, caller, id, Access::Write).await?;
    check_size(p.size_gib)?;
    if p.size_gib <= v.size_gib as u64 {
        return Err(AppError::BadRequest(format!(
            "volume {} is {} GiB; extend makes it larger (shrinking would lose data)",
            v.id, v.size_gib
        )));
    }
    if !v.state.is_live() || v.attach_state == Some(AttachState::Detaching) {
        return Err(AppError::Conflict(format!(
            "volume {} is {}; extend it once it is available or in use",
            v.id, v.state
        )));
    }
    let (_, limit) = placement::place_storage(ctx, p.size_gib - v.size_gib as u64, Some(&v.host_id)).await?;
    ctx.store.extend_volume(&v, p.size_gib, limit).await.map_err(|e| claim_error(e, "extend the volume"))?;
    ctx.bump();
    load(ctx, caller, id, Access::Read).await
}

/// Takes a point-in-time snapshot of a volume (consistent: the guest's
/// file systems are frozen for it when it is attached and the guest agent
/// answers), claimed against the quota and the volume's pool.
pub async fn create_snapshot(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &SnapshotCreate) -> AppResult<SnapshotRow> {
    let v = load(ctx, caller, id, Access::Write).await?;
    if let Some(n) = &p.name {
        validate::name(n)?;
    }
    if !v.state.is_live() {
        return Err(AppError::Conflict(format!(
            "volume {} is {}; snapshot it once it is available or in use",
            v.id, v.state
        )));
    }
    let sid = SnapshotId::generate();
    let name = p.name.clone().unwrap_or_else(|| sid.to_string());
    let (_, limit) = placement::place_storage(ctx, v.size_gib as u64, Some(&v.host_id)).await?;
    ctx.store
        .create_snapshot(sid.as_str(), &name, &v, limit)
        .await
        .map_err(|e| claim_error(e, "snapshot the volume"))?;
    ctx.bump();
    ctx.store.snapshot(sid.as_str()).await?.ok_or_else(|| AppError::internal("snapshot vanished"))
}

/// The snapshots the caller may see.
pub async fn list_snapshots(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Snapshot>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let rows = ctx.store.snapshots(project.as_deref()).await?;
    rows.into_iter().map(snapshot_view).collect()
}

/// A snapshot the caller may see, as its view.
pub async fn show_snapshot(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Snapshot> {
    snapshot_view(load_snapshot(ctx, caller, id, Access::Read).await?)
}

/// Deletes a snapshot (volumes made from it are independent copies, but
/// not while they are still being made from it). Returns its row, now
/// being deleted.
pub async fn delete_snapshot(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<SnapshotRow> {
    let s = load_snapshot(ctx, caller, id, Access::Write).await?;
    let busy = ctx.store.volumes_from_snapshot(&s.id).await?;
    if !busy.is_empty() {
        return Err(AppError::Conflict(format!(
            "volumes {} are being created from snapshot {}; delete it once they are available",
            busy.join(", "),
            s.id
        )));
    }
    if !ctx.store.delete_snapshot(&s.id).await? {
        return Err(AppError::Conflict(format!("snapshot {} is {}; delete it once it is completed", s.id, s.state)));
    }
    ctx.bump();
    load_snapshot(ctx, caller, id, Access::Read).await
}
