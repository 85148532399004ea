//! Where a repository's objects live: the [`Backend`] trait, a flat store
//! of named byte strings with `/`-separated keys, and its three
//! implementations (a directory, an SFTP server, an S3 bucket).
//!
//! A put is atomic: a reader sees the whole object or none (the directory
//! and SFTP backends write a temporary name and rename it; S3 puts are
//! atomic by themselves), so a backup cut short never leaves a half
//! chunk under a chunk's name.

use async_trait::async_trait;

use crate::BackupError;

pub mod dir;

/// A store of objects.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Store `data` at `key`, replacing what was there, atomically.
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), BackupError>;
    /// The object at `key`, or `None` when there is none.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError>;
    async fn exists(&self, key: &str) -> Result<bool, BackupError>;
    /// Every object whose key starts with `prefix`, with its size.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError>;
    /// Delete the object at `key`; deleting a missing object is no error.
    async fn delete(&self, key: &str) -> Result<(), BackupError>;
    /// The location for messages (`file:///...`, `sftp://...`, `s3://...`).
    fn describe(&self) -> String;
}
