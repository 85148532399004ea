//! The command table and the agent's state: which QGA commands exist, how
//! their arguments are parsed, the open-file handles and the file-system
//! freeze (which disables most commands while it lasts). Argument and
//! return shapes follow QEMU's qga/qapi-schema.json, so host tools written
//! for the stock qemu-ga work unchanged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::exec::Processes;
use crate::fsfreeze::{self, Freezer};
use crate::{disks, sysinfo};

/// Largest `count` accepted by `guest-file-read` (qemu-ga's QGA_READ_COUNT_MAX).
const READ_COUNT_MAX: i64 = 48 * 1024 * 1024;
/// Default `count` of `guest-file-read`.
const READ_COUNT_DEFAULT: i64 = 4096;
/// First file handle; qemu-ga starts its persistent counter at 1000 too.
const FIRST_HANDLE: i64 = 1000;

/// Every command, with qemu-ga's `success-response` flag (false for the
/// commands that do not answer when they succeed).
pub const COMMANDS: &[(&str, bool)] = &[
    ("guest-sync-delimited", true),
    ("guest-sync", true),
    ("guest-ping", true),
    ("guest-info", true),
    ("guest-exec", true),
    ("guest-exec-status", true),
    ("guest-file-open", true),
    ("guest-file-close", true),
    ("guest-file-read", true),
    ("guest-file-write", true),
    ("guest-file-seek", true),
    ("guest-file-flush", true),
    ("guest-get-fsinfo", true),
    ("guest-get-osinfo", true),
    ("guest-network-get-interfaces", true),
    ("guest-get-disks", true),
    ("guest-fsfreeze-status", true),
    ("guest-fsfreeze-freeze", true),
    ("guest-fsfreeze-thaw", true),
    ("guest-shutdown", false),
];

/// A QGA error: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QgaError {
    pub class: &'static str,
    pub desc: String,
}

impl QgaError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QgaError { class: "GenericError", desc: desc.into() }
    }
}

/// What a command produced.
#[derive(Debug)]
pub enum Outcome {
    Return(Value),
    /// A `return` preceded by the 0xFF sentinel (guest-sync-delimited).
    Delimited(Value),
    Error(QgaError),
    /// Success of a command that sends no reply (guest-shutdown).
    NoReply,
}

/// Runs the power command for a `guest-shutdown` mode; swapped out in tests.
pub type ShutdownFn = fn(&str) -> Result<(), QgaError>;

/// The agent's state across requests and host connections.
pub struct Agent {
    files: HashMap<i64, File>,
    next_handle: i64,
    processes: Processes,
    shutdown: ShutdownFn,
    freezer: Freezer,
}

impl Agent {
    pub fn new(shutdown: ShutdownFn, freezer: Freezer) -> Self {
        Agent { files: HashMap::new(), next_handle: FIRST_HANDLE, processes: Processes::default(), shutdown, freezer }
    }

    pub fn dispatch(&mut self, command: &str, args: Value) -> Outcome {
        // Like qemu-ga: unknown commands are "not found" even while frozen;
        // known ones outside the allow-list are refused until the thaw.
        if self.freezer.is_frozen()
            && !fsfreeze::ALLOWED_WHILE_FROZEN.contains(&command)
            && COMMANDS.iter().any(|(name, _)| *name == command)
        {
            return Outcome::Error(fsfreeze::disabled(command));
        }
        let result = match command {
            "guest-sync-delimited" => {
                return match sync(args) {
                    Ok(v) => Outcome::Delimited(v),
                    Err(e) => Outcome::Error(e),
                }
            }
            "guest-sync" => sync(args),
            "guest-ping" => no_args(args).map(|()| json!({})),
            "guest-info" => no_args(args).map(|()| info(self.freezer.is_frozen())),
            "guest-exec" => parse(args).and_then(|a| self.processes.exec(a)),
            "guest-exec-status" => parse::<Pid>(args).and_then(|a| self.processes.status(a.pid)),
            "guest-file-open" => parse(args).and_then(|a| self.file_open(a)),
            "guest-file-close" => parse::<Handle>(args).and_then(|a| self.file_close(a.handle)),
            "guest-file-read" => parse(args).and_then(|a| self.file_read(a)),
            "guest-file-write" => parse(args).and_then(|a| self.file_write(a)),
            "guest-file-seek" => parse(args).and_then(|a| self.file_seek(a)),
            "guest-file-flush" => parse::<Handle>(args).and_then(|a| self.file_flush(a.handle)),
            "guest-get-fsinfo" => no_args(args).and_then(|()| sysinfo::fsinfo()),
            "guest-get-osinfo" => no_args(args).map(|()| sysinfo::osinfo()),
            "guest-network-get-interfaces" => no_args(args).and_then(|()| sysinfo::network_interfaces()),
            "guest-get-disks" => no_args(args).and_then(|()| disks::disks()),
            "guest-fsfreeze-status" => no_args(args).map(|()| self.freezer.status()),
            "guest-fsfreeze-freeze" => no_args(args).and_then(|()| self.freezer.freeze()),
            "guest-fsfreeze-thaw" => no_args(args).and_then(|()| self.freezer.thaw()),
            "guest-shutdown" => {
                return match parse::<ShutdownArgs>(args).and_then(|a| self.shutdown(a)) {
                    Ok(()) => Outcome::NoReply,
                    Err(e) => Outcome::Error(e),
                }
            }
            _ => Err(QgaError { class: "CommandNotFound", desc: format!("The command {command} has not been found") }),
        };
        match result {
            Ok(v) => Outcome::Return(v),
            Err(e) => Outcome::Error(e),
        }
    }

    fn handle(&mut self, handle: i64) -> Result<&mut File, QgaError> {
        self.files.get_mut(&handle).ok_or_else(|| QgaError::generic(format!("handle '{handle}' has not been found")))
    }

    fn file_open(&mut self, a: OpenArgs) -> Result<Value, QgaError> {
        let mode = a.mode.as_deref().unwrap_or("r");
        let opts = open_options(mode).ok_or_else(|| QgaError::generic(format!("invalid file open mode '{mode}'")))?;
        let file = opts
            .open(&a.path)
            .map_err(|e| QgaError::generic(format!("failed to open file '{}' (mode: '{mode}'): {e}", a.path)))?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.files.insert(handle, file);
        Ok(json!(handle))
    }

    fn file_close(&mut self, handle: i64) -> Result<Value, QgaError> {
        match self.files.remove(&handle) {
            Some(_) => Ok(json!({})),
            None => Err(QgaError::generic(format!("handle '{handle}' has not been found"))),
        }
    }

    fn file_read(&mut self, a: ReadArgs) -> Result<Value, QgaError> {
        let count = a.count.unwrap_or(READ_COUNT_DEFAULT);
        if !(0..=READ_COUNT_MAX).contains(&count) {
            return Err(QgaError::generic(format!("value '{count}' is invalid for argument count")));
        }
        let file = self.handle(a.handle)?;
        let mut data = vec![0u8; count as usize];
        let mut got = 0;
        let mut eof = false;
        while got < data.len() {
            match file.read(&mut data[got..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(QgaError::generic(format!("failed to read file: {e}"))),
            }
        }
        data.truncate(got);
        Ok(json!({ "count": got, "buf-b64": B64.encode(&data), "eof": eof }))
    }

    fn file_write(&mut self, a: WriteArgs) -> Result<Value, QgaError> {
        let data =
            B64.decode(a.buf_b64.as_bytes()).map_err(|e| QgaError::generic(format!("invalid base64 data: {e}")))?;
        let count = match a.count {
            None => data.len(),
            Some(c) if c >= 0 && (c as u64) <= data.len() as u64 => c as usize,
            Some(c) => return Err(QgaError::generic(format!("value '{c}' is invalid for argument count"))),
        };
        let file = self.handle(a.handle)?;
        file.write_all(&data[..count]).map_err(|e| QgaError::generic(format!("failed to write to file: {e}")))?;
        Ok(json!({ "count": count, "eof": false }))
    }

    fn file_seek(&mut self, a: SeekArgs) -> Result<Value, QgaError> {
        let whence = match &a.whence {
            Whence::Int(0) => SeekFrom::Start(0),
            Whence::Int(1) => SeekFrom::Current(0),
            Whence::Int(2) => SeekFrom::End(0),
            Whence::Name(n) if n == "set" => SeekFrom::Start(0),
            Whence::Name(n) if n == "cur" => SeekFrom::Current(0),
            Whence::Name(n) if n == "end" => SeekFrom::End(0),
            other => return Err(QgaError::generic(format!("invalid whence code {other:?}"))),
        };
        let pos = match whence {
            SeekFrom::Start(_) => {
                let off = u64::try_from(a.offset)
                    .map_err(|_| QgaError::generic(format!("value '{}' is invalid for argument offset", a.offset)))?;
                SeekFrom::Start(off)
            }
            SeekFrom::Current(_) => SeekFrom::Current(a.offset),
            SeekFrom::End(_) => SeekFrom::End(a.offset),
        };
        let file = self.handle(a.handle)?;
        let position = file.seek(pos).map_err(|e| QgaError::generic(format!("failed to seek file: {e}")))?;
        Ok(json!({ "position": position, "eof": false }))
    }

    fn file_flush(&mut self, handle: i64) -> Result<Value, QgaError> {
        let file = self.handle(handle)?;
        file.flush().map_err(|e| QgaError::generic(format!("failed to flush file: {e}")))?;
        Ok(json!({}))
    }

    fn shutdown(&mut self, a: ShutdownArgs) -> Result<(), QgaError> {
        let mode = a.mode.as_deref().unwrap_or("powerdown");
        if !matches!(mode, "powerdown" | "halt" | "reboot") {
            return Err(QgaError::generic(format!("Parameter 'mode' does not accept value '{mode}'")));
        }
        (self.shutdown)(mode)
    }
}

/// fopen(3)-style mode string to open options.
fn open_options(mode: &str) -> Option<OpenOptions> {
    let mut o = OpenOptions::new();
    match mode.replace('b', "").as_str() {
        "r" => o.read(true),
        "r+" => o.read(true).write(true),
        "w" => o.write(true).create(true).truncate(true),
        "w+" => o.read(true).write(true).create(true).truncate(true),
        "a" => o.append(true).create(true),
        "a+" => o.read(true).append(true).create(true),
        _ => return None,
    };
    Some(o)
}

fn sync(args: Value) -> Result<Value, QgaError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sync {
        id: i64,
    }
    parse::<Sync>(args).map(|s| json!(s.id))
}

/// `guest-info`; while frozen, as in qemu-ga, only the commands that still
/// run are `enabled`.
fn info(frozen: bool) -> Value {
    let commands: Vec<Value> = COMMANDS
        .iter()
        .map(|(name, success)| {
            let enabled = !frozen || fsfreeze::ALLOWED_WHILE_FROZEN.contains(name);
            json!({ "name": name, "enabled": enabled, "success-response": success })
        })
        .collect();
    json!({ "version": env!("CARGO_PKG_VERSION"), "supported_commands": commands })
}

fn no_args(args: Value) -> Result<(), QgaError> {
    match args.as_object().and_then(|m| m.keys().next()) {
        Some(key) => Err(QgaError::generic(format!("Parameter '{key}' is unexpected"))),
        None => Ok(()),
    }
}

/// Parses a command's arguments, turning serde's messages into qemu-ga's wording.
fn parse<T: DeserializeOwned>(args: Value) -> Result<T, QgaError> {
    serde_json::from_value(args).map_err(|e| {
        let msg = e.to_string();
        let quoted = |prefix: &str| msg.strip_prefix(prefix).and_then(|r| r.split('`').next()).map(str::to_string);
        if let Some(field) = quoted("missing field `") {
            QgaError::generic(format!("Parameter '{field}' missing"))
        } else if let Some(field) = quoted("unknown field `") {
            QgaError::generic(format!("Parameter '{field}' is unexpected"))
        } else {
            QgaError::generic(format!("Invalid parameter: {msg}"))
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pid {
    pid: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Handle {
    handle: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenArgs {
    path: String,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    handle: i64,
    count: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    handle: i64,
    #[serde(rename = "buf-b64")]
    buf_b64: String,
    count: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Whence {
    Int(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeekArgs {
    handle: i64,
    offset: i64,
    whence: Whence,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownArgs {
    mode: Option<String>,
}
