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

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Instance stages in the order the control plane and agent record them.
const STAGES: &[&str] =
    &["requested", "scheduled", "agent_seen", "image_ready", "disk_ready", "qemu_started", "boot_complete"];

const HOST_ARGS: &[&str] =
    &["--accel", "tcg", "--vcpus", "4", "--memory-mib", "4096", "--disk-gib", "200", "--host-name", "bench-host"];

const POLL: Duration = Duration::from_millis(50);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn nubo_bin() -> PathBuf {
    std::env::var_os("NUBO_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nubo")))
}

fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

fn image_cache() -> PathBuf {
    std::env::var_os("NUBO_IMAGE_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/images"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Polls `f` every `POLL` until it returns Some; panics after `limit` or
/// on Ctrl-C (the panic runs the cleanup in `Cloud::drop`).
fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            panic!("interrupted while waiting for {what}");
        }
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// A `nubo up` in a temporary data directory; dropping it kills the
/// daemon and every QEMU it started.
struct Cloud {
    dir: tempfile::TempDir,
    child: Option<Child>,
    command: String,
    url: String,
    token: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Cloud {
    fn up() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("server.log"))
                .expect("server.log")
        };
        let mut cmd = Command::new(nubo_bin());
        cmd.arg("up")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(&listen)
            .args(HOST_ARGS)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log());
        let command = format!(
            "NUBO_IMAGE_CACHE={} {} up --data-dir {} --listen {listen} {}",
            image_cache().display(),
            nubo_bin().display(),
            dir.path().display(),
            HOST_ARGS.join(" ")
        );
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", nubo_bin().display()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        let mut cloud = Cloud { dir, child: Some(child), command, url: String::new(), token: String::new(), rt, http };
        let env_file = cloud.dir.path().join("admin.env");
        let text = wait_until("DATA_DIR/admin.env", Duration::from_secs(600), || {
            if let Some(Ok(Some(status))) = cloud.child.as_mut().map(|c| c.try_wait()) {
                panic!("nubo up exited early: {status}");
            }
            std::fs::read_to_string(&env_file).ok()
        });
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .map(|v| v.trim().trim_matches('\'').to_string())
                .unwrap_or_else(|| panic!("{k} missing from admin.env"))
        };
        cloud.url = get("NUBO_URL");
        cloud.token = get("NUBO_TOKEN");
        cloud
    }

    /// One API call; returns the status code and the JSON body (Null if none).
    fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.rt.block_on(async {
            let resp = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_else(|e| panic!("{method} {path}: reading body: {e}"));
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        })
    }

    fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Every QEMU this cloud started: the pidfiles, plus any process whose
    /// command line names this (unique) data directory, in case a pidfile
    /// was not written yet.
    fn qemu_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path().join("instances")) {
            for e in entries.flatten() {
                if let Some(pid) =
                    std::fs::read_to_string(e.path().join("qemu.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())
                {
                    pids.push(pid);
                }
            }
        }
        let needle = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        let me = std::process::id() as i32;
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
                if pid == me || pids.contains(&pid) {
                    continue;
                }
                if let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) {
                    let is_qemu = cmdline.split(|b| *b == 0).next().is_some_and(|a| a.windows(4).any(|w| w == b"qemu"));
                    if is_qemu && cmdline.windows(needle.len()).any(|w| w == needle.as_slice()) {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }
}

fn alive(pid: i32) -> bool {
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        .unwrap_or(true);
    exists && !zombie
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // First the daemon (so nothing restarts a VM), then the VMs, which
        // `nubo up` leaves running on purpose when it stops.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pids = self.qemu_pids();
        for &pid in &pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let start = Instant::now();
        while pids.iter().any(|&p| alive(p)) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pid in pids.iter().filter(|&&p| alive(p)) {
            eprintln!("warning: QEMU pid {pid} is still alive");
        }
        if std::thread::panicking() {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join("server.log")) {
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("---- last lines of server.log ----");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

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

/// (min, median, max) of the values present.
fn stats(v: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((v[0], median, v[n - 1]))
}

fn fmt_stats(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((min, med, max)) => format!("{min:>8.0} {med:>8.0} {max:>8.0}"),
        None => format!("{:>8} {:>8} {:>8}", "-", "-", "-"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn qemu_version() -> String {
    let qemu = std::env::var("NUBO_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    Command::new(&qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("{qemu}: not found"))
}

fn ensure_image() {
    let started = Instant::now();
    let status = Command::new(nubo_bin())
        .args(["image", "build", "tiny"])
        .env("NUBO_IMAGE_CACHE", image_cache())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nubo_bin().display()));
    assert!(status.success(), "nubo image build tiny failed: {status}");
    eprintln!("image: tiny ready in {} ({:.1} s)", image_cache().display(), started.elapsed().as_secs_f64());
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("boot_stages: run with `cargo bench -p nubo --bench boot_stages` (skipped: boots real VMs)");
        return;
    }
    let runs: usize = match std::env::var("NUBO_BENCH_RUNS") {
        Ok(s) => s.trim().parse().ok().filter(|n| *n > 0).expect("NUBO_BENCH_RUNS must be a positive integer"),
        Err(_) => 5,
    };
    unsafe {
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }

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
