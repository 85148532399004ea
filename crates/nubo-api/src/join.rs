//! The text of a join token, shared by the server that mints it and the
//! agent that uses it: the one-time secret, and (from a server with a CA
//! of its own) the SHA-256 fingerprint of that CA's certificate, so that
//! a new host can check it talks to the right server before it sends the
//! secret. `SECRET.ca-sha256-HEX`; a bare `SECRET` is the older form.

use sha2::{Digest, Sha256};
use std::fmt;

/// What separates the secret from the CA's fingerprint.
const SEPARATOR: &str = ".ca-sha256-";

/// The SHA-256 of a certificate's DER encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint([u8; 32]);

impl CaFingerprint {
    /// The fingerprint of the certificate `der` (DER-encoded).
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for CaFingerprint {
    type Err = JoinTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| JoinTokenError::Fingerprint)?;
        Ok(Self(bytes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("the join token is empty: pass the whole token `nubo server` or `nubo host join-token` printed")]
    Empty,
    #[error(
        "the join token's CA fingerprint is not 64 hexadecimal digits: pass the whole token `nubo server` or \
         `nubo host join-token` printed"
    )]
    Fingerprint,
}

/// A join token, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// What the server checks (and the only part it stores, hashed).
    pub secret: String,
    /// The CA the server's certificate chains to; `None` in tokens of
    /// servers without a CA of their own (plain HTTP on loopback, an
    /// operator's certificate) and of older versions.
    pub ca_fingerprint: Option<CaFingerprint>,
}

impl JoinToken {
    pub fn new(secret: String, ca_fingerprint: Option<CaFingerprint>) -> Self {
        Self { secret, ca_fingerprint }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_fingerprint {
            Some(fp) => write!(f, "{}{SEPARATOR}{fp}", self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

impl std::str::FromStr for JoinToken {
    type Err = JoinTokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (secret, ca_fingerprint) = match s.split_once(SEPARATOR) {
            Some((secret, fp)) => (secret, Some(fp.parse()?)),
            None => (s, None),
        };
        if secret.is_empty() {
            return Err(JoinTokenError::Empty);
        }
        Ok(Self { secret: secret.to_string(), ca_fingerprint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_a_fingerprint() {
        let fp = CaFingerprint::of_der(b"a certificate");
        let t = JoinToken::new("nubo_abc".into(), Some(fp));
        let text = t.to_string();
        assert_eq!(text, format!("nubo_abc.ca-sha256-{fp}"));
        assert_eq!(text.parse::<JoinToken>(), Ok(t));
        assert_eq!(format!(" {text}\n").parse::<JoinToken>().map(|t| t.ca_fingerprint), Ok(Some(fp)));
        let old: JoinToken = "nubo_abc".parse().expect("old form");
        assert_eq!(old, JoinToken::new("nubo_abc".into(), None));
        assert_eq!(old.to_string(), "nubo_abc");
    }

    #[test]
    fn a_damaged_fingerprint_or_empty_token_is_refused() {
        assert_eq!("nubo_abc.ca-sha256-12ab".parse::<JoinToken>(), Err(JoinTokenError::Fingerprint));
        let zz = format!("nubo_abc.ca-sha256-{}", "z".repeat(64));
        assert_eq!(zz.parse::<JoinToken>(), Err(JoinTokenError::Fingerprint));
        assert_eq!("  ".parse::<JoinToken>(), Err(JoinTokenError::Empty));
        assert!(JoinTokenError::Fingerprint.to_string().contains("nubo host join-token"));
    }

    #[test]
    fn fingerprint_is_the_sha256_of_the_der() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        let fp = CaFingerprint::of_der(b"abc");
        assert_eq!(fp.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(fp.to_string().parse::<CaFingerprint>(), Ok(fp));
    }
}
