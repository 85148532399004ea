//! Finding, watching and signalling a VM's QEMU process through `/proc`,
//! without being fooled by pid reuse: a pid only counts as the VM's if its
//! command line carries that VM's `-pidfile` path.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// The pid written in `pidfile`, if it holds one.
pub(crate) fn read_pidfile(pidfile: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pidfile).ok()?;
    text.trim().parse::<u32>().ok().filter(|&p| p > 0)
}

/// Fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub state: u8,
    pub session: u32,
    /// utime + stime in clock ticks.
    pub cpu_ticks: u64,
}

pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    // "pid (comm) state ppid pgrp session ..."; comm may contain spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state); utime/stime are fields 14/15.
    let state = *fields.first()?.as_bytes().first()?;
    let session = fields.get(3)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat { state, session, cpu_ticks: utime.saturating_add(stime) })
}

pub(crate) fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` is alive (not a zombie) and is the QEMU using `pidfile`.
pub(crate) fn is_our_qemu(pid: u32, pidfile: &Path) -> bool {
    match read_stat(pid) {
        Some(stat) if stat.state != b'Z' && stat.state != b'X' => {}
        _ => return false,
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline_has_pidfile(&cmdline, pidfile)
}

pub(crate) fn cmdline_has_pidfile(cmdline: &[u8], pidfile: &Path) -> bool {
    let want = pidfile.as_os_str().as_bytes();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    // `--pidfile` is how qemu-storage-daemon spells it (see `storage_daemon`).
    args.windows(2).any(|w| (w[0] == b"-pidfile" || w[0] == b"--pidfile") && w[1] == want)
}

/// The pid of the live QEMU owning `pidfile`, if any.
pub(crate) fn running_pid(pidfile: &Path) -> Option<u32> {
    read_pidfile(pidfile).filter(|&pid| is_our_qemu(pid, pidfile))
}

/// Send `sig` to `pid`. `Ok(false)` if the process no longer exists.
pub(crate) fn signal(pid: u32, sig: i32) -> std::io::Result<bool> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Ok(false);
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(raw, sig) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Wait until `pid` is no longer our QEMU (exited, zombie, or reused).
/// Returns whether it went away within `timeout`.
pub(crate) async fn wait_gone(pid: u32, pidfile: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_our_qemu(pid, pidfile) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// CPU time (user + system) used so far by `pid`.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    ticks_to_duration(read_stat(pid)?.cpu_ticks)
}

/// CPU time the guest's vCPUs have used: the threads QEMU names
/// `CPU <n>/KVM` or `CPU <n>/TCG` (not its I/O and main-loop threads).
pub(crate) fn vcpu_time(pid: u32) -> Option<Duration> {
    let mut ticks: u64 = 0;
    let mut found = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !is_vcpu_thread(comm.trim()) {
            continue;
        }
        if let Some(stat) = std::fs::read_to_string(task.path().join("stat")).ok().and_then(|t| parse_stat(&t)) {
            ticks = ticks.saturating_add(stat.cpu_ticks);
            found = true;
        }
    }
    found.then(|| ticks_to_duration(ticks)).flatten()
}

fn is_vcpu_thread(comm: &str) -> bool {
    comm.strip_prefix("CPU ").is_some_and(|rest| rest.ends_with("/KVM") || rest.ends_with("/TCG"))
}

/// Resident memory of `pid` in bytes (`VmRSS`).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn ticks_to_duration(ticks: u64) -> Option<Duration> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_by_name() {
        for yes in ["CPU 0/TCG", "CPU 12/KVM"] {
            assert!(is_vcpu_thread(yes), "{yes}");
        }
        for no in ["qemu-system-x86", "IO mon_iothread", "worker", "CPU"] {
            assert!(!is_vcpu_thread(no), "{no}");
        }
        let me = std::process::id();
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert_eq!(vcpu_time(me), None, "the test process has no vCPU threads");
    }

    #[test]
    fn stat_with_odd_comm() {
        let s = "4242 (nubo-a) b (c) S 1 4240 4240 0 -1 4194624 100 0 0 0 250 31 0 0 20 0 3 0 1 2 3";
        let st = parse_stat(s).unwrap();
        assert_eq!(st.state, b'S');
        assert_eq!(st.session, 4240);
        assert_eq!(st.cpu_ticks, 281);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn pidfile_match_is_exact() {
        let c = b"qemu-system-x86_64\0-pidfile\0/d/vm-1/qemu.pid\0-daemonize\0";
        assert!(cmdline_has_pidfile(c, Path::new("/d/vm-1/qemu.pid")));
        assert!(!cmdline_has_pidfile(c, Path::new("/d/vm-12/qemu.pid")));
        assert!(!cmdline_has_pidfile(c, Path::new("/d/vm/qemu.pid")));
        assert!(!cmdline_has_pidfile(b"", Path::new("/d/vm-1/qemu.pid")));
        let qsd = b"qemu-storage-daemon\0--blockdev\0{}\0--pidfile\0/d/w/qemu.pid\0";
        assert!(cmdline_has_pidfile(qsd, Path::new("/d/w/qemu.pid")));
    }

    #[test]
    fn own_process_is_not_a_vm() {
        let me = std::process::id();
        assert!(read_stat(me).is_some());
        assert!(!is_our_qemu(me, Path::new("/nonexistent/qemu.pid")));
        assert!(cpu_time(me).is_some());
    }
}
