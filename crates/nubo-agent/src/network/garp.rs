//! Gratuitous ARP: tells a LAN that an address is now at this host's
//! bridge, so clients that had it cached at another host (before a
//! migration or a failover) switch at once instead of after their cache
//! times out. Written here on a raw packet socket because the tools that
//! send one (`arping`) refuse an address the host does not own, which a
//! floating IP never is; the frame is 42 bytes of fixed layout (RFC 826).

use super::{NetworkError, Result};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

const ETH_P_ARP: u16 = 0x0806;

/// The frame announcing `addr` at `mac`: an ARP request from and for `addr`, broadcast.
pub fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target hardware address stays zero; the target address is our own.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Sends three announcements of `addr` on `ifname` (inside `netns`, if
/// given), 100 ms apart, from the interface's own MAC `mac`.
pub async fn announce(netns: Option<&Path>, ifname: &str, mac: [u8; 6], addr: Ipv4Addr) -> Result<()> {
    let netns = netns.map(Path::to_path_buf);
    let ifname = ifname.to_string();
    // A thread of its own: setns changes the calling thread, which must
    // not be one a runtime reuses.
    let handle = std::thread::spawn(move || send(netns, &ifname, mac, addr));
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|e| NetworkError::Other(format!("the ARP announcement task failed: {e}")))?
        .map_err(|_| NetworkError::Other("the ARP announcement thread panicked".into()))?
        .map_err(|e| NetworkError::Other(format!("cannot announce {addr}: {e}")))
}

fn send(netns: Option<PathBuf>, ifname: &str, mac: [u8; 6], addr: Ipv4Addr) -> std::io::Result<()> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(ns)?;
        // SAFETY: setns with a namespace descriptor we own; it changes only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let name = std::ffi::CString::new(ifname).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain socket creation; the descriptor is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ARP.to_be())) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = frame(mac, addr);
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // SAFETY: the frame and address outlive the call; sizes are theirs.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_arp_request_for_the_address_itself() {
        let mac = parse_mac("02:4e:75:00:03:e8").unwrap();
        let f = frame(mac, Ipv4Addr::new(192, 168, 50, 101));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[28..32], &[192, 168, 50, 101], "sender address");
        assert_eq!(&f[38..42], &[192, 168, 50, 101], "target address: the same");
        assert_eq!(&f[32..38], &[0; 6]);
        assert!(parse_mac("02:4e:75:00:03").is_none());
        assert!(parse_mac("02:4e:75:00:03:e8:01").is_none());
        assert!(parse_mac("zz:4e:75:00:03:e8").is_none());
    }
}
