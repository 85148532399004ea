//! An image built in the cloud, end to end (slow, so `#[ignore]`d like
//! debian_image.rs: the runner reports it as skipped unless asked for it;
//! needs root and mmdebstrap): against a cloud started with `--data-dir`,
//! `nubo image build debian --packages nginx --name web-base` has the
//! cloud's only host, `builder`, build it (in a cache of its own, not the
//! one its builtin images are in) and upload it into the registry. Then
//! `builder` is drained and a second host, `runner`, joins: `nubo instance
//! run --image web-base` boots it there, on a host that never built it,
//! fetched by SHA-256 like an imported image, and nginx answers on the
//! forwarded port with no user-data at all.
//!
//! ```sh
//! cargo test -p nubo --test image_build_cloud -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
#[ignore = "slow: a host builds the debian image with nginx and boots it (minutes, needs root); run with --run-ignored"]
fn an_image_built_in_the_cloud_boots_with_its_packages() {
    let mut cloud = Cloud::server_only();
    cloud.start_host("builder", &[]);
    let started = Instant::now();
    let out = cloud.nubo(&["image", "build", "debian", "--packages", "nginx", "--name", "web-base"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the cloud build failed:\n{stderr}");
    eprintln!("cloud build: {:.1} s", started.elapsed().as_secs_f64());
    // The CLI followed the host's steps and the upload to the end.
    assert!(stderr.contains("mmdebstrap"), "the host's steps reach the CLI: {stderr}");
    assert!(stderr.contains("stored: web-base"), "{stderr}");
    let image = cloud.nubo_json(&["image", "show", "web-base"]);
    assert_eq!(image["state"], "active");
    assert_eq!(image["source"], "build");
    assert_eq!(image["kernel_image"], "debian");
    assert_eq!(image["job"]["packages"], serde_json::json!(["nginx"]));
    let sha = image["sha256"].as_str().unwrap().to_string();
    // The file is in the cloud's registry, under the cloud's data directory.
    assert!(cloud.data_dir().join("registry/sha256").join(&sha).is_file());
    // The host built in a cache of its own.
    assert!(cloud.host_dir("builder").join("image-builds/names/debian").is_file());
    // Another host, which never built anything, runs it.
    cloud.nubo_ok(&["host", "drain", "builder"]);
    cloud.start_host("runner", &[]);

    let id = cloud
        .nubo_ok(&["instance", "run", "--image", "web-base", "--memory", "1024", "--disk", "4", "--port", "80"])
        .trim()
        .to_string();
    let i = cloud.wait_state(&id, "running", Duration::from_secs(600));
    assert_eq!(i["image"], "web-base");
    assert_eq!(i["host_name"], "runner", "placed on the host that never built it: {i}");
    assert!(!cloud.host_dir("runner").join("image-builds").exists(), "the runner built nothing");
    let addr = i["ports"]["80"].as_str().expect("port 80 forwarded").to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, Duration::from_secs(600));
    let page = wait_until("nginx to answer", Duration::from_secs(300), || {
        http(&addr, "GET", "/", "").filter(|p| p.starts_with("HTTP/1.1 200"))
    });
    assert!(page.to_ascii_lowercase().contains("server: nginx"), "{page}");
    // The host fetched the file by its SHA-256 into its blob cache.
    let blobs = image_cache().join("blobs");
    let fetched =
        std::fs::read_dir(&blobs).map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains(&sha)));
    assert!(fetched.unwrap_or(false), "no blob {sha} in {}", blobs.display());
    eprintln!("web-base instance served nginx after {:.1} s in all", started.elapsed().as_secs_f64());
}
