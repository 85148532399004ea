//! Interactive consoles: the kinds a console session can be (the guest's
//! serial port or its screen over VNC), what the control plane tells a
//! viewer over the console websocket besides the guest's bytes, and the
//! ticket that admits a browser to a graphical console.
//!
//! On the websocket, binary messages carry the guest's bytes both ways;
//! text messages from the server are JSON [`ConsoleNotice`]s (a client
//! that only wants the bytes can ignore them).

use serde::{Deserialize, Serialize};

/// What a console session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    /// The guest's serial port (bytes of a terminal).
    Serial,
    /// The guest's screen: the RFB protocol of the VM's VNC server.
    Vnc,
}

/// A message from the server in a text frame of the console websocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleNotice {
    /// `ready` (the host joined: bytes flow), `read-only` (this viewer's
    /// input is dropped), or `closed` (the session ended; `message` says why).
    pub event: String,
    /// Whether this viewer's input reaches the guest.
    pub writable: bool,
    /// For a person: what happened and what to do.
    pub message: String,
}

/// `POST /api/v1/instances/{id}/console/vnc-ticket`: admits one websocket
/// to the instance's graphical console, for the user who asked, once,
/// within `expires_in_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VncTicket {
    pub ticket: String,
    pub expires_in_secs: u64,
    /// Where to open the websocket, ticket included (a path on this server).
    pub path: String,
}
