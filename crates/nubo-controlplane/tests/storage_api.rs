//! Storage through the real router, with the host's side played by agent
//! API calls (no socket, no VM): volume and image tenancy, the project
//! volume quota and the host's storage pool (also under parallel
//! requests), the whole volume life (creating, available, attaching,
//! attached, detaching, deleting) as reports move it, slot limits, and
//! image uploads checked against their declared size, checksum and
//! minimum disk.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::{json, Value};
use std::sync::Arc;

async fn report(t: &T, host: &str, cred: &str, body: Value) {
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(body)).await;
}

async fn desired(t: &T, host: &str, cred: &str) -> Value {
    t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await
}

async fn volume(t: &T, token: &str, id: &str) -> Value {
    t.ok("GET", &format!("/api/v1/volumes/{id}"), token, None).await
}

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn volumes_and_images_stay_inside_their_project() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let reader = t.user("rita", "proj-a", "reader").await;
    let av = t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 1}))).await;
    let av = av["id"].as_str().unwrap().to_string();
    let bi = t
        .ok(
            "POST",
            "/api/v1/instances",
            &bob,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let bi = bi["id"].as_str().unwrap().to_string();

    // Bob sees nothing of Alice's volume, and cannot act on it.
    assert!(t.ok("GET", "/api/v1/volumes", &bob, None).await.as_array().unwrap().is_empty());
    for (method, path, body) in [
        ("GET", format!("/api/v1/volumes/{av}"), None),
        ("DELETE", format!("/api/v1/volumes/{av}"), None),
        ("POST", format!("/api/v1/volumes/{av}/attach"), Some(json!({"instance_id": bi}))),
        ("POST", format!("/api/v1/volumes/{av}/extend"), Some(json!({"size_gib": 5}))),
        ("POST", format!("/api/v1/volumes/{av}/snapshots"), Some(json!({}))),
    ] {
        let (s, v) = t.call(method, &path, Some(&bob), body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    // Alice cannot attach to Bob's instance (it does not exist for her).
    let (s, _) =
        t.call("POST", &format!("/api/v1/volumes/{av}/attach"), Some(&alice), Some(json!({"instance_id": bi}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A reader reads but cannot create or change.
    assert_eq!(t.ok("GET", "/api/v1/volumes", &reader, None).await.as_array().unwrap().len(), 1);
    let (s, _) = t.call("POST", "/api/v1/volumes", Some(&reader), Some(json!({"size_gib": 1}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t.call("DELETE", &format!("/api/v1/volumes/{av}"), Some(&reader), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Images: a project's own are its own; public ones (operators only) are everyone's.
    let img = json!({"name": "alices", "disk_format": "raw", "size_bytes": 4096});
    let a_img = t.ok("POST", "/api/v1/images", &alice, Some(img)).await;
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/images",
            Some(&alice),
            Some(json!({"name": "pub", "disk_format": "raw", "size_bytes": 4096, "visibility": "public"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let admin = t.admin.clone();
    t.ok(
        "POST",
        "/api/v1/images",
        &admin,
        Some(json!({"name": "pub", "disk_format": "raw", "size_bytes": 4096, "visibility": "public"})),
    )
    .await;
    let names = |v: Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect()
    };
    let bobs = names(t.ok("GET", "/api/v1/images", &bob, None).await);
    assert!(bobs.contains(&"pub".to_string()) && bobs.contains(&"tiny".to_string()), "{bobs:?}");
    assert!(!bobs.contains(&"alices".to_string()), "{bobs:?}");
    let id = a_img["id"].as_str().unwrap();
    for path in [format!("/api/v1/images/{id}"), "/api/v1/images/alices".to_string()] {
        let (s, _) = t.call("GET", &path, Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = t.call("DELETE", &format!("/api/v1/images/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t.call("DELETE", "/api/v1/images/tiny", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(msg(&v).contains("builtin"));
}

#[tokio::test]
async fn quota_and_pool_hold_under_parallel_requests() {
    let t = Arc::new(T::new().await);
    t.add_host().await;
    let admin = t.admin.clone();
    t.ok("PUT", "/api/v1/projects/default/quota", &admin, Some(json!({"volume_gib": 5}))).await;
    // 20 parallel 1 GiB volumes against a quota of 5: exactly 5 exist.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let t = t.clone();
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            t.call("POST", "/api/v1/volumes", Some(&admin), Some(json!({"size_gib": 1}))).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (s, v) = task.await.unwrap();
        match s {
            StatusCode::CREATED => ok += 1,
            StatusCode::FORBIDDEN => assert!(msg(&v).contains("volume quota"), "{v}"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok, 5);
    let projects = t.ok("GET", "/api/v1/projects", &admin, None).await;
    let default = projects.as_array().unwrap().iter().find(|p| p["name"] == "default").unwrap().clone();
    assert_eq!(default["used"]["volume_gib"], 5);

    // The pool: 1000 GiB, of which 5 are used now. More is refused, naming the pool.
    t.ok("PUT", "/api/v1/projects/default/quota", &admin, Some(json!({"volume_gib": 100000}))).await;
    let (s, v) = t.call("POST", "/api/v1/volumes", Some(&admin), Some(json!({"size_gib": 996}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("995 GiB free"), "{v}");
    let hosts = t.ok("GET", "/api/v1/hosts", &admin, None).await;
    assert_eq!(hosts[0]["used_disk_gib"], 5, "a refused volume claims nothing");
    assert_eq!(t.ok("GET", "/api/v1/volumes", &admin, None).await.as_array().unwrap().len(), 5);
    // Out-of-range sizes.
    for size in [0, 16385] {
        let (s, _) = t.call("POST", "/api/v1/volumes", Some(&admin), Some(json!({"size_gib": size}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_volume_moves_through_its_states_as_the_host_reports() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let admin = t.admin.clone();
    let host = host.to_string();
    let inst = t
        .ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let inst = inst["id"].as_str().unwrap().to_string();
    let v = t.ok("POST", "/api/v1/volumes", &admin, Some(json!({"size_gib": 2, "name": "data"}))).await;
    let vid = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["state"], "creating");
    let d = desired(&t, &host, &cred).await;
    assert_eq!(d["volumes"][0], json!({"id": vid, "size_gib": 2, "present": true, "from_snapshot": null}));
    // Attaching before it exists is refused.
    let (s, _) = t
        .call("POST", &format!("/api/v1/volumes/{vid}/attach"), Some(&admin), Some(json!({"instance_id": inst})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    let running = |volumes: Value| json!({"id": inst, "power": "running", "pid": 1, "error": null, "volumes": volumes});
    report(&t, &host, &cred, json!({"instances": [running(json!([]))], "volumes": [{"id": vid, "state": "available", "size_gib": 2, "error": null}]})).await;
    assert_eq!(volume(&t, &admin, &vid).await["state"], "available");

    let v = t.ok("POST", &format!("/api/v1/volumes/{vid}/attach"), &admin, Some(json!({"instance_id": inst}))).await;
    assert_eq!((v["state"].as_str(), v["attachment"]["state"].as_str()), (Some("in-use"), Some("attaching")));
    let serial = v["attachment"]["serial"].as_str().unwrap().to_string();
    assert_eq!(serial, vid.replacen('-', "", 1));
    let d = desired(&t, &host, &cred).await;
    assert_eq!(d["instances"][0]["volumes"], json!([{"volume_id": vid, "slot": 0, "serial": serial, "size_gib": 2}]));
    // Not yet seen by the guest: still attaching.
    let att = |state: &str, dev: Option<&str>| json!([{"volume_id": vid, "state": state, "guest_device": dev, "guest_size_bytes": dev.map(|_| 2u64 << 30), "error": null}]);
    report(&t, &host, &cred, json!({"instances": [running(att("attaching", None))]})).await;
    assert_eq!(volume(&t, &admin, &vid).await["attachment"]["state"], "attaching");
    report(&t, &host, &cred, json!({"instances": [running(att("attached", Some("/dev/vdc")))]})).await;
    let v = volume(&t, &admin, &vid).await;
    assert_eq!(
        (v["attachment"]["state"].as_str(), v["attachment"]["guest_device"].as_str()),
        (Some("attached"), Some("/dev/vdc"))
    );
    let i = t.ok("GET", &format!("/api/v1/instances/{inst}"), &admin, None).await;
    assert_eq!(i["volumes"][0]["state"], "attached");

    // Deleting an attached volume is refused; a detach is wanted, then done.
    let (s, v) = t.call("DELETE", &format!("/api/v1/volumes/{vid}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(msg(&v).contains("detach it first"));
    t.ok("POST", &format!("/api/v1/volumes/{vid}/detach"), &admin, None).await;
    assert!(desired(&t, &host, &cred).await["instances"][0]["volumes"].as_array().unwrap().is_empty());
    // Still plugged in: detaching. A stale report of it attached changes nothing.
    report(&t, &host, &cred, json!({"instances": [running(att("attached", Some("/dev/vdc")))]})).await;
    assert_eq!(volume(&t, &admin, &vid).await["attachment"]["state"], "detaching");
    report(&t, &host, &cred, json!({"instances": [running(json!([]))]})).await;
    let v = volume(&t, &admin, &vid).await;
    assert_eq!(v["state"], "available");
    assert!(v["attachment"].is_null());

    // Delete: deleting until the host says the file is gone; then the claims are freed.
    t.ok("DELETE", &format!("/api/v1/volumes/{vid}"), &admin, None).await;
    assert_eq!(volume(&t, &admin, &vid).await["state"], "deleting");
    assert_eq!(desired(&t, &host, &cred).await["volumes"][0]["present"], false);
    report(
        &t,
        &host,
        &cred,
        json!({"instances": [], "volumes": [{"id": vid, "state": "deleted", "size_gib": 0, "error": null}]}),
    )
    .await;
    let (s, _) = t.call("GET", &format!("/api/v1/volumes/{vid}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let hosts = t.ok("GET", "/api/v1/hosts", &admin, None).await;
    assert_eq!(hosts[0]["used_disk_gib"], 1, "only the instance's root disk is left");
    // A repeated report frees nothing twice.
    report(
        &t,
        &host,
        &cred,
        json!({"instances": [], "volumes": [{"id": vid, "state": "deleted", "size_gib": 0, "error": null}]}),
    )
    .await;
    assert_eq!(t.ok("GET", "/api/v1/hosts", &admin, None).await[0]["used_disk_gib"], 1);
}

#[tokio::test]
async fn an_instance_takes_at_most_eight_volumes() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let admin = t.admin.clone();
    let inst = t
        .ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let inst = inst["id"].as_str().unwrap().to_string();
    let mut vols = Vec::new();
    for _ in 0..9 {
        let v = t.ok("POST", "/api/v1/volumes", &admin, Some(json!({"size_gib": 1}))).await;
        vols.push(v["id"].as_str().unwrap().to_string());
    }
    let avail: Vec<Value> =
        vols.iter().map(|v| json!({"id": v, "state": "available", "size_gib": 1, "error": null})).collect();
    report(&t, host.as_str(), &cred, json!({"instances": [], "volumes": avail})).await;
    for v in &vols[..8] {
        t.ok("POST", &format!("/api/v1/volumes/{v}/attach"), &admin, Some(json!({"instance_id": inst}))).await;
    }
    let (s, v) = t
        .call("POST", &format!("/api/v1/volumes/{}/attach", vols[8]), Some(&admin), Some(json!({"instance_id": inst})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(msg(&v).contains("8 volumes"), "{v}");
    let mut slots: Vec<u64> = desired(&t, host.as_str(), &cred).await["instances"][0]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["slot"].as_u64().unwrap())
        .collect();
    slots.sort();
    assert_eq!(slots, (0..8).collect::<Vec<u64>>(), "each on its own slot");
}

#[tokio::test]
async fn uploads_are_checked_against_size_checksum_and_content() {
    let t = T::new().await;
    t.add_host().await;
    let admin = t.admin.clone();
    let disk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&disk))
    };
    let register = |name: &str, size: usize, sha: Option<&str>| json!({"name": name, "disk_format": "raw", "size_bytes": size, "sha256": sha, "min_disk_gib": 2});
    let upload = |id: String, body: Vec<u8>| {
        let t = &t;
        let admin = admin.clone();
        async move {
            t.raw("PUT", &format!("/api/v1/images/{id}/file"), Some(&admin), "application/octet-stream", body).await
        }
    };
    let id_of = |v: &Value| v["id"].as_str().unwrap().to_string();

    // Larger than declared: 413, nothing kept.
    let v = t.ok("POST", "/api/v1/images", &admin, Some(register("big", 1000, None))).await;
    let (s, r) = upload(id_of(&v), disk.clone()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{r}");
    // Shorter than declared.
    let v = t.ok("POST", "/api/v1/images", &admin, Some(register("short", disk.len() + 512, None))).await;
    let (s, r) = upload(id_of(&v), disk.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(msg(&r).contains("ended after"), "{r}");
    // Wrong checksum.
    let v = t.ok("POST", "/api/v1/images", &admin, Some(register("wrongsum", disk.len(), Some(&"0".repeat(64))))).await;
    let (s, r) = upload(id_of(&v), disk.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(msg(&r).contains("SHA-256"), "{r}");
    let names: Vec<Value> = t.ok("GET", "/api/v1/images", &admin, None).await.as_array().unwrap().clone();
    assert_eq!(names.len(), 2, "only the builtin images remain: {names:?}");
    let leftovers: Vec<_> = std::fs::read_dir(t.data_dir().join("registry/tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "no partial upload left");

    // A good one: active, stored under its sha256, and its minimum disk enforced.
    let v = t.ok("POST", "/api/v1/images", &admin, Some(register("good", disk.len(), Some(&sha)))).await;
    let id = id_of(&v);
    assert_eq!(v["state"], "queued");
    let (s, r) = upload(id.clone(), disk.clone()).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!((r["state"].as_str(), r["sha256"].as_str()), (Some("active"), Some(sha.as_str())));
    assert_eq!(r["virtual_size_bytes"], 1 << 20);
    assert!(t.data_dir().join("registry/sha256").join(&sha).is_file());
    // Its file cannot be replaced.
    let (s, _) = upload(id.clone(), disk.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, r) = t
        .call(
            "POST",
            "/api/v1/instances",
            Some(&admin),
            Some(json!({"image": "good", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(msg(&r).contains("at least 2 GiB"), "{r}");
    let inst = t
        .ok(
            "POST",
            "/api/v1/instances",
            &admin,
            Some(json!({"image": id, "vcpus": 1, "memory_mib": 128, "disk_gib": 2})),
        )
        .await;
    assert_eq!((inst["image"].as_str(), inst["image_id"].as_str()), (Some("good"), Some(id.as_str())));
    // Its host is told where the file comes from.
    let (s, r) = t.call("DELETE", &format!("/api/v1/images/{id}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(msg(&r).contains("in use by instances"), "{r}");
    // Same name twice in a project is refused.
    let (s, _) = t.call("POST", "/api/v1/images", Some(&admin), Some(register("good", 10, None))).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn instance_snapshots_count_against_the_image_quota() {
    const MIB: u64 = 1 << 20;
    let t = T::with(|c| c.image_quota_bytes = 2 * MIB).await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let i = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let id = i["id"].as_str().unwrap().to_string();
    report(&t, host.as_str(), &cred, json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]}))
        .await;
    let snap = t.ok("POST", &format!("/api/v1/instances/{id}/snapshot"), &alice, Some(json!({"name": "golden"}))).await;
    let image = snap["id"].as_str().unwrap().to_string();
    // The host's upload says 3 MiB: refused before a byte is read, and the
    // image is failed with the reason (the host stops retrying).
    let path = format!("/api/v1/agent/images/{image}/file?size_bytes={}&sha256={}", 3 * MIB, "a".repeat(64));
    let (s, v) = t.raw("PUT", &path, Some(&cred), "application/octet-stream", vec![1u8; 1024]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(msg(&v).contains("image quota") && msg(&v).contains("2.0 MiB"), "{v}");
    let shown = t.ok("GET", &format!("/api/v1/images/{image}"), &alice, None).await;
    assert_eq!(shown["state"], "error", "{shown}");
    assert!(shown["error"].as_str().unwrap_or_default().contains("image quota"), "{shown}");
    // A project at its quota cannot ask for another snapshot.
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/images",
            Some(&alice),
            Some(json!({"name": "fill", "disk_format": "raw", "size_bytes": 2 * MIB})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) =
        t.call("POST", &format!("/api/v1/instances/{id}/snapshot"), Some(&alice), Some(json!({"name": "again"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(msg(&v).contains("quota is used up") && msg(&v).contains("nubo image delete"), "{v}");
}
