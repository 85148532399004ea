//! Live migrations through the real router, with both hosts played by
//! agent API calls (no VM): a migration whose target never says it is
//! ready is given up on after the prepare timeout, the instance stays on
//! its source, the target's claim is freed and the target is told to
//! remove its copy; a target that reports ready too late is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The host's view from the operators' host list.
async fn host(t: &T, id: &str) -> Value {
    let admin = t.admin.clone();
    let hosts = t.ok("GET", "/api/v1/hosts", &admin, None).await;
    hosts.as_array().and_then(|h| h.iter().find(|h| h["id"] == id).cloned()).expect("the host in the list")
}

#[tokio::test]
async fn a_target_that_never_gets_ready_is_given_up_on_and_the_instance_stays() {
    let t = T::with(|c| c.migration_prepare_timeout = Duration::from_secs(1)).await;
    let admin = t.admin.clone();
    let (h1, c1) = t.add_host_with_id().await;
    let (h2, c2) = t.add_host_with_id().await;
    let v = t
        .ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": "tiny", "vcpus": 2, "memory_mib": 512, "disk_gib": 1})),
        )
        .await;
    let id = v["id"].as_str().expect("an instance id").to_string();
    let placed = t.ok("GET", &format!("/api/v1/instances/{id}"), &admin, None).await;
    let (source, source_cred, target, target_cred) = if placed["host"] == h1.to_string() {
        (h1.to_string(), c1, h2.to_string(), c2)
    } else {
        (h2.to_string(), c2, h1.to_string(), c1)
    };
    let running = json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{source}/report"), &source_cred, Some(running)).await;

    let m = t.ok("POST", &format!("/api/v1/instances/{id}/migrate"), &admin, Some(json!({"to": target}))).await;
    let mid = m["id"].as_str().expect("a migration id").to_string();
    assert_eq!(m["state"], "preparing");
    assert_eq!(host(&t, &target).await["used_vcpus"], 2, "the target's capacity is claimed");
    let desired = t.ok("GET", &format!("/api/v1/agent/hosts/{target}/desired"), &target_cred, None).await;
    let copy = desired["instances"].as_array().and_then(|i| i.iter().find(|i| i["id"] == id.as_str()).cloned());
    assert_eq!(copy.expect("the target copy")["migration"]["role"], "target");

    // A young migration is left alone.
    nubo_controlplane::failover::expire_unready_migrations(&t.ctx).await.unwrap();
    let still = t.ok("GET", &format!("/api/v1/migrations/{mid}"), &admin, None).await;
    assert_eq!(still["state"], "preparing", "a migration younger than the timeout was failed");

    // The target never reports ready: once the timeout has passed, the
    // round fails it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = loop {
        nubo_controlplane::failover::expire_unready_migrations(&t.ctx).await.unwrap();
        let m = t.ok("GET", &format!("/api/v1/migrations/{mid}"), &admin, None).await;
        if m["state"] != "preparing" {
            break m;
        }
        assert!(Instant::now() < deadline, "the migration is still preparing: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed["state"], "failed");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("was not ready within 1 s") && error.contains("migrate again"), "{error}");

    // The instance stays on its source, running; the target's claim is
    // freed and the target is told to remove its copy.
    let after = t.ok("GET", &format!("/api/v1/instances/{id}"), &admin, None).await;
    assert_eq!(after["host"], source.as_str());
    assert_eq!(after["state"], "running");
    assert_eq!(host(&t, &target).await["used_vcpus"], 0, "the target's claim was not freed");
    assert_eq!(host(&t, &source).await["used_vcpus"], 2);
    let desired = t.ok("GET", &format!("/api/v1/agent/hosts/{target}/desired"), &target_cred, None).await;
    let copy = desired["instances"].as_array().and_then(|i| i.iter().find(|i| i["id"] == id.as_str()).cloned());
    assert_eq!(copy.expect("the copy to remove")["power"], "deleted");

    // A ready that comes too late is refused, and a second round changes nothing.
    let late = json!({"nbd_host": "127.0.0.1", "nbd_port": 10809, "migrate_uri": "tcp:127.0.0.1:4444"});
    let (status, _) =
        t.call("POST", &format!("/api/v1/agent/migrations/{mid}/ready"), Some(&target_cred), Some(late)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    nubo_controlplane::failover::expire_unready_migrations(&t.ctx).await.unwrap();
    assert_eq!(host(&t, &target).await["used_vcpus"], 0, "a second round released the claim twice");
    let events = t.ok("GET", &format!("/api/v1/instances/{id}"), &admin, None).await["events"].clone();
    assert!(events.to_string().contains("migration_failed"), "{events}");
}

/// `POST /instances/{id}/migrate`, to `to` or where placement chooses.
async fn migrate(t: &T, id: &str, to: Option<String>) -> (StatusCode, Value) {
    let body = match to {
        Some(to) => json!({"to": to}),
        None => json!({}),
    };
    t.call("POST", &format!("/api/v1/instances/{id}/migrate"), Some(t.admin.as_str()), Some(body)).await
}

/// Where a migration may go is placement's choice: never the instance's
/// own host, never a drained one; a refusal names each host's reason, and
/// a pinned target is explained alone.
#[tokio::test]
async fn a_migration_refusal_explains_each_host() {
    let t = T::new().await;
    let admin = t.admin.clone();
    let (source, source_cred) = t.add_host_with_id().await;
    let v = t
        .ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": "tiny", "vcpus": 2, "memory_mib": 512, "disk_gib": 1})),
        )
        .await;
    let id = v["id"].as_str().expect("an instance id").to_string();
    let running = json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{source}/report"), &source_cred, Some(running)).await;
    let migrate = |to: Option<String>| migrate(&t, &id, to);
    let message = |v: &Value| v["error"]["message"].as_str().unwrap_or_default().to_string();

    // Alone on its host: nowhere to go, and the refusal says why.
    let (status, v) = migrate(None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "no_valid_host");
    assert!(message(&v).contains("rejected by ExcludeFilter: the instance is already on it"), "{v}");
    let (status, v) = migrate(Some(source.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(message(&v).contains("already runs on"), "{v}");

    // A second host, drained: refused for that, by name when pinned.
    let (other, _) = t.add_host_with_id().await;
    t.ok("POST", &format!("/api/v1/hosts/{other}/drain"), &admin, None).await;
    let (status, v) = migrate(None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(message(&v).contains("ExcludeFilter") && message(&v).contains("HostStateFilter"), "{v}");
    let (status, v) = migrate(Some(other.to_string())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(message(&v), "host h1: host is down or disabled");

    // Enabled again, it is the choice.
    t.ok("POST", &format!("/api/v1/hosts/{other}/enable"), &admin, None).await;
    let (status, m) = migrate(None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{m}");
    assert_eq!(m["target_host"], other.to_string());
    assert_eq!(host(&t, &other.to_string()).await["used_vcpus"], 2, "the target's capacity is claimed");
}
