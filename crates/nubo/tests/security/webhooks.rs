//! Attacks on the `webhooks` boundary (see main.rs): a tenant's alert and
//! policy webhooks used as a port scanner of the cloud's own network
//! (SSRF) and as a stall of everyone's monitoring; and, in the same file
//! because it is the same kind of tenant-driven exhaustion, image uploads
//! filling the control plane's disk (the image quota).
//!
//! No VM is needed: the tests play a host through the agent API (join,
//! register, report, metrics), so alerts fire on demand. Every webhook
//! these tests could send goes to 127.0.0.1; the addresses that must be
//! refused (169.254.169.254, 10.0.0.1) are only ever given to rules that
//! cannot fire, so even the code before the fix sent them nothing.

use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One API call with `token` through curl: (HTTP status, JSON body).
fn call(cloud: &Cloud, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-X", method, "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"]).arg(b.to_string());
    }
    let out = cmd.arg(format!("{}{path}", cloud.url)).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn ok(cloud: &Cloud, token: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, v) = call(cloud, token, method, path, body);
    assert!((200..300).contains(&status), "{method} {path}: HTTP {status}: {v}");
    v
}

/// A member of a new project `project`: its token.
fn member(cloud: &Cloud, project: &str, user: &str) -> String {
    cloud.nubo_ok(&["project", "create", project]);
    cloud.create_member(project, user, "password-of-user");
    let v = cloud.api_post(
        "/api/v1/auth/login",
        &json!({"username": user, "password": "password-of-user", "project": project}).to_string(),
    );
    v["token"].as_str().unwrap_or_else(|| panic!("no token in {v}")).to_string()
}

/// A host played through the agent API: no agent, no VM.
struct FakeHost {
    id: String,
    cred: String,
}

impl FakeHost {
    fn join(cloud: &Cloud) -> Self {
        let join = cloud.nubo_ok(&["host", "join-token"]).trim().to_string();
        let id = nubo_api::ids::HostId::generate().to_string();
        let v = ok(cloud, "", "POST", "/api/v1/agent/join", Some(&json!({"join_token": join, "host_id": id})));
        let cred = v["credential"].as_str().expect("credential").to_string();
        let reg = json!({"host_id": id, "name": "fake", "accel": "tcg", "vcpus": 256, "memory_mib": 1 << 20, "disk_gib": 10000});
        ok(cloud, &cred, "POST", "/api/v1/agent/register", Some(&reg));
        FakeHost { id, cred }
    }

    /// Reports `instances` running, as an agent would.
    fn running(&self, cloud: &Cloud, instances: &[String]) {
        let list: Vec<Value> =
            instances.iter().map(|i| json!({"id": i, "power": "running", "pid": 1, "error": null})).collect();
        ok(
            cloud,
            &self.cred,
            "POST",
            &format!("/api/v1/agent/hosts/{}/report", self.id),
            Some(&json!({"instances": list})),
        );
    }

    fn cpu(&self, cloud: &Cloud, instances: &[String], value: f64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let samples: Vec<Value> = instances
            .iter()
            .map(|i| json!({"resource": i, "metric": "cpu_percent", "at_ms": now, "value": value}))
            .collect();
        ok(
            cloud,
            &self.cred,
            "POST",
            &format!("/api/v1/agent/hosts/{}/metrics", self.id),
            Some(&json!({"samples": samples})),
        );
    }
}

fn launch(cloud: &Cloud, token: &str) -> String {
    let v = ok(
        cloud,
        token,
        "POST",
        "/api/v1/instances",
        Some(&json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
    );
    v["id"].as_str().expect("instance id").to_string()
}

/// A listener on 127.0.0.1 that counts connections and answers each
/// request 200 (recording when), or, as a black hole, accepts and never
/// answers.
struct Receiver {
    url: String,
    connections: Arc<AtomicUsize>,
    posts: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Receiver {
    fn start(black_hole: bool) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", l.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let posts: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let (c, p) = (connections.clone(), posts.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                if black_hole {
                    held.push(s);
                    continue;
                }
                let p = p.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Headers, then Content-Length bytes of body.
                    while let Ok(n) = s.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                                })
                                .and_then(|v| v.parse::<usize>().ok())
                                .unwrap_or(0);
                            if body.len() >= len {
                                p.lock().unwrap().push((Instant::now(), body.to_string()));
                                let _ =
                                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                                break;
                            }
                        }
                    }
                });
            }
        });
        Receiver { url, connections, posts }
    }
}

/// A metric rule that can never fire (no instance ever reports such a
/// value), so nothing is ever sent to its webhook, whatever the code does.
fn dormant_rule(name: &str, url: &str) -> Value {
    json!({"name": name, "kind": "metric", "target": "*", "metric": "cpu", "op": ">", "threshold": 1.0e12, "webhook_url": url})
}

/// A name that /etc/hosts maps to loopback, other than `localhost` (which
/// is refused by name): it passes the check at creation (names are not
/// resolved there), so only the check at delivery can stop it.
fn loopback_alias() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
    hosts
        .lines()
        .filter_map(|l| {
            let mut f = l.split('#').next()?.split_whitespace();
            let ip: std::net::IpAddr = f.next()?.parse().ok()?;
            ip.is_loopback().then_some(())?;
            f.find(|n| *n != "localhost" && !n.ends_with(".localhost")).map(str::to_string)
        })
        .next()
        .expect("this test needs a name other than localhost mapped to 127.0.0.1 or ::1 in /etc/hosts")
}

#[test]
fn webhooks_into_the_clouds_own_network_are_refused_at_creation_and_at_delivery() {
    let cloud = Cloud::server_with(&["--heartbeat-timeout-secs", "600", "--max-policies-per-project", "1"]);
    let tenant = member(&cloud, "tenant", "mallory");
    let listener = Receiver::start(false);
    let port = listener.url.split(':').nth(2).and_then(|p| p.split('/').next()).expect("port").to_string();

    // At creation: the literal addresses of the cloud's own network, the
    // metadata service and localhost are refused, naming the rule.
    for (i, url) in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://[::1]:8780/".to_string(),
        format!("http://localhost:{port}/hook"),
        // The same loopback address, spelled as one number.
        format!("http://2130706433:{port}/hook"),
    ]
    .iter()
    .enumerate()
    {
        let name = format!("scan-{i}");
        let (status, v) = call(&cloud, &tenant, "POST", "/api/v1/alert-rules", Some(&dormant_rule(&name, url)));
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "alert rule with webhook {url} was accepted: {v}");
        assert!(msg.contains(&name) && msg.contains("--webhook-allow"), "{url}: {msg}");
        let policy = json!({"name": format!("p{i}"), "scope": {"tag": {"key": "k"}},
            "condition": {"metric": "cpu", "op": ">", "threshold": 1.0e12}, "actions": [{"notify": {"webhook": url}}]});
        let (status, v) = call(&cloud, &tenant, "POST", "/api/v1/policies", Some(&policy));
        assert_eq!(status, 400, "policy notify to {url} was accepted: {v}");
    }

    // Policies are capped per project (here at 1 by the operator): the
    // refusal says what to do. (Names are not resolved at creation, and
    // this policy never fires: nothing is looked up or sent.)
    let policy = |name: &str| {
        json!({"name": name, "scope": {"tag": {"key": "k"}}, "condition": {"metric": "cpu", "op": ">", "threshold": 1.0e12},
            "actions": [{"notify": {"webhook": "https://hooks.example.com/nubo"}}]})
    };
    ok(&cloud, &tenant, "POST", "/api/v1/policies", Some(&policy("first")));
    ok(&cloud, &tenant, "POST", "/api/v1/policies", Some(&policy("first")));
    let (status, v) = call(&cloud, &tenant, "POST", "/api/v1/policies", Some(&policy("second")));
    assert_eq!(status, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("delete policies"), "{v}");

    // At delivery: a name that resolves to loopback is refused after
    // resolution, and nothing connects to the listener behind it.
    let host = FakeHost::join(&cloud);
    let id = launch(&cloud, &tenant);
    host.running(&cloud, std::slice::from_ref(&id));
    let alias = loopback_alias();
    let url = format!("http://{alias}:{port}/hook");
    ok(
        &cloud,
        &tenant,
        "POST",
        "/api/v1/alert-rules",
        Some(
            &json!({"name": "rebind", "kind": "metric", "target": id, "metric": "cpu", "op": ">", "threshold": 80, "webhook_url": url}),
        ),
    );
    host.cpu(&cloud, std::slice::from_ref(&id), 95.0);
    let notification = wait_until("the alert's first delivery attempt", Duration::from_secs(30), || {
        let alerts = ok(&cloud, &tenant, "GET", "/api/v1/alerts", None);
        let alert_id = alerts.as_array()?.first()?["id"].as_str()?.to_string();
        let a = ok(&cloud, &tenant, "GET", &format!("/api/v1/alerts/{alert_id}"), None);
        let n = a["notifications"].as_array()?.first()?.clone();
        (n["attempts"].as_u64()? >= 1).then_some(n)
    });
    let error = notification["last_error"].as_str().unwrap_or_default();
    assert_eq!(listener.connections.load(Ordering::SeqCst), 0, "{url} was connected to: {notification}");
    assert!(error.starts_with("refused by policy"), "the tenant sees a generic refusal: {notification}");
    assert!(!error.contains("127.0.0.1") && !error.contains(&port), "no network detail: {error}");
}

#[test]
fn black_hole_webhooks_of_one_project_do_not_delay_another_projects_alerts() {
    // The operator allows 127.0.0.1, where both the black holes and the
    // victim's receiver listen.
    let cloud = Cloud::server_with(&["--webhook-allow", "127.0.0.1/32", "--heartbeat-timeout-secs", "600"]);
    let attacker = member(&cloud, "attacker", "mallory");
    let host = FakeHost::join(&cloud);
    let hole = Receiver::start(true);

    // 100 rules (the default cap) over 5 instances: 500 alerts, each a
    // webhook into a black hole.
    let theirs: Vec<String> = (0..5).map(|_| launch(&cloud, &attacker)).collect();
    for i in 0..100 {
        let rule = json!({"name": format!("hole-{i}"), "kind": "metric", "target": "*", "metric": "cpu", "op": ">", "threshold": 80, "webhook_url": hole.url});
        ok(&cloud, &attacker, "POST", "/api/v1/alert-rules", Some(&rule));
    }
    // The cap: a 101st rule is refused, saying what to do.
    let (status, v) =
        call(&cloud, &attacker, "POST", "/api/v1/alert-rules", Some(&dormant_rule("one-too-many", &hole.url)));
    assert_eq!(status, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("delete rules"), "{v}");

    // The victim: the operator's own project, one rule.
    let good = Receiver::start(false);
    let mine = launch(&cloud, &cloud.token);
    let rule = json!({"name": "hot", "kind": "metric", "target": mine, "metric": "cpu", "op": ">", "threshold": 80, "webhook_url": good.url});
    ok(&cloud, &cloud.token, "POST", "/api/v1/alert-rules", Some(&rule));
    let all: Vec<String> = theirs.iter().chain([&mine]).cloned().collect();
    host.running(&cloud, &all);

    // The attack starts: 500 alerts fire and their deliveries hang.
    host.cpu(&cloud, &theirs, 95.0);
    wait_until("500 firing alerts of the attacker", Duration::from_secs(60), || {
        let a = ok(&cloud, &attacker, "GET", "/api/v1/alerts", None);
        (a.as_array()?.len() >= 500).then_some(())
    });
    wait_until("deliveries into the black hole", Duration::from_secs(30), || {
        (hole.connections.load(Ordering::SeqCst) >= 1).then_some(())
    });

    // The victim's alert: from its breach to its webhook. A monitor round
    // is 2 s: one round to evaluate, one to hand the notification over;
    // more than one round of delay beyond that fails.
    let round = Duration::from_secs(2);
    let start = Instant::now();
    host.cpu(&cloud, std::slice::from_ref(&mine), 95.0);
    let limit = round * 3 + Duration::from_secs(1);
    let arrived = wait_until("the victim's webhook", Duration::from_secs(20), || {
        good.posts.lock().unwrap().first().map(|(at, body)| (*at, body.clone()))
    });
    let delay = arrived.0.duration_since(start);
    eprintln!(
        "victim alert delivered {:.2} s after its breach ({:.2} monitor rounds of 2 s) with {} black-hole connections held",
        delay.as_secs_f64(),
        delay.as_secs_f64() / round.as_secs_f64(),
        hole.connections.load(Ordering::SeqCst)
    );
    assert!(delay <= limit, "the victim's alert took {delay:?} (at most {limit:?})");
    assert!(arrived.1.contains(&mine), "{}", arrived.1);
}

/// Total bytes of the files under `dir`, as they take disk space.
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += disk_usage(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// PUTs `file` as an image's file; `chunked` sends no Content-Length (so
/// the server only learns the size as the bytes come), `length` sends that
/// Content-Length whatever the size.
fn put_file(cloud: &Cloud, token: &str, path: &str, file: &std::path::Path, chunked: bool) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-X", "PUT", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-H", "Content-Type: application/octet-stream"]);
    if chunked {
        cmd.args(["-H", "Transfer-Encoding: chunked", "-T"]).arg(file);
    } else {
        cmd.arg("--data-binary").arg(format!("@{}", file.display()));
    }
    let out = cmd.arg(format!("{}{path}", cloud.url)).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Bytes that look like data (no zero runs for the sparse writer to skip).
fn data_file(dir: &std::path::Path, name: &str, len: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 | 1).collect();
    std::fs::write(&p, bytes).expect("write data file");
    p
}

#[test]
fn image_uploads_stop_at_the_projects_image_quota() {
    const MIB: u64 = 1 << 20;
    let cloud = Cloud::server_with(&["--image-quota", "4MiB"]);
    let tenant = member(&cloud, "tenant", "mallory");
    let files = tempfile::tempdir().expect("tempdir");
    let registry = cloud.data_dir().join("registry");
    let register = |name: &str, size: u64| {
        call(
            &cloud,
            &tenant,
            "POST",
            "/api/v1/images",
            Some(&json!({"name": name, "disk_format": "raw", "size_bytes": size})),
        )
    };

    // 3 MiB fits.
    let (status, v) = register("first", 3 * MIB);
    assert_eq!(status, 201, "{v}");
    let first = v["id"].as_str().expect("id").to_string();
    let (status, body) = put_file(
        &cloud,
        &tenant,
        &format!("/api/v1/images/{first}/file"),
        &data_file(files.path(), "a", 3 << 20),
        false,
    );
    assert_eq!(status, 200, "{body}");

    // 2 MiB more does not: refused at registration, with the usage and what to do.
    let (status, v) = register("second", 2 * MIB);
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(status, 403, "a member went past the image quota: {v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    assert!(msg.contains("3.0 MiB of 4.0 MiB") && msg.contains("nubo image delete"), "{msg}");

    // A 1 MiB registration that then sends 3 MiB: cut off, whether the
    // body says its length up front or not, and nothing is left of it.
    let big = data_file(files.path(), "b", 3 << 20);
    for chunked in [false, true] {
        let (status, v) = register("liar", MIB);
        assert_eq!(status, 201, "{v}");
        let liar = v["id"].as_str().expect("id").to_string();
        let (status, body) = put_file(&cloud, &tenant, &format!("/api/v1/images/{liar}/file"), &big, chunked);
        assert_eq!(status, 413, "chunked={chunked}: {body}");
        let (status, _) = call(&cloud, &tenant, "GET", &format!("/api/v1/images/{liar}"), None);
        assert_eq!(status, 404, "a refused upload leaves no image behind");
    }
    let used = disk_usage(&registry);
    assert!(used <= 4 * MIB, "the registry holds {used} bytes, more than the 4 MiB quota");
    let images = ok(&cloud, &tenant, "GET", "/api/v1/images", None);
    let mine: Vec<&Value> = images.as_array().expect("list").iter().filter(|i| i["source"] != "builtin").collect();
    assert_eq!(mine.len(), 1, "only the first image: {images}");
}
