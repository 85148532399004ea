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
        created_at_ms: f.created_at_ms,
        load_balancer_id: f.lb_id.map(|l| l.parse()).transpose().map_err(AppError::internal)?,
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
async fn load(ctx: &Ctx, caller: &Caller, reference: &str, access: Access) -> AppResult<FloatingIpRow> {
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

/// Points the floating IP at nothing; the project keeps it.
pub async fn disassociate(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<FloatingIp> {
    let f = load(ctx, caller, id, Access::Write).await?;
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
