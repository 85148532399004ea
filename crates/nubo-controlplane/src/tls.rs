//! HTTPS for the control plane (`nubo server --tls`, `nubo up --tls`).
//!
//! Either the operator names a certificate chain and its key
//! (`--tls-cert`, `--tls-key`), or Nubo makes its own in DATA_DIR/tls on
//! the first start: a private CA (`ca.pem`, `ca-key.pem`) and a server
//! certificate signed by it (`server.pem`, `server-key.pem`) for
//! `localhost`, `127.0.0.1`, `::1` and the listen address (plus the
//! machine's host name when listening on all addresses). Later starts
//! reuse them; only the server certificate is issued again, when it does
//! not cover the listen address, was not signed by the CA, does not match
//! its key, or expires within 30 days. Clients trust the CA through
//! `NUBO_CA_CERT`, which admin.env sets. Keys are written with mode 0600.
//! The crypto provider is ring.
//!
//! A generated CA is also what new hosts pin: join tokens carry its
//! SHA-256 fingerprint ([`ServedCa`]), and the server hands out the CA
//! itself at `GET /api/v1/tls/ca.pem` for agents to check against it.

use anyhow::{anyhow, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Lifetime of a generated CA.
const CA_DAYS: i64 = 3650;
/// Lifetime of a generated server certificate.
const SERVER_DAYS: i64 = 825;
/// A generated certificate this close to expiry is issued again.
const RENEW_DAYS: i64 = 30;

/// The certificate files an HTTPS server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// The generated CA clients should trust; `None` for operator-provided files.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Files the operator provides (`--tls-cert`, `--tls-key`); no CA is made.
    pub fn provided(cert: PathBuf, key: PathBuf) -> Self {
        Self { cert, key, ca: None }
    }

    /// Nubo's own CA and server certificate in DATA_DIR/tls, made on the
    /// first start and reused afterwards (see the module's documentation).
    pub fn generated(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<Self> {
        let dir = data_dir.join("tls");
        create_private_dir(&dir)?;
        let (ca_pem, ca_key, ca_is_new) = ensure_ca(&dir)?;
        ensure_server_cert(&dir, &ca_pem, ca_key, ca_is_new, &names_for(listen))?;
        Ok(Self { cert: dir.join("server.pem"), key: dir.join("server-key.pem"), ca: Some(dir.join("ca.pem")) })
    }

    /// What to tell the operator when these files are unusable.
    fn remedy(&self) -> String {
        match (&self.ca, self.cert.parent()) {
            (Some(_), Some(dir)) => format!("remove {} to have new ones generated", dir.display()),
            _ => "check --tls-cert and --tls-key".to_string(),
        }
    }

    /// Loads the files into a rustls server configuration (HTTP/2 and HTTP/1.1).
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        install_crypto_provider();
        let cert_pem = std::fs::read(&self.cert)
            .with_context(|| format!("cannot read the TLS certificate {}; {}", self.cert.display(), self.remedy()))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("{} is not a PEM certificate file ({e}); {}", self.cert.display(), self.remedy()))?;
        if chain.is_empty() {
            anyhow::bail!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); {}",
                self.cert.display(),
                self.remedy()
            );
        }
        let key_pem = std::fs::read(&self.key)
            .with_context(|| format!("cannot read the TLS key {}; {}", self.key.display(), self.remedy()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow!(
                "{} holds no usable PEM private key ({e}); the key must be unencrypted PKCS#8, PKCS#1 or SEC1; {}",
                self.key.display(),
                self.remedy()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                anyhow!(
                    "cannot serve the certificate {} with the key {}: {e}; is it the certificate's key? ({})",
                    self.cert.display(),
                    self.key.display(),
                    self.remedy()
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The CA a server made for itself, as it is handed to new hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedCa {
    /// The CA certificate in PEM (`GET /api/v1/tls/ca.pem`).
    pub pem: String,
    /// SHA-256 of its DER, carried by every join token.
    pub fingerprint: nubo_api::join::CaFingerprint,
}

impl ServedCa {
    /// Reads the CA certificate at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let remedy = format!("remove {} to make a new CA", path.parent().unwrap_or(path).display());
        let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read {}; {remedy}", path.display()))?;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| anyhow!("{} is not a PEM certificate ({e}); {remedy}", path.display()))?;
        Ok(Self { fingerprint: nubo_api::join::CaFingerprint::of_der(&der), pem })
    }
}

/// Makes ring the process's default rustls provider, so that no rustls
/// user in the process panics for want of one. Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The names a generated server certificate covers for `listen`.
pub fn names_for(listen: SocketAddr) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    let ip = listen.ip();
    names.push(ip.to_string());
    if ip.is_unspecified() {
        // Listening on every address: remote agents most likely use the host name.
        if let Some(host) = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_lowercase()) {
            if is_dns_name(&host) {
                names.push(host);
            }
        }
    }
    let mut seen = BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| {
        format!("cannot create {}; check the permissions of the data directory (--data-dir)", dir.display())
    })
}

/// Writes `contents` to `path` with `mode`, through a temporary file, so
/// a crash never leaves half a key behind.
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}; check the permissions of its directory", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}; is the disk full?", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clients whose clock is behind.
    (now - time::Duration::days(1), now + time::Duration::days(days))
}

fn cert_error(path: &Path, what: &str) -> anyhow::Error {
    anyhow!("cannot generate the TLS certificate {}: {what}", path.display())
}

/// Loads the CA, or makes one if DATA_DIR/tls has none. Returns its PEM,
/// its key, and whether it is new.
fn ensure_ca(dir: &Path) -> anyhow::Result<(String, KeyPair, bool)> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    let remedy = format!("remove {} to make a new CA (clients then need the new ca.pem)", dir.display());
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("cannot read {}; {remedy}", cert_path.display()))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}; {remedy}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| anyhow!("{} is not a usable private key ({e}); {remedy}", key_path.display()))?;
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| anyhow!("{} is not a PEM certificate ({e}); {remedy}", cert_path.display()))?;
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| anyhow!("{} is not a valid certificate ({e}); {remedy}", cert_path.display()))?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                anyhow::bail!("{} does not belong to {}; {remedy}", key_path.display(), cert_path.display());
            }
            if cert.validity().not_after.timestamp() <= now_secs() {
                anyhow::bail!("the CA {} has expired; {remedy}", cert_path.display());
            }
            Ok((pem, key, false))
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(|e| cert_error(&cert_path, &e.to_string()))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::OrganizationName, "Nubo");
            dn.push(DnType::CommonName, "Nubo CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            (params.not_before, params.not_after) = validity(CA_DAYS);
            let cert = params.self_signed(&key).map_err(|e| cert_error(&cert_path, &e.to_string()))?;
            write_file(&key_path, &key.serialize_pem(), 0o600)?;
            write_file(&cert_path, &cert.pem(), 0o644)?;
            tracing::info!(ca = %cert_path.display(), "generated a CA for the API's certificate");
            Ok((cert.pem(), key, true))
        }
        (has_cert, _) => {
            let (present, missing) = if has_cert { (&cert_path, &key_path) } else { (&key_path, &cert_path) };
            anyhow::bail!("{} exists but {} does not; restore it, or {remedy}", present.display(), missing.display())
        }
    }
}

/// Why the server certificate in `dir` cannot be reused, and the names it
/// covers (if it was ours), or `Ok` if it can.
fn check_server_cert(dir: &Path, ca_pem: &str, names: &[String]) -> Result<(), (String, Vec<String>)> {
    let cert_pem =
        std::fs::read(dir.join("server.pem")).map_err(|e| (format!("cannot read server.pem: {e}"), vec![]))?;
    let key_pem = std::fs::read_to_string(dir.join("server-key.pem"))
        .map_err(|e| (format!("cannot read server-key.pem: {e}"), vec![]))?;
    let der = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| (format!("server.pem: {e}"), vec![]))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| (format!("server.pem: {e}"), vec![]))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| (format!("ca.pem: {e}"), vec![]))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| (format!("ca.pem: {e}"), vec![]))?;
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Err(("it was not signed by the current CA".into(), vec![]));
    }
    let mut covered: Vec<String> = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => covered.push(d.to_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*b).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    covered.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let key = KeyPair::from_pem(&key_pem).map_err(|e| (format!("server-key.pem: {e}"), covered.clone()))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(("server-key.pem does not belong to server.pem".into(), covered));
    }
    if cert.validity().not_after.timestamp() <= now_secs() + RENEW_DAYS * 86400 {
        return Err(("it expires soon".into(), covered));
    }
    let missing: Vec<&String> = names.iter().filter(|n| !covered.contains(n)).collect();
    if !missing.is_empty() {
        let list = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        return Err((format!("it does not cover {list}"), covered));
    }
    Ok(())
}

/// Reuses DATA_DIR/tls/server.pem if it still fits, else issues a new one
/// for `names` (and the names the old one covered).
fn ensure_server_cert(
    dir: &Path,
    ca_pem: &str,
    ca_key: KeyPair,
    ca_is_new: bool,
    names: &[String],
) -> anyhow::Result<()> {
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    let (reason, mut all) = if ca_is_new {
        ("the CA is new".to_string(), vec![])
    } else if !cert_path.exists() {
        ("there is none".to_string(), vec![])
    } else {
        match check_server_cert(dir, ca_pem, names) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        }
    };
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(|e| {
        anyhow!(
            "cannot sign with the CA {}: {e}; remove {} to make a new CA",
            dir.join("ca.pem").display(),
            dir.display()
        )
    })?;
    let key = KeyPair::generate().map_err(|e| cert_error(&cert_path, &e.to_string()))?;
    let mut params = CertificateParams::new(all.clone()).map_err(|e| cert_error(&cert_path, &e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Nubo");
    dn.push(DnType::CommonName, "Nubo API");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(SERVER_DAYS);
    let cert = params.signed_by(&key, &issuer).map_err(|e| cert_error(&cert_path, &e.to_string()))?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    tracing::info!(cert = %cert_path.display(), names = %all.join(","), %reason, "issued the API's TLS certificate");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn generates_once_then_reuses_and_reissues_for_new_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::generated(dir.path(), listen("127.0.0.1:8780")).expect("generate");
        let tls = dir.path().join("tls");
        assert_eq!(files.ca.as_deref(), Some(tls.join("ca.pem").as_path()));
        assert_eq!(mode(&tls.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&tls.join("server-key.pem")), 0o600);
        assert_eq!(mode(&tls), 0o700);
        files.server_config().expect("server config");
        let served = ServedCa::load(&tls.join("ca.pem")).expect("served CA");
        let der = CertificateDer::from_pem_slice(served.pem.as_bytes()).expect("der");
        assert_eq!(served.fingerprint, nubo_api::join::CaFingerprint::of_der(&der));
        let (ca, server) = (read(&tls.join("ca.pem")), read(&tls.join("server.pem")));

        // Same address: nothing changes.
        TlsFiles::generated(dir.path(), listen("127.0.0.1:9999")).expect("reuse");
        assert_eq!(read(&tls.join("ca.pem")), ca);
        assert_eq!(read(&tls.join("server.pem")), server);

        // A new address: same CA, new server certificate covering old and new names.
        TlsFiles::generated(dir.path(), listen("10.1.2.3:8780")).expect("reissue");
        assert_eq!(read(&tls.join("ca.pem")), ca);
        assert_ne!(read(&tls.join("server.pem")), server);
        let ca_pem = String::from_utf8(ca).expect("utf-8");
        check_server_cert(&tls, &ca_pem, &names_for(listen("10.1.2.3:1"))).expect("covers the new address");
        check_server_cert(&tls, &ca_pem, &names_for(listen("127.0.0.1:1"))).expect("still covers loopback");
    }

    #[test]
    fn a_broken_server_cert_is_replaced_but_a_half_ca_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        TlsFiles::generated(dir.path(), listen("127.0.0.1:1")).expect("generate");
        let tls = dir.path().join("tls");
        std::fs::write(tls.join("server.pem"), "garbage").expect("write");
        TlsFiles::generated(dir.path(), listen("127.0.0.1:1")).expect("replaces server.pem");
        TlsFiles::generated(dir.path(), listen("127.0.0.1:1")).expect("again").server_config().expect("usable");
        std::fs::remove_file(tls.join("ca-key.pem")).expect("rm");
        let err = TlsFiles::generated(dir.path(), listen("127.0.0.1:1")).expect_err("half a CA").to_string();
        assert!(err.contains("ca-key.pem") && err.contains("remove"), "{err}");
    }

    #[test]
    fn provided_files_that_do_not_exist_say_which_flag() {
        let files = TlsFiles::provided("/nonexistent/cert.pem".into(), "/nonexistent/key.pem".into());
        let err = format!("{:#}", files.server_config().expect_err("missing file"));
        assert!(err.contains("/nonexistent/cert.pem") && err.contains("--tls-cert"), "{err}");
    }

    #[test]
    fn unspecified_listen_adds_the_host_name() {
        let names = names_for(listen("0.0.0.0:1"));
        assert!(names.iter().any(|n| n == "0.0.0.0") && names.iter().any(|n| n == "localhost"), "{names:?}");
        assert!(is_dns_name("node-1.example.org") && !is_dns_name("bad name") && !is_dns_name(""));
    }
}
