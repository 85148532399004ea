//! Replays of signed EC2 requests: the SigV4 signature of each request
//! that changes something (any action but `Describe*` and `Get*`) is
//! claimed once it verified, in the `sigv4_signatures` table, until its
//! request would be refused as expired anyway; a second claim is a replay.
//!
//! Neither is a RunInstances with a ClientToken: a copy gets the first
//! request's reservation and launches nothing. Reads are not claimed: botocore signs neither its invocation id nor its
//! attempt number, so two identical calls within one second (a polling
//! loop, two `aws ec2 describe-instances` in a row) carry the same
//! signature, and refusing the second would break them. A replayed read
//! changes nothing; it does show its answer to whoever holds the signed
//! request (as anyone who saw the request on the wire saw the answer).
//!
//! In SQL and not in a server's memory: with several servers on one
//! PostgreSQL, a copy sent to the other server must be refused as well.
//! The claim is one conditional INSERT, so two copies racing are one
//! success and one refusal. Memory stays bounded: rows live at most
//! `2 * MAX_SKEW_SECS` (a request may be dated 5 minutes ahead), the API's
//! per-user rate limit bounds how many arrive meanwhile, and expired rows
//! are deleted at most once a minute by whichever request comes along.
//!
//! Retries: botocore builds and signs each attempt anew, but its
//! `amz-sdk-request: attempt=N` header is added after signing, so a retry
//! within the same second as its first attempt has the same signature.
//! A first attempt that never reached the server claimed nothing.
//! A claim is therefore released when the answer is one the SDKs retry
//! (5xx: `InternalError`, `Unavailable`, `RequestLimitExceeded`): such a
//! retry goes through. What stays refused is a copy of a request that
//! got an answer, including a retry after an answer lost on the way back
//! (the error then says the request was already received).

use crate::store::Store;
use std::sync::atomic::{AtomicI64, Ordering};

/// How often expired claims are deleted, at most.
const PRUNE_EVERY_MS: i64 = 60_000;

/// When expired claims were last deleted by this process.
static LAST_PRUNE_MS: AtomicI64 = AtomicI64::new(0);

impl Store {
    /// Claims a verified signature (hex) until `expires_at_ms`; false when
    /// it was claimed before: the request is a replay.
    pub async fn claim_signature(&self, signature: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, sqlx::Error> {
        let last = LAST_PRUNE_MS.load(Ordering::Relaxed);
        if now_ms - last >= PRUNE_EVERY_MS
            && LAST_PRUNE_MS.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let gone = sqlx::query("DELETE FROM sigv4_signatures WHERE expires_at_ms < $1")
                .bind(now_ms)
                .execute(&self.pool)
                .await?
                .rows_affected();
            tracing::debug!(gone, "expired SigV4 signature claims deleted");
        }
        let r = sqlx::query(
            "INSERT INTO sigv4_signatures (signature, expires_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(signature)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Releases a claim: the request's answer was one clients retry.
    pub async fn release_signature(&self, signature: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM sigv4_signatures WHERE signature = $1").bind(signature).execute(&self.pool).await?;
        Ok(())
    }
}
