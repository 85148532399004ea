//! The command table and the agent's state: how each QGA command of
//! [`nubo_guest_protocol::Command`] is served, the open-file handles and
//! the file-system freeze (which disables most commands while it lasts).
//! Argument and reply shapes are `nubo_guest_protocol`'s, which follow
//! QEMU's qga/qapi-schema.json, so host tools written for the stock qemu-ga
//! work unchanged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nubo_guest_protocol::{
    Command, CommandInfo, Empty, ExecStatusArgs, FileOpenArgs, FileReadArgs, FileReadReturn, FileSeekArgs,
    FileSeekReturn, FileWriteArgs, FileWriteReturn, GuestInfo, HandleArgs, ShutdownArgs, ShutdownMode, SyncArgs,
    Whence, FILE_READ_COUNT_DEFAULT, FILE_READ_COUNT_MAX, GENERIC_ERROR,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::exec::Processes;
use crate::fsfreeze::{self, Freezer};
use crate::{disks, sysinfo};

/// First file handle; qemu-ga starts its persistent counter at 1000 too.
const FIRST_HANDLE: i64 = 1000;

/// The error class of a command the agent does not know, or has disabled.
pub const COMMAND_NOT_FOUND: &str = "CommandNotFound";

/// A QGA error: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QgaError {
    pub class: &'static str,
    pub desc: String,
}

impl QgaError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QgaError { class: GENERIC_ERROR, desc: desc.into() }
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
pub type ShutdownFn = fn(ShutdownMode) -> Result<(), QgaError>;

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
        let Some(command) = Command::from_name(command) else {
            return Outcome::Error(QgaError {
                class: COMMAND_NOT_FOUND,
                desc: format!("The command {command} has not been found"),
            });
        };
        if self.freezer.is_frozen() && !fsfreeze::ALLOWED_WHILE_FROZEN.contains(&command) {
            return Outcome::Error(fsfreeze::disabled(command));
        }
        // Every command is matched here: one added to the protocol does not
        // build until the agent serves it.
        let result = match command {
            Command::SyncDelimited => {
                return match parse::<SyncArgs>(args).and_then(|a| reply(a.id)) {
                    Ok(v) => Outcome::Delimited(v),
                    Err(e) => Outcome::Error(e),
                }
            }
            Command::Sync => parse::<SyncArgs>(args).and_then(|a| reply(a.id)),
            Command::Ping => no_args(args).and_then(|()| reply(Empty {})),
            Command::Info => no_args(args).and_then(|()| reply(info(self.freezer.is_frozen()))),
            Command::Exec => parse(args).and_then(|a| self.processes.exec(a)).and_then(reply),
            Command::ExecStatus => {
                parse::<ExecStatusArgs>(args).and_then(|a| self.processes.status(a.pid)).and_then(reply)
            }
            Command::FileOpen => parse(args).and_then(|a| self.file_open(a)).and_then(reply),
            Command::FileClose => parse::<HandleArgs>(args).and_then(|a| self.file_close(a.handle)).and_then(reply),
            Command::FileRead => parse(args).and_then(|a| self.file_read(a)).and_then(reply),
            Command::FileWrite => parse(args).and_then(|a| self.file_write(a)).and_then(reply),
            Command::FileSeek => parse(args).and_then(|a| self.file_seek(a)).and_then(reply),
            Command::FileFlush => parse::<HandleArgs>(args).and_then(|a| self.file_flush(a.handle)).and_then(reply),
            Command::GetFsinfo => no_args(args).and_then(|()| sysinfo::fsinfo()).and_then(reply),
            Command::GetOsinfo => no_args(args).and_then(|()| reply(sysinfo::osinfo())),
            Command::NetworkGetInterfaces => no_args(args).and_then(|()| sysinfo::network_interfaces()).and_then(reply),
            Command::GetDisks => no_args(args).and_then(|()| disks::disks()).and_then(reply),
            Command::FsfreezeStatus => no_args(args).and_then(|()| reply(self.freezer.status())),
            Command::FsfreezeFreeze => no_args(args).and_then(|()| self.freezer.freeze()).and_then(reply),
            Command::FsfreezeThaw => no_args(args).and_then(|()| self.freezer.thaw()).and_then(reply),
            Command::Shutdown => {
                return match parse::<ShutdownArgs>(args).and_then(|a| self.shutdown(a)) {
                    Ok(()) => Outcome::NoReply,
                    Err(e) => Outcome::Error(e),
                }
            }
        };
        match result {
            Ok(v) => Outcome::Return(v),
            Err(e) => Outcome::Error(e),
        }
    }

    fn handle(&mut self, handle: i64) -> Result<&mut File, QgaError> {
        self.files.get_mut(&handle).ok_or_else(|| QgaError::generic(format!("handle '{handle}' has not been found")))
    }

    fn file_open(&mut self, a: FileOpenArgs) -> Result<i64, QgaError> {
        let mode = a.mode.as_deref().unwrap_or("r");
        let opts = open_options(mode).ok_or_else(|| QgaError::generic(format!("invalid file open mode '{mode}'")))?;
        let file = opts
            .open(&a.path)
            .map_err(|e| QgaError::generic(format!("failed to open file '{}' (mode: '{mode}'): {e}", a.path)))?;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.files.insert(handle, file);
        Ok(handle)
    }

    fn file_close(&mut self, handle: i64) -> Result<Empty, QgaError> {
        match self.files.remove(&handle) {
            Some(_) => Ok(Empty {}),
            None => Err(QgaError::generic(format!("handle '{handle}' has not been found"))),
        }
    }

    fn file_read(&mut self, a: FileReadArgs) -> Result<FileReadReturn, QgaError> {
        let count = a.count.unwrap_or(FILE_READ_COUNT_DEFAULT);
        if !(0..=FILE_READ_COUNT_MAX).contains(&count) {
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
        Ok(FileReadReturn { count: got as u64, buf_b64: B64.encode(&data), eof })
    }

    fn file_write(&mut self, a: FileWriteArgs) -> Result<FileWriteReturn, QgaError> {
        let data =
            B64.decode(a.buf_b64.as_bytes()).map_err(|e| QgaError::generic(format!("invalid base64 data: {e}")))?;
        let count = match a.count {
            None => data.len(),
            Some(c) if c >= 0 && (c as u64) <= data.len() as u64 => c as usize,
            Some(c) => return Err(QgaError::generic(format!("value '{c}' is invalid for argument count"))),
        };
        let file = self.handle(a.handle)?;
        file.write_all(&data[..count]).map_err(|e| QgaError::generic(format!("failed to write to file: {e}")))?;
        Ok(FileWriteReturn { count: count as u64, eof: false })
    }

    fn file_seek(&mut self, a: FileSeekArgs) -> Result<FileSeekReturn, QgaError> {
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
        Ok(FileSeekReturn { position, eof: false })
    }

    fn file_flush(&mut self, handle: i64) -> Result<Empty, QgaError> {
        let file = self.handle(handle)?;
        file.flush().map_err(|e| QgaError::generic(format!("failed to flush file: {e}")))?;
        Ok(Empty {})
    }

    fn shutdown(&mut self, a: ShutdownArgs) -> Result<(), QgaError> {
        (self.shutdown)(a.mode.unwrap_or(ShutdownMode::Powerdown))
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

/// `guest-info`; while frozen, as in qemu-ga, only the commands that still
/// run are `enabled`.
fn info(frozen: bool) -> GuestInfo {
    let supported_commands = Command::ALL
        .into_iter()
        .map(|c| CommandInfo {
            name: c.name().to_string(),
            enabled: !frozen || fsfreeze::ALLOWED_WHILE_FROZEN.contains(&c),
            success_response: c.success_response(),
        })
        .collect();
    GuestInfo { version: env!("CARGO_PKG_VERSION").to_string(), supported_commands }
}

/// A command's result as the `return` value of its reply.
fn reply<T: Serialize>(result: T) -> Result<Value, QgaError> {
    serde_json::to_value(result).map_err(|e| QgaError::generic(format!("cannot encode the reply: {e}")))
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
        if msg.starts_with("Parameter '") {
            // Already in qemu-ga's words (an enum value it does not accept).
            QgaError::generic(msg)
        } else if let Some(field) = quoted("missing field `") {
            QgaError::generic(format!("Parameter '{field}' missing"))
        } else if let Some(field) = quoted("unknown field `") {
            QgaError::generic(format!("Parameter '{field}' is unexpected"))
        } else {
            QgaError::generic(format!("Invalid parameter: {msg}"))
        }
    })
}
