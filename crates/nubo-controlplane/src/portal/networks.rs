//! The user portal's network pages: a project's networks (its private
//! ones, its default one and the external ones every project shares),
//! one network with its instances and their addresses, and the security
//! groups with their rules (create a group, add and delete rules, delete
//! a group). The work is `app::networks`'s.

use super::html::{self, button, csrf, Nav};
use super::instances::project_instances;
use super::session::{Posted, Session};
use super::{bad, see_other, Empty, PageResult, PortalError};
use crate::app;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use nubo_api::params::{NetworkCreate, SecurityGroupCreate, SecurityGroupRuleCreate};
use nubo_api::views::{Network, SecurityGroup, SecurityGroupRule};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/networks", get(list).post(create))
        .route("/ui/networks/{id}", get(show))
        .route("/ui/networks/{id}/delete", post(delete))
        .route("/ui/security-groups", get(groups).post(create_group))
        .route("/ui/security-groups/{id}", get(show_group))
        .route("/ui/security-groups/{id}/rules", post(add_rule))
        .route("/ui/security-groups/{id}/rules/{rule}/delete", post(delete_rule))
        .route("/ui/security-groups/{id}/delete", post(delete_group))
}

/// What a network is, in a word: the list's "kind" column.
fn kind(n: &Network) -> &'static str {
    match (&n.external, n.is_default) {
        (Some(_), _) => "external",
        (None, true) => "default",
        (None, false) => "private",
    }
}

/// The names of the project's instances (terminated ones too: a page may
/// still name one), by id.
async fn instance_names(ctx: &Arc<Ctx>, s: &Session) -> Result<BTreeMap<String, String>, PortalError> {
    Ok(project_instances(ctx, s).await?.into_iter().map(|i| (i.id.to_string(), i.name)).collect())
}

fn instance_link(id: &str, names: &BTreeMap<String, String>) -> Markup {
    html! { a href=(format!("/ui/instances/{id}")) { (names.get(id).map(String::as_str).unwrap_or(id)) } }
}

// ---- networks ----

async fn list(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let nets = app::networks::list(&ctx, &s.caller).await?;
    let names = instance_names(&ctx, &s).await?;
    let body = html! {
        table.list id="networks" {
            thead { tr { th { "Network" } th { "Kind" } th { "Range" } th { "Gateway" } th { "Instances" } th {} } }
            tbody {
                @for n in &nets {
                    @let id = n.id.as_str();
                    tr data-network=(n.name) {
                        td { a href=(format!("/ui/networks/{id}")) { (n.name) } br; small.mono { (id) } }
                        td { (kind(n))
                            @if let Some(e) = &n.external { br; small.muted { "pool " (e.pool_start) "–" (e.pool_end) } } }
                        td.mono { (n.cidr) }
                        td.mono { (n.gateway) }
                        td {
                            @for p in &n.ports { (instance_link(p.instance_id.as_str(), &names)) " " small.mono { (p.address) } br; }
                            @if n.ports.is_empty() { "none" }
                        }
                        td.actions {
                            @if n.external.is_none() || s.caller.admin {
                                (button(&s, &format!("/ui/networks/{id}/delete"), "Delete", "danger", Some("Delete this network? Only a network without instances can go.")))
                            }
                        }
                    }
                }
                @if nets.is_empty() { tr { td colspan="6" { "No networks yet: the default network is made at the first launch on a host that runs networks." } } }
            }
        }
        h2 { "Create a private network" }
        form.inline method="post" action="/ui/networks" id="network-form" {
            (csrf(&s))
            label { "Name " input name="name" maxlength="63" required; }
            label { "Range " input name="cidr" placeholder="10.20.0.0/24" required; }
            button.primary type="submit" { "Create" }
        }
        p.muted { "The range's first address is the gateway; instances get the others by DHCP. Launch onto it with "
            code { "nubo run --network NAME" } ". External networks are an operator's to create." }
    };
    html::page(&ctx, &s, "Networks", Nav::Networks, body).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct NetworkForm {
    name: String,
    cidr: String,
}

async fn create(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<NetworkForm>) -> PageResult {
    let p = NetworkCreate { name: form.name.trim().to_string(), cidr: form.cidr.trim().to_string(), external: None };
    let n = app::networks::create(&ctx, &s.caller, p).await?;
    Ok(see_other(&format!("/ui/networks/{}", n.id)))
}

async fn show(State(ctx): State<Arc<Ctx>>, s: Session, Path(id): Path<String>) -> PageResult {
    let n = app::networks::show(&ctx, &s.caller, &id).await?;
    let names = instance_names(&ctx, &s).await?;
    // Each instance's floating IP, shown beside its private address.
    let floating: BTreeMap<String, String> = app::floating_ips::list(&ctx, &s.caller)
        .await?
        .into_iter()
        .filter_map(|f| Some((f.instance_id?.to_string(), f.address)))
        .collect();
    let body = html! {
        div.actions {
            @if n.external.is_none() || s.caller.admin {
                (button(&s, &format!("/ui/networks/{}/delete", n.id), "Delete", "danger", Some("Delete this network? Only a network without instances can go.")))
            }
        }
        dl.facts {
            dt { "Id" } dd.mono { (n.id.as_str()) }
            dt { "Kind" } dd { (kind(&n)) }
            dt { "Range" } dd.mono { (n.cidr) }
            dt { "Gateway" } dd.mono { (n.gateway) }
            @if let Some(e) = &n.external {
                dt { "Pool" } dd.mono { (e.pool_start) "–" (e.pool_end) }
                dt { "Host interface" } dd.mono { (e.interface) @if let Some(v) = e.vlan { " VLAN " (v) } }
            } @else {
                dt { "VXLAN id" } dd { (n.vni) }
            }
            dt { "Created" } dd { (html::when(n.created_at_ms)) }
        }
        h2 { "Instances" }
        table.list id="ports" {
            thead { tr { th { "Instance" } th { "Address" } th { "MAC" } th { "Floating IP" } } }
            tbody {
                @for p in &n.ports {
                    @let iid = p.instance_id.as_str();
                    tr data-instance=(iid) {
                        td { (instance_link(iid, &names)) }
                        td.mono { (p.address) }
                        td.mono { (p.mac) }
                        td.mono { (floating.get(iid).map(String::as_str).unwrap_or("-")) }
                    }
                }
                @if n.ports.is_empty() { tr { td colspan="4" { "No instances on this network." } } }
            }
        }
    };
    html::page(&ctx, &s, &format!("Network {}", n.name), Nav::Networks, body).await
}

async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::networks::delete(&ctx, &s.caller, &id).await?;
    Ok(see_other("/ui/networks"))
}

// ---- security groups ----

/// A rule's ports as a person reads them.
fn ports(r: &SecurityGroupRule) -> String {
    match (r.from_port, r.to_port) {
        (f, _) if f < 0 => "all".into(),
        (f, t) if f == t => f.to_string(),
        (f, t) => format!("{f}-{t}"),
    }
}

fn protocol(r: &SecurityGroupRule) -> &str {
    if r.protocol == "-1" {
        "all"
    } else {
        &r.protocol
    }
}

/// Where a rule lets traffic come from (ingress) or go to (egress).
fn peer(r: &SecurityGroupRule, group_names: &BTreeMap<String, String>) -> Markup {
    html! {
        @if let Some(c) = &r.cidr { span.mono { (c) } }
        @if let Some(g) = &r.source_group_id {
            "group " a href=(format!("/ui/security-groups/{g}")) { (group_names.get(g).map(String::as_str).unwrap_or(g)) }
        }
    }
}

fn group_names(list: &[SecurityGroup]) -> BTreeMap<String, String> {
    list.iter().map(|g| (g.id.to_string(), g.name.clone())).collect()
}

async fn groups(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let list = app::networks::list_groups(&ctx, &s.caller).await?;
    let names = group_names(&list);
    let body = html! {
        table.list id="security-groups" {
            thead { tr { th { "Group" } th { "Description" } th { "Rules" } } }
            tbody {
                @for g in &list {
                    tr data-group=(g.name) {
                        td { a href=(format!("/ui/security-groups/{}", g.id)) { (g.name) } br; small.mono { (g.id.as_str()) } }
                        td { (g.description) }
                        td {
                            @for r in &g.rules {
                                (r.direction) " " (protocol(r)) " " (ports(r)) " " (peer(r, &names)) br;
                            }
                            @if g.rules.is_empty() { "none: nothing may come in" }
                        }
                    }
                }
                @if list.is_empty() { tr { td colspan="3" { "No security groups." } } }
            }
        }
        h2 { "Create a security group" }
        form.inline method="post" action="/ui/security-groups" id="security-group-form" {
            (csrf(&s))
            label { "Name " input name="name" maxlength="63" required; }
            label { "Description " input name="description" maxlength="255"; }
            button.primary type="submit" { "Create" }
        }
        p.muted { "Rules are added on the group's page. Instances join groups at launch ("
            code { "nubo run --security-group NAME" } "); without one they are in " code { "default" } "." }
    };
    html::page(&ctx, &s, "Security groups", Nav::SecurityGroups, body).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GroupForm {
    name: String,
    description: String,
}

async fn create_group(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<GroupForm>) -> PageResult {
    let p =
        SecurityGroupCreate { name: form.name.trim().to_string(), description: form.description.trim().to_string() };
    let g = app::networks::create_group(&ctx, &s.caller, p).await?;
    Ok(see_other(&format!("/ui/security-groups/{}", g.id)))
}

async fn show_group(State(ctx): State<Arc<Ctx>>, s: Session, Path(id): Path<String>) -> PageResult {
    let row = app::networks::load_group(&ctx, &s.caller, &id, crate::authz::Access::Read).await?;
    let list = app::networks::list_groups(&ctx, &s.caller).await?;
    let names = group_names(&list);
    let g = list.iter().find(|g| g.id.as_str() == row.id).ok_or_else(|| {
        PortalError::App(crate::error::AppError::NotFound { kind: "security group", id: row.id.clone() })
    })?;
    let gid = g.id.as_str();
    let body = html! {
        div.actions {
            (button(&s, &format!("/ui/security-groups/{gid}/delete"), "Delete group", "danger", Some("Delete this security group?")))
        }
        dl.facts {
            dt { "Id" } dd.mono { (gid) }
            dt { "Description" } dd { (g.description) }
        }
        h2 { "Rules" }
        table.list id="rules" {
            thead { tr { th { "Direction" } th { "Protocol" } th { "Ports" } th { "From / to" } th {} } }
            tbody {
                @for r in &g.rules {
                    tr data-rule=(r.id.as_str()) {
                        td { (r.direction) }
                        td { (protocol(r)) }
                        td.mono { (ports(r)) }
                        td { (peer(r, &names)) }
                        td { (button(&s, &format!("/ui/security-groups/{gid}/rules/{}/delete", r.id), "Delete", "danger", Some("Delete this rule? Open connections stay; new ones are refused."))) }
                    }
                }
                @if g.rules.is_empty() { tr { td colspan="5" { "No rules: nothing may come in, and nothing may go out." } } }
            }
        }
        h2 { "Add a rule" }
        form.stack method="post" action=(format!("/ui/security-groups/{gid}/rules")) id="rule-form" {
            (csrf(&s))
            label { "Direction "
                select name="direction" {
                    option value="ingress" { "ingress (what may come in)" }
                    option value="egress" { "egress (where members may connect)" }
                }
            }
            label { "Protocol "
                select name="protocol" {
                    option value="tcp" { "tcp" } option value="udp" { "udp" } option value="icmp" { "icmp" } option value="all" { "all" }
                }
            }
            label { "Ports " small { "(tcp and udp: one port, or first and last)" }
                input type="number" name="from_port" min="1" max="65535" placeholder="22" aria-label="first port";
                input type="number" name="to_port" min="1" max="65535" placeholder="(same)" aria-label="last port";
            }
            label { "CIDR " small { "(e.g. 0.0.0.0/0 or 10.20.0.0/24)" } input name="cidr" placeholder="0.0.0.0/0"; }
            label { "Or a source group "
                select name="source_group" {
                    option value="" { "(none: use the CIDR)" }
                    @for o in &list { option value=(o.id.as_str()) { (o.name) } }
                }
            }
            button.primary type="submit" { "Add rule" }
        }
    };
    html::page(&ctx, &s, &format!("Security group {}", g.name), Nav::SecurityGroups, body).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuleForm {
    direction: String,
    protocol: String,
    from_port: String,
    to_port: String,
    cidr: String,
    source_group: String,
}

impl RuleForm {
    fn to_params(&self) -> Result<SecurityGroupRuleCreate, String> {
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let port = |what: &str, v: &str| -> Result<Option<u16>, String> {
            opt(v)
                .map(|p| {
                    p.parse().map_err(|_| {
                        format!(
                            "the {what} port must be a number from 1 to 65535, not '{}'",
                            p.chars().take(20).collect::<String>()
                        )
                    })
                })
                .transpose()
        };
        let egress = match self.direction.trim() {
            "" | "ingress" => false,
            "egress" => true,
            other => {
                return Err(format!(
                    "direction '{}' is unknown: choose ingress or egress",
                    other.chars().take(20).collect::<String>()
                ))
            }
        };
        Ok(SecurityGroupRuleCreate {
            protocol: opt(&self.protocol).unwrap_or_else(|| "tcp".into()),
            from_port: port("first", &self.from_port)?,
            to_port: port("last", &self.to_port)?,
            cidr: opt(&self.cidr),
            source_group: opt(&self.source_group),
            egress,
        })
    }
}

async fn add_rule(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<RuleForm>,
) -> PageResult {
    let p = form.to_params().map_err(bad)?;
    let g = app::networks::add_rule(&ctx, &s.caller, &id, p).await?;
    Ok(see_other(&format!("/ui/security-groups/{}", g.id)))
}

async fn delete_rule(
    State(ctx): State<Arc<Ctx>>,
    Path((id, rule)): Path<(String, String)>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    let g = app::networks::delete_rule(&ctx, &s.caller, &id, &rule).await?;
    Ok(see_other(&format!("/ui/security-groups/{}", g.id)))
}

async fn delete_group(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::networks::delete_group(&ctx, &s.caller, &id).await?;
    Ok(see_other("/ui/security-groups"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_form_becomes_api_params() {
        let f: RuleForm = serde_urlencoded::from_str(
            "direction=egress&protocol=tcp&from_port=8000&to_port=8080&cidr=10.0.0.0%2F8&source_group=&csrf=x",
        )
        .unwrap();
        let p = f.to_params().unwrap();
        assert!(p.egress);
        assert_eq!((p.protocol.as_str(), p.from_port, p.to_port), ("tcp", Some(8000), Some(8080)));
        assert_eq!((p.cidr.as_deref(), p.source_group), (Some("10.0.0.0/8"), None));
        let f: RuleForm = serde_urlencoded::from_str("protocol=icmp&from_port=&cidr=&source_group=sg-1").unwrap();
        let p = f.to_params().unwrap();
        assert!(!p.egress);
        assert_eq!((p.from_port, p.cidr, p.source_group.as_deref()), (None, None, Some("sg-1")));
    }

    #[test]
    fn a_bad_rule_form_says_which_field() {
        let f: RuleForm = serde_urlencoded::from_str("protocol=tcp&from_port=ssh").unwrap();
        assert!(f.to_params().unwrap_err().contains("first port"));
        let f: RuleForm = serde_urlencoded::from_str("direction=sideways&protocol=tcp").unwrap();
        assert!(f.to_params().unwrap_err().contains("ingress or egress"));
    }
}
