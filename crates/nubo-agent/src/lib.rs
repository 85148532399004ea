//! The compute agent. It owns one host: registers it with the control
//! plane, long-polls the host's desired state, reconciles the VMs on the
//! host to it through a `Hypervisor`, and reports what actually runs,
//! with life events and console output. Level-triggered: every pass
//! compares the whole desired set with reality, so a lost message or a
//! restart of either side heals on the next pass.
//!
//! [`reconcile::Reconciler`] supervises the components (the instance
//! manager, metadata, storage, networks, balancers, the lease) and starts
//! the monitoring and checks loops; the components depend on the host
//! and the instance manager only, never on the reconciler.

mod backups;
pub mod balancers;
pub mod blobs;
pub mod builds;
pub mod capacity;
mod cdrom;
pub mod checks;
mod clock;
pub mod config;
pub mod console;
mod console_relay;
pub mod guard;
pub mod guest;
mod host;
pub mod identity;
pub mod imds;
mod instances;
pub mod lease;
mod metadata;
pub mod metrics;
pub mod network;
mod pacing;
pub mod reconcile;
mod report;
pub mod restores;
pub mod runs;
pub mod storage;
pub mod trust;
mod vcpus;

pub use config::AgentConfig;

use nubo_api::agent::{DesiredState, RegisterHost};
use nubo_api::ids::HostId;
use nubo_api::join::JoinToken;
use nubo_client::{Client, Trust};
use nubo_hypervisor::{Accel, Hypervisor};
use nubo_image::ImageCache;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

pub struct Agent {
    pub config: AgentConfig,
    pub host_id: HostId,
    pub accel: Accel,
    hypervisor: Arc<dyn Hypervisor>,
    images: Arc<ImageCache>,
    /// An HTTP client (connection pool) to use instead of its own.
    shared_http: Option<reqwest::Client>,
}

impl Agent {
    pub fn new(config: AgentConfig, accel: Accel, hypervisor: Arc<dyn Hypervisor>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(config.instances_root()).map_err(|e| {
            anyhow::anyhow!("cannot create {}: {e}; check the agent's --data-dir", config.data_dir.display())
        })?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", config.data_dir.display()))?;
        let host_id = identity::load_or_create(&config.data_dir)?;
        let images = Arc::new(ImageCache::new(config.image_cache.clone()));
        Ok(Self { config, host_id, accel, hypervisor, images, shared_http: None })
    }

    /// Talks to the control plane through `http` (its connection pool),
    /// not a client of its own: many agents in one process (a fleet
    /// simulation) then hold one pool, not one each. `http` must trust
    /// the server as the agent's own client would.
    pub fn share_http(mut self, http: reqwest::Client) -> Self {
        self.shared_http = Some(http);
        self
    }

    fn registration(&self) -> RegisterHost {
        RegisterHost {
            host_id: self.host_id.clone(),
            name: self.config.name.clone(),
            // A simulated host says so wherever hosts are listed.
            accel: match self.hypervisor.name() {
                "qemu" => self.accel.to_string(),
                driver => driver.to_string(),
            },
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            disk_gib: self.config.disk_gib,
            underlay: self.config.network.as_ref().map(|n| n.underlay.to_string()),
            shared_storage: self.config.shared_storage.as_ref().map(|p| p.display().to_string()),
            externals: self.config.network.as_ref().map(|n| n.externals.keys().cloned().collect()).unwrap_or_default(),
        }
    }

    /// The join token, parsed, while the host has not joined yet.
    fn pending_join(&self) -> anyhow::Result<Option<JoinToken>> {
        if identity::load_credential(&self.config.data_dir)?.is_some() {
            return Ok(None);
        }
        let text = self.config.join_token.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "this host has not joined yet: pass --join-token (an operator creates one with `nubo host join-token`)"
            )
        })?;
        Ok(Some(text.parse().map_err(|e| anyhow::anyhow!("--join-token: {e}"))?))
    }

    /// The host's own credential: from DATA_DIR/host-credential, or by
    /// trading the join token for one (retrying until the server answers),
    /// over a connection checked as `trust` says.
    pub async fn credential(&self, trust: &Trust, join: Option<JoinToken>) -> anyhow::Result<String> {
        if let Some(c) = identity::load_credential(&self.config.data_dir)? {
            return Ok(c);
        }
        let join = join.ok_or_else(|| {
            anyhow::anyhow!(
                "this host has not joined yet: pass --join-token (an operator creates one with `nubo host join-token`)"
            )
        })?;
        let anonymous = Client::with_trust(&self.config.server_url, "", trust)?;
        let pinned = join.ca_fingerprint.is_some();
        // Only the secret goes to the server: the fingerprint was for us.
        let req = nubo_api::params::HostJoin { join_token: join.secret, host_id: self.host_id.clone() };
        let mut delay = Duration::from_millis(200);
        loop {
            match anonymous.join(&req).await {
                Ok(c) => {
                    identity::save_credential(&self.config.data_dir, &c.credential)?;
                    tracing::info!("joined the control plane");
                    return Ok(c.credential);
                }
                Err(e @ nubo_client::ClientError::Api { .. }) => {
                    return Err(anyhow::anyhow!("the control plane refused to let this host join: {e}"))
                }
                // An untrusted certificate does not heal by retrying.
                Err(e @ nubo_client::ClientError::Tls { .. }) if !pinned && self.config.ca_cert.is_none() => {
                    return Err(anyhow::anyhow!(
                        "{e}. The join token carries no CA fingerprint (it was made by an older Nubo, or by a server \
                         with an operator's certificate), so nothing says which CA to trust: mint a new token with \
                         `nubo host join-token` on the server, or pass --ca-cert"
                    ))
                }
                Err(e @ nubo_client::ClientError::Tls { .. }) => return Err(anyhow::anyhow!("cannot join: {e}")),
                Err(e) => {
                    tracing::warn!(error = %e, "join failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Registers, retrying until the control plane answers.
    pub async fn register(&self, client: &Client) -> anyhow::Result<()> {
        let mut delay = Duration::from_millis(200);
        loop {
            match client.register(&self.registration()).await {
                Ok(()) => return Ok(()),
                Err(e @ nubo_client::ClientError::Api { status: 400..=403, .. }) => {
                    return Err(anyhow::anyhow!("the control plane refused this host: {e}"))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Runs until the process ends.
    pub async fn run(self) -> anyhow::Result<()> {
        let span = tracing::info_span!("agent", host = %self.host_id);
        async move {
            let join = self.pending_join()?;
            let trust = trust::resolve(&self.config, join.as_ref()).await?;
            let credential = self.credential(&trust, join).await?;
            let mut client = Client::with_trust(&self.config.server_url, &credential, &trust)?;
            if let Some(http) = &self.shared_http {
                client = client.with_http(http.clone());
            }
            self.register(&client).await?;
            tracing::info!(name = %self.config.name, accel = %self.accel, "agent registered");
            let (tx, rx) = tokio::sync::watch::channel::<Option<DesiredState>>(None);
            let watcher = tokio::spawn(watch_desired(client.clone(), self.host_id.clone(), tx).in_current_span());
            // Image builds for the cloud (`builds`): real hosts only (a
            // simulated one has nothing to build images with).
            let builder = (self.hypervisor.name() == "qemu").then(|| {
                tokio::spawn(builds::run(client.clone(), self.config.data_dir.join("image-builds")).in_current_span())
            });
            let reconciler = reconcile::Reconciler::new(
                self.host_id.clone(),
                client,
                self.hypervisor.clone(),
                self.images.clone(),
                self.accel,
                self.config.clone(),
            );
            let registration = self.registration();
            let result = reconciler.run(rx, registration).await;
            watcher.abort();
            if let Some(b) = builder {
                b.abort();
            }
            result
        }
        .instrument(span)
        .await
    }
}

/// Long-polls the desired state and publishes every new version, whole:
/// the server answers with what changed since the answer held (a delta,
/// merged here) or, after a reconnection, the whole set.
async fn watch_desired(client: Client, host: HostId, tx: tokio::sync::watch::Sender<Option<DesiredState>>) {
    let mut held: Option<DesiredState> = None;
    loop {
        let (after, view) = match &held {
            Some(d) => (Some(d.generation), d.view.as_deref()),
            None => (None, None),
        };
        match client.desired_since(&host, after, view).await {
            Ok(next) => {
                let quiet = held.as_ref().is_some_and(|h| says_nothing_new(h, &next));
                let merged = match held.take() {
                    Some(h) => h.merge(next),
                    None if next.delta.is_some() => {
                        Err(nubo_api::agent::StaleDelta { base: next.delta.map(|d| d.base).unwrap_or_default() })
                    }
                    None => Ok(next),
                };
                match merged {
                    // A long-poll that timed out answers an empty delta:
                    // kept (its view is the one to build on), but the
                    // reconciler is not woken for it.
                    Ok(d) if quiet => held = Some(d),
                    Ok(d) => {
                        if tx.send(Some(d.clone())).is_err() {
                            return;
                        }
                        held = Some(d);
                    }
                    // Nothing is held now: the next call fetches the whole set.
                    Err(e) => tracing::warn!(error = %e, "desired-state delta does not apply; resyncing"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch desired state; retrying");
                held = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Whether `next`, a delta on `held`, changes nothing: no instance
/// changed or went, and the host-wide lists (sent whole) are the same.
fn says_nothing_new(held: &DesiredState, next: &DesiredState) -> bool {
    let lists = |d: &DesiredState| {
        serde_json::to_vec(&(&d.volumes, &d.snapshots, &d.balancers, &d.networks, &d.console_sessions)).ok()
    };
    next.delta.as_ref().is_some_and(|d| d.removed_instances.is_empty())
        && next.instances.is_empty()
        && lists(held).is_some_and(|l| Some(l) == lists(next))
}
