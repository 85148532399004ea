//! Nubo's control plane. It owns the desired state of the cloud (in SQL),
//! places instances on hosts, and serves two HTTP APIs from one router:
//! the user API under `/api/v1/` and the agent protocol under
//! `/api/v1/agent/`. Agents, local or remote, only ever talk to it over
//! HTTP with their own credential.

pub mod alerts;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod background;
pub mod backups;
pub mod cdrom;
pub mod checks;
pub mod client_tokens;
pub mod console_relay;
pub mod day_two;
pub mod desired_views;
pub mod ec2;
pub mod error;
pub mod exposition;
pub mod failover;
pub mod floating_ips;
pub mod groups;
pub mod hardware;
pub mod identity;
pub mod image_jobs;
pub mod image_urls;
pub mod images;
pub mod instance_attributes;
pub mod instance_batch;
pub mod instance_types;
pub mod keys;
pub mod known_hosts;
pub mod launch;
pub mod launch_templates;
pub mod lb;
pub mod ldap;
pub mod ldap_sync;
pub mod leases;
pub mod metric_owners;
pub mod metrics_remote;
pub mod migrations;
pub mod networks;
pub mod pagination;
pub mod placement;
pub mod policies;
pub mod portal;
pub mod provisioning;
pub mod recipes;
pub mod registry;
pub mod restores;
pub mod saga;
pub mod sagas;
pub mod secrets;
pub mod security_groups;
pub mod signin;
pub mod store;
pub mod tags;
pub mod testdb;
pub mod tls;
pub mod tsdb;
pub mod validate;
pub mod volume_modifications;
pub mod volumes;
pub mod wakeups;
pub mod webhooks;

use nubo_scheduler::{HostSnapshot, Policy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::Store;

/// Settings of one control-plane server.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The database URL (`postgres://...`); none: SQLite at
    /// `DATA_DIR/nubo.db`. The data directory still holds the image files
    /// and the sealing key.
    pub database: Option<String>,
    pub policy: Policy,
    /// Host ports handed out for forwarded guest ports.
    pub port_range: (u16, u16),
    /// A host whose heartbeat has not renewed its lease for this long is
    /// `down`. It is also the lease itself: the agent stops its VMs when it
    /// has not renewed it for this long, and failover restarts them
    /// elsewhere only after as long again (see `failover::Lease`).
    pub heartbeat_timeout: Duration,
    /// How often placement's index of hosts is read again in full (it is
    /// kept up to date with this server's own claims in between; the full
    /// read brings other servers' claims and hosts that came back up). At
    /// most a third of `heartbeat_timeout` is used.
    pub placement_reload: Duration,
    /// A live migration whose target has not said it is ready after this
    /// long is failed (nothing has been copied yet; the source runs on).
    pub migration_prepare_timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Requests per second allowed per user (all of its tokens and access
    /// keys together) or host, with a burst of twice that.
    pub rate_per_sec: u32,
    /// Sign-in attempts a minute for one user name, right or wrong.
    pub login_attempts_per_user: u32,
    /// Sign-in attempts a minute from one address.
    pub login_attempts_per_source: u32,
    /// Live API tokens one user may hold (sign-in sessions included).
    pub max_tokens_per_user: u32,
    /// The longest life of an API token; tokens asked for without an
    /// expiry get this one.
    pub max_token_lifetime: Duration,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
    /// Audit entries a minute written for unauthenticated requests from one
    /// address (with a burst of that many); past it they are only counted.
    pub anonymous_audit_per_min: u32,
    /// Lifetime of tokens issued by `login`.
    pub session_ttl: Duration,
    /// Sign-in against a directory, when set.
    pub ldap: Option<ldap::LdapConfig>,
    /// The availability zone instances see in their metadata.
    pub availability_zone: String,
    /// Largest image file accepted (imports and instance snapshots).
    pub max_image_bytes: u64,
    /// How long metric samples and rollups are kept.
    pub retention: tsdb::Retention,
    /// Prometheus remote write, reading metrics back from Prometheus, and
    /// whether the embedded store keeps samples too.
    pub metrics: metrics_remote::MetricsRemoteConfig,
    /// The region the EC2 API is (SigV4 scope, DescribeRegions); the
    /// availability zone is in it.
    pub region: String,
    /// Instance types the EC2 API launches by.
    pub instance_types: instance_types::InstanceTypes,
    /// Special addresses (loopback, private, link-local...) webhooks may
    /// still go to: the operator's own receivers. Empty: none.
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Alert rules one project may have.
    pub max_alert_rules_per_project: u32,
    /// Service policies one project may have.
    pub max_policies_per_project: u32,
    /// Bytes of image files one project may keep (imports and snapshots).
    pub image_quota_bytes: u64,
    /// The CA this server made for its HTTPS certificate: join tokens
    /// carry its fingerprint, and new hosts fetch it to check the server.
    /// `None`: plain HTTP, or an operator's certificate.
    pub tls_ca: Option<tls::ServedCa>,
    /// Log every SQL statement the store runs (tracing target
    /// `sqlx::query`, at DEBUG): to see or count what a request costs.
    pub log_statements: bool,
    /// The portal's browser libraries (xterm.js, noVNC), as
    /// `scripts/web-assets.sh` installs them: served under `/ui/vendor/`.
    /// `None`: `DATA_DIR/web`.
    pub web_assets: Option<PathBuf>,
    /// Hosts images may be imported from by URL (`--image-url-allow`):
    /// an exact host, `.example.com` for its subdomains, or `*` for any
    /// public host. Empty: no URL imports. See `image_urls`.
    pub image_url_allow: Vec<String>,
}

impl Config {
    /// Where the portal's browser libraries are (see `web_assets`).
    pub fn web_assets_dir(&self) -> PathBuf {
        self.web_assets.clone().unwrap_or_else(|| self.data_dir.join("web"))
    }

    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database: None,
            policy: Policy::default(),
            port_range: (20000, 29999),
            heartbeat_timeout: Duration::from_secs(30),
            placement_reload: Duration::from_secs(10),
            migration_prepare_timeout: Duration::from_secs(120),
            max_body_bytes: 256 * 1024,
            rate_per_sec: 200,
            login_attempts_per_user: 5,
            login_attempts_per_source: 30,
            max_tokens_per_user: 50,
            max_token_lifetime: Duration::from_secs(90 * 86400),
            audit_retention: Duration::from_secs(90 * 86400),
            anonymous_audit_per_min: 60,
            session_ttl: Duration::from_secs(12 * 3600),
            ldap: None,
            availability_zone: "nubo-1a".into(),
            // Larger than any cloud image, and well under a project's quota.
            max_image_bytes: 32 << 30,
            retention: tsdb::Retention::default(),
            metrics: metrics_remote::MetricsRemoteConfig::default(),
            region: "nubo-1".into(),
            instance_types: instance_types::InstanceTypes::default(),
            webhook_allow: Vec::new(),
            max_alert_rules_per_project: 100,
            max_policies_per_project: 100,
            image_quota_bytes: 50 << 30,
            tls_ca: None,
            log_statements: false,
            web_assets: None,
            image_url_allow: Vec::new(),
        }
    }
}

/// The desired-state generation and, per host, the generation at which
/// that host's desired state last changed. Kept inside the watch channel
/// so that a waiter's check and a bump never need a second lock.
#[derive(Debug, Clone, Default)]
pub struct Generations {
    /// Rises with every change, of any host.
    pub current: u64,
    /// The last change that concerned every host.
    all_at: u64,
    /// The last change of each host's own desired state.
    hosts: std::collections::HashMap<String, u64>,
}

impl Generations {
    fn starting_at(g: u64) -> Self {
        Self { current: g, all_at: g, hosts: Default::default() }
    }

    fn bump_all(&mut self) {
        self.current += 1;
        self.all_at = self.current;
    }

    fn bump_host(&mut self, host: &str) {
        self.current += 1;
        self.hosts.insert(host.to_string(), self.current);
    }

    /// The generation at which `host`'s desired state last changed.
    pub fn changed_for(&self, host: &str) -> u64 {
        self.hosts.get(host).copied().unwrap_or(0).max(self.all_at)
    }

    /// Whether an agent of `host` that has generation `after` must fetch
    /// again: something of its changed since, or `after` is not one of this
    /// server's (from before a restart, or from another server).
    pub fn is_news(&self, host: &str, after: u64) -> bool {
        self.changed_for(host) > after || after > self.current
    }
}

/// Shared state of the request handlers.
pub struct Ctx {
    pub config: Config,
    pub store: Store,
    /// Bumped on every change of desired state; agents long-poll on it.
    /// Its receivers are woken by changes for every host only; a change
    /// of one host's wakes that host's long-polls alone (`host_wakers`).
    generation: tokio::sync::watch::Sender<Generations>,
    /// One waker per host, for its long-polls: a launch wakes one task,
    /// not every host's (a thousand task wake-ups per launch at a
    /// thousand hosts).
    host_wakers: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Per-user (and per-host) request rate limiter.
    pub limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Sign-in attempt limits and the password-hashing pool.
    pub signin: signin::SignInGuard,
    /// Per-address budget of audit entries for unauthenticated requests.
    pub anonymous_audit: governor::DefaultKeyedRateLimiter<String>,
    /// Seals secrets the server must read back (access-key secrets).
    pub sealer: secrets::Sealer,
    /// The image files (`DATA_DIR/registry`).
    pub registry: registry::Registry,
    /// This server process, among several on one database (random at
    /// each start): the sender of its notifications (see `wakeups`).
    pub server_id: String,
    /// When this server last saw each host renew its lease, on its own
    /// monotonic clock (what failover counts from).
    pub renewals: failover::Renewals,
    /// Each background task's last run on this server.
    pub background: background::Board,
    /// Interactive console sessions and graphical console tickets.
    pub consoles: console_relay::Sessions,
    /// The hosts indexed by free capacity, for placement (a cache of the
    /// hosts table; see `placement::index`).
    pub placement: placement::Index,
    /// Which instances each host may send metrics for.
    pub metric_owners: metric_owners::MetricOwners,
    /// What each host's agent was last sent, for desired-state deltas.
    pub desired_views: desired_views::DesiredViews,
}

impl Ctx {
    pub async fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", config.data_dir.display()))?;
        let options = store::StoreOptions { log_statements: config.log_statements };
        let store = match &config.database {
            Some(url) => Store::connect_with(url, options).await?,
            None => Store::open_with(&config.data_dir.join("nubo.db"), options).await?,
        };
        config.metrics.validate()?;
        if !config.metrics.is_default() {
            store.set_metrics_remote(metrics_remote::MetricsRemote::start(&config.metrics)?);
        }
        for (name, description) in BUILTIN_IMAGES {
            store.upsert_builtin_image(name, description).await?;
        }
        store.backfill_instance_image_ids().await?;
        // Uploads this server was receiving when it stopped will never end.
        store.fail_interrupted_uploads().await?;
        for recipe in recipes::builtins()? {
            store.upsert_builtin_recipe(&recipe).await?;
        }
        // Start the generation at the wall clock so it keeps rising across
        // server restarts, and an agent's stale `after` never blocks.
        let (generation, _) = tokio::sync::watch::channel(Generations::starting_at(store::now_ms() as u64));
        // The operator's account and the project it starts in.
        let project = store.ensure_project(identity::DEFAULT_PROJECT).await?;
        let admin = match store.user_by_name(identity::BOOTSTRAP_ADMIN).await? {
            Some(u) => u,
            None => store.upsert_user(identity::BOOTSTRAP_ADMIN, "local", None, true).await?,
        };
        store.set_membership(&admin.id, &project.id, "member").await?;
        let rate = std::num::NonZeroU32::new(config.rate_per_sec.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap_or(std::num::NonZeroU32::MIN));
        let limiter = governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst));
        let signin = signin::SignInGuard::new(config.login_attempts_per_user, config.login_attempts_per_source);
        let anonymous_audit = audit::anonymous_limiter(config.anonymous_audit_per_min);
        // Tokens from before lifetimes were capped get the longest allowed
        // life, counted from their creation.
        let capped = store.cap_token_lifetimes(config.max_token_lifetime.as_millis() as i64).await?;
        if capped > 0 {
            tracing::info!(tokens = capped, "API tokens without an expiry now expire after the longest token life");
        }
        let sealer = secrets::Sealer::load_or_create(&config.data_dir)?;
        let registry = registry::Registry::new(&config.data_dir);
        registry.remove_partial_uploads();
        let server_id = format!("s-{:016x}", rand::random::<u64>());
        let renewals = failover::Renewals::default();
        Ok(Arc::new(Self {
            config,
            store,
            generation,
            host_wakers: Default::default(),
            limiter,
            signin,
            anonymous_audit,
            sealer,
            registry,
            server_id,
            renewals,
            background: background::Board::default(),
            consoles: console_relay::Sessions::default(),
            placement: placement::Index::default(),
            metric_owners: Default::default(),
            desired_views: desired_views::DesiredViews::default(),
        }))
    }

    /// Starts the server's background work: listening for the other
    /// servers' changes, and the background tasks (metric rollups, alert
    /// rules, policies, groups, failover, webhook delivery, the audit
    /// log's retention, the directory re-check; see `background`).
    pub fn start_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(wakeups::listen(self.clone()));
        background::start(self.clone())
    }

    /// Signals every agent that desired state changed (when the change
    /// may concern any host, or its host is not known here).
    pub fn bump(&self) {
        self.bump_local(wakeups::Wake::Every);
        wakeups::notify(self, wakeups::Wake::Every);
    }

    /// Signals the agent of `host` alone: with a thousand hosts, waking
    /// every long-poll for one host's change made each launch cost a
    /// thousand desired-state computations.
    pub fn bump_host(&self, host: &str) {
        self.bump_local(wakeups::Wake::Host(host));
        wakeups::notify(self, wakeups::Wake::Host(host));
    }

    /// Wakes this server's long-polls alone (for a change another server
    /// made and notified).
    pub fn bump_local(&self, wake: wakeups::Wake<'_>) {
        match wake {
            wakeups::Wake::Every => self.generation.send_modify(Generations::bump_all),
            wakeups::Wake::Host(h) => {
                // The value changes without waking every receiver...
                self.generation.send_if_modified(|g| {
                    g.bump_host(h);
                    false
                });
                // ...and the host's own long-polls are woken.
                self.host_waker(h).notify_waiters();
            }
        }
    }

    fn host_waker(&self, host: &str) -> Arc<tokio::sync::Notify> {
        let mut wakers = self.host_wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.entry(host.to_string()).or_default().clone()
    }

    /// Returns once `host`'s agent, holding generation `after`, has news
    /// (`Generations::is_news`): a change of its own or of every host.
    pub async fn wait_for_news(&self, host: &str, after: u64) {
        let waker = self.host_waker(host);
        let mut rx = self.generation.subscribe();
        loop {
            // Registered before the check, so a bump between the check
            // and the wait is not missed.
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if rx.borrow_and_update().is_news(host, after) {
                return;
            }
            tokio::select! {
                _ = notified => {}
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.borrow().current
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Generations> {
        self.generation.subscribe()
    }

    pub async fn host_snapshots(&self) -> Result<Vec<HostSnapshot>, sqlx::Error> {
        let now = store::now_ms();
        let timeout = self.config.heartbeat_timeout.as_millis() as i64;
        Ok(self.store.hosts().await?.into_iter().map(|h| placement::snapshot(h, now, timeout)).collect())
    }

    /// A token for the bootstrap admin, in the default project, that never
    /// expires (written to admin.env by `nubo up`/`nubo server`).
    pub async fn bootstrap_admin_token(&self) -> anyhow::Result<String> {
        let admin = self
            .store
            .user_by_name(identity::BOOTSTRAP_ADMIN)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the bootstrap admin user is missing"))?;
        let project = self.store.ensure_project(identity::DEFAULT_PROJECT).await?;
        Ok(self.store.issue_token(&admin.id, Some(&project.id), "bootstrap", None).await?.1)
    }

    /// A one-time join token valid for `ttl_ms`, and when it expires. It
    /// names this server's CA (when it has one), so that the new host
    /// can tell it reached this server before it sends the secret.
    pub async fn mint_join_token(&self, ttl_ms: i64) -> Result<(String, i64), sqlx::Error> {
        let (secret, expires_at_ms) = self.store.create_join_token(ttl_ms).await?;
        let fingerprint = self.config.tls_ca.as_ref().map(|ca| ca.fingerprint);
        Ok((nubo_api::join::JoinToken::new(secret, fingerprint).to_string(), expires_at_ms))
    }
}

impl Ctx {
    /// A new access-key pair for the EC2 API (SigV4); returns (id, secret).
    /// The secret is stored sealed, and shown only to the caller.
    pub async fn issue_access_key(
        &self,
        user_id: &str,
        project_id: Option<&str>,
    ) -> Result<(String, String), sqlx::Error> {
        let id = format!("AKIA{}", random_chars(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"));
        let secret = random_chars(40, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
        let sealed = self.sealer.seal(&secret);
        self.store.create_access_key(&id, &sealed, user_id, project_id).await?;
        Ok((id, secret))
    }

    /// The bootstrap admin's access key in the default project (written to
    /// admin.env): `known` (id, secret) when it is still live and right,
    /// else a new one.
    pub async fn bootstrap_admin_access_key(
        &self,
        known: Option<(String, String)>,
    ) -> anyhow::Result<(String, String)> {
        if let Some((id, secret)) = known {
            if let Some((sealed, owner)) = self.store.access_key_owner(&id).await? {
                if owner.user_name == identity::BOOTSTRAP_ADMIN
                    && self.sealer.unseal(&sealed).ok() == Some(secret.clone())
                {
                    return Ok((id, secret));
                }
            }
        }
        let admin = self
            .store
            .user_by_name(identity::BOOTSTRAP_ADMIN)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the bootstrap admin user is missing"))?;
        let project = self.store.ensure_project(identity::DEFAULT_PROJECT).await?;
        Ok(self.issue_access_key(&admin.id, Some(&project.id)).await?)
    }
}

fn random_chars(n: usize, alphabet: &[u8]) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char).collect()
}

/// Images every agent can build itself from Debian's packages.
pub const BUILTIN_IMAGES: &[(&str, &str)] = &[
    (
        "tiny",
        "CirrOS-like test image: Debian cloud kernel, busybox, DHCP, runs #! user-data, guest agent, SSH (key logins)",
    ),
    ("debian", "Debian with systemd, cloud-init, qemu-guest-agent and openssh-server (built on first use; needs root)"),
];

/// The whole HTTP application, without a socket (tests call it directly).
pub fn app(ctx: Arc<Ctx>) -> axum::Router {
    api::router(ctx)
}

/// Serves the API on `listener` until the future is dropped.
pub async fn serve(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "control plane listening");
    let app = app(ctx).layer(axum::Extension(portal::Transport::Http));
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

/// Serves the API over HTTPS on `listener` until the future is dropped;
/// `tls` comes from [`tls::TlsFiles::server_config`]. Handlers see the
/// peer's address (`ConnectInfo<SocketAddr>`) as with [`serve`].
pub async fn serve_tls(
    ctx: Arc<Ctx>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "control plane listening (HTTPS)");
    let acceptor =
        axum_server::tls_rustls::RustlsAcceptor::new(axum_server::tls_rustls::RustlsConfig::from_config(tls));
    axum_server::Server::<SocketAddr>::from_listener(listener)
        .acceptor(acceptor)
        // A failed handshake (a plain-HTTP client, an untrusting client) ends that connection only.
        .accept_error_handler(|peer, e| tracing::debug!(?peer, error = %e, "TLS connection failed"))
        .serve(
            app(ctx)
                .layer(axum::Extension(portal::Transport::Https))
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::Generations;

    #[test]
    fn a_hosts_change_wakes_that_host_only() {
        let mut g = Generations::starting_at(100);
        // Up to date agents wait.
        assert!(!g.is_news("h-a", 100) && !g.is_news("h-b", 100));
        g.bump_host("h-a");
        assert!(g.is_news("h-a", 100));
        assert!(!g.is_news("h-b", 100), "another host's change is not news");
        // h-b fetched after that change; still nothing for it.
        assert!(!g.is_news("h-b", g.current));
        g.bump_all();
        assert!(g.is_news("h-b", 101) && g.is_news("h-a", 101));
        assert!(!g.is_news("h-a", g.current));
    }

    #[test]
    fn a_generation_from_elsewhere_is_always_news() {
        let g = Generations::starting_at(1_000);
        assert!(g.is_news("h-a", 10), "from before a restart");
        assert!(g.is_news("h-a", 5_000), "higher than this server's");
    }
}
