//! Day-two operations on an instance that already runs its course:
//! resize (a new vCPU count and memory size, claimed from the instance's
//! host by the scheduler, or refused with its reasons), rebuild (a fresh
//! root disk from an image, keeping the id, addresses, volumes, tags, key
//! and user-data), instance revert (the root disk from one of the
//! instance's snapshots) and volume revert (a volume's content from one
//! of its snapshots). Each checks who may ask and in which state, records
//! the desired state and a life event, and wakes the host, whose agent
//! does the work once (see the agent's reconciler and storage). The REST
//! API, the CLI through it, the portal and the EC2 API are adapters.

use crate::auth::Caller;
use crate::authz::Access;
use crate::error::{AppError, AppResult};
use crate::instance_attributes::ResizeError;
use crate::placement::{self, Constraints, Demand};
use crate::store::{InstanceRow, Size};
use crate::volumes::VolumeRow;
use crate::{validate, Ctx};
use nubo_api::agent::PowerState;
use nubo_api::params::{InstanceRebuild, InstanceResize, InstanceRevert, VolumeRevert};
use nubo_api::views::{Instance, InstanceState, SnapshotState, VolumeState};
use std::sync::Arc;

/// Where an instance stands for a day-two operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Desired and actual state both stopped.
    Stopped,
    /// Desired and actual state both running.
    Running,
}

impl Standing {
    fn power(self) -> &'static str {
        match self {
            Standing::Stopped => "stopped",
            Standing::Running => "running",
        }
    }
}

/// Loads an instance the caller may change, and where it stands; one in
/// between (starting, stopping, migrating, terminated) is refused with
/// what to do.
async fn load(ctx: &Ctx, caller: &Caller, id: &str, verb: &str) -> AppResult<(InstanceRow, Standing)> {
    let row = super::instances::load(ctx, caller, id, Access::Write).await?;
    match (row.desired, row.state) {
        (PowerState::Stopped, InstanceState::Stopped) => Ok((row, Standing::Stopped)),
        (PowerState::Running, InstanceState::Running) => Ok((row, Standing::Running)),
        (PowerState::Deleted, _) | (_, InstanceState::Terminated) => {
            Err(AppError::Conflict(format!("instance {} is terminated; it cannot {verb}", row.id)))
        }
        _ => Err(AppError::Conflict(format!(
            "instance {} is {} (wanted {}); wait until it is running or stopped (`nubo instance show {}`), then {verb} it",
            row.id,
            row.state,
            row.desired.shown(),
            row.id
        ))),
    }
}

fn stop_first(row: &InstanceRow, what: &str) -> AppError {
    AppError::Conflict(format!(
        "{what} needs instance {} stopped (it is running): stop it first with `nubo instance stop {}`, then retry",
        row.id, row.id
    ))
}

fn wake(ctx: &Ctx, row: &InstanceRow) {
    match &row.host_id {
        Some(host) => ctx.bump_host(host),
        None => ctx.bump(),
    }
}

/// Gives an instance a new size. A stopped instance takes any size that
/// its host's free capacity and its project's quota allow (it boots with
/// it next time). A running one takes more vCPUs online: the growth is
/// claimed on its host as for a stopped one, then its agent hot-adds them
/// (see the agent's `vcpus`). Its memory and a smaller vCPU count need a
/// stop, each refusal saying so: memory hot-plug is not offered, and
/// unplugging vCPUs needs the guest's cooperation.
pub async fn resize(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &InstanceResize) -> AppResult<Instance> {
    if p.vcpus.is_none() && p.memory_mib.is_none() {
        return Err(AppError::BadRequest(
            "a resize needs a new size: give vcpus and/or memory_mib (`nubo instance resize ID --vcpus N --memory MIB`)"
                .into(),
        ));
    }
    if let Some(v) = p.vcpus.filter(|v| *v == 0 || *v > validate::MAX_VCPUS) {
        return Err(AppError::BadRequest(format!("vcpus must be between 1 and {}, got {v}", validate::MAX_VCPUS)));
    }
    if let Some(m) = p.memory_mib.filter(|m| !(validate::MIN_MEMORY_MIB..=validate::MAX_MEMORY_MIB).contains(m)) {
        return Err(AppError::BadRequest(format!(
            "memory_mib must be between {} and {}, got {m}",
            validate::MIN_MEMORY_MIB,
            validate::MAX_MEMORY_MIB
        )));
    }
    let (row, standing) = load(ctx, caller, id, "be resized").await?;
    let from = Size::of(&row);
    let to = Size {
        vcpus: p.vcpus.map_or(from.vcpus, i64::from),
        memory_mib: p.memory_mib.map_or(from.memory_mib, |m| m as i64),
        disk_gib: from.disk_gib,
    };
    if to == from {
        return super::instances::view(ctx, row, true).await;
    }
    if let Some(image) = match &row.image_id {
        Some(i) => ctx.store.image(i).await?,
        None => None,
    } {
        if to.memory_mib < image.min_memory_mib {
            return Err(AppError::BadRequest(format!(
                "image {} needs at least {} MiB of memory; ask for --memory {} or more",
                image.name, image.min_memory_mib, image.min_memory_mib
            )));
        }
    }
    if standing == Standing::Running {
        if to.memory_mib != from.memory_mib {
            return Err(stop_first(&row, "changing the memory (only vCPUs are added while an instance runs)"));
        }
        if to.vcpus < from.vcpus {
            return Err(stop_first(&row, "removing vCPUs (only adding them works while an instance runs)"));
        }
    }
    claim(ctx, &row, standing, from, to).await?;
    tracing::info!(instance = %row.id, vcpus = to.vcpus, memory_mib = to.memory_mib, online = (standing == Standing::Running), "instance resized");
    wake(ctx, &row);
    let row = super::instances::load(ctx, caller, &row.id, Access::Read).await?;
    super::instances::view(ctx, row, true).await
}

/// Moves the project's quota and the host's claim from `from` to `to`
/// in one transaction; growth is first checked by the scheduler, pinned
/// to the instance's host, so a refusal carries its reasons and loses
/// nothing.
async fn claim(ctx: &Ctx, row: &InstanceRow, standing: Standing, from: Size, to: Size) -> AppResult<()> {
    let project = row.project_id.clone().ok_or_else(|| AppError::internal("an instance without a project"))?;
    let grow = Demand {
        vcpus: (to.vcpus - from.vcpus).max(0) as u32,
        memory_mib: (to.memory_mib - from.memory_mib).max(0) as u64,
        disk_gib: 0,
    };
    let mut limits = Size { vcpus: i64::MAX / 2, memory_mib: i64::MAX / 2, disk_gib: i64::MAX / 2 };
    if let (Some(host), true) = (&row.host_id, grow.vcpus > 0 || grow.memory_mib > 0) {
        let constraints = Constraints { pin: Some(host.as_str()), ..Constraints::default() };
        limits = placement::choose(ctx, grow, &constraints).await?.best.limits;
    }
    match ctx.store.resize_while(&row.id, &project, row.host_id.as_deref(), from, to, limits, None, standing.power()).await
    {
        Ok(()) => Ok(()),
        Err(ResizeError::NotStopped) => Err(AppError::Conflict(format!(
            "instance {} changed state meanwhile (another request); look at it with `nubo instance show {}` and retry",
            row.id, row.id
        ))),
        Err(ResizeError::Quota(m)) => Err(AppError::QuotaExceeded(m)),
        Err(ResizeError::Lost) => Err(AppError::NoValidHost(format!(
            "the host of instance {} no longer has room for {} vCPUs and {} MiB (taken meanwhile): retry, or ask for less",
            row.id, to.vcpus, to.memory_mib
        ))),
        Err(ResizeError::Db(e)) => Err(e.into()),
    }
}

/// Gives an instance a fresh root disk from `image` (its name or id),
/// keeping everything else; cloud-init style first boot runs again, as
/// the new disk has no trace of the old one. A running instance is
/// stopped, rebuilt and started by its host; a stopped one gets its new
/// disk when it starts.
pub async fn rebuild(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &InstanceRebuild) -> AppResult<Instance> {
    let (row, standing) = load(ctx, caller, id, "be rebuilt").await?;
    let project = row.project_id.clone().ok_or_else(|| AppError::internal("an instance without a project"))?;
    let image = match ctx.store.resolve_image(Some(&project), &p.image).await? {
        Some(i) => i,
        None => {
            let known: Vec<String> =
                ctx.store.images_visible(Some(&project)).await?.into_iter().map(|i| i.name).collect();
            return Err(AppError::BadRequest(format!(
                "image '{}' does not exist; known images: {} (see `nubo image list`)",
                p.image.chars().take(80).collect::<String>(),
                known.join(", ")
            )));
        }
    };
    let detail = match standing {
        Standing::Running => format!("root disk from image {}: stopping, replacing the disk, starting", image.name),
        Standing::Stopped => format!("root disk from image {}: replaced at the next start", image.name),
    };
    replace_root(ctx, &row, standing, &image, "rebuild", &detail).await?;
    tracing::info!(instance = %row.id, image = %image.name, "instance rebuild asked");
    let row = super::instances::load(ctx, caller, &row.id, Access::Read).await?;
    super::instances::view(ctx, row, true).await
}

/// Gives a stopped instance its root disk as one of its snapshots holds
/// it (an image taken with `nubo instance snapshot`); the guest's first
/// boot does not run again (the snapshot has been through it).
pub async fn revert_instance(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &InstanceRevert) -> AppResult<Instance> {
    let (row, standing) = load(ctx, caller, id, "be reverted").await?;
    if standing == Standing::Running {
        return Err(stop_first(&row, "a revert"));
    }
    let project = row.project_id.clone().ok_or_else(|| AppError::internal("an instance without a project"))?;
    let image = ctx
        .store
        .resolve_image(Some(&project), &p.snapshot)
        .await?
        .filter(|i| i.source == "snapshot" && i.source_instance.as_deref() == Some(row.id.as_str()))
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "'{}' is not a snapshot of instance {}: see its snapshots with `nubo image list` (take one with `nubo instance snapshot {}`), or use `nubo instance rebuild` for another image",
                p.snapshot.chars().take(80).collect::<String>(),
                row.id,
                row.id
            ))
        })?;
    let detail = format!("root disk from snapshot {} ({}): replaced at the next start", image.name, image.id);
    replace_root(ctx, &row, standing, &image, "revert", &detail).await?;
    tracing::info!(instance = %row.id, snapshot = %image.id, "instance revert asked");
    let row = super::instances::load(ctx, caller, &row.id, Access::Read).await?;
    super::instances::view(ctx, row, true).await
}

/// EC2's CreateReplaceRootVolumeTask: a running instance's root disk
/// replaced (stopped, replaced, started, as EC2 does it) from `image`, or
/// from `snapshot` (one of its instance snapshots), or from the image it
/// runs now (its launch state) when neither is given. Returns the image
/// the new disk comes from.
pub async fn replace_root_running(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    id: &str,
    image: Option<&str>,
    snapshot: Option<&str>,
) -> AppResult<crate::images::ImageRow> {
    let (row, standing) = load(ctx, caller, id, "have its root volume replaced").await?;
    if standing != Standing::Running {
        return Err(AppError::Conflict(format!(
            "instance {} is stopped; a root volume replacement task needs it running: start it first (`nubo instance start {}`), or use `nubo instance rebuild` / `nubo instance revert` while it is stopped",
            row.id, row.id
        )));
    }
    let project = row.project_id.clone().ok_or_else(|| AppError::internal("an instance without a project"))?;
    let key = match (image, snapshot) {
        (Some(i), _) => i.to_string(),
        (None, Some(s)) => s.to_string(),
        (None, None) => row.image_id.clone().unwrap_or_else(|| row.image.clone()),
    };
    let found = ctx.store.resolve_image(Some(&project), &key).await?;
    let found = match snapshot {
        Some(_) => found.filter(|i| i.source == "snapshot" && i.source_instance.as_deref() == Some(row.id.as_str())),
        None => found,
    };
    let found = found.ok_or_else(|| {
        AppError::BadRequest(match snapshot {
            Some(_) => format!(
                "'{}' is not a snapshot of instance {} (Nubo's root disk snapshots are images: CreateImage's ami-... ids)",
                key.chars().take(80).collect::<String>(),
                row.id
            ),
            None => format!("image '{}' does not exist: see DescribeImages", key.chars().take(80).collect::<String>()),
        })
    })?;
    let (stage, detail) = match snapshot {
        Some(_) => (
            "revert",
            format!("root disk from snapshot {} ({}): stopping, replacing the disk, starting", found.name, found.id),
        ),
        None => ("rebuild", format!("root disk from image {}: stopping, replacing the disk, starting", found.name)),
    };
    replace_root(ctx, &row, standing, &found, stage, &detail).await?;
    Ok(found)
}

/// The checks and the record shared by rebuild and revert.
async fn replace_root(
    ctx: &Ctx,
    row: &InstanceRow,
    standing: Standing,
    image: &crate::images::ImageRow,
    stage: &str,
    detail: &str,
) -> AppResult<()> {
    if !image.state.is_bootable() {
        return Err(AppError::Conflict(format!(
            "image {} is {}; it can be used once it is active",
            image.name, image.state
        )));
    }
    if row.disk_gib < image.min_disk_gib {
        return Err(AppError::BadRequest(format!(
            "image {} needs a root disk of at least {} GiB and instance {} has {} GiB: choose another image",
            image.name, image.min_disk_gib, row.id, row.disk_gib
        )));
    }
    if row.memory_mib < image.min_memory_mib {
        return Err(AppError::BadRequest(format!(
            "image {} needs at least {} MiB of memory and instance {} has {} MiB: resize it first (`nubo instance resize {} --memory {}`)",
            image.name, image.min_memory_mib, row.id, row.memory_mib, row.id, image.min_memory_mib
        )));
    }
    if !ctx.store.rebuild_instance(&row.id, standing.power(), &image.name, &image.id, stage, detail).await? {
        return Err(AppError::Conflict(format!(
            "instance {} changed state meanwhile (another request); look at it with `nubo instance show {}` and retry",
            row.id, row.id
        )));
    }
    wake(ctx, row);
    Ok(())
}

/// Gives a volume the content one of its snapshots holds. The volume must
/// be detached or its instance stopped; it is `creating` until its host
/// has replaced the file, and its instance does not start meanwhile.
pub async fn revert_volume(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &VolumeRevert) -> AppResult<VolumeRow> {
    let v = super::volumes::load(ctx, caller, id, Access::Write).await?;
    let snap = super::volumes::load_snapshot(ctx, caller, &p.snapshot, Access::Read).await?;
    if snap.volume_id != v.id {
        return Err(AppError::BadRequest(format!(
            "snapshot {} was taken of volume {}, not of {}: see the snapshots with `nubo snapshot list`",
            snap.id, snap.volume_id, v.id
        )));
    }
    if snap.state != SnapshotState::Completed {
        return Err(AppError::Conflict(format!(
            "snapshot {} is {}; a volume can go back to it once it is completed",
            snap.id, snap.state
        )));
    }
    if !v.state.is_live() {
        return Err(AppError::Conflict(format!(
            "volume {} is {}; wait until it is available or in-use, then revert it",
            v.id, v.state
        )));
    }
    if let Some(instance) = &v.instance_id {
        let inst =
            ctx.store.instance(instance).await?.ok_or_else(|| AppError::internal("volume's instance vanished"))?;
        if !(inst.desired == PowerState::Stopped && inst.state == InstanceState::Stopped) {
            return Err(AppError::Conflict(format!(
                "volume {} is attached to instance {}, which is {}: stop it first (`nubo instance stop {}`) or detach the volume (`nubo volume detach {}`), then retry",
                v.id, instance, inst.state, instance, v.id
            )));
        }
    }
    if !ctx.store.revert_volume(&v.id, &snap.id, v.instance_id.as_deref()).await? {
        return Err(AppError::Conflict(format!(
            "volume {} or its instance changed meanwhile (another request); look at it with `nubo volume show {}` and retry",
            v.id, v.id
        )));
    }
    tracing::info!(volume = %v.id, snapshot = %snap.id, "volume revert asked");
    ctx.bump_host(&v.host_id);
    ctx.store
        .volume(&v.id)
        .await?
        .filter(|v| v.state != VolumeState::Deleted)
        .ok_or_else(|| AppError::internal("volume vanished"))
}

/// Refuses to start an instance while one of its volumes is being
/// reverted (it would boot with the content the revert replaces).
pub async fn check_no_revert_pending(ctx: &Ctx, row: &InstanceRow) -> AppResult<()> {
    let reverting = ctx.store.reverting_volumes(&row.id).await?;
    if reverting.is_empty() {
        return Ok(());
    }
    Err(AppError::Conflict(format!(
        "volume {} of instance {} is being reverted to a snapshot: start it once the volume is in-use again (`nubo volume show {}`)",
        reverting.join(", "),
        row.id,
        reverting[0]
    )))
}
