//! What the directory's word means inside Nubo, and keeping it current.
//! This module owns the LDAP users' standing: at sign-in their groups
//! become memberships and the admin flag (`apply_grants`), and the
//! `ldap_refresh` background task re-reads every LDAP user at the
//! settings' refresh interval (`refresh_once`), so that a user deleted
//! from the directory, or dropped from every mapped group, loses its roles, tokens, sessions and access
//! keys within one interval instead of at a next sign-in that never comes.
//! A directory that cannot be read concludes nothing: the round stops and
//! is tried again at the next interval.

use crate::error::AppError;
use crate::identity::UserRow;
use crate::ldap::{self, GroupMapping, LdapConfig, Standing};
use crate::Ctx;

/// Gives an LDAP user exactly the memberships and admin flag `grants`
/// say, changing only what differs (a re-check must not leave a moment
/// without a role a user keeps).
pub async fn apply_grants(ctx: &Ctx, user: &UserRow, grants: &[GroupMapping]) -> Result<bool, AppError> {
    let admin = grants.iter().any(|g| g.role == "admin");
    let mut changed = false;
    if (user.is_admin == 1) != admin {
        ctx.store.set_admin(&user.id, admin).await?;
        changed = true;
    }
    // The strongest role per project; admin grants act as member inside it.
    let mut desired: Vec<(String, &'static str)> = Vec::new();
    for g in grants {
        let role = if g.role == "reader" { "reader" } else { "member" };
        match desired.iter_mut().find(|(p, _)| *p == g.project) {
            Some(d) if role == "member" => d.1 = "member",
            Some(_) => {}
            None => desired.push((g.project.clone(), role)),
        }
    }
    let current = ctx.store.memberships(&user.id).await?;
    for (project_id, project_name, _) in &current {
        if !desired.iter().any(|(p, _)| p == project_name) {
            ctx.store.remove_membership(&user.id, project_id).await?;
            changed = true;
        }
    }
    for (project_name, role) in &desired {
        let had = current.iter().find(|(_, name, _)| name == project_name).map(|(_, _, r)| r.as_str());
        if had != Some(*role) {
            let project = ctx.store.ensure_project(project_name).await?;
            ctx.store.set_membership(&user.id, &project.id, role).await?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Takes everything away from a user the directory no longer has (or
/// that no mapped group lists): roles, the admin flag, every token and
/// session, every access key.
pub async fn remove(ctx: &Ctx, user: &UserRow) -> Result<bool, AppError> {
    let had_roles = !ctx.store.memberships(&user.id).await?.is_empty() || user.is_admin == 1;
    ctx.store.remove_memberships(&user.id).await?;
    ctx.store.set_admin(&user.id, false).await?;
    let revoked = ctx.store.revoke_user_credentials(&user.id).await?;
    Ok(had_roles || revoked > 0)
}

/// What one round of the re-check did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub checked: usize,
    pub changed: usize,
    pub removed: usize,
}

/// Re-reads every LDAP user once. Stops at the first answer that
/// concludes nothing (an unreachable or unreadable directory).
pub async fn refresh_once(ctx: &Ctx, cfg: &LdapConfig) -> Result<Round, AppError> {
    let mut round = Round::default();
    for user in ctx.store.users_from("ldap").await? {
        let standing = ldap::lookup(cfg, &user.name).await.map_err(|e| AppError::Unavailable(e.to_string()))?;
        round.checked += 1;
        match standing {
            Standing::Grants(grants) if !grants.is_empty() => {
                if apply_grants(ctx, &user, &grants).await? {
                    tracing::info!(user = %user.name, ?grants, "LDAP user's roles follow the directory");
                    round.changed += 1;
                }
            }
            other => {
                if remove(ctx, &user).await? {
                    let why = if other == Standing::Gone { "deleted from the directory" } else { "in no mapped group" };
                    tracing::info!(user = %user.name, why, "LDAP user removed: roles, tokens and access keys revoked");
                    round.removed += 1;
                }
            }
        }
    }
    Ok(round)
}
