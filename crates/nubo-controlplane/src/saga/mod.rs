//! The saga runner: a multi-step operation of the control plane (launch a
//! group member, carry out a policy's action) as a named list of steps,
//! each with an action and an undo, whose progress is recorded in the
//! database step by step, so that a server that dies halfway picks the
//! operation up where it was when it starts again.
//!
//! The rules the runner keeps, and the ones it asks of the steps:
//!
//! * Before a step's action runs, the step is recorded as `started`; when
//!   it ends well its output (JSON) is recorded with `done`. A resumed
//!   saga reads the outputs of done steps and never runs those actions
//!   again. A step that was `started` when the process died is run again:
//!   **every action must be idempotent** (look for what an earlier try made
//!   before making it; key what it makes on the saga's params or on an
//!   earlier step's output).
//! * An action may say [`Step::Wait`]: what it asked for (desired state an
//!   agent reconciles asynchronously) is not there yet. The saga stays
//!   `running` and the step is tried again at the next run (the owner's
//!   background tick). [`Step::Retry`] is a passing failure: counted, with
//!   backoff, and after the saga's attempt limit it becomes a failure.
//! * On [`Step::Fail`] the saga unwinds: the undos of the done steps run in
//!   reverse order, each recorded (`undoing`, then `undone`) so that a
//!   crash during the unwinding resumes it too. A failing action must leave
//!   nothing behind itself (its own undo is not run), and **undos must be
//!   idempotent** and may also wait ([`Undo::Wait`]) for an agent.
//! * A saga ends `done` or `unwound`; an undo that errors is retried at
//!   the next run (an unwinding saga never gives up).
//! * Whoever owns a kind of saga resumes it from its background tick, so a
//!   restarted server finishes what the previous one left: the groups'
//!   round resumes the group sagas ([`resume_all`]) before it counts
//!   members, and the policies' round runs the sagas of every firing still
//!   running. A database error ends a run where it is; the next run goes on
//!   from what was recorded.
//!
//! Steps that talk to agents (a migration, a failover) fit the same shape:
//! the step sets desired state and returns its output, and the next step
//! waits ([`Step::Wait`]) until the agent's report shows it done.
//!
//! Why a small runner of our own rather than Oxide's `steno` (the crate
//! omicron's Nexus runs its sagas on, `nexus/src/app/sagas/`): steno's
//! executor is built around its own saga log and a store interface that
//! omicron implements on CockroachDB, runs each saga as a DAG of nodes in
//! its own tokio tasks, and brings its action registry and context types;
//! fitting it to sqlx's `Any` driver over SQLite and PostgreSQL, and to the
//! control plane's ticking background tasks (which already resume work
//! each round), would be more code than the runner itself. Our sagas are
//! short lists of steps, run inline by the task that owns them.

pub mod db;
pub mod testing;

use crate::store::{now_ms, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::future::Future;

/// A saga's id: `saga-` and 17 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SagaId(String);

impl SagaId {
    pub fn generate() -> Self {
        Self(format!("saga-{:017x}", rand::random::<u64>() & 0x000f_ffff_ffff_ffff_u64))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id read back from the database.
    pub(crate) fn from_db(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Display for SagaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

nubo_api::state_enum! {
    /// Where a saga is.
    pub enum SagaState("saga") {
        /// Running its actions forwards.
        Running = "running",
        /// A step failed: running the undos of the done steps, newest first.
        Unwinding = "unwinding",
        /// Every action ran.
        Done = "done",
        /// A step failed and every done step was undone.
        Unwound = "unwound",
    }
}

nubo_api::state_enum! {
    /// Where one step of a saga is.
    pub enum StepState("saga step") {
        /// Its action began (and may have been cut short by a crash: it
        /// runs again, which is why actions are idempotent).
        Started = "started",
        /// Its action finished; its output is recorded.
        Done = "done",
        /// Unwinding: its undo began.
        Undoing = "undoing",
        /// Its undo finished.
        Undone = "undone",
    }
}

impl StepState {
    /// How far the step has gone, counting its action as one and its undo
    /// as one more (a saga's progress is the sum over its steps).
    pub fn progress(self) -> usize {
        match self {
            Self::Started => 0,
            Self::Done | Self::Undoing => 1,
            Self::Undone => 2,
        }
    }

    /// Whether its action's output is recorded (done, or being undone or
    /// undone after it was done).
    pub fn has_output(self) -> bool {
        self != Self::Started
    }

    /// The legal moves: forwards through the action, then through the undo.
    pub fn can_become(self, to: Self) -> bool {
        matches!((self, to), (Self::Started, Self::Done) | (Self::Done, Self::Undoing) | (Self::Undoing, Self::Undone))
    }
}

impl SagaState {
    /// Done or unwound: nothing more will run.
    pub fn finished(self) -> bool {
        matches!(self, Self::Done | Self::Unwound)
    }

    /// Running forwards until done, or until a step fails for good and it
    /// unwinds; an unwinding saga ends unwound. Nothing comes back.
    pub fn can_become(self, to: SagaState) -> bool {
        matches!(
            (self, to),
            (Self::Running, Self::Done | Self::Unwinding | Self::Running)
                | (Self::Unwinding, Self::Unwinding | Self::Unwound)
        )
    }
}

/// What an action says.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// It ended well; this is its output, recorded for the later steps.
    Done(Value),
    /// What it asked for is not there yet: try again at the next run.
    Wait,
    /// It failed this time and may work later (counted against the limit).
    Retry(String),
    /// It cannot succeed: unwind.
    Fail(String),
}

impl Step {
    /// Done, with `output` as JSON.
    pub fn done(output: impl Serialize) -> Self {
        Self::Done(serde_json::to_value(output).unwrap_or(Value::Null))
    }
}

/// What an undo says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    Done,
    /// Under way (an agent must act first): try again at the next run.
    Wait,
}

/// The outputs of the steps done so far, by step name.
#[derive(Debug, Clone, Default)]
pub struct Outputs(Vec<(&'static str, Value)>);

impl Outputs {
    /// The output of the done step `name`, as a `T`; None when that step
    /// is not done (or its output is not a `T`).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.0.iter().find(|(n, _)| *n == name).and_then(|(_, v)| serde_json::from_value(v.clone()).ok())
    }

    /// The output of the step done last.
    pub fn last(&self) -> Option<&Value> {
        self.0.last().map(|(_, v)| v)
    }
}

/// A kind of saga. `Env` is what its steps work with (the server's `Ctx`
/// for real sagas, anything for a toy one); the runner itself needs only
/// the store.
pub trait SagaDef {
    /// The name recorded with each saga of this kind.
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + Send + Sync;
    type Env: Sync;

    /// The steps, in order (a function of the params: a saga's list is
    /// fixed when it is created).
    fn steps(params: &Self::Params) -> Vec<&'static str>;

    /// Runs step `step`'s action (see the module's comment: idempotent).
    fn action<'a>(
        env: &'a Self::Env,
        params: &'a Self::Params,
        step: &'static str,
        done: &'a Outputs,
    ) -> impl Future<Output = Result<Step, sqlx::Error>> + Send + 'a;

    /// Undoes step `step` (done, with `done` holding its output too).
    fn undo<'a>(
        env: &'a Self::Env,
        params: &'a Self::Params,
        step: &'static str,
        done: &'a Outputs,
    ) -> impl Future<Output = Result<Undo, sqlx::Error>> + Send + 'a;
}

/// How a saga stands after a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: SagaState,
    /// The failure that made it unwind, or the last passing one.
    pub error: Option<String>,
    /// Tries of the current step that ended in [`Step::Retry`].
    pub attempts: u64,
    /// The output of the last step done (a done saga's result).
    pub output: Option<Value>,
    /// How many actions and undos are recorded done.
    pub progress: usize,
}

/// Test hooks: where a run stops as if the process had died, and which
/// step fails. The default runs normally.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Stop once this many steps (actions and undos) of the saga are
    /// recorded (see [`Status::progress`]), as a crash would: nothing more
    /// is written.
    pub crash_after: Option<usize>,
    /// With `crash_after`: run the next action (or undo) first, then stop
    /// before recording it, as a crash in flight would.
    pub crash_in_flight: bool,
    /// The step (by index) whose action fails instead of running.
    pub fail_at: Option<usize>,
}

/// How many passing failures ([`Step::Retry`]) of one step make it fail.
pub const MAX_ATTEMPTS: u64 = 5;

/// Creates the saga for `key` with `params`, unless one exists for that
/// key already (then that one's id); never runs it.
pub async fn create<S: SagaDef>(store: &Store, key: &str, params: &S::Params) -> Result<SagaId, sqlx::Error> {
    let json = serde_json::to_string(params).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    db::insert(store, &SagaId::generate(), S::NAME, key, &json).await
}

/// Runs the saga `id` as far as it goes now: to its end, or to a step that
/// waits or must be retried later.
pub async fn run<S: SagaDef>(store: &Store, env: &S::Env, id: &SagaId) -> Result<Status, sqlx::Error> {
    run_with::<S>(store, env, id, RunOptions::default()).await
}

/// [`run`] with test hooks.
pub async fn run_with<S: SagaDef>(
    store: &Store,
    env: &S::Env,
    id: &SagaId,
    opts: RunOptions,
) -> Result<Status, sqlx::Error> {
    let row = db::saga(store, id).await?.ok_or(sqlx::Error::RowNotFound)?;
    let params: S::Params = serde_json::from_str(&row.params_json).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let names = S::steps(&params);
    let mut state = row.state;
    let mut error = row.error.clone();
    let mut attempts = row.attempts as u64;
    let crash_now = |progress: usize| opts.crash_after.is_some_and(|k| progress >= k);
    // Every recorded step, by index.
    let steps = db::steps(store, id).await?;
    let mut outputs = Outputs::default();
    let mut step_state: Vec<Option<StepState>> = vec![None; names.len()];
    for s in &steps {
        let i = s.step as usize;
        if let Some(name) = names.get(i) {
            step_state[i] = Some(s.state);
            if s.state.has_output() {
                let v = s.output_json.as_deref().and_then(|o| serde_json::from_str(o).ok()).unwrap_or(Value::Null);
                outputs.0.push((name, v));
            }
        }
    }
    // An action done counts one, its undo one more.
    let mut recorded: usize = step_state.iter().flatten().map(|s| s.progress()).sum();
    let status = |state, error: &Option<String>, attempts, outputs: &Outputs, progress| Status {
        state,
        error: error.clone(),
        attempts,
        output: outputs.last().cloned(),
        progress,
    };

    if state == SagaState::Running {
        for (i, name) in names.iter().enumerate() {
            if step_state[i].is_some_and(StepState::has_output) {
                continue;
            }
            if crash_now(recorded) && !opts.crash_in_flight {
                return Ok(status(state, &error, attempts, &outputs, recorded));
            }
            if step_state[i].is_none() {
                db::start_step(store, id, i, name).await?;
                step_state[i] = Some(StepState::Started);
            }
            let step = if opts.fail_at == Some(i) {
                Step::Fail(format!("injected failure at step {name}"))
            } else {
                S::action(env, &params, name, &outputs).await?
            };
            if crash_now(recorded) {
                return Ok(status(state, &error, attempts, &outputs, recorded));
            }
            match step {
                Step::Done(output) => {
                    db::finish_step(store, id, i, &output).await?;
                    step_state[i] = Some(StepState::Done);
                    outputs.0.push((name, output));
                    attempts = 0;
                    error = None;
                    db::set_progress(store, id, state, None, 0, 0).await?;
                    recorded += 1;
                }
                Step::Wait => return Ok(status(state, &error, attempts, &outputs, recorded)),
                Step::Retry(e) => {
                    attempts += 1;
                    if attempts < MAX_ATTEMPTS {
                        let backoff = crate::alerts::backoff(attempts as i64).as_millis() as i64;
                        db::set_progress(store, id, state, Some(&e), attempts, now_ms() + backoff).await?;
                        return Ok(status(state, &Some(e), attempts, &outputs, recorded));
                    }
                    state = SagaState::Unwinding;
                    error = Some(e);
                    db::set_progress(store, id, state, error.as_deref(), attempts, 0).await?;
                    break;
                }
                Step::Fail(e) => {
                    state = SagaState::Unwinding;
                    error = Some(e);
                    db::set_progress(store, id, state, error.as_deref(), attempts, 0).await?;
                    break;
                }
            }
        }
        if state == SagaState::Running {
            state = SagaState::Done;
            db::set_progress(store, id, state, None, 0, 0).await?;
            return Ok(status(state, &error, attempts, &outputs, recorded));
        }
    }

    if state == SagaState::Unwinding {
        for (i, name) in names.iter().enumerate().rev() {
            if !matches!(step_state[i], Some(StepState::Done | StepState::Undoing)) {
                continue;
            }
            if crash_now(recorded) && !opts.crash_in_flight {
                return Ok(status(state, &error, attempts, &outputs, recorded));
            }
            if step_state[i] == Some(StepState::Done) {
                db::set_step_state(store, id, i, StepState::Undoing).await?;
                step_state[i] = Some(StepState::Undoing);
            }
            let undo = S::undo(env, &params, name, &outputs).await?;
            if crash_now(recorded) {
                return Ok(status(state, &error, attempts, &outputs, recorded));
            }
            match undo {
                Undo::Done => {
                    db::set_step_state(store, id, i, StepState::Undone).await?;
                    step_state[i] = Some(StepState::Undone);
                    recorded += 1;
                }
                Undo::Wait => return Ok(status(state, &error, attempts, &outputs, recorded)),
            }
        }
        state = SagaState::Unwound;
        db::set_progress(store, id, state, error.as_deref(), attempts, 0).await?;
    }
    Ok(status(state, &error, attempts, &outputs, recorded))
}

/// How the saga `id` stands, from the database.
pub async fn status(store: &Store, id: &SagaId) -> Result<Option<Status>, sqlx::Error> {
    let Some(row) = db::saga(store, id).await? else { return Ok(None) };
    let steps = db::steps(store, id).await?;
    let progress = steps.iter().map(|s| s.state.progress()).sum();
    let last: Option<String> =
        steps.into_iter().filter(|s| s.state == StepState::Done).max_by_key(|s| s.step).and_then(|s| s.output_json);
    Ok(Some(Status {
        state: row.state,
        error: row.error,
        attempts: row.attempts as u64,
        output: last.and_then(|o| serde_json::from_str(&o).ok()),
        progress,
    }))
}

/// Runs every unfinished saga of kind `S` that is due (its backoff over):
/// what a background tick and a restarted server call. Returns how many ran.
pub async fn resume_all<S: SagaDef>(store: &Store, env: &S::Env) -> Result<usize, sqlx::Error> {
    let ids = db::unfinished(store, S::NAME, now_ms()).await?;
    for id in &ids {
        run::<S>(store, env, id).await?;
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests;
