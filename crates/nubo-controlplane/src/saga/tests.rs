//! The runner on a toy saga over a table of its own: three steps, each
//! writing a row (the second from the first's output, the third only once
//! a gate row is there, as a step waiting on an agent would).

use super::testing::{check_crash_after_every_step, check_unwind_at_every_step, Harness};
use super::*;
use serde::Deserialize;

struct Toy;

#[derive(Serialize, Deserialize)]
struct ToyParams {
    tag: String,
    /// Step `b` retries this many times before it works.
    flaky: u64,
}

impl SagaDef for Toy {
    const NAME: &'static str = "toy";
    type Params = ToyParams;
    type Env = Store;

    fn steps(_: &ToyParams) -> Vec<&'static str> {
        vec!["a", "b", "c"]
    }

    async fn action(store: &Store, p: &ToyParams, step: &'static str, done: &Outputs) -> Result<Step, sqlx::Error> {
        let value = match step {
            "a" => format!("{}-a", p.tag),
            "b" => {
                let tries: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM toy WHERE k LIKE 'try-%'").fetch_one(&store.pool).await?;
                if (tries as u64) < p.flaky {
                    sqlx::query("INSERT INTO toy (k, v) VALUES ($1, 'x')")
                        .bind(format!("try-{tries}"))
                        .execute(&store.pool)
                        .await?;
                    return Ok(Step::Retry(format!("try {tries} failed")));
                }
                let a: String = done.get("a").unwrap_or_default();
                format!("{a}+b")
            }
            _ => {
                let gate: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM toy WHERE k = 'gate'").fetch_one(&store.pool).await?;
                if gate == 0 {
                    return Ok(Step::Wait);
                }
                "c".to_string()
            }
        };
        // Idempotent: the row is keyed on the step.
        sqlx::query("INSERT INTO toy (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING")
            .bind(step)
            .bind(&value)
            .execute(&store.pool)
            .await?;
        Ok(Step::done(value))
    }

    async fn undo(store: &Store, _: &ToyParams, step: &'static str, _: &Outputs) -> Result<Undo, sqlx::Error> {
        sqlx::query("DELETE FROM toy WHERE k = $1").bind(step).execute(&store.pool).await?;
        Ok(Undo::Done)
    }
}

struct ToyWorld {
    dir: tempfile::TempDir,
    store: Store,
}

impl ToyWorld {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("toy.db")).await.unwrap();
        sqlx::query("CREATE TABLE toy (k TEXT PRIMARY KEY, v TEXT NOT NULL)").execute(&store.pool).await.unwrap();
        Self { dir, store }
    }
}

impl Harness for ToyWorld {
    type Saga = Toy;

    async fn start(&mut self) -> SagaId {
        *self = Self::new().await;
        create::<Toy>(&self.store, "toy:1", &ToyParams { tag: "t".into(), flaky: 0 }).await.unwrap()
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn env(&self) -> &Store {
        &self.store
    }

    async fn restart(&mut self) {
        self.store.pool.close().await;
        self.store = Store::open(&self.dir.path().join("toy.db")).await.unwrap();
    }

    async fn tick(&mut self) {
        sqlx::query("INSERT INTO toy (k, v) VALUES ('gate', '') ON CONFLICT (k) DO NOTHING")
            .execute(&self.store.pool)
            .await
            .unwrap();
    }

    async fn end_state(&self) -> String {
        let rows: Vec<(String, String)> = sqlx::query_as("SELECT k, v FROM toy WHERE k <> 'gate' ORDER BY k")
            .fetch_all(&self.store.pool)
            .await
            .unwrap();
        format!("{rows:?}")
    }
}

#[tokio::test]
async fn a_step_waits_then_the_saga_is_done_with_each_output_passed_on() {
    let mut w = ToyWorld::new().await;
    let id = w.start().await;
    // Creating it again for the same key is the same saga.
    let again = create::<Toy>(&w.store, "toy:1", &ToyParams { tag: "other".into(), flaky: 0 }).await.unwrap();
    assert_eq!(again, id);
    let s = run::<Toy>(&w.store, &w.store, &id).await.unwrap();
    assert_eq!((s.state, s.progress), (SagaState::Running, 2), "c waits for the gate: {s:?}");
    // Resumed by the background tick's call once the gate is there.
    w.tick().await;
    assert_eq!(resume_all::<Toy>(&w.store, &w.store).await.unwrap(), 1);
    let s = status(&w.store, &id).await.unwrap().unwrap();
    assert_eq!((s.state, s.output), (SagaState::Done, Some(Value::from("c"))));
    assert_eq!(w.end_state().await, r#"[("a", "t-a"), ("b", "t-a+b"), ("c", "c")]"#);
    assert_eq!(resume_all::<Toy>(&w.store, &w.store).await.unwrap(), 0, "nothing left unfinished");
}

#[tokio::test]
async fn passing_failures_are_retried_with_backoff_then_unwind() {
    let mut w = ToyWorld::new().await;
    w.start().await;
    let flaky = create::<Toy>(&w.store, "toy:2", &ToyParams { tag: "f".into(), flaky: 2 }).await.unwrap();
    let s = run::<Toy>(&w.store, &w.store, &flaky).await.unwrap();
    assert_eq!((s.state, s.attempts, s.error.as_deref()), (SagaState::Running, 1, Some("try 0 failed")));
    assert_eq!(resume_all::<Toy>(&w.store, &w.store).await.unwrap(), 1, "only the other saga is due (backoff)");
    run::<Toy>(&w.store, &w.store, &flaky).await.unwrap();
    w.tick().await;
    let s = run::<Toy>(&w.store, &w.store, &flaky).await.unwrap();
    assert_eq!((s.state, s.attempts, s.error), (SagaState::Done, 0, None));

    // Never working: after MAX_ATTEMPTS the saga unwinds step a.
    let mut w = ToyWorld::new().await;
    let id = create::<Toy>(&w.store, "toy:3", &ToyParams { tag: "n".into(), flaky: 100 }).await.unwrap();
    w.tick().await;
    let mut s = run::<Toy>(&w.store, &w.store, &id).await.unwrap();
    for _ in 1..MAX_ATTEMPTS {
        s = run::<Toy>(&w.store, &w.store, &id).await.unwrap();
    }
    assert_eq!((s.state, s.attempts), (SagaState::Unwound, MAX_ATTEMPTS), "{s:?}");
    let left: Vec<String> =
        sqlx::query_scalar("SELECT k FROM toy WHERE k IN ('a', 'b', 'c')").fetch_all(&w.store.pool).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn crashing_after_any_step_ends_as_an_uninterrupted_run() {
    let mut w = ToyWorld::new().await;
    assert_eq!(check_crash_after_every_step(&mut w).await, 6);
}

#[tokio::test]
async fn a_failure_at_any_step_unwinds_leaving_nothing() {
    let mut w = ToyWorld::new().await;
    // Steps 0, 1, 2: 2 + 3 + 4 runs (no crash, and a crash at each undo).
    assert_eq!(check_unwind_at_every_step(&mut w).await, 9);
}

#[test]
fn saga_states_go_forward_or_unwind_and_never_come_back() {
    let mut allowed = Vec::new();
    for &from in SagaState::ALL {
        for &to in SagaState::ALL {
            if from.can_become(to) {
                allowed.push(format!("{from}>{to}"));
            }
        }
    }
    assert_eq!(
        allowed,
        ["running>running", "running>unwinding", "running>done", "unwinding>unwinding", "unwinding>unwound"]
    );
}

#[test]
fn a_step_moves_only_forwards_through_its_action_then_its_undo() {
    use super::StepState::{self, *};
    let legal = [(Started, Done), (Done, Undoing), (Undoing, Undone)];
    for from in StepState::ALL {
        for to in StepState::ALL {
            assert_eq!(from.can_become(*to), legal.contains(&(*from, *to)), "{from} -> {to}");
        }
    }
    assert_eq!(
        StepState::ALL.iter().map(|s| s.progress()).collect::<Vec<_>>(),
        [0, 1, 1, 2],
        "an action counts one, its undo one more"
    );
}
