//! Read-only facts about the agent and the guest: `guest-info`,
//! `guest-get-osinfo`, `guest-get-fsinfo`, `guest-network-get-interfaces`
//! and `guest-get-disks` (none takes arguments).
//!
//! These replies come from stock agents of many versions too: members
//! Nubo does not know are ignored, and missing ones read as their default
//! (an empty name, no addresses), as a client that reads only what it needs.

use serde::{Deserialize, Serialize};

/// `guest-info`'s reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    #[serde(default)]
    pub version: String,
    /// Every command the agent knows; those disabled (by a freeze, or by
    /// the agent's configuration) say `enabled: false`.
    pub supported_commands: Vec<CommandInfo>,
}

/// One entry of [`GuestInfo::supported_commands`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CommandInfo {
    pub name: String,
    pub enabled: bool,
    /// False for a command that sends nothing when it succeeds.
    pub success_response: bool,
}

impl Default for CommandInfo {
    fn default() -> Self {
        CommandInfo { name: String::new(), enabled: true, success_response: true }
    }
}

/// `guest-get-osinfo`'s reply: uname(2) and os-release(5) facts, each when known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct OsInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
}

/// One entry of `guest-get-fsinfo`'s reply: a mounted file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct FsInfo {
    /// Kernel name of the device, e.g. `vda`.
    pub name: String,
    pub mountpoint: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Size available to unprivileged users (used + available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// The whole size, reserved blocks included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes_privileged: Option<u64>,
    /// The disks under the file system.
    pub disk: Vec<DiskAddress>,
}

/// One entry of `guest-network-get-interfaces`'s reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct NetworkInterface {
    pub name: String,
    /// MAC address as `aa:bb:cc:dd:ee:ff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_address: Option<String>,
    pub ip_addresses: Vec<IpAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistics: Option<NetworkStats>,
}

/// An address of a [`NetworkInterface`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IpAddress {
    pub ip_address_type: IpAddressType,
    pub ip_address: String,
    pub prefix: i64,
}

/// The schema's GuestIpAddressType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpAddressType {
    Ipv4,
    Ipv6,
}

impl IpAddressType {
    pub const fn name(self) -> &'static str {
        match self {
            IpAddressType::Ipv4 => "ipv4",
            IpAddressType::Ipv6 => "ipv6",
        }
    }
}

/// An interface's counters (the schema's GuestNetworkStats), all of them
/// or none: a host computes rates from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NetworkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errs: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errs: u64,
    pub tx_dropped: u64,
}

/// One entry of `guest-get-disks`'s reply: a disk or a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Disk {
    /// Device node, e.g. `/dev/vda` or `/dev/vda1`.
    pub name: String,
    pub partition: bool,
    /// Devices this one sits on: a partition's disk, a device-mapper volume's disks.
    pub dependencies: Vec<String>,
    /// Where the disk is attached; partitions have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<DiskAddress>,
}

/// The schema's GuestDiskAddress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DiskAddress {
    pub pci_controller: PciAddress,
    /// `virtio`, `scsi`, `nvme`, `unknown`, ... (the schema's GuestDiskBusType,
    /// kept as text: newer agents add values).
    pub bus_type: String,
    pub bus: i64,
    pub target: i64,
    pub unit: i64,
    /// The disk's serial number (virtio-blk `serial=`), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The device node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// The schema's GuestPCIAddress; all -1 when the controller is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PciAddress {
    pub domain: i64,
    pub bus: i64,
    pub slot: i64,
    pub function: i64,
}

impl PciAddress {
    /// What qemu-ga reports when the controller is unknown.
    pub const UNKNOWN: PciAddress = PciAddress { domain: -1, bus: -1, slot: -1, function: -1 };
}

impl Default for PciAddress {
    fn default() -> Self {
        PciAddress::UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::round_trip;
    use serde_json::json;

    #[test]
    fn guest_info_round_trips_and_reads_a_stock_agents() {
        round_trip(
            json!({"version": "0.1.0", "supported_commands": [
                {"name": "guest-ping", "enabled": true, "success-response": true},
                {"name": "guest-shutdown", "enabled": false, "success-response": false}]}),
            GuestInfo {
                version: "0.1.0".into(),
                supported_commands: vec![
                    CommandInfo { name: "guest-ping".into(), ..Default::default() },
                    CommandInfo { name: "guest-shutdown".into(), enabled: false, success_response: false },
                ],
            },
        );
        assert!(serde_json::from_value::<GuestInfo>(json!({"version": "7.2.0"})).is_err(), "no command list");
    }

    #[test]
    fn osinfo_as_qemu_ga_sends_it() {
        let wire = json!({"name": "Debian GNU/Linux", "kernel-release": "6.1.0-18-amd64",
            "version": "12 (bookworm)", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12",
            "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)", "machine": "x86_64",
            "id": "debian"});
        let info: OsInfo = serde_json::from_value(wire.clone()).expect("parse");
        assert_eq!(info.pretty_name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!((info.variant.as_deref(), info.variant_id.as_deref()), (None, None));
        assert_eq!(serde_json::to_value(&info).expect("serialise"), wire);
        round_trip(json!({}), OsInfo::default());
    }

    #[test]
    fn fsinfo_as_qemu_ga_sends_it() {
        let disk = json!({"serial": "root0", "bus-type": "virtio", "bus": 0, "unit": 0,
            "pci-controller": {"bus": 0, "slot": 3, "domain": 0, "function": 0}, "dev": "/dev/vda1", "target": 0});
        round_trip(
            json!([{"name": "vda1", "mountpoint": "/", "type": "ext4", "used-bytes": 1_000_000,
                "total-bytes": 2_000_000, "total-bytes-privileged": 2_100_000, "disk": [disk]}]),
            vec![FsInfo {
                name: "vda1".into(),
                mountpoint: "/".into(),
                fs_type: "ext4".into(),
                used_bytes: Some(1_000_000),
                total_bytes: Some(2_000_000),
                total_bytes_privileged: Some(2_100_000),
                disk: vec![DiskAddress {
                    pci_controller: PciAddress { domain: 0, bus: 0, slot: 3, function: 0 },
                    bus_type: "virtio".into(),
                    serial: Some("root0".into()),
                    dev: Some("/dev/vda1".into()),
                    ..Default::default()
                }],
            }],
        );
        // statvfs failed: no sizes.
        round_trip(
            json!({"name": "vdb", "mountpoint": "/mnt", "type": "vfat", "disk": []}),
            FsInfo { name: "vdb".into(), mountpoint: "/mnt".into(), fs_type: "vfat".into(), ..Default::default() },
        );
    }

    #[test]
    fn network_interfaces_as_qemu_ga_sends_them() {
        let stats = json!({"rx-bytes": 1, "rx-packets": 2, "rx-errs": 0, "rx-dropped": 3,
            "tx-bytes": 4, "tx-packets": 5, "tx-errs": 0, "tx-dropped": 0});
        round_trip(
            json!([{"name": "eth0", "hardware-address": "52:54:00:12:34:56", "ip-addresses": [
                {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24},
                {"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe12:3456", "prefix": 64}],
                "statistics": stats}]),
            vec![NetworkInterface {
                name: "eth0".into(),
                hardware_address: Some("52:54:00:12:34:56".into()),
                ip_addresses: vec![
                    IpAddress { ip_address_type: IpAddressType::Ipv4, ip_address: "10.0.2.15".into(), prefix: 24 },
                    IpAddress {
                        ip_address_type: IpAddressType::Ipv6,
                        ip_address: "fe80::5054:ff:fe12:3456".into(),
                        prefix: 64,
                    },
                ],
                statistics: Some(NetworkStats {
                    rx_bytes: 1,
                    rx_packets: 2,
                    rx_dropped: 3,
                    tx_bytes: 4,
                    tx_packets: 5,
                    ..Default::default()
                }),
            }],
        );
        // An interface without addresses: qemu-ga leaves the list out.
        let bare: NetworkInterface = serde_json::from_value(json!({"name": "sit0"})).expect("parse");
        assert_eq!(bare, NetworkInterface { name: "sit0".into(), ..Default::default() });
        assert!(serde_json::from_value::<IpAddress>(json!({"ip-address-type": "ipx", "ip-address": "x", "prefix": 1}))
            .is_err());
    }

    #[test]
    fn disks_as_qemu_ga_sends_them() {
        let wire = json!([
            {"name": "/dev/vda1", "partition": true, "dependencies": ["/dev/vda"]},
            {"name": "/dev/vda", "partition": false, "dependencies": [], "address": {"serial": "root0",
                "bus-type": "virtio", "bus": 0, "unit": 0, "target": 0, "dev": "/dev/vda",
                "pci-controller": {"bus": 0, "slot": 3, "domain": 0, "function": 0}}},
            {"name": "/dev/vdb", "partition": false, "dependencies": [], "address": {"bus-type": "virtio",
                "bus": 0, "unit": 0, "target": 0,
                "pci-controller": {"bus": -1, "slot": -1, "domain": -1, "function": -1}}}]);
        let disks: Vec<Disk> = serde_json::from_value(wire.clone()).expect("parse");
        assert_eq!(
            disks[0],
            Disk { name: "/dev/vda1".into(), partition: true, dependencies: vec!["/dev/vda".into()], address: None }
        );
        let address = disks[1].address.as_ref().expect("address");
        assert_eq!((address.serial.as_deref(), address.bus_type.as_str()), (Some("root0"), "virtio"));
        assert_eq!(disks[2].address.as_ref().map(|a| a.pci_controller), Some(PciAddress::UNKNOWN));
        assert_eq!(serde_json::to_value(&disks).expect("serialise"), wire);
        // qemu-ga's extra members (`alias`, `smart`) are ignored.
        let stock: Disk = serde_json::from_value(json!({"name": "/dev/nvme0n1", "partition": false,
            "alias": "data", "smart": {"type": "nvme", "critical-warning": 0}}))
        .expect("parse");
        assert_eq!(stock.name, "/dev/nvme0n1");
    }
}
