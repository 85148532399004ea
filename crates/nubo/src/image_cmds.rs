//! Client commands for images the cloud makes: `nubo image import URL`
//! (the control plane fetches it) and `nubo image build --name` (a host
//! builds it, or this machine does with `--local`, into the cloud's
//! registry). Both follow the image's job until it is stored, a line on
//! stderr each second something changed, and fail with the image's own error.

use crate::cli::Conn;
use crate::client_cmds::client;
use crate::output::emit;
use nubo_api::params::{ImageBuildCreate, ImageUrlImport};
use nubo_api::views::{Image, ImageState};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long to follow a job before giving up (the job goes on).
const FOLLOW_LIMIT: Duration = Duration::from_secs(6 * 3600);

pub struct UrlImport {
    pub url: String,
    pub sha256: Option<String>,
    pub name: Option<String>,
    pub format: Option<String>,
    pub min_disk: Option<u64>,
    pub min_memory: Option<u64>,
    pub public: bool,
    pub kernel_image: Option<String>,
    pub description: Option<String>,
}

/// The URL's last path segment, without its extension: the default name.
fn name_from_url(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?;
    let file = path.rsplit('/').next()?;
    let stem = match file.split_once('.') {
        Some((stem, _)) => stem,
        None => file,
    };
    let name: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    (!name.is_empty() && name.as_bytes()[0].is_ascii_alphanumeric()).then_some(name)
}

/// The format the URL's extension says, if it says one.
fn format_from_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next()?.to_ascii_lowercase();
    if path.ends_with(".qcow2") || path.ends_with(".qcow") {
        Some("qcow2")
    } else if path.ends_with(".raw") || path.ends_with(".img") {
        Some("raw")
    } else {
        None
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} B"),
    }
}

/// One progress line of an image's job.
fn progress_line(i: &Image) -> String {
    let Some(job) = &i.job else { return i.state.to_string() };
    let mut line = String::new();
    if let Some(status) = &job.status {
        line.push_str(status);
    }
    match job.bytes_total {
        Some(total) if total > 0 => {
            let pct = job.bytes_done as f64 * 100.0 / total as f64;
            if !line.is_empty() {
                line.push_str("  ");
            }
            line.push_str(&format!("{pct:5.1}%  {} of {}", human_bytes(job.bytes_done), human_bytes(total)));
        }
        _ if line.is_empty() => line.push_str("connecting"),
        _ => {}
    }
    line
}

/// What made an image and how far it came, for `nubo image show`.
pub fn job_summary(job: &nubo_api::views::ImageJob) -> String {
    let what = match (&job.url, &job.base) {
        (Some(url), _) => format!("fetch of {url}"),
        (None, Some(base)) if job.packages.is_empty() => format!("build of {base}"),
        (None, Some(base)) => format!("build of {base} with {}", job.packages.join(", ")),
        _ => job.kind.clone(),
    };
    let bytes = match job.bytes_total {
        Some(total) => format!("; {} of {}", human_bytes(job.bytes_done), human_bytes(total)),
        None => String::new(),
    };
    let host = job.host.as_ref().map(|h| format!(" on {h}")).unwrap_or_default();
    format!("{what}{host}{bytes}")
}

/// Follows an image until it leaves `saving`, a line a second on stderr;
/// the stored image, or its error.
async fn follow(conn: &Conn, image: Image) -> anyhow::Result<Image> {
    let c = client(conn)?;
    let started = Instant::now();
    let mut image = image;
    // A line a second while something changes (a build's step can last minutes).
    let mut last = String::new();
    loop {
        match image.state {
            ImageState::Active => {
                eprintln!(
                    "[{:>6.1}s] stored: {} ({}, sha256 {})",
                    started.elapsed().as_secs_f64(),
                    image.name,
                    image.size_bytes.map(human_bytes).unwrap_or_default(),
                    image.sha256.as_deref().unwrap_or("?")
                );
                return Ok(image);
            }
            ImageState::Error => {
                anyhow::bail!(
                    "image {} ({}) failed: {}",
                    image.name,
                    image.id,
                    image.error.as_deref().unwrap_or("no reason given")
                )
            }
            _ => {
                let line = progress_line(&image);
                if line != last {
                    eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64());
                    last = line;
                }
            }
        }
        if started.elapsed() > FOLLOW_LIMIT {
            anyhow::bail!(
                "image {} is still {} after {} s; it goes on: follow it with `nubo image show {}`",
                image.name,
                image.state,
                FOLLOW_LIMIT.as_secs(),
                image.id
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        image = c.image(image.id.as_str()).await?;
    }
}

pub async fn import_url(conn: &Conn, o: UrlImport) -> anyhow::Result<()> {
    let name = match o.name.or_else(|| name_from_url(&o.url)) {
        Some(n) => n,
        None => anyhow::bail!("cannot make an image name of the URL {}: give --name NAME", o.url),
    };
    let format = match o.format.or_else(|| format_from_url(&o.url).map(String::from)) {
        Some(f) => f,
        None => anyhow::bail!("the URL does not end in .qcow2, .raw or .img: give --format raw or --format qcow2"),
    };
    let req = ImageUrlImport {
        name,
        url: o.url,
        disk_format: format,
        sha256: o.sha256.map(|s| s.trim().to_ascii_lowercase()),
        min_disk_gib: o.min_disk,
        min_memory_mib: o.min_memory,
        visibility: o.public.then(|| "public".to_string()),
        kernel_image: o.kernel_image,
        description: o.description,
    };
    let image = client(conn)?.import_image_url(&req).await?;
    eprintln!("registered {} ({}); the cloud is fetching {}", image.id, image.name, req.url);
    let image = follow(conn, image).await?;
    emit(conn.output, &image, |i| println!("{}", i.id))
}

pub struct Build {
    pub base: String,
    pub image: String,
    pub packages: Vec<String>,
    pub public: bool,
}

/// Has a host of the cloud build the image, following it until stored.
pub async fn build_in_cloud(conn: &Conn, b: Build) -> anyhow::Result<()> {
    let req = ImageBuildCreate {
        name: b.image,
        base: b.base,
        packages: b.packages,
        visibility: b.public.then(|| "public".to_string()),
        description: None,
    };
    let image = client(conn)?.build_image(&req).await?;
    eprintln!("registered {} ({}); a host of the cloud builds it", image.id, image.name);
    let image = follow(conn, image).await?;
    emit(conn.output, &image, |i| println!("{}", i.id))
}

/// Builds on this machine (into `cache`), then uploads the disk into the
/// cloud's registry, to boot with the base's kernel like a cloud build.
pub async fn build_local_and_upload(conn: &Conn, b: Build, cache: PathBuf, force: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let options = nubo_image::BuildOptions { packages: b.packages.clone() };
    let base = b.base.clone();
    let built = tokio::task::spawn_blocking(move || {
        let images = nubo_image::ImageCache::new(cache);
        let mut progress = |msg: &str| eprintln!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
        if force {
            images.build_with(&base, &options, &mut progress)
        } else {
            images.ensure_with(&base, &options, &mut progress)
        }
    })
    .await??;
    let description = if b.packages.is_empty() {
        format!("{} built locally", b.base)
    } else {
        format!("{} with {}", b.base, b.packages.join(", "))
    };
    let opts = crate::storage_cmds::ImportOptions {
        name: b.image,
        format: Some("qcow2".into()),
        min_disk: None,
        min_memory: None,
        public: b.public,
        kernel_image: Some(b.base),
        description: Some(description),
        hardware: Default::default(),
    };
    crate::storage_cmds::import_image(conn, &built.disk, opts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats_from_urls() {
        let u = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-generic-amd64.qcow2?x=1";
        assert_eq!(name_from_url(u).as_deref(), Some("debian-12-generic-amd64"));
        assert_eq!(format_from_url(u), Some("qcow2"));
        assert_eq!(format_from_url("http://h/disk.RAW"), Some("raw"));
        assert_eq!(format_from_url("http://h/disk"), None);
        assert_eq!(name_from_url("http://h/"), None);
        assert_eq!(name_from_url("http://h/my disk.img").as_deref(), Some("my-disk"));
    }
}
