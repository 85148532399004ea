//! Identity state: projects and their quotas, users (local with argon2id
//! passwords, or from LDAP), memberships, API tokens (hashed, expiring,
//! revocable), agent join tokens and per-host credentials. SQL only; who
//! may do what is decided in `authz`.

use crate::auth::hash_token;
use crate::store::{now_ms, Store};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use nubo_api::ids::{ProjectId, TokenId, UserId};
use sqlx::FromRow;

pub const DEFAULT_PROJECT: &str = "default";
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// The tables of revocable user credentials (same columns for revocation).
#[derive(Debug, Clone, Copy)]
enum Credentials {
    ApiTokens,
    AccessKeys,
}

#[derive(Debug, Clone, FromRow)]
pub struct ProjectRow {
    pub id: String,
    pub name: String,
    pub quota_instances: i64,
    pub quota_vcpus: i64,
    pub quota_memory_mib: i64,
    pub quota_volume_gib: i64,
    pub used_instances: i64,
    pub used_vcpus: i64,
    pub used_memory_mib: i64,
    pub used_volume_gib: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub source: String,
    pub password_hash: Option<String>,
    pub is_admin: i64,
}

/// A token that resolved to a user: the raw material of a `Caller`.
#[derive(Debug, Clone, FromRow)]
pub struct TokenOwner {
    pub token_id: String,
    pub user_id: String,
    pub user_name: String,
    pub is_admin: i64,
    pub project_id: Option<String>,
    pub project_name: Option<String>,
    pub role: Option<String>,
}

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub user_name: String,
    pub project_name: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AccessKeyRow {
    pub id: String,
    pub user_name: String,
    pub project_name: Option<String>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
struct AccessKeyOwnerRow {
    secret_sealed: String,
    #[sqlx(flatten)]
    owner: TokenOwner,
}

/// at_ms, actor, project name, method, path, source, status, outcome.
type AuditRow = (i64, String, Option<String>, String, String, String, i64, String);

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false)
}

impl Store {
    // ---- projects ----

    pub async fn ensure_project(&self, name: &str) -> Result<ProjectRow, sqlx::Error> {
        if let Some(p) = self.project_by_name(name).await? {
            return Ok(p);
        }
        sqlx::query("INSERT INTO projects (id, name, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(ProjectId::generate().as_str())
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        self.project_by_name(name).await?.ok_or(sqlx::Error::RowNotFound)
    }

    pub async fn project_by_name(&self, name: &str) -> Result<Option<ProjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM projects WHERE name = $1").bind(name).fetch_optional(&self.pool).await
    }

    /// By id or by name.
    pub async fn project(&self, key: &str) -> Result<Option<ProjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM projects WHERE id = $1 OR name = $1").bind(key).fetch_optional(&self.pool).await
    }

    pub async fn projects(&self) -> Result<Vec<ProjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM projects ORDER BY name").fetch_all(&self.pool).await
    }

    pub async fn set_quota(&self, id: &str, q: &nubo_api::params::Quota) -> Result<(), sqlx::Error> {
        let opt = |v: Option<u64>| v.map(|n| n.min(i64::MAX as u64) as i64);
        sqlx::query(
            "UPDATE projects SET quota_instances = COALESCE($1, quota_instances), quota_vcpus = COALESCE($2, quota_vcpus),
               quota_memory_mib = COALESCE($3, quota_memory_mib), quota_volume_gib = COALESCE($4, quota_volume_gib),
               quota_floating_ips = COALESCE($6, quota_floating_ips)
             WHERE id = $5",
        )
        .bind(opt(q.instances))
        .bind(opt(q.vcpus))
        .bind(opt(q.memory_mib))
        .bind(opt(q.volume_gib))
        .bind(id)
        .bind(opt(q.floating_ips))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- users ----

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, name, source, password_hash, is_admin FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, name, source, password_hash, is_admin FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
    }

    /// Creates the user, or updates source, password and admin flag.
    pub async fn upsert_user(
        &self,
        name: &str,
        source: &str,
        password_hash: Option<&str>,
        is_admin: bool,
    ) -> Result<UserRow, sqlx::Error> {
        sqlx::query(
            "INSERT INTO users (id, name, source, password_hash, is_admin, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET source = excluded.source,
               password_hash = COALESCE(excluded.password_hash, users.password_hash), is_admin = excluded.is_admin",
        )
        .bind(UserId::generate().as_str())
        .bind(name)
        .bind(source)
        .bind(password_hash)
        .bind(i64::from(is_admin))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.user_by_name(name).await?.ok_or(sqlx::Error::RowNotFound)
    }

    pub async fn set_membership(&self, user_id: &str, project_id: &str, role: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO memberships (user_id, project_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, project_id) DO UPDATE SET role = excluded.role",
        )
        .bind(user_id)
        .bind(project_id)
        .bind(role)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes one role away; whether there was one.
    pub async fn remove_membership(&self, user_id: &str, project_id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND project_id = $2")
            .bind(user_id)
            .bind(project_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub async fn remove_memberships(&self, user_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM memberships WHERE user_id = $1").bind(user_id).execute(&self.pool).await?;
        Ok(())
    }

    /// (project id, project name, role) for each of the user's projects.
    pub async fn memberships(&self, user_id: &str) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT p.id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id
             WHERE m.user_id = $1 ORDER BY p.name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    // ---- API tokens ----

    /// Issues a token for the user, scoped to a project; returns (id, secret).
    pub async fn issue_token(
        &self,
        user_id: &str,
        project_id: Option<&str>,
        name: &str,
        expires_at_ms: Option<i64>,
    ) -> Result<(TokenId, String), sqlx::Error> {
        let id = TokenId::generate();
        let secret = crate::auth::generate_token();
        sqlx::query(
            "INSERT INTO api_tokens (id, hash, user_id, project_id, name, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.as_str())
        .bind(hash_token(&secret))
        .bind(user_id)
        .bind(project_id)
        .bind(name)
        .bind(now_ms())
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok((id, secret))
    }

    /// Issues a token unless the user already holds `max` live ones. A
    /// sign-in session (`session`) makes room by revoking the user's oldest
    /// live sessions instead: signing in again must not lock a user out.
    /// Returns `Err(live)` when there is no room.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_token_capped(
        &self,
        user_id: &str,
        project_id: Option<&str>,
        name: &str,
        expires_at_ms: Option<i64>,
        max: u32,
        session: bool,
    ) -> Result<Result<(TokenId, String), u64>, sqlx::Error> {
        let now = now_ms();
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_tokens WHERE user_id = $1 AND revoked_at_ms IS NULL
               AND (expires_at_ms IS NULL OR expires_at_ms > $2)",
        )
        .bind(user_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        let max = i64::from(max.max(1));
        if live >= max {
            if !session {
                return Ok(Err(live as u64));
            }
            let excess = live - max + 1;
            let oldest: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM api_tokens WHERE user_id = $1 AND revoked_at_ms IS NULL
                   AND (expires_at_ms IS NULL OR expires_at_ms > $2) AND name IN ('login', 'portal')
                 ORDER BY created_at_ms LIMIT $3",
            )
            .bind(user_id)
            .bind(now)
            .bind(excess)
            .fetch_all(&self.pool)
            .await?;
            if (oldest.len() as i64) < excess {
                return Ok(Err(live as u64));
            }
            for id in &oldest {
                self.revoke(Credentials::ApiTokens, id, Some(user_id)).await?;
            }
            tracing::info!(user_id, revoked = oldest.len(), "oldest sessions revoked to stay within the token cap");
        }
        Ok(Ok(self.issue_token(user_id, project_id, name, expires_at_ms).await?))
    }

    /// Gives every token without an expiry (but the bootstrap admin's, kept
    /// in the server's admin.env) one: its creation plus `max_life_ms`.
    pub async fn cap_token_lifetimes(&self, max_life_ms: i64) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE api_tokens SET expires_at_ms = created_at_ms + $1
             WHERE expires_at_ms IS NULL AND NOT (name = 'bootstrap'
               AND user_id IN (SELECT id FROM users WHERE name = $2))",
        )
        .bind(max_life_ms)
        .bind(BOOTSTRAP_ADMIN)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Revokes every token and access key of a user (it left the directory).
    pub async fn revoke_user_credentials(&self, user_id: &str) -> Result<u64, sqlx::Error> {
        let now = now_ms();
        let mut n = 0;
        for table in ["api_tokens", "access_keys"] {
            // The table name is one of the two literals above, never input.
            let r = sqlx::query(&format!(
                "UPDATE {table} SET revoked_at_ms = $1 WHERE user_id = $2 AND revoked_at_ms IS NULL"
            ))
            .bind(now)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
            n += r.rows_affected();
        }
        Ok(n)
    }

    /// Users signed in from a given source (`ldap`).
    pub async fn users_from(&self, source: &str) -> Result<Vec<UserRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, name, source, password_hash, is_admin FROM users WHERE source = $1 ORDER BY name")
            .bind(source)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn set_admin(&self, user_id: &str, is_admin: bool) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE users SET is_admin = $1 WHERE id = $2")
            .bind(i64::from(is_admin))
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The owner of a live token: not revoked, not expired.
    pub async fn token_owner(&self, secret: &str) -> Result<Option<TokenOwner>, sqlx::Error> {
        sqlx::query_as(
            "SELECT t.id AS token_id, u.id AS user_id, u.name AS user_name, u.is_admin,
                    t.project_id, p.name AS project_name, m.role
             FROM api_tokens t
             JOIN users u ON u.id = t.user_id
             LEFT JOIN projects p ON p.id = t.project_id
             LEFT JOIN memberships m ON m.user_id = t.user_id AND m.project_id = t.project_id
             WHERE t.hash = $1 AND t.revoked_at_ms IS NULL AND (t.expires_at_ms IS NULL OR t.expires_at_ms > $2)",
        )
        .bind(hash_token(secret))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await
    }

    /// Tokens of one user, or of everyone when `user_id` is None.
    pub async fn tokens(&self, user_id: Option<&str>) -> Result<Vec<TokenRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT t.id, t.name, u.name AS user_name, p.name AS project_name, t.created_at_ms, t.expires_at_ms,
                    t.revoked_at_ms
             FROM api_tokens t JOIN users u ON u.id = t.user_id LEFT JOIN projects p ON p.id = t.project_id
             WHERE ($1 IS NULL OR t.user_id = $1) ORDER BY t.created_at_ms",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes a token the user owns (any token if `user_id` is None).
    pub async fn revoke_token(&self, id: &str, user_id: Option<&str>) -> Result<bool, sqlx::Error> {
        self.revoke(Credentials::ApiTokens, id, user_id).await
    }

    /// Marks a credential revoked, once; only the owner's when `user_id` is given.
    async fn revoke(&self, table: Credentials, id: &str, user_id: Option<&str>) -> Result<bool, sqlx::Error> {
        // The table name comes from the enum, never from input.
        let table = match table {
            Credentials::ApiTokens => "api_tokens",
            Credentials::AccessKeys => "access_keys",
        };
        let r = sqlx::query(&format!(
            "UPDATE {table} SET revoked_at_ms = $1 WHERE id = $2 AND ($3 IS NULL OR user_id = $3)
               AND revoked_at_ms IS NULL"
        ))
        .bind(now_ms())
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- hosts' credentials ----

    pub async fn create_join_token(&self, ttl_ms: i64) -> Result<(String, i64), sqlx::Error> {
        let secret = crate::auth::generate_token();
        let expires = now_ms() + ttl_ms;
        sqlx::query("INSERT INTO join_tokens (hash, created_at_ms, expires_at_ms) VALUES ($1, $2, $3)")
            .bind(hash_token(&secret))
            .bind(now_ms())
            .bind(expires)
            .execute(&self.pool)
            .await?;
        Ok((secret, expires))
    }

    /// Consumes a join token (once) and issues the host's credential.
    pub async fn join_host(&self, join_token: &str, host_id: &str) -> Result<Option<String>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let used = sqlx::query(
            "UPDATE join_tokens SET used_at_ms = $1, used_by_host = $2
             WHERE hash = $3 AND used_at_ms IS NULL AND expires_at_ms > $1",
        )
        .bind(now)
        .bind(host_id)
        .bind(hash_token(join_token))
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(None);
        }
        let credential = crate::auth::generate_token();
        sqlx::query("INSERT INTO host_credentials (hash, host_id, created_at_ms) VALUES ($1, $2, $3)")
            .bind(hash_token(&credential))
            .bind(host_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(credential))
    }

    /// The host a credential belongs to (from memory when this server
    /// read it recently, see `known_hosts`).
    pub async fn credential_host(&self, credential: &str) -> Result<Option<String>, sqlx::Error> {
        let hash = hash_token(credential);
        let now = std::time::Instant::now();
        if let Some(host) = self.known_hosts.credential_host(&hash, now) {
            return Ok(Some(host));
        }
        let host: Option<String> =
            sqlx::query_scalar("SELECT host_id FROM host_credentials WHERE hash = $1 AND revoked_at_ms IS NULL")
                .bind(&hash)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(host) = &host {
            self.known_hosts.remember_credential(hash, host, now);
        }
        Ok(host)
    }

    // ---- access keys (EC2 API) ----

    /// Stores a new pair; returns the key id. `sealed` is the encrypted secret.
    pub async fn create_access_key(
        &self,
        id: &str,
        sealed: &str,
        user_id: &str,
        project_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO access_keys (id, secret_sealed, user_id, project_id, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(sealed)
        .bind(user_id)
        .bind(project_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// (id, user name, project name, created, revoked) of one user's keys, or everyone's.
    pub async fn access_keys(&self, user_id: Option<&str>) -> Result<Vec<AccessKeyRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT k.id, u.name AS user_name, p.name AS project_name, k.created_at_ms, k.revoked_at_ms
             FROM access_keys k JOIN users u ON u.id = k.user_id LEFT JOIN projects p ON p.id = k.project_id
             WHERE ($1 IS NULL OR k.user_id = $1) ORDER BY k.created_at_ms",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
    }

    /// The sealed secret, user and project of a live key (for SigV4).
    pub async fn access_key_secret(&self, id: &str) -> Result<Option<(String, String, Option<String>)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT secret_sealed, user_id, project_id FROM access_keys WHERE id = $1 AND revoked_at_ms IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// A live access key's sealed secret and owner, as a `TokenOwner`
    /// (its id in `token_id`) with the role in the key's project (for SigV4).
    pub async fn access_key_owner(&self, id: &str) -> Result<Option<(String, TokenOwner)>, sqlx::Error> {
        let row: Option<AccessKeyOwnerRow> = sqlx::query_as(
            "SELECT k.secret_sealed, k.id AS token_id, u.id AS user_id, u.name AS user_name, u.is_admin,
                    k.project_id, p.name AS project_name, m.role
             FROM access_keys k
             JOIN users u ON u.id = k.user_id
             LEFT JOIN projects p ON p.id = k.project_id
             LEFT JOIN memberships m ON m.user_id = k.user_id AND m.project_id = k.project_id
             WHERE k.id = $1 AND k.revoked_at_ms IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.secret_sealed, r.owner)))
    }

    /// An access key of `user` in `project` that is still live, if any
    /// (`nubo up` reuses the admin's across restarts).
    pub async fn live_access_key(&self, user_id: &str, project_id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT id FROM access_keys WHERE user_id = $1 AND project_id = $2 AND revoked_at_ms IS NULL
             ORDER BY created_at_ms LIMIT 1",
        )
        .bind(user_id)
        .bind(project_id)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn revoke_access_key(&self, id: &str, user_id: Option<&str>) -> Result<bool, sqlx::Error> {
        self.revoke(Credentials::AccessKeys, id, user_id).await
    }

    // ---- audit ----

    #[allow(clippy::too_many_arguments)]
    pub async fn audit(
        &self,
        actor: &str,
        project: Option<&str>,
        method: &str,
        path: &str,
        source: &str,
        status: u16,
        outcome: &str,
    ) -> Result<(), sqlx::Error> {
        let n: u64 = rand::random();
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, actor, project_id, method, path, source, status, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(format!("a-{n:016x}"))
        .bind(now_ms())
        .bind(actor)
        .bind(project)
        .bind(method)
        .bind(path)
        .bind(source)
        .bind(i64::from(status))
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes up to `batch` audit entries older than `before_ms`; how many
    /// went. Batches keep each delete short on a large log.
    pub async fn prune_audit(&self, before_ms: i64, batch: i64) -> Result<u64, sqlx::Error> {
        let r = sqlx::query(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)",
        )
        .bind(before_ms)
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn audit_entries(&self, limit: i64) -> Result<Vec<nubo_api::views::AuditEntry>, sqlx::Error> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT a.at_ms, a.actor, p.name, a.method, a.path, a.source, a.status, a.outcome
             FROM audit_log a LEFT JOIN projects p ON p.id = a.project_id
             ORDER BY a.at_ms DESC, a.id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at_ms, actor, project, method, path, source, status, outcome)| nubo_api::views::AuditEntry {
                at_ms,
                actor,
                project,
                method,
                path,
                source,
                status: status as u16,
                outcome,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_verify_only_with_the_right_secret() {
        let h = super::hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify_password("correct horse", &h));
        assert!(!super::verify_password("wrong", &h));
        assert!(!super::verify_password("x", "not a phc string"));
    }
}
