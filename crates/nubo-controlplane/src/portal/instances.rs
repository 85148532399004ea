//! The user portal's instance pages: the list with live states, the
//! launch form, and an instance's page (state and actions, addresses on
//! each network with their floating IPs, console,
//! charts of CPU, disk and network, volumes, recipe runs and their logs,
//! life events).

use super::chart::{self, Line, Unit};
use super::html::{self, badge, button, csrf, Nav};
use super::session::{Posted, Session};
use super::{see_other, Empty, PageResult, PortalError};
use crate::app;
use crate::error::AppError;
use crate::instance_batch::{Scope, Selection};
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use nubo_api::params::{InstanceCreate, RunCreate, VolumeAttach};
use nubo_api::views::{Instance, InstanceState, VolumeState};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/instances", get(list).post(launch))
        .route("/ui/instances/rows", get(rows_fragment))
        .route("/ui/instances/new", get(new_form))
        .route("/ui/instances/{id}", get(show))
        .route("/ui/instances/{id}/status", get(status_fragment))
        .route("/ui/instances/{id}/console", get(console_fragment))
        .route("/ui/instances/{id}/charts", get(charts_fragment))
        .route("/ui/instances/{id}/action/{action}", post(action))
        .route("/ui/instances/{id}/runs", post(run_recipe))
        .route("/ui/instances/{id}/runs/{run}", get(show_run))
        .route("/ui/instances/{id}/runs/{run}/log", get(run_log_fragment))
        .route("/ui/instances/{id}/attach", post(attach_volume))
}

/// The instances of the session's project (operators see every project's
/// in the operator portal).
pub(super) async fn project_instances(ctx: &Arc<Ctx>, s: &Session) -> Result<Vec<Instance>, PortalError> {
    let project = s.project_id()?;
    let selection = Selection::new(Scope::Project(project));
    let rows = ctx.store.select_instances(&selection).await?;
    let mut out = app::instances::views(ctx, &selection, rows).await?;
    out.sort_by_key(|i| std::cmp::Reverse(i.created_at_ms));
    Ok(out)
}

pub fn instance_rows(list: &[Instance], now: i64, project_of: Option<&BTreeMap<String, String>>) -> Markup {
    html! {
        @for i in list {
            tr data-instance=(i.id.as_str()) {
                td { a href=(format!("/ui/instances/{}", i.id)) { (i.name) } br; small.mono { (i.id.as_str()) } }
                @if let Some(p) = project_of { td { (p.get(i.id.as_str()).map(String::as_str).unwrap_or("-")) } }
                td { (badge(i.state.as_str())) }
                td { (i.image) }
                td { (i.vcpus) " vCPU · " (i.memory_mib) " MiB · " (i.disk_gib) " GiB" }
                td { (i.host_name.as_deref().unwrap_or("-")) }
                td.mono { @for (g, h) in &i.ports { (g) "→" (h) " " } }
                td { (html::ago(i.created_at_ms, now)) }
            }
        }
        @if list.is_empty() {
            tr { td colspan="8" { "No instances yet." } }
        }
    }
}

async fn list(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let list = project_instances(&ctx, &s).await?;
    let now = crate::store::now_ms();
    let body = html! {
        p.actions { a.button.primary href="/ui/instances/new" { "Launch instance" } }
        table.list {
            thead { tr { th { "Name" } th { "State" } th { "Image" } th { "Size" } th { "Host" } th { "Ports" } th { "Created" } } }
            tbody id="instance-rows" data-live="/ui/instances/rows" data-every="2000" { (instance_rows(&list, now, None)) }
        }
    };
    html::page(&ctx, &s, "Instances", Nav::Instances, body).await
}

async fn rows_fragment(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let list = project_instances(&ctx, &s).await?;
    Ok(instance_rows(&list, crate::store::now_ms(), None).into_response())
}

/// The launch form's fields, all text so a refused form is shown again as typed.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LaunchForm {
    name: String,
    image: String,
    vcpus: String,
    memory_mib: String,
    disk_gib: String,
    key_name: String,
    recipe: String,
    params: String,
    user_data: String,
    ports: String,
}

fn number<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{field} must be a whole number, not '{}'", v.chars().take(20).collect::<String>()))
}

/// `name=value` lines (blank lines and `#` comments ignored).
fn parse_params(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (k, v) = line.split_once('=').ok_or_else(|| {
            format!("recipe parameter line '{}' is not name=value", line.chars().take(40).collect::<String>())
        })?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn parse_ports(text: &str) -> Result<Vec<u16>, String> {
    text.split(|c: char| c == ',' || c.is_whitespace()).filter(|p| !p.is_empty()).map(|p| number("a port", p)).collect()
}

impl LaunchForm {
    fn defaults() -> Self {
        Self {
            image: "tiny".into(),
            vcpus: "1".into(),
            memory_mib: "256".into(),
            disk_gib: "1".into(),
            ..Self::default()
        }
    }

    fn to_params(&self) -> Result<InstanceCreate, String> {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let recipe = match opt(&self.recipe) {
            Some(r) => Some(RunCreate { recipe: r, version: None, params: parse_params(&self.params)? }),
            None if !self.params.trim().is_empty() => {
                return Err("recipe parameters were given but no recipe was chosen".into());
            }
            None => None,
        };
        Ok(InstanceCreate {
            image: self.image.trim().to_string(),
            vcpus: number("vCPUs", &self.vcpus)?,
            memory_mib: number("memory (MiB)", &self.memory_mib)?,
            disk_gib: number("disk (GiB)", &self.disk_gib)?,
            name: opt(&self.name),
            user_data: (!self.user_data.is_empty()).then(|| self.user_data.replace("\r\n", "\n")),
            ports: parse_ports(&self.ports)?,
            key_name: opt(&self.key_name),
            recipe,
            metadata: None,
            tags: BTreeMap::new(),
            networks: Vec::new(),
            security_groups: Vec::new(),
            cdrom: None,
            boot: None,
            hardware: Default::default(),
        })
    }
}

async fn launch_form(ctx: &Arc<Ctx>, s: &Session, f: &LaunchForm, error: Option<&str>) -> PageResult {
    let images = app::images::list(ctx, &s.caller).await?;
    let keypairs = app::provisioning::list_keypairs(ctx, &s.caller).await.unwrap_or_default();
    let recipes = app::provisioning::list_recipes(ctx, &s.caller).await?;
    let body = html! {
        (html::form_error(error))
        form.stack method="post" action="/ui/instances" id="launch-form" {
            (csrf(s))
            fieldset {
                legend { "What to run" }
                label { "Name " small { "(optional)" } input name="name" value=(f.name) maxlength="63" placeholder="web-1"; }
                label { "Image"
                    select name="image" required {
                        @for i in images.iter().filter(|i| i.state.is_bootable() || i.source == "builtin") {
                            option value=(i.name) selected[i.name == f.image] { (i.name) " · " (i.description.chars().take(60).collect::<String>()) }
                        }
                    }
                }
            }
            fieldset.row {
                legend { "Size" }
                label { "vCPUs" input type="number" name="vcpus" min="1" max="64" required value=(f.vcpus); }
                label { "Memory (MiB)" input type="number" name="memory_mib" min="64" step="64" required value=(f.memory_mib); }
                label { "Disk (GiB)" input type="number" name="disk_gib" min="1" required value=(f.disk_gib); }
            }
            fieldset {
                legend { "Access" }
                label { "Key pair"
                    select name="key_name" {
                        option value="" { "(none)" }
                        @for k in &keypairs { option value=(k.name) selected[k.name == f.key_name] { (k.name) " · " (k.fingerprint) } }
                    }
                }
                label { "Forward guest ports " small { "(to the host's 127.0.0.1, e.g. 22, 80)" } input name="ports" value=(f.ports) placeholder="22, 80"; }
            }
            fieldset {
                legend { "Software" }
                label { "Recipe"
                    select name="recipe" {
                        option value="" { "(none)" }
                        @for r in &recipes { option value=(r.name) selected[r.name == f.recipe] { (r.name) " " (r.version) " · " (r.description.chars().take(60).collect::<String>()) } }
                    }
                }
                label { "Recipe parameters " small { "(one name=value per line)" } textarea name="params" rows="3" { (f.params) } }
                @if !recipes.is_empty() {
                    details {
                        summary { "Parameters of each recipe" }
                        dl {
                            @for r in &recipes {
                                dt { (r.name) }
                                dd {
                                    @if r.params.is_empty() { "no parameters" }
                                    @for p in &r.params {
                                        code { (p.name) } " " (p.description)
                                        @if let Some(d) = &p.default { " (default " code { (d) } ")" } @else { " (required)" }
                                        br;
                                    }
                                }
                            }
                        }
                    }
                }
                label { "User-data " small { "(a #! script, or cloud-config for cloud-init images)" } textarea.mono name="user_data" rows="6" { (f.user_data) } }
            }
            button.primary type="submit" { "Launch" }
        }
    };
    let mut r = html::page(ctx, s, "Launch an instance", Nav::Instances, body).await?;
    if error.is_some() {
        *r.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(r)
}

async fn new_form(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    launch_form(&ctx, &s, &LaunchForm::defaults(), None).await
}

async fn launch(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<LaunchForm>) -> PageResult {
    let params = match form.to_params() {
        Ok(p) => p,
        Err(e) => return launch_form(&ctx, &s, &form, Some(&e)).await,
    };
    match app::instances::create(&ctx, &s.caller, &params).await {
        Ok(i) => Ok(see_other(&format!("/ui/instances/{}", i.id))),
        Err(
            e @ (AppError::BadRequest(_)
            | AppError::QuotaExceeded(_)
            | AppError::NoValidHost(_)
            | AppError::NotFound { .. }
            | AppError::Conflict(_)),
        ) => {
            let mut r = launch_form(&ctx, &s, &form, Some(&e.to_string())).await?;
            *r.status_mut() = e.status_and_code().0;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

async fn load(ctx: &Arc<Ctx>, s: &Session, id: &str) -> Result<Instance, PortalError> {
    Ok(app::instances::show(ctx, &s.caller, id).await?)
}

fn status_block(s: &Session, i: &Instance) -> Markup {
    let id = i.id.as_str();
    let state = i.state;
    html! {
        div.status-line {
            (badge(state.as_str()))
            @if i.desired_state.fulfilled_by() != state && state != InstanceState::Error { span.muted { " → " (i.desired_state) } }
            div.actions {
                @if state == InstanceState::Running {
                    (button(s, &format!("/ui/instances/{id}/action/stop"), "Stop", "", None))
                    (button(s, &format!("/ui/instances/{id}/action/reboot"), "Reboot", "", None))
                }
                @if state == InstanceState::Stopped || state == InstanceState::Error {
                    (button(s, &format!("/ui/instances/{id}/action/start"), "Start", "", None))
                }
                @if state != InstanceState::Terminated {
                    (button(s, &format!("/ui/instances/{id}/action/terminate"), "Terminate", "danger", Some("Terminate this instance? Its disk is deleted.")))
                }
            }
        }
        @if let Some(e) = &i.error { p.error { (e) } }
        dl.facts {
            dt { "Id" } dd.mono { (id) }
            dt { "Image" } dd { (i.image) }
            dt { "Type" } dd { (i.instance_type) " · " (i.vcpus) " vCPU, " (i.memory_mib) " MiB, " (i.disk_gib) " GiB disk" }
            dt { "Hardware" } dd id="hardware" { (i.hardware.to_string()) }
            dt { "Host" } dd { (i.host_name.as_deref().unwrap_or("not placed yet")) }
            dt { "Addresses" } dd id="addresses" {
                @if i.addresses.is_empty() { "none: user-mode networking (reached through forwarded ports)" }
                @for a in &i.addresses {
                    a href=(format!("/ui/networks/{}", a.network_id)) { (a.network) } " "
                    span.mono data-address=(a.address) { (a.address) }
                    @if let Some(f) = &a.floating_ip { " · floating IP " a.mono href="/ui/floating-ips" data-floating-ip=(f) { (f) } }
                    br;
                }
            }
            dt { "Ports" } dd.mono {
                @if i.ports.is_empty() { "none forwarded" }
                @for (g, h) in &i.ports { "guest " (g) " → " (h) br; }
            }
            dt { "Key pair" } dd { (i.key_name.as_deref().unwrap_or("none")) }
            dt { "Created" } dd { (html::when(i.created_at_ms)) }
            @if let Some(g) = &i.guest {
                dt { "Guest" } dd {
                    (g.os.as_deref().unwrap_or("?")) @if let Some(k) = &g.kernel { " · kernel " (k) }
                    @for ifc in &g.interfaces { br; (ifc.name) " " @for a in &ifc.addresses { (a) " " } }
                }
            }
        }
    }
}

async fn show(
    State(ctx): State<Arc<Ctx>>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> PageResult {
    let i = load(&ctx, &s, &id).await?;
    let range = q.range.as_deref().filter(|r| RANGES.contains(r)).unwrap_or("15m");
    let id = i.id.as_str().to_string();
    let recipes = app::provisioning::list_recipes(&ctx, &s.caller).await?;
    let volumes = app::volumes::list(&ctx, &s.caller).await.unwrap_or_default();
    let available: Vec<_> = volumes.iter().filter(|v| v.state == VolumeState::Available).collect();
    let attached: Vec<_> =
        volumes.iter().filter(|v| v.attachment.as_ref().is_some_and(|a| a.instance_id == i.id)).collect();
    let images = app::images::list(&ctx, &s.caller).await.unwrap_or_default();
    let body = html! {
        section id="status" data-live=(format!("/ui/instances/{id}/status")) data-every="2000" { (status_block(&s, &i)) }
        section {
            h2 { "Console" }
            p { a href=(format!("/ui/instances/{id}/terminal")) { "Open the interactive console" } " · " a href=(format!("/ui/instances/{id}/screen")) { "Open the graphical console" } }
            pre.console id="console" data-live=(format!("/ui/instances/{id}/console")) data-every="2000" data-scroll="bottom" { (console_tail(&ctx, &s, &id).await?) }
        }
        section {
            h2 { "Monitoring" }
            p.range {
                "Range: "
                @for r in RANGES { a href=(format!("/ui/instances/{id}?range={r}#charts")) class=[(*r == range).then_some("current")] { (r) } " " }
            }
            div id="charts" data-live=(format!("/ui/instances/{id}/charts?range={range}")) data-every="10000" { (charts(&ctx, &s, &id, range).await?) }
        }
        section {
            h2 { "Volumes" }
            table.list {
                thead { tr { th { "Volume" } th { "Size" } th { "Attachment" } th { "Guest device" } th {} } }
                tbody {
                    @for v in &attached {
                        @let a = v.attachment.as_ref();
                        tr {
                            td { a href="/ui/volumes" { (v.name) } br; small.mono { (v.id.as_str()) } }
                            td { (v.size_gib) " GiB" }
                            td { (badge(a.map(|a| a.state.as_str()).unwrap_or("-"))) }
                            td.mono { (a.and_then(|a| a.guest_device.as_deref()).unwrap_or("-")) }
                            td { (button(&s, &format!("/ui/volumes/{}/detach?back=/ui/instances/{id}", v.id), "Detach", "", Some("Detach this volume? The guest must let go of it first."))) }
                        }
                    }
                    @if attached.is_empty() { tr { td colspan="5" { "No volumes attached." } } }
                }
            }
            @if !available.is_empty() && i.state != InstanceState::Terminated {
                form.inline method="post" action=(format!("/ui/instances/{id}/attach")) {
                    (csrf(&s))
                    label { "Attach " select name="volume_id" { @for v in &available { option value=(v.id.as_str()) { (v.name) " (" (v.size_gib) " GiB)" } } } }
                    button type="submit" { "Attach" }
                }
            }
        }
        (super::day_two::instance_section(&s, &i, &images))
        section {
            h2 { "Recipe runs" }
            table.list {
                thead { tr { th { "Run" } th { "What" } th { "State" } th { "Started" } th { "Exit" } } }
                tbody {
                    @for r in &i.runs {
                        tr {
                            td { a href=(format!("/ui/instances/{id}/runs/{}", r.id)) { (r.id.as_str()) } }
                            td { (r.kind) ": " (r.what) }
                            td { (badge(r.state.as_str())) }
                            td { (r.started_at_ms.map(html::when).unwrap_or_else(|| "-".into())) }
                            td { (r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())) }
                        }
                    }
                    @if i.runs.is_empty() { tr { td colspan="5" { "No runs." } } }
                }
            }
            @if !recipes.is_empty() && i.state == InstanceState::Running {
                form.inline method="post" action=(format!("/ui/instances/{id}/runs")) {
                    (csrf(&s))
                    label { "Run recipe " select name="recipe" { @for r in &recipes { option value=(r.name) { (r.name) } } } }
                    label { "parameters " input name="params" placeholder="port=8080 greeting=hello"; }
                    button type="submit" { "Run" }
                }
            }
        }
        section {
            h2 { "Events" }
            ol.events {
                @for e in &i.events { li { span.muted { (html::when(e.at_ms)) } " " b { (e.stage) } " " (e.detail) } }
            }
        }
    };
    html::page(&ctx, &s, &format!("Instance {}", i.name), Nav::Instances, body).await
}

async fn status_fragment(State(ctx): State<Arc<Ctx>>, s: Session, Path(id): Path<String>) -> PageResult {
    let i = load(&ctx, &s, &id).await?;
    Ok(status_block(&s, &i).into_response())
}

/// The console's last 64 KiB (the API keeps 1 MiB; a page needs less).
async fn console_tail(ctx: &Arc<Ctx>, s: &Session, id: &str) -> Result<String, PortalError> {
    let out = app::instances::console(ctx, &s.caller, id).await?.output;
    let keep = 64 * 1024;
    let start = out.len().saturating_sub(keep);
    let start = (start..out.len()).find(|i| out.is_char_boundary(*i)).unwrap_or(out.len());
    Ok(out[start..].to_string())
}

async fn console_fragment(State(ctx): State<Arc<Ctx>>, s: Session, Path(id): Path<String>) -> PageResult {
    Ok(html! { (console_tail(&ctx, &s, &id).await?) }.into_response())
}

/// The chart ranges offered.
const RANGES: &[&str] = &["15m", "1h", "6h", "1d"];

#[derive(Debug, Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

async fn series(
    ctx: &Arc<Ctx>,
    s: &Session,
    id: &str,
    metric: &str,
    range: &str,
) -> Result<nubo_api::monitoring::MetricSeries, PortalError> {
    let q = crate::app::monitoring::SeriesSpec {
        resource: id.to_string(),
        metric: metric.to_string(),
        from: Some(range.to_string()),
        to: None,
        step: None,
    };
    Ok(crate::app::monitoring::series(ctx, &s.caller, q).await?)
}

/// A chart's title, unit, and the metrics it draws with their labels.
type Panel = (&'static str, Unit, &'static [(&'static str, &'static str)]);

/// CPU, disk and network charts of an instance over `range`.
pub async fn charts(ctx: &Arc<Ctx>, s: &Session, id: &str, range: &str) -> Result<Markup, PortalError> {
    let range = if RANGES.contains(&range) { range } else { "15m" };
    let panels: [Panel; 4] = [
        ("CPU", Unit::Percent, &[("cpu_percent", "CPU")]),
        (
            "Disk I/O",
            Unit::BytesPerSecond,
            &[("disk_read_bytes_per_second", "read"), ("disk_write_bytes_per_second", "write")],
        ),
        (
            "Network",
            Unit::BytesPerSecond,
            &[("net_rx_bytes_per_second", "received"), ("net_tx_bytes_per_second", "sent")],
        ),
        ("Root filesystem used", Unit::Percent, &[("fs_used_percent", "used")]),
    ];
    let mut out = Vec::new();
    for (title, unit, metrics) in panels {
        let mut got = Vec::new();
        for (metric, label) in metrics {
            got.push((*label, series(ctx, s, id, metric, range).await?));
        }
        let (from, to, step) = got.first().map(|(_, m)| (m.from_ms, m.to_ms, m.step_ms)).unwrap_or_default();
        let lines: Vec<Line> = got.iter().map(|(label, m)| Line { label, points: &m.points }).collect();
        out.push(html! {
            figure.chart-panel data-metric=(metrics[0].0) {
                figcaption { (title) " · last " (range) }
                (html::raw(chart::svg(title, unit, &lines, from, to, step)))
                (html::raw(chart::legend(unit, &lines)))
            }
        });
    }
    Ok(html! { div.charts { @for p in out { (p) } } })
}

async fn charts_fragment(
    State(ctx): State<Arc<Ctx>>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> PageResult {
    Ok(charts(&ctx, &s, &id, q.range.as_deref().unwrap_or("15m")).await?.into_response())
}

async fn action(
    State(ctx): State<Arc<Ctx>>,
    Path((id, action)): Path<(String, String)>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    let c = &s.caller;
    match action.as_str() {
        "stop" => app::instances::stop(&ctx, c, &id).await.map(drop),
        "start" => app::instances::start(&ctx, c, &id).await.map(drop),
        "reboot" => app::instances::reboot(&ctx, c, &id).await.map(drop),
        "terminate" => app::instances::terminate(&ctx, c, &id).await.map(drop),
        _ => Err(AppError::BadRequest(format!(
            "unknown instance action '{}'",
            action.chars().take(20).collect::<String>()
        ))),
    }?;
    Ok(see_other(&format!("/ui/instances/{id}")))
}

#[derive(Debug, Deserialize)]
struct RunForm {
    recipe: String,
    #[serde(default)]
    params: String,
}

async fn run_recipe(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<RunForm>,
) -> PageResult {
    // Space- or line-separated name=value pairs.
    let params =
        parse_params(&form.params.split_whitespace().collect::<Vec<_>>().join("\n")).map_err(AppError::BadRequest)?;
    let run = RunCreate { recipe: form.recipe, version: None, params };
    let r = app::provisioning::create_run(&ctx, &s.caller, &id, &run).await?;
    Ok(see_other(&format!("/ui/instances/{id}/runs/{}", r.id)))
}

async fn load_run(ctx: &Arc<Ctx>, s: &Session, run: &str) -> Result<nubo_api::views::Run, PortalError> {
    Ok(app::provisioning::show_run(ctx, &s.caller, run, None).await?)
}

fn run_status(r: &nubo_api::views::Run) -> Markup {
    html! {
        (badge(r.state.as_str()))
        @if let Some(c) = r.exit_code { " exit code " (c) }
        @if let Some(e) = &r.error { p.error { (e) } }
        pre.console id="run-log" data-scroll="bottom" { (r.log) }
    }
}

async fn show_run(State(ctx): State<Arc<Ctx>>, s: Session, Path((id, run)): Path<(String, String)>) -> PageResult {
    let r = load_run(&ctx, &s, &run).await?;
    if r.instance_id.as_str() != id {
        return Err(AppError::NotFound { kind: "run", id: run }.into());
    }
    let live = (!r.finished()).then(|| format!("/ui/instances/{id}/runs/{run}/log"));
    let body = html! {
        p { a href=(format!("/ui/instances/{id}")) { "← instance " (id) } }
        dl.facts {
            dt { "What" } dd { (r.kind) ": " (r.what) }
            dt { "Parameters" } dd.mono { @for (k, v) in &r.params { (k) "=" (v) " " } }
            dt { "Started" } dd { (r.started_at_ms.map(html::when).unwrap_or_else(|| "not yet".into())) }
            dt { "Finished" } dd { (r.finished_at_ms.map(html::when).unwrap_or_else(|| "not yet".into())) }
        }
        section id="run" data-live=[live] data-every="2000" { (run_status(&r)) }
    };
    html::page(&ctx, &s, &format!("Run {run}"), Nav::Instances, body).await
}

async fn run_log_fragment(
    State(ctx): State<Arc<Ctx>>,
    s: Session,
    Path((_id, run)): Path<(String, String)>,
) -> PageResult {
    let r = load_run(&ctx, &s, &run).await?;
    Ok(run_status(&r).into_response())
}

#[derive(Debug, Deserialize)]
struct AttachForm {
    volume_id: String,
}

async fn attach_volume(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<AttachForm>,
) -> PageResult {
    let instance_id = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    app::volumes::attach(&ctx, &s.caller, &form.volume_id, &VolumeAttach { instance_id }).await.map(drop)?;
    Ok(see_other(&format!("/ui/instances/{id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_forms_become_api_params() {
        let f = LaunchForm {
            name: " web ".into(),
            params: "port=8080\n# comment\n\ngreeting = hi there".into(),
            recipe: "web-server".into(),
            ports: "22, 80 443".into(),
            user_data: "#!/bin/sh\r\necho hi\r\n".into(),
            ..LaunchForm::defaults()
        };
        let p = f.to_params().unwrap();
        assert_eq!(p.name.as_deref(), Some("web"));
        assert_eq!((p.vcpus, p.memory_mib, p.disk_gib), (1, 256, 1));
        assert_eq!(p.ports, vec![22, 80, 443]);
        assert_eq!(p.user_data.as_deref(), Some("#!/bin/sh\necho hi\n"));
        let r = p.recipe.unwrap();
        assert_eq!(r.params.get("greeting").map(String::as_str), Some("hi there"));
        assert_eq!(p.key_name, None);
    }

    #[test]
    fn bad_launch_forms_say_which_field() {
        let f = LaunchForm { vcpus: "two".into(), ..LaunchForm::defaults() };
        assert!(f.to_params().unwrap_err().contains("vCPUs"));
        let f = LaunchForm { params: "x=1".into(), ..LaunchForm::defaults() };
        assert!(f.to_params().unwrap_err().contains("no recipe"));
        let f = LaunchForm { ports: "80,http".into(), ..LaunchForm::defaults() };
        assert!(f.to_params().is_err());
        assert!(parse_params("novalue").is_err());
    }
}
