//! A terminated instance's network addresses go back to their network
//! once its host reports it gone, so a network never runs out through
//! churn (an instance group replacing members, a default network used for
//! years): a /29 holds five instances at a time, for ever.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_api::agent::ActualPower;
use serde_json::json;

#[tokio::test]
async fn a_terminated_instances_address_is_given_to_the_next_launch() {
    let t = T::new().await;
    let host = t.add_bridging_host(&[]).await;
    let alice = t.user("alice", "team-a", "member").await;
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "small", "cidr": "10.40.0.0/29"}))).await;
    let launch = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": ["small"]});
    let mut ids = Vec::new();
    for want in 2..=6 {
        let v = t.ok("POST", "/api/v1/instances", &alice, Some(launch.clone())).await;
        assert_eq!(v["addresses"][0]["address"], format!("10.40.0.{want}"), "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (s, v) = t.call("POST", "/api/v1/instances", Some(&alice), Some(launch.clone())).await;
    assert_ne!(s, StatusCode::OK, "a sixth instance on a /29: {v}");

    // Terminated, but not yet gone from its host: the address stays taken.
    t.ok("DELETE", &format!("/api/v1/instances/{}", ids[1]), &alice, None).await;
    let (s, _) = t.call("POST", "/api/v1/instances", Some(&alice), Some(launch.clone())).await;
    assert_ne!(s, StatusCode::OK, "the address is reused before the host let go of it");

    // The host reports the VM gone: the next launch gets its address.
    let gone = common::actual(&ids[1], ActualPower::Deleted);
    assert!(t.ctx.store.apply_actual(host.as_str(), &gone).await.unwrap());
    let old = t.ok("GET", &format!("/api/v1/instances/{}", ids[1]), &alice, None).await;
    assert_eq!(old["state"], "terminated", "{old}");
    let v = t.ok("POST", "/api/v1/instances", &alice, Some(launch)).await;
    assert_eq!(v["addresses"][0]["address"], "10.40.0.3", "{v}");
    let net = t.ok("GET", "/api/v1/networks/small", &alice, None).await;
    assert_eq!(net["ports"].as_array().unwrap().len(), 5, "{net}");
}
