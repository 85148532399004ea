//! EC2 launch templates over Nubo's (`app::launch_templates`):
//! CreateLaunchTemplate, DescribeLaunchTemplates, ModifyLaunchTemplate
//! (its default version), DeleteLaunchTemplate,
//! CreateLaunchTemplateVersion, DescribeLaunchTemplateVersions,
//! DeleteLaunchTemplateVersions, and RunInstances' `LaunchTemplate`
//! (`run_params`: the template's data as RunInstances parameters under the
//! request's own). Translation only: EC2's LaunchTemplateData to and from
//! `LaunchTemplateData`, and app errors to EC2's codes.

use super::error::{Domain, Ec2Error, Ec2Result};
use super::query::{self, Params};
use super::xml::{self, El};
use super::{project_of, Answer};
use crate::app::launch_templates::{self as app, VersionDeleteError, VersionRef};
use crate::auth::Caller;
use crate::authz::Access;
use crate::error::AppError;
use crate::launch_templates::TemplateRow;
use crate::Ctx;
use base64::Engine;
use nubo_api::launch_templates::{
    LaunchTemplate, LaunchTemplateCreate, LaunchTemplateData, LaunchTemplateVersion, LaunchTemplateVersionCreate,
};
use nubo_api::params::MetadataOptions;
use std::sync::Arc;

/// The root device a template's disk size is given for.
const ROOT_DEVICE: &str = "/dev/sda1";
const ROOT_DEVICES: [&str; 5] = ["/dev/sda1", "/dev/sda", "/dev/xvda", "/dev/vda", "/dev/nvme0n1"];

/// The members of `p` under `prefix` (`LaunchTemplateData.`), under their own names.
fn sub(p: &Params, prefix: &str) -> Params {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in p.iter() {
        if let Some(member) = k.strip_prefix(prefix) {
            form.append_pair(member, v);
        }
    }
    Params::from_form(form.finish().as_bytes())
}

fn has(p: &Params, name: &str) -> bool {
    let nested = format!("{name}.");
    p.iter().any(|(k, _)| k == name || k.starts_with(&nested))
}

/// The principal EC2 names as `createdBy`.
fn arn(project: &str, user: &str) -> String {
    format!("arn:aws:iam::{project}:user/{user}")
}

/// How EC2 names a template that is not there, by what the request gave.
fn not_found(by_id: bool, reference: &str) -> Ec2Error {
    let r: String = reference.chars().take(128).collect();
    if by_id {
        Ec2Error::bad(
            "InvalidLaunchTemplateId.NotFound",
            format!("The specified launch template, with template ID {r}, does not exist."),
        )
    } else {
        Ec2Error::bad(
            "InvalidLaunchTemplateName.NotFoundException",
            format!("The specified launch template, with template name {r}, does not exist."),
        )
    }
}

fn version_not_found(what: &str) -> Ec2Error {
    Ec2Error::bad(
        "InvalidLaunchTemplateId.VersionNotFound",
        format!("The specified launch template version does not exist: {}", what.chars().take(160).collect::<String>()),
    )
}

/// An app refusal about the template `reference` (given by id or name).
fn refusal(e: AppError, by_id: bool, reference: &str) -> Ec2Error {
    match e {
        AppError::NotFound { kind: app::KIND, .. } => not_found(by_id, reference),
        AppError::NotFound { kind: app::VERSION_KIND, id } => version_not_found(&id),
        AppError::BadRequest(m) if m.starts_with("launch template version") => {
            Ec2Error::bad("InvalidLaunchTemplateId.VersionNotFound", m)
        }
        e => Ec2Error::from_app(e, Domain::Other),
    }
}

/// The template a request names by `{prefix}LaunchTemplateId` or
/// `{prefix}LaunchTemplateName` (exactly one), loaded for `access`; and
/// whether it was named by id.
async fn target(ctx: &Ctx, caller: &Caller, p: &Params, access: Access) -> Ec2Result<(TemplateRow, bool)> {
    let id = p.str("LaunchTemplateId").filter(|s| !s.is_empty());
    let name = p.str("LaunchTemplateName").filter(|s| !s.is_empty());
    let (reference, by_id) = match (id, name) {
        (Some(_), Some(_)) => {
            return Err(Ec2Error::bad(
                "InvalidParameterCombination",
                "Give either LaunchTemplateId or LaunchTemplateName, not both",
            ))
        }
        (None, None) => return Err(Ec2Error::missing("LaunchTemplateId or LaunchTemplateName")),
        (Some(id), None) => {
            if !app::is_id(id) {
                return Err(Ec2Error::bad(
                    "InvalidLaunchTemplateId.Malformed",
                    format!(
                        "The launch template ID '{}' is malformed: it is lt- and 17 hexadecimal digits",
                        id.chars().take(64).collect::<String>()
                    ),
                ));
            }
            (id, true)
        }
        (None, Some(name)) => {
            app::check_name(name)
                .map_err(|e| Ec2Error::bad("InvalidLaunchTemplateName.MalformedException", e.to_string()))?;
            (name, false)
        }
    };
    let row = app::load(ctx, caller, reference, access).await.map_err(|e| refusal(e, by_id, reference))?;
    Ok((row, by_id))
}

/// EC2's RequestLaunchTemplateData (`d`, its members under their own names) in Nubo's terms.
async fn data_of(ctx: &Ctx, caller: &Caller, d: &Params) -> Ec2Result<LaunchTemplateData> {
    let mut data = LaunchTemplateData {
        image: d.str("ImageId").filter(|s| !s.is_empty()).map(str::to_string),
        instance_type: d.str("InstanceType").filter(|s| !s.is_empty()).map(str::to_string),
        key_name: d.str("KeyName").filter(|s| !s.is_empty()).map(str::to_string),
        ..Default::default()
    };
    if let Some(image) = &data.image {
        if image.starts_with("ami-") && image.parse::<nubo_api::ids::ImageId>().is_err() {
            return Err(Ec2Error::bad(
                "InvalidAMIID.Malformed",
                format!("Invalid id: \"{}\"", image.chars().take(64).collect::<String>()),
            ));
        }
    }
    if let Some(t) = &data.instance_type {
        if ctx.config.instance_types.get(t).is_none() {
            return Err(Ec2Error::invalid(format!(
                "Invalid value '{}' for InstanceType; see DescribeInstanceTypes (e.g. t2.micro, t3.small, m5.large)",
                t.chars().take(40).collect::<String>()
            )));
        }
    }
    data.security_groups = d.list("SecurityGroupId");
    data.security_groups.extend(d.list("SecurityGroup"));
    if let Some(b64) = d.str("UserData").filter(|s| !s.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| Ec2Error::invalid("Invalid BASE64 encoding of user data"))?;
        data.user_data = Some(String::from_utf8(raw).map_err(|_| {
            Ec2Error::invalid("the user data is not UTF-8 text (compressed user data is not supported): send a script or #cloud-config")
        })?);
    }
    for spec in d.structs("TagSpecification") {
        match spec.str("ResourceType") {
            Some("instance") => {}
            other => {
                return Err(Ec2Error::invalid(format!(
                    "LaunchTemplateData TagSpecification ResourceType '{}' is not supported here: only 'instance' (the root disk is not a separate volume)",
                    other.unwrap_or("").chars().take(40).collect::<String>()
                )))
            }
        }
        for (k, v) in spec.tags("Tag")? {
            data.tags.insert(k, v.unwrap_or_default());
        }
    }
    for m in d.structs("BlockDeviceMapping") {
        let device = m.str("DeviceName").unwrap_or(ROOT_DEVICE);
        if !ROOT_DEVICES.contains(&device) {
            return Err(Ec2Error::bad(
                "UnsupportedOperation",
                format!("block device mapping {}: only the root device (/dev/sda1 or /dev/xvda) can be set in a launch template; create data disks with CreateVolume and AttachVolume", device.chars().take(40).collect::<String>()),
            ));
        }
        if let Some(size) = m.int_in("Ebs.VolumeSize", 1..=crate::validate::MAX_DISK_GIB as i64)? {
            data.disk_gib = Some(size as u64);
        }
    }
    let interfaces = d.structs("NetworkInterface");
    if interfaces.len() > 1 || interfaces.iter().any(|i| i.str("DeviceIndex").is_some_and(|x| x != "0")) {
        return Err(Ec2Error::invalid(
            "an instance has one network interface here (DeviceIndex 0): its subnet's network; attach more networks through the REST API",
        ));
    }
    if let Some(i) = interfaces.first() {
        if let Some(s) = i.str("SubnetId").filter(|s| !s.is_empty()) {
            let net = super::vpcs::load_subnet(ctx, caller, s, Access::Read).await?;
            data.networks.push(net.id);
        }
        data.security_groups.extend(i.list("SecurityGroupId"));
    }
    if let Some(t) = d.str("MetadataOptions.HttpTokens") {
        data.metadata = Some(MetadataOptions { http_tokens: Some(t.to_string()) });
    }
    Ok(data)
}

/// Nubo's data as EC2's ResponseLaunchTemplateData.
async fn data_el(ctx: &Ctx, project: &str, d: &LaunchTemplateData) -> Ec2Result<El> {
    let mut el = El::new("launchTemplateData");
    if let Some(image) = &d.image {
        let id = ctx.store.resolve_image(Some(project), image).await?.map(|i| i.id).unwrap_or_else(|| image.clone());
        el = el.field("imageId", id);
    }
    el = el.opt("instanceType", d.instance_type.as_ref()).opt("keyName", d.key_name.as_ref());
    let (ids, names): (Vec<&String>, Vec<&String>) = d.security_groups.iter().partition(|g| g.starts_with("sg-"));
    if !ids.is_empty() {
        el = el.child(El::list("securityGroupIdSet", ids.into_iter().map(|g| El::text("item", g))));
    }
    if !names.is_empty() {
        el = el.child(El::list("securityGroupSet", names.into_iter().map(|g| El::text("item", g))));
    }
    if let Some(u) = &d.user_data {
        el = el.field("userData", base64::engine::general_purpose::STANDARD.encode(u));
    }
    if !d.tags.is_empty() {
        let spec = El::item().field("resourceType", "instance").child(xml::tag_set(&d.tags));
        el = el.child(El::list("tagSpecificationSet", [spec]));
    }
    if let Some(size) = d.disk_gib {
        let m = El::item().field("deviceName", ROOT_DEVICE).child(El::new("ebs").field("volumeSize", size));
        el = el.child(El::list("blockDeviceMappingSet", [m]));
    }
    if let Some(n) = d.networks.iter().find(|n| *n != crate::networks::USER_MODE) {
        if let Some(net) = ctx.store.network_by_ref(project, n).await? {
            let nic = El::item().field("deviceIndex", 0).field("subnetId", crate::networks::ec2_ids(&net.id).1);
            el = el.child(El::list("networkInterfaceSet", [nic]));
        }
    }
    if let Some(t) = d.metadata.as_ref().and_then(|m| m.http_tokens.as_ref()) {
        el = el.child(El::new("metadataOptions").field("state", "applied").field("httpTokens", t));
    }
    Ok(el)
}

fn template_el(project: &str, t: &LaunchTemplate) -> El {
    El::item()
        .field("launchTemplateId", &t.id)
        .field("launchTemplateName", &t.name)
        .field("createTime", xml::time(t.created_at_ms))
        .field("createdBy", arn(project, &t.created_by))
        .field("defaultVersionNumber", t.default_version)
        .field("latestVersionNumber", t.latest_version)
        .child(xml::tag_set(&t.tags))
}

async fn version_el(ctx: &Ctx, t: &TemplateRow, v: &LaunchTemplateVersion) -> Ec2Result<El> {
    Ok(El::item()
        .field("launchTemplateId", &t.id)
        .field("launchTemplateName", &t.name)
        .field("versionNumber", v.version)
        .opt("versionDescription", v.description.as_ref())
        .field("createTime", xml::time(v.created_at_ms))
        .field("createdBy", arn(&t.project_id, &v.created_by))
        .field("defaultVersion", v.default)
        .child(data_el(ctx, &t.project_id, &v.data).await?))
}

fn description(p: &Params) -> Ec2Result<Option<String>> {
    match p.str("VersionDescription") {
        Some(d) if d.chars().count() > 255 => Err(Ec2Error::invalid("VersionDescription is at most 255 characters")),
        d => Ok(d.filter(|d| !d.is_empty()).map(str::to_string)),
    }
}

pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let name = p.required("LaunchTemplateName")?.to_string();
    app::check_name(&name).map_err(|e| Ec2Error::bad("InvalidLaunchTemplateName.MalformedException", e.to_string()))?;
    // (Tags for its instances go in LaunchTemplateData.TagSpecification.)
    let tags = super::query::tag_specs(p, "launch-template")?.into_iter().collect();
    let data = data_of(ctx, caller, &sub(p, "LaunchTemplateData.")).await?;
    let c = LaunchTemplateCreate { name, description: description(p)?, data, tags };
    let t = match app::create(ctx, caller, &c).await {
        Ok(t) => t,
        Err(AppError::Conflict(_)) => {
            return Err(Ec2Error::bad(
                "InvalidLaunchTemplateName.AlreadyExistsException",
                format!(
                    "Launch template name already in use: the project has a template named '{}'; add a version with CreateLaunchTemplateVersion",
                    c.name
                ),
            ))
        }
        Err(e) => return Err(Ec2Error::from_app(e, Domain::Other)),
    };
    let project = project_of(caller)?;
    Ok(vec![template_el(&project, &t).renamed("launchTemplate")])
}

pub async fn describe(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let project = project_of(caller)?;
    let ids = p.list("LaunchTemplateId");
    let names = p.list("LaunchTemplateName");
    let filters = p.filters()?;
    query::check_filters(&filters, &["launch-template-name", "create-time"], true)?;
    let page = query::Page::parse(p, 1, 200)?;
    if let Some(bad) = ids.iter().find(|i| !app::is_id(i)) {
        return Err(Ec2Error::bad(
            "InvalidLaunchTemplateId.Malformed",
            format!("The launch template ID '{}' is malformed", bad.chars().take(64).collect::<String>()),
        ));
    }
    let rows = match crate::authz::readable_project(caller) {
        Some(_) => ctx.store.launch_templates(Some(&project)).await?,
        None => Vec::new(),
    };
    if let Some(missing) = ids.iter().find(|i| !rows.iter().any(|r| &r.id == *i)) {
        return Err(not_found(true, missing));
    }
    if let Some(missing) = names.iter().find(|n| !rows.iter().any(|r| &r.name == *n)) {
        return Err(not_found(false, missing));
    }
    let mut views = Vec::new();
    for r in
        rows.iter().filter(|r| (ids.is_empty() || ids.contains(&r.id)) && (names.is_empty() || names.contains(&r.name)))
    {
        views.push(app::view(ctx, r, false).await.map_err(|e| Ec2Error::from_app(e, Domain::Other))?);
    }
    let views: Vec<LaunchTemplate> = views
        .into_iter()
        .filter(|t| {
            query::matches(&filters, |f| match f {
                "launch-template-name" => vec![t.name.clone()],
                "create-time" => vec![xml::time(t.created_at_ms)],
                other => query::tag_field(other, Some(&t.tags)),
            })
        })
        .collect();
    let (views, next) = page.apply(views);
    let mut out = vec![El::list("launchTemplates", views.iter().map(|t| template_el(&project, t)))];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

pub async fn delete(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let (t, by_id) = target(ctx, caller, p, Access::Write).await?;
    let gone = app::delete(ctx, caller, &t.id).await.map_err(|e| refusal(e, by_id, &t.id))?;
    Ok(vec![template_el(&t.project_id, &gone).renamed("launchTemplate")])
}

/// ModifyLaunchTemplate: its default version (`SetDefaultVersion`).
pub async fn modify(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let (t, by_id) = target(ctx, caller, p, Access::Write).await?;
    let view = match p.str("SetDefaultVersion").filter(|v| !v.is_empty()) {
        Some(v) => app::set_default(ctx, caller, &t.id, v).await.map_err(|e| refusal(e, by_id, &t.id))?,
        None => app::view(ctx, &t, false).await.map_err(|e| Ec2Error::from_app(e, Domain::Other))?,
    };
    Ok(vec![template_el(&t.project_id, &view).renamed("launchTemplate")])
}

pub async fn create_version(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let (t, by_id) = target(ctx, caller, p, Access::Write).await?;
    let data = data_of(ctx, caller, &sub(p, "LaunchTemplateData.")).await?;
    let c = LaunchTemplateVersionCreate {
        source_version: p.str("SourceVersion").filter(|v| !v.is_empty()).map(str::to_string),
        description: description(p)?,
        data,
    };
    let (t, v) = app::create_version(ctx, caller, &t.id, &c).await.map_err(|e| refusal(e, by_id, &t.id))?;
    Ok(vec![version_el(ctx, &t, &v).await?.renamed("launchTemplateVersion")])
}

pub async fn describe_versions(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let (t, by_id) = target(ctx, caller, p, Access::Read).await?;
    let filters = p.filters()?;
    query::check_filters(&filters, &["is-default-version", "image-id", "instance-type", "key-name"], false)?;
    let page = query::Page::parse(p, 1, 200)?;
    let bound = |name: &str| -> Ec2Result<Option<i64>> {
        match p.str(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(Ec2Error::invalid(format!(
                    "Invalid value '{}' for {name}: expected a version number",
                    v.chars().take(40).collect::<String>()
                ))),
            },
        }
    };
    let (min, max) = (bound("MinVersion")?, bound("MaxVersion")?);
    let mut rows = ctx.store.launch_template_versions(&t.id).await?;
    rows.reverse(); // oldest first
    let asked = p.list("LaunchTemplateVersion");
    if !asked.is_empty() {
        let mut wanted = Vec::new();
        for a in &asked {
            let v = VersionRef::parse(a).map_err(|e| refusal(e, by_id, &t.id))?;
            let row = app::version(ctx, &t, v).await.map_err(|e| refusal(e, by_id, &t.id))?;
            if !wanted.contains(&row.version) {
                wanted.push(row.version);
            }
        }
        rows.retain(|r| wanted.contains(&r.version));
    }
    rows.retain(|r| min.is_none_or(|m| r.version >= m) && max.is_none_or(|m| r.version <= m));
    let mut views = Vec::new();
    for r in &rows {
        views.push(app::version_view(&t, r).map_err(|e| Ec2Error::from_app(e, Domain::Other))?);
    }
    views.retain(|v| {
        query::matches(&filters, |f| match f {
            "is-default-version" => vec![v.default.to_string()],
            "image-id" => v.data.image.clone().into_iter().collect(),
            "instance-type" => v.data.instance_type.clone().into_iter().collect(),
            _ => v.data.key_name.clone().into_iter().collect(),
        })
    });
    let (views, next) = page.apply(views);
    let mut items = Vec::new();
    for v in &views {
        items.push(version_el(ctx, &t, v).await?);
    }
    let mut out = vec![El::list("launchTemplateVersionSet", items)];
    if let Some(n) = next {
        out.push(El::text("nextToken", n));
    }
    Ok(out)
}

pub async fn delete_versions(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Answer> {
    let (t, by_id) = target(ctx, caller, p, Access::Write).await?;
    let asked = p.list("LaunchTemplateVersion");
    if asked.is_empty() {
        return Err(Ec2Error::missing("LaunchTemplateVersion.N"));
    }
    let mut numbers = Vec::new();
    for a in &asked {
        match a.parse::<i64>() {
            Ok(n) if n >= 1 => numbers.push(n),
            _ => {
                return Err(Ec2Error::invalid(format!(
                    "Invalid value '{}' for LaunchTemplateVersion: give version numbers",
                    a.chars().take(40).collect::<String>()
                )))
            }
        }
    }
    let (t, outcomes) =
        app::delete_versions(ctx, caller, &t.id, &numbers).await.map_err(|e| refusal(e, by_id, &t.id))?;
    let item = |v: i64| {
        El::item().field("launchTemplateId", &t.id).field("launchTemplateName", &t.name).field("versionNumber", v)
    };
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (v, outcome) in outcomes {
        match outcome {
            Ok(()) => ok.push(item(v)),
            Err(e) => {
                let (code, message) = match e {
                    VersionDeleteError::NotFound => {
                        ("launchTemplateVersionDoesNotExist", format!("version {v} does not exist"))
                    }
                    VersionDeleteError::IsDefault => (
                        "unexpectedError",
                        format!("version {v} is the default version: make another the default first (ModifyLaunchTemplate), or delete the template"),
                    ),
                };
                failed.push(item(v).child(El::new("responseError").field("code", code).field("message", message)));
            }
        }
    }
    Ok(vec![
        El::list("successfullyDeletedLaunchTemplateVersionSet", ok),
        El::list("unsuccessfullyDeletedLaunchTemplateVersionSet", failed),
    ])
}

/// RunInstances' parameters with its `LaunchTemplate`'s version merged
/// in: every parameter the request gives stays, and the template fills
/// the others (its tags are added to the request's, whose values win).
/// None: the request names no template.
pub async fn run_params(ctx: &Arc<Ctx>, caller: &Caller, p: &Params) -> Ec2Result<Option<Params>> {
    let spec = sub(p, "LaunchTemplate.");
    if spec.iter().next().is_none() {
        return Ok(None);
    }
    let (t, by_id) = target(ctx, caller, &spec, Access::Read).await?;
    let v = VersionRef::parse(spec.str("Version").filter(|v| !v.is_empty()).unwrap_or("$Default"))
        .map_err(|e| refusal(e, by_id, &t.id))?;
    let row = app::version(ctx, &t, v).await.map_err(|e| refusal(e, by_id, &t.id))?;
    let d = app::version_view(&t, &row).map_err(|e| Ec2Error::from_app(e, Domain::Other))?.data;
    let project = t.project_id.clone();
    let mut pairs: Vec<(String, String)> =
        p.iter().filter(|(k, _)| !k.starts_with("LaunchTemplate.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut add = |k: &str, v: String| pairs.push((k.to_string(), v));
    if let (false, Some(image)) = (has(p, "ImageId"), &d.image) {
        let id = ctx.store.resolve_image(Some(&project), image).await?.map(|i| i.id).unwrap_or_else(|| image.clone());
        add("ImageId", id);
    }
    if let (false, Some(it)) = (has(p, "InstanceType"), &d.instance_type) {
        add("InstanceType", it.clone());
    }
    if let (false, Some(k)) = (has(p, "KeyName"), &d.key_name) {
        add("KeyName", k.clone());
    }
    if let (false, Some(u)) = (has(p, "UserData"), &d.user_data) {
        add("UserData", base64::engine::general_purpose::STANDARD.encode(u));
    }
    if let (false, Some(tokens)) = (has(p, "MetadataOptions"), d.metadata.as_ref().and_then(|m| m.http_tokens.clone()))
    {
        add("MetadataOptions.HttpTokens", tokens);
    }
    if let (false, Some(size)) = (has(p, "BlockDeviceMapping"), d.disk_gib) {
        add("BlockDeviceMapping.1.DeviceName", ROOT_DEVICE.to_string());
        add("BlockDeviceMapping.1.Ebs.VolumeSize", size.to_string());
    }
    let interface = has(p, "NetworkInterface");
    if let Some(n) = d.networks.iter().find(|n| *n != crate::networks::USER_MODE) {
        let net = ctx.store.network_by_ref(&project, n).await?.ok_or_else(|| {
            Ec2Error::invalid(format!(
                "the launch template's network '{}' no longer exists: create a version without it, or give a SubnetId",
                n.chars().take(64).collect::<String>()
            ))
        })?;
        let subnet = crate::networks::ec2_ids(&net.id).1;
        if interface && !has(p, "NetworkInterface.1.SubnetId") {
            add("NetworkInterface.1.SubnetId", subnet);
        } else if !interface && !has(p, "SubnetId") {
            add("SubnetId", subnet);
        }
    }
    let groups_given = has(p, "SecurityGroupId")
        || has(p, "SecurityGroup")
        || (interface && has(p, "NetworkInterface.1.SecurityGroupId"));
    if !groups_given && !d.security_groups.is_empty() {
        let prefix = if interface { "NetworkInterface.1.SecurityGroupId" } else { "SecurityGroupId" };
        for (i, g) in d.security_groups.iter().enumerate() {
            let id = match ctx.store.security_group(g).await? {
                Some(row) if row.project_id == project => row.id,
                _ => ctx.store.security_group_by_name(&project, g).await?.map(|r| r.id).ok_or_else(|| {
                    Ec2Error::bad(
                        "InvalidGroup.NotFound",
                        format!(
                            "The launch template's security group '{}' does not exist",
                            g.chars().take(64).collect::<String>()
                        ),
                    )
                })?,
            };
            add(&format!("{prefix}.{}", i + 1), id);
        }
    }
    // The template's instance tags, under the request's (a key the request sets keeps its value).
    let given: Vec<String> = p
        .structs("TagSpecification")
        .iter()
        .filter(|s| s.str("ResourceType") == Some("instance"))
        .flat_map(|s| s.tags("Tag").unwrap_or_default().into_iter().map(|(k, _)| k))
        .collect();
    let extra: Vec<(&String, &String)> = d.tags.iter().filter(|(k, _)| !given.contains(k)).collect();
    if !extra.is_empty() {
        let n = p
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("TagSpecification.")?.split('.').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        add(&format!("TagSpecification.{n}.ResourceType"), "instance".to_string());
        for (i, (k, v)) in extra.into_iter().enumerate() {
            add(&format!("TagSpecification.{n}.Tag.{}.Key", i + 1), k.clone());
            add(&format!("TagSpecification.{n}.Tag.{}.Value", i + 1), v.clone());
        }
    }
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        form.append_pair(k, v);
    }
    Ok(Some(Params::from_form(form.finish().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_under_a_prefix_keep_their_own_names() {
        let p = Params::from_form(
            b"Action=CreateLaunchTemplate&LaunchTemplateData.ImageId=ami-1&LaunchTemplateData.SecurityGroupId.1=sg-a\
              &LaunchTemplateData.TagSpecification.1.Tag.1.Key=k",
        );
        let d = sub(&p, "LaunchTemplateData.");
        assert_eq!(d.str("ImageId"), Some("ami-1"));
        assert_eq!(d.list("SecurityGroupId"), ["sg-a"]);
        assert_eq!(d.str("Action"), None);
        assert!(has(&p, "LaunchTemplateData"));
        assert!(has(&d, "TagSpecification"));
        assert!(!has(&d, "Tag"));
    }
}
