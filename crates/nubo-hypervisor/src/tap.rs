//! TAP network devices: a NIC on a host bridge. The agent creates each tap
//! (persistent, attached to its network's bridge, possibly inside the
//! host's network namespace); this module opens it and QEMU inherits the
//! open descriptor (`-netdev tap,fd=N`), so QEMU itself needs neither the
//! namespace nor the privilege to create devices.
//!
//! Written by hand on libc: the open is one ioctl (TUNSETIFF), and it must
//! run on a thread that has entered the namespace (setns), which the tap
//! crates on crates.io do not offer.

use crate::error::HypervisorError;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

/// The descriptor number the first tap gets in QEMU; the next ones follow.
pub const TAP_FD_BASE: i32 = 100;

/// One NIC on a tap device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapNic {
    /// The tap's name (at most 15 bytes), made by the caller.
    pub tap: String,
    /// The guest NIC's MAC (`xx:xx:xx:xx:xx:xx`, unicast).
    pub mac: String,
    /// The network namespace the tap lives in (`/run/netns/NAME`); none:
    /// this process's own.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Opens the existing tap `nic.tap`, inside its namespace when it has one.
pub(crate) fn open(nic: &TapNic) -> Result<OwnedFd, HypervisorError> {
    let nic = nic.clone();
    let name = nic.tap.clone();
    let fail = move |what: String| HypervisorError::Network(format!("tap {name}: {what}"));
    // setns changes the calling thread only, so a thread of its own enters
    // the namespace, opens the device and ends; the descriptor stays valid
    // in the whole process.
    std::thread::spawn(move || -> Result<OwnedFd, String> {
        if let Some(ns) = &nic.netns {
            let f = std::fs::File::open(ns).map_err(|e| format!("cannot open namespace {}: {e}", ns.display()))?;
            // SAFETY: setns on a namespace file descriptor we own; it only
            // changes this (short-lived) thread's network namespace.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("cannot enter namespace {}: {}", ns.display(), std::io::Error::last_os_error()));
            }
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| format!("cannot open /dev/net/tun: {e} (is the tun module loaded?)"))?;
        let mut req = [0u8; 40]; // struct ifreq: name[16], then flags
        let bytes = nic.tap.as_bytes();
        if bytes.is_empty() || bytes.len() > 15 {
            return Err("a tap name has 1 to 15 bytes".into());
        }
        req[..bytes.len()].copy_from_slice(bytes);
        req[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is
        // large enough for, on a descriptor we own.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) } != 0 {
            return Err(format!(
                "cannot attach to it: {} (the agent creates it before the VM starts)",
                std::io::Error::last_os_error()
            ));
        }
        Ok(OwnedFd::from(tun))
    })
    .join()
    .map_err(|_| fail("the thread opening it panicked".into()))?
    .map_err(fail)
}

/// In the child before exec: put `fds[i]` at `TAP_FD_BASE + i`, without
/// close-on-exec, so QEMU finds each tap where its command line says.
///
/// # Safety
/// Only async-signal-safe calls (dup2, fcntl); meant for `pre_exec`.
pub(crate) unsafe fn install_in_child(fds: &[i32]) -> std::io::Result<()> {
    // A source may already sit in the target range (an agent holds many
    // descriptors), so all are copied above that range first.
    let above = TAP_FD_BASE + fds.len() as i32;
    let mut copies = [0i32; 16];
    if fds.len() > copies.len() {
        return Err(std::io::Error::other("more than 16 taps"));
    }
    for (i, fd) in fds.iter().enumerate() {
        let c = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above);
        if c < 0 {
            return Err(std::io::Error::last_os_error());
        }
        copies[i] = c;
    }
    for (i, c) in copies[..fds.len()].iter().enumerate() {
        // dup2 clears close-on-exec on the new descriptor.
        if libc::dup2(*c, TAP_FD_BASE + i as i32) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Keeps descriptors from `open` until QEMU has inherited them.
pub(crate) fn raw(fds: &[OwnedFd]) -> Vec<i32> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}
