//! `nubo instance console ID --attach`: the instance's serial console in
//! this terminal, both ways, over the control plane's console websocket.
//! The terminal is put in raw mode (every key goes to the guest, Ctrl-C
//! included) and restored when the command ends, however it ends; Ctrl-]
//! detaches.

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use nubo_api::console::ConsoleNotice;
use nubo_client::Client;
use std::io::{Read, Write};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

/// The key that detaches: Ctrl-] (as telnet's and virsh's).
pub const DETACH: u8 = 0x1d;

/// The terminal's settings before raw mode, put back on drop (also when
/// the command fails or panics).
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin, when it is a terminal (`None` when it is not:
    /// piped input is passed on as it is).
    fn enter() -> anyhow::Result<Option<Self>> {
        // SAFETY: isatty, tcgetattr and tcsetattr only read and write the
        // termios struct given, which lives on this stack.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return Ok(None);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return Err(std::io::Error::last_os_error()).context("cannot read the terminal's settings");
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) != 0 {
                return Err(std::io::Error::last_os_error()).context("cannot put the terminal in raw mode");
            }
            Ok(Some(Self { saved }))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: puts back the settings read in `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

/// What ended an attached console.
enum End {
    Detached,
    Closed(String),
}

/// Attaches this terminal to instance `id`'s serial console until Ctrl-]
/// (or the end of stdin), or until the console closes.
pub async fn attach(client: &Client, id: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/instances/{}/console/ws", nubo_client::path_segment(id));
    let upgraded = client.websocket(&path).await?;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await;
    let (mut sink, mut stream) = ws.split();
    eprintln!("Attached to the serial console of {id}. Detach with Ctrl-] (press Enter if the screen stays blank).");
    let raw = RawMode::enter()?;
    // stdin is read on a thread of its own: a read pending on the runtime's
    // blocking pool would hold the process until a key is pressed.
    let (tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stdout = std::io::stdout();
    let end = loop {
        tokio::select! {
            key = keys.recv() => {
                let Some(bytes) = key else { break End::Detached };
                let (send, detach) = match bytes.iter().position(|b| *b == DETACH) {
                    Some(at) => (&bytes[..at], true),
                    None => (&bytes[..], false),
                };
                if !send.is_empty() {
                    sink.send(Message::Binary(send.to_vec().into())).await.context("the console connection broke")?;
                }
                if detach {
                    break End::Detached;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(t))) => {
                    if let Ok(n) = serde_json::from_str::<ConsoleNotice>(&t) {
                        if n.event == "closed" {
                            break End::Closed(n.message);
                        }
                        // Raw mode: a line needs its carriage return.
                        eprint!("\r\n[nubo] {}\r\n", n.message);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break End::Closed(frame.map(|f| f.reason.to_string()).unwrap_or_else(|| "the server closed the console".into()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break End::Closed(format!("the console connection broke: {e}")),
                None => break End::Closed("the server closed the console".into()),
            }
        }
    };
    let _ = sink.send(Message::Close(None)).await;
    drop(raw);
    match end {
        End::Detached => {
            eprintln!("\r\nDetached from {id}.");
            Ok(())
        }
        End::Closed(why) => anyhow::bail!("{why}"),
    }
}
