//! A small typed QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! It owns one monitor connection: the greeting and `qmp_capabilities`
//! handshake, command/reply matching by `id`, buffering of asynchronous events
//! that arrive between replies, and a timeout on every call. QEMU serves one
//! QMP client per socket at a time, so keep connections short.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest single QMP message accepted (query-qmp-schema is ~200 KiB).
const MAX_LINE: u64 = 16 * 1024 * 1024;
/// Events kept for [`QmpClient::take_events`]; older ones are dropped.
const MAX_EVENTS: usize = 256;

/// Errors from the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}; is the VM running? see qemu.log in its directory")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {what} timed out after {after:?}; QEMU may be hung, or another client holds the monitor (QMP serves one client at a time)")]
    Timeout { what: String, after: Duration },
    #[error("QMP I/O error during {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU closed the QMP connection during {what}; the VM process has probably exited (see qemu.log)")]
    Closed { what: String },
    #[error("QMP protocol error during {what}: {detail}")]
    Protocol { what: String, detail: String },
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("this QMP connection is unusable after an earlier timeout or I/O error; connect again")]
    Broken,
}

/// One CPU slot of a VM (`query-hotpluggable-cpus`): its CPU type, where
/// it sits (`props`: socket-id, core-id, thread-id, ...) and, when a CPU
/// is plugged in, that CPU's QOM path.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HotpluggableCpu {
    #[serde(rename = "type")]
    pub driver: String,
    pub props: serde_json::Map<String, Value>,
    #[serde(rename = "qom-path", default)]
    pub qom_path: Option<String>,
}

/// An asynchronous QMP event (`SHUTDOWN`, `RESET`, `STOP`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
    pub timestamp: Option<Value>,
}

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    /// QEMU's run state: "running", "paused", "shutdown", "guest-panicked", ...
    pub status: String,
}

/// The QEMU version reported in the greeting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QemuVersion {
    pub major: u64,
    pub minor: u64,
    pub micro: u64,
}

/// One open QMP connection, in command mode.
#[derive(Debug)]
pub struct QmpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: Vec<u8>,
    next_id: u64,
    timeout: Duration,
    events: VecDeque<QmpEvent>,
    version: QemuVersion,
    broken: bool,
}

impl QmpClient {
    /// Connect to `path`, read the greeting and negotiate capabilities.
    /// Each step is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QmpError::Connect { path: path.to_path_buf(), source }),
            Err(_) => return Err(QmpError::Timeout { what: format!("connect to {}", path.display()), after: timeout }),
        };
        let (r, w) = stream.into_split();
        let mut client = QmpClient {
            reader: BufReader::new(r),
            writer: w,
            line: Vec::new(),
            next_id: 1,
            timeout,
            events: VecDeque::new(),
            version: QemuVersion::default(),
            broken: false,
        };
        let outcome = tokio::time::timeout(timeout, client.read_greeting()).await;
        let greeting = client.finish("greeting", timeout, outcome, true)?;
        let qmp = greeting.get("QMP").ok_or_else(|| QmpError::Protocol {
            what: "greeting".into(),
            detail: format!("expected a QMP greeting, got {greeting}"),
        })?;
        let v = &qmp["version"]["qemu"];
        client.version = QemuVersion {
            major: v["major"].as_u64().unwrap_or(0),
            minor: v["minor"].as_u64().unwrap_or(0),
            micro: v["micro"].as_u64().unwrap_or(0),
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// QEMU's version from the greeting.
    pub fn qemu_version(&self) -> &QemuVersion {
        &self.version
    }

    /// Change the per-call timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Run `command` with optional `arguments`; returns the `return` value.
    /// Events that arrive meanwhile are kept for [`Self::take_events`].
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        if self.broken {
            return Err(QmpError::Broken);
        }
        let timeout = self.timeout;
        let outcome = tokio::time::timeout(timeout, self.roundtrip(command, id, msg)).await;
        self.finish(&format!("command `{command}`"), timeout, outcome, true)
    }

    async fn roundtrip(&mut self, command: &str, id: u64, msg: Value) -> Result<Value, QmpError> {
        let what = format!("command `{command}`");
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).await.map_err(|source| io_error(&what, source))?;
        loop {
            let reply = self.read_message(&what).await?;
            if reply.get("event").is_some() {
                self.push_event(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                tracing::debug!(%reply, "ignoring QMP reply for another command");
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("GenericError").to_string(),
                    desc: err["desc"].as_str().unwrap_or("no description").to_string(),
                });
            }
            return Err(QmpError::Protocol { what, detail: format!("reply has neither return nor error: {reply}") });
        }
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        let v = self.execute("query-status", None).await?;
        serde_json::from_value(v.clone()).map_err(|e| QmpError::Protocol {
            what: "command `query-status`".into(),
            detail: format!("unexpected reply {v}: {e}"),
        })
    }

    /// Press the ACPI power button; the guest decides whether to power off.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Hard reset, like the reset button.
    pub async fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// Pause the vCPUs.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resume the vCPUs.
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    /// `query-hotpluggable-cpus`: the VM's CPU slots, plugged or empty.
    pub async fn query_hotpluggable_cpus(&mut self) -> Result<Vec<HotpluggableCpu>, QmpError> {
        let v = self.execute("query-hotpluggable-cpus", None).await?;
        serde_json::from_value(v).map_err(|e| QmpError::Protocol {
            what: "query-hotpluggable-cpus".into(),
            detail: format!("unexpected reply: {e}"),
        })
    }

    /// Make QEMU exit now (without asking the guest). QEMU may close the
    /// connection before or right after replying; both count as success.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. })
                if matches!(source.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Events received so far (oldest first), emptying the buffer.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        self.events.drain(..).collect()
    }

    /// The next event: a buffered one, or wait up to `timeout` for one.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<QmpEvent, QmpError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        if self.broken {
            return Err(QmpError::Broken);
        }
        let outcome = tokio::time::timeout(timeout, self.read_event()).await;
        self.finish("waiting for an event", timeout, outcome, false)
    }

    async fn read_event(&mut self) -> Result<QmpEvent, QmpError> {
        loop {
            let msg = self.read_message("waiting for an event").await?;
            if msg.get("event").is_some() {
                return Ok(to_event(msg));
            }
            tracing::debug!(%msg, "ignoring unexpected QMP message");
        }
    }

    /// Turn the outcome of a timed call into a result, marking the
    /// connection broken when its state can no longer be trusted.
    fn finish<T>(
        &mut self,
        what: &str,
        after: Duration,
        outcome: Result<Result<T, QmpError>, tokio::time::error::Elapsed>,
        break_on_timeout: bool,
    ) -> Result<T, QmpError> {
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if !matches!(e, QmpError::Command { .. }) {
                    self.broken = true;
                }
                Err(e)
            }
            Err(_) => {
                // Partial reads survive in `self.line`, but a command may have
                // been half written: then the stream is out of step.
                self.broken |= break_on_timeout;
                Err(QmpError::Timeout { what: what.to_string(), after })
            }
        }
    }

    /// Read one complete JSON message. Cancel-safe: a partly read line stays
    /// in `self.line` and is completed by the next call.
    async fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        loop {
            let room = MAX_LINE.saturating_sub(self.line.len() as u64);
            let n = (&mut self.reader)
                .take(room)
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|source| io_error(what, source))?;
            if self.line.last() != Some(&b'\n') {
                if n == 0 {
                    return Err(QmpError::Closed { what: what.into() });
                }
                if self.line.len() as u64 >= MAX_LINE {
                    return Err(QmpError::Protocol {
                        what: what.into(),
                        detail: format!("message longer than {MAX_LINE} bytes"),
                    });
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            return serde_json::from_slice(text).map_err(|e| QmpError::Protocol {
                what: what.into(),
                detail: format!("invalid JSON ({e}): {}", String::from_utf8_lossy(text)),
            });
        }
    }

    /// The greeting, past any events before it: QEMU serves one QMP
    /// client at a time, and a client that was queued behind another can
    /// be sent events of that one's session (a backup job's
    /// JOB_STATUS_CHANGE, say) before its own greeting. They are not this
    /// session's, so they are dropped.
    async fn read_greeting(&mut self) -> Result<Value, QmpError> {
        loop {
            let msg = self.read_message("greeting").await?;
            if msg.get("event").is_none() {
                return Ok(msg);
            }
            tracing::debug!(%msg, "dropping a QMP event sent before the greeting");
        }
    }

    fn push_event(&mut self, msg: Value) {
        let ev = to_event(msg);
        tracing::debug!(event = %ev.event, "QMP event");
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }
}

fn to_event(msg: Value) -> QmpEvent {
    QmpEvent {
        event: msg["event"].as_str().unwrap_or_default().to_string(),
        data: msg.get("data").cloned().unwrap_or(Value::Null),
        timestamp: msg.get("timestamp").cloned(),
    }
}

fn io_error(what: &str, source: std::io::Error) -> QmpError {
    QmpError::Io { what: what.to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU monitor: sends the greeting, then for each command line
    /// received calls `reply(command, id)` and writes the lines it returns.
    async fn fake_server<F>(reply: F) -> (tempfile::TempDir, PathBuf)
    where
        F: Fn(&str, u64) -> Vec<String> + Send + 'static,
    {
        fake_server_after("", reply).await
    }

    /// [`fake_server`] that sends the lines of `before` ahead of the greeting.
    async fn fake_server_after<F>(before: &'static str, reply: F) -> (tempfile::TempDir, PathBuf)
    where
        F: Fn(&str, u64) -> Vec<String> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            w.write_all(format!("{before}{GREETING}\r\n").as_bytes()).await.unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                let id = v["id"].as_u64().unwrap();
                for out in reply(&cmd, id) {
                    // Split writes to exercise partial-line reads.
                    let (a, b) = out.split_at(out.len() / 2);
                    w.write_all(a.as_bytes()).await.unwrap();
                    w.flush().await.unwrap();
                    w.write_all(format!("{b}\r\n").as_bytes()).await.unwrap();
                }
                if cmd == "quit" {
                    return;
                }
            }
        });
        (dir, path)
    }

    /// A client queued behind another may be sent that one's events
    /// before its greeting: they are skipped, and not taken as its own.
    #[tokio::test]
    async fn events_before_the_greeting_are_skipped() {
        const EARLY: &str = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"waiting\", \"id\": \"bk1\"}}\r\n";
        let (_dir, path) = fake_server_after(EARLY, |_, id| vec![format!(r#"{{"return": {{}}, "id": {id}}}"#)]).await;
        let mut c = QmpClient::connect(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(c.qemu_version(), &QemuVersion { major: 7, minor: 2, micro: 22 });
        assert!(c.take_events().is_empty(), "another session's event was kept");
    }

    #[tokio::test]
    async fn commands_events_and_errors() {
        let (_dir, path) = fake_server(|cmd, id| match cmd {
            "qmp_capabilities" => vec![format!(r#"{{"return": {{}}, "id": {id}}}"#)],
            "query-status" => vec![
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {"guest": false}}"#
                    .into(),
                r#"{"return": {}, "id": 999}"#.into(),
                format!(r#"{{"return": {{"status": "paused", "singlestep": false, "running": false}}, "id": {id}}}"#),
            ],
            "system_powerdown" => vec![
                format!(r#"{{"return": {{}}, "id": {id}}}"#),
                r#"{"timestamp": {"seconds": 1, "microseconds": 3}, "event": "POWERDOWN"}"#.into(),
            ],
            "device_add" => {
                vec![format!(r#"{{"error": {{"class": "GenericError", "desc": "Bus 'hp9' not found"}}, "id": {id}}}"#)]
            }
            "quit" => vec![format!(r#"{{"return": {{}}, "id": {id}}}"#)],
            _ => vec![],
        })
        .await;
        let mut c = QmpClient::connect(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(c.qemu_version(), &QemuVersion { major: 7, minor: 2, micro: 22 });
        let st = c.query_status().await.unwrap();
        assert_eq!(st, StatusInfo { running: false, status: "paused".into() });
        let events = c.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "RESET");
        assert_eq!(events[0].data["guest"], false);

        c.system_powerdown().await.unwrap();
        let ev = c.next_event(Duration::from_secs(2)).await.unwrap();
        assert_eq!(ev.event, "POWERDOWN");

        let err = c.execute("device_add", Some(json!({"driver": "virtio-blk-pci", "bus": "hp9"}))).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { class, desc, .. } if class == "GenericError" && desc.contains("hp9")),
            "{err}"
        );
        // A command error leaves the connection usable.
        c.quit().await.unwrap();
    }

    #[tokio::test]
    async fn timeouts_and_closed_connections() {
        let (_dir, path) = fake_server(|cmd, id| match cmd {
            "qmp_capabilities" => vec![format!(r#"{{"return": {{}}, "id": {id}}}"#)],
            _ => vec![], // never answers anything else
        })
        .await;
        let mut c = QmpClient::connect(&path, Duration::from_millis(300)).await.unwrap();
        // Waiting for an event that never comes is not fatal...
        let err = c.next_event(Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        // ...a command that gets no reply is, and says why.
        let err = c.system_reset().await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("one client at a time"));
        assert!(matches!(c.system_reset().await, Err(QmpError::Broken)));

        // Nothing listening.
        let err = QmpClient::connect(&path.with_file_name("none.sock"), Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }

    #[tokio::test]
    async fn server_that_hangs_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}}}\r\n").await.unwrap();
            // Close right after the greeting.
        });
        let err = QmpClient::connect(&path, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, QmpError::Closed { .. } | QmpError::Io { .. }), "{err}");
    }
}
