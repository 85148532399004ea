//! The background tasks through the real router: after one round every
//! task is listed with its last run and no error, the answer names the
//! server running the cluster-wide tasks, and only operators may read it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
mod common;
use axum::http::StatusCode;
use common::T;
use nubo_controlplane::background;

#[tokio::test]
async fn one_round_lists_every_task_with_a_run_and_no_error() {
    let t = T::new().await;
    let admin = t.admin.clone();
    // Something for the round to work on: a host with a metric sample.
    let (host, cred) = t.add_host_with_id().await;
    let sample = serde_json::json!({"samples": [{"resource": host, "metric": "cpu_percent", "at_ms": nubo_controlplane::store::now_ms(), "value": 5.0}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/metrics"), &cred, Some(sample)).await;

    let holder = background::lease_holder(&t.ctx.config);
    assert!(background::leader::take(&t.ctx, &holder).await.unwrap(), "nobody else holds the lease");
    let before = nubo_controlplane::store::now_ms();
    background::run_all_once(&t.ctx).await;

    let v = t.ok("GET", "/api/v1/background-tasks", &admin, None).await;
    let list: nubo_api::views::BackgroundTasks = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(list.server, holder);
    assert_eq!(list.cluster_tasks_on.as_deref(), Some(holder.as_str()), "{v}");
    let names: Vec<&str> = list.tasks.iter().map(|t| t.name.as_str()).collect();
    // The cluster-wide tasks in their round's order, then every server's own.
    assert_eq!(
        names,
        [
            "rollups",
            "alert_rules",
            "policies",
            "groups",
            "failover",
            "backups",
            "webhooks",
            "audit_retention",
            "metrics_flush"
        ],
        "{v}"
    );
    for task in &list.tasks {
        assert_eq!(task.last_outcome.as_deref(), Some("ok"), "{v}");
        assert_eq!((task.last_error.as_deref(), task.runs, task.failures), (None, 1, 0), "{v}");
        assert!(!task.running, "{v}");
        assert!(task.last_started_at_ms.is_some_and(|at| at >= before), "{v}");
        assert!(task.last_duration_ms.is_some() && task.every_ms > 0 && !task.about.is_empty(), "{v}");
        let scope =
            if ["audit_retention", "metrics_flush"].contains(&task.name.as_str()) { "server" } else { "cluster" };
        assert_eq!(task.scope, scope, "{v}");
    }
    let every = |name: &str| list.tasks.iter().find(|t| t.name == name).map(|t| t.every_ms);
    assert_eq!(
        (every("rollups"), every("alert_rules"), every("webhooks")),
        (Some(60_000), Some(2_000), Some(1_000)),
        "the monitor's intervals"
    );
}

#[tokio::test]
async fn only_operators_read_the_background_tasks() {
    let t = T::new().await;
    let member = t.user("alice", "web", "member").await;
    let (s, v) = t.call("GET", "/api/v1/background-tasks", Some(&member), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("admin role"), "{v}");
    let (s, v) = t.call("GET", "/api/v1/background-tasks", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = t.call("GET", "/api/v1/background-tasks", Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK);
}
