//! What the guest agent inside each running instance says about the
//! guest: OS, file systems with their use, network interfaces. Collected
//! every few seconds through the QEMU guest agent protocol and sent with
//! the host report when it changed.

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
        GuestStatus {
            updated_at_ms: now_ms,
            agent_version: Some(info.version),
            os: os.as_ref().and_then(|o| o.pretty_name.clone().or_else(|| o.name.clone())),
            kernel: os.and_then(|o| o.kernel_release),
            filesystems,
            interfaces,
        },
        counters,
    ))
}

/// Whether two reports differ in anything but their time (so an
/// unchanged guest is not re-sent every few seconds).
pub fn changed(old: Option<&GuestStatus>, new: &GuestStatus) -> bool {
    match old {
        None => true,
        Some(old) => GuestStatus { updated_at_ms: new.updated_at_ms, ..old.clone() } != *new,
    }
}
