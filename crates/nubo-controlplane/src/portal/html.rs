//! The portal's page shell (header, navigation, project switcher, sign
//! out) and the small formatting helpers every page uses.

use super::session::Session;
use super::PageResult;
use crate::Ctx;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Instances,
    Volumes,
    Images,
    Keypairs,
    Policies,
    Groups,
    Balancers,
    Networks,
    SecurityGroups,
    FloatingIps,
    Backups,
    Alerts,
    OpHosts,
    OpInstances,
    OpAlerts,
    OpAudit,
    OpProjects,
    OpUsers,
    OpTasks,
}

const USER_NAV: &[(Nav, &str, &str)] = &[
    (Nav::Instances, "/ui/instances", "Instances"),
    (Nav::Volumes, "/ui/volumes", "Volumes"),
    (Nav::Images, "/ui/images", "Images"),
    (Nav::Keypairs, "/ui/keypairs", "Key pairs"),
    (Nav::Policies, "/ui/policies", "Policies"),
    (Nav::Groups, "/ui/groups", "Groups"),
    (Nav::Balancers, "/ui/balancers", "Load balancers"),
    (Nav::Networks, "/ui/networks", "Networks"),
    (Nav::SecurityGroups, "/ui/security-groups", "Security groups"),
    (Nav::FloatingIps, "/ui/floating-ips", "Floating IPs"),
    (Nav::Backups, "/ui/backups", "Backups"),
    (Nav::Alerts, "/ui/alerts", "Alerts"),
];

const OPERATOR_NAV: &[(Nav, &str, &str)] = &[
    (Nav::OpHosts, "/ui/admin/hosts", "Hosts"),
    (Nav::OpInstances, "/ui/admin/instances", "All instances"),
    (Nav::OpAlerts, "/ui/admin/alerts", "All alerts"),
    (Nav::OpAudit, "/ui/admin/audit", "Audit log"),
    (Nav::OpProjects, "/ui/admin/projects", "Projects & quotas"),
    (Nav::OpUsers, "/ui/admin/users", "Users"),
    (Nav::OpTasks, "/ui/admin/tasks", "Background tasks"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Nubo" }
            link rel="stylesheet" href="/ui/static/portal.css";
            script src="/ui/static/portal.js" defer {}
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// A one-button form that posts to `action` (stop, delete, acknowledge...).
/// `confirm` asks first (the script shows the question).
pub fn button(s: &Session, action: &str, label: &str, class: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.inline method="post" action=(action) data-confirm=[confirm] {
            (csrf(s))
            button type="submit" class=(class) { (label) }
        }
    }
}

/// A whole page for a signed-in user.
pub async fn page(ctx: &Ctx, s: &Session, title: &str, nav: Nav, body: Markup) -> PageResult {
    // The projects this user may switch to (operators: all of them).
    let projects: Vec<(String, String)> = if s.caller.admin {
        ctx.store.projects().await?.into_iter().map(|p| (p.id, p.name)).collect()
    } else {
        ctx.store.memberships(&s.caller.user_id).await?.into_iter().map(|(id, name, _)| (id, name)).collect()
    };
    let operator_page = OPERATOR_NAV.iter().any(|(n, _, _)| *n == nav);
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.operator[operator_page] {
                header.top {
                    a.brand href="/ui/instances" { "Nubo" }
                    @if operator_page { span.portal-kind { "operator portal" } }
                    div.who {
                        form.inline method="post" action="/ui/project" {
                            (csrf(s))
                            label for="project-switch" { "Project" }
                            select id="project-switch" name="project" data-autosubmit {
                                @if s.caller.project_id.is_none() { option selected value="" { "(none)" } }
                                @for (id, name) in &projects {
                                    option value=(id) selected[s.caller.project_id.as_deref() == Some(id.as_str())] { (name) }
                                }
                            }
                            noscript { button type="submit" { "Switch" } }
                        }
                        span.user title=(format!("role: {}", s.caller.role.as_str())) {
                            (s.caller.user_name) " · " (s.caller.role.as_str())
                        }
                        (button(s, "/ui/logout", "Sign out", "link", None))
                    }
                }
                nav.side {
                    ul {
                        @for (n, href, label) in USER_NAV {
                            li { a href=(href) class=[(nav == *n).then_some("current")] { (label) } }
                        }
                    }
                    @if s.caller.admin {
                        h2 { "Operator" }
                        ul {
                            @for (n, href, label) in OPERATOR_NAV {
                                li { a href=(href) class=[(nav == *n).then_some("current")] { (label) } }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Ok(markup.into_response())
}

/// A page for someone not signed in (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main.narrow {
                    a.brand href="/ui/instances" { "Nubo" }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn error_page(status: StatusCode, message: &str) -> Markup {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Cannot do that now",
        StatusCode::BAD_REQUEST => "Check the form",
        s if s.is_server_error() => "Something went wrong",
        _ => "Cannot do that",
    };
    bare(
        title,
        html! {
            p.error role="alert" data-status=(status.as_u16()) { (message) }
            p { a href="/ui/instances" data-back { "Go back" } " · " a href="/ui/login" { "Sign in" } }
        },
    )
}

/// An error shown above a form that is shown again.
pub fn form_error(message: Option<&str>) -> Markup {
    html! { @if let Some(m) = message { p.error role="alert" { (m) } } }
}

/// A state as a coloured badge.
pub fn badge(state: &str) -> Markup {
    let class = match state {
        "running" | "available" | "in-use" | "active" | "up" | "ok" | "OK" | "succeeded" | "attached" => "good",
        "error" | "failed" | "down" | "CRITICAL" | "firing" | "terminated" => "bad",
        "WARNING" | "UNKNOWN" | "acknowledged" => "warn",
        _ => "busy",
    };
    html! { span class=(format!("badge {class}")) data-state=(state) { (state) } }
}

/// Milliseconds since the epoch as a UTC date and time.
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// How long ago, short: `5s`, `3m`, `2h`, `4d`.
pub fn ago(ms: i64, now: i64) -> String {
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// Bytes in binary units.
pub fn bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A use-of-capacity bar: a native `<meter>` (readable without colour)
/// with the figures beside it.
pub fn meter(label: &str, used: f64, total: f64, text: String) -> Markup {
    let frac = if total > 0.0 { (used / total).clamp(0.0, 1.5) } else { 0.0 };
    html! {
        div.meter-row {
            span.meter-label { (label) }
            meter min="0" max="1" low="0.7" high="0.9" optimum="0.2" value=(format!("{frac:.3}")) title=(format!("{:.0}%", frac * 100.0)) {}
            span.meter-text { (text) " (" (format!("{:.0}%", frac * 100.0)) ")" }
        }
    }
}

/// Raw text the script should not treat as HTML (pre-escaped JSON etc.).
pub fn pre(text: &str) -> Markup {
    html! { pre { (text) } }
}

/// For `PreEscaped` use of our own SVG.
pub fn raw(svg: String) -> Markup {
    PreEscaped(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_times_read_well() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
        assert_eq!(ago(0, 30_000), "30s ago");
        assert_eq!(ago(0, 7_200_000), "2h ago");
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn text_is_escaped() {
        let m = badge("<script>");
        assert!(!m.into_string().contains("<script>"));
    }
}
