//! Load balancers: create, list, show (with each backend's health and
//! counters as its host last reported them) and delete a project's load
//! balancers, and where a new one goes. A balancer is placed on the host
//! of its targets and listens on a port of that host's forwarded-port
//! range; or, on a private network, on any host that runs networks, with
//! an address of its own there (and optionally a floating IP), reaching
//! its targets at their addresses on any host. The host's agent runs it
//! (see `crate::lb` and the agent's `balancers`).

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
    let floating_ip = ctx.store.lb_floating_ip(&row.id).await?.map(|(address, _)| address);
    // Where clients connect: its floating IP, its address on its network,
    // or a port of its host's 127.0.0.1.
    let listen = match (&floating_ip, &row.address) {
        (Some(f), _) => format!("{f}:{}", row.guest_port),
        (None, Some(a)) => format!("{a}:{}", row.guest_port),
        (None, None) => format!("127.0.0.1:{}", row.host_port),
    };
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
        listen,
        network_id: row.network_id.as_deref().map(str::parse).transpose().map_err(AppError::internal)?,
        address: row.address.clone(),
        floating_ip,
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

/// A balancer on a private network: its targets must have a NIC there
/// (on any host); it goes on any up host that runs private networks (and
/// maps the external network of its floating IP), and claims an address
/// of the network and the floating IP in one transaction.
async fn create_on_network(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    project: &str,
    c: &LoadBalancerCreate,
    health: &nubo_api::lb::LbHealthCheck,
    network: &str,
) -> AppResult<LoadBalancer> {
    let net = crate::app::networks::load_network(ctx, caller, network, Access::Read).await?;
    if net.is_external() {
        return Err(AppError::BadRequest(format!(
            "network {} is external: run the balancer on its targets' private network, with a floating IP of {} (--floating-ip)",
            net.name, net.name
        )));
    }
    for t in &c.targets {
        let row = crate::app::instances::load(ctx, caller, t.as_str(), Access::Read).await?;
        if row.state == InstanceState::Terminated || row.desired == PowerState::Deleted {
            return Err(AppError::BadRequest(format!("target {t} is terminated; pick running instances")));
        }
        if !ctx.store.instance_network_ports(&row.id).await?.iter().any(|p| p.network_id == net.id) {
            return Err(AppError::BadRequest(format!(
                "target {t} has no NIC on network {}: pick instances launched with --network {}",
                net.name, net.name
            )));
        }
    }
    if let Some(g) = &c.group {
        ctx.store.group_by_name(project, g).await?.ok_or_else(|| {
            AppError::BadRequest(format!("group '{g}' does not exist in this project (see `nubo group list`)"))
        })?;
    }
    let floating = match &c.floating_ip {
        Some(f) => Some(crate::app::floating_ips::load_free(ctx, caller, f).await?),
        None => None,
    };
    let externals = match &floating {
        Some(f) => ctx.store.external_names(std::slice::from_ref(&f.network_id)).await?,
        None => Vec::new(),
    };
    let nothing = crate::placement::Demand { vcpus: 0, memory_mib: 0, disk_gib: 0 };
    let constraints = crate::placement::Constraints {
        underlay: true,
        externals: &externals,
        ..crate::placement::Constraints::default()
    };
    let host = match crate::placement::choose(ctx, nothing, &constraints).await {
        Ok(choice) => choice.best.id,
        Err(crate::placement::Refusal::Db(e)) => return Err(e.into()),
        Err(refusal) => return Err(AppError::NoValidHost(format!("no host can run the load balancer: {refusal}"))),
    };
    let row = ctx
        .store
        .insert_network_lb(project, c, health, &host, &net, floating.as_ref().map(|f| f.id.as_str()))
        .await
        .map_err(|e| insert_error(e, &c.name, &host))?;
    tracing::info!(lb = %row.id, name = %row.name, host = %row.host_id, network = %net.id, address = ?row.address,
        floating_ip = ?floating.as_ref().map(|f| &f.address), "load balancer created on a network");
    ctx.bump();
    view(ctx, row).await
}

/// What the user is told when a balancer could not be stored.
fn insert_error(e: InsertError, name: &str, host: &str) -> AppError {
    match e {
        InsertError::NameTaken => AppError::Conflict(format!("the project already has a load balancer named '{name}'")),
        InsertError::NoPorts => AppError::Conflict(format!(
            "host {host} has no free port left in its forwarded-port range: terminate instances or delete load balancers there"
        )),
        InsertError::NoAddress => {
            AppError::Conflict("the network has no free address left for the load balancer: use a larger range".into())
        }
        InsertError::FloatingIpInUse => AppError::Conflict(
            "the floating IP was taken by an instance or another load balancer at the same moment; pick another".into(),
        ),
        InsertError::Raced => {
            AppError::Conflict("a launch took the balancer's address at the same moment; retry".into())
        }
        InsertError::Db(e) => e.into(),
    }
}

/// Creates a load balancer in front of instances and/or a group.
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, c: LoadBalancerCreate) -> AppResult<LoadBalancer> {
    let project = authz::creation_project(caller)?;
    let health =
        crate::lb::validate(&c).map_err(|e| AppError::BadRequest(format!("the load balancer is not valid: {e}")))?;
    if let Some(network) = &c.network {
        return create_on_network(ctx, caller, &project, &c, &health, network).await;
    }
    if c.floating_ip.is_some() {
        return Err(AppError::BadRequest(
            "a floating IP needs the balancer on a network: add --network with its targets' private network".into(),
        ));
    }
    let host = place(ctx, caller, &project, &c).await?;
    let row = ctx
        .store
        .insert_lb(&project, &c, &health, &host, ctx.config.port_range)
        .await
        .map_err(|e| insert_error(e, &c.name, &host))?;
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
