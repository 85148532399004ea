//! The sign-in guard: how often a password may be tried, and where the
//! password hashing runs. This module owns the per-user and per-source
//! attempt limits (so an online guesser gets a handful of tries a minute,
//! and a right password during a lockout is refused like a wrong one), and
//! the argon2 work, which runs on blocking threads behind a semaphore so a
//! flood of sign-ins can neither stall the async workers that serve every
//! other request nor take every core.

use crate::error::AppError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Above this many tracked keys, keys whose limit has fully recovered are
/// dropped at the next attempt (and hourly in any case, by the audit
/// retention task), so memory follows the number of recent guessers, not
/// of every name ever tried.
const PRUNE_ABOVE: usize = 10_000;

/// Sign-in attempt limits and the hashing pool.
pub struct SignInGuard {
    per_user: DefaultKeyedRateLimiter<String>,
    per_source: DefaultKeyedRateLimiter<String>,
    per_user_per_min: u32,
    per_source_per_min: u32,
    hashing: Arc<Semaphore>,
    clock: DefaultClock,
}

/// A sign-in refused before its password was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Too many attempts for this user name.
    User(Duration),
    /// Too many attempts from this address.
    Source(Duration),
}

impl Limited {
    pub fn wait(self) -> Duration {
        match self {
            Self::User(d) | Self::Source(d) => d,
        }
    }
}

fn quota_per_minute(n: u32) -> Quota {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl SignInGuard {
    /// `per_user_per_min` attempts a minute for one user name (all at once
    /// at most), `per_source_per_min` from one address. Hashing uses half
    /// the cores (at least one): the other half keeps serving requests.
    pub fn new(per_user_per_min: u32, per_source_per_min: u32) -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self {
            per_user: RateLimiter::keyed(quota_per_minute(per_user_per_min)),
            per_source: RateLimiter::keyed(quota_per_minute(per_source_per_min)),
            per_user_per_min,
            per_source_per_min,
            hashing: Arc::new(Semaphore::new((cores / 2).max(1))),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one attempt of `user` from `source`, or says how long to wait.
    /// Checked before the password, so the answer never depends on it.
    pub fn admit(&self, user: &str, source: &str) -> Result<(), Limited> {
        self.prune_if_large();
        let now = self.clock.now();
        self.per_source
            .check_key(&source.to_string())
            .map_err(|not_until| Limited::Source(not_until.wait_time_from(now)))?;
        self.per_user
            .check_key(&user.to_ascii_lowercase())
            .map_err(|not_until| Limited::User(not_until.wait_time_from(now)))
    }

    /// `admit` as the API's error: 429 with when to try again.
    pub fn admit_or_refuse(&self, user: &str, source: &str) -> Result<(), AppError> {
        self.admit(user, source).map_err(|limited| {
            let secs = limited.wait().as_secs().max(1);
            let message = match limited {
                Limited::User(_) => format!(
                    "too many sign-in attempts for user '{}' (at most {} a minute): try again in {secs} s",
                    user.chars().take(64).collect::<String>(),
                    self.per_user_per_min
                ),
                Limited::Source(_) => format!(
                    "too many sign-in attempts from your address (at most {} a minute): try again in {secs} s",
                    self.per_source_per_min
                ),
            };
            tracing::warn!(user = %user.chars().take(64).collect::<String>(), %source, wait_secs = secs, "sign-in limited");
            AppError::RateLimited { message, retry_after_secs: secs }
        })
    }

    /// Checks a password against its argon2 PHC string off the async
    /// workers, at most one per hashing permit at a time.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, AppError> {
        let (password, phc) = (password.to_string(), phc.to_string());
        self.blocking(move || crate::identity::verify_password(&password, &phc)).await
    }

    /// Hashes a new password (argon2id) off the async workers.
    pub async fn hash(&self, password: &str) -> Result<String, AppError> {
        let password = password.to_string();
        self.blocking(move || crate::identity::hash_password(&password)).await?.map_err(AppError::internal)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, AppError> {
        let _permit = self.hashing.acquire().await.map_err(AppError::internal)?;
        tokio::task::spawn_blocking(f).await.map_err(AppError::internal)
    }

    /// Drops the keys whose limit has fully recovered.
    pub fn prune(&self) {
        self.per_user.retain_recent();
        self.per_source.retain_recent();
        self.per_user.shrink_to_fit();
        self.per_source.shrink_to_fit();
    }

    fn prune_if_large(&self) {
        if self.per_user.len() > PRUNE_ABOVE || self.per_source.len() > PRUNE_ABOVE {
            self.prune();
        }
    }

    /// How many keys are tracked (user names, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        (self.per_user.len(), self.per_source.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_attempts_locks_the_user_then_recovers() {
        let g = SignInGuard::new(3, 100);
        for _ in 0..3 {
            g.admit("alice", "10.0.0.1").unwrap();
        }
        // The fourth is refused whatever the password: it is not looked at.
        let Err(Limited::User(wait)) = g.admit("alice", "10.0.0.1") else { panic!("not limited") };
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        // Case does not buy more tries, and another user is not affected.
        assert!(g.admit("ALICE", "10.0.0.2").is_err());
        g.admit("bob", "10.0.0.1").unwrap();
    }

    #[test]
    fn one_address_is_limited_across_user_names() {
        let g = SignInGuard::new(100, 2);
        g.admit("a", "192.0.2.1").unwrap();
        g.admit("b", "192.0.2.1").unwrap();
        assert!(matches!(g.admit("c", "192.0.2.1"), Err(Limited::Source(_))));
        g.admit("c", "192.0.2.2").unwrap();
    }

    #[test]
    fn the_refusal_says_when_to_retry() {
        let g = SignInGuard::new(1, 100);
        g.admit_or_refuse("alice", "s").unwrap();
        match g.admit_or_refuse("alice", "s") {
            Err(AppError::RateLimited { message, retry_after_secs }) => {
                assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}");
                assert!(message.contains("try again in"), "{message}");
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_off_the_async_workers() {
        let g = Arc::new(SignInGuard::new(100, 100));
        let phc = g.hash("secret").await.unwrap();
        assert!(g.verify("secret", &phc).await.unwrap());
        assert!(!g.verify("wrong", &phc).await.unwrap());
        // Many verifications in flight leave the runtime free for a timer.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (g, phc) = (g.clone(), phc.clone());
            tasks.push(tokio::spawn(async move { g.verify("wrong", &phc).await }));
        }
        let t = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(t.elapsed() < Duration::from_millis(500), "the runtime stalled for {:?}", t.elapsed());
        for t in tasks {
            assert!(!t.await.unwrap().unwrap());
        }
    }
}
