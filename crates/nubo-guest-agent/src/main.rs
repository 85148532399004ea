//! `nubo-guest-agent`: Nubo's in-guest agent. It speaks the QEMU Guest
//! Agent protocol (the subset Nubo uses; same JSON shapes as qemu-ga) on the
//! virtio-serial port named `org.qemu.guest_agent.0`, so the host can,
//! without a network, run commands, move files, read facts about the guest
//! (disks included) and freeze its file systems for snapshots.
//!
//! This module owns the process: command-line options, finding and
//! (re)opening the port, and the read-dispatch-write loop. It is built as a
//! static binary so it runs in any guest image without libraries.
//!
//! ```text
//! nubo-guest-agent [--device /dev/vportNpM]
//! ```

mod commands;
mod disks;
mod exec;
mod fsfreeze;
mod protocol;
mod sysinfo;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use commands::{Agent, QgaError};
use fsfreeze::Freezer;
use nubo_guest_protocol::{ShutdownMode, PORT_NAME};
use protocol::Session;

fn main() -> ExitCode {
    let mut device: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" | "-p" => match args.next() {
                Some(p) => device = Some(PathBuf::from(p)),
                None => return usage("--device needs a path"),
            },
            "--version" | "-V" => {
                println!("nubo-guest-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("usage: nubo-guest-agent [--device PATH]\n\nServes the QEMU Guest Agent protocol on PATH, by default the virtio-serial port named {PORT_NAME}.");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    // init may start us with an empty environment; guest-exec and the power
    // commands are looked up in PATH.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    }
    serve(device)
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("nubo-guest-agent: {problem}\nusage: nubo-guest-agent [--device PATH]");
    ExitCode::from(2)
}

/// Serves forever: the port survives host (dis)connections, and the open
/// files and processes survive the port being reopened.
fn serve(device: Option<PathBuf>) -> ! {
    let freezer = Freezer::new(Arc::new(fsfreeze::Kernel), fsfreeze::AUTO_THAW);
    let mut session = Session::new(Agent::new(run_power_command, freezer));
    let mut complained = false;
    loop {
        let path = match device.clone().or_else(find_port) {
            Some(p) => p,
            None => {
                if !complained {
                    eprintln!("nubo-guest-agent: no virtio-serial port named {PORT_NAME} yet (is virtio_console loaded and the VM started with a virtserialport?); waiting");
                    complained = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(port) => {
                complained = false;
                if let Err(e) = pump(port, &mut session) {
                    eprintln!("nubo-guest-agent: {}: {e}; reopening", path.display());
                }
            }
            // Another agent holds the port (the inittab standby while rcS's
            // one runs): wait quietly and take over when it is gone.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                if !complained {
                    eprintln!("nubo-guest-agent: cannot open {}: {e}; retrying", path.display());
                    complained = true;
                }
            }
        }
        session.reset();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Reads requests and writes replies until an I/O error.
fn pump(mut port: File, session: &mut Session) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match port.read(&mut buf) {
            // virtio-serial reads return 0 while no host client is connected:
            // whatever was half sent belongs to a client that is gone.
            Ok(0) => {
                session.reset();
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(n) => {
                let reply = session.feed(&buf[..n]);
                if !reply.is_empty() {
                    port.write_all(&reply)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The device of the virtio-serial port named [`PORT_NAME`], from
/// /sys/class/virtio-ports/<vportNpM>/name.
fn find_port() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    entries.flatten().find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| PathBuf::from("/dev").join(e.file_name()))
    })
}

/// guest-shutdown: flush the disks, then ask init to power off, halt or reboot.
fn run_power_command(mode: ShutdownMode) -> Result<(), QgaError> {
    let program = match mode {
        ShutdownMode::Halt => "halt",
        ShutdownMode::Reboot => "reboot",
        ShutdownMode::Powerdown => "poweroff",
    };
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let status =
        Command::new(program).status().map_err(|e| QgaError::generic(format!("failed to run '{program}': {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(QgaError::generic(format!("child process has failed to shutdown: '{program}' exited with {status}")))
    }
}
