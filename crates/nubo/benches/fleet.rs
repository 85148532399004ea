//! Fleet benchmark: one real control plane (`nubo server`, a separate
//! process) and many compute agents in this process, each on the
//! *simulated* hypervisor driver (it starts no VM; see
//! `nubo_hypervisor::Simulated`), to measure the control plane at a scale
//! one machine cannot boot.
//!
//! Run: `cargo bench -p nubo --bench fleet`
//!
//! - `NUBO_FLEET_HOSTS` (default 1000) agents, each offering 16 vCPUs,
//!   64 GiB and 1 TB; `NUBO_FLEET_INSTANCES` (default 10000) launches of
//!   1 vCPU / 256 MiB / 1 GiB, `NUBO_FLEET_CONCURRENCY` (default 32)
//!   requests in flight; no launch starts after `NUBO_FLEET_LAUNCH_SECS`
//!   (default 900), so a fleet that cannot keep up still gives figures;
//!   `NUBO_FLEET_SETTLE_SECS` (default 300) to wait for the last launches
//!   to run; `NUBO_FLEET_DESCRIBES` (default 2000) describes, of an even
//!   sample of the launches.
//! - `NUBO_FLEET_LAUNCHES` (default: all of `NUBO_FLEET_INSTANCES`): how
//!   many of the instances are launched through the API (and measured);
//!   the others are written straight into the database first (the fast
//!   fill: multi-row INSERTs, the hosts' and the project's usage counted as
//!   a claim counts it, each wanted running; the agents start them when
//!   their next long-poll returns), so that a fleet of 100,000 instances
//!   does not take 100,000 launches to build.
//! - `NUBO_FLEET_AGENT_INTERVAL_MS` (default 500) each agent's reconcile
//!   pass, `NUBO_FLEET_METRICS_SECS` (default 10) its metrics interval.
//! - `NUBO_FLEET_IDLE_SECS` (default 30): at the end, with every instance
//!   running and no request but the fleet's own, the server's CPU and
//!   memory (RSS) are sampled from `/proc/PID` over this long.
//! - `NUBO_FLEET_DATABASES` (default `sqlite,postgres`): the whole run once
//!   per database, one after the other, and a table of both at the end.
//!   PostgreSQL is the server at `NUBO_TEST_DATABASE` (an admin URL, as
//!   `scripts/postgres.sh` prints it), in a fresh database of the run's own.
//!
//! Measured: join-and-register time of the fleet; launches per second
//! (each one a scheduler placement over every host and an atomic claim,
//! so it is also placements per second with concurrent claims) and their
//! latency; the time from a launch's `requested` event to its host
//! starting the VM (`qemu_started`, recorded by the agent) at p50 and p99;
//! describes (`GET /api/v1/instances/{id}`) per second; one full list; the
//! server's CPU time (and per launch); its CPU and RSS when idle; and the
//! database's size (SQLite: the file and its WAL; PostgreSQL:
//! `pg_database_size`).
//!
//! 10,000 hosts: `NUBO_FLEET_HOSTS=10000 NUBO_FLEET_INSTANCES=100000`. The
//! agents share one HTTP connection pool (one connection per long-poll,
//! not a pool each), and the bench raises its open-file limit (which the
//! server it starts inherits) to the hard limit.
//!
//! Without `--bench` (e.g. under `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use nubo_agent::{Agent, AgentConfig};
use nubo_hypervisor::{Accel, Simulated};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A `nubo server` child, killed when dropped.
struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
    token: String,
    /// The PostgreSQL database it runs on; None: SQLite in `dir`.
    database: Option<String>,
}

impl Server {
    fn start(dir: &Path, database: Option<&str>) -> Self {
        std::fs::create_dir_all(dir).expect("server dir");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("server.log")).expect("server.log");
        let child = Command::new(nubo_bin())
            .args(["server", "--data-dir"])
            .arg(dir)
            .args(["--listen", &listen, "--api-rate-limit", "1000000"])
            .args(database.iter().flat_map(|d| ["--database", d]))
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nubo_bin().display()));
        let env_file = dir.join("admin.env");
        let text =
            wait_until("the server's admin.env", Duration::from_secs(60), || std::fs::read_to_string(&env_file).ok());
        Server {
            url: admin_env_var(&text, "NUBO_URL"),
            token: admin_env_var(&text, "NUBO_TOKEN"),
            child,
            dir: dir.to_path_buf(),
            database: database.map(str::to_string),
        }
    }

    /// The server process's resident memory, MiB.
    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// CPU seconds (user + system) the server process has used.
    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    fn db_bytes(&self) -> u64 {
        if let Some(url) = &self.database {
            // psql comes with Debian's postgresql, which the run needs anyway.
            let out = Command::new("psql")
                .args([url.as_str(), "-tAc", "SELECT pg_database_size(current_database())"])
                .output()
                .expect("run psql");
            return String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        }
        ["nubo.db", "nubo.db-wal", "nubo.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url)).bearer_auth(&self.token);
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
}

/// Percentile `p` (0..=100) of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Runs `n` calls of `f(i)` with `concurrency` in flight, starting no new
/// call after `deadline`; returns each call's latency in ms and its status.
async fn burst<F, Fut>(n: usize, concurrency: usize, deadline: Instant, f: F) -> Vec<(f64, u16, Value)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (u16, Value)> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (f, next) = (f.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n || Instant::now() > deadline {
                    return out;
                }
                let t = Instant::now();
                let (status, body) = f(i).await;
                out.push((i, t.elapsed().as_secs_f64() * 1e3, status, body));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all.sort_by_key(|r| r.0);
    all.into_iter().map(|(_, ms, s, b)| (ms, s, b)).collect()
}

/// What one run is given.
struct Settings {
    hosts: usize,
    instances: usize,
    concurrency: usize,
    launch_limit: Duration,
    /// How many of the launches are described (an even sample).
    describes: usize,
    /// How long to wait for the last launches to run.
    settle_limit: Duration,
    /// How many instances are launched through the API (the rest filled).
    launches: usize,
    agent_interval: Duration,
    metrics_interval: Duration,
    idle: Duration,
}

/// What one run measured, for the table at the end.
#[derive(Default)]
struct Figures {
    database: String,
    join_secs: f64,
    accepted: usize,
    launches_per_sec: f64,
    launch_p50_ms: f64,
    launch_p99_ms: f64,
    /// When the last launches were all running, or how many were not.
    settle: String,
    list_ms: Option<f64>,
    describes_per_sec: f64,
    describe_p99_ms: f64,
    reconcile_p50_ms: f64,
    reconcile_p99_ms: f64,
    db_mib: f64,
    /// Server CPU time per accepted launch, ms.
    cpu_per_launch_ms: f64,
    fill_secs: Option<f64>,
    describe_p50_ms: f64,
    /// Server CPU (% of one core) and RSS when idle.
    idle_cpu_pct: f64,
    idle_rss_mib: f64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("fleet: run with `cargo bench -p nubo --bench fleet` (skipped: starts a server and many agents)");
        return;
    }
    install_signal_handlers();
    raise_open_file_limit();
    let instances = env_usize("NUBO_FLEET_INSTANCES", 10_000);
    let settings = Settings {
        hosts: env_usize("NUBO_FLEET_HOSTS", 1000),
        instances,
        launches: env_usize("NUBO_FLEET_LAUNCHES", instances).min(instances),
        agent_interval: Duration::from_millis(env_usize("NUBO_FLEET_AGENT_INTERVAL_MS", 500) as u64),
        metrics_interval: Duration::from_secs(env_usize("NUBO_FLEET_METRICS_SECS", 10) as u64),
        idle: Duration::from_secs(env_usize("NUBO_FLEET_IDLE_SECS", 30) as u64),
        concurrency: env_usize("NUBO_FLEET_CONCURRENCY", 32),
        // Past this, no new launch starts: a fleet that cannot keep up
        // still gives figures, for the launches it took.
        launch_limit: Duration::from_secs(env_usize("NUBO_FLEET_LAUNCH_SECS", 900) as u64),
        describes: env_usize("NUBO_FLEET_DESCRIBES", 2000),
        settle_limit: Duration::from_secs(env_usize("NUBO_FLEET_SETTLE_SECS", 300) as u64),
    };
    let databases = std::env::var("NUBO_FLEET_DATABASES").unwrap_or_else(|_| "sqlite,postgres".into());
    ensure_image();
    let mut all = Vec::new();
    for name in databases.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let figures = match name {
            "sqlite" => run(&settings, "SQLite", None),
            "postgres" => {
                let admin = std::env::var(nubo_controlplane::testdb::ENV).unwrap_or_else(|_| {
                    panic!("the PostgreSQL run needs NUBO_TEST_DATABASE (e.g. \"$(scripts/postgres.sh)\"); or set NUBO_FLEET_DATABASES=sqlite")
                });
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let db = rt
                    .block_on(nubo_controlplane::testdb::TestDatabase::create(&admin))
                    .expect("create the bench database");
                let f = run(&settings, "PostgreSQL", Some(&db.url));
                drop(db);
                f
            }
            other => panic!("NUBO_FLEET_DATABASES: unknown database {other:?}; use sqlite and/or postgres"),
        };
        all.push(figures);
    }
    println!();
    println!(
        "| {} hosts, {} instances ({} launched), {} in flight | {} |",
        settings.hosts,
        settings.instances,
        settings.launches,
        settings.concurrency,
        all.iter().map(|f| f.database.as_str()).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(all.len()));
    let row = |what: &str, cell: &dyn Fn(&Figures) -> String| {
        println!("| {what} | {} |", all.iter().map(cell).collect::<Vec<_>>().join(" | "));
    };
    row("fleet joined and registered", &|f| format!("{:.1} s", f.join_secs));
    row("instances written straight into the database (fill)", &|f| {
        f.fill_secs.map_or("none".into(), |s| format!("{} in {s:.1} s", settings.instances - settings.launches))
    });
    row("launches accepted", &|f| f.accepted.to_string());
    row("launches/s (= placements/s, concurrent claims)", &|f| format!("{:.0}", f.launches_per_sec));
    row("launch latency p50 / p99", &|f| format!("{:.0} / {:.0} ms", f.launch_p50_ms, f.launch_p99_ms));
    row("server CPU per launch", &|f| format!("{:.1} ms", f.cpu_per_launch_ms));
    row("requested → started on its host, p50 / p99", &|f| {
        format!("{:.0} / {:.0} ms", f.reconcile_p50_ms, f.reconcile_p99_ms)
    });
    row("last launches running after the last was accepted", &|f| f.settle.clone());
    row("describes/s (p50 / p99)", &|f| {
        format!("{:.0} ({:.0} / {:.0} ms)", f.describes_per_sec, f.describe_p50_ms, f.describe_p99_ms)
    });
    row("one full list", &|f| f.list_ms.map_or("failed".into(), |ms| format!("{:.1} s", ms / 1e3)));
    row("database size", &|f| format!("{:.1} MiB", f.db_mib));
    row("server idle: CPU (one core = 100%) / RSS", &|f| format!("{:.1}% / {:.0} MiB", f.idle_cpu_pct, f.idle_rss_mib));
}

/// Raises this process's open-file limit to its hard limit (the server
/// it starts inherits it): 10,000 agents hold 10,000 long-polls, and the
/// server as many sockets.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!("fleet: cannot raise the open-file limit: {}", std::io::Error::last_os_error());
            }
        }
    }
    println!("open-file limit: {}", limit.rlim_cur);
}

/// The database the server runs on, opened by the bench for the fast
/// fill and for counting running instances.
async fn open_database(server: &Server) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = match &server.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", server.dir.join("nubo.db").display()),
    };
    sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("open the server's database")
}

/// The fast fill: `n` instances of the default project written straight
/// into the database, spread evenly over `hosts`, wanted running and not
/// yet started (as a launch leaves them), with the hosts' and the
/// project's usage raised as a claim raises it; multi-row INSERTs, a
/// transaction per 5,000 so the server's own writes do not wait long.
async fn fill(db: &sqlx::AnyPool, hosts: &[String], n: usize) {
    let project: String = sqlx::query_scalar("SELECT id FROM projects WHERE name = 'default'")
        .fetch_one(db)
        .await
        .expect("the default project");
    let image_id: String =
        sqlx::query_scalar("SELECT id FROM images WHERE name = 'tiny'").fetch_one(db).await.expect("the tiny image");
    let now = now_ms();
    for start in (0..n).step_by(5000) {
        let end = (start + 5000).min(n);
        let mut tx = db.begin().await.expect("begin");
        for chunk in (start..end).collect::<Vec<_>>().chunks(250) {
            let rows: Vec<String> = chunk
                .iter()
                .map(|&i| {
                    format!(
                        "('i-f{i:016x}', 'fill-{i}', 'tiny', 1, 256, 1, '{}', 'running', 'pending', 1, 0, {now}, {now}, '{project}', 'optional', '{image_id}')",
                        hosts[i % hosts.len()]
                    )
                })
                .collect();
            sqlx::query(&format!(
                "INSERT INTO instances (id, name, image, vcpus, memory_mib, disk_gib, host_id, desired, state, start_seq,
                   reboot_count, created_at_ms, updated_at_ms, project_id, imds_tokens, image_id) VALUES {}",
                rows.join(", ")
            ))
            .execute(&mut *tx)
            .await
            .expect("insert instances");
        }
        tx.commit().await.expect("commit");
    }
    let mut tx = db.begin().await.expect("begin");
    for (h, host) in hosts.iter().enumerate() {
        let k = (n / hosts.len() + usize::from(h < n % hosts.len())) as i64;
        sqlx::query(
            "UPDATE hosts SET used_vcpus = used_vcpus + $1, used_memory_mib = used_memory_mib + $2,
               used_disk_gib = used_disk_gib + $1 WHERE id = $3",
        )
        .bind(k)
        .bind(k * 256)
        .bind(host)
        .execute(&mut *tx)
        .await
        .expect("count the hosts' usage");
    }
    sqlx::query(
        "UPDATE projects SET used_instances = used_instances + $1, used_vcpus = used_vcpus + $1,
           used_memory_mib = used_memory_mib + $2 WHERE id = $3",
    )
    .bind(n as i64)
    .bind(n as i64 * 256)
    .bind(&project)
    .execute(&mut *tx)
    .await
    .expect("count the project's usage");
    tx.commit().await.expect("commit");
}

/// How many instances are running, as their hosts reported.
async fn running(db: &sqlx::AnyPool) -> usize {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE state = 'running'").fetch_one(db).await.unwrap_or(0);
    n as usize
}

/// One whole run on one database: a fresh server, the fleet, the launches.
fn run(settings: &Settings, database: &str, url: Option<&str>) -> Figures {
    let Settings {
        hosts,
        instances,
        concurrency,
        launch_limit,
        describes,
        settle_limit,
        launches: launched,
        agent_interval,
        metrics_interval,
        idle,
    } = *settings;
    let mut figures = Figures { database: database.to_string(), ..Default::default() };
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("server"), url);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(concurrency * 2)
            .build()
            .expect("http client"),
        url: server.url.clone(),
        token: server.token.clone(),
    };
    println!("fleet: {hosts} simulated hosts, {instances} instances ({launched} launched through the API), {concurrency} requests in flight, {database}");
    // One connection pool for every agent: a connection per long-poll
    // and a few for the rest, not an idle pool per agent. Idle connections
    // are capped: a burst (the join, a slow moment of the server) would
    // otherwise leave thousands open on both ends, and at 10,000 hosts
    // the long-polls alone take half of an open-file limit of 20,000.
    let agent_http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .pool_idle_timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("the agents' http client");
    println!("machine: {} ({} CPUs), load {}", cpu_model(), nubo_agent::capacity::cpus(), loadavg());

    rt.block_on(async {
        let (s, _) = api
            .call(
                reqwest::Method::PUT,
                "/api/v1/projects/default/quota",
                Some(&json!({"instances": instances * 2, "vcpus": instances * 2, "memory_mib": instances * 512, "volume_gib": 1000})),
            )
            .await;
        assert_eq!(s, 200, "setting the default project's quota");

        // ---- the fleet joins ----
        let t = Instant::now();
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        let tokens = burst(hosts, concurrency, far, {
            let api = api.clone();
            move |_| {
                let api = api.clone();
                async move { api.call(reqwest::Method::POST, "/api/v1/hosts/join-tokens", None).await }
            }
        })
        .await;
        let mut agents = Vec::new();
        for (i, (_, status, body)) in tokens.into_iter().enumerate() {
            assert_eq!(status, 201, "join token: {body}");
            let token = body["token"].as_str().expect("token").to_string();
            let data_dir = tmp.path().join(format!("hosts/h{i:04}"));
            let config = AgentConfig {
                server_url: server.url.clone(),
                join_token: Some(token),
                data_dir,
                image_cache: image_cache(),
                name: format!("sim-{i:04}"),
                vcpus: 16,
                memory_mib: 65536,
                disk_gib: 1000,
                interval: agent_interval,
                stop_grace: Duration::from_secs(1),
                ca_cert: None,
                insecure_http: false,
                metadata_relay: None,
                metrics_interval,
                plugin_dirs: Vec::new(),
                network: None,
                guard: None,
                migration_address: "127.0.0.1".into(),
                shared_storage: None,
            };
            let agent = Agent::new(config, Accel::Tcg, Arc::new(Simulated::new(Duration::from_millis(200), nubo_api::BOOT_COMPLETE_MARKER)))
                .expect("agent")
                .share_http(agent_http.clone());
            agents.push(tokio::spawn(agent.run()));
        }
        let registered = loop {
            let (_, list) = api.call(reqwest::Method::GET, "/api/v1/hosts", None).await;
            let up = list.as_array().map(|a| a.len()).unwrap_or(0);
            if up >= hosts {
                break t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(900), "only {up} of {hosts} hosts registered after 15 min");
            tokio::time::sleep(Duration::from_millis(1000)).await;
        };
        println!("join: {hosts} hosts registered in {:.1} s", registered.as_secs_f64());
        figures.join_secs = registered.as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let db = open_database(&server).await;

        // ---- the fast fill ----
        let filled = instances - launched;
        if filled > 0 {
            let host_ids: Vec<String> =
                sqlx::query_scalar("SELECT id FROM hosts ORDER BY id").fetch_all(&db).await.expect("host ids");
            let t = Instant::now();
            fill(&db, &host_ids, filled).await;
            figures.fill_secs = Some(t.elapsed().as_secs_f64());
            println!("fill: {filled} instances written into the database in {:.1} s", t.elapsed().as_secs_f64());
            // The agents learn of them when their long-polls return (20 s at most).
            let t = Instant::now();
            loop {
                let up = running(&db).await;
                if up >= filled {
                    println!("fill: all {up} running on their hosts after {:.1} s", t.elapsed().as_secs_f64());
                    break;
                }
                if t.elapsed() > settle_limit {
                    println!("fill: only {up} of {filled} running after {} s", settle_limit.as_secs());
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }

        // ---- launches ----
        let cpu0 = server.cpu_secs();
        let t = Instant::now();
        let launches = burst(launched, concurrency, t + launch_limit, {
            let api = api.clone();
            move |i| {
                let api = api.clone();
                async move {
                    let body = json!({"name": format!("f{i}"), "image": "tiny", "vcpus": 1, "memory_mib": 256, "disk_gib": 1});
                    api.call(reqwest::Method::POST, "/api/v1/instances", Some(&body)).await
                }
            }
        })
        .await;
        let launch_secs = t.elapsed().as_secs_f64();
        let launch_cpu = server.cpu_secs() - cpu0;
        let ids: Vec<String> =
            launches.iter().filter(|r| r.1 == 201).filter_map(|r| r.2["id"].as_str().map(str::to_string)).collect();
        let failed: Vec<&(f64, u16, Value)> = launches.iter().filter(|r| r.1 != 201).collect();
        if let Some(f) = failed.first() {
            eprintln!("first failed launch: {} {}", f.1, f.2);
        }
        let lat = sorted(launches.iter().map(|r| r.0).collect());
        figures.accepted = ids.len();
        figures.cpu_per_launch_ms = launch_cpu * 1e3 / ids.len().max(1) as f64;
        figures.launches_per_sec = ids.len() as f64 / launch_secs;
        (figures.launch_p50_ms, figures.launch_p99_ms) = (pct(&lat, 50.0), pct(&lat, 99.0));
        println!(
            "launch: {} of {launched} accepted in {launch_secs:.1} s = {:.0} launches/s (= placements/s, {concurrency} concurrent claims); latency p50 {:.1} ms, p99 {:.1} ms; server CPU {:.1} s = {:.1} ms per launch",
            ids.len(),
            ids.len() as f64 / launch_secs,
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            launch_cpu,
            figures.cpu_per_launch_ms
        );

        // ---- until the hosts have started the last launches ----
        // (the last ones, polled one by one: a full list is itself slow
        // at this size, and is measured once below)
        let t = Instant::now();
        let tail: Vec<&String> = ids.iter().rev().take(20).collect();
        loop {
            let mut running = 0;
            for id in &tail {
                let (_, v) = api.call(reqwest::Method::GET, &format!("/api/v1/instances/{id}"), None).await;
                running += usize::from(v["state"] == "running");
            }
            if running == tail.len() {
                figures.settle = format!("{:.1} s", t.elapsed().as_secs_f64());
                println!("settle: the last {running} launches running {:.1} s after the last was accepted", t.elapsed().as_secs_f64());
                break;
            }
            if t.elapsed() > settle_limit {
                figures.settle = format!("{running} of the last {} after {} s", tail.len(), settle_limit.as_secs());
                println!("settle: only {running} of the last {} running after {} s", tail.len(), settle_limit.as_secs());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let lt = Instant::now();
        let (status, list) = api.call(reqwest::Method::GET, "/api/v1/instances", None).await;
        match list.as_array() {
            Some(a) => {
                figures.list_ms = Some(lt.elapsed().as_secs_f64() * 1e3);
                println!("list: GET /api/v1/instances ({} instances) in {:.0} ms", a.len(), lt.elapsed().as_secs_f64() * 1e3)
            }
            None => println!("list: GET /api/v1/instances failed after {:.0} s ({status})", lt.elapsed().as_secs_f64()),
        }

        // ---- describes, and each launch's reconcile time from its events ----
        let ids = Arc::new(ids);
        let cpu0 = server.cpu_secs();
        let t = Instant::now();
        // An even sample of the launches (all of them when fewer).
        let n = describes.min(ids.len());
        let shows = burst(n, concurrency, far, {
            let (api, ids) = (api.clone(), ids.clone());
            move |i| {
                let (api, ids) = (api.clone(), ids.clone());
                let id = ids[i * ids.len() / n].clone();
                async move { api.call(reqwest::Method::GET, &format!("/api/v1/instances/{id}"), None).await }
            }
        })
        .await;
        let show_secs = t.elapsed().as_secs_f64();
        let show_cpu = server.cpu_secs() - cpu0;
        let lat = sorted(shows.iter().map(|r| r.0).collect());
        figures.describes_per_sec = shows.len() as f64 / show_secs;
        figures.describe_p99_ms = pct(&lat, 99.0);
        figures.describe_p50_ms = pct(&lat, 50.0);
        println!(
            "describe: {} in {show_secs:.1} s = {:.0}/s; latency p50 {:.1} ms, p99 {:.1} ms; server CPU {:.1} s",
            shows.len(),
            shows.len() as f64 / show_secs,
            pct(&lat, 50.0),
            pct(&lat, 99.0),
            show_cpu
        );
        let stage = |v: &Value, name: &str| {
            v["events"].as_array().and_then(|e| e.iter().find(|e| e["stage"] == name)).and_then(|e| e["at_ms"].as_i64())
        };
        let reconcile = sorted(
            shows
                .iter()
                .filter_map(|(_, _, v)| Some((stage(v, "qemu_started")? - stage(v, "requested")?) as f64))
                .collect(),
        );
        (figures.reconcile_p50_ms, figures.reconcile_p99_ms) = (pct(&reconcile, 50.0), pct(&reconcile, 99.0));
        println!(
            "reconcile: requested -> started on its host for {} instances: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            reconcile.len(),
            pct(&reconcile, 50.0),
            pct(&reconcile, 99.0),
            reconcile.last().copied().unwrap_or(f64::NAN)
        );
        figures.db_mib = server.db_bytes() as f64 / 1048576.0;

        // ---- idle: the fleet's own traffic alone ----
        let t = Instant::now();
        let all_running = loop {
            let up = running(&db).await;
            if up >= filled + ids.len() || t.elapsed() > settle_limit {
                break up;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let cpu0 = server.cpu_secs();
        let t = Instant::now();
        let mut rss_max: f64 = 0.0;
        while t.elapsed() < idle {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_max = rss_max.max(server.rss_mib());
        }
        figures.idle_cpu_pct = (server.cpu_secs() - cpu0) * 100.0 / t.elapsed().as_secs_f64();
        figures.idle_rss_mib = rss_max;
        println!(
            "idle: {hosts} hosts, {all_running} instances running: server CPU {:.1}% of one core over {:.0} s, RSS {:.0} MiB (max)",
            figures.idle_cpu_pct,
            t.elapsed().as_secs_f64(),
            rss_max
        );
        db.close().await;
        println!("database: {:.1} MiB ({database}) for {hosts} hosts and {} instances", figures.db_mib, filled + ids.len());
        for a in agents {
            a.abort();
        }
    });
    // The agents' tasks end with the runtime; the server with its Drop.
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(server);
    figures
}
