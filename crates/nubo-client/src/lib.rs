//! A typed client of Nubo's HTTP API. The CLI and the compute agent both
//! use it, so a remote agent and the one inside `nubo up` speak exactly
//! the same protocol. Errors keep the server's code and message, which
//! are written for the user.

use nubo_api::agent::{ConsoleAck, ConsoleChunk, DesiredState, HostReport, RegisterHost};
use nubo_api::error::ErrorBody;
use nubo_api::ids::{HostId, InstanceId};
use nubo_api::params::InstanceCreate;
use nubo_api::views::{ConsoleOutput, Host, Image, Instance};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod console;
pub mod trust;
pub use trust::Trust;

/// The environment variable naming an extra CA certificate (PEM) to
/// trust, e.g. the one `nubo server --tls` generates in DATA_DIR/tls/ca.pem.
pub const CA_CERT_ENV: &str = "NUBO_CA_CERT";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error; `message` says what to do.
    #[error("{message} (HTTP {status}, {code})")]
    Api { status: u16, code: String, message: String },
    /// The server could not be reached.
    #[error(
        "cannot reach the Nubo API at {url}: {source}; check NUBO_URL and that `nubo up` or `nubo server` is running"
    )]
    Transport { url: String, source: reqwest::Error },
    /// The server's answer was not what this client understands.
    #[error("unexpected answer from {url}: {detail}; are the client and server the same Nubo version?")]
    Decode { url: String, detail: String },
    /// The server's TLS certificate is not trusted (or not valid for its name).
    #[error(
        "the Nubo API at {url} presented a TLS certificate this client does not trust: {detail}; if the server \
         generated its own CA, set NUBO_CA_CERT to its DATA_DIR/tls/ca.pem (`nubo agent`: --ca-cert), and check that \
         the host in the URL is one the certificate covers"
    )]
    Tls { url: String, detail: String },
    /// A local file to send or write could not be used.
    #[error("cannot use {path}: {detail}")]
    File { path: String, detail: String },
    /// An argument is not valid (checked before sending).
    #[error("{0}")]
    Input(String),
    /// The extra CA certificate to trust cannot be used.
    #[error(
        "cannot use the CA certificate {path}: {detail}; point NUBO_CA_CERT (or --ca-cert) at the server's CA in \
         PEM, e.g. DATA_DIR/tls/ca.pem"
    )]
    CaCert { path: String, detail: String },
    /// The server's CA is not the one the join token names.
    #[error(
        "the server at {url} presents a CA whose SHA-256 fingerprint is {found}, but the join token names \
         {expected}: the token was minted by another server, or something on the way is posing as this one. Nothing \
         secret was sent. Mint a token on the server you mean (`nubo host join-token`) and pass it with --join-token"
    )]
    CaFingerprint { url: String, expected: String, found: String },
}

/// Classifies a failed request: certificate problems get their own error,
/// which says how to trust the server.
pub(crate) fn transport(url: &str, source: reqwest::Error) -> ClientError {
    let mut cause: Option<&dyn std::error::Error> = Some(&source);
    let mut innermost = String::new();
    let mut about_certificates = false;
    while let Some(e) = cause {
        innermost = e.to_string();
        about_certificates |= innermost.contains("certificate");
        cause = e.source();
    }
    if about_certificates {
        ClientError::Tls { url: url.to_string(), detail: innermost }
    } else {
        ClientError::Transport { url: url.to_string(), source }
    }
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one control plane, which may be several servers (on one
/// PostgreSQL): requests go to the server that answered last, and move to
/// the next one when it cannot be reached. Clones share that choice.
#[derive(Clone)]
pub struct Client {
    /// Every server's base URL, in the order given.
    servers: Arc<[String]>,
    /// Index into `servers` of the one requests go to.
    current: Arc<AtomicUsize>,
    token: String,
    http: reqwest::Client,
}

/// The base URLs in `list`: one URL, or several separated by commas
/// (`http://a:8780,http://b:8780`), without trailing slashes.
fn server_list(list: &str) -> Vec<String> {
    let servers: Vec<String> =
        list.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect();
    if servers.is_empty() {
        vec![list.trim().to_string()]
    } else {
        servers
    }
}

impl Client {
    /// `base` is the server's URL, e.g. `http://127.0.0.1:8780`, or the
    /// URLs of several servers of one control plane separated by commas.
    pub fn new(base: &str, token: &str) -> Result<Self, ClientError> {
        Self::with_ca(base, token, None)
    }

    /// Like [`Client::new`], also trusting the CA certificate(s) in the
    /// PEM file `ca_cert` (for an `https://` server with its own CA).
    pub fn with_ca(base: &str, token: &str, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        Self::with_trust(base, token, &Trust::Public { extra: ca_cert.map(Path::to_path_buf) })
    }

    /// Like [`Client::new`], trusting the server certificates `trust` says.
    pub fn with_trust(base: &str, token: &str, trust: &Trust) -> Result<Self, ClientError> {
        let ca_cert = trust.file();
        let builder = trust::configure(reqwest::Client::builder(), trust)?;
        let http = builder
            .connect_timeout(Duration::from_secs(5))
            // Above the server's long-poll (20 s).
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| match ca_cert {
                // The CA is the only input here that can be wrong.
                Some(path) => ClientError::CaCert {
                    path: path.display().to_string(),
                    detail: std::error::Error::source(&source)
                        .map_or_else(|| source.to_string(), |s| format!("{source}: {s}")),
                },
                None => ClientError::Transport { url: base.to_string(), source },
            })?;
        let servers: Arc<[String]> = server_list(base).into();
        Ok(Self { servers, current: Arc::new(AtomicUsize::new(0)), token: token.to_string(), http })
    }

    /// The server requests go to now.
    pub fn base_url(&self) -> &str {
        &self.servers[self.current.load(Ordering::Relaxed) % self.servers.len()]
    }

    /// Sends the request `build` makes for a URL, to the current server;
    /// when that one cannot be reached (the connection was refused or
    /// timed out, so the request never left), to each other server in
    /// turn, and the first that answers becomes the current one. Any other
    /// failure is returned, and the next request starts at the next
    /// server: an answer that never came may mean a server that hangs.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let (resp, url) = self.respond(path, build).await?;
        self.read(resp, &url).await
    }

    /// Sends the request to the first server that takes the connection;
    /// its response and the URL it answered at.
    async fn respond(
        &self,
        path: &str,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::Response, String), ClientError> {
        let n = self.servers.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        // `k` servers before this one refused the connection.
        let mut k = 0;
        loop {
            let i = (first + k) % n;
            let url = format!("{}{path}", self.servers[i]);
            match build(&url).bearer_auth(&self.token).send().await {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((resp, url));
                }
                Err(e) if e.is_connect() && k + 1 < n => k += 1,
                Err(e) => {
                    self.current.store((i + 1) % n, Ordering::Relaxed);
                    // None of them could be reached: name them all.
                    let which = if k > 0 && e.is_connect() { self.servers.join(", ") } else { url };
                    return Err(transport(&which, e));
                }
            }
        }
    }

    /// One page of a list (`GET path?limit=N&page_token=T`) and the token
    /// of the next page, from the `Next-Page-Token` header.
    async fn get_page<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: u32,
        token: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), ClientError> {
        let mut query = format!("limit={limit}");
        if let Some(t) = token {
            // Tokens are opaque: escaped like any value the server made.
            query.push_str(&format!("&page_token={}", path_segment(t)));
        }
        // A path may carry a query of its own (a list's filters).
        let sep = if path.contains('?') { '&' } else { '?' };
        let (resp, url) = self.respond(&format!("{path}{sep}{query}"), |url| self.http.get(url)).await?;
        let next = resp.headers().get(NEXT_PAGE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok((self.read(resp, &url).await?, next))
    }

    /// Every item of a paged list, following its pages.
    async fn get_all_pages<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (items, next) = self.get_page(path, LIST_PAGE_SIZE, token.as_deref()).await?;
            all.extend(items);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, url: &str) -> Result<T, ClientError> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|source| transport(url, source))?;
        self.read(resp, url).await
    }

    async fn read<T: DeserializeOwned>(&self, resp: reqwest::Response, url: &str) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| transport(url, source))?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        // 204 No Content (an empty body) decodes as JSON null, i.e. `()`.
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ClientError::Decode { url: url.to_string(), detail: e.to_string() })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(path, |url| self.http.get(url)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call(path, |url| self.http.post(url).json(body)).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call(path, |url| self.http.put(url).json(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(path, |url| self.http.delete(url)).await
    }

    // ---- user API ----

    pub async fn migrate_instance(
        &self,
        id: &str,
        p: &nubo_api::params::InstanceMigrate,
    ) -> Result<nubo_api::views::Migration, ClientError> {
        self.post(&format!("/api/v1/instances/{id}/migrate"), p).await
    }

    pub async fn migrations(&self) -> Result<Vec<nubo_api::views::Migration>, ClientError> {
        self.get("/api/v1/migrations").await
    }

    pub async fn migration(&self, id: &str) -> Result<nubo_api::views::Migration, ClientError> {
        self.get(&format!("/api/v1/migrations/{id}")).await
    }

    /// `action` is `drain`, `enable` or `evacuate`.
    pub async fn host_action<T: DeserializeOwned>(&self, host: &str, action: &str) -> Result<T, ClientError> {
        self.post(&format!("/api/v1/hosts/{host}/{action}"), &serde_json::json!({})).await
    }

    pub async fn networks(&self) -> Result<Vec<nubo_api::views::Network>, ClientError> {
        self.get("/api/v1/networks").await
    }

    pub async fn create_network(
        &self,
        p: &nubo_api::params::NetworkCreate,
    ) -> Result<nubo_api::views::Network, ClientError> {
        self.post("/api/v1/networks", p).await
    }

    /// `id` is a network id or name, as typed; the server validates it.
    pub async fn network(&self, id: &str) -> Result<nubo_api::views::Network, ClientError> {
        self.get(&format!("/api/v1/networks/{id}")).await
    }

    pub async fn delete_network(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/networks/{id}")).await
    }

    pub async fn floating_ips(&self) -> Result<Vec<nubo_api::views::FloatingIp>, ClientError> {
        self.get("/api/v1/floating-ips").await
    }

    pub async fn allocate_floating_ip(
        &self,
        p: &nubo_api::params::FloatingIpCreate,
    ) -> Result<nubo_api::views::FloatingIp, ClientError> {
        self.post("/api/v1/floating-ips", p).await
    }

    /// `id` is a floating IP's id or address.
    pub async fn floating_ip(&self, id: &str) -> Result<nubo_api::views::FloatingIp, ClientError> {
        self.get(&format!("/api/v1/floating-ips/{}", path_segment(id))).await
    }

    pub async fn associate_floating_ip(
        &self,
        id: &str,
        p: &nubo_api::params::FloatingIpAssociate,
    ) -> Result<nubo_api::views::FloatingIp, ClientError> {
        self.post(&format!("/api/v1/floating-ips/{}/associate", path_segment(id)), p).await
    }

    pub async fn disassociate_floating_ip(&self, id: &str) -> Result<nubo_api::views::FloatingIp, ClientError> {
        self.post(&format!("/api/v1/floating-ips/{}/disassociate", path_segment(id)), &serde_json::json!({})).await
    }

    pub async fn release_floating_ip(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/floating-ips/{}", path_segment(id))).await
    }

    pub async fn security_groups(&self) -> Result<Vec<nubo_api::views::SecurityGroup>, ClientError> {
        self.get("/api/v1/security-groups").await
    }

    pub async fn create_security_group(
        &self,
        p: &nubo_api::params::SecurityGroupCreate,
    ) -> Result<nubo_api::views::SecurityGroup, ClientError> {
        self.post("/api/v1/security-groups", p).await
    }

    /// `group` is a group id or name.
    pub async fn add_security_group_rule(
        &self,
        group: &str,
        p: &nubo_api::params::SecurityGroupRuleCreate,
    ) -> Result<nubo_api::views::SecurityGroup, ClientError> {
        self.post(&format!("/api/v1/security-groups/{group}/rules"), p).await
    }

    pub async fn delete_security_group_rule(
        &self,
        group: &str,
        rule: &str,
    ) -> Result<nubo_api::views::SecurityGroup, ClientError> {
        self.delete(&format!("/api/v1/security-groups/{group}/rules/{rule}")).await
    }

    /// Every instance the token may see, read a page at a time.
    pub async fn instances(&self) -> Result<Vec<Instance>, ClientError> {
        self.get_all_pages("/api/v1/instances").await
    }

    /// One page of at most `limit` instances (1 to 1000), starting where
    /// `page_token` (the previous page's next token) says; the token of
    /// the next page, if any.
    pub async fn instances_page(
        &self,
        limit: u32,
        page_token: Option<&str>,
    ) -> Result<(Vec<Instance>, Option<String>), ClientError> {
        self.get_page("/api/v1/instances", limit, page_token).await
    }

    /// One page of at most `limit` items (1 to 1000) of any paged REST list
    /// (`path` such as `/api/v1/volumes`), starting where `page_token` (the
    /// previous page's next token) says; the token of the next page, if any.
    /// Pages other than the instances' run in creation order.
    pub async fn list_page<T: DeserializeOwned>(
        &self,
        path: &str,
        limit: u32,
        page_token: Option<&str>,
    ) -> Result<(Vec<T>, Option<String>), ClientError> {
        self.get_page(path, limit, page_token).await
    }

    pub async fn create_instance(&self, p: &InstanceCreate) -> Result<Instance, ClientError> {
        self.post("/api/v1/instances", p).await
    }

    /// `id` is passed as typed by the user; the server validates it.
    pub async fn instance(&self, id: &str) -> Result<Instance, ClientError> {
        self.get(&format!("/api/v1/instances/{}", path_segment(id))).await
    }

    pub async fn instance_action(&self, id: &str, action: InstanceAction) -> Result<Instance, ClientError> {
        let id = path_segment(id);
        match action {
            InstanceAction::Terminate => self.delete(&format!("/api/v1/instances/{id}")).await,
            other => self.post(&format!("/api/v1/instances/{id}/{}", other.verb()), &()).await,
        }
    }

    /// Turns termination or stop protection on or off, or sets the
    /// shutdown behaviour; what `p` leaves out stays.
    pub async fn protect_instance(
        &self,
        id: &str,
        p: &nubo_api::params::InstanceProtection,
    ) -> Result<Instance, ClientError> {
        self.put(&format!("/api/v1/instances/{}/protection", path_segment(id)), p).await
    }

    /// Empties the instance's CD-ROM drive.
    pub async fn eject_cdrom(&self, id: &str) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/instances/{}/cdrom/eject", path_segment(id)), &serde_json::json!({})).await
    }

    /// Puts an ISO image (name or id) in the instance's CD-ROM drive.
    pub async fn insert_cdrom(&self, id: &str, image: &str) -> Result<Instance, ClientError> {
        let p = nubo_api::params::CdromInsert { image: image.to_string() };
        self.post(&format!("/api/v1/instances/{}/cdrom/insert", path_segment(id)), &p).await
    }

    /// Sets a stopped instance's boot order (`cdrom,disk` or `disk,cdrom`).
    pub async fn set_boot_order(&self, id: &str, boot: &str) -> Result<Instance, ClientError> {
        let p = nubo_api::params::BootOrder { boot: boot.to_string() };
        self.post(&format!("/api/v1/instances/{}/boot-order", path_segment(id)), &p).await
    }

    pub async fn console(&self, id: &str) -> Result<ConsoleOutput, ClientError> {
        self.get(&format!("/api/v1/instances/{}/console", path_segment(id))).await
    }

    pub async fn hosts(&self) -> Result<Vec<Host>, ClientError> {
        self.get("/api/v1/hosts").await
    }

    /// The control plane's background tasks and their last runs (operators).
    pub async fn background_tasks(&self) -> Result<nubo_api::views::BackgroundTasks, ClientError> {
        self.get("/api/v1/background-tasks").await
    }

    pub async fn images(&self) -> Result<Vec<Image>, ClientError> {
        self.get("/api/v1/images").await
    }

    /// An image by id or name.
    pub async fn image(&self, key: &str) -> Result<Image, ClientError> {
        self.get(&format!("/api/v1/images/{}", path_segment(key))).await
    }

    pub async fn create_image(&self, p: &nubo_api::params::ImageCreate) -> Result<Image, ClientError> {
        self.post("/api/v1/images", p).await
    }

    /// Uploads the file of a queued image, calling `progress` with the
    /// bytes sent so far.
    pub async fn upload_image(
        &self,
        id: &str,
        file: &Path,
        progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<Image, ClientError> {
        let url = format!("{}/api/v1/images/{}/file", self.base_url(), path_segment(id));
        let body = file_body(file, progress)
            .await
            .map_err(|e| ClientError::File { path: file.display().to_string(), detail: e.to_string() })?;
        self.send(self.http.put(&url).timeout(FILE_TIMEOUT).body(body), &url).await
    }

    /// Changes what instances of an image need (firmware, Secure Boot, TPM, display).
    pub async fn set_image_hardware(
        &self,
        key: &str,
        p: &nubo_api::hardware::HardwareRequest,
    ) -> Result<Image, ClientError> {
        self.put(&format!("/api/v1/images/{}/hardware", path_segment(key)), p).await
    }

    /// Imports an image from a URL: the control plane fetches it in the
    /// background (the image's `job` shows the progress).
    pub async fn import_image_url(&self, p: &nubo_api::params::ImageUrlImport) -> Result<Image, ClientError> {
        self.post("/api/v1/images/imports", p).await
    }

    /// Asks the cloud to build an image (a host builds it into the registry).
    pub async fn build_image(&self, p: &nubo_api::params::ImageBuildCreate) -> Result<Image, ClientError> {
        self.post("/api/v1/images/builds", p).await
    }

    pub async fn delete_image(&self, key: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/images/{}", path_segment(key))).await
    }

    // ---- day-two operations ----

    /// Resizes an instance (`POST /api/v1/instances/{id}/resize`).
    pub async fn resize_instance(
        &self,
        id: &str,
        p: &nubo_api::params::InstanceResize,
    ) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/instances/{}/resize", path_segment(id)), p).await
    }

    /// Gives an instance a fresh root disk from an image.
    pub async fn rebuild_instance(
        &self,
        id: &str,
        p: &nubo_api::params::InstanceRebuild,
    ) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/instances/{}/rebuild", path_segment(id)), p).await
    }

    /// Restores a backup as a new instance (201 with its view).
    pub async fn restore_backup(
        &self,
        backup: &str,
        p: &nubo_api::backup::RestoreInstance,
    ) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/backups/{}/restore", path_segment(backup)), p).await
    }

    /// Restores one disk of a backup (`root` or a volume id) as a new volume.
    pub async fn restore_backup_volume(
        &self,
        backup: &str,
        p: &nubo_api::backup::RestoreVolume,
    ) -> Result<nubo_api::views::Volume, ClientError> {
        self.post(&format!("/api/v1/backups/{}/restore-volume", path_segment(backup)), p).await
    }

    /// Writes a stopped instance's disks back from one of its backups.
    pub async fn restore_instance(
        &self,
        id: &str,
        p: &nubo_api::backup::RestoreInPlace,
    ) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/instances/{}/restore", path_segment(id)), p).await
    }

    /// Re-places a dead host's instances from their newest backups.
    pub async fn evacuate_from_backups(
        &self,
        host: &str,
    ) -> Result<Vec<nubo_api::backup::EvacuatedInstance>, ClientError> {
        self.post(&format!("/api/v1/hosts/{}/evacuate-from-backups", path_segment(host)), &serde_json::json!({})).await
    }

    /// Reverts a stopped instance's root disk to one of its snapshots.
    pub async fn revert_instance(
        &self,
        id: &str,
        p: &nubo_api::params::InstanceRevert,
    ) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/instances/{}/revert", path_segment(id)), p).await
    }

    /// Reverts a volume to one of its snapshots.
    pub async fn revert_volume(
        &self,
        id: &str,
        p: &nubo_api::params::VolumeRevert,
    ) -> Result<nubo_api::views::Volume, ClientError> {
        self.post(&format!("/api/v1/volumes/{}/revert", path_segment(id)), p).await
    }

    /// Takes an image of an instance's root disk.
    pub async fn snapshot_instance(
        &self,
        id: &str,
        p: &nubo_api::params::InstanceSnapshot,
    ) -> Result<Image, ClientError> {
        self.post(&format!("/api/v1/instances/{}/snapshot", path_segment(id)), p).await
    }

    // ---- tags ----

    /// Every item of a list (`path` such as `/api/v1/volumes`) that carries
    /// the tags `filters` names (`KEY=VALUE`, or `KEY` for any value; all
    /// must match), in the list's own order. The server filters, so only
    /// the matches travel.
    pub async fn list_tagged<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[String],
    ) -> Result<Vec<T>, ClientError> {
        let query: Vec<String> = filters.iter().map(|f| format!("tag={}", path_segment(f))).collect();
        self.get(&format!("{path}?{}", query.join("&"))).await
    }

    /// The tags the token's project put on its resources (an operator:
    /// every project's): of one resource, with one of `keys` when any are
    /// given; read a page at a time.
    pub async fn tags(
        &self,
        resource: Option<&str>,
        keys: &[String],
    ) -> Result<Vec<nubo_api::views::Tag>, ClientError> {
        let mut query: Vec<String> = keys.iter().map(|k| format!("key={}", path_segment(k))).collect();
        if let Some(r) = resource {
            query.push(format!("resource={}", path_segment(r)));
        }
        if query.is_empty() {
            return self.get_all_pages("/api/v1/tags").await;
        }
        self.get_all_pages(&format!("/api/v1/tags?{}", query.join("&"))).await
    }

    /// One resource's tags (`id`: i-, vol-, snap-, ami-, sg-, net-, fip-, key-...).
    pub async fn resource_tags(&self, id: &str) -> Result<nubo_api::views::ResourceTags, ClientError> {
        self.get(&format!("/api/v1/resources/{}/tags", path_segment(id))).await
    }

    /// Adds or overwrites tags on a resource (its other tags stay); every
    /// tag it carries after.
    pub async fn set_tags(
        &self,
        id: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<nubo_api::views::ResourceTags, ClientError> {
        let body = nubo_api::params::TagSet { tags: tags.clone() };
        self.put(&format!("/api/v1/resources/{}/tags", path_segment(id)), &body).await
    }

    /// Removes tags from a resource by key; the tags it still carries.
    pub async fn unset_tags(&self, id: &str, keys: &[String]) -> Result<nubo_api::views::ResourceTags, ClientError> {
        let query: Vec<String> = keys.iter().map(|k| format!("key={}", path_segment(k))).collect();
        self.delete(&format!("/api/v1/resources/{}/tags?{}", path_segment(id), query.join("&"))).await
    }

    // ---- volumes ----

    pub async fn volumes(&self) -> Result<Vec<nubo_api::views::Volume>, ClientError> {
        self.get("/api/v1/volumes").await
    }

    pub async fn volume(&self, id: &str) -> Result<nubo_api::views::Volume, ClientError> {
        self.get(&format!("/api/v1/volumes/{}", path_segment(id))).await
    }

    pub async fn create_volume(
        &self,
        p: &nubo_api::params::VolumeCreate,
    ) -> Result<nubo_api::views::Volume, ClientError> {
        self.post("/api/v1/volumes", p).await
    }

    pub async fn delete_volume(&self, id: &str) -> Result<nubo_api::views::Volume, ClientError> {
        self.delete(&format!("/api/v1/volumes/{}", path_segment(id))).await
    }

    pub async fn attach_volume(&self, id: &str, instance: &str) -> Result<nubo_api::views::Volume, ClientError> {
        let instance_id = instance.parse().map_err(|e: nubo_api::ids::IdError| ClientError::Input(e.to_string()))?;
        let body = nubo_api::params::VolumeAttach { instance_id };
        self.post(&format!("/api/v1/volumes/{}/attach", path_segment(id)), &body).await
    }

    pub async fn detach_volume(&self, id: &str) -> Result<nubo_api::views::Volume, ClientError> {
        self.post(&format!("/api/v1/volumes/{}/detach", path_segment(id)), &()).await
    }

    pub async fn extend_volume(&self, id: &str, size_gib: u64) -> Result<nubo_api::views::Volume, ClientError> {
        let body = nubo_api::params::VolumeExtend { size_gib };
        self.post(&format!("/api/v1/volumes/{}/extend", path_segment(id)), &body).await
    }

    pub async fn snapshot_volume(
        &self,
        id: &str,
        p: &nubo_api::params::SnapshotCreate,
    ) -> Result<nubo_api::views::Snapshot, ClientError> {
        self.post(&format!("/api/v1/volumes/{}/snapshots", path_segment(id)), p).await
    }

    pub async fn snapshots(&self) -> Result<Vec<nubo_api::views::Snapshot>, ClientError> {
        self.get("/api/v1/snapshots").await
    }

    pub async fn snapshot(&self, id: &str) -> Result<nubo_api::views::Snapshot, ClientError> {
        self.get(&format!("/api/v1/snapshots/{}", path_segment(id))).await
    }

    pub async fn delete_snapshot(&self, id: &str) -> Result<nubo_api::views::Snapshot, ClientError> {
        self.delete(&format!("/api/v1/snapshots/{}", path_segment(id))).await
    }

    // ---- monitoring ----

    pub async fn metric_series(
        &self,
        resource: &str,
        metric: &str,
        from: &str,
        step: Option<&str>,
    ) -> Result<nubo_api::monitoring::MetricSeries, ClientError> {
        let step = step.map(|s| format!("&step={}", path_segment(s))).unwrap_or_default();
        self.get(&format!(
            "/api/v1/metrics?resource={}&metric={}&from={}{step}",
            path_segment(resource),
            path_segment(metric),
            path_segment(from)
        ))
        .await
    }

    pub async fn metric_latest(&self, resource: &str) -> Result<Vec<nubo_api::monitoring::MetricLatest>, ClientError> {
        self.get(&format!("/api/v1/metrics/latest?resource={}", path_segment(resource))).await
    }

    pub async fn create_check(
        &self,
        c: &nubo_api::monitoring::CheckCreate,
    ) -> Result<nubo_api::monitoring::Check, ClientError> {
        self.post("/api/v1/checks", c).await
    }

    pub async fn checks(&self) -> Result<Vec<nubo_api::monitoring::Check>, ClientError> {
        self.get("/api/v1/checks").await
    }

    pub async fn check(&self, id: &str) -> Result<nubo_api::monitoring::Check, ClientError> {
        self.get(&format!("/api/v1/checks/{}", path_segment(id))).await
    }

    pub async fn delete_check(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/checks/{}", path_segment(id))).await
    }

    pub async fn create_alert_rule(
        &self,
        r: &nubo_api::monitoring::AlertRuleCreate,
    ) -> Result<nubo_api::monitoring::AlertRule, ClientError> {
        self.post("/api/v1/alert-rules", r).await
    }

    pub async fn alert_rules(&self) -> Result<Vec<nubo_api::monitoring::AlertRule>, ClientError> {
        self.get("/api/v1/alert-rules").await
    }

    pub async fn delete_alert_rule(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/alert-rules/{}", path_segment(id))).await
    }

    pub async fn alerts(&self, all: bool) -> Result<Vec<nubo_api::monitoring::Alert>, ClientError> {
        self.get(&format!("/api/v1/alerts?all={all}")).await
    }

    pub async fn alert(&self, id: &str) -> Result<nubo_api::monitoring::Alert, ClientError> {
        self.get(&format!("/api/v1/alerts/{}", path_segment(id))).await
    }

    pub async fn acknowledge_alert(&self, id: &str) -> Result<nubo_api::monitoring::Alert, ClientError> {
        self.post(&format!("/api/v1/alerts/{}/acknowledge", path_segment(id)), &()).await
    }

    pub async fn silence_alert(&self, id: &str, for_secs: u64) -> Result<nubo_api::monitoring::Alert, ClientError> {
        let body = nubo_api::monitoring::AlertSilence { for_secs };
        self.post(&format!("/api/v1/alerts/{}/silence", path_segment(id)), &body).await
    }

    pub async fn events(&self) -> Result<Vec<nubo_api::monitoring::CloudEvent>, ClientError> {
        self.get("/api/v1/events").await
    }

    // ---- automation ----

    pub async fn apply_policy(
        &self,
        d: &nubo_api::automation::PolicyDoc,
    ) -> Result<nubo_api::automation::Policy, ClientError> {
        self.post("/api/v1/policies", d).await
    }

    pub async fn policies(&self) -> Result<Vec<nubo_api::automation::Policy>, ClientError> {
        self.get("/api/v1/policies").await
    }

    pub async fn policy(&self, name: &str) -> Result<nubo_api::automation::Policy, ClientError> {
        self.get(&format!("/api/v1/policies/{}", path_segment(name))).await
    }

    pub async fn delete_policy(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/policies/{}", path_segment(name))).await
    }

    pub async fn create_group(
        &self,
        g: &nubo_api::automation::GroupCreate,
    ) -> Result<nubo_api::automation::Group, ClientError> {
        self.post("/api/v1/groups", g).await
    }

    pub async fn groups(&self) -> Result<Vec<nubo_api::automation::Group>, ClientError> {
        self.get("/api/v1/groups").await
    }

    pub async fn group(&self, name: &str) -> Result<nubo_api::automation::Group, ClientError> {
        self.get(&format!("/api/v1/groups/{}", path_segment(name))).await
    }

    pub async fn set_group_desired(
        &self,
        name: &str,
        desired: u32,
    ) -> Result<nubo_api::automation::Group, ClientError> {
        let body = nubo_api::automation::GroupDesired { desired };
        self.post(&format!("/api/v1/groups/{}/desired", path_segment(name)), &body).await
    }

    pub async fn delete_group(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/groups/{}", path_segment(name))).await
    }

    // ---- launch templates ----

    // ---- backups ----

    /// Registers a backup repository (operators).
    pub async fn create_backup_repository(
        &self,
        p: &nubo_api::backup::RepositoryCreate,
    ) -> Result<nubo_api::backup::BackupRepository, ClientError> {
        self.post("/api/v1/backup-repositories", p).await
    }

    pub async fn backup_repositories(&self) -> Result<Vec<nubo_api::backup::BackupRepository>, ClientError> {
        self.get("/api/v1/backup-repositories").await
    }

    /// `id`: a repository's id or name.
    pub async fn delete_backup_repository(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/backup-repositories/{}", path_segment(id))).await
    }

    pub async fn create_backup_plan(
        &self,
        p: &nubo_api::backup::PlanCreate,
    ) -> Result<nubo_api::backup::BackupPlan, ClientError> {
        self.post("/api/v1/backup-plans", p).await
    }

    pub async fn backup_plans(&self) -> Result<Vec<nubo_api::backup::BackupPlan>, ClientError> {
        self.get("/api/v1/backup-plans").await
    }

    /// `id`: a plan's id or name.
    pub async fn backup_plan(&self, id: &str) -> Result<nubo_api::backup::BackupPlan, ClientError> {
        self.get(&format!("/api/v1/backup-plans/{}", path_segment(id))).await
    }

    pub async fn delete_backup_plan(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/backup-plans/{}", path_segment(id))).await
    }

    /// Backs an instance up now (a pending backup its host takes).
    pub async fn run_backup(
        &self,
        instance: &str,
        p: &nubo_api::backup::BackupRun,
    ) -> Result<nubo_api::backup::Backup, ClientError> {
        self.post(&format!("/api/v1/instances/{}/backups", path_segment(instance)), p).await
    }

    /// The project's backups, optionally of one instance or plan.
    pub async fn backups(
        &self,
        instance: Option<&str>,
        plan: Option<&str>,
    ) -> Result<Vec<nubo_api::backup::Backup>, ClientError> {
        let mut query = Vec::new();
        if let Some(i) = instance {
            query.push(format!("instance={}", path_segment(i)));
        }
        if let Some(p) = plan {
            query.push(format!("plan={}", path_segment(p)));
        }
        let q = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
        self.get(&format!("/api/v1/backups{q}")).await
    }

    pub async fn backup(&self, id: &str) -> Result<nubo_api::backup::Backup, ClientError> {
        self.get(&format!("/api/v1/backups/{}", path_segment(id))).await
    }

    pub async fn delete_backup(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/backups/{}", path_segment(id))).await
    }

    pub async fn create_launch_template(
        &self,
        c: &nubo_api::launch_templates::LaunchTemplateCreate,
    ) -> Result<nubo_api::launch_templates::LaunchTemplate, ClientError> {
        self.post("/api/v1/launch-templates", c).await
    }

    pub async fn launch_templates(&self) -> Result<Vec<nubo_api::launch_templates::LaunchTemplate>, ClientError> {
        self.get("/api/v1/launch-templates").await
    }

    /// `name` is a template's name or `lt-...` id.
    pub async fn launch_template(&self, name: &str) -> Result<nubo_api::launch_templates::LaunchTemplate, ClientError> {
        self.get(&format!("/api/v1/launch-templates/{}", path_segment(name))).await
    }

    pub async fn delete_launch_template(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/launch-templates/{}", path_segment(name))).await
    }

    pub async fn create_launch_template_version(
        &self,
        name: &str,
        c: &nubo_api::launch_templates::LaunchTemplateVersionCreate,
    ) -> Result<nubo_api::launch_templates::LaunchTemplateVersion, ClientError> {
        self.post(&format!("/api/v1/launch-templates/{}/versions", path_segment(name)), c).await
    }

    /// `version`: a number or `$Latest`.
    pub async fn set_launch_template_default(
        &self,
        name: &str,
        version: &str,
    ) -> Result<nubo_api::launch_templates::LaunchTemplate, ClientError> {
        let body = nubo_api::launch_templates::LaunchTemplateDefault { version: version.to_string() };
        self.post(&format!("/api/v1/launch-templates/{}/default", path_segment(name)), &body).await
    }

    /// Launches one instance from a template (`name`, optionally `NAME:VERSION`).
    pub async fn launch_from_template(
        &self,
        name: &str,
        l: &nubo_api::launch_templates::LaunchTemplateLaunch,
    ) -> Result<Instance, ClientError> {
        self.post(&format!("/api/v1/launch-templates/{}/instances", path_segment(name)), l).await
    }

    // ---- load balancers ----

    pub async fn create_lb(
        &self,
        c: &nubo_api::lb::LoadBalancerCreate,
    ) -> Result<nubo_api::lb::LoadBalancer, ClientError> {
        self.post("/api/v1/load-balancers", c).await
    }

    pub async fn lbs(&self) -> Result<Vec<nubo_api::lb::LoadBalancer>, ClientError> {
        self.get("/api/v1/load-balancers").await
    }

    /// By id or name.
    pub async fn lb(&self, key: &str) -> Result<nubo_api::lb::LoadBalancer, ClientError> {
        self.get(&format!("/api/v1/load-balancers/{}", path_segment(key))).await
    }

    pub async fn delete_lb(&self, key: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/load-balancers/{}", path_segment(key))).await
    }

    // ---- identity ----

    pub async fn login(&self, l: &nubo_api::params::Login) -> Result<nubo_api::views::TokenIssued, ClientError> {
        self.post("/api/v1/auth/login", l).await
    }

    pub async fn whoami(&self) -> Result<nubo_api::views::WhoAmI, ClientError> {
        self.get("/api/v1/auth/whoami").await
    }

    pub async fn create_token(
        &self,
        t: &nubo_api::params::TokenCreate,
    ) -> Result<nubo_api::views::TokenIssued, ClientError> {
        self.post("/api/v1/tokens", t).await
    }

    pub async fn tokens(&self) -> Result<Vec<nubo_api::views::Token>, ClientError> {
        self.get("/api/v1/tokens").await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/tokens/{}", path_segment(id))).await
    }

    pub async fn projects(&self) -> Result<Vec<nubo_api::views::Project>, ClientError> {
        self.get("/api/v1/projects").await
    }

    pub async fn create_project(
        &self,
        p: &nubo_api::params::ProjectCreate,
    ) -> Result<nubo_api::views::Project, ClientError> {
        self.post("/api/v1/projects", p).await
    }

    pub async fn set_quota(
        &self,
        project: &str,
        q: &nubo_api::params::Quota,
    ) -> Result<nubo_api::views::Project, ClientError> {
        self.put(&format!("/api/v1/projects/{}/quota", path_segment(project)), q).await
    }

    pub async fn set_member(&self, project: &str, user: &str, role: &str) -> Result<(), ClientError> {
        let body = nubo_api::params::MemberSet { role: role.to_string() };
        self.put(&format!("/api/v1/projects/{}/members/{}", path_segment(project), path_segment(user)), &body).await
    }

    /// Takes the user's role in the project away (operators only).
    pub async fn remove_member(&self, project: &str, user: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/projects/{}/members/{}", path_segment(project), path_segment(user))).await
    }

    pub async fn users(&self) -> Result<Vec<nubo_api::views::User>, ClientError> {
        self.get("/api/v1/users").await
    }

    pub async fn create_user(&self, u: &nubo_api::params::UserCreate) -> Result<nubo_api::views::User, ClientError> {
        self.post("/api/v1/users", u).await
    }

    pub async fn audit(&self, limit: u32) -> Result<Vec<nubo_api::views::AuditEntry>, ClientError> {
        self.get(&format!("/api/v1/audit?limit={limit}")).await
    }

    pub async fn join_token(&self) -> Result<nubo_api::views::JoinToken, ClientError> {
        self.post("/api/v1/hosts/join-tokens", &()).await
    }

    pub async fn create_access_key(&self) -> Result<nubo_api::views::AccessKeyIssued, ClientError> {
        self.post("/api/v1/access-keys", &()).await
    }

    pub async fn access_keys(&self) -> Result<Vec<nubo_api::views::AccessKey>, ClientError> {
        self.get("/api/v1/access-keys").await
    }

    pub async fn revoke_access_key(&self, id: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/access-keys/{}", path_segment(id))).await
    }

    // ---- provisioning ----

    pub async fn create_keypair(
        &self,
        k: &nubo_api::params::KeypairCreate,
    ) -> Result<nubo_api::views::KeypairCreated, ClientError> {
        self.post("/api/v1/keypairs", k).await
    }

    pub async fn keypairs(&self) -> Result<Vec<nubo_api::views::Keypair>, ClientError> {
        self.get("/api/v1/keypairs").await
    }

    pub async fn delete_keypair(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/keypairs/{}", path_segment(name))).await
    }

    pub async fn recipes(&self) -> Result<Vec<nubo_api::views::Recipe>, ClientError> {
        self.get("/api/v1/recipes").await
    }

    pub async fn recipe(&self, name: &str, version: Option<&str>) -> Result<nubo_api::views::Recipe, ClientError> {
        let q = version.map(|v| format!("?version={}", path_segment(v))).unwrap_or_default();
        self.get(&format!("/api/v1/recipes/{}{q}", path_segment(name))).await
    }

    pub async fn create_recipe(
        &self,
        r: &nubo_api::params::RecipeCreate,
    ) -> Result<nubo_api::views::Recipe, ClientError> {
        self.post("/api/v1/recipes", r).await
    }

    pub async fn delete_recipe(&self, name: &str, version: Option<&str>) -> Result<(), ClientError> {
        let q = version.map(|v| format!("?version={}", path_segment(v))).unwrap_or_default();
        self.delete(&format!("/api/v1/recipes/{}{q}", path_segment(name))).await
    }

    /// Runs a recipe in an instance.
    pub async fn provision(
        &self,
        instance: &str,
        r: &nubo_api::params::RunCreate,
    ) -> Result<nubo_api::views::Run, ClientError> {
        self.post(&format!("/api/v1/instances/{}/runs", path_segment(instance)), r).await
    }

    /// Runs one command in an instance through its guest agent.
    pub async fn exec(
        &self,
        instance: &str,
        e: &nubo_api::params::ExecCreate,
    ) -> Result<nubo_api::views::Run, ClientError> {
        self.post(&format!("/api/v1/instances/{}/exec", path_segment(instance)), e).await
    }

    pub async fn runs(&self, instance: &str) -> Result<Vec<nubo_api::views::Run>, ClientError> {
        self.get(&format!("/api/v1/instances/{}/runs", path_segment(instance))).await
    }

    /// A run; with `log_from`, its log from that byte offset (to follow it).
    pub async fn run(&self, id: &str, log_from: Option<u64>) -> Result<nubo_api::views::Run, ClientError> {
        let q = log_from.map(|o| format!("?log_from={o}")).unwrap_or_default();
        self.get(&format!("/api/v1/runs/{}{q}", path_segment(id))).await
    }

    // ---- agent protocol ----

    /// Trades a join token for the host's own credential (no auth needed).
    pub async fn join(&self, j: &nubo_api::params::HostJoin) -> Result<nubo_api::views::HostCredential, ClientError> {
        self.post("/api/v1/agent/join", j).await
    }

    pub async fn register(&self, r: &RegisterHost) -> Result<(), ClientError> {
        self.post("/api/v1/agent/register", r).await
    }

    pub async fn desired(&self, host: &HostId, after: Option<u64>) -> Result<DesiredState, ClientError> {
        self.desired_since(host, after, None).await
    }

    /// The desired state; with `view` (the `view` of the answer held),
    /// possibly a delta from it (see [`DesiredState::merge`]).
    pub async fn desired_since(
        &self,
        host: &HostId,
        after: Option<u64>,
        view: Option<&str>,
    ) -> Result<DesiredState, ClientError> {
        let mut q: Vec<String> = Vec::new();
        if let Some(a) = after {
            q.push(format!("after={a}"));
        }
        if let Some(v) = view {
            // A view is the server's id and a counter: nothing to escape.
            q.push(format!(
                "view={}",
                v.chars().filter(|c| c.is_ascii_alphanumeric() || "-._".contains(*c)).collect::<String>()
            ));
        }
        let q = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
        self.get(&format!("/api/v1/agent/hosts/{host}/desired{q}")).await
    }

    /// Replaces the HTTP client (its connection pool), e.g. to share one
    /// among many agents in one process.
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    pub async fn migration_ready(
        &self,
        id: &nubo_api::ids::MigrationId,
        t: &nubo_api::agent::MigrationTarget,
    ) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/migrations/{id}/ready"), t).await
    }

    pub async fn migration_done(
        &self,
        id: &nubo_api::ids::MigrationId,
        d: &nubo_api::agent::MigrationDone,
    ) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/migrations/{id}/done"), d).await
    }

    /// Renews the host's lease (see [`nubo_api::agent::HeartbeatAck`]).
    pub async fn heartbeat(&self, host: &HostId) -> Result<nubo_api::agent::HeartbeatAck, ClientError> {
        self.post(&format!("/api/v1/agent/hosts/{host}/heartbeat"), &serde_json::json!({})).await
    }

    pub async fn report(&self, host: &HostId, r: &HostReport) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/hosts/{host}/report"), r).await
    }

    pub async fn console_chunk(&self, id: &InstanceId, c: &ConsoleChunk) -> Result<ConsoleAck, ClientError> {
        self.post(&format!("/api/v1/agent/instances/{id}/console"), c).await
    }

    /// Streams a registry image's file into `out`, handing each piece to
    /// `on_chunk` (to hash it); returns the bytes written.
    pub async fn download_image(
        &self,
        id: &nubo_api::ids::ImageId,
        out: &mut tokio::fs::File,
        on_chunk: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let url = format!("{}/api/v1/agent/images/{id}/file", self.base_url());
        let mut resp = self
            .http
            .get(&url)
            .timeout(FILE_TIMEOUT)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| transport(&url, source))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|source| transport(&url, source))?;
            return Err(api_error(status, &bytes));
        }
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|source| transport(&url, source))? {
            on_chunk(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| ClientError::File { path: "(download)".into(), detail: e.to_string() })?;
            total += chunk.len() as u64;
        }
        Ok(total)
    }

    pub async fn send_metrics(&self, host: &HostId, b: &nubo_api::monitoring::MetricsBatch) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/hosts/{host}/metrics"), b).await
    }

    /// The health checks this host runs.
    pub async fn host_checks(&self, host: &HostId) -> Result<nubo_api::monitoring::HostChecks, ClientError> {
        self.get(&format!("/api/v1/agent/hosts/{host}/checks")).await
    }

    pub async fn send_check_results(
        &self,
        host: &HostId,
        r: &nubo_api::monitoring::CheckResults,
    ) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/hosts/{host}/checks"), r).await
    }

    /// Uploads an instance snapshot the host took as image `id`'s file.
    pub async fn upload_capture(
        &self,
        id: &nubo_api::ids::ImageId,
        file: &Path,
        size_bytes: u64,
        sha256: &str,
    ) -> Result<Image, ClientError> {
        let url = format!("{}/api/v1/agent/images/{id}/file?size_bytes={size_bytes}&sha256={sha256}", self.base_url());
        let body = file_body(file, |_| {})
            .await
            .map_err(|e| ClientError::File { path: file.display().to_string(), detail: e.to_string() })?;
        self.send(self.http.put(&url).timeout(FILE_TIMEOUT).body(body), &url).await
    }

    /// Takes an image build to run on this host (the one it took and has
    /// not finished, else the oldest waiting); `None` when none waits.
    pub async fn claim_image_build(&self) -> Result<Option<nubo_api::agent::ImageBuildJob>, ClientError> {
        self.post("/api/v1/agent/image-builds", &serde_json::json!({})).await
    }

    /// Reports a step of a build this host runs, or its failure.
    pub async fn report_image_build(
        &self,
        id: &nubo_api::ids::ImageId,
        r: &nubo_api::agent::ImageBuildReport,
    ) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/image-builds/{id}"), r).await
    }

    /// Takes the next backup this host should take (the control plane
    /// marks it running); `None` when none waits.
    pub async fn claim_backup_job(&self, host: &HostId) -> Result<Option<nubo_api::backup::BackupJob>, ClientError> {
        self.post(&format!("/api/v1/agent/hosts/{host}/backup-jobs"), &serde_json::json!({})).await
    }

    /// Reports the progress of a backup this host takes, or its end
    /// (`completed` or `error`).
    pub async fn report_backup_job(
        &self,
        host: &HostId,
        backup: &nubo_api::ids::BackupId,
        r: &nubo_api::backup::BackupJobReport,
    ) -> Result<(), ClientError> {
        self.post(&format!("/api/v1/agent/hosts/{host}/backup-jobs/{backup}"), r).await
    }

    /// Uploads the disk of an image this host built.
    pub async fn upload_image_build(
        &self,
        id: &nubo_api::ids::ImageId,
        file: &Path,
        size_bytes: u64,
        sha256: &str,
    ) -> Result<Image, ClientError> {
        let url =
            format!("{}/api/v1/agent/image-builds/{id}/file?size_bytes={size_bytes}&sha256={sha256}", self.base_url());
        let body = file_body(file, |_| {})
            .await
            .map_err(|e| ClientError::File { path: file.display().to_string(), detail: e.to_string() })?;
        self.send(self.http.put(&url).timeout(FILE_TIMEOUT).body(body), &url).await
    }

    pub async fn run_progress(
        &self,
        id: &nubo_api::ids::RunId,
        p: &nubo_api::agent::RunProgress,
    ) -> Result<nubo_api::agent::RunAck, ClientError> {
        self.post(&format!("/api/v1/agent/runs/{id}"), p).await
    }
}

/// How long an image upload or download may take.
/// The response header that says where a list's next page starts.
pub const NEXT_PAGE_HEADER: &str = "next-page-token";
/// How many items a page of a followed list holds (the server's largest).
const LIST_PAGE_SIZE: u32 = 1000;
const FILE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The server's error body as a [`ClientError`].
pub(crate) fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ClientError::Api { status, code: b.error.code, message: b.error.message },
        Err(_) => ClientError::Api {
            status,
            code: "http_error".into(),
            message: String::from_utf8_lossy(bytes).chars().take(500).collect(),
        },
    }
}

/// A request body streaming `path`, calling `progress` with the bytes read so far.
async fn file_body(path: &Path, mut progress: impl FnMut(u64) + Send + 'static) -> std::io::Result<reqwest::Body> {
    use futures_util::StreamExt;
    let file = tokio::fs::File::open(path).await?;
    let mut sent = 0u64;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
        if let Ok(c) = chunk {
            sent += c.len() as u64;
            progress(sent);
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAction {
    Stop,
    Start,
    Reboot,
    Terminate,
}

impl InstanceAction {
    fn verb(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Start => "start",
            Self::Reboot => "reboot",
            Self::Terminate => "terminate",
        }
    }
}

/// Percent-encodes what a user typed so it stays one path segment; the
/// server then refuses it as an invalid id instead of routing elsewhere.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segment_keeps_ids_and_escapes_the_rest() {
        assert_eq!(super::path_segment("i-0123456789abcdef0"), "i-0123456789abcdef0");
        assert_eq!(super::path_segment("../x"), "..%2Fx");
    }

    /// A port nothing listens on (bound, then closed): connections to it are refused.
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// A server answering every request with an empty JSON list; counts them.
    async fn live_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = l.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // One request per read is enough for these small GETs.
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]";
                        if conn.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, served)
    }

    #[tokio::test]
    async fn a_refusing_server_is_skipped_and_the_one_that_answers_stays_current() {
        let (live, served) = live_server().await;
        let dead = dead_port();
        let client = super::Client::new(&format!("http://127.0.0.1:{dead}/, http://127.0.0.1:{live}"), "t").unwrap();
        assert_eq!(client.base_url(), format!("http://127.0.0.1:{dead}"));
        assert!(client.hosts().await.unwrap().is_empty());
        assert_eq!(client.base_url(), format!("http://127.0.0.1:{live}"));
        // Clones share the choice; the next requests go straight there.
        let clone = client.clone();
        assert!(clone.images().await.unwrap().is_empty());
        assert!(client.instances().await.unwrap().is_empty());
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn when_no_server_answers_the_error_names_every_one() {
        let (a, b) = (dead_port(), dead_port());
        let client = super::Client::new(&format!("http://127.0.0.1:{a},http://127.0.0.1:{b}"), "t").unwrap();
        let e = client.hosts().await.unwrap_err().to_string();
        assert!(e.contains(&format!("127.0.0.1:{a}, http://127.0.0.1:{b}")) && e.contains("cannot reach"), "{e}");
    }
}
