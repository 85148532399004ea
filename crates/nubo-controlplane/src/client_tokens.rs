//! RunInstances' ClientToken in SQL: the first request with a token claims
//! it (with a hash of its parameters and the reservation it will make);
//! retries with the same token get that reservation's instances, and a
//! retry with other parameters is refused. The claim is one conditional
//! INSERT, so two parallel requests with one token never both launch.

use crate::store::{now_ms, Store};
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct ClientTokenRow {
    pub request_hash: String,
    pub reservation_id: String,
    /// Space-separated; `None` while the first request is still launching.
    pub instance_ids: Option<String>,
}

/// What claiming a token found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This request is the first: it launches.
    New,
    /// An earlier request holds it.
    Existing(ClientTokenRow),
}

impl Store {
    pub async fn claim_client_token(
        &self,
        project: &str,
        token: &str,
        request_hash: &str,
        reservation_id: &str,
    ) -> Result<Claim, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO client_tokens (project_id, token, request_hash, reservation_id, created_at_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(project)
        .bind(token)
        .bind(request_hash)
        .bind(reservation_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        match self.client_token(project, token).await? {
            Some(row) => Ok(Claim::Existing(row)),
            // Released between the INSERT and the read: try once more.
            None => Box::pin(self.claim_client_token(project, token, request_hash, reservation_id)).await,
        }
    }

    pub async fn client_token(&self, project: &str, token: &str) -> Result<Option<ClientTokenRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT request_hash, reservation_id, instance_ids FROM client_tokens WHERE project_id = $1 AND token = $2",
        )
        .bind(project)
        .bind(token)
        .fetch_optional(&self.pool)
        .await
    }

    /// Records what the first request launched.
    pub async fn complete_client_token(&self, project: &str, token: &str, ids: &[String]) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE client_tokens SET instance_ids = $1 WHERE project_id = $2 AND token = $3")
            .bind(ids.join(" "))
            .bind(project)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Frees a token whose request failed, so that a retry may launch.
    pub async fn release_client_token(&self, project: &str, token: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM client_tokens WHERE project_id = $1 AND token = $2 AND instance_ids IS NULL")
            .bind(project)
            .bind(token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
