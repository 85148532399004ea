//! The default network, for real: two hosts (namespaces, `nubo agent
//! --underlay ... --netns ...`) on a switch that also plays the office
//! (192.168.77.100). `nubo instance run` with no network flags puts each
//! instance on its project's default network, made on first use: the
//! instances get addresses by DHCP, find each other by name, and reach a
//! server in the office through the hosts' NAT. A guest that takes
//! another's address gets nothing through: the server hears from it only
//! under its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

#[test]
fn instances_without_network_flags_get_the_default_network_names_and_nat() {
    let fabric = Fabric::new("d", 2);
    let mut cloud = Cloud::server_only();
    for i in 1..=2 {
        let ns = fabric.ns(&format!("h{i}"));
        cloud.start_host(&format!("h{i}"), &["--underlay", &format!("192.168.77.{i}"), "--netns", &ns]);
    }
    let run = |name: &str| cloud.nubo_ok(&["instance", "run", "--image", "tiny", "--memory", "128", "--name", name]);
    let (a, b) = (run("web-1").trim().to_string(), run("web-2").trim().to_string());
    let nets = cloud.nubo_json(&["network", "list"]);
    let default = nets.as_array().unwrap().iter().find(|n| n["is_default"] == true).expect("a default network");
    assert_eq!(default["cidr"], "172.31.0.0/20", "{nets}");
    let mut addr = std::collections::HashMap::new();
    for id in [&a, &b] {
        let v = cloud.wait_state(id, "running", BOOT);
        assert_eq!(v["addresses"][0]["network"], default["name"], "{v}");
        addr.insert(id.clone(), v["addresses"][0]["address"].as_str().unwrap().to_string());
    }
    for id in [&a, &b] {
        let want = format!("inet {}/20", addr[id]);
        wait_until(&format!("{id}'s DHCP lease"), BOOT, || {
            guest(&cloud, id, "ip -4 addr show dev eth0").1.contains(&want).then_some(())
        });
    }
    // Names: web-1 finds web-2, bare and under the network's domain.
    let domain = format!("{}.internal", default["name"].as_str().unwrap());
    for name in ["web-2".to_string(), format!("web-2.{domain}")] {
        let (code, text) = guest(&cloud, &a, &format!("nslookup {name}"));
        assert!(code == 0 && text.contains(&addr[&b]), "web-1 could not resolve {name}: {text}");
    }

    // The office's server, which prints where each connection came from.
    let mut server = OfficeServer::start(&fabric.ns("sw"), "192.168.77.100");
    let (code, text) = guest(&cloud, &a, "echo hi | nc -w 3 192.168.77.100 9000");
    assert!(code == 0 && text.contains("hello-from-office 192.168.77."), "no way out through NAT: {text}");
    assert!(server.next_line().starts_with("from 192.168.77."));

    // web-1 takes web-2's address as its own and tries again from it:
    // the host drops every frame it sends from an address not its own.
    let spoof = format!(
        "ip addr add {}/20 dev eth0 && echo hi | nc -w 3 -s {} 192.168.77.100 9000; echo spoof-exit=$?; ip addr del {}/20 dev eth0",
        addr[&b], addr[&b], addr[&b]
    );
    let (_, text) = guest(&cloud, &a, &spoof);
    assert!(
        text.contains("spoof-exit=") && !text.contains("hello-from-office"),
        "a spoofed address got through: {text}"
    );
    // ...while its own address still works, and the server heard only that.
    let (code, text) = guest(&cloud, &a, "echo hi | nc -w 3 192.168.77.100 9000");
    assert!(code == 0 && text.contains("hello-from-office"), "{text}");
    let next = server.next_line();
    assert!(next.starts_with("from 192.168.77."), "the server heard {next}");
}
