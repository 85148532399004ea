//! Boot-stage benchmark: how long an instance takes from the API request to
//! QEMU running and to the guest's boot-complete marker, stage by stage.
//!
//! Run: `cargo bench -p nubo --bench boot_stages`
//!
//! - The `nubo` binary: cargo builds it (bench profile) for this bench and
//!   passes its path as CARGO_BIN_EXE_nubo; set NUBO_BIN=/path/to/nubo to
//!   measure another build instead.
//! - Runs: NUBO_BENCH_RUNS (default 5), one instance at a time.
//! - Image: the shared cache `<repo>/.cache/images` (or $NUBO_IMAGE_CACHE);
//!   `nubo image build tiny` runs first and is a no-op once it is built.
//! - QEMU: `qemu-system-x86_64` (or $NUBO_QEMU), always `--accel tcg`.
//!
//! It starts `nubo up` in a temporary data directory on a free loopback
//! port, launches `tiny` instances (1 vCPU, 128 MiB, 1 GiB) through
//! `POST /api/v1/instances`, polls `GET /api/v1/instances/{id}` until the
//! `boot_complete` event shows, then terminates the instance and waits for
//! `terminated` before the next one. Stage times come from the instance's
//! events (server side, `at_ms`); the client side adds the wall time until
//! the POST was answered and until `boot_complete` was visible in the API.
//!
//! `nubo up` and every QEMU it started are killed at the end, also on a
//! panic or on Ctrl-C / SIGTERM. Without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing, so test runs boot no VMs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

/// Instance stages in the order the control plane and agent record them.
const STAGES: &[&str] =
    &["requested", "scheduled", "agent_seen", "image_ready", "disk_ready", "qemu_started", "boot_complete"];

/// One launch: each stage's time since `requested` (server clocks), and the
/// client's view.
struct Run {
    id: String,
    since_requested: Vec<Option<i64>>,
    /// Client wall time from sending the POST to its answer.
    post_ms: f64,
    /// Client wall time from sending the POST until `boot_complete` showed
    /// in `GET /api/v1/instances/{id}`.
    visible_ms: f64,
    /// Client send time to the server's `requested` event (clock check).
    send_to_requested_ms: i64,
    /// DELETE sent until the API showed `terminated`.
    terminate_ms: f64,
}

fn launch(cloud: &Cloud) -> Run {
    let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1});
    let sent_at_ms = now_ms();
    let t0 = Instant::now();
    let (status, created) = cloud.call(reqwest::Method::POST, "/api/v1/instances", Some(&body));
    let post_ms = t0.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 201, "POST /api/v1/instances: {created}");
    let id = created["id"].as_str().expect("instance id").to_string();
    let path = format!("/api/v1/instances/{id}");

    let inst = wait_until(&format!("boot_complete of {id}"), Duration::from_secs(600), || {
        let i = cloud.get(&path);
        assert_ne!(i["state"], "error", "instance went to error: {i}");
        let events = i["events"].as_array()?;
        events.iter().any(|e| e["stage"] == "boot_complete").then_some(i)
    });
    let visible_ms = t0.elapsed().as_secs_f64() * 1e3;

    let events = inst["events"].as_array().cloned().unwrap_or_default();
    let at = |stage: &str| events.iter().find(|e| e["stage"] == stage).and_then(|e| e["at_ms"].as_i64());
    let requested = at("requested").expect("requested event");
    let since_requested = STAGES.iter().map(|s| at(s).map(|t| t - requested)).collect();

    let t1 = Instant::now();
    let (status, v) = cloud.call(reqwest::Method::DELETE, &path, None);
    assert!(status == 202 || status == 200, "DELETE {path}: {status} {v}");
    wait_until(&format!("{id} to be terminated"), Duration::from_secs(120), || {
        (cloud.get(&path)["state"] == "terminated").then_some(())
    });
    let terminate_ms = t1.elapsed().as_secs_f64() * 1e3;

    Run { id, since_requested, post_ms, visible_ms, send_to_requested_ms: requested - sent_at_ms, terminate_ms }
}

fn main() {
    let Some(runs) = bench_runs("boot_stages") else { return };

    let load_before = loadavg();
    ensure_image();
    let t_up = Instant::now();
    let cloud = Cloud::up();
    eprintln!("nubo up: API ready at {} after {:.1} s", cloud.url, t_up.elapsed().as_secs_f64());
    let accel = wait_until("bench-host to be up", Duration::from_secs(60), || {
        let hosts = cloud.get("/api/v1/hosts");
        hosts.as_array()?.iter().find(|h| h["state"] == "up").map(|h| h["accel"].as_str().unwrap_or("?").to_string())
    });

    let mut results = Vec::new();
    for n in 1..=runs {
        let r = launch(&cloud);
        eprintln!(
            "run {n}/{runs}: {} qemu_started +{} ms, boot_complete +{} ms (client saw it after {:.0} ms)",
            r.id,
            r.since_requested[5].map_or("-".into(), |v| v.to_string()),
            r.since_requested[6].map_or("-".into(), |v| v.to_string()),
            r.visible_ms
        );
        results.push(r);
    }
    // All instances are terminated; stop the cloud before printing.
    let command = cloud.command.clone();
    drop(cloud);

    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!();
    println!("boot stages over {runs} runs (tiny, 1 vCPU, 128 MiB, 1 GiB disk; one instance at a time)");
    println!("machine: {threads} CPUs, {}, accel {accel}, {}", cpu_model(), qemu_version());
    println!("load:    {load_before} before, {} after (1/5/15-min load average)", loadavg());
    println!("bench:   cargo bench -p nubo --bench boot_stages   (NUBO_BENCH_RUNS={runs})");
    println!("cloud:   {command}");
    println!();
    println!("{:<34} {:>26}   {:>26}", "stage (server events, ms)", "since requested", "since previous stage");
    println!("{:<34} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}", "", "min", "median", "max", "min", "median", "max");
    for (i, stage) in STAGES.iter().enumerate() {
        let since = stats(results.iter().filter_map(|r| r.since_requested[i]).map(|v| v as f64));
        let delta = if i == 0 {
            None
        } else {
            stats(results.iter().filter_map(|r| Some((r.since_requested[i]? - r.since_requested[i - 1]?) as f64)))
        };
        println!("{stage:<34} {}   {}", fmt_stats(since), fmt_stats(delta));
    }
    println!();
    println!("{:<34} {:>8} {:>8} {:>8}", "client side (ms)", "min", "median", "max");
    type Column = (&'static str, fn(&Run) -> f64);
    let rows: [Column; 4] = [
        ("POST sent -> API answered", |r| r.post_ms),
        ("POST sent -> boot_complete seen", |r| r.visible_ms),
        ("POST sent -> requested event", |r| r.send_to_requested_ms as f64),
        ("DELETE sent -> terminated seen", |r| r.terminate_ms),
    ];
    for (name, f) in rows {
        println!("{name:<34} {}", fmt_stats(stats(results.iter().map(f))));
    }
    println!();
    println!("per run (ms since requested):");
    print!("{:<4} {:<28}", "run", "instance");
    for s in &STAGES[1..] {
        print!(" {:>13}", s);
    }
    println!(" {:>13}", "client seen");
    for (n, r) in results.iter().enumerate() {
        print!("{:<4} {:<28}", n + 1, r.id);
        for v in &r.since_requested[1..] {
            print!(" {:>13}", v.map_or("-".into(), |v| v.to_string()));
        }
        println!(" {:>13.0}", r.visible_ms);
    }
}
