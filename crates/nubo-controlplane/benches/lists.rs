//! Lists at scale: a control plane (its router, driven in-process: no
//! socket, no VM) whose store holds 10,000 and then 100,000 instances,
//! written straight into the database (each with two forwarded ports and
//! two tags, spread over 10 hosts), and the time of:
//!
//! - a REST page of 1,000 (`GET /api/v1/instances?limit=1000`);
//! - every instance over REST, following `Next-Page-Token` in pages of 1,000;
//! - EC2 DescribeInstances of a page (`MaxResults=1000`) and of all
//!   (following `NextToken`);
//! - the desired state of one host (a tenth of the instances).
//!
//! Run: `cargo bench -p nubo-controlplane --bench lists`
//!
//! - `NUBO_BENCH_SIZES` (default `10000,100000`): the instance counts.
//! - `NUBO_BENCH_RUNS` (default 3): each measurement's runs; the median
//!   is printed (and the slowest).
//! - `NUBO_TEST_DATABASE=postgres://...` (an admin URL): the store is a
//!   fresh PostgreSQL database instead of SQLite.
//!
//! The bench uses only the HTTP API and the schema, so the same file runs
//! against an older checkout to measure the baseline (see
//! docs/benchmarks.md). Without `--bench` (under `cargo test --benches`)
//! it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

#[path = "../tests/common/mod.rs"]
mod common;

use axum::http::StatusCode;
use common::ec2::{all, key, ok};
use common::T;
use serde_json::Value;
use std::time::{Duration, Instant};

const HOSTS: usize = 10;
const PAGE: usize = 1000;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A GET through the router that must answer 200: the status, the JSON
/// answer and the next page's token.
async fn get(t: &T, path: &str, token: &str) -> (StatusCode, Value, Option<String>) {
    let (status, v, next) = t.get_page(path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    (status, v, next)
}

/// Writes `n` instances (numbered from `from`) of the default project
/// straight into the database, with two ports and two tags each, spread
/// over `hosts`; multi-row INSERTs in one transaction.
async fn insert_instances(
    pool: &sqlx::AnyPool,
    project: &str,
    image_id: &str,
    hosts: &[String],
    from: usize,
    n: usize,
) {
    let mut tx = pool.begin().await.unwrap();
    let base_ms = 1_700_000_000_000i64;
    for chunk_start in (from..from + n).step_by(250) {
        let chunk: Vec<usize> = (chunk_start..(chunk_start + 250).min(from + n)).collect();
        let id = |i: usize| format!("i-{i:017x}");
        let instances: Vec<String> = chunk
            .iter()
            .map(|&i| {
                format!(
                    "('{}', 'web-{i}', 'tiny', 1, 64, 1, '{}', 'running', 'running', 1, 0, {}, {}, '{project}', 'optional', '{image_id}')",
                    id(i),
                    hosts[i % hosts.len()],
                    base_ms + i as i64,
                    base_ms + i as i64
                )
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO instances (id, name, image, vcpus, memory_mib, disk_gib, host_id, desired, state, start_seq,
               reboot_count, created_at_ms, updated_at_ms, project_id, imds_tokens, image_id) VALUES {}",
            instances.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let ports: Vec<String> = chunk
            .iter()
            .flat_map(|&i| {
                let host = &hosts[i % hosts.len()];
                let slot = 20000 + 2 * (i / hosts.len()) as i64;
                [format!("('{}', 22, '{host}', {slot})", id(i)), format!("('{}', 80, '{host}', {})", id(i), slot + 1)]
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO instance_ports (instance_id, guest_port, host_id, host_port) VALUES {}",
            ports.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let tags: Vec<String> = chunk
            .iter()
            .flat_map(|&i| {
                [
                    format!("('{}', 'instance', '{project}', 'Name', 'web-{i}')", id(i)),
                    format!("('{}', 'instance', '{project}', 'tier', 'web')", id(i)),
                ]
            })
            .collect();
        sqlx::query(&format!(
            "INSERT INTO tags (resource_id, resource_type, project_id, key, value) VALUES {}",
            tags.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// Runs `op` `runs` times; the median and the slowest, and what the last run returned.
async fn time<F, Fut>(runs: usize, mut op: F) -> (Duration, Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..runs {
        let start = Instant::now();
        count = op().await;
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], *times.last().unwrap(), count)
}

fn report(size: usize, what: &str, (median, max, count): (Duration, Duration, usize)) {
    println!(
        "{size:>7} instances | {what:<38} | {count:>6} items | median {:>9.1} ms | max {:>9.1} ms",
        median.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sizes: Vec<usize> =
        env_or("NUBO_BENCH_SIZES", "10000,100000").split(',').map(|s| s.trim().parse().unwrap()).collect();
    let runs: usize = env_or("NUBO_BENCH_RUNS", "3").parse().unwrap();
    let t = T::new().await;
    let url = match &t.db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", t.data_dir().join("nubo.db").display()),
    };
    println!("database: {}", if t.db.is_some() { "PostgreSQL" } else { "SQLite" });
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        hosts.push(t.add_host_with_id().await);
    }
    let host_ids: Vec<String> = hosts.iter().map(|(id, _)| id.to_string()).collect();
    let admin = t.admin.clone();
    let project = t.ctx.store.ensure_project(nubo_controlplane::identity::DEFAULT_PROJECT).await.unwrap().id;
    let image_id: String =
        sqlx::query_scalar("SELECT id FROM images WHERE name = 'tiny'").fetch_one(&pool).await.unwrap();
    let k = key(&t, &admin).await;
    let (host, cred) = hosts[0].clone();

    let mut have = 0;
    for size in sizes {
        let start = Instant::now();
        insert_instances(&pool, &project, &image_id, &host_ids, have, size - have).await;
        have = size;
        println!("{size:>7} instances written in {:.1} s", start.elapsed().as_secs_f64());

        report(
            size,
            "REST: a page of 1,000",
            time(runs, || async {
                let (_, v, _) = get(&t, &format!("/api/v1/instances?limit={PAGE}"), &admin).await;
                v.as_array().unwrap().len()
            })
            .await,
        );
        report(
            size,
            "REST: all, in pages of 1,000",
            time(runs, || async {
                let mut count = 0;
                let mut next: Option<String> = None;
                loop {
                    let path = match &next {
                        Some(n) => format!("/api/v1/instances?limit={PAGE}&page_token={n}"),
                        None => format!("/api/v1/instances?limit={PAGE}"),
                    };
                    let (_, v, n) = get(&t, &path, &admin).await;
                    count += v.as_array().unwrap().len();
                    match n {
                        Some(n) => next = Some(n),
                        None => return count,
                    }
                }
            })
            .await,
        );
        report(
            size,
            "EC2: DescribeInstances MaxResults=1000",
            time(runs, || async {
                let xml = ok(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "1000")]).await;
                all(&xml, "instanceId").len()
            })
            .await,
        );
        report(
            size,
            "EC2: DescribeInstances, all pages",
            time(runs, || async {
                let mut count = 0;
                let mut next: Option<String> = None;
                loop {
                    let mut params = vec![("Action", "DescribeInstances"), ("MaxResults", "1000")];
                    if let Some(n) = &next {
                        params.push(("NextToken", n));
                    }
                    let xml = ok(&t, &k, &params).await;
                    count += all(&xml, "instanceId").len();
                    match all(&xml, "nextToken").pop() {
                        Some(n) => next = Some(n),
                        None => return count,
                    }
                }
            })
            .await,
        );
        report(
            size,
            "agent: one host's desired state",
            time(runs, || async {
                let (_, v, _) = get(&t, &format!("/api/v1/agent/hosts/{host}/desired"), &cred).await;
                v["instances"].as_array().unwrap().len()
            })
            .await,
        );
    }
}
