//! Day-two operations through the real router, the host's side played by
//! agent API calls (no VM): resize (the host's claim and the quota move,
//! a refusal says why and loses nothing, a running instance grows its
//! vCPUs online and is told to stop first for the rest), rebuild and instance revert (what the desired state asks
//! of the host, the life events), volume revert (creating until the host
//! reports the revert applied, the instance kept from starting meanwhile),
//! EC2's CreateReplaceRootVolumeTask and DescribeReplaceRootVolumeTasks
//! over them, and each refused to a reader and hidden from another project.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::{ec2, is_error, key, ok as ec2_ok, one};
use common::T;
use nubo_api::views::ImageState;
use serde_json::{json, Value};

async fn report(t: &T, host: &str, cred: &str, body: Value) {
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(body)).await;
}

async fn desired(t: &T, host: &str, cred: &str) -> Value {
    t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await
}

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn stages(i: &Value) -> Vec<String> {
    i["events"].as_array().unwrap().iter().map(|e| e["stage"].as_str().unwrap().to_string()).collect()
}

/// An instance of `token`'s project, reported running by its host; its id.
async fn running(t: &T, host: &str, cred: &str, token: &str) -> String {
    let i = t
        .ok(
            "POST",
            "/api/v1/instances",
            token,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let id = i["id"].as_str().unwrap().to_string();
    report(t, host, cred, json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]})).await;
    id
}

/// Stops `id` and has its host report it stopped.
async fn stopped(t: &T, host: &str, cred: &str, token: &str, id: &str) {
    t.ok("POST", &format!("/api/v1/instances/{id}/stop"), token, None).await;
    report(t, host, cred, json!({"instances": [{"id": id, "power": "stopped", "pid": null, "error": null}]})).await;
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), token, None).await;
    assert_eq!(i["state"], "stopped", "{i}");
}

async fn host_usage(t: &T) -> (i64, i64) {
    let hosts = t.ok("GET", "/api/v1/hosts", &t.admin, None).await;
    let h = &hosts.as_array().unwrap()[0];
    (h["used_vcpus"].as_i64().unwrap(), h["used_memory_mib"].as_i64().unwrap())
}

#[tokio::test]
async fn resize_moves_the_hosts_claim_or_says_why_not() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let id = running(&t, &host, &cred, &alice).await;
    let path = format!("/api/v1/instances/{id}/resize");

    // Running: shrinking and memory each need a stop, and say so (growing
    // the vCPUs online: `a_running_instance_gets_more_vcpus_online`).
    for body in [json!({"memory_mib": 256}), json!({"vcpus": 1, "memory_mib": 64})] {
        let (s, v) = t.call("POST", &path, Some(&alice), Some(body.clone())).await;
        assert_eq!(s, StatusCode::CONFLICT, "{body} {v}");
        assert!(msg(&v).contains(&format!("nubo instance stop {id}")), "{v}");
    }
    // Nothing to change, or out of range: a bad request.
    for body in [json!({}), json!({"vcpus": 0}), json!({"memory_mib": 1})] {
        let (s, v) = t.call("POST", &path, Some(&alice), Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} {v}");
    }

    stopped(&t, &host, &cred, &alice, &id).await;
    assert_eq!(host_usage(&t).await, (1, 128), "a stopped instance keeps its claim");
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"vcpus": 2, "memory_mib": 256}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!((v["vcpus"].as_u64(), v["memory_mib"].as_u64()), (Some(2), Some(256)), "{v}");
    assert_eq!(v["instance_type"], "custom-2-256");
    assert!(stages(&v).contains(&"resize".to_string()), "{v}");
    assert_eq!(host_usage(&t).await, (2, 256), "the host's claim moved to the new size");
    let d = desired(&t, &host, &cred).await;
    assert_eq!((d["instances"][0]["vcpus"].as_u64(), d["instances"][0]["memory_mib"].as_u64()), (Some(2), Some(256)));

    // More memory than the host has: refused with the scheduler's reasons,
    // and nothing changes.
    let (s, v) = t.call("POST", &path, Some(&t.admin), Some(json!({"memory_mib": 1024 * 1024}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "no_valid_host", "{v}");
    assert!(msg(&v).contains("MiB of memory") && msg(&v).contains("free of 262144 MiB"), "{v}");
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!((i["vcpus"].as_u64(), i["memory_mib"].as_u64()), (Some(2), Some(256)), "{i}");
    assert_eq!(host_usage(&t).await, (2, 256), "a refusal takes nothing");

    // Shrinking gives the difference back.
    t.ok("POST", &path, &alice, Some(json!({"vcpus": 1}))).await;
    assert_eq!(host_usage(&t).await, (1, 256));
}

#[tokio::test]
async fn a_running_instance_gets_more_vcpus_online() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let rita = t.user("rita", "proj-a", "reader").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let id = running(&t, &host, &cred, &alice).await;
    let path = format!("/api/v1/instances/{id}/resize");
    // A small host: 1 CPU, 4 schedulable vCPUs with the default overcommit.
    let reg =
        json!({"host_id": host, "name": "h1", "accel": "tcg", "vcpus": 1, "memory_mib": 262144, "disk_gib": 1000});
    t.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;

    // A reader may not, and another project does not see the instance.
    let (s, v) = t.call("POST", &path, Some(&rita), Some(json!({"vcpus": 2}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = t.call("POST", &path, Some(&bob), Some(json!({"vcpus": 2}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    // More than the host has room for: the scheduler's reasons, and
    // nothing moves.
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"vcpus": 8}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "no_valid_host", "{v}");
    assert!(msg(&v).contains("needs 7 vCPUs, 3 free"), "{v}");
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!((i["vcpus"].as_u64(), i["state"].as_str()), (Some(1), Some("running")), "{i}");
    assert_eq!(host_usage(&t).await, (1, 128), "refusals take nothing");
    let projects = t.ok("GET", "/api/v1/projects", &alice, None).await;
    assert_eq!(projects[0]["used"]["vcpus"], 1, "{projects}");

    // Growing: claimed on the host and in the project, the instance runs
    // on, and its host is asked for 2 vCPUs while it runs.
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"vcpus": 2}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!((v["vcpus"].as_u64(), v["memory_mib"].as_u64()), (Some(2), Some(128)), "{v}");
    assert_eq!((v["state"].as_str(), v["instance_type"].as_str()), (Some("running"), Some("custom-2-128")), "{v}");
    assert!(stages(&v).contains(&"resize".to_string()), "{v}");
    assert_eq!(host_usage(&t).await, (2, 128), "the host's claim grew");
    let projects = t.ok("GET", "/api/v1/projects", &alice, None).await;
    assert_eq!(projects[0]["used"]["vcpus"], 2, "{projects}");
    let d = desired(&t, &host, &cred).await;
    assert_eq!(d["instances"][0]["vcpus"], 2, "{d}");
    assert_eq!(d["instances"][0]["power"], "running", "{d}");

    // Back down while it runs: a stop first, and nothing moves.
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"vcpus": 1}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("removing vCPUs") && msg(&v).contains(&format!("nubo instance stop {id}")), "{v}");
    assert_eq!(host_usage(&t).await, (2, 128));
}

#[tokio::test]
async fn rebuild_asks_the_host_for_a_fresh_root_disk_and_restarts_a_running_instance() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let id = running(&t, &host, &cred, &alice).await;
    let before = desired(&t, &host, &cred).await["instances"][0].clone();
    assert_eq!(before["rebuild_seq"], 0);

    let path = format!("/api/v1/instances/{id}/rebuild");
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"image": "no-such-image"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("known images") && msg(&v).contains("tiny"), "{v}");

    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"image": "tiny"}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["id"], id.as_str(), "the same instance");
    assert!(stages(&v).contains(&"rebuild".to_string()), "{v}");
    let after = desired(&t, &host, &cred).await["instances"][0].clone();
    assert_eq!(after["rebuild_seq"], 1);
    assert_eq!(after["start_seq"].as_i64().unwrap(), before["start_seq"].as_i64().unwrap() + 1, "started again");
    assert_eq!(after["power"], "running");
    assert_eq!(after["user_data"], before["user_data"]);
    assert_eq!(after["nics"], before["nics"]);

    // A stopped instance gets its new disk at its next start, and stays stopped.
    stopped(&t, &host, &cred, &alice, &id).await;
    let v = t.ok("POST", &path, &alice, Some(json!({"image": "tiny"}))).await;
    assert_eq!(v["state"], "stopped");
    let after = desired(&t, &host, &cred).await["instances"][0].clone();
    assert_eq!((after["rebuild_seq"].as_i64(), after["power"].as_str()), (Some(2), Some("stopped")));
}

#[tokio::test]
async fn an_instance_reverts_only_to_its_own_snapshot_and_only_when_stopped() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let id = running(&t, &host, &cred, &alice).await;
    let other = running(&t, &host, &cred, &alice).await;
    let snap = t.ok("POST", &format!("/api/v1/instances/{id}/snapshot"), &alice, Some(json!({"name": "golden"}))).await;
    let snap = snap["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/instances/{id}/revert");

    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"snapshot": snap}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains(&format!("nubo instance stop {id}")), "{v}");

    stopped(&t, &host, &cred, &alice, &id).await;
    // Not yet uploaded by the host: not usable yet.
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"snapshot": snap}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("once it is active"), "{v}");
    assert!(t.ctx.store.set_image_state(&snap, &[ImageState::Saving], ImageState::Active).await.unwrap());

    // Another instance's snapshot, or an image that is no snapshot: refused.
    stopped(&t, &host, &cred, &alice, &other).await;
    for (instance, image) in [(other.as_str(), snap.as_str()), (id.as_str(), "tiny")] {
        let (s, v) = t
            .call(
                "POST",
                &format!("/api/v1/instances/{instance}/revert"),
                Some(&alice),
                Some(json!({"snapshot": image})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(msg(&v).contains("is not a snapshot of instance"), "{v}");
    }

    let v = t.ok("POST", &path, &alice, Some(json!({"snapshot": "golden"}))).await;
    assert_eq!(v["image_id"], snap.as_str());
    assert!(stages(&v).contains(&"revert".to_string()), "{v}");
    let d = desired(&t, &host, &cred).await;
    let mine = d["instances"].as_array().unwrap().iter().find(|i| i["id"] == id.as_str()).unwrap().clone();
    assert_eq!(mine["rebuild_seq"], 1);
    assert_eq!(mine["image"], "golden", "the host boots from the snapshot");
}

#[tokio::test]
async fn a_volume_reverts_once_and_its_instance_waits_for_it() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let id = running(&t, &host, &cred, &alice).await;
    let mut vols = Vec::new();
    for _ in 0..2 {
        let v = t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 2}))).await;
        vols.push(v["id"].as_str().unwrap().to_string());
    }
    let avail: Vec<Value> =
        vols.iter().map(|v| json!({"id": v, "state": "available", "size_gib": 2, "error": null})).collect();
    report(&t, &host, &cred, json!({"instances": [], "volumes": avail})).await;
    let vid = vols[0].clone();
    let s = t.ok("POST", &format!("/api/v1/volumes/{vid}/snapshots"), &alice, Some(json!({}))).await;
    let snap = s["id"].as_str().unwrap().to_string();
    let s = t.ok("POST", &format!("/api/v1/volumes/{}/snapshots", vols[1]), &alice, Some(json!({}))).await;
    let other_snap = s["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/volumes/{vid}/revert");

    // Pending: not yet.
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"snapshot": snap}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("once it is completed"), "{v}");
    let done: Vec<Value> = [&snap, &other_snap]
        .iter()
        .map(|s| json!({"id": s, "state": "completed", "consistency": "crash", "error": null}))
        .collect();
    report(&t, &host, &cred, json!({"instances": [], "snapshots": done})).await;
    // Another volume's snapshot: refused.
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"snapshot": other_snap}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Attached to a running instance: stop it (or detach) first.
    t.ok("POST", &format!("/api/v1/volumes/{vid}/attach"), &alice, Some(json!({"instance_id": id}))).await;
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"snapshot": snap}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains(&format!("nubo instance stop {id}")) && msg(&v).contains("nubo volume detach"), "{v}");

    stopped(&t, &host, &cred, &alice, &id).await;
    let (s, v) = t.call("POST", &path, Some(&alice), Some(json!({"snapshot": snap}))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "creating");
    let d = desired(&t, &host, &cred).await;
    let dv = d["volumes"].as_array().unwrap().iter().find(|v| v["id"] == vid.as_str()).unwrap().clone();
    assert_eq!(dv["revert"], json!({"snapshot": snap, "seq": 1}));
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert!(stages(&i).contains(&"volume_revert".to_string()), "{i}");

    // The instance does not start on the old content meanwhile.
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{id}/start"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("being reverted"), "{v}");

    // A report from before the host took the revert up changes nothing;
    // the one after it does.
    let vol = |seq: i64| json!({"instances": [], "volumes": [{"id": vid, "state": "available", "size_gib": 2, "error": null, "reverted_seq": seq}]});
    report(&t, &host, &cred, vol(0)).await;
    assert_eq!(t.ok("GET", &format!("/api/v1/volumes/{vid}"), &alice, None).await["state"], "creating");
    report(&t, &host, &cred, vol(1)).await;
    assert_eq!(t.ok("GET", &format!("/api/v1/volumes/{vid}"), &alice, None).await["state"], "in-use");
    t.ok("POST", &format!("/api/v1/instances/{id}/start"), &alice, None).await;
}

#[tokio::test]
async fn a_reader_cannot_and_another_project_sees_nothing() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let rita = t.user("rita", "proj-a", "reader").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let id = running(&t, &host, &cred, &alice).await;
    stopped(&t, &host, &cred, &alice, &id).await;
    let v = t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 1}))).await;
    let vid = v["id"].as_str().unwrap().to_string();
    let calls = [
        (format!("/api/v1/instances/{id}/resize"), json!({"vcpus": 2})),
        (format!("/api/v1/instances/{id}/rebuild"), json!({"image": "tiny"})),
        (format!("/api/v1/instances/{id}/revert"), json!({"snapshot": "tiny"})),
        (format!("/api/v1/volumes/{vid}/revert"), json!({"snapshot": "snap-00000000000000000000000000"})),
    ];
    for (path, body) in &calls {
        let (s, v) = t.call("POST", path, Some(&rita), Some(body.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "reader {path}: {v}");
        let (s, v) = t.call("POST", path, Some(&bob), Some(body.clone())).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "other project {path}: {v}");
    }
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!((i["vcpus"].as_u64(), i["image"].as_str()), (Some(1), Some("tiny")), "nothing changed");
    let d = desired(&t, &host, &cred).await;
    assert_eq!(d["instances"][0]["rebuild_seq"], 0);
}

#[tokio::test]
async fn ec2_replaces_a_running_instances_root_volume_and_reports_the_task() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (ka, kb) = (key(&t, &alice).await, key(&t, &bob).await);
    let id = running(&t, &host, &cred, &alice).await;
    let snap = t.ok("POST", &format!("/api/v1/instances/{id}/snapshot"), &alice, Some(json!({"name": "golden"}))).await;
    let snap = snap["id"].as_str().unwrap().to_string();
    assert!(t.ctx.store.set_image_state(&snap, &[ImageState::Saving], ImageState::Active).await.unwrap());
    let tiny = t.ok("GET", "/api/v1/images/tiny", &alice, None).await["id"].as_str().unwrap().to_string();
    let create = "CreateReplaceRootVolumeTask";

    // Both sources at once, an unknown instance, another project's instance.
    let both = [("Action", create), ("InstanceId", &id), ("ImageId", &tiny), ("SnapshotId", &snap)];
    is_error(ec2(&t, &ka, &both).await, StatusCode::BAD_REQUEST, "InvalidParameterCombination");
    let theirs = [("Action", create), ("InstanceId", id.as_str())];
    is_error(ec2(&t, &kb, &theirs).await, StatusCode::BAD_REQUEST, "InvalidInstanceID.NotFound");
    // An image that is no snapshot of it, given as SnapshotId.
    let wrong = [("Action", create), ("InstanceId", id.as_str()), ("SnapshotId", tiny.as_str())];
    let (s, body) = ec2(&t, &ka, &wrong).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("is not a snapshot of instance"), "{body}");

    let made = ec2_ok(&t, &ka, &[("Action", create), ("InstanceId", &id), ("SnapshotId", &snap)]).await;
    let task = one(&made, "replaceRootVolumeTaskId");
    assert!(task.starts_with("replacevol-"), "{made}");
    assert_eq!((one(&made, "taskState"), one(&made, "snapshotId")), ("pending".to_string(), snap.clone()));
    let d = desired(&t, &host, &cred).await;
    assert_eq!(
        (d["instances"][0]["rebuild_seq"].as_i64(), d["instances"][0]["image"].as_str()),
        (Some(1), Some("golden"))
    );

    // The host stops it, makes the new disk, starts it: the task follows.
    let describe = [("Action", "DescribeReplaceRootVolumeTasks"), ("ReplaceRootVolumeTaskId.1", task.as_str())];
    let stage = |stage: &str| {
        json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null,
        "events": [{"at_ms": nubo_controlplane::store::now_ms(), "stage": stage, "detail": ""}]}]})
    };
    report(&t, &host, &cred, stage("rebuild_stopping")).await;
    assert_eq!(one(&ec2_ok(&t, &ka, &describe).await, "taskState"), "in-progress");
    report(&t, &host, &cred, stage("root_disk_removed")).await;
    let done = ec2_ok(&t, &ka, &describe).await;
    assert_eq!(one(&done, "taskState"), "succeeded", "{done}");
    assert!(!one(&done, "completeTime").is_empty());
    // Filtered by instance; another project sees none of it.
    let by_instance = [
        ("Action", "DescribeReplaceRootVolumeTasks"),
        ("Filter.1.Name", "instance-id"),
        ("Filter.1.Value.1", id.as_str()),
    ];
    assert_eq!(one(&ec2_ok(&t, &ka, &by_instance).await, "replaceRootVolumeTaskId"), task);
    assert!(!ec2_ok(&t, &kb, &describe).await.contains("replacevol-"));

    // A stopped instance: EC2 wants it running.
    stopped(&t, &host, &cred, &alice, &id).await;
    is_error(
        ec2(&t, &ka, &[("Action", create), ("InstanceId", &id)]).await,
        StatusCode::BAD_REQUEST,
        "IncorrectInstanceState",
    );
}
