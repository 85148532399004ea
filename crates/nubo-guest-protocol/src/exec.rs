//! `guest-exec` and `guest-exec-status`: starting a process in the guest
//! and collecting its exit status and output.

use serde::{Deserialize, Serialize};

use crate::control::UnknownValue;

/// `guest-exec`'s arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecArgs {
    /// The program; looked up in the guest's PATH when it has no `/`.
    pub path: String,
    #[serde(default)]
    pub arg: Vec<String>,
    /// `NAME=value` entries; when given, they replace the whole environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Base64 of what the process reads on stdin (otherwise /dev/null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_output: Option<CaptureOutput>,
}

/// `capture-output`: a bool before QEMU 8.1 (true: stdout and stderr
/// apart), a [`CaptureMode`] since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawCapture")]
pub enum CaptureOutput {
    Flag(bool),
    Mode(CaptureMode),
}

impl CaptureOutput {
    /// The mode a flag stands for.
    pub fn mode(self) -> CaptureMode {
        match self {
            CaptureOutput::Flag(true) => CaptureMode::Separated,
            CaptureOutput::Flag(false) => CaptureMode::None,
            CaptureOutput::Mode(m) => m,
        }
    }
}

/// The schema's GuestExecCaptureOutputMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    None,
    Stdout,
    Stderr,
    /// stdout and stderr, each on its own.
    Separated,
    /// stderr into stdout, as one stream (`out-data`).
    Merged,
}

impl CaptureMode {
    const ALL: [CaptureMode; 5] =
        [CaptureMode::None, CaptureMode::Stdout, CaptureMode::Stderr, CaptureMode::Separated, CaptureMode::Merged];

    pub const fn name(self) -> &'static str {
        match self {
            CaptureMode::None => "none",
            CaptureMode::Stdout => "stdout",
            CaptureMode::Stderr => "stderr",
            CaptureMode::Separated => "separated",
            CaptureMode::Merged => "merged",
        }
    }
}

/// `capture-output` as it comes, before the mode's name is checked, so an
/// unknown name is refused in qemu-ga's words ([`UnknownValue`]).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawCapture {
    Flag(bool),
    Mode(String),
}

impl TryFrom<RawCapture> for CaptureOutput {
    type Error = UnknownValue;

    fn try_from(raw: RawCapture) -> Result<Self, Self::Error> {
        match raw {
            RawCapture::Flag(flag) => Ok(CaptureOutput::Flag(flag)),
            RawCapture::Mode(name) => CaptureMode::ALL
                .into_iter()
                .find(|m| m.name() == name)
                .map(CaptureOutput::Mode)
                .ok_or(UnknownValue { parameter: "capture-output", value: name }),
        }
    }
}

/// `guest-exec`'s reply: the process id in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReturn {
    pub pid: i64,
}

/// `guest-exec-status`'s arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStatusArgs {
    pub pid: i64,
}

/// `guest-exec-status`'s reply. Until `exited`, nothing else is set; once
/// an agent has said `exited`, it forgets the pid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ExecStatus {
    pub exited: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitcode: Option<i32>,
    /// The signal that ended the process, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Base64 of the captured stdout, when there was any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_data: Option<String>,
    /// More than [`crate::EXEC_OUTPUT_MAX`] was written; the rest was dropped.
    #[serde(default, skip_serializing_if = "is_false")]
    pub out_truncated: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub err_truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::round_trip;
    use serde_json::json;

    #[test]
    fn exec_arguments_as_a_client_sends_them() {
        round_trip(
            json!({"path": "/bin/sh", "arg": ["-c", "true"], "capture-output": true}),
            ExecArgs {
                path: "/bin/sh".into(),
                arg: vec!["-c".into(), "true".into()],
                capture_output: Some(CaptureOutput::Flag(true)),
                ..Default::default()
            },
        );
        round_trip(
            json!({"path": "cat", "arg": [], "env": ["A=1"], "input-data": "aGkK", "capture-output": "merged"}),
            ExecArgs {
                path: "cat".into(),
                arg: vec![],
                env: Some(vec!["A=1".into()]),
                input_data: Some("aGkK".into()),
                capture_output: Some(CaptureOutput::Mode(CaptureMode::Merged)),
            },
        );
        // `arg` may be left out.
        let args: ExecArgs = serde_json::from_value(json!({"path": "/bin/true"})).expect("parse");
        assert_eq!(args, ExecArgs { path: "/bin/true".into(), ..Default::default() });
    }

    #[test]
    fn every_capture_mode_and_the_old_flag() {
        for mode in CaptureMode::ALL {
            round_trip(json!(mode.name()), CaptureOutput::Mode(mode));
            assert_eq!(CaptureOutput::Mode(mode).mode(), mode);
        }
        assert_eq!(CaptureOutput::Flag(true).mode(), CaptureMode::Separated);
        assert_eq!(CaptureOutput::Flag(false).mode(), CaptureMode::None);
        let err = serde_json::from_value::<CaptureOutput>(json!("sideways")).expect_err("unknown mode");
        assert_eq!(err.to_string(), "Parameter 'capture-output' does not accept value 'sideways'");
        assert!(serde_json::from_value::<CaptureOutput>(json!(3)).is_err());
    }

    #[test]
    fn exec_arguments_refuse_unknown_members() {
        let err = serde_json::from_value::<ExecArgs>(json!({"path": "/bin/true", "argv": []})).expect_err("unknown");
        assert!(err.to_string().starts_with("unknown field `argv`"), "{err}");
        let err = serde_json::from_value::<ExecArgs>(json!({"arg": []})).expect_err("no path");
        assert!(err.to_string().starts_with("missing field `path`"), "{err}");
    }

    #[test]
    fn exec_and_status_replies_as_qemu_ga_sends_them() {
        round_trip(json!({"pid": 123}), ExecReturn { pid: 123 });
        round_trip(json!({"pid": 4242}), ExecStatusArgs { pid: 4242 });
        round_trip(json!({"exited": false}), ExecStatus::default());
        round_trip(
            json!({"exited": true, "exitcode": 0, "out-data": "aGkK", "err-data": "b29wcwo=", "err-truncated": true}),
            ExecStatus {
                exited: true,
                exitcode: Some(0),
                out_data: Some("aGkK".into()),
                err_data: Some("b29wcwo=".into()),
                err_truncated: true,
                ..Default::default()
            },
        );
        round_trip(
            json!({"exited": true, "signal": 9}),
            ExecStatus { exited: true, signal: Some(9), ..Default::default() },
        );
        // qemu-ga 7.2 writes `"out-truncated": false` too; a newer one may add members.
        let stock: ExecStatus = serde_json::from_value(
            json!({"exited": true, "exitcode": 1, "out-truncated": false, "err-truncated": false, "new-member": 1}),
        )
        .expect("parse");
        assert_eq!(stock, ExecStatus { exited: true, exitcode: Some(1), ..Default::default() });
        assert!(serde_json::from_value::<ExecStatus>(json!({"exitcode": 1})).is_err(), "exited is mandatory");
    }
}
