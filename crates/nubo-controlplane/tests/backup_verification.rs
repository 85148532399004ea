//! Verified backups through the REST API and the agent protocol (a
//! simulated host): a plan's `verify` marks completed backups pending
//! (`each`: all; `daily`: the first of the day); the backups round boots a
//! pending one as a throwaway instance (user-mode network, the original's
//! forwarded ports, copies of its checks, outside the project's quota),
//! judges it from what its host reports, records the verdict on the backup
//! and on the original's `backup-verification` check (which no host runs
//! and alert rules fire on), and removes the throwaway instance and checks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_controlplane::app::backup_verification::DEADLINE_MS;
use nubo_controlplane::background::backups::round;
use nubo_controlplane::store::now_ms;
use serde_json::{json, Value};
use sqlx::Connection;

/// A connection to the test's database (SQLite file or PostgreSQL).
async fn db(t: &T) -> sqlx::AnyConnection {
    let url = match &t.db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", t.data_dir().join("nubo.db").display()),
    };
    sqlx::AnyConnection::connect(&url).await.unwrap()
}

async fn report(t: &T, host: &str, cred: &str, instances: Value) {
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(json!({ "instances": instances }))).await;
}

fn running(id: &str, guest: bool) -> Value {
    let mut v = json!({"id": id, "power": "running", "pid": 1, "error": null});
    if guest {
        v["guest"] = json!({"updated_at_ms": now_ms(), "agent_version": "9.0"});
    }
    v
}

/// Runs a backup of `instance` for `plan` and has the host complete it; its id.
async fn backed_up(t: &T, host: &str, cred: &str, token: &str, instance: &str, plan: &str) -> String {
    let b = t.ok("POST", &format!("/api/v1/instances/{instance}/backups"), token, Some(json!({"plan": plan}))).await;
    let id = b["id"].as_str().unwrap().to_string();
    let (s, job) =
        t.call("POST", &format!("/api/v1/agent/hosts/{host}/backup-jobs"), Some(cred), Some(json!({}))).await;
    assert_eq!((s, job["backup_id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{job}");
    let done = json!({"bytes_done": 1u64 << 30, "consistency": "filesystem",
        "completed": [{"name": "root", "size_bytes": 1u64 << 30, "incremental": false, "full_reason": "first backup",
            "bytes_read": 1, "bytes_sent": 1, "bytes_stored": 1, "chunks": 1, "chunks_new": 1}]});
    let (s, v) = t.call("POST", &format!("/api/v1/agent/hosts/{host}/backup-jobs/{id}"), Some(cred), Some(done)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    id
}

async fn backup(t: &T, token: &str, id: &str) -> Value {
    t.ok("GET", &format!("/api/v1/backups/{id}"), token, None).await
}

async fn used_instances(t: &T) -> u64 {
    let projects = t.ok("GET", "/api/v1/projects", &t.admin, None).await;
    let p = projects.as_array().unwrap().iter().find(|p| p["name"] == "a").unwrap().clone();
    p["used"]["instances"].as_u64().unwrap()
}

/// The throwaway instance verifying `backup`.
async fn throwaway(t: &T, backup: &str) -> String {
    t.ctx.store.backup(backup).await.unwrap().unwrap().verify_instance_id.unwrap()
}

async fn checks_of(t: &T, target: &str) -> Vec<Value> {
    let all = t.ok("GET", "/api/v1/checks", &t.admin, None).await;
    all.as_array().unwrap().iter().filter(|c| c["target"] == target).cloned().collect()
}

async fn post_result(t: &T, host: &str, cred: &str, check: &str, status: u8, output: &str) {
    let body = json!({"results": [{"check_id": check, "status": status, "output": output, "perfdata": "", "at_ms": now_ms()}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/checks"), cred, Some(body)).await;
}

#[tokio::test]
async fn a_verification_boots_the_backup_judges_it_alerts_and_cleans_up() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let (h, cred) = t.add_host_with_id().await;
    let host = h.to_string();
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"name": "nfs", "location": {"kind": "dir", "path": dir.path().to_str().unwrap()}});
    assert_eq!(t.call("POST", "/api/v1/backup-repositories", Some(&t.admin), Some(body)).await.0, StatusCode::CREATED);
    // The project may have one instance: a verification needs none of it.
    t.ok("PUT", "/api/v1/projects/a/quota", &t.admin, Some(json!({"instances": 1}))).await;
    let i = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": [80], "tags": {"app": "web"}})),
        )
        .await;
    let i = i["id"].as_str().unwrap().to_string();
    report(&t, &host, &cred, json!([running(&i, true)])).await;
    let web = t
        .ok("POST", "/api/v1/checks", &t.admin, Some(json!({"name": "web", "target": i, "kind": "tcp", "port": 80})))
        .await;
    let web = web["id"].as_str().unwrap().to_string();
    assert_eq!(used_instances(&t).await, 1);
    for (name, verify) in [("every", "each"), ("once-a-day", "daily"), ("never", "none")] {
        let plan = json!({"name": name, "repository": "nfs", "selector": {"instances": [i]},
            "schedule": "0 3 * * *", "retention": {"last": 30}, "verify": verify});
        t.ok("POST", "/api/v1/backup-plans", &alice, Some(plan)).await;
    }
    t.ok(
        "POST",
        "/api/v1/alert-rules",
        &alice,
        Some(json!({"name": "backup-broken", "kind": "check", "target": i, "min_state": "CRITICAL"})),
    )
    .await;

    // Which backups are verified: each; the first of the day; none.
    let daily1 = backed_up(&t, &host, &cred, &alice, &i, "once-a-day").await;
    let daily2 = backed_up(&t, &host, &cred, &alice, &i, "once-a-day").await;
    let never = backed_up(&t, &host, &cred, &alice, &i, "never").await;
    assert_eq!(backup(&t, &alice, &daily1).await["verify"], "pending");
    assert_eq!(backup(&t, &alice, &daily2).await["verify"], "none", "not the first of the day");
    assert_eq!(backup(&t, &alice, &never).await["verify"], "none");
    // Only one verification at a time is needed here: the daily one is
    // settled first (a guest that answers, a check that passes).
    round(&t.ctx, now_ms()).await.unwrap();
    let d = throwaway(&t, &daily1).await;
    assert_eq!(backup(&t, &alice, &daily1).await["verify"], "running");
    report(&t, &host, &cred, json!([running(&i, true), running(&d, true)])).await;
    let copy = checks_of(&t, &d).await;
    post_result(&t, &host, &cred, copy[0]["id"].as_str().unwrap(), 0, "TCP OK - 0.001 second response time").await;
    round(&t.ctx, now_ms()).await.unwrap();
    let v = backup(&t, &alice, &daily1).await;
    assert_eq!(v["verify"], "verified", "{v}");
    report(&t, &host, &cred, json!([running(&i, true), {"id": d, "power": "deleted", "pid": null, "error": null}]))
        .await;

    // Each backup of `every`: pending, then a throwaway instance.
    let b1 = backed_up(&t, &host, &cred, &alice, &i, "every").await;
    assert_eq!(backup(&t, &alice, &b1).await["verify"], "pending");
    round(&t.ctx, now_ms()).await.unwrap();
    assert_eq!(backup(&t, &alice, &b1).await["verify"], "running");
    let v1 = throwaway(&t, &b1).await;
    let inst = t.ok("GET", &format!("/api/v1/instances/{v1}"), &alice, None).await;
    assert_eq!(inst["name"], format!("verify-{b1}"));
    assert_eq!(inst["tags"]["nubo:verification"], b1.as_str(), "{inst}");
    assert_eq!(inst["tags"]["app"], "web", "the recorded tags too");
    assert_eq!(inst["ports"].as_object().unwrap().keys().collect::<Vec<_>>(), ["80"], "{inst}");
    let of: Option<String> = sqlx::query_scalar("SELECT verification_of FROM instances WHERE id = $1")
        .bind(&v1)
        .fetch_one(&mut db(&t).await)
        .await
        .unwrap();
    assert_eq!(of.as_deref(), Some(b1.as_str()));
    let ports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM network_ports WHERE instance_id = $1")
        .bind(&v1)
        .fetch_one(&mut db(&t).await)
        .await
        .unwrap();
    assert_eq!(ports, 0, "user-mode networking only");
    assert_eq!(used_instances(&t).await, 1, "a verification instance is not counted against the quota");
    // The original's check, copied: every 5 s, hard at once; its host runs it.
    let copy = checks_of(&t, &v1).await;
    assert_eq!(copy.len(), 1, "{copy:?}");
    assert_eq!((copy[0]["name"].as_str(), copy[0]["kind"].as_str()), (Some("web"), Some("tcp")));
    assert_eq!((copy[0]["interval_secs"].as_u64(), copy[0]["max_attempts"].as_u64()), (Some(5), Some(1)));
    let copy = copy[0]["id"].as_str().unwrap().to_string();
    // Booting: no verdict yet.
    report(&t, &host, &cred, json!([running(&i, true), running(&v1, false)])).await;
    let hc = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/checks"), &cred, None).await;
    let ids: Vec<&str> = hc["checks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&copy.as_str()) && ids.contains(&web.as_str()), "{hc}");
    round(&t.ctx, now_ms()).await.unwrap();
    assert_eq!(backup(&t, &alice, &b1).await["verify"], "running");
    // The guest answers, its check fails (long enough after the boot), and the console has said things.
    report(&t, &host, &cred, json!([running(&i, true), running(&v1, true)])).await;
    sqlx::query("UPDATE instance_events SET at_ms = at_ms - 60000 WHERE instance_id = $1 AND stage = 'state_running'")
        .bind(&v1)
        .execute(&mut db(&t).await)
        .await
        .unwrap();
    let console: String = (1..=12).map(|n| format!("boot line {n}\n")).collect();
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/v1/agent/instances/{v1}/console"),
            Some(&cred),
            Some(json!({"host_id": host, "offset": 0, "raw_len": console.len(), "data": console})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    post_result(&t, &host, &cred, &copy, 2, "connect to address 127.0.0.1 and port 20001: Connection refused").await;
    round(&t.ctx, now_ms()).await.unwrap();
    let v = backup(&t, &alice, &b1).await;
    assert_eq!(v["verify"], "failed", "{v}");
    let detail = v["verify_detail"].as_str().unwrap();
    assert!(detail.starts_with("check web is CRITICAL: connect to address"), "{detail}");
    assert!(detail.contains("boot line 3\n") && detail.ends_with("boot line 12"), "{detail}");
    assert!(!detail.contains("boot line 2\n"), "the last 10 lines only: {detail}");
    // Cleaned up: the copied check is gone, the instance is to be deleted.
    assert!(checks_of(&t, &v1).await.is_empty());
    assert_eq!(t.ctx.store.instance(&v1).await.unwrap().unwrap().desired.as_str(), "deleted");
    report(&t, &host, &cred, json!([running(&i, true), {"id": v1, "power": "deleted", "pid": null, "error": null}]))
        .await;
    assert_eq!(t.ok("GET", &format!("/api/v1/instances/{v1}"), &alice, None).await["state"], "terminated");
    assert_eq!(used_instances(&t).await, 1, "terminating it gave back nothing it had not taken");

    // The result is on the original's backup-verification check, which no
    // host runs, and the alert rule fires on it.
    let bv = checks_of(&t, &i).await.into_iter().find(|c| c["name"] == "backup-verification").unwrap();
    assert_eq!(
        (bv["kind"].as_str(), bv["state"].as_str(), bv["state_type"].as_str()),
        (Some("backup_verification"), Some("CRITICAL"), Some("HARD"))
    );
    assert!(
        bv["output"].as_str().unwrap().starts_with(&format!("backup {b1} failed verification: check web is CRITICAL")),
        "{bv}"
    );
    let hc = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/checks"), &cred, None).await;
    assert!(!hc["checks"].as_array().unwrap().iter().any(|c| c["id"] == bv["id"]), "no host runs it: {hc}");
    nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    let alerts = t.ok("GET", "/api/v1/alerts", &alice, None).await;
    assert_eq!(alerts.as_array().unwrap().len(), 1, "{alerts}");

    // A verification that never gets anywhere fails at the deadline.
    let b2 = backed_up(&t, &host, &cred, &alice, &i, "every").await;
    round(&t.ctx, now_ms()).await.unwrap();
    let v2 = throwaway(&t, &b2).await;
    round(&t.ctx, now_ms() + DEADLINE_MS).await.unwrap();
    let v = backup(&t, &alice, &b2).await;
    assert_eq!(v["verify"], "failed", "{v}");
    assert!(v["verify_detail"].as_str().unwrap().starts_with("not verified within 5 minutes"), "{v}");
    assert_eq!(t.ctx.store.instance(&v2).await.unwrap().unwrap().desired.as_str(), "deleted");

    // A verified backup sets the check OK again.
    let b3 = backed_up(&t, &host, &cred, &alice, &i, "every").await;
    round(&t.ctx, now_ms()).await.unwrap();
    let v3 = throwaway(&t, &b3).await;
    report(&t, &host, &cred, json!([running(&i, true), running(&v3, true)])).await;
    let copy = checks_of(&t, &v3).await;
    post_result(&t, &host, &cred, copy[0]["id"].as_str().unwrap(), 0, "TCP OK").await;
    round(&t.ctx, now_ms()).await.unwrap();
    let v = backup(&t, &alice, &b3).await;
    assert_eq!(v["verify"], "verified", "{v}");
    assert!(v["verify_detail"].as_str().unwrap().contains("checks passed: web (TCP OK)"), "{v}");
    let bv = checks_of(&t, &i).await.into_iter().find(|c| c["name"] == "backup-verification").unwrap();
    assert_eq!(bv["state"], "OK");
    assert!(bv["output"].as_str().unwrap().starts_with(&format!("backup {b3} verified: ")), "{bv}");
    assert_eq!(checks_of(&t, &i).await.len(), 2, "one backup-verification check per instance, beside web");

    // A backup deleted while it is verified takes its throwaway instance along.
    let b4 = backed_up(&t, &host, &cred, &alice, &i, "every").await;
    round(&t.ctx, now_ms()).await.unwrap();
    let v4 = throwaway(&t, &b4).await;
    assert_eq!(checks_of(&t, &v4).await.len(), 1);
    t.ok("DELETE", &format!("/api/v1/backups/{b4}"), &alice, None).await;
    round(&t.ctx, now_ms()).await.unwrap();
    assert_eq!(t.ctx.store.instance(&v4).await.unwrap().unwrap().desired.as_str(), "deleted");
    assert!(checks_of(&t, &v4).await.is_empty());
}
