//! The wire protocol: splits the byte stream from the host into JSON
//! requests, hands each to the [`Agent`] and frames the replies the way
//! qemu-ga does (one JSON object per line, `"id"` echoed, a 0xFF byte before
//! the reply of `guest-sync-delimited`).
//!
//! A 0xFF byte from the host resets the parser: clients send it before
//! `guest-sync-delimited` to throw away whatever half-written request an
//! earlier, vanished client left behind.

use nubo_guest_protocol::{ErrorBody, ErrorReply, ReturnReply, GENERIC_ERROR};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::commands::{Agent, Outcome};

/// Largest request kept while waiting for its end. `guest-file-write` with
/// qemu-ga's 48 MiB limit is ~64 MiB of base64, so this leaves room for that.
const MAX_REQUEST: usize = 80 * 1024 * 1024;

/// The byte that resets the host's and the guest's JSON parsers.
pub use nubo_guest_protocol::SENTINEL;

/// One agent serving one byte stream (the virtio-serial port).
pub struct Session {
    buf: Vec<u8>,
    agent: Agent,
}

impl Session {
    pub fn new(agent: Agent) -> Self {
        Session { buf: Vec::new(), agent }
    }

    /// Forgets any partial request, e.g. when the host side disconnected.
    /// Open files and running processes are kept, as qemu-ga does.
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Takes bytes from the host; returns the bytes to send back (replies
    /// to every request completed by `input`, in order).
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut segments = input.split(|&b| b == SENTINEL).peekable();
        while let Some(segment) = segments.next() {
            self.buf.extend_from_slice(segment);
            self.drain_requests(&mut out);
            if segments.peek().is_some() {
                // A sentinel follows this segment: drop any partial request.
                self.buf.clear();
            }
        }
        if self.buf.len() > MAX_REQUEST {
            self.buf.clear();
            push_reply(&mut out, &error_reply(GENERIC_ERROR, format!("JSON request larger than {MAX_REQUEST} bytes")));
        }
        out
    }

    fn drain_requests(&mut self, out: &mut Vec<u8>) {
        loop {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if self.buf.is_empty() {
                return;
            }
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match stream.next() {
                Some(Ok(request)) => {
                    let used = stream.byte_offset();
                    self.buf.drain(..used);
                    self.handle(request, out);
                }
                // Incomplete: wait for more bytes.
                Some(Err(e)) if e.is_eof() => return,
                Some(Err(e)) => {
                    // Skip the rest of the line so one bad request does not
                    // poison the ones after it.
                    let end = self.buf.iter().position(|&b| b == b'\n').map_or(self.buf.len(), |p| p + 1);
                    self.buf.drain(..end);
                    push_reply(out, &error_reply(GENERIC_ERROR, format!("JSON parse error, {e}")));
                }
                None => {
                    self.buf.clear();
                    return;
                }
            }
        }
    }

    fn handle(&mut self, request: Value, out: &mut Vec<u8>) {
        let Value::Object(mut request) = request else {
            push_reply(out, &error_reply(GENERIC_ERROR, "QMP input must be a JSON object".into()));
            return;
        };
        let id = request.remove("id");
        let command = match request.remove("execute") {
            Some(Value::String(c)) => c,
            Some(_) => {
                push_reply(
                    out,
                    &with_id(error_reply(GENERIC_ERROR, "QMP input member 'execute' must be a string".into()), id),
                );
                return;
            }
            None => {
                push_reply(out, &with_id(error_reply(GENERIC_ERROR, "QMP input lacks member 'execute'".into()), id));
                return;
            }
        };
        let arguments = match request.remove("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(a @ Value::Object(_)) => a,
            Some(_) => {
                push_reply(
                    out,
                    &with_id(error_reply(GENERIC_ERROR, "QMP input member 'arguments' must be an object".into()), id),
                );
                return;
            }
        };
        if let Some(key) = request.keys().next() {
            push_reply(
                out,
                &with_id(error_reply(GENERIC_ERROR, format!("QMP input member '{key}' is unexpected")), id),
            );
            return;
        }
        match self.agent.dispatch(&command, arguments) {
            Outcome::Return(value) => push_reply(out, &ReturnReply { value, id }),
            Outcome::Delimited(value) => {
                out.push(SENTINEL);
                push_reply(out, &ReturnReply { value, id });
            }
            Outcome::Error(e) => push_reply(out, &with_id(error_reply(e.class, e.desc), id)),
            Outcome::NoReply => {}
        }
    }
}

fn error_reply(class: &str, desc: String) -> ErrorReply {
    ErrorReply { error: ErrorBody { class: class.to_string(), desc }, id: None }
}

fn with_id(reply: ErrorReply, id: Option<Value>) -> ErrorReply {
    ErrorReply { id, ..reply }
}

fn push_reply(out: &mut Vec<u8>, reply: &impl Serialize) {
    match serde_json::to_vec(reply) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        // Replies have string keys only, so this does not happen; if it
        // did, the host still gets an answer rather than waiting for one.
        Err(e) => out.extend_from_slice(
            json!({ "error": { "class": GENERIC_ERROR, "desc": format!("cannot encode the reply: {e}") } })
                .to_string()
                .as_bytes(),
        ),
    }
    out.push(b'\n');
}
