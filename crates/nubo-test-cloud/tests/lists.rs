//! Paged lists through the typed client, on the test cloud: two projects
//! each make key pairs, networks and volumes; each member walks its
//! project's lists with a small page, and the pages must be the unpaged
//! list (every item once), in creation order, without the other
//! project's items, the last page without a token; a bad token and a
//! zero limit are refused with a 400 that says what to do. A change to a
//! view or to the client's paging breaks this at compile time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_api::params::{KeypairCreate, NetworkCreate, Quota, VolumeCreate};
use nubo_api::views::{Keypair, Network, Volume};
use nubo_client::Client;
use nubo_test_cloud::TestCloud;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;

/// Items per list in each project, and the page size: several pages.
const ITEMS: usize = 5;
const LIMIT: u32 = 2;

/// What paging orders by: creation time, then id.
type Key = (i64, String);

/// Walks `path`'s pages as `client` from the first; every item's key, in
/// page order.
async fn walk<T: DeserializeOwned>(client: &Client, path: &str, key: impl Fn(&T) -> Key) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..100 {
        let (page, next) = client.list_page::<T>(path, LIMIT, token.as_deref()).await.unwrap();
        assert!(page.len() <= LIMIT as usize, "{path}: a page of {}", page.len());
        if next.is_some() {
            assert_eq!(page.len(), LIMIT as usize, "{path}: a short page that promises another");
        }
        keys.extend(page.iter().map(&key));
        match next {
            Some(n) => token = Some(n),
            None => return keys,
        }
    }
    panic!("{path}: the pages never end");
}

/// Checks one list: its pages against its unpaged form, the order, the
/// other project's items, and the refusals.
async fn check<T: DeserializeOwned>(
    client: &Client,
    path: &str,
    whole: Vec<T>,
    key: impl Fn(&T) -> Key + Copy,
    mine: &BTreeSet<String>,
    theirs: &BTreeSet<String>,
) {
    let whole: BTreeSet<String> = whole.iter().map(|t| key(t).1).collect();
    assert!(mine.is_subset(&whole), "{path}: the unpaged list lacks some of the project's items");
    let paged = walk(client, path, key).await;
    assert!(paged.len().div_ceil(LIMIT as usize) >= 3, "{path}: {} items are not several pages", paged.len());
    let ids: Vec<&String> = paged.iter().map(|(_, id)| id).collect();
    let unique: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(unique.len(), ids.len(), "{path}: an item on two pages");
    assert_eq!(unique, whole, "{path}: the pages are not the unpaged list");
    let mut sorted = paged.clone();
    sorted.sort();
    assert_eq!(paged, sorted, "{path}: pages out of (created_at_ms, id) order");
    assert!(unique.is_disjoint(theirs), "{path}: another project's item on a page");
    for (limit, token, says) in [(LIMIT, Some("nonsense"), "page token is not valid"), (0, None, "ask for 1 to 1000")] {
        let err = client.list_page::<T>(path, limit, token).await.err().expect("refused");
        assert_eq!(err.status(), Some(400), "{path} limit {limit} token {token:?}: {err}");
        assert!(err.to_string().contains(says), "{path}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pairs_networks_and_volumes_page_within_their_project() {
    let cloud = TestCloud::start(1).await;
    let room = Quota { volume_gib: Some(100), ..Quota::default() };
    let alice = cloud.user("alice", "proj-a", "member").await;
    let bob = cloud.user("bob", "proj-b", "member").await;
    for project in ["proj-a", "proj-b"] {
        cloud.admin().set_quota(project, &room).await.unwrap();
    }
    // Each project's items: key pairs, networks, volumes (ids).
    let mut made: Vec<[BTreeSet<String>; 3]> = Vec::new();
    for (p, client) in [&alice, &bob].into_iter().enumerate() {
        let mut ids: [BTreeSet<String>; 3] = Default::default();
        for k in 0..ITEMS {
            let kp = client.create_keypair(&KeypairCreate { name: format!("k{k}"), public_key: None }).await.unwrap();
            ids[0].insert(kp.keypair.id.to_string());
            let net = NetworkCreate { name: format!("n{k}"), cidr: format!("10.{}.{k}.0/24", 20 + p), external: None };
            ids[1].insert(client.create_network(&net).await.unwrap().id.to_string());
            let vol = VolumeCreate { size_gib: 1, name: Some(format!("v{k}")), snapshot_id: None, instance_id: None };
            ids[2].insert(client.create_volume(&vol).await.unwrap().id.to_string());
        }
        made.push(ids);
    }
    let keypair = |k: &Keypair| (k.created_at_ms, k.id.to_string());
    let network = |n: &Network| (n.created_at_ms, n.id.to_string());
    let volume = |v: &Volume| (v.created_at_ms, v.id.to_string());
    for (me, client) in [&alice, &bob].into_iter().enumerate() {
        let (mine, theirs) = (&made[me], &made[1 - me]);
        check(client, "/api/v1/keypairs", client.keypairs().await.unwrap(), keypair, &mine[0], &theirs[0]).await;
        check(client, "/api/v1/networks", client.networks().await.unwrap(), network, &mine[1], &theirs[1]).await;
        check(client, "/api/v1/volumes", client.volumes().await.unwrap(), volume, &mine[2], &theirs[2]).await;
    }
}
