//! Load balancers: create, list, show (with each backend's health and
//! counters as its host last reported them) and delete a project's load
//! balancers, and where a new one goes. A balancer is placed on the host
//! of its targets and listens on a port of that host's forwarded-port
//! range; the host's agent runs it (see `crate::lb` and the agent's
//! `balancers`).

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::lb::{InsertError, LbRow};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::lb::BalancerState;
use nubo_api::lb::{LoadBalancer, LoadBalancerCreate};
use nubo_api::views::InstanceState;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A balancer as users see it.
pub async fn view(ctx: &Ctx, row: LbRow) -> AppResult<LoadBalancer> {
    let resolved = ctx.store.resolve_lb(&row).await?;
    let actual = row.actual();
    let (state, error, started_at_ms) = match &actual {
        None => (BalancerState::Pending, None, None),
        Some(a) => (a.state, a.error.clone(), a.started_at_ms),
    };
    Ok(LoadBalancer {
        id: row.id.parse().map_err(AppError::internal)?,
        health_check: row.health(),
        targets: row.targets(),
        weights: row.weights(),
        host_id: row.host_id.parse().map_err(AppError::internal)?,
        listen: format!("127.0.0.1:{}", row.host_port),
        backends: crate::lb::backends_view(resolved, actual.as_ref()),
        port: row.guest_port as u16,
        name: row.name,
        protocol: row.protocol,
        algorithm: row.algorithm,
        group: row.group_name,
        state,
        error,
        started_at_ms,
        reported_at_ms: row.reported_at_ms,
        created_at_ms: row.created_at_ms,
    })
}

/// A balancer, by id or name, the caller may access.
pub async fn load(ctx: &Ctx, caller: &Caller, key: &str, access: Access) -> AppResult<LbRow> {
    let not_found = || AppError::NotFound { kind: "lb", id: key.chars().take(64).collect() };
    let row = ctx.store.lb_by_key(authz::readable_project(caller), key).await?.ok_or_else(not_found)?;
    authz::check(caller, access, Some(&row.project_id), "lb", key)?;
    Ok(row)
}

/// The host the balancer goes on: where its targets are (one host in this
/// version), or any host that is up when it has none yet.
async fn place(ctx: &Ctx, caller: &Caller, project: &str, c: &LoadBalancerCreate) -> AppResult<String> {
    let mut hosts = BTreeSet::new();
    for t in &c.targets {
        let row = crate::app::instances::load(ctx, caller, t.as_str(), Access::Read).await?;
        if row.state == InstanceState::Terminated || row.desired == PowerState::Deleted {
            return Err(AppError::BadRequest(format!("target {t} is terminated; pick running instances")));
        }
        if !ctx.store.ports(&row.id).await?.iter().any(|p| p.guest_port == i64::from(c.port)) {
            return Err(AppError::BadRequest(format!(
                "target {t} does not forward guest port {}: launch targets with --port {}",
                c.port, c.port
            )));
        }
        hosts.extend(row.host_id);
    }
    if let Some(g) = &c.group {
        let group = ctx.store.group_by_name(project, g).await?.ok_or_else(|| {
            AppError::BadRequest(format!("group '{g}' does not exist in this project (see `nubo group list`)"))
        })?;
        let forwards = group.template().is_some_and(|t| t.ports.contains(&c.port));
        if !forwards {
            return Err(AppError::BadRequest(format!(
                "group '{g}' does not forward guest port {}: add it to the template's ports",
                c.port
            )));
        }
        for m in ctx.store.group_members(&group.id).await? {
            hosts.extend(m.host_id);
        }
    }
    if hosts.len() > 1 {
        return Err(AppError::Conflict(format!(
            "the targets run on {} hosts ({}); in this version a load balancer and all its targets must be on one host: pick targets on one host",
            hosts.len(),
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    if let Some(h) = hosts.into_iter().next() {
        return Ok(h);
    }
    // No target yet: any host that is up, as placement ranks them (a
    // balancer claims no capacity of its own).
    let nothing = crate::placement::Demand { vcpus: 0, memory_mib: 0, disk_gib: 0 };
    match crate::placement::choose(ctx, nothing, &crate::placement::Constraints::default()).await {
        Ok(choice) => Ok(choice.best.id),
        Err(crate::placement::Refusal::Db(e)) => Err(e.into()),
        Err(crate::placement::Refusal::NoHost { .. }) => {
            Err(AppError::NoValidHost("no host is up to run the load balancer: start an agent (`nubo agent`)".into()))
        }
    }
}

/// Creates a load balancer in front of instances and/or a group.
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, c: LoadBalancerCreate) -> AppResult<LoadBalancer> {
    let project = authz::creation_project(caller)?;
    let health =
        crate::lb::validate(&c).map_err(|e| AppError::BadRequest(format!("the load balancer is not valid: {e}")))?;
    let host = place(ctx, caller, &project, &c).await?;
    let row = match ctx.store.insert_lb(&project, &c, &health, &host, ctx.config.port_range).await {
        Ok(r) => r,
        Err(InsertError::NameTaken) => {
            return Err(AppError::Conflict(format!("the project already has a load balancer named '{}'", c.name)))
        }
        Err(InsertError::NoPorts) => {
            return Err(AppError::Conflict(format!(
                "host {host} has no free port left in its forwarded-port range: terminate instances or delete load balancers there"
            )))
        }
        Err(InsertError::Db(e)) => return Err(e.into()),
    };
    tracing::info!(lb = %row.id, name = %row.name, host = %row.host_id, port = row.host_port, "load balancer created");
    ctx.bump();
    view(ctx, row).await
}

/// The load balancers the caller may see.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<LoadBalancer>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for row in ctx.store.lbs(project.as_deref()).await? {
        out.push(view(ctx, row).await?);
    }
    Ok(out)
}

/// A load balancer with each backend's health and counters.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, key: &str) -> AppResult<LoadBalancer> {
    let row = load(ctx, caller, key, Access::Read).await?;
    view(ctx, row).await
}

/// Deletes a load balancer: its host stops it.
pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, key: &str) -> AppResult<()> {
    let row = load(ctx, caller, key, Access::Write).await?;
    ctx.store.delete_lb(&row.id).await?;
    tracing::info!(lb = %row.id, name = %row.name, "load balancer deleted");
    ctx.bump();
    Ok(())
}
