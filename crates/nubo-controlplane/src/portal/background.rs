//! The operator portal's background tasks page (`/ui/admin/tasks`): each
//! task the control plane runs on its own, how often, and how its last
//! run went on this server; the same record as
//! `GET /api/v1/background-tasks` and `nubo task list`.

use super::html::{self, badge, Nav};
use super::session::Operator;
use super::PageResult;
use crate::Ctx;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use maud::html;
use std::sync::Arc;
use std::time::Duration;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new().route("/ui/admin/tasks", get(tasks))
}

/// An interval as an operator says it: `1s`, `2s`, `1m`, `22h 30m`.
fn interval(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    let s = d.as_secs();
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

async fn tasks(State(ctx): State<Arc<Ctx>>, Operator(s): Operator) -> PageResult {
    let list = crate::background::overview(&ctx, &s.caller).await?;
    let now = crate::store::now_ms();
    let body = html! {
        p.muted {
            "This server is " code { (list.server) } ". "
            @match &list.cluster_tasks_on {
                Some(holder) if *holder == list.server => { "It runs the cluster-wide tasks." }
                Some(holder) => { "The cluster-wide tasks run on " code { (holder) } ": its portal shows their runs." }
                None => { "No server runs the cluster-wide tasks right now (one takes them over within 30 s)." }
            }
            " " code { "nubo task list" } " shows the same."
        }
        table.list id="tasks" {
            thead { tr { th { "Task" } th { "Runs on" } th { "Every" } th { "Last run" } th { "Took" } th { "Outcome" } th { "Runs / failures" } th { "Last error" } } }
            tbody {
                @for t in &list.tasks {
                    tr data-task=(t.name) {
                        td { b { (t.name) } br; small.muted { (t.about) } }
                        td { @if t.scope == "cluster" { "one server" } @else { "every server" } }
                        td { (interval(t.every_ms)) }
                        td { @match t.last_started_at_ms {
                            Some(at) => { span title=(html::when(at)) { (html::ago(at, now)) } }
                            None => { "never" }
                        } }
                        td { (t.last_duration_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into())) }
                        td {
                            @if t.running { (badge("running")) " " }
                            (badge(t.last_outcome.as_deref().unwrap_or("not run")))
                        }
                        td { (t.runs) " / " (t.failures) }
                        td { @match (&t.last_error, t.last_error_at_ms) {
                            (Some(e), at) => { small.mono { (e) } @if let Some(at) = at { br; small.muted { (html::when(at)) } } }
                            _ => { "-" }
                        } }
                    }
                }
            }
        }
    };
    html::page(&ctx, &s, "Background tasks", Nav::OpTasks, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_operators_write_them() {
        assert_eq!(interval(500), "500ms");
        assert_eq!(interval(1_000), "1s");
        assert_eq!(interval(60_000), "1m");
        assert_eq!(interval(90_000), "1m 30s");
        assert_eq!(interval(3_600_000), "1h");
        assert_eq!(interval(81_000_000), "22h 30m");
    }
}
