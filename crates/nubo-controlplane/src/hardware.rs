//! Virtual hardware in SQL: the `hardware` column of images and instances
//! (migration 0031), the JSON of [`Hardware`]; NULL is the defaults (BIOS,
//! no Secure Boot, TPM or display), which every older row has.

use crate::store::{now_ms, Store};
use nubo_api::hardware::Hardware;

/// A row's hardware; an unreadable value (never written by Nubo) is
/// reported and taken as the defaults, so the row stays usable.
pub fn parse(column: Option<&str>) -> Hardware {
    match column {
        None => Hardware::default(),
        Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unreadable hardware column; using the defaults");
            Hardware::default()
        }),
    }
}

/// What the column holds for `hw`: NULL for the defaults.
pub fn column(hw: &Hardware) -> Option<String> {
    (*hw != Hardware::default()).then(|| serde_json::to_string(hw).unwrap_or_default()).filter(|s| !s.is_empty())
}

/// EC2's name for the firmware (`bootMode`, `currentInstanceBootMode`).
pub fn ec2_boot_mode(hw: &Hardware) -> &'static str {
    match hw.firmware {
        nubo_api::hardware::Firmware::Bios => "legacy-bios",
        nubo_api::hardware::Firmware::Uefi => "uefi",
    }
}

impl Store {
    /// Records what instances of image `id` need.
    pub async fn set_image_hardware(&self, id: &str, hw: &Hardware) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE images SET hardware = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(column(hw))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_api::hardware::Firmware;

    #[test]
    fn defaults_are_null_and_round_trip() {
        assert_eq!(column(&Hardware::default()), None);
        assert_eq!(parse(None), Hardware::default());
        let hw = Hardware { firmware: Firmware::Uefi, tpm: true, ..Hardware::default() };
        assert_eq!(parse(column(&hw).as_deref()), hw);
        assert_eq!(parse(Some("not json")), Hardware::default());
    }
}
