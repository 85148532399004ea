//! The user portal's load balancer pages: a project's balancers, one
//! balancer with each backend's health, CPU and counters (refreshed live),
//! and the form that creates one in front of instances or a group.

use super::html::{self, badge, button, csrf, Nav};
use super::session::{Posted, Session};
use super::{bad, see_other, Empty, PageResult};
use crate::app;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use nubo_api::agent::PowerState;
use nubo_api::lb::{LbHealthCheck, LoadBalancer, LoadBalancerCreate};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/balancers", get(list).post(create))
        .route("/ui/balancers/{key}", get(show))
        .route("/ui/balancers/{key}/backends", get(backends_fragment))
        .route("/ui/balancers/{key}/delete", post(delete))
}

/// The create form. Targets are checkboxes named `target:<instance id>`
/// (a form cannot repeat a key into one field here), gathered from `rest`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BalancerForm {
    name: String,
    port: String,
    protocol: String,
    algorithm: String,
    group: String,
    check_path: String,
    check_interval: String,
    #[serde(flatten)]
    rest: HashMap<String, String>,
}

impl BalancerForm {
    fn to_params(&self) -> Result<LoadBalancerCreate, String> {
        let port = self.port.trim().parse().map_err(|_| "the port must be a number from 1 to 65535".to_string())?;
        let mut targets = Vec::new();
        for key in self.rest.keys() {
            if let Some(id) = key.strip_prefix("target:") {
                targets.push(id.parse().map_err(|e: nubo_api::ids::IdError| e.to_string())?);
            }
        }
        targets.sort();
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let interval_secs = match opt(&self.check_interval) {
            Some(v) => Some(v.parse().map_err(|_| "the check interval must be a whole number of seconds".to_string())?),
            None => None,
        };
        Ok(LoadBalancerCreate {
            name: self.name.trim().to_string(),
            protocol: opt(&self.protocol).unwrap_or_else(|| "http".into()),
            algorithm: opt(&self.algorithm),
            port,
            targets,
            group: opt(&self.group),
            weights: BTreeMap::new(),
            health_check: Some(LbHealthCheck {
                path: opt(&self.check_path),
                interval_secs,
                timeout_secs: None,
                expect_status: None,
                healthy_threshold: None,
                unhealthy_threshold: None,
            }),
            network: None,
            floating_ip: None,
        })
    }
}

async fn list(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let lbs = app::load_balancers::list(&ctx, &s.caller).await?;
    let project = s.project_id()?.to_string();
    let mut instances = Vec::new();
    for row in ctx.store.instances(Some(&project)).await? {
        if row.desired != PowerState::Deleted {
            instances.push((row.id.clone(), row.name.clone()));
        }
    }
    let groups = app::automation::list_groups(&ctx, &s.caller).await?;
    let body = html! {
        table.list {
            thead { tr { th { "Balancer" } th { "Protocol" } th { "Algorithm" } th { "Listens on" } th { "State" } th { "Backends up" } th { "Requests" } } }
            tbody {
                @for lb in &lbs {
                    tr data-balancer=(lb.id.as_str()) {
                        td { a href=(format!("/ui/balancers/{}", lb.id)) { (lb.name) } br; small.mono { (lb.id.as_str()) } }
                        td { (lb.protocol) }
                        td { (lb.algorithm) }
                        td.mono { (lb.listen) }
                        td { (badge(lb.state.as_str())) }
                        td { (lb.backends.iter().filter(|b| b.health == nubo_api::lb::BackendHealth::Up).count()) " of " (lb.backends.len()) }
                        td { (lb.backends.iter().map(|b| b.requests).sum::<u64>()) }
                    }
                }
                @if lbs.is_empty() { tr { td colspan="7" { "No load balancers yet." } } }
            }
        }
        h2 { "Create a load balancer" }
        form.stack method="post" action="/ui/balancers" id="balancer-form" {
            (csrf(&s))
            label { "Name " input name="name" maxlength="63" required; }
            label { "Guest port the targets serve on " input type="number" name="port" min="1" max="65535" value="80" required; }
            label { "Protocol "
                select name="protocol" { option value="http" { "HTTP (each request)" } option value="tcp" { "TCP (each connection)" } }
            }
            label { "Algorithm "
                select name="algorithm" {
                    option value="least-loaded" { "least-loaded (backend CPU and in-flight work)" }
                    option value="least-connections" { "least-connections" }
                    option value="round-robin" { "round-robin" }
                }
            }
            fieldset {
                legend { "Target instances (each must forward the port)" }
                @for (id, name) in &instances {
                    label.check { input type="checkbox" name=(format!("target:{id}")); " " (name) " " small.mono { (id) } }
                }
                @if instances.is_empty() { p.muted { "No instances in this project." } }
            }
            label { "Or a whole group "
                select name="group" { option value="" { "(none)" } @for g in &groups { option value=(g.name) { (g.name) } } }
            }
            label { "HTTP health check path " input name="check_path" placeholder="/"; }
            label { "Health check every (s) " input type="number" name="check_interval" min="1" placeholder="5"; }
            button.primary type="submit" { "Create" }
        }
    };
    html::page(&ctx, &s, "Load balancers", Nav::Balancers, body).await
}

async fn create(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<BalancerForm>) -> PageResult {
    let p = form.to_params().map_err(bad)?;
    let lb = app::load_balancers::create(&ctx, &s.caller, p).await?;
    Ok(see_other(&format!("/ui/balancers/{}", lb.id)))
}

fn backend_rows(lb: &LoadBalancer) -> Markup {
    html! {
        @for b in &lb.backends {
            tr data-backend=(b.instance_id) {
                td { a href=(format!("/ui/instances/{}", b.instance_id)) { (b.instance_id) } }
                td.mono { (b.address.as_deref().unwrap_or("-")) }
                td { (b.weight) }
                td { (badge(b.health.as_str())) @if let Some(e) = &b.last_error { br; small.error { (e) } } }
                td { @match b.cpu_percent { Some(c) => { (format!("{c:.0}%")) }, None => { "-" } } }
                td { (b.in_flight) }
                td { (b.requests) }
                td { (b.errors) }
            }
        }
        @if lb.backends.is_empty() { tr { td colspan="8" { "No backends: add targets, or scale the group out." } } }
    }
}

async fn show(State(ctx): State<Arc<Ctx>>, s: Session, Path(key): Path<String>) -> PageResult {
    let lb = app::load_balancers::show(&ctx, &s.caller, &key).await?;
    let hc = &lb.health_check;
    let body = html! {
        div.actions {
            (badge(lb.state.as_str()))
            (button(&s, &format!("/ui/balancers/{}/delete", lb.id), "Delete", "danger", Some("Delete this load balancer? Connections under way may finish.")))
        }
        @if let Some(e) = &lb.error { p.error { (e) } }
        dl.facts {
            dt { "Id" } dd.mono { (lb.id.as_str()) }
            dt { "Listens on" } dd.mono { (lb.listen) " (on host " (lb.host_id.as_str()) ")" }
            dt { "Protocol" } dd { (lb.protocol) " · guest port " (lb.port) }
            dt { "Algorithm" } dd { (lb.algorithm) }
            dt { "Group" } dd { (lb.group.as_deref().unwrap_or("none")) }
            dt { "Health check" } dd {
                @if lb.protocol == "http" { "GET " (hc.path.as_deref().unwrap_or("/")) " · " }
                "every " (hc.interval_secs.unwrap_or(5)) " s"
            }
            dt { "Started" } dd { (lb.started_at_ms.map(html::when).unwrap_or_else(|| "not yet".into())) }
        }
        h2 { "Backends" }
        table.list {
            thead { tr { th { "Instance" } th { "Address" } th { "Weight" } th { "Health" } th { "CPU" } th { "In flight" } th { "Requests" } th { "Errors" } } }
            tbody id="backends" data-live=(format!("/ui/balancers/{}/backends", lb.id)) data-every="2000" { (backend_rows(&lb)) }
        }
    };
    html::page(&ctx, &s, &format!("Load balancer {}", lb.name), Nav::Balancers, body).await
}

async fn backends_fragment(State(ctx): State<Arc<Ctx>>, s: Session, Path(key): Path<String>) -> PageResult {
    let lb = app::load_balancers::show(&ctx, &s.caller, &key).await?;
    Ok(backend_rows(&lb).into_response())
}

async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path(key): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::load_balancers::delete(&ctx, &s.caller, &key).await?;
    Ok(see_other("/ui/balancers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_gathers_checked_targets() {
        let form: BalancerForm = serde_urlencoded::from_str(
            "name=web&port=8080&protocol=http&algorithm=least-loaded&group=&check_path=%2Fhealth&check_interval=2\
             &target%3Ai-000000000000000b2=on&target%3Ai-000000000000000a1=on&csrf=x",
        )
        .unwrap();
        let p = form.to_params().unwrap();
        assert_eq!(p.name, "web");
        assert_eq!(p.port, 8080);
        assert_eq!(p.algorithm.as_deref(), Some("least-loaded"));
        assert_eq!(p.group, None);
        let ids: Vec<&str> = p.targets.iter().map(|t| t.as_str()).collect();
        assert_eq!(ids, ["i-000000000000000a1", "i-000000000000000b2"]);
        let hc = p.health_check.unwrap();
        assert_eq!(hc.path.as_deref(), Some("/health"));
        assert_eq!(hc.interval_secs, Some(2));
    }

    #[test]
    fn a_bad_port_or_target_is_refused_with_the_reason() {
        let form: BalancerForm = serde_urlencoded::from_str("name=web&port=http").unwrap();
        assert!(form.to_params().unwrap_err().contains("port"));
        let form: BalancerForm = serde_urlencoded::from_str("name=web&port=80&target%3Anot-an-id=on").unwrap();
        assert!(form.to_params().is_err());
    }
}
