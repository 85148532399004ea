//! EC2's DescribeInstanceAttribute and ModifyInstanceAttribute: one
//! attribute of one instance, read or changed. Every change is the
//! application layer's (`app::instance_attributes`): termination and
//! stop protection, the shutdown behaviour, the source/destination
//! check, the instance type and user-data of a stopped instance, and its
//! security groups. Attributes of a virtual machine Nubo does not have
//! (kernel, ramdisk, SR-IOV, ...) are answered with what Nubo's VMs are,
//! and refused as changes.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::instances::{block_devices, parse_ids, ROOT_DEVICE};
use super::query::Params;
use super::xml::El;
use super::Answer;
use crate::app;
use crate::auth::Caller;
use crate::authz::Access;
use crate::instance_batch::{Scope, Selection};
use crate::Ctx;
use base64::Engine;
use std::sync::Arc;

/// The attribute names EC2 documents (`InstanceAttributeName`).
const ATTRIBUTES: &[&str] = &[
    "instanceType",
    "kernel",
    "ramdisk",
    "userData",
    "disableApiTermination",
    "instanceInitiatedShutdownBehavior",
    "rootDeviceName",
    "blockDeviceMapping",
    "productCodes",
    "sourceDestCheck",
    "groupSet",
    "ebsOptimized",
    "sriovNetSupport",
    "enaSupport",
    "enclaveOptions",
    "disableApiStop",
];

fn unknown_attribute(name: &str) -> Ec2Error {
    Ec2Error::invalid(format!(
        "Value ({}) for parameter attribute is invalid. Unknown attribute; use one of: {}",
        name.chars().take(64).collect::<String>(),
        ATTRIBUTES.join(", ")
    ))
}

/// The one instance id a call names (required, well-formed).
fn instance_id(p: &Params) -> Ec2Result<String> {
    let id = p.required("InstanceId")?.to_string();
    Ok(parse_ids(&[id])?.remove(0).to_string())
}

/// `<name><value>v</value></name>`, EC2's AttributeValue.
fn value(name: &'static str, v: impl std::fmt::Display) -> El {
    El::new(name).field("value", v)
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = instance_id(p)?;
    let attribute = p.required("Attribute")?;
    if !ATTRIBUTES.contains(&attribute) {
        return Err(unknown_attribute(attribute));
    }
    let row = app::instances::load(ctx, caller, &id, Access::Read).await.in_domain(Domain::Instance)?;
    let ids = [row.id.clone()];
    let selection = Selection::new(Scope::Ids(&ids));
    let el = match attribute {
        "instanceType" => value("instanceType", app::instances::instance_type_of(&row)),
        "userData" => match row.user_data.as_deref() {
            Some(u) => value("userData", base64::engine::general_purpose::STANDARD.encode(u.as_bytes())),
            None => El::new("userData"),
        },
        "disableApiTermination" => value("disableApiTermination", row.termination_protection == 1),
        "disableApiStop" => value("disableApiStop", row.stop_protection == 1),
        "instanceInitiatedShutdownBehavior" => value("instanceInitiatedShutdownBehavior", &row.shutdown_behavior),
        "sourceDestCheck" => value("sourceDestCheck", row.source_dest_check == 1),
        "rootDeviceName" => value("rootDeviceName", ROOT_DEVICE),
        "groupSet" => {
            let groups = ctx.store.groups_of_selection(&selection).await?.remove(&row.id).unwrap_or_default();
            El::list(
                "groupSet",
                groups.into_iter().map(|(gid, name)| El::item().field("groupId", gid).field("groupName", name)),
            )
        }
        "blockDeviceMapping" => {
            let volumes = ctx.store.volumes_of_selection(&selection, true).await?.remove(&row.id).unwrap_or_default();
            El::list("blockDeviceMapping", block_devices(&volumes))
        }
        "productCodes" => El::new("productCodes"),
        "kernel" => El::new("kernel"),
        "ramdisk" => El::new("ramdisk"),
        // Nubo's VMs: virtio disks and NICs, no SR-IOV, no ENA, no enclaves.
        "ebsOptimized" => value("ebsOptimized", false),
        "enaSupport" => value("enaSupport", false),
        "sriovNetSupport" => El::new("sriovNetSupport"),
        _ => El::new("enclaveOptions").field("enabled", false),
    };
    Ok(vec![El::text("instanceId", &row.id), el])
}

/// One change ModifyInstanceAttribute asks for.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    InstanceType(String),
    UserData(Option<String>),
    Termination(bool),
    Stop(bool),
    Shutdown(String),
    SourceDestCheck(bool),
    Groups(Vec<String>),
    /// `BlockDeviceMapping.N`: device names and their DeleteOnTermination.
    DeleteOnTermination(Vec<(String, bool)>),
}

/// EC2's boolean words.
fn boolean(name: &str, v: &str) -> Ec2Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Ec2Error::invalid(format!(
            "Invalid value '{}' for {name}: expected true or false",
            v.chars().take(40).collect::<String>()
        ))),
    }
}

/// Base64 user-data, as RunInstances takes it (empty: none).
fn user_data(v: &str) -> Ec2Result<Option<String>> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| Ec2Error::invalid("Invalid BASE64 encoding of user data"))?;
    String::from_utf8(raw).map(Some).map_err(|_| {
        Ec2Error::invalid(
            "the user data is not UTF-8 text (compressed user data is not supported): send a script or #cloud-config",
        )
    })
}

/// The change of an attribute by name and (string) value.
fn change_of(attribute: &str, v: &str) -> Ec2Result<Change> {
    Ok(match attribute {
        "instanceType" => Change::InstanceType(v.to_string()),
        "userData" => Change::UserData(user_data(v)?),
        "disableApiTermination" => Change::Termination(boolean("DisableApiTermination", v)?),
        "disableApiStop" => Change::Stop(boolean("DisableApiStop", v)?),
        "instanceInitiatedShutdownBehavior" => Change::Shutdown(v.to_string()),
        "sourceDestCheck" => Change::SourceDestCheck(boolean("SourceDestCheck", v)?),
        "groupSet" => Change::Groups(v.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect()),
        other if ATTRIBUTES.contains(&other) => {
            return Err(Ec2Error::bad(
                "UnsupportedOperation",
                format!(
                    "the attribute {other} cannot be changed here: Nubo's VMs have no separate kernel or ramdisk, no SR-IOV, ENA or enclaves, and their block devices change with AttachVolume and DetachVolume"
                ),
            ))
        }
        other => return Err(unknown_attribute(other)),
    })
}

/// The one change a request asks for, in either of EC2's forms:
/// `Attribute` and `Value`, or `<Name>.Value` (and `GroupId.N`).
fn parse_change(p: &Params) -> Ec2Result<Change> {
    const STRUCTURED: &[(&str, &str)] = &[
        ("InstanceType.Value", "instanceType"),
        ("UserData.Value", "userData"),
        ("DisableApiTermination.Value", "disableApiTermination"),
        ("DisableApiStop.Value", "disableApiStop"),
        ("InstanceInitiatedShutdownBehavior.Value", "instanceInitiatedShutdownBehavior"),
        ("SourceDestCheck.Value", "sourceDestCheck"),
        ("Kernel.Value", "kernel"),
        ("Ramdisk.Value", "ramdisk"),
        ("SriovNetSupport.Value", "sriovNetSupport"),
        ("EbsOptimized.Value", "ebsOptimized"),
        ("EnaSupport.Value", "enaSupport"),
    ];
    let mut changes = Vec::new();
    for (param, attribute) in STRUCTURED {
        if let Some(v) = p.str(param) {
            changes.push(change_of(attribute, v)?);
        }
    }
    let groups = p.list("GroupId");
    if !groups.is_empty() {
        changes.push(Change::Groups(groups));
    }
    let mappings = p.structs("BlockDeviceMapping");
    if !mappings.is_empty() {
        let mut devices = Vec::new();
        for m in &mappings {
            let device = m.required("DeviceName")?.to_string();
            let Some(v) = m.str("Ebs.DeleteOnTermination") else {
                // Only an attachment's DeleteOnTermination can change:
                // volumes come and go with AttachVolume and DetachVolume.
                return Err(Ec2Error::missing("BlockDeviceMapping.N.Ebs.DeleteOnTermination"));
            };
            devices.push((device, boolean("DeleteOnTermination", v)?));
        }
        changes.push(Change::DeleteOnTermination(devices));
    }
    match (p.str("Attribute"), p.str("Value")) {
        (Some(a), Some(v)) => changes.push(change_of(a, v)?),
        (Some(a), None) if !ATTRIBUTES.contains(&a) => return Err(unknown_attribute(a)),
        (Some(_), None) => return Err(Ec2Error::missing("Value")),
        (None, Some(_)) => return Err(Ec2Error::missing("Attribute")),
        (None, None) => {}
    }
    match changes.len() {
        1 => Ok(changes.remove(0)),
        0 => Err(Ec2Error::missing("Attribute")),
        _ => Err(Ec2Error::bad(
            "InvalidParameterCombination",
            "Only one attribute can be modified at a time: send one request per attribute",
        )),
    }
}

pub async fn modify(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = instance_id(p)?;
    let change = parse_change(p)?;
    use app::instance_attributes as attrs;
    let done = match &change {
        Change::InstanceType(t) => attrs::set_instance_type(ctx, caller, &id, t).await,
        Change::UserData(u) => attrs::set_user_data(ctx, caller, &id, u.as_deref()).await,
        Change::Termination(on) => attrs::protect(ctx, caller, &id, Some(*on), None).await,
        Change::Stop(on) => attrs::protect(ctx, caller, &id, None, Some(*on)).await,
        Change::Shutdown(b) => attrs::set_shutdown_behavior(ctx, caller, &id, b).await,
        Change::SourceDestCheck(on) => attrs::set_source_dest_check(ctx, caller, &id, *on).await,
        Change::Groups(g) => attrs::set_security_groups(ctx, caller, &id, g).await,
        Change::DeleteOnTermination(devices) => {
            set_delete_on_termination(ctx, caller, &id, devices).await?;
            Ok(())
        }
    };
    done.in_domain(Domain::Instance)?;
    Ok(vec![El::text("return", "true")])
}

/// Which attached volumes go with the instance, by the device names
/// DescribeInstances shows (the root disk always goes with it).
async fn set_delete_on_termination(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    instance: &str,
    devices: &[(String, bool)],
) -> Ec2Result<()> {
    let row =
        app::instances::load(ctx, caller, instance, crate::authz::Access::Write).await.in_domain(Domain::Instance)?;
    let volumes = ctx.store.volumes_of_instance(&row.id).await?;
    let mut chosen = Vec::new();
    for (device, delete) in devices {
        if device == super::instances::ROOT_DEVICE {
            if !delete {
                return Err(Ec2Error::bad(
                    "UnsupportedOperation",
                    "the root disk is part of the instance and always goes with it: make an image (CreateImage) or a volume from a snapshot to keep its data",
                ));
            }
            continue;
        }
        let v = volumes.iter().find(|v| super::volumes::device_of(v) == *device).ok_or_else(|| {
            Ec2Error::invalid(format!(
                "Instance {} has no device {}: see its blockDeviceMapping in DescribeInstances",
                row.id,
                device.chars().take(40).collect::<String>()
            ))
        })?;
        chosen.push((v.id.clone(), *delete));
    }
    for (volume, delete) in chosen {
        app::volumes::set_delete_on_termination(ctx, caller, &volume, delete).await.in_domain(Domain::Volume)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_query_forms_name_one_change() {
        let p = Params::from_form(b"InstanceId=i-1&InstanceType.Value=t3.small");
        assert_eq!(parse_change(&p).unwrap(), Change::InstanceType("t3.small".into()));
        let p = Params::from_form(b"Attribute=disableApiTermination&Value=true");
        assert_eq!(parse_change(&p).unwrap(), Change::Termination(true));
        let p = Params::from_form(b"GroupId.1=sg-a&GroupId.2=sg-b");
        assert_eq!(parse_change(&p).unwrap(), Change::Groups(vec!["sg-a".into(), "sg-b".into()]));
        let p = Params::from_form(b"UserData.Value=aGk%3D");
        assert_eq!(parse_change(&p).unwrap(), Change::UserData(Some("hi".into())));
        let two = Params::from_form(b"DisableApiStop.Value=true&SourceDestCheck.Value=false");
        assert_eq!(parse_change(&two).unwrap_err().code, "InvalidParameterCombination");
        assert_eq!(parse_change(&Params::from_form(b"")).unwrap_err().code, "MissingParameter");
        let bad = Params::from_form(b"Attribute=colour&Value=red");
        assert_eq!(parse_change(&bad).unwrap_err().code, "InvalidParameterValue");
        let kernel = Params::from_form(b"Kernel.Value=aki-1");
        assert_eq!(parse_change(&kernel).unwrap_err().code, "UnsupportedOperation");
        let dot = Params::from_form(
            b"BlockDeviceMapping.1.DeviceName=%2Fdev%2Fsdf&BlockDeviceMapping.1.Ebs.DeleteOnTermination=true",
        );
        assert_eq!(parse_change(&dot).unwrap(), Change::DeleteOnTermination(vec![("/dev/sdf".into(), true)]));
        let word = Params::from_form(b"DisableApiTermination.Value=yes");
        assert_eq!(parse_change(&word).unwrap_err().code, "InvalidParameterValue");
    }
}
