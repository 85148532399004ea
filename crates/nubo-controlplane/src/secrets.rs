//! Secrets the server must be able to read back (access-key secrets, which
//! are HMAC keys for SigV4): sealed with ChaCha20-Poly1305 under a 256-bit
//! key kept in DATA_DIR/secret.key (0600), so the database alone does not
//! reveal them.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the server key {path}: {detail}; check the data directory's permissions")]
    Key { path: String, detail: String },
    #[error("a sealed secret is damaged or was sealed with another server key")]
    Unseal,
}

pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// Loads DATA_DIR/secret.key, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = data_dir.join("secret.key");
        let err = |e: std::io::Error| SecretError::Key { path: path.display().to_string(), detail: e.to_string() };
        let key: [u8; 32] = match std::fs::read(&path) {
            Ok(bytes) => bytes.as_slice().try_into().map_err(|_| SecretError::Key {
                path: path.display().to_string(),
                detail: format!("it holds {} bytes, expected 32", bytes.len()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(err)?;
                f.write_all(&key).map_err(err)?;
                key
            }
            Err(e) => return Err(err(e)),
        };
        Ok(Self { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    /// hex(nonce || ciphertext+tag)
    pub fn seal(&self, plain: &str) -> String {
        let nonce: [u8; 12] = rand::random();
        // Encryption with a fresh nonce cannot fail for inputs this small.
        let ct = self.cipher.encrypt(Nonce::from_slice(&nonce), plain.as_bytes()).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        hex::encode(out)
    }

    pub fn unseal(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = hex::decode(sealed).map_err(|_| SecretError::Unseal)?;
        if bytes.len() < 12 + 16 {
            return Err(SecretError::Unseal);
        }
        let (nonce, ct) = bytes.split_at(12);
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), ct).map_err(|_| SecretError::Unseal)?;
        String::from_utf8(plain).map_err(|_| SecretError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seals_and_unseals_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let s = super::Sealer::load_or_create(dir.path()).unwrap();
        let sealed = s.seal("wJalrXUtnFEMI/K7MDENG");
        assert!(!sealed.contains("wJalr"));
        assert_eq!(s.unseal(&sealed).unwrap(), "wJalrXUtnFEMI/K7MDENG");
        // Same key after a restart.
        let again = super::Sealer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.unseal(&sealed).unwrap(), "wJalrXUtnFEMI/K7MDENG");
        let mut bad = sealed.clone();
        bad.replace_range(30..32, if &sealed[30..32] == "00" { "11" } else { "00" });
        assert!(s.unseal(&bad).is_err());
        let other = tempfile::tempdir().unwrap();
        assert!(super::Sealer::load_or_create(other.path()).unwrap().unseal(&sealed).is_err());
    }
}
