//! Which server certificates a client trusts, and pinning a server's CA
//! by the fingerprint a join token carries: the CA is fetched over a
//! connection that checks nothing, and kept only if its SHA-256 is the
//! expected one. Nothing secret is sent before that check.

use crate::ClientError;
use nubo_api::join::CaFingerprint;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the CA a server's certificate chains to is served.
pub const CA_PATH: &str = "/api/v1/tls/ca.pem";

/// A CA certificate in PEM is a few KiB; a server that sends more is not
/// a Nubo server, and is not read further.
const MAX_CA_BYTES: usize = 64 * 1024;

/// The certificates a client accepts from an `https://` server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The usual public roots, plus the CA certificates in this PEM file
    /// if any (`NUBO_CA_CERT`, `--ca-cert`).
    Public { extra: Option<PathBuf> },
    /// Only the CA certificates in this PEM file: a CA pinned at join.
    Only(PathBuf),
}

impl Trust {
    /// The PEM file of extra roots, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Trust::Public { extra } => extra.as_deref(),
            Trust::Only(path) => Some(path),
        }
    }
}

/// Adds the certificates of `trust` to `builder`.
pub(crate) fn configure(
    mut builder: reqwest::ClientBuilder,
    trust: &Trust,
) -> Result<reqwest::ClientBuilder, ClientError> {
    if let Trust::Only(_) = trust {
        builder = builder.tls_built_in_root_certs(false);
    }
    if let Some(path) = trust.file() {
        let ca_error = |detail: String| ClientError::CaCert { path: path.display().to_string(), detail };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    Ok(builder)
}

/// The URLs in `list` (one, or several separated by commas) that are
/// plain `http://` to a host other than this machine's loopback: there,
/// tokens and credentials would cross a network in clear.
pub fn plain_http_beyond_loopback(list: &str) -> Vec<String> {
    crate::server_list(list)
        .into_iter()
        .filter(|u| match reqwest::Url::parse(u) {
            Ok(url) => {
                let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                url.scheme() == "http" && !loopback
            }
            // Not a URL at all: the request itself will say so.
            Err(_) => false,
        })
        .collect()
}

/// The fingerprints of the certificates in PEM text (other sections are
/// ignored).
pub fn pem_fingerprints(pem: &[u8]) -> Result<Vec<CaFingerprint>, String> {
    let sections = pem::parse_many(pem).map_err(|e| e.to_string())?;
    Ok(sections.iter().filter(|s| s.tag() == "CERTIFICATE").map(|s| CaFingerprint::of_der(s.contents())).collect())
}

/// Fetches the CA of the server at `base` (one URL) and returns it in
/// PEM if its fingerprint is `expected`. The connection checks no
/// certificate, since the CA to check it with is what is being fetched;
/// the fingerprint is what makes the answer trustworthy, and nothing but
/// the request line crosses before it is checked.
pub async fn fetch_pinned_ca(base: &str, expected: CaFingerprint) -> Result<String, ClientError> {
    let url = format!("{}{CA_PATH}", base.trim_end_matches('/'));
    if !url.starts_with("https://") {
        return Err(ClientError::Input(format!(
            "the join token names the server's CA, so the server serves HTTPS: use --server https://{}",
            base.split_once("://").map_or(base, |(_, rest)| rest)
        )));
    }
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| ClientError::Transport { url: url.clone(), source })?;
    let mut resp = http.get(&url).send().await.map_err(|source| crate::transport(&url, source))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| crate::transport(&url, source))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_CA_BYTES {
            return Err(ClientError::Decode {
                url,
                detail: format!("the CA is larger than {MAX_CA_BYTES} bytes; is this a Nubo server?"),
            });
        }
    }
    if !status.is_success() {
        return Err(crate::api_error(status.as_u16(), &body));
    }
    let sections = pem::parse_many(&body)
        .map_err(|e| ClientError::Decode { url: url.clone(), detail: format!("the CA is not PEM: {e}") })?;
    let mut found = Vec::new();
    for s in sections.iter().filter(|s| s.tag() == "CERTIFICATE") {
        let fp = CaFingerprint::of_der(s.contents());
        if fp == expected {
            // Only the matching certificate is kept: anything else the
            // server sent along is not vouched for by the token.
            let unix = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
            return Ok(pem::encode_config(&pem::Pem::new("CERTIFICATE", s.contents()), unix));
        }
        found.push(fp.to_string());
    }
    Err(ClientError::CaFingerprint {
        url: base.to_string(),
        expected: expected.to_string(),
        found: if found.is_empty() { "no certificate".to_string() } else { found.join(", ") },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_of_certificate_sections_only() {
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", b"der-1".to_vec()));
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", b"key".to_vec()));
        let fps = pem_fingerprints(format!("{key}{cert}").as_bytes()).expect("pem");
        assert_eq!(fps, vec![CaFingerprint::of_der(b"der-1")]);
        assert!(pem_fingerprints(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn plain_http_is_flagged_only_beyond_loopback() {
        let list = "http://127.0.0.1:8780, http://localhost:1,http://[::1]:2,https://10.0.0.1:3,http://10.0.0.1:4/";
        assert_eq!(plain_http_beyond_loopback(list), vec!["http://10.0.0.1:4".to_string()]);
        assert_eq!(plain_http_beyond_loopback("http://0.0.0.0:8780"), vec!["http://0.0.0.0:8780".to_string()]);
        assert!(plain_http_beyond_loopback("https://nubo.example:8780").is_empty());
    }

    #[tokio::test]
    async fn fetching_over_plain_http_is_refused_before_connecting() {
        let fp = CaFingerprint::of_der(b"x");
        // Port 9 on loopback: nothing is sent, the URL alone is refused.
        let err = fetch_pinned_ca("http://127.0.0.1:9", fp).await.expect_err("plain http");
        assert!(err.to_string().contains("https://127.0.0.1:9"), "{err}");
    }
}
