//! Interactive consoles: who may open an instance's serial or graphical
//! console, and how. Anyone who may read the instance may watch its serial
//! console; only those who may change it may type (a reader's keystrokes
//! are dropped, and they are told). The graphical console needs the right
//! to type, as a VNC viewer talks to the guest's screen to see it; it is
//! admitted by a ticket bound to the user and the instance. Opening a
//! console one can type into is written to the audit log.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::console_relay::{Sessions, Viewer, TICKET_LIFETIME};
use crate::error::{AppError, AppResult};
use crate::store::InstanceRow;
use crate::Ctx;
use nubo_api::console::{ConsoleKind, VncTicket};
use nubo_api::views::InstanceState;
use std::sync::Arc;
use std::time::Instant;

/// The instance, if it runs on a host a console can reach.
async fn running(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<(InstanceRow, String)> {
    let row = super::instances::load(ctx, caller, id, access).await?;
    match (&row.host_id, row.state) {
        (Some(host), InstanceState::Running) => {
            let host = host.clone();
            Ok((row, host))
        }
        _ => Err(AppError::Conflict(format!(
            "instance {} is {}: a console needs it running; start it with `nubo instance start {}`",
            row.id, row.state, row.id
        ))),
    }
}

/// Opens a serial console session on `id` for `caller`: writable when
/// the caller may change the instance, read-only otherwise. `source` is
/// where the caller connects from, for the audit log.
pub async fn open_serial(ctx: &Arc<Ctx>, caller: &Caller, id: &str, source: &str) -> AppResult<Viewer> {
    let (row, host) = running(ctx, caller, id, Access::Read).await?;
    let writable = authz::check(caller, Access::Write, row.project_id.as_deref(), "instance", &row.id).is_ok();
    open(ctx, caller, row, &host, ConsoleKind::Serial, writable, source).await
}

async fn open(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    row: InstanceRow,
    host: &str,
    kind: ConsoleKind,
    writable: bool,
    source: &str,
) -> AppResult<Viewer> {
    let instance_id = row.id.parse().map_err(|e: nubo_api::ids::IdError| AppError::internal(e.to_string()))?;
    if writable {
        // A console one can type into is as strong as a root shell: who
        // opened it, on what, and when is kept (the request is a GET, which
        // the audit middleware does not record).
        let kind_name = match kind {
            ConsoleKind::Serial => "serial",
            ConsoleKind::Vnc => "graphical",
        };
        let path = format!("/api/v1/instances/{}/console (writable {kind_name} console opened)", row.id);
        ctx.store.audit(&caller.user_name, row.project_id.as_deref(), "GET", &path, source, 101, "ok").await?;
    }
    Sessions::open(ctx, instance_id, host, kind, writable).ok_or_else(|| {
        AppError::Unavailable("this server has too many consoles open: close one, or try again in a minute".into())
    })
}

/// A ticket for `caller` to open `id`'s graphical console once, within
/// 30 seconds.
pub async fn vnc_ticket(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<VncTicket> {
    let (row, _) = running(ctx, caller, id, Access::Read).await?;
    vnc_access(caller, &row)?;
    let ticket = ctx.consoles.mint_ticket(&caller.user_id, &row.id, Instant::now()).ok_or_else(|| {
        AppError::Unavailable("too many graphical console tickets are pending: try again in 30 seconds".into())
    })?;
    Ok(VncTicket {
        path: format!("/api/v1/instances/{}/console/vnc?ticket={ticket}", row.id),
        ticket,
        expires_in_secs: TICKET_LIFETIME.as_secs(),
    })
}

fn vnc_access(caller: &Caller, row: &InstanceRow) -> AppResult<()> {
    authz::check(caller, Access::Write, row.project_id.as_deref(), "instance", &row.id).map_err(|e| match e {
        AppError::Forbidden(why) => AppError::Forbidden(format!(
            "{why}: the graphical console needs it, as a VNC viewer talks to the guest's screen to see it \
             (the serial console can be watched read-only)"
        )),
        other => other,
    })
}

/// Opens `id`'s graphical console for `caller`, spending `ticket`.
pub async fn open_vnc(ctx: &Arc<Ctx>, caller: &Caller, id: &str, ticket: &str, source: &str) -> AppResult<Viewer> {
    let (row, host) = running(ctx, caller, id, Access::Read).await?;
    // Checked again: the user's role may have changed since the ticket.
    vnc_access(caller, &row)?;
    if !ctx.consoles.redeem_ticket(ticket, &caller.user_id, &row.id, Instant::now()) {
        return Err(AppError::Forbidden(format!(
            "this graphical console ticket is not valid (tickets last {} seconds, admit once, and only the user \
             and instance they were made for): ask for a new one with POST /api/v1/instances/{}/console/vnc-ticket",
            TICKET_LIFETIME.as_secs(),
            row.id
        )));
    }
    open(ctx, caller, row, &host, ConsoleKind::Vnc, true, source).await
}
