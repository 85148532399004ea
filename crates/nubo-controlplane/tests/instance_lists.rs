//! Paged lists of instances through the router (no socket, no VM): REST
//! `limit`/`page_token` with the `Next-Page-Token` header, and EC2
//! DescribeInstances' `MaxResults`/`NextToken`. Pages cover every instance
//! exactly once, stay put while instances are launched between two pages,
//! refuse a bad size or token with a 400 that says what is allowed, and
//! never show another project's instances.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::ec2::{all, ec2, is_error, key, ok};
use common::T;
use serde_json::{json, Value};
use std::collections::HashSet;

fn set(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect()
}

/// Launches `n` instances as `token`; their ids.
async fn launch(t: &T, token: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for k in 0..n {
        let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "ports": [80],
                          "tags": {"n": k.to_string()}});
        out.push(t.ok("POST", "/api/v1/instances", token, Some(body)).await["id"].as_str().unwrap().to_string());
    }
    out
}

/// A project with a user and room for `instances`; the user's token.
async fn project(t: &T, user: &str, project: &str, instances: u64) -> String {
    let token = t.user(user, project, "member").await;
    let quota = json!({"instances": instances, "vcpus": instances, "memory_mib": instances * 64});
    t.ok("PUT", &format!("/api/v1/projects/{project}/quota"), &t.admin.clone(), Some(quota)).await;
    token
}

/// Follows the pages of `limit` from the first; each page's ids.
async fn pages(t: &T, token: &str, limit: u32) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(n) => format!("/api/v1/instances?limit={limit}&page_token={n}"),
            None => format!("/api/v1/instances?limit={limit}"),
        };
        let (s, v, n) = t.get_page(&path, token).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        let page = ids(&v);
        assert!(page.len() <= limit as usize, "{path}: {} items", page.len());
        out.push(page);
        match n {
            Some(n) => next = Some(n),
            None => return out,
        }
    }
}

#[tokio::test]
async fn rest_pages_cover_every_instance_once_and_only_the_callers_project() {
    let t = T::new().await;
    t.add_host().await;
    let alice = project(&t, "alice", "proj-a", 40).await;
    let bob = project(&t, "bob", "proj-b", 40).await;
    let mut a = launch(&t, &alice, 23).await;
    let b = launch(&t, &bob, 4).await;

    // Without `limit`: the whole list in one answer, oldest first, as
    // before lists paged, and no token.
    let (s, whole, next) = t.get_page("/api/v1/instances", &alice).await;
    assert_eq!((s, next), (StatusCode::OK, None));
    // Oldest first; instances launched in the same millisecond by id.
    let order = ids(&whole);
    assert_eq!(set(&order), set(&a));
    assert_eq!(whole[0]["ports"]["80"].as_str().unwrap().split(':').next(), Some("127.0.0.1"));
    assert!(whole.as_array().unwrap().iter().all(|i| i["tags"]["n"].is_string()), "{whole}");

    // Pages of 5: 5, 5, 5, 5, 3, together the whole list, each once.
    let paged = pages(&t, &alice, 5).await;
    assert_eq!(paged.iter().map(Vec::len).collect::<Vec<_>>(), [5, 5, 5, 5, 3]);
    assert_eq!(paged.concat(), order);
    // A page's views are the unpaged list's (tags, ports, ...).
    let (_, first, _) = t.get_page("/api/v1/instances?limit=5", &alice).await;
    assert_eq!(first.as_array().unwrap()[..], whole.as_array().unwrap()[..5]);
    // A page exactly as long as the list has no next page.
    let (_, all23, next) = t.get_page("/api/v1/instances?limit=23", &alice).await;
    assert_eq!((ids(&all23), next), (order.clone(), None));

    // Instances launched between two pages: what was listed is not
    // listed again, nothing is skipped, the new ones come last.
    let (_, first, next) = t.get_page("/api/v1/instances?limit=10", &alice).await;
    let mut seen = ids(&first);
    a.extend(launch(&t, &alice, 3).await);
    let mut token = next.expect("a next page");
    loop {
        let (s, v, n) = t.get_page(&format!("/api/v1/instances?limit=10&page_token={token}"), &alice).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        seen.extend(ids(&v));
        match n {
            Some(n) => token = n,
            None => break,
        }
    }
    let (_, whole, _) = t.get_page("/api/v1/instances", &alice).await;
    assert_eq!(seen, ids(&whole));
    assert_eq!(set(&seen), set(&a));

    // Another project's instances never appear, on any page; an
    // operator's pages hold every project's, each once.
    let bobs: Vec<String> = pages(&t, &bob, 3).await.concat();
    assert_eq!(set(&bobs), set(&b));
    assert!(pages(&t, &alice, 7).await.concat().iter().all(|i| !b.contains(i)));
    let everyone = pages(&t, &t.admin.clone(), 7).await.concat();
    assert_eq!(everyone.len(), a.len() + b.len());
    assert_eq!(set(&everyone), set(&a).union(&set(&b)).cloned().collect());
    // A token only says where to start: bob following alice's token
    // still sees only bob's instances.
    let (_, _, alices_next) = t.get_page("/api/v1/instances?limit=1", &alice).await;
    let (s, v, _) = t.get_page(&format!("/api/v1/instances?page_token={}", alices_next.unwrap()), &bob).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ids(&v).iter().all(|i| b.contains(i)), "{v}");

    // Bad sizes and tokens: a 400 that says what is allowed.
    for (query, says) in [
        ("limit=0", "limit 0 is out of range: ask for 1 to 1000 items per page"),
        ("limit=1001", "limit 1001 is out of range: ask for 1 to 1000 items per page"),
        ("limit=ten", "limit 'ten' is not a number: ask for 1 to 1000 items per page"),
        ("limit=5&page_token=garbage", "the page token is not valid: pass the token of the previous answer unchanged"),
        ("page_token=bnViby1vZmZzZXQtMg", "the page token is not valid"),
    ] {
        let (s, v, next) = t.get_page(&format!("/api/v1/instances?{query}"), &alice).await;
        assert_eq!((s, next), (StatusCode::BAD_REQUEST, None), "{query}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{query}: {v}");
    }
}

#[tokio::test]
async fn ec2_pages_cover_every_instance_once_and_only_the_callers_project() {
    let t = T::new().await;
    t.add_host().await;
    let alice = project(&t, "alice", "proj-a", 40).await;
    let bob = project(&t, "bob", "proj-b", 40).await;
    let mut a = launch(&t, &alice, 12).await;
    let b = launch(&t, &bob, 2).await;
    let k = key(&t, &alice).await;

    // Without MaxResults: everything, no token.
    let whole = ok(&t, &k, &[("Action", "DescribeInstances")]).await;
    assert_eq!(set(&all(&whole, "instanceId")), set(&a));
    assert!(!whole.contains("<nextToken>"));

    // Pages of 5, with an instance launched after the first page.
    let first = ok(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "5")]).await;
    let mut seen = all(&first, "instanceId");
    assert_eq!(seen.len(), 5);
    a.extend(launch(&t, &alice, 1).await);
    let mut token = all(&first, "nextToken").pop().expect("a next page");
    loop {
        let page = ok(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "5"), ("NextToken", &token)]).await;
        let ids = all(&page, "instanceId");
        assert!(ids.len() <= 5, "{page}");
        seen.extend(ids);
        match all(&page, "nextToken").pop() {
            Some(n) => token = n,
            None => break,
        }
    }
    let whole = ok(&t, &k, &[("Action", "DescribeInstances")]).await;
    assert_eq!(seen, all(&whole, "instanceId"));
    assert_eq!(set(&seen), set(&a));
    assert!(seen.iter().all(|i| !b.contains(i)));

    // A filter applies within each page: fewer than MaxResults may come
    // back with a token, and the pages together hold exactly the matches.
    let mut tagged = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = vec![("Action", "DescribeInstances"), ("MaxResults", "5"), ("Filter.1.Name", "tag:n")];
        params.push(("Filter.1.Value.1", "1*"));
        if let Some(t) = &token {
            params.push(("NextToken", t));
        }
        let page = ok(&t, &k, &params).await;
        tagged.extend(all(&page, "instanceId"));
        match all(&page, "nextToken").pop() {
            Some(n) => token = Some(n),
            None => break,
        }
    }
    // Tags n=1, n=10, n=11 of the first twelve, and n=0 of the thirteenth does not match.
    assert_eq!(tagged.len(), 3, "{tagged:?}");
    assert_eq!(set(&tagged), set(&[a[1].clone(), a[10].clone(), a[11].clone()]));

    let e = is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("MaxResults", "1001")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
    );
    assert!(e.contains("MaxResults 1001 is out of range: ask for 5 to 1000 items per page"), "{e}");
    is_error(
        ec2(&t, &k, &[("Action", "DescribeInstances"), ("NextToken", "nubo-offset-5")]).await,
        StatusCode::BAD_REQUEST,
        "InvalidPaginationToken",
    );
}
