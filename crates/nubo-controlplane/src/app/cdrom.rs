//! CD-ROM drives and installing an OS from an ISO image: what a launch
//! with `--cdrom` (and the `blank` image, an empty root disk) may ask,
//! ejecting and inserting a disc (recorded as desired state, so the
//! host's agent changes the disc of a running VM and a restarted one
//! keeps it), and the boot order of a stopped instance. ISO images are
//! registry images of `disk_format` iso: a project's own or public ones.

use crate::auth::Caller;
use crate::authz::Access;
use crate::cdrom::{parse_boot_order, CdromRefusal, CDROM_FIRST};
use crate::error::{AppError, AppResult};
use crate::images::ImageRow;
use crate::store::InstanceRow;
use crate::Ctx;
use nubo_api::agent::BLANK_IMAGE;
use nubo_api::params::InstanceCreate;
use nubo_api::views::{Instance, InstanceCdrom};
use std::sync::Arc;

/// The `disk_format` of ISO images.
pub const ISO_FORMAT: &str = "iso";

fn is_iso(image: &ImageRow) -> bool {
    image.disk_format.as_deref() == Some(ISO_FORMAT)
}

/// An ISO image that instances of `project` may put in a drive: visible to
/// the project (its own, or public), active, and an ISO. Another
/// project's image is answered as one that does not exist.
async fn iso_image(ctx: &Ctx, project: &str, key: &str) -> AppResult<ImageRow> {
    let shown: String = key.chars().take(80).collect();
    let image = ctx.store.resolve_image(Some(project), key).await?.ok_or_else(|| {
        AppError::BadRequest(format!(
            "ISO image '{shown}' does not exist in this project: import one with `nubo image import FILE --format iso`, \
             see `nubo image list`"
        ))
    })?;
    if !is_iso(&image) {
        return Err(AppError::BadRequest(format!(
            "image {} is a {} disk image, not an ISO: only images imported with --format iso go in a CD-ROM drive \
             (`nubo image import FILE --format iso`)",
            image.name,
            image.disk_format.as_deref().unwrap_or("builtin")
        )));
    }
    if !image.state.is_bootable() {
        return Err(AppError::Conflict(format!(
            "ISO image {} is {}; it can go in a drive once it is active",
            image.name, image.state
        )));
    }
    Ok(image)
}

/// What a launch asks of the CD-ROM and the root image: the ISO's id and
/// the boot order when it has a drive. `root` is the root disk's image
/// (None: the builtin `blank`, an empty disk). Refuses an ISO as a root
/// disk, `blank` without a CD, a boot order without a drive, and a recipe
/// with a drive (an installer has no guest agent to run it).
pub async fn check_launch(
    ctx: &Ctx,
    project: &str,
    root: Option<&ImageRow>,
    p: &InstanceCreate,
) -> AppResult<Option<(String, &'static str)>> {
    if let Some(image) = root.filter(|i| is_iso(i)) {
        return Err(AppError::BadRequest(format!(
            "image {} is an ISO (CD) image and cannot be a root disk: install from it onto an empty disk with \
             `nubo instance run --image blank --cdrom {} --disk GIB`",
            image.name, image.name
        )));
    }
    let Some(cdrom) = &p.cdrom else {
        if root.is_none() {
            return Err(AppError::BadRequest(format!(
                "the {BLANK_IMAGE} image is an empty disk with nothing to boot: give an ISO to install from with \
                 --cdrom ISO"
            )));
        }
        if p.boot.is_some() {
            return Err(AppError::BadRequest(
                "a boot order needs a CD-ROM drive: give an ISO with --cdrom ISO, or leave --boot out".into(),
            ));
        }
        return Ok(None);
    };
    if p.recipe.is_some() {
        return Err(AppError::BadRequest(
            "a recipe runs through the guest agent of a booted image, which an installer CD has not: launch with \
             --cdrom and without --recipe"
                .into(),
        ));
    }
    let order = match p.boot.as_deref() {
        None => CDROM_FIRST,
        Some(b) => parse_boot_order(b).ok_or_else(|| bad_boot_order(b))?,
    };
    let image = iso_image(ctx, project, cdrom).await?;
    Ok(Some((image.id, order)))
}

fn bad_boot_order(given: &str) -> AppError {
    AppError::BadRequest(format!(
        "boot order '{}' is unknown: use 'cdrom,disk' (the CD first) or 'disk,cdrom'",
        given.chars().take(40).collect::<String>()
    ))
}

/// The drive of an instance's row, for its view.
pub fn view_of(row: &InstanceRow) -> Option<InstanceCdrom> {
    (row.cdrom_drive == 1).then(|| InstanceCdrom {
        image_id: row.cdrom_image_id.as_deref().and_then(|i| i.parse().ok()),
        boot_order: row.boot_order.clone().unwrap_or_else(|| CDROM_FIRST.to_string()),
    })
}

fn refused(row: &InstanceRow, why: CdromRefusal, what: &str) -> AppError {
    match why {
        CdromRefusal::NoDrive => AppError::Conflict(format!(
            "instance {} has no CD-ROM drive: a drive is given at launch (`nubo instance run --cdrom ISO ...`)",
            row.id
        )),
        CdromRefusal::State => AppError::Conflict(format!(
            "cannot {what} instance {} while it is {} (state {})",
            row.id,
            row.desired.shown(),
            row.state
        )),
    }
}

/// Records the change and wakes the instance's host, which makes its VM
/// match (at once while it runs, at its next start otherwise).
async fn changed(ctx: &Arc<Ctx>, caller: &Caller, row: &InstanceRow) -> AppResult<Instance> {
    match &row.host_id {
        Some(host) => ctx.bump_host(host),
        None => ctx.bump(),
    }
    let row = super::instances::load(ctx, caller, &row.id, Access::Read).await?;
    super::instances::view(ctx, row, true).await
}

/// Empties the instance's CD-ROM drive (the guest's lock on the tray
/// does not keep the disc in).
pub async fn eject(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Instance> {
    let row = super::instances::load(ctx, caller, id, Access::Write).await?;
    if let Err(why) = ctx.store.set_cdrom_media(&row.id, None, "cdrom_ejected").await? {
        return Err(refused(&row, why, "eject the CD of"));
    }
    tracing::info!(instance = %row.id, "CD-ROM eject requested");
    changed(ctx, caller, &row).await
}

/// Puts ISO image `image` (name or id) in the instance's CD-ROM drive,
/// in place of what is there.
pub async fn insert(ctx: &Arc<Ctx>, caller: &Caller, id: &str, image: &str) -> AppResult<Instance> {
    let row = super::instances::load(ctx, caller, id, Access::Write).await?;
    let project = row.project_id.clone().ok_or_else(|| AppError::Conflict("the instance has no project".into()))?;
    let iso = iso_image(ctx, &project, image).await?;
    if let Err(why) = ctx.store.set_cdrom_media(&row.id, Some(&iso.id), "cdrom_inserted").await? {
        return Err(refused(&row, why, "insert a CD into"));
    }
    tracing::info!(instance = %row.id, image = %iso.id, "CD-ROM insert requested");
    changed(ctx, caller, &row).await
}

/// Sets what a stopped instance with a drive boots first when it starts.
pub async fn set_boot_order(ctx: &Arc<Ctx>, caller: &Caller, id: &str, boot: &str) -> AppResult<Instance> {
    let row = super::instances::load(ctx, caller, id, Access::Write).await?;
    let order = parse_boot_order(boot).ok_or_else(|| bad_boot_order(boot))?;
    match ctx.store.set_boot_order(&row.id, order).await? {
        Ok(()) => {}
        Err(CdromRefusal::NoDrive) => return Err(refused(&row, CdromRefusal::NoDrive, "")),
        Err(CdromRefusal::State) => {
            return Err(AppError::Conflict(format!(
                "instance {} is {} (state {}): the boot order is set while it is stopped; stop it first \
                 (`nubo instance stop {}`)",
                row.id,
                row.desired.shown(),
                row.state,
                row.id
            )))
        }
    }
    tracing::info!(instance = %row.id, order, "boot order set");
    changed(ctx, caller, &row).await
}
