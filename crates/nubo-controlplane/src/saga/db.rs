//! The sagas' rows (tables `sagas` and `saga_steps`, migration 0016), in
//! the SQL both databases accept, on the store's pool.

use super::{SagaId, SagaState, StepState};
use crate::store::{now_ms, Store};
use serde_json::Value;
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct SagaRow {
    pub id: String,
    pub name: String,
    pub saga_key: String,
    pub params_json: String,
    pub state: SagaState,
    pub error: Option<String>,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct StepRow {
    pub step: i64,
    pub state: StepState,
    pub output_json: Option<String>,
}

/// Inserts a running saga unless one has `key`; the id of the one that is.
pub(super) async fn insert(
    store: &Store,
    id: &SagaId,
    name: &str,
    key: &str,
    params_json: &str,
) -> Result<SagaId, sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO sagas (id, name, saga_key, params_json, state, attempts, next_attempt_ms, created_at_ms,
           updated_at_ms)
         VALUES ($1, $2, $3, $4, 'running', 0, 0, $5, $5) ON CONFLICT (saga_key) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(name)
    .bind(key)
    .bind(params_json)
    .bind(now)
    .execute(&store.pool)
    .await?;
    let id: String =
        sqlx::query_scalar("SELECT id FROM sagas WHERE saga_key = $1").bind(key).fetch_one(&store.pool).await?;
    Ok(SagaId::from_db(id))
}

pub async fn saga(store: &Store, id: &SagaId) -> Result<Option<SagaRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM sagas WHERE id = $1").bind(id.as_str()).fetch_optional(&store.pool).await
}

/// The saga made for `key`, if any.
pub async fn by_key(store: &Store, key: &str) -> Result<Option<SagaId>, sqlx::Error> {
    let id: Option<String> =
        sqlx::query_scalar("SELECT id FROM sagas WHERE saga_key = $1").bind(key).fetch_optional(&store.pool).await?;
    Ok(id.map(SagaId::from_db))
}

pub(super) async fn steps(store: &Store, id: &SagaId) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as("SELECT step, state, output_json FROM saga_steps WHERE saga_id = $1 ORDER BY step")
        .bind(id.as_str())
        .fetch_all(&store.pool)
        .await
}

/// Records that step `i` begins (a no-op if a crashed run already did).
pub(super) async fn start_step(store: &Store, id: &SagaId, i: usize, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO saga_steps (saga_id, step, name, state, updated_at_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (saga_id, step) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(i as i64)
    .bind(name)
    .bind(StepState::Started)
    .bind(now_ms())
    .execute(&store.pool)
    .await?;
    Ok(())
}

pub(super) async fn finish_step(store: &Store, id: &SagaId, i: usize, output: &Value) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE saga_steps SET state = $1, output_json = $2, updated_at_ms = $3 WHERE saga_id = $4 AND step = $5",
    )
    .bind(StepState::Done)
    .bind(output.to_string())
    .bind(now_ms())
    .bind(id.as_str())
    .bind(i as i64)
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Moves step `i` on to `state`, only from a state that may become it
/// (`StepState::can_become`); a replay that finds it there already
/// changes nothing.
pub(super) async fn set_step_state(store: &Store, id: &SagaId, i: usize, state: StepState) -> Result<(), sqlx::Error> {
    let Some(from) = StepState::ALL.iter().copied().find(|s| s.can_become(state)) else {
        return Err(sqlx::Error::Protocol(format!("a saga step never becomes {state}")));
    };
    sqlx::query("UPDATE saga_steps SET state = $1, updated_at_ms = $2 WHERE saga_id = $3 AND step = $4 AND state = $5")
        .bind(state)
        .bind(now_ms())
        .bind(id.as_str())
        .bind(i as i64)
        .bind(from)
        .execute(&store.pool)
        .await?;
    Ok(())
}

pub(super) async fn set_progress(
    store: &Store,
    id: &SagaId,
    state: SagaState,
    error: Option<&str>,
    attempts: u64,
    next_attempt_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sagas SET state = $1, error = $2, attempts = $3, next_attempt_ms = $4, updated_at_ms = $5
         WHERE id = $6",
    )
    .bind(state)
    .bind(error)
    .bind(attempts as i64)
    .bind(next_attempt_ms)
    .bind(now_ms())
    .bind(id.as_str())
    .execute(&store.pool)
    .await?;
    Ok(())
}

/// Unfinished sagas named `name` whose backoff is over at `now`, oldest first.
pub(super) async fn unfinished(store: &Store, name: &str, now: i64) -> Result<Vec<SagaId>, sqlx::Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM sagas WHERE state IN ('running', 'unwinding') AND name = $1 AND next_attempt_ms <= $2
         ORDER BY created_at_ms, id",
    )
    .bind(name)
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    Ok(ids.into_iter().map(SagaId::from_db).collect())
}

/// The unfinished saga named `name` whose key begins with `prefix`, if any
/// (the oldest): for owners that make a new saga per try of one thing.
pub async fn unfinished_with_key_prefix(
    store: &Store,
    name: &str,
    prefix: &str,
) -> Result<Option<SagaId>, sqlx::Error> {
    let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM sagas WHERE state IN ('running', 'unwinding') AND name = $1 AND saga_key LIKE $2 ESCAPE '\\'
         ORDER BY created_at_ms, id LIMIT 1",
    )
    .bind(name)
    .bind(format!("{escaped}%"))
    .fetch_optional(&store.pool)
    .await?;
    Ok(id.map(SagaId::from_db))
}
