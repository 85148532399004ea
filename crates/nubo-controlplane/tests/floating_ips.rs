//! External networks and floating IPs through the REST API, on the
//! in-process harness: who may create an external network, what a
//! project sees of a shared one, the pool and the quota, and that no
//! project can see, use or release another's floating IP or point one at
//! another's instance.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::json;

fn external(name: &str, pool: &str) -> serde_json::Value {
    json!({"name": name, "cidr": "192.168.50.0/24",
        "external": {"interface": "lan", "gateway": "192.168.50.1", "pool": pool}})
}

#[tokio::test]
async fn external_networks_and_floating_ips_stay_within_their_project() {
    let t = T::new().await;
    t.add_bridging_host(&["lan"]).await;
    let alice = t.user("alice", "team-a", "member").await;
    let bob = t.user("bob", "team-b", "member").await;
    let admin = t.admin.clone();

    // Only an operator makes an external network; bad input says what to do.
    let (s, v) =
        t.call("POST", "/api/v1/networks", Some(&alice), Some(external("lan", "192.168.50.100-192.168.50.103"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    for (pool, needle) in [
        ("192.168.50.100", "is not FIRST-LAST"),
        ("192.168.50.100-192.168.51.3", "must be at least two addresses"),
        ("192.168.50.0-192.168.50.3", "must be at least two addresses"),
    ] {
        let (s, v) = t.call("POST", "/api/v1/networks", Some(&admin), Some(external("lan", pool))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{pool}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{pool}: {v}");
    }
    let mut inside = external("lan", "192.168.50.1-192.168.50.3");
    inside["external"]["pool"] = json!("192.168.50.1-192.168.50.3");
    let (s, v) = t.call("POST", "/api/v1/networks", Some(&admin), Some(inside)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "the gateway inside the pool: {v}");
    let net = t.ok("POST", "/api/v1/networks", &admin, Some(external("lan", "192.168.50.100-192.168.50.103"))).await;
    assert_eq!(net["external"]["interface"], "lan");

    // Every project sees it, none may change it.
    for who in [&alice, &bob] {
        let list = t.ok("GET", "/api/v1/networks", who, None).await;
        assert!(list.as_array().unwrap().iter().any(|n| n["name"] == "lan"), "{list}");
    }
    let (s, _) = t.call("DELETE", "/api/v1/networks/lan", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Floating IPs come from the pool less its first address; private networks have none.
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "blue", "cidr": "10.30.0.0/24"}))).await;
    let (s, v) = t.call("POST", "/api/v1/floating-ips", Some(&alice), Some(json!({"network": "blue"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fip = t.ok("POST", "/api/v1/floating-ips", &alice, Some(json!({"network": "lan"}))).await;
    assert_eq!(fip["address"], "192.168.50.101");
    let fid = fip["id"].as_str().unwrap().to_string();

    // Alice's instances: one on her private network, one on nothing.
    let launch = |net: Option<&str>| {
        let mut body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1});
        if let Some(n) = net {
            body["networks"] = json!([n]);
        }
        body
    };
    let on_blue = t.ok("POST", "/api/v1/instances", &alice, Some(launch(Some("blue")))).await;
    let on_blue = on_blue["id"].as_str().unwrap().to_string();
    let bobs = t.ok("POST", "/api/v1/instances", &bob, Some(launch(None))).await;
    let bobs = bobs["id"].as_str().unwrap().to_string();

    // Bob cannot see, use or release Alice's floating IP, by id or address,
    // nor can Alice point it at Bob's instance.
    for path in [format!("/api/v1/floating-ips/{fid}"), "/api/v1/floating-ips/192.168.50.101".to_string()] {
        let (s, _) = t.call("GET", &path, Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        let (s, _) = t.call("DELETE", &path, Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = t
        .call("POST", &format!("/api/v1/floating-ips/{fid}/associate"), Some(&bob), Some(json!({"instance": bobs})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .call("POST", &format!("/api/v1/floating-ips/{fid}/associate"), Some(&alice), Some(json!({"instance": bobs})))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another project's instance");
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &bob, None).await, json!([]));

    // Associated: the instance shows both addresses; a second one is refused.
    let v = t
        .ok("POST", &format!("/api/v1/floating-ips/{fid}/associate"), &alice, Some(json!({"instance": on_blue})))
        .await;
    assert_eq!(v["private_address"], "10.30.0.2");
    let i = t.ok("GET", &format!("/api/v1/instances/{on_blue}"), &alice, None).await;
    assert_eq!(i["addresses"][0]["address"], "10.30.0.2");
    assert_eq!(i["addresses"][0]["floating_ip"], "192.168.50.101");
    let second = t.ok("POST", "/api/v1/floating-ips", &alice, Some(json!({"network": "lan"}))).await;
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/v1/floating-ips/{}/associate", second["id"].as_str().unwrap()),
            Some(&alice),
            Some(json!({"instance": on_blue})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // The pool has three addresses after the service one: the third, then nothing.
    t.ok("POST", "/api/v1/floating-ips", &bob, Some(json!({"network": "lan"}))).await;
    let (s, v) = t.call("POST", "/api/v1/floating-ips", Some(&bob), Some(json!({"network": "lan"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no free address"), "{v}");

    // The quota: Alice's project may hold one more than it has; then no more.
    t.ok("PUT", "/api/v1/projects/team-a/quota", &admin, Some(json!({"floating_ips": 2}))).await;
    t.ok("DELETE", &format!("/api/v1/floating-ips/{}", second["id"].as_str().unwrap()), &alice, None).await;
    t.ok("POST", "/api/v1/floating-ips", &alice, Some(json!({"network": "lan"}))).await;
    let (s, v) = t.call("POST", "/api/v1/floating-ips", Some(&alice), Some(json!({"network": "lan"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("quota"), "{v}");

    // Terminating the instance leaves the address with the project, pointing nowhere.
    t.ok("DELETE", &format!("/api/v1/instances/{on_blue}"), &alice, None).await;
    let v = t.ok("GET", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
    assert_eq!(v["instance_id"], serde_json::Value::Null, "{v}");
}

#[tokio::test]
async fn a_balancer_on_a_network_holds_its_floating_ip_and_no_other_project_s() {
    let t = T::new().await;
    t.add_bridging_host(&["lan"]).await;
    let alice = t.user("alice", "team-a", "member").await;
    let bob = t.user("bob", "team-b", "member").await;
    let admin = t.admin.clone();
    t.ok("POST", "/api/v1/networks", &admin, Some(external("lan", "192.168.50.100-192.168.50.110"))).await;
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "blue", "cidr": "10.30.0.0/24"}))).await;
    t.ok("POST", "/api/v1/networks", &bob, Some(json!({"name": "red", "cidr": "10.30.0.0/24"}))).await;
    let target = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": ["blue"]})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mine = t.ok("POST", "/api/v1/floating-ips", &alice, Some(json!({"network": "lan"}))).await;
    let bobs = t.ok("POST", "/api/v1/floating-ips", &bob, Some(json!({"network": "lan"}))).await;
    let lb = |fip: &str, net: &str| json!({"name": "web", "port": 80, "targets": [target], "network": net, "floating_ip": fip});

    // Another project's floating IP or network is not there for Alice.
    let (s, v) =
        t.call("POST", "/api/v1/load-balancers", Some(&alice), Some(lb(bobs["id"].as_str().unwrap(), "blue"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) =
        t.call("POST", "/api/v1/load-balancers", Some(&alice), Some(lb(mine["id"].as_str().unwrap(), "red"))).await;
    assert!(s == StatusCode::NOT_FOUND || s == StatusCode::BAD_REQUEST, "Bob's network: {s} {v}");
    // A target off the network is refused, saying why.
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/load-balancers",
            Some(&alice),
            Some(json!({"name": "web", "port": 80, "targets": [target], "network": "lan", "floating_ip": mine["id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("external"), "{v}");

    let created = t.ok("POST", "/api/v1/load-balancers", &alice, Some(lb(mine["id"].as_str().unwrap(), "blue"))).await;
    assert_eq!(created["listen"], format!("{}:80", mine["address"].as_str().unwrap()), "{created}");
    assert_eq!(created["address"], "10.30.0.3", "the next free address after the target's");
    assert!(created["backends"].as_array().unwrap().iter().any(|b| b["address"] == "10.30.0.2:80"), "{created}");
    // A launch after it does not take the balancer's address.
    let next = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": ["blue"]})),
        )
        .await;
    assert_eq!(next["addresses"][0]["address"], "10.30.0.4", "{next}");

    // The floating IP is the balancer's while it exists.
    let fid = mine["id"].as_str().unwrap();
    let shown = t.ok("GET", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
    assert_eq!(shown["load_balancer_id"], created["id"], "{shown}");
    assert_eq!(shown["private_address"], "10.30.0.3");
    let (s, _) = t
        .call("POST", &format!("/api/v1/floating-ips/{fid}/associate"), Some(&alice), Some(json!({"instance": target})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = t.call("DELETE", &format!("/api/v1/floating-ips/{fid}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = t
        .call(
            "POST",
            "/api/v1/load-balancers",
            Some(&alice),
            Some(json!({"name": "web2", "port": 80, "targets": [target], "network": "blue", "floating_ip": fid})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "one floating IP, one user");
    // Deleted, the balancer leaves the floating IP to the project.
    t.ok("DELETE", "/api/v1/load-balancers/web", &alice, None).await;
    let shown = t.ok("GET", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
    assert_eq!(shown["load_balancer_id"], serde_json::Value::Null, "{shown}");
    t.ok("DELETE", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
}
