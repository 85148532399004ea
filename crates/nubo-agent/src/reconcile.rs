//! The reconciler: compares the host's desired state with what runs and
//! starts at most one operation per instance (start, stop, reboot,
//! delete) in its own task, so a slow guest shutdown never holds up the
//! others. What was last applied (start and reboot counters) is kept in
//! each instance's directory, so a restarted agent re-adopts running VMs
//! and neither restarts nor forgets them.

use crate::console;
use crate::imds::{Imds, InstanceMetadata};
use crate::runs::QgaSession;
use crate::AgentConfig;
use nubo_api::agent::{
    ActualInstance, ActualPower, DesiredInstance, DesiredState, HostReport, MigrationRole, PowerState, RegisterHost,
};
use nubo_api::ids::{HostId, InstanceId, RunId};
use nubo_api::views::{GuestStatus, InstanceEvent};
use nubo_client::Client;
use nubo_hypervisor::{Accel, Boot, Hypervisor, PortForward, VmConfig, VmDir, VmStatus};
use nubo_image::ImageCache;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long after QEMU starts the agent watches for boot-complete.
const BOOT_WATCH: Duration = Duration::from_secs(600);
/// How often the guest agent of each running instance is asked for status.
const GUEST_POLL: Duration = Duration::from_secs(5);
/// A report that says nothing new is sent this often (liveness is the
/// heartbeat's, see `lease`). Sending every pass (0.5 s) made a thousand
/// idle hosts two thousand reports a second.
const UNCHANGED_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Most guest status (as JSON) one report carries, over all its instances;
/// the rest waits for the next report. Half the server's default body
/// limit (256 KiB), so that guests cannot make a report too large.
const GUEST_BYTES_PER_REPORT: usize = 128 * 1024;

/// The guest-confinement window for a migration's streams to `target`
/// (its NBD port and the port of its `tcp:HOST:PORT` state URI); they
/// close when dropped. Only local destinations are refused by the guard,
/// so a window for a remote target is harmless.
fn migration_window(
    guard: &Arc<crate::guard::GuestGuard>,
    instance: &str,
    target: &nubo_api::agent::MigrationTarget,
) -> anyhow::Result<Vec<crate::guard::MigrationWindow>> {
    use std::net::ToSocketAddrs;
    let (uri_host, uri_port) = target
        .migrate_uri
        .strip_prefix("tcp:")
        .and_then(|r| r.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.trim_matches(|c| c == '[' || c == ']'), p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("the migration target's URI {:?} is not tcp:HOST:PORT", target.migrate_uri))?;
    let resolve = |host: &str, port: u16| -> anyhow::Result<std::net::IpAddr> {
        (host, port)
            .to_socket_addrs()?
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| anyhow::anyhow!("the migration target {host} has no address"))
    };
    let nbd = resolve(&target.nbd_host, target.nbd_port)?;
    let state = resolve(uri_host, uri_port)?;
    if nbd == state {
        return Ok(vec![guard.allow_migration(instance, nbd, &[target.nbd_port, uri_port])?]);
    }
    Ok(vec![
        guard.allow_migration(instance, nbd, &[target.nbd_port])?,
        guard.allow_migration(instance, state, &[uri_port])?,
    ])
}

/// What the agent last did to an instance, kept in `applied.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Applied {
    start_seq: i64,
    reboot_count: i64,
    /// The VM was stopped on purpose (so its absence is not a crash).
    stopped_on_purpose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Start,
    Stop,
    Reboot,
    Delete,
    /// Start the target copy of a live migration.
    Incoming,
    /// Send the instance to the target of a live migration.
    MigrateOut,
}

struct Op {
    kind: OpKind,
    handle: tokio::task::JoinHandle<()>,
}

/// State shared between the loop and the operation tasks.
#[derive(Default)]
pub(crate) struct Shared {
    ops: HashMap<InstanceId, Op>,
    /// Last failure per instance, with the start_seq it applies to.
    errors: HashMap<InstanceId, (i64, String)>,
    /// Events not yet delivered to the control plane.
    events: HashMap<InstanceId, Vec<InstanceEvent>>,
    /// Console offsets acknowledged by the server.
    console: HashMap<InstanceId, u64>,
    /// Each instance's metadata service and the task serving it.
    imds: HashMap<InstanceId, (Arc<Imds>, tokio::task::JoinHandle<()>)>,
    /// Runs being carried out.
    runs: HashMap<RunId, tokio::task::JoinHandle<()>>,
    /// Runs this agent finished. A desired state fetched before the
    /// server saw the end may still list one; it must not run twice.
    runs_done: std::collections::HashSet<RunId>,
    /// One guest-agent client at a time per instance (QEMU serves one).
    qga_locks: HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
    /// Guest status polls: when the last one started, and the task.
    guest_polls: HashMap<InstanceId, (Instant, tokio::task::JoinHandle<()>)>,
    /// Guest status collected and not yet reported, and the last reported.
    guest_new: HashMap<InstanceId, GuestStatus>,
    guest_sent: HashMap<InstanceId, GuestStatus>,
    /// The newest guest status and network counters, for monitoring.
    pub(crate) guest_latest: HashMap<InstanceId, (Instant, GuestStatus, Option<crate::guest::NetCounters>)>,
    /// The last desired state seen (monitoring and checks read it).
    pub(crate) desired: Option<DesiredState>,
    /// Targets of live migrations started here whose NBD server still runs.
    incoming: HashSet<InstanceId>,
    /// Instances this host migrated away (their VM and files are gone).
    migrated_out: HashSet<InstanceId>,
}

impl Shared {
    /// The instance's metadata service, while it has one.
    pub(crate) fn imds_of(&self, id: &InstanceId) -> Option<Arc<Imds>> {
        self.imds.get(id).map(|(imds, _)| imds.clone())
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Wall-clock time of a monotonic instant (for events seen earlier).
fn ms_at(at: Instant) -> i64 {
    now_ms() - at.elapsed().as_millis() as i64
}

pub struct Reconciler {
    host: HostId,
    pub(crate) client: Client,
    pub(crate) hypervisor: Arc<dyn Hypervisor>,
    images: Arc<ImageCache>,
    accel: Accel,
    pub(crate) config: AgentConfig,
    shared: Arc<Mutex<Shared>>,
    /// Volumes, snapshots, attachments and instance snapshots (`storage`).
    pub(crate) storage: Mutex<crate::storage::StorageState>,
    /// The host's load balancers (`balancers`).
    pub(crate) balancers: Mutex<crate::balancers::Balancers>,
    /// Private networks' bridges, taps, DHCP and firewall (`network`);
    /// none when the host has user-mode networking only.
    network: Option<tokio::sync::Mutex<crate::network::Plumbing>>,
    /// The host's lease with the control plane (`lease`): renewed by the
    /// heartbeat; while it is out, VMs are stopped and none start.
    pub(crate) lease: Arc<crate::lease::Lease>,
}

impl Reconciler {
    pub fn new(
        host: HostId,
        client: Client,
        hypervisor: Arc<dyn Hypervisor>,
        images: Arc<ImageCache>,
        accel: Accel,
        config: AgentConfig,
    ) -> Self {
        let shared: Arc<Mutex<Shared>> = Arc::default();
        let config_fences = config.shared_storage.is_some();
        let network = config.network.clone().map(|n| {
            let lookup = crate::network::lookup_from(shared.clone());
            tokio::sync::Mutex::new(crate::network::Plumbing::new(n, &config.data_dir, lookup))
        });
        Self {
            host,
            client,
            hypervisor,
            images,
            accel,
            config,
            shared,
            storage: Default::default(),
            balancers: Default::default(),
            network,
            lease: Arc::new(crate::lease::Lease::new(config_fences)),
        }
    }

    pub(crate) fn host_id(&self) -> &HostId {
        &self.host
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) async fn vm_running(&self, id: &InstanceId) -> bool {
        self.hypervisor.status(&self.dir(id)).await.is_running()
    }

    /// A connection to the instance's guest agent, holding the instance's
    /// guest-agent lock until dropped.
    pub(crate) async fn guest_agent(
        &self,
        id: &InstanceId,
        timeout: Duration,
    ) -> Result<QgaSession, nubo_hypervisor::QgaError> {
        let lock = self.lock().qga_locks.entry(id.clone()).or_default().clone();
        let guard = lock.lock_owned().await;
        let client = nubo_hypervisor::QgaClient::connect(&self.dir(id).qga_socket(), timeout).await?;
        Ok(QgaSession { client, _guard: guard })
    }

    /// What the metadata service tells `want`'s guest.
    fn metadata(&self, want: &DesiredInstance) -> InstanceMetadata {
        InstanceMetadata {
            instance_id: want.id.to_string(),
            hostname: want.name.clone(),
            image: want.image.clone(),
            instance_type: want
                .instance_type
                .clone()
                .unwrap_or_else(|| nubo_api::views::custom_instance_type(want.vcpus, want.memory_mib)),
            availability_zone: want.availability_zone.clone(),
            local_ipv4: match want.nics.first() {
                Some(nic) => nic.address.clone(),
                None => nubo_hypervisor::GUEST_ADDR.to_string(),
            },
            mac: match want.nics.first() {
                Some(nic) => nic.mac.clone(),
                None => nubo_hypervisor::mac_for(want.id.as_str()),
            },
            public_keys: want.public_keys.clone(),
            user_data: want.user_data.clone(),
            tokens_required: want.imds_tokens_required,
        }
    }

    /// Starts (or refreshes) the instance's metadata service. It runs
    /// whenever the instance directory exists, so a VM re-adopted after an
    /// agent restart keeps its metadata.
    fn ensure_imds(&self, want: &DesiredInstance) {
        // Bridged instances reach their service over the network.
        if self.config.metadata_relay.is_none() && want.nics.is_empty() {
            return;
        }
        let dir = self.dir(&want.id);
        let data = self.metadata(want);
        let mut s = self.lock();
        if let Some((imds, task)) = s.imds.get(&want.id) {
            if !task.is_finished() {
                imds.update(data);
                return;
            }
        }
        if !dir.path().exists() {
            return;
        }
        let imds = Imds::new(data);
        match crate::imds::serve(&dir.imds_socket(), imds.clone()) {
            Ok(task) => {
                s.imds.insert(want.id.clone(), (imds, task));
            }
            Err(e) => tracing::warn!(instance = %want.id, error = %e, "cannot start the metadata service"),
        }
    }

    fn drop_instance_services(&self, id: &InstanceId) {
        let mut s = self.lock();
        if let Some((_, task)) = s.imds.remove(id) {
            task.abort();
        }
        if let Some((_, task)) = s.guest_polls.remove(id) {
            task.abort();
        }
        s.guest_new.remove(id);
        s.guest_sent.remove(id);
        s.guest_latest.remove(id);
        s.qga_locks.remove(id);
        drop(s);
        self.forget_disks(id);
    }

    /// Starts the runs that are not under way yet (once the VM runs).
    fn ensure_runs(self: &Arc<Self>, want: &DesiredInstance) {
        let mut s = self.lock();
        let finished: Vec<RunId> = s.runs.iter().filter(|(_, t)| t.is_finished()).map(|(id, _)| id.clone()).collect();
        for id in finished {
            s.runs.remove(&id);
            s.runs_done.insert(id);
        }
        for run in &want.runs {
            if s.runs.contains_key(&run.id) || s.runs_done.contains(&run.id) {
                continue;
            }
            let span = tracing::info_span!("run", instance = %want.id, run = %run.id);
            let task = tokio::spawn(crate::runs::execute(self.clone(), want.id.clone(), run.clone()).instrument(span));
            s.runs.insert(run.id.clone(), task);
        }
    }

    /// Asks the guest agent for the guest's status every [`GUEST_POLL`].
    fn poll_guest(self: &Arc<Self>, id: &InstanceId) {
        let mut s = self.lock();
        if let Some((at, task)) = s.guest_polls.get(id) {
            if !task.is_finished() || at.elapsed() < GUEST_POLL {
                return;
            }
        }
        let this = self.clone();
        let instance = id.clone();
        let task = tokio::spawn(async move {
            // Short timeouts: a guest without an agent is normal, not an error.
            let Ok(mut session) = this.guest_agent(&instance, Duration::from_secs(2)).await else { return };
            match crate::guest::collect(&mut session.client, now_ms()).await {
                Ok((status, counters)) => {
                    let mut s = this.lock();
                    s.guest_latest.insert(instance.clone(), (Instant::now(), status.clone(), counters));
                    s.guest_new.insert(instance, status);
                }
                Err(e) => tracing::debug!(instance = %instance, error = %e, "guest status not available"),
            }
        });
        s.guest_polls.insert(id.clone(), (Instant::now(), task));
    }

    /// The guest status to report for `id`, when it changed since the
    /// last one the control plane accepted and fits in `budget` (bytes of
    /// guest status left for this report, reduced by what it takes). It
    /// stays pending until [`Self::guest_reported`]: a report that fails
    /// (or has no room) sends it again next time.
    fn guest_to_report(&self, id: &InstanceId, budget: &mut usize) -> Option<GuestStatus> {
        let mut s = self.lock();
        let new = s.guest_new.get(id)?;
        if !crate::guest::changed(s.guest_sent.get(id), new) {
            s.guest_new.remove(id);
            return None;
        }
        let size = serde_json::to_vec(new).map_or(usize::MAX, |b| b.len());
        if size > *budget {
            return None;
        }
        *budget -= size;
        Some(new.clone())
    }

    /// The control plane accepted these guest statuses: they are sent.
    fn guest_reported(&self, sent: Vec<(InstanceId, GuestStatus)>) {
        let mut s = self.lock();
        for (id, g) in sent {
            if s.guest_new.get(&id) == Some(&g) {
                s.guest_new.remove(&id);
            }
            s.guest_sent.insert(id, g);
        }
    }

    /// Where registry image files are cached on this host.
    pub(crate) fn blob_root(&self) -> PathBuf {
        self.images.root().join("blobs")
    }

    pub(crate) fn dir(&self, id: &InstanceId) -> VmDir {
        VmDir::new(self.instances_root().join(id.as_str()))
    }

    fn instances_root(&self) -> PathBuf {
        self.config.instances_root()
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panicked op task cannot leave `Shared` half-updated in a way
        // that matters (each field is replaced whole), so recover.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn event(&self, id: &InstanceId, stage: &str, detail: impl Into<String>) {
        push_event(&self.shared, id, now_ms(), stage, detail.into());
    }

    /// The main loop: reconcile on every desired-state change and on a
    /// timer, then report and ship consoles.
    pub async fn run(
        self,
        mut rx: tokio::sync::watch::Receiver<Option<DesiredState>>,
        registration: RegisterHost,
    ) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let metrics = tokio::spawn(this.clone().metrics_loop(this.config.metrics_interval).in_current_span());
        let checks = tokio::spawn(this.clone().checks_loop().in_current_span());
        let lb_load = tokio::spawn(this.clone().balancer_load_loop().in_current_span());
        let heartbeat = tokio::spawn(this.clone().heartbeat_loop(registration.clone()).in_current_span());
        let watchdog = tokio::spawn(this.clone().fence_loop().in_current_span());
        // They end with the reconciler (the loop below only ends when the
        // desired-state watcher is gone).
        let _guards = (
            AbortOnDrop(metrics),
            AbortOnDrop(checks),
            AbortOnDrop(lb_load),
            AbortOnDrop(heartbeat),
            AbortOnDrop(watchdog),
        );
        let mut seen: std::collections::HashSet<InstanceId> = Default::default();
        // The last report the control plane took, and when.
        let mut last_report: Option<(Vec<u8>, Instant)> = None;
        loop {
            let desired = rx.borrow_and_update().clone();
            if let Some(d) = desired {
                this.lock().desired = Some(d.clone());
                for i in &d.instances {
                    if seen.insert(i.id.clone()) {
                        this.event(&i.id, "agent_seen", "");
                    }
                }
                this.reconcile_networks(&d).await;
                let (actual, running) = this.reconcile(&d).await;
                let volumes = this.reconcile_volumes(&d, &running);
                let snapshots = this.reconcile_snapshots(&d);
                let balancers = this.reconcile_balancers(&d);
                let guests: Vec<(InstanceId, GuestStatus)> =
                    actual.iter().filter_map(|a| Some((a.id.clone(), a.guest.clone()?))).collect();
                let report = HostReport { instances: actual, volumes, snapshots, balancers };
                let body = serde_json::to_vec(&report).unwrap_or_default();
                let due = last_report
                    .as_ref()
                    .is_none_or(|(sent, at)| *sent != body || at.elapsed() >= UNCHANGED_REPORT_EVERY);
                if due && this.report(report, &registration).await {
                    last_report = Some((body, Instant::now()));
                    this.guest_reported(guests);
                }
                this.ship_consoles(&d).await;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep(this.config.interval) => {}
            }
        }
    }

    /// Sets up the host's private networks for `d` (before instances
    /// start, so their taps exist). A failure is logged and retried after
    /// a pause that grows while it lasts, or at once when the desired
    /// networks change; instances whose tap is missing fail to start and
    /// say why.
    async fn reconcile_networks(&self, d: &DesiredState) {
        let Some(net) = &self.network else { return };
        if let Err(e) = net.lock().await.reconcile(d).await {
            tracing::warn!(error = %e, "private networks not (fully) set up; retrying in 1 to 30 s, or when they change");
        }
    }

    /// The tap NICs of `want`, created (and put on their bridges) if missing.
    async fn taps_for(&self, want: &DesiredInstance) -> anyhow::Result<Vec<nubo_hypervisor::TapNic>> {
        if want.nics.is_empty() {
            return Ok(Vec::new());
        }
        let Some(net) = &self.network else {
            anyhow::bail!(
                "instance {} has private network NICs but this host runs none; start its agent with --underlay ADDRESS",
                want.id
            );
        };
        let vni_of: HashMap<_, _> =
            self.lock().desired.iter().flat_map(|d| d.networks.iter().map(|n| (n.id.clone(), n.vni))).collect();
        let plumbing = net.lock().await;
        let mut taps = Vec::new();
        for (index, nic) in want.nics.iter().enumerate() {
            let vni = *vni_of.get(&nic.network_id).ok_or_else(|| {
                anyhow::anyhow!(
                    "network {} of instance {} is not in this host's desired state yet",
                    nic.network_id,
                    want.id
                )
            })?;
            let tap = crate::network::tap_name(&want.id, index);
            plumbing.ensure_tap(&tap, vni).await?;
            taps.push(nubo_hypervisor::TapNic { tap, mac: nic.mac.clone(), netns: plumbing.netns_path() });
        }
        Ok(taps)
    }

    /// Sends a report; false (with its events kept) when it did not arrive.
    async fn report(&self, report: HostReport, registration: &RegisterHost) -> bool {
        if let Err(e) = self.client.report(&self.host, &report).await {
            tracing::warn!(error = %e, "report failed; events kept for the next one");
            // Put the events back so they are not lost.
            {
                let mut s = self.lock();
                for a in report.instances {
                    if !a.events.is_empty() {
                        let list = s.events.entry(a.id).or_default();
                        let mut old = std::mem::take(list);
                        *list = a.events;
                        list.append(&mut old);
                    }
                }
            }
            if e.status() == Some(404) {
                // The control plane forgot this host (new database): join again.
                let _ = self.client.register(registration).await;
            }
            return false;
        }
        true
    }

    async fn ship_consoles(&self, d: &DesiredState) {
        for i in &d.instances {
            if i.power == PowerState::Deleted {
                continue;
            }
            let dir = self.dir(&i.id);
            // Restarts the console pump of a VM this agent did not start
            // (it was restarted) and keeps the log within its cap.
            self.hypervisor.watch_console(&dir);
            let log = dir.console_log();
            if !log.exists() {
                continue;
            }
            let offset = self.lock().console.get(&i.id).copied();
            match console::ship(&self.client, &self.host, &i.id, &log, offset).await {
                Ok(next) => {
                    self.lock().console.insert(i.id.clone(), next);
                }
                Err(e) => tracing::debug!(instance = %i.id, error = %e, "console shipping failed"),
            }
        }
    }

    /// One pass over the desired set; returns the actual state of each,
    /// and which instances run.
    async fn reconcile(self: &Arc<Self>, d: &DesiredState) -> (Vec<ActualInstance>, HashSet<InstanceId>) {
        // Forget finished operations.
        {
            let mut s = self.lock();
            s.ops.retain(|_, op| !op.handle.is_finished());
        }
        // Forget finished runs the server no longer lists (it has their end).
        {
            let listed: std::collections::HashSet<&RunId> =
                d.instances.iter().flat_map(|i| i.runs.iter().map(|r| &r.id)).collect();
            self.lock().runs_done.retain(|id| listed.contains(id));
        }
        let mut out = Vec::with_capacity(d.instances.len());
        let mut running = HashSet::new();
        let mut guest_budget = GUEST_BYTES_PER_REPORT;
        for want in &d.instances {
            let (power, pid) = self.reconcile_one(want).await;
            // The target copy of a live migration is not the instance yet:
            // nothing of it is reported, attached or served until it runs
            // here (a removed failed copy is reported, as deleted).
            let target_copy = want.migration.as_ref().is_some_and(|m| m.role == MigrationRole::Target);
            if target_copy && want.power != PowerState::Deleted {
                continue;
            }
            if self.lock().migrated_out.contains(&want.id) {
                continue;
            }
            // A reboot or start in flight reports no pid: leave the disks alone then.
            let vm_pid = match (power, pid) {
                (ActualPower::Running, Some(pid)) => Some(pid),
                _ => None,
            };
            if vm_pid.is_some() {
                running.insert(want.id.clone());
            }
            let busy = power == ActualPower::Running && pid.is_none() || power == ActualPower::Starting;
            let volumes = match (want.power, vm_pid) {
                (PowerState::Deleted, _) => Vec::new(),
                (_, Some(pid)) => self.reconcile_attachments(want, Some(pid)),
                _ if busy => self.attachments_as_known(want),
                _ => self.reconcile_attachments(want, None),
            };
            let captures = match (want.power, power) {
                (PowerState::Deleted, _) => Vec::new(),
                (_, ActualPower::Running) if vm_pid.is_some() => self.reconcile_captures(want, true),
                (_, ActualPower::Stopped) => self.reconcile_captures(want, false),
                _ => Vec::new(),
            };
            match (want.power, power) {
                (PowerState::Deleted, _) | (_, ActualPower::Deleted) => self.drop_instance_services(&want.id),
                (PowerState::Running, ActualPower::Running) => {
                    self.ensure_imds(want);
                    self.ensure_runs(want);
                    self.poll_guest(&want.id);
                }
                _ => self.ensure_imds(want),
            }
            let guest = self.guest_to_report(&want.id, &mut guest_budget);
            let (error, events) = {
                let mut s = self.lock();
                let error = match power {
                    ActualPower::Error => s.errors.get(&want.id).map(|e| e.1.clone()),
                    _ => None,
                };
                (error, s.events.remove(&want.id).unwrap_or_default())
            };
            let exited_unexpectedly = events.iter().any(|e| e.stage == "exited_unexpectedly");
            out.push(ActualInstance {
                id: want.id.clone(),
                power,
                pid,
                error,
                exited_unexpectedly,
                events,
                guest,
                volumes,
                captures,
            });
        }
        (out, running)
    }

    async fn reconcile_one(self: &Arc<Self>, want: &DesiredInstance) -> (ActualPower, Option<u32>) {
        if let Some(kind) = self.lock().ops.get(&want.id).map(|o| o.kind) {
            return match kind {
                OpKind::Start => (ActualPower::Starting, None),
                OpKind::Reboot | OpKind::MigrateOut => (ActualPower::Running, None),
                OpKind::Incoming => (ActualPower::Starting, None),
                OpKind::Stop | OpKind::Delete => (ActualPower::Stopping, None),
            };
        }
        let coming_back = want.migration.as_ref().is_some_and(|m| m.role == MigrationRole::Target);
        {
            let mut s = self.lock();
            if coming_back {
                s.migrated_out.remove(&want.id);
            } else if s.migrated_out.contains(&want.id) {
                // Sent away; the desired state has not caught up yet.
                return (ActualPower::Deleted, None);
            }
        }
        let dir = self.dir(&want.id);
        let status = self.hypervisor.status(&dir).await;
        let applied = read_applied(&dir);
        let failed_seq = self.lock().errors.get(&want.id).map(|e| e.0);
        if let Some(m) = want.migration.as_ref().filter(|_| want.power != PowerState::Deleted) {
            match (m.role, &status, &m.target) {
                (MigrationRole::Target, VmStatus::NotRunning, _) if !self.lease.may_start() => {
                    return (ActualPower::Starting, None);
                }
                (MigrationRole::Target, VmStatus::NotRunning, _) if failed_seq != Some(want.start_seq) => {
                    self.spawn(want, OpKind::Incoming);
                    return (ActualPower::Starting, None);
                }
                (MigrationRole::Target, VmStatus::Running { pid, .. }, _) => return (ActualPower::Running, Some(*pid)),
                (MigrationRole::Target, _, _) => return (ActualPower::Error, None),
                (MigrationRole::Source, VmStatus::Running { .. }, Some(_)) => {
                    self.spawn(want, OpKind::MigrateOut);
                    return (ActualPower::Running, None);
                }
                _ => {}
            }
        } else if self.lock().incoming.remove(&want.id) {
            // A migration into this host ended: the disks are ours now.
            let (hv, dir) = (self.hypervisor.clone(), dir.clone());
            tokio::spawn(async move {
                let _ = hv.migration_target_finish(&dir).await;
            });
        }
        match (want.power, status) {
            (PowerState::Deleted, _) => {
                if dir.path().exists() {
                    self.spawn(want, OpKind::Delete);
                    (ActualPower::Stopping, None)
                } else {
                    (ActualPower::Deleted, None)
                }
            }
            (PowerState::Running, VmStatus::Running { pid, .. }) => {
                if want.reboot_count > applied.reboot_count && self.lease.may_start() {
                    self.spawn(want, OpKind::Reboot);
                }
                (ActualPower::Running, Some(pid))
            }
            (PowerState::Running, VmStatus::NotRunning) => {
                if failed_seq == Some(want.start_seq) {
                    (ActualPower::Error, None)
                } else if want.start_seq > applied.start_seq && !self.lease.may_start() {
                    // Cut off from the control plane: it may be starting
                    // this instance elsewhere. Wait for a renewal.
                    (ActualPower::Stopped, None)
                } else if want.start_seq > applied.start_seq {
                    self.spawn(want, OpKind::Start);
                    (ActualPower::Starting, None)
                } else {
                    // Started before, not stopped by us, and gone: it died
                    // or was powered off from inside. Report, don't restart.
                    if !applied.stopped_on_purpose {
                        self.event(&want.id, "exited_unexpectedly", "the QEMU process is gone");
                        write_applied(&dir, &Applied { stopped_on_purpose: true, ..applied });
                    }
                    (ActualPower::Stopped, None)
                }
            }
            (PowerState::Stopped, VmStatus::Running { pid, .. }) => {
                self.spawn(want, OpKind::Stop);
                (ActualPower::Stopping, Some(pid))
            }
            (PowerState::Stopped, VmStatus::NotRunning) => (ActualPower::Stopped, None),
        }
    }

    fn spawn(self: &Arc<Self>, want: &DesiredInstance, kind: OpKind) {
        let this = self.clone();
        let want = want.clone();
        let span = tracing::info_span!("op", instance = %want.id, op = ?kind);
        let id = want.id.clone();
        let handle = tokio::spawn(
            async move {
                let result = match kind {
                    OpKind::Start => this.start(&want).await,
                    OpKind::Stop => this.stop(&want).await,
                    OpKind::Reboot => this.reboot(&want).await,
                    OpKind::Delete => this.delete(&want).await,
                    OpKind::Incoming => this.incoming(&want).await,
                    OpKind::MigrateOut => this.migrate_out(&want).await,
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "operation failed");
                    this.event(&want.id, "error", e.to_string());
                    this.lock().errors.insert(want.id.clone(), (want.start_seq, e.to_string()));
                }
            }
            .instrument(span),
        );
        self.lock().ops.insert(id, Op { kind, handle });
    }

    /// A builtin image, built here first if it is not cached yet.
    async fn builtin_image(&self, name: &str) -> anyhow::Result<nubo_image::BuiltImage> {
        let images = self.images.clone();
        let name = name.to_string();
        Ok(tokio::task::spawn_blocking(move || images.ensure(&name, &mut |msg| tracing::info!(image = %name, "{msg}")))
            .await??)
    }

    /// How `want` boots and from which base disk (and its format, when it
    /// must not be guessed): a builtin image, or a registry image's file
    /// fetched into the local cache, booted by firmware or with a builtin
    /// image's kernel.
    async fn boot_source(&self, want: &DesiredInstance) -> anyhow::Result<(Boot, PathBuf, Option<String>, String)> {
        let direct = |image: &nubo_image::BuiltImage| Boot::Direct {
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            cmdline: image.cmdline.clone(),
        };
        match &want.image_source {
            None => {
                let image = self.builtin_image(&want.image).await?;
                Ok((direct(&image), image.disk.clone(), None, image.sha256))
            }
            Some(src) => {
                let disk =
                    crate::blobs::ensure(&self.client, &self.blob_root(), src).await.map_err(anyhow::Error::msg)?;
                let boot = match &src.kernel_image {
                    Some(k) => direct(&self.builtin_image(k).await?),
                    None => Boot::Firmware,
                };
                Ok((boot, disk, Some(src.disk_format.clone()), src.sha256.clone()))
            }
        }
    }

    async fn start(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        self.boot(want, false).await
    }

    /// An error while the lease is out (no VM may start then).
    fn lease_allows_start(&self) -> anyhow::Result<()> {
        if self.lease.may_start() {
            return Ok(());
        }
        anyhow::bail!(
            "not started: this host has not reached the control plane for {} s, so the control plane may start \
             the instance on another host that shares its storage; it starts here again once the host is back in touch",
            self.lease.timing().renewed_at.elapsed().as_secs()
        )
    }

    /// Starts QEMU for `want`: booting, or (`incoming`) paused as the
    /// target of a live migration, with the same devices as the source.
    async fn boot(self: &Arc<Self>, want: &DesiredInstance, incoming: bool) -> anyhow::Result<()> {
        self.lease_allows_start()?;
        let dir = self.dir(&want.id);
        let (boot, base_disk, base_format, sha256) = self.boot_source(want).await?;
        self.event(&want.id, "image_ready", sha256);
        let disks = self.cold_disks(want);
        let taps = self.taps_for(want).await?;
        let bridged = !taps.is_empty();
        let cfg = VmConfig {
            id: want.id.to_string(),
            name: want.name.clone(),
            vcpus: want.vcpus,
            memory_mib: want.memory_mib,
            disk_gib: want.disk_gib,
            boot,
            base_disk,
            seed_image: Some(dir.seed()),
            // On a private network the host's NAT forwards the ports (`network`).
            port_forwards: if bridged {
                Vec::new()
            } else {
                want.ports.iter().map(|p| PortForward { host_port: p.host_port, guest_port: p.guest_port }).collect()
            },
            accel: self.accel,
            hotplug_slots: nubo_api::MAX_VOLUMES_PER_INSTANCE,
            metadata_relay: self.config.metadata_relay.as_ref().filter(|_| !bridged).map(|relay| {
                let mut argv = relay.clone();
                argv.push(dir.imds_socket().display().to_string());
                argv
            }),
            mac: Some(nubo_hypervisor::mac_for(want.id.as_str())),
            base_format,
            disks,
            taps,
            incoming,
        };
        self.hypervisor.prepare_disk(&dir, &cfg).await?;
        self.ensure_imds(want);
        let seed = nubo_image::seed::SeedData {
            instance_id: want.id.to_string(),
            hostname: want.name.clone(),
            user_data: want.user_data.clone(),
            public_keys: want.public_keys.iter().map(|k| k.public_key.clone()).collect(),
        };
        let seed_path = dir.seed();
        tokio::task::spawn_blocking(move || nubo_image::seed::write_nocloud_seed(&seed_path, &seed)).await??;
        self.event(&want.id, "disk_ready", format!("{} GiB overlay", want.disk_gib));
        let log_start = std::fs::metadata(dir.console_log()).map(|m| m.len()).unwrap_or(0);
        // Checked again: preparing the disk may have taken a while.
        self.lease_allows_start()?;
        let pid = self.hypervisor.start(&dir, &cfg).await?;
        if let Some(g) = &self.config.guard {
            g.vm_started(want.id.as_str());
        }
        self.note_started(&want.id, pid, &cfg.disks);
        write_applied(
            &dir,
            &Applied { start_seq: want.start_seq, reboot_count: want.reboot_count, stopped_on_purpose: false },
        );
        if incoming {
            tracing::info!(pid, "migration target started");
            return Ok(());
        }
        self.event(&want.id, "qemu_started", format!("pid {pid}"));
        tracing::info!(pid, "VM started");
        self.watch_boot(&want.id, dir.console_log(), log_start);
        Ok(())
    }

    /// The target side of a live migration: empty disks (volumes too),
    /// QEMU waiting for state, NBD exports; then tells the control plane
    /// where the source should send. A failure is reported, so the
    /// migration ends and the source's instance runs on.
    async fn incoming(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let Some(m) = want.migration.clone() else { return Ok(()) };
        let result = async {
            for v in &want.volumes {
                let path = self.volume_path(&v.volume_id);
                if !path.is_file() {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    self.hypervisor.create_volume(&path, v.size_gib << 30).await?;
                }
            }
            self.boot(want, true).await?;
            let host = self.config.migration_address.clone();
            let (nbd_port, migrate_port) = (free_port()?, free_port()?);
            let mut nodes = vec!["root".to_string()];
            nodes.extend(want.volumes.iter().map(|v| v.volume_id.to_string()));
            self.hypervisor.migration_listen(&self.dir(&want.id), &host, nbd_port, migrate_port, &nodes).await?;
            self.lock().incoming.insert(want.id.clone());
            let target = nubo_api::agent::MigrationTarget {
                nbd_host: host.clone(),
                nbd_port,
                migrate_uri: format!("tcp:{host}:{migrate_port}"),
            };
            self.client.migration_ready(&m.id, &target).await?;
            tracing::info!(migration = %m.id, nbd_port, migrate_port, "migration target ready");
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = &result {
            let _ = self.hypervisor.kill(&self.dir(&want.id)).await;
            let done = nubo_api::agent::MigrationDone::failed(format!("the target could not prepare: {e:#}"));
            let _ = self.client.migration_done(&m.id, &done).await;
        }
        result
    }

    /// The source side: mirror the disks and send the state, report how it
    /// went, and on success remove this host's copy.
    async fn migrate_out(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let Some((m, target)) = want.migration.as_ref().and_then(|m| Some((m.clone(), m.target.clone()?))) else {
            return Ok(());
        };
        let dir = self.dir(&want.id);
        let mut disks = vec![nubo_hypervisor::MigratingDisk { node: "root".into(), top_only: true }];
        disks.extend(
            want.volumes
                .iter()
                .map(|v| nubo_hypervisor::MigratingDisk { node: v.volume_id.to_string(), top_only: false }),
        );
        tracing::info!(migration = %m.id, to = %target.migrate_uri, "live migration: copying disks and state");
        // The streams may go to this very host (two agents on one
        // machine): let this VM's QEMU through the guest confinement for
        // them, and only for as long as the migration runs.
        let window = match &self.config.guard {
            Some(g) => migration_window(g, want.id.as_str(), &target),
            None => Ok(Vec::new()),
        };
        let result = match window {
            Ok(_window) => {
                self.hypervisor
                    .migration_send(
                        &dir,
                        &target.nbd_host,
                        target.nbd_port,
                        &target.migrate_uri,
                        &disks,
                        MIGRATION_LIMIT,
                    )
                    .await
            }
            Err(e) => Err(nubo_hypervisor::HypervisorError::Migration(format!(
                "opening the guest confinement for the migration streams: {e}"
            ))),
        };
        let done = match &result {
            Ok(s) => nubo_api::agent::MigrationDone {
                ok: true,
                error: None,
                downtime_ms: Some(s.downtime_ms),
                total_ms: Some(s.total_ms),
                disk_bytes: Some(s.disk_bytes),
                ram_bytes: Some(s.ram_bytes),
            },
            Err(e) => nubo_api::agent::MigrationDone::failed(e.to_string()),
        };
        // The control plane must hear it: the instance is now the target's.
        let mut delay = Duration::from_millis(200);
        for _ in 0..20 {
            match self.client.migration_done(&m.id, &done).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot report the migration's end; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let stats = result?;
        tracing::info!(downtime_ms = stats.downtime_ms, total_ms = stats.total_ms, "live migration completed");
        self.lock().migrated_out.insert(want.id.clone());
        self.drop_instance_services(&want.id);
        self.hypervisor.destroy(&dir).await?;
        if let Some(net) = &self.network {
            net.lock().await.remove_taps(&want.id).await;
        }
        for v in &want.volumes {
            let _ = std::fs::remove_file(self.volume_path(&v.volume_id));
        }
        Ok(())
    }

    /// Records `boot_complete` when the console shows the marker.
    fn watch_boot(self: &Arc<Self>, id: &InstanceId, log: PathBuf, from: u64) {
        let shared = self.shared.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Some(at) = console::wait_for_marker(&log, from, nubo_api::BOOT_COMPLETE_MARKER, BOOT_WATCH).await {
                push_event(&shared, &id, ms_at(at), "boot_complete", String::new());
            }
        });
    }

    async fn stop(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let dir = self.dir(&want.id);
        let mut applied = read_applied(&dir);
        applied.stopped_on_purpose = true;
        write_applied(&dir, &applied);
        self.hypervisor.shutdown(&dir, self.config.stop_grace).await?;
        self.event(&want.id, "stopped", "");
        Ok(())
    }

    async fn reboot(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let dir = self.dir(&want.id);
        let log_start = std::fs::metadata(dir.console_log()).map(|m| m.len()).unwrap_or(0);
        self.hypervisor.reboot(&dir).await?;
        let mut applied = read_applied(&dir);
        applied.reboot_count = want.reboot_count;
        write_applied(&dir, &applied);
        self.event(&want.id, "rebooted", "");
        self.watch_boot(&want.id, dir.console_log(), log_start);
        Ok(())
    }

    async fn delete(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let dir = self.dir(&want.id);
        // Ship the last of the console before the log goes.
        let offset = self.lock().console.get(&want.id).copied();
        let _ = console::ship(&self.client, &self.host, &want.id, &dir.console_log(), offset).await;
        self.drop_instance_services(&want.id);
        self.hypervisor.destroy(&dir).await?;
        if let Some(net) = &self.network {
            net.lock().await.remove_taps(&want.id).await;
        }
        self.lock().console.remove(&want.id);
        self.event(&want.id, "deleted", "");
        Ok(())
    }
}

/// How long a live migration may take, disks included.
const MIGRATION_LIMIT: Duration = Duration::from_secs(900);

/// A free TCP port on this machine (for a migration target's listeners).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn push_event(shared: &Mutex<Shared>, id: &InstanceId, at_ms: i64, stage: &str, detail: String) {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    s.events.entry(id.clone()).or_default().push(InstanceEvent { at_ms, stage: stage.to_string(), detail });
}

fn read_applied(dir: &VmDir) -> Applied {
    std::fs::read(dir.path().join("applied.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_applied(dir: &VmDir, a: &Applied) {
    let path = dir.path().join("applied.json");
    let tmp = dir.path().join("applied.json.tmp");
    let result = serde_json::to_vec(a)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "cannot record applied state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reconciler(dir: &std::path::Path) -> Reconciler {
        let config = AgentConfig {
            server_url: "http://127.0.0.1:9".into(),
            join_token: None,
            data_dir: dir.to_path_buf(),
            image_cache: dir.join("images"),
            name: "h".into(),
            vcpus: 1,
            memory_mib: 128,
            disk_gib: 1,
            interval: Duration::from_millis(500),
            stop_grace: Duration::from_secs(1),
            ca_cert: None,
            metadata_relay: None,
            metrics_interval: Duration::from_secs(2),
            plugin_dirs: Vec::new(),
            network: None,
            migration_address: "127.0.0.1".into(),
            shared_storage: None,
            insecure_http: false,
            guard: None,
        };
        Reconciler::new(
            "h-0123456789abcdef0".parse().unwrap(),
            Client::new("http://127.0.0.1:9", "").unwrap(),
            Arc::new(nubo_hypervisor::Simulated::new(Duration::ZERO, "x")),
            Arc::new(ImageCache::new(dir.join("images"))),
            Accel::Tcg,
            config,
        )
    }

    /// A guest status goes in every report until one is accepted, and
    /// waits when the report has no room for it.
    #[test]
    fn guest_status_is_sent_until_a_report_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = reconciler(dir.path());
        let id: InstanceId = "i-0123456789abcdef0".parse().unwrap();
        let status = GuestStatus { os: Some("Nubo tiny".into()), ..Default::default() };
        r.lock().guest_new.insert(id.clone(), status.clone());
        let mut budget = GUEST_BYTES_PER_REPORT;
        assert_eq!(r.guest_to_report(&id, &mut budget), Some(status.clone()));
        assert!(budget < GUEST_BYTES_PER_REPORT);
        // That report failed: the next one carries it again.
        let mut budget = GUEST_BYTES_PER_REPORT;
        assert_eq!(r.guest_to_report(&id, &mut budget), Some(status.clone()));
        // No room left in this report: it waits.
        let mut none = 10;
        assert_eq!(r.guest_to_report(&id, &mut none), None);
        assert_eq!(none, 10);
        // Accepted: not sent again while it does not change.
        r.guest_reported(vec![(id.clone(), status.clone())]);
        assert_eq!(r.guest_to_report(&id, &mut budget), None);
        r.lock().guest_new.insert(id.clone(), GuestStatus { updated_at_ms: 5, ..status.clone() });
        assert_eq!(r.guest_to_report(&id, &mut budget), None, "only the time changed");
        let changed = GuestStatus { kernel: Some("6.1".into()), ..status };
        r.lock().guest_new.insert(id.clone(), changed.clone());
        assert_eq!(r.guest_to_report(&id, &mut budget), Some(changed));
    }
}
