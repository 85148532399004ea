//! Firmware, Secure Boot, TPM and display through the real router (no
//! VM): what an image says at import and after a change, Secure Boot
//! without UEFI refused, an instance's choice merged with its image's
//! (EC2's BootMode rule), the result in the host's desired state and in
//! EC2's DescribeImages and DescribeInstances; another project's image and
//! a reader's change refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::*;
use common::T;
use serde_json::{json, Value};

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// Registers and uploads a small raw image with `hardware`.
async fn image(t: &T, token: &str, name: &str, hardware: Value) -> Value {
    let disk = vec![0u8; 1 << 20];
    let v = t
        .ok(
            "POST",
            "/api/v1/images",
            token,
            Some(json!({"name": name, "disk_format": "raw", "size_bytes": disk.len(), "hardware": hardware})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let (s, r) =
        t.raw("PUT", &format!("/api/v1/images/{id}/file"), Some(token), "application/octet-stream", disk).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    r
}

async fn launch(t: &T, token: &str, image: &str, hardware: Value) -> (StatusCode, Value) {
    t.call(
        "POST",
        "/api/v1/instances",
        Some(token),
        Some(json!({"image": image, "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "hardware": hardware})),
    )
    .await
}

#[tokio::test]
async fn images_say_what_they_need_and_instances_may_ask_for_more() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let reader = t.user("rita", "proj-a", "reader").await;

    // Builtin images are BIOS images with nothing else.
    let tiny = t.ok("GET", "/api/v1/images/tiny", &alice, None).await;
    assert_eq!(tiny["hardware"], json!({"firmware": "bios", "secure_boot": false, "tpm": false, "display": false}));

    // Import: stored and reported.
    let win = image(&t, &alice, "win", json!({"firmware": "uefi", "secure_boot": true, "tpm": true})).await;
    assert_eq!(win["hardware"], json!({"firmware": "uefi", "secure_boot": true, "tpm": true, "display": false}));
    let shown = t.ok("GET", "/api/v1/images/win", &alice, None).await;
    assert_eq!(shown["hardware"], win["hardware"]);
    // Secure Boot without UEFI is refused, saying what to do; so is a typo.
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/images",
            Some(&alice),
            Some(json!({"name": "sb", "disk_format": "raw", "size_bytes": 4096, "hardware": {"secure_boot": true}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("UEFI") && msg(&v).contains("--firmware uefi"), "{v}");
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/images",
            Some(&alice),
            Some(json!({"name": "bad", "disk_format": "raw", "size_bytes": 4096, "hardware": {"firmware": "efi"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Changing an image: only the fields given; secure boot needs UEFI.
    let plain = image(&t, &alice, "plain", json!({})).await;
    assert_eq!(plain["hardware"]["firmware"], "bios");
    let hw = |v: Value| Some(v);
    let v = t.ok("PUT", "/api/v1/images/plain/hardware", &alice, hw(json!({"display": true}))).await;
    assert_eq!(v["hardware"], json!({"firmware": "bios", "secure_boot": false, "tpm": false, "display": true}));
    let (s, v) = t.call("PUT", "/api/v1/images/plain/hardware", Some(&alice), hw(json!({"secure_boot": true}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("UEFI"), "{v}");
    let (s, v) = t.call("PUT", "/api/v1/images/plain/hardware", Some(&alice), hw(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("nothing to change"), "{v}");
    // Nobody else changes it: a reader of the project, another project
    // (which does not see it at all), nor anyone a builtin image.
    let (s, _) = t.call("PUT", "/api/v1/images/plain/hardware", Some(&reader), hw(json!({"tpm": true}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let plain_id = plain["id"].as_str().unwrap();
    let (s, _) =
        t.call("PUT", &format!("/api/v1/images/{plain_id}/hardware"), Some(&bob), hw(json!({"tpm": true}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = t.call("PUT", "/api/v1/images/tiny/hardware", Some(&alice), hw(json!({"tpm": true}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(msg(&v).contains("builtin"), "{v}");
    let unchanged = t.ok("GET", "/api/v1/images/plain", &alice, None).await;
    assert_eq!(unchanged["hardware"]["tpm"], false);

    // Instances: the image's hardware by default.
    let (s, a) = launch(&t, &alice, "win", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(a["hardware"], win["hardware"]);
    // A UEFI-only image cannot be booted with BIOS, nor without its Secure Boot.
    let (s, v) = launch(&t, &alice, "win", json!({"firmware": "bios"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("UEFI only") && msg(&v).contains("win"), "{v}");
    let (s, v) = launch(&t, &alice, "win", json!({"secure_boot": false})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A BIOS image may be booted with UEFI when the instance asks (its
    // choice wins), and the instance may add a TPM and a display.
    let (s, b) = launch(&t, &alice, "tiny", json!({"firmware": "uefi", "tpm": true})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["hardware"], json!({"firmware": "uefi", "secure_boot": false, "tpm": true, "display": false}));
    let (s, v) = launch(&t, &alice, "tiny", json!({"secure_boot": true})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("UEFI"), "{v}");
    let (s, c) = launch(&t, &alice, "plain", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["hardware"]["display"], true, "the image's display: {c}");
    // Another project cannot boot Alice's image at all.
    let (s, v) = launch(&t, &bob, win["id"].as_str().unwrap(), json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("does not exist"), "{v}");

    // The host is told what to boot them with.
    let desired = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), &cred, None).await;
    let of = |id: &Value| -> Value {
        desired["instances"].as_array().unwrap().iter().find(|i| i["id"] == *id).unwrap()["hardware"].clone()
    };
    assert_eq!(of(&a["id"]), win["hardware"]);
    assert_eq!(of(&b["id"]), b["hardware"]);
    assert_eq!(of(&c["id"])["display"], true);

    // EC2 reports the boot mode and the TPM.
    let k = key(&t, &alice).await;
    let xml = ok(&t, &k, &[("Action", "DescribeImages"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", "win")]).await;
    assert_eq!(one(&xml, "bootMode"), "uefi", "{xml}");
    assert_eq!(one(&xml, "tpmSupport"), "v2.0", "{xml}");
    let xml =
        ok(&t, &k, &[("Action", "DescribeImages"), ("Filter.1.Name", "name"), ("Filter.1.Value.1", "tiny")]).await;
    assert_eq!(one(&xml, "bootMode"), "legacy-bios", "{xml}");
    assert!(all(&xml, "tpmSupport").is_empty(), "{xml}");
    let xml = ok(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", b["id"].as_str().unwrap())]).await;
    assert_eq!(one(&xml, "currentInstanceBootMode"), "uefi", "{xml}");
}
