//! The user portal's backup page: the project's backups (state, progress
//! while one runs, what each disk cost, whether it was verified), its
//! plans, "Back up now" for an instance, and "Restore as a new instance". The page refreshes itself while a backup is pending or
//! running. The work is `app::backups`'s.

use super::html::{self, button, csrf, Nav};
use super::instances::project_instances;
use super::session::{Posted, Session};
use super::{bad, see_other, Empty, PageResult};
use crate::app;
use crate::pagination::PageRequest;
use crate::Ctx;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use nubo_api::backup::{Backup, BackupRun, BackupState, RestoreInstance};
use nubo_api::views::InstanceState;
use serde::Deserialize;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/ui/backups", get(list).post(run))
        .route("/ui/backups/{id}/delete", post(delete))
        .route("/ui/backups/{id}/restore", post(restore))
}

fn mib(b: u64) -> String {
    html::bytes(b as f64)
}

/// What a backup did, in a line: progress while it runs, figures after.
fn figures(b: &Backup) -> String {
    match b.state {
        BackupState::Running => match b.bytes_total.filter(|t| *t > 0) {
            Some(t) => format!("{}% ({} of {})", b.bytes_done * 100 / t, mib(b.bytes_done), mib(t)),
            None => "starting".into(),
        },
        BackupState::Pending => "waiting for its host".into(),
        BackupState::Failed => b.error.clone().unwrap_or_default(),
        BackupState::Completed => {
            let disks: Vec<String> = b
                .disks
                .iter()
                .map(|d| {
                    let how = if d.incremental {
                        "incremental".to_string()
                    } else {
                        format!("full ({})", d.full_reason.as_deref().unwrap_or("-"))
                    };
                    format!("{}: {how}, read {}, stored {}", d.name, mib(d.bytes_read), mib(d.bytes_stored))
                })
                .collect();
            format!("sent {}, stored {}; {}", mib(b.bytes_sent), mib(b.bytes_stored), disks.join("; "))
        }
    }
}

async fn list(State(ctx): State<Arc<Ctx>>, s: Session) -> PageResult {
    let everything = PageRequest { limit: None, after: None };
    let (mut backups, _) = app::backups::list(&ctx, &s.caller, None, None, &everything).await?;
    backups.reverse();
    let plans = app::backups::list_plans(&ctx, &s.caller).await?;
    let repos = app::backups::list_repositories(&ctx, &s.caller).await?;
    let instances: Vec<_> = project_instances(&ctx, &s)
        .await?
        .into_iter()
        .filter(|i| matches!(i.state, InstanceState::Running | InstanceState::Stopped))
        .collect();
    let busy = backups.iter().any(|b| matches!(b.state, BackupState::Pending | BackupState::Running));
    let body = html! {
        @if busy { meta http-equiv="refresh" content="2"; }
        h2 { "Back up now" }
        @if repos.is_empty() {
            p.muted { "There is no backup repository yet: an operator registers one with "
                code { "nubo backup repo add" } "." }
        } @else {
            form.inline method="post" action="/ui/backups" id="backup-form" {
                (csrf(&s))
                select name="instance" aria-label="instance" {
                    @for i in &instances { option value=(i.id) { (i.name) " (" (i.id) ")" } }
                }
                select name="repository" aria-label="repository" {
                    @for r in &repos { option value=(r.name) { (r.name) " (" (r.location.url) ")" } }
                }
                button.primary type="submit" disabled[instances.is_empty()] { "Back up now" }
            }
        }
        h2 { "Backups" }
        table.list id="backups" {
            thead { tr { th { "Backup" } th { "Instance" } th { "State" } th { "Taken" } th { "Details" } th { "Verified" } th { "Actions" } } }
            tbody {
                @for b in &backups {
                    tr data-backup=(b.id) {
                        td.mono { (b.id) }
                        td { a href=(format!("/ui/instances/{}", b.instance_id)) { (b.instance_name) } }
                        td { (html::badge(b.state.as_str())) }
                        td { (b.created_at) }
                        td { (figures(b)) }
                        td { (html::badge(b.verify.as_str())) @if let Some(d) = &b.verify_detail { br; small { (d) } } }
                        td.actions {
                            @if b.state == BackupState::Completed {
                                (button(&s, &format!("/ui/backups/{}/restore", b.id), "Restore as a new instance", "",
                                    None))
                            }
                            @if b.state != BackupState::Running {
                                (button(&s, &format!("/ui/backups/{}/delete", b.id), "Delete", "danger",
                                    Some("Delete this backup? It cannot be restored afterwards.")))
                            }
                        }
                    }
                }
                @if backups.is_empty() { tr { td colspan="7" { "No backups yet." } } }
            }
        }
        h2 { "Plans" }
        table.list id="backup-plans" {
            thead { tr { th { "Plan" } th { "Schedule (UTC)" } th { "Next run" } th { "Keeps" } } }
            tbody {
                @for p in &plans {
                    tr {
                        td { (p.name) br; small.mono { (p.id) } }
                        td.mono { (p.schedule) }
                        td { (p.next_run_at.as_deref().unwrap_or("-")) }
                        td { "last " (p.retention.last) ", daily " (p.retention.daily) ", weekly " (p.retention.weekly)
                            ", monthly " (p.retention.monthly) }
                    }
                }
                @if plans.is_empty() { tr { td colspan="4" { "No plans: create one with " code { "nubo backup plan create" } "." } } }
            }
        }
    };
    html::page(&ctx, &s, "Backups", Nav::Backups, body).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RunForm {
    instance: String,
    repository: String,
}

async fn run(State(ctx): State<Arc<Ctx>>, Posted { session: s, form }: Posted<RunForm>) -> PageResult {
    let instance = form.instance.trim().to_string();
    if instance.is_empty() {
        return Err(bad("choose the instance to back up"));
    }
    let repository = Some(form.repository.trim().to_string()).filter(|r| !r.is_empty());
    app::backups::run(&ctx, &s.caller, &instance, &BackupRun { repository, plan: None }).await?;
    Ok(see_other("/ui/backups"))
}

async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    app::backups::delete(&ctx, &s.caller, &id).await?;
    Ok(see_other("/ui/backups"))
}

/// A new instance from the backup (its size and disks; no private
/// networks, so it never clashes with a running original), then its page.
async fn restore(
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    Posted { session: s, .. }: Posted<Empty>,
) -> PageResult {
    let i = app::restores::restore_instance(&ctx, &s.caller, &id, &RestoreInstance::default()).await?;
    Ok(see_other(&format!("/ui/instances/{}", i.id)))
}
