//! Test support for sagas: runs a saga crashing after every step (and in
//! the middle of every step), resuming it from the database each time, and
//! checks it ends as an uninterrupted run does; and makes every step fail
//! in turn and checks the unwinding leaves the world as it was. A saga's
//! test gives a [`Harness`]: how to make a fresh world with the saga in it,
//! how to restart (drop everything in memory), how to play the agents, and
//! what the world looks like.

use super::{run_with, RunOptions, SagaDef, SagaId, SagaState, Status};
use crate::store::Store;

/// Runs past this many rounds without ending: the saga is stuck.
const MAX_ROUNDS: usize = 50;

/// One saga kind's world, for the checks below.
#[allow(async_fn_in_trait)] // test code, never needs Send futures
pub trait Harness {
    type Saga: SagaDef;
    /// A fresh world (forgetting any earlier one) with a new saga in it,
    /// not yet run.
    async fn start(&mut self) -> SagaId;
    fn store(&self) -> &Store;
    fn env(&self) -> &<Self::Saga as SagaDef>::Env;
    /// Drops everything the server holds in memory and opens the world
    /// again from its database, as a restarted server would.
    async fn restart(&mut self);
    /// Plays the world outside the control plane between two runs (the
    /// agents that reconcile desired state).
    async fn tick(&mut self) {}
    /// What the world looks like, in a form two runs compare equal in
    /// (names and counts, not random ids).
    async fn end_state(&self) -> String;
}

/// Runs the saga until it finishes, playing the world between runs.
pub async fn finish<H: Harness>(h: &mut H, id: &SagaId, opts: RunOptions) -> Status {
    for _ in 0..MAX_ROUNDS {
        let s = run_with::<H::Saga>(h.store(), h.env(), id, opts).await.unwrap_or_else(|e| panic!("saga {id}: {e}"));
        if s.state.finished() {
            return s;
        }
        h.tick().await;
    }
    panic!("saga {id} did not finish within {MAX_ROUNDS} rounds");
}

/// Runs the saga with a crash point until the crash comes (or the saga
/// ends first), then restarts the world and finishes the saga (failing
/// step `fail_at` again, if any).
async fn crash_and_resume<H: Harness>(h: &mut H, id: &SagaId, opts: RunOptions) -> Status {
    let k = opts.crash_after.unwrap_or(0);
    for _ in 0..MAX_ROUNDS {
        let s = run_with::<H::Saga>(h.store(), h.env(), id, opts).await.unwrap_or_else(|e| panic!("saga {id}: {e}"));
        if s.progress >= k || s.state.finished() {
            break;
        }
        h.tick().await;
    }
    h.restart().await;
    finish(h, id, RunOptions { fail_at: opts.fail_at, ..Default::default() }).await
}

/// How many steps the saga's list has.
async fn step_count<H: Harness>(h: &H, id: &SagaId) -> usize {
    let row = super::db::saga(h.store(), id).await.ok().flatten().unwrap_or_else(|| panic!("no saga {id}"));
    let params: <H::Saga as SagaDef>::Params =
        serde_json::from_str(&row.params_json).unwrap_or_else(|e| panic!("saga {id}'s params: {e}"));
    H::Saga::steps(&params).len()
}

/// Crashes the saga after every step k (before step k+1 begins, and while
/// step k+1 is in flight: its action run but not recorded), restarts, and
/// resumes it from the database: each ends `done` in the same world as an
/// uninterrupted run. Returns how many crash points were tried.
pub async fn check_crash_after_every_step<H: Harness>(h: &mut H) -> usize {
    let id = h.start().await;
    let n = step_count(h, &id).await;
    let s = finish(h, &id, RunOptions::default()).await;
    assert_eq!(s.state, SagaState::Done, "the uninterrupted run: {s:?}");
    let want = h.end_state().await;
    let mut tried = 0;
    for k in 0..n {
        for in_flight in [false, true] {
            let id = h.start().await;
            let crash = RunOptions { crash_after: Some(k), crash_in_flight: in_flight, fail_at: None };
            let s = crash_and_resume(h, &id, crash).await;
            assert_eq!(s.state, SagaState::Done, "crash after step {k} (in flight: {in_flight}): {s:?}");
            assert_eq!(h.end_state().await, want, "crash after step {k} (in flight: {in_flight})");
            tried += 1;
        }
    }
    tried
}

/// Makes each step k fail in turn: the saga ends `unwound` and the world
/// is as it was before the saga began; and for each k, crashes once in
/// the middle of every undo (and of the failing action), restarting and
/// resuming the unwinding from the database. Returns how many runs were
/// checked.
pub async fn check_unwind_at_every_step<H: Harness>(h: &mut H) -> usize {
    let id = h.start().await;
    let n = step_count(h, &id).await;
    let mut tried = 0;
    for k in 0..n {
        // None: no crash; Some(j): crash in flight in the j-th undo (0: in
        // the failing action itself).
        for crash in std::iter::once(None).chain((0..=k).map(Some)) {
            let id = h.start().await;
            let before = h.end_state().await;
            let s = match crash {
                None => finish(h, &id, RunOptions { fail_at: Some(k), ..Default::default() }).await,
                Some(j) => {
                    let opts = RunOptions { crash_after: Some(k + j), crash_in_flight: true, fail_at: Some(k) };
                    crash_and_resume(h, &id, opts).await
                }
            };
            assert_eq!(s.state, SagaState::Unwound, "failure at step {k} (crash {crash:?}): {s:?}");
            assert!(s.error.as_deref().is_some_and(|e| e.contains("injected")), "{s:?}");
            assert_eq!(h.end_state().await, before, "failure at step {k} (crash {crash:?}): something was left behind");
            tried += 1;
        }
    }
    tried
}
