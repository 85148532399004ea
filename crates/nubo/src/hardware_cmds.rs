//! The hardware flags of `nubo image import`, `nubo image hardware` and
//! `nubo instance run` (firmware, Secure Boot, TPM, display).

use nubo_api::hardware::{Firmware, HardwareRequest};

/// What an image needs or an instance asks for beyond its image.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HardwareArgs {
    /// Firmware: bios (SeaBIOS) or uefi (OVMF).
    #[arg(long, value_parser = parse_firmware)]
    pub firmware: Option<Firmware>,
    /// UEFI Secure Boot with Microsoft's keys enrolled (needs --firmware uefi).
    #[arg(long)]
    pub secure_boot: bool,
    /// A TPM 2.0 (swtpm), its state kept with the instance.
    #[arg(long)]
    pub tpm: bool,
    /// A VGA display, for the graphical console.
    #[arg(long)]
    pub display: bool,
}

impl HardwareArgs {
    /// The request these flags make: only what was given.
    pub fn request(&self) -> HardwareRequest {
        HardwareRequest {
            firmware: self.firmware,
            secure_boot: self.secure_boot.then_some(true),
            tpm: self.tpm.then_some(true),
            display: self.display.then_some(true),
        }
    }
}

/// `nubo image hardware`: the flags above, and ones that turn things off.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HardwareChangeArgs {
    #[command(flatten)]
    pub on: HardwareArgs,
    /// Turn Secure Boot off.
    #[arg(long, conflicts_with = "secure_boot")]
    pub no_secure_boot: bool,
    /// Remove the TPM.
    #[arg(long, conflicts_with = "tpm")]
    pub no_tpm: bool,
    /// Remove the display.
    #[arg(long, conflicts_with = "display")]
    pub no_display: bool,
}

impl HardwareChangeArgs {
    pub fn request(&self) -> HardwareRequest {
        let mut r = self.on.request();
        if self.no_secure_boot {
            r.secure_boot = Some(false);
        }
        if self.no_tpm {
            r.tpm = Some(false);
        }
        if self.no_display {
            r.display = Some(false);
        }
        r
    }
}

fn parse_firmware(s: &str) -> Result<Firmware, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_ask_only_for_what_is_given() {
        assert!(HardwareArgs::default().request().is_empty());
        let a = HardwareArgs { firmware: Some(Firmware::Uefi), tpm: true, ..Default::default() };
        let r = a.request();
        assert_eq!((r.firmware, r.tpm, r.secure_boot, r.display), (Some(Firmware::Uefi), Some(true), None, None));
        let off = HardwareChangeArgs { no_tpm: true, ..Default::default() }.request();
        assert_eq!(off.tpm, Some(false));
    }
}
