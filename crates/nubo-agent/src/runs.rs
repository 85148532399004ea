//! Runs of recipes and commands inside instances, through the QEMU guest
//! agent protocol (so a stock qemu-guest-agent works like `tiny`'s own).
//!
//! A script run writes the script into the guest, starts it with its
//! output going to a log file there, then polls `guest-exec-status` and
//! follows the log with `guest-file-read`, shipping each new piece to the
//! control plane. The guest pid is reported as soon as the run starts, so
//! an agent that restarts mid-run picks the run up again instead of
//! starting it twice. A run whose process disappears (the guest rebooted
//! or stopped) is reported failed, never left running.

use crate::host::Host;
use crate::instances::{Instances, QgaSession};
use nubo_api::agent::{DesiredRun, RunAction, RunProgress};
use nubo_api::ids::InstanceId;
use nubo_api::views::RunState;
use nubo_hypervisor::{GuestExec, GuestExecStatus, QgaError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a run waits for the guest agent to answer after boot.
const GUEST_AGENT_WAIT: Duration = Duration::from_secs(300);
/// How long the guest agent may stay unreachable in the middle of a run.
const GUEST_AGENT_LOST: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);
/// Largest log piece read from the guest per call.
const READ_CHUNK: usize = 48 * 1024;
/// Where run scripts and logs live in the guest.
const GUEST_DIR: &str = "/var/lib/nubo/runs";
/// The environment every run starts with (guest-exec replaces the whole
/// environment, so PATH and HOME must be given).
const BASE_ENV: &[&str] =
    &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"];

/// A command for `guest-exec` with the base environment; `capture` asks
/// the guest agent to keep its output.
fn guest_command(path: &str, args: Vec<String>, capture: bool) -> GuestExec {
    GuestExec {
        path: path.to_string(),
        args,
        env: BASE_ENV.iter().map(|s| s.to_string()).collect(),
        input: None,
        capture_output: capture,
    }
}

/// How a run ended, before it is reported.
struct Outcome {
    state: RunState,
    exit_code: Option<i32>,
    error: Option<String>,
}

impl Outcome {
    fn exited(status: &GuestExecStatus) -> Self {
        match (status.exit_code, status.signal) {
            (Some(0), _) => Self { state: RunState::Succeeded, exit_code: Some(0), error: None },
            (Some(code), _) => Self { state: RunState::Failed, exit_code: Some(code), error: None },
            (None, Some(sig)) => Self {
                state: RunState::Failed,
                exit_code: None,
                error: Some(format!("the process was killed by signal {sig}")),
            },
            (None, None) => Self {
                state: RunState::Failed,
                exit_code: None,
                error: Some("the process ended without an exit code".into()),
            },
        }
    }

    fn failed(why: impl Into<String>) -> Self {
        Self { state: RunState::Failed, exit_code: None, error: Some(why.into()) }
    }
}

/// What a run needs: the host (its control plane, its VMs) and the
/// instances' guest channels.
pub(crate) struct RunContext {
    pub(crate) host: Arc<Host>,
    pub(crate) instances: Arc<Instances>,
}

/// Follows one run to its end. Errors are reported as a failed run.
pub(crate) async fn execute(ctx: Arc<RunContext>, instance: InstanceId, run: DesiredRun) {
    let mut log = LogShipper { ctx: ctx.clone(), run: run.clone(), offset: run.log_offset, pid: run.guest_pid };
    let outcome = match drive(&ctx, &instance, &run, &mut log).await {
        Ok(o) => o,
        Err(why) => Outcome::failed(why),
    };
    tracing::info!(run = %run.id, state = %outcome.state, exit_code = ?outcome.exit_code, error = ?outcome.error, "run finished");
    log.finish(outcome).await;
}

/// Sends progress to the control plane, keeping the log offset in step
/// with what the server has.
struct LogShipper {
    ctx: Arc<RunContext>,
    run: DesiredRun,
    offset: u64,
    pid: Option<i64>,
}

impl LogShipper {
    async fn send(&mut self, state: RunState, raw: &[u8], outcome: Option<&Outcome>) {
        let progress = RunProgress {
            host_id: self.ctx.host.id.clone(),
            state,
            guest_pid: self.pid,
            log_offset: self.offset,
            log_raw_len: raw.len() as u64,
            log: String::from_utf8_lossy(raw).into_owned(),
            exit_code: outcome.and_then(|o| o.exit_code),
            error: outcome.and_then(|o| o.error.clone()),
        };
        // A few tries: the end of a run must not be lost to one hiccup.
        for attempt in 0..5 {
            match self.ctx.host.client.run_progress(&self.run.id, &progress).await {
                Ok(ack) => {
                    self.offset = ack.log_offset;
                    return;
                }
                Err(e) => {
                    tracing::warn!(run = %self.run.id, attempt, error = %e, "run progress not delivered");
                    tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
                }
            }
        }
    }

    async fn running(&mut self) {
        self.send(RunState::Running, &[], None).await;
    }

    async fn chunk(&mut self, raw: &[u8]) {
        if !raw.is_empty() {
            self.send(RunState::Running, raw, None).await;
        }
    }

    async fn finish(&mut self, outcome: Outcome) {
        self.send(outcome.state, &[], Some(&outcome)).await;
    }
}

async fn drive(
    ctx: &Arc<RunContext>,
    id: &InstanceId,
    run: &DesiredRun,
    log: &mut LogShipper,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let timeout = Duration::from_secs(run.timeout_secs.max(1));
    match &run.action {
        RunAction::Script { body, env } => {
            let pid = match run.guest_pid.filter(|_| run.state == RunState::Running) {
                Some(pid) => pid, // adopted after an agent restart
                None => {
                    if run.state == RunState::Running {
                        return Err("the agent restarted before the run was under way; run it again".into());
                    }
                    let pid = start_script(ctx, id, run, body, env).await?;
                    log.pid = Some(pid);
                    log.running().await;
                    pid
                }
            };
            follow(ctx, id, run, pid, started, timeout, log).await
        }
        RunAction::Exec { command } => {
            let (program, args) = command.split_first().ok_or("the command is empty")?;
            let req = guest_command(program, args.to_vec(), true);
            exec_captured(ctx, id, run, req, started, timeout, log).await
        }
        RunAction::CloudInit => {
            // Exit 2 is cloud-init 23.4+'s "done, with recoverable errors"
            // (e.g. deprecated keys): the config was applied, the log says what.
            let script = "cloud-init status --wait --long; rc=$?; echo '--- /var/log/cloud-init-output.log (tail)'; \
                          tail -n 40 /var/log/cloud-init-output.log 2>/dev/null; \
                          if [ $rc -eq 2 ]; then echo 'cloud-init finished with recoverable errors'; rc=0; fi; exit $rc";
            let req = guest_command("/bin/sh", vec!["-c".into(), script.into()], true);
            exec_captured(ctx, id, run, req, started, timeout, log).await
        }
    }
}

/// Connects to the instance's guest agent, waiting up to `wait` for it to
/// answer; gives up at once when the VM is not running.
async fn connect(ctx: &Arc<RunContext>, id: &InstanceId, wait: Duration) -> Result<QgaSession, String> {
    let until = Instant::now() + wait;
    loop {
        if !ctx.host.vm_running(id).await {
            return Err("the instance is not running".into());
        }
        match ctx.instances.guest_agent(id, Duration::from_secs(3)).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= until => {
                return Err(format!("the guest agent did not answer within {} s: {e}", wait.as_secs()))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn start_script(
    ctx: &Arc<RunContext>,
    id: &InstanceId,
    run: &DesiredRun,
    body: &str,
    params: &[(String, String)],
) -> Result<i64, String> {
    let mut s = connect(ctx, id, GUEST_AGENT_WAIT).await?;
    let q = &mut s.client;
    let mkdir = guest_command("/bin/mkdir", vec!["-p".into(), GUEST_DIR.into()], true);
    let st = q.run(&mkdir, Duration::from_secs(30)).await.map_err(|e| format!("preparing {GUEST_DIR}: {e}"))?;
    if st.exit_code != Some(0) {
        return Err(format!("cannot create {GUEST_DIR} in the guest: {}", String::from_utf8_lossy(&st.stderr).trim()));
    }
    let script = format!("{GUEST_DIR}/{}.sh", run.id);
    let log = format!("{GUEST_DIR}/{}.log", run.id);
    q.write_file(&script, body.as_bytes()).await.map_err(|e| format!("writing the script to {script}: {e}"))?;
    // The shell redirects the script's output to the log we follow; the
    // script's own shebang is honoured when it has one.
    let wrapper = format!(
        "chmod 700 {script} && if [ \"$(head -c 2 {script})\" = '#!' ]; then exec {script} >{log} 2>&1 </dev/null; else exec /bin/sh {script} >{log} 2>&1 </dev/null; fi"
    );
    let mut req = guest_command("/bin/sh", vec!["-c".into(), wrapper], false);
    req.env.extend(params.iter().map(|(k, v)| format!("{k}={v}")));
    req.env.push(format!("NUBO_RUN_ID={}", run.id));
    req.env.push(format!("NUBO_INSTANCE_ID={id}"));
    let pid = q.exec(&req).await.map_err(|e| format!("starting the script: {e}"))?;
    tracing::info!(run = %run.id, pid, "run started in the guest");
    Ok(pid)
}

/// Polls the script's process and ships its log until it ends.
async fn follow(
    ctx: &Arc<RunContext>,
    id: &InstanceId,
    run: &DesiredRun,
    pid: i64,
    started: Instant,
    timeout: Duration,
    log: &mut LogShipper,
) -> Result<Outcome, String> {
    let path = format!("{GUEST_DIR}/{}.log", run.id);
    // Guest file handles outlive our connections, so one handle serves
    // the whole run; `read_to` is where the guest's reading position is.
    let mut handle: Option<i64> = None;
    let mut read_to: u64 = 0;
    let mut lost_since: Option<Instant> = None;
    loop {
        if started.elapsed() > timeout {
            if let Ok(mut s) = connect(ctx, id, Duration::from_secs(5)).await {
                let kill = guest_command("/bin/kill", vec!["-9".into(), pid.to_string()], false);
                let _ = s.client.run(&kill, Duration::from_secs(10)).await;
            }
            return Ok(Outcome::failed(format!("timed out after {} s and was killed", timeout.as_secs())));
        }
        let mut s = match connect(ctx, id, Duration::from_secs(5)).await {
            Ok(s) => {
                lost_since = None;
                s
            }
            Err(e) => {
                if !ctx.host.vm_running(id).await {
                    return Ok(Outcome::failed("the instance stopped during the run"));
                }
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > GUEST_AGENT_LOST {
                    return Ok(Outcome::failed(format!("lost the guest agent during the run: {e}")));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let status = match s.client.exec_status(pid).await {
            Ok(st) => st,
            Err(QgaError::Guest { desc, .. }) => {
                return Ok(Outcome::failed(format!(
                    "the guest no longer knows the run's process (did it reboot?): {desc}"
                )))
            }
            Err(e) => {
                tracing::debug!(run = %run.id, error = %e, "exec status failed; retrying");
                drop(s);
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        // Read whatever the log has now (after the status, so an exited
        // process's last output is included).
        if handle.is_none() {
            if let Ok(h) = s.client.file_open(&path, "r").await {
                handle = Some(h);
                read_to = 0;
            }
        }
        if let Some(h) = handle {
            loop {
                match s.client.file_read(h, READ_CHUNK).await {
                    Ok(chunk) => {
                        let start = read_to;
                        read_to += chunk.data.len() as u64;
                        // Skip what the server already has (after adoption).
                        if read_to > log.offset {
                            let skip = log.offset.saturating_sub(start) as usize;
                            log.chunk(&chunk.data[skip.min(chunk.data.len())..]).await;
                        }
                        if chunk.eof || chunk.data.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(run = %run.id, error = %e, "reading the run log failed");
                        handle = None;
                        break;
                    }
                }
            }
        }
        if status.exited {
            if let Some(h) = handle {
                let _ = s.client.file_close(h).await;
            }
            return Ok(Outcome::exited(&status));
        }
        drop(s);
        tokio::time::sleep(POLL).await;
    }
}

/// Runs one command with captured output; the output is the run's log.
async fn exec_captured(
    ctx: &Arc<RunContext>,
    id: &InstanceId,
    run: &DesiredRun,
    req: GuestExec,
    started: Instant,
    timeout: Duration,
    log: &mut LogShipper,
) -> Result<Outcome, String> {
    if run.state == RunState::Running {
        // Captured output lives in the old guest-exec slot only; after an
        // agent restart there is no safe way to resume it.
        return Err("the agent restarted during the command; run it again".into());
    }
    let pid = {
        let mut s = connect(ctx, id, GUEST_AGENT_WAIT).await?;
        s.client.exec(&req).await.map_err(|e| format!("starting {}: {e}", req.path))?
    };
    log.pid = Some(pid);
    log.running().await;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > timeout {
            return Ok(Outcome::failed(format!("timed out after {} s", timeout.as_secs())));
        }
        let mut s = match connect(ctx, id, Duration::from_secs(5)).await {
            Ok(s) => s,
            Err(e) => {
                if !ctx.host.vm_running(id).await {
                    return Ok(Outcome::failed("the instance stopped during the command"));
                }
                tracing::debug!(run = %run.id, error = %e, "guest agent busy; retrying");
                continue;
            }
        };
        match s.client.exec_status(pid).await {
            Ok(st) if st.exited => {
                let mut out = st.stdout.clone();
                if !st.stderr.is_empty() {
                    out.extend_from_slice(&st.stderr);
                }
                if st.stdout_truncated || st.stderr_truncated {
                    out.extend_from_slice(b"\n[output truncated by the guest agent]\n");
                }
                log.chunk(&out).await;
                return Ok(Outcome::exited(&st));
            }
            Ok(_) => {}
            Err(QgaError::Guest { desc, .. }) => {
                return Ok(Outcome::failed(format!("the guest lost the command's process: {desc}")))
            }
            Err(e) => tracing::debug!(run = %run.id, error = %e, "exec status failed; retrying"),
        }
    }
}
