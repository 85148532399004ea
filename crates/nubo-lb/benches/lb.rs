//! Load balancer benchmarks, on 127.0.0.1 only. Not a test: run with
//!
//! ```sh
//! cargo bench -p nubo-lb --bench lb            # both parts
//! cargo bench -p nubo-lb --bench lb -- --quick # shorter runs
//! ```
//!
//! **Unequal capacity.** Two backends in this process, each serving one
//! request at a time: `fast` takes 2 ms per request, `slow` 8 ms (a
//! quarter of the capacity: a backend whose CPU something else is using).
//! Every second the bench hands the balancer each backend's busy fraction
//! over that second, as the agent does with vCPU time. An open-loop
//! Poisson load (latency counted from each request's scheduled start, so
//! a backed-up balancer cannot hide it) at the same rate goes through a
//! round-robin balancer and then a least-loaded one on the same backends;
//! the result is each one's p50/p99 and the ratio of the p99s.
//!
//! **Small response against nginx.** Two backends in this process answer
//! `ok` at once. nubo-lb (`serve::run` in a child process of this bench,
//! its own 2-thread runtime) and nginx from Debian's packages (a
//! generated config: 2 workers, the same two upstreams, keep-alive to
//! them, access log off, no limit on requests per client connection) each run as a round-robin reverse proxy; a
//! closed-loop load of 32 keep-alive connections for the run's length
//! gives each one's requests per second and p99, and the ratios.
//! `NUBO_BENCH_NGINX` names another nginx binary (default `nginx` on PATH);
//! without one that part is skipped with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nubo_lb::{Algorithm, BackendConfig, Balancer, HealthConfig, ListenerConfig, Protocol, Timeouts};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A backend: serves `workers` requests at a time, each taking `service`
/// (a sleep, so the bench's own CPU is not the bottleneck); counts the
/// time it was busy.
struct Backend {
    addr: SocketAddr,
    busy_ns: Arc<AtomicU64>,
}

async fn backend(service: Duration, workers: usize) -> Result<Backend, Error> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let busy_ns = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(workers));
    let busy = busy_ns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let (gate, busy) = (gate.clone(), busy.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (gate, busy) = (gate.clone(), busy.clone());
                    async move {
                        if !service.is_zero() {
                            let _permit = gate.acquire().await;
                            let t = Instant::now();
                            tokio::time::sleep(service).await;
                            busy.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    Ok(Backend { addr, busy_ns })
}

fn listener(algorithm: Algorithm, backends: &[(&str, SocketAddr)], listen: SocketAddr) -> ListenerConfig {
    ListenerConfig {
        id: format!("bench-{algorithm}"),
        listen,
        protocol: Protocol::Http,
        algorithm,
        backends: backends.iter().map(|(id, a)| BackendConfig { id: id.to_string(), address: *a, weight: 1 }).collect(),
        health: HealthConfig { interval_ms: 1_000, ..Default::default() },
        timeouts: Timeouts::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> Client {
    let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
    c.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(c)
}

/// Poisson arrivals at `rate` per second for `length`; every request's
/// latency from its scheduled start, and how many failed.
async fn open_loop(addr: SocketAddr, rate: f64, length: Duration) -> (Vec<Duration>, usize) {
    let client = client();
    let uri: hyper::Uri = match format!("http://{addr}/").parse() {
        Ok(u) => u,
        Err(_) => return (Vec::new(), 0),
    };
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    let mut at = start;
    let mut rng = rand::thread_rng();
    while at < start + length {
        let gap: f64 = -(1.0 - rng.gen::<f64>()).ln() / rate;
        at += Duration::from_secs_f64(gap);
        tokio::time::sleep_until(at).await;
        let (client, uri, scheduled) = (client.clone(), uri.clone(), at);
        tasks.spawn(async move {
            let ok = match client.get(uri).await {
                Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            (ok, scheduled.elapsed())
        });
    }
    let (mut lat, mut failed) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((true, d)) => lat.push(d),
            _ => failed += 1,
        }
    }
    lat.sort();
    (lat, failed)
}

async fn unequal_capacity(length: Duration) -> Result<(), Error> {
    let (fast_t, slow_t) = (Duration::from_millis(2), Duration::from_millis(8));
    let fast = backend(fast_t, 1).await?;
    let slow = backend(slow_t, 1).await?;
    // Measured capacities (a tokio sleep overshoots by up to a timer
    // tick); the offered load keeps round-robin's share of the slow
    // backend at 80% of what it can take, so both runs are stable.
    let rate = 2.0 * 0.8 / ms(slow_t + Duration::from_millis(1)) * 1000.0;
    println!("## Unequal capacity: fast {} ms, slow {} ms per request, one at a time each", ms(fast_t), ms(slow_t));
    println!("offered load {rate:.0} requests/s (Poisson), {} s per algorithm\n", length.as_secs());
    println!("| algorithm | requests | failed | to slow | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    let backends = [("fast", fast.addr), ("slow", slow.addr)];
    let mut p99s = Vec::new();
    for algorithm in [Algorithm::RoundRobin, Algorithm::LeastLoaded] {
        let lb = Arc::new(Balancer::start(listener(algorithm, &backends, "127.0.0.1:0".parse()?))?);
        // The owner's CPU feed: each backend's busy fraction every second.
        let stop = Arc::new(AtomicBool::new(false));
        let feed = {
            let (lb, stop) = (lb.clone(), stop.clone());
            let meters = [("fast", fast.busy_ns.clone()), ("slow", slow.busy_ns.clone())];
            tokio::spawn(async move {
                let mut last: Vec<u64> = meters.iter().map(|(_, m)| m.load(Ordering::Relaxed)).collect();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut then = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let wall = then.elapsed().as_nanos().max(1) as f64;
                    then = Instant::now();
                    for (i, (id, m)) in meters.iter().enumerate() {
                        let now = m.load(Ordering::Relaxed);
                        lb.set_cpu(id, Some(((now - last[i]) as f64 / wall).min(1.0)));
                        last[i] = now;
                    }
                }
            })
        };
        // Health checks mark both up before the load starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (lat, failed) = open_loop(lb.local_addr(), rate, length).await;
        stop.store(true, Ordering::Relaxed);
        feed.abort();
        let stats = lb.stats();
        let to_slow = stats.backends.iter().find(|b| b.id == "slow").map(|b| b.requests).unwrap_or(0);
        let total: u64 = stats.backends.iter().map(|b| b.requests).sum();
        let p99 = percentile(&lat, 0.99);
        println!(
            "| {algorithm} | {} | {failed} | {:.0}% | {:.1} | {:.1} | {:.1} |",
            lat.len(),
            100.0 * to_slow as f64 / total.max(1) as f64,
            ms(percentile(&lat, 0.5)),
            ms(p99),
            ms(lat.last().copied().unwrap_or_default())
        );
        p99s.push(p99);
        drop(lb);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "\np99 round-robin / p99 least-loaded = **{:.2}**\n",
        p99s[0].as_secs_f64() / p99s[1].as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// `connections` keep-alive connections each sending GET / in a loop for
/// `length` (after a 1 s warm-up): requests per second, p50, p99, failures.
async fn closed_loop(addr: SocketAddr, connections: usize, length: Duration) -> (f64, Duration, Duration, usize) {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let warm_until = Instant::now() + Duration::from_secs(1);
    let end = warm_until + length;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (lat, failed) = (lat.clone(), failed.clone());
        tasks.spawn(async move {
            let mut mine = Vec::new();
            'conn: while Instant::now() < end {
                let Ok(s) = tokio::net::TcpStream::connect(addr).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tokio::spawn(conn);
                while Instant::now() < end {
                    let Ok(req) = Request::get("/").header("host", "bench").body(Empty::<Bytes>::new()) else {
                        break 'conn;
                    };
                    let t = Instant::now();
                    let ok = match send.send_request(req).await {
                        Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue 'conn;
                    }
                    if t >= warm_until {
                        mine.push(t.elapsed());
                    }
                }
            }
            lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort();
    let rps = lat.len() as f64 / length.as_secs_f64();
    (rps, percentile(&lat, 0.5), percentile(&lat, 0.99), failed.load(Ordering::Relaxed) as usize)
}

fn free_addr() -> Result<SocketAddr, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Until `addr` answers GET / with 200 (the proxy started), at most 10 s.
async fn wait_serving(addr: SocketAddr) -> Result<(), Error> {
    let c = client();
    let uri: hyper::Uri = format!("http://{addr}/").parse()?;
    let start = Instant::now();
    loop {
        if let Ok(r) = c.get(uri.clone()).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("nothing answered on {addr} within 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops the child when dropped, so an error leaves no proxy running:
/// SIGTERM, which nginx's master passes on to its workers (a SIGKILL
/// would leave them running), then SIGKILL if it is still there after 5 s.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn against_nginx(length: Duration) -> Result<(), Error> {
    const CONNECTIONS: usize = 32;
    let a = backend(Duration::ZERO, 1).await?;
    let b = backend(Duration::ZERO, 1).await?;
    let dir = tempfile::tempdir()?;
    println!("## Small response (`ok`), {CONNECTIONS} keep-alive connections, {} s each\n", length.as_secs());
    println!("| proxy | requests/s | p50 ms | p99 ms | failed |");
    println!("|---|---|---|---|---|");
    let mut results = Vec::new();

    // nubo-lb: this bench binary again, in `--serve-child` mode.
    let listen = free_addr()?;
    let cfg = nubo_lb::ServeConfig {
        stats_listen: None,
        listeners: vec![listener(Algorithm::RoundRobin, &[("a", a.addr), ("b", b.addr)], listen)],
    };
    let cfg_path = dir.path().join("lb.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
    let child = Child(
        std::process::Command::new(std::env::current_exe()?)
            .arg("--serve-child")
            .arg(&cfg_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    wait_serving(listen).await?;
    let r = closed_loop(listen, CONNECTIONS, length).await;
    println!("| nubo-lb | {:.0} | {:.2} | {:.2} | {} |", r.0, ms(r.1), ms(r.2), r.3);
    results.push(r);
    drop(child);

    let nginx = std::env::var("NUBO_BENCH_NGINX").unwrap_or_else(|_| "nginx".into());
    let listen = free_addr()?;
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           upstream be {{ server {a}; server {b}; keepalive 64; }}\n\
           server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://be;\n\
               proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n",
        dir = dir.path().display(),
        a = a.addr,
        b = b.addr,
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let spawned = std::process::Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(c) => Child(c),
        Err(e) => {
            println!("\nnginx not run ({nginx}: {e}); install it with scripts/install-deps.sh");
            return Ok(());
        }
    };
    wait_serving(listen).await?;
    let r = closed_loop(listen, CONNECTIONS, length).await;
    println!("| nginx {} | {:.0} | {:.2} | {:.2} | {} |", nginx_version(&nginx), r.0, ms(r.1), ms(r.2), r.3);
    results.push(r);
    drop(child);
    let (n, x) = (results[0], results[1]);
    println!(
        "\nnubo-lb / nginx: throughput **{:.2}**, p99 **{:.2}**\n",
        n.0 / x.0.max(1e-9),
        n.2.as_secs_f64() / x.2.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn nginx_version(bin: &str) -> String {
    std::process::Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().trim_start_matches("nginx version: nginx/").to_string())
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-child") {
        let Some(path) = args.get(i + 1) else { std::process::exit(2) };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        let result = rt.map_err(Error::from).and_then(|rt| Ok(rt.block_on(nubo_lb::serve::run(path.as_ref()))?));
        if let Err(e) = result {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo test` runs benches with no `--bench`: do nothing there.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let length = Duration::from_secs(if quick { 5 } else { 20 });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        unequal_capacity(length).await?;
        against_nginx(if quick { Duration::from_secs(3) } else { Duration::from_secs(10) }).await
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
