//! How requests and replies travel: the port, one JSON object per line, the
//! 0xFF sentinel that resynchronises both parsers, the request and reply
//! envelopes, and the size limits both ends hold each other to.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of the virtio-serial port QEMU gives the agent's channel
/// (`virtserialport,name=...`); the agent finds its device by it.
pub const PORT_NAME: &str = "org.qemu.guest_agent.0";

/// The byte before the reply of `guest-sync-delimited`. A client sends it
/// too, before that command, so that the agent drops whatever half-written
/// request an earlier, vanished client left behind.
pub const SENTINEL: u8 = 0xFF;

/// Most output an agent keeps per stream of a `guest-exec` process
/// (qemu-ga's GUEST_EXEC_MAX_OUTPUT); beyond it the reply says
/// `out-truncated` / `err-truncated`.
pub const EXEC_OUTPUT_MAX: usize = 16 * 1024 * 1024;

/// Largest `count` of one `guest-file-read` (qemu-ga's QGA_READ_COUNT_MAX).
pub const FILE_READ_COUNT_MAX: i64 = 48 * 1024 * 1024;

/// The `count` of a `guest-file-read` that gives none.
pub const FILE_READ_COUNT_DEFAULT: i64 = 4096;

/// The error class of most failures (qemu-ga's `QERR_` generic class).
pub const GENERIC_ERROR: &str = "GenericError";

/// A request: `{"execute": NAME, "arguments": {...}}`. Commands without
/// arguments leave them out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Request<'a, A> {
    pub execute: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<A>,
}

/// One request line: the JSON of [`Request`] and a newline.
pub fn request_line<A: Serialize>(execute: &str, arguments: Option<A>) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(&Request { execute, arguments })?;
    line.push(b'\n');
    Ok(line)
}

/// A successful reply: `{"return": VALUE}`, with the request's `"id"`
/// echoed when it had one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReturnReply<T> {
    #[serde(rename = "return")]
    pub value: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

/// A failed command's reply: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: ErrorBody,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
}

/// What went wrong: QMP's error class (`GenericError`, `CommandNotFound`)
/// and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default = "generic_error")]
    pub class: String,
    #[serde(default)]
    pub desc: String,
}

fn generic_error() -> String {
    GENERIC_ERROR.to_string()
}

/// The `{}` that commands without a result return (`guest-ping`,
/// `guest-file-close`, `guest-file-flush`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExecReturn, SyncArgs};
    use serde_json::json;

    #[test]
    fn requests_are_one_line_and_leave_out_absent_arguments() {
        let line = request_line("guest-ping", None::<Empty>).expect("serialise");
        assert_eq!(line, b"{\"execute\":\"guest-ping\"}\n");
        let line = request_line("guest-sync-delimited", Some(SyncArgs { id: 1234 })).expect("serialise");
        assert_eq!(line, b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1234}}\n");
    }

    #[test]
    fn return_and_error_replies_round_trip() {
        let text = r#"{"return": {"pid": 123}}"#;
        let reply: ReturnReply<ExecReturn> = serde_json::from_str(text).expect("parse");
        assert_eq!(reply, ReturnReply { value: ExecReturn { pid: 123 }, id: None });
        assert_eq!(serde_json::to_value(&reply).expect("serialise"), json!({"return": {"pid": 123}}));

        let with_id = ReturnReply { value: Empty {}, id: Some(json!("abc")) };
        assert_eq!(serde_json::to_value(&with_id).expect("serialise"), json!({"return": {}, "id": "abc"}));

        let text = r#"{"error": {"class": "CommandNotFound", "desc": "The command guest-x has not been found"}}"#;
        let reply: ErrorReply = serde_json::from_str(text).expect("parse");
        assert_eq!(reply.error.class, "CommandNotFound");
        assert_eq!(
            serde_json::to_value(&reply).expect("serialise"),
            serde_json::from_str::<Value>(text).expect("json")
        );
    }

    #[test]
    fn an_error_without_class_is_generic() {
        let reply: ErrorReply = serde_json::from_str(r#"{"error": {"desc": "failed"}}"#).expect("parse");
        assert_eq!(reply.error, ErrorBody { class: GENERIC_ERROR.into(), desc: "failed".into() });
    }
}
