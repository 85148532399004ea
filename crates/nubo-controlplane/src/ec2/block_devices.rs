//! RunInstances' block device mappings: the root disk's size, and data
//! volumes that the launch makes and attaches (`app::volumes::
//! create_for_launch`), each going with the instance unless its mapping
//! says `DeleteOnTermination=false`. What Nubo has no counterpart for
//! (instance-store `VirtualName`s, encryption, provisioned IOPS) is
//! refused, saying so, rather than ignored.

use super::error::{Ec2Error, Ec2Result};
use super::instances::ROOT_DEVICE;
use super::query::Params;
use crate::app::volumes::LaunchVolume;

/// Names a client may use for the root disk.
const ROOT_NAMES: &[&str] = &["/dev/sda1", "/dev/sda", "/dev/xvda", "/dev/vda", "/dev/nvme0n1"];

/// The volume types accepted: all are the same kind of Nubo volume, and
/// DescribeVolumes reports them as gp3.
const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "standard"];

/// What a launch's mappings ask for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mappings {
    /// The root disk's size in GiB, when a mapping sets it.
    pub root_gib: Option<u64>,
    /// Data volumes to make and attach, in the order given.
    pub volumes: Vec<LaunchVolume>,
}

/// Reads `BlockDeviceMapping.N.*`.
pub fn parse(p: &Params) -> Ec2Result<Mappings> {
    let mut out = Mappings::default();
    let mut seen = Vec::new();
    for m in p.structs("BlockDeviceMapping") {
        let device = m.str("DeviceName").unwrap_or(ROOT_DEVICE).to_string();
        let shown: String = device.chars().take(40).collect();
        if seen.contains(&device) {
            return Err(Ec2Error::invalid(format!("The device '{shown}' is mapped more than once")));
        }
        seen.push(device.clone());
        if m.str("VirtualName").is_some_and(|v| !v.is_empty()) {
            return Err(Ec2Error::bad(
                "UnsupportedOperation",
                format!("block device {shown}: instance-store volumes (VirtualName) do not exist here; map an Ebs volume instead"),
            ));
        }
        if m.str("NoDevice").is_some() {
            // Suppresses a device of the image's own mapping: images here
            // map only their root disk, which cannot be left out.
            if ROOT_NAMES.contains(&device.as_str()) {
                return Err(Ec2Error::invalid(format!("block device {shown}: the root device cannot be suppressed")));
            }
            continue;
        }
        if m.bool("Ebs.Encrypted")? == Some(true) || m.str("Ebs.KmsKeyId").is_some() {
            return Err(Ec2Error::bad(
                "UnsupportedOperation",
                format!("block device {shown}: volumes are not encrypted by a key of yours here; leave Encrypted out"),
            ));
        }
        if let Some(t) = m.str("Ebs.VolumeType") {
            if !VOLUME_TYPES.contains(&t) {
                return Err(Ec2Error::invalid(format!(
                    "block device {shown}: volume type '{}' is not offered; use gp3 (or gp2, standard: all the same here)",
                    t.chars().take(20).collect::<String>()
                )));
            }
        }
        if m.str("Ebs.Iops").is_some() || m.str("Ebs.Throughput").is_some() {
            return Err(Ec2Error::bad(
                "UnsupportedOperation",
                format!("block device {shown}: provisioned IOPS and throughput are not offered; leave Iops and Throughput out"),
            ));
        }
        let size = m.int_in("Ebs.VolumeSize", 1..=crate::validate::MAX_DISK_GIB as i64)?.map(|s| s as u64);
        if ROOT_NAMES.contains(&device.as_str()) {
            if m.str("Ebs.SnapshotId").is_some() {
                return Err(Ec2Error::bad(
                    "UnsupportedOperation",
                    format!("block device {shown}: the root disk comes from the image; make an image (CreateImage) to boot another disk"),
                ));
            }
            out.root_gib = size.or(out.root_gib);
            continue;
        }
        if !valid_device(&device) {
            return Err(Ec2Error::invalid(format!(
                "Invalid device name {shown}: use a name like /dev/sdf or /dev/xvdf"
            )));
        }
        let snapshot_id = m.str("Ebs.SnapshotId").filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(s) = &snapshot_id {
            if s.parse::<nubo_api::ids::SnapshotId>().is_err() {
                return Err(Ec2Error::bad(
                    "InvalidSnapshotID.Malformed",
                    format!(
                        "Invalid id: \"{}\" (expected snap- and 17 hex digits)",
                        s.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
        if size.is_none() && snapshot_id.is_none() {
            return Err(Ec2Error::missing(&format!(
                "BlockDeviceMapping Ebs.VolumeSize (or Ebs.SnapshotId) for {shown}"
            )));
        }
        out.volumes.push(LaunchVolume {
            size_gib: size,
            snapshot_id,
            device_name: device,
            // EC2's default for volumes a launch makes.
            delete_on_termination: m.bool("Ebs.DeleteOnTermination")?.unwrap_or(true),
        });
    }
    if out.volumes.len() > nubo_api::MAX_VOLUMES_PER_INSTANCE as usize {
        return Err(Ec2Error::invalid(format!(
            "an instance takes at most {} volumes; the launch maps {}",
            nubo_api::MAX_VOLUMES_PER_INSTANCE,
            out.volumes.len()
        )));
    }
    Ok(out)
}

/// `/dev/` and letters and digits, as AttachVolume takes them.
pub fn valid_device(device: &str) -> bool {
    device.len() <= 32
        && device.strip_prefix("/dev/").is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        let body: String = pairs.iter().map(|(k, v)| format!("{k}={}&", urlencode(v))).collect();
        Params::from_form(body.as_bytes())
    }

    fn urlencode(v: &str) -> String {
        v.replace('/', "%2F")
    }

    #[test]
    fn root_and_data_volumes() {
        let m = parse(&params(&[
            ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", "12"),
            ("BlockDeviceMapping.2.DeviceName", "/dev/sdf"),
            ("BlockDeviceMapping.2.Ebs.VolumeSize", "2"),
            ("BlockDeviceMapping.3.DeviceName", "/dev/sdg"),
            ("BlockDeviceMapping.3.Ebs.VolumeSize", "1"),
            ("BlockDeviceMapping.3.Ebs.DeleteOnTermination", "false"),
            ("BlockDeviceMapping.4.DeviceName", "/dev/sdh"),
            ("BlockDeviceMapping.4.NoDevice", ""),
        ]))
        .unwrap();
        assert_eq!(m.root_gib, Some(12));
        assert_eq!(m.volumes.len(), 2);
        assert_eq!((m.volumes[0].device_name.as_str(), m.volumes[0].delete_on_termination), ("/dev/sdf", true));
        assert_eq!((m.volumes[1].size_gib, m.volumes[1].delete_on_termination), (Some(1), false));
    }

    #[test]
    fn refusals_say_what_to_do() {
        let code = |pairs: &[(&str, &str)]| parse(&params(pairs)).unwrap_err().code;
        assert_eq!(code(&[("BlockDeviceMapping.1.DeviceName", "/dev/sdf")]), "MissingParameter");
        assert_eq!(
            code(&[
                ("BlockDeviceMapping.1.DeviceName", "/dev/sdb"),
                ("BlockDeviceMapping.1.VirtualName", "ephemeral0")
            ]),
            "UnsupportedOperation"
        );
        assert_eq!(
            code(&[("BlockDeviceMapping.1.DeviceName", "sdf"), ("BlockDeviceMapping.1.Ebs.VolumeSize", "1")]),
            "InvalidParameterValue"
        );
        assert_eq!(
            code(&[
                ("BlockDeviceMapping.1.DeviceName", "/dev/sdf"),
                ("BlockDeviceMapping.1.Ebs.SnapshotId", "snap-zz"),
            ]),
            "InvalidSnapshotID.Malformed"
        );
        assert_eq!(
            code(&[
                ("BlockDeviceMapping.1.DeviceName", "/dev/sdf"),
                ("BlockDeviceMapping.1.Ebs.VolumeSize", "1"),
                ("BlockDeviceMapping.1.Ebs.VolumeType", "io2"),
            ]),
            "InvalidParameterValue"
        );
    }
}
