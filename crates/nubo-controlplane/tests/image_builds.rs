//! Images built in the cloud (`POST /api/v1/images/builds`), with the
//! hosts' side of the build-job protocol played by agent API calls: one
//! host takes a build (never two), reports its steps, and uploads the disk,
//! which the registry checks; the image then boots on any host, fetched by
//! SHA-256 with its base's kernel. A failed or refused build leaves the
//! image in error with nothing stored; readers cannot build, another
//! project sees nothing, and another host can neither report nor upload.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::{json, Value};

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// A small qcow2 (what a host's build uploads), its bytes and SHA-256.
fn qcow2() -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&file)
        .arg("64M")
        .status()
        .expect("qemu-img runs");
    assert!(made.success());
    let bytes = std::fs::read(&file).unwrap();
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    (bytes, sha)
}

fn registry_files(t: &T) -> Vec<String> {
    match std::fs::read_dir(t.data_dir().join("registry/sha256")) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn claim(t: &T, cred: &str) -> (StatusCode, Value) {
    t.call("POST", "/api/v1/agent/image-builds", Some(cred), Some(json!({}))).await
}

#[tokio::test]
async fn one_host_builds_and_uploads_and_the_image_boots_anywhere_by_its_sha256() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let (h1, builder) = t.add_host_with_id().await;
    let other = t.add_host().await;
    // Nothing to build yet.
    assert_eq!(claim(&t, &builder).await.0, StatusCode::NO_CONTENT);
    let req = json!({"name": "web-base", "base": "debian", "packages": ["nginx", "curl", "nginx"]});
    let (s, v) = t.call("POST", "/api/v1/images/builds", Some(&alice), Some(req)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!((v["state"].as_str(), v["source"].as_str()), (Some("saving"), Some("build")));
    assert_eq!(v["kernel_image"], "debian");
    assert_eq!(v["job"]["kind"], "build");
    assert_eq!(v["job"]["packages"], json!(["curl", "nginx"]));
    assert!(v["job"]["status"].as_str().unwrap().contains("waiting for a host"), "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    // The first host to ask takes it; it gets it again (after a restart),
    // and no other host does.
    let (s, job) = claim(&t, &builder).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(job, json!({"image_id": id, "base": "debian", "packages": ["curl", "nginx"]}));
    assert_eq!(claim(&t, &builder).await.1, job);
    assert_eq!(claim(&t, &other).await.0, StatusCode::NO_CONTENT);
    let v = t.ok("GET", &format!("/api/v1/images/{id}"), &alice, None).await;
    assert_eq!(v["job"]["host"], h1.as_str());

    // Steps reach the image's job; another host can neither report nor upload.
    let step = json!({"status": "[ 12.0s] mmdebstrap: installing nginx"});
    t.ok("POST", &format!("/api/v1/agent/image-builds/{id}"), &builder, Some(step.clone())).await;
    let v = t.ok("GET", &format!("/api/v1/images/{id}"), &alice, None).await;
    assert_eq!(v["job"]["status"], step["status"]);
    let (s, _) = t.call("POST", &format!("/api/v1/agent/image-builds/{id}"), Some(&other), Some(step)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (bytes, sha) = qcow2();
    let path = format!("/api/v1/agent/image-builds/{id}/file?size_bytes={}&sha256={sha}", bytes.len());
    let (s, _) = t.raw("PUT", &path, Some(&other), "application/octet-stream", bytes.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A user's token is not a host's.
    let (s, _) = t.raw("PUT", &path, Some(&alice), "application/octet-stream", bytes.clone()).await;
    assert!(s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN, "{s}");

    // The builder uploads: active, with its progress complete.
    let (s, v) = t.raw("PUT", &path, Some(&builder), "application/octet-stream", bytes.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = t.ok("GET", &format!("/api/v1/images/{id}"), &alice, None).await;
    assert_eq!(v["state"], "active", "{v}");
    assert_eq!(v["sha256"], sha.as_str());
    assert_eq!(
        (v["job"]["bytes_done"].as_u64(), v["job"]["bytes_total"].as_u64()),
        (Some(bytes.len() as u64), Some(bytes.len() as u64))
    );
    assert_eq!(std::fs::read(t.data_dir().join("registry/sha256").join(&sha)).unwrap(), bytes);
    // Done: no more reports, nothing more to take.
    let (s, _) =
        t.call("POST", &format!("/api/v1/agent/image-builds/{id}"), Some(&builder), Some(json!({"status": "x"}))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(claim(&t, &builder).await.0, StatusCode::NO_CONTENT);

    // An instance of it: whichever host runs it fetches the file by its
    // SHA-256 and boots it with debian's kernel.
    let inst = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "web-base", "vcpus": 1, "memory_mib": 512, "disk_gib": 1})),
        )
        .await;
    assert_eq!(inst["image_id"], id.as_str());
    let host = inst["host"].as_str().unwrap().to_string();
    let cred = if host == h1.as_str() { &builder } else { &other };
    let d = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await;
    let src = &d["instances"][0]["image_source"];
    assert_eq!((src["sha256"].as_str(), src["kernel_image"].as_str()), (Some(sha.as_str()), Some("debian")), "{d}");
    let (s, _) = t.raw("GET", &format!("/api/v1/agent/images/{id}/file"), Some(cred), "application/json", vec![]).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_failed_or_refused_build_ends_in_error_with_nothing_stored() {
    let t = T::new().await;
    let builder = t.add_host().await;
    let admin = t.admin.clone();
    // The host reports a failure.
    let v = t
        .ok(
            "POST",
            "/api/v1/images/builds",
            &admin,
            Some(json!({"name": "b1", "base": "debian", "packages": ["no-such-pkg"]})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    claim(&t, &builder).await;
    let fail = json!({"error": "E: Unable to locate package no-such-pkg"});
    t.ok("POST", &format!("/api/v1/agent/image-builds/{id}"), &builder, Some(fail)).await;
    let v = t.ok("GET", &format!("/api/v1/images/{id}"), &admin, None).await;
    assert_eq!(v["state"], "error");
    assert!(v["error"].as_str().unwrap().contains("Unable to locate package no-such-pkg"), "{v}");
    // The host uploads something that is not a qcow2.
    let v = t.ok("POST", "/api/v1/images/builds", &admin, Some(json!({"name": "b2", "base": "debian"}))).await;
    let id = v["id"].as_str().unwrap().to_string();
    let (s, job) = claim(&t, &builder).await;
    assert_eq!((s, job["image_id"].as_str()), (StatusCode::OK, Some(id.as_str())));
    let junk = vec![9u8; 1 << 20];
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&junk))
    };
    let path = format!("/api/v1/agent/image-builds/{id}/file?size_bytes={}&sha256={sha}", junk.len());
    let (s, _) = t.raw("PUT", &path, Some(&builder), "application/octet-stream", junk).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v = t.ok("GET", &format!("/api/v1/images/{id}"), &admin, None).await;
    assert_eq!(v["state"], "error", "{v}");
    assert!(v["error"].as_str().unwrap().contains("refused"), "{v}");
    assert!(registry_files(&t).is_empty(), "{:?}", registry_files(&t));
    // A failed image can be deleted, and its name used again.
    t.ok("DELETE", "/api/v1/images/b2", &admin, None).await;
    t.ok("POST", "/api/v1/images/builds", &admin, Some(json!({"name": "b2", "base": "debian"}))).await;
}

#[tokio::test]
async fn who_may_build_and_what_a_build_may_ask_for() {
    let t = T::new().await;
    let alice = t.user("alice", "a", "member").await;
    let reader = t.user("rita", "a", "reader").await;
    let bob = t.user("bob", "b", "member").await;
    let req = json!({"name": "web-base", "base": "debian", "packages": ["nginx"]});
    let (s, _) = t.call("POST", "/api/v1/images/builds", Some(&reader), Some(req.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (bad, says) in [
        (json!({"name": "x", "base": "tiny", "packages": ["nginx"]}), "cannot be built"),
        (json!({"name": "x", "base": "../etc", "packages": []}), "cannot be built"),
        (json!({"name": "x", "base": "debian", "packages": ["nginx; rm -rf /"]}), "not a Debian package name"),
        (json!({"name": "x", "base": "debian", "packages": ["-o=APT::x"]}), "not a Debian package name"),
        (json!({"name": "../x", "base": "debian"}), "image name"),
    ] {
        let (s, v) = t.call("POST", "/api/v1/images/builds", Some(&alice), Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(msg(&v).contains(says), "{bad}: {v}");
    }
    let v = t.ok("POST", "/api/v1/images/builds", &alice, Some(req.clone())).await;
    let id = v["id"].as_str().unwrap().to_string();
    let (s, _) = t.call("POST", "/api/v1/images/builds", Some(&alice), Some(req)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    for key in [id.as_str(), "web-base"] {
        let (s, _) = t.call("GET", &format!("/api/v1/images/{key}"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{key}");
        let (s, _) = t.call("DELETE", &format!("/api/v1/images/{key}"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{key}");
    }
    // Bob's project names its own `web-base` freely.
    t.ok("POST", "/api/v1/images/builds", &bob, Some(json!({"name": "web-base", "base": "debian"}))).await;
    // A build that is saving cannot be deleted (its host is working on it).
    let (s, _) = t.call("DELETE", &format!("/api/v1/images/{id}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
}
