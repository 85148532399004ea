//! Response bodies (outputs).

use crate::ids::{HostId, InstanceId};
use serde::{Deserialize, Serialize};

crate::state_enum! {
    /// Where an instance is in its life, as its host last reported it.
    pub enum InstanceState("instance") {
        Pending = "pending",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        Terminated = "terminated",
        Error = "error",
        /// Its host stopped reporting and its disks were not on storage
        /// another host shares; `error` says so.
        Lost = "lost",
    }
}

crate::state_enum! {
    /// What the user asked an instance to be: `running`, `stopped` or
    /// `terminated` (stored as the agent protocol's `deleted`).
    pub enum DesiredInstanceState("desired instance") {
        Running = "running",
        Stopped = "stopped",
        Terminated = "terminated",
    }
}

impl DesiredInstanceState {
    /// The instance state that fulfils the wish.
    pub fn fulfilled_by(self) -> InstanceState {
        match self {
            DesiredInstanceState::Running => InstanceState::Running,
            DesiredInstanceState::Stopped => InstanceState::Stopped,
            DesiredInstanceState::Terminated => InstanceState::Terminated,
        }
    }
}

crate::state_enum! {
    /// Whether a host takes part: `up`, `down` once it has missed
    /// heartbeats, or `drained` (no new placements).
    pub enum HostState("host") {
        Up = "up",
        Down = "down",
        Drained = "drained",
    }
}

/// A forwarded port: guest TCP port -> host address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortForward {
    pub guest_port: u16,
    /// `127.0.0.1:PORT` on the instance's host.
    pub host_address: String,
}

/// One step in an instance's life, for timing and troubleshooting.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// `requested`, `scheduled`, `agent_seen`, `disk_ready`, `qemu_started`, `boot_complete`, ...
    pub stage: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub name: String,
    pub image: String,
    pub state: InstanceState,
    /// What the user asked for: `running`, `stopped` or `terminated`.
    pub desired_state: DesiredInstanceState,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// The host's id, once scheduled.
    pub host: Option<HostId>,
    pub host_name: Option<String>,
    /// Guest port (as a string key) to host address.
    pub ports: std::collections::BTreeMap<String, String>,
    /// Why the instance is in `error`, if it is.
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Life events, oldest first.
    pub events: Vec<InstanceEvent>,
    /// The key pair whose public key was installed at launch.
    #[serde(default)]
    pub key_name: Option<String>,
    /// Metadata service: `optional` (IMDSv1 and v2) or `required` (v2 only).
    #[serde(default)]
    pub metadata_http_tokens: String,
    /// Recipe and command runs, newest first (show only; logs are tails).
    #[serde(default)]
    pub runs: Vec<Run>,
    /// What the guest agent last reported, when it answers.
    #[serde(default)]
    pub guest: Option<GuestStatus>,
    /// The image's id (the `image` field is its name).
    #[serde(default)]
    pub image_id: Option<crate::ids::ImageId>,
    /// Volumes attached (or being attached or detached), by id.
    #[serde(default)]
    pub volumes: Vec<InstanceVolume>,
    /// The instance type it was launched by (`t3.micro`, ...), or
    /// `custom-<vcpus>-<mib>` when it was launched by size.
    #[serde(default)]
    pub instance_type: String,
    /// Tags (key to value), as the EC2 API's CreateTags sets them.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// One per attached network, in NIC order.
    #[serde(default)]
    pub addresses: Vec<InstanceAddress>,
    /// No terminate is carried out while true (`nubo instance protect`).
    #[serde(default)]
    pub termination_protection: bool,
    /// No stop is carried out while true.
    #[serde(default)]
    pub stop_protection: bool,
    /// What a poweroff from inside the guest does: `stop` or `terminate`.
    #[serde(default = "default_shutdown_behavior")]
    pub shutdown_behavior: String,
    /// The CD-ROM drive, for an instance launched with one (`--cdrom`).
    #[serde(default)]
    pub cdrom: Option<InstanceCdrom>,
    /// Its firmware, Secure Boot, TPM and display.
    #[serde(default)]
    pub hardware: crate::hardware::Hardware,
}

/// An instance's CD-ROM drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceCdrom {
    /// The ISO image in the drive; none: empty (ejected).
    pub image_id: Option<crate::ids::ImageId>,
    /// `cdrom,disk` or `disk,cdrom`.
    pub boot_order: String,
}

fn default_shutdown_behavior() -> String {
    "stop".to_string()
}

/// An instance's address on one of its networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceAddress {
    pub network_id: crate::ids::NetworkId,
    pub network: String,
    /// IPv4 address, kept for the instance's life (stop, start, migration).
    pub address: String,
    pub mac: String,
    /// The floating IP associated with this address, if any: where the
    /// instance is reached from the external network.
    #[serde(default)]
    pub floating_ip: Option<String>,
}

/// A project's private network.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Network {
    pub id: crate::ids::NetworkId,
    pub name: String,
    pub project_id: crate::ids::ProjectId,
    pub cidr: String,
    /// The first address of the range: each host's router for the network.
    pub gateway: String,
    /// The VXLAN network identifier that carries it between hosts.
    pub vni: u32,
    /// Instances attached (not terminated).
    pub ports: Vec<NetworkPort>,
    pub created_at_ms: i64,
    /// Set for an external (provider) network.
    #[serde(default)]
    pub external: Option<ExternalNetwork>,
    /// The project's default network: made on first use, joined by
    /// instances launched without networks where a host can bridge (the
    /// EC2 API's default VPC).
    #[serde(default)]
    pub is_default: bool,
    /// Tags (key to value), the same as its VPC's on the EC2 API
    /// (`vpc-` and the network id's digits).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Where an external network is on the hosts, and which addresses Nubo hands out.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExternalNetwork {
    /// The name hosts map to an interface (`nubo agent --external NAME=IFACE`).
    pub interface: String,
    pub vlan: Option<u16>,
    /// The first address of the pool (each host's DHCP for the network).
    pub pool_start: String,
    pub pool_end: String,
    /// Instances on their project's default network get an address of
    /// this network automatically.
    #[serde(default)]
    pub auto_assign: bool,
}

/// A floating IP: an address of an external network held by a project.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FloatingIp {
    pub id: crate::ids::FloatingIpId,
    pub project_id: crate::ids::ProjectId,
    pub network_id: crate::ids::NetworkId,
    pub network: String,
    pub address: String,
    /// The instance it reaches, if associated.
    pub instance_id: Option<InstanceId>,
    /// The instance's private address the floating IP is translated to.
    pub private_address: Option<String>,
    /// Assigned automatically at launch: it goes with its instance.
    #[serde(default)]
    pub auto_assigned: bool,
    pub created_at_ms: i64,
    /// The load balancer listening on it, if any (instead of an instance).
    #[serde(default)]
    pub load_balancer_id: Option<crate::ids::LoadBalancerId>,
    /// Tags (key to value): `nubo tag set`, or the EC2 API's CreateTags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// An instance's NIC on a network.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkPort {
    pub instance_id: InstanceId,
    pub address: String,
    pub mac: String,
}

/// The instance type reported for an instance launched by size, not by a
/// named type: `custom-<vcpus>-<mib>`.
pub fn custom_instance_type(vcpus: u32, memory_mib: u64) -> String {
    format!("custom-{vcpus}-{memory_mib}")
}

crate::state_enum! {
    /// Where a volume's attachment to an instance is: `attaching` (wanted,
    /// not yet seen by the guest), `attached` (the guest sees it), or
    /// `detaching` (plugged in, no longer wanted). A volume that is fully
    /// detached has no attachment.
    pub enum AttachState("attachment") {
        Attaching = "attaching",
        Attached = "attached",
        Detaching = "detaching",
    }
}

impl AttachState {
    /// Whether an attachment in `self` may move to `to` (staying is always
    /// allowed; leaving `detaching` is the attachment's end, not a state).
    pub fn can_become(self, to: Self) -> bool {
        use AttachState::*;
        self == to || matches!((self, to), (Attaching, Attached) | (Attaching | Attached, Detaching))
    }

    /// Whether the volume is still wanted on the instance (the host plugs
    /// it in); a detaching one is unplugged.
    pub fn is_wanted(self) -> bool {
        matches!(self, AttachState::Attaching | AttachState::Attached)
    }

    /// Where a wanted attachment goes when its host reports it as `seen`:
    /// attached once the guest sees it, and never back to attaching (a
    /// host that lost track of it re-plugs it without the user seeing it).
    pub fn after_report(self, seen: Self) -> Self {
        if seen == AttachState::Attached && self.can_become(seen) {
            seen
        } else {
            self
        }
    }
}

/// A volume as its instance lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceVolume {
    pub volume_id: crate::ids::VolumeId,
    pub size_gib: u64,
    pub state: AttachState,
    pub guest_device: Option<String>,
}

/// What the guest agent inside an instance reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuestStatus {
    /// When the agent last heard from the guest agent (ms since the epoch).
    pub updated_at_ms: i64,
    /// Guest agent version (`guest-info`).
    #[serde(default)]
    pub agent_version: Option<String>,
    /// The guest OS's pretty name (`guest-get-osinfo`).
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    /// Mounted file systems with their use (`guest-get-fsinfo`).
    #[serde(default)]
    pub filesystems: Vec<GuestFilesystem>,
    /// Network interfaces and addresses (`guest-network-get-interfaces`).
    #[serde(default)]
    pub interfaces: Vec<GuestInterface>,
    /// True when the guest sent more than a host keeps of it (long texts
    /// end in `[truncated]`, long lists were cut): the guest chooses all of
    /// this, so its host caps it before reporting it.
    #[serde(default)]
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuestFilesystem {
    pub mountpoint: String,
    pub device: String,
    pub fs_type: String,
    pub used_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GuestInterface {
    pub name: String,
    pub mac: Option<String>,
    /// `address/prefix`
    pub addresses: Vec<String>,
}

/// An SSH key pair of a project.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Keypair {
    pub id: crate::ids::KeypairId,
    pub name: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// e.g. `ssh-ed25519`
    pub key_type: String,
    pub public_key: String,
    pub created_at_ms: i64,
    /// Tags (key to value): `nubo tag set`.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/keypairs` answer. `private_key` (OpenSSH format) is there
/// only when the server generated the pair, and is never shown again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeypairCreated {
    pub keypair: Keypair,
    pub private_key: Option<String>,
}

/// A recipe of the catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recipe {
    pub name: String,
    pub version: String,
    pub description: String,
    /// `script` or `cloud-config`.
    pub kind: String,
    pub params: Vec<crate::params::RecipeParam>,
    pub body: String,
    pub timeout_secs: u64,
    /// `builtin` (shipped with Nubo) or the project that added it.
    pub source: String,
    pub created_at_ms: i64,
}

crate::state_enum! {
    /// Where a recipe or command run is: `pending` (waiting for the guest
    /// agent), `running`, `succeeded` or `failed`.
    pub enum RunState("run") {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl RunState {
    /// It ended (either way) and never changes again.
    pub fn finished(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }

    /// A run goes forward only: pending, then running (reported again with
    /// each log chunk), then succeeded or failed; a finished run never
    /// changes, and a run may end without having been seen running.
    pub fn can_become(self, to: RunState) -> bool {
        matches!(
            (self, to),
            (RunState::Pending | RunState::Running, RunState::Running | RunState::Succeeded | RunState::Failed)
        )
    }
}

/// State of a run: `pending` (waiting for the guest agent), `running`,
/// `succeeded` or `failed`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    pub id: crate::ids::RunId,
    pub instance_id: InstanceId,
    /// `recipe` or `exec`.
    pub kind: String,
    /// `name@version` for recipes, the command line for exec.
    pub what: String,
    pub params: std::collections::BTreeMap<String, String>,
    pub state: RunState,
    pub exit_code: Option<i32>,
    /// Why it failed when it did not even run to an exit code.
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// Log text (stdout and stderr): from `log_from` when asked, else the tail.
    pub log: String,
    /// Byte offset of the end of `log`; pass it as `log_from` to follow.
    pub log_next: u64,
}

impl Run {
    pub fn finished(&self) -> bool {
        self.state.finished()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    pub id: HostId,
    pub name: String,
    /// `up`, `down` once it has missed heartbeats, or `drained` (no new placements).
    pub state: HostState,
    /// The accelerator the agent uses: `kvm` or `tcg`.
    pub accel: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    pub used_disk_gib: u64,
    /// vCPUs schedulable under the overcommit ratio.
    pub schedulable_vcpus: u32,
    pub instances: u32,
    pub last_heartbeat_ms: i64,
    /// The host's address on the underlay that carries private networks
    /// (VXLAN); none: the host has only user-mode networking.
    #[serde(default)]
    pub underlay: Option<String>,
    /// How the host's instances are networked: `bridged` (private
    /// networks on bridges, over `underlay`) or `user-mode` (QEMU's
    /// user-mode networking with forwarded ports only).
    #[serde(default)]
    pub networking: String,
}

crate::state_enum! {
    /// Where an image is: `queued` (waiting for its file), `saving` (being
    /// taken or checked), `active` (bootable) or `error`.
    pub enum ImageState("image") {
        Queued = "queued",
        Saving = "saving",
        Active = "active",
        Error = "error",
    }
}

impl ImageState {
    /// Whether an image in `self` may move to `to`: its file arrives
    /// (queued -> saving -> active), or it fails before it is active.
    pub fn can_become(self, to: Self) -> bool {
        use ImageState::*;
        self == to || matches!((self, to), (Queued, Saving) | (Saving, Active) | (Queued | Saving, Error))
    }

    /// Whether instances may boot from it.
    pub fn is_bootable(self) -> bool {
        self == ImageState::Active
    }
}

/// An image instances boot from.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    pub id: crate::ids::ImageId,
    pub name: String,
    /// `builtin` (each agent builds it from Debian's packages), `import`
    /// (uploaded, or fetched from a URL), `snapshot` (taken from an
    /// instance's root disk) or `build` (built by a host of the cloud).
    pub source: String,
    pub state: ImageState,
    /// `public` (every project) or `project` (its own project only).
    pub visibility: String,
    /// The owning project (none for builtin images).
    pub project: Option<String>,
    pub description: String,
    /// `raw` or `qcow2` (registry images).
    pub disk_format: Option<String>,
    /// SHA-256 of the stored file, which is stored under it.
    pub sha256: Option<String>,
    /// Bytes of the stored file.
    pub size_bytes: Option<u64>,
    /// Size of the disk the image holds.
    pub virtual_size_bytes: Option<u64>,
    /// Smallest root disk (GiB) and memory (MiB) an instance of it may have.
    pub min_disk_gib: u64,
    pub min_memory_mib: u64,
    /// The builtin image whose kernel, initrd and command line it boots
    /// with; none: the firmware boots the disk itself.
    pub kernel_image: Option<String>,
    /// The image the instance it was taken from was running.
    pub parent: Option<crate::ids::ImageId>,
    pub source_instance: Option<InstanceId>,
    /// Why it is in `error`.
    pub error: Option<String>,
    pub created_at_ms: i64,
    /// Tags (key to value): `nubo tag set`, or the EC2 API's CreateTags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// What instances of it need: firmware, Secure Boot, TPM, display.
    #[serde(default)]
    pub hardware: crate::hardware::Hardware,
    /// The background work that makes it (a fetch from a URL, or a build
    /// on a host), with its progress; none for uploads and snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ImageJob>,
}

/// How an image fetched from a URL or built on a host is coming along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageJob {
    /// `url` (`nubo image import URL`) or `build` (`nubo image build`).
    pub kind: String,
    /// The URL fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The builtin image built on, and the packages added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// The host doing the build, once one took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The last step the host reported (a build's progress in words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Bytes received so far, of `bytes_total` (unknown until the sender says).
    pub bytes_done: u64,
    pub bytes_total: Option<u64>,
}

crate::state_enum! {
    /// Where a volume is in its life.
    pub enum VolumeState("volume") {
        /// Its file is being made (empty, or from a snapshot).
        Creating = "creating",
        /// It exists and is attached nowhere.
        Available = "available",
        /// It exists and is attached (or attaching, or detaching).
        InUse = "in-use",
        /// Its file is being deleted.
        Deleting = "deleting",
        /// Its file is gone (not shown).
        Deleted = "deleted",
        /// Its file could not be made; `error` says why.
        Error = "error",
    }
}

impl VolumeState {
    /// Whether a volume in `self` may move to `to`. Staying is always
    /// allowed; a host that reports a failed volume's file after all makes
    /// it live again.
    pub fn can_become(self, to: Self) -> bool {
        use VolumeState::*;
        self == to
            || matches!(
                (self, to),
                (Creating | Error, Available | InUse | Error)
                    | (Available, InUse | Deleting)
                    | (InUse, Available | Deleting)
                    | (Error, Deleting)
                    | (Deleting, Deleted)
            )
    }

    /// The state of a volume whose file exists on its host.
    pub fn live(attached: bool) -> Self {
        if attached {
            VolumeState::InUse
        } else {
            VolumeState::Available
        }
    }

    /// Whether its file exists and may be extended or snapshotted.
    pub fn is_live(self) -> bool {
        matches!(self, VolumeState::Available | VolumeState::InUse)
    }

    /// Whether it may be deleted (when attached nowhere).
    pub fn is_deletable(self) -> bool {
        matches!(self, VolumeState::Available | VolumeState::Error)
    }
}

/// A volume: a data disk on one host's storage pool.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    pub id: crate::ids::VolumeId,
    pub name: String,
    /// The size asked for, in GiB (after an extend, the new size).
    pub size_gib: u64,
    /// The size of the file on the host; below `size_gib` while an extend is under way.
    pub actual_size_gib: u64,
    pub state: VolumeState,
    pub host: Option<HostId>,
    pub host_name: Option<String>,
    pub attachment: Option<VolumeAttachment>,
    /// The snapshot it was created from.
    pub snapshot_id: Option<crate::ids::SnapshotId>,
    /// What went wrong last, when something did.
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Tags (key to value).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Where a volume is attached and what the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeAttachment {
    pub instance_id: InstanceId,
    pub state: AttachState,
    /// The serial number the guest reads in `/sys/block/*/serial`
    /// (`/dev/disk/by-id/virtio-<serial>`).
    pub serial: String,
    /// The guest's name for it, e.g. `/dev/vdc`, while the instance runs and the guest has it.
    pub guest_device: Option<String>,
    /// Its size as the guest sees it.
    pub guest_size_bytes: Option<u64>,
}

crate::state_enum! {
    /// Where a volume snapshot is in its life.
    pub enum SnapshotState("snapshot") {
        /// Being taken.
        Pending = "pending",
        /// Taken; volumes can be made from it.
        Completed = "completed",
        /// Being deleted.
        Deleting = "deleting",
        /// Gone (not shown).
        Deleted = "deleted",
        /// Could not be taken; `error` says why.
        Error = "error",
    }
}

impl SnapshotState {
    /// Whether a snapshot in `self` may move to `to`.
    pub fn can_become(self, to: Self) -> bool {
        use SnapshotState::*;
        self == to
            || matches!((self, to), (Pending, Completed | Error) | (Completed | Error, Deleting) | (Deleting, Deleted))
    }

    /// Whether it may be deleted.
    pub fn is_deletable(self) -> bool {
        matches!(self, SnapshotState::Completed | SnapshotState::Error)
    }
}

/// A point-in-time copy of a volume, on the volume's host.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub id: crate::ids::SnapshotId,
    pub name: String,
    pub volume_id: crate::ids::VolumeId,
    pub size_gib: u64,
    pub state: SnapshotState,
    /// `filesystem` (the guest's file systems were frozen for it) or
    /// `crash` (as after a power cut: no guest agent, or the volume was not in use).
    pub consistency: Option<String>,
    pub host: Option<HostId>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// Tags (key to value): `nubo tag set`, or the EC2 API's CreateTags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// `GET /api/v1/instances/{id}/console`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsoleOutput {
    pub instance_id: InstanceId,
    /// The serial console's text (the last 1 MiB at most).
    pub output: String,
}

/// A signed-in session or a created token. `token` is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenIssued {
    pub id: crate::ids::TokenId,
    pub token: String,
    pub user: String,
    pub project: Option<String>,
    pub role: String,
    pub expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Token {
    pub id: crate::ids::TokenId,
    pub name: String,
    pub user: String,
    pub project: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaUsage {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub volume_gib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    pub id: crate::ids::ProjectId,
    pub name: String,
    pub quota: QuotaUsage,
    pub used: QuotaUsage,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: crate::ids::UserId,
    pub name: String,
    /// `local` or `ldap`.
    pub source: String,
    pub admin: bool,
    /// project name -> role
    pub projects: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// User name, `host:<id>`, or `anonymous`.
    pub actor: String,
    pub project: Option<String>,
    pub method: String,
    pub path: String,
    /// Client address.
    pub source: String,
    pub status: u16,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
}

/// Who the caller is (`GET /api/v1/auth/whoami`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub user: String,
    pub admin: bool,
    pub project: Option<String>,
    pub role: String,
}

/// `POST /api/v1/agent/join` answer: the host's own credential.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostCredential {
    pub host_id: crate::ids::HostId,
    pub credential: String,
}

/// A one-time join token for a new host.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinToken {
    pub token: String,
    pub expires_at_ms: i64,
}

/// A new access-key pair; the secret is shown only here.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessKeyIssued {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub user: String,
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessKey {
    pub access_key_id: String,
    pub user: String,
    pub project: Option<String>,
    pub created_at_ms: i64,
    pub revoked: bool,
}

/// A security group with its rules.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityGroup {
    pub id: crate::ids::SecurityGroupId,
    pub name: String,
    pub description: String,
    pub project_id: crate::ids::ProjectId,
    pub rules: Vec<SecurityGroupRule>,
    /// Tags (key to value): `nubo tag set`, or the EC2 API's CreateTags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// One rule: traffic it lets in (`ingress`) or out (`egress`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityGroupRule {
    pub id: crate::ids::SecurityGroupRuleId,
    pub direction: String,
    /// `tcp`, `udp`, `icmp` or `-1` (all, as EC2 writes it).
    pub protocol: String,
    /// -1 when the protocol has no ports.
    pub from_port: i64,
    pub to_port: i64,
    pub cidr: Option<String>,
    pub source_group_id: Option<String>,
}

crate::state_enum! {
    /// Where a live migration is: `preparing` (the target starts),
    /// `migrating` (disks and memory copied), `completed` or `failed`.
    pub enum MigrationState("migration") {
        Preparing = "preparing",
        Migrating = "migrating",
        Completed = "completed",
        Failed = "failed",
    }
}

impl MigrationState {
    /// Still under way: it holds the target's capacity and blocks another
    /// migration of the instance.
    pub fn active(self) -> bool {
        matches!(self, MigrationState::Preparing | MigrationState::Migrating)
    }

    /// Preparing, then migrating (the target may say it is ready again),
    /// then completed or failed; only the source can complete it, which it
    /// does after migrating, while either side may fail it at any point
    /// before it ended.
    pub fn can_become(self, to: MigrationState) -> bool {
        matches!(
            (self, to),
            (
                MigrationState::Preparing | MigrationState::Migrating,
                MigrationState::Migrating | MigrationState::Completed | MigrationState::Failed
            )
        )
    }
}

/// A live migration of an instance, with what it cost.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Migration {
    pub id: crate::ids::MigrationId,
    pub instance_id: InstanceId,
    pub source_host: String,
    pub target_host: String,
    /// `preparing` (the target starts), `migrating` (disks and memory
    /// copied), `completed` or `failed`.
    pub state: MigrationState,
    /// The pause the guest saw.
    pub downtime_ms: Option<u64>,
    pub total_ms: Option<u64>,
    pub disk_bytes: Option<u64>,
    pub ram_bytes: Option<u64>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The control plane's background tasks, as the server that answered
/// records them (each server keeps its own record).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackgroundTasks {
    /// The server that answered, as it names itself for the lease
    /// (`hostname:data-directory`).
    pub server: String,
    /// The server running the cluster-wide tasks now (it holds the lease);
    /// none while no server holds it. Its record is the one to read for
    /// them: on the others they have not run.
    #[serde(default)]
    pub cluster_tasks_on: Option<String>,
    pub tasks: Vec<BackgroundTask>,
}

/// One background task and its last run on the server that answered.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackgroundTask {
    /// `rollups`, `alert_rules`, `policies`, `groups`, `failover`,
    /// `webhooks`, `audit_retention`, `ldap_refresh`.
    pub name: String,
    /// What it does.
    pub about: String,
    /// `cluster`: run by one server at a time (the lease holder);
    /// `server`: run by every server.
    pub scope: String,
    /// How often it runs.
    pub every_ms: u64,
    /// A run is under way.
    pub running: bool,
    /// When the last run started; none: it has not run on this server.
    #[serde(default)]
    pub last_started_at_ms: Option<i64>,
    /// How long the last finished run took.
    #[serde(default)]
    pub last_duration_ms: Option<u64>,
    /// `ok` or `failed`; none: no run has finished.
    #[serde(default)]
    pub last_outcome: Option<String>,
    /// The last failure's error (kept after later runs succeed).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the run that failed last started.
    #[serde(default)]
    pub last_error_at_ms: Option<i64>,
    /// Finished runs since this server started.
    pub runs: u64,
    /// Failed runs since this server started.
    pub failures: u64,
}

/// One tag of one resource (`GET /api/v1/tags`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tag {
    /// The resource's id as the tag is kept: a network's tags are its
    /// VPC's (`vpc-` and the network id's digits), as the EC2 API sees them.
    pub resource_id: String,
    /// `instance`, `volume`, `snapshot`, `image`, `security-group`, `vpc`,
    /// `subnet`, `floating-ip` or `key-pair`.
    pub resource_type: String,
    pub key: String,
    pub value: String,
}

/// Every tag of one resource, after a change (`PUT`/`DELETE
/// /api/v1/resources/{id}/tags`) or as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResourceTags {
    pub resource_id: String,
    pub resource_type: String,
    pub tags: std::collections::BTreeMap<String, String>,
}
