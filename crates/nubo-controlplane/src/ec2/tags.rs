//! EC2 tags: CreateTags, DeleteTags and DescribeTags on instances,
//! volumes, images, snapshots, security groups, VPCs and subnets. Each
//! resource is loaded through the application layer's check
//! (`app::tags::target`, the one `nubo tag` goes through), so a project can
//! only tag (and see the tags of) its own resources, and both APIs see
//! the same tags.

use super::error::{Domain, Ec2Error, Ec2Result, InDomain};
use super::query::{self, Page, Params};
use super::xml::El;
use super::{project_of, Answer};
use crate::auth::Caller;
use crate::authz::Access;
use crate::Ctx;
use std::sync::Arc;

/// Checks the caller may change `id`; returns (id, type, project). The
/// check is the native API's (`app::tags::target`); before it, the ids
/// EC2 names by their own codes (a malformed instance id, an unknown VPC,
/// subnet or group) are looked at as the EC2 API always did.
async fn writable(ctx: &Ctx, caller: &Caller, id: &str) -> Ec2Result<(String, &'static str, String)> {
    let kind = crate::tags::resource_type_of(id).ok_or_else(|| {
        Ec2Error::bad(
            "InvalidID",
            format!(
                "The ID '{}' is not valid: tags go on i-, vol-, ami-, snap-, sg-, vpc- and subnet- resources",
                id.chars().take(64).collect::<String>()
            ),
        )
    })?;
    let domain = match kind {
        "instance" => {
            super::instances::parse_ids(&[id.to_string()])?;
            Domain::Instance
        }
        "volume" | "snapshot" => Domain::Volume,
        "vpc" => {
            super::vpcs::load_vpc(ctx, caller, id, Access::Write).await?;
            Domain::Other
        }
        "subnet" => {
            super::vpcs::load_subnet(ctx, caller, id, Access::Write).await?;
            Domain::Other
        }
        "security-group" => {
            super::security_groups::load(ctx, caller, id, Access::Write).await?;
            Domain::Other
        }
        _ => Domain::Other,
    };
    let t = crate::app::tags::target(ctx, caller, id, Access::Write).await.in_domain(domain)?;
    Ok((t.id, t.kind, t.project))
}

fn resources(p: &Params) -> Ec2Result<Vec<String>> {
    let ids = p.list("ResourceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("ResourceId"));
    }
    Ok(ids)
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let ids = resources(p)?;
    let tags: Vec<(String, String)> = p.tags("Tag")?.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
    if tags.is_empty() {
        return Err(Ec2Error::missing("Tag"));
    }
    for (k, v) in &tags {
        crate::validate::tag(k, v).in_domain(Domain::Other)?;
    }
    let mut targets = Vec::new();
    for id in &ids {
        targets.push(writable(ctx, caller, id).await?);
    }
    ctx.store.set_tags(&targets, &tags).await.map_err(|e| match e {
        crate::tags::TagError::TooMany { .. } => Ec2Error::bad("TagLimitExceeded", e.to_string()),
        crate::tags::TagError::Db(e) => e.into(),
    })?;
    Ok(vec![El::text("return", "true")])
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let ids = resources(p)?;
    let tags = p.tags("Tag")?;
    for id in &ids {
        writable(ctx, caller, id).await?;
    }
    ctx.store.delete_tags(&ids, &tags).await?;
    Ok(vec![El::text("return", "true")])
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let filters = p.filters()?;
    query::check_filters(&filters, &["resource-id", "resource-type", "key", "value"], false)?;
    let page = Page::parse(p, 5, 1000)?;
    let rows: Vec<_> = ctx
        .store
        .tags(Some(&project))
        .await?
        .into_iter()
        .filter(|t| {
            query::matches(&filters, |f| match f {
                "resource-id" => vec![t.resource_id.clone()],
                "resource-type" => vec![t.resource_type.clone()],
                "key" => vec![t.key.clone()],
                _ => vec![t.value.clone()],
            })
        })
        .collect();
    let (rows, next) = page.apply(rows);
    let mut out = vec![El::list(
        "tagSet",
        rows.into_iter().map(|t| {
            El::item()
                .field("resourceId", t.resource_id)
                .field("resourceType", t.resource_type)
                .field("key", t.key)
                .field("value", t.value)
        }),
    )];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}
