//! Moving running instances between hosts: `POST /instances/{id}/migrate`
//! (operators), host drain and evacuate, the migration records, and the
//! two agent calls that carry a migration along (the target is ready; the
//! source is done). The hosts do the copying; see `migrations` for the
//! steps and what each one claims and frees.

use crate::auth::{Caller, HostCaller};
use crate::error::{ApiJson, AppError, AppResult};
use crate::migrations::{MigrationRow, Outcome, StartError};
use crate::store::InstanceRow;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::agent::{MigrationDone, MigrationTarget};
use nubo_api::params::InstanceMigrate;
use nubo_api::views::Migration;
use nubo_scheduler::Demand;
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
async fn find_host(ctx: &Ctx, reference: &str) -> AppResult<crate::store::HostRow> {
    let hosts = ctx.store.hosts().await?;
    hosts
        .into_iter()
        .find(|h| h.id == reference || h.name == reference)
        .ok_or_else(|| AppError::NotFound { kind: "host", id: reference.chars().take(64).collect() })
}

/// Starts moving `row` off its host: to `to`, or where the scheduler
/// places it (never its own host). Used by migrate, evacuate and policies.
pub async fn start(ctx: &Ctx, row: &InstanceRow, to: Option<&str>) -> AppResult<MigrationRow> {
    let source =
        row.host_id.clone().ok_or_else(|| AppError::Conflict(format!("instance {} has no host yet", row.id)))?;
    if row.state != "running" || row.desired != "running" {
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
    let bridged = !ctx.store.instance_network_ports(&row.id).await?.is_empty();
    let underlays: std::collections::HashSet<String> =
        ctx.store.hosts().await?.into_iter().filter(|h| h.underlay.is_some()).map(|h| h.id).collect();
    let demand = Demand { vcpus: row.vcpus as u32, memory_mib: row.memory_mib as u64, disk_gib: row.disk_gib as u64 };
    let p = &ctx.config.policy;
    let mut snapshot = ctx.host_snapshots().await?;
    snapshot.retain(|h| h.id != source && (!bridged || underlays.contains(&h.id)));
    let target = match to {
        Some(t) => {
            let h = find_host(ctx, t).await?;
            if h.id == source {
                return Err(AppError::BadRequest(format!("instance {} already runs on {}", row.id, h.name)));
            }
            let snap = snapshot.iter().find(|s| s.id == h.id).ok_or_else(|| {
                AppError::NoValidHost(format!(
                    "host {} cannot take it: it is down or drained{}",
                    h.name,
                    if bridged { ", or runs no private networks" } else { "" }
                ))
            })?;
            nubo_scheduler::check_host(snap, &demand, p)
                .map_err(|r| AppError::NoValidHost(format!("host {}: {}", r.host, r.reason)))?;
            snap.clone()
        }
        None => nubo_scheduler::rank(&snapshot, &demand, p)
            .map_err(|refusal| AppError::NoValidHost(refusal.to_string()))?
            .first()
            .map(|h| (*h).clone())
            .ok_or_else(|| AppError::NoValidHost("no other host is up".into()))?,
    };
    let limits = crate::store::Size::limits(p, &target);
    let m = ctx.store.start_migration(row, &source, &target.id, limits).await.map_err(|e| match e {
        StartError::Busy(..) | StartError::Lost(_) => AppError::Conflict(e.to_string()),
        StartError::Db(e) => e.into(),
    })?;
    tracing::info!(instance = %row.id, migration = %m.id, from = %source, to = %target.id, "live migration started");
    ctx.bump_host(&source);
    ctx.bump_host(&target.id);
    Ok(m)
}

/// Live-migrate a running instance to another host (operators).
#[utoipa::path(post, path = "/api/v1/instances/{id}/migrate", tag = "instances", operation_id = "migrate_instance",
    request_body = InstanceMigrate, params(("id" = String, Path, description = "instance id")),
    responses((status = 202, body = Migration), (status = 403, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody), (status = 409, body = nubo_api::error::ErrorBody)))]
pub async fn migrate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<InstanceMigrate>,
) -> AppResult<(StatusCode, Json<Migration>)> {
    crate::authz::require_admin(&caller)?;
    let row = super::instances::load(&ctx, &caller, &id, crate::authz::Access::Write).await?;
    let m = start(&ctx, &row, p.to.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(view(m)?)))
}

/// Migrations, newest first (operators).
#[utoipa::path(get, path = "/api/v1/migrations", tag = "hosts", operation_id = "list_migrations",
    responses((status = 200, body = Vec<Migration>), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Migration>>> {
    crate::authz::require_admin(&caller)?;
    Ok(Json(ctx.store.migrations(None).await?.into_iter().map(view).collect::<AppResult<_>>()?))
}

/// One migration (operators).
#[utoipa::path(get, path = "/api/v1/migrations/{id}", tag = "hosts", operation_id = "show_migration",
    params(("id" = String, Path, description = "migration id, mig-...")),
    responses((status = 200, body = Migration), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Migration>> {
    crate::authz::require_admin(&caller)?;
    let m = ctx.store.migration(&id).await?.ok_or(AppError::NotFound { kind: "migration", id })?;
    Ok(Json(view(m)?))
}

/// Stop new placements on a host (its instances keep running).
#[utoipa::path(post, path = "/api/v1/hosts/{id}/drain", tag = "hosts", operation_id = "drain_host",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn drain(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    crate::authz::require_admin(&caller)?;
    let h = find_host(&ctx, &id).await?;
    ctx.store.set_host_drained(&h.id, true).await?;
    tracing::info!(host = %h.id, "host drained: no new placements");
    Ok(StatusCode::NO_CONTENT)
}

/// Let the scheduler place instances on a drained host again.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/enable", tag = "hosts", operation_id = "enable_host",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn enable(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    crate::authz::require_admin(&caller)?;
    let h = find_host(&ctx, &id).await?;
    ctx.store.set_host_drained(&h.id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drain a host and live-migrate each of its running instances away.
/// The answer lists the migrations started; instances that cannot move
/// (stopped, forwarded ports, no room) are named in the log and left.
#[utoipa::path(post, path = "/api/v1/hosts/{id}/evacuate", tag = "hosts", operation_id = "evacuate_host",
    params(("id" = String, Path, description = "host id or name")),
    responses((status = 202, body = Vec<Migration>), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn evacuate(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<(StatusCode, Json<Vec<Migration>>)> {
    crate::authz::require_admin(&caller)?;
    let h = find_host(&ctx, &id).await?;
    ctx.store.set_host_drained(&h.id, true).await?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for row in ctx.store.instances_on_host(&h.id).await? {
        match start(&ctx, &row, None).await {
            Ok(m) => out.push(view(m)?),
            Err(e) => refused.push(format!("{}: {e}", row.id)),
        }
    }
    if !refused.is_empty() {
        tracing::warn!(host = %h.id, refused = ?refused, "evacuate left instances behind");
    }
    Ok((StatusCode::ACCEPTED, Json(out)))
}

/// The target has its copy waiting (agent).
#[utoipa::path(post, path = "/api/v1/agent/migrations/{id}/ready", tag = "agent", operation_id = "migration_ready",
    request_body = MigrationTarget, params(("id" = String, Path, description = "migration id")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn ready(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(t): ApiJson<MigrationTarget>,
) -> AppResult<StatusCode> {
    if !ctx.store.migration_ready(&id, &caller.host_id, &t).await? {
        return Err(AppError::NotFound { kind: "migration", id });
    }
    if let Some(m) = ctx.store.migration(&id).await? {
        ctx.bump_host(&m.source_host);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The migration ended (agent: the source, or a target that could not prepare).
#[utoipa::path(post, path = "/api/v1/agent/migrations/{id}/done", tag = "agent", operation_id = "migration_done",
    request_body = MigrationDone, params(("id" = String, Path, description = "migration id")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn done(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(d): ApiJson<MigrationDone>,
) -> AppResult<StatusCode> {
    let outcome = Outcome {
        ok: d.ok,
        error: d.error,
        downtime_ms: d.downtime_ms,
        total_ms: d.total_ms,
        disk_bytes: d.disk_bytes,
        ram_bytes: d.ram_bytes,
    };
    let Some(m) = ctx.store.finish_migration(&id, &caller.host_id, &outcome).await? else {
        // Already ended (a repeated report): nothing to do.
        return Ok(StatusCode::NO_CONTENT);
    };
    tracing::info!(migration = %m.id, instance = %m.instance_id, state = %m.state,
        downtime_ms = ?m.downtime_ms, total_ms = ?m.total_ms, "live migration ended");
    // Every host on its networks learns where it is now.
    ctx.bump();
    Ok(StatusCode::NO_CONTENT)
}
