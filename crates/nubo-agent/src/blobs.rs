//! The host's copies of registry image files: `<image cache>/blobs/<sha256>`,
//! fetched from the control plane by content address the first time an
//! instance boots the image here, checked against their SHA-256 before
//! they are used, and shared by every instance (and every agent using the
//! same cache). Instance snapshots taken here are adopted into it too.

use nubo_api::agent::ImageSource;
use nubo_client::Client;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A file in the blob cache.
#[derive(Debug, Clone)]
pub struct Blob {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

fn valid_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SHA-256 and size of a file (blocking).
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// The file of `src`, downloaded into `root` first if it is not there.
pub async fn ensure(client: &Client, root: &Path, src: &ImageSource) -> Result<PathBuf, String> {
    if !valid_sha(&src.sha256) {
        return Err(format!("image {} has an invalid sha256 {:?}", src.image_id, src.sha256));
    }
    let path = root.join(&src.sha256);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    // A unique temporary name: two agents sharing the cache may fetch at once.
    let tmp = root.join(format!(".{}.{}.part", src.sha256, rand::random::<u32>()));
    let result = async {
        let mut file =
            tokio::fs::File::create(&tmp).await.map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let got = client
            .download_image(&src.image_id, &mut file, &mut |chunk| hasher.update(chunk))
            .await
            .map_err(|e| format!("cannot download image {}: {e}", src.image_id))?;
        file.sync_all().await.map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let sha = hex::encode(hasher.finalize());
        if sha != src.sha256 || got != src.size_bytes {
            return Err(format!(
                "image {} arrived damaged: {got} bytes with SHA-256 {sha}, expected {} bytes with {}; it will be fetched again",
                src.image_id, src.size_bytes, src.sha256
            ));
        }
        std::fs::rename(&tmp, &path).map_err(|e| format!("cannot store {}: {e}", path.display()))?;
        tracing::info!(image = %src.image_id, sha256 = %src.sha256, bytes = got, "image file fetched");
        Ok(path.clone())
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Moves `file` into the cache under its SHA-256 (computed here).
pub async fn adopt(root: &Path, file: &Path) -> Result<Blob, String> {
    let (root, file) = (root.to_path_buf(), file.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let (sha256, size) = hash_file(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let path = root.join(&sha256);
        if path.is_file() {
            let _ = std::fs::remove_file(&file);
        } else {
            std::fs::rename(&file, &path).map_err(|e| format!("cannot store {}: {e}", path.display()))?;
        }
        Ok(Blob { path, sha256, size })
    })
    .await
    .map_err(|e| format!("hashing the copy did not finish: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adopt_names_files_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"hello").unwrap();
        let b = adopt(&dir.path().join("blobs"), &f).await.unwrap();
        assert_eq!(b.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(b.size, 5);
        assert!(b.path.is_file() && !f.exists());
        // The same content again is kept once.
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(adopt(&dir.path().join("blobs"), &f).await.unwrap().path, b.path);
        assert!(!f.exists());
        assert!(!valid_sha("../etc") && valid_sha(&b.sha256));
    }
}
