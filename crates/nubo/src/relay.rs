//! `nubo imds-relay SOCKET`: QEMU's user-mode network starts it for every
//! TCP connection a guest opens to the metadata address, with the
//! connection as stdin and stdout; it pipes the bytes to and from the
//! agent's metadata service on SOCKET. Plain threads and std I/O: it lives
//! for one HTTP exchange.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

pub fn run(socket: &Path) -> ExitCode {
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
