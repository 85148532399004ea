//! Launch templates: a project's named launch parameters in numbered,
//! immutable versions with one default. Creating, listing, versioning,
//! choosing the default, deleting; resolving a reference
//! (`NAME[:VERSION|$Default|$Latest]` or `lt-...`) to a version; and
//! launching from one with fields overridden. REST, EC2 (its
//! LaunchTemplate actions and RunInstances' `LaunchTemplate`) and
//! instance groups all come through here.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::launch_templates::{NewTemplate, TemplateRow, VersionRow};
use crate::Ctx;
use nubo_api::launch_templates::{
    LaunchTemplate, LaunchTemplateCreate, LaunchTemplateData, LaunchTemplateLaunch, LaunchTemplateVersion,
    LaunchTemplateVersionCreate,
};
use nubo_api::params::InstanceCreate;
use nubo_api::views::Instance;
use std::sync::Arc;

/// The `kind` of a missing template in `AppError::NotFound`.
pub const KIND: &str = "launch template";
/// The `kind` of a missing version.
pub const VERSION_KIND: &str = "launch template version";
/// Most versions one template keeps (as EC2's limit).
pub const MAX_VERSIONS: usize = 10_000;
/// Longest version description, as EC2.
const MAX_DESCRIPTION: usize = 255;

/// A version as a launch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Number(i64),
    Latest,
    Default,
}

impl VersionRef {
    pub fn parse(s: &str) -> AppResult<Self> {
        match s {
            "$Latest" => Ok(Self::Latest),
            "$Default" => Ok(Self::Default),
            n => match n.parse::<i64>() {
                Ok(v) if v >= 1 => Ok(Self::Number(v)),
                _ => Err(AppError::BadRequest(format!(
                    "launch template version '{}' is not a version: give a number (1, 2, ...), $Latest or $Default",
                    n.chars().take(40).collect::<String>()
                ))),
            },
        }
    }
}

/// `NAME[:VERSION]` (or `lt-...[:VERSION]`) split; no version: `$Default`.
pub fn split_reference(reference: &str) -> AppResult<(&str, VersionRef)> {
    match reference.rsplit_once(':') {
        Some((t, v)) => Ok((t, VersionRef::parse(v)?)),
        None => Ok((reference, VersionRef::Default)),
    }
}

/// Is this a template id (`lt-` and 17 hex digits)?
pub fn is_id(s: &str) -> bool {
    s.strip_prefix("lt-").is_some_and(|h| h.len() == 17 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A template name as EC2 allows them: 3-128 of letters, digits, `(`, `)`, `.`, `-`, `/`, `_`.
pub fn check_name(name: &str) -> AppResult<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "().-/_".contains(c));
    if !(3..=128).contains(&name.len()) || !ok_chars {
        return Err(AppError::BadRequest(format!(
            "launch template name '{}' is not valid: use 3-128 letters, digits, '(', ')', '.', '-', '/' or '_'",
            name.chars().take(130).collect::<String>()
        )));
    }
    if is_id(name) {
        return Err(AppError::BadRequest(format!(
            "launch template name '{name}' looks like a template id (lt-...): choose another name"
        )));
    }
    Ok(())
}

/// Loads the template `reference` names (name in the caller's project, or id).
pub async fn load(ctx: &Ctx, caller: &Caller, reference: &str, access: Access) -> AppResult<TemplateRow> {
    let not_found = || AppError::NotFound { kind: KIND, id: reference.chars().take(128).collect() };
    let row = if reference.starts_with("lt-") {
        ctx.store.launch_template(reference).await?
    } else {
        let project = authz::caller_project(caller)?;
        ctx.store.launch_template_by_name(&project, reference).await?
    }
    .ok_or_else(not_found)?;
    authz::check(caller, access, Some(&row.project_id), KIND, reference)?;
    Ok(row)
}

/// The version `v` of `t`.
pub async fn version(ctx: &Ctx, t: &TemplateRow, v: VersionRef) -> AppResult<VersionRow> {
    let number = match v {
        VersionRef::Number(n) => n,
        VersionRef::Default => t.default_version,
        VersionRef::Latest => latest(ctx, t).await?,
    };
    ctx.store
        .launch_template_version(&t.id, number)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: VERSION_KIND, id: format!("{} version {number}", t.name) })
}

/// The highest version the template still has.
async fn latest(ctx: &Ctx, t: &TemplateRow) -> AppResult<i64> {
    Ok(ctx.store.launch_template_versions(&t.id).await?.first().map(|v| v.version).unwrap_or(t.default_version))
}

pub fn version_view(t: &TemplateRow, v: &VersionRow) -> AppResult<LaunchTemplateVersion> {
    Ok(LaunchTemplateVersion {
        version: v.version as u64,
        description: v.description.clone(),
        default: v.version == t.default_version,
        data: v.data().ok_or_else(|| {
            AppError::internal(format!("launch template {} version {} does not parse", t.id, v.version))
        })?,
        created_by: v.created_by.clone(),
        created_at_ms: v.created_at_ms,
    })
}

/// The template's view; `with_versions` adds every version, newest first.
pub async fn view(ctx: &Ctx, t: &TemplateRow, with_versions: bool) -> AppResult<LaunchTemplate> {
    let versions = ctx.store.launch_template_versions(&t.id).await?;
    let latest = versions.first().map(|v| v.version).unwrap_or(t.default_version);
    let versions = if with_versions {
        versions.iter().map(|v| version_view(t, v)).collect::<AppResult<Vec<_>>>()?
    } else {
        Vec::new()
    };
    Ok(LaunchTemplate {
        id: t.id.clone(),
        name: t.name.clone(),
        default_version: t.default_version as u64,
        latest_version: latest as u64,
        created_by: t.created_by.clone(),
        created_at_ms: t.created_at_ms,
        tags: ctx.store.tags_of(&t.id).await?,
        versions,
    })
}

/// Checks a version's data: sizes, tags, user data, and that what it
/// names (image, key pair, security groups, networks) is the project's.
pub async fn check_data(ctx: &Ctx, project: &str, d: &LaunchTemplateData) -> AppResult<()> {
    if let Some(t) = &d.instance_type {
        if d.vcpus.is_some() || d.memory_mib.is_some() {
            return Err(AppError::BadRequest(
                "give an instance type or vCPUs and memory, not both: the type decides the size".into(),
            ));
        }
        if ctx.config.instance_types.get(t).is_none() {
            return Err(AppError::BadRequest(format!(
                "instance type '{}' is unknown: see `aws ec2 describe-instance-types` (e.g. t3.small)",
                t.chars().take(40).collect::<String>()
            )));
        }
    }
    let bad = |what: &str| AppError::BadRequest(format!("the template's {what}"));
    if d.vcpus.is_some_and(|v| v == 0 || v > crate::validate::MAX_VCPUS) {
        return Err(bad(&format!("vcpus must be 1 to {}", crate::validate::MAX_VCPUS)));
    }
    if d.memory_mib.is_some_and(|m| !(crate::validate::MIN_MEMORY_MIB..=crate::validate::MAX_MEMORY_MIB).contains(&m)) {
        return Err(bad(&format!(
            "memory_mib must be {} to {}",
            crate::validate::MIN_MEMORY_MIB,
            crate::validate::MAX_MEMORY_MIB
        )));
    }
    if d.disk_gib.is_some_and(|g| g == 0 || g > crate::validate::MAX_DISK_GIB) {
        return Err(bad(&format!("disk_gib must be 1 to {}", crate::validate::MAX_DISK_GIB)));
    }
    if d.ports.len() > crate::validate::MAX_PORTS {
        return Err(bad(&format!("ports: at most {} may be forwarded", crate::validate::MAX_PORTS)));
    }
    if d.user_data.as_ref().is_some_and(|u| u.len() > nubo_api::MAX_USER_DATA_BYTES) {
        return Err(bad("user data is larger than 64 KiB"));
    }
    if d.tags.len() > crate::tags::MAX_TAGS_PER_RESOURCE as usize {
        return Err(bad(&format!("tags: at most {} are allowed", crate::tags::MAX_TAGS_PER_RESOURCE)));
    }
    for (k, v) in &d.tags {
        crate::validate::tag(k, v)?;
    }
    if let Some(t) = d.metadata.as_ref().and_then(|m| m.http_tokens.as_deref()) {
        if !matches!(t, "optional" | "required") {
            return Err(bad("metadata http_tokens must be 'optional' or 'required'"));
        }
    }
    if let Some(image) = &d.image {
        if ctx.store.resolve_image(Some(project), image).await?.is_none() {
            return Err(AppError::BadRequest(format!(
                "image '{}' does not exist (see `nubo image list`)",
                image.chars().take(80).collect::<String>()
            )));
        }
    }
    if let Some(k) = &d.key_name {
        if ctx.store.keypair(project, k).await?.is_none() {
            return Err(AppError::BadRequest(format!(
                "key pair '{}' does not exist in this project (see `nubo keypair list`)",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    for g in &d.security_groups {
        let found = match ctx.store.security_group(g).await? {
            Some(row) if row.project_id == project => true,
            _ => ctx.store.security_group_by_name(project, g).await?.is_some(),
        };
        if !found {
            return Err(AppError::BadRequest(format!(
                "security group '{}' does not exist in this project (see `nubo security-group list`)",
                g.chars().take(64).collect::<String>()
            )));
        }
    }
    for n in d.networks.iter().filter(|n| *n != crate::networks::USER_MODE) {
        if ctx.store.network_by_ref(project, n).await?.is_none() {
            return Err(AppError::BadRequest(format!(
                "network '{}' does not exist in this project (see `nubo network list`)",
                n.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

fn check_description(d: Option<&str>) -> AppResult<()> {
    if d.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        return Err(AppError::BadRequest(format!("a version description is at most {MAX_DESCRIPTION} characters")));
    }
    Ok(())
}

/// Creates a template with its version 1 (the default).
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, c: &LaunchTemplateCreate) -> AppResult<LaunchTemplate> {
    let project = authz::creation_project(caller)?;
    check_name(&c.name)?;
    check_description(c.description.as_deref())?;
    check_data(ctx, &project, &c.data).await?;
    if c.tags.len() > crate::tags::MAX_TAGS_PER_RESOURCE as usize {
        return Err(AppError::BadRequest(format!(
            "a template has at most {} tags",
            crate::tags::MAX_TAGS_PER_RESOURCE
        )));
    }
    for (k, v) in &c.tags {
        crate::validate::tag(k, v)?;
    }
    let id = format!("lt-{:017x}", rand::random::<u64>() & 0x000f_ffff_ffff_ffff_u64);
    let tags: Vec<(String, String)> = c.tags.clone().into_iter().collect();
    let new = NewTemplate {
        id: &id,
        project: &project,
        name: &c.name,
        created_by: &caller.user_name,
        description: c.description.as_deref(),
        data: &c.data,
        tags: &tags,
    };
    if !ctx.store.insert_launch_template(&new).await? {
        return Err(AppError::Conflict(format!(
            "the project already has a launch template named '{}': add a version to it (`nubo template version create {}`) or choose another name",
            c.name, c.name
        )));
    }
    tracing::info!(template = %id, name = %c.name, "launch template created");
    let row = ctx.store.launch_template(&id).await?.ok_or_else(|| AppError::internal("launch template vanished"))?;
    view(ctx, &row, true).await
}

/// The templates the caller may see (without their versions).
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<LaunchTemplate>> {
    let Some(project) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for t in ctx.store.launch_templates(project.as_deref()).await? {
        out.push(view(ctx, &t, false).await?);
    }
    Ok(out)
}

/// A template with every version.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, reference: &str) -> AppResult<LaunchTemplate> {
    let t = load(ctx, caller, reference, Access::Read).await?;
    view(ctx, &t, true).await
}

/// Deletes a template and all its versions; its view as it was. Groups
/// that launch from it fail their next launch (and say why).
pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, reference: &str) -> AppResult<LaunchTemplate> {
    let t = load(ctx, caller, reference, Access::Write).await?;
    let before = view(ctx, &t, false).await?;
    ctx.store.delete_launch_template(&t.id).await?;
    tracing::info!(template = %t.id, "launch template deleted");
    Ok(before)
}

/// Adds a version (the template's latest; the default stays): `data`
/// alone, or over `source_version`'s data.
pub async fn create_version(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    reference: &str,
    c: &LaunchTemplateVersionCreate,
) -> AppResult<(TemplateRow, LaunchTemplateVersion)> {
    let t = load(ctx, caller, reference, Access::Write).await?;
    check_description(c.description.as_deref())?;
    let data = match &c.source_version {
        Some(s) => {
            let source = version(ctx, &t, VersionRef::parse(s)?).await?;
            version_view(&t, &source)?.data.overridden_by(&c.data)
        }
        None => c.data.clone(),
    };
    check_data(ctx, &t.project_id, &data).await?;
    if ctx.store.launch_template_versions(&t.id).await?.len() >= MAX_VERSIONS {
        return Err(AppError::QuotaExceeded(format!(
            "launch template {} has {MAX_VERSIONS} versions, the most one may have: delete old versions first",
            t.name
        )));
    }
    let number = ctx
        .store
        .add_launch_template_version(&t.id, c.description.as_deref(), &data, &caller.user_name)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: KIND, id: reference.chars().take(128).collect() })?;
    let t = load(ctx, caller, &t.id, Access::Read).await?;
    let v = version(ctx, &t, VersionRef::Number(number)).await?;
    let view = version_view(&t, &v)?;
    Ok((t, view))
}

/// Makes a version (a number, or `$Latest`) the default.
pub async fn set_default(ctx: &Arc<Ctx>, caller: &Caller, reference: &str, v: &str) -> AppResult<LaunchTemplate> {
    let t = load(ctx, caller, reference, Access::Write).await?;
    let wanted = match VersionRef::parse(v)? {
        VersionRef::Default => {
            return Err(AppError::BadRequest("the default version cannot be set to $Default: give a number".into()))
        }
        other => other,
    };
    let number = version(ctx, &t, wanted).await?.version;
    if !ctx.store.set_launch_template_default(&t.id, number).await? {
        return Err(AppError::NotFound { kind: VERSION_KIND, id: format!("{} version {number}", t.name) });
    }
    let t = load(ctx, caller, &t.id, Access::Read).await?;
    view(ctx, &t, false).await
}

/// Why a version was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionDeleteError {
    NotFound,
    IsDefault,
}

/// Deletes versions (never the default: make another the default first).
pub async fn delete_versions(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    reference: &str,
    versions: &[i64],
) -> AppResult<(TemplateRow, Vec<(i64, Result<(), VersionDeleteError>)>)> {
    let t = load(ctx, caller, reference, Access::Write).await?;
    let mut out = Vec::new();
    for &v in versions {
        let outcome = if v == t.default_version {
            Err(VersionDeleteError::IsDefault)
        } else if ctx.store.delete_launch_template_version(&t.id, v).await? {
            Ok(())
        } else {
            Err(VersionDeleteError::NotFound)
        };
        out.push((v, outcome));
    }
    Ok((t, out))
}

/// The template and version a launch reference (`NAME[:VERSION]`) names, with its data.
pub async fn resolve(
    ctx: &Ctx,
    caller: &Caller,
    reference: &str,
) -> AppResult<(TemplateRow, VersionRow, LaunchTemplateData)> {
    let (name, v) = split_reference(reference)?;
    let t = load(ctx, caller, name, Access::Read).await?;
    let row = version(ctx, &t, v).await?;
    let data = version_view(&t, &row)?.data;
    Ok((t, row, data))
}

/// What a launch from `data` asks for, in REST's terms, and its instance
/// type when it has one. Without a size: 1 vCPU and 256 MiB (or the
/// image's minimum); without a disk size: the image's minimum.
pub async fn instance_create(
    ctx: &Ctx,
    project: &str,
    d: &LaunchTemplateData,
    name: Option<String>,
) -> AppResult<(InstanceCreate, Option<String>)> {
    let image = d.image.clone().ok_or_else(|| {
        AppError::BadRequest(
            "the launch template names no image: give one at launch (--image), or add a version with one".into(),
        )
    })?;
    let row = ctx.store.resolve_image(Some(project), &image).await?;
    let (min_disk, min_memory) = row.map(|i| (i.min_disk_gib as u64, i.min_memory_mib as u64)).unwrap_or((1, 64));
    let (vcpus, memory_mib) = match &d.instance_type {
        Some(t) => {
            let it = ctx.config.instance_types.get(t).ok_or_else(|| {
                AppError::BadRequest(format!(
                    "instance type '{}' is unknown: see `aws ec2 describe-instance-types`",
                    t.chars().take(40).collect::<String>()
                ))
            })?;
            (it.vcpus, it.memory_mib)
        }
        None => (d.vcpus.unwrap_or(1), d.memory_mib.unwrap_or_else(|| 256.max(min_memory))),
    };
    let create = InstanceCreate {
        image,
        vcpus,
        memory_mib,
        disk_gib: d.disk_gib.unwrap_or_else(|| min_disk.max(1)),
        name,
        user_data: d.user_data.clone(),
        ports: d.ports.clone(),
        key_name: d.key_name.clone(),
        recipe: None,
        metadata: d.metadata.clone(),
        tags: d.tags.clone(),
        networks: d.networks.clone(),
        security_groups: d.security_groups.clone(),
        cdrom: None,
        boot: None,
        hardware: Default::default(),
    };
    Ok((create, d.instance_type.clone()))
}

/// Launches one instance from a template's version, `l.overrides`
/// replacing its fields; the instance's view with its life events.
pub async fn launch(ctx: &Arc<Ctx>, caller: &Caller, reference: &str, l: &LaunchTemplateLaunch) -> AppResult<Instance> {
    let project = authz::creation_project(caller)?;
    let reference = match &l.version {
        Some(v) => format!("{}:{v}", split_reference(reference)?.0),
        None => reference.to_string(),
    };
    let (_, _, data) = resolve(ctx, caller, &reference).await?;
    let data = data.overridden_by(&l.overrides);
    let (create, instance_type) = instance_create(ctx, &project, &data, l.name.clone()).await?;
    let record = crate::launch::LaunchRecord { instance_type: instance_type.as_deref(), ..Default::default() };
    let row = super::instances::launch(ctx, caller, &create, record).await?;
    super::instances::view(ctx, row, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_template_and_version() {
        assert_eq!(split_reference("web").unwrap(), ("web", VersionRef::Default));
        assert_eq!(split_reference("web:3").unwrap(), ("web", VersionRef::Number(3)));
        assert_eq!(split_reference("lt-0123456789abcdef0:$Latest").unwrap().1, VersionRef::Latest);
        assert!(split_reference("web:0").is_err());
        assert!(split_reference("web:x").is_err());
        assert!(is_id("lt-0123456789abcdef0"));
        assert!(!is_id("lt-0123"));
        assert!(check_name("ab").is_err());
        assert!(check_name("web/app_(v1).x-y").is_ok());
        assert!(check_name("web app").is_err());
        assert!(check_name("lt-0123456789abcdef0").is_err());
    }
}
