//! DescribeInstanceStatus: EC2's two status checks of each instance, fed
//! by what Nubo itself knows, so that boto3's `instance_status_ok` waiter
//! and the tools that wait on it work.
//!
//! - The **system** check is the instance's host: `ok` while the host
//!   reports within the heartbeat timeout, `impaired` once it stops.
//! - The **instance** check is the guest: `impaired` while any of its
//!   monitoring checks is critical (hard state), `ok` once its guest agent
//!   has answered, `initializing` for the first five minutes without an
//!   answer, `insufficient-data` after that (an image without a guest
//!   agent).
//!
//! Instances that are not running have `not-applicable` for both, and are
//! listed only with `IncludeAllInstances=true`, as on EC2.

use super::error::Ec2Result;
use super::instances::{listed, parse_ids, state_el, state_of};
use super::query::{self, Params};
use super::xml::El;
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::store::InstanceRow;
use crate::Ctx;
use nubo_api::monitoring::{CheckState, CheckStateType};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How long a running instance whose guest has not answered yet counts as
/// `initializing` (EC2's checks take minutes after boot too).
const INITIALIZING_MS: i64 = 5 * 60 * 1000;

const FILTERS: &[&str] = &[
    "availability-zone",
    "instance-state-name",
    "instance-state-code",
    "instance-status.status",
    "instance-status.reachability",
    "system-status.status",
    "system-status.reachability",
    // Documented by EC2 for scheduled events, which Nubo has none of:
    // accepted, and matching nothing.
    "event.code",
    "event.description",
    "event.instance-event-id",
    "event.not-after",
    "event.not-before",
    "event.not-before-deadline",
];

/// One check's outcome: the summary status and its `reachability` detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Impaired,
    Initializing,
    InsufficientData,
    NotApplicable,
}

impl Status {
    fn summary(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Impaired => "impaired",
            Status::Initializing => "initializing",
            Status::InsufficientData => "insufficient-data",
            Status::NotApplicable => "not-applicable",
        }
    }

    fn reachability(self) -> &'static str {
        match self {
            Status::Ok => "passed",
            Status::Impaired => "failed",
            Status::Initializing => "initializing",
            Status::InsufficientData | Status::NotApplicable => "insufficient-data",
        }
    }
}

/// What the checks are decided from, for one instance.
#[derive(Debug, Clone, Copy)]
pub struct Evidence {
    pub running: bool,
    /// The instance's host reported within the heartbeat timeout.
    pub host_alive: bool,
    /// A monitoring check of the instance is critical, hard.
    pub critical_check: bool,
    /// The guest agent has answered since the VM started.
    pub guest_answered: bool,
    /// Since when the instance has run (its row's last change).
    pub running_for_ms: i64,
}

/// (system, instance) status.
pub fn decide(e: Evidence) -> (Status, Status) {
    if !e.running {
        return (Status::NotApplicable, Status::NotApplicable);
    }
    let system = if e.host_alive { Status::Ok } else { Status::Impaired };
    let instance = if e.critical_check {
        Status::Impaired
    } else if e.guest_answered {
        Status::Ok
    } else if e.running_for_ms < INITIALIZING_MS {
        Status::Initializing
    } else {
        Status::InsufficientData
    };
    (system, instance)
}

fn check_el(name: &'static str, s: Status) -> El {
    El::new(name)
        .field("status", s.summary())
        .child(El::list("details", [El::item().field("name", "reachability").field("status", s.reachability())]))
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids = parse_ids(&p.list("InstanceId"))?;
    let filters = p.filters()?;
    query::check_filters(&filters, FILTERS, false)?;
    let include_all = p.bool("IncludeAllInstances")?.unwrap_or(false);
    let (rows, next) = listed(ctx, caller, &project, &ids, p).await?;
    let now = crate::store::now_ms();
    let timeout = ctx.config.heartbeat_timeout.as_millis() as i64;
    let alive: HashSet<String> =
        ctx.store.hosts().await?.into_iter().filter(|h| now - h.last_heartbeat_ms <= timeout).map(|h| h.id).collect();
    let critical: HashSet<String> = ctx
        .store
        .checks(Some(&project))
        .await?
        .into_iter()
        .filter(|c| c.state == CheckState::Critical && c.state_type == CheckStateType::Hard)
        .map(|c| c.target)
        .collect();
    let mut statuses: HashMap<String, (Status, Status)> = HashMap::new();
    for r in &rows {
        statuses.insert(r.id.clone(), decide(evidence(r, &alive, &critical, now)));
    }
    let items: Vec<El> = rows
        .iter()
        .filter(|r| include_all || state_of(r).1 == "running")
        .filter(|r| {
            let (system, instance) = statuses[&r.id];
            query::matches(&filters, |name| {
                let (code, state) = state_of(r);
                match name {
                    "availability-zone" => vec![ctx.config.availability_zone.clone()],
                    "instance-state-name" => vec![state.to_string()],
                    "instance-state-code" => vec![code.to_string()],
                    "instance-status.status" => vec![instance.summary().to_string()],
                    "instance-status.reachability" => vec![instance.reachability().to_string()],
                    "system-status.status" => vec![system.summary().to_string()],
                    "system-status.reachability" => vec![system.reachability().to_string()],
                    _ => Vec::new(),
                }
            })
        })
        .map(|r| {
            let (system, instance) = statuses[&r.id];
            El::item()
                .field("instanceId", &r.id)
                .field("availabilityZone", &ctx.config.availability_zone)
                .child(El::new("eventsSet"))
                .child(state_el("instanceState", r))
                .child(check_el("systemStatus", system))
                .child(check_el("instanceStatus", instance))
        })
        .collect();
    let mut out = vec![El::list("instanceStatusSet", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

fn evidence(r: &InstanceRow, alive: &HashSet<String>, critical: &HashSet<String>, now: i64) -> Evidence {
    Evidence {
        running: state_of(r).1 == "running",
        host_alive: r.host_id.as_ref().is_some_and(|h| alive.contains(h)),
        critical_check: critical.contains(&r.id),
        // The host sends the guest agent's status when it changes, so its
        // time says when it last changed, not whether the agent still
        // answers; that it answered at all is what is known. (A guest that
        // stops answering later shows in its monitoring checks.)
        guest_answered: r.guest_json.is_some(),
        running_for_ms: now - r.updated_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Evidence {
        Evidence { running: true, host_alive: true, critical_check: false, guest_answered: true, running_for_ms: 1 }
    }

    #[test]
    fn checks_follow_the_host_the_guest_agent_and_monitoring() {
        assert_eq!(decide(running()), (Status::Ok, Status::Ok));
        assert_eq!(decide(Evidence { host_alive: false, ..running() }).0, Status::Impaired);
        assert_eq!(decide(Evidence { critical_check: true, ..running() }).1, Status::Impaired);
        let silent = Evidence { guest_answered: false, ..running() };
        assert_eq!(decide(silent).1, Status::Initializing);
        assert_eq!(decide(Evidence { running_for_ms: INITIALIZING_MS, ..silent }).1, Status::InsufficientData);
        let stopped = Evidence { running: false, ..running() };
        assert_eq!(decide(stopped), (Status::NotApplicable, Status::NotApplicable));
        assert_eq!(Status::Ok.reachability(), "passed");
        assert_eq!(Status::Impaired.reachability(), "failed");
    }
}
