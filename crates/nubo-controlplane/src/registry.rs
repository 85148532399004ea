//! The image registry's files: `DATA_DIR/registry/sha256/<hex>`, each an
//! uploaded (or instance-snapshot) disk image stored under the SHA-256 of
//! its bytes, so identical images are stored once. Uploads stream to
//! `DATA_DIR/registry/tmp/` while they are hashed and counted (an upload
//! that runs past its declared size is cut off there), are checked by
//! `nubo_image::inspect` (format, backing files, data files, encryption,
//! corruption), and only then renamed into place. Nothing a user sends is
//! ever used as a path.

use nubo_image::inspect::{DiskFormat, InspectError, InspectLimits};
use sha2::{Digest, Sha256};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Zero blocks of this size are skipped (left as holes) when writing, so
/// a mostly empty raw image costs little space.
const SPARSE_BLOCK: usize = 4096;

/// How much of an upload is read at a time.
const UPLOAD_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The upload carried more bytes than the image's declared size.
    #[error("the upload is larger than the declared size of {declared} bytes; register the image with its real size (`ls -l FILE`)")]
    TooLarge { declared: u64 },
    /// The upload ended before the declared size.
    #[error("the upload ended after {got} of {declared} bytes; upload the whole file again")]
    Short { got: u64, declared: u64 },
    /// The file's SHA-256 is not the one declared.
    #[error("the file's SHA-256 is {got}, not the declared {declared}; the file changed or was damaged in transit: upload it again")]
    Checksum { got: String, declared: String },
    /// The file is not an image Nubo accepts (the message says why).
    #[error(transparent)]
    Rejected(#[from] InspectError),
    /// Reading the upload failed (the client went away).
    #[error("the upload was interrupted: {0}; upload the file again")]
    Body(String),
    /// A file operation on the registry failed.
    #[error("cannot {op} {path}: {source}; check the control plane's data directory")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io { op, path: path.to_path_buf(), source }
}

/// A checked file in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
    pub virtual_size: u64,
}

#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    limits: InspectLimits,
}

/// True for 64 lowercase hex digits (a SHA-256 as the registry names it).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes bytes to a file, leaving whole zero blocks as holes.
struct SparseWriter {
    file: tokio::fs::File,
    /// Bytes not yet making up a whole block.
    pending: Vec<u8>,
    len: u64,
}

impl SparseWriter {
    async fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let take = (SPARSE_BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == SPARSE_BLOCK {
                let block = std::mem::take(&mut self.pending);
                self.block(&block).await?;
            }
        }
        let mut chunks = data.chunks_exact(SPARSE_BLOCK);
        for block in &mut chunks {
            self.block(block).await?;
        }
        self.pending.extend_from_slice(chunks.remainder());
        Ok(())
    }

    async fn block(&mut self, block: &[u8]) -> std::io::Result<()> {
        if block.iter().all(|b| *b == 0) {
            self.file.seek(SeekFrom::Current(block.len() as i64)).await?;
        } else {
            self.file.write_all(block).await?;
        }
        self.len += block.len() as u64;
        Ok(())
    }

    async fn finish(mut self) -> std::io::Result<()> {
        let rest = std::mem::take(&mut self.pending);
        self.file.write_all(&rest).await?;
        self.len += rest.len() as u64;
        // A trailing hole needs the length set explicitly.
        self.file.set_len(self.len).await?;
        self.file.sync_all().await
    }
}

impl Registry {
    pub fn new(data_dir: &Path) -> Self {
        Self { root: data_dir.join("registry"), limits: InspectLimits::default() }
    }

    fn blobs(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the file with this SHA-256 is (or would be) stored; `None`
    /// for anything that is not a SHA-256.
    pub fn blob_path(&self, sha256: &str) -> Option<PathBuf> {
        is_sha256(sha256).then(|| self.blobs().join(sha256))
    }

    /// Removes what uploads cut short by a restart left in `tmp/`.
    pub fn remove_partial_uploads(&self) {
        let tmp = self.tmp();
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a partial upload");
                }
            }
        }
    }

    /// Removes a file no image refers to any more.
    pub fn remove_blob(&self, sha256: &str) {
        if let Some(p) = self.blob_path(sha256) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove an unused image file");
                }
            }
        }
    }

    /// Receives an upload of exactly `size` bytes (checked against
    /// `expected_sha256` when given), checks it as a `format` image and
    /// stores it. Nothing is kept when any step fails. The bytes come from
    /// any reader (an HTTP body for uploads); its errors are the body's.
    pub async fn store_upload(
        &self,
        mut body: impl AsyncRead + Unpin,
        size: u64,
        expected_sha256: Option<&str>,
        format: DiskFormat,
    ) -> Result<Stored, RegistryError> {
        let tmp_dir = self.tmp();
        std::fs::create_dir_all(&tmp_dir).map_err(io("create", &tmp_dir))?;
        std::fs::create_dir_all(self.blobs()).map_err(io("create", &self.blobs()))?;
        // Removed on every early return: a refused upload leaves nothing.
        let tmp = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&tmp_dir)
            .map_err(io("create a file in", &tmp_dir))?
            .into_temp_path();
        let file = tokio::fs::OpenOptions::new().write(true).open(&tmp).await.map_err(io("open", &tmp))?;
        let mut writer = SparseWriter { file, pending: Vec::new(), len: 0 };
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        loop {
            let n = body.read(&mut buf).await.map_err(|e| RegistryError::Body(e.to_string()))?;
            if n == 0 {
                break;
            }
            let data = &buf[..n];
            got += data.len() as u64;
            if got > size {
                return Err(RegistryError::TooLarge { declared: size });
            }
            hasher.update(data);
            writer.write(data).await.map_err(io("write", &tmp))?;
        }
        if got < size {
            return Err(RegistryError::Short { got, declared: size });
        }
        writer.finish().await.map_err(io("write", &tmp))?;
        let sha256 = hex::encode(hasher.finalize());
        if let Some(want) = expected_sha256 {
            if want != sha256 {
                return Err(RegistryError::Checksum { got: sha256, declared: want.to_string() });
            }
        }
        let limits = self.limits.clone();
        let path = tmp.to_path_buf();
        let inspected = tokio::task::spawn_blocking(move || nubo_image::inspect::inspect(&path, format, &limits))
            .await
            .map_err(|e| RegistryError::Body(format!("the image check did not finish: {e}")))??;
        let dest = self.blobs().join(&sha256);
        if dest.exists() {
            tracing::info!(%sha256, "identical image file already stored");
        } else {
            tmp.persist(&dest).map_err(|e| RegistryError::Io { op: "store", path: dest.clone(), source: e.error })?;
        }
        Ok(Stored { sha256, size: got, virtual_size: inspected.virtual_size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sparse_writer_keeps_content_and_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let file = tokio::fs::File::create(&p).await.unwrap();
        let mut w = SparseWriter { file, pending: Vec::new(), len: 0 };
        let mut want = Vec::new();
        // Odd-sized pieces across block boundaries, a long zero run, and a zero tail.
        for piece in [vec![1u8; 100], vec![0u8; 1 << 20], vec![2u8; 5000], vec![0u8; 3 * SPARSE_BLOCK + 7]] {
            w.write(&piece).await.unwrap();
            want.extend_from_slice(&piece);
        }
        w.finish().await.unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(allocated < 256 * 1024, "zero blocks became holes: {allocated} bytes allocated");
    }

    #[test]
    fn only_sha256_names_are_paths() {
        let r = Registry::new(Path::new("/d"));
        assert!(r.blob_path(&"a".repeat(64)).is_some());
        for bad in ["", "../../etc/passwd", &"A".repeat(64), &"a".repeat(63)] {
            assert!(r.blob_path(bad).is_none(), "{bad}");
        }
    }
}
