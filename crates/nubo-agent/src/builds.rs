//! Image builds this host runs for the cloud (`nubo image build --name`):
//! the agent asks the control plane for a build every few seconds, builds
//! the base image with the extra packages by `nubo_image` in a cache of
//! its own (`DATA_DIR/image-builds`, never the cache its builtin images
//! are in, so a build with extra packages never becomes this host's
//! builtin `debian`), reports each step, and uploads the disk into the
//! registry, from where every host fetches it by SHA-256. One build at a
//! time; a build this host took before a restart is taken up again.

use nubo_api::agent::{ImageBuildJob, ImageBuildReport};
use nubo_client::{Client, ClientError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often an idle host asks for a build.
const POLL: Duration = Duration::from_secs(3);
/// How long to wait after the control plane could not be reached.
const RETRY: Duration = Duration::from_secs(5);

/// Asks for builds and runs them, until the process ends.
pub async fn run(client: Client, root: PathBuf) {
    loop {
        match client.claim_image_build().await {
            Ok(Some(job)) => build(&client, &root, job).await,
            Ok(None) => tokio::time::sleep(POLL).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask for image builds; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Sends a report, retrying while the control plane cannot be reached;
/// false when it refused (the build is gone or no longer this host's).
async fn report(client: &Client, job: &ImageBuildJob, r: &ImageBuildReport) -> bool {
    loop {
        match client.report_image_build(&job.image_id, r).await {
            Ok(()) => return true,
            Err(e @ ClientError::Api { .. }) => {
                tracing::info!(image = %job.image_id, error = %e, "image build report refused; dropping the build");
                return false;
            }
            Err(e) => {
                tracing::warn!(image = %job.image_id, error = %e, "cannot report an image build; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn build(client: &Client, root: &std::path::Path, job: ImageBuildJob) {
    let started = Instant::now();
    tracing::info!(image = %job.image_id, base = %job.base, packages = %job.packages.join(","), "image build started");
    // The build's steps reach the control plane as they happen.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let forward = {
        let (client, job) = (client.clone(), job.clone());
        tokio::spawn(async move {
            while let Some(step) = rx.recv().await {
                if !report(&client, &job, &ImageBuildReport { status: Some(step), error: None }).await {
                    return;
                }
            }
        })
    };
    let (cache, base, packages) = (root.to_path_buf(), job.base.clone(), job.packages.clone());
    let built = tokio::task::spawn_blocking(move || {
        let images = nubo_image::ImageCache::new(cache);
        let options = nubo_image::BuildOptions { packages };
        let mut progress = |msg: &str| {
            let _ = tx.send(format!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64()));
        };
        images.ensure_with(&base, &options, &mut progress)
    })
    .await;
    // Every step is sent before the outcome.
    let _ = forward.await;
    let built = match built {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            report(client, &job, &ImageBuildReport { status: None, error: Some(e.to_string()) }).await;
            return;
        }
        Err(e) => {
            let error = format!("the build stopped: {e}");
            report(client, &job, &ImageBuildReport { status: None, error: Some(error) }).await;
            return;
        }
    };
    let disk = built.disk.clone();
    let hashed = tokio::task::spawn_blocking(move || hash(&disk)).await;
    let (size, sha256) = match hashed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            report(client, &job, &ImageBuildReport { status: None, error: Some(e) }).await;
            return;
        }
        Err(e) => {
            report(client, &job, &ImageBuildReport { status: None, error: Some(e.to_string()) }).await;
            return;
        }
    };
    let status = format!("built in {:.0} s; uploading {size} bytes", started.elapsed().as_secs_f64());
    if !report(client, &job, &ImageBuildReport { status: Some(status), error: None }).await {
        return;
    }
    loop {
        match client.upload_image_build(&job.image_id, &built.disk, size, &sha256).await {
            Ok(_) => {
                tracing::info!(image = %job.image_id, %sha256, after = ?started.elapsed(), "image built and uploaded");
                return;
            }
            // Refused: the control plane failed the image with the reason.
            Err(e @ ClientError::Api { .. }) => {
                tracing::warn!(image = %job.image_id, error = %e, "built image refused");
                return;
            }
            Err(e) => {
                tracing::warn!(image = %job.image_id, error = %e, "cannot upload the built image; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The file's size and SHA-256 (blocking).
fn hash(path: &std::path::Path) -> Result<(u64, String), String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open the built disk {}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("cannot read the built disk {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}
