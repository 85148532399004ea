//! A small typed QEMU Guest Agent (QGA) client over the VM's `qga.sock`.
//!
//! It owns one connection to the agent in the guest (`nubo-guest-agent` or
//! the stock qemu-ga, which speak the same protocol): the resynchronisation
//! on connect (`guest-sync-delimited` with a random id, discarding whatever
//! an earlier client left in the channel up to the 0xFF sentinel), typed
//! commands, and a timeout on every call.
//!
//! The commands, their arguments and replies are `nubo_guest_protocol`'s,
//! the same types the in-guest agent serves; this module turns them into
//! the host's views ([`GuestExecStatus`], [`GuestDisk`], ...) and decodes
//! their base64 payloads.
//!
//! QEMU's chardev socket serves one client at a time and the virtio-serial
//! channel behind it has no request ids, so callers hold one connection per
//! operation and drop it afterwards; a second client waits (and times out)
//! until the first has gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
pub use nubo_guest_protocol::ShutdownMode;
use nubo_guest_protocol::{
    request_line, CaptureOutput, Command, Disk, ErrorBody, ExecArgs, ExecReturn, ExecStatus, ExecStatusArgs,
    FileOpenArgs, FileReadArgs, FileReadReturn, FileWriteArgs, FileWriteReturn, FsInfo, FsfreezeStatus, GuestInfo,
    HandleArgs, NetworkInterface, OsInfo, ShutdownArgs, SyncArgs, EXEC_OUTPUT_MAX, GENERIC_ERROR, SENTINEL,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest reply line accepted. Everything in a reply is the guest's to
/// choose, so this bounds what one guest can make its host buffer (and
/// parse) per call: a 1 MiB guest-file-read ([`READ_CHUNK`]) is ~1.4 MiB of
/// base64, and command output beyond ~3 MiB per stream is refused rather
/// than held (agents keep up to [`EXEC_OUTPUT_MAX`], 16 MiB, of it).
pub const MAX_REPLY_BYTES: usize = 8 * 1024 * 1024;
// A whole guest-file-read of READ_CHUNK, in base64, must fit in one reply;
// and some command output may be refused, or the doc above is wrong.
const _: () = assert!(READ_CHUNK.div_ceil(3) * 4 < MAX_REPLY_BYTES && EXEC_OUTPUT_MAX > MAX_REPLY_BYTES);
/// Bytes per guest-file-write in [`QgaClient::write_file`].
const WRITE_CHUNK: usize = 1024 * 1024;
/// Bytes per guest-file-read in [`QgaClient::read_small_file`].
const READ_CHUNK: usize = 1024 * 1024;
/// How often [`QgaClient::run`] polls guest-exec-status.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long guest-shutdown waits for an error reply (there is none on success).
const SHUTDOWN_ERROR_WAIT: Duration = Duration::from_secs(2);

/// Errors from the guest agent client.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error(
        "cannot connect to the guest agent socket {path}: {source}; is the VM running? see qemu.log in its directory"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent on {path} did not answer within {after:?}; the guest may still be booting, the agent may not be running in it (images need nubo-guest-agent or qemu-guest-agent), or another client holds the channel (one at a time)")]
    NotResponding { path: PathBuf, after: Duration },
    #[error("guest agent {what} timed out after {after:?}; the guest may be overloaded or the command still running; connect again before retrying")]
    Timeout { what: String, after: Duration },
    #[error("the guest agent refused the command: {class}: {desc}")]
    Guest { class: String, desc: String },
    #[error("guest agent protocol error: {0}; connect again")]
    Protocol(String),
    #[error("the guest agent sent a reply longer than {limit} bytes; it was dropped and this connection is closed. Guests may send at most that much at once: write large command output to a file in the guest and read it in pieces")]
    ReplyTooLong { limit: usize },
    #[error("I/O error talking to the guest agent: {0}; the VM may have stopped; connect again")]
    Io(#[from] std::io::Error),
    /// Only for arguments serde cannot write as JSON, which Nubo's never are.
    #[error("cannot encode a guest agent request: {0}; this is a bug in Nubo, please report it")]
    Encode(#[from] serde_json::Error),
}

/// `guest-info`: the agent's version and the names of its enabled commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAgentInfo {
    pub version: String,
    pub supported_commands: Vec<String>,
}

/// A `guest-exec` request.
#[derive(Debug, Clone, Default)]
pub struct GuestExec {
    /// Program to run; looked up in the guest's PATH when it has no `/`.
    pub path: String,
    pub args: Vec<String>,
    /// `NAME=value` entries; when non-empty they replace the whole environment.
    pub env: Vec<String>,
    /// Bytes fed to the program's stdin (otherwise stdin is /dev/null).
    pub input: Option<Vec<u8>>,
    /// Capture stdout and stderr (up to 16 MiB each in qemu-ga).
    pub capture_output: bool,
}

/// A `guest-exec-status` reply, with the output decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestExecStatus {
    pub exited: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// A `guest-file-read` reply, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestFileRead {
    pub data: Vec<u8>,
    pub eof: bool,
}

/// One entry of `guest-get-fsinfo`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestFilesystem {
    /// Kernel name of the device, e.g. `vda`.
    pub name: String,
    pub mountpoint: String,
    pub fs_type: String,
    pub used_bytes: Option<u64>,
    /// Size available to unprivileged users (used + available).
    pub total_bytes: Option<u64>,
}

/// One entry of `guest-get-disks`: a disk or a partition the guest kernel
/// sees. The address members are flattened; those not given are `None`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestDisk {
    /// Device node, e.g. `/dev/vda` or `/dev/vda1`.
    pub name: String,
    pub partition: bool,
    /// Devices this one sits on: a partition's disk, a device-mapper volume's disks.
    pub dependencies: Vec<String>,
    /// The disk's serial number (virtio-blk `serial=`), when it has one.
    pub serial: Option<String>,
    /// `"virtio"`, `"scsi"`, `"unknown"`, ... (the schema's GuestDiskBusType).
    pub bus_type: Option<String>,
    /// Device node from the disk's address.
    pub dev: Option<String>,
}

/// `guest-get-osinfo` (the fields Nubo uses).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestOsInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    pub pretty_name: Option<String>,
    pub version_id: Option<String>,
    pub kernel_release: Option<String>,
    pub machine: Option<String>,
}

/// One entry of `guest-network-get-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestNetworkInterface {
    pub name: String,
    /// MAC address as `aa:bb:cc:dd:ee:ff`.
    pub hardware_address: Option<String>,
    pub ip_addresses: Vec<GuestIpAddress>,
    /// Bytes received and sent so far (`statistics`), when the agent reports them.
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

/// An address of a [`GuestNetworkInterface`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestIpAddress {
    pub address: String,
    pub prefix: u8,
    /// `"ipv4"` or `"ipv6"`.
    pub family: String,
}

/// What [`QgaClient::read_line`] does with a line longer than [`MAX_REPLY_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlong {
    /// It is a reply: refuse it.
    Fail,
    /// Stale output before our sync reply: skip it.
    Skip,
}

/// One synchronised connection to a guest agent.
#[derive(Debug)]
pub struct QgaClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
    timeout: Duration,
    /// Set after a timeout or I/O error: replies may be out of step.
    broken: bool,
}

impl QgaClient {
    /// Connects and synchronises (guest-sync-delimited with a random id). Fails fast with
    /// [`QgaError::NotResponding`] when the guest agent does not answer within `timeout`.
    /// `timeout` is also the limit of every later call.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QgaError> {
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QgaError::Connect { path: path.to_path_buf(), source }),
            Err(_) => return Err(QgaError::NotResponding { path: path.to_path_buf(), after: timeout }),
        };
        let (r, w) = stream.into_split();
        let mut client = QgaClient { reader: BufReader::new(r), writer: w, line: Vec::new(), timeout, broken: false };
        let id = random_id();
        match tokio::time::timeout(timeout, client.sync(id)).await {
            Ok(Ok(())) => Ok(client),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(QgaError::NotResponding { path: path.to_path_buf(), after: timeout }),
        }
    }

    /// Sends the sentinel and guest-sync-delimited, then skips everything
    /// (stale replies to earlier clients, partial lines) until our id comes back.
    async fn sync(&mut self, id: i64) -> Result<(), QgaError> {
        let mut msg = vec![SENTINEL];
        msg.extend_from_slice(&request_line(Command::SyncDelimited.name(), Some(SyncArgs { id }))?);
        self.writer.write_all(&msg).await?;
        loop {
            let line = self.read_line(Overlong::Skip).await?;
            // Only what follows the last sentinel can be the reply to us.
            let tail = match line.iter().rposition(|&b| b == SENTINEL) {
                Some(p) => &line[p + 1..],
                None => &line[..],
            };
            match serde_json::from_slice::<Value>(tail.trim_ascii()) {
                Ok(v) if v.get("return").and_then(Value::as_i64) == Some(id) => return Ok(()),
                _ => tracing::debug!(line = %String::from_utf8_lossy(&line), "discarding stale guest agent output"),
            }
        }
    }

    /// Runs `command`; returns its `return` value.
    async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QgaError> {
        if self.broken {
            return Err(QgaError::Protocol(
                "this connection is unusable after an earlier timeout or I/O error".to_string(),
            ));
        }
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.roundtrip(command, arguments)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if !matches!(e, QgaError::Guest { .. }) {
                    self.broken = true;
                }
                Err(e)
            }
            Err(_) => {
                self.broken = true;
                Err(QgaError::Timeout { what: format!("command `{command}`"), after: timeout })
            }
        }
    }

    async fn send(&mut self, command: &str, arguments: Option<Value>) -> Result<(), QgaError> {
        self.writer.write_all(&request_line(command, arguments)?).await?;
        Ok(())
    }

    /// Runs `command` with typed arguments; returns its `return` value.
    async fn call(&mut self, command: Command, arguments: impl Serialize) -> Result<Value, QgaError> {
        let arguments = serde_json::to_value(arguments)?;
        self.execute(command.name(), Some(arguments)).await
    }

    async fn roundtrip(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QgaError> {
        self.send(command, arguments).await?;
        loop {
            let line = self.read_line(Overlong::Fail).await?;
            if let Some(v) = decode::reply(command, &line)? {
                return Ok(v);
            }
        }
    }

    /// Reads one line (without the newline), holding at most
    /// [`MAX_REPLY_BYTES`] of it. Cancel-safe: a partly read line stays in
    /// `self.line`. A longer line is an error ([`Overlong::Fail`]), or,
    /// while resynchronising ([`Overlong::Skip`]), dropped but for what
    /// follows its last sentinel, the only part that can be the reply to
    /// our sync; the caller's timeout bounds how long that may go on.
    async fn read_line(&mut self, overlong: Overlong) -> Result<Vec<u8>, QgaError> {
        loop {
            let room = MAX_REPLY_BYTES.saturating_sub(self.line.len()) as u64;
            let n = (&mut self.reader).take(room).read_until(b'\n', &mut self.line).await?;
            if self.line.last() == Some(&b'\n') {
                let mut line = std::mem::take(&mut self.line);
                line.pop();
                return Ok(line);
            }
            if self.line.len() >= MAX_REPLY_BYTES {
                match overlong {
                    Overlong::Skip => {
                        match self.line.iter().rposition(|&b| b == SENTINEL).filter(|&p| p > 0) {
                            Some(p) => drop(self.line.drain(..p)),
                            None => self.line.clear(),
                        }
                        continue;
                    }
                    Overlong::Fail => {
                        // Give the memory back: the next connection resyncs past the rest.
                        self.line = Vec::new();
                        return Err(QgaError::ReplyTooLong { limit: MAX_REPLY_BYTES });
                    }
                }
            }
            if n == 0 {
                return Err(QgaError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the guest agent socket",
                )));
            }
        }
    }

    /// `guest-ping`.
    pub async fn ping(&mut self) -> Result<(), QgaError> {
        self.execute(Command::Ping.name(), None).await.map(drop)
    }

    /// `guest-info`: version and the names of the enabled commands.
    pub async fn info(&mut self) -> Result<GuestAgentInfo, QgaError> {
        decode::info(&self.execute(Command::Info.name(), None).await?)
    }

    /// `guest-exec`: starts a process; returns its pid in the guest.
    pub async fn exec(&mut self, req: &GuestExec) -> Result<i64, QgaError> {
        let args = ExecArgs {
            path: req.path.clone(),
            arg: req.args.clone(),
            env: (!req.env.is_empty()).then(|| req.env.clone()),
            input_data: req.input.as_ref().map(|input| B64.encode(input)),
            capture_output: Some(CaptureOutput::Flag(req.capture_output)),
        };
        let v = self.call(Command::Exec, args).await?;
        decode::typed::<ExecReturn>(Command::Exec, &v).map(|r| r.pid)
    }

    /// `guest-exec-status`. Once it reports `exited`, the agent forgets the pid.
    pub async fn exec_status(&mut self, pid: i64) -> Result<GuestExecStatus, QgaError> {
        decode::exec_status(&self.call(Command::ExecStatus, ExecStatusArgs { pid }).await?)
    }

    /// exec + poll exec_status every 100 ms until exited or `timeout`.
    pub async fn run(&mut self, req: &GuestExec, timeout: Duration) -> Result<GuestExecStatus, QgaError> {
        let started = Instant::now();
        let pid = self.exec(req).await?;
        loop {
            let status = self.exec_status(pid).await?;
            if status.exited {
                return Ok(status);
            }
            if started.elapsed() >= timeout {
                return Err(QgaError::Timeout { what: format!("running `{}` (pid {pid})", req.path), after: timeout });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `guest-file-open` with an fopen(3) mode (`r`, `w`, `a`, `r+`, ...); returns the handle.
    pub async fn file_open(&mut self, path: &str, mode: &str) -> Result<i64, QgaError> {
        let args = FileOpenArgs { path: path.to_string(), mode: Some(mode.to_string()) };
        decode::typed::<i64>(Command::FileOpen, &self.call(Command::FileOpen, args).await?)
    }

    /// `guest-file-read` of up to `count` bytes.
    pub async fn file_read(&mut self, handle: i64, count: usize) -> Result<GuestFileRead, QgaError> {
        // More than i64::MAX is more than any agent reads at once; it says so.
        let args = FileReadArgs { handle, count: Some(i64::try_from(count).unwrap_or(i64::MAX)) };
        decode::file_read(&self.call(Command::FileRead, args).await?)
    }

    /// `guest-file-write`; returns the number of bytes written.
    pub async fn file_write(&mut self, handle: i64, data: &[u8]) -> Result<usize, QgaError> {
        let args = FileWriteArgs { handle, buf_b64: B64.encode(data), count: None };
        let v = self.call(Command::FileWrite, args).await?;
        let written = decode::typed::<FileWriteReturn>(Command::FileWrite, &v)?.count;
        usize::try_from(written).map_err(|_| bad_reply(Command::FileWrite, &v))
    }

    /// `guest-file-close`.
    pub async fn file_close(&mut self, handle: i64) -> Result<(), QgaError> {
        self.call(Command::FileClose, HandleArgs { handle }).await.map(drop)
    }

    /// open(w) + write in chunks + close.
    pub async fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), QgaError> {
        let handle = self.file_open(path, "w").await?;
        let mut written = Ok(());
        for chunk in data.chunks(WRITE_CHUNK) {
            match self.file_write(handle, chunk).await {
                Ok(n) if n == chunk.len() => {}
                Ok(n) => {
                    written = Err(QgaError::Protocol(format!(
                        "guest-file-write wrote {n} of {} bytes to {path}",
                        chunk.len()
                    )));
                    break;
                }
                Err(e) => {
                    written = Err(e);
                    break;
                }
            }
        }
        // Close even after a failed write so the guest does not leak the handle.
        let closed = if self.broken { Ok(()) } else { self.file_close(handle).await };
        written.and(closed)
    }

    /// Reads a whole small guest file, such as `/sys/block/vdb/size`: open
    /// `r`, read until end of file or `max` bytes (the rest is not read),
    /// close. The handle is closed when a read fails too, unless the
    /// connection itself broke.
    pub async fn read_small_file(&mut self, path: &str, max: usize) -> Result<Vec<u8>, QgaError> {
        let handle = self.file_open(path, "r").await?;
        let mut data = Vec::new();
        let read = loop {
            let want = max.saturating_sub(data.len()).min(READ_CHUNK);
            if want == 0 {
                break Ok(());
            }
            match self.file_read(handle, want).await {
                Ok(r) => {
                    let done = r.eof || r.data.is_empty();
                    // Never more than asked for, whatever the agent sent.
                    data.extend_from_slice(&r.data[..r.data.len().min(want)]);
                    if done {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        // Close even after a failed read so the guest does not leak the handle.
        let closed = if self.broken { Ok(()) } else { self.file_close(handle).await };
        read.and(closed).map(|()| data)
    }

    /// `guest-get-fsinfo`.
    pub async fn fsinfo(&mut self) -> Result<Vec<GuestFilesystem>, QgaError> {
        decode::fsinfo(&self.execute(Command::GetFsinfo.name(), None).await?)
    }

    /// `guest-get-disks`: disks and partitions, in the agent's order. Members
    /// this client does not know (qemu-ga's `alias`, `smart`, ...) are ignored.
    pub async fn disks(&mut self) -> Result<Vec<GuestDisk>, QgaError> {
        decode::disks(&self.execute(Command::GetDisks.name(), None).await?)
    }

    /// `guest-fsfreeze-status`: `"thawed"` or `"frozen"`.
    pub async fn fsfreeze_status(&mut self) -> Result<String, QgaError> {
        let v = self.execute(Command::FsfreezeStatus.name(), None).await?;
        decode::typed::<FsfreezeStatus>(Command::FsfreezeStatus, &v).map(|s| s.name().to_string())
    }

    /// `guest-fsfreeze-freeze`: syncs and freezes the guest's local file
    /// systems; returns how many are frozen (0 leaves the guest thawed).
    /// Until [`Self::fsfreeze_thaw`], the agent refuses all but a few
    /// commands (guest-exec, file I/O, ...: [`QgaError::Guest`] with class
    /// `CommandNotFound`). The sync can take a while on a busy guest: connect
    /// with a timeout to match.
    pub async fn fsfreeze_freeze(&mut self) -> Result<u64, QgaError> {
        let v = self.execute(Command::FsfreezeFreeze.name(), None).await?;
        decode::typed::<u64>(Command::FsfreezeFreeze, &v)
    }

    /// `guest-fsfreeze-thaw`: returns how many file systems were thawed; a
    /// number below the freeze's means some were thawed meanwhile by
    /// something else (nubo-guest-agent thaws by itself after 60 s).
    pub async fn fsfreeze_thaw(&mut self) -> Result<u64, QgaError> {
        let v = self.execute(Command::FsfreezeThaw.name(), None).await?;
        decode::typed::<u64>(Command::FsfreezeThaw, &v)
    }

    /// `guest-get-osinfo`.
    pub async fn osinfo(&mut self) -> Result<GuestOsInfo, QgaError> {
        decode::osinfo(&self.execute(Command::GetOsinfo.name(), None).await?)
    }

    /// `guest-network-get-interfaces`.
    pub async fn network_interfaces(&mut self) -> Result<Vec<GuestNetworkInterface>, QgaError> {
        decode::network_interfaces(&self.execute(Command::NetworkGetInterfaces.name(), None).await?)
    }

    /// `guest-shutdown`. The agent sends no reply when it succeeds, so this
    /// waits briefly for an error and otherwise reports success; the guest
    /// then shuts down on its own schedule (watch the VM's status or QMP
    /// events). The connection is unusable afterwards.
    pub async fn shutdown(&mut self, mode: ShutdownMode) -> Result<(), QgaError> {
        if self.broken {
            return Err(QgaError::Protocol(
                "this connection is unusable after an earlier timeout or I/O error".to_string(),
            ));
        }
        self.broken = true;
        let timeout = self.timeout;
        let command = Command::Shutdown.name();
        let arguments = serde_json::to_value(ShutdownArgs { mode: Some(mode) })?;
        match tokio::time::timeout(timeout, self.send(command, Some(arguments))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(QgaError::Timeout { what: format!("command `{command}`"), after: timeout }),
        }
        match tokio::time::timeout(timeout.min(SHUTDOWN_ERROR_WAIT), self.read_line(Overlong::Fail)).await {
            Ok(Ok(line)) => {
                let text = line.strip_prefix(&[SENTINEL]).unwrap_or(&line).trim_ascii();
                match serde_json::from_slice::<Value>(text) {
                    Ok(reply) => reply_value(command, reply).map(drop),
                    Err(_) => Ok(()),
                }
            }
            // No reply (success) or the channel went away with the guest.
            Ok(Err(_)) | Err(_) => Ok(()),
        }
    }
}

/// The `return` of a reply, or its `error` as [`QgaError::Guest`].
fn reply_value(command: &str, mut reply: Value) -> Result<Value, QgaError> {
    if let Some(ret) = reply.get_mut("return") {
        return Ok(ret.take());
    }
    if let Some(err) = reply.get("error") {
        // A malformed error is still the guest's refusal: keep what is readable.
        let body = ErrorBody::deserialize(err)
            .unwrap_or_else(|_| ErrorBody { class: GENERIC_ERROR.to_string(), desc: String::new() });
        let desc = if body.desc.is_empty() { "no description" } else { body.desc.as_str() };
        return Err(QgaError::Guest { class: preview(body.class.as_bytes()), desc: preview(desc.as_bytes()) });
    }
    Err(QgaError::Protocol(format!(
        "reply to `{command}` has neither return nor error: {}",
        preview(reply.to_string().as_bytes())
    )))
}

fn bad_reply(command: impl std::fmt::Display, v: &Value) -> QgaError {
    QgaError::Protocol(format!("unexpected reply to `{command}`: {}", preview(v.to_string().as_bytes())))
}

/// The start of a guest-sent text, for an error message: the guest chose
/// it, so it must not make the message (and the logs, and the reports it
/// ends up in) as long as the reply.
fn preview(text: &[u8]) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        String::from_utf8_lossy(text).into_owned()
    } else {
        format!("{}... ({} bytes)", String::from_utf8_lossy(&text[..MAX]), text.len())
    }
}

/// Decoding of guest agent replies, apart from the socket so that it can
/// be fuzzed (fuzz/fuzz_targets/qga_reply.rs). Everything here parses what
/// a guest chose to send: nothing panics, and errors quote at most a
/// preview of it.
pub mod decode {
    use super::*;

    /// One reply line (without its newline): its `return` value, `None`
    /// for an empty line (the agent's padding; read the next), or the
    /// guest's error ([`QgaError::Guest`]) or a protocol error.
    pub fn reply(command: &str, line: &[u8]) -> Result<Option<Value>, QgaError> {
        let text = line.strip_prefix(&[SENTINEL]).unwrap_or(line).trim_ascii();
        if text.is_empty() {
            return Ok(None);
        }
        let reply: Value = serde_json::from_slice(text)
            .map_err(|e| QgaError::Protocol(format!("invalid JSON reply to `{command}` ({e}): {}", preview(text))))?;
        reply_value(command, reply).map(Some)
    }

    /// A reply's `return` value as `command`'s reply type. Members the
    /// type does not know are ignored; a value of the wrong shape is a
    /// protocol error quoting a preview of it.
    pub fn typed<'a, T: Deserialize<'a>>(command: Command, v: &'a Value) -> Result<T, QgaError> {
        T::deserialize(v).map_err(|e| {
            QgaError::Protocol(format!(
                "unexpected reply to `{command}` ({}): {}",
                preview(e.to_string().as_bytes()),
                preview(v.to_string().as_bytes())
            ))
        })
    }

    /// `guest-info`: the names of the enabled commands.
    pub fn info(v: &Value) -> Result<GuestAgentInfo, QgaError> {
        let info: GuestInfo = typed(Command::Info, v)?;
        let supported_commands =
            info.supported_commands.into_iter().filter(|c| c.enabled && !c.name.is_empty()).map(|c| c.name).collect();
        Ok(GuestAgentInfo { version: info.version, supported_commands })
    }

    /// `guest-exec-status`, with the output decoded.
    pub fn exec_status(v: &Value) -> Result<GuestExecStatus, QgaError> {
        let status: ExecStatus = typed(Command::ExecStatus, v)?;
        let data = |key: &str, b64: Option<String>| -> Result<Vec<u8>, QgaError> {
            match b64 {
                Some(s) => {
                    B64.decode(s).map_err(|e| QgaError::Protocol(format!("guest-exec-status {key} is not base64: {e}")))
                }
                None => Ok(Vec::new()),
            }
        };
        Ok(GuestExecStatus {
            exited: status.exited,
            exit_code: status.exitcode,
            signal: status.signal,
            stdout: data("out-data", status.out_data)?,
            stderr: data("err-data", status.err_data)?,
            stdout_truncated: status.out_truncated,
            stderr_truncated: status.err_truncated,
        })
    }

    /// `guest-file-read`, with the data decoded.
    pub fn file_read(v: &Value) -> Result<GuestFileRead, QgaError> {
        let read: FileReadReturn = typed(Command::FileRead, v)?;
        let data = B64
            .decode(read.buf_b64)
            .map_err(|e| QgaError::Protocol(format!("guest-file-read data is not base64: {e}")))?;
        Ok(GuestFileRead { data, eof: read.eof })
    }

    /// `guest-get-fsinfo`.
    pub fn fsinfo(v: &Value) -> Result<Vec<GuestFilesystem>, QgaError> {
        let list: Vec<FsInfo> = typed(Command::GetFsinfo, v)?;
        Ok(list
            .into_iter()
            .map(|f| GuestFilesystem {
                name: f.name,
                mountpoint: f.mountpoint,
                fs_type: f.fs_type,
                used_bytes: f.used_bytes,
                total_bytes: f.total_bytes,
            })
            .collect())
    }

    /// `guest-get-disks`.
    pub fn disks(v: &Value) -> Result<Vec<GuestDisk>, QgaError> {
        let list: Vec<Disk> = typed(Command::GetDisks, v)?;
        Ok(list
            .into_iter()
            .map(|d| {
                let address = d.address.unwrap_or_default();
                GuestDisk {
                    name: d.name,
                    partition: d.partition,
                    dependencies: d.dependencies,
                    serial: address.serial,
                    // Empty: the agent gave no address, or none with a bus type.
                    bus_type: Some(address.bus_type).filter(|t| !t.is_empty()),
                    dev: address.dev,
                }
            })
            .collect())
    }

    /// `guest-get-osinfo`.
    pub fn osinfo(v: &Value) -> Result<GuestOsInfo, QgaError> {
        // serde would also read a struct from a JSON array; the schema's is an object.
        if !v.is_object() {
            return Err(bad_reply(Command::GetOsinfo, v));
        }
        let os: OsInfo = typed(Command::GetOsinfo, v)?;
        Ok(GuestOsInfo {
            id: os.id,
            name: os.name,
            pretty_name: os.pretty_name,
            version_id: os.version_id,
            kernel_release: os.kernel_release,
            machine: os.machine,
        })
    }

    /// `guest-network-get-interfaces`.
    pub fn network_interfaces(v: &Value) -> Result<Vec<GuestNetworkInterface>, QgaError> {
        let list: Vec<NetworkInterface> = typed(Command::NetworkGetInterfaces, v)?;
        Ok(list
            .into_iter()
            .map(|n| GuestNetworkInterface {
                name: n.name,
                hardware_address: n.hardware_address,
                ip_addresses: n
                    .ip_addresses
                    .into_iter()
                    // A prefix no address family has is left out with its address.
                    .filter_map(|ip| {
                        Some(GuestIpAddress {
                            address: ip.ip_address,
                            prefix: u8::try_from(ip.prefix).ok()?,
                            family: ip.ip_address_type.name().to_string(),
                        })
                    })
                    .collect(),
                rx_bytes: n.statistics.map(|s| s.rx_bytes),
                tx_bytes: n.statistics.map(|s| s.tx_bytes),
            })
            .collect())
    }
}

/// A positive id for guest-sync, unpredictable enough that a stale reply
/// from an earlier client is never taken for ours.
fn random_id() -> i64 {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let r = if n == buf.len() as isize {
        u32::from_ne_bytes(buf)
    } else {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        nanos ^ std::process::id().rotate_left(16)
    };
    i64::from(r & 0x7fff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    /// A fake agent: answers the sync (after some stale output) and then
    /// each request line with `reply(command, arguments)`, if it returns a line.
    async fn fake_agent<F>(reply: F) -> (tempfile::TempDir, PathBuf)
    where
        F: Fn(&str, &Value) -> Option<String> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            // Leftovers of an earlier client, including a stale sync reply.
            w.write_all(b"{\"return\": 5}\n\xff{\"return\": 1}\n{\"retu").await.unwrap();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let text = line.strip_prefix(&[SENTINEL]).unwrap_or(&line);
                let v: Value = serde_json::from_slice(text).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                let args = v.get("arguments").cloned().unwrap_or(json!({}));
                let out = if cmd == "guest-sync-delimited" {
                    format!("\n\u{0}\u{0}{}\n", json!({"return": args["id"]}))
                        .into_bytes()
                        .into_iter()
                        .map(|b| if b == 0 { SENTINEL } else { b })
                        .collect()
                } else {
                    match reply(&cmd, &args) {
                        Some(s) => format!("{s}\n").into_bytes(),
                        None => continue,
                    }
                };
                w.write_all(&out).await.unwrap();
            }
        });
        (dir, path)
    }

    #[tokio::test]
    async fn typed_commands() {
        let (_dir, path) = fake_agent(|cmd, args| {
            Some(match cmd {
                "guest-ping" => r#"{"return": {}}"#.to_string(),
                "guest-info" => r#"{"return": {"version": "7.2.0", "supported_commands": [
                    {"name": "guest-ping", "enabled": true, "success-response": true},
                    {"name": "guest-exec", "enabled": false, "success-response": true}]}}"#
                    .replace('\n', ""),
                "guest-exec" => {
                    assert_eq!(args["path"], "/bin/echo");
                    assert_eq!(args["input-data"], B64.encode("in"));
                    r#"{"return": {"pid": 42}}"#.to_string()
                }
                "guest-exec-status" => format!(
                    r#"{{"return": {{"exited": true, "exitcode": 3, "out-data": "{}", "err-truncated": true}}}}"#,
                    B64.encode("hi\n")
                ),
                "guest-file-open" => r#"{"return": 1000}"#.to_string(),
                "guest-file-write" => format!(r#"{{"return": {{"count": {}, "eof": false}}}}"#, {
                    B64.decode(args["buf-b64"].as_str().unwrap()).unwrap().len()
                }),
                "guest-file-close" => r#"{"return": {}}"#.to_string(),
                "guest-get-fsinfo" => r#"{"return": [{"name": "vda", "mountpoint": "/", "type": "ext4", "used-bytes": 10, "total-bytes": 20, "disk": []}]}"#.to_string(),
                "guest-get-osinfo" => r#"{"return": {"id": "nubo-tiny", "kernel-release": "6.1", "machine": "x86_64"}}"#.to_string(),
                "guest-network-get-interfaces" => r#"{"return": [{"name": "eth0", "hardware-address": "52:54:00:12:34:56", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}]}]}"#.to_string(),
                "guest-shutdown" => return None,
                _ => format!(r#"{{"error": {{"class": "CommandNotFound", "desc": "The command {cmd} has not been found"}}}}"#),
            })
        })
        .await;
        let mut c = QgaClient::connect(&path, Duration::from_secs(2)).await.unwrap();
        c.ping().await.unwrap();
        let info = c.info().await.unwrap();
        assert_eq!(info, GuestAgentInfo { version: "7.2.0".into(), supported_commands: vec!["guest-ping".into()] });
        let req = GuestExec { path: "/bin/echo".into(), input: Some(b"in".to_vec()), ..Default::default() };
        let st = c.run(&req, Duration::from_secs(2)).await.unwrap();
        assert_eq!(
            st,
            GuestExecStatus {
                exited: true,
                exit_code: Some(3),
                stdout: b"hi\n".to_vec(),
                stderr_truncated: true,
                ..Default::default()
            }
        );
        c.write_file("/tmp/x", &vec![7u8; WRITE_CHUNK + 10]).await.unwrap();
        let fs = c.fsinfo().await.unwrap();
        assert_eq!(fs[0].fs_type, "ext4");
        assert_eq!((fs[0].used_bytes, fs[0].total_bytes), (Some(10), Some(20)));
        let os = c.osinfo().await.unwrap();
        assert_eq!(os.id.as_deref(), Some("nubo-tiny"));
        assert_eq!(os.pretty_name, None);
        let nics = c.network_interfaces().await.unwrap();
        assert_eq!(
            nics[0].ip_addresses,
            vec![GuestIpAddress { address: "10.0.2.15".into(), prefix: 24, family: "ipv4".into() }]
        );
        let err = c.file_close(1).await;
        assert!(err.is_ok());
        let err = c.execute("guest-bogus", None).await.unwrap_err();
        assert!(matches!(&err, QgaError::Guest { class, .. } if class == "CommandNotFound"), "{err}");
        // A guest error leaves the connection usable.
        c.ping().await.unwrap();
        c.shutdown(ShutdownMode::Powerdown).await.unwrap();
    }

    /// `guest-get-disks` as Debian's qemu-ga 7.2 answers it: udev serials,
    /// partitions without an address, extra members.
    const STOCK_DISKS: &str = r#"{"return": [
        {"name": "/dev/vda1", "partition": true, "dependencies": ["/dev/vda"]},
        {"name": "/dev/vda", "partition": false, "address": {"serial": "root0", "bus-type": "virtio", "bus": 0,
            "unit": 0, "pci-controller": {"bus": 0, "slot": 3, "domain": 0, "function": 0}, "dev": "/dev/vda",
            "target": 0}},
        {"name": "/dev/dm-0", "partition": false, "dependencies": ["/dev/vda1"], "alias": "vg-root"},
        {"name": "/dev/nvme0n1", "partition": false, "smart": {"type": "nvme", "critical-warning": 0},
            "address": {"bus-type": "nvme", "bus": 0, "unit": 0, "target": 0,
            "pci-controller": {"bus": -1, "slot": -1, "domain": -1, "function": -1}}}]}"#;

    #[tokio::test]
    async fn disks_fsfreeze_and_small_files() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let closed = Arc::new(AtomicUsize::new(0));
        let file: Vec<u8> = (0..250u8).collect();
        // The fake's read position, and its copies of the file and the close counter.
        let (off, content, cl) = (AtomicUsize::new(0), file.clone(), closed.clone());
        let (_dir, path) = fake_agent(move |cmd, args| {
            Some(match cmd {
                "guest-get-disks" => STOCK_DISKS.replace('\n', ""),
                "guest-fsfreeze-status" => r#"{"return": "frozen"}"#.to_string(),
                "guest-fsfreeze-freeze" => r#"{"return": 2}"#.to_string(),
                "guest-fsfreeze-thaw" => r#"{"return": 2}"#.to_string(),
                "guest-file-open" if args["path"] == "/missing" => {
                    r#"{"error": {"class": "GenericError", "desc": "failed to open file '/missing'"}}"#.to_string()
                }
                "guest-file-open" => {
                    off.store(0, Ordering::SeqCst);
                    format!(r#"{{"return": {}}}"#, if args["path"] == "/bad" { 1001 } else { 1000 })
                }
                "guest-file-read" if args["handle"] == 1001 => {
                    r#"{"error": {"class": "GenericError", "desc": "failed to read file: EIO"}}"#.to_string()
                }
                "guest-file-read" => {
                    // At most 100 bytes a read, like a short read(2).
                    let start = off.load(Ordering::SeqCst);
                    let count = args["count"].as_u64().unwrap() as usize;
                    let end = (start + count.min(100)).min(content.len());
                    off.store(end, Ordering::SeqCst);
                    let eof = end == content.len() && end - start < count;
                    format!(
                        r#"{{"return": {{"count": {}, "buf-b64": "{}", "eof": {eof}}}}}"#,
                        end - start,
                        B64.encode(&content[start..end])
                    )
                }
                "guest-file-close" => {
                    cl.fetch_add(1, Ordering::SeqCst);
                    r#"{"return": {}}"#.to_string()
                }
                _ => format!(
                    r#"{{"error": {{"class": "CommandNotFound", "desc": "The command {cmd} has not been found"}}}}"#
                ),
            })
        })
        .await;
        let mut c = QgaClient::connect(&path, Duration::from_secs(2)).await.unwrap();
        let disks = c.disks().await.unwrap();
        assert_eq!(
            disks[..2],
            [
                GuestDisk {
                    name: "/dev/vda1".into(),
                    partition: true,
                    dependencies: vec!["/dev/vda".into()],
                    serial: None,
                    bus_type: None,
                    dev: None,
                },
                GuestDisk {
                    name: "/dev/vda".into(),
                    partition: false,
                    dependencies: vec![],
                    serial: Some("root0".into()),
                    bus_type: Some("virtio".into()),
                    dev: Some("/dev/vda".into()),
                },
            ]
        );
        assert_eq!(
            (disks[2].dependencies.as_slice(), disks[2].bus_type.as_deref()),
            (["/dev/vda1".to_string()].as_slice(), None)
        );
        assert_eq!((disks[3].name.as_str(), disks[3].bus_type.as_deref()), ("/dev/nvme0n1", Some("nvme")));

        assert_eq!(c.fsfreeze_freeze().await.unwrap(), 2);
        assert_eq!(c.fsfreeze_status().await.unwrap(), "frozen");
        assert_eq!(c.fsfreeze_thaw().await.unwrap(), 2);

        // Whole file in several reads; a max cuts it short; the handle is closed each time.
        assert_eq!(c.read_small_file("/sys/x", 4096).await.unwrap(), file);
        assert_eq!(c.read_small_file("/sys/x", 130).await.unwrap(), file[..130]);
        assert_eq!(c.read_small_file("/sys/x", 0).await.unwrap(), b"");
        assert_eq!(closed.load(Ordering::SeqCst), 3);
        let err = c.read_small_file("/bad", 10).await.unwrap_err();
        assert!(matches!(&err, QgaError::Guest { desc, .. } if desc.contains("EIO")), "{err}");
        assert_eq!(closed.load(Ordering::SeqCst), 4, "closed after a failed read");
        assert!(matches!(c.read_small_file("/missing", 10).await, Err(QgaError::Guest { .. })));
        assert_eq!(closed.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn silent_agent_and_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts (as QEMU does) but nothing answers: no agent in the guest.
        tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let t = Instant::now();
        let err = QgaClient::connect(&path, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, QgaError::NotResponding { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("did not answer"), "{err}");

        let err = QgaClient::connect(&dir.path().join("none.sock"), Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, QgaError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn command_timeout_breaks_connection() {
        let (_dir, path) = fake_agent(|cmd, _| (cmd == "guest-ping").then(|| r#"{"return": {}}"#.to_string())).await;
        let mut c = QgaClient::connect(&path, Duration::from_millis(300)).await.unwrap();
        c.ping().await.unwrap();
        let err = c.osinfo().await.unwrap_err();
        assert!(matches!(err, QgaError::Timeout { .. }), "{err}");
        assert!(matches!(c.ping().await, Err(QgaError::Protocol(_))));
    }

    /// Reads one request line from a fake agent's side of the socket.
    async fn request(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> Value {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line).await.unwrap();
        serde_json::from_slice(line.strip_prefix(&[SENTINEL]).unwrap_or(&line)).unwrap()
    }

    /// A guest whose agent answers a command with an endless line: the
    /// client stops reading at the cap (the guest's writes then block), the
    /// call fails saying why, and the next connection skips the rest of the
    /// junk to find its sync reply.
    #[tokio::test]
    async fn an_endless_reply_is_refused_and_the_next_connection_resyncs() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let w2 = written.clone();
        tokio::spawn(async move {
            // First client: synced, then an endless reply to its command.
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let sync = request(&mut r).await;
            w.write_all(format!("{}\n", json!({"return": sync["arguments"]["id"]})).as_bytes()).await.unwrap();
            let _ = request(&mut r).await;
            let chunk = vec![b'A'; 64 * 1024];
            tokio::spawn(async move {
                while w.write_all(&chunk).await.is_ok() {
                    w2.fetch_add(chunk.len(), Ordering::SeqCst);
                }
            });
            // Second client: 20 MiB more of the line, then the sync reply.
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let sync = request(&mut r).await;
            w.write_all(&vec![b'B'; 20 * 1024 * 1024]).await.unwrap();
            let mut reply = vec![SENTINEL];
            reply.extend_from_slice(format!("{}\n", json!({"return": sync["arguments"]["id"]})).as_bytes());
            w.write_all(&reply).await.unwrap();
            let _ = request(&mut r).await;
            w.write_all(b"{\"return\": {}}\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let mut c = QgaClient::connect(&path, Duration::from_secs(20)).await.unwrap();
        let err = c.ping().await.unwrap_err();
        assert!(matches!(err, QgaError::ReplyTooLong { limit: MAX_REPLY_BYTES }), "{err}");
        assert!(err.to_string().contains("longer than 8388608 bytes"), "{err}");
        assert!(matches!(c.ping().await, Err(QgaError::Protocol(_))), "the connection stays closed");
        // The guest's writes block once the socket buffers are full.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = written.load(Ordering::SeqCst);
        assert!(sent < MAX_REPLY_BYTES + 8 * 1024 * 1024, "the client read on: {sent} bytes");
        drop(c);
        let mut c = QgaClient::connect(&path, Duration::from_secs(20)).await.unwrap();
        c.ping().await.unwrap();
    }

    /// The requests on the wire are QGA's JSON, member for member, and a
    /// reply of the wrong shape is refused with a short message.
    #[tokio::test]
    async fn requests_are_qga_json_and_misshapen_replies_are_refused() {
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let log = seen.clone();
        let (_dir, path) = fake_agent(move |cmd, args| {
            log.lock().expect("lock").push((cmd.to_string(), args.clone()));
            Some(match cmd {
                "guest-exec" if args["path"] == "/bin/true" => r#"{"return": {"pid": 123}}"#.to_string(),
                "guest-exec" => format!(r#"{{"return": {{"pid": "{}"}}}}"#, "x".repeat(10_000)),
                "guest-file-read" => r#"{"return": {"count": 2, "buf-b64": "aGk=", "eof": true}}"#.to_string(),
                _ => r#"{"return": {}}"#.to_string(),
            })
        })
        .await;
        let mut c = QgaClient::connect(&path, Duration::from_secs(2)).await.expect("connect");
        let req = GuestExec {
            path: "/bin/true".into(),
            args: vec!["-c".into(), "true".into()],
            capture_output: true,
            ..Default::default()
        };
        assert_eq!(c.exec(&req).await.expect("exec"), 123);
        let read = c.file_read(1000, 10).await.expect("read");
        assert_eq!(read, GuestFileRead { data: b"hi".to_vec(), eof: true });
        c.file_close(1000).await.expect("close");
        let req = GuestExec { path: "/bin/sh".into(), env: vec!["A=1".into()], input: Some(b"hi".to_vec()), ..req };
        let err = c.exec(&req).await.expect_err("a pid that is no number");
        assert!(matches!(&err, QgaError::Protocol(m) if m.contains("guest-exec")), "{err}");
        assert!(err.to_string().len() < 600, "{err}");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            [
                ("guest-exec".into(), json!({"path": "/bin/true", "arg": ["-c", "true"], "capture-output": true})),
                ("guest-file-read".into(), json!({"handle": 1000, "count": 10})),
                ("guest-file-close".into(), json!({"handle": 1000})),
                (
                    "guest-exec".into(),
                    json!({"path": "/bin/sh", "arg": ["-c", "true"], "env": ["A=1"], "input-data": "aGk=",
                        "capture-output": true})
                ),
            ]
        );
        let err = decode::file_read(&json!({"count": 2, "eof": true})).expect_err("no data");
        assert!(err.to_string().contains("missing field `buf-b64`"), "{err}");
    }

    #[test]
    fn decoding_previews_what_the_guest_sent() {
        let long = format!("{{\"return\": {}}}", "1".repeat(100_000));
        assert_eq!(decode::reply("x", b"\xff  ").unwrap(), None);
        let err = decode::reply("guest-ping", &long.as_bytes()[..50_000]).unwrap_err();
        assert!(err.to_string().len() < 600, "{err}");
        let err = decode::reply("x", format!("{{\"error\": {{\"desc\": \"{}\"}}}}", "d".repeat(10_000)).as_bytes())
            .unwrap_err();
        assert!(err.to_string().len() < 600, "{err}");
        let err = decode::fsinfo(&json!({"a": "b".repeat(10_000)})).unwrap_err();
        assert!(err.to_string().len() < 600, "{err}");
    }
}
