//! The user portal's sign-in and the pages of a project's other
//! resources: volumes and snapshots, images, key pairs, policies,
//! instance groups and alerts.

use super::html::{self, badge, button, csrf, Nav};
use super::session::{self, LoginPosted, Posted, Session, Transport};
use super::{bad, see_other, Empty, PageResult, PortalError};
use crate::app;
use crate::error::AppError;
use crate::Ctx;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use nubo_api::agent::PowerState;
use nubo_api::params::{KeypairCreate, Login, SnapshotCreate, VolumeAttach, VolumeCreate, VolumeExtend};
use nubo_api::views::VolumeState;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/volumes", get(volumes).post(create_volume))
        .route("/ui/volumes/{id}/{action}", post(volume_action))
        .route("/ui/snapshots/{id}/delete", post(delete_snapshot))
        .route("/ui/images", get(images))
        .route("/ui/keypairs", get(keypairs).post(create_keypair))
        .route("/ui/keypairs/{name}/delete", post(delete_keypair))
        .route("/ui/policies", get(policies).post(apply_policy))
        .route("/ui/policies/{name}", get(show_policy))
        .route("/ui/policies/{name}/delete", post(delete_policy))
        .route("/ui/groups", get(groups).post(create_group))
        .route("/ui/groups/{name}", get(show_group))
        .route("/ui/groups/{name}/desired", post(set_desired))
        .route("/ui/groups/{name}/delete", post(delete_group))
        .route("/ui/alerts", get(project_alerts))
        .route("/ui/alerts/{id}/{action}", post(alert_action))
}

// ---- signing in ----

#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_markup(csrf_value: &str, next: &str, error: Option<&str>, transport: Transport) -> Markup {
    html::bare(
        "Sign in",
        html! {
            (html::form_error(error))
            @if transport == Transport::Http {
                p.notice { "This portal is served over plain HTTP. Outside this machine, run the server with --tls so passwords and sessions are encrypted." }
            }
            form.stack method="post" action="/ui/login" id="login-form" {
                input type="hidden" name="csrf" value=(csrf_value);
                input type="hidden" name="next" value=(next);
                label { "User name" input name="username" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                label { "Project " small { "(optional; your first project otherwise)" } input name="project"; }
                button.primary type="submit" { "Sign in" }
            }
            p.muted { "Local users and, when the server has an LDAP configuration, directory users sign in here." }
            details {
                summary { "Sign in with an API token" }
                form.stack method="post" action="/ui/login/token" id="token-form" {
                    input type="hidden" name="csrf" value=(csrf_value);
                    input type="hidden" name="next" value=(next);
                    label { "Token " small { "(NUBO_TOKEN from admin.env, or from `nubo token create`)" } input type="password" name="token" required; }
                    button type="submit" { "Sign in with token" }
                }
            }
        },
    )
}

fn login_response(transport: Transport, next: &str, error: Option<&str>, status: StatusCode) -> PageResult {
    let value = hex::encode(rand::random::<[u8; 16]>());
    let mut r = (status, login_markup(&value, next, error, transport)).into_response();
    r.headers_mut().append(header::SET_COOKIE, session::set_cookie(&session::login_cookie(transport, &value))?);
    Ok(r)
}

pub async fn login_page(Query(q): Query<NextQuery>, req: axum::extract::Request) -> PageResult {
    let (parts, _) = req.into_parts();
    let next = session::safe_next(q.next.as_deref().unwrap_or("/ui/instances"));
    login_response(session::transport(&parts), &next, None, StatusCode::OK)
}

/// Sets the session cookie and goes on to `next`.
fn signed_in(transport: Transport, token: &str, ttl_secs: u64, next: &str) -> PageResult {
    let mut r = see_other(&session::safe_next(next));
    r.headers_mut()
        .append(header::SET_COOKIE, session::set_cookie(&session::session_cookie(transport, token, ttl_secs))?);
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(ctx): State<Arc<Ctx>>,
    source: crate::auth::SourceAddr,
    p: LoginPosted<LoginForm>,
) -> PageResult {
    let LoginPosted { transport, form, audit } = p;
    let project = Some(form.project.trim().to_string()).filter(|p| !p.is_empty());
    let attempt = Login { username: form.username.trim().to_string(), password: form.password, project };
    match app::identity::sign_in(&ctx, &source.0, attempt).await {
        Ok(issued) => {
            audit.actor(&issued.user);
            signed_in(transport, &issued.token, ctx.config.session_ttl.as_secs(), &form.next)
        }
        Err(
            e @ (AppError::Unauthorized(_)
            | AppError::Forbidden(_)
            | AppError::Unavailable(_)
            | AppError::RateLimited { .. }
            | AppError::NotFound { .. }),
        ) => login_response(transport, &form.next, Some(&e.public_message()), e.status_and_code().0),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// Trades an API token for a session of the same user and project, so
/// the pasted token itself is never stored in the browser.
pub async fn login_with_token(State(ctx): State<Arc<Ctx>>, p: LoginPosted<TokenForm>) -> PageResult {
    let LoginPosted { transport, form, audit } = p;
    let Some(owner) = ctx.store.token_owner(form.token.trim()).await? else {
        return login_response(
            transport,
            &form.next,
            Some("that token is not valid, has expired or was revoked"),
            StatusCode::UNAUTHORIZED,
        );
    };
    audit.actor(&owner.user_name);
    let ttl = ctx.config.session_ttl;
    let expires = crate::store::now_ms() + ttl.as_millis() as i64;
    let (_, token) =
        app::identity::issue_session(&ctx, &owner.user_id, owner.project_id.as_deref(), "portal", expires).await?;
    signed_in(transport, &token, ttl.as_secs(), &form.next)
}

pub async fn logout(State(ctx): State<Arc<Ctx>>, Posted { session: s, .. }: Posted<Empty>) -> PageResult {
    ctx.store.revoke_token(&s.token_id, None).await?;
    let mut r = see_other("/ui/login");
    r.headers_mut().append(header::SET_COOKIE, session::set_cookie(&session::clear_cookie(s.transport))?);
    Ok(r)
}

#[derive(Debug, Deserialize)]
pub struct ProjectForm {
    project: String,
}

/// A new session in another project (one the user belongs to; operators
/// may enter any); the old session is revoked.
pub async fn switch_project(
    State(ctx): State<Arc<Ctx>>,
    headers: HeaderMap,
    Posted { session: s, form }: Posted<ProjectForm>,
) -> PageResult {
    let ttl = ctx.config.session_ttl;
    let token = app::identity::session_in_project(&ctx, &s.caller, &form.project, "portal").await?;
    ctx.store.revoke_token(&s.token_id, None).await?;
    // Back to the page the switch was made on, when it is a portal page of ours.
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("/ui/").map(|i| r[i..].to_string()))
        .filter(|p| !p.starts_with("/ui/admin"))
        .unwrap_or_else(|| "/ui/instances".into());
    signed_in(s.transport, &token, ttl.as_secs(), &back)
}

// ---- volumes and snapshots ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VolumeForm {
    size_gib: String,
    name: String,
    instance_id: String,
}

async fn volumes(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let vols = app::volumes::list(&ctx, &s.caller).await?;
    let snaps = app::volumes::list_snapshots(&ctx, &s.caller).await?;
    let project = s.project_id()?.to_string();
    let mut instances = Vec::new();
    for row in ctx.store.instances(Some(&project)).await? {
        if row.desired != PowerState::Deleted {
            instances.push((row.id.clone(), row.name.clone()));
        }
    }
    let name_of =
        |id: &str| instances.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone()).unwrap_or_else(|| id.to_string());
    let body = html! {
        table.list {
            thead { tr { th { "Volume" } th { "Size" } th { "State" } th { "Attached to" } th { "Guest device" } th { "Host" } th { "Actions" } } }
            tbody data-live-page="5000" {
                @for v in &vols {
                    @let id = v.id.as_str();
                    tr data-volume=(id) {
                        td { (v.name) br; small.mono { (id) } }
                        td { (v.size_gib) " GiB" br; small.muted { (v.actual_size_gib) " GiB used on the host" } }
                        td { (badge(v.state.as_str())) @if let Some(e) = &v.error { br; small.error { (e) } } }
                        td { @if let Some(a) = &v.attachment {
                            a href=(format!("/ui/instances/{}", a.instance_id)) { (name_of(a.instance_id.as_str())) } " " (badge(a.state.as_str()))
                        } @else { "-" } }
                        td.mono { (v.attachment.as_ref().and_then(|a| a.guest_device.as_deref()).unwrap_or("-")) }
                        td { (v.host_name.as_deref().unwrap_or("-")) }
                        td.actions {
                            @if v.attachment.is_some() {
                                (button(&s, &format!("/ui/volumes/{id}/detach"), "Detach", "", None))
                            } @else if v.state == VolumeState::Available {
                                form.inline method="post" action=(format!("/ui/volumes/{id}/attach")) {
                                    (csrf(&s))
                                    select name="instance_id" aria-label="instance" { @for (iid, n) in &instances { option value=(iid) { (n) } } }
                                    button type="submit" { "Attach" }
                                }
                                (button(&s, &format!("/ui/volumes/{id}/delete"), "Delete", "danger", Some("Delete this volume and its data?")))
                            }
                            form.inline method="post" action=(format!("/ui/volumes/{id}/extend")) {
                                (csrf(&s))
                                input type="number" name="size_gib" min=(v.size_gib + 1) value=(v.size_gib + 1) aria-label="new size in GiB";
                                button type="submit" { "Extend" }
                            }
                            (button(&s, &format!("/ui/volumes/{id}/snapshot"), "Snapshot", "", None))
                            (super::day_two::volume_revert_form(&s, v, &snaps))
                        }
                    }
                }
                @if vols.is_empty() { tr { td colspan="7" { "No volumes yet." } } }
            }
        }
        h2 { "Create a volume" }
        form.inline method="post" action="/ui/volumes" id="volume-form" {
            (csrf(&s))
            label { "Size (GiB) " input type="number" name="size_gib" min="1" value="10" required; }
            label { "Name " input name="name" maxlength="63"; }
            label { "On the host of "
                select name="instance_id" { option value="" { "(any host)" } @for (iid, n) in &instances { option value=(iid) { (n) } } }
            }
            button.primary type="submit" { "Create" }
        }
        h2 { "Snapshots" }
        table.list {
            thead { tr { th { "Snapshot" } th { "Volume" } th { "Size" } th { "State" } th { "Consistency" } th { "Taken" } th {} } }
            tbody {
                @for sn in &snaps {
                    tr {
                        td { (sn.name) br; small.mono { (sn.id.as_str()) } }
                        td.mono { (sn.volume_id.as_str()) }
                        td { (sn.size_gib) " GiB" }
                        td { (badge(sn.state.as_str())) }
                        td { (sn.consistency.as_deref().unwrap_or("-")) }
                        td { (html::when(sn.created_at_ms)) }
                        td { (button(&s, &format!("/ui/snapshots/{}/delete", sn.id), "Delete", "danger", Some("Delete this snapshot?"))) }
                    }
                }
                @if snaps.is_empty() { tr { td colspan="7" { "No snapshots." } } }
            }
        }
    };
    html::page(&ctx, &s, "Volumes", Nav::Volumes, body).await
}

async fn create_volume(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<VolumeForm>) -> PageResult {
    let size_gib = form.size_gib.trim().parse().map_err(|_| bad("the size must be a whole number of GiB"))?;
    let instance_id = match form.instance_id.trim() {
        "" => None,
        id => Some(id.parse().map_err(|e: nubo_api::ids::IdError| bad(e))?),
    };
    let name = Some(form.name.trim().to_string()).filter(|n| !n.is_empty());
    let p = VolumeCreate { size_gib, name, snapshot_id: None, instance_id };
    app::volumes::create(&ctx, &s.caller, &p).await.map(drop)?;
    Ok(see_other("/ui/volumes"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VolumeActionForm {
    instance_id: String,
    size_gib: String,
}

#[derive(Debug, Default, Deserialize)]
struct BackQuery {
    back: Option<String>,
}

async fn volume_action(
    State(ctx): State<Arc<Ctx>>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<BackQuery>,
    Posted { session: s, form }: Posted<VolumeActionForm>,
) -> PageResult {
    let (ctx, c) = (&ctx, &s.caller);
    match action.as_str() {
        "detach" => app::volumes::detach(ctx, c, &id).await.map(drop)?,
        "delete" => app::volumes::delete(ctx, c, &id).await.map(drop)?,
        "attach" => {
            let instance_id = form.instance_id.parse().map_err(|e: nubo_api::ids::IdError| bad(e))?;
            app::volumes::attach(ctx, c, &id, &VolumeAttach { instance_id }).await.map(drop)?
        }
        "extend" => {
            let size_gib =
                form.size_gib.trim().parse().map_err(|_| bad("the new size must be a whole number of GiB"))?;
            app::volumes::extend(ctx, c, &id, &VolumeExtend { size_gib }).await.map(drop)?
        }
        "snapshot" => app::volumes::create_snapshot(ctx, c, &id, &SnapshotCreate { name: None }).await.map(drop)?,
        other => return Err(bad(format!("unknown volume action '{}'", other.chars().take(20).collect::<String>()))),
    }
    Ok(see_other(&session::safe_next(q.back.as_deref().unwrap_or("/ui/volumes"))))
}

async fn delete_snapshot(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::volumes::delete_snapshot(&ctx, &s.caller, &id).await.map(drop)?;
    Ok(see_other("/ui/volumes"))
}

// ---- images ----

async fn images(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let list = app::images::list(&ctx, &s.caller).await?;
    let body = html! {
        p.muted { "Import an image with " code { "nubo image import FILE --name NAME" } " (raw or qcow2); it is checked before it can boot." }
        p.muted { "Or have the cloud fetch one, " code { "nubo image import URL --sha256 HEX" } ", or build one, " code { "nubo image build debian --packages nginx --name web-base" } "; their progress shows here." }
        table.list {
            thead { tr { th { "Name" } th { "Source" } th { "State" } th { "Visibility" } th { "Format" } th { "Size" } th { "Hardware" } th { "Description" } } }
            tbody {
                @for i in &list {
                    tr {
                        td { (i.name) br; small.mono { (i.id.as_str()) } }
                        td { (i.source) }
                        td { (badge(i.state.as_str())) (image_job(i)) }
                        td { (i.visibility) }
                        td { (i.disk_format.as_deref().unwrap_or("-")) }
                        td { (i.size_bytes.map(|b| html::bytes(b as f64)).unwrap_or_else(|| "-".into())) }
                        td data-hardware=(i.name) { (i.hardware.to_string()) }
                        td { (i.description) }
                    }
                }
            }
        }
    };
    html::page(&ctx, &s, "Images", Nav::Images, body).await
}

/// How an image being fetched or built is coming along (its job's step
/// and bytes), and why a failed one failed.
fn image_job(i: &nubo_api::views::Image) -> maud::Markup {
    let saving = i.state == nubo_api::views::ImageState::Saving;
    html! {
        @if let Some(job) = i.job.as_ref().filter(|_| saving) {
            @if let Some(status) = &job.status { br; small.image-job { (status) } }
            @if let Some(total) = job.bytes_total.filter(|t| *t > 0) {
                br;
                progress.image-job value=(job.bytes_done) max=(total) {}
                " "
                small.image-job {
                    (format!("{:.0}%", job.bytes_done as f64 * 100.0 / total as f64)) " · "
                    (html::bytes(job.bytes_done as f64)) " of " (html::bytes(total as f64))
                }
            }
        }
        @if let Some(e) = &i.error { br; small.error { (e) } }
    }
}

// ---- key pairs ----

async fn keypair_page(ctx: &Arc<Ctx>, s: &Session, created: Option<(String, String)>) -> PageResult {
    let list = app::provisioning::list_keypairs(ctx, &s.caller).await?;
    let body = html! {
        @if let Some((name, private_key)) = &created {
            section.notice id="private-key" {
                p { "The private key of " b { (name) } " is shown only this once. Save it (mode 0600) and use it with " code { "ssh -i" } "." }
                textarea.mono readonly rows="8" { (private_key) }
            }
        }
        table.list {
            thead { tr { th { "Name" } th { "Type" } th { "Fingerprint" } th { "Created" } th {} } }
            tbody {
                @for k in &list {
                    tr {
                        td { (k.name) }
                        td { (k.key_type) }
                        td.mono { (k.fingerprint) }
                        td { (html::when(k.created_at_ms)) }
                        td { (button(s, &format!("/ui/keypairs/{}/delete", k.name), "Delete", "danger", Some("Delete this key pair?"))) }
                    }
                }
                @if list.is_empty() { tr { td colspan="5" { "No key pairs yet." } } }
            }
        }
        h2 { "Add a key pair" }
        form.stack method="post" action="/ui/keypairs" {
            (csrf(s))
            label { "Name" input name="name" required maxlength="63"; }
            label { "Public key " small { "(paste an OpenSSH public key to import it; leave empty to have an Ed25519 pair generated)" }
                textarea.mono name="public_key" rows="3" {} }
            button.primary type="submit" { "Add" }
        }
    };
    html::page(ctx, s, "Key pairs", Nav::Keypairs, body).await
}

async fn keypairs(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    keypair_page(&ctx, &s, None).await
}

#[derive(Debug, Deserialize)]
struct KeypairForm {
    name: String,
    #[serde(default)]
    public_key: String,
}

async fn create_keypair(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<KeypairForm>) -> PageResult {
    let public_key = Some(form.public_key.trim().to_string()).filter(|k| !k.is_empty());
    let p = KeypairCreate { name: form.name.trim().to_string(), public_key };
    let created = app::provisioning::create_keypair(&ctx, &s.caller, &p).await?;
    match created.private_key {
        Some(key) => keypair_page(&ctx, &s, Some((created.keypair.name, key))).await,
        None => Ok(see_other("/ui/keypairs")),
    }
}

async fn delete_keypair(
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::provisioning::delete_keypair(&ctx, &s.caller, &name).await?;
    Ok(see_other("/ui/keypairs"))
}

// ---- policies ----

/// YAML (or JSON, which is YAML) pasted into a form, as the CLI reads files.
fn parse_yaml<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, PortalError> {
    let value: serde_json::Value =
        yaml_serde::from_str(text).map_err(|e| bad(format!("the {what} is not valid YAML or JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| bad(format!("the {what} does not match its schema: {e}")))
}

fn yaml(v: &impl serde::Serialize) -> String {
    yaml_serde::to_string(v).unwrap_or_else(|e| format!("(cannot show: {e})"))
}

const POLICY_EXAMPLE: &str = "name: grow-disk\nscope:\n  tag: {key: role, value: db}\ncondition:\n  metric: fs_used_percent\n  op: \">=\"\n  threshold: 80\n  for: 1m\nactions:\n  - attach_volume: {size_gib: 100}\ncooldown: 10m\n";

async fn policies(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let list = app::automation::list(&ctx, &s.caller).await?;
    let body = html! {
        table.list {
            thead { tr { th { "Policy" } th { "Condition" } th { "Actions" } th { "Breaching now" } th { "Mode" } } }
            tbody {
                @for p in &list {
                    tr {
                        td { a href=(format!("/ui/policies/{}", p.name)) { (p.name) } br; small.muted { (p.doc.description) } }
                        td.mono { (p.doc.condition.metric.as_deref().or(p.doc.condition.check_state.as_deref()).unwrap_or("-")) " "
                            (p.doc.condition.op.as_deref().unwrap_or("")) " " (p.doc.condition.threshold.map(|t| t.to_string()).unwrap_or_default()) }
                        td { (p.doc.actions.len()) }
                        td { (p.breaching.len()) }
                        td { @if p.doc.dry_run { (badge("dry run")) } @else { "live" } }
                    }
                }
                @if list.is_empty() { tr { td colspan="5" { "No policies yet." } } }
            }
        }
        h2 { "Apply a policy" }
        form.stack method="post" action="/ui/policies" {
            (csrf(&s))
            label { "Policy (YAML or JSON, as for " code { "nubo policy apply -f" } "; one with the same name is replaced)"
                textarea.mono name="doc" rows="12" { (POLICY_EXAMPLE) } }
            button.primary type="submit" { "Apply" }
        }
    };
    html::page(&ctx, &s, "Policies", Nav::Policies, body).await
}

#[derive(Debug, Deserialize)]
struct DocForm {
    doc: String,
}

async fn apply_policy(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<DocForm>) -> PageResult {
    let doc = parse_yaml("policy", &form.doc)?;
    let p = app::automation::apply(&ctx, &s.caller, doc).await?;
    Ok(see_other(&format!("/ui/policies/{}", p.name)))
}

async fn show_policy(State(ctx): State<Arc<Ctx>>, s: Session, Path(name): Path<String>) -> PageResult {
    let p = app::automation::show(&ctx, &s.caller, &name).await?;
    let body = html! {
        p.actions { (button(&s, &format!("/ui/policies/{}/delete", p.name), "Delete", "danger", Some("Delete this policy?"))) }
        h2 { "Definition" }
        (html::pre(&yaml(&p.doc)))
        h2 { "Breaching now" }
        p { @if p.breaching.is_empty() { "nothing" } @for t in &p.breaching { code { (t) } " " } }
        h2 { "Firings" }
        table.list {
            thead { tr { th { "When" } th { "Target" } th { "Values" } th { "State" } th { "Actions" } } }
            tbody {
                @for f in &p.firings {
                    tr {
                        td { (html::when(f.at_ms)) @if f.dry_run { " " (badge("dry run")) } }
                        td.mono { (f.target) }
                        td.mono { @for (k, v) in &f.values { (k) "=" (format!("{v:.1}")) " " } }
                        td { (badge(f.state.as_str())) }
                        td { @for a in &f.actions { (a.action) " " (badge(a.state.as_str())) @if let Some(e) = &a.error { " " small.error { (e) } } br; } }
                    }
                }
                @if p.firings.is_empty() { tr { td colspan="5" { "It has not fired." } } }
            }
        }
    };
    html::page(&ctx, &s, &format!("Policy {}", p.name), Nav::Policies, body).await
}

async fn delete_policy(
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::automation::delete(&ctx, &s.caller, &name).await?;
    Ok(see_other("/ui/policies"))
}

// ---- instance groups ----

const GROUP_EXAMPLE: &str =
    "name: web\nmin: 1\nmax: 4\ndesired: 2\ntemplate:\n  image: tiny\n  vcpus: 1\n  memory_mib: 256\n  disk_gib: 1\n";

async fn groups(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let list = app::automation::list_groups(&ctx, &s.caller).await?;
    let body = html! {
        table.list {
            thead { tr { th { "Group" } th { "Desired" } th { "Min–max" } th { "Members" } th { "Template" } } }
            tbody {
                @for g in &list {
                    tr {
                        td { a href=(format!("/ui/groups/{}", g.name)) { (g.name) } }
                        td { (g.desired) }
                        td { (g.min) "–" (g.max) }
                        td { (g.members.len()) }
                        td { (g.template.image) " · " (g.template.vcpus) " vCPU · " (g.template.memory_mib) " MiB" }
                    }
                }
                @if list.is_empty() { tr { td colspan="5" { "No groups yet." } } }
            }
        }
        h2 { "Create a group" }
        form.stack method="post" action="/ui/groups" {
            (csrf(&s))
            label { "Group (YAML or JSON, as for " code { "nubo group create -f" } ")" textarea.mono name="doc" rows="10" { (GROUP_EXAMPLE) } }
            button.primary type="submit" { "Create" }
        }
    };
    html::page(&ctx, &s, "Instance groups", Nav::Groups, body).await
}

async fn create_group(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<DocForm>) -> PageResult {
    let doc = parse_yaml("group", &form.doc)?;
    let g = app::automation::create_group(&ctx, &s.caller, doc).await?;
    Ok(see_other(&format!("/ui/groups/{}", g.name)))
}

async fn show_group(State(ctx): State<Arc<Ctx>>, s: Session, Path(name): Path<String>) -> PageResult {
    let g = app::automation::show_group(&ctx, &s.caller, &name).await?;
    let body = html! {
        div.actions {
            form.inline method="post" action=(format!("/ui/groups/{}/desired", g.name)) {
                (csrf(&s))
                label { "Desired " input type="number" name="desired" min=(g.min) max=(g.max) value=(g.desired); }
                button type="submit" { "Set" }
            }
            (button(&s, &format!("/ui/groups/{}/delete", g.name), "Delete", "danger", Some("Delete this group and terminate its members?")))
        }
        p { "min " (g.min) " · max " (g.max) " · desired " (g.desired) }
        h2 { "Members" }
        table.list {
            thead { tr { th { "Instance" } th { "State" } th { "Health" } } }
            tbody {
                @for m in &g.members {
                    tr {
                        td { a href=(format!("/ui/instances/{}", m.instance_id)) { (m.instance_id.as_str()) } }
                        td { (badge(m.state.as_str())) }
                        td { (badge(&m.health)) }
                    }
                }
            }
        }
        h2 { "Template" }
        (html::pre(&yaml(&g.template)))
        h2 { "Activity" }
        ol.events { @for a in &g.activities { li { span.muted { (html::when(a.at_ms)) } " " b { (a.kind) } " " (a.detail) } } }
    };
    html::page(&ctx, &s, &format!("Group {}", g.name), Nav::Groups, body).await
}

#[derive(Debug, Deserialize)]
struct DesiredForm {
    /// The group's new desired count, as typed.
    #[serde(rename = "desired")]
    count: String,
}

async fn set_desired(
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    Posted { session: s, form }: Posted<DesiredForm>,
) -> PageResult {
    let desired = form.count.trim().parse().map_err(|_| bad("desired must be a whole number"))?;
    app::automation::set_desired(&ctx, &s.caller, &name, desired).await?;
    Ok(see_other(&format!("/ui/groups/{name}")))
}

async fn delete_group(
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::automation::delete_group(&ctx, &s.caller, &name).await?;
    Ok(see_other("/ui/groups"))
}

// ---- alerts (the operator portal shows every project's) ----

#[derive(Debug, Default, Deserialize)]
pub struct AlertsQuery {
    #[serde(default)]
    all: bool,
}

impl AlertsQuery {
    /// Resolved alerts too, not only firing ones.
    pub fn all_resolved(&self) -> bool {
        self.all
    }
}

/// Alerts of one project (`Some`) or of every project (`None`, operators).
pub async fn alerts_page(ctx: &Arc<Ctx>, s: &Session, project: Option<&str>, all: bool, nav: Nav) -> PageResult {
    let mut list = Vec::new();
    for a in ctx.store.alerts(project, all).await? {
        list.push(app::monitoring::alert_view(ctx, a, false).await?);
    }
    let here = if project.is_some() { "/ui/alerts" } else { "/ui/admin/alerts" };
    let now = crate::store::now_ms();
    let body = html! {
        p { @if all { a href=(here) { "Show only firing alerts" } } @else { a href=(format!("{here}?all=true")) { "Include resolved alerts" } } }
        table.list id="alerts" {
            thead { tr { th { "Alert" } th { "Resource" } th { "State" } th { "Since" } th { "Acknowledged" } th { "Actions" } } }
            tbody {
                @for a in &list {
                    @let id = a.id.as_str();
                    tr data-alert=(id) {
                        td { b { (a.rule) } br; (a.summary) }
                        td.mono { (a.resource) }
                        td { (badge(a.state.as_str())) @if a.silenced_until_ms.is_some_and(|t| t > now) { " " (badge("silenced")) } }
                        td { (html::ago(a.fired_at_ms.unwrap_or(a.started_at_ms), now)) }
                        td { @if let Some(by) = &a.acknowledged_by { (by) " " small.muted { (a.acknowledged_at_ms.map(|t| html::ago(t, now)).unwrap_or_default()) } } @else { "-" } }
                        td.actions {
                            @if a.state == nubo_api::monitoring::AlertState::Firing && a.acknowledged_by.is_none() {
                                (button(s, &format!("/ui/alerts/{id}/acknowledge?back={here}"), "Acknowledge", "primary", None))
                            }
                            @if a.state == nubo_api::monitoring::AlertState::Firing {
                                (button(s, &format!("/ui/alerts/{id}/silence?back={here}"), "Silence 1h", "", None))
                            }
                        }
                    }
                }
                @if list.is_empty() { tr { td colspan="6" { "No alerts." } } }
            }
        }
    };
    html::page(ctx, s, if project.is_some() { "Alerts" } else { "All alerts" }, nav, body).await
}

async fn project_alerts(State(ctx): State<Arc<Ctx>>, s: Session, Query(q): Query<AlertsQuery>) -> PageResult {
    let project = s.project_id()?.to_string();
    alerts_page(&ctx, &s, Some(&project), q.all, Nav::Alerts).await
}

async fn alert_action(
    State(ctx): State<Arc<Ctx>>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<BackQuery>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    match action.as_str() {
        "acknowledge" => app::monitoring::acknowledge(&ctx, &s.caller, &id).await.map(drop)?,
        "silence" => app::monitoring::silence(&ctx, &s.caller, &id, 3600).await.map(drop)?,
        other => return Err(bad(format!("unknown alert action '{}'", other.chars().take(20).collect::<String>()))),
    }
    Ok(see_other(&session::safe_next(q.back.as_deref().unwrap_or("/ui/alerts"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_parse() {
        let _: nubo_api::automation::PolicyDoc = parse_yaml("policy", POLICY_EXAMPLE).unwrap();
        let _: nubo_api::automation::GroupCreate = parse_yaml("group", GROUP_EXAMPLE).unwrap();
        assert!(parse_yaml::<nubo_api::automation::PolicyDoc>("policy", "name: [").is_err());
    }
}
