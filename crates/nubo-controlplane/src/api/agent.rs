//! `/api/v1/agent/...`: the server side of the agent protocol. Agents
//! register, long-poll their host's desired state (whole, or what changed
//! since the answer they hold), and report actual
//! state and console output. A host can only read and report for itself
//! and its own instances.

use crate::auth::HostCaller;
use crate::error::{ApiJson, AppError, AppResult};
use crate::store::InstanceRow;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::Json;
use nubo_api::agent::{
    ConsoleAck, ConsoleChunk, DesiredAttachment, DesiredCapture, DesiredInstance, DesiredRun, DesiredSnapshot,
    DesiredState, DesiredVolume, HeartbeatAck, HostReport, ImageSource, NamedKey, PortMapping, PowerState,
    RegisterHost, RunAck, RunAction, RunProgress,
};
use nubo_api::ids::{HostId, InstanceId, VolumeId};
use nubo_api::views::{MigrationState, RunState};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest a desired-state long-poll is held open.
const LONG_POLL: Duration = Duration::from_secs(20);

fn host_id(s: &str) -> AppResult<HostId> {
    s.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))
}

/// A host may read and report only for itself.
fn same_host(caller: &HostCaller, id: &HostId) -> AppResult<()> {
    if caller.host_id == id.as_str() {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!("this credential belongs to host {}, not {id}", caller.host_id)))
    }
}

async fn known_host(ctx: &Ctx, id: &HostId) -> AppResult<()> {
    match ctx.store.host(id.as_str()).await? {
        Some(_) => Ok(()),
        None => Err(AppError::NotFound { kind: "host", id: id.to_string() }),
    }
}

/// Register (or re-register) a compute host.
#[utoipa::path(post, path = "/api/v1/agent/register", tag = "agent", request_body = RegisterHost,
    responses((status = 200, description = "registered"), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn register(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(r): ApiJson<RegisterHost>,
) -> AppResult<Json<()>> {
    same_host(&caller, &r.host_id)?;
    crate::validate::name(&r.name)?;
    // Bounds keep every later sum far from overflow (1 EiB of memory is not a host).
    if r.vcpus == 0 || r.vcpus > 65_536 || r.memory_mib == 0 || r.memory_mib > (1 << 40) || r.disk_gib > (1 << 40) {
        return Err(AppError::BadRequest(
            "host capacity out of range: vcpus 1..=65536, memory_mib 1..=2^40, disk_gib 0..=2^40".into(),
        ));
    }
    ctx.store.register_host(&r).await?;
    // Every host is watched for missed heartbeats.
    let interval = ctx.config.heartbeat_timeout.as_secs().clamp(1, 60);
    ctx.store.ensure_heartbeat_check(r.host_id.as_str(), interval).await?;
    tracing::info!(host = %r.host_id, name = %r.name, vcpus = r.vcpus, memory_mib = r.memory_mib, "host registered");
    Ok(Json(()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DesiredQuery {
    /// The generation the agent already has; the call waits until a newer one exists.
    pub after: Option<u64>,
    /// The `view` of the last answer the agent holds: the answer is then
    /// a delta from it when this server sent it (see `desired_views`).
    pub view: Option<String>,
}

/// The desired state of one host's instances (long-poll with `after`):
/// whole, or with `view` only the instances changed since that answer.
#[utoipa::path(get, path = "/api/v1/agent/hosts/{id}/desired", tag = "agent",
    params(("id" = String, Path, description = "host id"), DesiredQuery),
    responses((status = 200, body = DesiredState), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn desired(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<DesiredQuery>,
) -> AppResult<Json<DesiredState>> {
    let host = host_id(&id)?;
    same_host(&caller, &host)?;
    known_host(&ctx, &host).await?;
    if let Some(after) = q.after {
        // Wait only while nothing newer exists; a stale `after` from before
        // a server restart is lower than the current one and returns at once.
        let generation = ctx.generation();
        let timed_out = tokio::time::timeout(LONG_POLL, ctx.wait_for_news(host.as_str(), after)).await.is_err();
        // Nothing changed for this host: an agent holding this server's
        // last answer is told so without reading the database.
        if let Some(view) = q.view.as_deref().filter(|_| timed_out) {
            let sessions = ctx.consoles.of_host(host.as_str());
            if let Some(answer) = ctx.desired_views.unchanged(&ctx.server_id, host.as_str(), view, generation, sessions)
            {
                return Ok(Json(answer));
            }
        }
    }
    let generation = ctx.generation();
    // A fixed number of queries for the whole host, however many
    // instances it runs; the related rows are grouped by instance here.
    let mut ports = group_by_instance(ctx.store.ports_on_host(host.as_str()).await?, |p| &p.instance_id);
    let mut runs = group_by_instance(ctx.store.open_runs_on_host(host.as_str()).await?, |r| &r.instance_id);
    let volume_rows = ctx.store.volumes_on_host(host.as_str()).await?;
    let mut captures = group_by_instance(ctx.store.pending_captures_on_host(host.as_str()).await?, |c| &c.1);
    let (mut nics, networks) = ctx.store.desired_networks(host.as_str()).await?;
    let migrations = ctx.store.migrations_of_host(host.as_str()).await?;
    let mut rows = ctx.store.instances_on_host(host.as_str()).await?;
    let incoming = ctx.store.incoming_migrations(host.as_str()).await?;
    // Instances arriving here are listed after the host's own, in the
    // order of their migrations.
    let mut arriving: HashMap<String, InstanceRow> =
        incoming.instances.into_iter().map(|r| (r.id.clone(), r)).collect();
    for m in migrations.iter().filter(|m| m.target_host == host.as_str()) {
        if let Some(r) = arriving.remove(&m.instance_id) {
            rows.push(r);
        }
    }
    let mut arriving_volumes = incoming.volumes;
    let mut volumes_by_instance: HashMap<&str, Vec<&crate::volumes::VolumeRow>> = HashMap::new();
    for v in &volume_rows {
        if let Some(i) = v.instance_id.as_deref() {
            volumes_by_instance.entry(i).or_default().push(v);
        }
    }
    // ISO images in CD-ROM drives are fetched as the root images are.
    let mut image_ids: Vec<String> =
        rows.iter().flat_map(|r| [r.image_id.clone(), r.cdrom_image_id.clone()]).flatten().collect();
    image_ids.sort();
    image_ids.dedup();
    let image_sources: HashMap<String, Option<ImageSource>> =
        ctx.store.images_by_ids(&image_ids).await?.into_iter().map(|i| (i.id.clone(), image_source(&i))).collect();
    let restores = desired_restores(&ctx, &rows, &volume_rows).await?;
    let mut instances = Vec::new();
    for row in rows {
        let migration = migrations.iter().find(|m| m.instance_id == row.id);
        let target_here = migration.is_some_and(|m| m.target_host == host.as_str());
        let desired_migration = match migration {
            Some(m) => Some(nubo_api::agent::DesiredMigration {
                id: m.id.parse().map_err(AppError::internal)?,
                role: if target_here {
                    nubo_api::agent::MigrationRole::Target
                } else {
                    nubo_api::agent::MigrationRole::Source
                },
                target: match (&m.nbd_host, m.nbd_port, &m.migrate_uri) {
                    (Some(h), Some(p), Some(u)) if m.state == MigrationState::Migrating => {
                        Some(nubo_api::agent::MigrationTarget {
                            nbd_host: h.clone(),
                            nbd_port: p as u16,
                            migrate_uri: u.clone(),
                        })
                    }
                    _ => None,
                },
            }),
            None => None,
        };
        // The target of a failed migration removes its copy.
        let failed_copy = migration.is_some_and(|m| target_here && m.state == MigrationState::Failed);
        let instance_volumes =
            if target_here { arriving_volumes.remove(&row.id).unwrap_or_default() } else { Vec::new() };
        let public_keys = match (row.key_name.clone(), row.public_key.clone()) {
            (Some(name), Some(public_key)) => vec![NamedKey { name, public_key }],
            _ => Vec::new(),
        };
        let mut wanted_runs = Vec::new();
        let own_runs = if target_here { Vec::new() } else { runs.remove(&row.id).unwrap_or_default() };
        for r in &own_runs {
            let action: RunAction = match serde_json::from_str(&r.action_json) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(run = %r.id, error = %e, "stored run action does not parse; skipped");
                    continue;
                }
            };
            wanted_runs.push(DesiredRun {
                id: r.id.parse().map_err(AppError::internal)?,
                action,
                timeout_secs: r.timeout_secs as u64,
                state: r.state,
                guest_pid: r.guest_pid,
                log_offset: r.log_offset as u64,
            });
        }
        let image_source = row.image_id.as_ref().and_then(|i| image_sources.get(i).cloned().flatten());
        let cdrom = (row.cdrom_drive == 1).then(|| nubo_api::agent::DesiredCdrom {
            media: row.cdrom_image_id.as_ref().and_then(|i| image_sources.get(i).cloned().flatten()),
            boot_first: row.boot_order.as_deref() != Some(crate::cdrom::DISK_FIRST),
        });
        let mut volumes = Vec::new();
        let source: Vec<&crate::volumes::VolumeRow> = if target_here {
            instance_volumes.iter().collect()
        } else {
            volumes_by_instance.remove(row.id.as_str()).unwrap_or_default()
        };
        for v in source {
            // A volume being detached is no longer wanted: the agent unplugs it.
            if v.attach_state.is_some_and(|a| a.is_wanted()) {
                let id: VolumeId = v.id.parse().map_err(AppError::internal)?;
                volumes.push(DesiredAttachment {
                    serial: id.serial(),
                    volume_id: id,
                    slot: v.slot.unwrap_or(0) as u32,
                    size_gib: v.size_gib as u64,
                });
            }
        }
        let wanted_captures = captures
            .remove(&row.id)
            .unwrap_or_default()
            .into_iter()
            .map(|(image, _)| Ok(DesiredCapture { image_id: image.parse().map_err(AppError::internal)? }))
            .collect::<AppResult<Vec<_>>>()?;
        let power = if failed_copy { PowerState::Deleted } else { row.desired };
        instances.push(DesiredInstance {
            hardware: crate::hardware::parse(row.hardware.as_deref()),
            instance_type: Some(crate::app::instances::instance_type_of(&row)),
            id: row.id.parse().map_err(AppError::internal)?,
            ports: ports
                .remove(&row.id)
                .unwrap_or_default()
                .into_iter()
                .map(|p| PortMapping { guest_port: p.guest_port as u16, host_port: p.host_port as u16 })
                .collect(),
            name: row.name,
            image: row.image,
            vcpus: row.vcpus as u32,
            memory_mib: row.memory_mib as u64,
            disk_gib: row.disk_gib as u64,
            user_data: row.user_data,
            power,
            start_seq: row.start_seq,
            reboot_count: row.reboot_count,
            public_keys,
            imds_tokens_required: row.imds_tokens == "required",
            availability_zone: ctx.config.availability_zone.clone(),
            runs: wanted_runs,
            image_source,
            volumes,
            captures: wanted_captures,
            nics: nics.remove(&row.id).unwrap_or_default(),
            migration: desired_migration,
            cdrom,
            rebuild_seq: row.rebuild_seq,
            restore: restores.get(&row.id).cloned(),
        });
    }
    let volumes = volume_rows
        .iter()
        .map(|v| {
            Ok(DesiredVolume {
                id: v.id.parse().map_err(AppError::internal)?,
                size_gib: v.size_gib as u64,
                present: v.desired == crate::volumes::Presence::Present,
                from_snapshot: v.snapshot_id.as_deref().and_then(|s| s.parse().ok()),
                revert: match (&v.revert_snapshot_id, v.revert_seq) {
                    (Some(snap), seq) if seq > 0 => Some(nubo_api::agent::DesiredRevert {
                        snapshot: snap.parse().map_err(AppError::internal)?,
                        seq,
                    }),
                    _ => None,
                },
                from_backup: restores.get(&v.id).cloned(),
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    let snapshots = ctx
        .store
        .snapshots_on_host(host.as_str())
        .await?
        .into_iter()
        .map(|s| {
            Ok(DesiredSnapshot {
                id: s.id.parse().map_err(AppError::internal)?,
                volume_id: s.volume_id.parse().map_err(AppError::internal)?,
                present: s.desired == crate::volumes::Presence::Present,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    let balancers = ctx.store.desired_balancers(host.as_str()).await?;
    let console_sessions = ctx.consoles.of_host(host.as_str());
    let full = DesiredState {
        generation,
        instances,
        volumes,
        snapshots,
        balancers,
        networks,
        console_sessions,
        view: None,
        delta: None,
    };
    Ok(Json(ctx.desired_views.answer(&ctx.server_id, host.as_str(), q.view.as_deref(), full)))
}

/// The disks of the host's instances and volumes to be written from a
/// backup, by instance or volume id, each with its repository's access
/// (read only when some disk is to be restored, each repository once). A
/// repository that cannot be opened leaves its restores out, logged: the
/// host then makes no disk rather than the wrong one.
async fn desired_restores(
    ctx: &Ctx,
    instances: &[InstanceRow],
    volumes: &[crate::volumes::VolumeRow],
) -> AppResult<HashMap<String, nubo_api::backup::DesiredRestore>> {
    let wanted = instances
        .iter()
        .filter(|r| r.restore_seq > 0)
        .filter_map(|r| {
            Some((&r.id, r.restore_backup_id.as_ref()?, "root", r.restore_repository_id.as_ref()?, r.restore_seq))
        })
        .chain(volumes.iter().filter(|v| v.restore_seq > 0).filter_map(|v| {
            Some((
                &v.id,
                v.restore_backup_id.as_ref()?,
                v.restore_disk.as_deref()?,
                v.restore_repository_id.as_ref()?,
                v.restore_seq,
            ))
        }));
    let mut access: HashMap<String, Option<nubo_api::backup::RepositoryAccess>> = HashMap::new();
    let mut out = HashMap::new();
    for (target, backup, disk, repository, seq) in wanted {
        if !access.contains_key(repository) {
            let a = match crate::app::backups::repository_access(ctx, repository).await {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!(error = %e, "a restore's repository cannot be opened; its restores are left out");
                    None
                }
            };
            access.insert(repository.clone(), a);
        }
        let (Some(Some(repository)), Ok(backup_id)) = (access.get(repository), backup.parse()) else { continue };
        out.insert(
            target.clone(),
            nubo_api::backup::DesiredRestore { seq, backup_id, disk: disk.to_string(), repository: repository.clone() },
        );
    }
    Ok(out)
}

/// `rows` grouped by the instance `instance_of` names, in their order.
fn group_by_instance<T>(rows: Vec<T>, instance_of: impl Fn(&T) -> &String) -> HashMap<String, Vec<T>> {
    let mut out: HashMap<String, Vec<T>> = HashMap::new();
    for row in rows {
        out.entry(instance_of(&row).clone()).or_default().push(row);
    }
    out
}

/// Where a host gets a registry image's file; `None` for builtin images
/// (each agent builds those) and for images without a stored file.
fn image_source(i: &crate::images::ImageRow) -> Option<ImageSource> {
    if i.source == "builtin" {
        return None;
    }
    Some(ImageSource {
        image_id: i.id.parse().ok()?,
        sha256: i.sha256.clone()?,
        disk_format: i.disk_format.clone()?,
        size_bytes: i.size_bytes? as u64,
        kernel_image: i.kernel_image.clone(),
    })
}

/// The host is alive: renews its lease. The only request the control
/// plane's liveness (down hosts, failover) counts; it carries nothing, so
/// nothing a guest does can make it fail. The answer says how long the
/// lease lasts (see `failover::Lease`).
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/heartbeat", tag = "agent",
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, body = HeartbeatAck), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn heartbeat(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<HeartbeatAck>> {
    let host = host_id(&id)?;
    same_host(&caller, &host)?;
    let Some(value) = ctx.store.heartbeat(&host).await? else {
        return Err(AppError::NotFound { kind: "host", id: host.to_string() });
    };
    ctx.renewals.renewed(host.as_str(), value, std::time::Instant::now());
    Ok(Json(crate::failover::Lease::of(&ctx.config).ack()))
}

/// Actual state of the host's instances (liveness is the heartbeat's).
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/report", tag = "agent", request_body = HostReport,
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "applied"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn report(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<HostReport>,
) -> AppResult<Json<()>> {
    let host = host_id(&id)?;
    same_host(&caller, &host)?;
    known_host(&ctx, &host).await?;
    let mut changed = false;
    // An agent lists only what changed since the report it knows was
    // taken, and everything once a minute: entries that repeat what the
    // rows say are skipped after two reads for all of them, and only the
    // others are applied one by one.
    let ids: Vec<&str> = r.instances.iter().map(|a| a.id.as_str()).collect();
    let (rows, attached) = ctx.store.report_baseline(host.as_str(), &ids).await?;
    for a in &r.instances {
        let no_news = rows.get(a.id.as_str()).is_some_and(|row| {
            !crate::store::report_is_news(row, a)
                && !crate::store::Store::attachment_report_is_news(
                    attached.get(a.id.as_str()).map(Vec::as_slice).unwrap_or_default(),
                    &a.volumes,
                )
                && !a.captures.iter().any(|c| c.state == nubo_api::agent::CaptureState::Failed)
                && !a.exited_unexpectedly
        });
        if no_news {
            continue;
        }
        if ctx.store.apply_actual(host.as_str(), a).await? {
            changed |= a.exited_unexpectedly;
            ctx.store.apply_attachment_report(a.id.as_str(), &a.volumes).await?;
            for c in a.captures.iter().filter(|c| c.state == nubo_api::agent::CaptureState::Failed) {
                changed |= ctx.store.fail_capture(c.image_id.as_str(), a.id.as_str(), c.error.as_deref()).await?;
            }
        } else if a.power == nubo_api::agent::ActualPower::Deleted {
            // The target of a failed migration removed its copy.
            ctx.store.migration_cleaned(a.id.as_str(), host.as_str()).await?;
        } else {
            tracing::warn!(%host, instance = %a.id, "report for an instance the host does not own was ignored");
        }
    }
    for v in &r.volumes {
        if !ctx.store.apply_volume_report(host.as_str(), v).await? {
            tracing::debug!(%host, volume = %v.id, "report for a volume the host does not hold was ignored");
        }
    }
    for s in &r.snapshots {
        if !ctx.store.apply_snapshot_report(host.as_str(), s).await? {
            tracing::debug!(%host, snapshot = %s.id, "report for a snapshot the host does not hold was ignored");
        }
    }
    for b in &r.balancers {
        if !ctx.store.apply_lb_report(host.as_str(), b).await? {
            tracing::debug!(%host, lb = %b.id, "report for a load balancer the host does not run was ignored");
        }
    }
    if changed {
        ctx.bump_host(host.as_str());
    }
    Ok(Json(()))
}

/// Append serial console output of an instance on the reporting host.
#[utoipa::path(post, path = "/api/v1/agent/instances/{id}/console", tag = "agent", operation_id = "agent_console", request_body = ConsoleChunk,
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = ConsoleAck), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn console(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<ConsoleChunk>,
) -> AppResult<Json<ConsoleAck>> {
    same_host(&caller, &c.host_id)?;
    // Offsets are byte positions in a log file: keep them far from i64's end.
    if c.offset > (1 << 50) || c.raw_len > (1 << 24) {
        return Err(AppError::BadRequest("console chunk offset or length out of range".into()));
    }
    let id: InstanceId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let row =
        ctx.store.instance(id.as_str()).await?.ok_or(AppError::NotFound { kind: "instance", id: id.to_string() })?;
    if row.host_id.as_deref() != Some(c.host_id.as_str()) {
        return Err(AppError::Forbidden(format!("instance {id} is not on host {}", c.host_id)));
    }
    let next_offset = if c.raw_len == 0 {
        ctx.store.console_offset(id.as_str()).await?
    } else {
        ctx.store.append_console(id.as_str(), c.offset, c.raw_len, &c.data).await?
    };
    Ok(Json(ConsoleAck { next_offset }))
}

/// Trade a one-time join token for this host's own credential.
#[utoipa::path(post, path = "/api/v1/agent/join", tag = "agent", request_body = nubo_api::params::HostJoin,
    responses((status = 200, body = nubo_api::views::HostCredential),
        (status = 401, description = "unknown, used or expired join token", body = nubo_api::error::ErrorBody)))]
pub async fn join(
    State(ctx): State<Arc<Ctx>>,
    ApiJson(j): ApiJson<nubo_api::params::HostJoin>,
) -> AppResult<Json<nubo_api::views::HostCredential>> {
    // The whole token or just its secret: only the secret is checked (the
    // agent already checked the fingerprint against this server's CA).
    let token: nubo_api::join::JoinToken =
        j.join_token.parse().map_err(|e: nubo_api::join::JoinTokenError| AppError::BadRequest(e.to_string()))?;
    match ctx.store.join_host(&token.secret, j.host_id.as_str()).await? {
        Some(credential) => {
            tracing::info!(host = %j.host_id, "host joined");
            Ok(Json(nubo_api::views::HostCredential { host_id: j.host_id, credential }))
        }
        None => Err(AppError::Unauthorized(
            "the join token is unknown, already used or expired: create a new one with `nubo host join-token`".into(),
        )),
    }
}

/// Progress of a run on an instance of the reporting host: its state,
/// guest pid, exit code and the next piece of its log.
#[utoipa::path(post, path = "/api/v1/agent/runs/{id}", tag = "agent", operation_id = "agent_run_progress",
    request_body = RunProgress,
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunAck), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn run_progress(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<RunProgress>,
) -> AppResult<Json<RunAck>> {
    same_host(&caller, &p.host_id)?;
    if !matches!(p.state, RunState::Running | RunState::Succeeded | RunState::Failed) {
        return Err(AppError::BadRequest("run state must be running, succeeded or failed".into()));
    }
    if p.log_offset > (1 << 50) || p.log_raw_len > (1 << 24) || p.log.len() > (1 << 24) {
        return Err(AppError::BadRequest("run log chunk offset or length out of range".into()));
    }
    let id: nubo_api::ids::RunId =
        id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let run = ctx.store.run(id.as_str()).await?.ok_or(AppError::NotFound { kind: "run", id: id.to_string() })?;
    let instance = ctx.store.instance(&run.instance_id).await?;
    if instance.and_then(|i| i.host_id).as_deref() != Some(p.host_id.as_str()) {
        return Err(AppError::Forbidden(format!("run {id} is not on host {}", p.host_id)));
    }
    let log_offset = ctx.store.apply_run_progress(&run, &p).await?;
    Ok(Json(RunAck { log_offset }))
}
