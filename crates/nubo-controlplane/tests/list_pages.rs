//! Paged REST lists other than instances (theirs are in instance_lists.rs):
//! volumes, snapshots, images, key pairs, networks, load balancers,
//! policies, instance groups, alert rules and migrations. For each, more
//! items than a page are made, the pages are walked with a small `limit`,
//! and together they must be the unpaged list (same items, none twice),
//! in creation order; the last page has no token; a bad token and limit 0
//! are a 400 that says what is allowed; another project's items never
//! appear.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use serde_json::{json, Value};
use std::collections::HashSet;

/// Items per list in each project; pages hold `LIMIT`, so there are several.
const ITEMS: usize = 5;
const LIMIT: u32 = 2;

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// The one host, as its agent: its id and credential.
type Host = (nubo_api::ids::HostId, String);

/// Makes item `k` of list `path` as `token`; its id.
async fn make(t: &T, host: &Host, path: &str, token: &str, k: usize) -> String {
    let body = match path {
        "/api/v1/volumes" => json!({"size_gib": 1, "name": format!("v{k}")}),
        "/api/v1/images" => json!({"name": format!("img{k}"), "disk_format": "raw", "size_bytes": 4096}),
        "/api/v1/keypairs" => json!({"name": format!("k{k}")}),
        "/api/v1/networks" => json!({"name": format!("n{k}"), "cidr": format!("10.9.{k}.0/24")}),
        // Named against creation order, so that paging's order (creation)
        // differs from the unpaged one (by name).
        // Balancing a group made for the groups' list before.
        "/api/v1/load-balancers" => {
            json!({"name": format!("lb{}", ITEMS - k), "port": 80, "group": format!("g{ITEMS}")})
        }
        "/api/v1/policies" => json!({"name": format!("p{}", ITEMS - k), "scope": {"tag": {"key": "role"}},
            "condition": {"metric": "cpu", "op": ">", "threshold": 90}, "actions": ["reboot"], "dry_run": true}),
        "/api/v1/groups" => json!({"name": format!("g{}", ITEMS - k), "min": 0, "max": 1, "desired": 0,
            "template": {"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "ports": [80]}}),
        "/api/v1/alert-rules" => json!({"name": format!("r{}", ITEMS - k), "kind": "metric", "target": "*",
            "metric": "cpu", "op": ">", "threshold": 80, "for_secs": 60}),
        "/api/v1/snapshots" => {
            let v = t.ok("POST", "/api/v1/volumes", token, Some(json!({"size_gib": 1}))).await;
            // The host reports every volume made, this one included, made:
            // a volume is snapshotted once it is available.
            let admin = t.admin.clone();
            let all: Vec<Value> = ids(&t.ok("GET", "/api/v1/volumes", &admin, None).await)
                .iter()
                .map(|v| json!({"id": v, "state": "available", "size_gib": 1, "error": null}))
                .collect();
            let (h, cred) = host;
            let report = json!({"instances": [], "volumes": all});
            t.ok("POST", &format!("/api/v1/agent/hosts/{h}/report"), cred, Some(report)).await;
            let s = t.ok("POST", &format!("/api/v1/volumes/{}/snapshots", id(&v)), token, Some(json!({}))).await;
            return id(&s);
        }
        other => panic!("no maker for {other}"),
    };
    let made = t.ok("POST", path, token, Some(body)).await;
    // A new key pair comes with its private key, beside it.
    id(made.get("keypair").unwrap_or(&made))
}

/// Follows the pages of `path` from the first; each page's items.
async fn pages(t: &T, path: &str, token: &str) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(n) => format!("{path}?limit={LIMIT}&page_token={n}"),
            None => format!("{path}?limit={LIMIT}"),
        };
        let (s, v, n) = t.get_page(&url, token).await;
        assert_eq!(s, StatusCode::OK, "{url}: {v}");
        let page = v.as_array().unwrap().clone();
        assert!(page.len() <= LIMIT as usize, "{url}: {} items", page.len());
        // A token promises a next page; the last page has none.
        if n.is_some() {
            assert_eq!(page.len(), LIMIT as usize, "{url}: a short page with a token");
        }
        out.push(page);
        match n {
            Some(n) => next = Some(n),
            None => return out,
        }
        assert!(out.len() <= 100, "{path}: pages never end");
    }
}

/// Walks `path`'s pages as `token` and checks them against its unpaged
/// list; the ids seen.
async fn check_pages(t: &T, path: &str, token: &str, mine: &[String], theirs: &[String]) -> Vec<String> {
    let (s, whole, next) = t.get_page(path, token).await;
    assert_eq!((s, next), (StatusCode::OK, None), "{path}: {whole}");
    let whole_ids = ids(&whole);
    for m in mine {
        assert!(whole_ids.contains(m), "{path}: {m} missing from the unpaged list");
    }

    let pages = pages(t, path, token).await;
    assert!(pages.len() >= 3, "{path}: {} pages of {LIMIT} for {} items", pages.len(), whole_ids.len());
    let items: Vec<Value> = pages.into_iter().flatten().collect();
    let paged: Vec<String> = items.iter().map(id).collect();
    let unique: HashSet<&String> = paged.iter().collect();
    assert_eq!(unique.len(), paged.len(), "{path}: an item on two pages: {paged:?}");
    assert_eq!(unique, whole_ids.iter().collect::<HashSet<_>>(), "{path}: the pages are not the unpaged list");
    // Pages run in creation order, ties by id.
    let keys: Vec<(i64, String)> = items.iter().map(|i| (i["created_at_ms"].as_i64().unwrap(), id(i))).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "{path}: pages out of (created_at_ms, id) order");
    for o in theirs {
        assert!(!paged.contains(o), "{path}: another project's {o} on a page");
        assert!(!whole_ids.contains(o), "{path}: another project's {o} in the list");
    }

    // A bad token and an empty page are refused, saying what to do.
    for (query, says) in [("page_token=nonsense", "page token is not valid"), ("limit=0", "ask for 1 to 1000")] {
        let url = format!("{path}?{query}");
        let (s, v, _) = t.get_page(&url, token).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{url}: {msg}");
    }
    paged
}

const PROJECT_LISTS: [&str; 9] = [
    "/api/v1/volumes",
    "/api/v1/snapshots",
    "/api/v1/images",
    "/api/v1/keypairs",
    "/api/v1/networks",
    "/api/v1/groups",
    "/api/v1/load-balancers",
    "/api/v1/policies",
    "/api/v1/alert-rules",
];

#[tokio::test]
async fn project_lists_page_through_their_own_items_once_each() {
    let t = T::new().await;
    let host = t.add_host_with_id().await;
    let admin = t.admin.clone();
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let room = json!({"volume_gib": 100});
    for p in ["proj-a", "proj-b"] {
        let (s, v) = t.call("PUT", &format!("/api/v1/projects/{p}/quota"), Some(&admin), Some(room.clone())).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    for path in PROJECT_LISTS {
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for k in 0..ITEMS {
            mine.push(make(&t, &host, path, &alice, k).await);
            theirs.push(make(&t, &host, path, &bob, k).await);
        }
        let seen = check_pages(&t, path, &alice, &mine, &theirs).await;
        assert!(mine.iter().all(|m| seen.contains(m)), "{path}: {mine:?} not all paged: {seen:?}");
        // And the other way round.
        check_pages(&t, path, &bob, &theirs, &mine).await;
    }
}

#[tokio::test]
async fn operators_page_through_migrations() {
    let t = T::new().await;
    let admin = t.admin.clone();
    let hosts = [t.add_host_with_id().await, t.add_host_with_id().await];
    let mut launched = Vec::new();
    for _ in 0..ITEMS {
        let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1});
        let v = t.ok("POST", "/api/v1/instances", &admin, Some(body)).await;
        let placed = t.ok("GET", &format!("/api/v1/instances/{}", id(&v)), &admin, None).await;
        launched.push((id(&v), placed["host"].as_str().unwrap().to_string()));
    }
    for (host, cred) in &hosts {
        let running: Vec<Value> = launched
            .iter()
            .filter(|(_, h)| *h == host.to_string())
            .map(|(i, _)| json!({"id": i, "power": "running", "pid": 1, "error": null}))
            .collect();
        t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(json!({"instances": running}))).await;
    }
    let mut mine = Vec::new();
    for (i, on) in &launched {
        let to = hosts.iter().map(|(h, _)| h.to_string()).find(|h| h != on).unwrap();
        let m = t.ok("POST", &format!("/api/v1/instances/{i}/migrate"), &admin, Some(json!({"to": to}))).await;
        mine.push(id(&m));
    }
    let seen = check_pages(&t, "/api/v1/migrations", &admin, &mine, &[]).await;
    assert_eq!(seen.len(), ITEMS);
    // Members may not list migrations, paged or not.
    let alice = t.user("alice", "proj-a", "member").await;
    let (s, v, _) = t.get_page(&format!("/api/v1/migrations?limit={LIMIT}"), &alice).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}
