//! Restores from backups: a new instance from a backup (its size, its
//! volumes, its networks on request), a new volume from one disk of a
//! backup, a stopped instance's disks written back in place, and a dead
//! host's instances re-placed on other hosts from their newest backups
//! (`nubo host evacuate --from-backups`). Each only records which disk
//! comes from which backup (`restores`); the host writes it before the VM
//! boots or the volume is used.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::restores::NewRestoredVolume;
use crate::restores::{BackupRow, LaunchRestore};
use crate::store::{now_ms, Size};
use crate::volumes::StorageClaimError;
use crate::{placement, Ctx};
use nubo_api::agent::PowerState;
use nubo_api::backup::{EvacuatedInstance, RestoreInPlace, RestoreInstance, RestoreVolume};
use nubo_api::ids::{BackupId, VolumeId};
use nubo_api::params::InstanceCreate;
use nubo_api::views::{Instance, InstanceState, Volume};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

const GIB: u64 = 1 << 30;

/// Loads a backup the caller may read.
pub async fn load_backup(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<BackupRow> {
    let id: BackupId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let b = ctx
        .store
        .backup_for_restore(id.as_str())
        .await?
        .ok_or(AppError::NotFound { kind: "backup", id: id.to_string() })?;
    authz::check(caller, Access::Read, Some(&b.project_id), "backup", id.as_str())?;
    Ok(b)
}

/// Only a completed backup has every disk in its repository.
fn completed(b: &BackupRow) -> AppResult<()> {
    if b.state == nubo_api::backup::BackupState::Completed {
        return Ok(());
    }
    Err(AppError::Conflict(format!(
        "backup {} is {}; only a completed backup can be restored: wait for it, or pick another (`nubo backup list`)",
        b.id, b.state
    )))
}

/// The caller creates in its own project; a restore must land in the backup's.
fn same_project(caller: &Caller, b: &BackupRow) -> AppResult<String> {
    let project = authz::creation_project(caller)?;
    if project != b.project_id {
        return Err(AppError::Conflict(format!(
            "backup {} belongs to another project than the one you act in; switch to its project to restore it",
            b.id
        )));
    }
    Ok(project)
}

fn size_gib(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

fn claim_error(e: StorageClaimError) -> AppError {
    match e {
        StorageClaimError::Quota(m) => AppError::QuotaExceeded(m),
        StorageClaimError::Pool(m) => AppError::NoValidHost(format!("cannot create the restored volume: {m}")),
        StorageClaimError::State => AppError::Conflict("the volume changed meanwhile; retry".into()),
        StorageClaimError::Db(e) => e.into(),
    }
}

/// The private networks the backed-up instance was on (ids), from its
/// recorded view (`addresses`) or a `networks` list.
fn networks_of(inst: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let from_addresses = inst.get("addresses").and_then(Value::as_array).into_iter().flatten();
    let from_list = inst.get("networks").and_then(Value::as_array).into_iter().flatten();
    for n in from_addresses.chain(from_list) {
        let id = match n {
            Value::String(s) => Some(s.clone()),
            v => ["network_id", "id"].iter().find_map(|k| v.get(*k).and_then(Value::as_str)).map(str::to_string),
        };
        if let Some(id) = id.filter(|i| !out.contains(i)) {
            out.push(id);
        }
    }
    out
}

/// Makes a volume on `host` filled from disk `disk` of backup `b`,
/// attached to `instance` at `slot` when given.
#[allow(clippy::too_many_arguments)]
async fn restored_volume(
    ctx: &Ctx,
    b: &BackupRow,
    project: &str,
    name: Option<&str>,
    host: Option<&str>,
    disk: &nubo_api::backup::BackupDisk,
    attach: Option<(&str, i64)>,
) -> AppResult<String> {
    let gib = size_gib(disk.size_bytes);
    let (host, limit) = placement::place_storage(ctx, gib, host).await?;
    let id = VolumeId::generate();
    let name = name.map(str::to_string).unwrap_or_else(|| id.to_string());
    let new = NewRestoredVolume {
        id: id.as_str(),
        project_id: project,
        name: &name,
        host_id: &host,
        size_gib: gib,
        backup_id: &b.id,
        disk: &disk.name,
        repository_id: &b.repository_id,
        attach,
    };
    ctx.store.create_restored_volume(&new, limit).await.map_err(claim_error)?;
    Ok(id.to_string())
}

/// A new instance from a backup: its size, image (recorded; the root
/// disk comes from the backup), key, user-data, tags and volumes; its
/// private networks only when asked.
pub async fn restore_instance(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &RestoreInstance) -> AppResult<Instance> {
    let b = load_backup(ctx, caller, id).await?;
    let project = same_project(caller, &b)?;
    completed(&b)?;
    let pin = match &p.host {
        Some(h) => {
            authz::require_admin(caller)
                .map_err(|_| AppError::Forbidden("pinning a restore to a host needs the admin role".into()))?;
            let hosts = ctx.store.hosts().await?;
            let host = hosts
                .iter()
                .find(|x| x.id == *h || x.name == *h)
                .ok_or_else(|| AppError::BadRequest(format!("host '{h}' does not exist; see `nubo host list`")))?;
            Some(host.id.clone())
        }
        None => None,
    };
    let choices = RestoreChoices {
        name: p.name.clone().unwrap_or_else(|| format!("{}-restored", b.instance_name)),
        with_networks: p.with_networks,
        pin,
        ..Default::default()
    };
    let row = restore_as_instance(ctx, caller, &b, &project, &choices).await?;
    super::instances::view(ctx, row, true).await
}

/// What a restore as a new instance takes beside the backup: the user's
/// choices, and what a verification adds (`app::backup_verification`).
#[derive(Debug, Clone, Default)]
pub struct RestoreChoices {
    pub name: String,
    /// On the backed-up instance's private networks; otherwise user-mode
    /// networking only.
    pub with_networks: bool,
    /// The host to restore on (already resolved to its id).
    pub pin: Option<String>,
    /// Tags added to the recorded ones.
    pub extra_tags: Vec<(String, String)>,
    /// Guest ports to forward.
    pub ports: Vec<u16>,
    /// The backup this instance verifies: it is not counted against the
    /// project's quota, and only its root disk is restored (volumes would
    /// be the project's storage).
    pub verification_of: Option<String>,
}

/// Launches an instance from backup `b` (completed, of `project`), as
/// `caller`, with `c`'s choices; its volumes are re-made from the backup
/// on the same host unless it is a verification.
pub async fn restore_as_instance(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    b: &BackupRow,
    project: &str,
    c: &RestoreChoices,
) -> AppResult<crate::store::InstanceRow> {
    let inst = b.instance();
    let num = |k: &str| inst.get(k).and_then(Value::as_u64);
    let (Some(vcpus), Some(memory_mib), Some(disk_gib)) = (num("vcpus"), num("memory_mib"), num("disk_gib")) else {
        return Err(AppError::Conflict(format!(
            "backup {} does not record the instance's size (vcpus, memory_mib, disk_gib); restore its disks as volumes instead (`nubo backup restore-volume`)",
            b.id
        )));
    };
    // The image is recorded for its metadata; a deleted one does not stop
    // the restore (the root disk is the backup's).
    let image = match inst.get("image").and_then(Value::as_str) {
        Some(i) if ctx.store.resolve_image(Some(project), i).await?.is_some() => i.to_string(),
        _ => nubo_api::agent::BLANK_IMAGE.to_string(),
    };
    let key_name = match inst.get("key_name").and_then(Value::as_str) {
        Some(k) if ctx.store.keypair(project, k).await?.is_some() => Some(k.to_string()),
        _ => None,
    };
    let mut tags: BTreeMap<String, String> = inst
        .get("tags")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    tags.extend(c.extra_tags.iter().cloned());
    let networks = if c.with_networks { networks_of(&inst) } else { vec![crate::networks::USER_MODE.to_string()] };
    let networks = if networks.is_empty() { vec![crate::networks::USER_MODE.to_string()] } else { networks };
    let create = InstanceCreate {
        image,
        vcpus: vcpus as u32,
        memory_mib,
        disk_gib,
        name: Some(c.name.clone()),
        user_data: inst.get("user_data").and_then(Value::as_str).map(str::to_string),
        ports: c.ports.clone(),
        key_name,
        recipe: None,
        metadata: None,
        tags,
        networks,
        security_groups: Vec::new(),
        cdrom: None,
        boot: None,
        hardware: Default::default(),
    };
    let restore = LaunchRestore {
        backup_id: b.id.clone(),
        repository_id: b.repository_id.clone(),
        data_as_of_ms: b.created_at_ms,
        pin: c.pin.clone(),
    };
    let record = crate::launch::LaunchRecord {
        restore: Some(&restore),
        verification_of: c.verification_of.as_deref(),
        ..Default::default()
    };
    let row = super::instances::launch(ctx, caller, &create, record).await?;
    let host = row.host_id.clone().ok_or_else(|| AppError::internal("a launched instance has no host"))?;
    if c.verification_of.is_none() {
        for (slot, disk) in b.disks().iter().filter(|d| d.name != "root").enumerate() {
            restored_volume(ctx, b, project, None, Some(&host), disk, Some((&row.id, slot as i64))).await.map_err(
                |e| {
                    AppError::Conflict(format!(
                        "instance {} was restored, but its volume {} was not: {e}",
                        row.id, disk.name
                    ))
                },
            )?;
        }
    }
    ctx.bump();
    tracing::info!(instance = %row.id, backup = %b.id, %host, "instance restored from a backup");
    Ok(row)
}

/// A new volume from one disk of a backup.
pub async fn restore_volume(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &RestoreVolume) -> AppResult<Volume> {
    let b = load_backup(ctx, caller, id).await?;
    let project = same_project(caller, &b)?;
    completed(&b)?;
    if let Some(n) = &p.name {
        crate::validate::name(n)?;
    }
    let disks = b.disks();
    let disk = disks.iter().find(|d| d.name == p.disk).ok_or_else(|| {
        AppError::BadRequest(format!(
            "backup {} has no disk '{}'; it has: {}",
            b.id,
            p.disk.chars().take(64).collect::<String>(),
            disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let vid = restored_volume(ctx, &b, &project, p.name.as_deref(), None, disk, None).await?;
    ctx.bump();
    let v = ctx.store.volume(&vid).await?.ok_or_else(|| AppError::internal("volume vanished"))?;
    super::volumes::view(ctx, v).await
}

/// Writes a stopped instance's root disk (and each volume the backup
/// holds that is still attached) back from one of its backups before its
/// next start; it stays stopped.
pub async fn restore_in_place(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &RestoreInPlace) -> AppResult<Instance> {
    let row = super::instances::load(ctx, caller, id, Access::Write).await?;
    let b = load_backup(ctx, caller, p.backup.as_str()).await?;
    if b.instance_id != row.id {
        return Err(AppError::BadRequest(format!(
            "backup {} is of instance {}, not {}; restore it as a new instance with `nubo backup restore {}`",
            b.id, b.instance_id, row.id, b.id
        )));
    }
    completed(&b)?;
    if row.desired != PowerState::Stopped || row.state != InstanceState::Stopped {
        return Err(AppError::Conflict(format!(
            "instance {} is {}; its disks are written back only while it is stopped: stop it first (`nubo instance stop {}`)",
            row.id, row.state, row.id
        )));
    }
    let attached = ctx.store.volumes_of_instance(&row.id).await?;
    let mut tx = ctx.store.begin().await?;
    crate::restores::restore_root(&mut tx, &row.id, &b.id, &b.repository_id, b.created_at_ms).await?;
    let mut volumes = Vec::new();
    for d in b.disks().iter().filter(|d| d.name != "root") {
        let vid = d.volume_id.as_ref().map(|v| v.to_string()).unwrap_or_else(|| d.name.clone());
        if attached.iter().any(|v| v.id == vid) {
            crate::restores::restore_volume(&mut tx, &vid, &b.id, &d.name, &b.repository_id).await?;
            volumes.push(vid);
        }
    }
    let detail = format!(
        "restored from {}, data as of {}: root disk{}{} written back before the next start",
        b.id,
        crate::restores::time_text(b.created_at_ms),
        if volumes.is_empty() { "" } else { " and volumes " },
        volumes.join(", ")
    );
    crate::store::insert_event(&mut tx, &row.id, now_ms(), "restore", &detail).await?;
    tx.commit().await?;
    ctx.bump();
    tracing::info!(instance = %row.id, backup = %b.id, "in-place restore asked");
    super::instances::show(ctx, caller, &row.id).await
}

/// Re-places each instance of a dead host on another host from its
/// newest completed backup (same id; its volumes re-made there from the
/// backup). Instances without one are left behind, with the reason.
pub async fn evacuate_from_backups(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Vec<EvacuatedInstance>> {
    authz::require_admin(caller)?;
    let hosts = ctx.store.hosts().await?;
    let dead = hosts
        .iter()
        .find(|h| h.id == id || h.name == id)
        .ok_or_else(|| AppError::NotFound { kind: "host", id: id.chars().take(64).collect() })?
        .clone();
    // Restoring elsewhere while the host may still run the VMs would make
    // two copies: only once it has been silent as long as failover waits
    // (its agent has stopped its VMs by then).
    let restart_after = crate::failover::Lease::of(&ctx.config).restart_after().as_millis() as i64;
    let now = now_ms();
    if now - dead.last_heartbeat_ms <= restart_after {
        let silent = (now - dead.last_heartbeat_ms).max(0);
        return Err(AppError::Conflict(format!(
            "host {name} renewed its lease {} s ago: it may still run its VMs, and restoring them elsewhere would make \
             two copies. If it is up, use `nubo host evacuate {name}` to live-migrate; if it is gone, try again in {} s \
             (a host counts as gone after {} s without a heartbeat)",
            silent / 1000,
            (restart_after - silent) / 1000 + 1,
            restart_after / 1000,
            name = dead.name,
        )));
    }
    let mut out = Vec::new();
    for row in ctx.store.instances_on_host(&dead.id).await? {
        if row.state == InstanceState::Terminated || row.desired == PowerState::Deleted {
            continue;
        }
        let mut e = EvacuatedInstance {
            instance_id: row.id.parse().map_err(AppError::internal)?,
            name: row.name.clone(),
            host: None,
            host_name: None,
            backup_id: None,
            data_as_of: None,
            data_age: None,
            left_behind: None,
        };
        match evacuate_one(ctx, &dead, &row).await? {
            Ok((target, b)) => {
                e.host = Some(target.id);
                e.host_name = Some(target.name);
                e.backup_id = b.id.parse().ok();
                e.data_as_of = Some(crate::restores::time_text(b.created_at_ms));
                e.data_age = Some(crate::restores::age_text(now - b.created_at_ms));
            }
            Err(why) => e.left_behind = Some(why),
        }
        out.push(e);
    }
    ctx.bump();
    Ok(out)
}

/// One instance: its newest backup, a host, and the move (one
/// transaction, so a crash leaves it either on the dead host or restored).
async fn evacuate_one(
    ctx: &Ctx,
    dead: &crate::store::HostRow,
    row: &crate::store::InstanceRow,
) -> AppResult<Result<(placement::Chosen, BackupRow), String>> {
    let Some(b) = ctx.store.newest_completed_backup(&row.id).await? else {
        return Ok(Err(format!(
            "it has no completed backup; start host {} again to get it back, or terminate it",
            dead.name
        )));
    };
    let nics: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM network_ports WHERE instance_id = $1")
        .bind(&row.id)
        .fetch_one(&ctx.store.pool)
        .await?;
    let demand =
        placement::Demand { vcpus: row.vcpus as u32, memory_mib: row.memory_mib as u64, disk_gib: row.disk_gib as u64 };
    let c = placement::Constraints { exclude: Some(&dead.id), underlay: nics > 0, ..Default::default() };
    let target = match placement::choose(ctx, demand, &c).await {
        Ok(choice) => choice.best,
        Err(placement::Refusal::Db(e)) => return Err(e.into()),
        Err(refusal) => return Ok(Err(format!("no other host can take it: {refusal}"))),
    };
    let mut tx = ctx.store.begin().await?;
    if !crate::store::claim_capacity(&mut tx, &target.id, Size::of(row), target.limits).await? {
        ctx.store.changed_hosts.mark(&target.id);
        return Ok(Err(format!("host {} filled meanwhile; evacuate again", target.name)));
    }
    let now = now_ms();
    let moved = sqlx::query(
        "UPDATE instances SET host_id = $1, start_seq = start_seq + $2,
           state = CASE WHEN desired = 'running' THEN 'pending' ELSE 'stopped' END, error = NULL, updated_at_ms = $3
         WHERE id = $4 AND host_id = $5 AND (SELECT last_heartbeat_ms FROM hosts WHERE id = $5) = $6",
    )
    .bind(&target.id)
    .bind(i64::from(row.desired == PowerState::Running))
    .bind(now)
    .bind(&row.id)
    .bind(&dead.id)
    .bind(dead.last_heartbeat_ms)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != 1 {
        return Ok(Err("it moved, or its host came back, meanwhile".into()));
    }
    crate::store::release_capacity(&mut tx, &dead.id, Size::of(row)).await?;
    crate::restores::restore_root(&mut tx, &row.id, &b.id, &b.repository_id, b.created_at_ms).await?;
    let disks = b.disks();
    let volumes: Vec<String> =
        sqlx::query_scalar("SELECT id FROM volumes WHERE instance_id = $1 AND state <> 'deleted'")
            .bind(&row.id)
            .fetch_all(&mut *tx)
            .await?;
    let mut empty = Vec::new();
    for v in &volumes {
        match disks.iter().find(|d| d.volume_id.as_ref().is_some_and(|i| i.as_str() == v) || d.name == *v) {
            Some(d) => {
                crate::restores::restore_volume(&mut tx, v, &b.id, &d.name, &b.repository_id).await?;
            }
            None => empty.push(v.clone()),
        }
    }
    sqlx::query("UPDATE volumes SET host_id = $1 WHERE instance_id = $2 AND state <> 'deleted'")
        .bind(&target.id)
        .bind(&row.id)
        .execute(&mut *tx)
        .await?;
    // Forwarded ports belonged to the dead host's 127.0.0.1.
    sqlx::query("DELETE FROM instance_ports WHERE instance_id = $1").bind(&row.id).execute(&mut *tx).await?;
    let mut detail = format!(
        "host {} is down; restored on {} from {} (data from {}, {} old)",
        dead.name,
        target.name,
        b.id,
        crate::restores::time_text(b.created_at_ms),
        crate::restores::age_text(now - b.created_at_ms)
    );
    if !empty.is_empty() {
        detail.push_str(&format!("; volumes not in the backup start empty: {}", empty.join(", ")));
    }
    crate::store::insert_event(&mut tx, &row.id, now, "restored_elsewhere", &detail).await?;
    tx.commit().await?;
    ctx.store.changed_hosts.mark(&target.id);
    ctx.store.changed_hosts.mark(&dead.id);
    tracing::warn!(instance = %row.id, from = %dead.name, to = %target.name, backup = %b.id, "instance restored from its backup off a dead host");
    Ok(Ok((target, b)))
}
