//! Firmware, Secure Boot, TPM and display: what an image says its
//! instances need (set at import, changed by its project's writers), and
//! what an instance boots with (its image's merged with its own request at
//! launch, EC2's BootMode rule: the instance's firmware choice wins where
//! the image allows it). The agent gets the result in the desired state.

use crate::auth::Caller;
use crate::authz::Access;
use crate::error::{AppError, AppResult};
use crate::images::ImageRow;
use crate::Ctx;
use nubo_api::hardware::{Hardware, HardwareRequest};
use nubo_api::views::Image;
use std::sync::Arc;

/// The hardware an imported image asks for.
pub fn for_new_image(r: &HardwareRequest) -> AppResult<Hardware> {
    Hardware::default().with(r).map_err(AppError::BadRequest)
}

/// Changes what instances of image `key` need (instances already
/// launched keep theirs). Builtin images and other projects' are refused
/// by `load`, and a reader cannot change anything.
pub async fn set_image(ctx: &Arc<Ctx>, caller: &Caller, key: &str, r: &HardwareRequest) -> AppResult<Image> {
    let row = super::images::load(ctx, caller, key, Access::Write).await?;
    if r.is_empty() {
        return Err(AppError::BadRequest("nothing to change: give firmware, secure_boot, tpm or display".to_string()));
    }
    let hw = crate::hardware::parse(row.hardware.as_deref())
        .with(r)
        .map_err(|e| AppError::BadRequest(format!("image {}: {e}", row.name)))?;
    ctx.store.set_image_hardware(&row.id, &hw).await?;
    tracing::info!(image = %row.id, ?hw, "image hardware changed");
    let row = ctx.store.image(&row.id).await?.ok_or_else(|| AppError::internal("image vanished"))?;
    super::images::view_one(ctx, row).await
}

/// What an instance of `image` launched with request `r` boots with.
/// `image` None is the builtin `blank` image, which needs nothing: the
/// request alone decides (an OS installed from a CD may want UEFI).
pub fn for_launch(image: Option<&ImageRow>, r: &HardwareRequest) -> AppResult<Hardware> {
    let (name, needs) = match image {
        Some(i) => (i.name.as_str(), crate::hardware::parse(i.hardware.as_deref())),
        None => (nubo_api::agent::BLANK_IMAGE, Hardware::default()),
    };
    Hardware::merge(needs, r).map_err(|e| AppError::BadRequest(format!("image {name}: {e}")))
}
