//! Client commands for the control plane's background tasks (operators):
//! what each one does, how often, and how its last run went.

use crate::cli::{Conn, TaskCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use nubo_api::views::{BackgroundTask, BackgroundTasks};

/// How long ago `at_ms` was, short: `5s ago`, `3m ago`, `2h ago`.
fn ago(at_ms: i64, now_ms: i64) -> String {
    let s = ((now_ms - at_ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn row(t: &BackgroundTask, now_ms: i64) -> Vec<String> {
    let outcome = match (t.running, t.last_outcome.as_deref()) {
        (true, _) => "running".to_string(),
        (false, Some(o)) => o.to_string(),
        (false, None) => "not run".to_string(),
    };
    vec![
        t.name.clone(),
        t.scope.clone(),
        format!("{}s", t.every_ms as f64 / 1000.0),
        t.last_started_at_ms.map(|at| ago(at, now_ms)).unwrap_or_else(|| "never".into()),
        t.last_duration_ms.map(|ms| format!("{ms}ms")).unwrap_or_else(|| "-".into()),
        outcome,
        format!("{}/{}", t.runs, t.failures),
        t.last_error.clone().unwrap_or_else(|| "-".into()),
    ]
}

/// Where the cluster-wide tasks run, as a line above the table.
fn leader_line(list: &BackgroundTasks) -> String {
    match &list.cluster_tasks_on {
        Some(h) if *h == list.server => format!("server {}: runs the cluster-wide tasks", list.server),
        Some(h) => format!("server {}: the cluster-wide tasks run on {h} (ask it for their runs)", list.server),
        None => format!("server {}: no server runs the cluster-wide tasks right now", list.server),
    }
}

pub async fn task(cmd: TaskCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::List => {
            let list = client(conn)?.background_tasks().await?;
            emit(conn.output, &list, |list| {
                println!("{}", leader_line(list));
                let now = nubo_controlplane::store::now_ms();
                let rows: Vec<Vec<String>> = list.tasks.iter().map(|t| row(t, now)).collect();
                table(&["NAME", "SCOPE", "EVERY", "LAST_RUN", "TOOK", "OUTCOME", "RUNS/FAILED", "LAST_ERROR"], &rows);
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(running: bool, outcome: Option<&str>, error: Option<&str>) -> BackgroundTask {
        BackgroundTask {
            name: "alert_rules".into(),
            about: "evaluates".into(),
            scope: "cluster".into(),
            every_ms: 2_000,
            running,
            last_started_at_ms: outcome.map(|_| 90_000),
            last_duration_ms: outcome.map(|_| 12),
            last_outcome: outcome.map(str::to_string),
            last_error: error.map(str::to_string),
            last_error_at_ms: error.map(|_| 80_000),
            runs: 4,
            failures: u64::from(error.is_some()),
        }
    }

    #[test]
    fn rows_say_when_how_long_and_how_it_went() {
        assert_eq!(
            row(&task(false, Some("ok"), None), 100_000),
            ["alert_rules", "cluster", "2s", "10s ago", "12ms", "ok", "4/0", "-"]
        );
        let failed = row(&task(false, Some("failed"), Some("cannot evaluate the alert rules: timed out")), 100_000);
        assert_eq!((failed[5].as_str(), failed[7].as_str()), ("failed", "cannot evaluate the alert rules: timed out"));
        let never = row(&task(false, None, None), 100_000);
        assert_eq!((never[3].as_str(), never[4].as_str(), never[5].as_str()), ("never", "-", "not run"));
        assert_eq!(row(&task(true, Some("ok"), None), 100_000)[5], "running");
    }

    #[test]
    fn the_leader_line_says_where_the_cluster_tasks_run() {
        let list = |on: Option<&str>| BackgroundTasks {
            server: "a:/d".into(),
            cluster_tasks_on: on.map(str::to_string),
            tasks: Vec::new(),
        };
        assert!(leader_line(&list(Some("a:/d"))).ends_with("runs the cluster-wide tasks"));
        assert!(leader_line(&list(Some("b:/d"))).contains("run on b:/d"));
        assert!(leader_line(&list(None)).contains("no server runs"));
    }
}
