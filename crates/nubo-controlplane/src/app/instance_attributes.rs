//! Instance attributes: termination and stop protection (which
//! `app::instances`' stop and terminate, groups and every other way of
//! stopping or terminating honour), the shutdown behaviour (what a
//! guest-initiated poweroff does), the source/destination check, and the
//! changes a stopped instance takes: its instance type (quota and the
//! host's claim move to the new size, or it is refused with their
//! reasons), its user-data and its security groups. The REST API's
//! protection route and EC2's Describe/ModifyInstanceAttribute are
//! adapters over it.

use crate::auth::Caller;
use crate::authz::Access;
use crate::error::{AppError, AppResult};
use crate::instance_attributes::{ResizeError, SHUTDOWN_STOP, SHUTDOWN_TERMINATE};
use crate::placement::{self, Constraints, Demand};
use crate::store::{InstanceRow, Size};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::params::InstanceProtection;
use nubo_api::views::{Instance, InstanceState};
use std::sync::Arc;

/// Why `row` may not be terminated by a user or by automation (its
/// termination protection), in words that say how to lift it.
pub fn termination_refusal(row: &InstanceRow) -> Option<String> {
    (row.termination_protection == 1 && row.desired != PowerState::Deleted).then(|| {
        format!(
            "instance {} has termination protection: turn it off with `nubo instance protect {} --no-termination` (or EC2's ModifyInstanceAttribute DisableApiTermination=false) first",
            row.id, row.id
        )
    })
}

/// Why `row` may not be stopped by a user or by automation (its stop protection).
pub fn stop_refusal(row: &InstanceRow) -> Option<String> {
    (row.stop_protection == 1 && row.desired == PowerState::Running).then(|| {
        format!(
            "instance {} has stop protection: turn it off with `nubo instance protect {} --no-stop` (or EC2's ModifyInstanceAttribute DisableApiStop=false) first",
            row.id, row.id
        )
    })
}

/// Loads an instance to change one of its attributes: the caller must
/// be able to write it, and it must not be terminated.
async fn load_live(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<InstanceRow> {
    let row = super::instances::load(ctx, caller, id, Access::Write).await?;
    if row.desired == PowerState::Deleted || row.state == InstanceState::Terminated {
        return Err(AppError::Conflict(format!(
            "instance {} is terminated; its attributes can no longer change",
            row.id
        )));
    }
    Ok(row)
}

/// Loads a live instance that must be stopped for `what` to change.
async fn load_stopped(ctx: &Ctx, caller: &Caller, id: &str, what: &str) -> AppResult<InstanceRow> {
    let row = load_live(ctx, caller, id).await?;
    if row.desired != PowerState::Stopped || row.state != InstanceState::Stopped {
        return Err(not_stopped(&row, what));
    }
    Ok(row)
}

fn not_stopped(row: &InstanceRow, what: &str) -> AppError {
    AppError::Conflict(format!(
        "the {what} of instance {} can change only while it is stopped (it is {}): stop it first",
        row.id, row.state
    ))
}

/// Checks a shutdown behaviour's name.
pub fn check_shutdown_behavior(behavior: &str) -> AppResult<&'static str> {
    match behavior {
        SHUTDOWN_STOP => Ok(SHUTDOWN_STOP),
        SHUTDOWN_TERMINATE => Ok(SHUTDOWN_TERMINATE),
        other => Err(AppError::BadRequest(format!(
            "shutdown behaviour '{}' is unknown: use 'stop' (a guest's poweroff stops the instance) or 'terminate' (it terminates it)",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// Changes protection and the shutdown behaviour (the REST API's
/// `PUT /api/v1/instances/{id}/protection`); what is absent stays.
pub async fn set_protection(ctx: &Arc<Ctx>, caller: &Caller, id: &str, p: &InstanceProtection) -> AppResult<Instance> {
    let behavior = p.shutdown_behavior.as_deref().map(check_shutdown_behavior).transpose()?;
    let row = load_live(ctx, caller, id).await?;
    ctx.store.set_protection(&row.id, p.termination_protection, p.stop_protection).await?;
    if let Some(b) = behavior {
        ctx.store.set_shutdown_behavior(&row.id, b).await?;
    }
    tracing::info!(instance = %row.id, termination = ?p.termination_protection, stop = ?p.stop_protection,
        shutdown = ?behavior, "instance protection changed");
    super::instances::show(ctx, caller, &row.id).await
}

/// Sets termination and/or stop protection (EC2's DisableApiTermination, DisableApiStop).
pub async fn protect(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    id: &str,
    termination: Option<bool>,
    stop: Option<bool>,
) -> AppResult<()> {
    let row = load_live(ctx, caller, id).await?;
    ctx.store.set_protection(&row.id, termination, stop).await?;
    Ok(())
}

/// Sets what a guest-initiated poweroff does (`stop` or `terminate`).
pub async fn set_shutdown_behavior(ctx: &Arc<Ctx>, caller: &Caller, id: &str, behavior: &str) -> AppResult<()> {
    let behavior = check_shutdown_behavior(behavior)?;
    let row = load_live(ctx, caller, id).await?;
    ctx.store.set_shutdown_behavior(&row.id, behavior).await?;
    Ok(())
}

/// Sets the source/destination check (stored and reported; the hosts
/// keep their anti-spoofing rules whatever it says).
pub async fn set_source_dest_check(ctx: &Arc<Ctx>, caller: &Caller, id: &str, on: bool) -> AppResult<()> {
    let row = load_live(ctx, caller, id).await?;
    ctx.store.set_source_dest_check(&row.id, on).await?;
    Ok(())
}

/// Replaces a stopped instance's user-data (read by the guest at its next boot).
pub async fn set_user_data(ctx: &Arc<Ctx>, caller: &Caller, id: &str, user_data: Option<&str>) -> AppResult<()> {
    if user_data.is_some_and(|u| u.len() > nubo_api::MAX_USER_DATA_BYTES) {
        return Err(AppError::BadRequest("the user-data is larger than 64 KiB".into()));
    }
    let row = load_stopped(ctx, caller, id, "user-data").await?;
    if !ctx.store.set_user_data_stopped(&row.id, user_data).await? {
        return Err(not_stopped(&row, "user-data"));
    }
    tracing::info!(instance = %row.id, bytes = user_data.map_or(0, str::len), "instance user-data replaced");
    Ok(())
}

/// Gives a stopped instance another instance type: the project's quota
/// and its host's claim move to the new size (the host keeps a stopped
/// instance's claim), or the change is refused with their reasons.
pub async fn set_instance_type(ctx: &Arc<Ctx>, caller: &Caller, id: &str, name: &str) -> AppResult<()> {
    let itype = ctx.config.instance_types.get(name).cloned().ok_or_else(|| {
        AppError::BadRequest(format!(
            "instance type '{}' is unknown: see EC2's DescribeInstanceTypes (e.g. t3.micro, m5.large)",
            name.chars().take(40).collect::<String>()
        ))
    })?;
    let row = load_stopped(ctx, caller, id, "instance type").await?;
    let project = row.project_id.clone().ok_or_else(|| AppError::internal("an instance without a project"))?;
    let from = Size::of(&row);
    let to = Size { vcpus: i64::from(itype.vcpus), memory_mib: itype.memory_mib as i64, disk_gib: row.disk_gib };
    let grow = Demand {
        vcpus: (to.vcpus - from.vcpus).max(0) as u32,
        memory_mib: (to.memory_mib - from.memory_mib).max(0) as u64,
        disk_gib: 0,
    };
    // The host must fit the growth: placement's filters, pinned to the
    // instance's host, say whether it does (and why not).
    let mut limits = Size { vcpus: i64::MAX / 2, memory_mib: i64::MAX / 2, disk_gib: i64::MAX / 2 };
    if let (Some(host), true) = (&row.host_id, grow.vcpus > 0 || grow.memory_mib > 0) {
        let constraints = Constraints { pin: Some(host.as_str()), ..Constraints::default() };
        let choice = placement::choose(ctx, grow, &constraints).await?;
        limits = choice.best.limits;
    }
    match ctx.store.resize_stopped(&row.id, &project, row.host_id.as_deref(), from, to, limits, &itype.name).await {
        Ok(()) => {}
        Err(ResizeError::NotStopped) => {
            let now = ctx.store.instance(&row.id).await?.unwrap_or(row);
            return Err(not_stopped(&now, "instance type"));
        }
        Err(ResizeError::Quota(m)) => return Err(AppError::QuotaExceeded(m)),
        Err(ResizeError::Lost) => {
            return Err(AppError::NoValidHost(format!(
                "host of instance {} no longer has room for {} (taken meanwhile): retry, or choose a smaller type",
                row.id, itype.name
            )))
        }
        Err(ResizeError::Db(e)) => return Err(e.into()),
    }
    tracing::info!(instance = %row.id, instance_type = %itype.name, "instance type changed");
    Ok(())
}

/// Replaces an instance's security groups (names or `sg-...` ids of its
/// project's groups; at least one); the hosts apply the new rules.
pub async fn set_security_groups(ctx: &Arc<Ctx>, caller: &Caller, id: &str, groups: &[String]) -> AppResult<()> {
    if groups.is_empty() {
        return Err(AppError::BadRequest("an instance needs at least one security group".into()));
    }
    let row = load_live(ctx, caller, id).await?;
    let project = row.project_id.clone().ok_or_else(|| AppError::internal("an instance without a project"))?;
    let mut ids = Vec::new();
    for g in groups {
        let group = match ctx.store.security_group(g).await? {
            Some(found) if found.project_id == project => Some(found),
            _ => ctx.store.security_group_by_name(&project, g).await?,
        }
        .ok_or_else(|| AppError::NotFound { kind: "security group", id: g.chars().take(64).collect() })?;
        if !ids.contains(&group.id) {
            ids.push(group.id);
        }
    }
    ctx.store.set_instance_security_groups(&row.id, &ids).await?;
    // Every host, not only the instance's: other members' rules admit by
    // group membership, so their hosts' rules change too.
    ctx.bump();
    tracing::info!(instance = %row.id, groups = ?ids, "instance security groups replaced");
    Ok(())
}
