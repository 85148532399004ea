//! Addresses assigned automatically (EC2's public IP of a default subnet,
//! `nubo up`'s host network): an external network marked `auto_assign`
//! gives each instance launched on its project's default network an
//! address of its own. It counts against no quota, goes with its instance,
//! gives way to an address of the project's own, and is never someone
//! else's to move. At most one network assigns automatically.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::json;

fn host_network(name: &str, auto_assign: bool) -> serde_json::Value {
    json!({"name": name, "cidr": "192.168.123.0/24", "external": {"interface": name, "gateway": "192.168.123.1",
        "pool": "192.168.123.10-192.168.123.13", "auto_assign": auto_assign}})
}

fn launch(networks: &[&str]) -> serde_json::Value {
    json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": networks})
}

#[tokio::test]
async fn instances_on_their_default_network_get_an_address_that_goes_with_them() {
    let t = T::new().await;
    t.add_bridging_host(&["host"]).await;
    let admin = t.admin.clone();
    let alice = t.user("alice", "team-a", "member").await;
    let bob = t.user("bob", "team-b", "member").await;

    let net = t.ok("POST", "/api/v1/networks", &admin, Some(host_network("host", true))).await;
    assert_eq!(net["external"]["auto_assign"], true, "{net}");
    // Only one network assigns automatically; the refusal says what to do.
    let (s, v) = t.call("POST", "/api/v1/networks", Some(&admin), Some(host_network("other", true))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nubo network delete host"), "{v}");

    // No quota for floating IPs at all, and still an address: it is the instance's.
    t.ok("PUT", "/api/v1/projects/team-a/quota", &admin, Some(json!({"floating_ips": 0}))).await;
    let a = t.ok("POST", "/api/v1/instances", &alice, Some(launch(&[]))).await;
    let a_id = a["id"].as_str().unwrap().to_string();
    let a = t.ok("GET", &format!("/api/v1/instances/{a_id}"), &alice, None).await;
    assert_eq!(a["addresses"][0]["floating_ip"], "192.168.123.11", "{a}");
    let fips = t.ok("GET", "/api/v1/floating-ips", &alice, None).await;
    assert_eq!(fips[0]["auto_assigned"], true, "{fips}");
    assert_eq!(fips[0]["instance_id"], a_id.as_str());
    let (s, v) = t.call("POST", "/api/v1/floating-ips", Some(&alice), Some(json!({"network": "host"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the quota still holds for the project's own: {v}");

    // Not on the default network: nothing assigned.
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "blue", "cidr": "10.30.0.0/24"}))).await;
    let b = t.ok("POST", "/api/v1/instances", &alice, Some(launch(&["blue"]))).await;
    let b = t.ok("GET", &format!("/api/v1/instances/{}", b["id"].as_str().unwrap()), &alice, None).await;
    assert_eq!(b["addresses"][0]["floating_ip"], serde_json::Value::Null, "{b}");

    // Nobody may move an automatic address, not even its own project.
    let fid = fips[0]["id"].as_str().unwrap().to_string();
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/v1/floating-ips/{fid}/associate"),
            Some(&alice),
            Some(json!({"instance": b["id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nubo floating-ip allocate"), "{v}");
    let (s, _) = t.call("GET", &format!("/api/v1/floating-ips/{fid}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another project does not see it");

    // An address of the project's own replaces the automatic one, which goes back to the pool.
    t.ok("PUT", "/api/v1/projects/team-a/quota", &admin, Some(json!({"floating_ips": 1}))).await;
    let own = t.ok("POST", "/api/v1/floating-ips", &alice, Some(json!({"network": "host"}))).await;
    assert_eq!(own["address"], "192.168.123.12", "{own}");
    let own_id = own["id"].as_str().unwrap().to_string();
    t.ok("POST", &format!("/api/v1/floating-ips/{own_id}/associate"), &alice, Some(json!({"instance": a_id}))).await;
    let fips = t.ok("GET", "/api/v1/floating-ips", &alice, None).await;
    assert_eq!(fips.as_array().unwrap().len(), 1, "the automatic address is gone: {fips}");
    assert_eq!(fips[0]["auto_assigned"], false);

    // Bob's launch takes the freed .11; disassociating it releases it.
    let c = t.ok("POST", "/api/v1/instances", &bob, Some(launch(&[]))).await;
    let c_id = c["id"].as_str().unwrap().to_string();
    let c = t.ok("GET", &format!("/api/v1/instances/{c_id}"), &bob, None).await;
    assert_eq!(c["addresses"][0]["floating_ip"], "192.168.123.11", "{c}");
    let bobs = t.ok("GET", "/api/v1/floating-ips", &bob, None).await;
    let bob_fid = bobs[0]["id"].as_str().unwrap().to_string();
    let gone = t.ok("POST", &format!("/api/v1/floating-ips/{bob_fid}/disassociate"), &bob, None).await;
    assert_eq!(gone["address"], "192.168.123.11");
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &bob, None).await, json!([]));

    // Terminating an instance releases its automatic address, and keeps
    // the project's own for the project.
    let d = t.ok("POST", "/api/v1/instances", &bob, Some(launch(&[]))).await;
    let d_id = d["id"].as_str().unwrap().to_string();
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &bob, None).await.as_array().unwrap().len(), 1);
    t.ok("DELETE", &format!("/api/v1/instances/{d_id}"), &bob, None).await;
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &bob, None).await, json!([]));
    t.ok("DELETE", &format!("/api/v1/instances/{a_id}"), &alice, None).await;
    let kept = t.ok("GET", "/api/v1/floating-ips", &alice, None).await;
    assert_eq!(kept[0]["id"], own_id.as_str(), "{kept}");
    assert_eq!(kept[0]["instance_id"], serde_json::Value::Null, "{kept}");
}

#[tokio::test]
async fn no_address_where_the_host_does_not_map_the_network_or_the_pool_is_empty() {
    let t = T::new().await;
    t.add_bridging_host(&["lan"]).await;
    let admin = t.admin.clone();
    let alice = t.user("alice", "team-a", "member").await;
    t.ok("POST", "/api/v1/networks", &admin, Some(host_network("host", true))).await;
    // The only bridging host does not map `host`: the launch succeeds, without an address.
    let a = t.ok("POST", "/api/v1/instances", &alice, Some(launch(&[]))).await;
    let a = t.ok("GET", &format!("/api/v1/instances/{}", a["id"].as_str().unwrap()), &alice, None).await;
    assert_ne!(a["state"], "error", "{a}");
    assert_eq!(a["addresses"][0]["floating_ip"], serde_json::Value::Null, "{a}");
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &alice, None).await, json!([]));

    // A host that maps it, and a pool of three: the fourth launch runs
    // with its private address alone.
    let t = T::new().await;
    t.add_bridging_host(&["host"]).await;
    let admin = t.admin.clone();
    let alice = t.user("alice", "team-a", "member").await;
    t.ok("POST", "/api/v1/networks", &admin, Some(host_network("host", true))).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let v = t.ok("POST", "/api/v1/instances", &alice, Some(launch(&[]))).await;
        let v = t.ok("GET", &format!("/api/v1/instances/{}", v["id"].as_str().unwrap()), &alice, None).await;
        got.push(v["addresses"][0]["floating_ip"].clone());
    }
    assert_eq!(got, [json!("192.168.123.11"), json!("192.168.123.12"), json!("192.168.123.13"), json!(null)]);
}
