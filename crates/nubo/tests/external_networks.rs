//! External networks and floating IPs, for real: two hosts (network
//! namespaces with `nubo agent --underlay ... --external lan=lan0`), and
//! an "office" namespace that is the LAN: a bridge every host's `lan0`
//! is plugged into, with a client at 192.168.50.10 and the LAN's router
//! address .1. Nothing leaves the namespaces but the agents' control-plane
//! traffic on 127.0.0.1.
//!
//! Shown with `tiny` guests under TCG: instance A, attached to the
//! external network directly, gets a LAN address from the pool by DHCP and
//! answers the office client there; instance B, on a private network,
//! answers at a floating IP once its security group lets the office in
//! (before, the same group keeps the floating IP's traffic out); B
//! live-migrates while the office client's request loop runs, and the
//! longest gap in its answers is reported; once the floating IP is
//! released, B is unreachable from the office.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

/// The office client's request loop: one GET every 0.2 s for argv[2]
/// seconds, a line per request: `<unix time> <1 ok|0 failed> <page>`.
const LOOP: &str = r#"
import sys, time, urllib.request
end = time.time() + float(sys.argv[2])
while time.time() < end:
    t = time.time()
    try:
        body = urllib.request.urlopen(sys.argv[1], timeout=1).read().decode().strip(); ok = 1
    except Exception as e:
        body = type(e).__name__; ok = 0
    print(f"{t:.3f} {ok} {body}", flush=True)
    time.sleep(0.2)
"#;

/// (longest time without a successful answer while some failed, in ms;
/// requests; failures) of a request loop's output.
fn longest_gap(log: &str) -> (u64, usize, usize) {
    let mut last_ok: Option<f64> = None;
    let mut failed_since = false;
    let (mut gap, mut total, mut failures) = (0u64, 0, 0);
    for line in log.lines() {
        let mut f = line.split_whitespace();
        let (Some(t), Some(ok)) = (f.next().and_then(|t| t.parse::<f64>().ok()), f.next()) else { continue };
        total += 1;
        if ok == "1" {
            if let (Some(prev), true) = (last_ok, failed_since) {
                gap = gap.max(((t - prev) * 1000.0) as u64);
            }
            last_ok = Some(t);
            failed_since = false;
        } else {
            failures += 1;
            failed_since = true;
        }
    }
    (gap, total, failures)
}

#[test]
fn lan_addresses_and_a_floating_ip_that_follows_a_live_migration() {
    let fabric = Fabric::new("x", 2);
    let office = fabric.office(2);
    let mut cloud = Cloud::server_only();
    cloud.start_hosts_on_the_office_lan(&fabric, 2);
    cloud.nubo_ok(&["network", "create", "blue", "--cidr", "10.30.0.0/24"]);
    cloud.nubo_ok(&["security-group", "create", "web"]);
    cloud.nubo_ok(&["security-group", "allow", "web", "--protocol", "icmp", "--cidr", "0.0.0.0/0"]);

    let run = |args: &[&str]| {
        let mut all = vec!["instance", "run", "--memory", "128"];
        all.extend_from_slice(args);
        cloud.nubo_ok(&all).trim().to_string()
    };
    let a = run(&["--name", "lan-a", "--network", "lan", "--security-group", "web"]);
    let b = run(&["--name", "priv-b", "--network", "blue", "--security-group", "web"]);
    let mut address = std::collections::HashMap::new();
    for id in [&a, &b] {
        let v = cloud.wait_state(id, "running", BOOT);
        address.insert(id.clone(), v["addresses"][0]["address"].as_str().expect("an address").to_string());
    }
    let a_ip = address[&a].clone();
    assert_eq!(a_ip, "192.168.50.101", "A's address is the pool's first after the service address");
    for id in [&a, &b] {
        let want = format!("inet {}/24", address[id]);
        wait_until(&format!("{id}'s DHCP lease"), BOOT, || {
            guest(&cloud, id, "ip -4 addr show dev eth0").1.contains(&want).then_some(())
        });
        let page = if id == &a { "page-of-a" } else { "page-of-b" };
        let (code, text) = guest(
            &cloud,
            id,
            &format!("mkdir -p /www && echo {page} > /www/index.html && httpd -p 8080 -h /www && echo started"),
        );
        assert!(code == 0 && text.contains("started"), "{text}");
    }

    // A floating IP for B: its address, shown with B's.
    let fip = cloud.nubo_json(&["floating-ip", "allocate", "--network", "lan"]);
    let (fip_id, fip_addr) = (fip["id"].as_str().unwrap().to_string(), fip["address"].as_str().unwrap().to_string());
    assert_eq!(fip_addr, "192.168.50.102");
    cloud.nubo_ok(&["floating-ip", "associate", &fip_id, &b]);
    let shown = cloud.instance(&b);
    assert_eq!(shown["addresses"][0]["floating_ip"], fip_addr.as_str(), "{shown}");
    let show_text = cloud.nubo_ok(&["instance", "show", &b]);
    assert!(show_text.contains(&fip_addr) && show_text.contains(&address[&b]), "{show_text}");

    // The group lets only ICMP in so far: the office reaches neither web server.
    let a_url = format!("http://{a_ip}:8080/");
    let f_url = format!("http://{fip_addr}:8080/");
    wait_until("ping from the office to A and to B's floating IP", Duration::from_secs(60), || {
        let ping = |addr: &str| sh(&format!("ip netns exec {office} ping -c 1 -W 1 {addr}")).status.success();
        (ping(&a_ip) && ping(&fip_addr)).then_some(())
    });
    assert!(fetch_in(&office, &a_url).starts_with("failed"), "A's port 8080 was open before a rule");
    assert!(fetch_in(&office, &f_url).starts_with("failed"), "the floating IP's port 8080 was open before a rule");
    cloud.nubo_ok(&["security-group", "allow", "web", "--protocol", "tcp", "--port", "8080", "--cidr", "0.0.0.0/0"]);
    wait_until("A's page at its LAN address", Duration::from_secs(30), || {
        (fetch_in(&office, &a_url) == "page-of-a").then_some(())
    });
    wait_until("B's page at its floating IP", Duration::from_secs(30), || {
        (fetch_in(&office, &f_url) == "page-of-b").then_some(())
    });

    // B moves while the office client asks for its page five times a second.
    let first_host = cloud.instance(&b)["host_name"].as_str().unwrap_or_default().to_string();
    let client = Command::new("ip")
        .args(["netns", "exec", &office, "python3", "-c", LOOP, &f_url, "40"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the office client's loop");
    std::thread::sleep(Duration::from_secs(3));
    let moved = cloud.nubo_json(&["instance", "migrate", &b, "--wait"]);
    assert_eq!(moved["state"], "completed", "{moved}");
    let out = client.wait_with_output().expect("the loop's output");
    let log = String::from_utf8_lossy(&out.stdout);
    let (gap, total, failures) = longest_gap(&log);
    eprintln!(
        "floating IP across a live migration: {total} requests, {failures} failed, longest gap {gap} ms (QEMU's downtime {} ms)",
        moved["downtime_ms"]
    );
    assert_ne!(cloud.instance(&b)["host_name"].as_str().unwrap_or_default(), first_host, "B did not move");
    let tail: Vec<&str> = log.lines().rev().take(10).collect();
    assert!(tail.iter().all(|l| l.ends_with(" 1 page-of-b")), "B's floating IP did not answer after the move: {log}");
    assert!(gap < 15_000, "the floating IP was silent for {gap} ms: {log}");

    // Released: the address no longer reaches B.
    cloud.nubo_ok(&["floating-ip", "release", &fip_id]);
    wait_until("B unreachable at the released address", Duration::from_secs(30), || {
        fetch_in(&office, &f_url).starts_with("failed").then_some(())
    });
    let fips = cloud.nubo_json(&["floating-ip", "list"]);
    assert_eq!(fips.as_array().map(Vec::len), Some(0), "{fips}");
}
