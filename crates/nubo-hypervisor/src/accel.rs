//! Accelerator choice: which QEMU accelerator (KVM or TCG) a VM runs under, and
//! how to tell whether KVM can actually run ordinary guests on this host.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::HypervisorError;

/// What the operator asked for (`--accel auto|kvm|tcg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelPreference {
    /// KVM when it is usable, TCG otherwise.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// Always software emulation.
    Tcg,
}

/// The accelerator a VM is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl fmt::Display for AccelPreference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelPreference::Auto => "auto",
            AccelPreference::Kvm => "kvm",
            AccelPreference::Tcg => "tcg",
        })
    }
}

/// Error from parsing an [`AccelPreference`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator {0:?}; use one of: auto, kvm, tcg")]
pub struct ParseAccelError(pub String);

impl FromStr for AccelPreference {
    type Err = ParseAccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelPreference::Auto),
            "kvm" => Ok(AccelPreference::Kvm),
            "tcg" => Ok(AccelPreference::Tcg),
            _ => Err(ParseAccelError(s.to_string())),
        }
    }
}

const KVM_DEVICE: &str = "/dev/kvm";
/// Present on hosts whose KVM is the PVM flavour, under which ordinary guests hang.
const PVM_MARKER: &str = "/sys/module/kvm_pvm";
/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: u64 = 0xAE00;
const KVM_API_VERSION: i32 = 12;

/// Choose the accelerator for `pref` on this host.
///
/// `Auto` picks KVM only where `/dev/kvm` opens read-write, answers the KVM
/// API version ioctl and the host is not a PVM host (`/sys/module/kvm_pvm`);
/// otherwise TCG. An explicit `Kvm` that is unusable is an error saying why.
pub fn detect_accel(pref: AccelPreference) -> Result<Accel, HypervisorError> {
    detect_accel_at(pref, Path::new(KVM_DEVICE), Path::new(PVM_MARKER))
}

pub(crate) fn detect_accel_at(
    pref: AccelPreference,
    kvm_device: &Path,
    pvm_marker: &Path,
) -> Result<Accel, HypervisorError> {
    match pref {
        AccelPreference::Tcg => Ok(Accel::Tcg),
        AccelPreference::Kvm => match kvm_unusable_reason(kvm_device, pvm_marker) {
            None => Ok(Accel::Kvm),
            Some(reason) => Err(HypervisorError::KvmUnavailable { reason }),
        },
        AccelPreference::Auto => match kvm_unusable_reason(kvm_device, pvm_marker) {
            None => Ok(Accel::Kvm),
            Some(reason) => {
                tracing::info!(%reason, "KVM not usable, falling back to TCG");
                Ok(Accel::Tcg)
            }
        },
    }
}

/// `None` when KVM looks usable, otherwise why not.
fn kvm_unusable_reason(kvm_device: &Path, pvm_marker: &Path) -> Option<String> {
    let file = match OpenOptions::new().read(true).write(true).open(kvm_device) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "{} does not exist (kvm module not loaded, or virtualization disabled in firmware / not offered to this VM)",
                kvm_device.display()
            ))
        }
        Err(e) => {
            return Some(format!(
                "cannot open {} read-write: {e} (add the agent's user to the kvm group)",
                kvm_device.display()
            ))
        }
    };
    if pvm_marker.exists() {
        return Some(format!("this is a PVM host ({} exists); its KVM hangs ordinary guests", pvm_marker.display()));
    }
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int;
    // the fd is valid for the duration of the call.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version != KVM_API_VERSION {
        return Some(format!(
            "{} is not a KVM device (API version ioctl returned {version}, expected {KVM_API_VERSION})",
            kvm_device.display()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_preferences() {
        assert_eq!("auto".parse::<AccelPreference>(), Ok(AccelPreference::Auto));
        assert_eq!("KVM".parse::<AccelPreference>(), Ok(AccelPreference::Kvm));
        assert_eq!("tcg".parse::<AccelPreference>(), Ok(AccelPreference::Tcg));
        let err = "xen".parse::<AccelPreference>().unwrap_err();
        assert!(err.to_string().contains("auto, kvm, tcg"));
        assert_eq!(Accel::Kvm.to_string(), "kvm");
        assert_eq!(Accel::Tcg.to_string(), "tcg");
    }

    #[test]
    fn missing_device_means_tcg_or_error() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        let pvm = dir.path().join("kvm_pvm");
        assert_eq!(detect_accel_at(AccelPreference::Auto, &dev, &pvm).unwrap(), Accel::Tcg);
        let err = detect_accel_at(AccelPreference::Kvm, &dev, &pvm).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("does not exist") && msg.contains("--accel tcg"), "{msg}");
        assert_eq!(detect_accel_at(AccelPreference::Tcg, &dev, &pvm).unwrap(), Accel::Tcg);
    }

    #[test]
    fn pvm_host_means_tcg() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file stands in for an openable /dev/kvm.
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let pvm = dir.path().join("kvm_pvm");
        std::fs::create_dir(&pvm).unwrap();
        assert_eq!(detect_accel_at(AccelPreference::Auto, &dev, &pvm).unwrap(), Accel::Tcg);
        let msg = detect_accel_at(AccelPreference::Kvm, &dev, &pvm).unwrap_err().to_string();
        assert!(msg.contains("PVM") && msg.contains("--accel tcg"), "{msg}");
        // Not PVM, but not a KVM device either: the ioctl check rejects it.
        std::fs::remove_dir(&pvm).unwrap();
        let msg = detect_accel_at(AccelPreference::Kvm, &dev, &pvm).unwrap_err().to_string();
        assert!(msg.contains("API version"), "{msg}");
    }
}
