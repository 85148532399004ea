//! The console relay's sessions, in this server's memory: each joins one
//! viewer's websocket to the streams the instance's agent opens for it.
//!
//! Nothing listens on a host: a viewer's session is added to the host's
//! desired state, the agent sees it at its next long-poll (woken at once)
//! and opens two outbound streams here, one carrying the viewer's input
//! down (`GET .../consoles/{id}/input`) and one carrying the guest's
//! output up (`POST .../consoles/{id}/output`). Either side ending ends
//! the session, which then leaves the desired state. A session the agent
//! does not join within [`JOIN_TIMEOUT`] expires.
//!
//! Also the graphical console's tickets: short-lived, single-use, bound to
//! the user and the instance they were made for.
//!
//! Sessions live in the memory of the server the viewer reached; with
//! several servers, the agent must long-poll that same one to see them.

use crate::Ctx;
use axum::body::Bytes;
use nubo_api::agent::DesiredConsoleSession;
use nubo_api::console::ConsoleKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a new session waits for its agent.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graphical console's ticket admits its websocket.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// Chunks queued each way before the sender waits.
const QUEUE: usize = 64;

/// Most sessions open at once on one server (each holds two agent
/// streams); past it new ones are refused rather than exhausting it.
const MAX_SESSIONS: usize = 1024;

/// Most graphical console tickets waiting at once.
const MAX_TICKETS: usize = 4096;

/// One session, as the agent's side sees it.
struct Entry {
    instance_id: nubo_api::ids::InstanceId,
    host_id: String,
    kind: ConsoleKind,
    /// The viewer's input, taken by the agent's input stream (once).
    input: Option<mpsc::Receiver<Bytes>>,
    /// Where the agent's output goes, taken by its output stream (once).
    output: Option<mpsc::Sender<Bytes>>,
    /// Fired when the agent's output stream arrives.
    joined: Option<oneshot::Sender<()>>,
}

struct Ticket {
    user_id: String,
    instance_id: String,
    expires: Instant,
}

/// Every console session open on this server, and the pending tickets.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Entry>>,
    tickets: Mutex<HashMap<String, Ticket>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("open", &lock(&self.open).len()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Why the agent's side of a session cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("console session {0} does not exist (it ended, expired, or belongs to another host)")]
    Unknown(String),
    #[error("console session {0} already has this stream: the agent joined it twice")]
    Taken(String),
}

/// The viewer's side of a session; dropping it ends the session and
/// takes it out of the host's desired state.
pub struct Viewer {
    pub id: String,
    pub kind: ConsoleKind,
    /// Whether this viewer's input is relayed (false: a read-only viewer).
    pub writable: bool,
    pub input: mpsc::Sender<Bytes>,
    pub output: mpsc::Receiver<Bytes>,
    /// Fires when the agent joined.
    pub joined: oneshot::Receiver<()>,
    ctx: Arc<Ctx>,
    host_id: String,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        if lock(&self.ctx.consoles.open).remove(&self.id).is_some() {
            self.ctx.bump_host(&self.host_id);
        }
    }
}

impl Sessions {
    /// Opens a session for `instance_id` on `host_id` and wakes that host.
    /// `None` when this server has [`MAX_SESSIONS`] open already.
    pub fn open(
        ctx: &Arc<Ctx>,
        instance_id: nubo_api::ids::InstanceId,
        host_id: &str,
        kind: ConsoleKind,
        writable: bool,
    ) -> Option<Viewer> {
        let id = random_id();
        let (input_tx, input_rx) = mpsc::channel(QUEUE);
        let (output_tx, output_rx) = mpsc::channel(QUEUE);
        let (joined_tx, joined_rx) = oneshot::channel();
        {
            let mut open = lock(&ctx.consoles.open);
            if open.len() >= MAX_SESSIONS {
                return None;
            }
            open.insert(
                id.clone(),
                Entry {
                    instance_id,
                    host_id: host_id.to_string(),
                    kind,
                    input: Some(input_rx),
                    output: Some(output_tx),
                    joined: Some(joined_tx),
                },
            );
        }
        ctx.bump_host(host_id);
        Some(Viewer {
            id,
            kind,
            writable,
            input: input_tx,
            output: output_rx,
            joined: joined_rx,
            ctx: ctx.clone(),
            host_id: host_id.to_string(),
        })
    }

    /// The sessions `host` should join, for its desired state.
    pub fn of_host(&self, host: &str) -> Vec<DesiredConsoleSession> {
        let mut out: Vec<DesiredConsoleSession> = lock(&self.open)
            .iter()
            .filter(|(_, e)| e.host_id == host)
            .map(|(id, e)| DesiredConsoleSession { id: id.clone(), instance_id: e.instance_id.clone(), kind: e.kind })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The viewer's input, for `host`'s agent.
    pub fn take_input(&self, host: &str, id: &str) -> Result<mpsc::Receiver<Bytes>, JoinError> {
        let mut open = lock(&self.open);
        let e = open.get_mut(id).filter(|e| e.host_id == host).ok_or_else(|| JoinError::Unknown(id.into()))?;
        e.input.take().ok_or_else(|| JoinError::Taken(id.into()))
    }

    /// Where the guest's output goes, for `host`'s agent; tells the viewer
    /// the agent joined.
    pub fn take_output(&self, host: &str, id: &str) -> Result<mpsc::Sender<Bytes>, JoinError> {
        let mut open = lock(&self.open);
        let e = open.get_mut(id).filter(|e| e.host_id == host).ok_or_else(|| JoinError::Unknown(id.into()))?;
        let out = e.output.take().ok_or_else(|| JoinError::Taken(id.into()))?;
        if let Some(joined) = e.joined.take() {
            let _ = joined.send(());
        }
        Ok(out)
    }

    /// Sessions open on this server.
    pub fn len(&self) -> usize {
        lock(&self.open).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A new ticket for `user_id` to open `instance_id`'s graphical
    /// console once, within [`TICKET_LIFETIME`] from `now`. `None` when
    /// too many are pending.
    pub fn mint_ticket(&self, user_id: &str, instance_id: &str, now: Instant) -> Option<String> {
        let mut tickets = lock(&self.tickets);
        tickets.retain(|_, t| t.expires > now);
        if tickets.len() >= MAX_TICKETS {
            return None;
        }
        let ticket = random_id();
        tickets.insert(
            ticket.clone(),
            Ticket { user_id: user_id.into(), instance_id: instance_id.into(), expires: now + TICKET_LIFETIME },
        );
        Some(ticket)
    }

    /// Spends `ticket`: true when it was made for `user_id` and
    /// `instance_id` and is still valid at `now`. Any attempt spends it,
    /// so a ticket shown to the wrong user is gone for everyone.
    pub fn redeem_ticket(&self, ticket: &str, user_id: &str, instance_id: &str, now: Instant) -> bool {
        match lock(&self.tickets).remove(ticket) {
            Some(t) => t.expires > now && t.user_id == user_id && t.instance_id == instance_id,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_admits_once_its_user_to_its_instance_before_it_expires() {
        let s = Sessions::default();
        let now = Instant::now();
        let t = s.mint_ticket("u-1", "i-1", now).unwrap();
        assert!(s.redeem_ticket(&t, "u-1", "i-1", now + Duration::from_secs(1)));
        assert!(!s.redeem_ticket(&t, "u-1", "i-1", now + Duration::from_secs(1)), "single use");

        let late = s.mint_ticket("u-1", "i-1", now).unwrap();
        assert!(!s.redeem_ticket(&late, "u-1", "i-1", now + TICKET_LIFETIME), "expired");

        let stolen = s.mint_ticket("u-1", "i-1", now).unwrap();
        assert!(!s.redeem_ticket(&stolen, "u-2", "i-1", now), "another user");
        assert!(!s.redeem_ticket(&stolen, "u-1", "i-1", now), "a refused attempt spends it");

        let other = s.mint_ticket("u-1", "i-1", now).unwrap();
        assert!(!s.redeem_ticket(&other, "u-1", "i-2", now), "another instance");
        assert!(!s.redeem_ticket("nonsense", "u-1", "i-1", now));
    }

    #[test]
    fn expired_tickets_do_not_pile_up() {
        let s = Sessions::default();
        let now = Instant::now();
        for _ in 0..10 {
            s.mint_ticket("u", "i", now).unwrap();
        }
        s.mint_ticket("u", "i", now + TICKET_LIFETIME + Duration::from_secs(1)).unwrap();
        assert_eq!(lock(&s.tickets).len(), 1);
    }
}
