//! Automation's vocabulary: service policies (a scope, a condition on
//! metrics or check states held for a while, and actions) as users write
//! them in YAML or JSON, their firings as users read them, and instance
//! groups (a launch template kept at a desired count, scaled by policies
//! and schedules).

use crate::ids::{InstanceId, VolumeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a policy watches: exactly one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyScope {
    /// One instance (`i-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    /// The members of an instance group (by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A host (`h-...`, operators): its own metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Every instance of the project with this tag (and value, if given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagMatch {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// When a policy fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyCondition {
    /// A metric (e.g. `fs_used_percent`, `cpu_percent`) compared with `op` and `threshold`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// ...or a check state: a check of the instance in this HARD state or
    /// worse (`WARNING` or `CRITICAL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_state: Option<String>,
    /// Over the scope: `each` (every instance on its own: the actions act on
    /// that instance), or `avg`, `max`, `min`, `sum` (one value for the scope).
    #[serde(default = "default_aggregate")]
    pub aggregate: String,
    /// How long it must hold before the policy fires, e.g. `30s`, `1m`.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// A breach ends only once the value is back past the threshold by
    /// this much (so a value hovering at the threshold fires once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<f64>,
}

fn default_aggregate() -> String {
    "each".into()
}

/// One thing a firing does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyAction {
    /// Create a volume of this size on the instance's host and attach it.
    AttachVolume { size_gib: u64 },
    /// Grow a volume of the instance by this much (default: the one it got last).
    ExtendVolume {
        by_gib: u64,
        #[serde(default)]
        volume: Option<VolumeId>,
    },
    /// Change a group's desired count by `by` (negative: in), within its bounds
    /// (default: the group in the scope).
    Scale {
        by: i64,
        #[serde(default)]
        group: Option<String>,
    },
    /// Run a recipe in the instance.
    RunRecipe {
        recipe: String,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
    /// Reboot the instance.
    Reboot,
    /// Host scope: live-migrate the host's busiest instance (by CPU) to
    /// the host with the most headroom, instead of letting it overload.
    Rebalance,
    /// POST the firing (JSON) to a webhook.
    Notify { webhook: String },
}

/// `nubo policy apply -f FILE`: a policy document (created or replaced by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub scope: PolicyScope,
    pub condition: PolicyCondition,
    pub actions: Vec<PolicyAction>,
    /// After a firing, no new one for the same target for this long (e.g. `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
    /// Record what it would do, and do nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// While one breach lasts, fire again after each cooldown (step
    /// scaling: "-1 every 20 s while the group idles"). By default a policy
    /// fires once per breach.
    #[serde(default)]
    pub repeat: bool,
}

crate::state_enum! {
    /// Where one action of a policy firing is: `pending`, `running`,
    /// `succeeded`, `failed`, or `skipped` (dry run).
    pub enum ActionState("policy action") {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Skipped = "skipped",
    }
}

impl ActionState {
    /// It ended (any way) and never changes again.
    pub fn ended(self) -> bool {
        matches!(self, ActionState::Succeeded | ActionState::Failed | ActionState::Skipped)
    }

    /// Pending, then running (while its saga retries), then succeeded or
    /// failed; a dry run's actions are skipped from the start and never
    /// change.
    pub fn can_become(self, to: ActionState) -> bool {
        matches!(
            (self, to),
            (ActionState::Pending, ActionState::Running)
                | (ActionState::Running, ActionState::Running | ActionState::Succeeded | ActionState::Failed)
        )
    }
}

crate::state_enum! {
    /// Where a policy firing is: `running` until every action has ended,
    /// then `succeeded` or `failed` (a dry run is `succeeded` at once).
    pub enum FiringState("policy firing") {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl FiringState {
    /// A running firing ends once, either way; then it never changes.
    pub fn can_become(self, to: FiringState) -> bool {
        self == FiringState::Running && to != FiringState::Running
    }

    /// What a firing whose actions all ended became: failed if any of them
    /// failed.
    pub fn of_ended(actions: impl IntoIterator<Item = ActionState>) -> FiringState {
        if actions.into_iter().any(|a| a == ActionState::Failed) {
            FiringState::Failed
        } else {
            FiringState::Succeeded
        }
    }
}

/// What became of one action of a firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionOutcome {
    /// What it was, in words (`attach a new 100 GiB volume to i-...`).
    pub action: String,
    /// `pending`, `running`, `succeeded`, `failed`, or `skipped` (dry run).
    pub state: ActionState,
    pub attempts: u64,
    pub error: Option<String>,
    /// What it made or changed (a volume id, the new desired count...).
    pub result: Option<String>,
}

/// One firing of a policy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyFiring {
    pub id: String,
    pub policy: String,
    /// The instance (for `each`), or the scope.
    pub target: String,
    pub at_ms: i64,
    pub dry_run: bool,
    /// The values that caused it: resource -> value (and `aggregate` when aggregated).
    pub values: BTreeMap<String, f64>,
    /// `running` until every action has ended, then `succeeded` or `failed`.
    pub state: FiringState,
    pub actions: Vec<ActionOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub doc: PolicyDoc,
    /// Targets in breach now (the condition holds, or has not cleared yet).
    pub breaching: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The newest firings (show only).
    #[serde(default)]
    pub firings: Vec<PolicyFiring>,
}

/// A member's health as its group judges it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupMember {
    pub instance_id: InstanceId,
    pub state: crate::views::InstanceState,
    /// `healthy`, `starting`, or why it will be replaced.
    pub health: String,
}

/// Something a group did, and why.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupActivity {
    pub at_ms: i64,
    /// `launch`, `terminate`, `replace`, `desired`.
    pub kind: String,
    pub detail: String,
}

/// A health check every member gets; a member whose check goes HARD
/// CRITICAL is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupHealthCheck {
    /// `tcp` or `http`.
    pub kind: String,
    /// The guest port (it must be among the template's ports).
    pub port: u16,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub interval_secs: Option<u64>,
    #[serde(default)]
    pub max_attempts: Option<u64>,
}

/// Set the desired count at the times a cron expression gives (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSchedule {
    /// Five fields: minute hour day-of-month month day-of-week, e.g. `0 8 * * 1-5`.
    pub cron: String,
    pub desired: u32,
}

/// `POST /api/v1/groups` (or `nubo group create -f FILE`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    /// What each member is launched as (`name` is ignored: members are
    /// `<group>-<n>`). Give this or `launch_template`.
    #[serde(default)]
    pub template: Option<crate::params::InstanceCreate>,
    /// Launch members from a launch template instead: `NAME` or `lt-...`,
    /// with `:VERSION`, `:$Default` (the default) or `:$Latest`, resolved
    /// at each launch (so `$Default` follows the template's default).
    #[serde(default)]
    pub launch_template: Option<String>,
    pub min: u32,
    pub max: u32,
    /// Default: `min`.
    #[serde(default)]
    pub desired: Option<u32>,
    #[serde(default)]
    pub health_check: Option<GroupHealthCheck>,
    #[serde(default)]
    pub schedules: Vec<GroupSchedule>,
}

/// `POST /api/v1/groups/{name}/desired`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDesired {
    pub desired: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    /// What members are launched as (from a launch template: as its
    /// version resolved when the group was made).
    pub template: crate::params::InstanceCreate,
    /// The launch template members are launched from, when there is one.
    #[serde(default)]
    pub launch_template: Option<String>,
    pub health_check: Option<GroupHealthCheck>,
    pub schedules: Vec<GroupSchedule>,
    pub members: Vec<GroupMember>,
    /// Newest first (show only).
    #[serde(default)]
    pub activities: Vec<GroupActivity>,
    pub created_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_from_json() {
        let doc: PolicyDoc = serde_json::from_str(
            r#"{"name": "grow", "scope": {"tag": {"key": "role", "value": "db"}},
                "condition": {"metric": "fs_used_percent", "op": ">=", "threshold": 80, "for": "30s"},
                "actions": [{"attach_volume": {"size_gib": 100}}, "reboot", {"scale": {"by": -1}}]}"#,
        )
        .unwrap();
        assert_eq!(doc.condition.aggregate, "each");
        assert_eq!(doc.condition.hold.as_deref(), Some("30s"));
        assert_eq!(doc.actions[0], PolicyAction::AttachVolume { size_gib: 100 });
        assert_eq!(doc.actions[1], PolicyAction::Reboot);
        assert!(serde_json::from_str::<PolicyDoc>(
            r#"{"name": "x", "scope": {}, "condition": {}, "actions": [], "colour": 1}"#
        )
        .is_err());
    }
}
