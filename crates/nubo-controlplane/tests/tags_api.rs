//! Tags through the REST API (`/api/v1/tags`, `/api/v1/resources/{id}/tags`
//! and the `tag` filter of the lists), driven in-process: the same tags
//! the EC2 API's CreateTags and DescribeTags see, EC2's limits, pages of
//! the tag list, and tenancy (another project's resource is not found, a
//! reader may list but not change).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::{all, ec2, is_error, key, ok};
use common::T;
use serde_json::{json, Value};

fn msg(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The ids of a list answer, in order.
fn ids(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(id).collect()
}

async fn set(t: &T, token: &str, resource: &str, tags: Value) -> (StatusCode, Value) {
    t.call("PUT", &format!("/api/v1/resources/{resource}/tags"), Some(token), Some(json!({ "tags": tags }))).await
}

#[tokio::test]
async fn tags_set_through_rest_are_the_ones_ec2_sees_and_back() {
    let t = T::new().await;
    t.add_bridging_host(&[]).await;
    let alice = t.user("alice", "proj-a", "member").await;
    let k = key(&t, &alice).await;
    let vol = id(&t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 1}))).await);
    let net = id(&t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "n1", "cidr": "10.50.0.0/24"}))).await);
    let launch = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": ["n1"]});
    let inst = id(&t.ok("POST", "/api/v1/instances", &alice, Some(launch)).await);

    // Set, answered with every tag the resource carries.
    let (s, v) = set(&t, &alice, &vol, json!({"env": "prod", "team": "web"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"resource_id": vol, "resource_type": "volume", "tags": {"env": "prod", "team": "web"}}));
    // Setting again overwrites that key and keeps the others.
    let v =
        t.ok("PUT", &format!("/api/v1/resources/{vol}/tags"), &alice, Some(json!({"tags": {"env": "staging"}}))).await;
    assert_eq!(v["tags"], json!({"env": "staging", "team": "web"}));
    let v = t.ok("GET", &format!("/api/v1/tags?resource={vol}"), &alice, None).await;
    assert_eq!(
        v,
        json!([
            {"resource_id": vol, "resource_type": "volume", "key": "env", "value": "staging"},
            {"resource_id": vol, "resource_type": "volume", "key": "team", "value": "web"},
        ])
    );
    assert_eq!(t.ok("GET", &format!("/api/v1/volumes/{vol}"), &alice, None).await["tags"]["env"], "staging");

    // EC2 sees them...
    let d =
        ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "resource-id"), ("Filter.1.Value.1", &vol)]).await;
    assert_eq!(all(&d, "key"), ["env", "team"], "{d}");
    assert_eq!(all(&d, "value"), ["staging", "web"], "{d}");
    // ...and REST sees EC2's.
    ok(&t, &k, &[("Action", "CreateTags"), ("ResourceId.1", &vol), ("Tag.1.Key", "owner"), ("Tag.1.Value", "al")])
        .await;
    let v = t.ok("GET", &format!("/api/v1/resources/{vol}/tags"), &alice, None).await;
    assert_eq!(v["tags"], json!({"env": "staging", "owner": "al", "team": "web"}));

    // Unset by key (an absent key is no error); the rest stays.
    let v = t.ok("DELETE", &format!("/api/v1/resources/{vol}/tags?key=team&key=nope"), &alice, None).await;
    assert_eq!(v["tags"], json!({"env": "staging", "owner": "al"}));
    let d =
        ok(&t, &k, &[("Action", "DescribeTags"), ("Filter.1.Name", "resource-id"), ("Filter.1.Value.1", &vol)]).await;
    assert_eq!(all(&d, "key"), ["env", "owner"], "{d}");
    let (s, v) = t.call("DELETE", &format!("/api/v1/resources/{vol}/tags"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("?key=KEY"), "{v}");

    // A network's tags are its VPC's, whichever id names it.
    let vpc = format!("vpc-{}", net.strip_prefix("net-").unwrap());
    let v = t.ok("PUT", &format!("/api/v1/resources/{net}/tags"), &alice, Some(json!({"tags": {"tier": "db"}}))).await;
    assert_eq!(v["resource_id"], vpc.as_str());
    assert_eq!(v["resource_type"], "vpc");
    let d = ok(&t, &k, &[("Action", "DescribeVpcs"), ("VpcId.1", &vpc)]).await;
    assert!(d.contains("<key>tier</key><value>db</value>"), "{d}");
    assert_eq!(t.ok("GET", &format!("/api/v1/networks/{net}"), &alice, None).await["tags"], json!({"tier": "db"}));
    ok(&t, &k, &[("Action", "CreateTags"), ("ResourceId.1", &vpc), ("Tag.1.Key", "cost"), ("Tag.1.Value", "7")]).await;
    let nets = t.ok("GET", "/api/v1/networks", &alice, None).await;
    let n = nets.as_array().unwrap().iter().find(|n| n["id"] == net.as_str()).unwrap();
    assert_eq!(n["tags"], json!({"cost": "7", "tier": "db"}));
    let v = t.ok("GET", &format!("/api/v1/resources/{vpc}/tags"), &alice, None).await;
    assert_eq!(v["tags"], json!({"cost": "7", "tier": "db"}));

    // Instances: the view carries them, and DescribeInstances shows them.
    t.ok("PUT", &format!("/api/v1/resources/{inst}/tags"), &alice, Some(json!({"tags": {"Name": "web-1"}}))).await;
    assert_eq!(t.ok("GET", &format!("/api/v1/instances/{inst}"), &alice, None).await["tags"]["Name"], "web-1");
    let d = ok(&t, &k, &[("Action", "DescribeInstances"), ("InstanceId.1", &inst)]).await;
    assert!(d.contains("<key>Name</key><value>web-1</value>"), "{d}");

    // Security groups: the list carries them.
    let sg =
        id(&t.ok("POST", "/api/v1/security-groups", &alice, Some(json!({"name": "web", "description": "web"}))).await);
    t.ok("PUT", &format!("/api/v1/resources/{sg}/tags"), &alice, Some(json!({"tags": {"role": "edge"}}))).await;
    let groups = t.ok("GET", "/api/v1/security-groups", &alice, None).await;
    let g = groups.as_array().unwrap().iter().find(|g| g["id"] == sg.as_str()).unwrap();
    assert_eq!(g["tags"], json!({"role": "edge"}));

    // The whole list, by key.
    let v = t.ok("GET", "/api/v1/tags?key=env&key=role", &alice, None).await;
    let got: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["resource_id"].as_str().unwrap().to_string(), t["key"].as_str().unwrap().to_string()))
        .collect();
    let mut want = vec![(vol.clone(), "env".to_string()), (sg.clone(), "role".to_string())];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn lists_take_tag_filters_and_the_tag_list_pages() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let mut vols = Vec::new();
    for _ in 0..3 {
        vols.push(id(&t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 1}))).await));
    }
    set(&t, &alice, &vols[0], json!({"env": "prod", "team": "a"})).await;
    set(&t, &alice, &vols[1], json!({"env": "dev"})).await;
    let list = |q: &str| format!("/api/v1/volumes?{q}");
    assert_eq!(ids(&t.ok("GET", &list("tag=env=prod"), &alice, None).await), [vols[0].clone()]);
    assert_eq!(ids(&t.ok("GET", &list("tag=env"), &alice, None).await).len(), 2);
    assert_eq!(ids(&t.ok("GET", &list("tag=env=prod&tag=team"), &alice, None).await), [vols[0].clone()]);
    assert!(ids(&t.ok("GET", &list("tag=env=dev&tag=team"), &alice, None).await).is_empty());
    // Exact values: no wildcards, no case folding.
    assert!(ids(&t.ok("GET", &list("tag=env=pro*"), &alice, None).await).is_empty());
    assert!(ids(&t.ok("GET", &list("tag=env=PROD"), &alice, None).await).is_empty());
    // Escaped as a client sends it: `tag=env%3Dprod`.
    assert_eq!(ids(&t.ok("GET", &list("tag=env%3Dprod"), &alice, None).await), [vols[0].clone()]);
    // Without a filter, every volume, with tags in the view.
    let every = t.ok("GET", "/api/v1/volumes", &alice, None).await;
    assert_eq!(ids(&every).len(), 3);
    let (s, v) = t.call("GET", &list("tag==prod"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("KEY=VALUE"), "{v}");

    // Filters and pages together: the page is cut from the matches.
    let (s, page, next) = t.get_page(&list("tag=env&limit=1"), &alice).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&page).len(), 1);
    let next = next.expect("a second page");
    let (_, page2, last) = t.get_page(&list(&format!("tag=env&limit=1&page_token={next}")), &alice).await;
    assert_eq!(ids(&page2).len(), 1);
    assert_ne!(ids(&page), ids(&page2));
    assert!(last.is_none(), "two matches, two pages");

    // Instances (paged by the store without filters), images, security
    // groups and snapshots take the same filter.
    let launch = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1});
    let mut insts = Vec::new();
    for _ in 0..4 {
        insts.push(id(&t.ok("POST", "/api/v1/instances", &alice, Some(launch.clone())).await));
    }
    for i in [&insts[0], &insts[2], &insts[3]] {
        set(&t, &alice, i, json!({"app": "web"})).await;
    }
    let want = vec![insts[0].clone(), insts[2].clone(), insts[3].clone()];
    assert_eq!(ids(&t.ok("GET", "/api/v1/instances?tag=app=web", &alice, None).await), want);
    let (_, p1, next) = t.get_page("/api/v1/instances?tag=app=web&limit=2", &alice).await;
    assert_eq!(ids(&p1), want[..2]);
    let (_, p2, last) =
        t.get_page(&format!("/api/v1/instances?tag=app=web&limit=2&page_token={}", next.unwrap()), &alice).await;
    assert_eq!(ids(&p2), want[2..]);
    assert!(last.is_none());
    assert_eq!(ids(&t.ok("GET", "/api/v1/instances", &alice, None).await).len(), 4);

    let img = id(&t
        .ok("POST", "/api/v1/images", &alice, Some(json!({"name": "mine", "disk_format": "raw", "size_bytes": 1024})))
        .await);
    set(&t, &alice, &img, json!({"os": "debian"})).await;
    assert_eq!(ids(&t.ok("GET", "/api/v1/images?tag=os=debian", &alice, None).await), vec![img.clone()]);
    assert_eq!(t.ok("GET", &format!("/api/v1/images/{img}"), &alice, None).await["tags"]["os"], "debian");
    let sg = id(&t.ok("POST", "/api/v1/security-groups", &alice, Some(json!({"name": "g", "description": "g"}))).await);
    set(&t, &alice, &sg, json!({"os": "any"})).await;
    assert_eq!(ids(&t.ok("GET", "/api/v1/security-groups?tag=os", &alice, None).await), vec![sg.clone()]);
    assert!(ids(&t.ok("GET", "/api/v1/snapshots?tag=os", &alice, None).await).is_empty());
    assert!(ids(&t.ok("GET", "/api/v1/floating-ips?tag=os", &alice, None).await).is_empty());
    assert!(ids(&t.ok("GET", "/api/v1/networks?tag=os", &alice, None).await).is_empty());

    // The tag list pages by resource then key, with tokens of its own.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            None => "/api/v1/tags?limit=2".to_string(),
            Some(tk) => format!("/api/v1/tags?limit=2&page_token={tk}"),
        };
        let (s, page, next) = t.get_page(&path, &alice).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert!(page.as_array().unwrap().len() <= 2);
        for tag in page.as_array().unwrap() {
            seen.push((tag["resource_id"].as_str().unwrap().to_string(), tag["key"].as_str().unwrap().to_string()));
        }
        match next {
            Some(n) => token = Some(n),
            None => break,
        }
    }
    let whole = t.ok("GET", "/api/v1/tags", &alice, None).await;
    assert_eq!(seen.len(), whole.as_array().unwrap().len());
    assert_eq!(seen.len(), 3 + 3 + 1 + 1);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by resource, then key");
    for bad in ["limit=0", "limit=x", "page_token=zzz", "limit=1&limit=2"] {
        let (s, v) = t.call("GET", &format!("/api/v1/tags?{bad}"), Some(&alice), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

#[tokio::test]
async fn tags_keep_ec2s_limits_and_say_what_to_do() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let vol = id(&t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 1}))).await);
    let long_key = "k".repeat(129);
    let long_value = "v".repeat(257);
    for (tags, says) in [
        (json!({}), "no tags given"),
        (json!({ long_key.clone(): "x" }), "1-128 characters"),
        (json!({"aws:cloudformation": "x"}), "reserved"),
        (json!({"AWS:x": "x"}), "reserved"),
        (json!({"k": long_value}), "longer than 256"),
        (json!({"k": "a\u{7}b"}), "control characters"),
    ] {
        let (s, v) = set(&t, &alice, &vol, tags.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{tags}: {v}");
        assert!(msg(&v).contains(says), "{tags}: {v}");
    }
    // The longest allowed.
    let (s, v) = set(&t, &alice, &vol, json!({ "k".repeat(128): "v".repeat(256) })).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // 50 per resource: 51 in one request, or one past 50 already set.
    let many: serde_json::Map<String, Value> = (0..51).map(|i| (format!("t{i}"), json!("x"))).collect();
    let (s, v) = set(&t, &alice, &vol, Value::Object(many)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("at most 50"), "{v}");
    let fill: serde_json::Map<String, Value> = (0..49).map(|i| (format!("t{i}"), json!("x"))).collect();
    let (s, v) = set(&t, &alice, &vol, Value::Object(fill)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tags"].as_object().unwrap().len(), 50);
    let (s, v) = set(&t, &alice, &vol, json!({"one-more": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("at most 50") && msg(&v).contains("nubo tag unset"), "{v}");
    // Nothing of the refused request was kept; overwriting one is fine.
    let v = t.ok("GET", &format!("/api/v1/resources/{vol}/tags"), &alice, None).await;
    assert!(v["tags"].get("one-more").is_none());
    let (s, _) = set(&t, &alice, &vol, json!({"t0": "y"})).await;
    assert_eq!(s, StatusCode::OK);

    // Ids of things that carry no tags, and unknown fields.
    let (s, v) = set(&t, &alice, "h-0123456789abcdef0", json!({"a": "b"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(msg(&v).contains("tags go on"), "{v}");
    let (s, v) = set(&t, &alice, "vol-zz", json!({"a": "b"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) =
        t.call("PUT", &format!("/api/v1/resources/{vol}/tags"), Some(&alice), Some(json!({"tag": {"a": "b"}}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn another_projects_resources_are_not_found_and_readers_cannot_write() {
    let t = T::new().await;
    t.add_bridging_host(&[]).await;
    let alice = t.user("alice", "proj-a", "member").await;
    let rita = t.user("rita", "proj-a", "reader").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let vol = id(&t.ok("POST", "/api/v1/volumes", &alice, Some(json!({"size_gib": 1}))).await);
    let net = id(&t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "n", "cidr": "10.60.0.0/24"}))).await);
    let sg = id(&t.ok("POST", "/api/v1/security-groups", &alice, Some(json!({"name": "g", "description": "g"}))).await);
    let inst = id(&t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await);
    let kp = t.ok("POST", "/api/v1/keypairs", &alice, Some(json!({"name": "k1"}))).await;
    let kp = kp["keypair"]["id"].as_str().unwrap().to_string();
    let bob_vol = id(&t.ok("POST", "/api/v1/volumes", &bob, Some(json!({"size_gib": 1}))).await);
    for r in [&vol, &net, &sg, &inst, &kp] {
        set(&t, &alice, r, json!({"secret": "a"})).await;
    }
    set(&t, &bob, &bob_vol, json!({"mine": "b"})).await;

    // Bob: alice's resources do not exist for him, by any route.
    for r in [&vol, &net, &sg, &inst, &kp] {
        let (s, v) = set(&t, &bob, r, json!({"x": "y"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{r}: {v}");
        let (s, v) = t.call("DELETE", &format!("/api/v1/resources/{r}/tags?key=secret"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{r}: {v}");
        let (s, v) = t.call("GET", &format!("/api/v1/resources/{r}/tags"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{r}: {v}");
        let (s, v) = t.call("GET", &format!("/api/v1/tags?resource={r}"), Some(&bob), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{r}: {v}");
    }
    let bobs = t.ok("GET", "/api/v1/tags", &bob, None).await;
    assert_eq!(bobs, json!([{"resource_id": bob_vol, "resource_type": "volume", "key": "mine", "value": "b"}]));
    assert!(ids(&t.ok("GET", "/api/v1/volumes?tag=secret", &bob, None).await).is_empty());
    // Nor through EC2, as its own not-found code.
    let bk = key(&t, &bob).await;
    is_error(
        ec2(&t, &bk, &[("Action", "CreateTags"), ("ResourceId.1", &vol), ("Tag.1.Key", "x"), ("Tag.1.Value", "y")])
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidVolume.NotFound",
    );
    let d = ok(&t, &bk, &[("Action", "DescribeTags")]).await;
    assert_eq!(all(&d, "resourceId"), vec![bob_vol.clone()], "{d}");

    // Rita reads alice's project but may not change it.
    let v = t.ok("GET", &format!("/api/v1/tags?resource={vol}"), &rita, None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(ids(&t.ok("GET", "/api/v1/volumes?tag=secret=a", &rita, None).await), vec![vol.clone()]);
    assert_eq!(ids(&t.ok("GET", "/api/v1/keypairs?tag=secret", &rita, None).await), vec![kp.clone()]);
    assert!(ids(&t.ok("GET", "/api/v1/keypairs?tag=secret", &bob, None).await).is_empty());
    for r in [&vol, &net, &sg, &inst, &kp] {
        let (s, v) = set(&t, &rita, r, json!({"x": "y"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{r}: {v}");
        let (s, v) = t.call("DELETE", &format!("/api/v1/resources/{r}/tags?key=secret"), Some(&rita), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{r}: {v}");
    }
    let v = t.ok("GET", &format!("/api/v1/resources/{vol}/tags"), &alice, None).await;
    assert_eq!(v["tags"], json!({"secret": "a"}), "nothing changed");

    // Builtin images carry no tags; no credential, no tags.
    let images = t.ok("GET", "/api/v1/images", &alice, None).await;
    let builtin = images.as_array().unwrap().iter().find(|i| i["source"] == "builtin").map(id).unwrap();
    let (s, v) = set(&t, &alice, &builtin, json!({"x": "y"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(msg(&v).contains("builtin"), "{v}");
    let (s, _) = t.call("GET", "/api/v1/tags", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
