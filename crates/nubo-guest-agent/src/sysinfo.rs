//! Read-only facts about the guest: mounted file systems
//! (`guest-get-fsinfo`), the OS (`guest-get-osinfo`) and network interfaces
//! (`guest-network-get-interfaces`), from /proc, /etc/os-release, statvfs,
//! uname and getifaddrs.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use nubo_guest_protocol::{FsInfo, IpAddress, IpAddressType, NetworkInterface, NetworkStats, OsInfo};

use crate::commands::QgaError;

/// `guest-get-fsinfo`: file systems backed by a block device (major != 0),
/// so proc, sysfs, tmpfs, devtmpfs and the like are left out, as in qemu-ga.
pub fn fsinfo() -> Result<Vec<FsInfo>, QgaError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| QgaError::generic(format!("failed to read /proc/self/mountinfo: {e}")))?;
    let mut out = Vec::new();
    for m in parse_mountinfo(&text) {
        if m.major == 0 {
            continue;
        }
        let name = std::fs::read_link(format!("/sys/dev/block/{}:{}", m.major, m.minor))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| m.source.rsplit('/').next().unwrap_or(&m.source).to_string());
        let usage = usage(&m.mountpoint);
        out.push(FsInfo {
            name,
            used_bytes: usage.map(|(used, _, _)| used),
            total_bytes: usage.map(|(_, total, _)| total),
            total_bytes_privileged: usage.map(|(_, _, privileged)| privileged),
            mountpoint: m.mountpoint,
            fs_type: m.fstype,
            disk: Vec::new(),
        });
    }
    Ok(out)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
    /// The file system (its superblock options, not this mount's) is read-only.
    pub read_only: bool,
}

/// The mounts of a /proc/self/mountinfo text (malformed lines are skipped).
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("none");
            let read_only = r.next().is_some_and(|opts| opts.split(',').any(|o| o == "ro"));
            Some(Mount {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                mountpoint: unescape_octal(f.get(4)?),
                fstype: fstype.to_string(),
                source: unescape_octal(source),
                read_only,
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount paths as `\NNN`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// (used, total for unprivileged users, total) bytes, computed like qemu-ga.
fn usage(mountpoint: &str) -> Option<(u64, u64, u64)> {
    let path = CString::new(mountpoint).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above: `path` is NUL-terminated and `st` is ours to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    let used = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64);
    Some((used * frsize, (used + st.f_bavail as u64) * frsize, st.f_blocks as u64 * frsize))
}

/// `guest-get-osinfo`: /etc/os-release (or /usr/lib/os-release) and uname.
pub fn osinfo() -> OsInfo {
    let mut info = OsInfo::default();
    // SAFETY: uname fills the zeroed struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer that uname fills.
    if unsafe { libc::uname(&mut u) } == 0 {
        // SAFETY: uname NUL-terminates every field it fills.
        let text = |field: &[libc::c_char]| unsafe { CStr::from_ptr(field.as_ptr()) }.to_string_lossy().into_owned();
        info.kernel_release = Some(text(&u.release));
        info.kernel_version = Some(text(&u.version));
        info.machine = Some(text(&u.machine));
    }
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let mut release = parse_os_release(&text);
    info.id = release.remove("ID");
    info.name = release.remove("NAME");
    info.pretty_name = release.remove("PRETTY_NAME");
    info.version = release.remove("VERSION");
    info.version_id = release.remove("VERSION_ID");
    info.variant = release.remove("VARIANT");
    info.variant_id = release.remove("VARIANT_ID");
    info
}

/// `KEY=value` lines of os-release(5), with shell quoting removed.
pub(crate) fn parse_os_release(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.trim().split_once('=')?;
            if k.starts_with('#') {
                return None;
            }
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            let mut unquoted = String::with_capacity(v.len());
            let mut chars = v.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        unquoted.push(n);
                    }
                } else {
                    unquoted.push(c);
                }
            }
            Some((k.to_string(), unquoted))
        })
        .collect()
}

/// `guest-network-get-interfaces`: every interface from getifaddrs, in its order.
pub fn network_interfaces() -> Result<Vec<NetworkInterface>, QgaError> {
    let mut order: Vec<String> = Vec::new();
    let mut ifaces: HashMap<String, NetworkInterface> = HashMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(QgaError::generic(format!("getifaddrs failed: {}", std::io::Error::last_os_error())));
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, still alive.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        let entry = ifaces.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            NetworkInterface { name: name.clone(), ..NetworkInterface::default() }
        });
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        match family {
            libc::AF_PACKET => {
                // SAFETY: AF_PACKET addresses are sockaddr_ll.
                let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
                let len = usize::from(ll.sll_halen).min(ll.sll_addr.len());
                let mac: Vec<String> = ll.sll_addr[..len].iter().map(|b| format!("{b:02x}")).collect();
                if !mac.is_empty() {
                    entry.hardware_address = Some(mac.join(":"));
                }
            }
            libc::AF_INET => {
                // SAFETY: AF_INET addresses (and their netmasks) are sockaddr_in.
                let addr = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    // SAFETY: not null (checked above), and an AF_INET netmask is a sockaddr_in.
                    let mask = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    u32::from_be(mask.sin_addr.s_addr).count_ones()
                };
                push_ip(entry, IpAddressType::Ipv4, ip.to_string(), prefix);
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6 addresses (and their netmasks) are sockaddr_in6.
                let addr = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
                let prefix = if ifa.ifa_netmask.is_null() {
                    128
                } else {
                    // SAFETY: not null (checked above), and an AF_INET6 netmask is a sockaddr_in6.
                    let mask = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                    mask.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                };
                push_ip(entry, IpAddressType::Ipv6, ip.to_string(), prefix);
            }
            _ => {}
        }
    }
    // SAFETY: head came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    for (name, entry) in ifaces.iter_mut() {
        entry.statistics = interface_statistics(Path::new("/sys/class/net"), name);
    }
    Ok(order.iter().filter_map(|n| ifaces.remove(n)).collect())
}

/// `GuestNetworkStats` of interface `name` from `<net>/<name>/statistics`,
/// as stock qemu-ga reports them (the host computes network rates from them).
fn interface_statistics(net: &Path, name: &str) -> Option<NetworkStats> {
    // The name comes from the kernel, but it goes into a path: plain names only.
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let dir = net.join(name).join("statistics");
    let read = |f: &str| -> Option<u64> { std::fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok() };
    Some(NetworkStats {
        rx_bytes: read("rx_bytes")?,
        rx_packets: read("rx_packets")?,
        rx_errs: read("rx_errors")?,
        rx_dropped: read("rx_dropped")?,
        tx_bytes: read("tx_bytes")?,
        tx_packets: read("tx_packets")?,
        tx_errs: read("tx_errors")?,
        tx_dropped: read("tx_dropped")?,
    })
}

fn push_ip(entry: &mut NetworkInterface, kind: IpAddressType, address: String, prefix: u32) {
    entry.ip_addresses.push(IpAddress { ip_address_type: kind, ip_address: address, prefix: i64::from(prefix) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("eth0/statistics");
        std::fs::create_dir_all(&stats).unwrap();
        for (f, v) in [
            ("rx_bytes", 1000),
            ("rx_packets", 10),
            ("rx_errors", 0),
            ("rx_dropped", 1),
            ("tx_bytes", 2000),
            ("tx_packets", 20),
            ("tx_errors", 0),
            ("tx_dropped", 0),
        ] {
            std::fs::write(stats.join(f), format!("{v}\n")).unwrap();
        }
        let s = interface_statistics(dir.path(), "eth0").unwrap();
        assert_eq!((s.rx_bytes, s.tx_bytes), (1000, 2000));
        assert!(interface_statistics(dir.path(), "../etc").is_none());
        assert!(interface_statistics(dir.path(), "lo").is_none(), "missing files: no statistics");
    }
}
