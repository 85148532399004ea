//! A repository in a bucket of any S3-compatible store (AWS, MinIO, Ceph
//! RGW, Garage, ...), under a key prefix.
//!
//! The client is `rust-s3`: maintained, small next to the AWS SDK, speaks
//! SigV4 to any endpoint with path-style addressing (so a store without
//! wildcard DNS works), and runs on the workspace's reqwest with rustls
//! over ring (no OpenSSL, no aws-lc build). Every S3 PUT is atomic by
//! itself, so no temporary names are needed. Status codes are checked
//! here, so that a missing object (404) is told apart from a failure.

use std::time::Duration;

use async_trait::async_trait;
use s3::creds::Credentials;
use s3::{Bucket, Region};

use super::Backend;
use crate::BackupError;

/// No single request of a chunk's size takes longer on a working link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub struct S3Backend {
    bucket: Box<Bucket>,
    /// "" or "some/prefix/".
    prefix: String,
    location: String,
}

impl S3Backend {
    pub fn open(
        endpoint: &str,
        region: &str,
        bucket: &str,
        prefix: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<S3Backend, BackupError> {
        let location = format!("s3://{bucket}/{prefix} at {endpoint}");
        let invalid = |e: String| {
            BackupError::Invalid(format!(
                "the S3 repository {location} cannot be used ({e}); check its endpoint URL, bucket name and keys"
            ))
        };
        let creds = Credentials::new(Some(access_key_id), Some(secret_access_key), None, None, None)
            .map_err(|e| invalid(e.to_string()))?;
        let region =
            Region::Custom { region: region.to_string(), endpoint: endpoint.trim_end_matches('/').to_string() };
        let bucket = Bucket::new(bucket, region, creds)
            .map_err(|e| invalid(e.to_string()))?
            .with_path_style()
            .with_request_timeout(REQUEST_TIMEOUT)
            .map_err(|e| invalid(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        Ok(S3Backend { bucket, prefix, location })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> BackupError {
        BackupError::Backend { location: self.location.clone(), detail: format!("cannot {what}: {e}") }
    }

    fn status(&self, what: &str, code: u16, body: &[u8]) -> BackupError {
        let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        self.err(what, format!("the store answered {code} {body}"))
    }

    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), BackupError> {
        let what = format!("write {key}");
        let r = self.bucket.put_object(self.path(key), &data).await.map_err(|e| self.err(&what, e))?;
        match r.status_code() {
            200..=299 => Ok(()),
            c => Err(self.status(&what, c, r.as_slice())),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let what = format!("read {key}");
        let r = self.bucket.get_object(self.path(key)).await.map_err(|e| self.err(&what, e))?;
        match r.status_code() {
            200 => Ok(Some(r.to_vec())),
            404 => Ok(None),
            c => Err(self.status(&what, c, r.as_slice())),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        let what = format!("look for {key}");
        let (_, code) = self.bucket.head_object(self.path(key)).await.map_err(|e| self.err(&what, e))?;
        match code {
            200..=299 => Ok(true),
            404 => Ok(false),
            c => Err(self.status(&what, c, b"")),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let pages =
            self.bucket.list(self.path(prefix), None).await.map_err(|e| self.err(&format!("list {prefix}"), e))?;
        let mut out: Vec<(String, u64)> = pages
            .into_iter()
            .flat_map(|p| p.contents)
            .filter_map(|o| o.key.strip_prefix(&self.prefix).map(|k| (k.to_string(), o.size)))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), BackupError> {
        let what = format!("delete {key}");
        let r = self.bucket.delete_object(self.path(key)).await.map_err(|e| self.err(&what, e))?;
        match r.status_code() {
            200..=299 | 404 => Ok(()),
            c => Err(self.status(&what, c, r.as_slice())),
        }
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}
