//! `nubo imds-relay SOCKET`: QEMU's user-mode network starts it for every
//! TCP connection a guest opens to the metadata address, with the
//! connection as stdin and stdout; it pipes the bytes to and from the
//! agent's metadata service on SOCKET. Plain threads and std I/O: it lives
//! for one HTTP exchange.
//!
//! A guest decides how many of these run, so each instance gets at most
//! [`SLOTS`] at a time (a lock file per slot in the instance directory,
//! next to SOCKET; a relay that finds none free closes the connection at
//! once), and each lives at most [`DEADLINE`], so idle connections cannot
//! hold the slots. QEMU's guestfwd to a chardev would serve one connection
//! at a time, which is why a process per connection is kept at all.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Relays one instance may have at once.
pub const SLOTS: usize = 8;
/// How long one relay may live: a metadata request and its answer take
/// milliseconds, even for a slow guest.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Takes a free slot of the instance directory `dir`; None when all are
/// held (their locks go when their relays exit, however they exit).
fn take_slot(dir: &Path) -> Option<std::fs::File> {
    (0..SLOTS).find_map(|i| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("imds-relay.{i}.lock")))
            .ok()?;
        f.try_lock().ok().map(|()| f)
    })
}

pub fn run(socket: &Path) -> ExitCode {
    let dir = socket.parent().unwrap_or(Path::new("."));
    let Some(_slot) = take_slot(dir) else {
        // Nothing on stderr: it is QEMU's log, and the guest would fill it.
        return ExitCode::FAILURE;
    };
    std::thread::spawn(|| {
        std::thread::sleep(DEADLINE);
        // The guest kept the connection past any real request: end it.
        std::process::exit(2);
    });
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            // stderr goes to QEMU's log in the instance directory.
            eprintln!("nubo imds-relay: cannot connect to {}: {e}; is the agent running?", socket.display());
            return ExitCode::FAILURE;
        }
    };
    let Ok(mut to_server) = stream.try_clone() else { return ExitCode::FAILURE };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_server);
        // The guest finished sending: pass the half-close on.
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let mut from_server = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from_server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    // The answer is complete; do not wait for the guest to close its side.
    drop(upstream);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_freed() {
        let dir = tempfile::tempdir().unwrap();
        let held: Vec<_> = (0..SLOTS).map(|_| take_slot(dir.path()).expect("a free slot")).collect();
        assert!(take_slot(dir.path()).is_none(), "more than {SLOTS} relays at once");
        drop(held);
        assert!(take_slot(dir.path()).is_some(), "slots come back when relays end");
    }
}
