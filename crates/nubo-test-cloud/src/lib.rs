//! A whole Nubo cloud inside one test process, driven through the typed
//! [`nubo_client::Client`] (after omicron's `nexus/test-utils` and the
//! simulated sled agent).
//!
//! [`TestCloud::start`] opens a control plane on a fresh data directory
//! (SQLite, or with `NUBO_TEST_DATABASE=postgres://...` a PostgreSQL
//! database of its own, see `nubo_controlplane::testdb`), runs its
//! background tasks and serves its router on `127.0.0.1:0` (reqwest needs
//! a socket; nothing leaves the process). It then starts N compute agents,
//! the real `nubo_agent::Agent` on the simulated driver
//! ([`nubo_hypervisor::Simulated`], which starts no VM), each joining with
//! a join token the admin minted, as a real host does. Tests get
//! [`Client`]s for the admin and for users with roles in projects, so
//! every request and answer is a type of `nubo-api`: an API change breaks
//! the tests at compile time, not at run time.
//!
//! Instances boot from [`TestCloud::IMAGE`], a small public raw image the
//! admin uploads at start (the agents download it like any registry
//! image); the builtin `tiny` image would be built from Debian's packages.
//!
//! Tests wait on conditions ([`TestCloud::wait_for_instance_state`],
//! [`wait_for`]), never on fixed sleeps. Dropping the cloud stops the
//! agents and the server. Like all test code it may panic: a panic is the
//! failure report, and says what was awaited or refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use nubo_api::ids::HostId;
use nubo_api::views::{Host, HostState, Instance, InstanceState};
use nubo_client::Client;
use nubo_controlplane::store::Backend;
use nubo_controlplane::testdb::TestDatabase;
use nubo_controlplane::{Config, Ctx};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The password every user [`TestCloud::user`] creates signs in with.
pub const PASSWORD: &str = "s3cret-pass";

/// How long the start waits for the agents to register and report up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);

/// The capacity each simulated host offers the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct HostCapacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Default for HostCapacity {
    fn default() -> Self {
        Self { vcpus: 16, memory_mib: 32768, disk_gib: 200 }
    }
}

/// What to start: how many hosts, their capacity, and changes to the
/// control plane's settings.
pub struct Builder {
    hosts: usize,
    capacity: HostCapacity,
    tweak: Box<dyn FnOnce(&mut Config) + Send>,
}

impl Builder {
    /// How many simulated hosts join (default 1).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// What each host offers (default [`HostCapacity::default`]).
    pub fn capacity(mut self, capacity: HostCapacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// Changes the control plane's settings before it starts.
    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweak = Box::new(tweak);
        self
    }

    pub async fn start(self) -> TestCloud {
        TestCloud::start_with(self).await
    }
}

/// One simulated compute host: a real agent on the simulated driver, run
/// as a task of the test's runtime.
pub struct SimHost {
    pub id: HostId,
    pub name: String,
    task: JoinHandle<()>,
}

impl SimHost {
    /// Stops the agent (its VMs, being simulated, stop reporting with it).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// A running test cloud; see the module documentation.
pub struct TestCloud {
    /// The control plane's state, for what no API shows (use sparingly:
    /// tests speak to the cloud through clients).
    pub ctx: Arc<Ctx>,
    url: String,
    admin: Client,
    hosts: Vec<SimHost>,
    server: JoinHandle<std::io::Result<()>>,
    background: JoinHandle<()>,
    dir: tempfile::TempDir,
    /// The test's PostgreSQL database, dropped after the test (declared
    /// last: fields drop in order, so the server's pool goes first).
    _db: Option<TestDatabase>,
}

impl TestCloud {
    /// The image every instance in these tests boots from (public).
    pub const IMAGE: &'static str = "sim-disk";

    /// What to start; [`Builder::start`] starts it.
    pub fn builder() -> Builder {
        Builder { hosts: 1, capacity: HostCapacity::default(), tweak: Box::new(|_| {}) }
    }

    /// A cloud with `hosts` simulated hosts of the default capacity.
    pub async fn start(hosts: usize) -> TestCloud {
        Self::builder().hosts(hosts).start().await
    }

    async fn start_with(b: Builder) -> TestCloud {
        let dir = tempfile::tempdir().expect("a temporary directory for the test cloud");
        let db = nubo_controlplane::testdb::from_env().await.unwrap_or_else(|e| panic!("{e}"));
        let mut config = Config::new(dir.path().join("server"));
        config.database = db.as_ref().map(|d| d.url.clone());
        (b.tweak)(&mut config);
        let ctx = Ctx::new(config).await.unwrap_or_else(|e| panic!("the control plane did not start: {e:#}"));
        // A cloud asked to run on PostgreSQL must not quietly run on SQLite.
        let want = if db.is_some() { Backend::Postgres } else { Backend::Sqlite };
        assert_eq!(ctx.store.backend(), want, "the test cloud's state is not where NUBO_TEST_DATABASE says");
        let background = ctx.start_background();
        let admin_token = ctx.bootstrap_admin_token().await.expect("the bootstrap admin's token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port for the API");
        let url = format!("http://{}", listener.local_addr().expect("the API's address"));
        let server = tokio::spawn(nubo_controlplane::serve(ctx.clone(), listener));
        let admin = Client::new(&url, &admin_token).expect("the admin's client");
        let mut cloud = TestCloud { ctx, url, admin, hosts: Vec::new(), server, background, dir, _db: db };
        for i in 1..=b.hosts {
            cloud.add_host(&format!("sim-{i}"), b.capacity).await;
        }
        cloud.upload_image().await;
        cloud
    }

    /// Starts one more simulated agent, which joins with a fresh join
    /// token; returns once the control plane lists its host as `up`.
    pub async fn add_host(&mut self, name: &str, capacity: HostCapacity) -> &SimHost {
        let join = self.admin.join_token().await.expect("a join token from the admin");
        let data_dir = self.dir.path().join("hosts").join(name);
        let config = nubo_agent::AgentConfig {
            server_url: self.url.clone(),
            join_token: Some(join.token),
            image_cache: data_dir.join("images"),
            data_dir,
            name: name.to_string(),
            vcpus: capacity.vcpus,
            memory_mib: capacity.memory_mib,
            disk_gib: capacity.disk_gib,
            // Short, so that tests see changes soon after they happen.
            interval: Duration::from_millis(100),
            stop_grace: Duration::from_secs(1),
            ca_cert: None,
            insecure_http: false,
            metadata_relay: None,
            metrics_interval: Duration::from_secs(5),
            plugin_dirs: Vec::new(),
            network: None,
            migration_address: "127.0.0.1".into(),
            shared_storage: None,
            guard: None,
        };
        let driver =
            Arc::new(nubo_hypervisor::Simulated::new(Duration::from_millis(50), nubo_api::BOOT_COMPLETE_MARKER));
        let agent = nubo_agent::Agent::new(config, nubo_hypervisor::Accel::Tcg, driver)
            .unwrap_or_else(|e| panic!("simulated agent {name}: {e:#}"));
        let id = agent.host_id.clone();
        let label = name.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = agent.run().await {
                panic!("simulated agent {label} stopped: {e:#}");
            }
        });
        let admin = self.admin.clone();
        let want = id.clone();
        wait_for(&format!("host {name} to register and be up"), START_TIMEOUT, || {
            let admin = admin.clone();
            let want = want.clone();
            async move { admin.hosts().await.ok()?.into_iter().find(|h| h.id == want && h.state == HostState::Up) }
        })
        .await;
        self.hosts.push(SimHost { id, name: name.to_string(), task });
        self.hosts.last().expect("the host just added")
    }

    /// A 1 MiB raw disk, uploaded as the public image [`Self::IMAGE`].
    async fn upload_image(&self) {
        let file = self.dir.path().join("sim-disk.raw");
        let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &bytes).expect("writing the test image");
        let create = nubo_api::params::ImageCreate {
            name: Self::IMAGE.into(),
            disk_format: "raw".into(),
            size_bytes: bytes.len() as u64,
            sha256: None,
            min_disk_gib: None,
            min_memory_mib: None,
            visibility: Some("public".into()),
            kernel_image: None,
            description: Some("the disk simulated instances boot from".into()),
            hardware: Default::default(),
        };
        let image = self.admin.create_image(&create).await.expect("registering the test image");
        let image = self.admin.upload_image(image.id.as_str(), &file, |_| {}).await.expect("uploading the test image");
        assert_eq!(image.state, nubo_api::views::ImageState::Active, "the test image did not become active: {image:?}");
    }

    /// The API's base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bootstrap admin (an operator, member of the `default` project).
    pub fn admin(&self) -> &Client {
        &self.admin
    }

    /// The simulated hosts, in the order they joined.
    pub fn hosts(&self) -> &[SimHost] {
        &self.hosts
    }

    /// A client with `token`, e.g. one a test issued itself.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token).expect("a client of the test cloud")
    }

    /// A new user `name` with `role` (`reader`, `member`, `admin`) in
    /// `project` (created as needed), signed in there: its client.
    pub async fn user(&self, name: &str, project: &str, role: &str) -> Client {
        let create = nubo_api::params::ProjectCreate { name: project.into(), quota: None };
        match self.admin.create_project(&create).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(409) => {}
            Err(e) => panic!("creating project {project}: {e}"),
        }
        let user = nubo_api::params::UserCreate { name: name.into(), password: PASSWORD.into(), admin: false };
        self.admin.create_user(&user).await.unwrap_or_else(|e| panic!("creating user {name}: {e}"));
        self.admin.set_member(project, name, role).await.unwrap_or_else(|e| panic!("making {name} {role}: {e}"));
        let login =
            nubo_api::params::Login { username: name.into(), password: PASSWORD.into(), project: Some(project.into()) };
        let issued = self.client("").login(&login).await.unwrap_or_else(|e| panic!("signing {name} in: {e}"));
        assert_eq!(issued.role, role, "{name} signed in with another role than given");
        self.client(&issued.token)
    }

    /// The parameters of a launch of [`Self::IMAGE`] with this size.
    pub fn instance_params(vcpus: u32, memory_mib: u64) -> nubo_api::params::InstanceCreate {
        nubo_api::params::InstanceCreate {
            image: Self::IMAGE.into(),
            vcpus,
            memory_mib,
            disk_gib: 1,
            name: None,
            user_data: None,
            ports: Vec::new(),
            key_name: None,
            recipe: None,
            metadata: None,
            tags: Default::default(),
            networks: Vec::new(),
            security_groups: Vec::new(),
            cdrom: None,
            boot: None,
            hardware: Default::default(),
        }
    }

    /// The host `id` as the operators' list shows it.
    pub async fn host(&self, id: &HostId) -> Host {
        let hosts = self.admin.hosts().await.expect("the host list");
        hosts.into_iter().find(|h| &h.id == id).unwrap_or_else(|| panic!("host {id} is not in the host list"))
    }

    /// Waits until `client` sees instance `id` in `state`; the instance
    /// then. Fails at once if it lands in `error` (unless that is what is
    /// awaited), and after `timeout` naming the state it was in.
    pub async fn wait_for_instance_state(
        &self,
        client: &Client,
        id: &str,
        state: InstanceState,
        timeout: Duration,
    ) -> Instance {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match client.instance(id).await {
                Ok(i) if i.state == state => return i,
                Ok(i) if i.state == InstanceState::Error => panic!("instance {id} is in error, not {state:?}: {i:?}"),
                Ok(i) => i,
                Err(e) => panic!("instance {id} cannot be read while waiting for {state:?}: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "instance {id} is not {state:?} after {timeout:?}; last seen {:?} on {:?} (error {:?}), events {:?}",
                last.state,
                last.host_name,
                last.error,
                last.events
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until host `id` holds exactly these used vCPUs and memory
    /// (capacity claimed or freed); the host then.
    pub async fn wait_for_host_usage(&self, id: &HostId, vcpus: u32, memory_mib: u64, timeout: Duration) -> Host {
        let admin = self.admin.clone();
        wait_for(&format!("host {id} to use {vcpus} vCPUs and {memory_mib} MiB"), timeout, || {
            let admin = admin.clone();
            let id = id.clone();
            async move {
                let h = admin.hosts().await.ok()?.into_iter().find(|h| h.id == id)?;
                (h.used_vcpus == vcpus && h.used_memory_mib == memory_mib).then_some(h)
            }
        })
        .await
    }
}

impl Drop for TestCloud {
    fn drop(&mut self) {
        for h in &self.hosts {
            h.task.abort();
        }
        self.server.abort();
        self.background.abort();
    }
}

/// Polls `check` until it gives a value, and returns it; panics after
/// `timeout`, saying it was waiting for `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}
