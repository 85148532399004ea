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
/// A caller whose role in that project is gone gets nothing: the token
/// still names the project, but membership is what grants reading it.
pub fn caller_project(caller: &Caller) -> Result<String, AppError> {
    let project = caller.project_id.clone().ok_or_else(|| {
        AppError::BadRequest("this token is not scoped to a project: sign in with `nubo login --project NAME`".into())
    })?;
    if !caller.admin && caller.role == Role::None {
        return Err(no_role(caller));
    }
    Ok(project)
}

/// The refusal of a caller who is no longer a member of the token's project.
pub fn no_role(caller: &Caller) -> AppError {
    AppError::Forbidden(format!(
        "you are no longer a member of project {}: ask an operator to add you again, or sign in to another \
         project with `nubo login --project NAME`",
        caller.project_name.as_deref().unwrap_or("?")
    ))
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

/// The token's project when the caller may read it (an operator, or a
/// member or reader of it); `None` once the caller's role there is gone.
/// For lookups that also show shared things (builtin recipes).
pub fn readable_project(caller: &Caller) -> Option<&str> {
    if caller.admin || caller.role != Role::None {
        caller.project_id.as_deref()
    } else {
        None
    }
}

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

/// The project whose resources a listing of shareable things (images)
/// shows besides the public ones: `None` every project's (operators). A
/// caller without a role sees only public and builtin ones (an empty
/// project id matches no project).
pub fn shared_list_scope(caller: &Caller) -> Option<String> {
    list_scope(caller).unwrap_or(Some(String::new()))
}

/// Operator-only actions (hosts, users, projects, the audit log).
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

    #[test]
    fn a_caller_without_a_role_lists_nothing_of_the_project() {
        let gone = caller("a", Role::None);
        assert_eq!(list_scope(&gone), None);
        assert_eq!(shared_list_scope(&gone), Some(String::new()));
        assert!(matches!(caller_project(&gone), Err(AppError::Forbidden(_))));
        assert!(matches!(check(&gone, Access::Read, Some("a"), "check", "c"), Err(AppError::NotFound { .. })));
        let m = caller("a", Role::Reader);
        assert_eq!(list_scope(&m), Some(Some("a".into())));
        assert_eq!(caller_project(&m).unwrap(), "a");
        assert_eq!(list_scope(&caller("a", Role::Admin)), Some(None));
    }
}
