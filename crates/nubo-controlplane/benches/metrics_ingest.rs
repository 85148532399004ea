//! Metrics ingest: the CPU the embedded metrics store spends per sample.
//! A store on SQLite in a temporary directory takes `NUBO_BENCH_RESOURCES`
//! (default 1000) resources × 12 series, `NUBO_BENCH_ROUNDS` (default 30)
//! rounds 10 s apart (what agents send at the default interval), in
//! batches of at most 20,000 samples as an agent sends them; then one
//! rollup pass (which writes what is still in memory first, then rolls up
//! and expires). The process' CPU time (`/proc/self/stat`: the store's
//! SQLite threads included) is printed per sample, for the ingest calls
//! alone and with the rollup pass.
//!
//! Second, the write cost of the two chunk layouts the store could use,
//! on a scratch table: one row per series per flush, or one row per
//! resource per flush (all its series in one blob), each with blobs of
//! the sizes six samples a series compress to.
//!
//! Run: `cargo bench -p nubo-controlplane --bench metrics_ingest`
//!
//! The first part uses only `Store::open`, `ingest` and
//! `rollup_and_expire`, so the same file runs against an older checkout
//! for the baseline (see docs/benchmarks.md). Without `--bench` (under
//! `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_api::monitoring::MetricSample;
use nubo_controlplane::store::{now_ms, Store};
use nubo_controlplane::tsdb::Retention;
use std::time::Instant;

const SERIES: [&str; 12] = [
    "cpu_percent",
    "cpu_seconds_total",
    "memory_rss_bytes",
    "memory_bytes",
    "disk_read_bytes_total",
    "disk_read_bytes_per_second",
    "disk_write_bytes_total",
    "disk_write_bytes_per_second",
    "disk_read_ops_total",
    "disk_read_ops_per_second",
    "disk_write_ops_total",
    "disk_write_ops_per_second",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

/// CPU seconds (user + system) of this process.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A round of samples: each resource's 12 series at `at_ms`, values that
/// move as an idle instance's do (counters creeping up, small noise).
fn round(resources: usize, round: usize, at_ms: i64) -> Vec<MetricSample> {
    let mut out = Vec::with_capacity(resources * SERIES.len());
    for r in 0..resources {
        for (k, metric) in SERIES.iter().enumerate() {
            let noise = ((r * 31 + k * 17 + round * 7) % 13) as f64;
            let value = if metric.ends_with("_total") {
                (round * 1000 + r) as f64 + noise
            } else if metric.starts_with("memory") {
                268_435_456.0 - noise * 4096.0
            } else {
                noise * 0.25
            };
            out.push(MetricSample { resource: format!("i-{r:017x}"), metric: metric.to_string(), at_ms, value });
        }
    }
    out
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("metrics_ingest: run with `cargo bench -p nubo-controlplane --bench metrics_ingest`");
        return;
    }
    let resources = env_usize("NUBO_BENCH_RESOURCES", 1000);
    let rounds = env_usize("NUBO_BENCH_ROUNDS", 30);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("metrics_ingest: {resources} resources x 12 series x {rounds} rounds; load {}", loadavg());
    rt.block_on(async {
        let store = Store::open(&dir.path().join("m.db")).await.unwrap();
        let now = now_ms();
        let t0 = (now / 60_000 - 10) * 60_000 - rounds as i64 * 10_000;
        let batches: Vec<Vec<MetricSample>> =
            (0..rounds).map(|i| round(resources, i, t0 + i as i64 * 10_000)).collect();
        let samples: usize = batches.iter().map(Vec::len).sum();
        let (cpu0, wall0) = (cpu_secs(), Instant::now());
        for batch in &batches {
            for part in batch.chunks(20_000) {
                store.ingest(part).await.unwrap();
            }
        }
        let (ingest_cpu, ingest_wall) = (cpu_secs() - cpu0, wall0.elapsed().as_secs_f64());
        let (cpu1, wall1) = (cpu_secs(), Instant::now());
        let rollups = store.rollup_and_expire(&Retention::default(), now).await.unwrap();
        let (rollup_cpu, rollup_wall) = (cpu_secs() - cpu1, wall1.elapsed().as_secs_f64());
        println!(
            "ingest: {samples} samples, CPU {ingest_cpu:.2} s ({:.2} µs a sample), wall {ingest_wall:.2} s",
            ingest_cpu * 1e6 / samples as f64
        );
        println!("rollup pass (flush, {rollups} rollups, expiry): CPU {rollup_cpu:.2} s, wall {rollup_wall:.2} s",);
        println!(
            "total: {:.2} µs of CPU a sample; database {:.1} MiB; load {}",
            (ingest_cpu + rollup_cpu) * 1e6 / samples as f64,
            ["m.db", "m.db-wal"]
                .iter()
                .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
                .map(|m| m.len())
                .sum::<u64>() as f64
                / (1 << 20) as f64,
            loadavg()
        );
        layouts(&dir.path().join("layouts.db"), resources).await;
    });
}

/// One flush's writes in each layout, on a scratch SQLite table: a row per
/// series (12 × `resources` rows of ~30 bytes) or a row per resource
/// (`resources` rows of ~500 bytes), in multi-row statements of 200 rows.
async fn layouts(path: &std::path::Path, resources: usize) {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", path.display()))
        .unwrap()
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let mut conn = opts.connect().await.unwrap();
    for table in ["per_series", "per_resource"] {
        sqlx::query(&format!(
            "CREATE TABLE {table} (resource TEXT NOT NULL, metric TEXT, start_ms BIGINT NOT NULL,
             end_ms BIGINT NOT NULL, samples BIGINT NOT NULL, data BLOB NOT NULL)"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(&format!("CREATE INDEX {table}_r ON {table}(resource, end_ms)")).execute(&mut conn).await.unwrap();
        sqlx::query(&format!("CREATE INDEX {table}_e ON {table}(end_ms)")).execute(&mut conn).await.unwrap();
    }
    let flushes = 5;
    for (table, per_row, rows, blob) in
        [("per_series", "metric", resources * SERIES.len(), 30usize), ("per_resource", "", resources, 500)]
    {
        let (cpu0, wall0) = (cpu_secs(), Instant::now());
        for f in 0..flushes {
            let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
            for start in (0..rows).step_by(200) {
                let n = (rows - start).min(200);
                let values: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${})",
                            6 * i + 1,
                            6 * i + 2,
                            6 * i + 3,
                            6 * i + 4,
                            6 * i + 5,
                            6 * i + 6
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO {table} (resource, metric, start_ms, end_ms, samples, data) VALUES {}",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for i in start..start + n {
                    let at = f as i64 * 60_000;
                    q = q
                        .bind(format!("i-{:017x}", i / if per_row.is_empty() { 1 } else { SERIES.len() }))
                        .bind((!per_row.is_empty()).then_some(SERIES[i % SERIES.len()]))
                        .bind(at)
                        .bind(at + 50_000)
                        .bind(6i64)
                        .bind(vec![0x5au8; blob]);
                }
                q.execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        println!(
            "layout {table}: {rows} rows a flush; {:.1} ms CPU, {:.1} ms wall a flush",
            (cpu_secs() - cpu0) * 1e3 / flushes as f64,
            wall0.elapsed().as_secs_f64() * 1e3 / flushes as f64
        );
    }
}
