//! An instance's life events as a host reports them: the events of one
//! report are written together (one `INSERT`), numbered after those
//! already recorded, in the order the host sent them, and a state change
//! the report makes follows them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::T;
use nubo_api::agent::{ActualInstance, ActualPower};
use nubo_api::views::InstanceEvent;
use serde_json::json;

fn report(id: &str, power: ActualPower, stages: &[&str]) -> ActualInstance {
    let mut a = common::actual(id, power);
    a.events = stages
        .iter()
        .enumerate()
        .map(|(i, s)| InstanceEvent { at_ms: 1_000 + i as i64, stage: s.to_string(), detail: format!("d-{s}") })
        .collect();
    a
}

#[tokio::test]
async fn a_reports_events_follow_the_recorded_ones_in_the_order_sent() {
    let t = T::new().await;
    let (host, _) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1});
    let v = t.ok("POST", "/api/v1/instances", &alice, Some(body)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let before: Vec<String> = t.ctx.store.events(&id).await.unwrap().into_iter().map(|e| e.stage).collect();
    assert!(!before.is_empty(), "a launch records its own events");

    let first = report(&id, ActualPower::Starting, &["agent_seen", "image_ready", "disk_ready"]);
    assert!(t.ctx.store.apply_actual(host.as_str(), &first).await.unwrap());
    let second = report(&id, ActualPower::Running, &["qemu_started", "boot_complete"]);
    assert!(t.ctx.store.apply_actual(host.as_str(), &second).await.unwrap());
    // Many events in one report: more than one statement's worth.
    let many: Vec<String> = (0..450).map(|i| format!("e{i}")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(t.ctx.store.apply_actual(host.as_str(), &report(&id, ActualPower::Running, &many_refs)).await.unwrap());

    let events = t.ctx.store.events(&id).await.unwrap();
    let stages: Vec<&str> = events.iter().map(|e| e.stage.as_str()).collect();
    let mut want: Vec<&str> = before.iter().map(String::as_str).collect();
    want.extend(["agent_seen", "image_ready", "disk_ready"]);
    want.extend(["qemu_started", "boot_complete", "state_running"]);
    want.extend(many_refs.iter().copied());
    assert_eq!(stages, want);
    let booted = events.iter().find(|e| e.stage == "boot_complete").unwrap();
    assert_eq!((booted.at_ms, booted.detail.as_str()), (1_001, "d-boot_complete"));
}
