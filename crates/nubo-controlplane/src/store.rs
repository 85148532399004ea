//! The control plane's state in SQL: hosts, instances, their ports, life
//! events, console logs and images (identity lives in `identity`). It runs
//! on embedded SQLite (the default) or on PostgreSQL, chosen by the
//! database URL; both go through sqlx's `Any` driver, so every query is one
//! text in the SQL both accept (`$n` parameters, BIGINT, ON CONFLICT, no
//! SQLite-only functions) and every value is decoded as i64, f64 or String.
//! Every read-modify-write that must be atomic is a single conditional
//! statement or a transaction, never an in-memory assumption.

use nubo_api::agent::{ActualInstance, ActualPower, PowerState, RegisterHost};
use nubo_api::ids::{HostId, InstanceId};
use nubo_api::views::{InstanceEvent, InstanceState};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, FromRow};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// The database the store runs on, whichever backend it is (see the
/// module's comment): queries and transactions are written against it.
pub type Db = sqlx::Any;
/// A transaction on the store's database.
pub type Tx<'a> = sqlx::Transaction<'a, Db>;
/// A row of the store's database.
pub type DbRow = sqlx::any::AnyRow;

/// Which SQL database the store is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Console text kept per instance; older output is dropped.
pub const CONSOLE_KEEP_BYTES: usize = 1024 * 1024;

/// The first char boundary of `s` at or after byte `i` (`s.len()` at most).
pub(crate) fn char_boundary_from(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Drops the front of `text` so that at most `max` bytes remain, cutting
/// on a char boundary (consoles and run logs keep their tails).
pub(crate) fn keep_tail(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = char_boundary_from(text, text.len() - max);
        text.drain(..cut);
    }
}

/// `text` as it can be stored as TEXT on both databases: PostgreSQL's TEXT
/// cannot hold NUL (SQLite's can), and a guest may write any byte to its
/// console or a run's log (`cat /dev/urandom`). A NUL becomes U+FFFD, the
/// same mark invalid UTF-8 already got from the agent, so both databases
/// store and show the same text.
pub(crate) fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `$first, $first+1, ...`: `count` numbered parameters, for an `IN (...)`
/// list or a row of a multi-row `VALUES` (the numbered form is the one
/// both SQLite and PostgreSQL take through the Any driver).
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}; check the data directory exists and is writable")]
    Open { path: String, source: sqlx::Error },
    #[error(
        "the database URL {url} is not one Nubo can use: {reason}; give a PostgreSQL URL \
         (postgres://USER:PASSWORD@HOST/DATABASE) or leave --database out for SQLite in the data directory"
    )]
    BadUrl { url: String, reason: String },
    /// An empty URL is a mistake (an unset shell variable, `NUBO_DATABASE=`
    /// left in an environment file), never a wish for SQLite: falling back
    /// would run a second, empty cloud beside the real one.
    #[error(
        "the database URL is empty (--database '' or NUBO_DATABASE set to nothing): give a PostgreSQL URL \
         (postgres://USER:PASSWORD@HOST/DATABASE), or for SQLite in the data directory leave --database out \
         and unset NUBO_DATABASE"
    )]
    EmptyUrl,
    #[error(
        "cannot connect to PostgreSQL at {url}: {cause}; check the server is running and reachable, \
         and that the user, password and database in the URL exist"
    )]
    // `cause`, not `source`: the text is already in the message, and
    // anyhow would print it a second time as the cause.
    Connect { url: String, cause: String },
    #[error("database migration failed: {0}; the data directory may belong to a newer Nubo")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How the store talks to its database, beyond the URL.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    /// Log every statement (tracing target `sqlx::query`, at DEBUG). Off
    /// by default: each request would log several lines.
    pub log_statements: bool,
}

impl StoreOptions {
    fn apply(self, opts: AnyConnectOptions) -> AnyConnectOptions {
        if self.log_statements {
            opts.log_statements(tracing::log::LevelFilter::Debug)
        } else {
            opts.disable_statement_logging()
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
    /// Hosts whose row this server changed, for placement's index to
    /// read again (`placement::index`).
    pub changed_hosts: std::sync::Arc<crate::placement::ChangedHosts>,
    /// Prometheus remote write and read, when the server is set up so.
    pub(crate) metrics_remote: crate::metrics_remote::Slot,
    /// Metric samples and newest values not yet written (see `tsdb`).
    pub(crate) metrics_head: std::sync::Arc<crate::tsdb::Head>,
    /// Hosts' credentials and registrations already read (`known_hosts`).
    pub(crate) known_hosts: std::sync::Arc<crate::known_hosts::KnownHosts>,
}

#[derive(Debug, Clone, FromRow)]
pub struct HostRow {
    pub id: String,
    pub name: String,
    pub accel: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub used_vcpus: i64,
    pub used_memory_mib: i64,
    pub used_disk_gib: i64,
    pub enabled: i64,
    pub last_heartbeat_ms: i64,
    pub underlay: Option<String>,
    pub shared_storage: Option<String>,
    /// External networks' interface names the host maps, comma-separated.
    pub externals: String,
}

#[derive(Debug, Clone, FromRow)]
pub struct InstanceRow {
    pub id: String,
    pub name: String,
    pub image: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
    pub host_id: Option<String>,
    pub desired: PowerState,
    pub state: InstanceState,
    pub start_seq: i64,
    pub reboot_count: i64,
    pub user_data: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub project_id: Option<String>,
    /// The key pair chosen at launch and its public key (copied then).
    pub key_name: Option<String>,
    pub public_key: Option<String>,
    /// Metadata service: `optional` or `required` (IMDSv2 tokens).
    pub imds_tokens: String,
    /// The guest agent's last report (a `GuestStatus` as JSON).
    pub guest_json: Option<String>,
    /// The image's id (`image` holds its name).
    pub image_id: Option<String>,
    /// The instance type it was launched by (EC2 API); none: by size.
    pub instance_type: Option<String>,
    /// The EC2 reservation (one RunInstances call) and its place in it.
    pub reservation_id: Option<String>,
    pub launch_index: i64,
    pub client_token: Option<String>,
    /// 1: no user or automation may terminate it (migration 0024; see
    /// `instance_attributes`).
    pub termination_protection: i64,
    /// 1: no user or automation may stop it.
    pub stop_protection: i64,
    /// What a guest-initiated poweroff does: `stop` or `terminate`.
    pub shutdown_behavior: String,
    /// EC2's source/destination check (1: on), stored and reported.
    pub source_dest_check: i64,
    /// 1: the instance has a CD-ROM drive (migration 0030; see `cdrom`).
    #[sqlx(default)]
    pub cdrom_drive: i64,
    /// The ISO image in the drive; none: empty.
    #[sqlx(default)]
    pub cdrom_image_id: Option<String>,
    /// `cdrom,disk` or `disk,cdrom` (instances with a drive).
    #[sqlx(default)]
    pub boot_order: Option<String>,
    /// Bumped by each rebuild or instance revert (migration 0029; see
    /// `app::day_two`): the host replaces the root disk before the next boot.
    pub rebuild_seq: i64,
    /// Firmware, Secure Boot, TPM, display (JSON, see `hardware`; NULL: defaults).
    #[sqlx(default)]
    pub hardware: Option<String>,
    /// The root disk is written from this backup, once per `restore_seq`
    /// (migration 0035; see `restores`).
    #[sqlx(default)]
    pub restore_backup_id: Option<String>,
    #[sqlx(default)]
    pub restore_repository_id: Option<String>,
    #[sqlx(default)]
    pub restore_seq: i64,
    #[sqlx(default)]
    pub restore_data_ms: Option<i64>,
}

#[derive(Debug, Clone, FromRow)]
pub struct PortRow {
    pub instance_id: String,
    pub guest_port: i64,
    pub host_port: i64,
}

/// A new instance, already placed: inserted together with its claim.
pub struct NewInstance<'a> {
    pub id: &'a InstanceId,
    pub project_id: &'a str,
    pub name: &'a str,
    pub image: &'a str,
    pub image_id: &'a str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub user_data: Option<&'a str>,
    pub guest_ports: &'a [u16],
    /// The key pair's name and public key, installed for root.
    pub key: Option<(&'a str, &'a str)>,
    /// `optional` or `required` (IMDSv2 session tokens).
    pub imds_tokens: &'a str,
    /// What an EC2 launch adds; tags and security groups are inserted in
    /// the same transaction, so no instance ever exists without them.
    pub ec2: crate::launch::LaunchRecord<'a>,
}

/// Why a claim on one host did not go through.
#[derive(Debug)]
pub enum ClaimError {
    /// Another request took the capacity first; try the next host.
    Lost,
    /// The host has no free port left in the forwarding range.
    NoPorts,
    /// The project's quota would be exceeded; the text says which limit.
    Quota(String),
    /// The private address the launch asked for is another instance's.
    AddressTaken(String),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for ClaimError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

impl Store {
    /// Begins a transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads and then
    /// writes fails with SQLITE_BUSY_SNAPSHOT (517) when another
    /// connection wrote in between, which no busy timeout retries; waiting
    /// for the lock up front is retried. PostgreSQL's default is right.
    pub(crate) async fn begin(&self) -> Result<Tx<'static>, sqlx::Error> {
        begin(&self.pool, self.backend).await
    }

    /// Opens (creating it if need be) the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, StoreOptions::default()).await
    }

    /// [`Store::open`] with `options`.
    pub async fn open_with(path: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        // The URL carries only the file and `mode=rwc` (create if missing);
        // the rest of SQLite's settings are PRAGMAs run on every new
        // connection, since the Any driver's options cannot carry them.
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let opts = options.apply(AnyConnectOptions::from_str(&url).map_err(open_err)?);
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            // No ping before each acquire: on SQLite a ping is a round
            // trip to the connection's worker thread (two thread switches),
            // paid by every statement taken from the pool, and a connection
            // to a local file does not go stale the way a socket does.
            .test_before_acquire(false)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL: readers never wait for the writer; NORMAL is
                    // durable across crashes of the process in WAL mode;
                    // a writer waits up to 10 s for another one.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        sqlx::Executor::execute(&mut *conn, pragma).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self {
            pool,
            backend: Backend::Sqlite,
            changed_hosts: Default::default(),
            metrics_remote: Default::default(),
            metrics_head: Default::default(),
            known_hosts: Default::default(),
        })
    }

    /// Connects to the database at `url`: a PostgreSQL URL
    /// (`postgres://` or `postgresql://`), or `sqlite://PATH` for a SQLite
    /// file. Runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    /// [`Store::connect`] with `options`.
    pub async fn connect_with(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        if url.trim().is_empty() {
            return Err(StoreError::EmptyUrl);
        }
        let bad = |reason: &str| StoreError::BadUrl { url: redact(url), reason: reason.into() };
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => {
                let rest = &url["sqlite://".len()..];
                let path = rest.split('?').next().unwrap_or(rest);
                if path.is_empty() {
                    return Err(bad("it names no file"));
                }
                Self::open_with(Path::new(path), options).await
            }
            Some("postgres" | "postgresql") => {
                sqlx::any::install_default_drivers();
                let opts = options.apply(AnyConnectOptions::from_str(url).map_err(|e| bad(&e.to_string()))?);
                let connect_err = |cause: String| StoreError::Connect { url: redact(url), cause };
                // One connection first, so that a refused connection or a
                // wrong password is reported as such at once, rather than as
                // the pool's timeout after its retries.
                let first = tokio::time::timeout(Duration::from_secs(10), opts.connect())
                    .await
                    .map_err(|_| connect_err("no answer within 10 s".into()))?
                    .map_err(|e| connect_err(e.to_string()))?;
                sqlx::Connection::close(first).await.map_err(|e| connect_err(e.to_string()))?;
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                sqlx::migrate!("./migrations").run(&pool).await?;
                Ok(Self {
                    pool,
                    backend: Backend::Postgres,
                    changed_hosts: Default::default(),
                    metrics_remote: Default::default(),
                    metrics_head: Default::default(),
                    known_hosts: Default::default(),
                })
            }
            _ => Err(bad("it does not start with postgres:// (or sqlite://)")),
        }
    }

    /// Which database this store is in.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    // ---- images ----

    /// Instances from before images had ids get their builtin image's id.
    pub async fn backfill_instance_image_ids(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE instances SET image_id = (SELECT id FROM images WHERE images.name = instances.image
               AND images.source = 'builtin') WHERE image_id IS NULL",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- hosts ----

    pub async fn register_host(&self, r: &RegisterHost) -> Result<(), sqlx::Error> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO hosts (id, name, accel, vcpus, memory_mib, disk_gib, last_heartbeat_ms, created_at_ms,
               underlay, shared_storage, externals)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, accel = excluded.accel,
               vcpus = excluded.vcpus, memory_mib = excluded.memory_mib, disk_gib = excluded.disk_gib,
               last_heartbeat_ms = excluded.last_heartbeat_ms, underlay = excluded.underlay,
               shared_storage = excluded.shared_storage, externals = excluded.externals",
        )
        .bind(r.host_id.as_str())
        .bind(&r.name)
        .bind(&r.accel)
        .bind(i64::from(r.vcpus))
        .bind(r.memory_mib as i64)
        .bind(r.disk_gib as i64)
        .bind(now)
        .bind(now)
        .bind(&r.underlay)
        .bind(&r.shared_storage)
        // Names are the operator's (`--external NAME=IFACE`); one with a
        // comma could not be told apart in the list, so it is left out.
        .bind(r.externals.iter().filter(|n| !n.contains(',')).cloned().collect::<Vec<_>>().join(","))
        .execute(&self.pool)
        .await?;
        self.changed_hosts.mark(r.host_id.as_str());
        Ok(())
    }

    /// Records a heartbeat (a lease renewal); the stored value, or None
    /// when the host is not registered. The value rises with every
    /// heartbeat even if the wall clock stalls or steps back, so that
    /// failover, which notes when it last changed, sees each renewal.
    pub async fn heartbeat(&self, host: &HostId) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE hosts SET last_heartbeat_ms =
               CASE WHEN $1 > last_heartbeat_ms THEN $1 ELSE last_heartbeat_ms + 1 END
             WHERE id = $2 RETURNING last_heartbeat_ms",
        )
        .bind(now_ms())
        .bind(host.as_str())
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn hosts(&self) -> Result<Vec<HostRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM hosts ORDER BY name, id").fetch_all(&self.pool).await
    }

    pub async fn host(&self, id: &str) -> Result<Option<HostRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM hosts WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    pub async fn instance_counts_by_host(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT host_id, COUNT(*) FROM instances WHERE host_id IS NOT NULL AND state <> 'terminated' GROUP BY host_id",
        )
        .fetch_all(&self.pool)
        .await
    }

    // ---- instances ----

    /// Claims the instance's resources on `host` and inserts it, with its
    /// forwarded ports, in one transaction. The claim is a conditional
    /// UPDATE that re-checks capacity, so concurrent requests cannot
    /// overcommit a host even when they ranked it from the same snapshot.
    pub async fn claim_and_insert(
        &self,
        host: &str,
        limits: Size,
        port_range: (u16, u16),
        new: &NewInstance<'_>,
    ) -> Result<Vec<(u16, u16)>, ClaimError> {
        let mut tx = self.begin().await?;
        // The project's quota first, in the same transaction and with the
        // same conditional-UPDATE pattern as the host claim, so parallel
        // requests can never take a project past its limits. A backup's
        // verification instance is the cloud's own check, not the
        // project's use: it is not counted.
        let exempt = new.ec2.verification_of.is_some();
        let within_quota = sqlx::query(
            "UPDATE projects SET used_instances = used_instances + 1, used_vcpus = used_vcpus + $1,
               used_memory_mib = used_memory_mib + $2
             WHERE id = $3 AND used_instances + 1 <= quota_instances AND used_vcpus + $1 <= quota_vcpus
               AND used_memory_mib + $2 <= quota_memory_mib AND NOT $4",
        )
        .bind(i64::from(new.vcpus))
        .bind(new.memory_mib as i64)
        .bind(new.project_id)
        .bind(exempt)
        .execute(&mut *tx)
        .await?;
        if !exempt && within_quota.rows_affected() != 1 {
            let p: Option<crate::identity::ProjectRow> = sqlx::query_as("SELECT * FROM projects WHERE id = $1")
                .bind(new.project_id)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(ClaimError::Quota(match p {
                Some(p) => format!(
                    "project {} is at its quota: instances {}/{}, vCPUs {}/{}, memory {}/{} MiB; this request needs 1 instance, {} vCPUs, {} MiB. Terminate instances or ask an operator to raise the quota",
                    p.name, p.used_instances, p.quota_instances, p.used_vcpus, p.quota_vcpus, p.used_memory_mib,
                    p.quota_memory_mib, new.vcpus, new.memory_mib
                ),
                None => "the token's project no longer exists".to_string(),
            }));
        }
        let size =
            Size { vcpus: i64::from(new.vcpus), memory_mib: new.memory_mib as i64, disk_gib: new.disk_gib as i64 };
        if !claim_capacity(&mut tx, host, size, limits).await? {
            return Err(ClaimError::Lost);
        }
        let now = now_ms();
        // The launch record's columns (EC2's fields, group, hardware) are
        // in the same INSERT: one statement, not an INSERT and an UPDATE.
        let r = &new.ec2;
        sqlx::query(
            "INSERT INTO instances (id, name, image, vcpus, memory_mib, disk_gib, host_id, desired, state,
               start_seq, reboot_count, user_data, created_at_ms, updated_at_ms, project_id, key_name, public_key,
               imds_tokens, image_id, instance_type, reservation_id, launch_index, client_token, group_id, hardware,
               verification_of)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', 'pending', 1, 0, $8, $9, $10, $11, $12, $13, $14, $15,
               $16, $17, $18, $19, $20, $21, $22)",
        )
        .bind(new.id.as_str())
        .bind(new.name)
        .bind(new.image)
        .bind(i64::from(new.vcpus))
        .bind(new.memory_mib as i64)
        .bind(new.disk_gib as i64)
        .bind(host)
        .bind(new.user_data)
        .bind(now)
        .bind(now)
        .bind(new.project_id)
        .bind(new.key.map(|k| k.0))
        .bind(new.key.map(|k| k.1))
        .bind(new.imds_tokens)
        // The builtin `blank` has no image row (an empty disk): no id.
        .bind(Some(new.image_id).filter(|i| !i.is_empty()))
        .bind(r.instance_type)
        .bind(r.reservation_id)
        .bind(i64::from(r.launch_index))
        .bind(r.client_token)
        .bind(r.group_id)
        .bind(r.hardware)
        .bind(r.verification_of)
        .execute(&mut *tx)
        .await?;
        // Ports: the lowest free ones in the range. The write lock taken
        // by the UPDATE above serialises this on SQLite; on PostgreSQL the
        // UNIQUE (host_id, host_port) constraint is the guard.
        // Load balancers listen on ports of the same range.
        // (Not read at all for an instance without forwarded ports.)
        let used: Vec<i64> = if new.guest_ports.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar(
                "SELECT host_port FROM instance_ports WHERE host_id = $1
                 UNION SELECT host_port FROM load_balancers WHERE host_id = $1",
            )
            .bind(host)
            .fetch_all(&mut *tx)
            .await?
        };
        let used: std::collections::HashSet<i64> = used.into_iter().collect();
        let mut free = (port_range.0..=port_range.1).filter(|p| !used.contains(&i64::from(*p)));
        let mut mapped = Vec::new();
        for guest in new.guest_ports {
            let host_port = free.next().ok_or(ClaimError::NoPorts)?;
            sqlx::query(
                "INSERT INTO instance_ports (instance_id, guest_port, host_id, host_port) VALUES ($1, $2, $3, $4)",
            )
            .bind(new.id.as_str())
            .bind(i64::from(*guest))
            .bind(host)
            .bind(i64::from(host_port))
            .execute(&mut *tx)
            .await
            .map_err(|e| match e.as_database_error() {
                // Another server's launch took that port first: place again.
                Some(d) if d.is_unique_violation() => ClaimError::Lost,
                _ => ClaimError::Db(e),
            })?;
            mapped.push((*guest, host_port));
        }
        crate::launch::insert_launch_record(&mut tx, new.id.as_str(), new.project_id, &new.ec2).await?;
        crate::networks::attach_new_instance(&mut tx, new.id.as_str(), new.ec2.networks, new.ec2.private_address)
            .await?;
        insert_event(&mut tx, new.id.as_str(), now, "requested", "").await?;
        insert_event(&mut tx, new.id.as_str(), now, "scheduled", host).await?;
        tx.commit().await?;
        self.changed_hosts.mark(host);
        Ok(mapped)
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM instances WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// All instances, or one project's.
    pub async fn instances(&self, project: Option<&str>) -> Result<Vec<InstanceRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM instances WHERE ($1 IS NULL OR project_id = $1) ORDER BY created_at_ms, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// Instances the host must know about: all not yet terminated.
    pub async fn instances_on_host(&self, host: &str) -> Result<Vec<InstanceRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM instances WHERE host_id = $1 AND state <> 'terminated' ORDER BY id")
            .bind(host)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn ports(&self, instance: &str) -> Result<Vec<PortRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, guest_port, host_port FROM instance_ports WHERE instance_id = $1 ORDER BY guest_port",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn ports_on_host(&self, host: &str) -> Result<Vec<PortRow>, sqlx::Error> {
        sqlx::query_as("SELECT instance_id, guest_port, host_port FROM instance_ports WHERE host_id = $1")
            .bind(host)
            .fetch_all(&self.pool)
            .await
    }

    /// Terminates an instance on the cloud's own behalf (a group, a
    /// rollback, a saga's undo): desired `deleted` from running or
    /// stopped, recorded as a `terminate` event. False when it was not
    /// running or stopped (already terminated, say).
    pub async fn terminate(&self, id: &str) -> Result<bool, sqlx::Error> {
        self.set_desired(
            id,
            &[PowerState::Running, PowerState::Stopped],
            PowerState::Deleted,
            false,
            false,
            "terminate",
        )
        .await
    }

    /// Changes what the user wants, if the instance's desired state is one
    /// of `from` and may become `desired` ([`PowerState::can_become`]).
    /// Returns false when it was not (the caller says why).
    pub async fn set_desired(
        &self,
        id: &str,
        from: &[PowerState],
        desired: PowerState,
        bump_start: bool,
        bump_reboot: bool,
        event: &str,
    ) -> Result<bool, sqlx::Error> {
        let row = match self.instance(id).await? {
            Some(r) => r,
            None => return Ok(false),
        };
        if !from.contains(&row.desired) || !row.desired.can_become(desired) || row.state == InstanceState::Terminated {
            return Ok(false);
        }
        let mut tx = self.begin().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE instances SET desired = $1, start_seq = start_seq + $2, reboot_count = reboot_count + $3,
               error = CASE WHEN $2 = 1 THEN NULL ELSE error END, updated_at_ms = $4
             WHERE id = $5 AND desired = $6",
        )
        .bind(desired)
        .bind(i64::from(bump_start))
        .bind(i64::from(bump_reboot))
        .bind(now)
        .bind(id)
        .bind(row.desired)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            insert_event(&mut tx, id, now, event, "").await?;
            if desired == PowerState::Deleted {
                // The project keeps its floating IPs (as EC2 keeps elastic
                // addresses); they point at nothing until associated again.
                // An address assigned automatically goes back to the pool.
                sqlx::query("DELETE FROM floating_ips WHERE instance_id = $1 AND auto = 1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE floating_ips SET instance_id = NULL WHERE instance_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

    /// The rows of the instances `ids` on `host` (not terminated), by id,
    /// and the volumes attached to them, by instance: what a report is
    /// compared with, read with two queries per [`REPORT_IDS_PER_QUERY`]
    /// instances (a report lists only what changed, not the whole host).
    pub async fn report_baseline(
        &self,
        host: &str,
        ids: &[&str],
    ) -> Result<(HashMap<String, InstanceRow>, HashMap<String, Vec<crate::volumes::VolumeRow>>), sqlx::Error> {
        let mut rows = HashMap::new();
        let mut by_instance: HashMap<String, Vec<crate::volumes::VolumeRow>> = HashMap::new();
        for part in ids.chunks(REPORT_IDS_PER_QUERY) {
            let marks = placeholders(2, part.len());
            let sql =
                format!("SELECT * FROM instances WHERE host_id = $1 AND state <> 'terminated' AND id IN ({marks})");
            let mut q = sqlx::query_as::<_, InstanceRow>(&sql).bind(host);
            for id in part {
                q = q.bind(*id);
            }
            rows.extend(q.fetch_all(&self.pool).await?.into_iter().map(|r| (r.id.clone(), r)));
            let sql = format!(
                "SELECT * FROM volumes WHERE instance_id IN (SELECT id FROM instances WHERE host_id = $1 AND id IN ({marks}))
                 ORDER BY (slot IS NOT NULL), slot, id"
            );
            let mut q = sqlx::query_as::<_, crate::volumes::VolumeRow>(&sql).bind(host);
            for id in part {
                q = q.bind(*id);
            }
            for v in q.fetch_all(&self.pool).await? {
                if let Some(i) = v.instance_id.clone() {
                    by_instance.entry(i).or_default().push(v);
                }
            }
        }
        Ok((rows, by_instance))
    }

    /// Applies one agent report entry for an instance on `host`. Entries
    /// for instances the host does not own are ignored (and counted).
    pub async fn apply_actual(&self, host: &str, a: &ActualInstance) -> Result<bool, sqlx::Error> {
        self.apply_actual_from(host, a, None).await
    }

    /// [`Store::apply_actual`], starting from the instance's row as the
    /// caller just read it (a report's baseline), which saves reading it
    /// again when nobody changed it in between.
    pub async fn apply_actual_from(
        &self,
        host: &str,
        a: &ActualInstance,
        read: Option<&InstanceRow>,
    ) -> Result<bool, sqlx::Error> {
        // A user's request (terminate, stop) may change the row between
        // the read and the write: the write is conditional on what was
        // read, and a lost race reads again, so a stale report can never
        // put back the old desired state.
        let mut read = read.cloned();
        for _ in 0..5 {
            let row = match read.take() {
                Some(row) => Some(row),
                None => self.instance(a.id.as_str()).await?,
            };
            if let Some(applied) = self.apply_actual_once(host, a, row).await? {
                return Ok(applied);
            }
        }
        Ok(false)
    }

    /// One try of [`Store::apply_actual`] from `row` as read; `None` when
    /// the row changed meanwhile.
    async fn apply_actual_once(
        &self,
        host: &str,
        a: &ActualInstance,
        row: Option<InstanceRow>,
    ) -> Result<Option<bool>, sqlx::Error> {
        let row = match row {
            Some(r) if r.host_id.as_deref() == Some(host) && r.state != InstanceState::Terminated => r,
            _ => return Ok(Some(false)),
        };
        let now = now_ms();
        let mut desired = row.desired;
        // Whether the instance is then terminated (its shutdown behaviour).
        let mut terminate_after = false;
        if a.exited_unexpectedly && desired == PowerState::Running {
            // Like EC2: a guest that powers itself off, or a VM that dies,
            // is recorded as stopped; the user starts it again, unless its
            // shutdown behaviour says terminate (which, as on EC2, termination
            // protection does not prevent: the guest asked for it).
            desired = PowerState::Stopped;
            terminate_after = row.shutdown_behavior == crate::instance_attributes::SHUTDOWN_TERMINATE;
        }
        let state = derive_state(desired, a.power);
        let error = match a.power {
            ActualPower::Error => a.error.clone(),
            _ => None,
        };
        let guest_json = a.guest.as_ref().map(|g| serde_json::to_string(g).unwrap_or_default());
        // Most reports repeat what the row already says: no write at all
        // then (a thousand hosts' heartbeats would otherwise rewrite every
        // instance row every few seconds).
        if !report_is_news(&row, a) {
            return Ok(Some(true));
        }
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE instances SET desired = $1, state = $2, error = $3, updated_at_ms = $4
             WHERE id = $5 AND desired = $6 AND state = $7",
        )
        .bind(desired)
        .bind(state)
        .bind(&error)
        .bind(now)
        .bind(&row.id)
        .bind(row.desired)
        .bind(row.state)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        if state == InstanceState::Terminated {
            // Free the claim and the ports exactly once: only the report
            // that moves the row to terminated gets here.
            release_capacity(&mut tx, host, Size::of(&row)).await?;
            sqlx::query("DELETE FROM instance_ports WHERE instance_id = $1").bind(&row.id).execute(&mut *tx).await?;
            // Its network addresses go back to their networks (a default
            // network's /20 would otherwise run out after 4093 launches).
            sqlx::query("DELETE FROM network_ports WHERE instance_id = $1").bind(&row.id).execute(&mut *tx).await?;
            // A verification instance was never counted (`claim_and_insert`).
            sqlx::query(
                "UPDATE projects SET used_instances = used_instances - 1, used_vcpus = used_vcpus - $1,
                   used_memory_mib = used_memory_mib - $2
                 WHERE id = $3 AND NOT EXISTS (SELECT 1 FROM instances WHERE id = $4 AND verification_of IS NOT NULL)",
            )
            .bind(row.vcpus)
            .bind(row.memory_mib)
            .bind(&row.project_id)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
            Self::release_volumes_of(&mut tx, &row.id).await?;
            // Instance snapshots that were not taken can no longer be.
            sqlx::query(
                "UPDATE images SET state = 'error', error = 'the instance was terminated before the snapshot was taken'
                 WHERE source_instance = $1 AND state = 'saving'",
            )
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        }
        if state != row.state
            && matches!(state, InstanceState::Stopped | InstanceState::Error | InstanceState::Terminated)
        {
            // A run cannot outlive its instance: fail what was running
            // (and, once the instance is gone, what was still waiting).
            sqlx::query(
                "UPDATE runs SET state = 'failed', error = $1, finished_at_ms = $2
                 WHERE instance_id = $3 AND (state = 'running' OR ($4 AND state = 'pending'))",
            )
            .bind(format!("the instance became {state} during the run"))
            .bind(now)
            .bind(&row.id)
            .bind(state == InstanceState::Terminated)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(guest) = &guest_json {
            sqlx::query("UPDATE instances SET guest_json = $1 WHERE id = $2")
                .bind(guest)
                .bind(&row.id)
                .execute(&mut *tx)
                .await?;
        }
        let mut events: Vec<(i64, &str, &str)> =
            a.events.iter().map(|e| (e.at_ms, e.stage.as_str(), e.detail.as_str())).collect();
        let state_stage = format!("state_{state}");
        if state != row.state {
            events.push((now, &state_stage, a.error.as_deref().unwrap_or("")));
        }
        insert_events(&mut tx, &row.id, &events).await?;
        tx.commit().await?;
        if state == InstanceState::Terminated {
            // Its capacity (and deleted volumes' pool space) came back.
            self.changed_hosts.mark(host);
        }
        if terminate_after {
            // Recorded stopped first, then terminated as a user's terminate
            // is (its addresses released), so the agent reaps it.
            self.terminate(&row.id).await?;
        }
        Ok(Some(true))
    }

    pub async fn events(&self, id: &str) -> Result<Vec<InstanceEvent>, sqlx::Error> {
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT at_ms, stage, detail FROM instance_events WHERE instance_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(at_ms, stage, detail)| InstanceEvent { at_ms, stage, detail }).collect())
    }

    // ---- console ----

    /// Appends console bytes that start at `offset` of the VM's log,
    /// skipping any part already stored; returns the next expected offset.
    /// One new chunk row per call, and the chunks that fell out of the
    /// newest [`CONSOLE_KEEP_BYTES`] deleted: the work per chunk is the
    /// chunk's size, not the kept console's.
    pub async fn append_console(&self, id: &str, offset: u64, raw_len: u64, data: &str) -> Result<u64, sqlx::Error> {
        let mut tx = self.begin().await?;
        // One writer per console at a time, so two retries of one chunk
        // cannot both pass the offset check.
        lock_series(&mut tx, &format!("console:{id}")).await?;
        let current: Option<(i64, i64)> =
            sqlx::query_as("SELECT next_offset, text_bytes FROM consoles WHERE instance_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let (next, text_total) = current.unwrap_or_default();
        let next = next as u64;
        let end = offset + raw_len;
        if end <= next {
            tx.commit().await?;
            return Ok(next);
        }
        // Overlap with what is stored (a retried chunk): skip that part;
        // of a chunk larger than what is kept, only its tail matters.
        let skip = char_boundary_from(data, next.saturating_sub(offset) as usize);
        let skip = skip.max(char_boundary_from(data, data.len().saturating_sub(CONSOLE_KEEP_BYTES)));
        let piece = storable_text(&data[skip..]);
        let text_end = text_total + piece.len() as i64;
        sqlx::query("INSERT INTO console_chunks (instance_id, end_offset, text_end, data) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(end as i64)
            .bind(text_end)
            .bind(piece.as_ref())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO consoles (instance_id, data, next_offset, text_bytes) VALUES ($1, '', $2, $3)
             ON CONFLICT (instance_id) DO UPDATE SET next_offset = excluded.next_offset, text_bytes = excluded.text_bytes",
        )
        .bind(id)
        .bind(end as i64)
        .bind(text_end)
        .execute(&mut *tx)
        .await?;
        // Chunks that end before the newest CONSOLE_KEEP_BYTES of text hold
        // nothing that is shown any more.
        sqlx::query("DELETE FROM console_chunks WHERE instance_id = $1 AND text_end <= $2")
            .bind(id)
            .bind(text_end - CONSOLE_KEEP_BYTES as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(end)
    }

    /// The newest [`CONSOLE_KEEP_BYTES`] of an instance's console text.
    pub async fn console(&self, id: &str) -> Result<String, sqlx::Error> {
        let chunks: Vec<String> =
            sqlx::query_scalar("SELECT data FROM console_chunks WHERE instance_id = $1 ORDER BY end_offset")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        let mut text = chunks.concat();
        keep_tail(&mut text, CONSOLE_KEEP_BYTES);
        Ok(text)
    }

    /// How many chunk rows and text bytes an instance's console holds in
    /// the database (for measuring what a console costs).
    pub async fn console_usage(&self, id: &str) -> Result<(usize, usize), sqlx::Error> {
        let chunks: Vec<String> = sqlx::query_scalar("SELECT data FROM console_chunks WHERE instance_id = $1")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok((chunks.len(), chunks.iter().map(String::len).sum()))
    }

    pub async fn console_offset(&self, id: &str) -> Result<u64, sqlx::Error> {
        let n: Option<i64> = sqlx::query_scalar("SELECT next_offset FROM consoles WHERE instance_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.unwrap_or(0) as u64)
    }
}

/// Holds, until `tx` ends, the lock of one numbered series (`series`, e.g.
/// an instance's events), so that two writers never compute the same
/// `MAX(seq) + 1`. SQLite needs none: a writing statement holds the
/// database's write lock, so the MAX and the INSERT are one step. On
/// PostgreSQL, under READ COMMITTED, two transactions would both read the
/// old MAX and one would fail on the primary key; a transaction-scoped
/// advisory lock on the series' hash queues them instead.
pub(crate) async fn lock_series(tx: &mut Tx<'_>, series: &str) -> Result<(), sqlx::Error> {
    if tx.backend_name() == "PostgreSQL" {
        // `SELECT 1 FROM`: the function returns `void`, which the Any
        // driver cannot decode.
        sqlx::query("SELECT 1 FROM pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(series)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Inserts a row numbered next in its series: `insert` is an INSERT whose
/// number is `MAX(seq) + 1` of the series, and `series` names the series
/// (see `lock_series`). Its own transaction.
pub(crate) async fn insert_numbered<'q>(
    pool: &AnyPool,
    series: &str,
    insert: sqlx::query::Query<'q, Db, sqlx::any::AnyArguments<'q>>,
) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    let mut tx = pool.begin().await?; // its lock_series serialises it
    lock_series(&mut tx, series).await?;
    let r = insert.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(r)
}

/// Most life events one `INSERT` of [`insert_events`] writes (4
/// parameters each, far below SQLite's limit of 32,766).
const EVENTS_PER_INSERT: usize = 200;

/// Inserts an instance's life events, numbered next in its series in the
/// order given: one statement for a report's events, not one each.
pub(crate) async fn insert_events(tx: &mut Tx<'_>, id: &str, events: &[(i64, &str, &str)]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    lock_series(tx, &format!("instance_events/{id}")).await?;
    for part in events.chunks(EVENTS_PER_INSERT) {
        // `VALUES` in `FROM` names its columns column1.. in both SQLite
        // and PostgreSQL; column1 is the event's place in this part.
        let rows: Vec<String> = (0..part.len()).map(|i| format!("({})", placeholders(2 + 4 * i, 4))).collect();
        let sql = format!(
            "INSERT INTO instance_events (instance_id, seq, at_ms, stage, detail)
             SELECT $1, last.seq + v.column1, v.column2, v.column3, v.column4
             FROM (SELECT COALESCE(MAX(seq), 0) AS seq FROM instance_events WHERE instance_id = $1) AS last,
                  (VALUES {}) AS v",
            rows.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(id);
        for (n, (at_ms, stage, detail)) in part.iter().enumerate() {
            q = q.bind(n as i64 + 1).bind(*at_ms).bind(*stage).bind(*detail);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

pub(crate) async fn insert_event(
    tx: &mut Tx<'_>,
    id: &str,
    at_ms: i64,
    stage: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    lock_series(tx, &format!("instance_events/{id}")).await?;
    sqlx::query(
        "INSERT INTO instance_events (instance_id, seq, at_ms, stage, detail)
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM instance_events WHERE instance_id = $1), $2, $3, $4)",
    )
    .bind(id)
    .bind(at_ms)
    .bind(stage)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Instance ids bound in one query of [`Store::report_baseline`], well
/// under SQLite's and PostgreSQL's limits on bound values.
pub const REPORT_IDS_PER_QUERY: usize = 500;

/// Whether agent report entry `a` says anything `row` (the instance's
/// current row) does not: a state, desired state or error to record, life
/// events, or a new guest report. A report that is no news writes nothing.
pub fn report_is_news(row: &InstanceRow, a: &ActualInstance) -> bool {
    let mut desired = row.desired;
    if a.exited_unexpectedly && desired == PowerState::Running {
        desired = PowerState::Stopped;
    }
    let state = derive_state(desired, a.power);
    let error = match a.power {
        ActualPower::Error => a.error.clone(),
        _ => None,
    };
    let guest_json = a.guest.as_ref().map(|g| serde_json::to_string(g).unwrap_or_default());
    !(desired == row.desired
        && state == row.state
        && error == row.error
        && a.events.is_empty()
        && (guest_json.is_none() || guest_json == row.guest_json))
}

/// The user-visible state, from what is wanted and what the agent sees.
pub fn derive_state(desired: PowerState, actual: ActualPower) -> InstanceState {
    use ActualPower as A;
    use InstanceState as S;
    use PowerState as P;
    match (desired, actual) {
        (_, A::Error) => S::Error,
        (P::Deleted, A::Deleted) => S::Terminated,
        (P::Deleted, _) => S::Stopping,
        (P::Running, A::Running) => S::Running,
        (P::Running, _) => S::Pending,
        (P::Stopped, A::Running | A::Stopping | A::Starting) => S::Stopping,
        (P::Stopped, _) => S::Stopped,
    }
}

/// An instance's size on a host (vCPUs, MiB of memory, GiB of disk), or what a host may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Size {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub disk_gib: i64,
}

impl Size {
    pub fn of(row: &InstanceRow) -> Self {
        Size { vcpus: row.vcpus, memory_mib: row.memory_mib, disk_gib: row.disk_gib }
    }

    /// What the policy lets a host hold: the scheduler's limits, the very
    /// ones its capacity filters compare against.
    pub fn limits(p: &nubo_scheduler::Policy, h: &nubo_scheduler::HostSnapshot) -> Self {
        let l = p.limits(h);
        Size { vcpus: l.vcpus as i64, memory_mib: l.memory_mib as i64, disk_gib: l.disk_gib as i64 }
    }
}

/// Claims `size` on `host` if it stays within `limits` (one conditional
/// UPDATE, so concurrent claims never overshoot); false when it would not.
/// The condition is the scheduler's capacity filters (`used + asked <=
/// limit` for vCPUs, memory and disk) with the limits placement chose the
/// host under (`placement::Chosen::limits`), re-checked against the row as
/// it is now.
pub(crate) async fn claim_capacity(tx: &mut Tx<'_>, host: &str, size: Size, limits: Size) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE hosts SET used_vcpus = used_vcpus + $1, used_memory_mib = used_memory_mib + $2,
           used_disk_gib = used_disk_gib + $3
         WHERE id = $4 AND used_vcpus + $1 <= $5 AND used_memory_mib + $2 <= $6 AND used_disk_gib + $3 <= $7",
    )
    .bind(size.vcpus)
    .bind(size.memory_mib)
    .bind(size.disk_gib)
    .bind(host)
    .bind(limits.vcpus)
    .bind(limits.memory_mib)
    .bind(limits.disk_gib)
    .execute(&mut **tx)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// Gives `size` back to `host`.
pub(crate) async fn release_capacity(tx: &mut Tx<'_>, host: &str, size: Size) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE hosts SET used_vcpus = used_vcpus - $1, used_memory_mib = used_memory_mib - $2,
           used_disk_gib = used_disk_gib - $3 WHERE id = $4",
    )
    .bind(size.vcpus)
    .bind(size.memory_mib)
    .bind(size.disk_gib)
    .bind(host)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// See [`Store::begin`].
pub(crate) async fn begin(pool: &AnyPool, backend: Backend) -> Result<Tx<'static>, sqlx::Error> {
    match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => pool.begin().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_number_from_where_they_are_told() {
        assert_eq!(super::placeholders(2, 3), "$2, $3, $4");
        assert_eq!(super::placeholders(1, 1), "$1");
        assert_eq!(super::placeholders(5, 0), "");
    }

    use super::*;

    #[test]
    fn state_follows_desired_and_actual() {
        assert_eq!(derive_state(PowerState::Running, ActualPower::Starting).as_str(), "pending");
        assert_eq!(derive_state(PowerState::Running, ActualPower::Running).as_str(), "running");
        assert_eq!(derive_state(PowerState::Stopped, ActualPower::Running).as_str(), "stopping");
        assert_eq!(derive_state(PowerState::Stopped, ActualPower::Stopped).as_str(), "stopped");
        assert_eq!(derive_state(PowerState::Deleted, ActualPower::Running).as_str(), "stopping");
        assert_eq!(derive_state(PowerState::Deleted, ActualPower::Deleted).as_str(), "terminated");
        assert_eq!(derive_state(PowerState::Running, ActualPower::Error).as_str(), "error");
    }

    #[tokio::test]
    async fn an_empty_url_is_refused_and_says_how_to_get_sqlite() {
        for url in ["", "  "] {
            let e = Store::connect(url).await.err().expect("an empty URL must not open a database");
            assert!(matches!(e, StoreError::EmptyUrl), "{url:?}: {e}");
            let text = e.to_string();
            assert!(text.contains("postgres://USER:PASSWORD@HOST/DATABASE"), "{text}");
            assert!(text.contains("unset NUBO_DATABASE"), "{text}");
        }
    }

    #[test]
    fn nul_is_stored_as_the_replacement_mark() {
        assert_eq!(storable_text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(storable_text("plain"), std::borrow::Cow::Borrowed("plain")));
    }
}
