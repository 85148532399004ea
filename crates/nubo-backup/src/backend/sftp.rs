//! A repository in a directory of an SSH server, over SFTP (any OpenSSH
//! server: a backup host needs nothing but an account).
//!
//! The client is `russh` with `russh-sftp`, pure Rust, over `ring`: it
//! builds on a fresh Debian with only a C compiler (no libssh2 or OpenSSL
//! headers as `ssh2` would need), keeps one connection with many requests
//! in flight (chunks are sent concurrently over one session), and lets
//! this module decide about the server's host key itself: the key the
//! server shows must be the one registered with the repository, else the
//! connection is refused before anything is sent.
//!
//! A put writes `.<name>.tmp-<random>` and renames it into place. SFTP's
//! rename refuses an existing target; a chunk already there is the same
//! content (its name is its hash), so the temporary file is dropped, and
//! any other object is replaced by removing the old one first (objects
//! other than chunks are written once per backup, so this does not race).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use tokio::io::AsyncWriteExt;

use super::Backend;
use crate::BackupError;

/// How long connecting and logging in may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SftpBackend {
    sftp: SftpSession,
    // Kept so the connection lives as long as the backend.
    _ssh: russh::client::Handle<HostKeyCheck>,
    root: String,
    location: String,
    made_dirs: Mutex<HashSet<String>>,
}

/// Accepts the server only when it shows the registered key; records
/// what it showed for the error message.
struct HostKeyCheck {
    expected: PublicKey,
    shown: Arc<Mutex<Option<String>>>,
}

impl russh::client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            if let Ok(mut s) = self.shown.lock() {
                *s = Some("a host certificate".into());
            }
            return Ok(false);
        };
        if let Ok(mut s) = self.shown.lock() {
            *s = Some(key.to_openssh().unwrap_or_else(|_| key.algorithm().to_string()));
        }
        Ok(key.key_data() == self.expected.key_data())
    }
}

fn not_found(e: &russh_sftp::client::error::Error) -> bool {
    matches!(e, russh_sftp::client::error::Error::Status(s) if s.status_code == StatusCode::NoSuchFile)
}

impl SftpBackend {
    pub async fn open(
        host: &str,
        port: u16,
        user: &str,
        path: &str,
        private_key: &str,
        host_key: &str,
    ) -> Result<SftpBackend, BackupError> {
        let location = format!("sftp://{user}@{host}:{port}{path}");
        let fail = |detail: String| BackupError::Backend { location: location.clone(), detail };
        let expected = PublicKey::from_openssh(host_key.trim()).map_err(|e| {
            BackupError::Invalid(format!(
                "the host key registered for {location} is not an OpenSSH public key ({e}); give it as in known_hosts without the host name, e.g. `ssh-ed25519 AAAA...`"
            ))
        })?;
        let key = russh::keys::decode_secret_key(private_key, None).map_err(|e| {
            BackupError::Invalid(format!(
                "the private key registered for {location} cannot be read ({e}); give an unencrypted OpenSSH private key"
            ))
        })?;
        let shown = Arc::new(Mutex::new(None));
        let check = HostKeyCheck { expected, shown: shown.clone() };
        let config =
            Arc::new(russh::client::Config { keepalive_interval: Some(Duration::from_secs(30)), ..Default::default() });
        let connect = async {
            let mut ssh = match russh::client::connect(config, (host, port), check).await {
                Ok(ssh) => ssh,
                Err(e) => {
                    let shown = shown.lock().ok().and_then(|s| s.clone());
                    return Err(match (e, shown) {
                        (russh::Error::UnknownKey, Some(shown)) => BackupError::HostKey {
                            location: location.clone(),
                            shown,
                            expected: host_key.trim().to_string(),
                        },
                        (e, _) => fail(format!("cannot connect: {e}")),
                    });
                }
            };
            let hash = ssh.best_supported_rsa_hash().await.map_err(|e| fail(format!("cannot log in: {e}")))?.flatten();
            let auth = ssh
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(|e| fail(format!("cannot log in: {e}")))?;
            if !auth.success() {
                return Err(fail(format!(
                    "the server refused the repository's key for user {user}; add its public key to that user's authorized_keys"
                )));
            }
            let channel = ssh.channel_open_session().await.map_err(|e| fail(format!("cannot open a session: {e}")))?;
            channel
                .request_subsystem(true, "sftp")
                .await
                .map_err(|e| fail(format!("the server offers no SFTP: {e}")))?;
            let sftp =
                SftpSession::new(channel.into_stream()).await.map_err(|e| fail(format!("cannot start SFTP: {e}")))?;
            Ok((ssh, sftp))
        };
        let (ssh, sftp) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| fail(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))??;
        let root = path.trim_end_matches('/').to_string();
        let b = SftpBackend { sftp, _ssh: ssh, root, location, made_dirs: Mutex::default() };
        b.make_dirs("").await?;
        Ok(b)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> BackupError {
        BackupError::Backend { location: self.location.clone(), detail: format!("cannot {what}: {e}") }
    }

    fn path(&self, key: &str) -> String {
        if key.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{key}", self.root)
        }
    }

    /// Create the directory `rel` (relative to the root) and its parents.
    async fn make_dirs(&self, rel: &str) -> Result<(), BackupError> {
        if self.made_dirs.lock().map(|d| d.contains(rel)).unwrap_or(false) {
            return Ok(());
        }
        let full = self.path(rel);
        let mut at = String::new();
        for part in full.split('/') {
            if part.is_empty() {
                at.push('/');
                continue;
            }
            if !at.is_empty() && !at.ends_with('/') {
                at.push('/');
            }
            at.push_str(part);
            match self.sftp.metadata(at.as_str()).await {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => return Err(self.err(&format!("use {at} as a directory"), "it is a file")),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(self.err(&format!("look at {at}"), e)),
            }
            if let Err(e) = self.sftp.create_dir(at.as_str()).await {
                // Another writer may have made it meanwhile.
                if !self.sftp.try_exists(at.as_str()).await.unwrap_or(false) {
                    return Err(self.err(&format!("create the directory {at}"), e));
                }
            }
        }
        if let Ok(mut d) = self.made_dirs.lock() {
            d.insert(rel.to_string());
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for SftpBackend {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), BackupError> {
        let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
        self.make_dirs(dir).await?;
        let target = self.path(key);
        let tmp = self.path(&format!(
            "{}.{name}.tmp-{}",
            if dir.is_empty() { String::new() } else { format!("{dir}/") },
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let write = async {
            let mut f = self.sftp.create(tmp.as_str()).await?;
            f.write_all(&data).await?;
            f.shutdown().await?;
            Ok::<_, russh_sftp::client::error::Error>(())
        };
        if let Err(e) = write.await {
            let _ = self.sftp.remove_file(tmp.as_str()).await;
            return Err(self.err(&format!("write {key}"), e));
        }
        if let Err(e) = self.sftp.rename(tmp.as_str(), target.as_str()).await {
            let exists = self.sftp.try_exists(target.as_str()).await.unwrap_or(false);
            if exists && key.starts_with("chunks/") {
                let _ = self.sftp.remove_file(tmp.as_str()).await;
                return Ok(());
            }
            let retried = if exists {
                match self.sftp.remove_file(target.as_str()).await {
                    Ok(()) => self.sftp.rename(tmp.as_str(), target.as_str()).await,
                    Err(e) => Err(e),
                }
            } else {
                Err(e)
            };
            if let Err(e) = retried {
                let _ = self.sftp.remove_file(tmp.as_str()).await;
                return Err(self.err(&format!("rename {key} into place"), e));
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        match self.sftp.read(self.path(key)).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.err(&format!("read {key}"), e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        self.sftp.try_exists(self.path(key)).await.map_err(|e| self.err(&format!("look for {key}"), e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i + 1],
            None => "",
        };
        let mut out = Vec::new();
        let mut stack = vec![base.to_string()];
        while let Some(key) = stack.pop() {
            let dir = self.path(key.trim_end_matches('/'));
            let entries = match self.sftp.read_dir(dir.as_str()).await {
                Ok(rd) => rd,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(self.err(&format!("list {dir}"), e)),
            };
            for entry in entries {
                let name = entry.file_name();
                if name.starts_with('.') {
                    continue; // ".", "..", and temporary files
                }
                let k = format!("{key}{name}");
                let meta = entry.metadata();
                if meta.is_dir() {
                    let sub = format!("{k}/");
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        stack.push(sub);
                    }
                } else if meta.is_regular() && k.starts_with(prefix) {
                    out.push((k, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), BackupError> {
        match self.sftp.remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(self.err(&format!("delete {key}"), e)),
        }
    }

    fn describe(&self) -> String {
        self.location.clone()
    }
}
