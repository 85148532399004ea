//! What the control plane sends hosts for a private network, through the
//! real router with hosts played by agent API calls (no VM): the DNS
//! names of every instance on the network (on any host; names that are
//! not DNS labels left out), and each port's egress rules beside its
//! ingress ones, with EC2's defaults (a new group lets everything out, the
//! default group also lets its own members in).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::T;
use serde_json::{json, Value};

/// A host with an underlay (it runs private networks); its id and credential.
async fn host_with_underlay(t: &T, underlay: &str) -> (String, String) {
    let (join, _) = t.ctx.store.create_join_token(60_000).await.unwrap();
    let id = nubo_api::ids::HostId::generate().to_string();
    let v = t.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
    let cred = v["credential"].as_str().unwrap().to_string();
    let reg = json!({"host_id": id, "name": underlay, "accel": "tcg", "vcpus": 64, "memory_mib": 262144,
        "disk_gib": 1000, "underlay": underlay});
    t.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
    (id, cred)
}

fn rules_of<'a>(group: &'a Value, direction: &str) -> Vec<&'a Value> {
    group["rules"].as_array().unwrap().iter().filter(|r| r["direction"] == direction).collect()
}

#[tokio::test]
async fn hosts_get_every_instances_name_and_each_ports_egress_rules() {
    let t = T::new().await;
    let admin = t.admin.clone();
    let hosts = [host_with_underlay(&t, "192.0.2.1").await, host_with_underlay(&t, "192.0.2.2").await];
    t.ok("POST", "/api/v1/networks", &admin, Some(json!({"name": "blue", "cidr": "10.50.0.0/24"}))).await;

    // A new group lets everything out (EC2's one rule), and nothing in.
    let out = t.ok("POST", "/api/v1/security-groups", &admin, Some(json!({"name": "out"}))).await;
    let egress = rules_of(&out, "egress");
    assert_eq!(egress.len(), 1, "{out}");
    assert!(egress[0]["protocol"] == "-1" && egress[0]["cidr"] == "0.0.0.0/0", "{out}");
    assert!(rules_of(&out, "ingress").is_empty(), "{out}");
    let all_out = egress[0]["id"].as_str().unwrap().to_string();
    t.ok("DELETE", &format!("/api/v1/security-groups/out/rules/{all_out}"), &admin, None).await;
    t.ok("POST", "/api/v1/security-groups", &admin, Some(json!({"name": "srv"}))).await;
    let rule = |body: Value| t.ok("POST", "/api/v1/security-groups/out/rules", &admin, Some(body));
    rule(json!({"egress": true, "protocol": "tcp", "from_port": 8080, "cidr": "10.50.0.0/24"})).await;
    let out =
        rule(json!({"egress": true, "protocol": "udp", "from_port": 5000, "to_port": 5001, "source_group": "srv"}))
            .await;
    assert_eq!(rules_of(&out, "egress").len(), 2, "{out}");
    assert!(rules_of(&out, "ingress").is_empty(), "an egress rule was stored as ingress: {out}");

    let launch = |name: &'static str, groups: Vec<&'static str>| {
        let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "name": name,
            "networks": ["blue"], "security_groups": groups});
        let t = &t;
        let admin = admin.clone();
        async move { t.ok("POST", "/api/v1/instances", &admin, Some(body)).await["id"].as_str().unwrap().to_string() }
    };
    let web1 = launch("web-1", vec!["out"]).await;
    let web2 = launch("Web-2", vec!["srv"]).await;
    let bad = launch("bad_name", vec![]).await;
    let mut address = std::collections::HashMap::new();
    for id in [&web1, &web2, &bad] {
        let v = t.ok("GET", &format!("/api/v1/instances/{id}"), &admin, None).await;
        address.insert(id.clone(), v["addresses"][0]["address"].as_str().expect("an address").to_string());
    }

    let (mut ports_seen, mut hosts_with_network) = (0, 0);
    for (host, cred) in &hosts {
        let desired = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/desired"), cred, None).await;
        let Some(net) = desired["networks"].as_array().and_then(|n| n.first()) else { continue };
        hosts_with_network += 1;
        assert_eq!(net["domain"], "blue.internal", "{net}");
        // Every instance of the network, wherever it runs, by its name as
        // a label (lowercased); the one whose name is not a label is left out.
        let mut dns: Vec<(String, String)> = net["dns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_string(), r["address"].as_str().unwrap().to_string()))
            .collect();
        dns.sort();
        assert_eq!(
            dns,
            [("web-1".to_string(), address[&web1].clone()), ("web-2".to_string(), address[&web2].clone())],
            "{net}"
        );
        for port in net["ports"].as_array().unwrap() {
            ports_seen += 1;
            let id = port["instance_id"].as_str().unwrap();
            let egress = port["egress"].as_array().expect("egress rules are sent");
            if id == web1 {
                // Its group's two rules, the source group resolved to
                // web-2's address on the network.
                assert_eq!(egress.len(), 2, "{port}");
                assert!(egress.iter().any(|r| r["protocol"] == "tcp"
                    && r["from_port"] == 8080
                    && r["sources"] == json!(["10.50.0.0/24"])));
                assert!(egress.iter().any(|r| r["protocol"] == "udp"
                    && r["to_port"] == 5001
                    && r["sources"] == json!([format!("{}/32", address[&web2])])));
            } else {
                // srv and default: everything out.
                assert_eq!(egress.len(), 1, "{port}");
                assert!(egress[0]["protocol"] == "all" && egress[0]["sources"] == json!(["0.0.0.0/0"]), "{port}");
            }
            if id == bad {
                // The default group lets its own members in.
                let ingress = port["ingress"].as_array().unwrap();
                assert!(
                    ingress.iter().any(|r| r["protocol"] == "all"
                        && r["sources"].as_array().unwrap().contains(&json!(format!("{}/32", address[&bad])))),
                    "{port}"
                );
            }
        }
    }
    assert_eq!(ports_seen, 3, "each port on one host");
    // Spread placement: both hosts have ports, so at least one of them
    // was sent names of instances running on the other.
    assert_eq!(hosts_with_network, 2);
}
