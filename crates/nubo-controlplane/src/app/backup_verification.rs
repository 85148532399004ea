//! Verified backups: which completed backups a plan has verified
//! ([`asks`]), and each verification's life. A `pending` backup is restored
//! as a throwaway instance (`verify-<backup>`, tagged
//! `nubo:verification=<backup>`, user-mode networking only, the original's
//! forwarded guest ports, not counted against the project's quota: its row
//! records `verification_of`) with copies of the original instance's checks
//! (every 5 s, hard at the first problem), run by its host like any check.
//! [`judge`] (pure) decides from what is seen; the result goes on the
//! backup (`verify_state`, `verify_detail` with the console's last lines
//! on failure) and on the original instance's `backup-verification` check,
//! which the control plane sets (no host runs it) and alert rules read like
//! any other. Then the copies and the throwaway instance go.

use crate::app::restores::{restore_as_instance, RestoreChoices};
use crate::auth::{Caller, Role};
use crate::backups::BackupRow;
use crate::checks::{CheckRow, CheckSpec, NewCheck};
use crate::error::{AppError, AppResult};
use crate::store::now_ms;
use crate::Ctx;
use nubo_api::backup::{VerifyMode, VerifyState};
use nubo_api::ids::CheckId;
use nubo_api::monitoring::{CheckResult, CheckState, CheckStateType};
use nubo_api::views::InstanceState;
use std::sync::Arc;

/// A verification not decided within this long has failed.
pub const DEADLINE_MS: i64 = 5 * 60 * 1000;

/// A copied check's failure counts only once the guest agent answered and
/// the instance has been running this long: a service started late in the
/// boot would otherwise fail the check before it could listen.
pub const CHECK_GRACE_MS: i64 = 30 * 1000;

/// The check on the original instance that carries verifications' results.
pub const CHECK_NAME: &str = "backup-verification";

/// The tag on a throwaway verification instance (value: the backup's id).
pub const TAG: &str = "nubo:verification";

/// How many console lines a failure's detail ends with.
const CONSOLE_LINES: usize = 10;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Whether a backup that just completed is to be verified: every one
/// (`each`), or the first of its instance in its plan that UTC day
/// (`daily`; `earlier_today`: another completed before it that day).
pub fn asks(mode: VerifyMode, earlier_today: bool) -> bool {
    match mode {
        VerifyMode::None => false,
        VerifyMode::Each => true,
        VerifyMode::Daily => !earlier_today,
    }
}

/// One copied check as seen.
#[derive(Debug, Clone)]
pub struct SeenCheck {
    pub name: String,
    pub state: CheckState,
    pub state_type: CheckStateType,
    pub output: String,
    pub last_check_ms: Option<i64>,
}

/// What a running verification looks like now.
#[derive(Debug, Clone)]
pub struct Observed {
    pub state: InstanceState,
    pub error: Option<String>,
    /// The instance view's `guest` is reported (the guest agent answered).
    pub guest: bool,
    /// When it became running (None: it is not running).
    pub running_since_ms: Option<i64>,
    /// When the throwaway instance was launched.
    pub started_ms: i64,
    pub now_ms: i64,
    pub checks: Vec<SeenCheck>,
}

/// What [`judge`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Verified(String),
    Failed(String),
}

/// The verdict on a running verification.
pub fn judge(o: &Observed) -> Verdict {
    match o.state {
        InstanceState::Error | InstanceState::Terminated | InstanceState::Stopped => {
            return Verdict::Failed(format!(
                "the restored instance did not start: it is {}{}",
                o.state,
                o.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        _ => {}
    }
    let running = o.state == InstanceState::Running;
    if let (true, Some(since)) = (running && o.guest, o.running_since_ms) {
        let failing = o.checks.iter().find(|c| {
            c.state != CheckState::Ok
                && c.state != CheckState::Pending
                && c.state_type == CheckStateType::Hard
                && c.last_check_ms.is_some_and(|t| t - since >= CHECK_GRACE_MS)
        });
        if let Some(c) = failing {
            return Verdict::Failed(format!("check {} is {}: {}", c.name, c.state, c.output));
        }
        if o.checks.iter().all(|c| c.state == CheckState::Ok) {
            return Verdict::Verified(if o.checks.is_empty() {
                "it booted and its guest agent answered (the instance has no checks)".to_string()
            } else {
                let passed: Vec<String> = o.checks.iter().map(|c| format!("{} ({})", c.name, c.output)).collect();
                format!("it booted, its guest agent answered, and its checks passed: {}", passed.join("; "))
            });
        }
    }
    if o.now_ms - o.started_ms >= DEADLINE_MS {
        let why = if !running {
            format!("the restored instance is still {}", o.state)
        } else if !o.guest {
            "its guest agent never answered".to_string()
        } else {
            let open: Vec<String> = o
                .checks
                .iter()
                .filter(|c| c.state != CheckState::Ok)
                .map(|c| format!("check {} is {}: {}", c.name, c.state, c.output))
                .collect();
            open.join("; ")
        };
        return Verdict::Failed(format!("not verified within {} minutes: {why}", DEADLINE_MS / 60_000));
    }
    Verdict::Wait
}

/// Marks a backup that just completed `pending` when its plan asks for it.
pub async fn on_completed(ctx: &Ctx, b: &BackupRow) -> AppResult<()> {
    let Some(plan_id) = &b.plan_id else { return Ok(()) };
    let Some(plan) = ctx.store.backup_plan(plan_id).await? else { return Ok(()) };
    let mode = VerifyMode::parse(&plan.verify).unwrap_or(VerifyMode::None);
    if mode == VerifyMode::None {
        return Ok(());
    }
    let day = now_ms().div_euclid(DAY_MS) * DAY_MS;
    let earlier: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE instance_id = $1 AND plan_id = $2 AND id <> $3
           AND state = 'completed' AND finished_at_ms >= $4 AND finished_at_ms < $5",
    )
    .bind(&b.instance_id)
    .bind(plan_id)
    .bind(&b.id)
    .bind(day)
    .bind(day + DAY_MS)
    .fetch_one(&ctx.store.pool)
    .await?;
    if asks(mode, earlier > 0) {
        sqlx::query("UPDATE backups SET verify_state = 'pending' WHERE id = $1 AND verify_state = 'none'")
            .bind(&b.id)
            .execute(&ctx.store.pool)
            .await?;
    }
    Ok(())
}

/// One round: starts the pending verifications, then judges the running
/// ones (part of the `backups` task).
pub async fn step(ctx: &Arc<Ctx>, now: i64) -> AppResult<()> {
    for b in in_state(ctx, VerifyState::Pending).await? {
        start(ctx, &b).await?;
    }
    for b in in_state(ctx, VerifyState::Running).await? {
        advance(ctx, &b, now).await?;
    }
    sweep(ctx).await
}

/// Removes verification instances no running verification owns: their
/// backup was deleted (by hand or by its plan's retention) while it was
/// being verified. Runs after this round's starts, so an instance just
/// launched is already recorded on its backup.
async fn sweep(ctx: &Ctx) -> AppResult<()> {
    let orphans: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM instances WHERE verification_of IS NOT NULL AND desired <> 'deleted'
           AND NOT EXISTS (SELECT 1 FROM backups WHERE backups.id = instances.verification_of
             AND backups.verify_state = 'running' AND backups.verify_instance_id = instances.id)",
    )
    .fetch_all(&ctx.store.pool)
    .await?;
    for iid in orphans {
        remove(ctx, &iid).await?;
        tracing::info!(instance = %iid, "verification instance of a deleted backup removed");
    }
    Ok(())
}

/// Deletes the copied checks of a verification instance and terminates it.
async fn remove(ctx: &Ctx, iid: &str) -> AppResult<()> {
    let copies: Vec<String> =
        sqlx::query_scalar("SELECT id FROM checks WHERE target = $1").bind(iid).fetch_all(&ctx.store.pool).await?;
    for c in copies {
        ctx.store.delete_check(&c).await?;
    }
    ctx.store.terminate(iid).await?;
    ctx.bump();
    Ok(())
}

async fn in_state(ctx: &Ctx, s: VerifyState) -> AppResult<Vec<BackupRow>> {
    Ok(sqlx::query_as("SELECT * FROM backups WHERE verify_state = $1 AND state = 'completed' ORDER BY created_at_ms")
        .bind(s.as_str())
        .fetch_all(&ctx.store.pool)
        .await?)
}

/// The identity a verification restores as: a member of the backup's project.
fn verifier(project: &str) -> Caller {
    Caller {
        user_id: CHECK_NAME.into(),
        user_name: CHECK_NAME.into(),
        admin: false,
        project_id: Some(project.to_string()),
        project_name: None,
        role: Role::Member,
    }
}

/// Restores the backup as its throwaway instance and copies the original's
/// checks onto it. The backup is `running` before the launch, so a second
/// round never launches a second instance for it.
async fn start(ctx: &Arc<Ctx>, b: &BackupRow) -> AppResult<()> {
    let claimed = sqlx::query(
        "UPDATE backups SET verify_state = 'running', verify_detail = NULL, verify_instance_id = NULL
         WHERE id = $1 AND verify_state = 'pending'",
    )
    .bind(&b.id)
    .execute(&ctx.store.pool)
    .await?;
    if claimed.rows_affected() != 1 {
        return Ok(());
    }
    let Some(rb) = ctx.store.backup_for_restore(&b.id).await? else { return Ok(()) };
    let mut ports: Vec<u16> =
        ctx.store.ports(&b.instance_id).await?.iter().filter_map(|p| u16::try_from(p.guest_port).ok()).collect();
    let recorded = rb.instance();
    // The recorded view's ports: guest port (as a string key) -> host address.
    for guest in recorded.get("ports").and_then(serde_json::Value::as_object).into_iter().flat_map(|m| m.keys()) {
        if let Ok(g) = guest.parse::<u16>() {
            ports.push(g);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    let choices = RestoreChoices {
        name: format!("verify-{}", b.id),
        with_networks: false,
        pin: None,
        extra_tags: vec![(TAG.to_string(), b.id.clone())],
        ports,
        verification_of: Some(b.id.clone()),
    };
    let row = match restore_as_instance(ctx, &verifier(&b.project_id), &rb, &b.project_id, &choices).await {
        Ok(row) => row,
        // A database failure is the round's, tried again next round.
        Err(e @ AppError::Internal { .. }) => return Err(e),
        Err(e) => {
            let v = Verdict::Failed(format!("the backup could not be restored as an instance: {e}"));
            return finish(ctx, b, None, v).await;
        }
    };
    sqlx::query("UPDATE backups SET verify_instance_id = $2 WHERE id = $1")
        .bind(&b.id)
        .bind(&row.id)
        .execute(&ctx.store.pool)
        .await?;
    let originals: Vec<CheckRow> = sqlx::query_as(
        "SELECT * FROM checks WHERE target = $1 AND kind IN ('tcp', 'http', 'liveness', 'plugin') ORDER BY name",
    )
    .bind(&b.instance_id)
    .fetch_all(&ctx.store.pool)
    .await?;
    for c in originals {
        let Some(spec) = c.spec() else { continue };
        ctx.store
            .insert_check(&NewCheck {
                id: &CheckId::generate(),
                project_id: c.project_id.as_deref(),
                name: &c.name,
                target: &row.id,
                spec: &spec,
                interval_secs: 5,
                retry_interval_secs: 5,
                max_attempts: 1,
                timeout_secs: c.timeout_secs.max(1) as u64,
            })
            .await?;
    }
    ctx.bump();
    tracing::info!(backup = %b.id, instance = %row.id, "backup verification started");
    Ok(())
}

/// Judges a running verification; ends it when decided.
async fn advance(ctx: &Arc<Ctx>, b: &BackupRow, now: i64) -> AppResult<()> {
    let Some(iid) = &b.verify_instance_id else {
        let v = Verdict::Failed("its verification instance was never launched (the control plane stopped while launching it); back up again".into());
        return finish(ctx, b, None, v).await;
    };
    let Some(row) = ctx.store.instance(iid).await? else {
        return finish(ctx, b, None, Verdict::Failed(format!("its verification instance {iid} is gone"))).await;
    };
    let checks: Vec<CheckRow> = sqlx::query_as("SELECT * FROM checks WHERE target = $1 ORDER BY name")
        .bind(iid)
        .fetch_all(&ctx.store.pool)
        .await?;
    // When it last became running (not `updated_at_ms`: guest reports move that).
    let running_since: Option<i64> =
        sqlx::query_scalar("SELECT MAX(at_ms) FROM instance_events WHERE instance_id = $1 AND stage = 'state_running'")
            .bind(iid)
            .fetch_one(&ctx.store.pool)
            .await?;
    let o = Observed {
        state: row.state,
        error: row.error.clone(),
        guest: row.guest_json.is_some(),
        running_since_ms: running_since.filter(|_| row.state == InstanceState::Running),
        started_ms: row.created_at_ms,
        now_ms: now,
        checks: checks
            .into_iter()
            .map(|c| SeenCheck {
                name: c.name,
                state: c.state,
                state_type: c.state_type,
                output: c.output,
                last_check_ms: c.last_check_ms,
            })
            .collect(),
    };
    match judge(&o) {
        Verdict::Wait => Ok(()),
        v => finish(ctx, b, Some(iid), v).await,
    }
}

/// The last `n` lines of a console text.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Records the verdict on the backup and on the original instance's
/// `backup-verification` check, then removes the copied checks and the
/// throwaway instance (its restored root disk goes with it).
async fn finish(ctx: &Arc<Ctx>, b: &BackupRow, instance: Option<&str>, v: Verdict) -> AppResult<()> {
    let (state, mut detail) = match v {
        Verdict::Wait => return Ok(()),
        Verdict::Verified(d) => (VerifyState::Verified, d),
        Verdict::Failed(d) => (VerifyState::Failed, d),
    };
    if let (VerifyState::Failed, Some(iid)) = (state, instance) {
        let console = last_lines(&ctx.store.console(iid).await?, CONSOLE_LINES);
        if !console.trim().is_empty() {
            detail.push_str(&format!("\nlast console lines of {iid}:\n{console}"));
        }
    }
    let ended = sqlx::query(
        "UPDATE backups SET verify_state = $2, verify_detail = $3 WHERE id = $1 AND verify_state = 'running'",
    )
    .bind(&b.id)
    .bind(state.as_str())
    .bind(&detail)
    .execute(&ctx.store.pool)
    .await?;
    if let Some(iid) = instance {
        remove(ctx, iid).await?;
    }
    if ended.rows_affected() == 1 {
        record(ctx, b, state == VerifyState::Verified, &detail).await?;
        tracing::info!(backup = %b.id, verify = %state, "backup verification ended");
    }
    ctx.bump();
    Ok(())
}

/// Sets the original instance's `backup-verification` check (made on its
/// first verification) to OK or CRITICAL; alert rules fire on it.
async fn record(ctx: &Ctx, b: &BackupRow, verified: bool, detail: &str) -> AppResult<()> {
    ctx.store
        .insert_check(&NewCheck {
            id: &CheckId::generate(),
            project_id: Some(&b.project_id),
            name: CHECK_NAME,
            target: &b.instance_id,
            spec: &CheckSpec::BackupVerification,
            interval_secs: DAY_MS as u64 / 1000,
            retry_interval_secs: DAY_MS as u64 / 1000,
            max_attempts: 1,
            timeout_secs: (DEADLINE_MS / 1000) as u64,
        })
        .await?;
    let c: CheckRow = sqlx::query_as("SELECT * FROM checks WHERE target = $1 AND name = $2")
        .bind(&b.instance_id)
        .bind(CHECK_NAME)
        .fetch_one(&ctx.store.pool)
        .await?;
    let first_line = detail.lines().next().unwrap_or_default();
    let (status, output) = if verified {
        (0, format!("backup {} verified: {first_line}", b.id))
    } else {
        (2, format!("backup {} failed verification: {first_line}", b.id))
    };
    let r = CheckResult {
        check_id: c.id.parse().map_err(AppError::internal)?,
        status,
        output,
        perfdata: String::new(),
        at_ms: now_ms(),
    };
    let t = ctx.store.apply_check_result(&c, &r).await?;
    if t.hard_change {
        let msg = format!("check {} on {} is {} ({}): {}", c.name, c.target, t.state, t.state_type, r.output);
        ctx.store.event(c.project_id.as_deref(), &c.target, "check_state", &msg).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, state: CheckState, state_type: CheckStateType, at: Option<i64>) -> SeenCheck {
        SeenCheck { name: name.into(), state, state_type, output: format!("{name} says {state}"), last_check_ms: at }
    }

    fn observed(state: InstanceState, guest: bool, checks: Vec<SeenCheck>, now: i64) -> Observed {
        Observed {
            state,
            error: None,
            guest,
            running_since_ms: (state == InstanceState::Running).then_some(10_000),
            started_ms: 0,
            now_ms: now,
            checks,
        }
    }

    #[test]
    fn verdicts() {
        use CheckState::{Critical, Ok as OK, Pending};
        use CheckStateType::{Hard, Soft};
        use InstanceState::{Error, Pending as Booting, Running};
        let late = Some(10_000 + CHECK_GRACE_MS);
        let early = Some(10_000 + CHECK_GRACE_MS - 1);
        let min = 60_000;
        // (instance state, guest answered, checks, now) -> verdict's start (or "wait")
        let table: Vec<(InstanceState, bool, Vec<SeenCheck>, i64, &str)> = vec![
            (Booting, false, vec![], min, "wait"),
            (Running, false, vec![], min, "wait"),
            (Running, true, vec![], min, "verified: it booted and its guest agent answered"),
            (
                Running,
                true,
                vec![seen("web", OK, Hard, late)],
                min,
                "verified: it booted, its guest agent answered, and its checks passed: web",
            ),
            (Running, true, vec![seen("web", Pending, Hard, None)], min, "wait"),
            (Running, true, vec![seen("web", OK, Hard, late), seen("db", Pending, Hard, None)], min, "wait"),
            // Too early in the boot: the service may not listen yet.
            (Running, true, vec![seen("web", Critical, Hard, early)], min, "wait"),
            (Running, false, vec![seen("web", Critical, Hard, late)], min, "wait"),
            (Running, true, vec![seen("web", Critical, Soft, late)], min, "wait"),
            (
                Running,
                true,
                vec![seen("web", Critical, Hard, late)],
                min,
                "failed: check web is CRITICAL: web says CRITICAL",
            ),
            (Error, false, vec![], min, "failed: the restored instance did not start: it is error"),
            (
                Booting,
                false,
                vec![],
                DEADLINE_MS,
                "failed: not verified within 5 minutes: the restored instance is still pending",
            ),
            (
                Running,
                false,
                vec![],
                DEADLINE_MS,
                "failed: not verified within 5 minutes: its guest agent never answered",
            ),
            (
                Running,
                true,
                vec![seen("web", Pending, Hard, None)],
                DEADLINE_MS,
                "failed: not verified within 5 minutes: check web is PENDING",
            ),
            (
                Running,
                true,
                vec![seen("web", Critical, Hard, early)],
                DEADLINE_MS,
                "failed: not verified within 5 minutes: check web is CRITICAL",
            ),
        ];
        for (state, guest, checks, now, want) in table {
            let o = observed(state, guest, checks, now);
            let got = match judge(&o) {
                Verdict::Wait => "wait".to_string(),
                Verdict::Verified(d) => format!("verified: {d}"),
                Verdict::Failed(d) => format!("failed: {d}"),
            };
            assert!(got.starts_with(want), "{o:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn which_backups_are_verified() {
        assert!(!asks(VerifyMode::None, false));
        assert!(asks(VerifyMode::Each, false) && asks(VerifyMode::Each, true));
        assert!(asks(VerifyMode::Daily, false) && !asks(VerifyMode::Daily, true));
    }

    #[test]
    fn console_tail() {
        let text: String = (1..=15).map(|i| format!("line {i}\n")).collect();
        assert_eq!(last_lines(&text, 10).lines().next(), Some("line 6"));
        assert_eq!(last_lines("a\nb", 10), "a\nb");
        assert_eq!(last_lines("", 10), "");
    }
}
