//! Prometheus as Nubo's time-series engine: Debian's `prometheus`, started
//! here as a remote-write receiver on 127.0.0.1, and a real `nubo up`
//! (server and agent; the simulated driver, whose instances report CPU)
//! with `--metrics-store off --metrics-remote-write ... --metrics-read-from
//! ...`. Prometheus holds the instance's series with their labels
//! (instance id, project id, host id); a service policy on the instance's
//! CPU fires from Prometheus' data alone, while one whose threshold the
//! data never reaches does not; `nubo metrics list` reads back from
//! Prometheus; and the embedded store holds no sample.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's prometheus: `NUBO_PROMETHEUS`, else as scripts/install-deps.sh
/// unpacks it, else from PATH.
fn prometheus_bin() -> String {
    std::env::var("NUBO_PROMETHEUS").unwrap_or_else(|_| nubo_testkit::prometheus_program("prometheus"))
}

/// A Prometheus that scrapes nothing and takes remote writes; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
        let addr = format!("127.0.0.1:{}", nubo_testkit::free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_bin())
            .arg("--web.enable-remote-write-receiver")
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--config.file={}", config.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "Debian's prometheus (scripts/install-deps.sh unpacks it into .cache/tools; or set NUBO_PROMETHEUS)",
            );
        let p = Self { child, addr, _dir: dir };
        wait_until("prometheus to be ready", Duration::from_secs(60), || {
            http(&p.addr, "GET", "/-/ready", "")
                .filter(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
        });
        p
    }

    /// An instant query's result vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = url_encode(promql);
        let resp = http(&self.addr, "GET", &format!("/api/v1/query?query={q}"), "").expect("prometheus answers");
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {resp}"));
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn apply_policy(cloud: &Cloud, name: &str, id: &str, op: &str, threshold: f64) {
    let file = cloud.data_dir().join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!(
            "name: {name}\nscope: {{instance: {id}}}\ncondition:\n  metric: cpu_percent\n  op: '{op}'\n  \
             threshold: {threshold}\n  for: 4s\nactions: [reboot]\ndry_run: true\n"
        ),
    )
    .unwrap();
    cloud.nubo_ok(&["policy", "apply", "-f", file.to_str().unwrap()]);
}

fn firings(cloud: &Cloud, policy: &str) -> Vec<Value> {
    cloud.nubo_json(&["policy", "show", policy])["firings"].as_array().cloned().unwrap_or_default()
}

#[test]
fn prometheus_holds_instance_metrics_and_a_policy_fires_from_them_with_the_embedded_store_off() {
    let prom = Prometheus::start();
    let write = format!("http://{}/api/v1/write", prom.addr);
    let read = format!("http://{}", prom.addr);
    let cloud = Cloud::up_with(&[
        "--hypervisor",
        "simulated",
        "--metrics-store",
        "off",
        "--metrics-remote-write",
        &write,
        "--metrics-read-from",
        &read,
    ]);
    let id = cloud.nubo_ok(&["instance", "run", "--name", "measured", "--wait"]).trim().to_string();
    let inst = cloud.instance(&id);
    // The instance runs in the admin's default project.
    let projects = cloud.api_get("/api/v1/projects").unwrap();
    let project = projects
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "default")
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("the default project: {projects}"))
        .to_string();
    let host = inst["host"].as_str().expect("host").to_string();

    // Prometheus holds the instance's CPU series, with its labels.
    let selector = format!("nubo_cpu_percent{{instance_id=\"{id}\",project=\"{project}\",host=\"{host}\"}}");
    let series = wait_until("Prometheus to hold the instance's cpu_percent", Duration::from_secs(90), || {
        let r = prom.query(&selector);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["resource"], id.as_str(), "{labels}");
    assert_eq!(labels["metric"], "cpu_percent", "{labels}");
    let cpu: f64 = series[0]["value"][1].as_str().unwrap().parse().unwrap();
    // The simulated driver's instances are 5-65% busy.
    assert!((4.0..=66.0).contains(&cpu), "cpu_percent {cpu}");
    // Other instance series came along too, and the host's own.
    assert!(!prom.query(&format!("nubo_memory_rss_bytes{{instance_id=\"{id}\"}}")).is_empty());
    assert!(!prom.query(&format!("nubo_load1{{host=\"{host}\",resource=\"{host}\"}}")).is_empty());

    // A policy on the instance's CPU fires from Prometheus' data; one
    // whose threshold the data never reaches does not.
    apply_policy(&cloud, "busy", &id, ">=", 1.0);
    apply_policy(&cloud, "never", &id, ">", 1000.0);
    let fired =
        wait_until("the busy policy to fire", Duration::from_secs(90), || firings(&cloud, "busy").into_iter().next());
    let value = fired["values"][id.as_str()].as_f64().unwrap_or_else(|| panic!("the firing's value: {fired}"));
    assert!((4.0..=66.0).contains(&value), "the firing's cpu_percent {value}: {fired}");
    assert_eq!(fired["dry_run"], true, "{fired}");
    let busy = cloud.nubo_json(&["policy", "show", "busy"]);
    assert!(busy["breaching"].as_array().unwrap().iter().any(|t| t == id.as_str()), "{busy}");
    assert!(firings(&cloud, "never").is_empty(), "a threshold above the data fired");

    // Latest values read back from Prometheus.
    let list = cloud.nubo_json(&["metrics", "list", &id]);
    let listed = list.as_array().unwrap().iter().find(|m| m["metric"] == "cpu_percent").expect("cpu_percent listed");
    assert!(listed["value"].as_f64().is_some_and(|v| (4.0..=66.0).contains(&v)), "{list}");

    // The server counts what it sent on /metrics.
    let text = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {}", cloud.token))
        .arg(format!("{}/metrics", cloud.url))
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8(text).unwrap();
    let sent: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nubo_remote_write_samples_sent_total "))
        .unwrap_or_else(|| panic!("no sent counter: {text}"))
        .parse()
        .unwrap();
    assert!(sent > 0.0, "{text}");
    assert!(text.contains("nubo_remote_write_samples_dropped_total 0"), "{text}");

    // The embedded store holds nothing (SQLite; a PostgreSQL run has no
    // file to look into).
    if std::env::var_os("NUBO_TEST_DATABASE").is_none() {
        // A graceful stop flushes the embedded store's memory to the
        // database: what it held would be in the tables after this.
        let pid = cloud.server_pid().expect("the server runs") as i32;
        // SAFETY: a signal to the test's own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let stopped = std::time::Instant::now();
        while common::alive(pid) && stopped.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!common::alive(pid), "the server did not stop on SIGTERM");
        let db = cloud.data_dir().join("nubo.db");
        for table in ["metric_chunks", "metric_latest_sets", "metric_rollups"] {
            let out = Command::new("sqlite3").arg(&db).arg(format!("SELECT COUNT(*) FROM {table}")).output().unwrap();
            assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{table} holds samples");
        }
    }
}

/// `--metrics-store off` without a place to read from is refused, saying what to add.
#[test]
fn metrics_store_off_needs_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(nubo_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--metrics-store", "off", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-read-from"), "{err}");
}
