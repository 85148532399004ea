//! The reconciler: the agent's main loop and the supervisor of its
//! components. On every desired-state change (and every interval) it
//! sets up the networks, compares each desired instance with what runs
//! and starts at most one operation per instance (start, stop, reboot,
//! delete, either side of a live migration) in its own task, so a slow
//! guest shutdown never holds up the others; then it asks storage and the
//! balancers for their state, reports, and ships consoles.
//!
//! It owns the components and starts their loops: the instance manager
//! (`instances`: each instance's record), `metadata`, `storage`,
//! `network`, `balancers`, the `lease` (heartbeat and fencing), `metrics`
//! and `checks`. They depend on the host (`host`) and the instance
//! manager, never on the reconciler, which alone knows them all.

use crate::balancers::LoadBalancing;
use crate::checks::CheckRunner;
use crate::config::AgentConfig;
use crate::console;
use crate::host::Host;
use crate::instances::applied::{read_applied, write_applied, Applied};
use crate::instances::{Instances, OpKind, GUEST_BYTES_PER_REPORT};
use crate::lease::Lease;
use crate::metadata::Metadata;
use crate::network::Networks;
use crate::pacing::Pacing;
use crate::report::{Entry, ReportLedger};
use crate::runs::RunContext;
use crate::storage::Storage;
use nubo_api::agent::{
    ActualInstance, ActualPower, DesiredInstance, DesiredState, HostReport, MigrationRole, PowerState, RegisterHost,
};
use nubo_api::ids::{HostId, InstanceId, VolumeId};
use nubo_api::views::GuestStatus;
use nubo_client::Client;
use nubo_hypervisor::{Accel, Boot, Hypervisor, PortForward, VmConfig, VmStatus};
use nubo_image::ImageCache;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// How long after QEMU starts the agent watches for boot-complete.
const BOOT_WATCH: Duration = Duration::from_secs(600);

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

pub struct Reconciler {
    host: Arc<Host>,
    /// Each instance's record (operations, events, runs, guest channel).
    instances: Arc<Instances>,
    /// Each instance's metadata service.
    metadata: Arc<Metadata>,
    /// Volumes, snapshots, attachments and instance snapshots.
    storage: Arc<Storage>,
    /// The host's load balancers.
    balancers: Arc<LoadBalancing>,
    /// Private networks' bridges, taps, DHCP and firewall.
    networks: Networks,
    /// The host's lease with the control plane: renewed by the heartbeat;
    /// while it is out, VMs are stopped and none start.
    lease: Arc<Lease>,
    /// CD-ROM drives' discs and the `blank` image's base.
    cdroms: Arc<crate::cdrom::Cdroms>,
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
        let instances = Arc::new(Instances::new(config.instances_root()));
        let metadata = Arc::new(Metadata::new(config.metadata_relay.is_some()));
        let networks = Networks::new(config.network.clone(), &config.data_dir, metadata.lookup(instances.clone()));
        let lease = Arc::new(Lease::new(config.shared_storage.is_some()));
        let host = Arc::new(Host { id: host, client, hypervisor, images, accel, config });
        Self {
            storage: Arc::new(Storage::new(host.clone(), instances.clone())),
            balancers: Arc::new(LoadBalancing::new(host.clone(), instances.clone())),
            cdroms: Arc::new(crate::cdrom::Cdroms::new(host.clone())),
            host,
            instances,
            metadata,
            networks,
            lease,
        }
    }

    /// The main loop: reconcile on every desired-state change and on a
    /// timer, then report and ship consoles.
    pub async fn run(
        self,
        mut rx: tokio::sync::watch::Receiver<Option<DesiredState>>,
        registration: RegisterHost,
    ) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let (host, instances) = (&this.host, &this.instances);
        let metrics = crate::metrics::metrics_loop(host.clone(), instances.clone(), host.config.metrics_interval);
        let metrics = tokio::spawn(metrics.in_current_span());
        let checks = tokio::spawn(Arc::new(CheckRunner::new(host.clone(), instances.clone())).run().in_current_span());
        let lb_load = tokio::spawn(this.balancers.clone().load_loop().in_current_span());
        let heartbeat =
            tokio::spawn(this.lease.clone().heartbeat_loop(host.clone(), registration.clone()).in_current_span());
        let watchdog = tokio::spawn(this.lease.clone().fence_loop(host.clone(), instances.clone()).in_current_span());
        // Console sessions are joined as soon as they appear, not after a
        // whole reconcile pass.
        let consoles = tokio::spawn(crate::console_relay::run(host.clone(), rx.clone()).in_current_span());
        // Backups (`backups`): real hosts only (a simulated one has no disks to copy).
        let backups = (host.hypervisor.name() == "qemu")
            .then(|| tokio::spawn(crate::backups::run(host.clone(), instances.clone()).in_current_span()));
        // They end with the reconciler (the loop below only ends when the
        // desired-state watcher is gone).
        let _guards = (
            AbortOnDrop(metrics),
            AbortOnDrop(checks),
            AbortOnDrop(lb_load),
            AbortOnDrop(heartbeat),
            AbortOnDrop(watchdog),
            AbortOnDrop(consoles),
            backups.map(AbortOnDrop),
        );
        let mut seen: std::collections::HashSet<InstanceId> = Default::default();
        // Which instances each pass visits, and what the control plane took.
        let mut pacing = Pacing::default();
        let mut ledger = ReportLedger::default();
        // The instances whose VM runs, as the passes last saw them.
        let mut running: HashSet<InstanceId> = HashSet::new();
        let mut desired: Option<Arc<DesiredState>> = None;
        // `changed()` below marks the new value seen: it says so here.
        let mut woken = false;
        loop {
            // Copied only when it changed: a host's can list thousands.
            let changed = desired.is_none() || std::mem::take(&mut woken) || rx.has_changed().unwrap_or(false);
            if changed {
                desired = rx.borrow_and_update().clone().map(Arc::new);
                if let Some(d) = &desired {
                    this.instances.set_desired(d.clone());
                    for i in &d.instances {
                        if seen.insert(i.id.clone()) {
                            this.instances.event(&i.id, "agent_seen", "");
                        }
                    }
                }
            }
            if let Some(d) = desired.clone() {
                let now = Instant::now();
                let full = pacing.full_pass_due(changed, now);
                this.networks.reconcile(&d).await;
                let wants: Vec<&DesiredInstance> = if full {
                    d.instances.iter().collect()
                } else {
                    pacing.quick_pass(&d.instances, &this.instances.active(), now)
                };
                if full {
                    running.clear();
                    // Finished runs the server no longer lists (it has their end).
                    this.instances.forget_runs_done(&d);
                }
                let actual = this.reconcile(&wants, &mut running).await;
                let entries: Vec<Entry> = actual.into_iter().map(Entry::new).collect();
                for e in &entries {
                    pacing.observed(&e.actual.id, &e.json, now);
                }
                if full {
                    let ids: HashSet<&InstanceId> = d.instances.iter().map(|i| &i.id).collect();
                    pacing.full_pass_done(&ids, now);
                    ledger.retain(&ids);
                }
                let volumes = this.storage.reconcile_volumes(&d, &running);
                let snapshots = this.storage.reconcile_snapshots(&d);
                let balancers = this.balancers.reconcile(&d);
                let failures = this.lease.failures();
                let full_report = full && ledger.full_due(failures, now);
                let mut chunks = ledger.plan(entries, volumes, snapshots, balancers, full_report).into_iter();
                while let Some(chunk) = chunks.next() {
                    let guests: Vec<(InstanceId, GuestStatus)> =
                        chunk.report.instances.iter().filter_map(|a| Some((a.id.clone(), a.guest.clone()?))).collect();
                    if this.report(&chunk.report, &registration).await {
                        ledger.took(chunk, failures, Instant::now());
                        this.instances.guest_reported(guests);
                        continue;
                    }
                    // Not delivered: its events and those of the chunks
                    // not sent go first in the next report, a full one.
                    ledger.failed();
                    for a in std::iter::once(chunk).chain(chunks.by_ref()).flat_map(|c| c.report.instances) {
                        if !a.events.is_empty() {
                            this.instances.put_back_events(a.id, a.events);
                        }
                    }
                }
                this.ship_consoles(&wants).await;
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    woken = true;
                }
                _ = tokio::time::sleep(this.host.config.interval) => {}
            }
        }
    }

    /// Sends a report; false when it did not arrive.
    async fn report(&self, report: &HostReport, registration: &RegisterHost) -> bool {
        if let Err(e) = self.host.client.report(&self.host.id, report).await {
            tracing::warn!(error = %e, "report failed; events kept for the next one");
            if e.status() == Some(404) {
                // The control plane forgot this host (new database): join again.
                let _ = self.host.client.register(registration).await;
            }
            return false;
        }
        true
    }

    async fn ship_consoles(&self, wants: &[&DesiredInstance]) {
        for i in wants {
            if i.power == PowerState::Deleted {
                continue;
            }
            let dir = self.host.dir(&i.id);
            // Restarts the console pump of a VM this agent did not start
            // (it was restarted) and keeps the log within its cap.
            self.host.hypervisor.watch_console(&dir);
            let log = dir.console_log();
            if !log.exists() {
                continue;
            }
            let offset = self.instances.console_offset(&i.id);
            match console::ship(&self.host.client, &self.host.id, &i.id, &log, offset).await {
                Ok(next) => {
                    self.instances.set_console_offset(&i.id, Some(next));
                }
                Err(e) => tracing::debug!(instance = %i.id, error = %e, "console shipping failed"),
            }
        }
    }

    /// One pass over `wants` (all of the desired set, or those `pacing`
    /// picked); returns the actual state of each, and notes in `running`
    /// which of them run.
    async fn reconcile(
        self: &Arc<Self>,
        wants: &[&DesiredInstance],
        running: &mut HashSet<InstanceId>,
    ) -> Vec<ActualInstance> {
        self.instances.forget_finished_ops();
        let mut out = Vec::with_capacity(wants.len());
        let mut guest_budget = GUEST_BYTES_PER_REPORT;
        for &want in wants {
            let (power, pid) = self.reconcile_one(want).await;
            // The target copy of a live migration is not the instance yet:
            // nothing of it is reported, attached or served until it runs
            // here (a removed failed copy is reported, as deleted).
            let target_copy = want.migration.as_ref().is_some_and(|m| m.role == MigrationRole::Target);
            if target_copy && want.power != PowerState::Deleted {
                continue;
            }
            if self.instances.migrated_out(&want.id) {
                continue;
            }
            // A reboot or start in flight reports no pid: leave the disks alone then.
            let vm_pid = match (power, pid) {
                (ActualPower::Running, Some(pid)) => Some(pid),
                _ => None,
            };
            if vm_pid.is_some() {
                running.insert(want.id.clone());
            } else {
                running.remove(&want.id);
            }
            let busy = power == ActualPower::Running && pid.is_none() || power == ActualPower::Starting;
            let volumes = match (want.power, vm_pid) {
                (PowerState::Deleted, _) => Vec::new(),
                (_, Some(pid)) => self.storage.reconcile_attachments(want, Some(pid)),
                _ if busy => self.storage.attachments_as_known(want),
                _ => self.storage.reconcile_attachments(want, None),
            };
            let captures = match (want.power, power) {
                (PowerState::Deleted, _) => Vec::new(),
                (_, ActualPower::Running) if vm_pid.is_some() => self.storage.reconcile_captures(want, true),
                (_, ActualPower::Stopped) => self.storage.reconcile_captures(want, false),
                _ => Vec::new(),
            };
            match (want.power, power) {
                (PowerState::Deleted, _) | (_, ActualPower::Deleted) => self.drop_instance_services(&want.id),
                (PowerState::Running, ActualPower::Running) => {
                    self.ensure_imds(want);
                    self.ensure_runs(want);
                    self.instances.poll_guest(&want.id);
                    if vm_pid.is_some() {
                        self.cdroms.reconcile(want);
                    }
                }
                _ => self.ensure_imds(want),
            }
            let guest = self.instances.guest_to_report(&want.id, &mut guest_budget);
            let error = match power {
                ActualPower::Error => self.instances.error(&want.id).map(|e| e.1),
                _ => None,
            };
            let events = self.instances.take_events(&want.id);
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
        out
    }

    async fn reconcile_one(self: &Arc<Self>, want: &DesiredInstance) -> (ActualPower, Option<u32>) {
        if let Some(kind) = self.instances.op(&want.id) {
            return match kind {
                OpKind::Start => (ActualPower::Starting, None),
                OpKind::Reboot | OpKind::MigrateOut | OpKind::SetVcpus => (ActualPower::Running, None),
                OpKind::Incoming => (ActualPower::Starting, None),
                OpKind::Stop | OpKind::Delete => (ActualPower::Stopping, None),
            };
        }
        let coming_back = want.migration.as_ref().is_some_and(|m| m.role == MigrationRole::Target);
        if coming_back {
            self.instances.coming_back(&want.id);
        } else if self.instances.migrated_out(&want.id) {
            // Sent away; the desired state has not caught up yet.
            return (ActualPower::Deleted, None);
        }
        let dir = self.host.dir(&want.id);
        let status = self.host.hypervisor.status(&dir).await;
        let applied = read_applied(&dir);
        let failed_seq = self.instances.error(&want.id).map(|e| e.0);
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
        } else if self.instances.take_incoming(&want.id) {
            // A migration into this host ended: the disks are ours now.
            let (hv, dir) = (self.host.hypervisor.clone(), dir.clone());
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
                if want.rebuild_seq > applied.rebuild_seq && want.start_seq > applied.start_seq {
                    // A rebuild of a running instance: stop it; the start
                    // the control plane asked with it makes the new disk.
                    self.instances.event(&want.id, "rebuild_stopping", "stopping for a new root disk");
                    self.spawn(want, OpKind::Stop);
                    return (ActualPower::Stopping, Some(pid));
                }
                if want.reboot_count > applied.reboot_count && self.lease.may_start() {
                    self.spawn(want, OpKind::Reboot);
                } else if crate::vcpus::pending(want, &applied) {
                    // An online resize: the control plane claimed the
                    // vCPUs on this host already.
                    self.spawn(want, OpKind::SetVcpus);
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
                        self.instances.event(&want.id, "exited_unexpectedly", "the QEMU process is gone");
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
                    OpKind::SetVcpus => {
                        crate::vcpus::apply(&this.host, &this.instances, &want).await;
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "operation failed");
                    this.instances.event(&want.id, "error", e.to_string());
                    this.instances.set_error(&want.id, want.start_seq, e.to_string());
                }
            }
            .instrument(span),
        );
        self.instances.set_op(&id, kind, handle);
    }

    /// Starts (or refreshes) the instance's metadata service.
    fn ensure_imds(&self, want: &DesiredInstance) {
        self.metadata.ensure(want, &self.host.dir(&want.id));
    }

    /// The instance's VM is gone: so are its metadata service, its guest
    /// channel and what storage knew of its disks.
    fn drop_instance_services(&self, id: &InstanceId) {
        crate::instances::applied::forget_applied(&self.host.dir(id));
        self.metadata.remove(id);
        self.instances.drop_guest(id);
        self.storage.forget_disks(id);
        self.cdroms.forget(id);
    }

    /// Starts the runs that are not under way yet (once the VM runs).
    fn ensure_runs(&self, want: &DesiredInstance) {
        self.instances.ensure_runs(want, |run| {
            let span = tracing::info_span!("run", instance = %want.id, run = %run.id);
            let ctx = Arc::new(RunContext { host: self.host.clone(), instances: self.instances.clone() });
            tokio::spawn(crate::runs::execute(ctx, want.id.clone(), run.clone()).instrument(span))
        });
    }

    /// A builtin image, built here first if it is not cached yet.
    async fn builtin_image(&self, name: &str) -> anyhow::Result<nubo_image::BuiltImage> {
        let images = self.host.images.clone();
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
            // An empty root disk (an OS is installed on it from a CD),
            // booted by the firmware.
            None if want.image == nubo_api::agent::BLANK_IMAGE => {
                Ok((Boot::Firmware, self.cdroms.blank_base().await?, Some("raw".into()), "blank".into()))
            }
            None => {
                let image = self.builtin_image(&want.image).await?;
                Ok((direct(&image), image.disk.clone(), None, image.sha256))
            }
            Some(src) => {
                let disk = crate::blobs::ensure(&self.host.client, &self.host.blob_root(), src)
                    .await
                    .map_err(anyhow::Error::msg)?;
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
        let dir = self.host.dir(&want.id);
        let (boot, base_disk, base_format, sha256) = self.boot_source(want).await?;
        let cdrom = self.cdroms.for_start(want).await?;
        self.instances.event(&want.id, "image_ready", sha256);
        // A rebuild (or revert) not made yet: the old root disk goes, and
        // the fresh one below comes from the image. A migration's target
        // keeps the disk it receives.
        let applied = read_applied(&dir);
        // A restore from a backup not written yet supersedes a pending
        // rebuild: the root disk comes from the backup (`restores`).
        let restore = want.restore.as_ref().filter(|r| !incoming && crate::restores::pending(&dir.disk(), r));
        if restore.is_none() && !incoming && want.rebuild_seq > applied.rebuild_seq {
            match std::fs::remove_file(dir.disk()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove the old root disk {} for a rebuild: {e}", dir.disk().display()),
            }
            self.instances.event(
                &want.id,
                "root_disk_removed",
                format!("rebuild {} from {}", want.rebuild_seq, want.image),
            );
        }
        if let Some(r) = restore {
            self.instances.event(&want.id, "restoring", format!("root disk from {}", r.backup_id));
            let this = self.clone();
            let id = want.id.clone();
            let progress: crate::restores::Progress =
                Arc::new(move |pct: u64| this.instances.event(&id, "restoring", format!("restoring root disk {pct}%")));
            crate::restores::restore(r, &dir.disk(), progress).await?;
            self.instances.event(&want.id, "restored", format!("root disk written from {}", r.backup_id));
        }
        let disks = self.storage.cold_disks(want);
        let vni_of: HashMap<_, _> = self
            .instances
            .with_desired(|d| d.iter().flat_map(|d| d.networks.iter().map(|n| (n.id.clone(), n.vni))).collect());
        let taps = self.networks.taps_for(want, &vni_of).await?;
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
            accel: self.host.accel,
            hotplug_slots: nubo_api::MAX_VOLUMES_PER_INSTANCE,
            metadata_relay: self.host.config.metadata_relay.as_ref().filter(|_| !bridged).map(|relay| {
                let mut argv = relay.clone();
                argv.push(dir.imds_socket().display().to_string());
                argv
            }),
            mac: Some(nubo_hypervisor::mac_for(want.id.as_str())),
            base_format,
            disks,
            taps,
            incoming,
            cdrom,
            hardware: vm_hardware(&want.hardware),
            max_vcpus: Some(crate::vcpus::max_vcpus(want.vcpus)),
        };
        // A backup of the stopped instance may hold its disks for a moment.
        crate::backups::wait_for_disks(&want.id).await;
        self.host.hypervisor.prepare_disk(&dir, &cfg).await?;
        if incoming {
            // A migration brings disks that already hold every restore
            // made where they came from: applied here too, never redone.
            if let Some(r) = &want.restore {
                crate::restores::mark_applied(&dir.disk(), r.seq)?;
            }
            let restored: Vec<(VolumeId, i64)> = self.instances.with_desired(|d| {
                d.iter()
                    .flat_map(|d| d.volumes.iter())
                    .filter(|v| want.volumes.iter().any(|a| a.volume_id == v.id))
                    .filter_map(|v| Some((v.id.clone(), v.from_backup.as_ref()?.seq)))
                    .collect()
            });
            for (v, seq) in restored {
                let path = self.storage.volume_path(&v);
                if path.is_file() {
                    crate::restores::mark_applied(&path, seq)?;
                }
            }
        }
        self.ensure_imds(want);
        let seed = nubo_image::seed::SeedData {
            instance_id: want.id.to_string(),
            hostname: want.name.clone(),
            user_data: want.user_data.clone(),
            public_keys: want.public_keys.iter().map(|k| k.public_key.clone()).collect(),
        };
        let seed_path = dir.seed();
        tokio::task::spawn_blocking(move || nubo_image::seed::write_nocloud_seed(&seed_path, &seed)).await??;
        self.instances.event(&want.id, "disk_ready", format!("{} GiB overlay", want.disk_gib));
        let log_start = std::fs::metadata(dir.console_log()).map(|m| m.len()).unwrap_or(0);
        // Checked again: preparing the disk may have taken a while.
        self.lease_allows_start()?;
        let pid = self.host.hypervisor.start(&dir, &cfg).await?;
        if let Some(g) = &self.host.config.guard {
            g.vm_started(want.id.as_str());
        }
        self.storage.note_started(&want.id, pid, &cfg.disks);
        self.cdroms.started(want);
        write_applied(
            &dir,
            &Applied {
                start_seq: want.start_seq,
                reboot_count: want.reboot_count,
                stopped_on_purpose: false,
                rebuild_seq: want.rebuild_seq.max(applied.rebuild_seq),
                vcpus: want.vcpus,
                vcpus_refused: 0,
                booted_vcpus: want.vcpus,
            },
        );
        if incoming {
            tracing::info!(pid, "migration target started");
            return Ok(());
        }
        self.instances.event(&want.id, "qemu_started", format!("pid {pid}"));
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
                let path = self.storage.volume_path(&v.volume_id);
                if !path.is_file() {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    self.host.hypervisor.create_volume(&path, v.size_gib << 30).await?;
                }
            }
            self.boot(want, true).await?;
            let host = self.host.config.migration_address.clone();
            let (nbd_port, migrate_port) = (free_port()?, free_port()?);
            let mut nodes = vec!["root".to_string()];
            nodes.extend(want.volumes.iter().map(|v| v.volume_id.to_string()));
            self.host
                .hypervisor
                .migration_listen(&self.host.dir(&want.id), &host, nbd_port, migrate_port, &nodes)
                .await?;
            self.instances.mark_incoming(&want.id);
            let target = nubo_api::agent::MigrationTarget {
                nbd_host: host.clone(),
                nbd_port,
                migrate_uri: format!("tcp:{host}:{migrate_port}"),
            };
            self.host.client.migration_ready(&m.id, &target).await?;
            tracing::info!(migration = %m.id, nbd_port, migrate_port, "migration target ready");
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = &result {
            let _ = self.host.hypervisor.kill(&self.host.dir(&want.id)).await;
            let done = nubo_api::agent::MigrationDone::failed(format!("the target could not prepare: {e:#}"));
            let _ = self.host.client.migration_done(&m.id, &done).await;
        }
        result
    }

    /// The source side: mirror the disks and send the state, report how it
    /// went, and on success remove this host's copy.
    async fn migrate_out(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let Some((m, target)) = want.migration.as_ref().and_then(|m| Some((m.clone(), m.target.clone()?))) else {
            return Ok(());
        };
        let dir = self.host.dir(&want.id);
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
        let window = match &self.host.config.guard {
            Some(g) => migration_window(g, want.id.as_str(), &target),
            None => Ok(Vec::new()),
        };
        let result = match (crate::vcpus::migration_blocker(&read_applied(&dir)), window) {
            (Some(why), _) => Err(nubo_hypervisor::HypervisorError::Migration(why)),
            (None, Ok(_window)) => {
                self.host
                    .hypervisor
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
            (None, Err(e)) => Err(nubo_hypervisor::HypervisorError::Migration(format!(
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
            match self.host.client.migration_done(&m.id, &done).await {
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
        self.instances.mark_migrated_out(&want.id);
        self.drop_instance_services(&want.id);
        self.host.hypervisor.destroy(&dir).await?;
        self.networks.remove_taps(&want.id).await;
        for v in &want.volumes {
            let _ = std::fs::remove_file(self.storage.volume_path(&v.volume_id));
        }
        Ok(())
    }

    /// Records `boot_complete` when the console shows the marker.
    fn watch_boot(self: &Arc<Self>, id: &InstanceId, log: PathBuf, from: u64) {
        let instances = self.instances.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Some(at) = console::wait_for_marker(&log, from, nubo_api::BOOT_COMPLETE_MARKER, BOOT_WATCH).await {
                instances.event_at(&id, crate::clock::ms_at(at), "boot_complete", String::new());
            }
        });
    }

    async fn stop(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let dir = self.host.dir(&want.id);
        let mut applied = read_applied(&dir);
        applied.stopped_on_purpose = true;
        write_applied(&dir, &applied);
        self.host.hypervisor.shutdown(&dir, self.host.config.stop_grace).await?;
        self.instances.event(&want.id, "stopped", "");
        Ok(())
    }

    async fn reboot(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let dir = self.host.dir(&want.id);
        let log_start = std::fs::metadata(dir.console_log()).map(|m| m.len()).unwrap_or(0);
        self.host.hypervisor.reboot(&dir).await?;
        let mut applied = read_applied(&dir);
        applied.reboot_count = want.reboot_count;
        write_applied(&dir, &applied);
        self.instances.event(&want.id, "rebooted", "");
        self.watch_boot(&want.id, dir.console_log(), log_start);
        Ok(())
    }

    async fn delete(self: &Arc<Self>, want: &DesiredInstance) -> anyhow::Result<()> {
        let dir = self.host.dir(&want.id);
        // Ship the last of the console before the log goes.
        let offset = self.instances.console_offset(&want.id);
        let _ = console::ship(&self.host.client, &self.host.id, &want.id, &dir.console_log(), offset).await;
        self.drop_instance_services(&want.id);
        self.host.hypervisor.destroy(&dir).await?;
        self.networks.remove_taps(&want.id).await;
        self.instances.set_console_offset(&want.id, None);
        self.instances.event(&want.id, "deleted", "");
        Ok(())
    }
}

/// How long a live migration may take, disks included.
const MIGRATION_LIMIT: Duration = Duration::from_secs(900);

/// The VM hardware the control plane asks for, in the hypervisor's terms.
fn vm_hardware(hw: &nubo_api::hardware::Hardware) -> nubo_hypervisor::VmHardware {
    nubo_hypervisor::VmHardware {
        uefi: hw.firmware == nubo_api::hardware::Firmware::Uefi,
        secure_boot: hw.secure_boot,
        tpm: hw.tpm,
        display: hw.display,
    }
}

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
