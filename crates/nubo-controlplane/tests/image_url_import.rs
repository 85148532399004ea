//! Importing an image from a URL (`POST /api/v1/images/imports`), against
//! an HTTP server on 127.0.0.1 that each test starts and its server's
//! configuration allows: the fetch's progress is visible while it runs,
//! the file is checked as an upload is (checksum, format), URLs outside the
//! operator's list and internal addresses are refused, redirects are not
//! followed, and a failed fetch leaves the image in `error` with nothing in
//! the registry. Readers cannot import, and another project sees nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::T;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The image the server hands out: 4 MiB of raw disk that is not all zeros.
fn disk() -> Vec<u8> {
    (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect()
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Serves `bytes` in 64 KiB pieces, 15 ms apart (about a second for
/// 4 MiB), with its length announced, so a fetch is seen under way.
fn slow(bytes: Vec<u8>) -> Response {
    let len = bytes.len();
    let chunks: Vec<Vec<u8>> = bytes.chunks(64 << 10).map(|c| c.to_vec()).collect();
    let stream = futures::stream::unfold(chunks.into_iter(), |mut it| async move {
        let c = it.next()?;
        tokio::time::sleep(Duration::from_millis(15)).await;
        Some((Ok::<_, std::io::Error>(c), it))
    });
    ([(header::CONTENT_LENGTH, len.to_string())], Body::from_stream(stream)).into_response()
}

/// An HTTP server on 127.0.0.1 (a free port): `/disk.raw` slowly,
/// `/moved` redirecting to it, `/junk.qcow2` (not a qcow2), and 404
/// elsewhere. Returns its base URL.
async fn serve() -> String {
    let app = axum::Router::new()
        .route("/disk.raw", get(|| async { slow(disk()) }))
        .route("/moved", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/disk.raw")]).into_response() }))
        .route("/junk.qcow2", get(|| async { vec![7u8; 1 << 20] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// Polls the image until it leaves `saving`; every view seen on the way.
async fn wait(t: &T, token: &str, id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let v = t.ok("GET", &format!("/api/v1/images/{id}"), token, None).await;
        let state = v["state"].as_str().unwrap().to_string();
        seen.push(v);
        if state != "saving" {
            return seen;
        }
        assert!(Instant::now() < deadline, "the import did not end: {:?}", seen.last());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files the registry keeps.
fn registry_files(t: &T) -> Vec<String> {
    match std::fs::read_dir(t.data_dir().join("registry/sha256")) {
        Ok(d) => d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_fetch_shows_its_progress_and_ends_active_with_the_checked_file() {
    let t = T::with(|c| c.image_url_allow = vec!["127.0.0.1".into()]).await;
    let base = serve().await;
    let want = disk();
    let body =
        json!({"name": "fetched", "url": format!("{base}/disk.raw"), "disk_format": "raw", "sha256": sha(&want)});
    let (s, v) = t.call("POST", "/api/v1/images/imports", Some(&t.admin), Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "saving");
    assert_eq!(v["job"]["kind"], "url");
    assert_eq!(v["job"]["url"], format!("{base}/disk.raw"));
    let id = v["id"].as_str().unwrap().to_string();
    let seen = wait(&t, &t.admin, &id).await;
    let last = seen.last().unwrap();
    assert_eq!(last["state"], "active", "{last}");
    assert_eq!(last["sha256"], sha(&want));
    assert_eq!(last["size_bytes"], want.len());
    assert_eq!(last["job"]["bytes_done"], want.len());
    assert_eq!(last["job"]["bytes_total"], want.len());
    // Seen part-way: some bytes, not all, of the announced total.
    let partway = seen.iter().any(|v| {
        let done = v["job"]["bytes_done"].as_u64().unwrap_or(0);
        v["job"]["bytes_total"] == want.len() && done > 0 && done < want.len() as u64
    });
    assert!(
        partway,
        "no progress seen between 0 and the total: {:?}",
        seen.iter().map(|v| &v["job"]).collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read(t.data_dir().join("registry/sha256").join(sha(&want))).unwrap(), want);
    // It boots like an uploaded image: an instance of it is accepted.
    t.add_host().await;
    let inst = t
        .ok(
            "POST",
            "/api/v1/instances",
            &t.admin,
            Some(json!({"image": "fetched", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    assert_eq!(inst["image_id"], id.as_str());
    // The list shows the job too.
    let list = t.ok("GET", "/api/v1/images", &t.admin, None).await;
    let mine = list.as_array().unwrap().iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(mine["job"]["bytes_done"], want.len());
}

#[tokio::test]
async fn a_checksum_mismatch_ends_in_error_saying_expected_and_got_and_stores_nothing() {
    let t = T::with(|c| c.image_url_allow = vec!["127.0.0.1".into()]).await;
    let base = serve().await;
    let wrong = "0".repeat(64);
    let body = json!({"name": "tampered", "url": format!("{base}/disk.raw"), "disk_format": "raw", "sha256": wrong});
    let v = t.ok("POST", "/api/v1/images/imports", &t.admin, Some(body)).await;
    let last = wait(&t, &t.admin, v["id"].as_str().unwrap()).await.pop().unwrap();
    assert_eq!(last["state"], "error");
    let error = last["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("expected {wrong}")) && error.contains(&format!("got {}", sha(&disk()))),
        "{error}"
    );
    assert!(registry_files(&t).is_empty(), "nothing enters the registry: {:?}", registry_files(&t));
    assert!(last["sha256"].is_null(), "{last}");
    // A failed image is not bootable, and no longer counts against the quota.
    t.add_host().await;
    let (s, _) = t
        .call(
            "POST",
            "/api/v1/instances",
            Some(&t.admin),
            Some(json!({"image": "tampered", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    assert!(s.is_client_error(), "{s}");
}

#[tokio::test]
async fn a_file_that_is_not_its_format_a_redirect_and_a_missing_file_each_end_in_error() {
    let t = T::with(|c| c.image_url_allow = vec!["127.0.0.1".into()]).await;
    let base = serve().await;
    for (name, path, format, says) in [
        ("junk", "/junk.qcow2", "qcow2", "refused"),
        ("moved", "/moved", "raw", "redirects (HTTP 302) to /disk.raw"),
        ("missing", "/nothing-here", "raw", "HTTP 404"),
    ] {
        let body = json!({"name": name, "url": format!("{base}{path}"), "disk_format": format});
        let v = t.ok("POST", "/api/v1/images/imports", &t.admin, Some(body)).await;
        let last = wait(&t, &t.admin, v["id"].as_str().unwrap()).await.pop().unwrap();
        assert_eq!(last["state"], "error", "{name}: {last}");
        assert!(last["error"].as_str().unwrap().contains(says), "{name}: {last}");
    }
    assert!(registry_files(&t).is_empty(), "{:?}", registry_files(&t));
}

#[tokio::test]
async fn urls_outside_the_operators_list_and_internal_addresses_are_refused() {
    let base = serve().await;
    let url = format!("{base}/disk.raw");
    let import = |url: String| json!({"name": "x", "url": url, "disk_format": "raw"});
    // No list: URL imports are off, and the message names the setting.
    let t = T::new().await;
    let (s, v) = t.call("POST", "/api/v1/images/imports", Some(&t.admin), Some(import(url.clone()))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(msg(&v).contains("--image-url-allow"), "{v}");
    // A host not on the list.
    let t = T::with(|c| c.image_url_allow = vec!["images.example.com".into(), ".debian.org".into()]).await;
    let (s, v) = t.call("POST", "/api/v1/images/imports", Some(&t.admin), Some(import(url.clone()))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(msg(&v).contains("127.0.0.1 is not one") && msg(&v).contains("--image-url-allow"), "{v}");
    // Any host allowed, but internal addresses only when listed exactly:
    // loopback, the metadata address, private ranges, and names for them.
    let t = T::with(|c| c.image_url_allow = vec!["*".into()]).await;
    for (u, kind) in [
        (url.clone(), "loopback"),
        ("http://169.254.169.254/latest/meta-data".to_string(), "link-local"),
        ("http://10.0.0.1/disk.raw".to_string(), "private"),
        ("http://[::1]/disk.raw".to_string(), "loopback"),
        ("http://localhost/disk.raw".to_string(), "loopback"),
    ] {
        let (s, v) = t.call("POST", "/api/v1/images/imports", Some(&t.admin), Some(import(u.clone()))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{u}");
        assert!(msg(&v).contains(kind) && msg(&v).contains("--image-url-allow"), "{u}: {v}");
    }
    // Not http(s), and credentials in the URL.
    for u in ["file:///etc/passwd", "ftp://example.com/x", "http://user:pw@example.com/x"] {
        let (s, _) = t.call("POST", "/api/v1/images/imports", Some(&t.admin), Some(import(u.into()))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{u}");
    }
    // Nothing was registered by any refusal.
    let list = t.ok("GET", "/api/v1/images", &t.admin, None).await;
    assert!(list.as_array().unwrap().iter().all(|i| i["source"] == "builtin"), "{list}");
}

#[tokio::test]
async fn readers_cannot_import_and_another_project_sees_nothing() {
    let t = T::with(|c| c.image_url_allow = vec!["127.0.0.1".into()]).await;
    let base = serve().await;
    let alice = t.user("alice", "a", "member").await;
    let reader = t.user("rita", "a", "reader").await;
    let bob = t.user("bob", "b", "member").await;
    let body = json!({"name": "alices", "url": format!("{base}/disk.raw"), "disk_format": "raw"});
    let (s, v) = t.call("POST", "/api/v1/images/imports", Some(&reader), Some(body.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let v = t.ok("POST", "/api/v1/images/imports", &alice, Some(body.clone())).await;
    let id = v["id"].as_str().unwrap().to_string();
    // Another project: not found, by id or name, while it runs and after.
    let (s, _) = t.call("GET", &format!("/api/v1/images/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let last = wait(&t, &alice, &id).await.pop().unwrap();
    assert_eq!(last["state"], "active", "{last}");
    for key in [id.as_str(), "alices"] {
        let (s, _) = t.call("GET", &format!("/api/v1/images/{key}"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{key}");
        let (s, _) = t.call("DELETE", &format!("/api/v1/images/{key}"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{key}");
    }
    let bobs = t.ok("GET", "/api/v1/images", &bob, None).await;
    assert!(bobs.as_array().unwrap().iter().all(|i| i["id"] != id.as_str()), "{bobs}");
    // The reader of the project sees it and its job.
    let seen = t.ok("GET", &format!("/api/v1/images/{id}"), &reader, None).await;
    assert_eq!(seen["job"]["kind"], "url");
    // One name per project, as with uploads.
    let (s, _) = t.call("POST", "/api/v1/images/imports", Some(&alice), Some(body)).await;
    assert_eq!(s, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_file_over_the_quota_or_the_size_limit_ends_in_error() {
    let t = T::with(|c| {
        c.image_url_allow = vec!["127.0.0.1".into()];
        c.image_quota_bytes = 1 << 20;
    })
    .await;
    let base = serve().await;
    let body = json!({"name": "big", "url": format!("{base}/disk.raw"), "disk_format": "raw"});
    let v = t.ok("POST", "/api/v1/images/imports", &t.admin, Some(body)).await;
    let last = wait(&t, &t.admin, v["id"].as_str().unwrap()).await.pop().unwrap();
    assert_eq!(last["state"], "error");
    assert!(last["error"].as_str().unwrap().contains("image quota"), "{last}");
    let t = T::with(|c| {
        c.image_url_allow = vec!["127.0.0.1".into()];
        c.max_image_bytes = 1 << 20;
    })
    .await;
    let body = json!({"name": "big", "url": format!("{base}/disk.raw"), "disk_format": "raw"});
    let v = t.ok("POST", "/api/v1/images/imports", &t.admin, Some(body)).await;
    let last = wait(&t, &t.admin, v["id"].as_str().unwrap()).await.pop().unwrap();
    assert_eq!(last["state"], "error");
    assert!(last["error"].as_str().unwrap().contains("--max-image-size"), "{last}");
    assert!(registry_files(&t).is_empty());
}

/// The portal's image page as a signed-in browser gets it (the session
/// cookie holds a session token).
async fn images_page(t: &T, token: &str) -> String {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri("/ui/images")
        .header("host", "127.0.0.1:8080")
        .header("cookie", format!("nubo_session={token}"))
        .body(Body::empty())
        .unwrap();
    let resp = nubo_controlplane::app(t.ctx.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn the_portal_shows_a_fetch_under_way_and_why_one_failed() {
    let t = T::with(|c| c.image_url_allow = vec!["127.0.0.1".into()]).await;
    let base = serve().await;
    let alice = t.user("alice", "a", "member").await;
    let body = json!({"name": "fetched", "url": format!("{base}/disk.raw"), "disk_format": "raw"});
    let v = t.ok("POST", "/api/v1/images/imports", &alice, Some(body)).await;
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let total = disk().len();
    let shown = loop {
        let page = images_page(&t, &alice).await;
        if let Some(at) = page.find("<progress class=\"image-job\" value=\"") {
            let value: u64 = page[at + 35..].split('"').next().unwrap().parse().unwrap();
            if value > 0 {
                break page;
            }
        }
        assert!(Instant::now() < deadline, "no progress shown: {page}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    };
    assert!(shown.contains(&format!("max=\"{total}\"")), "{shown}");
    assert!(shown.contains("of 4.0 MiB") || shown.contains("of 4 MiB"), "{shown}");
    wait(&t, &alice, &id).await;
    // A failed fetch says why on the page.
    let body = json!({"name": "missing", "url": format!("{base}/nothing"), "disk_format": "raw"});
    let v = t.ok("POST", "/api/v1/images/imports", &alice, Some(body)).await;
    wait(&t, &alice, v["id"].as_str().unwrap()).await;
    let page = images_page(&t, &alice).await;
    assert!(page.contains("answered HTTP 404"), "{page}");
}
