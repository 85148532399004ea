//! Images: the registry of bootable disk images. Builtin images are
//! listed beside the project's own and public ones. An import is two
//! steps, as in OpenStack Glance: register the image (name, format,
//! size), then upload its file, which is checked before the image becomes
//! `active`. An instance snapshot is an image its host takes and uploads.
//! This module owns what may be asked of images (names, quotas, who may
//! change what, the checks of an uploaded file) and their views; the bytes
//! arrive as a plain reader, whatever carried them.

use crate::auth::{Caller, HostCaller};
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::images::{ImageInUse, ImageQuotaUsage, ImageRow, NewImage};
use crate::registry::RegistryError;
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::ids::ImageId;
use nubo_api::params::{ImageCreate, InstanceSnapshot};
use nubo_api::views::{Image, ImageState, InstanceState};
use nubo_image::inspect::DiskFormat;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::AsyncRead;

const GIB: u64 = 1 << 30;

/// Image names: 1-128 of letters, digits, `-`, `_`, `.`, not starting with
/// `.` or `-` (so never `..`, `/` or a hidden name).
pub fn check_image_name(n: &str) -> AppResult<()> {
    crate::validate::name_of("image name", n, 128)
}

/// The view of an image row; `projects` maps project ids to names.
pub fn view(projects: &HashMap<String, String>, r: ImageRow) -> AppResult<Image> {
    Ok(Image {
        id: r.id.parse().map_err(AppError::internal)?,
        project: r.project_id.as_ref().map(|p| projects.get(p).cloned().unwrap_or_else(|| p.clone())),
        name: r.name,
        source: r.source,
        state: r.state,
        visibility: r.visibility,
        description: r.description,
        disk_format: r.disk_format,
        sha256: r.sha256,
        size_bytes: r.size_bytes.map(|b| b as u64),
        virtual_size_bytes: r.virtual_size_bytes.map(|b| b as u64),
        min_disk_gib: r.min_disk_gib as u64,
        min_memory_mib: r.min_memory_mib as u64,
        kernel_image: r.kernel_image,
        parent: r.parent_id.and_then(|p| p.parse().ok()),
        source_instance: r.source_instance.and_then(|i| i.parse().ok()),
        error: r.error,
        created_at_ms: r.created_at_ms,
        // Filled by `app::tags::fill` where a view is answered.
        tags: Default::default(),
        hardware: crate::hardware::parse(r.hardware.as_deref()),
        // Filled by `with_jobs` where a view is answered.
        job: None,
    })
}

async fn project_names(ctx: &Ctx) -> AppResult<HashMap<String, String>> {
    Ok(ctx.store.projects().await?.into_iter().map(|p| (p.id, p.name)).collect())
}

/// The view of one image row, with its job's progress (if it has a job).
pub async fn view_one(ctx: &Ctx, r: ImageRow) -> AppResult<Image> {
    let mut image = view(&project_names(ctx).await?, r)?;
    image.job = ctx.store.image_job(image.id.as_str()).await?.map(|j| j.view());
    Ok(image)
}

/// Views with their jobs' progress filled in.
async fn with_jobs(ctx: &Ctx, mut images: Vec<Image>) -> AppResult<Vec<Image>> {
    let jobs: HashMap<String, crate::image_jobs::ImageJobRow> =
        ctx.store.image_jobs().await?.into_iter().map(|j| (j.image_id.clone(), j)).collect();
    if !jobs.is_empty() {
        for image in &mut images {
            image.job = jobs.get(image.id.as_str()).map(|j| j.view());
        }
    }
    Ok(images)
}

/// An image (by id or name) the caller may see; `access` Write also needs
/// it to be the caller's project's (builtin images are nobody's to change).
pub async fn load(ctx: &Ctx, caller: &Caller, key: &str, access: Access) -> AppResult<ImageRow> {
    let not_found = || AppError::NotFound { kind: "image", id: key.chars().take(80).collect() };
    let row = ctx.store.resolve_image(authz::shared_list_scope(caller).as_deref(), key).await?.ok_or_else(not_found)?;
    if access == Access::Write {
        if row.source == "builtin" {
            return Err(AppError::Forbidden(format!(
                "image {} is builtin: it ships with Nubo and cannot be changed or deleted",
                row.name
            )));
        }
        authz::check(caller, Access::Write, row.project_id.as_deref(), "image", &row.id)?;
    }
    Ok(row)
}

/// The images the caller can boot: builtin, the project's own, and public ones.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Image>> {
    let names = project_names(ctx).await?;
    let rows = ctx.store.images_visible(authz::shared_list_scope(caller).as_deref()).await?;
    with_jobs(ctx, rows.into_iter().map(|r| view(&names, r)).collect::<AppResult<_>>()?).await
}

/// An image the caller may see, by id (`ami-...`) or name.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, key: &str) -> AppResult<Image> {
    let row = load(ctx, caller, key, Access::Read).await?;
    view_one(ctx, row).await
}

/// What an image's registration asks for, whichever way its file comes
/// (an upload, a URL).
pub(crate) struct Registration<'a> {
    pub name: &'a str,
    pub disk_format: &'a str,
    pub sha256: Option<&'a str>,
    pub min_disk_gib: Option<u64>,
    pub min_memory_mib: Option<u64>,
    pub visibility: Option<&'a str>,
    pub kernel_image: Option<&'a str>,
    pub description: Option<&'a str>,
}

/// A registration as checked: the project it goes to and its settings.
pub(crate) struct Checked {
    pub project: String,
    pub format: DiskFormat,
    pub visibility: &'static str,
    pub min_disk_gib: u64,
    pub min_memory_mib: u64,
    pub description: String,
}

/// Checks what every registration asks (who may, name, format, checksum,
/// visibility, kernel, minimums, description).
pub(crate) fn check_registration(caller: &Caller, p: &Registration<'_>) -> AppResult<Checked> {
    let project = authz::creation_project(caller)?;
    check_image_name(p.name)?;
    let format: DiskFormat = p.disk_format.parse().map_err(|e| AppError::BadRequest(format!("disk_format: {e}")))?;
    if let Some(sha) = p.sha256 {
        if !crate::registry::is_sha256(sha) {
            return Err(AppError::BadRequest("sha256 must be 64 lowercase hex digits (`sha256sum FILE`)".into()));
        }
    }
    let visibility = match p.visibility {
        None | Some("project") => "project",
        Some("public") => {
            authz::require_admin(caller).map_err(|_| {
                AppError::Forbidden("only operators can publish an image to every project (visibility public)".into())
            })?;
            "public"
        }
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "visibility '{}' is unknown: use 'project' or 'public'",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    if let Some(k) = p.kernel_image {
        if !crate::BUILTIN_IMAGES.iter().any(|(n, _)| *n == k) {
            let known: Vec<&str> = crate::BUILTIN_IMAGES.iter().map(|(n, _)| *n).collect();
            return Err(AppError::BadRequest(format!(
                "kernel_image '{}' is not a builtin image; use one of: {}",
                k.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
    }
    let min_disk_gib = p.min_disk_gib.unwrap_or(0);
    if min_disk_gib > crate::validate::MAX_DISK_GIB {
        return Err(AppError::BadRequest(format!("min_disk_gib is at most {}", crate::validate::MAX_DISK_GIB)));
    }
    let min_memory_mib = p.min_memory_mib.unwrap_or(0);
    if min_memory_mib > crate::validate::MAX_MEMORY_MIB {
        return Err(AppError::BadRequest(format!("min_memory_mib is at most {}", crate::validate::MAX_MEMORY_MIB)));
    }
    let description = p.description.unwrap_or_default().to_string();
    if description.len() > 1024 {
        return Err(AppError::BadRequest("description is at most 1024 bytes".into()));
    }
    Ok(Checked { project, format, visibility, min_disk_gib, min_memory_mib, description })
}

/// The refusal of a second image of one name in a project.
pub(crate) fn name_taken(name: &str) -> AppError {
    AppError::Conflict(format!(
        "this project already has an image named '{name}': pick another name, or delete that one first"
    ))
}

/// Registers an image (`queued`), counted against the project's image
/// quota at its declared size; its file is uploaded next (`upload`).
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &ImageCreate) -> AppResult<Image> {
    let Checked { project, format, visibility, min_disk_gib, min_memory_mib, description } = check_registration(
        caller,
        &Registration {
            name: &p.name,
            disk_format: &p.disk_format,
            sha256: p.sha256.as_deref(),
            min_disk_gib: p.min_disk_gib,
            min_memory_mib: p.min_memory_mib,
            visibility: p.visibility.as_deref(),
            kernel_image: p.kernel_image.as_deref(),
            description: p.description.as_deref(),
        },
    )?;
    if p.size_bytes == 0 || p.size_bytes > ctx.config.max_image_bytes {
        return Err(AppError::BadRequest(format!(
            "size_bytes must be between 1 and {} (the largest image this cloud accepts), got {}",
            ctx.config.max_image_bytes, p.size_bytes
        )));
    }
    let hardware = super::hardware::for_new_image(&p.hardware)?;
    let id = ImageId::generate();
    let inserted = ctx
        .store
        .insert_image_within_quota(
            &NewImage {
                id: &id,
                name: &p.name,
                project_id: &project,
                visibility,
                source: "import",
                state: ImageState::Queued,
                description: &description,
                disk_format: Some(format.as_str()),
                size_bytes: Some(p.size_bytes),
                min_disk_gib,
                min_memory_mib,
                kernel_image: p.kernel_image.as_deref(),
                parent_id: None,
                source_instance: None,
            },
            ctx.config.image_quota_bytes,
        )
        .await?
        .map_err(|usage| over_quota(caller, &p.name, usage))?;
    if !inserted {
        return Err(name_taken(&p.name));
    }
    // Set before the file arrives, so the image is never bootable without it.
    if hardware != nubo_api::hardware::Hardware::default() {
        ctx.store.set_image_hardware(id.as_str(), &hardware).await?;
    }
    // The expected checksum rides along until the upload checks it.
    if let Some(sha) = &p.sha256 {
        ctx.store.set_expected_sha256(id.as_str(), sha).await?;
    }
    let row = ctx.store.image(id.as_str()).await?.ok_or_else(|| AppError::internal("image vanished"))?;
    tracing::info!(image = %id, name = %p.name, %format, size = p.size_bytes, "image registered");
    view_one(ctx, row).await
}

/// Bytes as people read them.
pub(crate) fn human(bytes: u64) -> String {
    match bytes {
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

/// The refusal of an image that does not fit the project's image quota.
pub(crate) fn over_quota(caller: &Caller, name: &str, u: ImageQuotaUsage) -> AppError {
    let project = caller.project_id.clone().unwrap_or_default();
    tracing::info!(%project, image = %name, used = u.used, needed = u.needed, quota = u.quota, "image refused: over the image quota");
    AppError::QuotaExceeded(format!(
        "image '{name}' does not fit the project's image quota: {} of {} used, and it needs {} more; \
         delete images the project no longer needs (`nubo image delete NAME`) or ask an operator to raise the \
         quota (nubo server --image-quota SIZE)",
        human(u.used),
        human(u.quota),
        human(u.needed)
    ))
}

/// A refused or failed upload as the user sees it.
fn upload_error(e: RegistryError) -> AppError {
    match e {
        RegistryError::Io { .. } => AppError::internal(e),
        RegistryError::TooLarge { .. } => AppError::PayloadTooLarge(e.to_string()),
        other => AppError::BadRequest(format!("the image was refused and not stored: {other}")),
    }
}

/// Marks an image whose file the registry stored `active`, with the file's
/// checksum and sizes (its minimum disk at least its virtual size).
pub(crate) async fn activate(ctx: &Ctx, row: &ImageRow, stored: &crate::registry::Stored) -> AppResult<()> {
    let min_disk = (row.min_disk_gib as u64).max(stored.virtual_size.div_ceil(GIB));
    ctx.store.activate_image(&row.id, &stored.sha256, stored.size, stored.virtual_size, min_disk).await?;
    Ok(())
}

/// Receives a queued image's file, `body`, whose size the sender
/// announced as `announced` (when it did). It is checked (format, size,
/// backing or data files, encryption, corruption) before the image becomes
/// `active`; a refused file leaves nothing behind, not even the image.
pub async fn upload(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    key: &str,
    announced: Option<u64>,
    body: impl AsyncRead + Unpin,
) -> AppResult<Image> {
    let row = load(ctx, caller, key, Access::Write).await?;
    if !ctx.store.set_image_state(&row.id, &[ImageState::Queued], ImageState::Saving).await? {
        return Err(AppError::Conflict(format!(
            "image {} is {}, not waiting for its file: register a new image to upload another file",
            row.id, row.state
        )));
    }
    // A body announced larger than the registered size is refused before a
    // byte is read; one that only turns out larger is cut off at the
    // registered size while it streams (`store_upload`), and that size is
    // what the project's image quota already counts.
    let declared = row.size_bytes.unwrap_or(0).max(0) as u64;
    if let Some(n) = announced.filter(|n| *n > declared) {
        tracing::info!(image = %row.id, declared, announced = n, "image upload refused: larger than registered");
        // Nothing is kept of a refused image: its row goes (no file was written).
        ctx.store.delete_image(&row.id).await?;
        return Err(AppError::PayloadTooLarge(format!(
            "the upload of image {} is larger than the declared size: it was registered with size_bytes \
             {declared} and this upload is {n} bytes; nothing was kept: register the image again with its real \
             size (`ls -l FILE`)",
            row.id
        )));
    }
    let format: DiskFormat =
        row.disk_format.as_deref().unwrap_or_default().parse().map_err(|e| AppError::internal(format!("{e}")))?;
    let size = row.size_bytes.unwrap_or(0) as u64;
    let expected = ctx.store.expected_sha256(&row.id).await?;
    match ctx.registry.store_upload(body, size, expected.as_deref(), format).await {
        Ok(stored) => {
            activate(ctx, &row, &stored).await?;
            tracing::info!(image = %row.id, sha256 = %stored.sha256, virtual_size = stored.virtual_size, "image stored");
            let row = ctx.store.image(&row.id).await?.ok_or_else(|| AppError::internal("image vanished"))?;
            view_one(ctx, row).await
        }
        Err(e) => {
            tracing::info!(image = %row.id, error = %e, "image upload refused");
            // Nothing is kept of a refused image: not its file, not its row.
            ctx.store.delete_image(&row.id).await?;
            Err(upload_error(e))
        }
    }
}

/// Deletes an image (by id or name) and, when no other image shares it,
/// its file; refused while it is being saved, while instances run it or
/// while snapshots taken from it remain.
pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, key: &str) -> AppResult<()> {
    let row = load(ctx, caller, key, Access::Write).await?;
    if row.state == ImageState::Saving {
        return Err(AppError::Conflict(format!(
            "image {} is being saved; wait until it is active or in error, then delete it",
            row.id
        )));
    }
    match ctx.store.image_in_use(&row.id).await? {
        Some(ImageInUse::Instances(ids)) => {
            return Err(AppError::Conflict(format!(
                "image {} is in use by instances {}: terminate them first",
                row.name,
                ids.join(", ")
            )))
        }
        Some(ImageInUse::Snapshots(ids)) => {
            return Err(AppError::Conflict(format!(
                "image {} has instance snapshots taken from it ({}): delete them first",
                row.name,
                ids.join(", ")
            )))
        }
        None => {}
    }
    if let Some(orphan) = ctx.store.delete_image(&row.id).await? {
        ctx.registry.remove_blob(&orphan);
    }
    tracing::info!(image = %row.id, name = %row.name, "image deleted");
    Ok(())
}

/// Asks for an image of an instance's root disk (an instance snapshot):
/// a point-in-time copy taken on its host (the guest's file systems
/// frozen for it when the guest agent answers), uploaded to the registry
/// (`capture`), and bootable like any image once `active`. Returns the
/// image, `saving`.
pub async fn snapshot_instance(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    instance_id: &str,
    p: &InstanceSnapshot,
) -> AppResult<Image> {
    let inst = crate::app::instances::load(ctx, caller, instance_id, Access::Write).await?;
    let project = inst.project_id.clone().ok_or_else(|| AppError::Conflict("the instance has no project".into()))?;
    check_image_name(&p.name)?;
    if !matches!(inst.state, InstanceState::Running | InstanceState::Stopped) || inst.desired == PowerState::Deleted {
        return Err(AppError::Conflict(format!(
            "instance {} is {}; snapshot it when it is running or stopped",
            inst.id, inst.state
        )));
    }
    let parent = match &inst.image_id {
        Some(i) => ctx.store.image(i).await?,
        None => None,
    };
    // A snapshot boots like its parent: with the same builtin kernel, or by firmware.
    let kernel_image = match &parent {
        Some(pr) if pr.source == "builtin" => Some(pr.name.clone()),
        Some(pr) => pr.kernel_image.clone(),
        // An OS installed from a CD onto `blank` boots by firmware.
        None if inst.image == nubo_api::agent::BLANK_IMAGE => None,
        None => Some(inst.image.clone()),
    };
    let description = p.description.clone().unwrap_or_else(|| format!("snapshot of instance {}", inst.id));
    if description.len() > 1024 {
        return Err(AppError::BadRequest("description is at most 1024 bytes".into()));
    }
    let (used, quota) = (ctx.store.image_bytes_used(&project).await?, ctx.config.image_quota_bytes);
    if used >= quota {
        return Err(AppError::QuotaExceeded(format!(
            "the project's image quota is used up ({} of {}): delete images it no longer needs \
             (`nubo image delete NAME`) or ask an operator to raise the quota (nubo server --image-quota SIZE)",
            human(used),
            human(quota)
        )));
    }
    let image_id = ImageId::generate();
    let inserted = ctx
        .store
        .insert_image(&NewImage {
            id: &image_id,
            name: &p.name,
            project_id: &project,
            visibility: "project",
            source: "snapshot",
            state: ImageState::Saving,
            description: &description,
            disk_format: Some("qcow2"),
            size_bytes: None,
            min_disk_gib: inst.disk_gib as u64,
            min_memory_mib: parent.as_ref().map_or(0, |pr| pr.min_memory_mib as u64),
            kernel_image: kernel_image.as_deref(),
            parent_id: parent.as_ref().map(|pr| pr.id.as_str()),
            source_instance: Some(&inst.id),
        })
        .await?;
    if !inserted {
        return Err(AppError::Conflict(format!(
            "this project already has an image named '{}': pick another name, or delete that one first",
            p.name
        )));
    }
    ctx.bump();
    tracing::info!(instance = %inst.id, image = %image_id, "instance snapshot requested");
    let row = ctx.store.image(image_id.as_str()).await?.ok_or_else(|| AppError::internal("image vanished"))?;
    view_one(ctx, row).await
}

// ---- hosts' side ----

/// An active image's file, opened for a host to boot from, and its length.
pub async fn file(ctx: &Ctx, id: &str) -> AppResult<(tokio::fs::File, u64)> {
    let not_found = || AppError::NotFound { kind: "image", id: id.chars().take(80).collect() };
    let row = ctx.store.image(id).await?.filter(|r| r.state.is_bootable()).ok_or_else(not_found)?;
    let path = row.sha256.as_deref().and_then(|s| ctx.registry.blob_path(s)).ok_or_else(not_found)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| AppError::internal(format!("image {} file {}: {e}", row.id, path.display())))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((file, len))
}

/// Receives an instance snapshot (a qcow2 of the root disk of `size_bytes`
/// bytes, of SHA-256 `sha256`) from the host that took it. Its size counts
/// against the project's image quota before its bytes arrive; a refused
/// file fails the image, an interrupted upload leaves it for the host to
/// retry.
pub async fn capture(
    ctx: &Arc<Ctx>,
    host: &HostCaller,
    id: &str,
    size_bytes: u64,
    sha256: &str,
    body: impl AsyncRead + Unpin,
) -> AppResult<Image> {
    let row = ctx
        .store
        .image(id)
        .await?
        .filter(|r| r.source == "snapshot")
        .ok_or_else(|| AppError::NotFound { kind: "image", id: id.chars().take(80).collect() })?;
    let instance = match &row.source_instance {
        Some(i) => ctx.store.instance(i).await?,
        None => None,
    };
    if instance.and_then(|i| i.host_id).as_deref() != Some(host.host_id.as_str()) {
        return Err(AppError::Forbidden(format!("image {} is not being taken on host {}", row.id, host.host_id)));
    }
    if row.state != ImageState::Saving {
        return Err(AppError::Conflict(format!("image {} is {}, not being saved", row.id, row.state)));
    }
    if size_bytes == 0 || size_bytes > ctx.config.max_image_bytes || !crate::registry::is_sha256(sha256) {
        return Err(AppError::BadRequest("size_bytes or sha256 out of range".into()));
    }
    // The snapshot's size counts against its project's image quota before
    // its bytes arrive (and the upload is cut off at that size).
    let project = row.project_id.clone().unwrap_or_default();
    if let Err(u) = ctx.store.reserve_image_bytes(&project, &row.id, size_bytes, ctx.config.image_quota_bytes).await? {
        let message = format!(
            "the snapshot ({}) does not fit the project's image quota: {} of {} used; delete images the project \
             no longer needs (`nubo image delete NAME`) or ask an operator to raise the quota (nubo server --image-quota SIZE)",
            human(u.needed),
            human(u.used),
            human(u.quota)
        );
        tracing::info!(image = %row.id, %project, "instance snapshot refused: over the image quota");
        ctx.store.fail_image(&row.id, &message).await?;
        ctx.bump();
        return Err(AppError::QuotaExceeded(message));
    }
    match ctx.registry.store_upload(body, size_bytes, Some(sha256), DiskFormat::Qcow2).await {
        Ok(stored) => {
            activate(ctx, &row, &stored).await?;
            ctx.bump();
            tracing::info!(image = %row.id, sha256 = %stored.sha256, "instance snapshot stored");
            let row = ctx.store.image(&row.id).await?.ok_or_else(|| AppError::internal("image vanished"))?;
            view_one(ctx, row).await
        }
        Err(e) => {
            // The host retries an interrupted upload; a refused file fails the image.
            if matches!(e, RegistryError::Rejected(_) | RegistryError::TooLarge { .. }) {
                ctx.store.fail_image(&row.id, &e.to_string()).await?;
                ctx.bump();
            }
            Err(upload_error(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for ok in ["debian-12", "my.image_v2", "A"] {
            assert!(check_image_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "-x", "a b", &"x".repeat(129)] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
    }
}
