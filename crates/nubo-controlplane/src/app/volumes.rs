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
use crate::volume_modifications::{ModificationState, VolumeModificationRow};
use crate::volumes::{AttachOutcome, NewVolume, SnapshotRow, StorageClaimError, VolumeRow};
use crate::{placement, validate, Ctx};
use nubo_api::agent::PowerState;
use nubo_api::ids::{SnapshotId, VolumeId};
use nubo_api::params::{SnapshotCreate, VolumeAttach, VolumeCreate, VolumeExtend};
use nubo_api::views::{AttachState, InstanceState, Snapshot, SnapshotState, Volume, VolumeAttachment, VolumeState};
use std::collections::HashMap;
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

/// A data volume a launch makes and attaches (EC2's block device mappings
/// beyond the root disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchVolume {
    /// GiB; None: the snapshot's size.
    pub size_gib: Option<u64>,
    /// Made with this snapshot's content.
    pub snapshot_id: Option<String>,
    /// The device name the client asked for (`/dev/sdf`), reported back.
    pub device_name: String,
    /// Deleted when the instance is terminated.
    pub delete_on_termination: bool,
}

/// Makes and attaches the volumes of a launch to the new `instance`, on
/// its host, tagged with `tags`. Until all are made each is marked to go
/// with the instance, so a failure part way (a quota, a full pool) is
/// undone by terminating the instance, which the caller then does; the
/// error says which volume failed.
pub async fn create_for_launch(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    instance: &str,
    volumes: &[LaunchVolume],
    tags: &[(String, String)],
) -> AppResult<Vec<VolumeRow>> {
    let instance_id: nubo_api::ids::InstanceId = parse(instance)?;
    let mut made = Vec::new();
    for lv in volumes {
        let size_gib = match (lv.size_gib, &lv.snapshot_id) {
            (Some(s), _) => s,
            (None, Some(snap)) => load_snapshot(ctx, caller, snap, Access::Read).await?.size_gib as u64,
            (None, None) => {
                return Err(AppError::BadRequest(format!(
                    "volume {}: give its size or a snapshot to make it from",
                    lv.device_name
                )))
            }
        };
        let params = VolumeCreate {
            size_gib,
            name: None,
            snapshot_id: lv.snapshot_id.as_deref().map(parse::<SnapshotId>).transpose()?,
            instance_id: Some(instance_id.clone()),
        };
        let v = create(ctx, caller, &params).await.map_err(|e| about(e, &lv.device_name))?;
        let attached = async {
            if !tags.is_empty() {
                ctx.store
                    .set_tags(&[(v.id.clone(), "volume", v.project_id.clone())], tags)
                    .await
                    .map_err(|e| AppError::BadRequest(e.to_string()))?;
            }
            attach_when_made(ctx, caller, &v.id, &instance_id).await
        }
        .await;
        if let Err(e) = attached {
            // Not attached, so not the instance's to take along: deleted
            // here (once its host has made it, if it still is making it).
            let _ = ctx.store.delete_volume(&v.id).await;
            ctx.bump();
            return Err(about(e, &lv.device_name));
        }
        ctx.store.set_volume_delete_on_termination(&v.id, true).await?;
        ctx.store.set_volume_device_name(&v.id, Some(&lv.device_name)).await?;
        made.push((v.id, lv.delete_on_termination));
    }
    let mut rows = Vec::new();
    for (id, delete) in made {
        ctx.store.set_volume_delete_on_termination(&id, delete).await?;
        rows.push(load(ctx, caller, &id, Access::Read).await?);
    }
    Ok(rows)
}

/// Whether an attached volume is deleted when its instance is
/// terminated (EC2's DeleteOnTermination of the attachment).
pub async fn set_delete_on_termination(ctx: &Arc<Ctx>, caller: &Caller, id: &str, delete: bool) -> AppResult<()> {
    let v = load(ctx, caller, id, Access::Write).await?;
    if v.instance_id.is_none() {
        return Err(AppError::Conflict(format!(
            "volume {} is not attached: whether it goes with an instance is set while attached",
            v.id
        )));
    }
    ctx.store.set_volume_delete_on_termination(&v.id, delete).await?;
    Ok(())
}

/// Longest a launch waits for a host to make one of its volumes.
const LAUNCH_VOLUME_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Attaches a volume the launch just made, once its host has made the
/// file (a new volume is `creating` until then, and only an available
/// one may be attached: the guest must find it there when it starts).
async fn attach_when_made(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    volume: &str,
    instance: &nubo_api::ids::InstanceId,
) -> AppResult<()> {
    let deadline = tokio::time::Instant::now() + LAUNCH_VOLUME_WAIT;
    loop {
        let v = load(ctx, caller, volume, Access::Read).await?;
        match v.state {
            VolumeState::Available => break,
            VolumeState::Error => {
                return Err(AppError::Conflict(format!(
                    "volume {} could not be made on its host: {}",
                    v.id,
                    v.error.as_deref().unwrap_or("no reason given")
                )))
            }
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(AppError::Unavailable(format!(
                "volume {} was not made by its host within {} s: is the host up (`nubo host list`)? retry the launch",
                v.id,
                LAUNCH_VOLUME_WAIT.as_secs()
            )))
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    attach(ctx, caller, volume, &VolumeAttach { instance_id: instance.clone() }).await?;
    Ok(())
}

/// An error about one of a launch's volumes, saying which.
fn about(e: AppError, device: &str) -> AppError {
    let what = |m: String| format!("block device {device}: {m}");
    match e {
        AppError::BadRequest(m) => AppError::BadRequest(what(m)),
        AppError::Conflict(m) => AppError::Conflict(what(m)),
        AppError::QuotaExceeded(m) => AppError::QuotaExceeded(what(m)),
        AppError::NoValidHost(m) => AppError::NoValidHost(what(m)),
        AppError::Unavailable(m) => AppError::Unavailable(what(m)),
        other => other,
    }
}

/// The longest snapshot description (EC2's limit for `Description`).
pub const MAX_SNAPSHOT_DESCRIPTION: usize = 255;

/// Takes a snapshot as `create_snapshot` does, keeping a free-text
/// description beside it (EC2's CreateSnapshot `Description`).
pub async fn create_described_snapshot(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    id: &str,
    p: &SnapshotCreate,
    description: &str,
) -> AppResult<SnapshotRow> {
    if description.len() > MAX_SNAPSHOT_DESCRIPTION || description.chars().any(char::is_control) {
        return Err(AppError::BadRequest(format!(
            "a snapshot description is at most {MAX_SNAPSHOT_DESCRIPTION} bytes of printable text"
        )));
    }
    let s = create_snapshot(ctx, caller, id, p).await?;
    if !description.is_empty() {
        ctx.store.set_snapshot_description(&s.id, description).await?;
    }
    Ok(s)
}

/// The descriptions of the snapshots the caller may see, by snapshot id.
pub async fn snapshot_descriptions(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<HashMap<String, String>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(HashMap::new()) };
    Ok(ctx.store.snapshot_descriptions(project.as_deref()).await?)
}

const GIB: i64 = 1 << 30;

/// Where a modification of `v` stands now, if it moved: `modifying` until
/// the host reports the file grown (or fails: the volume's error, set
/// after the modification began), then `optimizing` while an attached
/// guest still sees the old size, then `completed`.
fn next_modification_state(m: &VolumeModificationRow, v: &VolumeRow) -> Option<(ModificationState, Option<String>)> {
    if !m.state.is_open() {
        return None;
    }
    if v.actual_size_gib < m.target_size_gib {
        let failed = m.state == ModificationState::Modifying && v.updated_at_ms >= m.started_at_ms;
        return match (&v.error, failed) {
            (Some(e), true) => Some((ModificationState::Failed, Some(e.clone()))),
            _ => None,
        };
    }
    let guest_behind = v.attach_state == Some(AttachState::Attached)
        && v.guest_size_bytes.is_some_and(|b| b < m.target_size_gib.saturating_mul(GIB));
    let to = if guest_behind { ModificationState::Optimizing } else { ModificationState::Completed };
    (to != m.state).then_some((to, None))
}

/// Moves a modification on to where the volume now is. Done when it is
/// looked at, not by a background task: its state follows from the
/// volume's row alone, and the time it is first seen over is its end time.
async fn refresh_modification(ctx: &Ctx, m: VolumeModificationRow, v: &VolumeRow) -> AppResult<VolumeModificationRow> {
    let Some((to, message)) = next_modification_state(&m, v) else { return Ok(m) };
    ctx.store.move_volume_modification(&m, to, message.as_deref()).await?;
    // Whoever moved it (this request or another), the row says where it is now.
    Ok(ctx.store.latest_volume_modification(&m.volume_id).await?.unwrap_or(m))
}

/// The latest modification of a volume the caller may see, if it was
/// ever modified.
pub async fn modification(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<Option<VolumeModificationRow>> {
    let v = load(ctx, caller, id, Access::Read).await?;
    match ctx.store.latest_volume_modification(&v.id).await? {
        Some(m) => Ok(Some(refresh_modification(ctx, m, &v).await?)),
        None => Ok(None),
    }
}

/// The latest modification of each volume the caller may see (those of
/// deleted volumes are not shown), in the order they began.
pub async fn modifications(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<VolumeModificationRow>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let volumes: HashMap<String, VolumeRow> =
        ctx.store.volumes(project.as_deref()).await?.into_iter().map(|v| (v.id.clone(), v)).collect();
    let mut out = Vec::new();
    for m in ctx.store.latest_volume_modifications(project.as_deref()).await? {
        if let Some(v) = volumes.get(&m.volume_id) {
            out.push(refresh_modification(ctx, m, v).await?);
        }
    }
    Ok(out)
}

/// Grows a volume as `extend` does and records the modification (EC2's
/// ModifyVolume); refused while the volume's previous modification is
/// still being made by its host. Returns the volume and the record.
pub async fn modify(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    id: &str,
    p: &VolumeExtend,
) -> AppResult<(VolumeRow, VolumeModificationRow)> {
    let v = load(ctx, caller, id, Access::Write).await?;
    if let Some(m) = modification(ctx, caller, id).await? {
        if m.state == ModificationState::Modifying {
            return Err(AppError::Conflict(format!(
                "volume {} is still being grown to {} GiB; modify it again once that is done",
                v.id, m.target_size_gib
            )));
        }
    }
    let grown = extend(ctx, caller, id, p).await?;
    let m = ctx.store.insert_volume_modification(&v.id, &v.project_id, v.size_gib, grown.size_gib).await?;
    tracing::info!(volume = %v.id, from = v.size_gib, to = grown.size_gib, "volume modification recorded");
    Ok((grown, m))
}
