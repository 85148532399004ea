//! Which control-plane certificate this host trusts, settled before it
//! sends any secret (the join token, then its own credential):
//!
//! 1. `--ca-cert FILE` (or NUBO_CA_CERT): that file, on top of the public
//!    roots, as the operator said. A join token's fingerprint must then be
//!    one of its certificates.
//! 2. A CA pinned at an earlier join (DATA_DIR/server-ca.pem): only it.
//! 3. A join token that names the server's CA (`SECRET.ca-sha256-HEX`):
//!    the CA is fetched from the server, kept only if its fingerprint is
//!    that one, and saved as DATA_DIR/server-ca.pem for later starts.
//! 4. Otherwise the public roots (a server with an operator's certificate).
//!
//! Plain `http://` beyond loopback is refused unless `--insecure-http`.

use crate::config::AgentConfig;
use nubo_api::join::JoinToken;
use nubo_client::{ClientError, Trust};
use std::path::PathBuf;
use std::time::Duration;

/// The CA pinned at join, in the agent's data directory.
pub const PINNED_CA_FILE: &str = "server-ca.pem";

/// The pinned CA's path for `config`.
pub fn pinned_ca(config: &AgentConfig) -> PathBuf {
    config.data_dir.join(PINNED_CA_FILE)
}

/// Refuses plain HTTP beyond loopback unless the operator asked for it.
pub fn check_plain_http(config: &AgentConfig) -> anyhow::Result<()> {
    let clear = nubo_client::trust::plain_http_beyond_loopback(&config.server_url);
    if clear.is_empty() {
        return Ok(());
    }
    if config.insecure_http {
        tracing::warn!(
            servers = %clear.join(","),
            "talking to the control plane over plain HTTP beyond loopback (--insecure-http): the join token and this \
             host's credential cross the network in clear"
        );
        return Ok(());
    }
    anyhow::bail!(
        "--server {} is plain HTTP to another machine: the join token and this host's credential would cross the \
         network in clear. Use the server's https:// URL (a server listening beyond loopback serves HTTPS by default), \
         or pass --insecure-http to accept that risk",
        clear.join(",")
    )
}

/// The trust to use (see the module's documentation). `join` is the join
/// token when the host has not joined yet.
pub async fn resolve(config: &AgentConfig, join: Option<&JoinToken>) -> anyhow::Result<Trust> {
    check_plain_http(config)?;
    let expected = join.and_then(|j| j.ca_fingerprint);
    if let Some(path) = &config.ca_cert {
        if let Some(fp) = expected {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read the CA certificate {} (--ca-cert): {e}", path.display()))?;
            let found = nubo_client::trust::pem_fingerprints(&pem)
                .map_err(|e| anyhow::anyhow!("{} (--ca-cert) is not PEM: {e}", path.display()))?;
            if !found.contains(&fp) {
                anyhow::bail!(
                    "the join token names the CA with SHA-256 fingerprint {fp}, but --ca-cert {} holds no such \
                     certificate: the token is for another server. Mint one on this server (`nubo host join-token`), \
                     or leave --ca-cert out and let the agent fetch the CA the token names",
                    path.display()
                );
            }
        }
        return Ok(Trust::Public { extra: Some(path.clone()) });
    }
    let pinned = pinned_ca(config);
    let Some(fp) = expected else {
        if pinned.exists() {
            return Ok(Trust::Only(pinned));
        }
        return Ok(Trust::Public { extra: None });
    };
    // A new join: fetch the CA the token names, from the first server
    // that answers, until one does.
    let servers: Vec<String> =
        config.server_url.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let mut delay = Duration::from_millis(200);
    let pem = 'fetch: loop {
        let mut last = None;
        for server in &servers {
            match nubo_client::trust::fetch_pinned_ca(server, fp).await {
                Ok(pem) => break 'fetch pem,
                // The server cannot be reached (yet): try the next, then again.
                Err(e @ ClientError::Transport { .. }) => last = Some(e),
                Err(e) => anyhow::bail!("cannot join: {e}"),
            }
        }
        if let Some(e) = last {
            tracing::warn!(error = %e, "cannot fetch the server's CA to check it against the join token; retrying");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    crate::identity::write_private(&pinned, &pem)?;
    tracing::info!(ca = %pinned.display(), fingerprint = %fp, "pinned the control plane's CA named by the join token");
    Ok(Trust::Only(pinned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, url: &str, insecure_http: bool) -> AgentConfig {
        AgentConfig {
            server_url: url.into(),
            join_token: None,
            data_dir: dir.to_path_buf(),
            image_cache: dir.join("images"),
            name: "t".into(),
            vcpus: 1,
            memory_mib: 1,
            disk_gib: 1,
            interval: Duration::from_secs(1),
            stop_grace: Duration::from_secs(1),
            ca_cert: None,
            insecure_http,
            metadata_relay: None,
            metrics_interval: Duration::from_secs(1),
            plugin_dirs: vec![],
            network: None,
            migration_address: "127.0.0.1".into(),
            shared_storage: None,
            guard: None,
        }
    }

    #[tokio::test]
    async fn plain_http_beyond_loopback_needs_the_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = resolve(&config(dir.path(), "http://10.1.2.3:8780", false), None).await.expect_err("refused");
        assert!(err.to_string().contains("--insecure-http"), "{err}");
        let ok = resolve(&config(dir.path(), "http://10.1.2.3:8780", true), None).await.expect("allowed");
        assert_eq!(ok, Trust::Public { extra: None });
        let ok = resolve(&config(dir.path(), "http://127.0.0.1:8780", false), None).await.expect("loopback");
        assert_eq!(ok, Trust::Public { extra: None });
    }

    #[tokio::test]
    async fn a_ca_cert_without_the_tokens_ca_is_refused_and_a_pinned_ca_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pem::encode(&pem::Pem::new("CERTIFICATE", b"der".to_vec()))).expect("write");
        let mut c = config(dir.path(), "https://10.1.2.3:8780", false);
        c.ca_cert = Some(ca.clone());
        let other = JoinToken::new("nubo_x".into(), Some(nubo_api::join::CaFingerprint::of_der(b"other")));
        let err = resolve(&c, Some(&other)).await.expect_err("wrong CA");
        assert!(err.to_string().contains("nubo host join-token"), "{err}");
        let right = JoinToken::new("nubo_x".into(), Some(nubo_api::join::CaFingerprint::of_der(b"der")));
        assert_eq!(resolve(&c, Some(&right)).await.expect("its CA"), Trust::Public { extra: Some(ca.clone()) });

        c.ca_cert = None;
        assert_eq!(resolve(&c, None).await.expect("public"), Trust::Public { extra: None });
        std::fs::copy(&ca, pinned_ca(&c)).expect("pin");
        assert_eq!(resolve(&c, None).await.expect("pinned"), Trust::Only(pinned_ca(&c)));
    }
}
