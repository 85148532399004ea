//! What a VM should look like: [`VmConfig`] and its parts, plus validation of
//! everything that ends up on a QEMU command line.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Accel, HypervisorError};

/// `pcie-root-port`s created at boot for data disks: each data disk sits
/// on its own port (at boot or hot-plugged), so this is also the most data
/// disks a VM can have.
pub const DEFAULT_HOTPLUG_SLOTS: u32 = 8;

/// Longest serial a virtio-blk disk carries (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_DISK_SERIAL: usize = 20;
/// Longest QMP node name / device id QEMU accepts.
const MAX_NODE_NAME: usize = 31;

const MAX_VCPUS: u32 = 255;
const MIN_MEMORY_MIB: u64 = 32;
const MAX_HOTPLUG_SLOTS: u32 = 32;

/// How the guest is booted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Boot {
    /// QEMU loads the kernel and initrd itself (`-kernel/-initrd/-append`).
    Direct { kernel: PathBuf, initrd: PathBuf, cmdline: String },
    /// The firmware (SeaBIOS) boots from the root disk.
    Firmware,
}

/// A TCP port forward from `127.0.0.1:host_port` to the guest's `guest_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortForward {
    pub host_port: u16,
    pub guest_port: u16,
}

/// A data disk (a volume): a qcow2 file on its own PCIe root port, so it
/// can be hot-plugged and unplugged. Its id names the QMP block node and
/// the device; the guest finds it by `serial`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDisk {
    /// `[a-z][a-z0-9-]*`, at most 31 characters (QMP node names), e.g. the volume id.
    pub id: String,
    /// The qcow2 file (absolute path).
    pub path: PathBuf,
    /// What the guest reads in `/sys/block/*/serial`: 1-20 of `[A-Za-z0-9]`.
    pub serial: String,
    /// Index of the root port (`hp{slot}`), below `hotplug_slots`.
    pub slot: u32,
}

impl DataDisk {
    /// Check the fields that end up in QMP and on the command line.
    pub fn validate(&self, hotplug_slots: u32) -> Result<(), HypervisorError> {
        let bad = |msg: String| Err(HypervisorError::InvalidConfig(msg));
        let id_ok = self.id.len() <= MAX_NODE_NAME
            && self.id.starts_with(|c: char| c.is_ascii_lowercase())
            && self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return bad(format!(
                "data disk id {:?} is invalid; use 1-{MAX_NODE_NAME} of [a-z0-9-] starting with a letter",
                self.id
            ));
        }
        // Ids of our own nodes, so a data disk can never shadow them.
        if matches!(self.id.as_str(), "root" | "seed") || self.id.starts_with("bk") {
            return bad(format!("data disk id {:?} is reserved; use a volume id", self.id));
        }
        if self.serial.is_empty()
            || self.serial.len() > MAX_DISK_SERIAL
            || !self.serial.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return bad(format!(
                "data disk serial {:?} is invalid; use 1-{MAX_DISK_SERIAL} letters and digits",
                self.serial
            ));
        }
        if self.slot >= hotplug_slots {
            return bad(format!(
                "data disk {} wants slot {}, but the VM has {hotplug_slots} hot-plug slots (0-{})",
                self.id,
                self.slot,
                hotplug_slots.saturating_sub(1)
            ));
        }
        if !self.path.is_absolute() {
            return bad(format!(
                "data disk {} path {} is relative; pass an absolute path",
                self.id,
                self.path.display()
            ));
        }
        Ok(())
    }
}

/// A CD-ROM drive (an `ide-cd` on the q35 board's AHCI controller): the
/// disc in it, read-only, and whether the firmware boots it first. Its
/// disc is changed while the VM runs with [`crate::Hypervisor::change_cdrom`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdRom {
    /// The ISO file (absolute path, read as raw); none: an empty drive.
    pub media: Option<PathBuf>,
    /// Boot from the CD before the root disk (firmware boot only).
    pub boot_first: bool,
}

/// The QMP id of the CD-ROM drive's device.
pub const CDROM_DEVICE: &str = "cd0";

/// Everything needed to prepare and start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Stable id: `[a-z0-9-]`, 1-63 characters. Names the QEMU process.
    pub id: String,
    /// Human-readable name; informational only.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Virtual size of the root disk; never smaller than the base image.
    pub disk_gib: u64,
    pub boot: Boot,
    /// Image the root disk overlay is backed by (qcow2 or raw).
    pub base_disk: PathBuf,
    /// NoCloud seed (raw vfat), attached read-only as the second disk.
    pub seed_image: Option<PathBuf>,
    pub port_forwards: Vec<PortForward>,
    pub accel: Accel,
    /// Free PCIe root ports for disk hot-plug.
    #[serde(default = "default_hotplug_slots")]
    pub hotplug_slots: u32,
    /// The instance metadata service: when set, the guest's user-mode
    /// network is [`METADATA_NET`] and each TCP connection the guest opens
    /// to [`METADATA_ADDR`]:80 is handed to this command (program and
    /// arguments; its stdin and stdout are the connection).
    #[serde(default)]
    pub metadata_relay: Option<Vec<String>>,
    /// MAC address of the NIC (`52:54:00:xx:xx:xx`); QEMU's default when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Format of `base_disk` (`raw` or `qcow2`). Images from users must name
    /// it: guessing from the content lets a "raw" image that looks like a
    /// qcow2 point QEMU at any file. `None` guesses (Nubo's own images only).
    #[serde(default)]
    pub base_format: Option<String>,
    /// Data disks plugged in at start, each on its slot's root port.
    #[serde(default)]
    pub disks: Vec<DataDisk>,
    /// NICs on host bridges (the guest's eth0, eth1, ...). When there are
    /// any, the VM has no user-mode NIC unless it forwards ports or has a
    /// metadata relay (which then comes after them).
    #[serde(default)]
    pub taps: Vec<crate::tap::TapNic>,
    /// Start as the target of a live migration: paused, waiting for the
    /// disks and the state (QEMU `-incoming defer`).
    #[serde(default)]
    pub incoming: bool,
    /// A CD-ROM drive; none: the VM has none.
    #[serde(default)]
    pub cdrom: Option<CdRom>,
    /// UEFI, Secure Boot, TPM and display (see [`crate::firmware`]).
    #[serde(default)]
    pub hardware: crate::VmHardware,
    /// How many vCPUs the VM may grow to while it runs
    /// ([`crate::Hypervisor::set_vcpus`]): QEMU starts with `-smp
    /// vcpus,maxcpus=max_vcpus`, the rest as empty CPU slots. `None` (or
    /// not above `vcpus`): no room to grow without a restart.
    #[serde(default)]
    pub max_vcpus: Option<u32>,
}

/// The guest network used with a metadata service; QEMU's guestfwd only
/// takes addresses inside the user network, so it must contain
/// [`METADATA_ADDR`]. The guest's DHCP address is [`GUEST_ADDR`].
pub const METADATA_NET: &str = "169.254.0.0/16";
/// Where guests find the metadata service, as on EC2.
pub const METADATA_ADDR: &str = "169.254.169.254";
/// The address slirp's DHCP server gives the guest in [`METADATA_NET`]
/// (set explicitly: slirp's own default there is 169.254.2.15).
pub const GUEST_ADDR: &str = "169.254.0.15";
/// The guest's gateway (slirp's host side) in [`METADATA_NET`].
pub const GATEWAY_ADDR: &str = "169.254.0.2";

/// A locally administered-looking MAC in QEMU's 52:54:00 range, derived
/// from `id` so it is stable across restarts.
pub fn mac_for(id: &str) -> String {
    // FNV-1a: tiny, stable and good enough to spread ids over 24 bits.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("52:54:00:{:02x}:{:02x}:{:02x}", (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff)
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        // The first octet must be unicast (lowest bit clear).
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn default_hotplug_slots() -> u32 {
    DEFAULT_HOTPLUG_SLOTS
}

/// Check that `id` is a safe VM id: 1-63 of `[a-z0-9-]`, not starting or
/// ending with `-`.
pub fn validate_id(id: &str) -> Result<(), HypervisorError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > 63 {
        Some("it is longer than 63 characters")
    } else if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        Some("it contains characters other than a-z, 0-9 and '-'")
    } else if id.starts_with('-') || id.ends_with('-') {
        Some("it starts or ends with '-'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HypervisorError::InvalidId { id: id.to_string(), reason }),
        None => Ok(()),
    }
}

impl VmConfig {
    /// Check the fields that do not need the filesystem.
    pub fn validate(&self) -> Result<(), HypervisorError> {
        validate_id(&self.id)?;
        let bad = |msg: String| Err(HypervisorError::InvalidConfig(msg));
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus is {}; use 1 to {MAX_VCPUS}", self.vcpus));
        }
        if let Some(max) = self.max_vcpus.filter(|m| *m > MAX_VCPUS) {
            return bad(format!("max_vcpus is {max}; use at most {MAX_VCPUS}"));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return bad(format!("memory_mib is {}; use at least {MIN_MEMORY_MIB}", self.memory_mib));
        }
        if self.disk_gib == 0 {
            return bad("disk_gib is 0; use at least 1".to_string());
        }
        if self.hotplug_slots > MAX_HOTPLUG_SLOTS {
            return bad(format!("hotplug_slots is {}; use at most {MAX_HOTPLUG_SLOTS}", self.hotplug_slots));
        }
        if let Some(path) = self.cdrom.as_ref().and_then(|c| c.media.as_ref()) {
            if !path.is_absolute() {
                return bad(format!("CD-ROM image path {} is relative; pass an absolute path", path.display()));
            }
        }
        if self.taps.len() > 16 {
            return bad(format!("{} tap NICs; a VM has at most 16", self.taps.len()));
        }
        for t in &self.taps {
            if t.tap.is_empty() || t.tap.len() > 15 || !t.tap.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return bad(format!("tap name {:?} must be 1-15 letters, digits or '-'", t.tap));
            }
            if !valid_mac(&t.mac) {
                return bad(format!("tap {} has MAC {:?}; use a unicast xx:xx:xx:xx:xx:xx", t.tap, t.mac));
            }
        }
        let mut host_ports = HashSet::new();
        for pf in &self.port_forwards {
            if pf.host_port == 0 || pf.guest_port == 0 {
                return bad(format!(
                    "port forward {}->{} uses port 0; use real port numbers",
                    pf.host_port, pf.guest_port
                ));
            }
            if !host_ports.insert(pf.host_port) {
                return bad(format!(
                    "host port {} is forwarded twice; each host port can forward to one guest port",
                    pf.host_port
                ));
            }
        }
        if let Some(f) = &self.base_format {
            if f != "raw" && f != "qcow2" {
                return bad(format!("base_format {f:?} is unknown; use raw or qcow2"));
            }
        }
        let mut disk_ids = HashSet::new();
        let mut slots = HashSet::new();
        for d in &self.disks {
            d.validate(self.hotplug_slots)?;
            if !disk_ids.insert(d.id.as_str()) {
                return bad(format!("data disk {} is listed twice", d.id));
            }
            if !slots.insert(d.slot) {
                return bad(format!("two data disks want slot {}; give each its own", d.slot));
            }
        }
        if let Some(mac) = &self.mac {
            if !valid_mac(mac) {
                return bad(format!("MAC address '{mac}' is invalid; use six hex pairs like 52:54:00:12:34:56"));
            }
        }
        if let Some(relay) = &self.metadata_relay {
            // The command is split by glib's shell-like parser: keep every
            // argument free of blanks, quotes and backslashes so it stays one word.
            let plain = |a: &String| {
                !a.is_empty()
                    && !a.chars().any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '\0' | '$' | '`'))
            };
            if relay.is_empty() || !relay.iter().all(plain) {
                return bad(format!(
                    "the metadata relay command {relay:?} has an empty argument or one with blanks, quotes or backslashes; install Nubo and its data directory under plain paths"
                ));
            }
        }
        self.hardware.validate()?;
        if let Boot::Direct { cmdline, .. } = &self.boot {
            if cmdline.contains('\0') {
                return bad("the kernel command line contains a NUL byte".to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_stable_and_valid() {
        let a = mac_for("i-0123456789abcdef0");
        assert_eq!(a, mac_for("i-0123456789abcdef0"));
        assert_ne!(a, mac_for("i-0123456789abcdef1"));
        assert!(a.starts_with("52:54:00:") && valid_mac(&a), "{a}");
        for bad in ["", "52:54:00:12:34", "53:54:00:12:34:56", "52:54:00:12:34:zz", "52-54-00-12-34-56"] {
            assert!(!valid_mac(bad), "{bad}");
        }
    }

    #[test]
    fn data_disks_are_checked() {
        let ok = DataDisk {
            id: "vol-0123456789abcdef0".into(),
            path: "/v/vol.qcow2".into(),
            serial: "vol0123456789abcdef0".into(),
            slot: 1,
        };
        assert!(ok.validate(2).is_ok());
        let with = |f: &dyn Fn(&mut DataDisk)| {
            let mut d = ok.clone();
            f(&mut d);
            d.validate(2).unwrap_err().to_string()
        };
        assert!(with(&|d| d.slot = 2).contains("slot"));
        assert!(with(&|d| d.id = "root".into()).contains("reserved"));
        assert!(with(&|d| d.id = "Vol".into()).contains("[a-z0-9-]"));
        assert!(with(&|d| d.id = "v".repeat(32)).contains("[a-z0-9-]"));
        assert!(with(&|d| d.serial = "vol-0123456789abcdef0".into()).contains("serial"));
        assert!(with(&|d| d.path = "vol.qcow2".into()).contains("relative"));
    }

    #[test]
    fn ids() {
        for ok in ["a", "vm-1", "0123", "i-0a1b2c"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-a", "a-", "Vm", "a_b", "a/b", "a b", "a,b", "..", long.as_str()] {
            let err = validate_id(bad).unwrap_err();
            assert!(err.to_string().contains("[a-z0-9-]"), "{bad}: {err}");
        }
    }
}
