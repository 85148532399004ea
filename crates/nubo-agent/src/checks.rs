//! Health checks this host runs, Nagios-style: it fetches its list from
//! the control plane, runs each check when it is due (a Nagios plugin
//! from the plugin directories, a TCP connect, an HTTP GET, or an
//! instance's liveness: QMP and its guest agent), and sends the results
//! (status 0/1/2/3, output, perfdata). Soft and hard states, retries and
//! notifications are the control plane's business: it sets the interval
//! each check runs at. The reconciler starts `CheckRunner::run`.

use crate::host::Host;
use crate::instances::Instances;
use nubo_api::ids::CheckId;
use nubo_api::monitoring::{CheckAction, CheckResult, CheckResults, DesiredCheck};
use nubo_hypervisor::VmStatus;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OK: u8 = 0;
const WARNING: u8 = 1;
const CRITICAL: u8 = 2;
const UNKNOWN: u8 = 3;
/// How often the loop looks for due checks.
const TICK: Duration = Duration::from_millis(500);
/// How often the list of checks is fetched again.
const REFRESH: Duration = Duration::from_secs(5);
/// Output kept from a plugin.
const MAX_OUTPUT: usize = 4096;

/// The first line of a plugin's output split into text and perfdata.
pub fn split_output(stdout: &str) -> (String, String) {
    let first = stdout.lines().next().unwrap_or("").trim();
    let (text, perf) = first.split_once('|').unwrap_or((first, ""));
    let cut = |s: &str| s.trim().chars().take(MAX_OUTPUT).collect::<String>();
    (cut(text), cut(perf))
}

/// The plugin `name` in one of `dirs`: only plain names (`check_http`),
/// never a path, so a check cannot run anything outside them.
pub fn find_plugin(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plain || !name.starts_with("check_") {
        return None;
    }
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

async fn run_plugin(dirs: &[PathBuf], command: &[String], timeout: Duration) -> (u8, String, String) {
    let Some(name) = command.first() else { return (UNKNOWN, "the check has no command".into(), String::new()) };
    let Some(program) = find_plugin(dirs, name) else {
        let where_ = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
        return (
            UNKNOWN,
            format!("plugin {name} not found in {where_}; install it (Debian: monitoring-plugins) or fix the check"),
            String::new(),
        );
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => (UNKNOWN, format!("{name} timed out after {} s", timeout.as_secs()), String::new()),
        Ok(Err(e)) => (UNKNOWN, format!("cannot run {}: {e}", program.display()), String::new()),
        Ok(Ok(out)) => {
            let (text, perf) = split_output(&String::from_utf8_lossy(&out.stdout));
            let status = match out.status.code() {
                Some(c @ 0..=3) => c as u8,
                Some(c) => return (UNKNOWN, format!("{name} exited with {c} (not a plugin exit code): {text}"), perf),
                None => return (UNKNOWN, format!("{name} was killed by a signal"), perf),
            };
            (status, text, perf)
        }
    }
}

async fn run_tcp(port: u16, timeout: Duration) -> (u8, String, String) {
    let t = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(_)) => {
            let secs = t.elapsed().as_secs_f64();
            (OK, format!("TCP OK - {secs:.3} second response time on port {port}"), format!("time={secs:.6}s"))
        }
        Ok(Err(e)) => (CRITICAL, format!("TCP CRITICAL - {e} on port {port}"), String::new()),
        Err(_) => {
            (CRITICAL, format!("TCP CRITICAL - no answer within {} s on port {port}", timeout.as_secs()), String::new())
        }
    }
}

/// The status code of an HTTP response's first line.
pub fn http_status(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|p| p.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

async fn run_http(port: u16, path: &str, expect: u16, timeout: Duration) -> (u8, String, String) {
    let t = Instant::now();
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: nubo-check\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        // Enough for the status line and a small page; a guest's abortive
        // close after the answer still leaves what arrived.
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 1 << 20 {
                        break;
                    }
                }
                Err(_) if !buf.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(timeout, fetch).await {
        Err(_) => (
            CRITICAL,
            format!("HTTP CRITICAL - no answer within {} s on port {port}", timeout.as_secs()),
            String::new(),
        ),
        Ok(Err(e)) => (CRITICAL, format!("HTTP CRITICAL - {e} on port {port}"), String::new()),
        Ok(Ok(buf)) => {
            let secs = t.elapsed().as_secs_f64();
            let perf = format!("time={secs:.6}s size={}B", buf.len());
            match http_status(&buf) {
                Some(code) if code == expect => (
                    OK,
                    format!("HTTP OK: status {code} - {} bytes in {secs:.3} second response time", buf.len()),
                    perf,
                ),
                Some(code) => (CRITICAL, format!("HTTP CRITICAL: status {code}, expected {expect}"), perf),
                None => (CRITICAL, "HTTP CRITICAL: the answer is not HTTP".into(), perf),
            }
        }
    }
}

/// Runs the host's checks: liveness checks need the host's hypervisor and
/// each instance's guest channel.
pub(crate) struct CheckRunner {
    host: Arc<Host>,
    instances: Arc<Instances>,
}

impl CheckRunner {
    pub(crate) fn new(host: Arc<Host>, instances: Arc<Instances>) -> Self {
        Self { host, instances }
    }

    async fn run_liveness(&self, instance: &nubo_api::ids::InstanceId, timeout: Duration) -> (u8, String, String) {
        match self.host.hypervisor.status(&self.host.dir(instance)).await {
            VmStatus::NotRunning => (CRITICAL, "LIVENESS CRITICAL - the VM is not running".into(), String::new()),
            VmStatus::Running { paused: true, .. } => {
                (CRITICAL, "LIVENESS CRITICAL - the VM's vCPUs are stopped (paused or crashed)".into(), String::new())
            }
            VmStatus::Running { pid, .. } => {
                let t = Instant::now();
                let ping = async {
                    let mut q = self.instances.guest_agent(instance, timeout).await?;
                    q.client.ping().await
                };
                match tokio::time::timeout(timeout, ping).await {
                    Ok(Ok(())) => {
                        let secs = t.elapsed().as_secs_f64();
                        (
                            OK,
                            format!("LIVENESS OK - QEMU pid {pid} running, guest agent answered"),
                            format!("time={secs:.6}s"),
                        )
                    }
                    _ => (
                        WARNING,
                        format!("LIVENESS WARNING - QEMU pid {pid} running, the guest agent does not answer"),
                        String::new(),
                    ),
                }
            }
        }
    }

    async fn run_check(&self, c: &DesiredCheck) -> CheckResult {
        let timeout = Duration::from_secs(c.timeout_secs.clamp(1, 300));
        let (status, output, perfdata) = match &c.action {
            CheckAction::Plugin { command } => run_plugin(&self.host.config.plugin_dirs, command, timeout).await,
            CheckAction::Tcp { port } => run_tcp(*port, timeout).await,
            CheckAction::Http { port, path, expect_status } => run_http(*port, path, *expect_status, timeout).await,
            CheckAction::Liveness { instance } => self.run_liveness(instance, timeout).await,
        };
        CheckResult { check_id: c.id.clone(), status, output, perfdata, at_ms: crate::clock::now_ms() }
    }

    /// Fetches the host's checks, runs each when it is due, sends results.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut checks: Vec<DesiredCheck> = Vec::new();
        let mut fetched: Option<Instant> = None;
        let mut last_run: HashMap<CheckId, Instant> = HashMap::new();
        let mut running: HashMap<CheckId, tokio::task::JoinHandle<CheckResult>> = HashMap::new();
        loop {
            tokio::time::sleep(TICK).await;
            if fetched.is_none_or(|t| t.elapsed() >= REFRESH) {
                match self.host.client.host_checks(&self.host.id).await {
                    Ok(list) => {
                        checks = list.checks;
                        fetched = Some(Instant::now());
                        last_run.retain(|id, _| checks.iter().any(|c| &c.id == id));
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot fetch the host's checks"),
                }
            }
            // Collect what finished.
            let done: Vec<CheckId> =
                running.iter().filter(|(_, t)| t.is_finished()).map(|(id, _)| id.clone()).collect();
            let mut results = Vec::new();
            for id in done {
                if let Some(task) = running.remove(&id) {
                    if let Ok(r) = task.await {
                        results.push(r);
                    }
                }
            }
            if !results.is_empty() {
                match self.host.client.send_check_results(&self.host.id, &CheckResults { results }).await {
                    // New results may change how often a check runs (retries).
                    Ok(()) => fetched = None,
                    Err(e) => tracing::warn!(error = %e, "check results not delivered"),
                }
            }
            for c in &checks {
                let due =
                    last_run.get(&c.id).is_none_or(|t| t.elapsed() >= Duration::from_secs(c.interval_secs.max(1)));
                if due && !running.contains_key(&c.id) {
                    last_run.insert(c.id.clone(), Instant::now());
                    let this = self.clone();
                    let c = c.clone();
                    running.insert(c.id.clone(), tokio::spawn(async move { this.run_check(&c).await }));
                }
            }
        }
    }
}

/// Where Nagios plugins are usually installed (Debian's monitoring-plugins).
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    vec![Path::new("/usr/lib/nagios/plugins").to_path_buf()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_output_and_names() {
        let (t, p) = split_output("HTTP OK: HTTP/1.1 200 OK - 12 bytes | time=0.01s;;;0 size=12B;;;0\nlong output\n");
        assert_eq!(t, "HTTP OK: HTTP/1.1 200 OK - 12 bytes");
        assert_eq!(p, "time=0.01s;;;0 size=12B;;;0");
        assert_eq!(split_output("").0, "");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("check_x"), "").unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        assert!(find_plugin(&dirs, "check_x").is_some());
        for bad in ["../check_x", "/bin/sh", "sh", "check_x/..", "check_y", ""] {
            assert!(find_plugin(&dirs, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(http_status(b"HTTP/1.0 200 OK\r\n\r\nhi"), Some(200));
        assert_eq!(http_status(b"HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(http_status(b"SSH-2.0-dropbear\r\n"), None);
    }

    #[tokio::test]
    async fn tcp_and_http_checks() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(run_tcp(port, t).await.0, OK);
        let (st, out, perf) = run_http(port, "/", 200, t).await;
        assert_eq!(st, OK, "{out}");
        assert!(perf.starts_with("time="), "{perf}");
        assert_eq!(run_http(port, "/", 204, t).await.0, CRITICAL);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(run_tcp(closed, t).await.0, CRITICAL);
        // A plugin that is not there is UNKNOWN, and says where it looked.
        let (st, out, _) = run_plugin(&[PathBuf::from("/nonexistent")], &["check_http".into()], t).await;
        assert_eq!(st, UNKNOWN);
        assert!(out.contains("/nonexistent"), "{out}");
    }
}
