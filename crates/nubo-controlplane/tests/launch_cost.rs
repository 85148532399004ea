#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
//! What a launch and an agent's routine calls cost in SQL, and what a
//! wake-up sends: the statements of one REST launch (counted, listed,
//! bounded), of an unchanged report (reads only, as many for 3 instances
//! as for 30) and of a heartbeat (one write); and the desired-state deltas
//! (a wake-up after one launch on a host with many instances carries that
//! one; an agent without a view, or with an old one, gets the whole set;
//! a terminated instance is named as gone). One statement-counting test
//! per concern, in one binary since the counter is the process's.

mod common;
use common::statements::{count_statements, statements_of};
use common::T;
use serde_json::{json, Value};

/// The tests of this binary share the counter: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn writes(statements: &[String]) -> Vec<&String> {
    statements
        .iter()
        .filter(|s| {
            let s = s.trim_start().to_ascii_uppercase();
            ["INSERT", "UPDATE", "DELETE"].iter().any(|w| s.starts_with(w))
        })
        .collect()
}

async fn setup() -> (T, String, String) {
    count_statements();
    let t = T::with(|c| c.log_statements = true).await;
    let (host, cred) = t.add_host_with_id().await;
    let quota = json!({"instances": 100, "vcpus": 100, "memory_mib": 100 * 64});
    t.ok("PUT", "/api/v1/projects/default/quota", &t.admin.clone(), Some(quota)).await;
    (t, host.to_string(), cred)
}

async fn launch(t: &T) -> String {
    let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1});
    let v = t.ok("POST", "/api/v1/instances", &t.admin.clone(), Some(body)).await;
    v["id"].as_str().unwrap().to_string()
}

async fn report(t: &T, host: &str, cred: &str, ids: &[String]) {
    let instances: Vec<Value> =
        ids.iter().map(|id| json!({"id": id, "power": "running", "pid": 1, "error": null})).collect();
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(json!({ "instances": instances }))).await;
}

fn instance_ids(state: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        state["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_launch_runs_a_bounded_list_of_statements() {
    let _serial = SERIAL.lock().await;
    let (t, _, _) = setup().await;
    // The first launch of a project makes its default security group.
    launch(&t).await;
    let (statements, _) = statements_of(launch(&t)).await;
    println!("one launch, {} statements ({} writes):", statements.len(), writes(&statements).len());
    for s in &statements {
        println!("  {s}");
    }
    // What it needs: the caller, the image, the hosts to place on, the
    // claim's writes (project, host, instance, its records), and its view.
    assert!(statements.len() <= 32, "{} statements: {statements:#?}", statements.len());
}

#[tokio::test]
async fn an_unchanged_report_writes_nothing_and_reads_the_same_for_3_and_30_instances() {
    let _serial = SERIAL.lock().await;
    let (t, host, cred) = setup().await;
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    for n in [3, 30] {
        while ids.len() < n {
            ids.push(launch(&t).await);
        }
        // The first report of each is news (pending -> running): written.
        let (first, _) = statements_of(report(&t, &host, &cred, &ids)).await;
        assert!(!writes(&first).is_empty(), "the first report wrote nothing: {first:#?}");
        let (again, _) = statements_of(report(&t, &host, &cred, &ids)).await;
        assert!(writes(&again).is_empty(), "an unchanged report wrote: {again:#?}");
        counts.push(again);
    }
    assert_eq!(counts[0].len(), counts[1].len(), "3 instances: {:#?}\n30 instances: {:#?}", counts[0], counts[1]);
    println!("an unchanged report: {} statements for 3 and for 30 instances, no write", counts[0].len());
    let (beat, _) = statements_of(t.ok("POST", &format!("/api/v1/agent/hosts/{host}/heartbeat"), &cred, None)).await;
    assert_eq!(writes(&beat).len(), 1, "{beat:#?}");
    println!("a heartbeat: {} statements, 1 write", beat.len());
}

#[tokio::test]
async fn a_wake_up_carries_what_changed_and_a_resync_carries_everything() {
    let _serial = SERIAL.lock().await;
    let (t, host, cred) = setup().await;
    let desired = format!("/api/v1/agent/hosts/{host}/desired");
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(launch(&t).await);
    }
    // An agent without a view: the whole set.
    let whole = t.ok("GET", &desired, &cred, None).await;
    assert!(whole["delta"].is_null());
    assert_eq!(instance_ids(&whole).len(), 20);
    let view = whole["view"].as_str().unwrap().to_string();
    let generation = whole["generation"].as_u64().unwrap();

    // One launch on the host wakes its long-poll with that one alone.
    let poll = {
        let (t, desired, cred, view) = (&t, desired.clone(), cred.clone(), view.clone());
        async move { t.ok("GET", &format!("{desired}?after={generation}&view={view}"), &cred, None).await }
    };
    let (delta, new) = tokio::join!(poll, async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        launch(&t).await
    });
    assert_eq!(instance_ids(&delta), vec![new.clone()], "{delta:#}");
    assert_eq!(delta["delta"]["base"], view.as_str());
    assert_eq!(delta["delta"]["removed_instances"], json!([]));

    // A terminated instance is named as gone once its row is terminated.
    let gone = ids[0].clone();
    t.ok("DELETE", &format!("/api/v1/instances/{gone}"), &t.admin.clone(), None).await;
    t.ok(
        "POST",
        &format!("/api/v1/agent/hosts/{host}/report"),
        &cred,
        Some(json!({"instances": [{"id": gone, "power": "deleted", "pid": null, "error": null}]})),
    )
    .await;
    let next_view = delta["view"].as_str().unwrap();
    let after_terminate = t.ok("GET", &format!("{desired}?view={next_view}"), &cred, None).await;
    assert_eq!(after_terminate["delta"]["removed_instances"], json!([gone]), "{after_terminate:#}");
    assert!(instance_ids(&after_terminate).is_empty(), "{after_terminate:#}");

    // An old view (not the last sent), or none: the whole set again.
    for stale in [format!("{desired}?view={view}"), desired.clone()] {
        let resync = t.ok("GET", &stale, &cred, None).await;
        assert!(resync["delta"].is_null(), "{resync:#}");
        assert_eq!(instance_ids(&resync).len(), 20, "20 launched + 1 - 1 terminated");
    }
}
