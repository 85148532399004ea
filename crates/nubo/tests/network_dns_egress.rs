//! A private network's DNS, egress rules and conntrack zones, for real.
//!
//! With `tiny` guests under TCG, on two hosts (network namespaces this
//! test makes, joined by an underlay of veth pairs, as in `networks.rs`):
//! instances `web-1` and `web-2` of one network find each other as
//! `web-2.<network>.internal` and as the bare `web-2`, wherever each runs;
//! an instance whose name is not a DNS label is left out of DNS and breaks
//! nothing; other names go to the agents' `--resolver` (a dnsmasq on the
//! test's switch namespace); a group whose only egress rule is TCP 8080 lets `web-1` reach
//! `web-2`'s 8080 but not its 9090, until an egress rule for 9090 is added.
//!
//! Without VMs: the host's ruleset on two networks with the same range on
//! one host (guests are namespaces on veth pairs) keeps each network's
//! flows in a conntrack zone of its own, and drops what a port's egress
//! rules do not allow.
//!
//! Needs root (network namespaces); without it each test fails, saying
//! to run it as root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use nubo_api::agent::{DesiredNetwork, DesiredPort, FirewallRule};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn launch(cloud: &Cloud, args: &[&str]) -> String {
    let out = Command::new(nubo_bin())
        .args(["instance", "run", "--memory", "128"])
        .args(args)
        .env("NUBO_URL", &cloud.url)
        .env("NUBO_TOKEN", &cloud.token)
        .output()
        .expect("nubo instance run");
    assert!(out.status.success(), "launch failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn names_resolve_across_hosts_and_egress_rules_are_enforced() {
    let fabric = Fabric::new("d", 2);
    // The operator's resolver, on the switch ("the outside"): it knows
    // one name of its own.
    let sw = fabric.ns("sw");
    let pid_file = std::env::temp_dir().join(format!("{sw}-resolver.pid"));
    let _resolver = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &sw, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv"])
            .args([
                "--no-hosts",
                "--listen-address=192.168.77.100",
                "--bind-interfaces",
                "--address=/outside.test/192.0.2.99",
            ])
            .arg(format!("--pid-file={}", pid_file.display()))
            .spawn()
            .expect("dnsmasq as the outside resolver"),
    );
    let mut cloud = Cloud::server_only();
    for i in 1..=2 {
        let ns = fabric.ns(&format!("h{i}"));
        let underlay = format!("192.168.77.{i}");
        cloud.start_host(&format!("h{i}"), &["--underlay", &underlay, "--netns", &ns, "--resolver", "192.168.77.100"]);
    }
    cloud.nubo_ok(&["network", "create", "blue", "--cidr", "10.40.0.0/24"]);
    // web-2 takes TCP 8000-9999 from the network; web-1 may open only 8080.
    cloud.nubo_ok(&["security-group", "create", "srv"]);
    cloud.nubo_ok(&[
        "security-group",
        "allow",
        "srv",
        "--protocol",
        "tcp",
        "--port",
        "8000-9999",
        "--cidr",
        "10.40.0.0/24",
    ]);
    cloud.nubo_ok(&["security-group", "create", "out"]);
    let groups: serde_json::Value =
        serde_json::from_str(&cloud.nubo_ok(&["security-group", "list", "-o", "json"])).unwrap();
    let out_group = groups.as_array().and_then(|g| g.iter().find(|g| g["name"] == "out")).expect("group out").clone();
    let rules = out_group["rules"].as_array().expect("rules");
    // As on EC2, a new group lets everything out: that one rule.
    assert_eq!(rules.len(), 1, "{out_group}");
    assert!(rules[0]["direction"] == "egress" && rules[0]["cidr"] == "0.0.0.0/0", "{out_group}");
    cloud.nubo_ok(&["security-group", "revoke", "out", rules[0]["id"].as_str().unwrap()]);
    cloud.nubo_ok(&[
        "security-group",
        "allow",
        "out",
        "--egress",
        "--protocol",
        "tcp",
        "--port",
        "8080",
        "--cidr",
        "10.40.0.0/24",
    ]);

    // A name that is not a DNS label (launched first, so the network's DNS
    // has it to leave out from the start); stopped at once, it still
    // counts (not terminated) but costs no CPU.
    let bad = launch(&cloud, &["--name", "bad_name", "--network", "blue"]);
    let _ = cloud.nubo(&["instance", "stop", &bad]);
    let web1 = launch(&cloud, &["--name", "web-1", "--network", "blue", "--security-group", "out"]);
    let web2 = launch(&cloud, &["--name", "web-2", "--network", "blue", "--security-group", "srv"]);
    let mut hosts = std::collections::HashSet::new();
    let mut addr = std::collections::HashMap::new();
    for id in [&web1, &web2] {
        let v = cloud.wait_state(id, "running", BOOT);
        hosts.insert(v["host_name"].as_str().unwrap_or_default().to_string());
        addr.insert(id.clone(), v["addresses"][0]["address"].as_str().expect("an address").to_string());
    }
    assert_eq!(hosts.len(), 2, "web-1 and web-2 landed on one host");
    let web2_ip = addr[&web2].clone();
    for id in [&web1, &web2] {
        let want = format!("inet {}/24", addr[id]);
        wait_until(&format!("{id}'s DHCP lease"), BOOT, || {
            guest(&cloud, id, "ip -4 addr show dev eth0").1.contains(&want).then_some(())
        });
    }

    // The hosts' name files: both good names, on every host with the
    // network, and nothing of the bad one.
    let vni = cloud.nubo_json(&["network", "show", "blue"])["vni"].as_u64().expect("vni");
    for h in 1..=2 {
        let file = format!("/run/nubo/dhcp/{}-r{vni}/dns-hosts", fabric.ns(&format!("h{h}")));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(&format!("{web2_ip} web-2.blue.internal web-2\n")), "h{h}: {text}");
        assert!(text.contains(&format!("{} web-1.blue.internal web-1\n", addr[&web1])), "h{h}: {text}");
        assert!(!text.contains("bad"), "h{h}: {text}");
    }

    // DHCP made the gateway the guest's DNS server, and web-1 (whose
    // egress is only TCP 8080) asks it: DNS to the gateway is never filtered.
    let (_, conf) = guest(&cloud, &web1, "cat /etc/resolv.conf");
    assert!(conf.contains("nameserver 10.40.0.1"), "web-1's resolv.conf: {conf}");
    let text = guest_probe(&cloud, &web1, "nslookup web-2.blue.internal");
    assert!(text.contains(&web2_ip) && text.contains("probe-exit=0"), "web-2.blue.internal: {text}");
    let text = guest_probe(&cloud, &web1, "nslookup web-2");
    assert!(text.contains(&web2_ip) && text.contains("probe-exit=0"), "bare web-2: {text}");
    eprintln!("web-1's resolv.conf:\n{conf}\nweb-1$ nslookup web-2\n{text}");
    let text = guest_probe(&cloud, &web2, "nslookup web-1.blue.internal");
    assert!(text.contains(&addr[&web1]), "web-1 from web-2: {text}");
    let text = guest_probe(&cloud, &web1, "nslookup bad_name.blue.internal");
    assert!(!text.contains("probe-exit=0"), "the bad name resolved: {text}");
    // Other names go to the operator's resolver (--resolver); names of
    // the network's domain never do.
    let text = guest_probe(&cloud, &web1, "nslookup outside.test");
    // (The test's resolver has no AAAA for it, so nslookup's exit code says
    // nothing: the A answer does.)
    assert!(text.contains("Name:\toutside.test\nAddress: 192.0.2.99"), "outside.test: {text}");
    let text = guest_probe(&cloud, &web1, "nslookup nosuch.blue.internal");
    assert!(!text.contains("probe-exit=0"), "an unknown name of the network resolved: {text}");

    // Egress: 8080 is allowed out, 9090 is not, until a rule says so.
    guest(
        &cloud,
        &web2,
        "for p in 8080 9090; do setsid sh -c \"while true; do echo hello-from-$p | nc -l -p $p; done\" >/dev/null 2>&1 </dev/null & done",
    );
    let probe = |port: u16| format!("echo hi | nc -w 3 {web2_ip} {port}");
    wait_until("web-2's 8080 open to web-1", Duration::from_secs(30), || {
        guest(&cloud, &web1, &probe(8080)).1.contains("hello-from-8080").then_some(())
    });
    // web-2's 9090 listener runs (seen from inside web-2) ...
    wait_until("web-2's 9090 listener", Duration::from_secs(30), || {
        guest(&cloud, &web2, "echo hi | nc -w 3 127.0.0.1 9090").1.contains("hello-from-9090").then_some(())
    });
    // ... and web-1 may not open it: its group's only egress rule is 8080.
    let text = guest_probe(&cloud, &web1, &probe(9090));
    assert!(!text.contains("hello-from-9090"), "web-1 opened 9090 without an egress rule: {text}");
    cloud.nubo_ok(&[
        "security-group",
        "allow",
        "out",
        "--egress",
        "--protocol",
        "tcp",
        "--port",
        "9090",
        "--cidr",
        &format!("{web2_ip}/32"),
    ]);
    wait_until("web-2's 9090 open to web-1 after the egress rule", Duration::from_secs(30), || {
        guest(&cloud, &web1, &probe(9090)).1.contains("hello-from-9090").then_some(())
    });
    drop(cloud);
    let _ = std::fs::remove_file(&pid_file);
    drop(fabric);
}

/// A process this test started, ended when the test ends (passed or not).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One network of the zone test: ports `.2` and `.3` of 10.99.0.0/24 whose
/// taps are `t<k>2` and `t<k>3`; everything from the network may come in.
fn zone_network(k: u32, egress_of_2: Option<Vec<FirewallRule>>) -> DesiredNetwork {
    let all_in = vec![FirewallRule {
        protocol: "all".into(),
        from_port: 0,
        to_port: 65535,
        sources: vec!["10.99.0.0/24".into()],
    }];
    let port = |j: u32, egress: Option<Vec<FirewallRule>>| DesiredPort {
        instance_id: format!("i-00000000000000{k}{j}0").parse().unwrap(),
        mac: format!("52:54:00:00:0{k}:0{j}"),
        address: format!("10.99.0.{j}"),
        ingress: all_in.clone(),
        egress,
    };
    DesiredNetwork {
        id: format!("net-00000000000000{k}00").parse().unwrap(),
        vni: 1000 + k,
        cidr: "10.99.0.0/24".into(),
        gateway: "10.99.0.1".into(),
        peers: vec![],
        ports: vec![port(2, egress_of_2), port(3, None)],
        domain: String::new(),
        dns: vec![],
        external: None,
        floating: vec![],
    }
}

#[test]
fn two_networks_with_one_range_on_one_host_keep_apart_in_conntrack() {
    let fabric = Fabric::new("z", 1);
    let host = fabric.ns("h1");
    let _ = sh("modprobe br_netfilter");
    sh_ok(&format!("ip netns exec {host} sysctl -q -w net.bridge.bridge-nf-call-iptables=1"));
    // Two bridges, each with two "guests" (namespaces on veth pairs) that
    // have the same addresses as the other bridge's.
    for k in 0..2u32 {
        let br = format!("nb{}", 1000 + k);
        sh_ok(&format!("ip -n {host} link add {br} type bridge && ip -n {host} link set {br} up"));
        for j in [2u32, 3] {
            let g = fabric.ns(&format!("g{k}{j}"));
            sh_ok(&format!(
                "ip netns add {g} && ip -n {host} link add t{k}{j} type veth peer name eth0 netns {g} && \
                 ip -n {host} link set t{k}{j} master {br} up && \
                 ip -n {g} link set eth0 address 52:54:00:00:0{k}:0{j} && \
                 ip -n {g} addr add 10.99.0.{j}/24 dev eth0 && ip -n {g} link set eth0 up && ip -n {g} link set lo up"
            ));
        }
    }
    // On network 1000, .2 may send ICMP into the network; on 1001, nothing.
    let icmp_out = vec![FirewallRule {
        protocol: "icmp".into(),
        from_port: 0,
        to_port: 65535,
        sources: vec!["10.99.0.0/24".into()],
    }];
    let networks = [zone_network(0, Some(icmp_out)), zone_network(1, Some(vec![]))];
    let tap = |instance: &str, vni: u32| {
        let k = vni - 1000;
        let j = &instance[instance.len() - 2..instance.len() - 1];
        Some(format!("t{k}{j}"))
    };
    let ruleset = nubo_agent::network::firewall::render(&networks, &tap);
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &host, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), ruleset.as_bytes()).unwrap();
    let out = nft.wait_with_output().unwrap();
    assert!(out.status.success(), "nft: {}\n{ruleset}", String::from_utf8_lossy(&out.stderr));

    let ping = |k: u32, from: u32, to: u32| {
        sh(&format!("ip netns exec {} ping -c 1 -W 2 10.99.0.{to}", fabric.ns(&format!("g{k}{from}")))).status.success()
    };
    // Egress, found by the bridge a packet came in by (what br_netfilter
    // shows as iifname) and its source address.
    assert!(ping(0, 2, 3), "network 1000's .2 may send ICMP: {ruleset}");
    assert!(!ping(1, 2, 3), "network 1001's .2 has no egress rule, yet its ping went out");
    // Replies pass egress; the same flow (.3 to .2) on both networks.
    assert!(ping(0, 3, 2) && ping(1, 3, 2), "pings from .3 to .2 (replies are established)");
    let table = sh_ok(&format!("ip netns exec {host} cat /proc/net/nf_conntrack"));
    // Flows by their original direction (the first tuple of a line).
    let flows = |zone: u32, src: &str, dst: &str| {
        table
            .lines()
            .filter(|l| l.split_once("src=").is_some_and(|(_, t)| t.starts_with(&format!("{src} dst={dst} "))))
            .filter(|l| l.contains(&format!(" zone={zone} ")))
            .count()
    };
    assert!(flows(1000, "10.99.0.3", "10.99.0.2") >= 1, "no flow of network 1000 in its zone:\n{table}");
    assert!(flows(1001, "10.99.0.3", "10.99.0.2") >= 1, "no flow of network 1001 in its zone:\n{table}");
    assert!(flows(1000, "10.99.0.2", "10.99.0.3") >= 1, "network 1000's allowed ping:\n{table}");
    assert!(flows(1001, "10.99.0.2", "10.99.0.3") == 0, "network 1001's refused ping was tracked:\n{table}");
    assert!(
        !table.lines().any(|l| l.contains("10.99.0.") && l.contains(" zone=0 ")),
        "a bridged flow outside the networks' zones:\n{table}"
    );
    drop(fabric);
}
