//! EC2 image making: CreateImage (an image of an instance's root disk,
//! through `app::images::snapshot_instance`, so the `ami-...` is the same
//! image the REST API and the CLI show, `pending` in DescribeImages until
//! it is `available`) and DeregisterImage (`app::images::delete`).
//! DescribeImages is in `catalog`.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::Params;
use super::xml::El;
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::authz::Access;
use crate::Ctx;
use nubo_api::ids::ImageId;
use nubo_api::params::InstanceSnapshot;
use std::sync::Arc;

fn parse_image_id(id: &str) -> Ec2Result<ImageId> {
    id.parse().map_err(|_| {
        Ec2Error::bad(
            "InvalidAMIID.Malformed",
            format!("Invalid id: \"{}\" (expected ami- and 17 hex digits)", id.chars().take(64).collect::<String>()),
        )
    })
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let instance = super::instances::parse_ids(&[p.required("InstanceId")?.to_string()])?.remove(0);
    let name = p.required("Name")?.to_string();
    crate::app::images::check_image_name(&name)
        .map_err(|e| Ec2Error::bad("InvalidAMIName.Malformed", e.to_string()))?;
    // Nubo never reboots an instance to image it (the guest's file systems
    // are frozen for the copy instead), so NoReboot is only checked.
    p.bool("NoReboot")?;
    let description = p.str("Description").filter(|d| !d.is_empty()).map(str::to_string);
    let mut tags = Vec::new();
    for spec in p.structs("TagSpecification") {
        match spec.str("ResourceType") {
            Some("image") => {
                for (k, v) in spec.tags("Tag")? {
                    let v = v.unwrap_or_default();
                    crate::validate::tag(&k, &v).in_domain(Domain::Other)?;
                    tags.push((k, v));
                }
            }
            // EC2 also tags the EBS snapshots behind a new image; a Nubo
            // image is one file in the registry, with no snapshot to tag.
            Some("snapshot") => {}
            _ => {
                return Err(Ec2Error::invalid(
                    "CreateImage takes TagSpecifications of ResourceType 'image' or 'snapshot' only",
                ))
            }
        }
    }
    // The instance first, so that an unknown one is named as such.
    crate::app::instances::load(ctx, caller, instance.as_str(), Access::Write).await.in_domain(Domain::Instance)?;
    let taken = ctx
        .store
        .images_visible(Some(&project))
        .await?
        .into_iter()
        .any(|i| i.project_id.as_deref() == Some(project.as_str()) && i.name == name);
    if taken {
        return Err(Ec2Error::bad(
            "InvalidAMIName.Duplicate",
            format!("AMI name {name} is already in use by an image of this project: pick another name"),
        ));
    }
    let body = InstanceSnapshot { name, description };
    let image = crate::app::images::snapshot_instance(ctx, caller, instance.as_str(), &body)
        .await
        .in_domain(Domain::Instance)?;
    let id = image.id.to_string();
    if !tags.is_empty() {
        ctx.store.set_tags(&[(id.clone(), "image", project)], &tags).await.map_err(|e| match e {
            crate::tags::TagError::TooMany { .. } => Ec2Error::bad("TagLimitExceeded", e.to_string()),
            crate::tags::TagError::Db(e) => e.into(),
        })?;
    }
    Ok(vec![El::text("imageId", id)])
}

pub async fn deregister(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let id = parse_image_id(p.required("ImageId")?)?;
    crate::app::images::delete(ctx, caller, id.as_str()).await.in_domain(Domain::Other)?;
    ctx.store.delete_tags(&[id.to_string()], &[]).await?;
    Ok(vec![El::text("return", "true")])
}
