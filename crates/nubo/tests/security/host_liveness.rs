//! Attacks on the `host_liveness` boundary (see main.rs): a guest that
//! feeds its host oversized status through the guest agent, and a live
//! host cut off from the control plane while failover restarts its
//! instances elsewhere from shared storage.

use crate::common::{alive, image_cache, nubo_bin, wait_until, Cloud, HOST_ARGS};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);

/// Launches a tiny instance; its id.
fn launch(cloud: &Cloud, name: &str) -> String {
    cloud.nubo_ok(&["instance", "run", "--memory", "128", "--name", name]).trim().to_string()
}

/// Runs `script` in the guest; (exit code, output).
fn guest(cloud: &Cloud, id: &str, script: &str) -> (i32, String) {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The host named `name` in `nubo host list`.
fn host(cloud: &Cloud, name: &str) -> serde_json::Value {
    let hosts = cloud.nubo_json(&["host", "list"]);
    hosts.as_array().and_then(|a| a.iter().find(|h| h["name"] == name).cloned()).unwrap_or_default()
}

/// The guest writes an os-release whose PRETTY_NAME is 400 000 bytes: the
/// guest agent hands it to the host agent, which used to put it whole into
/// the host report. The report (limit 256 KiB) then failed with 413, the
/// guest status was lost (marked sent before it was), and the report was
/// also the host's heartbeat. Now the status is capped per instance, the
/// heartbeat is a request of its own, and the capped status shows.
#[test]
fn an_oversized_guest_status_is_capped_and_its_host_stays_up() {
    let mut cloud = Cloud::server_with(&["--heartbeat-timeout-secs", "11"]);
    cloud.start_host("h1", &[]);
    let id = launch(&cloud, "big-status");
    cloud.wait_state(&id, "running", BOOT);
    wait_until("the guest agent's first status", BOOT, || {
        let v = cloud.instance(&id);
        v["guest"]["os"].as_str().is_some().then_some(())
    });
    let (code, text) = guest(
        &cloud,
        &id,
        "{ echo ID=nubo-tiny; printf 'PRETTY_NAME=\"'; head -c 400000 /dev/zero | tr '\\0' A; echo '\"'; } \
         > /tmp/os-release && cat /tmp/os-release > /etc/os-release && wc -c /etc/os-release",
    );
    assert_eq!(code, 0, "could not write the guest's os-release: {text}");
    assert!(text.contains("4000"), "os-release is not ~400 kB: {text}");
    let started = Instant::now();
    // While the guest's status is collected and reported (every 5 s), the
    // host stays up: sampled with every look at the instance.
    let v = wait_until("the capped guest status on the control plane", Duration::from_secs(60), || {
        let h = host(&cloud, "h1");
        assert_eq!(h["state"], "up", "the host was marked {} after {:?}: {h}", h["state"], started.elapsed());
        let v = cloud.instance(&id);
        v["guest"]["os"].as_str().is_some_and(|os| os.starts_with("AAAA")).then_some(v)
    });
    let os = v["guest"]["os"].as_str().unwrap_or_default();
    assert!(os.len() <= 1024, "the guest's status was not capped: os is {} bytes", os.len());
    assert!(os.ends_with("[truncated]"), "no truncation marker: {os}");
    assert_eq!(v["guest"]["truncated"], true, "{}", v["guest"]);
    // The heartbeat kept flowing for two more heartbeat timeouts.
    let until = Instant::now() + Duration::from_secs(22);
    while Instant::now() < until {
        let h = host(&cloud, "h1");
        assert_eq!(h["state"], "up", "the host was marked down: {h}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let log = std::fs::read_to_string(cloud.data_dir().join("agent-h1.log")).unwrap_or_default();
    // The refusal as the client reports it (`HTTP 413` from the API's
    // error body, `413 Payload Too Large` from a bare status): a bare
    // "413" also turns up in timestamps and ids.
    let refused = log.contains("HTTP 413") || log.contains("413 Payload Too Large");
    assert!(!refused, "a host report was refused as too large:\n{log}");
}

/// A TCP proxy to the control plane that the test can cut: afterwards it
/// resets every connection it carried and refuses new ones, as a network
/// partition between one host and the control plane would.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn new(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, l) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    let mut list = l.lock().unwrap_or_else(|p| p.into_inner());
                    list.push(c2);
                    list.push(s2);
                }
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, conns }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on nothing passes.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// An agent process of the test's own (the harness's hosts all talk to the
/// server directly); killed with the guard, its log shown on failure.
struct AgentGuard {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- last lines of {} ----", self.log.display());
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Seconds since boot (the clock /proc/PID/stat start times count in).
fn boottime() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// When process `pid` started, in seconds since boot.
fn started_at(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime), counted after the command name's closing paren.
    let ticks: f64 = stat.rsplit(')').next()?.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Item 15 of issue 19, the Done-when line: "A live host cut off from the
/// control plane has stopped its VMs before any of them runs on another
/// host." Host h1 (its agent talks to the server through a proxy) runs an
/// instance on storage h2 shares; the proxy is cut, h1 stays alive. The old
/// QEMU must be gone before the new one starts on h2, and the instance
/// must come back on h2.
#[test]
fn a_cut_off_host_stops_its_vms_before_they_run_elsewhere() {
    let mut cloud = Cloud::server_with(&["--heartbeat-timeout-secs", "11"]);
    let shared = cloud.data_dir().join("shared");
    let shared_arg = shared.to_str().expect("a UTF-8 path").to_string();
    let proxy = Proxy::new(&cloud.url);
    let token = cloud.nubo_ok(&["host", "join-token"]).trim().to_string();
    let log = cloud.data_dir().join("agent-h1-proxied.log");
    let file = || std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("agent log");
    let child = Command::new(nubo_bin())
        .arg("agent")
        .args(HOST_ARGS)
        .args(["--host-name", "h1", "--server", &proxy.url(), "--join-token", &token, "--shared-storage"])
        .arg(&shared_arg)
        .arg("--data-dir")
        .arg(cloud.data_dir().join("agent-h1"))
        .env("NUBO_IMAGE_CACHE", image_cache())
        .env("RUST_LOG", "info")
        .stdout(file())
        .stderr(file())
        .spawn()
        .expect("spawn nubo agent");
    let _h1 = AgentGuard { child, log: log.clone() };
    wait_until("host h1 up", Duration::from_secs(120), || (host(&cloud, "h1")["state"] == "up").then_some(()));

    let id = launch(&cloud, "fenced");
    let v = cloud.wait_state(&id, "running", BOOT);
    assert_eq!(v["host_name"], "h1", "{v}");
    let pidfile = shared.join("instances").join(&id).join("qemu.pid");
    let old = read_pid(&pidfile).expect("h1's QEMU pid");
    assert!(alive(old));
    cloud.start_host("h2", &["--shared-storage", &shared_arg]);

    proxy.cut();
    let cut_at = Instant::now();
    let mut old_gone: Option<(f64, Duration)> = None;
    let mut new_seen: Option<(i32, Duration)> = None;
    let mut back = false;
    while !(back && old_gone.is_some()) {
        assert!(cut_at.elapsed() < Duration::from_secs(180), "the instance did not come back on h2 within 180 s");
        if old_gone.is_none() && !alive(old) {
            old_gone = Some((boottime(), cut_at.elapsed()));
            eprintln!("h1's QEMU (pid {old}) exited {:.1} s after the cut", cut_at.elapsed().as_secs_f64());
        }
        if let Some(new) = read_pid(&pidfile).filter(|&p| p != old && alive(p)) {
            if new_seen.is_none() {
                new_seen = Some((new, cut_at.elapsed()));
                eprintln!("h2's QEMU (pid {new}) seen {:.1} s after the cut", cut_at.elapsed().as_secs_f64());
            }
            assert!(
                !alive(old),
                "two copies of {id} run on one shared disk: h1's QEMU (pid {old}) is still alive {:.1} s after \
                 the cut while h2's (pid {new}) runs",
                cut_at.elapsed().as_secs_f64()
            );
        }
        if !back {
            let v = cloud.instance(&id);
            // Moved to h2 (h2 may start it at once): h1's copy must be gone by now.
            assert!(
                v["host_name"] != "h2" || !alive(old),
                "the control plane moved {id} to h2 {:.1} s after the cut while h1's QEMU (pid {old}) still runs \
                 on the same shared disk",
                cut_at.elapsed().as_secs_f64()
            );
            back = v["host_name"] == "h2" && v["state"] == "running";
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (old_exit, old_after) = old_gone.expect("old QEMU gone");
    let (new, new_after) = new_seen.expect("h2's QEMU was seen running");
    let new_start = started_at(new).expect("h2's QEMU start time");
    eprintln!(
        "old exit seen at {old_exit:.2} s ({:.1} s after the cut), new QEMU started at {new_start:.2} s \
         (seen {:.1} s after the cut)",
        old_after.as_secs_f64(),
        new_after.as_secs_f64()
    );
    assert!(new_start > old_exit, "h2's QEMU started at {new_start:.2} before h1's exit was seen at {old_exit:.2}");
    let events = cloud.nubo_ok(&["instance", "show", &id]);
    assert!(events.contains("restarted_elsewhere"), "{events}");
}
