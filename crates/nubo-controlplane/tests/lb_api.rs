//! Load balancers through the real router, with hosts played by agent
//! API calls (no VM): validation at the edge, placement on the targets'
//! host with a port of its forwarded range that instances never get, the
//! host's desired state with backends resolved to the instances'
//! forwards (a group's members join as it scales), the host's report in
//! the view, one host per balancer, and tenancy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::{json, Value};

async fn instance(t: &T, token: &str, ports: &[u16]) -> Value {
    t.ok(
        "POST",
        "/api/v1/instances",
        token,
        Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": ports})),
    )
    .await
}

async fn desired(t: &T, host: &str, cred: &str) -> Value {
    t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await
}

#[tokio::test]
async fn a_balancer_is_validated_placed_resolved_and_reported() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let admin = t.admin.clone();
    let a = instance(&t, &admin, &[80]).await;
    let b = instance(&t, &admin, &[80, 22]).await;
    let no_port = instance(&t, &admin, &[22]).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    // Refused at the edge, saying why.
    let cases = [
        (json!({"name": "web", "port": 80}), StatusCode::BAD_REQUEST, "needs targets"),
        (
            json!({"name": "web", "port": 80, "targets": [a_id], "algorithm": "fastest"}),
            StatusCode::BAD_REQUEST,
            "least-loaded",
        ),
        (json!({"name": "web", "port": 80, "targets": [no_port["id"]]}), StatusCode::BAD_REQUEST, "--port 80"),
        (json!({"name": "web", "port": 80, "group": "nope"}), StatusCode::BAD_REQUEST, "does not exist"),
        (
            json!({"name": "web", "port": 80, "targets": ["i-0123456789abcdef0"]}),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            json!({"name": "web", "port": 80, "targets": [a_id], "surprise": 1}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ];
    for (body, status, want) in cases {
        let (s, v) = t.call("POST", "/api/v1/load-balancers", Some(&admin), Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(want), "{body}: {v}");
    }

    let lb = t
        .ok(
            "POST",
            "/api/v1/load-balancers",
            &admin,
            Some(json!({"name": "web", "port": 80, "targets": [a_id, b_id], "algorithm": "least-loaded",
                "weights": {b_id: 3}, "health_check": {"path": "/healthz", "interval_secs": 1}})),
        )
        .await;
    assert_eq!((lb["state"].as_str(), lb["host_id"].as_str()), (Some("pending"), Some(host.as_str())));
    assert_eq!(lb["health_check"]["timeout_secs"], 1, "defaults filled in: {lb}");
    let listen = lb["listen"].as_str().unwrap().to_string();
    let lb_port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let forwards: Vec<String> = [&a, &b, &no_port]
        .iter()
        .flat_map(|i| i["ports"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()))
        .collect();
    assert!(!forwards.contains(&listen), "{listen} is not an instance's forward: {forwards:?}");
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/load-balancers",
            Some(&admin),
            Some(json!({"name": "web", "port": 80, "targets": [a_id]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // An instance launched afterwards never gets the balancer's port.
    let later = instance(&t, &admin, &[80, 81, 82, 83]).await;
    assert!(later["ports"].as_object().unwrap().values().all(|v| v.as_str() != Some(listen.as_str())), "{later}");

    // The host is told to run it, backends resolved to the instances' forwards.
    let d = desired(&t, &host, &cred).await;
    let bal = &d["balancers"][0];
    assert_eq!(
        (bal["listen_port"].as_u64(), bal["algorithm"].as_str()),
        (Some(u64::from(lb_port)), Some("least-loaded"))
    );
    let backends = bal["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{bal}");
    assert_eq!(backends[0]["address"], a["ports"]["80"]);
    assert_eq!((backends[1]["address"].clone(), backends[1]["weight"].as_u64()), (b["ports"]["80"].clone(), Some(3)));
    assert_eq!(bal["health_check"]["path"], "/healthz");

    // The host's report shows in the view.
    let report = json!({"instances": [], "balancers": [{"id": lb["id"], "state": "active", "error": null, "started_at_ms": 1234,
        "backends": [{"instance_id": a_id, "address": a["ports"]["80"], "weight": 1, "health": "up", "requests": 7, "errors": 1, "in_flight": 2, "cpu_percent": 12.5, "last_error": null},
                     {"instance_id": b_id, "address": b["ports"]["80"], "weight": 3, "health": "down", "requests": 0, "errors": 0, "in_flight": 0, "cpu_percent": null, "last_error": "GET /healthz answered 500"}]}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report)).await;
    let v = t.ok("GET", "/api/v1/load-balancers/web", &admin, None).await;
    assert_eq!((v["state"].as_str(), v["started_at_ms"].as_i64()), (Some("active"), Some(1234)));
    assert_eq!(
        (v["backends"][0]["requests"].as_u64(), v["backends"][0]["cpu_percent"].as_f64()),
        (Some(7), Some(12.5))
    );
    assert_eq!(v["backends"][1]["health"], "down");
    let by_id = t.ok("GET", &format!("/api/v1/load-balancers/{}", lb["id"].as_str().unwrap()), &admin, None).await;
    assert_eq!(by_id["name"], "web");

    // A stopped target leaves the backends (the host drains it).
    t.ok("POST", &format!("/api/v1/instances/{a_id}/stop"), &admin, None).await;
    let d = desired(&t, &host, &cred).await;
    assert_eq!(d["balancers"][0]["backends"].as_array().unwrap().len(), 1);
    let v = t.ok("GET", "/api/v1/load-balancers/web", &admin, None).await;
    assert_eq!(v["backends"][0]["health"], "not running", "{v}");

    // Deleted: gone from the host's desired state, and its port is free again.
    let (s, _) = t.call("DELETE", "/api/v1/load-balancers/web", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(desired(&t, &host, &cred).await["balancers"].as_array().unwrap().len(), 0);
    let (s, _) = t.call("GET", "/api/v1/load-balancers/web", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(t.audit().await.iter().any(|e| e["path"] == "/api/v1/load-balancers" && e["method"] == "POST"));
}

#[tokio::test]
async fn a_group_balancer_follows_the_group_and_targets_must_share_a_host() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let admin = t.admin.clone();
    let group = json!({"name": "web", "min": 1, "max": 3,
        "template": {"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": [80]}});
    t.ok("POST", "/api/v1/groups", &admin, Some(group)).await;
    let (s, v) = t
        .call("POST", "/api/v1/load-balancers", Some(&admin), Some(json!({"name": "g", "port": 8080, "group": "web"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("template's ports"), "{v}");
    let lb = t
        .ok(
            "POST",
            "/api/v1/load-balancers",
            &admin,
            Some(json!({"name": "g", "port": 80, "group": "web", "protocol": "tcp"})),
        )
        .await;
    assert_eq!(lb["health_check"]["path"], Value::Null, "tcp checks connect");
    let count = |d: &Value| d["balancers"][0]["backends"].as_array().unwrap().len();
    assert_eq!(count(&desired(&t, &host, &cred).await), 1);
    t.ok("POST", "/api/v1/groups/web/desired", &admin, Some(json!({"desired": 3}))).await;
    assert_eq!(count(&desired(&t, &host, &cred).await), 3, "new members join the balancer");
    t.ok("POST", "/api/v1/groups/web/desired", &admin, Some(json!({"desired": 2}))).await;
    assert_eq!(count(&desired(&t, &host, &cred).await), 2, "and leave it");

    // A second host: targets on two hosts cannot share a balancer.
    t.add_host_with_id().await;
    let one = instance(&t, &admin, &[80]).await;
    let member = desired(&t, &host, &cred).await["balancers"][0]["backends"][0]["instance_id"].clone();
    let member = t.ok("GET", &format!("/api/v1/instances/{}", member.as_str().unwrap()), &admin, None).await;
    assert_ne!(one["host"], member["host"], "the scheduler spreads to the empty host");
    {
        let (s, v) = t
            .call(
                "POST",
                "/api/v1/load-balancers",
                Some(&admin),
                Some(json!({"name": "x", "port": 80, "targets": [one["id"]], "group": "web"})),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("must be on one host"), "{v}");
    }
}

#[tokio::test]
async fn balancers_are_per_project() {
    let t = T::new().await;
    let (_host, _cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "a", "member").await;
    let bob = t.user("bob", "b", "member").await;
    let reader = t.user("rita", "a", "reader").await;
    let mine = instance(&t, &alice, &[80]).await;
    let theirs = instance(&t, &bob, &[80]).await;
    // Bob cannot put Alice's instance behind his balancer: it does not exist for him.
    let (s, _) = t
        .call(
            "POST",
            "/api/v1/load-balancers",
            Some(&bob),
            Some(json!({"name": "x", "port": 80, "targets": [mine["id"]]})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let lb = t
        .ok("POST", "/api/v1/load-balancers", &alice, Some(json!({"name": "web", "port": 80, "targets": [mine["id"]]})))
        .await;
    t.ok("POST", "/api/v1/load-balancers", &bob, Some(json!({"name": "web", "port": 80, "targets": [theirs["id"]]})))
        .await;
    let id = lb["id"].as_str().unwrap();
    let v = t.ok("GET", "/api/v1/load-balancers/web", &bob, None).await;
    assert_ne!(v["id"], lb["id"], "bob's 'web' is his own, never alice's");
    let (s, _) = t.call("GET", &format!("/api/v1/load-balancers/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "by id: not found across projects");
    let (s, _) = t.call("DELETE", &format!("/api/v1/load-balancers/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(t.ok("GET", "/api/v1/load-balancers", &bob, None).await.as_array().unwrap().len(), 1);
    assert_eq!(t.ok("GET", "/api/v1/load-balancers", &reader, None).await.as_array().unwrap().len(), 1);
    let (s, _) = t.call("DELETE", "/api/v1/load-balancers/web", Some(&reader), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a reader cannot delete");
    let (s, _) = t
        .call(
            "POST",
            "/api/v1/load-balancers",
            Some(&reader),
            Some(json!({"name": "r", "port": 80, "targets": [mine["id"]]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let admin = t.admin.clone();
    assert_eq!(
        t.ok("GET", "/api/v1/load-balancers", &admin, None).await.as_array().unwrap().len(),
        2,
        "operators see all"
    );
    let (s, _) = t.call("GET", "/api/v1/load-balancers", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
