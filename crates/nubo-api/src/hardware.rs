//! Virtual hardware an image needs and an instance may ask for: the
//! firmware (SeaBIOS or UEFI, with or without Secure Boot), a TPM 2.0 and a
//! display (a VGA card whose screen is served over VNC on a unix socket of
//! its host). Images say what they need; an instance's own choice wins
//! where its image allows it (as EC2's `BootMode` does), see
//! [`Hardware::merge`].

use serde::{Deserialize, Serialize};

/// How the guest's firmware starts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (legacy BIOS), QEMU's default.
    #[default]
    Bios,
    /// OVMF (EDK II UEFI), from Debian's `ovmf` package.
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bios" | "legacy-bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            other => Err(format!(
                "firmware '{}' is unknown: use 'bios' or 'uefi'",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// The virtual hardware of an image or an instance. Every field defaults
/// to what Nubo did before it had these options: BIOS, no TPM, no display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Hardware {
    pub firmware: Firmware,
    /// UEFI Secure Boot with Microsoft's keys enrolled (UEFI only).
    pub secure_boot: bool,
    /// A TPM 2.0 (swtpm), its state kept with the instance.
    pub tpm: bool,
    /// A VGA card, its screen served by VNC on a unix socket of the host
    /// (reached only through the control plane's console relay).
    pub display: bool,
}

/// A change to (or a request for) hardware: each field given replaces the
/// one it names, the others stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HardwareRequest {
    pub firmware: Option<Firmware>,
    pub secure_boot: Option<bool>,
    pub tpm: Option<bool>,
    pub display: Option<bool>,
}

impl HardwareRequest {
    pub fn is_empty(&self) -> bool {
        *self == HardwareRequest::default()
    }
}

/// One line for people: `uefi, secure boot, tpm 2.0, display`.
impl std::fmt::Display for Hardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.firmware.as_str())?;
        for (on, what) in [(self.secure_boot, "secure boot"), (self.tpm, "tpm 2.0"), (self.display, "display")] {
            if on {
                write!(f, ", {what}")?;
            }
        }
        Ok(())
    }
}

impl Hardware {
    /// Checks the combination: Secure Boot is a UEFI feature.
    pub fn validate(&self) -> Result<(), String> {
        if self.secure_boot && self.firmware != Firmware::Uefi {
            return Err("secure_boot needs UEFI firmware: ask for firmware 'uefi' too (--firmware uefi)".into());
        }
        Ok(())
    }

    /// `self` with the fields `r` gives replaced, checked.
    pub fn with(mut self, r: &HardwareRequest) -> Result<Hardware, String> {
        if let Some(f) = r.firmware {
            self.firmware = f;
            // Going back to BIOS drops Secure Boot unless asked again.
            if f == Firmware::Bios && r.secure_boot.is_none() {
                self.secure_boot = false;
            }
        }
        if let Some(s) = r.secure_boot {
            self.secure_boot = s;
        }
        if let Some(t) = r.tpm {
            self.tpm = t;
        }
        if let Some(d) = r.display {
            self.display = d;
        }
        self.validate()?;
        Ok(self)
    }

    /// An instance's hardware from its image's and its own request, as
    /// EC2's BootMode works: the instance's firmware choice wins. An image
    /// that needs UEFI (or Secure Boot) cannot be booted with BIOS, since
    /// its disk has no BIOS boot loader; a BIOS image may be booted with
    /// UEFI when the instance asks (a kernel-booted image boots either
    /// way). A TPM or a display the image asks for is always there; the
    /// instance may add them.
    pub fn merge(image: Hardware, instance: &HardwareRequest) -> Result<Hardware, String> {
        if instance.firmware == Some(Firmware::Bios) && image.firmware == Firmware::Uefi {
            return Err(
                "the image boots with UEFI only (it says firmware 'uefi'); launch it without --firmware bios".into()
            );
        }
        if instance.secure_boot == Some(false) && image.secure_boot {
            return Err("the image needs Secure Boot; launch it without turning secure_boot off".into());
        }
        let hw = Hardware {
            firmware: instance.firmware.unwrap_or(image.firmware),
            secure_boot: instance.secure_boot.unwrap_or(false) || image.secure_boot,
            tpm: instance.tpm.unwrap_or(false) || image.tpm,
            display: instance.display.unwrap_or(false) || image.display,
        };
        hw.validate()?;
        Ok(hw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_check() {
        let hw: Hardware = serde_json::from_str("{}").unwrap();
        assert_eq!(hw, Hardware::default());
        assert_eq!(hw.firmware, Firmware::Bios);
        let hw: Hardware = serde_json::from_str(r#"{"firmware":"uefi","tpm":true}"#).unwrap();
        assert!(hw.tpm && hw.firmware == Firmware::Uefi && !hw.display);
        assert!(serde_json::from_str::<Hardware>(r#"{"firmwre":"uefi"}"#).is_err());
        assert!("efi".parse::<Firmware>().unwrap_err().contains("'bios' or 'uefi'"));
        let sb = Hardware { secure_boot: true, ..Hardware::default() };
        assert!(sb.validate().unwrap_err().contains("UEFI"));
        let all = Hardware { firmware: Firmware::Uefi, secure_boot: true, tpm: true, display: false };
        assert_eq!(all.to_string(), "uefi, secure boot, tpm 2.0");
        assert_eq!(Hardware::default().to_string(), "bios");
    }

    #[test]
    fn requests_change_only_what_they_name() {
        let uefi = Hardware { firmware: Firmware::Uefi, secure_boot: true, ..Hardware::default() };
        let hw = uefi.with(&HardwareRequest { tpm: Some(true), ..Default::default() }).unwrap();
        assert_eq!(hw, Hardware { tpm: true, ..uefi });
        let bios = hw.with(&HardwareRequest { firmware: Some(Firmware::Bios), ..Default::default() }).unwrap();
        assert!(!bios.secure_boot && bios.tpm && bios.firmware == Firmware::Bios);
        let e = Hardware::default().with(&HardwareRequest { secure_boot: Some(true), ..Default::default() });
        assert!(e.unwrap_err().contains("UEFI"));
    }

    #[test]
    fn merge_lets_the_instance_choose_where_the_image_allows() {
        let bios = Hardware::default();
        let uefi = Hardware { firmware: Firmware::Uefi, ..bios };
        let ask_uefi = HardwareRequest { firmware: Some(Firmware::Uefi), ..Default::default() };
        let ask_bios = HardwareRequest { firmware: Some(Firmware::Bios), ..Default::default() };
        assert_eq!(Hardware::merge(bios, &ask_uefi).unwrap().firmware, Firmware::Uefi);
        assert_eq!(Hardware::merge(uefi, &HardwareRequest::default()).unwrap(), uefi);
        assert!(Hardware::merge(uefi, &ask_bios).unwrap_err().contains("UEFI only"));
        let with_tpm = Hardware { tpm: true, display: true, ..bios };
        let hw = Hardware::merge(with_tpm, &HardwareRequest { tpm: Some(false), ..Default::default() }).unwrap();
        assert!(hw.tpm && hw.display);
        let sb = HardwareRequest { secure_boot: Some(true), ..Default::default() };
        assert!(Hardware::merge(bios, &sb).unwrap_err().contains("UEFI"));
        let sb_uefi = HardwareRequest { secure_boot: Some(true), ..ask_uefi };
        assert!(Hardware::merge(bios, &sb_uefi).unwrap().secure_boot);
    }
}
