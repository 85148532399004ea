//! `guest-exec` and `guest-exec-status`: processes started for the host,
//! their stdin feeder and output collectors, kept until the host has seen
//! their exit status (as qemu-ga does; until then they stay zombies).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nubo_guest_protocol::{CaptureMode, CaptureOutput, ExecArgs, ExecReturn, ExecStatus, EXEC_OUTPUT_MAX};

use crate::commands::QgaError;

type Collector = JoinHandle<(Vec<u8>, bool)>;

struct Running {
    child: Child,
    out: Option<Collector>,
    err: Option<Collector>,
}

/// The processes started by `guest-exec`, by pid.
#[derive(Default)]
pub struct Processes {
    running: HashMap<i64, Running>,
}

impl Processes {
    pub fn exec(&mut self, a: ExecArgs) -> Result<ExecReturn, QgaError> {
        // (stdout captured, stderr captured, stderr merged into stdout)
        let (out, err, merged) = match a.capture_output.map_or(CaptureMode::None, CaptureOutput::mode) {
            CaptureMode::None => (false, false, false),
            CaptureMode::Stdout => (true, false, false),
            CaptureMode::Stderr => (false, true, false),
            CaptureMode::Separated => (true, true, false),
            CaptureMode::Merged => (true, false, true),
        };
        let input = match &a.input_data {
            Some(b64) => Some(
                B64.decode(b64.as_bytes()).map_err(|e| QgaError::generic(format!("invalid base64 input-data: {e}")))?,
            ),
            None => None,
        };

        let mut cmd = Command::new(&a.path);
        cmd.args(&a.arg);
        // Like qemu-ga, a given env replaces the whole environment.
        if let Some(env) = a.env.as_ref().filter(|e| !e.is_empty()) {
            cmd.env_clear();
            for entry in env {
                match entry.split_once('=') {
                    Some((k, v)) if !k.is_empty() => cmd.env(k, v),
                    _ => {
                        return Err(QgaError::generic(format!(
                            "invalid environment entry '{entry}', expected NAME=VALUE"
                        )))
                    }
                };
            }
        }
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut merged_reader = None;
        if merged {
            let (reader, writer) =
                std::io::pipe().map_err(|e| QgaError::generic(format!("cannot create a pipe: {e}")))?;
            let writer2 = writer.try_clone().map_err(|e| QgaError::generic(format!("cannot dup a pipe: {e}")))?;
            cmd.stdout(writer).stderr(writer2);
            merged_reader = Some(reader);
        } else {
            cmd.stdout(if out { Stdio::piped() } else { Stdio::null() });
            cmd.stderr(if err { Stdio::piped() } else { Stdio::null() });
        }
        let mut child = cmd.spawn().map_err(|e| {
            QgaError::generic(format!(
                "Guest agent command failed, error was 'Failed to execute child process \"{}\" ({e})'",
                a.path
            ))
        })?;
        // Drop our copies of the merged pipe's write end (held by `cmd`),
        // or the collector would never see end-of-file.
        drop(cmd);

        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            // A process that never reads its input must not block the agent.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let out_collector = match merged_reader {
            Some(r) => Some(collect(r)),
            None => child.stdout.take().map(collect),
        };
        let err_collector = child.stderr.take().map(collect);
        let pid = i64::from(child.id());
        self.running.insert(pid, Running { child, out: out_collector, err: err_collector });
        Ok(ExecReturn { pid })
    }

    pub fn status(&mut self, pid: i64) -> Result<ExecStatus, QgaError> {
        let entry = self.running.get_mut(&pid).ok_or_else(|| QgaError::generic("Invalid parameter 'pid'"))?;
        let exit =
            entry.child.try_wait().map_err(|e| QgaError::generic(format!("cannot wait for process {pid}: {e}")))?;
        let drained = |c: &Option<Collector>| c.as_ref().is_none_or(JoinHandle::is_finished);
        // Exited only once its output is complete too, so no data is lost.
        let Some(exit) = exit.filter(|_| drained(&entry.out) && drained(&entry.err)) else {
            return Ok(ExecStatus { exited: false, ..ExecStatus::default() });
        };
        let Some(done) = self.running.remove(&pid) else {
            return Err(QgaError::generic("Invalid parameter 'pid'"));
        };
        use std::os::unix::process::ExitStatusExt;
        let mut status = ExecStatus { exited: true, exitcode: exit.code(), ..ExecStatus::default() };
        if status.exitcode.is_none() {
            status.signal = exit.signal();
        }
        // Output only when there was some, truncation only when it happened, as qemu-ga.
        let (out_data, out_truncated) = output(done.out);
        let (err_data, err_truncated) = output(done.err);
        status.out_data = out_data;
        status.out_truncated = out_truncated;
        status.err_data = err_data;
        status.err_truncated = err_truncated;
        Ok(status)
    }
}

/// A finished collector's (base64 data when not empty, truncated).
fn output(collector: Option<Collector>) -> (Option<String>, bool) {
    let Some(collector) = collector else { return (None, false) };
    let (data, truncated) = collector.join().unwrap_or_default();
    ((!data.is_empty()).then(|| B64.encode(&data)), truncated)
}

/// Reads a stream to its end in a thread: (first [`EXEC_OUTPUT_MAX`] bytes,
/// truncated); the rest is read and dropped so the process does not block.
fn collect(mut r: impl Read + Send + 'static) -> Collector {
    std::thread::spawn(move || {
        let mut data = Vec::new();
        let mut truncated = false;
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let room = EXEC_OUTPUT_MAX - data.len();
                    if n > room {
                        truncated = true;
                    }
                    data.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        (data, truncated)
    })
}
