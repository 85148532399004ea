//! Idle server benchmark: what an all-in-one cloud costs when nobody uses
//! it. It starts a real `nubo up` (server and agent in one process) on the
//! *simulated* hypervisor driver (no VM starts; each instance reports
//! plausible state and metrics), launches many instances through the API,
//! waits until they run, then reads the process' CPU time and resident
//! memory from `/proc/PID/stat` and `/proc/PID/status` over a quiet window.
//! At the default metrics interval (10 s) that window is mostly metrics:
//! a dozen series per instance.
//!
//! Run: `cargo bench -p nubo --bench idle_server`
//!
//! - `NUBO_IDLE_INSTANCES` (default 10000) instances of 1 vCPU, 256 MiB,
//!   1 GiB, launched `NUBO_IDLE_CONCURRENCY` (default 16) at a time, on
//!   user-mode networking alone (`"networks": ["none"]`: the all-in-one's
//!   default network is a /20, which holds 4,093);
//! - `NUBO_IDLE_WARMUP_SECS` (default 30) after the last one runs, so
//!   that every instance reports metrics before the window opens;
//! - `NUBO_IDLE_SECS` (default 60): the window measured;
//! - `NUBO_BIN`: another `nubo` binary to measure (an older build, for a
//!   before-and-after in one run of this bench).
//!
//! Prints the server's CPU over the window as a percentage of one core,
//! its resident memory, and the load average of the machine.
//!
//! Without `--bench` (e.g. under `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// The `nubo up` child, killed when dropped.
struct Up {
    child: Child,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = http.request(method, format!("{url}{path}")).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "error": e.to_string() })),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("idle_server: run with `cargo bench -p nubo --bench idle_server` (skipped: starts a server)");
        return;
    }
    install_signal_handlers();
    let instances = env_usize("NUBO_IDLE_INSTANCES", 10_000);
    let concurrency = env_usize("NUBO_IDLE_CONCURRENCY", 16);
    let warmup = Duration::from_secs(env_usize("NUBO_IDLE_WARMUP_SECS", 30) as u64);
    let window = Duration::from_secs(env_usize("NUBO_IDLE_SECS", 60) as u64);
    ensure_image();

    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!("server log: {}", dir.path().join("server.log").display());
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
    // One host big enough for every instance.
    let vcpus = (instances + 16).to_string();
    let memory = (instances * 256 + 4096).to_string();
    let disk = (instances + 100).to_string();
    let child = Command::new(nubo_bin())
        .args(["up", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", &listen, "--hypervisor", "simulated", "--host-name", "idle-host"])
        .args(["--vcpus", &vcpus, "--memory-mib", &memory, "--disk-gib", &disk])
        .args(["--api-rate-limit", "1000000"])
        .env("NUBO_IMAGE_CACHE", image_cache())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", nubo_bin().display()));
    let mut up = Up { child };
    let pid = up.child.id();
    let env_file = dir.path().join("admin.env");
    let text = wait_until("DATA_DIR/admin.env", Duration::from_secs(300), || {
        if let Ok(Some(status)) = up.child.try_wait() {
            panic!("nubo up exited early: {status}; see {}", dir.path().join("server.log").display());
        }
        std::fs::read_to_string(&env_file).ok()
    });
    let url = admin_env_var(&text, "NUBO_URL");
    let token = admin_env_var(&text, "NUBO_TOKEN");
    println!("idle_server: {} ({instances} instances, simulated driver)", nubo_bin().display());
    println!("machine: {} ({} CPUs), load {}", cpu_model(), nubo_agent::capacity::cpus(), loadavg());

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client");
        let quota = json!({"instances": instances * 2, "vcpus": instances * 2, "memory_mib": instances * 512, "volume_gib": instances * 2});
        let (s, v) = call(&http, &url, &token, reqwest::Method::PUT, "/api/v1/projects/default/quota", Some(&quota)).await;
        assert_eq!(s, 200, "setting the default project's quota: {v}");

        // ---- launches ----
        let t = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (http, url, token, next) = (http.clone(), url.clone(), token.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= instances {
                        return ids;
                    }
                    let body = json!({"name": format!("idle{i}"), "image": "tiny", "vcpus": 1, "memory_mib": 256, "disk_gib": 1, "networks": ["none"]});
                    // A launch the server fails is retried a few times,
                    // then counted: the idle figures still come.
                    for attempt in 1..=5 {
                        let (s, v) = call(&http, &url, &token, reqwest::Method::POST, "/api/v1/instances", Some(&body)).await;
                        if s == 201 {
                            ids.push(v["id"].as_str().expect("id").to_string());
                            break;
                        }
                        eprintln!("launch {i}, attempt {attempt}: {s} {v}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }));
        }
        let mut ids = Vec::new();
        for w in workers {
            ids.extend(w.await.expect("launch worker"));
        }
        println!("launch: {} of {instances} instances accepted in {:.1} s", ids.len(), t.elapsed().as_secs_f64());

        // ---- until the last ones run (a full list is slow at this size) ----
        let tail: Vec<&String> = ids.iter().rev().take(20).collect();
        let t = Instant::now();
        loop {
            let mut running = 0;
            for id in &tail {
                let (_, v) = call(&http, &url, &token, reqwest::Method::GET, &format!("/api/v1/instances/{id}"), None).await;
                running += usize::from(v["state"] == "running");
            }
            if running == tail.len() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(1200), "only {running} of the last {} running after 20 min", tail.len());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        println!("running: the last launches run {:.1} s after the last was accepted", t.elapsed().as_secs_f64());
    });

    // ---- the quiet window ----
    std::thread::sleep(warmup);
    let cpu0 = cpu_secs(pid);
    let t = Instant::now();
    let mut rss_peak: f64 = 0.0;
    while t.elapsed() < window {
        if INTERRUPTED.load(Ordering::SeqCst) {
            panic!("interrupted");
        }
        rss_peak = rss_peak.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu = cpu_secs(pid) - cpu0;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "idle: {instances} instances, {secs:.0} s window: server CPU {cpu:.2} s = {:.1}% of one core; RSS {:.0} MiB (peak {rss_peak:.0} MiB); load {}",
        100.0 * cpu / secs,
        rss_mib(pid),
        loadavg()
    );
    println!("server process {pid} stays up for `perf record -g -p {pid}` for NUBO_IDLE_HOLD_SECS (default 1)");
    std::thread::sleep(Duration::from_secs(env_usize("NUBO_IDLE_HOLD_SECS", 1) as u64));
    drop(up);
}
