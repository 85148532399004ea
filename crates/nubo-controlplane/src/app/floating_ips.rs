//! Floating IPs: a project allocates an address from an external
//! network's pool, associates it with one of its instances on a private
//! network, and the instance's host translates it 1:1 (and answers ARP
//! for it on the external network). Associations follow the instance:
//! when it migrates or restarts elsewhere, the new host takes over the
//! address and announces it. Every change wakes the hosts' agents.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::floating_ips::{AllocateError, AssociateError, FloatingIpRow};
use crate::Ctx;
use nubo_api::params::{FloatingIpAssociate, FloatingIpCreate};
use nubo_api::views::FloatingIp;
use std::sync::Arc;

async fn view(ctx: &Ctx, f: FloatingIpRow) -> AppResult<FloatingIp> {
    let network = ctx.store.network(&f.network_id).await?.map(|n| n.name).unwrap_or_default();
    let private_address = match (&f.instance_id, &f.lb_id) {
        (Some(i), _) => private_port(ctx, i).await?.map(|p| p.address),
        (None, Some(lb)) => ctx.store.lb_by_key(None, lb).await?.and_then(|l| l.address),
        (None, None) => None,
    };
    Ok(FloatingIp {
        id: f.id.parse().map_err(AppError::internal)?,
        project_id: f.project_id.parse().map_err(AppError::internal)?,
        network_id: f.network_id.parse().map_err(AppError::internal)?,
        network,
        address: f.address,
        instance_id: f.instance_id.map(|i| i.parse()).transpose().map_err(AppError::internal)?,
        private_address,
        auto_assigned: f.auto == 1,
        created_at_ms: f.created_at_ms,
        load_balancer_id: f.lb_id.map(|l| l.parse()).transpose().map_err(AppError::internal)?,
        // Filled by `app::tags::fill` where a view is answered.
        tags: Default::default(),
    })
}

/// The NIC a floating IP of `instance` translates to: its first on a
/// private network.
async fn private_port(ctx: &Ctx, instance: &str) -> AppResult<Option<crate::networks::NetworkPortRow>> {
    for p in ctx.store.instance_network_ports(instance).await? {
        if ctx.store.network(&p.network_id).await?.is_some_and(|n| !n.is_external()) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// A floating IP of the caller's project (by id or address) that nothing
/// uses yet, for a load balancer to listen on.
pub async fn load_free(ctx: &Ctx, caller: &Caller, reference: &str) -> AppResult<FloatingIpRow> {
    let f = load(ctx, caller, reference, Access::Write).await?;
    if f.instance_id.is_some() || f.lb_id.is_some() {
        return Err(AppError::Conflict(format!(
            "floating IP {} is in use; disassociate it, or allocate another (`nubo floating-ip allocate`)",
            f.address
        )));
    }
    Ok(f)
}

/// A floating IP the caller may access, by id or address.
pub async fn load(ctx: &Ctx, caller: &Caller, reference: &str, access: Access) -> AppResult<FloatingIpRow> {
    let not_found = || AppError::NotFound { kind: "floating IP", id: reference.chars().take(64).collect() };
    let f = ctx.store.floating_ip(reference).await?.ok_or_else(not_found)?;
    authz::check(caller, access, Some(&f.project_id), "floating IP", &f.id)?;
    Ok(f)
}

/// The floating IPs the caller may see.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<FloatingIp>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for f in ctx.store.floating_ips(project.as_deref()).await? {
        out.push(view(ctx, f).await?);
    }
    Ok(out)
}

pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<FloatingIp> {
    let f = load(ctx, caller, id, Access::Read).await?;
    view(ctx, f).await
}

/// Takes an address from an external network's pool for the caller's project.
pub async fn allocate(ctx: &Arc<Ctx>, caller: &Caller, p: FloatingIpCreate) -> AppResult<FloatingIp> {
    let project = authz::creation_project(caller)?;
    let net = super::networks::load_network(ctx, caller, &p.network, Access::Read).await?;
    if !net.is_external() {
        return Err(AppError::BadRequest(format!(
            "network {} is private: floating IPs come from an external network (`nubo network list` shows which are)",
            net.name
        )));
    }
    let f = ctx.store.allocate_floating_ip(&project, &net).await.map_err(|e| match e {
        AllocateError::Quota { .. } => AppError::QuotaExceeded(e.to_string()),
        AllocateError::PoolFull(_) | AllocateError::Raced => AppError::Conflict(e.to_string()),
        AllocateError::Db(e) => e.into(),
    })?;
    tracing::info!(floating_ip = %f.id, address = %f.address, network = %net.id, "floating IP allocated");
    view(ctx, f).await
}

/// Points the floating IP at an instance of the same project on a
/// private network; a previous association is replaced.
pub async fn associate(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: FloatingIpAssociate) -> AppResult<FloatingIp> {
    let f = load(ctx, caller, id, Access::Write).await?;
    if f.auto == 1 {
        return Err(AppError::Conflict(format!(
            "floating IP {} was assigned automatically to its instance and goes with it; allocate one of the project's own (`nubo floating-ip allocate`)",
            f.address
        )));
    }
    let instance = super::instances::load(ctx, caller, &p.instance, Access::Write).await?;
    if instance.project_id.as_deref() != Some(f.project_id.as_str()) {
        return Err(AppError::NotFound { kind: "instance", id: instance.id });
    }
    if instance.state == nubo_api::views::InstanceState::Terminated {
        return Err(AppError::Conflict(format!("instance {} is terminated", instance.id)));
    }
    if private_port(ctx, &instance.id).await?.is_none() {
        return Err(AppError::BadRequest(format!(
            "instance {} has no NIC on a private network: a floating IP translates to a private address (launch it with --network)",
            instance.id
        )));
    }
    ctx.store.associate_floating_ip(&f.id, Some(&instance.id)).await.map_err(|e| match e {
        AssociateError::InstanceHasOne(..) | AssociateError::UsedByBalancer => AppError::Conflict(e.to_string()),
        AssociateError::Db(e) => e.into(),
    })?;
    tracing::info!(floating_ip = %f.id, instance = %instance.id, "floating IP associated");
    ctx.bump();
    show(ctx, caller, &f.id).await
}

/// Points the floating IP at nothing; the project keeps it. An address
/// assigned automatically goes back to the pool instead (it was the
/// instance's, not the project's).
pub async fn disassociate(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<FloatingIp> {
    let f = load(ctx, caller, id, Access::Write).await?;
    if f.auto == 1 {
        let view = view(ctx, FloatingIpRow { instance_id: None, ..f.clone() }).await?;
        ctx.store.release_floating_ip(&f.id).await?;
        tracing::info!(floating_ip = %f.id, address = %f.address, "automatic floating IP released");
        ctx.bump();
        return Ok(view);
    }
    ctx.store.associate_floating_ip(&f.id, None).await.map_err(|e| match e {
        AssociateError::InstanceHasOne(..) | AssociateError::UsedByBalancer => AppError::Conflict(e.to_string()),
        AssociateError::Db(e) => e.into(),
    })?;
    ctx.bump();
    show(ctx, caller, &f.id).await
}

/// Gives the address back to the pool, associated or not.
pub async fn release(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<()> {
    let f = load(ctx, caller, id, Access::Write).await?;
    if let Some(lb) = &f.lb_id {
        return Err(AppError::Conflict(format!(
            "load balancer {lb} listens on floating IP {}; delete the load balancer first",
            f.address
        )));
    }
    ctx.store.release_floating_ip(&f.id).await?;
    tracing::info!(floating_ip = %f.id, address = %f.address, "floating IP released");
    ctx.bump();
    Ok(())
}

/// EC2's public address of a default subnet: an instance launched on its
/// project's default network gets an address of the external network
/// marked `auto_assign`, when its host maps that network. Nothing is
/// assigned otherwise; a full pool leaves the instance with its private
/// address alone, and says so in the log (the launch itself succeeds).
pub async fn assign_automatically(ctx: &Ctx, instance: &str, project: &str, host: &str) -> AppResult<()> {
    let Some(net) = ctx.store.auto_assign_network().await? else { return Ok(()) };
    let Some(port) = private_port(ctx, instance).await? else { return Ok(()) };
    if ctx.store.network(&port.network_id).await?.is_none_or(|n| n.is_default != 1) {
        return Ok(());
    }
    let mapped = ctx.store.host(host).await?.is_some_and(|h| {
        net.external_interface.as_deref().is_some_and(|name| h.externals.split(',').any(|e| e == name))
    });
    if !mapped {
        tracing::info!(%instance, %host, network = %net.name, "no automatic address: the host does not map the network");
        return Ok(());
    }
    for _ in 0..3 {
        match ctx.store.assign_auto_floating_ip(project, &net, instance).await {
            Ok(Some(f)) => {
                tracing::info!(%instance, floating_ip = %f.id, address = %f.address, "address assigned automatically");
                return Ok(());
            }
            Ok(None) => return Ok(()),
            // Another allocation took the same address: take the next.
            Err(AllocateError::Raced) => continue,
            Err(e @ (AllocateError::PoolFull(_) | AllocateError::Quota { .. })) => {
                tracing::warn!(%instance, error = %e, "no automatic address");
                return Ok(());
            }
            Err(AllocateError::Db(e)) => return Err(e.into()),
        }
    }
    tracing::warn!(%instance, "no automatic address: concurrent allocations kept taking the same one");
    Ok(())
}
