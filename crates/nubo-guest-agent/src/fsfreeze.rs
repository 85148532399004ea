//! `guest-fsfreeze-status`, `guest-fsfreeze-freeze` and `guest-fsfreeze-thaw`:
//! quiescing the guest's file systems with the FIFREEZE and FITHAW ioctls so
//! that a disk snapshot the host takes in between is consistent.
//!
//! As in qemu-ga: every mounted, writable, block-backed file system is frozen,
//! innermost mounts first, and thawed in mount order; while frozen the agent
//! refuses every command but those in [`ALLOWED_WHILE_FROZEN`], because one
//! write to a frozen file system would block the agent, and with it the thaw
//! the host sends next.
//!
//! Unlike qemu-ga, which stays frozen until told otherwise, the agent thaws by
//! itself [`AUTO_THAW`] after a freeze the host never undid (a host that dies
//! mid-snapshot would otherwise leave the guest hung on its first write).

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nubo_guest_protocol::{Command, FsfreezeStatus};

use crate::commands::{QgaError, COMMAND_NOT_FOUND};
use crate::sysinfo::{parse_mountinfo, Mount};

/// How long a freeze lasts at most when the host never thaws.
pub const AUTO_THAW: Duration = Duration::from_secs(60);

/// The commands that still run while frozen (qemu-ga's `ga_freeze_allowlist`):
/// none of them writes to a file system.
pub const ALLOWED_WHILE_FROZEN: &[Command] = &[
    Command::Ping,
    Command::Info,
    Command::Sync,
    Command::SyncDelimited,
    Command::FsfreezeStatus,
    Command::FsfreezeThaw,
];

/// File system types that are frozen: the local, block-backed ones. proc,
/// sysfs, tmpfs, devtmpfs, devpts and the like have nothing to make
/// consistent on a disk. (btrfs shows an anonymous 0:N device in mountinfo,
/// so the type, not the major number, is what decides.)
const FREEZABLE_TYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"];

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from linux/fs.h (not in
/// the libc crate).
const FIFREEZE: libc::Ioctl = 0xC004_5877;
const FITHAW: libc::Ioctl = 0xC004_5878;

/// The error qemu-ga's dispatcher gives for a command disabled while frozen
/// (class CommandNotFound, as for every disabled command).
pub fn disabled(command: Command) -> QgaError {
    QgaError {
        class: COMMAND_NOT_FOUND,
        desc: format!("Command {command} has been disabled: the agent is in frozen state"),
    }
}

/// The file systems to freeze, in mount order: writable mounts of a freezable
/// type, one per device (a file system mounted twice, or bind-mounted, is
/// frozen once; the ioctl acts on the file system, not on the mount).
pub(crate) fn targets(mounts: &[Mount]) -> Vec<String> {
    let mut seen = HashSet::new();
    mounts
        .iter()
        .filter(|m| !m.read_only && FREEZABLE_TYPES.contains(&m.fstype.as_str()))
        .filter(|m| seen.insert((m.major, m.minor)))
        .map(|m| m.mountpoint.clone())
        .collect()
}

/// What freezing needs from the system; the real one is [`Kernel`], tests use a fake.
pub trait FsOps: Send + Sync {
    /// The text of /proc/self/mountinfo.
    fn mountinfo(&self) -> std::io::Result<String>;
    /// FIFREEZE on the file system mounted at `mountpoint`.
    fn freeze(&self, mountpoint: &str) -> std::io::Result<()>;
    /// FITHAW on the file system mounted at `mountpoint`.
    fn thaw(&self, mountpoint: &str) -> std::io::Result<()>;
}

/// The running kernel.
pub struct Kernel;

impl FsOps for Kernel {
    fn mountinfo(&self) -> std::io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn freeze(&self, mountpoint: &str) -> std::io::Result<()> {
        fs_ioctl(mountpoint, FIFREEZE)
    }

    fn thaw(&self, mountpoint: &str) -> std::io::Result<()> {
        fs_ioctl(mountpoint, FITHAW)
    }
}

fn fs_ioctl(mountpoint: &str, request: libc::Ioctl) -> std::io::Result<()> {
    // Opening a directory read-only writes nothing, even on a frozen file system.
    let dir = File::open(mountpoint)?;
    // SAFETY: FIFREEZE and FITHAW read no memory through their argument; the fd is open.
    if unsafe { libc::ioctl(dir.as_raw_fd(), request, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[derive(Default)]
struct State {
    frozen: bool,
    /// Counts freezes and thaws, so an auto-thaw timer can tell whether the
    /// freeze it was started for is still the current one.
    generation: u64,
}

/// The freeze state, shared with the auto-thaw timers.
#[derive(Clone)]
pub struct Freezer {
    ops: Arc<dyn FsOps>,
    state: Arc<Mutex<State>>,
    auto_thaw: Duration,
}

impl Freezer {
    pub fn new(ops: Arc<dyn FsOps>, auto_thaw: Duration) -> Self {
        Freezer { ops, state: Arc::default(), auto_thaw }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_frozen(&self) -> bool {
        self.lock().frozen
    }

    /// Bumped by every freeze and thaw.
    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// `guest-fsfreeze-status`.
    pub fn status(&self) -> FsfreezeStatus {
        if self.is_frozen() {
            FsfreezeStatus::Frozen
        } else {
            FsfreezeStatus::Thawed
        }
    }

    /// `guest-fsfreeze-freeze`: the number of file systems frozen. On an
    /// error, those already frozen are thawed again and the state stays
    /// "thawed"; so it does when there was nothing to freeze.
    pub fn freeze(&self) -> Result<u64, QgaError> {
        let mut state = self.lock();
        let targets = self.targets()?;
        let mut frozen: Vec<&str> = Vec::new();
        // Innermost first: a file system mounted inside another is frozen
        // before its parent, as qemu-ga does.
        for mountpoint in targets.iter().rev() {
            match self.ops.freeze(mountpoint) {
                Ok(()) => frozen.push(mountpoint),
                // Already frozen (fsfreeze(8), or an agent that died frozen):
                // it is frozen all the same, and our thaw will thaw it.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => frozen.push(mountpoint),
                // A type without freeze support (vfat): nothing to quiesce, as in qemu-ga.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                Err(e) => {
                    self.thaw_list(frozen.iter().rev().copied());
                    return Err(QgaError::generic(format!("failed to freeze {mountpoint}: {e}")));
                }
            }
        }
        if frozen.is_empty() {
            return Ok(0);
        }
        state.frozen = true;
        state.generation += 1;
        let generation = state.generation;
        let timer = self.clone();
        let armed = std::thread::Builder::new().name("auto-thaw".into()).spawn(move || {
            std::thread::sleep(timer.auto_thaw);
            timer.expire(generation);
        });
        if let Err(e) = armed {
            // Never leave the guest frozen without the safety net.
            self.thaw_list(frozen.iter().rev().copied());
            state.frozen = false;
            state.generation += 1;
            return Err(QgaError::generic(format!("cannot start the auto-thaw timer: {e}")));
        }
        Ok(frozen.len() as u64)
    }

    /// `guest-fsfreeze-thaw`: the number of file systems thawed. Like
    /// qemu-ga, it thaws whatever is frozen among the current mounts, so it
    /// also undoes a freeze by an earlier agent process.
    pub fn thaw(&self) -> Result<u64, QgaError> {
        let mut state = self.lock();
        let thawed = self.thaw_list(self.targets()?.iter().map(String::as_str));
        state.frozen = false;
        state.generation += 1;
        Ok(thawed)
    }

    /// What the auto-thaw timer of freeze `generation` does when it fires:
    /// thaws if that freeze is still the current one (no thaw, and no newer
    /// freeze with its own timer, since). Returns the number thawed.
    pub(crate) fn expire(&self, generation: u64) -> Option<u64> {
        let mut state = self.lock();
        if !state.frozen || state.generation != generation {
            return None;
        }
        // stderr is the console in Nubo's images, not a (frozen) file.
        match self.targets() {
            Ok(targets) => {
                let thawed = self.thaw_list(targets.iter().map(String::as_str));
                state.frozen = false;
                state.generation += 1;
                eprintln!(
                    "nubo-guest-agent: no guest-fsfreeze-thaw within {:?} of the freeze; thawed {thawed} file system(s) automatically",
                    self.auto_thaw
                );
                Some(thawed)
            }
            Err(e) => {
                eprintln!("nubo-guest-agent: automatic thaw failed: {}", e.desc);
                None
            }
        }
    }

    fn targets(&self) -> Result<Vec<String>, QgaError> {
        let text =
            self.ops.mountinfo().map_err(|e| QgaError::generic(format!("failed to read /proc/self/mountinfo: {e}")))?;
        Ok(targets(&parse_mountinfo(&text)))
    }

    /// Thaws each mount point in turn; returns how many were frozen. Linux
    /// does not nest FIFREEZE (a second one fails with EBUSY), so one FITHAW
    /// per file system is enough; EINVAL means it was not frozen.
    fn thaw_list<'a>(&self, mountpoints: impl Iterator<Item = &'a str>) -> u64 {
        let mut thawed = 0;
        for mountpoint in mountpoints {
            match self.ops.thaw(mountpoint) {
                Ok(()) => thawed += 1,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => eprintln!("nubo-guest-agent: failed to thaw {mountpoint}: {e}"),
            }
        }
        thawed
    }
}
