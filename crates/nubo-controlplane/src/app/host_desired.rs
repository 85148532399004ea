//! One host's desired state, as its agent long-polls it: what it should
//! run (instances with their ports, runs, captures, volumes, restores and
//! migrations), its volumes and snapshots, balancers, networks and console
//! sessions. Read with a fixed number of queries for the whole host, then
//! sent whole or as a delta from the answer the agent holds
//! (`desired_views`). A long-poll that runs out with nothing new for the
//! host is answered without reading the database.

use crate::error::{AppError, AppResult};
use crate::store::InstanceRow;
use crate::Ctx;
use nubo_api::agent::{
    DesiredAttachment, DesiredCapture, DesiredInstance, DesiredRun, DesiredSnapshot, DesiredState, DesiredVolume,
    ImageSource, NamedKey, PortMapping, PowerState, RunAction,
};
use nubo_api::ids::{HostId, VolumeId};
use nubo_api::views::MigrationState;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The desired state of `host`. With `after` (the generation the agent
/// holds), waits up to `long_poll` for something newer first; with `view`
/// (the last answer it holds), answers with what changed since.
pub async fn of_host(
    ctx: &Arc<Ctx>,
    host: &HostId,
    after: Option<u64>,
    view: Option<&str>,
    long_poll: Duration,
) -> AppResult<DesiredState> {
    if let Some(after) = after {
        // Wait only while nothing newer exists; a stale `after` from before
        // a server restart is lower than the current one and returns at once.
        let generation = ctx.generation();
        let timed_out = tokio::time::timeout(long_poll, ctx.wait_for_news(host.as_str(), after)).await.is_err();
        // Nothing changed for this host: an agent holding this server's
        // last answer is told so without reading the database.
        if let Some(view) = view.filter(|_| timed_out) {
            let sessions = ctx.consoles.of_host(host.as_str());
            if let Some(answer) = ctx.desired_views.unchanged(&ctx.server_id, host.as_str(), view, generation, sessions)
            {
                return Ok(answer);
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
    let restores = desired_restores(ctx, &rows, &volume_rows).await?;
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
    Ok(ctx.desired_views.answer(&ctx.server_id, host.as_str(), view, full))
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
