//! The agent protocol: how a compute node registers, learns the desired
//! state of its instances (level-triggered: the whole set, every time) and
//! reports what is actually running. A lost message heals on the next pass.

use crate::ids::{HostId, ImageId, InstanceId, SnapshotId, VolumeId};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/agent/register`: a host announces itself and its capacity.
/// Re-registering with the same id updates capacity and is idempotent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    pub host_id: HostId,
    pub name: String,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// The host's underlay address when it runs bridged private networks
    /// (VXLAN peers reach it there); none: user-mode networking only.
    #[serde(default)]
    pub underlay: Option<String>,
    /// Where instance disks live when other hosts mount the same storage
    /// (the path is its name): a down host's instances restart on those.
    #[serde(default)]
    pub shared_storage: Option<String>,
    /// The external networks' interface names this host maps
    /// (`--external NAME=IFACE`): instances on those networks, or with
    /// floating IPs from them, can run here.
    #[serde(default)]
    pub externals: Vec<String>,
}

crate::state_enum! {
    /// What the control plane wants an instance on this host to be: the
    /// instance's desired state, as the database stores it (the views show
    /// `deleted` as `terminated`).
    pub enum PowerState("desired") {
        Running = "running",
        Stopped = "stopped",
        /// Remove the VM and its files.
        Deleted = "deleted",
    }
}

impl PowerState {
    /// Whether a user's request may record `to` over an instance wanted
    /// `self`. Nothing comes back from `deleted` (terminated); otherwise
    /// each wish may follow each, the same one too: a stop repeated while
    /// the VM shuts down, a start retried after an error, a reboot (the
    /// request itself, not this table, says it needs a running instance).
    pub fn can_become(self, to: PowerState) -> bool {
        use PowerState as P;
        match (self, to) {
            (P::Deleted, _) => false,
            (P::Running | P::Stopped, P::Running | P::Stopped | P::Deleted) => true,
        }
    }

    /// The desired state as the views show it.
    pub fn shown(self) -> crate::views::DesiredInstanceState {
        use crate::views::DesiredInstanceState as D;
        match self {
            PowerState::Running => D::Running,
            PowerState::Stopped => D::Stopped,
            PowerState::Deleted => D::Terminated,
        }
    }
}

#[cfg(test)]
mod power_state_tests {
    use super::PowerState::{self, Deleted, Running, Stopped};

    #[test]
    fn only_a_terminated_instance_can_be_asked_nothing_more() {
        let legal = [
            (Running, Running),
            (Running, Stopped),
            (Running, Deleted),
            (Stopped, Running),
            (Stopped, Stopped),
            (Stopped, Deleted),
        ];
        for from in PowerState::ALL {
            for to in PowerState::ALL {
                assert_eq!(from.can_become(*to), legal.contains(&(*from, *to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn deleted_is_shown_as_terminated() {
        let shown: Vec<&str> = PowerState::ALL.iter().map(|p| p.shown().as_str()).collect();
        assert_eq!(shown, ["running", "stopped", "terminated"]);
        assert_eq!(serde_json::to_value(Deleted).unwrap_or_default(), serde_json::json!("deleted"));
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortMapping {
    pub guest_port: u16,
    pub host_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredInstance {
    pub id: InstanceId,
    pub name: String,
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub user_data: Option<String>,
    pub ports: Vec<PortMapping>,
    pub power: PowerState,
    /// Bumped at creation and by each start request. The agent starts the
    /// VM only when the count it last applied is lower, so a VM that died
    /// on its own is reported stopped instead of being silently restarted.
    pub start_seq: i64,
    /// Bumped by each reboot request; the agent resets the VM when the
    /// count it last applied is lower.
    pub reboot_count: i64,
    /// OpenSSH public keys for root (seed `public-keys` and metadata).
    #[serde(default)]
    pub public_keys: Vec<NamedKey>,
    /// Metadata service: true when IMDSv2 session tokens are required.
    #[serde(default)]
    pub imds_tokens_required: bool,
    /// The host's availability zone, for the metadata service.
    #[serde(default)]
    pub availability_zone: String,
    /// Runs not finished yet, oldest first.
    #[serde(default)]
    pub runs: Vec<DesiredRun>,
    /// Where the image comes from when it is a registry image (imported, or
    /// an instance snapshot); `None`: a builtin the agent builds by name.
    #[serde(default)]
    pub image_source: Option<ImageSource>,
    /// Volumes that should be attached (hot-plugged while it runs, plugged
    /// in at start otherwise). A volume no longer listed is unplugged.
    #[serde(default)]
    pub volumes: Vec<DesiredAttachment>,
    /// Images to make of the root disk (instance snapshots) and upload.
    #[serde(default)]
    pub captures: Vec<DesiredCapture>,
    /// The instance type the metadata service reports (`t3.micro`, or
    /// `custom-<vcpus>-<mib>` for an instance launched by size).
    #[serde(default)]
    pub instance_type: Option<String>,
    /// NICs on private networks, in order (the guest's eth0, eth1, ...).
    /// None: one NIC on the host's user-mode network.
    #[serde(default)]
    pub nics: Vec<DesiredNic>,
    /// A live migration this host takes part in.
    #[serde(default)]
    pub migration: Option<DesiredMigration>,
    /// A CD-ROM drive (an instance launched with `--cdrom`); none: no drive.
    #[serde(default)]
    pub cdrom: Option<DesiredCdrom>,
    /// Bumped by each rebuild (and instance revert): the agent replaces
    /// the root disk with a fresh one from `image` before the next boot
    /// when the count it last applied is lower (so it happens once).
    #[serde(default)]
    pub rebuild_seq: i64,
    /// Firmware, Secure Boot, TPM and display (image's and instance's merged).
    #[serde(default)]
    pub hardware: crate::hardware::Hardware,
    /// Write the root disk from a backup before the next boot (an instance
    /// restored from a backup, or restored in place), once per `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::backup::DesiredRestore>,
}

/// An instance's CD-ROM drive: the disc wanted in it (changed in place
/// while the VM runs) and whether it boots before the root disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredCdrom {
    /// The ISO image's file; none: the drive is empty.
    pub media: Option<ImageSource>,
    /// Boot from the CD first (`cdrom,disk`), else from the disk first.
    pub boot_first: bool,
}

/// The builtin image whose root disk starts empty (an OS is installed on
/// it from a CD): no file, no kernel, booted by firmware.
pub const BLANK_IMAGE: &str = "blank";

/// This host's part in a live migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredMigration {
    pub id: crate::ids::MigrationId,
    pub role: MigrationRole,
    /// Where the target listens, once it is ready (for the source).
    pub target: Option<MigrationTarget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigrationRole {
    /// Runs the instance now; mirrors its disks and sends its state.
    Source,
    /// Starts an empty copy that waits for the disks and the state.
    Target,
}

/// `POST /api/v1/agent/migrations/{id}/ready` (target), and what the
/// source is then told: where to send disks (NBD) and state (QEMU migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationTarget {
    /// Address of the target's NBD server (one export per disk node).
    pub nbd_host: String,
    pub nbd_port: u16,
    /// QEMU migration URI, `tcp:HOST:PORT`.
    pub migrate_uri: String,
}

/// `POST /api/v1/agent/migrations/{id}/done` (source): how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationDone {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    /// The pause the guest saw (QEMU's measured downtime).
    #[serde(default)]
    pub downtime_ms: Option<u64>,
    /// From the start of the disk copy to the target running.
    #[serde(default)]
    pub total_ms: Option<u64>,
    /// Bytes of disk copied and of memory sent.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    #[serde(default)]
    pub ram_bytes: Option<u64>,
}

impl MigrationDone {
    /// A migration that did not happen, and why.
    pub fn failed(error: String) -> Self {
        MigrationDone {
            ok: false,
            error: Some(error),
            downtime_ms: None,
            total_ms: None,
            disk_bytes: None,
            ram_bytes: None,
        }
    }
}

/// One NIC of an instance on a private network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredNic {
    pub network_id: crate::ids::NetworkId,
    pub mac: String,
    pub address: String,
}

/// A private network as one host runs it: its bridge, its VXLAN to the
/// other hosts with ports on it, DHCP and metadata for the local ports,
/// and the firewall of each local port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredNetwork {
    pub id: crate::ids::NetworkId,
    pub vni: u32,
    pub cidr: String,
    pub gateway: String,
    /// Underlay addresses of the other hosts with ports on the network.
    pub peers: Vec<String>,
    /// This host's ports on the network.
    pub ports: Vec<DesiredPort>,
    /// Set for an external network: the host's interface it bridges to
    /// instead of VXLAN (the network has no router then: its gateway is
    /// the LAN's).
    #[serde(default)]
    pub external: Option<ExternalLink>,
    /// Floating IPs of this host's ports on this (private) network.
    #[serde(default)]
    pub floating: Vec<FloatingNat>,
    /// The network's DNS domain (`<network-name>.internal`); empty from a
    /// control plane that sends none: the host then uses `<id>.internal`.
    #[serde(default)]
    pub domain: String,
    /// The names the network's DNS answers: every live instance on the
    /// network (on any host) whose name is a DNS label.
    #[serde(default)]
    pub dns: Vec<DnsRecord>,
}

/// Where an external network is on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExternalLink {
    /// The operator's name for it, mapped by each host (`--external NAME=IFACE`).
    pub interface: String,
    pub vlan: Option<u16>,
    /// The address each host's DHCP for the network answers from; it
    /// never leaves the host (an isolated bridge port).
    pub service_address: String,
}

/// One floating IP of a port on this host: traffic to `address` on the
/// external network `external` reaches `private` (1:1 NAT), and what
/// `private` opens leaves as `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FloatingNat {
    pub address: String,
    pub private: String,
    pub external: crate::ids::NetworkId,
}

/// One name of a network's DNS: `<name>.<domain>` (and the bare `<name>`)
/// is `address`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DnsRecord {
    /// A DNS label: see [`dns_label`].
    pub name: String,
    pub address: String,
}

/// `name` as a DNS label (lowercased), or None when it is not one: 1 to 63
/// of `a-z`, `0-9` and `-`, not starting or ending with `-` (RFC 1123).
/// Names are written into dnsmasq's files, so nothing else gets through.
pub fn dns_label(name: &str) -> Option<String> {
    let l = name.to_ascii_lowercase();
    let ok = (1..=63).contains(&l.len())
        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-');
    ok.then_some(l)
}

/// An instance's NIC as its host's network plumbing sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredPort {
    pub instance_id: InstanceId,
    pub mac: String,
    pub address: String,
    /// What may come in (stateful: replies to what went out always may).
    /// Rules naming a source group are resolved to its members' addresses.
    pub ingress: Vec<FirewallRule>,
    /// What may go out (stateful), the rules' `sources` being destinations.
    /// DHCP, DNS to the gateway and metadata always may. None (a control
    /// plane that sends no egress rules): everything may go out.
    #[serde(default)]
    pub egress: Option<Vec<FirewallRule>>,
}

/// One allowed flow: inbound (ingress) or outbound (egress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FirewallRule {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// Inclusive port range (tcp and udp; 0-65535 otherwise).
    pub from_port: u16,
    pub to_port: u16,
    /// Source CIDRs (ingress) or destination CIDRs (egress); empty matches nothing.
    pub sources: Vec<String>,
}

/// A registry image's file, fetched from the control plane by content address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageSource {
    pub image_id: ImageId,
    /// SHA-256 of the file; what the agent downloads is checked against it.
    pub sha256: String,
    /// `raw` or `qcow2`, as checked at import (never guessed from the content).
    pub disk_format: String,
    pub size_bytes: u64,
    /// Boot with this builtin image's kernel, initrd and command line; none: firmware boot.
    pub kernel_image: Option<String>,
}

/// A volume to attach to an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredAttachment {
    pub volume_id: VolumeId,
    /// The PCIe root port (`hp<slot>`) it goes on.
    pub slot: u32,
    /// What the guest reads in `/sys/block/*/serial`.
    pub serial: String,
    /// The size the guest should see, in GiB.
    pub size_gib: u64,
}

/// An instance snapshot to take: copy the root disk at a point in time
/// and upload it as the file of image `image_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredCapture {
    pub image_id: ImageId,
}

/// A volume on this host's storage pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredVolume {
    pub id: VolumeId,
    /// Its size; a larger value than the file has is an extend.
    pub size_gib: u64,
    /// False: delete the file.
    pub present: bool,
    /// Fill a new volume with this snapshot's content.
    pub from_snapshot: Option<SnapshotId>,
    /// Replace the volume's content with a snapshot's (a revert), once.
    /// Left out when there is none, so a volume never reverted reads as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<DesiredRevert>,
    /// Fill the volume with a disk of a backup (a new volume restored from
    /// a backup, or a revert to one), once per `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<crate::backup::DesiredRestore>,
}

/// A volume revert: its file becomes a copy of `snapshot`'s, replaced by
/// rename; the agent records `seq` next to the file once done, so a
/// restart neither reverts twice nor leaves half a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredRevert {
    pub snapshot: SnapshotId,
    pub seq: i64,
}

/// A volume snapshot on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredSnapshot {
    pub id: SnapshotId,
    pub volume_id: VolumeId,
    /// False: delete it.
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NamedKey {
    pub name: String,
    pub public_key: String,
}

/// What a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RunAction {
    /// A `/bin/sh` script with the parameters in its environment; its
    /// output goes to a log file in the guest that the agent follows.
    Script { body: String, env: Vec<(String, String)> },
    /// One program with arguments; output captured by the guest agent.
    Exec { command: Vec<String> },
    /// Wait for cloud-init to finish (`cloud-init status --wait`) and report
    /// how it went; the cloud-config itself went in as user-data at launch.
    CloudInit,
}

/// A run the agent should carry out (or is carrying out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredRun {
    pub id: crate::ids::RunId,
    pub action: RunAction,
    pub timeout_secs: u64,
    /// `pending` or `running`.
    pub state: crate::views::RunState,
    /// The guest pid recorded when it started (to re-adopt after an agent restart).
    pub guest_pid: Option<i64>,
    /// Log bytes the server already has.
    pub log_offset: u64,
}

/// `POST /api/v1/agent/runs/{id}`: progress of a run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunProgress {
    pub host_id: HostId,
    /// `running`, `succeeded` or `failed`.
    pub state: crate::views::RunState,
    #[serde(default)]
    pub guest_pid: Option<i64>,
    /// Byte offset of `log` in the run's log (in the guest's bytes).
    #[serde(default)]
    pub log_offset: u64,
    /// Guest log bytes `log` covers (it may differ from `log.len()` after
    /// invalid UTF-8 was replaced).
    #[serde(default)]
    pub log_raw_len: u64,
    #[serde(default)]
    pub log: String,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /api/v1/agent/hosts/{id}/desired?after=N`: the full desired set.
/// `generation` increases with every change; passing it back as `after`
/// makes the call wait (long-poll) until something changes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredState {
    pub generation: u64,
    pub instances: Vec<DesiredInstance>,
    /// Volumes on this host's storage pool (not yet deleted).
    #[serde(default)]
    pub volumes: Vec<DesiredVolume>,
    /// Volume snapshots on this host (not yet deleted).
    #[serde(default)]
    pub snapshots: Vec<DesiredSnapshot>,
    /// Load balancers this host runs, with their backends resolved.
    #[serde(default)]
    pub balancers: Vec<crate::lb::DesiredBalancer>,
    /// Private networks with ports on this host.
    #[serde(default)]
    pub networks: Vec<DesiredNetwork>,
    /// Console sessions users opened on this host's instances: the agent
    /// joins each by opening its two streams (see [`DesiredConsoleSession`]).
    #[serde(default)]
    pub console_sessions: Vec<DesiredConsoleSession>,
    /// This answer's name, to pass back as `view` on the next call: the
    /// server then answers with only the instances changed since (see
    /// [`DesiredDelta`]). None from a server that sends no deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Set when `instances` holds only the instances that changed since
    /// the answer named `base` (new ones included); every other field is
    /// whole. None: `instances` is the host's whole set (a resync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DesiredDelta>,
}

/// What a delta answer of `GET .../desired?view=...` changes in the
/// answer it builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredDelta {
    /// The `view` of the answer this one applies to.
    pub base: String,
    /// Instances no longer in the host's desired state: forget them.
    pub removed_instances: Vec<InstanceId>,
}

impl DesiredState {
    /// Applies `next`, a whole answer or a delta built on this one, and
    /// returns the whole state; a delta built on another answer is an
    /// error (the caller resyncs). Changed instances replace theirs in
    /// place; new ones come after.
    pub fn merge(self, next: DesiredState) -> Result<DesiredState, StaleDelta> {
        let Some(delta) = next.delta.clone() else { return Ok(next) };
        if self.view.as_deref() != Some(delta.base.as_str()) {
            return Err(StaleDelta { base: delta.base });
        }
        let held: std::collections::HashSet<InstanceId> = self.instances.iter().map(|i| i.id.clone()).collect();
        let (replacing, new): (Vec<DesiredInstance>, Vec<DesiredInstance>) =
            next.instances.into_iter().partition(|i| held.contains(&i.id));
        let mut replacing: std::collections::HashMap<InstanceId, DesiredInstance> =
            replacing.into_iter().map(|i| (i.id.clone(), i)).collect();
        let removed: std::collections::HashSet<&InstanceId> = delta.removed_instances.iter().collect();
        let mut instances: Vec<DesiredInstance> = self
            .instances
            .into_iter()
            .filter(|i| !removed.contains(&i.id))
            .map(|i| replacing.remove(&i.id).unwrap_or(i))
            .collect();
        // New instances after the held ones, in the order the server listed them.
        instances.extend(new);
        Ok(DesiredState { instances, delta: None, ..next })
    }
}

/// A delta that does not build on the answer the agent holds.
#[derive(Debug, thiserror::Error)]
#[error("the desired-state delta builds on answer {base}, not on the one held; fetch the whole state again")]
pub struct StaleDelta {
    pub base: String,
}

/// A console session waiting for (or joined by) this host's agent. The
/// agent reads the user's input from
/// `GET /api/v1/agent/hosts/{host}/consoles/{id}/input` (a streamed body)
/// and sends the guest's output as the streamed body of
/// `POST /api/v1/agent/hosts/{host}/consoles/{id}/output`; either ending
/// ends the session. Nothing listens on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredConsoleSession {
    pub id: String,
    pub instance_id: InstanceId,
    pub kind: crate::console::ConsoleKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActualPower {
    /// Disk being prepared, QEMU being started.
    Starting,
    Running,
    Stopping,
    Stopped,
    /// VM and files are gone.
    Deleted,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActualInstance {
    pub id: InstanceId,
    pub power: ActualPower,
    pub pid: Option<u32>,
    pub error: Option<String>,
    /// True when the VM stopped without being asked to (crash, kill, or a
    /// shutdown from inside the guest); the control plane then records the
    /// instance as stopped, as EC2 does.
    #[serde(default)]
    pub exited_unexpectedly: bool,
    /// Events observed since the last report (stage names as in the views).
    #[serde(default)]
    pub events: Vec<crate::views::InstanceEvent>,
    /// What the guest agent reported, when it changed since the last report.
    #[serde(default)]
    pub guest: Option<crate::views::GuestStatus>,
    /// Volumes the VM has or should have; one not listed is fully detached.
    #[serde(default)]
    pub volumes: Vec<ActualAttachment>,
    /// Instance snapshots that could not be taken (a taken one is uploaded).
    #[serde(default)]
    pub captures: Vec<ActualCapture>,
}

/// A volume attachment as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActualAttachment {
    pub volume_id: VolumeId,
    /// `attaching` (wanted, not yet seen by the guest), `attached`, or
    /// `detaching` (plugged in, no longer wanted).
    pub state: crate::views::AttachState,
    /// The guest's name for it and its size as the guest sees it.
    pub guest_device: Option<String>,
    pub guest_size_bytes: Option<u64>,
    /// Why the last attempt to plug, unplug or resize it failed.
    pub error: Option<String>,
}

crate::state_enum! {
    /// An instance snapshot as its host reports it.
    pub enum CaptureState("capture") {
        /// Being taken and uploaded.
        Saving = "saving",
        /// Could not be taken; `error` says why.
        Failed = "failed",
    }
}

/// An instance snapshot the host is working on or failed to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActualCapture {
    pub image_id: ImageId,
    pub state: CaptureState,
    pub error: Option<String>,
}

crate::state_enum! {
    /// A volume file as its host reports it.
    pub enum ActualVolumeState("reported volume") {
        /// Being made.
        Creating = "creating",
        /// There, at the reported size.
        Available = "available",
        /// Gone.
        Deleted = "deleted",
        /// Could not be made (or extended); `error` says why.
        Error = "error",
    }
}

/// A volume file as the host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActualVolume {
    pub id: VolumeId,
    pub state: ActualVolumeState,
    /// The file's size in GiB (rounded down).
    pub size_gib: u64,
    pub error: Option<String>,
    /// The last revert applied to the file (`DesiredRevert::seq`).
    #[serde(default)]
    pub reverted_seq: i64,
}

crate::state_enum! {
    /// A volume snapshot as its host reports it.
    pub enum ActualSnapshotState("reported snapshot") {
        /// Being taken.
        Pending = "pending",
        /// Taken.
        Completed = "completed",
        /// Gone.
        Deleted = "deleted",
        /// Could not be taken; `error` says why.
        Error = "error",
    }
}

/// A volume snapshot as the host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActualSnapshot {
    pub id: SnapshotId,
    pub state: ActualSnapshotState,
    /// `filesystem` or `crash`.
    pub consistency: Option<String>,
    pub error: Option<String>,
}

/// Answer to `POST /api/v1/agent/hosts/{id}/heartbeat` (no body): the
/// host is alive, and its lease is renewed. The heartbeat is a request of
/// its own, apart from the report, so that nothing a guest puts into the
/// report can silence its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAck {
    /// How long the lease lasts, counted by the agent (on its monotonic
    /// clock) from when it sent the heartbeat this answers. An agent that
    /// has not renewed it for this long stops the VMs whose disks other
    /// hosts share; the control plane restarts them elsewhere only after
    /// `restart_after_ms` without a renewal, counted from when it saw the last one.
    pub lease_ms: u64,
    /// When the control plane may restart this host's instances on another
    /// host sharing its storage: lease plus the time the agent has to stop them.
    pub restart_after_ms: u64,
}

/// `POST /api/v1/agent/hosts/{id}/report`: the actual state (the
/// heartbeat is its own request).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    pub instances: Vec<ActualInstance>,
    #[serde(default)]
    pub volumes: Vec<ActualVolume>,
    #[serde(default)]
    pub snapshots: Vec<ActualSnapshot>,
    /// The host's load balancers, each backend's health and counters.
    #[serde(default)]
    pub balancers: Vec<crate::lb::ActualBalancer>,
}

/// `POST /api/v1/agent/instances/{id}/console`: appends console bytes.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleChunk {
    pub host_id: HostId,
    /// Byte offset of `data` in the console log; lets the server drop
    /// duplicates after a retry.
    pub offset: u64,
    /// Bytes of the log this chunk covers (the text may be shorter or
    /// longer after invalid UTF-8 was replaced).
    pub raw_len: u64,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleAck {
    /// The offset the server has up to; the agent continues from here.
    pub next_offset: u64,
}

/// Answer to [`RunProgress`]: the log offset the server has reached; the
/// agent continues from there (so a lost or repeated chunk heals).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunAck {
    pub log_offset: u64,
}

#[cfg(test)]
mod dns_label_tests {
    use super::dns_label;

    #[test]
    fn only_dns_labels_get_through_lowercased() {
        assert_eq!(dns_label("Web-1").as_deref(), Some("web-1"));
        assert_eq!(dns_label("a").as_deref(), Some("a"));
        assert_eq!(dns_label(&"x".repeat(63)).as_deref(), Some("x".repeat(63).as_str()));
        for bad in ["", "web_1", "web.1", "-web", "web-", "we b", "a\nserver=1.2.3.4", "ünï", &"x".repeat(64)] {
            assert_eq!(dns_label(bad), None, "{bad:?}");
        }
    }
}

/// An image build a host took (`POST /api/v1/agent/hosts/{id}/image-builds`):
/// build `base` with `packages`, then upload the disk to the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageBuildJob {
    pub image_id: crate::ids::ImageId,
    pub base: String,
    #[serde(default)]
    pub packages: Vec<String>,
}

/// A host's word on a build it runs: a step done (`status`), or its end
/// in failure (`error`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildReport {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn state(view: &str, instances: &[(&InstanceId, u32)], delta: Option<DesiredDelta>) -> DesiredState {
        let instances: Vec<serde_json::Value> = instances
            .iter()
            .map(|(id, vcpus)| {
                serde_json::json!({"id": id, "name": "a", "image": "tiny", "vcpus": vcpus, "memory_mib": 256,
                    "disk_gib": 1, "ports": [], "power": "running", "start_seq": 1, "reboot_count": 0})
            })
            .collect();
        let mut s: DesiredState =
            serde_json::from_value(serde_json::json!({"generation": 1, "instances": instances})).unwrap();
        s.view = Some(view.to_string());
        s.delta = delta;
        s
    }

    #[test]
    fn a_delta_replaces_adds_and_deletes_instances_of_the_held_state() {
        let (a, b, c) = (InstanceId::generate(), InstanceId::generate(), InstanceId::generate());
        let held = state("s.1", &[(&a, 1), (&b, 1)], None);
        let delta = DesiredDelta { base: "s.1".into(), removed_instances: vec![a.clone()] };
        let merged = held.merge(state("s.2", &[(&b, 4), (&c, 1)], Some(delta))).unwrap();
        let got: Vec<(&InstanceId, u32)> = merged.instances.iter().map(|i| (&i.id, i.vcpus)).collect();
        assert_eq!(got, vec![(&b, 4), (&c, 1)], "a deleted, b replaced, c added");
        assert_eq!(merged.view.as_deref(), Some("s.2"));
        assert!(merged.delta.is_none());
    }

    #[test]
    fn a_delta_on_another_answer_is_refused_and_a_whole_answer_replaces() {
        let a = InstanceId::generate();
        let held = state("s.1", &[(&a, 1)], None);
        let stale = DesiredDelta { base: "s.0".into(), removed_instances: vec![] };
        assert!(held.clone().merge(state("s.2", &[], Some(stale))).is_err());
        let whole = held.merge(state("t.1", &[], None)).unwrap();
        assert!(whole.instances.is_empty());
    }
}
