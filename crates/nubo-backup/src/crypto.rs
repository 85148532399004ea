//! The repository's cryptography: the subkeys derived from a [`RepoKey`],
//! chunk names, sealing and opening objects, and the key check kept in
//! `config`.
//!
//! Two subkeys come from the repository key through HMAC-SHA256 with fixed
//! labels, so the key that names chunks is never the key that encrypts
//! them. A chunk's name is HMAC-SHA256(id key, plain content): equal
//! content gives equal names (deduplication) while a name says nothing of
//! the content to whoever reads the repository without the key.
//!
//! An object is `version byte || 12-byte random nonce ||
//! ChaCha20-Poly1305(encoding byte || body)`, with the object's key (its
//! path in the repository) as associated data, so an object copied to
//! another name fails to open rather than being read as something else.
//! The body is zstd at level 1 when that is smaller, else the plain bytes:
//! level 1 compresses at several hundred MB/s per core, fast enough that a
//! first backup runs near disk speed on the cores hosts have spare, and
//! disk chunks that compress at all (zeros in part, text, binaries) shrink
//! nearly as much as at level 3; random data is stored as is instead of
//! growing.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::RepoKey;

/// The format of sealed objects this build writes and reads.
pub const OBJECT_VERSION: u8 = 1;
/// zstd level: see the module doc for why 1.
pub const ZSTD_LEVEL: i32 = 1;

const ENCODING_PLAIN: u8 = 0;
const ENCODING_ZSTD: u8 = 1;
const NONCE_LEN: usize = 12;

/// Why an object could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("object format version {0} is unknown to this build")]
    Version(u8),
    #[error("object is too short ({0} bytes)")]
    Short(usize),
    #[error("authentication failed (another key, or the object was altered)")]
    Auth,
    #[error("unknown body encoding {0}")]
    Encoding(u8),
    #[error("decompression failed: {0}")]
    Decompress(String),
}

/// The subkeys of one repository key.
pub struct Keys {
    cipher: ChaCha20Poly1305,
    id: Hmac<Sha256>,
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: new_from_slice cannot fail here.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master).unwrap_or_else(|_| unreachable!());
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl Keys {
    pub fn new(key: &RepoKey) -> Keys {
        let enc = derive(&key.0, b"nubo-backup v1 encryption");
        let id = derive(&key.0, b"nubo-backup v1 chunk id");
        Keys {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&enc)),
            id: <Hmac<Sha256> as Mac>::new_from_slice(&id).unwrap_or_else(|_| unreachable!()),
        }
    }

    /// The name of a chunk with content `plain`.
    pub fn chunk_name(&self, plain: &[u8]) -> [u8; 32] {
        let mut mac = self.id.clone();
        mac.update(plain);
        mac.finalize().into_bytes().into()
    }

    /// Compress (when it pays) and encrypt `plain` as the object at `key`.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(plain.len() + 1);
        match zstd::bulk::compress(plain, ZSTD_LEVEL) {
            Ok(z) if z.len() < plain.len() => {
                body.push(ENCODING_ZSTD);
                body.extend_from_slice(&z);
            }
            _ => {
                body.push(ENCODING_PLAIN);
                body.extend_from_slice(plain);
            }
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len() + 16);
        out.push(OBJECT_VERSION);
        out.extend_from_slice(&nonce);
        // Encryption with a valid key and nonce fails only for inputs
        // larger than ChaCha20's 256 GiB limit, which no object nears.
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &body, aad: key.as_bytes() })
            .unwrap_or_default();
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypt and decompress the object at `key`. `max` bounds the
    /// decompressed size (a chunk is never larger than CHUNK_SIZE).
    pub fn open(&self, key: &str, object: &[u8], max: usize) -> Result<Vec<u8>, OpenError> {
        if object.len() < 1 + NONCE_LEN + 16 + 1 {
            return Err(OpenError::Short(object.len()));
        }
        if object[0] != OBJECT_VERSION {
            return Err(OpenError::Version(object[0]));
        }
        let nonce = Nonce::from_slice(&object[1..1 + NONCE_LEN]);
        let body = self
            .cipher
            .decrypt(nonce, Payload { msg: &object[1 + NONCE_LEN..], aad: key.as_bytes() })
            .map_err(|_| OpenError::Auth)?;
        match body.first().copied() {
            Some(ENCODING_PLAIN) => Ok(body[1..].to_vec()),
            Some(ENCODING_ZSTD) => {
                zstd::bulk::decompress(&body[1..], max).map_err(|e| OpenError::Decompress(e.to_string()))
            }
            Some(other) => Err(OpenError::Encoding(other)),
            None => Err(OpenError::Short(0)),
        }
    }
}

/// The text sealed into `config` as the key check.
pub const KEY_CHECK_TEXT: &[u8] = b"nubo-backup key check";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_random() {
        let keys = Keys::new(&RepoKey([7; 32]));
        let zeros = vec![0u8; 1 << 20];
        let sealed = keys.seal("chunks/ab/x", &zeros);
        assert!(sealed.len() < 4096, "zeros compress: {}", sealed.len());
        assert_eq!(keys.open("chunks/ab/x", &sealed, 1 << 20).unwrap(), zeros);
        let random: Vec<u8> = (0..100_000).map(|_| rand::random::<u8>()).collect();
        let sealed = keys.seal("k", &random);
        assert_eq!(sealed.len(), 1 + 12 + 1 + random.len() + 16, "random data is stored as is");
        assert_eq!(keys.open("k", &sealed, 1 << 20).unwrap(), random);
    }

    #[test]
    fn plain_text_not_in_object() {
        let keys = Keys::new(&RepoKey([1; 32]));
        let plain = b"MARKER-MARKER-MARKER-MARKER".repeat(10);
        let sealed = keys.seal("k", &plain);
        assert!(!sealed.windows(13).any(|w| w == b"MARKER-MARKER"));
    }

    #[test]
    fn wrong_key_refused() {
        let a = Keys::new(&RepoKey([1; 32]));
        let b = Keys::new(&RepoKey([2; 32]));
        let sealed = a.seal("k", b"hello");
        assert_eq!(b.open("k", &sealed, 100), Err(OpenError::Auth));
        assert_ne!(a.chunk_name(b"hello"), b.chunk_name(b"hello"));
        assert_eq!(a.chunk_name(b"hello"), a.chunk_name(b"hello"));
    }

    #[test]
    fn tampered_or_moved_object_refused() {
        let keys = Keys::new(&RepoKey([3; 32]));
        let sealed = keys.seal("k", b"hello world");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(keys.open("k", &bad, 100).is_err(), "flipped byte {i} accepted");
        }
        assert_eq!(keys.open("other", &sealed, 100), Err(OpenError::Auth));
        assert!(matches!(keys.open("k", &sealed[..10], 100), Err(OpenError::Short(10))));
    }

    #[test]
    fn decompression_bounded() {
        let keys = Keys::new(&RepoKey([4; 32]));
        let sealed = keys.seal("k", &vec![0u8; 4096]);
        assert!(matches!(keys.open("k", &sealed, 1024), Err(OpenError::Decompress(_))));
    }
}
