//! Operations on live migrations: starting one (an operator's migrate,
//! a host's evacuation, a rebalance policy), listing and showing them,
//! draining and enabling hosts, and the two steps the hosts report (the
//! target is ready; the move ended). A migration's steps are a saga
//! (`sagas::migration`): where the instance goes is placement's choice
//! (`placement::choose`) in its first step; the records and their claims
//! are `migrations`' SQL.

use crate::auth::{Caller, HostCaller};
use crate::error::{AppError, AppResult};
use crate::migrations::{MigrationRow, Outcome};
use crate::placement::Weigher;
use crate::saga::SagaState;
use crate::sagas::migration::{self, MigrationParams};
use crate::store::{HostRow, InstanceRow};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::agent::{MigrationDone, MigrationTarget};
use nubo_api::ids::MigrationId;
use nubo_api::views::InstanceState;
use nubo_api::views::Migration;
use std::sync::Arc;

pub fn view(m: MigrationRow) -> AppResult<Migration> {
    Ok(Migration {
        id: m.id.parse().map_err(AppError::internal)?,
        instance_id: m.instance_id.parse().map_err(AppError::internal)?,
        source_host: m.source_host,
        target_host: m.target_host,
        state: m.state,
        downtime_ms: m.downtime_ms.map(|v| v as u64),
        total_ms: m.total_ms.map(|v| v as u64),
        disk_bytes: m.disk_bytes.map(|v| v as u64),
        ram_bytes: m.ram_bytes.map(|v| v as u64),
        error: m.error,
        created_at_ms: m.created_at_ms,
        updated_at_ms: m.updated_at_ms,
    })
}

/// A host by id or name.
async fn find_host(ctx: &Ctx, reference: &str) -> AppResult<HostRow> {
    let hosts = ctx.store.hosts().await?;
    hosts
        .into_iter()
        .find(|h| h.id == reference || h.name == reference)
        .ok_or_else(|| AppError::NotFound { kind: "host", id: reference.chars().take(64).collect() })
}

/// Starts moving `row` off its host: to `to` (a host id or name), or
/// where placement chooses, under `weigher` or the policy's (never its
/// own host; one on its private networks' underlay if it is on any). Used
/// by migrate, evacuate and the rebalance policy action.
pub async fn start(
    ctx: &Ctx,
    row: &InstanceRow,
    to: Option<&str>,
    weigher: Option<Weigher>,
) -> AppResult<MigrationRow> {
    let source =
        row.host_id.clone().ok_or_else(|| AppError::Conflict(format!("instance {} has no host yet", row.id)))?;
    if row.state != InstanceState::Running || row.desired != PowerState::Running {
        return Err(AppError::Conflict(format!(
            "instance {} is {}; only running instances are live-migrated",
            row.id, row.state
        )));
    }
    if !ctx.store.ports(&row.id).await?.is_empty() {
        return Err(AppError::Conflict(format!(
            "instance {} forwards ports from its host's address, which do not move with it; \
             migrate instances without --port",
            row.id
        )));
    }
    let pin = match to {
        Some(t) => {
            let h = find_host(ctx, t).await?;
            if h.id == source {
                return Err(AppError::BadRequest(format!("instance {} already runs on {}", row.id, h.name)));
            }
            Some(h.id)
        }
        None => None,
    };
    // The rest is the migration's saga: choose the target, claim it, ask
    // it to prepare, then (later rounds) the source to send.
    let params = MigrationParams {
        migration_id: MigrationId::generate().to_string(),
        instance_id: row.id.clone(),
        source,
        pin,
        underlay: !ctx.store.instance_network_ports(&row.id).await?.is_empty(),
        externals: ctx.store.instance_external_names(&row.id).await?,
        weigher,
        vcpus: row.vcpus as u32,
        memory_mib: row.memory_mib as u64,
        disk_gib: row.disk_gib as u64,
    };
    let s = migration::begin(ctx, &params).await?;
    if s.state == SagaState::Unwound {
        let why = s.error.unwrap_or_else(|| "the migration could not start".into());
        // Nothing was done: placement refused. Otherwise the claim was
        // refused (another migration, or the host filled meanwhile).
        return Err(if s.progress == 0 { AppError::NoValidHost(why) } else { AppError::Conflict(why) });
    }
    ctx.store
        .migration(&params.migration_id)
        .await?
        .ok_or_else(|| AppError::internal(format!("migration {} was not recorded", params.migration_id)))
}

/// An operator live-migrates instance `id` to `to`, or where placement
/// chooses.
pub async fn migrate(ctx: &Arc<Ctx>, caller: &Caller, id: &str, to: Option<&str>) -> AppResult<Migration> {
    crate::authz::require_admin(caller)?;
    let row = crate::app::instances::load(ctx, caller, id, crate::authz::Access::Write).await?;
    view(start(ctx, &row, to, None).await?)
}

/// Migrations, newest first (operators).
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Migration>> {
    crate::authz::require_admin(caller)?;
    ctx.store.migrations(None).await?.into_iter().map(view).collect()
}

/// One migration (operators).
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: String) -> AppResult<Migration> {
    crate::authz::require_admin(caller)?;
    let m = ctx.store.migration(&id).await?.ok_or(AppError::NotFound { kind: "migration", id })?;
    view(m)
}

/// Stops new placements on host `id` (id or name); its instances keep running.
pub async fn drain(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    crate::authz::require_admin(caller)?;
    let h = find_host(ctx, id).await?;
    ctx.store.set_host_drained(&h.id, true).await?;
    tracing::info!(host = %h.id, "host drained: no new placements");
    Ok(())
}

/// Lets placement choose a drained host again.
pub async fn enable(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    crate::authz::require_admin(caller)?;
    let h = find_host(ctx, id).await?;
    ctx.store.set_host_drained(&h.id, false).await?;
    Ok(())
}

/// Drains host `id` and starts live-migrating each of its running
/// instances away; returns the migrations started. Instances that cannot
/// move (stopped, forwarded ports, no room) are named in the log and left.
pub async fn evacuate(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Vec<Migration>> {
    crate::authz::require_admin(caller)?;
    let h = find_host(ctx, id).await?;
    ctx.store.set_host_drained(&h.id, true).await?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for row in ctx.store.instances_on_host(&h.id).await? {
        match start(ctx, &row, None, None).await {
            Ok(m) => out.push(view(m)?),
            Err(e) => refused.push(format!("{}: {e}", row.id)),
        }
    }
    if !refused.is_empty() {
        tracing::warn!(host = %h.id, refused = ?refused, "evacuate left instances behind");
    }
    Ok(out)
}

/// The target host has its copy waiting.
pub async fn ready(ctx: &Arc<Ctx>, caller: &HostCaller, id: String, t: &MigrationTarget) -> AppResult<()> {
    if !ctx.store.migration_ready(&id, &caller.host_id, t).await? {
        return Err(AppError::NotFound { kind: "migration", id });
    }
    if let Some(m) = ctx.store.migration(&id).await? {
        ctx.bump_host(&m.source_host);
    }
    Ok(())
}

/// The migration ended (reported by the source, or by a target that
/// could not prepare).
pub async fn done(ctx: &Arc<Ctx>, caller: &HostCaller, id: &str, d: MigrationDone) -> AppResult<()> {
    let outcome = Outcome {
        ok: d.ok,
        error: d.error,
        downtime_ms: d.downtime_ms,
        total_ms: d.total_ms,
        disk_bytes: d.disk_bytes,
        ram_bytes: d.ram_bytes,
    };
    let Some(m) = ctx.store.finish_migration(id, &caller.host_id, &outcome).await? else {
        // Already ended (a repeated report): nothing to do.
        return Ok(());
    };
    tracing::info!(migration = %m.id, instance = %m.instance_id, state = %m.state,
        downtime_ms = ?m.downtime_ms, total_ms = ?m.total_ms, "live migration ended");
    // Every host on its networks learns where it is now.
    ctx.bump();
    Ok(())
}
