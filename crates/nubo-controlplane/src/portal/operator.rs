//! The operator portal (`/ui/admin`): hosts with their capacity and use
//! (a heat map to read at a glance, bars for the figures), every
//! project's instances, every alert, the audit log, projects with their
//! quotas and members, and users. Every route takes an `Operator`, so a
//! member who opens one gets a refusal page, never the page.

use super::html::{self, badge, csrf, meter, Nav};
use super::instances::instance_rows;
use super::resources::{alerts_page, AlertsQuery};
use super::session::{Operator, OperatorPosted, Session};
use super::{see_other, PageResult, PortalError};
use crate::app;
use crate::error::AppError;
use crate::instance_batch::{Scope, Selection};
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use nubo_api::params::{MemberSet, ProjectCreate, Quota, UserCreate};
use nubo_api::views::Host;
use nubo_api::views::HostState;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/admin", get(|_: Operator| async { see_other("/ui/admin/hosts") }))
        .route("/ui/admin/hosts", get(hosts))
        .route("/ui/admin/instances", get(all_instances))
        .route("/ui/admin/instances/rows", get(all_instance_rows))
        .route("/ui/admin/alerts", get(all_alerts))
        .route("/ui/admin/audit", get(audit))
        .route("/ui/admin/projects", get(projects).post(create_project))
        .route("/ui/admin/projects/{id}/quota", post(set_quota))
        .route("/ui/admin/projects/{id}/members", post(set_member))
        .route("/ui/admin/users", get(users).post(create_user))
}

// ---- hosts ----

/// What the heat map colours hosts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeatBy {
    /// The fullest of vCPU, memory and disk allocation.
    Busiest,
    Cpu,
    Vcpus,
    Memory,
    Disk,
}

impl HeatBy {
    const ALL: [(HeatBy, &'static str, &'static str); 5] = [
        (HeatBy::Busiest, "busiest", "fullest allocation"),
        (HeatBy::Cpu, "cpu", "live CPU use"),
        (HeatBy::Vcpus, "vcpus", "vCPUs allocated"),
        (HeatBy::Memory, "memory", "memory allocated"),
        (HeatBy::Disk, "disk", "disk allocated"),
    ];

    fn parse(s: Option<&str>) -> Self {
        Self::ALL.iter().find(|(_, k, _)| Some(*k) == s).map(|(h, _, _)| *h).unwrap_or(HeatBy::Busiest)
    }
}

fn frac(used: f64, total: f64) -> f64 {
    if total > 0.0 {
        used / total
    } else {
        0.0
    }
}

/// A host's use by each measure, as fractions of its capacity.
struct HostUse {
    vcpus: f64,
    memory: f64,
    disk: f64,
    cpu: Option<f64>,
}

impl HostUse {
    fn of(h: &Host, cpu_percent: Option<f64>) -> Self {
        HostUse {
            vcpus: frac(f64::from(h.used_vcpus), f64::from(h.schedulable_vcpus.max(h.vcpus))),
            memory: frac(h.used_memory_mib as f64, h.memory_mib as f64),
            disk: frac(h.used_disk_gib as f64, h.disk_gib as f64),
            cpu: cpu_percent.map(|p| p / 100.0),
        }
    }

    fn by(&self, by: HeatBy) -> Option<f64> {
        match by {
            HeatBy::Busiest => Some(self.vcpus.max(self.memory).max(self.disk)),
            HeatBy::Cpu => self.cpu,
            HeatBy::Vcpus => Some(self.vcpus),
            HeatBy::Memory => Some(self.memory),
            HeatBy::Disk => Some(self.disk),
        }
    }
}

/// Heat class 0 (idle) to 5 (full or over), `none` when unknown or down.
fn heat_class(v: Option<f64>, up: bool) -> String {
    match v {
        Some(v) if up => format!("heat{}", ((v * 5.0).floor() as i64).clamp(0, 5)),
        _ => "heatnone".into(),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A grid of one square per host, coloured by `by`; each links to the
/// host's bars below. Sized for a thousand hosts as well as for one.
fn heat_map(hosts: &[(Host, HostUse)], by: HeatBy) -> String {
    let cols = 20usize;
    let cell = 34.0;
    let rows = hosts.len().div_ceil(cols).max(1);
    let (w, h) = (cols as f64 * cell, rows as f64 * cell);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="heatmap" viewBox="0 0 {w} {h}" role="img" aria-label="hosts heat map" xmlns="http://www.w3.org/2000/svg">"#
    );
    for (i, (host, u)) in hosts.iter().enumerate() {
        let (x, y) = ((i % cols) as f64 * cell, (i / cols) as f64 * cell);
        let v = u.by(by);
        let pct = v.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "n/a".into());
        let _ = write!(
            s,
            r##"<a href="#host-{id}"><rect class="{class}" data-host="{name}" x="{x}" y="{y}" width="{c}" height="{c}" rx="3"><title>{name}: {pct} ({state})</title></rect><text class="heat-label" x="{tx}" y="{ty}" text-anchor="middle">{short}</text></a>"##,
            id = escape(host.id.as_str()),
            class = heat_class(v, host.state == HostState::Up),
            name = escape(&host.name),
            c = cell - 3.0,
            state = escape(host.state.as_str()),
            tx = x + (cell - 3.0) / 2.0,
            ty = y + cell / 2.0 + 1.0,
            short = escape(&pct),
        );
    }
    s.push_str("</svg>");
    s
}

#[derive(Debug, Default, Deserialize)]
struct HostsQuery {
    by: Option<String>,
}

async fn hosts(State(ctx): State<Arc<Ctx>>, Operator(s): Operator, Query(q): Query<HostsQuery>) -> PageResult {
    let list = app::hosts::list(&ctx, &s.caller).await?;
    let by = HeatBy::parse(q.by.as_deref());
    let mut hosts = Vec::new();
    for h in list {
        let latest = ctx.store.latest_of(h.id.as_str()).await?;
        let cpu = latest.iter().find(|m| m.metric == "cpu_percent").map(|m| m.value);
        let u = HostUse::of(&h, cpu);
        hosts.push((h, u));
    }
    let total = |f: fn(&Host) -> f64| hosts.iter().map(|(h, _)| f(h)).sum::<f64>();
    let body = html! {
        section.summary {
            (meter("vCPUs", total(|h| f64::from(h.used_vcpus)), total(|h| f64::from(h.schedulable_vcpus.max(h.vcpus))),
                format!("{} of {} schedulable", total(|h| f64::from(h.used_vcpus)), total(|h| f64::from(h.schedulable_vcpus.max(h.vcpus))))))
            (meter("Memory", total(|h| h.used_memory_mib as f64), total(|h| h.memory_mib as f64),
                format!("{} of {} MiB", total(|h| h.used_memory_mib as f64), total(|h| h.memory_mib as f64))))
            (meter("Disk", total(|h| h.used_disk_gib as f64), total(|h| h.disk_gib as f64),
                format!("{} of {} GiB", total(|h| h.used_disk_gib as f64), total(|h| h.disk_gib as f64))))
            p { (hosts.len()) " hosts, " (hosts.iter().filter(|(h, _)| h.state == HostState::Up).count()) " up, "
                (hosts.iter().map(|(h, _)| h.instances).sum::<u32>()) " instances" }
        }
        h2 { "Heat map" }
        p.range { "Colour by: "
            @for (h, key, label) in HeatBy::ALL { a href=(format!("/ui/admin/hosts?by={key}")) class=[(h == by).then_some("current")] { (label) } " " }
        }
        (html::raw(heat_map(&hosts, by)))
        p.legend-heat { span.heat0 { "idle" } span.heat2 { "40%" } span.heat4 { "80%" } span.heat5 { "full" } span.heatnone { "down / no data" } }
        h2 { "Hosts" }
        table.list id="hosts" {
            thead { tr { th { "Host" } th { "State" } th { "Allocation" } th { "Live CPU" } th { "Instances" } th { "Heartbeat" } } }
            tbody {
                @for (h, u) in &hosts {
                    tr id=(format!("host-{}", h.id)) data-host=(h.name) {
                        td { b { (h.name) } br; small.mono { (h.id.as_str()) } br; small { (h.accel) } }
                        td { (badge(h.state.as_str())) }
                        td.bars {
                            (meter("vCPU", f64::from(h.used_vcpus), f64::from(h.schedulable_vcpus.max(h.vcpus)), format!("{} / {} ({} physical)", h.used_vcpus, h.schedulable_vcpus, h.vcpus)))
                            (meter("Memory", h.used_memory_mib as f64, h.memory_mib as f64, format!("{} / {} MiB", h.used_memory_mib, h.memory_mib)))
                            (meter("Disk", h.used_disk_gib as f64, h.disk_gib as f64, format!("{} / {} GiB", h.used_disk_gib, h.disk_gib)))
                        }
                        td { (u.cpu.map(|c| format!("{:.0}%", c * 100.0)).unwrap_or_else(|| "-".into())) }
                        td { (h.instances) }
                        td { (html::ago(h.last_heartbeat_ms, crate::store::now_ms())) }
                    }
                }
            }
        }
    };
    html::page(&ctx, &s, "Hosts", Nav::OpHosts, body).await
}

// ---- every project's instances ----

async fn every_instance(
    ctx: &Arc<Ctx>,
) -> Result<(Vec<nubo_api::views::Instance>, BTreeMap<String, String>), PortalError> {
    let projects: BTreeMap<String, String> = ctx.store.projects().await?.into_iter().map(|p| (p.id, p.name)).collect();
    let mut project_of = BTreeMap::new();
    let selection = Selection::new(Scope::All);
    let rows = ctx.store.select_instances(&selection).await?;
    for row in &rows {
        let project = row.project_id.as_ref().and_then(|p| projects.get(p)).cloned().unwrap_or_else(|| "-".into());
        project_of.insert(row.id.clone(), project);
    }
    let mut list = crate::app::instances::views(ctx, &selection, rows).await?;
    list.sort_by_key(|i| std::cmp::Reverse(i.created_at_ms));
    Ok((list, project_of))
}

fn all_rows(list: &[nubo_api::views::Instance], project_of: &BTreeMap<String, String>) -> Markup {
    instance_rows(list, crate::store::now_ms(), Some(project_of))
}

async fn all_instances(State(ctx): State<Arc<Ctx>>, Operator(s): Operator) -> PageResult {
    let (list, project_of) = every_instance(&ctx).await?;
    let body = html! {
        table.list {
            thead { tr { th { "Name" } th { "Project" } th { "State" } th { "Image" } th { "Size" } th { "Host" } th { "Ports" } th { "Created" } } }
            tbody id="instance-rows" data-live="/ui/admin/instances/rows" data-every="3000" { (all_rows(&list, &project_of)) }
        }
    };
    html::page(&ctx, &s, "All instances", Nav::OpInstances, body).await
}

async fn all_instance_rows(State(ctx): State<Arc<Ctx>>, Operator(_): Operator) -> PageResult {
    let (list, project_of) = every_instance(&ctx).await?;
    Ok(all_rows(&list, &project_of).into_response())
}

async fn all_alerts(State(ctx): State<Arc<Ctx>>, Operator(s): Operator, Query(q): Query<AlertsQuery>) -> PageResult {
    alerts_page(&ctx, &s, None, q.all_resolved(), Nav::OpAlerts).await
}

// ---- audit log ----

async fn audit(State(ctx): State<Arc<Ctx>>, Operator(s): Operator) -> PageResult {
    let entries = app::identity::audit(&ctx, &s.caller, Some(500)).await?;
    let body = html! {
        p.muted { "The newest 500 changes (every POST, PUT, PATCH and DELETE, through the API, the EC2 API or this portal). " code { "nubo audit" } " shows more." }
        table.list.dense id="audit" {
            thead { tr { th { "When" } th { "Who" } th { "Project" } th { "Request" } th { "From" } th { "Outcome" } } }
            tbody {
                @for e in &entries {
                    tr {
                        td { (html::when(e.at_ms)) }
                        td { (e.actor) }
                        td { (e.project.as_deref().unwrap_or("-")) }
                        td.mono { (e.method) " " (e.path) }
                        td.mono { (e.source) }
                        td { (badge(&e.outcome)) " " (e.status) }
                    }
                }
            }
        }
    };
    html::page(&ctx, &s, "Audit log", Nav::OpAudit, body).await
}

// ---- projects, quotas and members ----

fn quota_cell(used: u64, quota: u64, unit: &str) -> Markup {
    meter("", used as f64, quota as f64, format!("{used} / {quota}{unit}"))
}

async fn projects(State(ctx): State<Arc<Ctx>>, Operator(s): Operator) -> PageResult {
    let list = app::identity::list_projects(&ctx, &s.caller).await?;
    let users = app::identity::list_users(&ctx, &s.caller).await?;
    let body = html! {
        table.list id="projects" {
            thead { tr { th { "Project" } th { "Instances" } th { "vCPUs" } th { "Memory" } th { "Volumes" } th { "Members" } th { "Set quota" } } }
            tbody {
                @for p in &list {
                    tr data-project=(p.name) {
                        td { b { (p.name) } br; small.mono { (p.id.as_str()) } }
                        td { (quota_cell(p.used.instances, p.quota.instances, "")) }
                        td { (quota_cell(p.used.vcpus, p.quota.vcpus, "")) }
                        td { (quota_cell(p.used.memory_mib, p.quota.memory_mib, " MiB")) }
                        td { (quota_cell(p.used.volume_gib, p.quota.volume_gib, " GiB")) }
                        td { @for u in users.iter().filter(|u| u.projects.contains_key(&p.name)) {
                            (u.name) " " small.muted { (u.projects.get(&p.name).map(String::as_str).unwrap_or("")) } br;
                        } }
                        td {
                            form.quota method="post" action=(format!("/ui/admin/projects/{}/quota", p.id)) {
                                (csrf(&s))
                                input type="number" name="instances" min="0" value=(p.quota.instances) aria-label="instances" title="instances";
                                input type="number" name="vcpus" min="0" value=(p.quota.vcpus) aria-label="vCPUs" title="vCPUs";
                                input type="number" name="memory_mib" min="0" value=(p.quota.memory_mib) aria-label="memory MiB" title="memory (MiB)";
                                input type="number" name="volume_gib" min="0" value=(p.quota.volume_gib) aria-label="volume GiB" title="volumes (GiB)";
                                button type="submit" { "Save" }
                            }
                        }
                    }
                }
            }
        }
        div.two {
            section {
                h2 { "Create a project" }
                form.stack method="post" action="/ui/admin/projects" {
                    (csrf(&s))
                    label { "Name" input name="name" required maxlength="63"; }
                    button.primary type="submit" { "Create" }
                }
            }
            section {
                h2 { "Add or change a member" }
                form.stack method="post" action="/ui/admin/projects/_/members" id="member-form" {
                    (csrf(&s))
                    label { "Project" select name="project" { @for p in &list { option value=(p.id) { (p.name) } } } }
                    label { "User" select name="user" { @for u in &users { option value=(u.name) { (u.name) } } } }
                    label { "Role" select name="role" { option value="member" { "member" } option value="reader" { "reader" } option value="none" { "remove" } } }
                    button type="submit" { "Save" }
                }
            }
        }
    };
    html::page(&ctx, &s, "Projects & quotas", Nav::OpProjects, body).await
}

#[derive(Debug, Deserialize)]
struct NameForm {
    name: String,
}

async fn create_project(
    State(ctx): State<Arc<Ctx>>,
    OperatorPosted { session: s, form }: OperatorPosted<NameForm>,
) -> PageResult {
    let p = ProjectCreate { name: form.name.trim().to_string(), quota: None };
    app::identity::create_project(&ctx, &s.caller, p).await.map(drop)?;
    Ok(see_other("/ui/admin/projects"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct QuotaForm {
    instances: String,
    vcpus: String,
    memory_mib: String,
    volume_gib: String,
}

fn quota_value(name: &str, v: &str) -> Result<Option<u64>, PortalError> {
    match v.trim() {
        "" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| AppError::BadRequest(format!("the {name} quota must be a whole number")).into()),
    }
}

async fn set_quota(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    OperatorPosted { session: s, form }: OperatorPosted<QuotaForm>,
) -> PageResult {
    let q = Quota {
        instances: quota_value("instances", &form.instances)?,
        vcpus: quota_value("vCPU", &form.vcpus)?,
        memory_mib: quota_value("memory", &form.memory_mib)?,
        volume_gib: quota_value("volume", &form.volume_gib)?,
        floating_ips: None,
    };
    app::identity::set_quota(&ctx, &s.caller, &id, q).await.map(drop)?;
    Ok(see_other("/ui/admin/projects"))
}

#[derive(Debug, Deserialize)]
struct MemberForm {
    project: String,
    user: String,
    role: String,
}

async fn set_member(
    State(ctx): State<Arc<Ctx>>,
    Path(_): Path<String>,
    OperatorPosted { session: s, form }: OperatorPosted<MemberForm>,
) -> PageResult {
    let m = MemberSet { role: form.role };
    app::identity::set_member(&ctx, &s.caller, &form.project, &form.user, m).await?;
    Ok(see_other("/ui/admin/projects"))
}

// ---- users ----

async fn users(State(ctx): State<Arc<Ctx>>, Operator(s): Operator) -> PageResult {
    users_page(&ctx, &s).await
}

async fn users_page(ctx: &Arc<Ctx>, s: &Session) -> PageResult {
    let list = app::identity::list_users(ctx, &s.caller).await?;
    let body = html! {
        table.list id="users" {
            thead { tr { th { "User" } th { "Source" } th { "Operator" } th { "Projects" } } }
            tbody {
                @for u in &list {
                    tr data-user=(u.name) {
                        td { (u.name) }
                        td { (u.source) }
                        td { @if u.admin { (badge("admin")) } @else { "-" } }
                        td { @for (p, role) in &u.projects { (p) " " small.muted { (role) } br; } }
                    }
                }
            }
        }
        h2 { "Create a local user" }
        form.stack method="post" action="/ui/admin/users" id="user-form" {
            (csrf(s))
            label { "Name" input name="name" required maxlength="63" autocomplete="off"; }
            label { "Password " small { "(at least 8 characters)" } input type="password" name="password" required autocomplete="new-password"; }
            label.check { input type="checkbox" name="admin" value="true"; " operator (admin)" }
            button.primary type="submit" { "Create" }
        }
        p.muted { "Directory (LDAP) users appear here after their first sign-in; their projects follow their groups." }
    };
    html::page(ctx, s, "Users", Nav::OpUsers, body).await
}

#[derive(Debug, Deserialize)]
struct UserForm {
    name: String,
    password: String,
    #[serde(default)]
    admin: Option<String>,
}

async fn create_user(
    State(ctx): State<Arc<Ctx>>,
    OperatorPosted { session: s, form }: OperatorPosted<UserForm>,
) -> PageResult {
    let u = UserCreate { name: form.name.trim().to_string(), password: form.password, admin: form.admin.is_some() };
    app::identity::create_user(&ctx, &s.caller, u).await?;
    Ok(see_other("/ui/admin/users"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_classes_cover_the_range() {
        assert_eq!(heat_class(Some(0.0), true), "heat0");
        assert_eq!(heat_class(Some(0.45), true), "heat2");
        assert_eq!(heat_class(Some(0.99), true), "heat4");
        assert_eq!(heat_class(Some(1.0), true), "heat5");
        assert_eq!(heat_class(Some(1.7), true), "heat5");
        assert_eq!(heat_class(Some(0.5), false), "heatnone");
        assert_eq!(heat_class(None, true), "heatnone");
        assert_eq!(HeatBy::parse(Some("memory")), HeatBy::Memory);
        assert_eq!(HeatBy::parse(Some("nonsense")), HeatBy::Busiest);
    }
}
