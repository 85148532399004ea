//! Several control-plane servers on one PostgreSQL (needs
//! `NUBO_TEST_DATABASE`, so `#[ignore]`d: the runner reports it skipped
//! rather than passed on SQLite; `scripts/test.sh` runs it in its
//! PostgreSQL pass with `--run-ignored all`): both serve,
//! a change made through either reaches the agent at once, and when one
//! is killed during a burst of launches, the agent and the clients move
//! to the other and every acknowledged launch ends running.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The CLI against `url` (one server, or several separated by commas).
fn nubo_at(cloud: &Cloud, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(nubo_bin()).args(args).env("NUBO_URL", url).env("NUBO_TOKEN", &cloud.token).output().expect("run nubo")
}

fn json_at(cloud: &Cloud, url: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = nubo_at(cloud, url, &a);
    assert!(out.status.success(), "nubo {args:?} at {url}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

fn log(cloud: &Cloud, name: &str) -> String {
    std::fs::read_to_string(cloud.data_dir().join(name)).unwrap_or_default()
}

#[test]
#[ignore = "PostgreSQL only: set NUBO_TEST_DATABASE and run with --run-ignored (scripts/test.sh does)"]
fn two_servers_serve_one_cloud_and_a_killed_one_loses_no_acknowledged_launch() {
    let mut cloud = Cloud::two_servers()
        .expect("several servers need PostgreSQL: set NUBO_TEST_DATABASE=$(scripts/postgres.sh) to run this test");
    let a = cloud.url.clone();
    let b = cloud.second_url.clone().expect("second server");
    let both = format!("{a},{b}");

    // Both serve the same cloud: the one host, up, seen through either.
    for url in [&a, &b] {
        let hosts = json_at(&cloud, url, &["host", "list"]);
        assert_eq!(hosts.as_array().map(|h| h.len()), Some(1), "{url}: {hosts}");
        assert_eq!(hosts[0]["state"], "up", "{url}: {hosts}");
    }
    // The agent long-polls the first server; a launch through the second
    // reaches it at once (PostgreSQL NOTIFY), not at the long-poll's end
    // (20 s).
    let out = nubo_at(&cloud, &b, &["instance", "run", "--memory", "128", "--name", "via-b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let via_b = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let launched = Instant::now();
    wait_until("the agent to start via-b", Duration::from_secs(5), || {
        (json_at(&cloud, &a, &["instance", "show", &via_b])["state"] != "pending").then_some(())
    });
    println!("a launch through the second server reached the agent in {:.1} s", launched.elapsed().as_secs_f64());

    // A burst of launches through the first server, the second, and both
    // (the client fails over); the first server is killed (SIGKILL, as a
    // crash) once three have been acknowledged, while the rest are in
    // flight or still to come.
    const BURST: usize = 9;
    let acked = AtomicUsize::new(0);
    let targets = [a.as_str(), b.as_str(), both.as_str()];
    let pid = cloud.server_pid().expect("first server") as i32;
    let (results, killed_at) = std::thread::scope(|s| {
        let launches: Vec<_> = (0..BURST)
            .map(|i| {
                let (cloud, acked, url) = (&cloud, &acked, targets[i % 3]);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(150 * i as u64));
                    let name = format!("burst-{i}");
                    let out = nubo_at(cloud, url, &["instance", "run", "--memory", "128", "--name", &name]);
                    let ok = out.status.success();
                    if ok {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    let text = if ok { &out.stdout } else { &out.stderr };
                    (name, url.to_string(), ok, String::from_utf8_lossy(text).trim().to_string())
                })
            })
            .collect();
        wait_until("three acknowledged launches", Duration::from_secs(60), || {
            (acked.load(Ordering::SeqCst) >= 3).then_some(())
        });
        // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let killed_at = Instant::now();
        (launches.into_iter().map(|h| h.join().expect("launch thread")).collect::<Vec<_>>(), killed_at)
    });
    cloud.kill_server(); // reaps it
    for (name, url, ok, said) in &results {
        println!("{name} via {url}: {}", if *ok { format!("acknowledged {said}") } else { format!("failed: {said}") });
    }
    let acknowledged: Vec<&str> = results.iter().filter(|r| r.2).map(|r| r.3.as_str()).collect();
    // Through the second server and through both, nothing failed; through
    // the dead one, only refused connections (the launch never began).
    for (name, url, ok, said) in &results {
        if *url != a {
            assert!(ok, "{name} via {url} failed: {said}");
        } else if !ok {
            assert!(said.contains("cannot reach"), "{name}: a failure other than a refused connection: {said}");
        }
    }
    assert!(acknowledged.len() >= 2 * BURST / 3, "{results:?}");

    // The agent moves to the second server: its reports go on.
    wait_until("a report through the second server", Duration::from_secs(30), || {
        let hosts = json_at(&cloud, &b, &["host", "list"]);
        let beat = hosts[0]["last_heartbeat_ms"].as_i64()?;
        (beat > now_ms() - (killed_at.elapsed().as_millis() as i64) && hosts[0]["state"] == "up").then_some(())
    });
    // Every acknowledged launch runs; so does every launch the database
    // holds at all (one the dead server committed but never answered is
    // completed too): none is left pending.
    wait_until("every launch running", Duration::from_secs(180), || {
        let all = json_at(&cloud, &b, &["instance", "list"]);
        let all = all.as_array()?;
        let running = |id: &str| all.iter().any(|i| i["id"] == id && i["state"] == "running");
        let settled = all.iter().all(|i| i["state"] == "running" || i["state"] == "error");
        (acknowledged.iter().all(|id| running(id)) && running(&via_b) && settled).then_some(())
    });
    let all = json_at(&cloud, &b, &["instance", "list"]);
    let all = all.as_array().expect("list");
    let never_answered = all
        .iter()
        .filter(|i| i["id"] != via_b.as_str() && !acknowledged.contains(&i["id"].as_str().unwrap_or_default()))
        .count();
    println!(
        "{} acknowledged launches running; {never_answered} more the dead server committed without answering",
        acknowledged.len()
    );
    assert!(all.iter().all(|i| i["state"] == "running"), "{all:?}");

    // The monitor's rounds (alerts, policies, groups) move to the
    // second server once the dead one's lease expires.
    wait_until("the second server to take the monitor lease", Duration::from_secs(45), || {
        log(&cloud, "server-b.log").contains("this server now runs the monitor's rounds").then_some(())
    });
    println!("the second server took the monitor's rounds {:.0} s after the kill", killed_at.elapsed().as_secs_f64());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
