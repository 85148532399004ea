//! Writers of one numbered series at the same time (cloud events, whose
//! numbers are `MAX(seq) + 1`): on SQLite the write lock orders them, on
//! PostgreSQL (`NUBO_TEST_DATABASE`) an advisory lock must, or two would
//! take the same number and one would fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

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

/// Two servers on one PostgreSQL: a change made through one wakes the
/// long-polls of the other for that host alone, and neither wakes its own
/// agents twice for its own change. (On SQLite there is one server and
/// nothing to notify.)
/// `#[ignore]`d so that on SQLite the runner reports it skipped rather
/// than passed; `scripts/test.sh` runs it in its PostgreSQL pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "PostgreSQL only: set NUBO_TEST_DATABASE and run with --run-ignored (scripts/test.sh does)"]
async fn a_change_through_one_server_wakes_the_agents_polling_the_other() {
    let db = common::test_db().await.expect(
        "PostgreSQL only (one SQLite server has nobody to notify): set NUBO_TEST_DATABASE=$(scripts/postgres.sh)",
    );
    let db = Some(db);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = nubo_controlplane::Ctx::new(common::config(dir_a.path(), &db)).await.unwrap();
    let b = nubo_controlplane::Ctx::new(common::config(dir_b.path(), &db)).await.unwrap();
    assert_ne!(a.server_id, b.server_id);
    for s in [&a, &b] {
        tokio::spawn(nubo_controlplane::wakeups::listen(s.clone()));
    }
    // Until b listens: a's bumps reach it.
    let rx_b = b.subscribe();
    let seen =
        |rx: &tokio::sync::watch::Receiver<nubo_controlplane::Generations>, host: &str| rx.borrow().changed_for(host);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let before = seen(&rx_b, "h-x");
        a.bump_host("h-x");
        let woke = tokio::time::timeout(std::time::Duration::from_millis(300), b.wait_for_news("h-x", before)).await;
        if woke.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b never heard of a's changes");
    }
    // Now one change of h-x through a: b wakes h-x's agent, not h-y's.
    let (x, y) = (seen(&rx_b, "h-x"), seen(&rx_b, "h-y"));
    let a_before = a.generation();
    a.bump_host("h-x");
    tokio::time::timeout(std::time::Duration::from_secs(5), b.wait_for_news("h-x", x))
        .await
        .expect("b's long-poll of h-x was not woken within 5 s");
    assert_eq!(seen(&rx_b, "h-y"), y, "b woke an agent the change does not concern");
    // A change for every host through b reaches a; notifications arrive in
    // order, so a has handled the echo of its own one by then.
    let mut rx_a = a.subscribe();
    let y_on_a = seen(&rx_a, "h-y");
    b.bump();
    tokio::time::timeout(std::time::Duration::from_secs(5), rx_a.wait_for(|g| g.changed_for("h-y") > y_on_a))
        .await
        .expect("a did not hear of b's change")
        .unwrap();
    assert_eq!(a.generation(), a_before + 2, "a bumped for its own change twice (its echo), or missed b's");
}
