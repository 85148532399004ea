//! Writers of one numbered series at the same time (cloud events, whose
//! numbers are `MAX(seq) + 1`): on SQLite the write lock orders them, on
//! PostgreSQL (`NUBO_TEST_DATABASE`) an advisory lock must, or two would
//! take the same number and one would fail.

mod common;

use common::T;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_writers_of_one_series_all_get_a_number() {
    let t = T::new().await;
    let before = t.ctx.store.cloud_events(None, 10_000).await.unwrap().len();
    let mut writers = Vec::new();
    for i in 0..32 {
        let ctx = t.ctx.clone();
        writers
            .push(tokio::spawn(async move { ctx.store.event(None, "h-test", "test", &format!("writer {i}")).await }));
    }
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(t.ctx.store.cloud_events(None, 10_000).await.unwrap().len(), before + 32);
}

/// The monitor's lease: one holder at a time, renewed by its holder, taken
/// by another only once expired, and given up on release.
#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires() {
    let t = T::new().await;
    let s = &t.ctx.store;
    let ttl = 30_000;
    assert!(s.take_lease("work", "a", ttl, 1_000).await.unwrap());
    assert!(!s.take_lease("work", "b", ttl, 2_000).await.unwrap(), "b took a's live lease");
    assert!(s.take_lease("work", "a", ttl, 20_000).await.unwrap(), "a could not renew");
    assert_eq!(s.lease("work").await.unwrap(), Some(("a".to_string(), 50_000)));
    // a's renewal moved the expiry: at 40 s it still holds.
    assert!(!s.take_lease("work", "b", ttl, 40_000).await.unwrap());
    // a dies; once expired, b has it, and a (back) does not.
    assert!(s.take_lease("work", "b", ttl, 50_000).await.unwrap());
    assert!(!s.take_lease("work", "a", ttl, 51_000).await.unwrap());
    // Other leases are separate.
    assert!(s.take_lease("other", "a", ttl, 51_000).await.unwrap());
    s.release_lease("work", "a").await.unwrap(); // not a's: nothing
    assert!(!s.take_lease("work", "a", ttl, 52_000).await.unwrap());
    s.release_lease("work", "b").await.unwrap();
    assert!(s.take_lease("work", "a", ttl, 53_000).await.unwrap());
}

/// Many servers racing for a free lease: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_for_a_lease_one_wins() {
    let t = T::new().await;
    let mut racers = Vec::new();
    for i in 0..16 {
        let ctx = t.ctx.clone();
        racers.push(tokio::spawn(async move { ctx.store.take_lease("race", &format!("s{i}"), 30_000, 1_000).await }));
    }
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap().unwrap());
    }
    assert_eq!(winners, 1);
}
