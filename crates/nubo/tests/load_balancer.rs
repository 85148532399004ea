//! Load balancers end to end on real `tiny` VMs under `nubo up` (TCG): an
//! instance group of busybox web servers behind balancers the agent runs.
//! Each guest's page is its own instance id, so a response says which
//! backend served it. Shown here, in one cloud with two guests:
//! - a group's new member gets traffic without a restart of the balancer,
//!   and a keep-alive client connection opened before keeps working; a
//!   member the group scales in leaves it, again without a restart;
//! - round-robin spreads requests evenly, and by weight;
//! - least-connections (TCP) sends new connections away from a backend
//!   holding one, and spreads evenly when none are held;
//! - a backend whose web server stops is taken out within the health-check
//!   interval, with no failed request, and put back once it serves again;
//! - least-loaded sends a backend whose guest runs a CPU busy loop far
//!   less than an idle one, where round-robin in the same run does not.
//!
//! Plus `nubo lb serve` from a file, with loopback backends in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use nubo_testkit::free_port;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);

/// Starts busybox httpd on port 80 with a page that is replaced by the
/// instance id once known, and spins its vCPU while /tmp/busy exists.
const USER_DATA: &str = "#!/bin/sh
mkdir -p /www
echo unknown > /www/index.html
httpd -p 80 -h /www
echo web-ready
(while :; do if [ -f /tmp/busy ]; then :; else sleep 1; fi; done) </dev/null >/dev/null 2>&1 &
";

fn guest(cloud: &Cloud, id: &str, script: &str) -> String {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "90", "--", "/bin/sh", "-c", script]);
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The body of a GET / through `addr`, trimmed; None when it failed.
fn fetch(addr: &str) -> Option<String> {
    let resp = http(addr, "GET", "/", "")?;
    let status = resp.strip_prefix("HTTP/1.")?.split_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    Some(resp.split_once("\r\n\r\n")?.1.trim().to_string())
}

/// `n` sequential GETs through `addr`: which backend answered how often
/// (failures count under "failed").
fn spread(addr: &str, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(fetch(addr).unwrap_or_else(|| "failed".into())).or_default() += 1;
    }
    out
}

/// `clients` threads doing `each` sequential GETs at once, each client
/// pausing `gap` after every answer.
fn spread_concurrent(addr: &str, clients: usize, each: usize, gap: Duration) -> BTreeMap<String, usize> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut out = BTreeMap::<String, usize>::new();
                for _ in 0..each {
                    *out.entry(fetch(&addr).unwrap_or_else(|| "failed".into())).or_default() += 1;
                    std::thread::sleep(gap);
                }
                out
            })
        })
        .collect();
    let mut out = BTreeMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *out.entry(k).or_default() += v;
        }
    }
    out
}

fn count(s: &BTreeMap<String, usize>, id: &str) -> usize {
    s.get(id).copied().unwrap_or(0)
}

fn lb(cloud: &Cloud, name: &str) -> Value {
    cloud.nubo_json(&["lb", "show", name])
}

fn backend<'a>(lb: &'a Value, id: &str) -> Option<&'a Value> {
    lb["backends"].as_array()?.iter().find(|b| b["instance_id"] == id)
}

/// Until both members are up in balancer `name`.
fn wait_up(cloud: &Cloud, name: &str, ids: &[&str]) -> Value {
    wait_until(&format!("{ids:?} up in {name}"), Duration::from_secs(60), || {
        let v = lb(cloud, name);
        ids.iter().all(|id| backend(&v, id).is_some_and(|b| b["health"] == "up")).then_some(v)
    })
}

/// Creates a balancer over group `web` and waits for it to run; its listen address.
fn create(cloud: &Cloud, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["lb", "create", name, "--group", "web", "--port", "80", "--check-interval", "1", "--wait"];
    args.extend_from_slice(extra);
    let v = cloud.nubo_json(&args);
    assert_eq!(v["state"], "active", "{v}");
    v["listen"].as_str().unwrap().to_string()
}

/// A running member of group `web` other than `not`, with its page set to its id.
fn member(cloud: &Cloud, not: Option<&str>) -> String {
    let id = wait_until("a running group member", BOOT, || {
        let g = cloud.nubo_json(&["group", "show", "web"]);
        g["members"]
            .as_array()?
            .iter()
            .find(|m| m["state"] == "running" && Some(m["instance_id"].as_str().unwrap_or("")) != not)
            .and_then(|m| m["instance_id"].as_str().map(String::from))
    });
    cloud.wait_console(&id, "web-ready", 1, BOOT);
    guest(cloud, &id, &format!("echo {id} > /www/index.html"));
    id
}

/// One HTTP/1.1 request on a kept-alive connection; the body.
fn keep_alive_get(conn: &mut BufReader<TcpStream>) -> String {
    conn.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut len = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap().trim().to_string()
}

/// A connection through a TCP balancer that sends nothing yet: it holds
/// one connection on its backend.
fn hold(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn ask(mut s: TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or(out)
}

#[test]
fn balancers_over_a_group_spread_fail_over_and_follow_load() {
    let cloud = Cloud::up();
    let group = format!(
        "name: web\nmin: 1\nmax: 2\ndesired: 1\ntemplate:\n  image: tiny\n  vcpus: 1\n  memory_mib: 160\n  disk_gib: 1\n  ports: [80]\n  user_data: {USER_DATA:?}\n"
    );
    let file = cloud.data_dir().join("group.yaml");
    std::fs::write(&file, group).unwrap();
    cloud.nubo_ok(&["group", "create", "-f", file.to_str().unwrap()]);
    let a = member(&cloud, None);

    // One member: everything goes to it.
    let rr = create(&cloud, "web", &["--algorithm", "round-robin"]);
    wait_up(&cloud, "web", &[&a]);
    let started = lb(&cloud, "web")["started_at_ms"].clone();
    assert_eq!(spread(&rr, 10), BTreeMap::from([(a.clone(), 10)]));
    let mut kept = BufReader::new(TcpStream::connect(&rr).unwrap());
    assert_eq!(keep_alive_get(&mut kept), a);

    // The group scales out: the new member gets traffic, the balancer was
    // reconfigured in place (same start time) and the open connection works.
    cloud.nubo_ok(&["group", "set-desired", "web", "2"]);
    let b = member(&cloud, Some(&a));
    let t0 = Instant::now();
    wait_until("the new member to get traffic", Duration::from_secs(30), || {
        (count(&spread(&rr, 4), &b) > 0).then_some(())
    });
    println!("new member {b} got traffic {:.1} s after its page was set", t0.elapsed().as_secs_f64());
    assert_eq!(lb(&cloud, "web")["started_at_ms"], started, "the balancer was not restarted");
    let on_kept: Vec<String> = (0..4).map(|_| keep_alive_get(&mut kept)).collect();
    assert!(on_kept.contains(&a) && on_kept.contains(&b), "the kept connection reaches both: {on_kept:?}");
    drop(kept);

    // Round-robin: an even spread; weights 3:1 give 3:1 exactly (smooth WRR).
    let s = spread(&rr, 40);
    println!("round-robin over 40: {s:?}");
    assert_eq!((count(&s, &a), count(&s, &b)), (20, 20), "{s:?}");
    let weighted = create(&cloud, "web-w", &["--weight", &format!("{a}=3")]);
    wait_up(&cloud, "web-w", &[&a, &b]);
    let s = spread(&weighted, 40);
    println!("round-robin 3:1 over 40: {s:?}");
    assert_eq!((count(&s, &a), count(&s, &b)), (30, 10), "{s:?}");

    // Least-connections (TCP): a held connection sends the next ones to
    // the other backend; none held, they alternate.
    let lc = create(&cloud, "web-lc", &["--protocol", "tcp", "--algorithm", "least-connections"]);
    wait_up(&cloud, "web-lc", &[&a, &b]);
    // Each new connection waits until the balancer's in-flight counts (as
    // reported) show the previous one closed, so the choice is not raced.
    let in_flight = |want: u64| {
        wait_until(&format!("{want} connections in flight on web-lc"), Duration::from_secs(15), || {
            let v = lb(&cloud, "web-lc");
            let n: u64 = v["backends"].as_array()?.iter().filter_map(|b| b["in_flight"].as_u64()).sum();
            (n == want).then_some(())
        })
    };
    let held = hold(&lc);
    in_flight(1);
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(ask(hold(&lc)));
        in_flight(1);
    }
    let other = others[0].clone();
    assert!(others.iter().all(|o| *o == other) && (other == a || other == b), "{others:?}");
    let first = ask(held);
    assert!(first != other && (first == a || first == b), "the held connection went to the other one: {first}");
    in_flight(0);
    let mut s = Vec::new();
    for _ in 0..4 {
        s.push(ask(hold(&lc)));
        in_flight(0);
    }
    let on_a = s.iter().filter(|x| **x == a).count();
    assert_eq!((on_a, s.len() - on_a), (2, 2), "nothing held: in turn: {s:?}");

    // Health: a's web server stops. The checks (every 1 s) take it out,
    // clients see no failure, and it comes back once it serves again.
    guest(&cloud, &a, "killall httpd");
    let stopped = Instant::now();
    // No traffic yet: it is the active check that finds out.
    wait_until("a marked down", Duration::from_secs(30), || {
        let v = lb(&cloud, "web");
        (backend(&v, &a)?["health"] == "down").then_some(())
    });
    let took = stopped.elapsed();
    println!("a down {:.1} s after its web server stopped (checks every 1 s)", took.as_secs_f64());
    // Within the check interval (1 s) plus a check's timeout (1 s), the
    // agent's report (every 0.5 s) and this CLI's calls.
    assert!(took < Duration::from_secs(4), "{took:?}");
    let s = spread(&rr, 10);
    assert_eq!(s, BTreeMap::from([(b.clone(), 10)]), "no request failed or reached a: {s:?}");
    guest(&cloud, &a, "httpd -p 80 -h /www");
    let restarted = Instant::now();
    wait_up(&cloud, "web", &[&a, &b]);
    println!("a up again {:.1} s after its web server restarted", restarted.elapsed().as_secs_f64());
    let s = spread(&rr, 10);
    assert_eq!((count(&s, &a), count(&s, &b)), (5, 5), "{s:?}");

    // Least-loaded: b's guest spins its CPU. Its measured utilisation
    // (refreshed every second) goes up, and least-loaded sends it far
    // less than a, where round-robin still splits evenly.
    let ll = create(&cloud, "web-ll", &["--algorithm", "least-loaded"]);
    wait_up(&cloud, "web-ll", &[&a, &b]);
    guest(&cloud, &b, "touch /tmp/busy");
    // (The host's measure is vCPU thread time over wall time: on a busy
    // 2-core test machine a spinning TCG guest gets 50-90% of a core.)
    let cpu = wait_until("b's CPU above 40%", Duration::from_secs(30), || {
        backend(&lb(&cloud, "web-ll"), &b)?["cpu_percent"].as_f64().filter(|c| *c > 40.0)
    });
    println!("b busy: cpu {cpu:.0}%, a: {}", backend(&lb(&cloud, "web-ll"), &a).unwrap()["cpu_percent"]);
    // One client pausing 100 ms between requests: traffic well under what
    // a can serve. (Flat out, a TCG guest forking busybox httpd for every
    // request spends about as much CPU as b's spinner, and least-loaded
    // then rightly splits between two busy backends; and with requests in
    // flight on a, `(in_flight + 1) / (1 - cpu)` can rightly prefer a
    // half-busy b. The unit tests in nubo-lb cover that mix.)
    let paced = Duration::from_millis(100);
    let busy_ll = spread_concurrent(&ll, 1, 30, paced);
    let busy_rr = spread_concurrent(&rr, 1, 30, paced);
    let v = lb(&cloud, "web-ll");
    println!(
        "b busy, 30 paced requests: least-loaded {busy_ll:?}, round-robin {busy_rr:?}; cpu now a {} b {}",
        backend(&v, &a).unwrap()["cpu_percent"],
        backend(&v, &b).unwrap()["cpu_percent"]
    );
    assert_eq!(count(&busy_ll, "failed") + count(&busy_rr, "failed"), 0);
    assert!(count(&busy_ll, &b) <= 3, "least-loaded spared b: {busy_ll:?}");
    assert!(count(&busy_rr, &b) >= 14, "round-robin does not: {busy_rr:?}");
    let v = lb(&cloud, "web-ll");
    assert!(backend(&v, &a).unwrap()["requests"].as_u64().unwrap() >= count(&busy_ll, &a) as u64, "{v}");
    // The load ends: b's share comes back.
    guest(&cloud, &b, "rm /tmp/busy");
    wait_until("b's CPU below 30%", Duration::from_secs(30), || {
        backend(&lb(&cloud, "web-ll"), &b)?["cpu_percent"].as_f64().filter(|c| *c < 30.0)
    });
    let idle_ll = spread_concurrent(&ll, 1, 30, paced);
    println!("b idle again: least-loaded {idle_ll:?}");
    assert!(count(&idle_ll, &b) >= 6, "{idle_ll:?}");

    // The group scales in (the newest, b, goes): b leaves the balancer,
    // which again is not restarted, and a takes everything.
    cloud.nubo_ok(&["group", "set-desired", "web", "1"]);
    wait_until("b gone from web", Duration::from_secs(60), || backend(&lb(&cloud, "web"), &b).is_none().then_some(()));
    assert_eq!(spread(&rr, 10), BTreeMap::from([(a.clone(), 10)]));
    assert_eq!(lb(&cloud, "web")["started_at_ms"], started, "the balancer was not restarted");

    // list and delete: the listener goes away.
    let list = cloud.nubo_json(&["lb", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 4, "{list}");
    cloud.nubo_ok(&["lb", "delete", "web-ll"]);
    wait_until("web-ll's port closed", Duration::from_secs(10), || TcpStream::connect(&ll).is_err().then_some(()));
    let out = cloud.nubo(&["lb", "show", "web-ll"]);
    assert!(!out.status.success());
}

/// A loopback backend answering `name` to every request (HTTP/1.0 style, closing).
fn loopback_backend(name: &'static str) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                let _ = write!(
                    r.get_mut(),
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    addr
}

#[test]
fn lb_serve_runs_a_config_file_and_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (loopback_backend("x"), loopback_backend("y"));
    let (listen, stats) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let config = dir.path().join("lb.toml");
    let write = |backends: &str| {
        std::fs::write(
            &config,
            format!(
                "stats_listen = \"{stats}\"\n[[listeners]]\nid = \"web\"\nlisten = \"{listen}\"\nprotocol = \"http\"\nalgorithm = \"round-robin\"\nhealth = {{ interval_ms = 200 }}\nbackends = [{backends}]\n"
            ),
        )
        .unwrap()
    };
    write(&format!("{{ id = \"x\", address = \"{x}\" }}"));
    let mut child = std::process::Command::new(nubo_bin())
        .args(["lb", "serve", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let up = wait_until("lb serve to answer", Duration::from_secs(20), || fetch(&listen));
    assert_eq!(up, "x");
    // SIGHUP after adding y: both get requests, on the same process.
    write(&format!("{{ id = \"x\", address = \"{x}\" }}, {{ id = \"y\", address = \"{y}\", weight = 1 }}"));
    // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_until("y to get traffic", Duration::from_secs(10), || {
        let s = spread(&listen, 4);
        (count(&s, "y") == 2 && count(&s, "x") == 2).then_some(())
    });
    let stats = wait_until("stats", Duration::from_secs(5), || {
        let r = http(&stats, "GET", "/stats", "")?;
        serde_json::from_str::<Value>(r.split_once("\r\n\r\n")?.1).ok()
    });
    let backends = stats[0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2, "{stats}");
    assert!(backends.iter().all(|b| b["health"] == "up" && b["requests"].as_u64().unwrap() >= 2), "{stats}");
    // A bad file on reload keeps the running configuration.
    std::fs::write(&config, "listeners = [] \nbogus = 1\n").unwrap();
    // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let log = dir.path().join("serve.log");
    wait_until("the failed reload in the log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("reload failed")).map(|_| ())
    });
    // Round robin over x and y: two requests, one answer from each (a
    // failed request would show as "failed", not as a backend).
    let after = spread(&listen, 2);
    assert_eq!(after.len(), 2, "still both: {after:?}");
    assert_eq!((count(&after, "x"), count(&after, "y")), (1, 1), "still both: {after:?}");
    // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());

    // An unknown key is refused, naming it.
    std::fs::write(&config, format!("[[listeners]]\nid = \"w\"\nlisten = \"{listen}\"\nprotocol = \"http\"\nalgorithm = \"round-robin\"\nbackend = []\n")).unwrap();
    let out = std::process::Command::new(nubo_bin()).args(["lb", "serve", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown field `backend`"), "{err}");
}
