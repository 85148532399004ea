//! Storage benchmark: how long each volume and image operation takes, end
//! to end and as a user sees it, on one running `tiny` instance.
//!
//! Run: `cargo bench -p nubo --bench storage_ops`
//!
//! - The `nubo` binary: the one cargo builds for the bench (CARGO_BIN_EXE_nubo),
//!   or $NUBO_BIN. Runs: NUBO_BENCH_RUNS (default 5). Image: the shared cache
//!   `<repo>/.cache/images` (or $NUBO_IMAGE_CACHE). QEMU under `--accel tcg`.
//!
//! It starts `nubo up`, launches one `tiny` instance (1 vCPU, 192 MiB), and
//! then, per run, times the CLI with `--wait`: create a 1 GiB volume
//! (until available), attach it (until the guest sees it, checked by the
//! agent through the guest agent), extend it online by 1 GiB (until the
//! guest sees the new size), snapshot it in use (file systems frozen; until
//! completed), detach it (until the guest let go), delete it, delete the
//! snapshot. Once per bench it also times an instance snapshot (until the
//! image is active) and an import of tiny's root disk (qcow2).
//!
//! Everything it started is killed at the end, also on a panic or Ctrl-C.
//! Without `--bench` (e.g. under `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Runs `nubo ARGS` against the cloud; its stdout, and how long it took.
fn nubo(cloud: &Cloud, args: &[&str]) -> (String, f64) {
    let t = Instant::now();
    let out = Command::new(nubo_bin())
        .args(args)
        .env("NUBO_URL", &cloud.url)
        .env("NUBO_TOKEN", &cloud.token)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run nubo: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(out.status.success(), "nubo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), ms)
}

const OPS: &[&str] = &[
    "volume create --wait (1 GiB)",
    "volume attach --wait (guest sees it)",
    "volume extend --wait (+1 GiB online)",
    "volume snapshot --wait (in use, fsfreeze)",
    "volume detach --wait (guest let go)",
    "volume delete --wait",
    "snapshot delete",
];

fn main() {
    let Some(runs) = bench_runs("storage_ops") else { return };
    let load_before = loadavg();
    ensure_image();
    let cloud = Cloud::up();
    wait_until("bench-host to be up", Duration::from_secs(60), || {
        let hosts = cloud.get("/api/v1/hosts");
        hosts.as_array()?.iter().any(|h| h["state"] == "up").then_some(())
    });
    let (id, boot_ms) = nubo(&cloud, &["instance", "run", "--name", "bench", "--memory", "192", "--wait"]);
    // The guest agent answers a few seconds after `running`.
    wait_until("the guest agent", Duration::from_secs(120), || {
        let out = Command::new(nubo_bin())
            .args(["instance", "exec", &id, "--", "true"])
            .env("NUBO_URL", &cloud.url)
            .env("NUBO_TOKEN", &cloud.token)
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    eprintln!("instance {id} running after {boot_ms:.0} ms");

    let mut times: Vec<Vec<f64>> = vec![Vec::new(); OPS.len()];
    for n in 1..=runs {
        let mut t = Vec::new();
        let (vol, ms) = nubo(&cloud, &["volume", "create", "--size", "1", "--wait"]);
        t.push(ms);
        t.push(nubo(&cloud, &["volume", "attach", &vol, &id, "--wait"]).1);
        t.push(nubo(&cloud, &["volume", "extend", &vol, "--size", "2", "--wait"]).1);
        let (snap, ms) = nubo(&cloud, &["volume", "snapshot", &vol, "--wait"]);
        t.push(ms);
        t.push(nubo(&cloud, &["volume", "detach", &vol, "--wait"]).1);
        t.push(nubo(&cloud, &["volume", "delete", &vol, "--wait"]).1);
        t.push(nubo(&cloud, &["snapshot", "delete", &snap]).1);
        eprintln!("run {n}/{runs}: {}", t.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" "));
        for (i, v) in t.into_iter().enumerate() {
            times[i].push(v);
        }
    }
    let (_, snapshot_ms) = nubo(&cloud, &["instance", "snapshot", &id, "--name", "bench-snap", "--wait"]);
    let image = std::fs::read_to_string(image_cache().join("names/tiny")).expect("tiny in the image cache");
    let disk = image_cache().join("sha256").join(image.trim()).join("disk.qcow2");
    let disk_bytes = std::fs::metadata(&disk).map(|m| m.len()).unwrap_or(0);
    let (_, import_ms) =
        nubo(&cloud, &["image", "import", disk.to_str().unwrap_or_default(), "--name", "bench-import"]);
    let command = cloud.command.clone();
    drop(cloud);

    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!();
    println!("storage operations over {runs} runs on one running tiny instance (wall time of the CLI with --wait)");
    println!("machine: {threads} CPUs, {}, {}", cpu_model(), qemu_version());
    println!("load:    {load_before} before, {} after (1/5/15-min load average)", loadavg());
    println!("bench:   cargo bench -p nubo --bench storage_ops   (NUBO_BENCH_RUNS={runs})");
    println!("cloud:   {command}");
    println!();
    println!("{:<44} {:>8} {:>8} {:>8}", "operation (ms)", "min", "median", "max");
    for (op, v) in OPS.iter().zip(&times) {
        println!("{op:<44} {}", fmt_stats(stats(v.iter().copied())));
    }
    println!("{:<44} {:>26.0}", "instance snapshot --wait (root disk, once)", snapshot_ms);
    println!(
        "{:<44} {:>26.0}",
        format!("image import (tiny root disk, {:.1} MiB, once)", disk_bytes as f64 / 1048576.0),
        import_ms
    );
}
