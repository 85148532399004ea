//! Instances' CD-ROM drives in SQL (migration 0030): whether an instance
//! has one, the ISO image in it and its boot order, and the boot orders a
//! user may ask for. The drive is given at launch (`--cdrom`); the disc is
//! changed while the instance runs and the boot order while it is stopped
//! (`app::cdrom`); the host's agent makes its VM match.

use crate::store::{insert_event, now_ms, Store};
use nubo_api::agent::PowerState;

/// Boot orders with a CD-ROM drive, as the user writes them.
pub const CDROM_FIRST: &str = "cdrom,disk";
pub const DISK_FIRST: &str = "disk,cdrom";

/// The boot order `s` asks for (spaces allowed around the comma), in its
/// one spelling; None when it is neither.
pub fn parse_boot_order(s: &str) -> Option<&'static str> {
    let parts: Vec<String> = s.split(',').map(|p| p.trim().to_ascii_lowercase()).collect();
    match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["cdrom", "disk"] => Some(CDROM_FIRST),
        ["disk", "cdrom"] => Some(DISK_FIRST),
        _ => None,
    }
}

/// Why a change of the drive was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdromRefusal {
    /// The instance has no CD-ROM drive.
    NoDrive,
    /// It is not in a state that allows the change (terminated; or, for
    /// the boot order, not stopped).
    State,
}

impl Store {
    /// Records the disc wanted in an instance's drive (None: empty), with a
    /// life event; refused without a drive or once it is terminated.
    pub async fn set_cdrom_media(
        &self,
        id: &str,
        image_id: Option<&str>,
        event: &str,
    ) -> Result<Result<(), CdromRefusal>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE instances SET cdrom_image_id = $1, updated_at_ms = $2
             WHERE id = $3 AND cdrom_drive = 1 AND desired <> $4",
        )
        .bind(image_id)
        .bind(now)
        .bind(id)
        .bind(PowerState::Deleted)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(Err(self.refusal_of(id).await?));
        }
        insert_event(&mut tx, id, now, event, image_id.unwrap_or("")).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Records the boot order of a stopped instance with a drive.
    pub async fn set_boot_order(&self, id: &str, order: &str) -> Result<Result<(), CdromRefusal>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE instances SET boot_order = $1, updated_at_ms = $2
             WHERE id = $3 AND cdrom_drive = 1 AND desired = $4 AND state = 'stopped'",
        )
        .bind(order)
        .bind(now)
        .bind(id)
        .bind(PowerState::Stopped)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(Err(self.refusal_of(id).await?));
        }
        insert_event(&mut tx, id, now, "boot_order", order).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn refusal_of(&self, id: &str) -> Result<CdromRefusal, sqlx::Error> {
        let drive: Option<i64> = sqlx::query_scalar("SELECT cdrom_drive FROM instances WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(if drive == Some(1) { CdromRefusal::State } else { CdromRefusal::NoDrive })
    }
}

/// Gives a just-claimed instance its drive, in the claim's transaction.
pub(crate) async fn record_at_launch(
    tx: &mut crate::store::Tx<'_>,
    instance: &str,
    image_id: &str,
    boot_order: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE instances SET cdrom_drive = 1, cdrom_image_id = $1, boot_order = $2 WHERE id = $3")
        .bind(image_id)
        .bind(boot_order)
        .bind(instance)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_orders() {
        assert_eq!(parse_boot_order("cdrom,disk"), Some(CDROM_FIRST));
        assert_eq!(parse_boot_order(" Disk , cdrom "), Some(DISK_FIRST));
        for bad in ["", "cdrom", "disk", "cdrom,cdrom", "net,disk", "cdrom,disk,net"] {
            assert_eq!(parse_boot_order(bad), None, "{bad}");
        }
    }
}
