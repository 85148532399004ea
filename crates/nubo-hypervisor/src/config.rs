//! What a VM should look like: [`VmConfig`] and its parts, plus validation of
//! everything that ends up on a QEMU command line.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Accel, HypervisorError};

/// Free `pcie-root-port`s created at boot for later disk hot-plug.
pub const DEFAULT_HOTPLUG_SLOTS: u32 = 4;

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
        if self.memory_mib < MIN_MEMORY_MIB {
            return bad(format!("memory_mib is {}; use at least {MIN_MEMORY_MIB}", self.memory_mib));
        }
        if self.disk_gib == 0 {
            return bad("disk_gib is 0; use at least 1".to_string());
        }
        if self.hotplug_slots > MAX_HOTPLUG_SLOTS {
            return bad(format!("hotplug_slots is {}; use at most {MAX_HOTPLUG_SLOTS}", self.hotplug_slots));
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
