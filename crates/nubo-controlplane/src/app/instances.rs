//! Instances: loading one the caller may access, their views (one or a
//! whole selection's with a fixed number of queries), listing, launching
//! (validation, image, key pair, recipe, networks, security groups,
//! placement), the power changes (stop, start, reboot, terminate) and the
//! serial console. Operations only record desired state; the host's agent
//! makes it so.

use crate::auth::Caller;
use crate::authz::{self, Access};
use crate::error::{AppError, AppResult};
use crate::instance_batch::{Related, Scope, Selection};
use crate::pagination::{Cursor, PageRequest};
use crate::store::{InstanceRow, NewInstance};
use crate::{placement, validate, Ctx};
use nubo_api::agent::PowerState;
use nubo_api::ids::InstanceId;
use nubo_api::params::InstanceCreate;
use nubo_api::views::{ConsoleOutput, Instance, InstanceState};
use std::collections::BTreeMap;
use std::sync::Arc;

fn parse_id(id: &str) -> AppResult<InstanceId> {
    id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))
}

/// Loads an instance the caller may access; the one door every
/// operation on an instance goes through, whichever adapter asks.
pub async fn load(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<InstanceRow> {
    let id = parse_id(id)?;
    let row =
        ctx.store.instance(id.as_str()).await?.ok_or(AppError::NotFound { kind: "instance", id: id.to_string() })?;
    authz::check(caller, access, row.project_id.as_deref(), "instance", id.as_str())?;
    Ok(row)
}

/// Builds the view; `with_events` adds the life events and the latest
/// runs (one instance's page, not lists).
pub async fn view(ctx: &Ctx, row: InstanceRow, with_events: bool) -> AppResult<Instance> {
    let related = ctx.store.related(&Selection::new(Scope::One(&row.id))).await?;
    let (events, runs) = if with_events {
        let runs = ctx
            .store
            .runs(&row.id, 20)
            .await?
            .into_iter()
            .map(|r| super::provisioning::run_view(r, None))
            .collect::<AppResult<Vec<_>>>()?;
        (ctx.store.events(&row.id).await?, runs)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut view = view_of(row, &related)?;
    view.events = events;
    view.runs = runs;
    Ok(view)
}

/// The views of a selection's instances (in list order), with a fixed
/// number of queries however many there are; `selection` must be the one
/// `rows` were read with.
pub async fn views(ctx: &Ctx, selection: &Selection<'_>, rows: Vec<InstanceRow>) -> AppResult<Vec<Instance>> {
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let related = ctx.store.related(&selection.for_related(&ids)).await?;
    rows.into_iter().map(|row| view_of(row, &related)).collect()
}

/// One instance's view (without life events and runs) from its row and
/// the related rows read for its selection.
fn view_of(row: InstanceRow, related: &Related) -> AppResult<Instance> {
    let id: InstanceId = row.id.parse().map_err(AppError::internal)?;
    let instance_type = instance_type_of(&row);
    let cdrom = super::cdrom::view_of(&row);
    let tags = related.tags.get(&row.id).cloned().unwrap_or_default();
    let host = row.host_id.as_ref().and_then(|h| related.hosts.get(h));
    let nics = related.addresses.get(&row.id).map(Vec::as_slice).unwrap_or_default();
    // On a private network a port is forwarded from the host's underlay
    // address (by its NAT), otherwise from its 127.0.0.1 (by QEMU).
    let forwarded_from = match (nics.is_empty(), host.and_then(|h| h.underlay.clone())) {
        (false, Some(underlay)) => underlay,
        _ => "127.0.0.1".to_string(),
    };
    let ports: BTreeMap<String, String> = related
        .ports
        .get(&row.id)
        .into_iter()
        .flatten()
        .map(|p| (p.guest_port.to_string(), format!("{forwarded_from}:{}", p.host_port)))
        .collect();
    let volumes = related
        .volumes
        .get(&row.id)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some(nubo_api::views::InstanceVolume {
                volume_id: v.id.parse().ok()?,
                size_gib: v.size_gib as u64,
                state: v.attach_state?,
                guest_device: v.guest_device.clone(),
            })
        })
        .collect();
    let mut addresses = Vec::new();
    for nic in nics {
        addresses.push(nubo_api::views::InstanceAddress {
            network_id: nic.port.network_id.parse().map_err(AppError::internal)?,
            network: nic.network_name.clone(),
            address: nic.port.address.clone(),
            mac: nic.port.mac.clone(),
            floating_ip: nic.floating_ip.clone(),
        });
    }
    // The guest agent's report means something only while the VM runs.
    let guest = match (&row.guest_json, row.state) {
        (Some(g), InstanceState::Running) => serde_json::from_str(g).ok(),
        _ => None,
    };
    Ok(Instance {
        id,
        name: row.name,
        image: row.image,
        state: row.state,
        desired_state: row.desired.shown(),
        vcpus: row.vcpus as u32,
        memory_mib: row.memory_mib as u64,
        disk_gib: row.disk_gib as u64,
        host: match &row.host_id {
            Some(h) => Some(h.parse().map_err(AppError::internal)?),
            None => None,
        },
        host_name: host.map(|h| h.name.clone()),
        ports,
        error: row.error,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
        events: Vec::new(),
        key_name: row.key_name,
        metadata_http_tokens: row.imds_tokens,
        runs: Vec::new(),
        guest,
        image_id: row.image_id.as_deref().and_then(|i| i.parse().ok()),
        volumes,
        instance_type,
        tags,
        addresses,
        termination_protection: row.termination_protection == 1,
        stop_protection: row.stop_protection == 1,
        shutdown_behavior: row.shutdown_behavior,
        cdrom,
        hardware: crate::hardware::parse(row.hardware.as_deref()),
    })
}

/// What the instance is reported as: its type, or `custom-<vcpus>-<mib>`.
pub fn instance_type_of(row: &InstanceRow) -> String {
    row.instance_type
        .clone()
        .unwrap_or_else(|| nubo_api::views::custom_instance_type(row.vcpus as u32, row.memory_mib as u64))
}

/// Where a list of instances stands after `row`.
pub fn cursor_of(row: &InstanceRow) -> Cursor {
    Cursor { created_at_ms: row.created_at_ms, id: row.id.clone() }
}

/// One page of the instances the caller may see, terminated ones included
/// (as EC2 shows them for a while), oldest first, and the token of the
/// next page when there is one. Operators see every project's instances;
/// everyone else their project's, and a caller without a role none.
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller, page: PageRequest) -> AppResult<(Vec<Instance>, Option<String>)> {
    let scope = match caller.project_id.as_deref() {
        _ if caller.admin => Scope::All,
        Some(project) if caller.role != crate::auth::Role::None => Scope::Project(project),
        _ => return Ok((Vec::new(), None)),
    };
    let selection = Selection::new(scope).page(page);
    let rows = ctx.store.select_instances(&selection).await?;
    let (rows, next) = selection.page.cut(rows, cursor_of);
    Ok((views(ctx, &selection, rows).await?, next))
}

/// Launches one instance and returns its view with its life events (the
/// REST API's create and the portal's launch form).
pub async fn create(ctx: &Arc<Ctx>, caller: &Caller, p: &InstanceCreate) -> AppResult<Instance> {
    let row = launch(ctx, caller, p, crate::launch::LaunchRecord::default()).await?;
    view(ctx, row, true).await
}

/// Launches one instance: the REST API's create and each instance of an
/// EC2 RunInstances. `record` carries what EC2 adds (type, reservation,
/// security groups); without groups the instance joins the project's
/// default group. `p.tags` are recorded with it.
pub async fn launch(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    p: &InstanceCreate,
    record: crate::launch::LaunchRecord<'_>,
) -> AppResult<InstanceRow> {
    let project = authz::creation_project(caller)?;
    validate::instance_create(p)?;
    let image = match ctx.store.resolve_image(Some(&project), &p.image).await? {
        Some(i) => i,
        // The builtin `blank` has no image row: an empty root disk, for
        // installing from a CD (`app::cdrom`).
        None if p.image == nubo_api::agent::BLANK_IMAGE => {
            let cdrom = super::cdrom::check_launch(ctx, &project, None, p).await?;
            return launch_checked(ctx, caller, p, record, project, None, cdrom).await;
        }
        None => {
            let known: Vec<String> =
                ctx.store.images_visible(Some(&project)).await?.into_iter().map(|i| i.name).collect();
            return Err(AppError::BadRequest(format!(
                "image '{}' does not exist; known images: {} (see `nubo image list`)",
                p.image.chars().take(80).collect::<String>(),
                known.join(", ")
            )));
        }
    };
    if !image.state.is_bootable() {
        return Err(AppError::Conflict(format!(
            "image {} is {}; it can be booted once it is active{}",
            image.name,
            image.state,
            image.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        )));
    }
    let cdrom = super::cdrom::check_launch(ctx, &project, Some(&image), p).await?;
    launch_checked(ctx, caller, p, record, project, Some(image), cdrom).await
}

/// The rest of a launch, once its image (None: `blank`) and CD-ROM drive
/// are known.
async fn launch_checked(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    p: &InstanceCreate,
    mut record: crate::launch::LaunchRecord<'_>,
    project: String,
    image: Option<crate::images::ImageRow>,
    cdrom: Option<(String, &'static str)>,
) -> AppResult<InstanceRow> {
    let (image_name, image_id, min_disk_gib, min_memory_mib) = match &image {
        Some(i) => (i.name.as_str(), i.id.as_str(), i.min_disk_gib, i.min_memory_mib),
        None => (nubo_api::agent::BLANK_IMAGE, "", 0, 0),
    };
    record.cdrom = cdrom.as_ref().map(|(id, order)| (id.as_str(), *order));
    if p.disk_gib < min_disk_gib as u64 {
        return Err(AppError::BadRequest(format!(
            "image {image_name} needs a root disk of at least {min_disk_gib} GiB; ask for --disk {min_disk_gib} or more"
        )));
    }
    if p.memory_mib < min_memory_mib as u64 {
        return Err(AppError::BadRequest(format!(
            "image {image_name} needs at least {min_memory_mib} MiB of memory; ask for --memory {min_memory_mib} or more"
        )));
    }
    let hardware = crate::hardware::column(&super::hardware::for_launch(image.as_ref(), &p.hardware)?);
    record.hardware = hardware.as_deref();
    let imds_tokens = match p.metadata.as_ref().and_then(|m| m.http_tokens.as_deref()) {
        None | Some("optional") => "optional",
        Some("required") => "required",
        Some(other) => {
            return Err(AppError::BadRequest(format!(
                "metadata http_tokens '{}' is unknown: use 'optional' (IMDSv1 and v2) or 'required' (IMDSv2 only)",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    let key = match &p.key_name {
        Some(k) => Some(ctx.store.keypair(&project, k).await?.ok_or_else(|| {
            AppError::BadRequest(format!(
                "key pair '{}' does not exist in this project: see `nubo keypair list`, or create it with `nubo keypair create`",
                k.chars().take(64).collect::<String>()
            ))
        })?),
        None => None,
    };
    // A cloud-config recipe becomes the user-data; a script recipe runs
    // through the guest agent once the instance is up.
    let mut user_data = p.user_data.clone();
    if let Some(recipe) = &p.recipe {
        if let Some(cloud_config) =
            super::provisioning::check_launch_recipe(ctx, caller, recipe, p.user_data.as_deref()).await?
        {
            if cloud_config.len() > nubo_api::MAX_USER_DATA_BYTES {
                return Err(AppError::BadRequest("the rendered cloud-config recipe is larger than 64 KiB".into()));
            }
            user_data = Some(cloud_config);
        }
    }
    let id = InstanceId::generate();
    let name = p.name.clone().unwrap_or_else(|| id.to_string());
    // Networks and security groups named in the request (REST); an EC2
    // launch brings its groups in `record`.
    let mut network_ids = Vec::new();
    if p.networks.iter().any(|n| n == crate::networks::USER_MODE) {
        if p.networks.len() > 1 {
            return Err(AppError::BadRequest(format!(
                "network '{}' (user-mode networking only) cannot be combined with other networks",
                crate::networks::USER_MODE
            )));
        }
    } else if p.networks.is_empty() {
        // Like EC2's default VPC: where a host can bridge, an instance
        // launched without networks joins the project's default network
        // (made now if need be); otherwise it keeps user-mode networking.
        if ctx.store.bridging_host_up(ctx.config.heartbeat_timeout.as_millis() as i64).await? {
            network_ids.push(super::networks::ensure_default(ctx, &project).await?.id);
        }
    }
    for n in p.networks.iter().filter(|n| *n != crate::networks::USER_MODE) {
        let net = ctx.store.network_by_ref(&project, n).await?.ok_or_else(|| {
            AppError::BadRequest(format!(
                "network '{}' does not exist in this project: see `nubo network list`, or create it with `nubo network create`",
                n.chars().take(64).collect::<String>()
            ))
        })?;
        if network_ids.contains(&net.id) {
            return Err(AppError::BadRequest(format!(
                "network '{}' is named twice; an instance has one NIC per network",
                net.name
            )));
        }
        network_ids.push(net.id);
    }
    record.networks = &network_ids;
    let mut group_ids = Vec::new();
    for g in &p.security_groups {
        let group = match ctx.store.security_group(g).await? {
            Some(row) if row.project_id == project => Some(row),
            _ => ctx.store.security_group_by_name(&project, g).await?,
        }
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "security group '{}' does not exist in this project: see `nubo security-group list`",
                g.chars().take(64).collect::<String>()
            ))
        })?;
        group_ids.push(group.id);
    }
    if !group_ids.is_empty() {
        record.security_groups = &group_ids;
    }
    let default_group;
    if record.security_groups.is_empty() {
        default_group = [ctx.store.ensure_default_security_group(&project).await?.id];
        record.security_groups = &default_group;
    }
    let tags: Vec<(String, String)> = p.tags.clone().into_iter().collect();
    if record.tags.is_empty() {
        record.tags = &tags;
    }
    let new = NewInstance {
        id: &id,
        project_id: &project,
        name: &name,
        image: image_name,
        image_id,
        vcpus: p.vcpus,
        memory_mib: p.memory_mib,
        disk_gib: p.disk_gib,
        user_data: user_data.as_deref(),
        guest_ports: &p.ports,
        key: key.as_ref().map(|k| (k.name.as_str(), k.public_key.as_str())),
        imds_tokens,
        ec2: record,
    };
    // With a recipe, placing and starting the run are a saga: a run that
    // cannot start terminates the instance (see `sagas::launch`).
    if let Some(recipe) = &p.recipe {
        let row =
            crate::sagas::launch::launch(ctx, &crate::sagas::launch::LaunchParams::new(&new, caller, recipe)).await?;
        if let Some(host) = &row.host_id {
            super::floating_ips::assign_automatically(ctx, &row.id, &project, host).await?;
            ctx.bump();
        }
        return Ok(row);
    }
    let (host, _) = placement::place(ctx, &new).await?;
    tracing::info!(instance = %id, %host, "instance placed");
    super::floating_ips::assign_automatically(ctx, id.as_str(), &project, &host).await?;
    crate::sagas::launch::announce(ctx, &host, !network_ids.is_empty());
    ctx.store.instance(id.as_str()).await?.ok_or_else(|| AppError::internal("instance vanished"))
}

/// One instance with its life events.
pub async fn show(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Instance> {
    let row = load(ctx, caller, id, Access::Read).await?;
    view(ctx, row, true).await
}

/// A change of an instance's desired power state, as one operation asks
/// for it.
struct PowerChange {
    /// The operation's verb, in the life event and in errors.
    verb: &'static str,
    /// The desired states it may be asked in (each may become `to`).
    from: &'static [PowerState],
    /// The desired state it records.
    to: PowerState,
    /// A new start attempt: the agent boots the VM again, and an earlier
    /// error is cleared.
    new_start: bool,
    /// A hardware reset of the running VM.
    reset: bool,
}

const STOP: PowerChange = PowerChange {
    verb: "stop",
    from: &[PowerState::Running, PowerState::Stopped],
    to: PowerState::Stopped,
    new_start: false,
    reset: false,
};
const START: PowerChange = PowerChange {
    verb: "start",
    from: &[PowerState::Stopped, PowerState::Running],
    to: PowerState::Running,
    new_start: true,
    reset: false,
};
const REBOOT: PowerChange = PowerChange {
    verb: "reboot",
    from: &[PowerState::Running],
    to: PowerState::Running,
    new_start: false,
    reset: true,
};
// Terminated instances are recorded as desired "deleted" (shown as
// "terminated"), which the agent reaps.
const TERMINATE: PowerChange = PowerChange {
    verb: "terminate",
    from: &[PowerState::Running, PowerState::Stopped],
    to: PowerState::Deleted,
    new_start: false,
    reset: false,
};

/// Records `change` for `row` (loaded for writing), wakes its host's agent
/// and returns the instance's view with its life events.
async fn change_power(ctx: &Arc<Ctx>, caller: &Caller, row: InstanceRow, change: &PowerChange) -> AppResult<Instance> {
    if !ctx.store.set_desired(&row.id, change.from, change.to, change.new_start, change.reset, change.verb).await? {
        return Err(AppError::Conflict(format!(
            "cannot {} instance {} while it is {} (state {})",
            change.verb,
            row.id,
            row.desired.shown(),
            row.state
        )));
    }
    match &row.host_id {
        Some(host) => ctx.bump_host(host),
        None => ctx.bump(),
    }
    let row = load(ctx, caller, &row.id, Access::Read).await?;
    view(ctx, row, true).await
}

/// Stop (ACPI power-off, then forced after a grace period).
pub async fn stop(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Instance> {
    let row = load(ctx, caller, id, Access::Write).await?;
    if let Some(why) = super::instance_attributes::stop_refusal(&row) {
        return Err(AppError::Conflict(why));
    }
    change_power(ctx, caller, row, &STOP).await
}

/// Start a stopped instance (or retry one that failed to start).
pub async fn start(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Instance> {
    let row = load(ctx, caller, id, Access::Write).await?;
    if row.desired == PowerState::Running && row.state != InstanceState::Error {
        return Err(AppError::Conflict(format!("instance {} is already running (state {})", row.id, row.state)));
    }
    super::day_two::check_no_revert_pending(ctx, &row).await?;
    change_power(ctx, caller, row, &START).await
}

/// Reboot a running instance (hardware reset).
pub async fn reboot(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Instance> {
    let row = load(ctx, caller, id, Access::Write).await?;
    if row.state != InstanceState::Running {
        return Err(AppError::Conflict(format!(
            "cannot reboot instance {} while it is {}: start it first",
            row.id, row.state
        )));
    }
    change_power(ctx, caller, row, &REBOOT).await
}

/// Terminate: the VM and its disk are deleted and the host's capacity freed.
pub async fn terminate(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<Instance> {
    let row = load(ctx, caller, id, Access::Write).await?;
    if let Some(why) = super::instance_attributes::termination_refusal(&row) {
        return Err(AppError::Conflict(why));
    }
    change_power(ctx, caller, row, &TERMINATE).await
}

/// The serial console's output (the last 1 MiB the host keeps).
pub async fn console(ctx: &Arc<Ctx>, caller: &Caller, id: &str) -> AppResult<ConsoleOutput> {
    let row = load(ctx, caller, id, Access::Read).await?;
    let output = ctx.store.console(&row.id).await?;
    Ok(ConsoleOutput { instance_id: parse_id(&row.id)?, output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_power_change_asks_only_legal_transitions() {
        for change in [&STOP, &START, &REBOOT, &TERMINATE] {
            assert!(!change.from.is_empty(), "{}", change.verb);
            for from in change.from {
                assert!(from.can_become(change.to), "{}: {from} -> {}", change.verb, change.to);
            }
            // Nothing is asked of a terminated instance.
            assert!(!change.from.contains(&PowerState::Deleted), "{}", change.verb);
        }
        assert_eq!(REBOOT.from, [PowerState::Running], "only a running instance reboots");
    }
}
