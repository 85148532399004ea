//! Typed resource ids. Each id is a prefix plus 17 lowercase hex digits,
//! shaped like EC2's so the EC2-compatible API can use the same ids.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid id of a given kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind} id: expected '{prefix}' followed by 17 hex digits")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, example = json!(concat!($prefix, "0123456789abcdef0")))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn generate() -> Self {
                let n: u128 = rand::random();
                Self(format!("{}{:017x}", $prefix, n & ((1u128 << 68) - 1)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let ok = s
                    .strip_prefix($prefix)
                    .map(|hex| hex.len() == 17 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                    .unwrap_or(false);
                if ok {
                    Ok(Self(s.to_string()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: s.chars().take(64).collect() })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(
    /// An instance (virtual machine), `i-...`.
    InstanceId, "i-", "instance"
);
typed_id!(
    /// A compute host running a Nubo agent, `h-...`.
    HostId, "h-", "host"
);

typed_id!(
    /// A project (tenant), `p-...`.
    ProjectId, "p-", "project"
);
typed_id!(
    /// A user, `u-...`.
    UserId, "u-", "user"
);
typed_id!(
    /// An API token's public id, `t-...` (the secret is never shown again).
    TokenId, "t-", "token"
);

typed_id!(
    /// An SSH key pair registered with a project, `key-...` (as EC2 names them).
    KeypairId, "key-", "key pair"
);
typed_id!(
    /// One run of a recipe or command inside an instance, `run-...`.
    RunId, "run-", "run"
);

typed_id!(
    /// An image in the registry (builtin, imported or an instance snapshot), `ami-...` as on EC2.
    ImageId, "ami-", "image"
);
typed_id!(
    /// A volume: a data disk that can be attached to an instance, `vol-...`.
    VolumeId, "vol-", "volume"
);
typed_id!(
    /// A point-in-time copy of a volume, `snap-...`.
    SnapshotId, "snap-", "snapshot"
);
typed_id!(
    /// An EC2 root volume replacement task (a rebuild or a revert), `replacevol-...`.
    ReplaceRootVolumeTaskId, "replacevol-", "root volume replacement task"
);

typed_id!(
    /// A load balancer, `lb-...`.
    LoadBalancerId, "lb-", "load balancer"
);

typed_id!(
    /// A health check of a host or an instance, `chk-...`.
    CheckId, "chk-", "check"
);
typed_id!(
    /// An alert rule, `rule-...`.
    AlertRuleId, "rule-", "alert rule"
);
typed_id!(
    /// One alert (a rule's condition holding for one resource), `alert-...`.
    AlertId, "alert-", "alert"
);
typed_id!(
    /// A security group of a project, `sg-...` (as on EC2).
    SecurityGroupId, "sg-", "security group"
);
typed_id!(
    /// One rule of a security group, `sgr-...`.
    SecurityGroupRuleId, "sgr-", "security group rule"
);
typed_id!(
    /// A project's private network (one bridge per host, VXLAN between hosts), `net-...`.
    NetworkId, "net-", "network"
);
typed_id!(
    /// An address of an external network a project holds, which follows
    /// the instance it is associated with, `fip-...`.
    FloatingIpId, "fip-", "floating IP"
);
typed_id!(
    /// One live migration of an instance between hosts, `mig-...`.
    MigrationId, "mig-", "migration"
);
typed_id!(
    /// The instances of one EC2 RunInstances call, `r-...`.
    ReservationId, "r-", "reservation"
);

impl ImageId {
    /// The stable id of a builtin image: the same on every control plane,
    /// derived from its name.
    pub fn builtin(name: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("nubo-builtin-image:{name}").as_bytes());
        Self(format!("{}{}", Self::PREFIX, &hex::encode(digest)[..17]))
    }
}

impl VolumeId {
    /// The serial number the guest sees for this volume: the id without
    /// its dash (`vol0123...`, 20 characters, the most virtio-blk carries),
    /// as EC2 names its NVMe volumes.
    pub fn serial(&self) -> String {
        self.0.replacen('-', "", 1)
    }
}

typed_id!(
    /// A backup repository (a directory, an SFTP host or an S3 bucket), `bkr-...`.
    BackupRepositoryId, "bkr-", "backup repository"
);
typed_id!(
    /// A backup plan (what, when, where, how long), `bkp-...`.
    BackupPlanId, "bkp-", "backup plan"
);
typed_id!(
    /// One backup of an instance (all its disks at one point in time), `bak-...`.
    BackupId, "bak-", "backup"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        for _ in 0..100 {
            let id = InstanceId::generate();
            assert_eq!(id.as_str().parse::<InstanceId>().unwrap(), id);
        }
    }

    #[test]
    fn wrong_prefix_or_length_is_refused() {
        assert!("h-0123456789abcdef0".parse::<InstanceId>().is_err());
        assert!("i-0123".parse::<InstanceId>().is_err());
        assert!("i-0123456789ABCDEF0".parse::<InstanceId>().is_err());
        assert!("i-../../etc/passwdxx".parse::<InstanceId>().is_err());
        let e = "nope".parse::<HostId>().unwrap_err();
        assert!(e.to_string().contains("host id"));
    }

    #[test]
    fn storage_ids() {
        let v: VolumeId = "vol-0123456789abcdef0".parse().unwrap();
        assert_eq!(v.serial(), "vol0123456789abcdef0");
        assert_eq!(v.serial().len(), 20);
        let tiny = ImageId::builtin("tiny");
        assert_eq!(tiny, ImageId::builtin("tiny"));
        assert_ne!(tiny, ImageId::builtin("debian"));
        assert_eq!(tiny.as_str().parse::<ImageId>().unwrap(), tiny);
        assert!("snap-0123456789abcdef0".parse::<SnapshotId>().is_ok());
    }

    #[test]
    fn serde_validates() {
        let r: Result<InstanceId, _> = serde_json::from_str("\"i-zz\"");
        assert!(r.is_err());
        let ok: InstanceId = serde_json::from_str("\"i-0123456789abcdef0\"").unwrap();
        assert_eq!(ok.to_string(), "i-0123456789abcdef0");
    }
}
