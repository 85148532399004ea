//! What the benches share: a `nubo up` in a temporary data directory that
//! kills itself and its VMs when dropped (also on a panic or Ctrl-C), the
//! shared tiny image, polling, the machine facts a result is reported with,
//! a process's CPU and memory, and positive-integer settings.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const HOST_ARGS: &[&str] =
    &["--accel", "tcg", "--vcpus", "4", "--memory-mib", "4096", "--disk-gib", "200", "--host-name", "bench-host"];

pub const POLL: Duration = Duration::from_millis(50);

pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn nubo_bin() -> PathBuf {
    std::env::var_os("NUBO_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nubo")))
}

pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

pub fn image_cache() -> PathBuf {
    std::env::var_os("NUBO_IMAGE_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache/images"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Polls `f` every `POLL` until it returns Some; panics after `limit` or
/// on Ctrl-C (the panic runs the cleanup in `Cloud::drop`).
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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
pub struct Cloud {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub command: String,
    pub url: String,
    pub token: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Cloud {
    pub fn up() -> Self {
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
        cloud.url = admin_env_var(&text, "NUBO_URL");
        cloud.token = admin_env_var(&text, "NUBO_TOKEN");
        cloud
    }

    /// One API call; returns the status code and the JSON body (Null if none).
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
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

    pub fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Every QEMU this cloud started: the pidfiles, plus any process whose
    /// command line names this (unique) data directory, in case a pidfile
    /// was not written yet.
    pub fn qemu_pids(&self) -> Vec<i32> {
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

pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks; it has no memory effects.
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
            // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
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

/// The value of `export K='...'` in a server's admin.env.
pub fn admin_env_var(text: &str, k: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("export {k}=")))
        .map(|v| v.trim().trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!("{k} missing from admin.env"))
}

/// (min, median, max) of the values present.
pub fn stats(v: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some((v[0], median, v[n - 1]))
}

pub fn fmt_stats(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((min, med, max)) => format!("{min:>8.0} {med:>8.0} {max:>8.0}"),
        None => format!("{:>8} {:>8} {:>8}", "-", "-", "-"),
    }
}

pub fn cpu_model() -> String {
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

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn qemu_version() -> String {
    let qemu = std::env::var("NUBO_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    Command::new(&qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("{qemu}: not found"))
}

pub fn ensure_image() {
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

/// Ctrl-C and SIGTERM end a bench through a panic, so `Cloud::drop` cleans up.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

/// The number of runs (`NUBO_BENCH_RUNS`, default 5) when started by
/// `cargo bench` (with `--bench`), with the signal handlers installed;
/// `None` under `cargo test --benches`, so test runs boot no VMs.
pub fn bench_runs(name: &str) -> Option<usize> {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("{name}: run with `cargo bench -p nubo --bench {name}` (skipped: boots real VMs)");
        return None;
    }
    let runs = match std::env::var("NUBO_BENCH_RUNS") {
        Ok(s) => s.trim().parse().ok().filter(|n| *n > 0).expect("NUBO_BENCH_RUNS must be a positive integer"),
        Err(_) => 5,
    };
    install_signal_handlers();
    Some(runs)
}

/// A positive-integer setting from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => {
            v.trim().parse().ok().filter(|n| *n > 0).unwrap_or_else(|| panic!("{name} must be a positive integer"))
        }
        Err(_) => default,
    }
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; 11 and 12 after the ")".
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}
