use super::*;
use nubo_api::agent::RegisterHost;

async fn store_with_hosts(n: usize) -> (Store, tempfile::TempDir, Option<crate::testdb::TestDatabase>, Vec<HostId>) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::testdb::from_env().await.unwrap_or_else(|e| panic!("{e}"));
    let store = match &db {
        Some(db) => Store::connect(&db.url).await.unwrap(),
        None => Store::open(&dir.path().join("t.db")).await.unwrap(),
    };
    let mut hosts = Vec::new();
    for i in 0..n {
        let host_id = HostId::generate();
        let r = RegisterHost {
            host_id: host_id.clone(),
            name: format!("h{i}"),
            accel: "tcg".into(),
            vcpus: 4,
            memory_mib: 4096,
            disk_gib: 10,
            underlay: None,
            shared_storage: None,
            externals: Vec::new(),
        };
        store.register_host(&r).await.unwrap();
        hosts.push(host_id);
    }
    (store, dir, db, hosts)
}

async fn stored(store: &Store, host: &HostId) -> i64 {
    store.host(host.as_str()).await.unwrap().unwrap().last_heartbeat_ms
}

/// Renewals that arrive together are written in fewer statements than
/// hosts, and each caller gets its own host's new stored value, which is
/// what the row holds afterwards; a renewal always changes the value
/// (failover counts a change as a renewal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_together_each_get_their_own_hosts_value() {
    let (store, _dir, _db, hosts) = store_with_hosts(40).await;
    let before: Vec<i64> = futures::future::join_all(hosts.iter().map(|h| stored(&store, h))).await;
    let beats = Heartbeats::default();
    let values = futures::future::join_all(hosts.iter().map(|h| beats.renew(&store, h))).await;
    for ((h, value), before) in hosts.iter().zip(values).zip(before) {
        let value = value.unwrap().expect("a registered host is renewed");
        assert_eq!(value, stored(&store, h).await, "the caller's value is the row's");
        assert!(value > before, "a renewal changes the stored value");
    }
    let batches = beats.batches_written();
    assert!((1..=hosts.len() as u64 / 4).contains(&batches), "40 renewals at once took {batches} statements");
    // Twice in the same batch (two requests of one host) still renews it.
    let h = &hosts[0];
    let first = stored(&store, h).await;
    let (a, b) = tokio::join!(beats.renew(&store, h), beats.renew(&store, h));
    assert!(a.unwrap().unwrap() > first && b.unwrap().unwrap() > first);
}

/// An unknown host is told so (the handler answers 404), alone or in a
/// batch with known ones, and does not stop the others' renewals.
#[tokio::test]
async fn an_unknown_host_gets_none_and_the_others_are_renewed() {
    let (store, _dir, _db, hosts) = store_with_hosts(2).await;
    let beats = Heartbeats::default();
    let stranger = HostId::generate();
    let (known, unknown, other) =
        tokio::join!(beats.renew(&store, &hosts[0]), beats.renew(&store, &stranger), beats.renew(&store, &hosts[1]));
    assert!(known.unwrap().is_some());
    assert_eq!(unknown.unwrap(), None);
    assert!(other.unwrap().is_some());
    assert_eq!(beats.renew(&store, &stranger).await.unwrap(), None);
}

/// One statement for many hosts: what the batch writes.
#[tokio::test]
async fn one_statement_renews_many_hosts() {
    let (store, _dir, _db, hosts) = store_with_hosts(3).await;
    let ids: Vec<&str> = hosts.iter().map(|h| h.as_str()).collect();
    let values = store.heartbeats(&ids).await.unwrap();
    assert_eq!(values.len(), 3);
    for (id, value) in values {
        assert_eq!(value, store.host(&id).await.unwrap().unwrap().last_heartbeat_ms);
    }
    assert!(store.heartbeats(&[]).await.unwrap().is_empty());
}
