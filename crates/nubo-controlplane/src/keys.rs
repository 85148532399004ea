//! SSH key pairs: parsing and checking imported OpenSSH public keys, and
//! generating Ed25519 pairs (with the `ssh-key` crate) whose private half
//! is handed to the user once and never stored.

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

/// A checked public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedKey {
    /// `ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, ...
    pub key_type: String,
    /// `SHA256:...` as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// One line: type, base64 data and the comment (if any).
    pub line: String,
}

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// the key is not an OpenSSH public key
    #[error("this is not an OpenSSH public key ({0}); give one line like 'ssh-ed25519 AAAA... you@host', e.g. the contents of ~/.ssh/id_ed25519.pub")]
    NotOpenSsh(String),
    /// private key given by mistake
    #[error(
        "this looks like a private key; import the PUBLIC key (the .pub file) and keep the private key to yourself"
    )]
    Private,
    /// an RSA key that is too short
    #[error("RSA keys must have at least 2048 bits; this one has {0}")]
    WeakRsa(u32),
    #[error("cannot generate a key pair: {0}")]
    Generate(String),
}

/// Parses and checks an OpenSSH public key line.
pub fn check_public_key(text: &str) -> Result<CheckedKey, KeyError> {
    let text = text.trim();
    if text.contains("PRIVATE KEY") {
        return Err(KeyError::Private);
    }
    if text.lines().count() != 1 || text.len() > 16 * 1024 {
        return Err(KeyError::NotOpenSsh("expected exactly one line".into()));
    }
    let key = PublicKey::from_openssh(text).map_err(|e| KeyError::NotOpenSsh(e.to_string()))?;
    if let ssh_key::public::KeyData::Rsa(rsa) = key.key_data() {
        let bits = rsa.n.as_positive_bytes().map(|b| b.len() as u32 * 8).unwrap_or(0);
        if bits < 2048 {
            return Err(KeyError::WeakRsa(bits));
        }
    }
    describe(&key)
}

fn describe(key: &PublicKey) -> Result<CheckedKey, KeyError> {
    let line = key.to_openssh().map_err(|e| KeyError::NotOpenSsh(e.to_string()))?;
    Ok(CheckedKey {
        key_type: key.algorithm().as_str().to_string(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        line,
    })
}

/// Generates an Ed25519 pair; returns the public key and the private key
/// in OpenSSH format (unencrypted: the user keeps it, with mode 0600).
pub fn generate(comment: &str) -> Result<(CheckedKey, String), KeyError> {
    let mut rng = rand::rngs::OsRng;
    let mut private =
        PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|e| KeyError::Generate(e.to_string()))?;
    private.set_comment(comment);
    let pem = private.to_openssh(LineEnding::LF).map_err(|e| KeyError::Generate(e.to_string()))?;
    let public = describe(private.public_key())?;
    Ok((public, pem.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_round_trip() {
        let (public, private) = generate("web@nubo").expect("generate");
        assert_eq!(public.key_type, "ssh-ed25519");
        assert!(public.fingerprint.starts_with("SHA256:"));
        assert!(public.line.starts_with("ssh-ed25519 AAAA") && public.line.ends_with(" web@nubo"));
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let again = check_public_key(&public.line).expect("own key imports");
        assert_eq!(again, public);
    }

    #[test]
    fn refuses_what_is_not_a_public_key() {
        for text in ["", "hello", "ssh-ed25519 notbase64!!", "ssh-ed25519 AAAA a\nssh-ed25519 AAAA b"] {
            assert!(matches!(check_public_key(text), Err(KeyError::NotOpenSsh(_))), "{text:?}");
        }
        let (_, private) = generate("x").expect("generate");
        assert!(matches!(check_public_key(&private), Err(KeyError::Private)));
        let msg = check_public_key("garbage").unwrap_err().to_string();
        assert!(msg.contains("id_ed25519.pub"), "{msg}");
    }
}
