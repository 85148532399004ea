//! A load balancer on a private network with a floating IP, for real: two
//! hosts (namespaces mapping the office LAN as `lan`), a group of two
//! members on a private network, one on each host, and a balancer on that
//! network listening on a floating IP. The office client gets pages from
//! both members at that address. Then the balancer's host dies (its agent
//! killed, its links cut, its VMs killed): the control plane moves the
//! balancer to the other host, which takes over the floating IP, and the
//! office client is served again at the same address, by the member that
//! is left. The time that takes is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);

/// busybox httpd on port 80 with a page naming the member by its MAC.
const USER_DATA: &str = "#!/bin/sh
mkdir -p /www
echo member-$(cat /sys/class/net/eth0/address) > /www/index.html
httpd -p 80 -h /www
";

#[test]
fn a_balancer_on_a_floating_ip_serves_the_office_and_comes_back_on_another_host() {
    let fabric = Fabric::new("l", 2);
    let office = fabric.office(2);
    // Down after 5 s of silence; its balancers move after the lease and its margin.
    let mut cloud = Cloud::server_with(&["--heartbeat-timeout-secs", "5"]);
    cloud.start_hosts_on_the_office_lan(&fabric, 2);
    cloud.nubo_ok(&["network", "create", "blue", "--cidr", "10.40.0.0/24"]);
    cloud.nubo_ok(&["security-group", "create", "web"]);
    cloud.nubo_ok(&["security-group", "allow", "web", "--protocol", "tcp", "--port", "80", "--cidr", "10.40.0.0/24"]);
    let group = format!(
        "name: web\nmin: 2\nmax: 2\ndesired: 2\ntemplate:\n  image: tiny\n  vcpus: 1\n  memory_mib: 128\n  disk_gib: 1\n  networks: [blue]\n  security_groups: [web]\n  user_data: {USER_DATA:?}\n"
    );
    let file = cloud.data_dir().join("group.yaml");
    std::fs::write(&file, group).unwrap();
    cloud.nubo_ok(&["group", "create", "-f", file.to_str().unwrap()]);
    let members = wait_until("two running members on two hosts", BOOT, || {
        let g = cloud.nubo_json(&["group", "show", "web"]);
        let ids: Vec<String> =
            g["members"].as_array()?.iter().filter_map(|m| m["instance_id"].as_str().map(str::to_string)).collect();
        let views: Vec<_> = ids.iter().map(|id| cloud.instance(id)).collect();
        let hosts: std::collections::HashSet<_> =
            views.iter().filter_map(|v| v["host_name"].as_str().map(str::to_string)).collect();
        (views.len() == 2 && views.iter().all(|v| v["state"] == "running") && hosts.len() == 2).then_some(views)
    });

    let fip = cloud.nubo_json(&["floating-ip", "allocate", "--network", "lan"]);
    let address = fip["address"].as_str().unwrap().to_string();
    let out = cloud.nubo(&[
        "lb",
        "create",
        "web",
        "--port",
        "80",
        "--group",
        "web",
        "--network",
        "blue",
        "--floating-ip",
        &address,
        "--check-interval",
        "1",
    ]);
    assert!(out.status.success(), "lb create: {}", String::from_utf8_lossy(&out.stderr));
    let lb = cloud.nubo_json(&["lb", "show", "web"]);
    assert_eq!(lb["listen"], format!("{address}:80"), "{lb}");
    let first_host = lb["host_id"].as_str().unwrap().to_string();
    let url = format!("http://{address}/");

    // Both members answer through the balancer, from the office.
    let mut seen = std::collections::HashSet::new();
    wait_until("pages of both members at the floating IP", BOOT, || {
        let page = fetch_in(&office, &url);
        if page.starts_with("member-") {
            seen.insert(page);
        }
        (seen.len() == 2).then_some(())
    });

    // The balancer's host dies: its agent, its links, its VMs.
    let hosts = cloud.nubo_json(&["host", "list"]);
    let dead = hosts.as_array().unwrap().iter().find(|h| h["id"] == first_host.as_str()).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    cloud.kill_host(&dead);
    let dead_ns = fabric.ns(&dead);
    sh_ok(&format!("ip -n {dead_ns} link set lan0 down && ip -n {dead_ns} link set eth0 down"));
    for m in &members {
        if m["host_name"] == dead.as_str() {
            if let Some(pid) = cloud.qemu_pid(m["id"].as_str().unwrap()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    let died = Instant::now();
    let page = wait_until("the floating IP to serve again", Duration::from_secs(120), || {
        let page = fetch_in(&office, &url);
        page.starts_with("member-").then_some(page)
    });
    let took = died.elapsed();
    let lb = cloud.nubo_json(&["lb", "show", "web"]);
    eprintln!(
        "balancer back at {address} {:.1} s after its host died (heartbeat timeout 5 s), now on {}, served {page}",
        took.as_secs_f64(),
        lb["host_id"]
    );
    assert_ne!(lb["host_id"], first_host.as_str(), "the balancer did not move: {lb}");
    assert_eq!(lb["listen"], format!("{address}:80"), "the balancer's address changed: {lb}");
}
