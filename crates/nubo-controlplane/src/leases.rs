//! Leases: the database's answer to "which server does this work now?".
//! Several `nubo server` processes on one PostgreSQL would otherwise each
//! run the monitor's rounds (alerts, policies, groups), and a policy would
//! act twice. A lease is one row (name, holder, expiry); taking or renewing
//! it is one conditional upsert, so two servers can never both hold it,
//! and a server that dies loses it when it expires. With SQLite (one
//! server) the lease is always this server's, taken the same way.

use crate::store::Store;

impl Store {
    /// Takes or renews the lease `name` for `holder` until `now_ms + ttl_ms`;
    /// true when `holder` has it now. It succeeds when nobody holds it,
    /// when `holder` already does, or when the other holder's lease has
    /// expired; otherwise nothing changes.
    pub async fn take_lease(&self, name: &str, holder: &str, ttl_ms: i64, now_ms: i64) -> Result<bool, sqlx::Error> {
        // The WHERE of DO UPDATE is evaluated on the row as it is when the
        // upsert locks it, so of two servers racing for an expired lease
        // only the first changes it; the second sees the new holder and
        // expiry, and affects no row.
        let r = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now_ms + ttl_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives the lease up (at shutdown), so another server need not wait
    /// for it to expire; nothing when `holder` does not hold it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds the lease `name` and until when (milliseconds), if anyone
    /// ever took it.
    pub async fn lease(&self, name: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT holder, expires_at_ms FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }
}
