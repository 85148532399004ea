//! What the QEMU driver's integration tests share: a check that QEMU is there,
//! the shared image cache, a VM reaper for failed tests, and a shell
//! command for the guest agent.
#![allow(dead_code)]

use nubo_hypervisor::{GuestExec, VmDir};
use std::path::PathBuf;
use std::process::Command;

/// Fails the test when QEMU is missing: these tests boot real VMs, and
/// passing without them would prove nothing.
pub fn require_qemu() {
    let ok = |bin: &str| Command::new(bin).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok("qemu-system-x86_64") && ok("qemu-img"),
        "qemu-system-x86_64 or qemu-img is not installed: apt-get install qemu-system-x86 qemu-utils \
         (scripts/install-deps.sh does)"
    );
}

/// The shared image cache: `$NUBO_IMAGE_CACHE`, else `<workspace>/.cache/images`.
pub fn cache_root() -> PathBuf {
    let root = match std::env::var_os("NUBO_IMAGE_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/images"),
    };
    std::path::absolute(root).unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills the VM if the test fails half-way.
pub struct Reaper(pub VmDir);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.0.pidfile()).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("qemu") {
                // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `/bin/sh -c cmd` with its output captured.
pub fn sh(cmd: &str) -> GuestExec {
    GuestExec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), cmd.into()],
        capture_output: true,
        ..Default::default()
    }
}
