//! Nubo's metrics in an existing time-series engine: samples forwarded
//! through Prometheus' remote-write protocol (`write`), and the inputs of
//! policies, alert rules and charts read back from Prometheus' HTTP query
//! API (`read`). With both, the embedded store (`tsdb`) can be turned off.
//!
//! This module owns the settings ([`MetricsRemoteConfig`]) and the running
//! pair ([`MetricsRemote`]) the store dispatches to; the store's own
//! methods stay in `tsdb`.

pub mod labels;
pub mod prompb;
pub mod read;
pub mod write;

use std::sync::{Arc, OnceLock};

pub use read::Reader;
pub use write::{Writer, WriterStats};

/// Where metrics go besides (or instead of) the embedded store.
/// Remote-write and read URLs are the operator's own receivers: loopback
/// and private addresses are allowed (unlike a tenant's webhook).
#[derive(Debug, Clone)]
pub struct MetricsRemoteConfig {
    /// Prometheus' remote-write endpoint (`http://HOST:9090/api/v1/write`).
    pub remote_write: Option<url::Url>,
    /// Prometheus' base URL (`http://HOST:9090`) to read policy, alert and
    /// chart inputs from instead of the embedded store.
    pub read_from: Option<url::Url>,
    /// Keep samples in the embedded store too (the default). Off requires
    /// `read_from`: something must answer the queries.
    pub embedded: bool,
}

impl Default for MetricsRemoteConfig {
    fn default() -> Self {
        Self { remote_write: None, read_from: None, embedded: true }
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--metrics-store off leaves nothing to answer metric queries: add --metrics-read-from URL (Prometheus' \
         base URL, e.g. http://127.0.0.1:9090), usually with --metrics-remote-write URL to fill it"
    )]
    OffWithoutReader,
    #[error("{what} '{url}' is not an http:// or https:// URL")]
    NotHttp { what: &'static str, url: String },
}

impl MetricsRemoteConfig {
    /// Refuses settings that cannot work, saying what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.embedded && self.read_from.is_none() {
            return Err(ConfigError::OffWithoutReader);
        }
        for (what, url) in [("--metrics-remote-write", &self.remote_write), ("--metrics-read-from", &self.read_from)] {
            if let Some(u) = url {
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(ConfigError::NotHttp { what, url: u.to_string() });
                }
            }
        }
        Ok(())
    }

    /// Whether anything here differs from the embedded store alone.
    pub fn is_default(&self) -> bool {
        self.remote_write.is_none() && self.read_from.is_none() && self.embedded
    }
}

/// The running writer and reader, as the store dispatches to them.
pub struct MetricsRemote {
    pub writer: Option<Writer>,
    pub reader: Option<Reader>,
    /// Samples also go into the embedded store.
    pub embedded: bool,
}

impl MetricsRemote {
    /// Starts the writer's sender task (needs a tokio runtime).
    pub fn start(config: &MetricsRemoteConfig) -> Result<Self, read::ReadError> {
        let writer = config.remote_write.clone().map(|url| Writer::start(url, write::WriterOptions::default()));
        let reader = config.read_from.clone().map(Reader::new).transpose()?;
        Ok(Self { writer, reader, embedded: config.embedded })
    }
}

/// The store's handle: empty until the server sets it up, shared by every
/// clone of the store. Empty means the embedded store alone.
#[derive(Clone, Default)]
pub struct Slot(Arc<OnceLock<MetricsRemote>>);

impl Slot {
    /// Installs the pair; a second call is ignored (returns false).
    pub fn set(&self, remote: MetricsRemote) -> bool {
        self.0.set(remote).is_ok()
    }

    pub fn get(&self) -> Option<&MetricsRemote> {
        self.0.get()
    }
}

impl MetricsRemote {
    /// Hands samples to the writer, if any (never waits).
    pub fn forward(&self, samples: &[nubo_api::monitoring::MetricSample]) {
        if let Some(w) = &self.writer {
            w.enqueue(samples);
        }
    }
}

impl crate::store::Store {
    /// Sets up remote write and read for this store and its clones; a
    /// second call is ignored.
    pub fn set_metrics_remote(&self, remote: MetricsRemote) -> bool {
        self.metrics_remote.set(remote)
    }

    /// Remote write and read, when set up.
    pub fn metrics_remote(&self) -> Option<&MetricsRemote> {
        self.metrics_remote.get()
    }

    /// Where metric queries go instead of the embedded store, if anywhere.
    pub fn metrics_reader(&self) -> Option<&Reader> {
        self.metrics_remote.get().and_then(|r| r.reader.as_ref())
    }
}
