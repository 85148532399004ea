//! ISO images and CD-ROM drives through the REST API: an ISO import is
//! checked to be one, an ISO is never a root disk and only an ISO goes in
//! a drive, another project's ISO or instance stays out of reach, a
//! reader cannot change a drive, and eject, insert and the boot order
//! reach the host's desired state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use axum::http::StatusCode;
use common::T;
use serde_json::{json, Value};

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// The bytes of a (tiny) ISO 9660 image: a `CD001` primary volume
/// descriptor after the 32 KiB system area.
fn iso_bytes() -> Vec<u8> {
    let mut b = vec![0u8; 64 << 10];
    b[0x8000] = 1;
    b[0x8001..0x8006].copy_from_slice(b"CD001");
    b[0x8006] = 1;
    b
}

/// Registers and uploads `bytes` as image `name` of `format`; the status and answer of the upload.
async fn import(t: &T, token: &str, name: &str, format: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let v = t
        .ok(
            "POST",
            "/api/v1/images",
            token,
            Some(json!({"name": name, "disk_format": format, "size_bytes": bytes.len()})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    t.raw("PUT", &format!("/api/v1/images/{id}/file"), Some(token), "application/octet-stream", bytes).await
}

async fn desired(t: &T, host: &str, cred: &str) -> Value {
    t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await
}

async fn report(t: &T, host: &str, cred: &str, id: &str, power: &str) {
    let pid = (power == "running").then_some(1);
    let body = json!({"instances": [{"id": id, "power": power, "pid": pid, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(body)).await;
}

#[tokio::test]
async fn an_iso_import_must_be_an_iso() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    // A raw disk declared iso: refused, and nothing kept.
    let (s, v) = import(&t, &alice, "not-a-cd", "iso", vec![7u8; 64 << 10]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("not an ISO 9660 image") && msg(&v).contains("--format raw"), "{v}");
    let names: Vec<String> = t
        .ok("GET", "/api/v1/images", &alice, None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"not-a-cd".to_string()), "a refused ISO is not kept: {names:?}");

    let (s, v) = import(&t, &alice, "installer", "iso", iso_bytes()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["disk_format"].as_str(), v["state"].as_str()), (Some("iso"), Some("active")));
}

#[tokio::test]
async fn cdrom_launches_are_checked() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (s, v) = import(&t, &alice, "installer", "iso", iso_bytes()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = import(&t, &alice, "disk", "raw", vec![1u8; 64 << 10]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = import(&t, &bob, "bobs-cd", "iso", iso_bytes()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let bobs_cd = v["id"].as_str().unwrap().to_string();
    let run = |body: Value| {
        let t = &t;
        let alice = alice.clone();
        async move { t.call("POST", "/api/v1/instances", Some(&alice), Some(body)).await }
    };
    let base = |image: &str| json!({"image": image, "vcpus": 1, "memory_mib": 128, "disk_gib": 20});

    // An ISO is no root disk.
    let (s, v) = run(base("installer")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("cannot be a root disk") && msg(&v).contains("--image blank --cdrom installer"), "{v}");
    // A raw disk is no CD.
    let mut p = base("blank");
    p["cdrom"] = json!("disk");
    let (s, v) = run(p).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("not an ISO") && msg(&v).contains("--format iso"), "{v}");
    // Another project's ISO does not exist here, by name or by id.
    for other in ["bobs-cd", bobs_cd.as_str()] {
        let mut p = base("blank");
        p["cdrom"] = json!(other);
        let (s, v) = run(p).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(msg(&v).contains("does not exist in this project"), "{v}");
    }
    // `blank` needs a CD; a boot order needs a drive and must be one.
    let (s, v) = run(base("blank")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("--cdrom ISO"), "{v}");
    let mut p = base("tiny");
    p["boot"] = json!("cdrom,disk");
    let (s, v) = run(p).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("needs a CD-ROM drive"), "{v}");
    let mut p = base("blank");
    p["cdrom"] = json!("installer");
    p["boot"] = json!("net,disk");
    let (s, v) = run(p).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("'cdrom,disk'"), "{v}");

    // The install launch: an empty disk, the CD booted first.
    let mut p = base("blank");
    p["cdrom"] = json!("installer");
    let (s, v) = run(p).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["image"], "blank");
    assert!(v["image_id"].is_null(), "{v}");
    assert_eq!(v["cdrom"]["boot_order"], "cdrom,disk");
    assert!(v["cdrom"]["image_id"].is_string(), "{v}");
}

#[tokio::test]
async fn eject_insert_and_boot_order_reach_the_host_and_stay_in_their_project() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let host = host.to_string();
    let alice = t.user("alice", "proj-a", "member").await;
    let reader = t.user("rita", "proj-a", "reader").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let (_, cd) = import(&t, &alice, "installer", "iso", iso_bytes()).await;
    let cd_sha = cd["sha256"].as_str().unwrap().to_string();
    // A second ISO, with other bytes.
    let mut second = iso_bytes();
    second[0x9000] = 42;
    let (s, other) = import(&t, &alice, "drivers", "iso", second).await;
    assert_eq!(s, StatusCode::OK, "{other}");
    let (_, bobs_cd) = import(&t, &bob, "bobs-cd", "iso", iso_bytes()).await;

    let v = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "blank", "vcpus": 1, "memory_mib": 128,
            "disk_gib": 20, "cdrom": "installer"})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let d = desired(&t, &host, &cred).await;
    let want = &d["instances"][0];
    assert_eq!(want["image"], "blank");
    assert!(want["image_source"].is_null());
    assert_eq!(want["cdrom"]["boot_first"], true);
    assert_eq!(want["cdrom"]["media"]["sha256"].as_str(), Some(cd_sha.as_str()));
    assert_eq!(want["cdrom"]["media"]["disk_format"], "iso");
    report(&t, &host, &cred, &id, "running").await;

    // Another project's member, and a reader: no.
    let path = |op: &str| format!("/api/v1/instances/{id}/{op}");
    let (s, v) = t.call("POST", &path("cdrom/eject"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = t.call("POST", &path("cdrom/insert"), Some(&bob), Some(json!({"image": "bobs-cd"}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = t.call("POST", &path("cdrom/eject"), Some(&reader), Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(msg(&v).contains("member role"), "{v}");
    // Bob's ISO into Alice's instance: unknown in her project.
    let (s, v) = t
        .call("POST", &path("cdrom/insert"), Some(&alice), Some(json!({"image": bobs_cd["id"].as_str().unwrap()})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("does not exist in this project"), "{v}");

    // Eject while it runs: the host is told to empty the drive.
    let v = t.ok("POST", &path("cdrom/eject"), &alice, Some(json!({}))).await;
    assert!(v["cdrom"]["image_id"].is_null(), "{v}");
    let d = desired(&t, &host, &cred).await;
    assert!(d["instances"][0]["cdrom"]["media"].is_null(), "{d}");
    assert!(v["events"].as_array().unwrap().iter().any(|e| e["stage"] == "cdrom_ejected"), "{v}");
    // Insert another.
    let v = t.ok("POST", &path("cdrom/insert"), &alice, Some(json!({"image": "drivers"}))).await;
    assert_eq!(v["cdrom"]["image_id"], other["id"]);
    let d = desired(&t, &host, &cred).await;
    assert_eq!(d["instances"][0]["cdrom"]["media"]["sha256"], other["sha256"]);
    // An ISO in a drive is in use.
    let (s, v) = t.call("DELETE", "/api/v1/images/drivers", Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // The boot order only while stopped.
    let (s, v) = t.call("POST", &path("boot-order"), Some(&alice), Some(json!({"boot": "disk,cdrom"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("stop it first"), "{v}");
    t.ok("POST", &path("stop"), &alice, None).await;
    report(&t, &host, &cred, &id, "stopped").await;
    let (s, v) = t.call("POST", &path("boot-order"), Some(&alice), Some(json!({"boot": "sideways"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t.call("POST", &path("boot-order"), Some(&reader), Some(json!({"boot": "disk,cdrom"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let v = t.ok("POST", &path("boot-order"), &alice, Some(json!({"boot": "disk,cdrom"}))).await;
    assert_eq!(v["cdrom"]["boot_order"], "disk,cdrom");
    assert_eq!(desired(&t, &host, &cred).await["instances"][0]["cdrom"]["boot_first"], false);
    // Eject while stopped: kept for its next start.
    let v = t.ok("POST", &path("cdrom/eject"), &alice, Some(json!({}))).await;
    assert!(v["cdrom"]["image_id"].is_null(), "{v}");
    // The reader sees the drive.
    let v = t.ok("GET", &format!("/api/v1/instances/{id}"), &reader, None).await;
    assert_eq!(v["cdrom"]["boot_order"], "disk,cdrom");

    // An instance without a drive: a clear refusal.
    let plain = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let plain = plain["id"].as_str().unwrap();
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/v1/instances/{plain}/cdrom/insert"),
            Some(&alice),
            Some(json!({"image": "installer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(msg(&v).contains("has no CD-ROM drive") && msg(&v).contains("--cdrom ISO"), "{v}");

    // Terminated: nothing more.
    t.ok("DELETE", &format!("/api/v1/instances/{id}"), &alice, None).await;
    let (s, v) = t.call("POST", &path("cdrom/insert"), Some(&alice), Some(json!({"image": "installer"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
}
