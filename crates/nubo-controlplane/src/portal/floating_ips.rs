//! The user portal's floating IP page: a project's floating IPs (address,
//! network, instance, the private address it translates to), allocating
//! one from an external network, associating it with an instance on a
//! private network, disassociating and releasing it. The work is
//! `app::floating_ips`'s.

use super::html::{self, button, csrf, Nav};
use super::instances::project_instances;
use super::session::{Posted, Session};
use super::{bad, see_other, Empty, PageResult};
use crate::app;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use nubo_api::params::{FloatingIpAssociate, FloatingIpCreate};
use nubo_api::views::InstanceState;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/floating-ips", get(list).post(allocate))
        .route("/ui/floating-ips/{id}/associate", post(associate))
        .route("/ui/floating-ips/{id}/disassociate", post(disassociate))
        .route("/ui/floating-ips/{id}/release", post(release))
}

async fn list(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let fips = app::floating_ips::list(&ctx, &s.caller).await?;
    let nets = app::networks::list(&ctx, &s.caller).await?;
    let externals: Vec<_> = nets.iter().filter(|n| n.external.is_some()).collect();
    let private: BTreeSet<String> = nets.iter().filter(|n| n.external.is_none()).map(|n| n.id.to_string()).collect();
    let instances = project_instances(&ctx, &s).await?;
    let names: BTreeMap<String, String> = instances.iter().map(|i| (i.id.to_string(), i.name.clone())).collect();
    // A floating IP translates to an address on a private network, so
    // only instances with a NIC on one can take it.
    let targets: Vec<_> = instances
        .iter()
        .filter(|i| i.state != InstanceState::Terminated)
        .filter_map(|i| {
            let nic = i.addresses.iter().find(|a| private.contains(a.network_id.as_str()))?;
            Some((i.id.to_string(), i.name.clone(), nic.address.clone(), nic.floating_ip.is_some()))
        })
        .collect();
    let body = html! {
        table.list id="floating-ips" {
            thead { tr { th { "Address" } th { "Network" } th { "Instance" } th { "Private address" } th { "Actions" } } }
            tbody {
                @for f in &fips {
                    @let id = f.id.as_str();
                    tr data-floating-ip=(f.address) {
                        td.mono {
                            (f.address) br; small.mono { (id) }
                            @if f.auto_assigned { br; small.muted { "assigned automatically: it goes with its instance" } }
                        }
                        td { a href=(format!("/ui/networks/{}", f.network_id)) { (f.network) } }
                        td { @match &f.instance_id {
                            Some(i) => { a href=(format!("/ui/instances/{i}")) { (names.get(i.as_str()).map(String::as_str).unwrap_or(i.as_str())) } },
                            None => { "-" },
                        } }
                        td.mono { (f.private_address.as_deref().unwrap_or("-")) }
                        td.actions {
                            @if f.instance_id.is_some() {
                                (button(&s, &format!("/ui/floating-ips/{id}/disassociate"), "Disassociate", "", None))
                            } @else {
                                form.inline method="post" action=(format!("/ui/floating-ips/{id}/associate")) {
                                    (csrf(&s))
                                    select name="instance" aria-label="instance" {
                                        @for (iid, name, address, taken) in &targets {
                                            option value=(iid) disabled[*taken] {
                                                (name) " (" (address) ")" @if *taken { " has one" }
                                            }
                                        }
                                    }
                                    button type="submit" disabled[targets.is_empty()] { "Associate" }
                                }
                            }
                            (button(&s, &format!("/ui/floating-ips/{id}/release"), "Release", "danger", Some("Release this address back to the pool? Another project may take it.")))
                        }
                    }
                }
                @if fips.is_empty() { tr { td colspan="5" { "No floating IPs yet." } } }
            }
        }
        @if targets.is_empty() {
            p.muted { "No instance of this project is on a private network: a floating IP translates to a private address, so launch one onto a network first." }
        }
        h2 { "Allocate a floating IP" }
        @if externals.is_empty() {
            p.muted { "There is no external network to take an address from: an operator creates one with "
                code { "nubo network create NAME --external ..." } "." }
        } @else {
            form.inline method="post" action="/ui/floating-ips" id="floating-ip-form" {
                (csrf(&s))
                label { "From the external network "
                    select name="network" {
                        @for n in &externals {
                            option value=(n.name) {
                                (n.name) " (" (n.cidr)
                                @if let Some(e) = &n.external { ", pool " (e.pool_start) "–" (e.pool_end) }
                                ")"
                            }
                        }
                    }
                }
                button.primary type="submit" { "Allocate" }
            }
        }
    };
    html::page(&ctx, &s, "Floating IPs", Nav::FloatingIps, body).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AllocateForm {
    network: String,
}

async fn allocate(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<AllocateForm>) -> PageResult {
    let network = form.network.trim().to_string();
    if network.is_empty() {
        return Err(bad("choose the external network to take the address from"));
    }
    app::floating_ips::allocate(&ctx, &s.caller, FloatingIpCreate { network }).await?;
    Ok(see_other("/ui/floating-ips"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AssociateForm {
    instance: String,
}

async fn associate(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<AssociateForm>,
) -> PageResult {
    let instance = form.instance.trim().to_string();
    if instance.is_empty() {
        return Err(bad("choose the instance to associate the address with"));
    }
    app::floating_ips::associate(&ctx, &s.caller, &id, FloatingIpAssociate { instance }).await?;
    Ok(see_other("/ui/floating-ips"))
}

async fn disassociate(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::floating_ips::disassociate(&ctx, &s.caller, &id).await?;
    Ok(see_other("/ui/floating-ips"))
}

async fn release(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::floating_ips::release(&ctx, &s.caller, &id).await?;
    Ok(see_other("/ui/floating-ips"))
}
