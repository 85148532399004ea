//! The commands that steer the agent rather than the guest's files or
//! processes: `guest-sync(-delimited)`, the file-system freeze and
//! `guest-shutdown`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `guest-sync` and `guest-sync-delimited`: the agent returns `id`, so a
/// client can tell the reply to its own sync from stale ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncArgs {
    pub id: i64,
}

/// The reply of `guest-fsfreeze-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsfreezeStatus {
    Thawed,
    Frozen,
}

impl FsfreezeStatus {
    pub const fn name(self) -> &'static str {
        match self {
            FsfreezeStatus::Thawed => "thawed",
            FsfreezeStatus::Frozen => "frozen",
        }
    }
}

/// `guest-shutdown`'s arguments; no mode is `powerdown`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ShutdownMode>,
}

/// `guest-shutdown` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ShutdownMode {
    Powerdown,
    Halt,
    Reboot,
}

impl ShutdownMode {
    pub const fn name(self) -> &'static str {
        match self {
            ShutdownMode::Powerdown => "powerdown",
            ShutdownMode::Halt => "halt",
            ShutdownMode::Reboot => "reboot",
        }
    }
}

impl TryFrom<String> for ShutdownMode {
    type Error = UnknownValue;

    fn try_from(mode: String) -> Result<Self, Self::Error> {
        [ShutdownMode::Powerdown, ShutdownMode::Halt, ShutdownMode::Reboot]
            .into_iter()
            .find(|m| m.name() == mode)
            .ok_or(UnknownValue { parameter: "mode", value: mode })
    }
}

/// A value an enum-typed argument does not accept, worded as qemu-ga words
/// it, so a client sees the same message from either agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub parameter: &'static str,
    pub value: String,
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parameter '{}' does not accept value '{}'", self.parameter, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn sync_round_trips_and_refuses_strangers() {
        let wire = json!({"id": 2_147_483_647});
        let args: SyncArgs = serde_json::from_value(wire.clone()).expect("parse");
        assert_eq!(args, SyncArgs { id: 2_147_483_647 });
        assert_eq!(serde_json::to_value(args).expect("serialise"), wire);
        let err = serde_json::from_value::<SyncArgs>(json!({"id": 1, "x": 2})).expect_err("unknown member");
        assert!(err.to_string().starts_with("unknown field `x`"), "{err}");
    }

    #[test]
    fn fsfreeze_status_is_a_lowercase_word() {
        for (status, wire) in [(FsfreezeStatus::Thawed, "thawed"), (FsfreezeStatus::Frozen, "frozen")] {
            assert_eq!(serde_json::to_value(status).expect("serialise"), json!(wire));
            assert_eq!(serde_json::from_value::<FsfreezeStatus>(json!(wire)).expect("parse"), status);
            assert_eq!(status.name(), wire);
        }
        assert!(serde_json::from_value::<FsfreezeStatus>(json!("melting")).is_err());
    }

    #[test]
    fn shutdown_modes_round_trip_and_unknown_ones_are_named() {
        for (mode, wire) in
            [(ShutdownMode::Powerdown, "powerdown"), (ShutdownMode::Halt, "halt"), (ShutdownMode::Reboot, "reboot")]
        {
            let args = ShutdownArgs { mode: Some(mode) };
            let value = json!({"mode": wire});
            assert_eq!(serde_json::to_value(args).expect("serialise"), value);
            assert_eq!(serde_json::from_value::<ShutdownArgs>(value).expect("parse"), args);
        }
        assert_eq!(serde_json::to_value(ShutdownArgs::default()).expect("serialise"), json!({}));
        assert_eq!(serde_json::from_value::<ShutdownArgs>(json!({})).expect("parse"), ShutdownArgs { mode: None });
        let err = serde_json::from_value::<ShutdownArgs>(json!({"mode": "explode"})).expect_err("bad mode");
        assert_eq!(err.to_string(), "Parameter 'mode' does not accept value 'explode'");
        assert!(serde_json::from_value::<ShutdownArgs>(Value::Null).is_err());
    }
}
