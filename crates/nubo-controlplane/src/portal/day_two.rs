//! The portal's day-two forms: resize, rebuild and revert on an
//! instance's page, revert on the volumes page. Each posts (with the
//! session's CSRF token, as every portal form) to a route here that calls
//! `app::day_two` and goes back to the page; a refusal is shown as the
//! portal shows every error, with the application layer's words.

use super::html::csrf;
use super::session::{safe_next, Posted};
use super::{see_other, PageResult};
use crate::app;
use crate::error::AppError;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use maud::{html, Markup};
use nubo_api::params::{InstanceRebuild, InstanceResize, InstanceRevert, VolumeRevert};
use nubo_api::views::{Image, ImageState, Instance, InstanceState, Snapshot, SnapshotState, Volume};
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/instances/{id}/resize", post(resize))
        .route("/ui/instances/{id}/rebuild", post(rebuild))
        .route("/ui/instances/{id}/revert", post(revert_instance))
        .route("/ui/volumes/{id}/revert", post(revert_volume))
}

fn bad(msg: impl Into<String>) -> AppError {
    AppError::BadRequest(msg.into())
}

/// The instance page's section: resize (stopped; running: more vCPUs
/// only, hot-added), rebuild (stopped or
/// running) from the images the caller sees, revert (stopped) to one of
/// its snapshots.
pub fn instance_section(s: &super::session::Session, i: &Instance, images: &[Image]) -> Markup {
    let id = i.id.as_str();
    let stopped = i.state == InstanceState::Stopped;
    let usable = |im: &&Image| im.state == ImageState::Active;
    let snapshots: Vec<&Image> =
        images.iter().filter(usable).filter(|im| im.source_instance.as_ref() == Some(&i.id)).collect();
    html! {
        section id="day-two" {
            h2 { "Resize, rebuild, revert" }
            @if !stopped && i.state != InstanceState::Running {
                p.muted { "Available once the instance is running or stopped." }
            } @else {
                form.inline method="post" action=(format!("/ui/instances/{id}/resize")) {
                    (csrf(s))
                    label { "vCPUs " input type="number" name="vcpus" min="1" value=(i.vcpus) required; }
                    label { "memory (MiB) " input type="number" name="memory_mib" min="64" value=(i.memory_mib) required; }
                    button type="submit" { "Resize" }
                    @if !stopped { small.muted { " running: vCPUs can be added; for memory or fewer vCPUs, stop it first" } }
                }
                form.inline method="post" action=(format!("/ui/instances/{id}/rebuild")) data-confirm="Rebuild? The root disk is replaced by a fresh one; what the instance wrote on it is lost." {
                    (csrf(s))
                    label { "Image " select name="image" { @for im in images.iter().filter(usable) {
                        option value=(im.id.as_str()) selected[im.name == i.image] { (im.name) }
                    } } }
                    button.danger type="submit" { "Rebuild" }
                }
                form.inline method="post" action=(format!("/ui/instances/{id}/revert")) data-confirm="Revert? The root disk goes back to the snapshot at the next start." {
                    (csrf(s))
                    label { "Snapshot " select name="snapshot" {
                        @for im in &snapshots { option value=(im.id.as_str()) { (im.name) } }
                    } }
                    button.danger type="submit" disabled[!stopped || snapshots.is_empty()] { "Revert" }
                    @if snapshots.is_empty() { small.muted { " no snapshot of this instance yet" } }
                    @else if !stopped { small.muted { " stop the instance first" } }
                }
            }
        }
    }
}

/// The volumes page's revert form for `v`, offering its completed snapshots.
pub fn volume_revert_form(s: &super::session::Session, v: &Volume, snapshots: &[Snapshot]) -> Markup {
    let own: Vec<&Snapshot> =
        snapshots.iter().filter(|sn| sn.volume_id == v.id && sn.state == SnapshotState::Completed).collect();
    html! {
        @if !own.is_empty() {
            form.inline method="post" action=(format!("/ui/volumes/{}/revert", v.id)) data-confirm="Revert this volume? Its content goes back to the snapshot's." {
                (csrf(s))
                select name="snapshot" aria-label="snapshot" { @for sn in &own { option value=(sn.id.as_str()) { (sn.name) " (" (sn.id.as_str()) ")" } } }
                button type="submit" { "Revert" }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResizeForm {
    vcpus: String,
    memory_mib: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageForm {
    image: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SnapshotForm {
    snapshot: String,
}

async fn resize(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<ResizeForm>,
) -> PageResult {
    let vcpus = form.vcpus.trim().parse().map_err(|_| bad("vCPUs must be a whole number"))?;
    let memory_mib = form.memory_mib.trim().parse().map_err(|_| bad("memory must be a whole number of MiB"))?;
    let p = InstanceResize { vcpus: Some(vcpus), memory_mib: Some(memory_mib) };
    let i = app::day_two::resize(&ctx, &s.caller, &id, &p).await?;
    Ok(see_other(&safe_next(&format!("/ui/instances/{}", i.id))))
}

async fn rebuild(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<ImageForm>,
) -> PageResult {
    let i = app::day_two::rebuild(&ctx, &s.caller, &id, &InstanceRebuild { image: form.image }).await?;
    Ok(see_other(&safe_next(&format!("/ui/instances/{}", i.id))))
}

async fn revert_instance(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<SnapshotForm>,
) -> PageResult {
    let i = app::day_two::revert_instance(&ctx, &s.caller, &id, &InstanceRevert { snapshot: form.snapshot }).await?;
    Ok(see_other(&safe_next(&format!("/ui/instances/{}", i.id))))
}

async fn revert_volume(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, form }: Posted<SnapshotForm>,
) -> PageResult {
    app::day_two::revert_volume(&ctx, &s.caller, &id, &VolumeRevert { snapshot: form.snapshot }).await?;
    Ok(see_other("/ui/volumes"))
}
