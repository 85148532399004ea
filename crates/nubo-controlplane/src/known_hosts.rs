//! What this server has already read about the hosts that call it: which
//! host a credential belongs to, and which hosts are registered. Every
//! agent request is authenticated by its credential and most name their
//! host, so at 1,000 hosts these two reads were a third of the statements
//! an idle fleet made the database run; here they are answered from
//! memory after the first time.
//!
//! Both facts only ever become true: no host row is deleted and no
//! credential revoked (a re-joined host gets a new credential; the old
//! one names the same host). Only found answers are kept, so a host that
//! registers, or a credential that is created, on another server is read
//! from the database until it is found. A credential's answer is still
//! kept for [`CREDENTIAL_TTL`] only, so that a revocation, once Nubo has
//! one, applies within that time on every server without a message
//! between them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a credential's host is taken from memory before it is read
/// again.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(60);

/// At most this many credentials (and hosts) are kept; past it the memory
/// starts over, which costs reads, not answers. Far above the hosts one
/// control plane serves, and a bound on what made-up credentials could
/// make it hold (only found ones are kept anyway).
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct KnownHosts {
    /// Credential hash → (host id, when it was read).
    credentials: Mutex<HashMap<String, (String, Instant)>>,
    /// Hosts whose row was found.
    registered: Mutex<HashSet<String>>,
}

impl KnownHosts {
    /// The host of the credential whose hash is `hash`, when it was read
    /// less than [`CREDENTIAL_TTL`] ago.
    pub fn credential_host(&self, hash: &str, now: Instant) -> Option<String> {
        let credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        match credentials.get(hash) {
            Some((host, read)) if now.saturating_duration_since(*read) < CREDENTIAL_TTL => Some(host.clone()),
            _ => None,
        }
    }

    /// Keeps a credential's host, read from the database at `now`.
    pub fn remember_credential(&self, hash: String, host: &str, now: Instant) {
        let mut credentials = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        if credentials.len() >= CAPACITY && !credentials.contains_key(&hash) {
            credentials.clear();
        }
        credentials.insert(hash, (host.to_string(), now));
    }

    /// Whether `host`'s row was found before.
    pub fn is_registered(&self, host: &str) -> bool {
        self.registered.lock().unwrap_or_else(|p| p.into_inner()).contains(host)
    }

    /// Keeps that `host`'s row exists.
    pub fn remember_registered(&self, host: &str) {
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        if registered.len() >= CAPACITY && !registered.contains(host) {
            registered.clear();
        }
        registered.insert(host.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_answered_until_its_time_runs_out() {
        let known = KnownHosts::default();
        let t0 = Instant::now();
        assert_eq!(known.credential_host("h1", t0), None);
        known.remember_credential("h1".into(), "host-a", t0);
        assert_eq!(known.credential_host("h1", t0 + Duration::from_secs(59)).as_deref(), Some("host-a"));
        assert_eq!(known.credential_host("h1", t0 + CREDENTIAL_TTL), None, "read again once the time is up");
        assert_eq!(known.credential_host("h2", t0), None, "another credential is not answered");
    }

    #[test]
    fn registered_hosts_are_remembered_and_the_memory_is_bounded() {
        let known = KnownHosts::default();
        assert!(!known.is_registered("a"));
        known.remember_registered("a");
        assert!(known.is_registered("a"));
        for i in 0..CAPACITY {
            known.remember_registered(&format!("h{i}"));
        }
        assert!(known.registered.lock().unwrap().len() <= CAPACITY);
        let t = Instant::now();
        for i in 0..=CAPACITY {
            known.remember_credential(format!("c{i}"), "x", t);
        }
        assert!(known.credentials.lock().unwrap().len() <= CAPACITY);
    }
}
