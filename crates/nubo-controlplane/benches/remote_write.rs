//! Prometheus remote write: how many samples a second the control plane's
//! sender (`metrics_remote::write`) delivers to a real Prometheus (Debian's,
//! started here as a remote-write receiver on 127.0.0.1), and the CPU it
//! costs the server per sample; in the same run, the CPU the embedded store
//! (SQLite) spends ingesting the same batches, for comparison.
//!
//! The samples are a fleet's: `NUBO_BENCH_INSTANCES` instances (default
//! 10,000) on hosts of 100 each, 12 series per instance, for
//! `NUBO_BENCH_ROUNDS` rounds (default 6) ten seconds apart, queued one
//! host batch at a time as ingest queues them. All batches are built before
//! the clock starts. The bench waits while the queue is over half full (the
//! server never waits: it drops; here nothing is dropped so that the rate
//! is the sender's). CPU is the process's user + system time from
//! `/proc/self/stat` (10 ms ticks) and Prometheus' from `/proc/PID/stat`.
//!
//! Run: `cargo bench -p nubo-controlplane --bench remote_write`
//! (`NUBO_PROMETHEUS` names the binary; default: the one
//! scripts/install-deps.sh unpacks into .cache/tools, else PATH). Without
//! `--bench` (under `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_api::monitoring::MetricSample;
use nubo_controlplane::metrics_remote::write::{Writer, WriterOptions};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const METRICS: [&str; 12] = [
    "cpu_percent",
    "cpu_seconds_total",
    "memory_rss_bytes",
    "memory_bytes",
    "disk_read_bytes_total",
    "disk_write_bytes_total",
    "disk_read_ops_total",
    "disk_write_ops_total",
    "net_rx_bytes_total",
    "net_tx_bytes_total",
    "fs_used_bytes",
    "fs_used_percent",
];
const PER_HOST: usize = 100;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User + system CPU of a process, in seconds (clock ticks of 10 ms).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Debian's prometheus: `NUBO_PROMETHEUS`, else as scripts/install-deps.sh
/// unpacks it, else from PATH.
fn prometheus_bin() -> String {
    std::env::var("NUBO_PROMETHEUS").unwrap_or_else(|_| nubo_testkit::prometheus_program("prometheus"))
}

fn instance_id(n: usize) -> String {
    format!("i-{n:017x}")
}

/// One batch per host per round, as agents send them.
fn batches(instances: usize, rounds: usize, t0: i64) -> Vec<Vec<MetricSample>> {
    let mut out = Vec::new();
    for r in 0..rounds {
        let at_ms = t0 + r as i64 * 10_000;
        for host in 0..instances.div_ceil(PER_HOST) {
            let mut b = Vec::with_capacity(PER_HOST * METRICS.len());
            for i in host * PER_HOST..((host + 1) * PER_HOST).min(instances) {
                let id = instance_id(i);
                for (k, m) in METRICS.iter().enumerate() {
                    let value = (i * 31 + k * 7 + r) as f64 * 1.5;
                    b.push(MetricSample { resource: id.clone(), metric: m.to_string(), at_ms, value });
                }
            }
            out.push(b);
        }
    }
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let instances = env_num("NUBO_BENCH_INSTANCES", 10_000);
    let rounds = env_num("NUBO_BENCH_ROUNDS", 6);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    // Prometheus, as a receiver only.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
    let addr = format!("127.0.0.1:{}", nubo_testkit::free_port());
    let mut prom = Command::new(prometheus_bin())
        .arg("--web.enable-remote-write-receiver")
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--config.file={}", config.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Debian's prometheus (scripts/install-deps.sh, or NUBO_PROMETHEUS)");
    let prom_pid = prom.id().to_string();
    let ready = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(ready.elapsed() < Duration::from_secs(60), "prometheus did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));

    let t0 = nubo_controlplane::store::now_ms() - rounds as i64 * 10_000 - 60_000;
    let all = batches(instances, rounds, t0);
    let total: usize = all.iter().map(Vec::len).sum();
    println!("{instances} instances, {rounds} rounds: {total} samples in {} host batches", all.len());

    // Remote write.
    let url = format!("http://{addr}/api/v1/write").parse().unwrap();
    let options = WriterOptions::default();
    let half = options.capacity / 2;
    let (elapsed, cpu, prom_cpu, sent, failed) = rt.block_on(async {
        let w = Writer::start(url, options);
        let (cpu0, pcpu0, start) = (cpu_secs("self"), cpu_secs(&prom_pid), Instant::now());
        for b in &all {
            while w.queued() > half {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            w.enqueue(b);
        }
        let s = w.stats();
        while s.sent.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed) < total as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (
            start.elapsed(),
            cpu_secs("self") - cpu0,
            cpu_secs(&prom_pid) - pcpu0,
            s.sent.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed) + s.dropped_queue_full.load(Ordering::Relaxed),
        )
    });
    let rate = sent as f64 / elapsed.as_secs_f64();
    println!(
        "remote write: {sent} sent, {failed} failed in {:.2} s = {rate:.0} samples/s; \
         server CPU {:.2} s = {:.2} us/sample; Prometheus CPU {:.2} s = {:.2} us/sample",
        elapsed.as_secs_f64(),
        cpu,
        cpu * 1e6 / sent.max(1) as f64,
        prom_cpu,
        prom_cpu * 1e6 / sent.max(1) as f64,
    );
    let per_fleet = instances as f64 * METRICS.len() as f64 / 10.0;
    println!(
        "at {instances} instances every 10 s ({per_fleet:.0} samples/s): {:.2} % of one core for the sender",
        per_fleet * cpu / sent.max(1) as f64 * 100.0
    );
    let _ = prom.kill();
    let _ = prom.wait();

    // The embedded store (SQLite), the same batches of one round.
    let one_round = all.len() / rounds.max(1);
    let db = tempfile::tempdir().unwrap();
    let (elapsed, cpu, n) = rt.block_on(async {
        let store = nubo_controlplane::store::Store::open(&db.path().join("bench.db")).await.unwrap();
        let n: usize = all[..one_round].iter().map(Vec::len).sum();
        let (cpu0, start) = (cpu_secs("self"), Instant::now());
        for b in &all[..one_round] {
            store.ingest(b).await.unwrap();
        }
        (start.elapsed(), cpu_secs("self") - cpu0, n)
    });
    println!(
        "embedded store (SQLite), one round: {n} samples in {:.2} s = {:.0} samples/s; CPU {:.2} s = {:.2} us/sample",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu,
        cpu * 1e6 / n as f64
    );
}
