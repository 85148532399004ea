//! `guest-file-*`: files in the guest, opened by the agent and named by
//! the handle it returns.

use serde::{Deserialize, Serialize};

/// `guest-file-open`'s arguments; the reply is the handle, a bare integer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOpenArgs {
    pub path: String,
    /// An fopen(3) mode (`r`, `w`, `a`, `r+`, ...); no mode is `r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// The arguments of the commands that take only a handle
/// (`guest-file-close`, `guest-file-flush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandleArgs {
    pub handle: i64,
}

/// `guest-file-read`'s arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReadArgs {
    pub handle: i64,
    /// At most [`crate::FILE_READ_COUNT_MAX`]; no count is [`crate::FILE_READ_COUNT_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// `guest-file-read`'s reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FileReadReturn {
    #[serde(default)]
    pub count: u64,
    /// Base64 of the bytes read.
    pub buf_b64: String,
    #[serde(default)]
    pub eof: bool,
}

/// `guest-file-write`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileWriteArgs {
    pub handle: i64,
    /// Base64 of the bytes to write.
    pub buf_b64: String,
    /// Write only the first `count` bytes; no count writes them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

/// `guest-file-write`'s reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWriteReturn {
    pub count: u64,
    #[serde(default)]
    pub eof: bool,
}

/// `guest-file-seek`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSeekArgs {
    pub handle: i64,
    pub offset: i64,
    pub whence: Whence,
}

/// The schema's GuestFileWhence: lseek(2)'s 0, 1, 2, or `set`, `cur`,
/// `end`. Kept as sent; the agent refuses values it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Whence {
    Int(i64),
    Name(String),
}

/// `guest-file-seek`'s reply: the new position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSeekReturn {
    pub position: u64,
    #[serde(default)]
    pub eof: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::round_trip;
    use serde_json::json;

    #[test]
    fn arguments_as_a_client_sends_them() {
        round_trip(
            json!({"path": "/tmp/x", "mode": "w"}),
            FileOpenArgs { path: "/tmp/x".into(), mode: Some("w".into()) },
        );
        round_trip(json!({"path": "/etc/hostname"}), FileOpenArgs { path: "/etc/hostname".into(), mode: None });
        round_trip(json!({"handle": 1000}), HandleArgs { handle: 1000 });
        round_trip(json!({"handle": 1000, "count": 1048576}), FileReadArgs { handle: 1000, count: Some(1 << 20) });
        round_trip(json!({"handle": 1000}), FileReadArgs { handle: 1000, count: None });
        round_trip(
            json!({"handle": 1001, "buf-b64": "aGVsbG8="}),
            FileWriteArgs { handle: 1001, buf_b64: "aGVsbG8=".into(), count: None },
        );
        round_trip(
            json!({"handle": 1001, "offset": -2, "whence": "end"}),
            FileSeekArgs { handle: 1001, offset: -2, whence: Whence::Name("end".into()) },
        );
        round_trip(
            json!({"handle": 1001, "offset": 6, "whence": 0}),
            FileSeekArgs { handle: 1001, offset: 6, whence: Whence::Int(0) },
        );
        let err = serde_json::from_value::<FileWriteArgs>(json!({"handle": 1, "buf": "x"})).expect_err("bad member");
        assert!(err.to_string().starts_with("unknown field `buf`"), "{err}");
    }

    #[test]
    fn replies_as_qemu_ga_sends_them() {
        round_trip(
            json!({"count": 5, "buf-b64": "d29ybGQ=", "eof": true}),
            FileReadReturn { count: 5, buf_b64: "d29ybGQ=".into(), eof: true },
        );
        round_trip(json!({"count": 11, "eof": false}), FileWriteReturn { count: 11, eof: false });
        round_trip(json!({"position": 6, "eof": false}), FileSeekReturn { position: 6, eof: false });
        let handle: i64 = serde_json::from_value(json!(1000)).expect("a handle is a bare integer");
        assert_eq!(handle, 1000);
        assert!(serde_json::from_value::<FileReadReturn>(json!({"count": 1, "eof": true})).is_err(), "no data");
    }
}
