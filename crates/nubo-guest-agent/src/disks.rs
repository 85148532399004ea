//! `guest-get-disks`: the disks and partitions the guest kernel sees, read
//! from /sys/block, as qemu-ga's `GuestDiskInfo` objects. The host uses it
//! to check that a hot-plugged volume has arrived (found by its serial) and
//! under which device name, before reading its size from sysfs.
//!
//! qemu-ga gets serials and device nodes from udev; the tiny image has no
//! udev, so this reads the same facts from sysfs directly. Every member the
//! schema marks mandatory is present (a `pci-controller` of -1s when the disk
//! is not on PCI, as qemu-ga does), so strict clients parse both agents alike.

use std::path::Path;

pub(crate) use nubo_guest_protocol::PciAddress;
use nubo_guest_protocol::{Disk, DiskAddress};

use crate::commands::QgaError;

/// Block devices that are never volumes: loop devices, RAM disks, compressed
/// RAM swap, CD-ROMs and floppies.
const SKIPPED_PREFIXES: &[&str] = &["loop", "ram", "zram", "sr", "fd"];

/// `guest-get-disks` on the running kernel.
pub fn disks() -> Result<Vec<Disk>, QgaError> {
    disks_in(Path::new("/sys/block"))
}

/// `guest-get-disks` for a /sys/block directory: each disk, then its partitions.
pub(crate) fn disks_in(sys_block: &Path) -> Result<Vec<Disk>, QgaError> {
    let entries = std::fs::read_dir(sys_block)
        .map_err(|e| QgaError::generic(format!("failed to read {}: {e}", sys_block.display())))?;
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !SKIPPED_PREFIXES.iter().any(|p| n.starts_with(p)))
        .collect();
    // read_dir order is arbitrary; a stable order keeps replies comparable.
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let dir = sys_block.join(&name);
        // Size 0: no medium (an idle nbd or card reader); qemu-ga lists only
        // block devices of non-zero size.
        if read_u64(&dir.join("size")) == Some(0) {
            continue;
        }
        let dev = dev_path(&name);
        out.push(disk_info(&dir, &name, &dev));
        for part in partitions(&dir, &name) {
            out.push(Disk { name: dev_path(&part), partition: true, dependencies: vec![dev.clone()], address: None });
        }
    }
    Ok(out)
}

fn disk_info(dir: &Path, name: &str, dev: &str) -> Disk {
    // Through the `device` link to the real device directory, whose path
    // names the PCI function and, for SCSI, the host:channel:target:lun.
    let device = std::fs::canonicalize(dir.join("device")).ok();
    let device = device.as_deref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let bus_type = bus_type(name);
    let (bus, target, unit) = match bus_type {
        // One disk per virtio-blk PCI function: qemu-ga reports zeros.
        "virtio" => (0, 0, 0),
        "scsi" => scsi_address(&device).unwrap_or((-1, -1, -1)),
        _ => (-1, -1, -1),
    };
    // virtio-blk exposes its serial on the disk, NVMe on the controller.
    let serial = [dir.join("serial"), dir.join("device/serial")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    Disk {
        name: dev.to_string(),
        partition: false,
        dependencies: slaves(dir),
        address: Some(DiskAddress {
            pci_controller: pci_address(&device).unwrap_or(PciAddress::UNKNOWN),
            bus_type: bus_type.to_string(),
            bus,
            target,
            unit,
            serial,
            dev: Some(dev.to_string()),
        }),
    }
}

/// The schema's `GuestDiskBusType` for a kernel disk name.
pub(crate) fn bus_type(name: &str) -> &'static str {
    if name.starts_with("vd") {
        "virtio"
    } else if name.starts_with("sd") {
        "scsi"
    } else {
        "unknown"
    }
}

/// The address of the PCI function a device sits on: the last path
/// component of the form `DDDD:BB:SS.F`, so a disk behind a PCIe root port
/// (`.../0000:00:04.0/0000:01:00.0/virtio3`) gets its own function, not
/// the port's.
pub(crate) fn pci_address(sysfs_path: &str) -> Option<PciAddress> {
    sysfs_path.rsplit('/').find_map(parse_pci_name)
}

fn parse_pci_name(s: &str) -> Option<PciAddress> {
    let (domain, rest) = s.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (slot, function) = rest.split_once('.')?;
    let hex = |part: &str, len: usize| {
        if part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit()) {
            i64::from_str_radix(part, 16).ok()
        } else {
            None
        }
    };
    Some(PciAddress { domain: hex(domain, 4)?, bus: hex(bus, 2)?, slot: hex(slot, 2)?, function: hex(function, 1)? })
}

/// (channel, target, lun) of a SCSI device path ending in `H:C:T:L`.
pub(crate) fn scsi_address(sysfs_path: &str) -> Option<(i64, i64, i64)> {
    let last = sysfs_path.rsplit('/').next()?;
    let parts: Vec<i64> = last.split(':').map(str::parse).collect::<Result<_, _>>().ok()?;
    match parts[..] {
        [_host, channel, target, lun] => Some((channel, target, lun)),
        _ => None,
    }
}

/// Partitions of a disk: its subdirectories that have a `partition` file,
/// in partition-number order (vda2 before vda10).
fn partitions(dir: &Path, name: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut parts: Vec<(u64, String)> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(name))
        .filter_map(|n| Some((read_u64(&dir.join(&n).join("partition"))?, n)))
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, n)| n).collect()
}

/// The devices a disk is built on (device-mapper, md): /sys/block/<d>/slaves.
fn slaves(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("slaves")) else { return Vec::new() };
    let mut deps: Vec<String> =
        entries.flatten().filter_map(|e| e.file_name().into_string().ok()).map(|n| dev_path(&n)).collect();
    deps.sort();
    deps
}

/// sysfs writes `/` in device names as `!` (cciss!c0d0 is /dev/cciss/c0d0).
fn dev_path(name: &str) -> String {
    format!("/dev/{}", name.replace('!', "/"))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
