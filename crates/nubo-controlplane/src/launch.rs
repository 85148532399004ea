//! What a launch records beside the instance row: the EC2 API's fields
//! (instance type, reservation, launch index, client token), its group
//! (those go into the row's INSERT), the instance's tags and its
//! security-group memberships. They are written in
//! the transaction that claims the instance's host, so an instance never
//! exists without them (later policies select instances by tag, and
//! firewall rules by group).

/// The extra fields of one launch; `Default` is a plain REST launch.
#[derive(Debug, Clone, Default)]
pub struct LaunchRecord<'a> {
    pub instance_type: Option<&'a str>,
    pub reservation_id: Option<&'a str>,
    pub launch_index: u32,
    pub client_token: Option<&'a str>,
    /// Security group ids of the instance's project (already checked).
    pub security_groups: &'a [String],
    /// Tags, already validated.
    pub tags: &'a [(String, String)],
    /// The instance group it is a member of (recorded with the claim, so a
    /// group never loses count of a member it launched).
    pub group_id: Option<&'a str>,
    /// Network ids of the instance's project (already checked), one NIC each.
    pub networks: &'a [String],
    /// The address asked for on the first network (EC2's
    /// PrivateIpAddress, already checked to be in its range); none: the
    /// lowest free one.
    pub private_address: Option<&'a str>,
    /// A CD-ROM drive: the ISO image's id in it and the boot order
    /// (already checked; see `cdrom`).
    pub cdrom: Option<(&'a str, &'a str)>,
    /// The instance's hardware (the `hardware` column's JSON; none: defaults).
    pub hardware: Option<&'a str>,
    /// The root disk comes from a backup (see `restores`), not the image.
    pub restore: Option<&'a crate::restores::LaunchRestore>,
    /// The backup this instance verifies (see `app::backup_verification`):
    /// not counted against the project's quota.
    pub verification_of: Option<&'a str>,
}

pub(crate) async fn insert_launch_record(
    tx: &mut crate::store::Tx<'_>,
    instance: &str,
    project: &str,
    r: &LaunchRecord<'_>,
) -> Result<(), sqlx::Error> {
    // The instance row's own columns of the record (type, reservation,
    // launch index, client token, group, hardware) are written by its
    // INSERT (`Store::claim_and_insert`).
    for g in r.security_groups {
        sqlx::query(
            "INSERT INTO instance_security_groups (instance_id, group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(instance)
        .bind(g)
        .execute(&mut **tx)
        .await?;
    }
    for (key, value) in r.tags {
        crate::tags::upsert(tx, instance, "instance", project, key, value).await?;
    }
    if let Some((image_id, boot_order)) = r.cdrom {
        crate::cdrom::record_at_launch(tx, instance, image_id, boot_order).await?;
    }
    if let Some(restore) = r.restore {
        crate::restores::record_at_launch(tx, instance, restore).await?;
    }
    Ok(())
}
