//! Policies and groups through the real router, with a host played by
//! agent API calls (no VM): a breach fires once, and again only after it
//! cleared; the firing's saga creates exactly one volume even when its
//! steps are replayed and the control plane restarts halfway; a dry run
//! makes nothing; an action that cannot succeed is retried, then marked
//! failed; a group launches its members, replaces one in error and
//! scales in by terminating the newest.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_controlplane::store::now_ms;
use nubo_controlplane::{policies, Ctx};
use serde_json::{json, Value};

async fn instance(t: &T) -> String {
    let admin = t.admin.clone();
    let v = t
        .ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    v["id"].as_str().unwrap().to_string()
}

async fn report(t: &T, host: &str, cred: &str, body: Value) {
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(body)).await;
}

async fn metric(t: &T, host: &str, cred: &str, id: &str, name: &str, value: f64) {
    let b = json!({"samples": [{"resource": id, "metric": name, "at_ms": now_ms(), "value": value}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/metrics"), cred, Some(b)).await;
}

async fn firings(t: &T, policy: &str) -> Vec<Value> {
    let admin = t.admin.clone();
    t.ok("GET", &format!("/api/v1/policies/{policy}"), &admin, None).await["firings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Plays the host: every volume it is asked for exists, every attachment is seen by the guest.
async fn host_round(t: &T, host: &str, cred: &str, instance: &str) {
    let d = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await;
    let volumes: Vec<Value> = d["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| json!({"id": v["id"], "state": "available", "size_gib": v["size_gib"], "error": null}))
        .collect();
    let inst = d["instances"].as_array().unwrap().iter().find(|i| i["id"] == instance).cloned().unwrap();
    let attached: Vec<Value> = inst["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| json!({"volume_id": a["volume_id"], "state": "attached", "guest_device": "/dev/vdc", "guest_size_bytes": a["size_gib"].as_u64().unwrap() << 30, "error": null}))
        .collect();
    let body = json!({"instances": [{"id": instance, "power": "running", "pid": 1, "error": null, "volumes": attached}], "volumes": volumes});
    report(t, host, cred, body).await;
}

#[tokio::test]
async fn a_breach_fires_once_and_its_saga_makes_one_volume_across_a_restart() {
    let mut t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let admin = t.admin.clone();
    let id = instance(&t).await;
    report(&t, &host, &cred, json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]})).await;

    // Bad documents are refused, saying why.
    let (s, v) = t.call("POST", "/api/v1/policies", Some(&admin), Some(json!({"name": "x", "scope": {}, "condition": {"metric": "cpu", "op": ">", "threshold": 1}, "actions": ["reboot"]}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("exactly one"), "{v}");

    let doc = json!({"name": "grow", "scope": {"instance": id},
        "condition": {"metric": "fs_used_percent", "op": ">=", "threshold": 80, "hysteresis": 5},
        "actions": [{"attach_volume": {"size_gib": 20}}]});
    t.ok("POST", "/api/v1/policies", &admin, Some(doc)).await;
    let dry = json!({"name": "grow-dry", "scope": {"instance": id},
        "condition": {"metric": "fs_used_percent", "op": ">=", "threshold": 80}, "actions": [{"attach_volume": {"size_gib": 20}}], "dry_run": true});
    t.ok("POST", "/api/v1/policies", &admin, Some(dry)).await;

    metric(&t, &host, &cred, &id, "fs_used_percent", 85.0).await;
    for _ in 0..3 {
        policies::run_round(&t.ctx).await.unwrap();
    }
    assert_eq!(firings(&t, "grow").await.len(), 1, "one breach, one firing");
    let d = firings(&t, "grow-dry").await;
    assert_eq!(
        (d.len(), d[0]["state"].as_str(), d[0]["actions"][0]["state"].as_str()),
        (1, Some("succeeded"), Some("skipped"))
    );
    assert_eq!(d[0]["values"][&id], 85.0);

    // A few steps of the saga, then a restart of the control plane.
    policies::execute(&t.ctx).await.unwrap(); // records the volume id
    policies::execute(&t.ctx).await.unwrap(); // creates the volume
    let restarted = Ctx::new(t.config()).await.unwrap();
    drop(std::mem::replace(&mut t.ctx, restarted));
    for _ in 0..6 {
        t.ctx.store.make_firings_due().await.unwrap();
        policies::execute(&t.ctx).await.unwrap();
        host_round(&t, &host, &cred, &id).await;
    }
    let f = firings(&t, "grow").await;
    assert_eq!(f[0]["state"], "succeeded", "{f:?}");
    assert!(f[0]["actions"][0]["result"].as_str().unwrap().contains("attached as /dev/vdc"), "{f:?}");
    let vols = t.ok("GET", "/api/v1/volumes", &admin, None).await;
    assert_eq!(vols.as_array().unwrap().len(), 1, "replayed steps made one volume: {vols}");
    assert_eq!(vols[0]["attachment"]["instance_id"], id.as_str());

    // Hovering inside the hysteresis band is the same breach; clearing it starts a new one.
    metric(&t, &host, &cred, &id, "fs_used_percent", 78.0).await;
    policies::run_round(&t.ctx).await.unwrap();
    metric(&t, &host, &cred, &id, "fs_used_percent", 82.0).await;
    policies::run_round(&t.ctx).await.unwrap();
    assert_eq!(firings(&t, "grow").await.len(), 1);
    metric(&t, &host, &cred, &id, "fs_used_percent", 60.0).await;
    policies::run_round(&t.ctx).await.unwrap();
    metric(&t, &host, &cred, &id, "fs_used_percent", 90.0).await;
    policies::run_round(&t.ctx).await.unwrap();
    assert_eq!(firings(&t, "grow").await.len(), 2, "a new breach fires again");
}

#[tokio::test]
async fn an_action_that_cannot_succeed_is_retried_then_failed() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let admin = t.admin.clone();
    let id = instance(&t).await;
    report(&t, &host, &cred, json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]})).await;
    // Bigger than the host's pool (1000 GiB): it can never be created.
    let doc = json!({"name": "huge", "scope": {"instance": id}, "condition": {"metric": "cpu", "op": ">", "threshold": 50},
        "actions": [{"attach_volume": {"size_gib": 5000}}]});
    t.ok("POST", "/api/v1/policies", &admin, Some(doc)).await;
    metric(&t, &host, &cred, &id, "cpu_percent", 99.0).await;
    policies::run_round(&t.ctx).await.unwrap();
    for _ in 0..(policies::MAX_ATTEMPTS + 2) {
        t.ctx.store.make_firings_due().await.unwrap();
        policies::execute(&t.ctx).await.unwrap();
    }
    let f = firings(&t, "huge").await;
    let a = &f[0]["actions"][0];
    assert_eq!(
        (f[0]["state"].as_str(), a["state"].as_str(), a["attempts"].as_u64()),
        (Some("failed"), Some("failed"), Some(policies::MAX_ATTEMPTS)),
        "{f:?}"
    );
    assert!(a["error"].as_str().unwrap().contains("storage pool"), "{a}");
    let events = t.ok("GET", "/api/v1/events", &admin, None).await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "policy_done" && e["message"].as_str().unwrap().contains("failed")));
}

#[tokio::test]
async fn a_group_keeps_its_count_replaces_a_broken_member_and_scales_in_newest_first() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let admin = t.admin.clone();
    let g = json!({"name": "web", "min": 1, "max": 3, "desired": 2,
        "template": {"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": [80]},
        "health_check": {"kind": "tcp", "port": 80}});
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"name": "bad", "min": 3, "max": 1, "template": g["template"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let created = t.ok("POST", "/api/v1/groups", &admin, Some(g)).await;
    let members: Vec<String> =
        created["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(members.len(), 2, "{created}");
    // Members carry the group's tag and health check.
    let i = t.ok("GET", &format!("/api/v1/instances/{}", members[0]), &admin, None).await;
    assert_eq!(i["tags"]["nubo:group"], "web");
    assert_eq!(i["name"], "web-1");
    let checks = t.ok("GET", "/api/v1/checks", &admin, None).await;
    assert_eq!(checks.as_array().unwrap().iter().filter(|c| c["name"] == "group-health").count(), 2);

    // One member's VM fails: it is replaced.
    let running: Vec<Value> =
        members.iter().map(|m| json!({"id": m, "power": "running", "pid": 1, "error": null})).collect();
    report(&t, &host, &cred, json!({"instances": running})).await;
    report(
        &t,
        &host,
        &cred,
        json!({"instances": [{"id": members[0], "power": "error", "pid": null, "error": "QEMU died"}]}),
    )
    .await;
    nubo_controlplane::groups::reconcile(&t.ctx).await.unwrap();
    let g = t.ok("GET", "/api/v1/groups/web", &admin, None).await;
    let now: Vec<String> =
        g["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&members[0]) && now.contains(&members[1]), "{g}");
    assert!(g["activities"].as_array().unwrap().iter().any(|a| a["kind"] == "replace"), "{g}");

    // Scale in to 1: the newest goes.
    t.ok("POST", "/api/v1/groups/web/desired", &admin, Some(json!({"desired": 1}))).await;
    let g = t.ok("GET", "/api/v1/groups/web", &admin, None).await;
    let left: Vec<&str> = g["members"].as_array().unwrap().iter().map(|m| m["instance_id"].as_str().unwrap()).collect();
    assert_eq!(left, vec![members[1].as_str()], "the oldest stays: {g}");
    let (s, _) = t.call("POST", "/api/v1/groups/web/desired", Some(&admin), Some(json!({"desired": 7}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "outside min and max");

    // A scale policy moves the desired count within the bounds.
    let p = json!({"name": "out", "scope": {"group": "web"}, "condition": {"metric": "cpu", "aggregate": "avg", "op": ">", "threshold": 70},
        "actions": [{"scale": {"by": 5}}]});
    t.ok("POST", "/api/v1/policies", &admin, Some(p)).await;
    report(&t, &host, &cred, json!({"instances": [{"id": members[1], "power": "running", "pid": 1, "error": null}]}))
        .await;
    metric(&t, &host, &cred, &members[1], "cpu_percent", 95.0).await;
    policies::run_round(&t.ctx).await.unwrap();
    for _ in 0..3 {
        policies::execute(&t.ctx).await.unwrap();
    }
    let g = t.ok("GET", "/api/v1/groups/web", &admin, None).await;
    assert_eq!(g["desired"], 3, "clamped to max: {g}");
}
