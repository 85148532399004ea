//! Provisioning state in SQL: key pairs, the recipe catalogue, runs of
//! recipes and commands inside instances (with their logs), and the guest
//! agent's last report. Who may do what is decided by the handlers.

use crate::store::{now_ms, Store};
use nubo_api::agent::{RunAction, RunProgress};
use nubo_api::views::RunState;
use sqlx::FromRow;

/// Log text kept per run; older output is dropped (the tail matters).
pub const RUN_LOG_KEEP_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone, FromRow)]
pub struct KeypairRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub key_type: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct RecipeRow {
    pub project_id: Option<String>,
    pub name: String,
    pub version: String,
    pub description: String,
    pub kind: String,
    pub params_json: String,
    pub body: String,
    pub timeout_secs: i64,
    pub created_at_ms: i64,
    pub seq: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct RunRow {
    pub id: String,
    pub instance_id: String,
    pub kind: String,
    pub what: String,
    pub params_json: String,
    pub action_json: String,
    pub timeout_secs: i64,
    pub state: RunState,
    pub guest_pid: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub log: String,
    pub log_offset: i64,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// A run to record.
pub struct NewRun<'a> {
    pub id: &'a str,
    pub instance_id: &'a str,
    pub kind: &'a str,
    pub what: &'a str,
    pub params_json: &'a str,
    pub action: &'a RunAction,
    pub timeout_secs: u64,
}

impl Store {
    // ---- key pairs ----

    /// Inserts a key pair; false when the project already has one of that name.
    pub async fn insert_keypair(&self, k: &KeypairRow) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO keypairs (id, project_id, name, key_type, fingerprint, public_key, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&k.id)
        .bind(&k.project_id)
        .bind(&k.name)
        .bind(&k.key_type)
        .bind(&k.fingerprint)
        .bind(&k.public_key)
        .bind(k.created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn keypairs(&self, project: &str) -> Result<Vec<KeypairRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM keypairs WHERE project_id = $1 ORDER BY name")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn keypair(&self, project: &str, name: &str) -> Result<Option<KeypairRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM keypairs WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn delete_keypair(&self, project: &str, name: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM keypairs WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- recipes ----

    /// Inserts a recipe version; false when that name and version exist
    /// already in the same scope.
    pub async fn insert_recipe(&self, r: &RecipeRow) -> Result<bool, sqlx::Error> {
        let insert = sqlx::query(
            "INSERT INTO recipes (project_id, name, version, description, kind, params_json, body, timeout_secs,
               created_at_ms, seq)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, COALESCE(MAX(seq), 0) + 1 FROM recipes WHERE true
             ON CONFLICT DO NOTHING",
        )
        .bind(&r.project_id)
        .bind(&r.name)
        .bind(&r.version)
        .bind(&r.description)
        .bind(&r.kind)
        .bind(&r.params_json)
        .bind(&r.body)
        .bind(r.timeout_secs)
        .bind(r.created_at_ms);
        let res = crate::store::insert_numbered(&self.pool, "recipes", insert).await?;
        Ok(res.rows_affected() == 1)
    }

    /// Replaces a built-in recipe version's text (so an upgraded Nubo ships
    /// its fixed recipes), or inserts it.
    pub async fn upsert_builtin_recipe(&self, r: &RecipeRow) -> Result<(), sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE recipes SET description = $1, kind = $2, params_json = $3, body = $4, timeout_secs = $5
             WHERE project_id IS NULL AND name = $6 AND version = $7",
        )
        .bind(&r.description)
        .bind(&r.kind)
        .bind(&r.params_json)
        .bind(&r.body)
        .bind(r.timeout_secs)
        .bind(&r.name)
        .bind(&r.version)
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            self.insert_recipe(r).await?;
        }
        Ok(())
    }

    /// Recipes a project sees: its own and the built-in ones, newest
    /// version last within each name.
    pub async fn recipes(&self, project: Option<&str>) -> Result<Vec<RecipeRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM recipes WHERE project_id IS NULL OR project_id = $1 ORDER BY name, seq")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// One recipe as a project sees it: the project's own first, then the
    /// built-in one; the newest version when `version` is `None`.
    pub async fn recipe(
        &self,
        project: Option<&str>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<RecipeRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM recipes WHERE (project_id IS NULL OR project_id = $1) AND name = $2
               AND ($3 IS NULL OR version = $3)
             ORDER BY CASE WHEN project_id IS NULL THEN 1 ELSE 0 END, seq DESC LIMIT 1",
        )
        .bind(project)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn delete_recipe(&self, project: &str, name: &str, version: Option<&str>) -> Result<u64, sqlx::Error> {
        let r = sqlx::query("DELETE FROM recipes WHERE project_id = $1 AND name = $2 AND ($3 IS NULL OR version = $3)")
            .bind(project)
            .bind(name)
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    // ---- runs ----

    pub async fn insert_run(&self, r: &NewRun<'_>) -> Result<(), sqlx::Error> {
        let action = serde_json::to_string(r.action).unwrap_or_default();
        sqlx::query(
            "INSERT INTO runs (id, instance_id, kind, what, params_json, action_json, timeout_secs, state, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8)",
        )
        .bind(r.id)
        .bind(r.instance_id)
        .bind(r.kind)
        .bind(r.what)
        .bind(r.params_json)
        .bind(action)
        .bind(r.timeout_secs as i64)
        .bind(now_ms())
        .bind(RunState::Pending)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM runs WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// An instance's runs, newest first.
    pub async fn runs(&self, instance: &str, limit: i64) -> Result<Vec<RunRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM runs WHERE instance_id = $1 ORDER BY created_at_ms DESC, id LIMIT $2")
            .bind(instance)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
    }

    /// Unfinished runs of the instances on `host`, oldest first.
    pub async fn open_runs_on_host(&self, host: &str) -> Result<Vec<RunRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT r.* FROM runs r JOIN instances i ON i.id = r.instance_id
             WHERE i.host_id = $1 AND r.state IN ($2, $3) ORDER BY r.created_at_ms, r.id",
        )
        .bind(host)
        .bind(RunState::Pending)
        .bind(RunState::Running)
        .fetch_all(&self.pool)
        .await
    }

    /// Applies an agent's progress report; returns the log offset the
    /// server has. A chunk at the wrong offset is dropped (the agent
    /// resends from the returned offset); a finished run never changes.
    pub async fn apply_run_progress(&self, run: &RunRow, p: &RunProgress) -> Result<u64, sqlx::Error> {
        let mut tx = self.begin().await?;
        let cur: Option<(RunState, i64, String)> =
            sqlx::query_as("SELECT state, log_offset, log FROM runs WHERE id = $1")
                .bind(&run.id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((state, offset, mut log)) = cur else { return Ok(0) };
        if !state.can_become(p.state) {
            return Ok(offset as u64);
        }
        let mut offset = offset as u64;
        if p.log_raw_len > 0 && p.log_offset == offset {
            log.push_str(&crate::store::storable_text(&p.log));
            offset += p.log_raw_len;
            crate::store::keep_tail(&mut log, RUN_LOG_KEEP_BYTES);
        }
        let now = now_ms();
        let finished = p.state.finished();
        sqlx::query(
            "UPDATE runs SET state = $1, log = $2, log_offset = $3,
               guest_pid = COALESCE($4, guest_pid), exit_code = COALESCE($5, exit_code), error = COALESCE($6, error),
               started_at_ms = COALESCE(started_at_ms, $7), finished_at_ms = $8
             WHERE id = $9",
        )
        .bind(p.state)
        .bind(&log)
        .bind(offset as i64)
        .bind(p.guest_pid)
        .bind(p.exit_code.map(i64::from))
        .bind(p.error.as_deref().map(|e| crate::store::storable_text(e).into_owned()))
        .bind(now)
        .bind(if finished { Some(now) } else { None })
        .bind(&run.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(offset)
    }
}
