//! Automation: service policies (applied as whole documents, by name)
//! with their firings, and instance groups with their members, desired
//! counts and activity. The work itself happens in the monitor task
//! (`policies`, `groups`); this is what users ask of it.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::Ctx;
use nubo_api::automation::{Group, GroupCreate, GroupMember, Policy, PolicyDoc};
use std::sync::Arc;

async fn policy_view(ctx: &Ctx, p: crate::policies::PolicyRow, firings: i64) -> AppResult<Policy> {
    let doc = p.doc().ok_or_else(|| AppError::internal(format!("policy {} does not parse", p.id)))?;
    let firings = if firings > 0 {
        ctx.store.firings(&p.id, firings).await?.iter().map(|f| crate::policies::firing_view(f, &p.name)).collect()
    } else {
        Vec::new()
    };
    Ok(Policy {
        breaching: ctx.store.breaching_targets(&p.id).await?,
        id: p.id,
        name: p.name,
        doc,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
        firings,
    })
}

/// Creates or replaces (by name) a policy of the caller's project.
pub async fn apply(ctx: &Arc<Ctx>, caller: &Caller, doc: PolicyDoc) -> AppResult<Policy> {
    let project = authz::creation_project(caller)?;
    crate::policies::validate(&doc).map_err(|e| AppError::BadRequest(format!("the policy is not valid: {e}")))?;
    // What it names must be the project's (and a host scope is for operators).
    if let Some(i) = &doc.scope.instance {
        crate::app::instances::load(ctx, caller, i.as_str(), Access::Write).await?;
    }
    if let Some(h) = &doc.scope.host {
        authz::require_admin(caller)?;
        if ctx.store.host(h).await?.is_none() {
            return Err(AppError::NotFound { kind: "host", id: h.chars().take(64).collect() });
        }
    }
    for g in doc.scope.group.iter().chain(doc.actions.iter().filter_map(|a| match a {
        nubo_api::automation::PolicyAction::Scale { group: Some(g), .. } => Some(g),
        _ => None,
    })) {
        if ctx.store.group_by_name(&project, g).await?.is_none() {
            return Err(AppError::BadRequest(format!(
                "group '{g}' does not exist in this project (see `nubo group list`)"
            )));
        }
    }
    for a in &doc.actions {
        if let nubo_api::automation::PolicyAction::Notify { webhook } = a {
            crate::webhooks::check_url(webhook, &ctx.config.webhook_allow)
                .map_err(|e| AppError::BadRequest(format!("policy '{}': notify.webhook {e}", doc.name)))?;
        }
    }
    if ctx.store.policy_by_name(&project, &doc.name).await?.is_none() {
        let max = ctx.config.max_policies_per_project;
        if ctx.store.policy_count(&project).await? >= i64::from(max) {
            return Err(AppError::QuotaExceeded(format!(
                "policy '{}' not created: the project already has {max} policies, the most this cloud allows; \
                 delete policies it no longer needs (`nubo policy delete NAME`) or ask an operator to raise the \
                 limit (nubo server --max-policies-per-project N)",
                doc.name
            )));
        }
    }
    let row = ctx.store.upsert_policy(&project, &doc).await?;
    tracing::info!(policy = %row.name, dry_run = doc.dry_run, "policy applied");
    policy_view(ctx, row, 0).await
}

/// The policies the caller may see.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Policy>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for p in ctx.store.policies(project.as_deref()).await? {
        out.push(policy_view(ctx, p, 0).await?);
    }
    Ok(out)
}

async fn load_policy(ctx: &Ctx, caller: &Caller, name: &str, access: Access) -> AppResult<crate::policies::PolicyRow> {
    let project = authz::caller_project(caller)?;
    let p = ctx
        .store
        .policy_by_name(&project, name)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: "policy", id: name.chars().take(64).collect() })?;
    authz::check(caller, access, Some(&p.project_id), "policy", name)?;
    Ok(p)
}

/// A policy with its newest firings (the values that caused each, and each action's outcome).
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, name: &str) -> AppResult<Policy> {
    let p = load_policy(ctx, caller, name, Access::Read).await?;
    policy_view(ctx, p, 50).await
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, name: &str) -> AppResult<()> {
    let p = load_policy(ctx, caller, name, Access::Write).await?;
    ctx.store.delete_policy(&p.id).await?;
    Ok(())
}

async fn group_view(ctx: &Ctx, g: crate::groups::GroupRow, with_activities: bool) -> AppResult<Group> {
    let mut members = Vec::new();
    for m in ctx.store.group_members(&g.id).await? {
        let health = ctx.store.member_health(&m).await?;
        members.push(GroupMember {
            instance_id: m.id.parse().map_err(AppError::internal)?,
            state: m.state,
            health: health.describe(),
        });
    }
    let activities = if with_activities { ctx.store.group_activities(&g.id, 100).await? } else { Vec::new() };
    Ok(Group {
        template: g.template().ok_or_else(|| AppError::internal("the group's template does not parse"))?,
        launch_template: g.launch_template.clone(),
        health_check: g.health(),
        schedules: g.schedules(),
        id: g.id,
        name: g.name,
        min: g.min_size as u32,
        max: g.max_size as u32,
        desired: g.desired as u32,
        members,
        activities,
        created_at_ms: g.created_at_ms,
    })
}

async fn load_group(ctx: &Ctx, caller: &Caller, name: &str, access: Access) -> AppResult<crate::groups::GroupRow> {
    let project = authz::caller_project(caller)?;
    let g = ctx
        .store
        .group_by_name(&project, name)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: "group", id: name.chars().take(64).collect() })?;
    authz::check(caller, access, Some(&g.project_id), "group", name)?;
    Ok(g)
}

/// Creates an instance group; it launches its members at once.
pub async fn create_group(ctx: &Arc<Ctx>, caller: &Caller, g: GroupCreate) -> AppResult<Group> {
    let project = authz::creation_project(caller)?;
    // Members launch from the group's own template or from a launch
    // template's version (resolved again at each launch).
    let template = match (&g.template, &g.launch_template) {
        (Some(t), None) => t.clone(),
        (None, Some(reference)) => {
            let (_, _, data) = super::launch_templates::resolve(ctx, caller, reference).await?;
            super::launch_templates::instance_create(ctx, &project, &data, None).await?.0
        }
        _ => {
            return Err(AppError::BadRequest(
                "the group is not valid: give either template (the launch parameters) or launch_template \
                 (NAME[:VERSION|$Default|$Latest]), not both"
                    .into(),
            ))
        }
    };
    crate::groups::validate(&g, &template).map_err(|e| AppError::BadRequest(format!("the group is not valid: {e}")))?;
    if ctx.store.resolve_image(Some(&project), &template.image).await?.is_none() {
        return Err(AppError::BadRequest(format!("image '{}' does not exist (see `nubo image list`)", template.image)));
    }
    if let Some(k) = &template.key_name {
        if ctx.store.keypair(&project, k).await?.is_none() {
            return Err(AppError::BadRequest(format!("key pair '{k}' does not exist in this project")));
        }
    }
    if !ctx.store.insert_group(&project, &g, &template).await? {
        return Err(AppError::Conflict(format!("the project already has a group named '{}'", g.name)));
    }
    let row = ctx.store.group_by_name(&project, &g.name).await?.ok_or_else(|| AppError::internal("group vanished"))?;
    ctx.store
        .group_activity(
            &row.id,
            "created",
            &format!("min {}, desired {}, max {}", row.min_size, row.desired, row.max_size),
        )
        .await?;
    // Launch now rather than at the next round.
    crate::groups::reconcile(ctx).await?;
    let row = ctx.store.group_by_name(&project, &g.name).await?.ok_or_else(|| AppError::internal("group vanished"))?;
    group_view(ctx, row, true).await
}

/// The groups the caller may see (without their activity).
pub async fn list_groups(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Group>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for g in ctx.store.groups(project.as_deref()).await? {
        out.push(group_view(ctx, g, false).await?);
    }
    Ok(out)
}

/// A group with its members' health and its activity history.
pub async fn show_group(ctx: &Arc<Ctx>, caller: &Caller, name: &str) -> AppResult<Group> {
    let g = load_group(ctx, caller, name, Access::Read).await?;
    group_view(ctx, g, true).await
}

/// Sets a group's desired count (within its min and max), in the caller's name.
pub async fn set_desired(ctx: &Arc<Ctx>, caller: &Caller, name: &str, desired: u32) -> AppResult<Group> {
    let g = load_group(ctx, caller, name, Access::Write).await?;
    if i64::from(desired) < g.min_size || i64::from(desired) > g.max_size {
        return Err(AppError::BadRequest(format!(
            "group {name} takes {} to {} members; {} is outside that",
            g.min_size, g.max_size, desired
        )));
    }
    ctx.store.set_group_desired(&g.id, desired, &format!("set by {}", caller.user_name)).await?;
    crate::groups::reconcile(ctx).await?;
    let g = load_group(ctx, caller, name, Access::Read).await?;
    group_view(ctx, g, true).await
}

/// Deletes a group and terminates its members.
pub async fn delete_group(ctx: &Arc<Ctx>, caller: &Caller, name: &str) -> AppResult<()> {
    let g = load_group(ctx, caller, name, Access::Write).await?;
    let members = ctx.store.group_members(&g.id).await?;
    // Deleting the group terminates its members: a protected one refuses
    // it all, before anything is terminated.
    let protected: Vec<&str> =
        members.iter().filter(|m| m.termination_protection == 1).map(|m| m.id.as_str()).collect();
    if !protected.is_empty() {
        return Err(AppError::Conflict(format!(
            "group {name} cannot be deleted: its members {} have termination protection; turn it off with `nubo instance protect ID --no-termination` first",
            protected.join(", ")
        )));
    }
    for m in members {
        ctx.store.terminate(&m.id).await?;
    }
    ctx.store.delete_group(&g.id).await?;
    ctx.bump();
    Ok(())
}
