//! Authorization: the one place that decides whether a caller may read or
//! change a project's resource. Every handler goes through these checks.
//! A resource of a project the caller cannot see is reported as not found,
//! so ids cannot be probed across tenants.

use crate::auth::{Caller, Role};
use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// May `caller` do `access` on a resource of `project`? `kind` and `id`
/// only shape the error.
pub fn check(
    caller: &Caller,
    access: Access,
    project: Option<&str>,
    kind: &'static str,
    id: &str,
) -> Result<(), AppError> {
    if caller.admin {
        return Ok(());
    }
    let same = project.is_some() && project == caller.project_id.as_deref();
    if !same || caller.role == Role::None {
        return Err(AppError::NotFound { kind, id: id.chars().take(64).collect() });
    }
    match (access, caller.role) {
        (Access::Read, _) | (Access::Write, Role::Member) => Ok(()),
        _ => Err(AppError::Forbidden(format!(
            "your role in project {} is {}: changing resources needs the member role",
            caller.project_name.as_deref().unwrap_or("?"),
            caller.role.as_str()
        ))),
    }
}

/// The project `caller`'s token is scoped to (for reading its resources).
pub fn caller_project(caller: &Caller) -> Result<String, AppError> {
    caller.project_id.clone().ok_or_else(|| {
        AppError::BadRequest("this token is not scoped to a project: sign in with `nubo login --project NAME`".into())
    })
}

/// The project new resources of `caller` belong to, if it may create them.
pub fn creation_project(caller: &Caller) -> Result<String, AppError> {
    let project = caller_project(caller)?;
    match caller.role {
        Role::Admin | Role::Member => Ok(project),
        other => Err(AppError::Forbidden(format!(
            "your role in project {} is {}: creating resources needs the member role",
            caller.project_name.as_deref().unwrap_or("?"),
            other.as_str()
        ))),
    }
}

/// Operator-only actions (hosts, users, projects, the audit log).
/// Whose resources a listing shows: `Some(None)` every project's
/// (operators), `Some(Some(p))` the caller's project, `None` nothing (no
/// role in any project).
pub fn list_scope(caller: &Caller) -> Option<Option<String>> {
    if caller.admin {
        Some(None)
    } else if caller.role == Role::None {
        None
    } else {
        Some(Some(caller.project_id.clone().unwrap_or_default()))
    }
}

pub fn require_admin(caller: &Caller) -> Result<(), AppError> {
    if caller.admin {
        Ok(())
    } else {
        Err(AppError::Forbidden("this needs the admin role (an operator's account)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(project: &str, role: Role) -> Caller {
        Caller {
            user_id: "u".into(),
            user_name: "u".into(),
            admin: role == Role::Admin,
            project_id: Some(project.into()),
            project_name: Some(project.into()),
            role,
        }
    }

    #[test]
    fn members_write_readers_read_others_see_nothing() {
        let m = caller("a", Role::Member);
        let r = caller("a", Role::Reader);
        assert!(check(&m, Access::Write, Some("a"), "instance", "i").is_ok());
        assert!(check(&r, Access::Read, Some("a"), "instance", "i").is_ok());
        assert!(matches!(check(&r, Access::Write, Some("a"), "instance", "i"), Err(AppError::Forbidden(_))));
        assert!(matches!(check(&m, Access::Read, Some("b"), "instance", "i"), Err(AppError::NotFound { .. })));
        assert!(matches!(check(&m, Access::Read, None, "instance", "i"), Err(AppError::NotFound { .. })));
        assert!(check(&caller("x", Role::Admin), Access::Write, Some("b"), "instance", "i").is_ok());
        assert!(creation_project(&r).is_err());
        assert!(require_admin(&m).is_err());
    }
}
