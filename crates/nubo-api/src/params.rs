//! Request bodies (inputs). Unknown fields are refused so a typo is an
//! error, not a silently ignored option.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/instances`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// Image name (e.g. `tiny`) or id (`ami-...`).
    pub image: String,
    /// Number of virtual CPUs (1..=64).
    pub vcpus: u32,
    /// Memory in MiB (64..=1048576).
    pub memory_mib: u64,
    /// Root disk size in GiB (1..=16384).
    pub disk_gib: u64,
    /// Optional name: 1-63 letters, digits, `-`, `_` or `.`.
    #[serde(default)]
    pub name: Option<String>,
    /// User-data (a `#!` script runs at boot on `tiny`), at most 64 KiB.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Guest TCP ports to forward from the host's 127.0.0.1.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Name of a key pair of the project; its public key is installed for root.
    #[serde(default)]
    pub key_name: Option<String>,
    /// A recipe to run once the instance has booted.
    #[serde(default)]
    pub recipe: Option<RunCreate>,
    /// Instance metadata service options (as EC2's `MetadataOptions`).
    #[serde(default)]
    pub metadata: Option<MetadataOptions>,
    /// Tags (key to value; keys 1-128 characters, values at most 256, at most 50 tags).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Networks (names or `net-...` ids of the project) to attach, one NIC
    /// each, in order. None: the host's user-mode network.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Security groups (names or `sg-...` ids) whose rules let traffic in
    /// on the instance's networks. None: the project's `default` group.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// An ISO image (name or `ami-...` id, `disk_format` iso) to put in a
    /// CD-ROM drive, booted first unless `boot` says otherwise. With the
    /// builtin `blank` image, the root disk starts empty: install onto it.
    #[serde(default)]
    pub cdrom: Option<String>,
    /// Boot order with a CD-ROM drive: `cdrom,disk` (the default with
    /// `cdrom`) or `disk,cdrom`.
    #[serde(default)]
    pub boot: Option<String>,
    /// Firmware, Secure Boot, TPM and display beyond what the image needs
    /// (its firmware choice wins where the image allows it).
    #[serde(default)]
    pub hardware: crate::hardware::HardwareRequest,
}

/// `POST /api/v1/networks`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    /// The IPv4 range, `/16` to `/29` (e.g. `10.20.0.0/24`). The first
    /// address is the gateway; instances get the others by DHCP.
    pub cidr: String,
    /// An external (provider) network: the hosts' own LAN or VLAN, which
    /// instances attach to directly and floating IPs come from. Operators only.
    #[serde(default)]
    pub external: Option<ExternalNetworkCreate>,
}

/// What makes a network external: where it is on each host, and its addresses.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalNetworkCreate {
    /// The name each host maps to one of its interfaces or bridges
    /// (`nubo agent --external NAME=IFACE`).
    pub interface: String,
    /// An 802.1Q tag (1-4094) on that interface; none: untagged.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// The LAN's router, which instances attached directly route through.
    pub gateway: String,
    /// `FIRST-LAST`: the addresses Nubo may hand out. The first answers
    /// DHCP on each host and never leaves it; instances and floating IPs
    /// get the others. Keep the LAN's own DHCP server out of this range.
    pub pool: String,
    /// Give every instance launched on its project's default network an
    /// address of this network automatically (EC2's public IP of a
    /// default subnet), released with the instance. At most one network.
    #[serde(default)]
    pub auto_assign: bool,
}

/// `POST /api/v1/floating-ips`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpCreate {
    /// The external network (id or name) to take the address from.
    pub network: String,
}

/// `POST /api/v1/floating-ips/{id}/associate`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpAssociate {
    /// The instance (id or name), which must have a NIC on a private network.
    pub instance: String,
}

/// How the instance metadata service at 169.254.169.254 answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    /// `optional` (IMDSv1 and IMDSv2 both answer; the default) or `required`
    /// (only requests with an IMDSv2 session token are answered).
    #[serde(default)]
    pub http_tokens: Option<String>,
}

/// `POST /api/v1/keypairs`: import a public key, or have one generated.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeypairCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    /// An OpenSSH public key line (`ssh-ed25519 AAAA... comment`). Without
    /// it, an Ed25519 key pair is generated and its private key returned once.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// `POST /api/v1/instances/{id}/runs` (and `recipe` at launch): run a recipe.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCreate {
    /// Recipe name, e.g. `web-server`.
    pub recipe: String,
    /// Recipe version; the newest when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// Parameter values; declared parameters left out take their defaults.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/instances/{id}/exec`: run one command through the guest agent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecCreate {
    /// Program and arguments, e.g. `["uname", "-a"]` (no shell unless you run one).
    pub command: Vec<String>,
    /// Seconds before the command is reported failed (default 60, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// One declared parameter of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipeParam {
    /// `[a-z][a-z0-9_]*`; the script sees it as the environment variable
    /// of the same name in upper case (`port` -> `PORT`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Value used when the run does not give one. A parameter with no
    /// default must be given.
    #[serde(default)]
    pub default: Option<String>,
}

/// `POST /api/v1/recipes`: add a recipe (or a new version of one) to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipeCreate {
    pub name: String,
    /// Free-form version, e.g. `1.0.0`; a name and version pair is immutable.
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// `script` (run by /bin/sh through the guest agent, on any image) or
    /// `cloud-config` (given to cloud-init at launch; cloud-init images only).
    #[serde(default = "default_recipe_kind")]
    pub kind: String,
    #[serde(default)]
    pub params: Vec<RecipeParam>,
    /// The script, or the `#cloud-config` document (`{{name}}` is replaced
    /// by the parameter's value there).
    pub body: String,
    /// Seconds a run may take before it is reported failed (default 1800).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn default_recipe_kind() -> String {
    "script".into()
}

/// `POST /api/v1/auth/login`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
    /// Project to work in; defaults to the user's first project.
    #[serde(default)]
    pub project: Option<String>,
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub name: String,
    /// Lifetime in seconds; none means it never expires.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// `POST /api/v1/projects`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    pub name: String,
    #[serde(default)]
    pub quota: Option<Quota>,
}

/// Limits of one project; absent fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default)]
    pub instances: Option<u64>,
    #[serde(default)]
    pub vcpus: Option<u64>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub volume_gib: Option<u64>,
    #[serde(default)]
    pub floating_ips: Option<u64>,
}

/// `POST /api/v1/users`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub name: String,
    /// Local password (at least 8 characters).
    pub password: String,
    /// Operator with rights over everything.
    #[serde(default)]
    pub admin: bool,
}

/// `PUT /api/v1/projects/{id}/members/{user}`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSet {
    /// `member` or `reader`.
    pub role: String,
}

/// `POST /api/v1/agent/join`: a new host trades a one-time join token for
/// its own credential.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostJoin {
    pub join_token: String,
    pub host_id: crate::ids::HostId,
}

/// `POST /api/v1/images`: register an image; its file follows with
/// `PUT /api/v1/images/{id}/file` (as OpenStack Glance does it).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCreate {
    /// 1-128 letters, digits, `-`, `_` or `.`, not starting with `.`; unique in the project.
    pub name: String,
    /// `raw` or `qcow2`: checked against the file's content.
    pub disk_format: String,
    /// The file's size in bytes: an upload that runs longer is refused.
    pub size_bytes: u64,
    /// Expected SHA-256 (hex) of the file; the upload is refused if it differs.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Smallest root disk in GiB (at least the image's virtual size; that by default).
    #[serde(default)]
    pub min_disk_gib: Option<u64>,
    /// Smallest memory in MiB instances of it need.
    #[serde(default)]
    pub min_memory_mib: Option<u64>,
    /// `project` (the default) or `public` (operators only).
    #[serde(default)]
    pub visibility: Option<String>,
    /// Boot with this builtin image's kernel, initrd and command line
    /// (e.g. `tiny`); without it the firmware boots the disk.
    #[serde(default)]
    pub kernel_image: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// What instances of it need: firmware, Secure Boot, TPM, display.
    #[serde(default)]
    pub hardware: crate::hardware::HardwareRequest,
}

/// `POST /api/v1/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// Size in GiB (1..=16384); from a snapshot, at least the snapshot's size.
    pub size_gib: u64,
    /// Optional name: 1-63 letters, digits, `-`, `_` or `.`.
    #[serde(default)]
    pub name: Option<String>,
    /// Create it with this snapshot's content (on the snapshot's host).
    #[serde(default)]
    pub snapshot_id: Option<crate::ids::SnapshotId>,
    /// Put it on this instance's host, to attach it there (volumes live on
    /// one host's storage pool).
    #[serde(default)]
    pub instance_id: Option<crate::ids::InstanceId>,
}

/// `POST /api/v1/volumes/{id}/attach`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    pub instance_id: crate::ids::InstanceId,
}

/// `POST /api/v1/volumes/{id}/extend`: grow a volume (online when attached).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeExtend {
    /// The new size in GiB, larger than the current one.
    pub size_gib: u64,
}

/// `POST /api/v1/volumes/{id}/snapshots`
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Optional name: 1-63 letters, digits, `-`, `_` or `.`.
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /api/v1/instances/{id}/cdrom/insert`: put an ISO image in the
/// instance's CD-ROM drive (a running VM sees the new disc at once).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CdromInsert {
    /// An ISO image (name or `ami-...` id) the caller may use.
    pub image: String,
}

/// `POST /api/v1/instances/{id}/boot-order`: what a stopped instance boots
/// from first when it next starts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootOrder {
    /// `cdrom,disk` or `disk,cdrom`.
    pub boot: String,
}

/// `POST /api/v1/instances/{id}/snapshot`: make an image of the root disk.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSnapshot {
    /// The new image's name (as for `ImageCreate`).
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /api/v1/security-groups`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreate {
    /// 1-63 letters, digits, `-`, `_` or `.`; unique in the project.
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// `POST /api/v1/security-groups/{id}/rules`: let traffic in (or out).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRuleCreate {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// First port (tcp and udp; omitted for icmp and all).
    #[serde(default)]
    pub from_port: Option<u16>,
    /// Last port; the first one when omitted.
    #[serde(default)]
    pub to_port: Option<u16>,
    /// Source range, e.g. `10.20.0.0/24` or `0.0.0.0/0`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// Or: a security group (name or `sg-...`) whose members may connect.
    #[serde(default)]
    pub source_group: Option<String>,
    /// An outbound rule: `cidr` or `source_group` are then where members
    /// may connect to. Default: inbound.
    #[serde(default)]
    pub egress: bool,
}

/// `POST /api/v1/instances/{id}/migrate`
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceMigrate {
    /// Target host (name or id); none: the scheduler picks one.
    #[serde(default)]
    pub to: Option<String>,
}

/// `PUT /api/v1/instances/{id}/protection`: what is given changes, what
/// is absent stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceProtection {
    /// True: no terminate (REST, CLI, portal, EC2, groups) is carried out
    /// until it is turned off (EC2's `DisableApiTermination`).
    #[serde(default)]
    pub termination_protection: Option<bool>,
    /// True: no stop is carried out until it is turned off (EC2's `DisableApiStop`).
    #[serde(default)]
    pub stop_protection: Option<bool>,
    /// What a poweroff from inside the guest does: `stop` (the default) or
    /// `terminate` (EC2's `InstanceInitiatedShutdownBehavior`).
    #[serde(default)]
    pub shutdown_behavior: Option<String>,
}

/// `PUT /api/v1/resources/{id}/tags`: tags to add or overwrite; the
/// resource's other tags stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSet {
    /// Key to value: keys of 1-128 characters, not starting with `aws:`;
    /// values of at most 256. A resource has at most 50 tags.
    pub tags: std::collections::BTreeMap<String, String>,
}

// ---- day-two operations (resize, rebuild, revert) ----

/// `POST /api/v1/instances/{id}/resize`: a new size. A stopped instance
/// takes any size its host has room for (at its next start); a running
/// one only grows its vCPUs (hot-added), up to its ceiling.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceResize {
    /// The new number of vCPUs (absent: unchanged).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// The new memory in MiB (absent: unchanged).
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

/// `POST /api/v1/instances/{id}/rebuild`: a fresh root disk from `image`
/// (name or id), keeping the instance's id, addresses, volumes, tags, key
/// and user-data (first boot runs again).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRebuild {
    pub image: String,
}

/// `POST /api/v1/instances/{id}/revert`: the root disk becomes a copy of
/// an instance snapshot (an image taken from this instance) again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRevert {
    /// The instance snapshot's image (name or id).
    pub snapshot: String,
}

/// `POST /api/v1/volumes/{id}/revert`: the volume's content becomes a
/// snapshot's again (detached, or its instance stopped).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeRevert {
    /// The snapshot (`snap-...`), one of this volume's.
    pub snapshot: String,
}

/// `POST /api/v1/images/imports`: an image the control plane fetches
/// from a URL in the background (`nubo image import URL`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageUrlImport {
    /// 1-128 letters, digits, `-`, `_` or `.`, not starting with `.`; unique in the project.
    pub name: String,
    /// An http:// or https:// URL on a host the operator allowed (`nubo server --image-url-allow`).
    pub url: String,
    /// `raw` or `qcow2`: checked against the file's content.
    pub disk_format: String,
    /// Expected SHA-256 (hex) of the file; the image fails, and nothing is stored, if it differs.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub min_disk_gib: Option<u64>,
    #[serde(default)]
    pub min_memory_mib: Option<u64>,
    /// `project` (the default) or `public` (operators only).
    #[serde(default)]
    pub visibility: Option<String>,
    /// Boot with this builtin image's kernel, initrd and command line; without it the firmware boots the disk.
    #[serde(default)]
    pub kernel_image: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /api/v1/images/builds`: an image a host builds from a builtin one
/// with extra packages, into the cloud's registry (`nubo image build`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageBuildCreate {
    /// The registry image's name (a project image of a builtin's name,
    /// e.g. `debian`, is what the project's instances of that name boot).
    pub name: String,
    /// The builtin image to build on (`debian`).
    pub base: String,
    /// Extra Debian packages, e.g. `["nginx"]`.
    #[serde(default)]
    pub packages: Vec<String>,
    /// `project` (the default) or `public` (operators only).
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}
