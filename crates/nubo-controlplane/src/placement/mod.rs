//! Placement: the one place where a host is chosen, for a new instance
//! (launch), a running one moved (migrate, evacuate, rebalance), one
//! restarted off a dead host (failover), and a volume's or snapshot's
//! bytes (storage). Callers say what they need ([`Need`]: an instance's
//! vCPUs, memory and disk, or room in a storage pool) and their
//! [`Constraints`] (same underlay, shared storage, a host to avoid or to
//! pin, the weigher); [`choose`] answers with the hosts that fit, best
//! first, each with the limits its claim re-checks, or a [`Refusal`] that
//! names each host's reason.
//!
//! The filters and weighers themselves are `nubo_scheduler`'s (pure,
//! over a snapshot); nothing outside this module calls them, which a test
//! below keeps true. The claim that follows a choice is the caller's one
//! conditional write (`store::claim_capacity`, `volumes::claim_pool`),
//! checked against [`Chosen::limits`], the same limits the filters used.
//!
//! [`choose`] asks the server's [`Index`] (hosts indexed by free capacity,
//! kept up to date with this server's claims and read again periodically)
//! rather than reading every host: see `index` for why a stale entry can
//! cost a retry but never an overshoot.

mod index;
mod launch;
mod storage;

pub(crate) use index::snapshot;
pub use index::{ChangedHosts, Index, ALTERNATIVES};
pub use launch::place;
pub use nubo_scheduler::{filter, Constraints, Demand, Need, Weigher};
pub use storage::place_storage;

use crate::error::AppError;
use crate::store::Size;
use crate::Ctx;
use nubo_scheduler::{HostSnapshot, Policy};
use std::fmt;

/// One host that can take the need (a saga records it as its step's
/// output, so it is serializable).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chosen {
    pub id: String,
    pub name: String,
    /// What the policy lets the host hold: the claim's conditional write
    /// re-checks against these, so a concurrent claim cannot overshoot.
    pub limits: Size,
}

/// The hosts that can take the need, best first (never empty).
#[derive(Debug, Clone)]
pub struct Choice {
    pub best: Chosen,
    /// The others, in order: where a launch tries next when a concurrent
    /// claim won the best one.
    pub rest: Vec<Chosen>,
}

impl Choice {
    /// Every fitting host, best first.
    pub fn hosts(&self) -> impl Iterator<Item = &Chosen> {
        std::iter::once(&self.best).chain(self.rest.iter())
    }
}

/// Why nothing was chosen.
#[derive(Debug)]
pub enum Refusal {
    /// No host fits; `why` has each considered host's first failing filter.
    NoHost { need: Need, pin: Option<String>, underlay: bool, why: nubo_scheduler::Refusal },
    /// The hosts could not be read.
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Refusal {
    fn from(e: sqlx::Error) -> Self {
        Refusal::Db(e)
    }
}

impl From<Refusal> for AppError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Db(e) => e.into(),
            no_host => AppError::NoValidHost(no_host.to_string()),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (need, pin, underlay, why) = match self {
            Refusal::Db(e) => return write!(f, "the hosts could not be read: {e}"),
            Refusal::NoHost { need, pin, underlay, why } => (need, pin, *underlay, why),
        };
        match need {
            Need::Pool { gib } => explain_pool(f, *gib, why),
            Need::Instance(_) => match (pin, why.rejections.as_slice()) {
                (Some(pin), []) => write!(f, "host {pin} is not registered: see `nubo host list`"),
                (Some(_), [r, ..]) => write!(f, "host {}: {}", r.host, r.reason),
                (None, rs) if underlay && rs.iter().all(|r| r.filter == filter::UNDERLAY) => write!(
                    f,
                    "no host runs private networks: start an agent with --underlay ADDRESS (see docs/networks.md)"
                ),
                (None, _) => write!(f, "{why}"),
            },
        }
    }
}

/// A storage refusal, in the words of the storage pools: each host's free
/// space, and what to do.
fn explain_pool(f: &mut fmt::Formatter<'_>, gib: u64, why: &nubo_scheduler::Refusal) -> fmt::Result {
    if why.rejections.is_empty() {
        return write!(f, "{why}");
    }
    let reasons: Vec<String> = why
        .rejections
        .iter()
        .map(|r| match r.filter {
            filter::HOST_STATE => format!("host {} is down", r.host),
            filter::POOL => format!("host {}'s {}", r.host, r.reason),
            other => format!("host {} rejected by {other}: {}", r.host, r.reason),
        })
        .collect();
    write!(f, "no storage pool can take {gib} GiB: {}; choose a smaller size or free space", reasons.join("; "))
}

/// Chooses among the registered hosts, through the server's index: the
/// best and up to [`ALTERNATIVES`] - 1 others. A caller that loses the
/// claim on all of them chooses again.
pub async fn choose(ctx: &Ctx, need: impl Into<Need>, c: &Constraints<'_>) -> Result<Choice, Refusal> {
    let need = need.into();
    let ranked = ctx.placement.choose(ctx, &need, c).await?;
    choice(ranked.as_ref().map(|hosts| hosts.iter()).map_err(Clone::clone), need, &ctx.config.policy, c)
}

/// [`choose`] over a given snapshot, every fitting host.
pub fn choose_among(hosts: &[HostSnapshot], need: Need, p: &Policy, c: &Constraints<'_>) -> Result<Choice, Refusal> {
    let ranked = nubo_scheduler::choose(hosts, &need, p, c);
    choice(ranked.as_ref().map(|hosts| hosts.iter().copied()).map_err(Clone::clone), need, p, c)
}

/// The scheduler's ranking as a [`Choice`], each host with its limits.
fn choice<'a>(
    ranked: Result<impl Iterator<Item = &'a HostSnapshot>, nubo_scheduler::Refusal>,
    need: Need,
    p: &Policy,
    c: &Constraints<'_>,
) -> Result<Choice, Refusal> {
    let refused = |why| Refusal::NoHost { need, pin: c.pin.map(str::to_string), underlay: c.underlay, why };
    let mut chosen =
        ranked.map_err(refused)?.map(|h| Chosen { id: h.id.clone(), name: h.name.clone(), limits: Size::limits(p, h) });
    match chosen.next() {
        Some(best) => Ok(Choice { best, rest: chosen.collect() }),
        None => Err(refused(nubo_scheduler::Refusal { rejections: Vec::new() })),
    }
}

#[cfg(test)]
mod tests;
