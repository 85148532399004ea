//! Images the cloud makes itself: fetched from a URL (`nubo image import
//! --url`), or built on a host (`nubo image build --name`). The image is registered `saving` with a job (`image_jobs`)
//! that records how many bytes arrived of how many; a task of the server
//! fetches the file over a connection that obeys the outbound rules
//! (`image_urls`), and the registry checks it as it checks an upload
//! (size, checksum, format, backing files...). A fetch that fails in any
//! way leaves the image in `error` with the reason, and nothing in the
//! registry; the image counts against the quota only while it is saving
//! or active.
//!
//! A build is a job hosts poll for (`claim_build`): the first host to ask
//! takes it, builds the base image with the extra packages by
//! `nubo_image` in a cache of its own (never the one its builtin images
//! live in), reports its steps (`report_build`) and uploads the disk
//! (`upload_build`), which the registry checks as any upload. The image
//! boots with its base's kernel, initrd and command line, and every host
//! fetches it by SHA-256 like an imported image.

use crate::app::images::{activate, check_registration, name_taken, view_one, Checked, Registration};
use crate::auth::{Caller, HostCaller};
use crate::error::{AppError, AppResult};
use crate::image_jobs::JobSource;
use crate::image_urls;
use crate::images::NewImage;
use crate::registry::RegistryError;
use crate::Ctx;
use nubo_api::agent::{ImageBuildJob, ImageBuildReport};
use nubo_api::ids::ImageId;
use nubo_api::params::{ImageBuildCreate, ImageUrlImport};
use nubo_api::views::{Image, ImageState};
use nubo_image::inspect::DiskFormat;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// How often a fetch's progress is written down.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Registers an image fetched from `p.url` (`saving`, with its job) and
/// starts the fetch; the answer comes at once, the progress in the
/// image's `job`.
pub async fn import_url(ctx: &Arc<Ctx>, caller: &Caller, p: &ImageUrlImport) -> AppResult<Image> {
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
    let checked = image_urls::check(&p.url, &ctx.config.image_url_allow)
        .map_err(|e| AppError::BadRequest(format!("url: {e}")))?;
    let id = ImageId::generate();
    let inserted = ctx
        .store
        .insert_image(&NewImage {
            id: &id,
            name: &p.name,
            project_id: &project,
            visibility,
            source: "import",
            state: ImageState::Saving,
            description: &description,
            disk_format: Some(format.as_str()),
            // Counted against the quota once the server says the size.
            size_bytes: None,
            min_disk_gib,
            min_memory_mib,
            kernel_image: p.kernel_image.as_deref(),
            parent_id: None,
            source_instance: None,
        })
        .await?;
    if !inserted {
        return Err(name_taken(&p.name));
    }
    ctx.store.insert_image_job(id.as_str(), JobSource::Url(checked.url.as_str())).await?;
    if let Some(sha) = &p.sha256 {
        ctx.store.set_expected_sha256(id.as_str(), sha).await?;
    }
    tracing::info!(image = %id, name = %p.name, url = %checked.url, "image import from a URL started");
    let task_ctx = ctx.clone();
    let image = id.to_string();
    let (caller_project, expected) = (project.clone(), p.sha256.clone());
    tokio::spawn(async move {
        if let Err(message) = fetch(&task_ctx, &image, &caller_project, checked, expected.as_deref(), format).await {
            tracing::info!(%image, error = %message, "image import from a URL failed");
            if let Err(e) = task_ctx.store.fail_image(&image, &message).await {
                tracing::warn!(%image, error = %e, "cannot record a failed image import");
            }
        }
    });
    let row = ctx.store.image(id.as_str()).await?.ok_or_else(|| AppError::internal("image vanished"))?;
    view_one(ctx, row).await
}

/// A reader that counts what passed through it.
struct Counting<R> {
    inner: R,
    done: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.done.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

/// Fetches, checks and stores the image's file; the reason it failed, as
/// its owner reads it, otherwise.
async fn fetch(
    ctx: &Arc<Ctx>,
    image: &str,
    project: &str,
    checked: image_urls::CheckedUrl,
    expected: Option<&str>,
    format: DiskFormat,
) -> Result<(), String> {
    let url = checked.url.to_string();
    let addrs = image_urls::resolve(&checked).await.map_err(|e| format!("refused: {e}"))?;
    let http = image_urls::client(&checked, &addrs).map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let resp = http.get(checked.url.clone()).send().await.map_err(|e| {
        let kind = if e.is_timeout() { "no answer in time" } else { "no connection" };
        format!(
            "cannot fetch {url}: {kind} ({}); check that the server is up and the URL is right, then import again",
            chain(&e)
        )
    })?;
    let status = resp.status();
    if status.is_redirection() {
        let to = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("?");
        return Err(format!(
            "{url} redirects (HTTP {}) to {}; redirects are not followed: import from that URL directly (its host \
             must be allowed too)",
            status.as_u16(),
            to.chars().take(512).collect::<String>()
        ));
    }
    if !status.is_success() {
        return Err(format!("{url} answered HTTP {}; check the URL, then import again", status.as_u16()));
    }
    let max = ctx.config.max_image_bytes;
    let size = resp.content_length().ok_or_else(|| {
        format!("{url} did not say the file's size (no Content-Length); download it and upload it (`nubo image import FILE`)")
    })?;
    if size == 0 || size > max {
        return Err(format!(
            "{url} is {size} bytes; this cloud accepts images of 1 to {max} bytes (nubo server --max-image-size)"
        ));
    }
    if let Err(u) = ctx
        .store
        .reserve_image_bytes(project, image, size, ctx.config.image_quota_bytes)
        .await
        .map_err(|e| format!("internal error: {e}"))?
    {
        return Err(format!(
            "the image ({}) does not fit the project's image quota: {} of {} used; delete images the project no \
             longer needs (`nubo image delete NAME`) or ask an operator to raise the quota (nubo server --image-quota SIZE)",
            crate::app::images::human(u.needed),
            crate::app::images::human(u.used),
            crate::app::images::human(u.quota)
        ));
    }
    let done = Arc::new(AtomicU64::new(0));
    let _ = ctx.store.set_image_job_progress(image, 0, Some(size)).await;
    let progress = spawn_progress(ctx, image, &done);
    use futures::TryStreamExt;
    let body = tokio_util::io::StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
    let stored = ctx.registry.store_upload(Counting { inner: body, done: done.clone() }, size, expected, format).await;
    progress.abort();
    let _ = ctx.store.set_image_job_progress(image, done.load(Ordering::Relaxed), None).await;
    let stored = stored.map_err(|e| match e {
        RegistryError::Checksum { got, declared } => format!(
            "the file's SHA-256 does not match: expected {declared}, got {got}; nothing was stored: check the URL \
             and the checksum, delete this image and import again"
        ),
        RegistryError::Short { got, declared } => {
            format!("{url} ended after {got} of {declared} bytes; nothing was stored: import again")
        }
        RegistryError::TooLarge { declared } => {
            format!("{url} sent more than the {declared} bytes it announced; nothing was stored: import again")
        }
        RegistryError::Body(detail) => format!("the download of {url} was interrupted ({detail}); import again"),
        other => format!("the image was refused and not stored: {other}"),
    })?;
    let row = ctx
        .store
        .image(image)
        .await
        .map_err(|e| format!("internal error: {e}"))?
        .ok_or_else(|| "the image was deleted while it was being fetched".to_string())?;
    if row.state != ImageState::Saving {
        return Err(format!("the image became {} while it was being fetched", row.state));
    }
    activate(ctx, &row, &stored).await.map_err(|e| e.to_string())?;
    tracing::info!(%image, sha256 = %stored.sha256, "image fetched from a URL and stored");
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Base images a build may start from: the builtins whose recipe takes
/// extra packages.
const BUILDABLE: &[&str] = &["debian"];
/// Most extra packages one build may ask for.
const MAX_PACKAGES: usize = 64;

/// A Debian package name (policy 5.6.1): lower-case letters, digits,
/// `+`, `-`, `.`, at least two characters, starting alphanumeric.
fn check_package(p: &str) -> AppResult<()> {
    let ok = p.len() >= 2
        && p.len() <= 100
        && p.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest(format!(
            "'{}' is not a Debian package name (lower-case letters, digits, +, - and .): check the spelling \
             (`apt-cache search NAME`)",
            p.chars().take(100).collect::<String>()
        )))
    }
}

/// Registers an image that a host builds from `p.base` with `p.packages`
/// (`saving`, with its job), and wakes the hosts to take it.
pub async fn create_build(ctx: &Arc<Ctx>, caller: &Caller, p: &ImageBuildCreate) -> AppResult<Image> {
    let Checked { project, visibility, description, .. } = check_registration(
        caller,
        &Registration {
            name: &p.name,
            disk_format: "qcow2",
            sha256: None,
            min_disk_gib: None,
            min_memory_mib: None,
            visibility: p.visibility.as_deref(),
            kernel_image: Some(&p.base).filter(|b| BUILDABLE.contains(&b.as_str())).map(|b| b.as_str()),
            description: p.description.as_deref(),
        },
    )?;
    if !BUILDABLE.contains(&p.base.as_str()) {
        return Err(AppError::BadRequest(format!(
            "base '{}' cannot be built with packages; use one of: {}",
            p.base.chars().take(64).collect::<String>(),
            BUILDABLE.join(", ")
        )));
    }
    if p.packages.len() > MAX_PACKAGES {
        return Err(AppError::BadRequest(format!("at most {MAX_PACKAGES} packages may be added in one build")));
    }
    let mut packages = p.packages.clone();
    for pkg in &packages {
        check_package(pkg)?;
    }
    packages.sort();
    packages.dedup();
    let (used, quota) = (ctx.store.image_bytes_used(&project).await?, ctx.config.image_quota_bytes);
    if used >= quota {
        return Err(AppError::QuotaExceeded(format!(
            "the project's image quota is used up ({} of {}): delete images it no longer needs \
             (`nubo image delete NAME`) or ask an operator to raise the quota (nubo server --image-quota SIZE)",
            crate::app::images::human(used),
            crate::app::images::human(quota)
        )));
    }
    let description = if description.is_empty() {
        format!(
            "{} with {}",
            p.base,
            if packages.is_empty() { "no extra packages".into() } else { packages.join(", ") }
        )
    } else {
        description
    };
    let id = ImageId::generate();
    let inserted = ctx
        .store
        .insert_image(&NewImage {
            id: &id,
            name: &p.name,
            project_id: &project,
            visibility,
            source: "build",
            state: ImageState::Saving,
            description: &description,
            disk_format: Some("qcow2"),
            size_bytes: None,
            min_disk_gib: 0,
            min_memory_mib: 0,
            kernel_image: Some(&p.base),
            parent_id: None,
            source_instance: None,
        })
        .await?;
    if !inserted {
        return Err(name_taken(&p.name));
    }
    ctx.store.insert_image_job(id.as_str(), JobSource::Build { base: &p.base, packages: &packages }).await?;
    ctx.store.set_image_job_status(id.as_str(), "waiting for a host to take the build").await?;
    tracing::info!(image = %id, name = %p.name, base = %p.base, packages = %packages.join(","), "image build requested");
    let row = ctx.store.image(id.as_str()).await?.ok_or_else(|| AppError::internal("image vanished"))?;
    view_one(ctx, row).await
}

/// The build this host should run: one it took before and has not
/// finished (it restarted), else the oldest nobody took, now its.
pub async fn claim_build(ctx: &Arc<Ctx>, host: &HostCaller) -> AppResult<Option<ImageBuildJob>> {
    let pending = ctx.store.pending_image_builds().await?;
    let mine = pending.iter().find(|j| j.host_id.as_deref() == Some(host.host_id.as_str()));
    let candidates = mine.into_iter().chain(pending.iter().filter(|j| j.host_id.is_none()));
    for job in candidates {
        if ctx.store.claim_image_build(&job.image_id, host.host_id.as_str()).await? {
            if job.host_id.is_none() {
                ctx.store.set_image_job_status(&job.image_id, &format!("taken by host {}", host.host_id)).await?;
                tracing::info!(image = %job.image_id, host = %host.host_id, "image build taken");
            }
            return Ok(Some(ImageBuildJob {
                image_id: job.image_id.parse().map_err(AppError::internal)?,
                base: job.base.clone().unwrap_or_default(),
                packages: job.view().packages,
            }));
        }
    }
    Ok(None)
}

/// A build job this host took, still saving.
async fn host_build(ctx: &Ctx, host: &HostCaller, id: &str) -> AppResult<crate::images::ImageRow> {
    let not_found = || AppError::NotFound { kind: "image build", id: id.chars().take(80).collect() };
    let job = ctx.store.image_job(id).await?.filter(|j| j.kind == "build").ok_or_else(not_found)?;
    if job.host_id.as_deref() != Some(host.host_id.as_str()) {
        return Err(AppError::Forbidden(format!("image {id} is not being built on host {}", host.host_id)));
    }
    let row = ctx.store.image(id).await?.ok_or_else(not_found)?;
    if row.state != ImageState::Saving {
        return Err(AppError::Conflict(format!("image {id} is {}, not being built", row.state)));
    }
    Ok(row)
}

/// A step of a build, or its failure, as the host that runs it reports.
pub async fn report_build(ctx: &Arc<Ctx>, host: &HostCaller, id: &str, r: &ImageBuildReport) -> AppResult<()> {
    let row = host_build(ctx, host, id).await?;
    let clip = |s: &str| s.chars().take(4000).collect::<String>();
    if let Some(error) = &r.error {
        tracing::info!(image = %row.id, host = %host.host_id, %error, "image build failed");
        ctx.store.fail_image(&row.id, &format!("the build on host {} failed: {}", host.host_id, clip(error))).await?;
    } else if let Some(status) = &r.status {
        ctx.store.set_image_job_status(&row.id, &clip(status)).await?;
    }
    Ok(())
}

/// Receives a build's disk (a qcow2 of `size_bytes` bytes, of SHA-256
/// `sha256`) from the host that built it, with its progress recorded.
/// Its size counts against the project's quota before its bytes arrive; a
/// refused file fails the image, an interrupted upload leaves it for the
/// host to retry.
pub async fn upload_build(
    ctx: &Arc<Ctx>,
    host: &HostCaller,
    id: &str,
    size_bytes: u64,
    sha256: &str,
    body: impl AsyncRead + Unpin,
) -> AppResult<Image> {
    let row = host_build(ctx, host, id).await?;
    if size_bytes == 0 || size_bytes > ctx.config.max_image_bytes || !crate::registry::is_sha256(sha256) {
        return Err(AppError::BadRequest("size_bytes or sha256 out of range".into()));
    }
    let project = row.project_id.clone().unwrap_or_default();
    if let Err(u) = ctx.store.reserve_image_bytes(&project, &row.id, size_bytes, ctx.config.image_quota_bytes).await? {
        let message = format!(
            "the built image ({}) does not fit the project's image quota: {} of {} used; delete images the \
             project no longer needs (`nubo image delete NAME`) or ask an operator to raise the quota (nubo server --image-quota SIZE)",
            crate::app::images::human(u.needed),
            crate::app::images::human(u.used),
            crate::app::images::human(u.quota)
        );
        ctx.store.fail_image(&row.id, &message).await?;
        return Err(AppError::QuotaExceeded(message));
    }
    ctx.store.set_image_job_status(&row.id, "uploading the built disk").await?;
    let done = Arc::new(AtomicU64::new(0));
    ctx.store.set_image_job_progress(&row.id, 0, Some(size_bytes)).await?;
    let progress = spawn_progress(ctx, &row.id, &done);
    let stored = ctx
        .registry
        .store_upload(Counting { inner: body, done: done.clone() }, size_bytes, Some(sha256), DiskFormat::Qcow2)
        .await;
    progress.abort();
    ctx.store.set_image_job_progress(&row.id, done.load(Ordering::Relaxed), None).await?;
    match stored {
        Ok(stored) => {
            activate(ctx, &row, &stored).await?;
            ctx.store.set_image_job_status(&row.id, "built and stored").await?;
            tracing::info!(image = %row.id, sha256 = %stored.sha256, "built image stored");
            let row = ctx.store.image(&row.id).await?.ok_or_else(|| AppError::internal("image vanished"))?;
            view_one(ctx, row).await
        }
        Err(e) => {
            if matches!(e, RegistryError::Rejected(_) | RegistryError::TooLarge { .. } | RegistryError::Checksum { .. })
            {
                ctx.store.fail_image(&row.id, &format!("the built disk was refused and not stored: {e}")).await?;
            }
            Err(match e {
                RegistryError::Io { .. } => AppError::internal(e),
                other => AppError::BadRequest(format!("the built disk was refused: {other}")),
            })
        }
    }
}

/// Writes `done` down as the image's job progress every little while,
/// until aborted.
fn spawn_progress(ctx: &Arc<Ctx>, image: &str, done: &Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let (ctx, image, done) = (ctx.clone(), image.to_string(), done.clone());
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let now = done.load(Ordering::Relaxed);
            if now != last {
                last = now;
                if let Err(e) = ctx.store.set_image_job_progress(&image, now, None).await {
                    tracing::debug!(%image, error = %e, "cannot record an image job's progress");
                }
            }
        }
    })
}
