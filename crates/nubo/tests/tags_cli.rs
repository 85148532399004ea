//! `nubo tag` and the lists' `--filter tag:...` against a real `nubo
//! server` with no host and no VM (networks and security groups need
//! none): tags set, overwritten, listed as a table and as JSON, filtered
//! on by the server, removed; a bad filter or pair refused with what to
//! write. The endpoint is on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::json;

fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn tags_are_set_listed_filtered_on_and_unset_from_the_cli() {
    let cloud = Cloud::server_only();
    let blue = cloud.nubo_json(&["network", "create", "blue", "--cidr", "10.70.0.0/24"]);
    let blue = blue["id"].as_str().unwrap().to_string();
    cloud.nubo_ok(&["network", "create", "green", "--cidr", "10.71.0.0/24"]);
    let web = cloud.nubo_json(&["security-group", "create", "web"]);
    let web = web["id"].as_str().unwrap().to_string();
    cloud.nubo_ok(&["security-group", "create", "db"]);

    // Set, answered with every tag the resource carries.
    let v = cloud.nubo_json(&["tag", "set", &blue, "env=prod", "team=net"]);
    let vpc = format!("vpc-{}", blue.strip_prefix("net-").unwrap());
    assert_eq!(v, json!({"resource_id": vpc, "resource_type": "vpc", "tags": {"env": "prod", "team": "net"}}));
    cloud.nubo_ok(&["tag", "set", &web, "env=prod", "tier=", "q=a=b"]);
    let out = cloud.nubo_ok(&["tag", "list"]);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["RESOURCE", "TYPE", "KEY", "VALUE"], "{out}");
    assert!(lines.contains(&vec![web.as_str(), "security-group", "q", "a=b"]), "{out}");
    assert!(lines.contains(&vec![vpc.as_str(), "vpc", "team", "net"]), "{out}");
    let one = cloud.nubo_json(&["tag", "list", &web, "--key", "env", "--key", "tier"]);
    assert_eq!(
        one,
        json!([
            {"resource_id": web, "resource_type": "security-group", "key": "env", "value": "prod"},
            {"resource_id": web, "resource_type": "security-group", "key": "tier", "value": ""},
        ])
    );

    // The lists filter on the server, and show the tags.
    let nets = cloud.nubo_json(&["network", "list", "--filter", "tag:env=prod"]);
    assert_eq!(ids(&nets), vec![blue.clone()]);
    assert_eq!(nets[0]["tags"], json!({"env": "prod", "team": "net"}));
    assert_eq!(ids(&cloud.nubo_json(&["network", "list"])).len(), 2);
    let groups = cloud.nubo_json(&["security-group", "list", "--filter", "tag:env", "--filter", "tag:tier"]);
    assert_eq!(ids(&groups), vec![web.clone()]);
    assert!(ids(&cloud.nubo_json(&["security-group", "list", "--filter", "tag:env=dev"])).is_empty());
    assert!(ids(&cloud.nubo_json(&["volume", "list", "--filter", "tag:env"])).is_empty());
    assert!(ids(&cloud.nubo_json(&["instance", "list", "--filter", "tag:env"])).is_empty());

    // Unset; the rest stays.
    let v = cloud.nubo_json(&["tag", "unset", &web, "env", "q"]);
    assert_eq!(v["tags"], json!({"tier": ""}));
    assert!(ids(&cloud.nubo_json(&["security-group", "list", "--filter", "tag:env"])).is_empty());

    // Refusals say what to write.
    let out = cloud.nubo(&["network", "list", "--filter", "env=prod"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tag:KEY=VALUE"), "{out:?}");
    let out = cloud.nubo(&["tag", "set", &web, "novalue"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"), "{out:?}");
    let out = cloud.nubo(&["tag", "set", &web, "aws:x=1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"), "{out:?}");
    let out = cloud.nubo(&["tag", "set", "h-0123456789abcdef0", "a=b"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tags go on"), "{out:?}");
}
