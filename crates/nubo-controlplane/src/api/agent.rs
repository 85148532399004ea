//! `/api/v1/agent/...`: the server side of the agent protocol. Agents
//! register, long-poll their host's desired state (whole, or what changed
//! since the answer they hold), and report actual
//! state and console output. A host can only read and report for itself
//! and its own instances.

use crate::auth::HostCaller;
use crate::error::{ApiJson, AppError, AppResult};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::Json;
use nubo_api::agent::{
    ConsoleAck, ConsoleChunk, DesiredState, HeartbeatAck, HostReport, RegisterHost, RunAck, RunProgress,
};
use nubo_api::ids::{HostId, InstanceId};
use nubo_api::views::RunState;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest a desired-state long-poll is held open.
const LONG_POLL: Duration = Duration::from_secs(20);

fn host_id(s: &str) -> AppResult<HostId> {
    s.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))
}

/// A host may read and report only for itself.
fn same_host(caller: &HostCaller, id: &HostId) -> AppResult<()> {
    if caller.host_id == id.as_str() {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!("this credential belongs to host {}, not {id}", caller.host_id)))
    }
}

/// The host has registered (its row exists). Asked of every long-poll and
/// report, and answered from memory once found: no host row is deleted.
async fn known_host(ctx: &Ctx, id: &HostId) -> AppResult<()> {
    if ctx.store.known_hosts.is_registered(id.as_str()) {
        return Ok(());
    }
    match ctx.store.host(id.as_str()).await? {
        Some(_) => {
            ctx.store.known_hosts.remember_registered(id.as_str());
            Ok(())
        }
        None => Err(AppError::NotFound { kind: "host", id: id.to_string() }),
    }
}

/// Register (or re-register) a compute host.
#[utoipa::path(post, path = "/api/v1/agent/register", tag = "agent", request_body = RegisterHost,
    responses((status = 200, description = "registered"), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn register(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(r): ApiJson<RegisterHost>,
) -> AppResult<Json<()>> {
    same_host(&caller, &r.host_id)?;
    crate::validate::name(&r.name)?;
    // Bounds keep every later sum far from overflow (1 EiB of memory is not a host).
    if r.vcpus == 0 || r.vcpus > 65_536 || r.memory_mib == 0 || r.memory_mib > (1 << 40) || r.disk_gib > (1 << 40) {
        return Err(AppError::BadRequest(
            "host capacity out of range: vcpus 1..=65536, memory_mib 1..=2^40, disk_gib 0..=2^40".into(),
        ));
    }
    ctx.store.register_host(&r).await?;
    // Every host is watched for missed heartbeats.
    let interval = ctx.config.heartbeat_timeout.as_secs().clamp(1, 60);
    ctx.store.ensure_heartbeat_check(r.host_id.as_str(), interval).await?;
    tracing::info!(host = %r.host_id, name = %r.name, vcpus = r.vcpus, memory_mib = r.memory_mib, "host registered");
    Ok(Json(()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DesiredQuery {
    /// The generation the agent already has; the call waits until a newer one exists.
    pub after: Option<u64>,
    /// The `view` of the last answer the agent holds: the answer is then
    /// a delta from it when this server sent it (see `desired_views`).
    pub view: Option<String>,
}

/// The desired state of one host's instances (long-poll with `after`):
/// whole, or with `view` only the instances changed since that answer.
#[utoipa::path(get, path = "/api/v1/agent/hosts/{id}/desired", tag = "agent",
    params(("id" = String, Path, description = "host id"), DesiredQuery),
    responses((status = 200, body = DesiredState), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn desired(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<DesiredQuery>,
) -> AppResult<Json<DesiredState>> {
    let host = host_id(&id)?;
    same_host(&caller, &host)?;
    known_host(&ctx, &host).await?;
    Ok(Json(crate::app::host_desired::of_host(&ctx, &host, q.after, q.view.as_deref(), LONG_POLL).await?))
}

/// The host is alive: renews its lease. The only request the control
/// plane's liveness (down hosts, failover) counts; it carries nothing, so
/// nothing a guest does can make it fail. The answer says how long the
/// lease lasts (see `failover::Lease`).
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/heartbeat", tag = "agent",
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, body = HeartbeatAck), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn heartbeat(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<HeartbeatAck>> {
    let host = host_id(&id)?;
    same_host(&caller, &host)?;
    let Some(value) = ctx.store.heartbeat(&host).await? else {
        return Err(AppError::NotFound { kind: "host", id: host.to_string() });
    };
    ctx.renewals.renewed(host.as_str(), value, std::time::Instant::now());
    Ok(Json(crate::failover::Lease::of(&ctx.config).ack()))
}

/// Actual state of the host's instances (liveness is the heartbeat's).
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/report", tag = "agent", request_body = HostReport,
    params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "applied"), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn report(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<HostReport>,
) -> AppResult<Json<()>> {
    let host = host_id(&id)?;
    same_host(&caller, &host)?;
    known_host(&ctx, &host).await?;
    let mut changed = false;
    // An agent lists only what changed since the report it knows was
    // taken, and everything once a minute: entries that repeat what the
    // rows say are skipped after two reads for all of them, and only the
    // others are applied one by one.
    let ids: Vec<&str> = r.instances.iter().map(|a| a.id.as_str()).collect();
    let (rows, attached) = ctx.store.report_baseline(host.as_str(), &ids).await?;
    for a in &r.instances {
        let row = rows.get(a.id.as_str());
        // Whether the volumes' rows, as read, differ from what is reported
        // (unknown without the instance's row).
        let attachments_news = row.is_none()
            || crate::store::Store::attachment_report_is_news(
                attached.get(a.id.as_str()).map(Vec::as_slice).unwrap_or_default(),
                &a.volumes,
            );
        let no_news = row.is_some_and(|row| {
            !crate::store::report_is_news(row, a)
                && !attachments_news
                && !a.captures.iter().any(|c| c.state == nubo_api::agent::CaptureState::Failed)
                && !a.exited_unexpectedly
        });
        if no_news {
            continue;
        }
        if ctx.store.apply_actual_from(host.as_str(), a, row).await? {
            changed |= a.exited_unexpectedly;
            // Volumes a user attaches after the read are not in this
            // report anyway; the agent reports them when it has them.
            if attachments_news {
                ctx.store.apply_attachment_report(a.id.as_str(), &a.volumes).await?;
            }
            for c in a.captures.iter().filter(|c| c.state == nubo_api::agent::CaptureState::Failed) {
                changed |= ctx.store.fail_capture(c.image_id.as_str(), a.id.as_str(), c.error.as_deref()).await?;
            }
        } else if a.power == nubo_api::agent::ActualPower::Deleted {
            // The target of a failed migration removed its copy.
            ctx.store.migration_cleaned(a.id.as_str(), host.as_str()).await?;
        } else {
            tracing::warn!(%host, instance = %a.id, "report for an instance the host does not own was ignored");
        }
    }
    for v in &r.volumes {
        if !ctx.store.apply_volume_report(host.as_str(), v).await? {
            tracing::debug!(%host, volume = %v.id, "report for a volume the host does not hold was ignored");
        }
    }
    for s in &r.snapshots {
        if !ctx.store.apply_snapshot_report(host.as_str(), s).await? {
            tracing::debug!(%host, snapshot = %s.id, "report for a snapshot the host does not hold was ignored");
        }
    }
    for b in &r.balancers {
        if !ctx.store.apply_lb_report(host.as_str(), b).await? {
            tracing::debug!(%host, lb = %b.id, "report for a load balancer the host does not run was ignored");
        }
    }
    if changed {
        ctx.bump_host(host.as_str());
    }
    Ok(Json(()))
}

/// Append serial console output of an instance on the reporting host.
#[utoipa::path(post, path = "/api/v1/agent/instances/{id}/console", tag = "agent", operation_id = "agent_console", request_body = ConsoleChunk,
    params(("id" = String, Path, description = "instance id")),
    responses((status = 200, body = ConsoleAck), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn console(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(c): ApiJson<ConsoleChunk>,
) -> AppResult<Json<ConsoleAck>> {
    same_host(&caller, &c.host_id)?;
    // Offsets are byte positions in a log file: keep them far from i64's end.
    if c.offset > (1 << 50) || c.raw_len > (1 << 24) {
        return Err(AppError::BadRequest("console chunk offset or length out of range".into()));
    }
    let id: InstanceId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let row =
        ctx.store.instance(id.as_str()).await?.ok_or(AppError::NotFound { kind: "instance", id: id.to_string() })?;
    if row.host_id.as_deref() != Some(c.host_id.as_str()) {
        return Err(AppError::Forbidden(format!("instance {id} is not on host {}", c.host_id)));
    }
    let next_offset = if c.raw_len == 0 {
        ctx.store.console_offset(id.as_str()).await?
    } else {
        ctx.store.append_console(id.as_str(), c.offset, c.raw_len, &c.data).await?
    };
    Ok(Json(ConsoleAck { next_offset }))
}

/// Trade a one-time join token for this host's own credential.
#[utoipa::path(post, path = "/api/v1/agent/join", tag = "agent", request_body = nubo_api::params::HostJoin,
    responses((status = 200, body = nubo_api::views::HostCredential),
        (status = 401, description = "unknown, used or expired join token", body = nubo_api::error::ErrorBody)))]
pub async fn join(
    State(ctx): State<Arc<Ctx>>,
    ApiJson(j): ApiJson<nubo_api::params::HostJoin>,
) -> AppResult<Json<nubo_api::views::HostCredential>> {
    // The whole token or just its secret: only the secret is checked (the
    // agent already checked the fingerprint against this server's CA).
    let token: nubo_api::join::JoinToken =
        j.join_token.parse().map_err(|e: nubo_api::join::JoinTokenError| AppError::BadRequest(e.to_string()))?;
    match ctx.store.join_host(&token.secret, j.host_id.as_str()).await? {
        Some(credential) => {
            tracing::info!(host = %j.host_id, "host joined");
            Ok(Json(nubo_api::views::HostCredential { host_id: j.host_id, credential }))
        }
        None => Err(AppError::Unauthorized(
            "the join token is unknown, already used or expired: create a new one with `nubo host join-token`".into(),
        )),
    }
}

/// Progress of a run on an instance of the reporting host: its state,
/// guest pid, exit code and the next piece of its log.
#[utoipa::path(post, path = "/api/v1/agent/runs/{id}", tag = "agent", operation_id = "agent_run_progress",
    request_body = RunProgress,
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunAck), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn run_progress(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<RunProgress>,
) -> AppResult<Json<RunAck>> {
    same_host(&caller, &p.host_id)?;
    if !matches!(p.state, RunState::Running | RunState::Succeeded | RunState::Failed) {
        return Err(AppError::BadRequest("run state must be running, succeeded or failed".into()));
    }
    if p.log_offset > (1 << 50) || p.log_raw_len > (1 << 24) || p.log.len() > (1 << 24) {
        return Err(AppError::BadRequest("run log chunk offset or length out of range".into()));
    }
    let id: nubo_api::ids::RunId =
        id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let run = ctx.store.run(id.as_str()).await?.ok_or(AppError::NotFound { kind: "run", id: id.to_string() })?;
    let instance = ctx.store.instance(&run.instance_id).await?;
    if instance.and_then(|i| i.host_id).as_deref() != Some(p.host_id.as_str()) {
        return Err(AppError::Forbidden(format!("run {id} is not on host {}", p.host_id)));
    }
    let log_offset = ctx.store.apply_run_progress(&run, &p).await?;
    Ok(Json(RunAck { log_offset }))
}
