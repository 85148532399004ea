//! What the guest agent inside each running instance says about the
//! guest: OS, file systems with their use, network interfaces. Collected
//! every few seconds through the QEMU guest agent protocol and sent with
//! the host report when it changed. The guest chooses every byte of it,
//! so it is capped here ([`cap`]) before it goes anywhere: a guest must
//! not be able to make its host's report too large to be accepted.

use nubo_api::views::{GuestFilesystem, GuestInterface, GuestStatus};
use nubo_hypervisor::{QgaClient, QgaError};

/// File system types that say nothing about the guest's disks.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "fusectl",
    "autofs",
    "efivarfs",
    "binfmt_misc",
    "ramfs",
    "rpc_pipefs",
    "nsfs",
];

/// Bytes the guest's interfaces (all but loopback) have received and sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Asks the guest agent for the guest's status, and its network counters
/// (kept apart: they change all the time, so they go to monitoring, not
/// into the status the control plane stores).
pub async fn collect(q: &mut QgaClient, now_ms: i64) -> Result<(GuestStatus, Option<NetCounters>), QgaError> {
    let info = q.info().await?;
    // Each part is optional: an agent may have some commands disabled.
    let os = q.osinfo().await.ok();
    let filesystems = q
        .fsinfo()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !PSEUDO_FS.contains(&f.fs_type.as_str()))
        .map(|f| GuestFilesystem {
            mountpoint: f.mountpoint,
            device: f.name,
            fs_type: f.fs_type,
            used_bytes: f.used_bytes,
            total_bytes: f.total_bytes,
        })
        .collect();
    let raw_interfaces = q.network_interfaces().await.unwrap_or_default();
    let mut counters: Option<NetCounters> = None;
    for i in raw_interfaces.iter().filter(|i| i.name != "lo") {
        if let (Some(rx), Some(tx)) = (i.rx_bytes, i.tx_bytes) {
            let c = counters.get_or_insert_with(NetCounters::default);
            c.rx_bytes = c.rx_bytes.saturating_add(rx);
            c.tx_bytes = c.tx_bytes.saturating_add(tx);
        }
    }
    let interfaces = raw_interfaces
        .into_iter()
        .map(|i| GuestInterface {
            name: i.name,
            mac: i.hardware_address,
            addresses: i.ip_addresses.into_iter().map(|a| format!("{}/{}", a.address, a.prefix)).collect(),
        })
        .collect();
    Ok((
        cap(GuestStatus {
            updated_at_ms: now_ms,
            agent_version: Some(info.version),
            os: os.as_ref().and_then(|o| o.pretty_name.clone().or_else(|| o.name.clone())),
            kernel: os.and_then(|o| o.kernel_release),
            filesystems,
            interfaces,
            truncated: false,
        }),
        counters,
    ))
}

/// Longest text kept of a guest-sent field (OS name, mount point, ...).
pub const MAX_TEXT: usize = 256;
/// Most file systems, interfaces and addresses per interface kept.
pub const MAX_FILESYSTEMS: usize = 32;
pub const MAX_INTERFACES: usize = 32;
pub const MAX_ADDRESSES: usize = 16;
/// Largest guest status (as JSON) one instance puts in a host report.
pub const MAX_STATUS_BYTES: usize = 16 * 1024;
/// What ends a text that was cut.
pub const TRUNCATED: &str = "[truncated]";

/// `text` cut to at most [`MAX_TEXT`] bytes (on a character boundary)
/// with [`TRUNCATED`] at its end; true when it was cut.
fn cap_text(text: &mut String) -> bool {
    if text.len() <= MAX_TEXT {
        return false;
    }
    let mut end = MAX_TEXT - TRUNCATED.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED);
    true
}

/// The status as its host reports it: each text at most [`MAX_TEXT`]
/// bytes, lists cut to their caps, and the whole at most
/// [`MAX_STATUS_BYTES`] of JSON (file systems and interfaces dropped from
/// the end until it fits); `truncated` says whether anything was cut.
pub fn cap(mut g: GuestStatus) -> GuestStatus {
    let mut cut = false;
    for t in [&mut g.agent_version, &mut g.os, &mut g.kernel].into_iter().flatten() {
        cut |= cap_text(t);
    }
    cut |= g.filesystems.len() > MAX_FILESYSTEMS || g.interfaces.len() > MAX_INTERFACES;
    g.filesystems.truncate(MAX_FILESYSTEMS);
    g.interfaces.truncate(MAX_INTERFACES);
    for f in &mut g.filesystems {
        cut |= cap_text(&mut f.mountpoint) | cap_text(&mut f.device) | cap_text(&mut f.fs_type);
    }
    for i in &mut g.interfaces {
        cut |= cap_text(&mut i.name);
        if let Some(mac) = &mut i.mac {
            cut |= cap_text(mac);
        }
        cut |= i.addresses.len() > MAX_ADDRESSES;
        i.addresses.truncate(MAX_ADDRESSES);
        for a in &mut i.addresses {
            cut |= cap_text(a);
        }
    }
    while serde_json::to_vec(&g).map_or(0, |b| b.len()) > MAX_STATUS_BYTES {
        cut = true;
        if g.interfaces.len() >= g.filesystems.len() && g.interfaces.pop().is_none() {
            break;
        }
        if g.filesystems.len() > g.interfaces.len() {
            g.filesystems.pop();
        }
    }
    g.truncated |= cut;
    g
}

/// Whether two reports differ in anything but their time (so an
/// unchanged guest is not re-sent every few seconds).
pub fn changed(old: Option<&GuestStatus>, new: &GuestStatus) -> bool {
    match old {
        None => true,
        Some(old) => GuestStatus { updated_at_ms: new.updated_at_ms, ..old.clone() } != *new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_api::views::{GuestFilesystem, GuestInterface};

    #[test]
    fn a_guest_s_status_is_capped() {
        let small = GuestStatus { os: Some("Nubo tiny".into()), ..Default::default() };
        assert_eq!(cap(small.clone()), small, "a normal status is left alone");

        let fs = |i: usize| GuestFilesystem {
            mountpoint: format!("/m{i}{}", "x".repeat(1000)),
            device: "vda".into(),
            fs_type: "ext4".into(),
            used_bytes: Some(1),
            total_bytes: Some(2),
        };
        let iface = |i: usize| GuestInterface {
            name: format!("eth{i}"),
            mac: Some("é".repeat(400)),
            addresses: (0..100).map(|a| format!("10.0.{i}.{a}/24")).collect(),
        };
        let big = GuestStatus {
            updated_at_ms: 1,
            agent_version: Some("1".into()),
            os: Some("A".repeat(400_000)),
            kernel: Some("6.1".into()),
            filesystems: (0..1000).map(fs).collect(),
            interfaces: (0..1000).map(iface).collect(),
            truncated: false,
        };
        let g = cap(big);
        assert!(g.truncated);
        let os = g.os.as_deref().unwrap_or_default();
        assert!(os.len() <= MAX_TEXT && os.starts_with("AAA") && os.ends_with(TRUNCATED), "{os}");
        assert!(serde_json::to_vec(&g).unwrap().len() <= MAX_STATUS_BYTES);
        assert!(g.filesystems.len() <= MAX_FILESYSTEMS && !g.interfaces.is_empty());
        assert!(g.interfaces.iter().all(|i| i.addresses.len() <= MAX_ADDRESSES));
        // Cut on a character boundary: still valid UTF-8 ending in the marker.
        let mac = g.interfaces[0].mac.as_deref().unwrap_or_default();
        assert!(mac.len() <= MAX_TEXT && mac.ends_with(TRUNCATED), "{mac}");
    }
}
