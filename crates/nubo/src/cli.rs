//! Command-line grammar (clap). Client commands read NUBO_URL and
//! NUBO_TOKEN, which `nubo up` writes to DATA_DIR/admin.env.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "nubo", version, about = "Nubo: an open-source IaaS cloud on QEMU/KVM")]
pub struct Cli {
    /// Where and as whom the client commands connect: given once, before
    /// or after the subcommand (`nubo --url U instance list` or
    /// `nubo instance list --url U`).
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub command: Command,
}

// The command line is parsed once per process, so the size of its largest
// variant (all of `nubo up`'s flags) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Run an all-in-one cloud: control plane, one compute agent, SQLite state.
    Up(UpArgs),
    /// Run the control plane only; agents join it with `nubo agent`.
    Server(ServerArgs),
    /// Run a compute agent that joins a control plane.
    Agent(AgentArgs),
    /// Launch and manage instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Compute hosts.
    #[command(subcommand)]
    Host(HostCmd),
    /// Images: builtin, imported, and snapshots of instances.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Volumes: data disks attached to instances.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Volume snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Metrics of hosts and instances: charts in the terminal, or JSON.
    #[command(subcommand)]
    Metrics(MetricsCmd),
    /// Health checks (Nagios-style: TCP, HTTP, liveness, plugins).
    #[command(subcommand)]
    Check(CheckCmd),
    /// Alerts and alert rules.
    #[command(subcommand)]
    Alert(AlertCmd),
    /// The event log (alerts, check state changes, policy firings).
    #[command(subcommand)]
    Event(EventCmd),
    /// Service policies: when a condition holds, act (attach a volume, scale a group, ...).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Instance groups: a launch template kept at a desired count.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Launch templates: named launch parameters in numbered versions
    /// (`nubo instance run --template`, groups, EC2's RunInstances).
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Backups that leave the host: repositories, plans, backups, restores.
    #[command(subcommand)]
    Backup(crate::backup_cmds::BackupCmd),
    /// Private networks: bridged on each host, joined between hosts by VXLAN.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Floating IPs: addresses of an external network that reach an instance on a private one.
    #[command(subcommand, name = "floating-ip", alias = "fip")]
    FloatingIp(FloatingIpCmd),
    /// Security groups: what may reach instances on private networks.
    #[command(subcommand, name = "security-group", alias = "sg")]
    SecurityGroup(SecurityGroupCmd),
    /// Tags (KEY=VALUE) on instances, volumes, snapshots, images, security
    /// groups, networks, floating IPs and key pairs: the same the EC2 API sees.
    #[command(subcommand)]
    Tag(TagCmd),
    /// Load balancers (HTTP or TCP) in front of instances or a group; `serve` runs one from a file.
    #[command(subcommand)]
    Lb(LbCmd),
    /// Sign in and save a session token for the other commands.
    Login(LoginArgs),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Projects (tenants), quotas and members.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// The audit log (operators).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The control plane's background tasks and their last runs (operators).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Access-key pairs for the EC2 API (SigV4).
    #[command(subcommand)]
    AccessKey(AccessKeyCmd),
    /// SSH key pairs: the public key is installed in instances launched with it.
    #[command(subcommand)]
    Keypair(KeypairCmd),
    /// The recipe catalogue: named, versioned, parameterised provisioning.
    #[command(subcommand)]
    Recipe(RecipeCmd),
    /// Runs of recipes and commands inside instances.
    #[command(subcommand)]
    Run(RunCmd),
    /// (Internal) pipes one guest connection to the metadata service:
    /// QEMU runs it with the connection on stdin/stdout.
    #[command(hide = true)]
    ImdsRelay { socket: PathBuf },
}

#[derive(Subcommand)]
pub enum KeypairCmd {
    /// Generate an Ed25519 key pair; the private key is written to --private-key-file (mode 0600) or printed.
    Create {
        name: String,
        /// Where to save the private key (refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        private_key_file: Option<PathBuf>,
    },
    /// Import your own OpenSSH public key (e.g. ~/.ssh/id_ed25519.pub).
    Import {
        name: String,
        #[arg(long, value_name = "FILE")]
        public_key_file: PathBuf,
    },
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    /// Delete a key pair (instances launched with it keep the key).
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum RecipeCmd {
    List,
    /// Show a recipe: parameters, defaults and its script.
    Show {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Add a recipe (or a new version) from a TOML or JSON file.
    Create {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete a project recipe (all versions, or --version).
    Delete {
        name: String,
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RunCmd {
    /// A run's state, exit code and log tail.
    Show { id: String },
    /// A run's whole log; with --follow, until it ends.
    Logs {
        id: String,
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
pub enum AccessKeyCmd {
    /// Create a pair; the secret is shown once.
    Create,
    List,
    /// Revoke a key at once.
    Delete {
        id: String,
    },
}

#[derive(Args)]
pub struct LoginArgs {
    #[arg(long = "user")]
    pub user: String,
    /// Project to work in (default: your first).
    #[arg(long)]
    pub project: Option<String>,
    /// Read the password from standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a token for yourself (printed once).
    Create {
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime, e.g. 3600 (seconds); default: no expiry.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum ProjectCmd {
    Create {
        name: String,
    },
    List,
    /// Set limits; unnamed ones keep their value.
    Quota {
        project: String,
        #[arg(long)]
        instances: Option<u64>,
        #[arg(long)]
        vcpus: Option<u64>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        volume_gib: Option<u64>,
        /// Floating IPs the project may hold (default 5).
        #[arg(long)]
        floating_ips: Option<u64>,
    },
    /// Add a user to a project, or change its role (member or reader).
    AddMember {
        project: String,
        user: String,
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// Take a user's role in a project away: at once, the user's tokens
    /// for that project read and change nothing of it.
    RemoveMember {
        project: String,
        user: String,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a local user; the password is read from standard input.
    Create {
        name: String,
        #[arg(long)]
        admin: bool,
    },
    List,
}

#[derive(Subcommand)]
pub enum AuditCmd {
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Each task: how often it runs, when it last ran, how long it took, and its last error.
    List,
}

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Where state lives. Default: $XDG_DATA_HOME/nubo, else ~/.local/share/nubo.
    #[arg(long, env = "NUBO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API (port 0 picks a free one; admin.env has the URL).
    #[arg(long, default_value = "127.0.0.1:8780")]
    pub listen: SocketAddr,
    /// vCPUs promised per host CPU.
    #[arg(long, default_value_t = 4.0)]
    pub cpu_overcommit: f64,
    /// A host whose heartbeat is silent this long is down (no new
    /// placements); silent twice as long, its instances restart elsewhere
    /// (shared storage) or are marked lost. It is also the lease: an agent
    /// with shared storage that cannot renew it for this long stops its VMs
    /// first. At least 11; agents send a heartbeat every quarter of it.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub heartbeat_timeout_secs: u64,
    /// Memory promised per MiB of host memory.
    #[arg(long, default_value_t = 1.0)]
    pub memory_overcommit: f64,
    /// How hosts are chosen: spread (least loaded) or pack (fullest that fits).
    #[arg(long, default_value = "spread")]
    pub weigher: String,
    /// Host ports (on 127.0.0.1 of each host) handed out for forwarded guest ports, FIRST-LAST.
    #[arg(long, default_value = "20000-29999", value_parser = parse_port_range)]
    pub port_range: (u16, u16),
    /// LDAP sign-in settings (JSON: url, user_dn_template, group_base, mappings).
    #[arg(long, env = "NUBO_LDAP_CONFIG")]
    pub ldap_config: Option<PathBuf>,
    /// Serve HTTPS, also on a loopback --listen address (any other address
    /// gets it without asking). Without --tls-cert, Nubo makes a CA and a
    /// certificate in DATA_DIR/tls on first start; clients trust it via
    /// NUBO_CA_CERT (admin.env sets it), agents via their join token.
    #[arg(long)]
    pub tls: bool,
    /// Serve plain HTTP on a --listen address beyond loopback. Join tokens,
    /// host credentials, API tokens and sessions then cross the network in
    /// clear; without this flag such a server serves HTTPS.
    #[arg(long, conflicts_with_all = ["tls", "tls_cert"])]
    pub insecure_http: bool,
    /// Serve this PEM certificate chain (server certificate first) instead; implies --tls.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Instance types for the EC2 API (TOML `[[type]]` or JSON `{"types": [...]}`
    /// with name, vcpus, memory_mib), added to the built-in EC2 names.
    #[arg(long, value_name = "FILE", env = "NUBO_INSTANCE_TYPES")]
    pub instance_types: Option<PathBuf>,
    /// API requests per second allowed to each user (all its tokens and
    /// access keys together) or host (twice that in a burst); over it the
    /// caller gets 429 and retries.
    #[arg(long, default_value_t = 200)]
    pub api_rate_limit: u32,
    /// Sign-in attempts a minute allowed for one user name, right or wrong
    /// (that many at once); past it sign-ins get 429 with Retry-After.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub login_attempts_per_user: u32,
    /// Sign-in attempts a minute allowed from one address.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub login_attempts_per_source: u32,
    /// Live API tokens one user may hold, sign-in sessions included (a new
    /// sign-in replaces the oldest session; a new named token is refused).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_tokens_per_user: u32,
    /// The longest life of an API token, e.g. 90d, 12h (tokens asked for
    /// without an expiry get it; older tokens without one get it at start).
    #[arg(long, default_value = "90d", value_parser = parse_duration, value_name = "DURATION")]
    pub max_token_lifetime: std::time::Duration,
    /// How long audit entries are kept, e.g. 90d (older ones are deleted).
    #[arg(long, default_value = "90d", value_parser = parse_duration, value_name = "DURATION")]
    pub audit_retention: std::time::Duration,
    /// Audit entries a minute written for unauthenticated requests from one
    /// address; past it such requests are only counted in the server's log.
    #[arg(long, default_value_t = 60, value_name = "N")]
    pub anonymous_audit_per_minute: u32,
    /// Keep the control plane's state in this PostgreSQL database
    /// (postgres://USER:PASSWORD@HOST/DATABASE) instead of SQLite in
    /// DATA_DIR/nubo.db. Image files and the sealing key stay in DATA_DIR.
    #[arg(long, value_name = "URL", env = "NUBO_DATABASE")]
    pub database: Option<String>,
    /// Let alert and policy webhooks reach this range although it is
    /// loopback, private, link-local or otherwise special (repeatable; an
    /// address or a CIDR, e.g. 10.0.0.0/8 for receivers on your own network).
    /// Without it webhooks go to public addresses only.
    #[arg(long = "webhook-allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Alert rules one project may have.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_alert_rules_per_project: u32,
    /// Service policies one project may have.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_policies_per_project: u32,
    /// Image files one project may keep in the registry, imports and
    /// instance snapshots together (e.g. 50GiB, 500MiB).
    #[arg(long, default_value = "50GiB", value_name = "SIZE", value_parser = parse_size)]
    pub image_quota: u64,
    /// The largest image file accepted (e.g. 32GiB).
    #[arg(long, default_value = "32GiB", value_name = "SIZE", value_parser = parse_size)]
    pub max_image_size: u64,
    /// The portal's browser libraries (xterm.js, noVNC) as
    /// scripts/web-assets.sh installs them (its DIR, default .cache/web of
    /// the source tree); served under /ui/vendor/. Default: DATA_DIR/web.
    #[arg(long, env = "NUBO_WEB_ASSETS", value_name = "DIR")]
    pub web_assets: Option<PathBuf>,
    /// Let users import images from URLs on this host (repeatable): an
    /// exact host name or address (`images.example.com`, `10.0.0.5`), a
    /// domain's subdomains (`.example.com`), or `*` for any host. Loopback,
    /// private and link-local addresses are fetched from only when listed
    /// exactly. Without it, URL imports are refused.
    #[arg(long = "image-url-allow", value_name = "HOST")]
    pub image_url_allow: Vec<String>,
    /// Also send every metric sample to this Prometheus remote-write
    /// endpoint (e.g. http://127.0.0.1:9090/api/v1/write), from a bounded
    /// queue: samples are dropped, and counted on /metrics, when it cannot
    /// keep up. The operator's own receiver: loopback and private
    /// addresses are allowed.
    #[arg(long, value_name = "URL")]
    pub metrics_remote_write: Option<url::Url>,
    /// Read metric queries (policies, alert rules, charts, latest values)
    /// from this Prometheus (its base URL, e.g. http://127.0.0.1:9090)
    /// instead of the embedded store.
    #[arg(long, value_name = "URL")]
    pub metrics_read_from: Option<url::Url>,
    /// Where samples are kept in Nubo itself: `embedded` (the control
    /// plane's database, the default) or `off` (only with
    /// --metrics-read-from; samples then live in Prometheus alone).
    #[arg(long, value_enum, default_value_t = MetricsStore::Embedded)]
    pub metrics_store: MetricsStore,
}

/// `--metrics-store`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsStore {
    Embedded,
    Off,
}

/// An address (one host) or a CIDR.
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or a CIDR such as 10.0.0.0/8 or fd00::/8"))
}

/// A size in bytes, or with a unit: KiB, MiB, GiB, TiB (K, M, G, T are the same).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is not a size such as 50GiB, 500MiB or 1048576"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        other => return Err(format!("'{other}' is not a size unit: use KiB, MiB, GiB or TiB")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{s}' is too large"))
}

#[derive(Args, Clone)]
pub struct AgentOpts {
    /// Accelerator: auto picks KVM only where it runs ordinary guests.
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Image cache (shared by several data dirs if wanted). Default: DATA_DIR/images.
    #[arg(long, env = "NUBO_IMAGE_CACHE")]
    pub image_cache: Option<PathBuf>,
    /// Host name shown in `nubo host list`. Default: the machine's hostname.
    #[arg(long)]
    pub host_name: Option<String>,
    /// vCPUs offered (default: the host's CPUs).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory offered in MiB (default: host memory less 512 MiB).
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Disk offered in GiB (default: size of the data dir's filesystem).
    #[arg(long)]
    pub disk_gib: Option<u64>,
    /// Seconds a guest gets to power off before QEMU is stopped.
    #[arg(long, default_value_t = 10)]
    pub stop_grace_secs: u64,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64", env = "NUBO_QEMU")]
    pub qemu: String,
    /// Bytes of each instance's serial console output kept on this host's
    /// disk; older output is dropped as new output arrives (65536 at
    /// least; rounded up to a multiple of 4096).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = nubo_hypervisor::console::DEFAULT_CONSOLE_CAP,
        env = "NUBO_CONSOLE_MAX_BYTES",
        value_parser = clap::value_parser!(u64).range(nubo_hypervisor::console::MIN_CONSOLE_CAP..),
    )]
    pub console_max_bytes: u64,
    /// The hypervisor driver. `simulated` starts no VM: it reports
    /// plausible state and metrics, for scale tests and benchmarks only.
    #[arg(long, value_enum, default_value_t = HypervisorKind::Qemu)]
    pub hypervisor: HypervisorKind,
    /// Seconds between samples of the host and its instances (monitoring).
    #[arg(long, default_value_t = 10)]
    pub metrics_interval_secs: u64,
    /// Where plugin checks' Nagios plugins are looked up (repeatable;
    /// default /usr/lib/nagios/plugins).
    #[arg(long = "plugin-dir", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// Run private networks: this host's address on the underlay network
    /// that joins the hosts (VXLAN tunnels end there). Needs iproute2,
    /// nftables and dnsmasq. Without it, instances get user-mode networking.
    #[arg(long, value_name = "IPV4")]
    pub underlay: Option<std::net::Ipv4Addr>,
    /// The network namespace holding this host's bridges and taps (for a
    /// test host made with `ip netns add`); default: the agent's own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Map an external network's interface name to one of this host's
    /// interfaces or bridges (repeatable): `--external lan=eth1`. Instances
    /// on external networks with that name, and floating IPs from them,
    /// then run here. The interface should carry no address of the host's
    /// own unless it is a bridge (Nubo adds its ports to a bridge of its own).
    #[arg(long = "external", value_name = "NAME=IFACE", value_parser = parse_external)]
    pub externals: Vec<(String, String)>,
    /// A DNS resolver for names outside the private networks (repeatable):
    /// each network's DNS on its gateway forwards them there. None: the
    /// networks' DNS answers only their instances' names.
    #[arg(long = "resolver", value_name = "IPV4")]
    pub resolvers: Vec<std::net::Ipv4Addr>,
    /// Where live migrations into this host arrive (disks over NBD, then
    /// the VM's state). Default: the underlay address, or 127.0.0.1 when
    /// there is none or the host is a test namespace (QEMU runs outside it).
    #[arg(long, value_name = "IPV4")]
    pub migration_address: Option<std::net::Ipv4Addr>,
    /// Keep instance disks and volumes in DIR, storage every host of the
    /// group mounts at the same path (NFS, CephFS, ...): when this host
    /// stops reporting, its instances restart on another of them.
    #[arg(long, value_name = "DIR")]
    pub shared_storage: Option<PathBuf>,
    /// Whether guests on the user-mode network may open connections to
    /// other machines (`off`: QEMU's `restrict=on`; forwarded ports and the
    /// metadata service still work).
    #[arg(long, value_enum, default_value_t = GuestEgress::On)]
    pub guest_egress: GuestEgress,
    /// Run even where guests cannot be kept from this host's own listeners
    /// (no cgroup v2, no nftables, not root). Guests can then reach the
    /// control plane, other instances' forwarded ports and every service on
    /// this host's 127.0.0.1: only for a single-user test machine.
    #[arg(long)]
    pub insecure_guest_host_access: bool,
}

#[derive(Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub agent: AgentOpts,
    /// As root: this machine's own network for instances, as libvirt's
    /// default network is. A bridge (nubo0) takes the range's first
    /// address, the range is masqueraded out, and it becomes the external
    /// network `host`, which gives instances on their default network an
    /// address this machine reaches directly. Pick a range no interface
    /// of the machine uses.
    #[arg(long, value_name = "CIDR", default_value = "192.168.123.0/24")]
    pub host_network: String,
    /// No host network, even as root: instances get user-mode networking
    /// (ports forwarded on 127.0.0.1) unless --underlay is given.
    #[arg(long)]
    pub no_host_network: bool,
}

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// The control plane's URL, e.g. https://10.0.0.1:8780; with several
    /// servers on one PostgreSQL, all their URLs separated by commas (the
    /// agent moves to the next one when one cannot be reached).
    #[arg(long, env = "NUBO_SERVER")]
    pub server: String,
    /// One-time join token (printed by `nubo server`, or `nubo host join-token`).
    /// Needed only at the first start; the host then keeps its own credential.
    /// It names the server's CA: the agent checks the server against it and
    /// keeps the CA in DATA_DIR/server-ca.pem, so no --ca-cert is needed.
    #[arg(long, env = "NUBO_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Where the agent keeps its host id and VMs. Default as for `nubo up`.
    #[arg(long, env = "NUBO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for an https:// server, e.g. the
    /// server's DATA_DIR/tls/ca.pem (not needed with a current join token).
    #[arg(long, value_name = "FILE", env = "NUBO_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Talk to a server on another machine over plain http:// (refused
    /// otherwise: the join token and the host's credential would cross the
    /// network in clear).
    #[arg(long)]
    pub insecure_http: bool,
    #[command(flatten)]
    pub opts: AgentOpts,
}

/// `--guest-egress`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum GuestEgress {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Clone)]
pub struct Conn {
    /// API URL (several servers' URLs separated by commas fail over); else
    /// the one saved by `nubo login`.
    #[arg(long, env = "NUBO_URL", hide_env_values = true, global = true)]
    url: Option<String>,
    /// API token; else the one saved by `nubo login`.
    #[arg(long, env = "NUBO_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Format,
}

impl Conn {
    /// The URL given, if any (an empty `NUBO_URL=` counts as none).
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref().filter(|u| !u.trim().is_empty())
    }

    /// The token given, if any (an empty `NUBO_TOKEN=` counts as none).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.trim().is_empty())
    }
}

// Parsed once per process: the size of `Run`'s arguments costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum InstanceCmd {
    /// Launch an instance; prints its id.
    Run {
        /// Launch from this launch template (`NAME` or `lt-...`, with
        /// `:VERSION` or `:$Latest`; default its default version): the
        /// flags given override its fields (tags are added).
        #[arg(long, value_name = "NAME[:VERSION]", conflicts_with = "recipe")]
        template: Option<String>,
        /// Image name or id (default: tiny).
        #[arg(long)]
        image: Option<String>,
        /// Default: 1.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MiB (default: 256).
        #[arg(long)]
        memory: Option<u64>,
        /// Root disk in GiB (default: 1).
        #[arg(long)]
        disk: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        /// A file with user-data (a #! script runs at boot).
        #[arg(long)]
        user_data: Option<PathBuf>,
        /// Guest TCP port to forward from 127.0.0.1 (repeatable).
        #[arg(long = "port")]
        ports: Vec<u16>,
        /// Key pair whose public key is installed for root.
        #[arg(long)]
        key_name: Option<String>,
        /// Recipe to run once the instance is up (see `nubo recipe list`).
        #[arg(long)]
        recipe: Option<String>,
        /// Recipe version (default: the newest).
        #[arg(long, requires = "recipe")]
        recipe_version: Option<String>,
        /// Recipe parameter NAME=VALUE (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE", requires = "recipe")]
        params: Vec<String>,
        /// Metadata service: optional (IMDSv1 and v2) or required (IMDSv2 tokens only).
        #[arg(long, value_parser = ["optional", "required"])]
        metadata_tokens: Option<String>,
        /// Attach to this private network (name or id; repeatable, one NIC each).
        /// Default: the project's default network when a host can bridge
        /// (made on first use), else user-mode networking; `none` asks for
        /// user-mode networking alone.
        #[arg(long = "network", value_name = "NETWORK")]
        networks: Vec<String>,
        /// Security group (name or id; repeatable). Default: the project's `default`.
        #[arg(long = "security-group", value_name = "GROUP")]
        security_groups: Vec<String>,
        /// A tag, KEY=VALUE (repeatable): the same tags EC2 sees, and what
        /// policies scoped by tag select.
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Protect it from termination from the start (lift it with
        /// `nubo instance protect ID --no-termination`).
        #[arg(long)]
        termination_protection: bool,
        /// An ISO image (imported with `--format iso`) for a CD-ROM drive,
        /// booted first; with `--image blank` the root disk starts empty,
        /// to install an OS on.
        #[arg(long, value_name = "ISO", conflicts_with_all = ["template", "recipe"])]
        cdrom: Option<String>,
        /// Boot order with a CD-ROM drive: cdrom,disk (default) or disk,cdrom.
        #[arg(long, value_name = "ORDER", requires = "cdrom")]
        boot: Option<String>,
        /// Return only once the instance is running (and its recipe has finished).
        #[arg(long)]
        wait: bool,
        /// Firmware, Secure Boot, TPM, display beyond what the image needs
        /// (the firmware chosen wins where the image allows it).
        #[command(flatten)]
        hardware: crate::hardware_cmds::HardwareArgs,
    },
    /// Turn termination or stop protection on or off, or choose what a
    /// poweroff inside the guest does; prints the instance.
    Protect {
        id: String,
        /// Refuse every terminate (REST, CLI, portal, EC2, groups) until turned off.
        #[arg(long, overrides_with = "no_termination")]
        termination: bool,
        /// Allow terminating it again.
        #[arg(long)]
        no_termination: bool,
        /// Refuse every stop until turned off.
        #[arg(long, overrides_with = "no_stop")]
        stop: bool,
        /// Allow stopping it again.
        #[arg(long)]
        no_stop: bool,
        /// What a poweroff inside the guest does: stop (the default) or terminate.
        #[arg(long, value_parser = ["stop", "terminate"])]
        shutdown_behavior: Option<String>,
    },
    /// Run a recipe in a running instance and follow its log.
    Provision {
        id: String,
        #[arg(long)]
        recipe: String,
        #[arg(long)]
        version: Option<String>,
        /// Recipe parameter NAME=VALUE (repeatable).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print the run id and return without following it.
        #[arg(long)]
        detach: bool,
    },
    /// Run a command in an instance through its guest agent; exits with its exit code.
    Exec {
        id: String,
        /// Seconds before the command is reported failed.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The program and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Live-migrate a running instance to another host (operators);
    /// with --wait, prints the pause the guest saw and the total time.
    Migrate {
        id: String,
        /// Target host (name or id); default: the scheduler's pick.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    /// The instance's recipe and command runs.
    Runs {
        id: String,
    },
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    Show {
        id: String,
    },
    /// Print the serial console's output, or with --attach type into it.
    Console {
        id: String,
        /// Attach this terminal to the serial console, both ways: what you
        /// type goes to the guest (a reader-role user only watches).
        /// Detach with Ctrl-]; the terminal is restored on exit.
        #[arg(long)]
        attach: bool,
    },
    Stop {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    Start {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    Reboot {
        id: String,
    },
    Terminate {
        id: String,
        #[arg(long)]
        wait: bool,
    },
    /// Eject or insert the disc of the instance's CD-ROM drive (running
    /// or stopped); prints the instance.
    Cdrom {
        #[command(subcommand)]
        cmd: CdromCmd,
    },
    /// Set what a stopped instance with a CD-ROM drive boots first:
    /// `cdrom,disk` or `disk,cdrom`; prints the instance.
    BootOrder {
        id: String,
        order: String,
    },
    /// Make an image of the instance's root disk (a point-in-time copy).
    Snapshot {
        id: String,
        /// The new image's name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Return once the image is active.
        #[arg(long)]
        wait: bool,
    },
    /// Give an instance a new size: a stopped one any size its host has
    /// room for (it boots with it next time); a running one more vCPUs
    /// (hot-added, seen by the guest at once), anything else once it is
    /// stopped. Prints the instance.
    Resize {
        id: String,
        /// The new number of vCPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// The new memory in MiB.
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
    },
    /// A fresh root disk from an image, keeping the id, addresses,
    /// volumes, tags, key and user-data (first boot runs again). A running
    /// instance is stopped, rebuilt and started.
    Rebuild {
        id: String,
        /// Image name or id.
        #[arg(long)]
        image: String,
        /// Return once it runs again (or, stopped, once it is recorded).
        #[arg(long)]
        wait: bool,
    },
    /// Put a stopped instance's root disk back as one of its snapshots
    /// (`nubo instance snapshot`) holds it; done at its next start.
    Revert {
        id: String,
        /// The instance snapshot (image name or id).
        #[arg(long)]
        snapshot: String,
    },
    /// Write a stopped instance's disks back from one of its backups
    /// (root disk and the volumes the backup holds); done at its next start.
    Restore {
        id: String,
        /// The backup, bak-...
        #[arg(long)]
        backup: String,
    },
}

#[derive(Subcommand)]
pub enum CdromCmd {
    /// Empty the drive (even if the guest locked it); it stays empty
    /// across restarts.
    Eject { id: String },
    /// Put an ISO image (name or id) in the drive.
    Insert { id: String, iso: String },
}

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (a sparse file on a host's storage pool).
    Create {
        /// Size in GiB.
        #[arg(long, value_name = "GIB")]
        size: u64,
        #[arg(long)]
        name: Option<String>,
        /// Fill it from this snapshot.
        #[arg(long)]
        snapshot: Option<String>,
        /// Put it on this instance's host (to attach it there).
        #[arg(long)]
        instance: Option<String>,
        /// Return once it is available.
        #[arg(long)]
        wait: bool,
    },
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    Show {
        volume: String,
    },
    /// Attach to an instance (hot-plugged if it runs); with --wait, until the guest sees it.
    Attach {
        volume: String,
        instance: String,
        #[arg(long)]
        wait: bool,
    },
    /// Detach (hot-unplugged from a running guest once it lets go).
    Detach {
        volume: String,
        #[arg(long)]
        wait: bool,
    },
    /// Grow a volume (online when attached); with --wait, until the guest sees the new size.
    Extend {
        volume: String,
        /// The new size in GiB.
        #[arg(long, value_name = "GIB")]
        size: u64,
        #[arg(long)]
        wait: bool,
    },
    /// Take a point-in-time snapshot of a volume.
    Snapshot {
        volume: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        wait: bool,
    },
    Delete {
        volume: String,
        #[arg(long)]
        wait: bool,
    },
    /// Put a volume's content back as one of its snapshots holds it
    /// (detached, or its instance stopped).
    Revert {
        volume: String,
        /// The snapshot, snap-...
        #[arg(long)]
        snapshot: String,
        /// Return once the volume has its snapshot's content.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    Show {
        snapshot: String,
    },
    Delete {
        snapshot: String,
    },
}

#[derive(Subcommand)]
pub enum HostCmd {
    List,
    /// A one-time token for `nubo agent --join-token` (valid 1 hour).
    JoinToken,
    /// Stop new placements on a host (its instances keep running).
    Drain {
        host: String,
    },
    /// Let a drained host take new instances again.
    Enable {
        host: String,
    },
    /// Drain a host and live-migrate its running instances elsewhere.
    Evacuate {
        host: String,
        /// Return once every migration has ended (with each one's figures);
        /// with --from-backups, once every restored instance runs.
        #[arg(long)]
        wait: bool,
        /// The host is dead: restore each of its instances on other hosts
        /// from its newest backup (its data is as old as that backup).
        #[arg(long)]
        from_backups: bool,
    },
    /// Live migrations, newest first.
    Migrations,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    /// Upload a disk image (raw or qcow2) into the registry, or have the
    /// cloud fetch one: give an http:// or https:// URL instead of a file.
    Import {
        /// The file to upload, or the http(s) URL the control plane fetches
        /// (on a host the operator allowed: nubo server --image-url-allow),
        /// showing its progress until it is checked and stored.
        #[arg(value_name = "FILE|URL")]
        file: PathBuf,
        /// The SHA-256 a fetched file must have (URL imports; an upload's is
        /// computed from the file).
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// The image's name (required for a file; for a URL, its file name
        /// without the extension by default).
        #[arg(long)]
        name: Option<String>,
        /// raw or qcow2 (default: what the file looks like, or the URL's
        /// extension; the server checks it), or iso: a CD image for
        /// `nubo instance run --cdrom`.
        #[arg(long, value_parser = ["raw", "qcow2", "iso"])]
        format: Option<String>,
        /// Smallest root disk in GiB instances of it get (at least its virtual size).
        #[arg(long, value_name = "GIB")]
        min_disk: Option<u64>,
        /// Smallest memory in MiB instances of it need.
        #[arg(long, value_name = "MIB")]
        min_memory: Option<u64>,
        /// Visible to every project (operators only).
        #[arg(long)]
        public: bool,
        /// Boot it with this builtin image's kernel and initrd (e.g. tiny) instead of its own boot loader.
        #[arg(long)]
        kernel_image: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        hardware: crate::hardware_cmds::HardwareArgs,
    },
    /// Change what instances of an image need (firmware, Secure Boot, TPM,
    /// display); instances already launched keep theirs.
    Hardware {
        image: String,
        #[command(flatten)]
        change: crate::hardware_cmds::HardwareChangeArgs,
    },
    /// Show an image (by id or name).
    Show { image: String },
    /// Delete an image (refused while instances use it or snapshots came from it).
    Delete { image: String },
    /// Build an image. With --name, the cloud builds it (a host builds
    /// `debian` with the packages and uploads it into the registry, where
    /// every host fetches it) and the progress shows until it is stored.
    /// Without --name, a builtin image (tiny, debian) is built into the
    /// local image cache, which only this machine's agents see.
    Build {
        name: String,
        /// Register the build in the cloud's image registry under this name
        /// (e.g. web-base; `debian` makes it the project's own `debian`).
        #[arg(long = "name", value_name = "IMAGE")]
        image_name: Option<String>,
        /// With --name: build on this machine, then upload the result to
        /// the cloud, instead of having a host build it.
        #[arg(long, requires = "image_name")]
        local: bool,
        /// With --name: visible to every project (operators only).
        #[arg(long, requires = "image_name")]
        public: bool,
        /// Extra Debian packages for the `debian` image (comma-separated, repeatable),
        /// e.g. `--packages nginx,curl`. The build is still the image `debian`.
        #[arg(long = "packages", value_delimiter = ',', value_name = "PKG[,PKG...]")]
        packages: Vec<String>,
        /// Image cache. Default: DATA_DIR/images.
        #[arg(long, env = "NUBO_IMAGE_CACHE")]
        cache: Option<PathBuf>,
        #[arg(long, env = "NUBO_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Rebuild even if cached (a cached `debian` is reused only when it
        /// already holds every package asked for).
        #[arg(long)]
        force: bool,
    },
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("'{s}' is not FIRST-LAST, e.g. 20000-29999"))?;
    let first: u16 = a.trim().parse().map_err(|_| format!("'{a}' is not a port number"))?;
    let last: u16 = b.trim().parse().map_err(|_| format!("'{b}' is not a port number"))?;
    if first == 0 || first > last {
        return Err(format!("the range {first}-{last} is empty or starts at 0"));
    }
    Ok((first, last))
}

#[derive(Subcommand)]
pub enum MetricsCmd {
    /// A metric of an instance or host as a chart (or the series with -o json).
    Show {
        /// Instance (i-...) or host (h-...) id.
        resource: String,
        /// e.g. cpu (cpu_percent), memory, disk (fs_used_percent), net_rx_bytes_per_second.
        #[arg(long, default_value = "cpu")]
        metric: String,
        /// How far back: 15m, 2h, 7d.
        #[arg(long, default_value = "15m")]
        since: String,
        /// Step between points, e.g. 10s or 1m (default: the range over 60).
        #[arg(long)]
        step: Option<String>,
    },
    /// The newest value of every metric of an instance or host.
    List { resource: String },
}

#[derive(Subcommand)]
pub enum CheckCmd {
    /// Watch an instance (or, operators, a host): one of --tcp, --http, --liveness, or a plugin after `--`.
    Create {
        target: String,
        #[arg(long)]
        name: String,
        /// TCP connect to this guest port (through its forwarded port).
        #[arg(long, value_name = "PORT", conflicts_with_all = ["http", "liveness"])]
        tcp: Option<u16>,
        /// HTTP GET on this guest port.
        #[arg(long, value_name = "PORT", conflicts_with_all = ["tcp", "liveness"])]
        http: Option<u16>,
        #[arg(long, requires = "http")]
        path: Option<String>,
        #[arg(long, requires = "http")]
        expect: Option<u16>,
        /// QEMU runs and the guest agent answers.
        #[arg(long)]
        liveness: bool,
        /// Seconds between checks (default 60).
        #[arg(long)]
        interval: Option<u64>,
        /// Seconds between retries of a soft problem.
        #[arg(long)]
        retry_interval: Option<u64>,
        /// Non-OK results in a row before a problem is hard (default 3).
        #[arg(long)]
        max_attempts: Option<u64>,
        #[arg(long)]
        timeout: Option<u64>,
        /// A Nagios plugin and its arguments (operators), e.g.
        /// `-- check_http -H '$HOSTADDRESS$' -p '$PORT:80$' -u /`.
        #[arg(last = true)]
        plugin: Vec<String>,
    },
    List,
    /// A check with its state history.
    Show {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum AlertCmd {
    /// Firing alerts (--all: resolved ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    Show {
        id: String,
    },
    /// Mark an alert as being looked after.
    Ack {
        id: String,
    },
    /// No notifications for a while, e.g. --for 1h.
    Silence {
        id: String,
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
    },
    /// Alert rules.
    #[command(subcommand)]
    Rule(AlertRuleCmd),
}

#[derive(Subcommand)]
pub enum AlertRuleCmd {
    /// A rule on a metric (--metric with --above/--below) or on checks (--check-state).
    Create {
        #[arg(long)]
        name: String,
        /// Instance or host id, or '*' for every instance of the project.
        #[arg(long)]
        target: String,
        #[arg(long)]
        metric: Option<String>,
        #[arg(long, conflicts_with = "below")]
        above: Option<f64>,
        #[arg(long)]
        below: Option<f64>,
        /// How long the condition must hold, e.g. 30s (default 0).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Fire on checks of the target in this hard state or worse: warning or critical.
        #[arg(long, value_parser = ["warning", "critical"], conflicts_with = "metric")]
        check_state: Option<String>,
        /// Only this check.
        #[arg(long, requires = "check_state")]
        check: Option<String>,
        /// POST notifications here (JSON).
        #[arg(long)]
        webhook: Option<String>,
    },
    List,
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum EventCmd {
    List,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Create or replace a policy from a YAML or JSON document.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    List,
    /// A policy with its newest firings.
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a group from a YAML or JSON document (name, template, min, max, ...).
    Create {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Launch members from this launch template instead of the
        /// document's `template`: `NAME`, `NAME:VERSION`, `NAME:$Default`
        /// (the default) or `NAME:$Latest`, resolved at each launch.
        #[arg(long, value_name = "NAME[:VERSION]")]
        template: Option<String>,
    },
    List,
    /// A group with its members and activity.
    Show {
        name: String,
    },
    /// Set the desired count.
    SetDesired {
        name: String,
        desired: u32,
    },
    /// Delete a group and terminate its members.
    Delete {
        name: String,
    },
}

/// Which hypervisor driver an agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HypervisorKind {
    /// QEMU, with KVM or TCG (see --accel).
    Qemu,
    /// No VM at all: plausible state and metrics, for measuring the control plane.
    Simulated,
}

// Parsed once per process, like `Command`: its largest variant (all of
// `lb create`'s flags) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum LbCmd {
    /// Create a load balancer in front of instances (--target) and/or a group (--group).
    Create {
        /// 1-63 letters, digits, `-`, `_` or `.`.
        name: String,
        /// The guest port the targets serve on (each target must forward it).
        #[arg(long)]
        port: u16,
        /// `http` (each request balanced) or `tcp` (each connection).
        #[arg(long, default_value = "http")]
        protocol: String,
        /// `round-robin`, `least-connections` or `least-loaded`.
        #[arg(long, default_value = "round-robin")]
        algorithm: String,
        /// An instance id to balance to (repeatable).
        #[arg(long = "target", value_name = "INSTANCE")]
        targets: Vec<String>,
        /// An instance group whose members are targets as it scales.
        #[arg(long)]
        group: Option<String>,
        /// A target's weight, INSTANCE=N with N 1 to 1000 (repeatable; default 1).
        #[arg(long = "weight", value_name = "INSTANCE=N", value_parser = parse_weight)]
        weights: Vec<(String, u32)>,
        /// Run on this private network: the balancer gets an address there
        /// and reaches its targets at theirs, on any host (no --port forwards).
        #[arg(long)]
        network: Option<String>,
        /// With --network: listen on this floating IP of the project (id or
        /// address), which the balancer keeps when it moves to another host.
        #[arg(long, requires = "network")]
        floating_ip: Option<String>,
        /// HTTP balancers: the path the health check GETs (default `/`).
        #[arg(long, value_name = "PATH")]
        check_path: Option<String>,
        /// Seconds between health checks (default 5).
        #[arg(long, value_name = "SECS")]
        check_interval: Option<u32>,
        /// Seconds a health check may take.
        #[arg(long, value_name = "SECS")]
        check_timeout: Option<u32>,
        /// The status a passing HTTP check answers (default: any 2xx or 3xx).
        #[arg(long, value_name = "STATUS")]
        check_status: Option<u16>,
        /// Passing checks in a row that bring a backend back (default 1).
        #[arg(long, value_name = "N")]
        healthy_threshold: Option<u32>,
        /// Failing checks in a row that take a backend out (default 1).
        #[arg(long, value_name = "N")]
        unhealthy_threshold: Option<u32>,
        /// Return once its host runs it.
        #[arg(long)]
        wait: bool,
    },
    List,
    /// A load balancer with each backend's health and counters.
    Show {
        /// Its id or name.
        lb: String,
    },
    Delete {
        lb: String,
    },
    /// Run the data plane outside Nubo, from a TOML (or .json) file of
    /// listeners; SIGHUP reloads it in place.
    Serve {
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (id, w) = s.split_once('=').ok_or_else(|| format!("'{s}' is not INSTANCE=N (e.g. i-0123456789abcdef0=3)"))?;
    let w: u32 = w.trim().parse().map_err(|_| format!("the weight in '{s}' is not a whole number"))?;
    Ok((id.trim().to_string(), w))
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a private network (its first address is the gateway), or,
    /// as an operator, an external one: the hosts' LAN or a VLAN of it.
    Create {
        name: String,
        /// IPv4 range, /16 to /29, e.g. 10.20.0.0/24.
        #[arg(long)]
        cidr: String,
        /// An external (provider) network: instances attach to it directly
        /// and floating IPs come from its pool.
        #[arg(long, requires_all = ["interface", "gateway", "pool"])]
        external: bool,
        /// The name each host maps to an interface (`nubo agent --external NAME=IFACE`).
        #[arg(long, requires = "external")]
        interface: Option<String>,
        /// An 802.1Q VLAN tag on that interface.
        #[arg(long, requires = "external")]
        vlan: Option<u16>,
        /// The LAN's router.
        #[arg(long, requires = "external")]
        gateway: Option<String>,
        /// FIRST-LAST: the addresses Nubo hands out (the first answers DHCP
        /// on each host). Keep the LAN's own DHCP out of it.
        #[arg(long, requires = "external")]
        pool: Option<String>,
        /// Give every instance launched on its project's default network
        /// an address of this network automatically (EC2's public IP),
        /// released with the instance. At most one network does.
        #[arg(long, requires = "external")]
        auto_assign: bool,
    },
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    /// A network and the instances on it.
    Show { network: String },
    /// Delete a network no instance uses.
    Delete { network: String },
}

#[derive(Subcommand)]
pub enum FloatingIpCmd {
    /// Take an address from an external network's pool for the project.
    Allocate {
        /// The external network (id or name).
        #[arg(long)]
        network: String,
    },
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    Show {
        /// Its id or address.
        floating_ip: String,
    },
    /// Point it at an instance on a private network (its first private NIC).
    Associate { floating_ip: String, instance: String },
    /// Point it at nothing; the project keeps it.
    Disassociate { floating_ip: String },
    /// Give it back to the pool.
    Release { floating_ip: String },
}

#[derive(Subcommand)]
pub enum SecurityGroupCmd {
    /// Create a group (it lets nothing in until a rule says so, and
    /// everything out).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Groups and their rules.
    List {
        /// Only those with a tag: `tag:KEY=VALUE` (that value) or `tag:KEY`
        /// (any value); repeat it for several, all must match.
        #[arg(long = "filter", value_name = "tag:KEY[=VALUE]")]
        filter: Vec<String>,
    },
    /// Let traffic in: `allow web --protocol tcp --port 80 --cidr 0.0.0.0/0`
    /// (or out, with --egress; a new group lets everything out until its
    /// egress rule is revoked).
    Allow {
        group: String,
        /// tcp, udp, icmp or all.
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// A port or a range LOW-HIGH (tcp and udp).
        #[arg(long)]
        port: Option<String>,
        /// From this IPv4 range, A.B.C.D/LEN without host bits (an address alone is its /32).
        #[arg(long, conflicts_with = "source_group")]
        cidr: Option<String>,
        /// From members of this group.
        #[arg(long)]
        source_group: Option<String>,
        /// Let traffic out instead: --cidr and --source-group then say
        /// where members may connect to.
        #[arg(long)]
        egress: bool,
    },
    /// Remove a rule by id (sgr-...); new connections it allowed are refused.
    Revoke { group: String, rule: String },
}

#[derive(Subcommand)]
pub enum TagCmd {
    /// Add or overwrite tags on a resource (its other tags stay):
    /// `nubo tag set i-... env=prod team=web`.
    Set {
        /// i-, vol-, snap-, ami-, sg-, net- (or vpc-, subnet-), fip- or key-...
        resource: String,
        /// KEY=VALUE (an empty value is allowed: KEY=).
        #[arg(required = true, value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// Remove tags from a resource by key.
    Unset {
        resource: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// The project's tags: all, or one resource's; --key for some keys only.
    List {
        resource: Option<String>,
        /// Only tags with this key (repeatable).
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_are_given_once_before_or_after_the_subcommand() {
        for argv in [
            &["nubo", "--url", "http://127.0.0.1:8780", "--token", "t", "instance", "list"][..],
            &["nubo", "instance", "list", "--url", "http://127.0.0.1:8780", "--token", "t"][..],
            &["nubo", "instance", "--url", "http://127.0.0.1:8780", "list", "--token", "t"][..],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(cli.conn.url(), Some("http://127.0.0.1:8780"), "{argv:?}");
            assert_eq!(cli.conn.token(), Some("t"), "{argv:?}");
            assert!(matches!(cli.command, Command::Instance(InstanceCmd::List { .. })), "{argv:?}");
        }
        // An empty value (NUBO_URL= in a script) is no URL at all.
        let cli = Cli::try_parse_from(["nubo", "--url", "", "keypair", "list"]).expect("parses");
        assert_eq!(cli.conn.url(), None);
    }

    #[test]
    fn protection_flags_parse_and_the_last_of_a_pair_wins() {
        let cli = Cli::try_parse_from(["nubo", "instance", "protect", "i-1", "--termination", "--no-stop"]).unwrap();
        let Command::Instance(InstanceCmd::Protect { id, termination, no_termination, stop, no_stop, .. }) =
            cli.command
        else {
            panic!("not instance protect")
        };
        assert_eq!((id.as_str(), termination, no_termination, stop, no_stop), ("i-1", true, false, false, true));
        let cli =
            Cli::try_parse_from(["nubo", "instance", "protect", "i-1", "--termination", "--no-termination"]).unwrap();
        let Command::Instance(InstanceCmd::Protect { termination, no_termination, .. }) = cli.command else {
            panic!("not instance protect")
        };
        assert_eq!((termination, no_termination), (false, true), "the later flag overrides");
        assert!(Cli::try_parse_from(["nubo", "instance", "protect", "i-1", "--shutdown-behavior", "halt"]).is_err());
        let cli = Cli::try_parse_from(["nubo", "instance", "run", "--termination-protection"]).unwrap();
        assert!(matches!(cli.command, Command::Instance(InstanceCmd::Run { termination_protection: true, .. })));
    }

    #[test]
    fn sizes_and_cidrs_as_operators_write_them() {
        assert_eq!(parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size(" 2 G "), Ok(2 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in ["", "GiB", "5 parsecs", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cidr("10.0.0.0/8").map(|n| n.to_string()), Ok("10.0.0.0/8".into()));
        assert_eq!(parse_cidr("127.0.0.1").map(|n| n.to_string()), Ok("127.0.0.1/32".into()));
        assert_eq!(parse_cidr("fd00::/8").map(|n| n.to_string()), Ok("fd00::/8".into()));
        assert!(parse_cidr("10.0.0.0/33").is_err() && parse_cidr("intranet").is_err());
    }
}

/// A duration as a number and a unit: `30s`, `15m`, `12h`, `90d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("'{s}' is not a duration: write a number and a unit, e.g. 90d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{s}' has no known unit: use s, m, h or d, e.g. 90d or 12h")),
    };
    if n == 0 {
        return Err(format!("'{s}' is zero: give at least 1{unit}"));
    }
    n.checked_mul(secs)
        .filter(|t| *t <= 100 * 365 * 86400)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{s}' is too long: give at most 100 years"))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        for bad in ["", "d", "90", "0d", "9x", "-1d", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

/// `NAME=IFACE` of `nubo agent --external`.
#[derive(Subcommand)]
pub enum TemplateCmd {
    /// Create a launch template with its version 1.
    Create {
        name: String,
        /// Version 1's description.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        data: TemplateFlags,
    },
    List,
    /// A template with every version.
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Template versions.
    #[command(subcommand)]
    Version(TemplateVersionCmd),
    /// Set the default version (a number or $Latest).
    Default {
        name: String,
        version: String,
    },
}

#[derive(Subcommand)]
pub enum TemplateVersionCmd {
    /// Add a version (the latest; the default does not change).
    Create {
        name: String,
        /// Start from this version (a number, $Latest or $Default): the
        /// flags given override its fields. Without it, the flags alone.
        #[arg(long = "from", value_name = "VERSION")]
        from: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        data: TemplateFlags,
    },
}

/// A launch template version's fields, each optional.
#[derive(Args)]
pub struct TemplateFlags {
    /// Image name or id.
    #[arg(long)]
    pub image: Option<String>,
    /// Instance type (e.g. t3.small); or give --vcpus and --memory.
    #[arg(long = "type", value_name = "TYPE")]
    pub instance_type: Option<String>,
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Root disk in GiB.
    #[arg(long)]
    pub disk: Option<u64>,
    /// Key pair whose public key is installed for root.
    #[arg(long = "key")]
    pub key: Option<String>,
    /// Security group (name or id; repeatable).
    #[arg(long = "security-group", value_name = "GROUP")]
    pub security_groups: Vec<String>,
    /// Private network (name or id; repeatable, one NIC each).
    #[arg(long = "network", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// A file with user-data.
    #[arg(long)]
    pub user_data: Option<PathBuf>,
    /// A tag of the instances launched, KEY=VALUE (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Guest TCP port to forward from 127.0.0.1 (repeatable).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Metadata service: optional (IMDSv1 and v2) or required (IMDSv2 only).
    #[arg(long, value_parser = ["optional", "required"])]
    pub metadata_tokens: Option<String>,
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE: write it as role=db (the value may be empty: role=)")),
    }
}

fn parse_external(s: &str) -> Result<(String, String), String> {
    let (name, iface) = s.split_once('=').ok_or_else(|| format!("'{s}' is not NAME=IFACE: write it as lan=eth1"))?;
    let ok_name = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    // IFNAMSIZ: 15 bytes; no '/' or whitespace (the kernel refuses them).
    let ok_iface = !iface.is_empty() && iface.len() <= 15 && iface.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    match (ok_name, ok_iface) {
        (true, true) => Ok((name.to_string(), iface.to_string())),
        (false, _) => Err(format!("'{name}' is not a valid name: use letters, digits, '-', '_' or '.'")),
        (_, false) => Err(format!("'{iface}' is not an interface name (at most 15 characters, no '/')")),
    }
}
