//! Backups, the operations: registering repositories (operators; their
//! secrets and keys sealed), plans (a project's what, when, where and how
//! long), backups taken now or by a plan, the agent's side (claiming a
//! backup job, reporting on it), and the periodic work the `backups`
//! background task does with them (due plans, retention, pruning, silent
//! hosts). REST, the CLI (through the client) and the background task all
//! come through here.

use crate::auth::{Caller, HostCaller};
use crate::authz::{self, Access};
use crate::backups::{self as domain, BackupRow, Finish, NewBackup, NewPlan, Outcome, PlanRow, RepositoryRow};
use crate::error::{AppError, AppResult};
use crate::pagination::{cut_in_memory, Cursor, PageRequest};
use crate::store::{now_ms, InstanceRow};
use crate::Ctx;
use nubo_api::agent::PowerState;
use nubo_api::backup::{
    Backup, BackupJob, BackupJobDisk, BackupJobReport, BackupPlan, BackupRepository, BackupRun, BackupState,
    PlanCreate, RepositoryAccess, RepositoryCreate, RepositoryLocation, VerifyMode,
};
use nubo_api::ids::{BackupId, BackupPlanId, BackupRepositoryId};
use nubo_api::views::InstanceState;
use nubo_backup::{RepoKey, Repository};
use std::collections::{BTreeMap, HashSet};

pub const REPO_KIND: &str = "backup repository";
pub const PLAN_KIND: &str = "backup plan";
pub const KIND: &str = "backup";

/// The error a failed report on a backup is given when its host went silent.
pub const SILENT_ERROR: &str =
    "the host stopped reporting on this backup for 10 minutes: check the host (`nubo host list`) and run the backup again";

// ---- repositories ----

/// The secret of a location, and the location without it (as stored).
fn split_secret(location: &RepositoryLocation) -> (RepositoryLocation, Option<String>) {
    let mut bare = location.clone();
    let secret = match &mut bare {
        RepositoryLocation::Dir { .. } => None,
        RepositoryLocation::Sftp { private_key, .. } => Some(std::mem::take(private_key)),
        RepositoryLocation::S3 { secret_access_key, .. } => Some(std::mem::take(secret_access_key)),
    };
    (bare, secret)
}

fn stored_location(row: &RepositoryRow) -> AppResult<RepositoryLocation> {
    serde_json::from_str(&row.location_json)
        .map_err(|e| AppError::internal(format!("backup repository {} location does not parse: {e}", row.id)))
}

pub fn repository_view(row: &RepositoryRow) -> AppResult<BackupRepository> {
    Ok(BackupRepository {
        id: parse(&row.id)?,
        name: row.name.clone(),
        location: stored_location(row)?.view(),
        created_at: domain::rfc3339(row.created_at_ms),
        last_prune_at: row.last_prune_ms.map(domain::rfc3339),
        last_prune_bytes_freed: row.last_prune_bytes_freed.map(|b| b.max(0) as u64),
        pruning: row.pruning_since_ms.is_some(),
    })
}

fn parse<T: std::str::FromStr<Err = nubo_api::ids::IdError>>(s: &str) -> AppResult<T> {
    s.parse().map_err(|e: nubo_api::ids::IdError| AppError::internal(e))
}

fn check_location(location: &RepositoryLocation) -> AppResult<()> {
    let bad = |m: String| Err(AppError::BadRequest(m));
    match location {
        RepositoryLocation::Dir { path } if !path.starts_with('/') => {
            bad(format!("repository path '{path}' is not absolute: give the directory's full path, e.g. /mnt/backups"))
        }
        RepositoryLocation::Sftp { host, user, path, private_key, host_key, .. } => {
            if host.is_empty() || user.is_empty() || !path.starts_with('/') {
                return bad("an SFTP repository needs a host, a user and an absolute path (USER@HOST:/PATH)".into());
            }
            if !private_key.contains("PRIVATE KEY") {
                return bad("the SFTP private key is not an OpenSSH private key: give the file's PEM text".into());
            }
            if host_key.split_whitespace().count() < 2 {
                return bad(format!(
                    "host key '{}' is not a public key: give the server's key as in known_hosts, \
                     e.g. 'ssh-ed25519 AAAA...' (ssh-keyscan HOST prints it)",
                    host_key.chars().take(60).collect::<String>()
                ));
            }
            Ok(())
        }
        RepositoryLocation::S3 { endpoint, bucket, access_key_id, secret_access_key, .. } => {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return bad(format!("S3 endpoint '{endpoint}' is not a URL: give it as https://HOST[:PORT]"));
            }
            if bucket.is_empty() || access_key_id.is_empty() || secret_access_key.is_empty() {
                return bad("an S3 repository needs a bucket, an access key id and its secret access key".into());
            }
            Ok(())
        }
        RepositoryLocation::Dir { .. } => Ok(()),
    }
}

/// Registers a repository: its key made here, the key and the location's
/// secret sealed, the repository opened (its config written on first use)
/// before anything is stored.
pub async fn create_repository(ctx: &Ctx, caller: &Caller, p: &RepositoryCreate) -> AppResult<BackupRepository> {
    authz::require_admin(caller)?;
    crate::validate::name_of("repository name", &p.name, 63)?;
    check_location(&p.location)?;
    if ctx.store.backup_repository(&p.name).await?.is_some() {
        return Err(AppError::Conflict(format!(
            "a backup repository named '{}' exists: choose another name, or delete it first",
            p.name
        )));
    }
    let key = RepoKey::generate();
    let url = p.location.view().url;
    Repository::open(&p.location, &key).await.map_err(|e| {
        use nubo_backup::BackupError as E;
        let m = format!("cannot register {url} as a backup repository: {e}");
        match e {
            // Someone else's repository (another cloud's, or one registered
            // before under another name): its objects must not be mixed.
            E::WrongKey { .. } | E::Format { .. } => AppError::Conflict(format!(
                "{m} (it is already a repository: give another location, or delete the old repository's files)"
            )),
            _ => AppError::BadRequest(m),
        }
    })?;
    let (bare, secret) = split_secret(&p.location);
    let row = RepositoryRow {
        id: BackupRepositoryId::generate().to_string(),
        name: p.name.clone(),
        kind: p.location.kind().to_string(),
        location_json: serde_json::to_string(&bare).map_err(AppError::internal)?,
        sealed_secret: secret.map(|s| ctx.sealer.seal(&s)),
        sealed_key: ctx.sealer.seal(&key.to_hex()),
        created_at_ms: now_ms(),
        pruning_since_ms: None,
        last_prune_ms: None,
        last_prune_bytes_freed: None,
    };
    if !ctx.store.insert_backup_repository(&row).await? {
        return Err(AppError::Conflict(format!(
            "a backup repository named '{}' exists: choose another name, or delete it first",
            p.name
        )));
    }
    tracing::info!(repository = %row.id, url = %url, "backup repository registered");
    repository_view(&row)
}

/// Repositories are the cluster's: every signed-in user may see them (the
/// views hold no secret), to name one in a plan or a backup.
pub async fn list_repositories(ctx: &Ctx, _caller: &Caller) -> AppResult<Vec<BackupRepository>> {
    ctx.store.backup_repositories().await?.iter().map(repository_view).collect()
}

async fn load_repository(ctx: &Ctx, id_or_name: &str) -> AppResult<RepositoryRow> {
    ctx.store
        .backup_repository(id_or_name)
        .await?
        .ok_or_else(|| AppError::NotFound { kind: REPO_KIND, id: id_or_name.chars().take(64).collect() })
}

pub async fn show_repository(ctx: &Ctx, _caller: &Caller, id: &str) -> AppResult<BackupRepository> {
    repository_view(&load_repository(ctx, id).await?)
}

/// Forgets a repository (its objects stay where they are); refused while
/// plans or backups use it.
pub async fn delete_repository(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<()> {
    authz::require_admin(caller)?;
    let row = load_repository(ctx, id).await?;
    if !ctx.store.delete_backup_repository(&row.id).await? {
        return Err(AppError::Conflict(format!(
            "backup repository {} is used by backups or plans: delete them first \
             (`nubo backup list`, `nubo backup plan list`)",
            row.name
        )));
    }
    Ok(())
}

/// What a host needs to reach a repository: its location with the secret
/// unsealed, and its key. Only for the host doing a job (or a restore).
pub async fn repository_access(ctx: &Ctx, repo_id: &str) -> AppResult<RepositoryAccess> {
    let row = load_repository(ctx, repo_id).await?;
    let unseal =
        |s: &str| ctx.sealer.unseal(s).map_err(|e| AppError::internal(format!("backup repository {}: {e}", row.id)));
    let mut location = stored_location(&row)?;
    if let Some(sealed) = &row.sealed_secret {
        let secret = unseal(sealed)?;
        match &mut location {
            RepositoryLocation::Dir { .. } => {}
            RepositoryLocation::Sftp { private_key, .. } => *private_key = secret,
            RepositoryLocation::S3 { secret_access_key, .. } => *secret_access_key = secret,
        }
    }
    Ok(RepositoryAccess { id: parse(&row.id)?, location, key_hex: unseal(&row.sealed_key)? })
}

/// Opens a repository from the control plane (to delete and prune).
pub async fn open_repository(ctx: &Ctx, repo_id: &str) -> AppResult<Repository> {
    let access = repository_access(ctx, repo_id).await?;
    let key = RepoKey::from_hex(&access.key_hex).map_err(AppError::internal)?;
    Repository::open(&access.location, &key).await.map_err(|e| {
        AppError::Unavailable(format!(
            "cannot open backup repository {}: {e}; check that it is reachable from the control plane, then retry",
            access.location.view().url
        ))
    })
}

// ---- plans ----

pub fn plan_view(row: &PlanRow) -> AppResult<BackupPlan> {
    Ok(BackupPlan {
        id: parse(&row.id)?,
        project_id: parse(&row.project_id)?,
        name: row.name.clone(),
        repository_id: parse(&row.repository_id)?,
        selector: row.selector(),
        schedule: row.schedule.clone(),
        retention: row.retention(),
        verify: VerifyMode::parse(&row.verify).unwrap_or(VerifyMode::None),
        next_run_at: row.next_run_ms.map(domain::rfc3339),
        last_run_at: row.last_run_ms.map(domain::rfc3339),
        created_at: domain::rfc3339(row.created_at_ms),
    })
}

/// A plan by id, or by name in the caller's project.
async fn load_plan(ctx: &Ctx, caller: &Caller, id_or_name: &str, access: Access) -> AppResult<PlanRow> {
    let row = if id_or_name.starts_with(BackupPlanId::PREFIX) {
        ctx.store.backup_plan(id_or_name).await?
    } else {
        let project = authz::caller_project(caller)?;
        ctx.store.backup_plan_by_name(&project, id_or_name).await?
    }
    .ok_or_else(|| AppError::NotFound { kind: PLAN_KIND, id: id_or_name.chars().take(64).collect() })?;
    authz::check(caller, access, Some(&row.project_id), PLAN_KIND, id_or_name)?;
    Ok(row)
}

pub async fn create_plan(ctx: &Ctx, caller: &Caller, p: &PlanCreate) -> AppResult<BackupPlan> {
    let project = authz::creation_project(caller)?;
    crate::validate::name_of("plan name", &p.name, 63)?;
    let repo = ctx.store.backup_repository(&p.repository).await?.ok_or_else(|| {
        AppError::BadRequest(format!(
            "backup repository '{}' does not exist: see `nubo backup repo list`",
            p.repository.chars().take(64).collect::<String>()
        ))
    })?;
    domain::parse_schedule(&p.schedule).map_err(AppError::BadRequest)?;
    let s = &p.selector;
    if s.instances.is_empty() && s.tags.is_empty() && s.groups.is_empty() {
        return Err(AppError::BadRequest(
            "the plan selects no instance: give instance ids, tags (all must match) or instance groups".into(),
        ));
    }
    for id in &s.instances {
        let found = ctx.store.instance(id.as_str()).await?;
        if found.is_none_or(|i| i.project_id.as_deref() != Some(project.as_str())) {
            return Err(AppError::BadRequest(format!(
                "instance {id} is not in this project: check the id with `nubo instance list`"
            )));
        }
    }
    for (k, v) in &s.tags {
        crate::validate::tag(k, v)?;
    }
    let groups = ctx.store.groups(Some(&project)).await?;
    for g in &s.groups {
        if !groups.iter().any(|r| &r.id == g || &r.name == g) {
            return Err(AppError::BadRequest(format!(
                "instance group '{}' does not exist in this project: see `nubo group list`",
                g.chars().take(64).collect::<String>()
            )));
        }
    }
    let r = &p.retention;
    if r.last == 0 && r.daily == 0 && r.weekly == 0 && r.monthly == 0 {
        return Err(AppError::BadRequest(
            "the retention keeps nothing: keep at least one backup (--keep-last 1, or daily, weekly or monthly ones)"
                .into(),
        ));
    }
    let id = BackupPlanId::generate().to_string();
    let selector_json = serde_json::to_string(s).map_err(AppError::internal)?;
    let plan = NewPlan {
        id: &id,
        project_id: &project,
        name: &p.name,
        repository_id: &repo.id,
        selector_json: &selector_json,
        schedule: &p.schedule,
        retention: p.retention,
        verify: p.verify.as_str(),
        next_run_ms: domain::next_run(&p.schedule, now_ms()),
    };
    if !ctx.store.insert_backup_plan(&plan).await? {
        return Err(AppError::Conflict(format!(
            "the project has a backup plan named '{}': choose another name, or delete it first",
            p.name
        )));
    }
    let row = ctx.store.backup_plan(&id).await?.ok_or_else(|| AppError::internal("a new plan vanished"))?;
    plan_view(&row)
}

pub async fn list_plans(ctx: &Ctx, caller: &Caller) -> AppResult<Vec<BackupPlan>> {
    let Some(scope) = authz::list_scope(caller) else { return Ok(Vec::new()) };
    ctx.store.backup_plans(scope.as_deref()).await?.iter().map(plan_view).collect()
}

pub async fn show_plan(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<BackupPlan> {
    plan_view(&load_plan(ctx, caller, id, Access::Read).await?)
}

/// Deletes a plan; its backups stay (and keep its id, as history).
pub async fn delete_plan(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<()> {
    let row = load_plan(ctx, caller, id, Access::Write).await?;
    ctx.store.delete_backup_plan(&row.id).await?;
    Ok(())
}

// ---- backups ----

pub fn backup_view(row: &BackupRow) -> AppResult<Backup> {
    let disks = row.disks();
    Ok(Backup {
        id: parse(&row.id)?,
        project_id: parse(&row.project_id)?,
        instance_id: parse(&row.instance_id)?,
        instance_name: row.instance_name.clone(),
        plan_id: row.plan_id.as_deref().map(parse).transpose()?,
        repository_id: parse(&row.repository_id)?,
        parent_id: row.parent_id.as_deref().map(parse).transpose()?,
        state: row.state,
        consistency: row.consistency.clone(),
        bytes_done: row.bytes_done.max(0) as u64,
        bytes_total: row.bytes_total.map(|b| b.max(0) as u64),
        bytes_sent: row.bytes_sent.max(0) as u64,
        bytes_stored: row.bytes_stored.max(0) as u64,
        disks,
        error: row.error.clone(),
        verify: row.verify_state,
        verify_detail: row.verify_detail.clone(),
        created_at: domain::rfc3339(row.created_at_ms),
        finished_at: row.finished_at_ms.map(domain::rfc3339),
    })
}

async fn load_backup(ctx: &Ctx, caller: &Caller, id: &str, access: Access) -> AppResult<BackupRow> {
    let id: BackupId = id.parse().map_err(|e: nubo_api::ids::IdError| AppError::BadRequest(e.to_string()))?;
    let row = ctx.store.backup(id.as_str()).await?.ok_or(AppError::NotFound { kind: KIND, id: id.to_string() })?;
    authz::check(caller, access, Some(&row.project_id), KIND, id.as_str())?;
    Ok(row)
}

/// What a backup keeps of its instance beside the disks, so that it can
/// be restored as it was (also without this database): the instance's view
/// (size, image, hardware, networks, tags, key name), its volumes with
/// their sizes, its user data and public key.
pub async fn instance_meta(ctx: &Ctx, row: &InstanceRow) -> AppResult<serde_json::Value> {
    let view = super::instances::view(ctx, row.clone(), false).await?;
    let volumes: Vec<serde_json::Value> = ctx
        .store
        .volumes_of_instance(&row.id)
        .await?
        .iter()
        .map(|v| {
            serde_json::json!({"id": v.id, "name": v.name, "size_gib": v.size_gib,
                "size_bytes": (v.size_gib.max(0) as u64) << 30, "slot": v.slot, "device_name": v.device_name})
        })
        .collect();
    Ok(serde_json::json!({
        "instance": view,
        "volumes": volumes,
        "user_data": row.user_data,
        "public_key": row.public_key,
        "hardware": row.hardware,
        "image_id": row.image_id,
    }))
}

/// Why an instance cannot be backed up now, if it cannot.
fn not_backupable(row: &InstanceRow) -> Option<String> {
    if row.desired == PowerState::Deleted || row.state == InstanceState::Terminated {
        return Some(format!("instance {} is being deleted: there is nothing to back up", row.id));
    }
    if row.host_id.is_none() {
        return Some(format!("instance {} has no host yet: back it up once it has started", row.id));
    }
    if !matches!(row.state, InstanceState::Running | InstanceState::Stopped) {
        return Some(format!(
            "instance {} is {}: back it up when it is running or stopped",
            row.id,
            row.state.as_str()
        ));
    }
    None
}

/// Queues a backup of `row` into `repo` (for `plan`): false when the
/// instance already has one pending or running.
async fn queue(ctx: &Ctx, row: &InstanceRow, repo: &str, plan: Option<&str>) -> AppResult<Option<String>> {
    let meta = serde_json::to_string(&instance_meta(ctx, row).await?).map_err(AppError::internal)?;
    let id = BackupId::generate().to_string();
    let project = row.project_id.clone().unwrap_or_default();
    let new = NewBackup {
        id: &id,
        project_id: &project,
        instance_id: &row.id,
        instance_name: &row.name,
        plan_id: plan,
        repository_id: repo,
        host_id: row.host_id.as_deref().unwrap_or_default(),
        instance_json: &meta,
    };
    Ok(ctx.store.insert_backup(&new).await?.then_some(id))
}

/// Backs an instance up now: a pending backup its host takes.
pub async fn run(ctx: &Ctx, caller: &Caller, instance: &str, p: &BackupRun) -> AppResult<Backup> {
    let row = super::instances::load(ctx, caller, instance, Access::Write).await?;
    let plan = match &p.plan {
        Some(plan) => Some(load_plan(ctx, caller, plan, Access::Read).await?),
        None => None,
    };
    let repo = match (&p.repository, &plan) {
        (Some(r), _) => ctx.store.backup_repository(r).await?.ok_or_else(|| {
            AppError::BadRequest(format!(
                "backup repository '{}' does not exist: see `nubo backup repo list`",
                r.chars().take(64).collect::<String>()
            ))
        })?,
        (None, Some(plan)) => load_repository(ctx, &plan.repository_id).await?,
        (None, None) => {
            let mut all = ctx.store.backup_repositories().await?;
            match all.len() {
                1 => all.remove(0),
                0 => {
                    return Err(AppError::Conflict(
                        "there is no backup repository: an operator registers one with `nubo backup repo add`".into(),
                    ))
                }
                _ => {
                    return Err(AppError::BadRequest(
                        "there are several backup repositories: say which with --repo (`nubo backup repo list`)".into(),
                    ))
                }
            }
        }
    };
    if let Some(why) = not_backupable(&row) {
        return Err(AppError::Conflict(why));
    }
    let Some(id) = queue(ctx, &row, &repo.id, plan.as_ref().map(|p| p.id.as_str())).await? else {
        return Err(AppError::Conflict(format!(
            "instance {} is being backed up already: wait for that backup (`nubo backup list --instance {}`)",
            row.id, row.id
        )));
    };
    if let Some(host) = &row.host_id {
        ctx.bump_host(host);
    }
    backup_view(&ctx.store.backup(&id).await?.ok_or_else(|| AppError::internal("a new backup vanished"))?)
}

/// One page of the caller's backups (every project's for operators),
/// optionally of one instance or plan.
pub async fn list(
    ctx: &Ctx,
    caller: &Caller,
    instance: Option<&str>,
    plan: Option<&str>,
    page: &PageRequest,
) -> AppResult<(Vec<Backup>, Option<String>)> {
    let Some(scope) = authz::list_scope(caller) else { return Ok((Vec::new(), None)) };
    let plan_id = match plan {
        Some(p) => Some(load_plan(ctx, caller, p, Access::Read).await?.id),
        None => None,
    };
    let rows = ctx.store.backups(scope.as_deref(), instance, plan_id.as_deref()).await?;
    let (rows, next) = cut_in_memory(rows, page, |r| Cursor::of(r.created_at_ms, &r.id));
    Ok((rows.iter().map(backup_view).collect::<AppResult<_>>()?, next))
}

pub async fn show(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<Backup> {
    backup_view(&load_backup(ctx, caller, id, Access::Read).await?)
}

/// Deletes a backup: from its repository (its chunks go at the next
/// prune), then its row. A running backup cannot be deleted.
pub async fn delete(ctx: &Ctx, caller: &Caller, id: &str) -> AppResult<()> {
    let row = load_backup(ctx, caller, id, Access::Write).await?;
    if row.state == BackupState::Running {
        return Err(AppError::Conflict(format!(
            "backup {} is being taken: wait until it completes or fails, then delete it",
            row.id
        )));
    }
    remove(ctx, &row).await?;
    if !ctx.store.delete_backup_row(&row.id).await? {
        return Err(AppError::Conflict(format!(
            "backup {} started meanwhile: wait until it completes or fails, then delete it",
            row.id
        )));
    }
    Ok(())
}

/// Removes a backup from its repository: a completed one must go; a failed
/// one may have left a disk index, removed if the repository answers.
async fn remove(ctx: &Ctx, row: &BackupRow) -> AppResult<()> {
    let must = row.state == BackupState::Completed;
    if !must && row.state != BackupState::Failed {
        return Ok(());
    }
    let result = match open_repository(ctx, &row.repository_id).await {
        Ok(repo) => repo.delete_backup(&row.id).await.map_err(|e| {
            AppError::Unavailable(format!("cannot delete backup {} from its repository: {e}; retry later", row.id))
        }),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if must => Err(e),
        Err(e) => {
            tracing::warn!(backup = %row.id, error = %e, "a failed backup's leftovers could not be removed");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

// ---- the agent's side ----

fn same_host(caller: &HostCaller, id: &str) -> AppResult<()> {
    if caller.host_id == id {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!("this credential belongs to host {}, not {id}", caller.host_id)))
    }
}

/// The disks a backup copies: the root disk and each volume attached when
/// it was queued.
fn job_disks(meta: &serde_json::Value) -> Vec<BackupJobDisk> {
    let mut disks = vec![BackupJobDisk { name: "root".into(), volume_id: None }];
    for v in meta["volumes"].as_array().into_iter().flatten() {
        if let Some(id) = v["id"].as_str().and_then(|s| s.parse::<nubo_api::ids::VolumeId>().ok()) {
            disks.push(BackupJobDisk { name: id.to_string(), volume_id: Some(id) });
        }
    }
    disks
}

/// A host takes its oldest pending backup; `None` when it has none.
pub async fn claim(ctx: &Ctx, caller: &HostCaller, host: &str) -> AppResult<Option<BackupJob>> {
    same_host(caller, host)?;
    let Some(row) = ctx.store.claim_backup(host).await? else { return Ok(None) };
    let meta: serde_json::Value = serde_json::from_str(&row.instance_json).unwrap_or_default();
    let job = BackupJob {
        backup_id: parse(&row.id)?,
        instance_id: parse(&row.instance_id)?,
        repository: repository_access(ctx, &row.repository_id).await?,
        disks: job_disks(&meta),
        parent: row.parent_id.as_deref().map(parse).transpose()?,
        meta,
    };
    tracing::info!(backup = %row.id, host, "backup job claimed");
    Ok(Some(job))
}

/// The host taking a backup reports its progress, or its end.
pub async fn report(ctx: &Ctx, caller: &HostCaller, host: &str, backup: &str, r: &BackupJobReport) -> AppResult<()> {
    same_host(caller, host)?;
    let row = ctx.store.backup(backup).await?.filter(|b| b.host_id.as_deref() == Some(host));
    let Some(row) = row else {
        return Err(AppError::NotFound { kind: KIND, id: backup.chars().take(64).collect() });
    };
    let outcome = match (&r.completed, &r.error) {
        (Some(_), Some(_)) => {
            return Err(AppError::BadRequest("a report is either completed or an error, not both".into()));
        }
        (Some(disks), None) => {
            let disks_json = serde_json::to_string(disks).map_err(AppError::internal)?;
            let sent = disks.iter().map(|d| d.bytes_sent).sum();
            let stored = disks.iter().map(|d| d.bytes_stored).sum();
            if let Some(total) = r.bytes_total {
                ctx.store.backup_progress(&row.id, r.bytes_done, Some(total)).await?;
            }
            let finish = Finish::Completed {
                disks_json: &disks_json,
                consistency: r.consistency.as_deref(),
                bytes_sent: sent,
                bytes_stored: stored,
            };
            let o = ctx.store.finish_backup(&row.id, finish).await?;
            if o == Outcome::Done {
                tracing::info!(backup = %row.id, bytes_sent = sent, bytes_stored = stored, "backup completed");
                super::backup_verification::on_completed(ctx, &row).await?;
            }
            o
        }
        (None, Some(error)) => {
            let o = ctx.store.finish_backup(&row.id, Finish::Failed { error }).await?;
            if o == Outcome::Done {
                tracing::warn!(backup = %row.id, error = %error, "backup failed");
            }
            o
        }
        (None, None) => ctx.store.backup_progress(&row.id, r.bytes_done, r.bytes_total).await?,
    };
    match outcome {
        Outcome::Done => Ok(()),
        Outcome::WrongState => Err(AppError::Conflict(format!(
            "backup {} is {}: it takes no more reports",
            row.id,
            ctx.store.backup(&row.id).await?.map(|b| b.state.as_str()).unwrap_or("deleted")
        ))),
    }
}

// ---- the periodic work ----

/// Queues a backup of each instance a due plan selects (running or
/// stopped, on a host, not already being backed up) and moves the plan to
/// its next run. Returns the backups queued.
pub async fn fire_due_plans(ctx: &Ctx, now: i64) -> AppResult<Vec<String>> {
    let mut queued = Vec::new();
    for plan in ctx.store.due_backup_plans(now).await? {
        let next = domain::next_run(&plan.schedule, now);
        // Another server (or round) that fired it first wins.
        if !ctx.store.advance_backup_plan(&plan.id, plan.next_run_ms, now, next).await? {
            continue;
        }
        let selector = plan.selector();
        let groups: HashSet<String> = ctx
            .store
            .groups(Some(&plan.project_id))
            .await?
            .into_iter()
            .filter(|g| selector.groups.iter().any(|s| s == &g.id || s == &g.name))
            .map(|g| g.id)
            .collect();
        for inst in ctx.store.instances(Some(&plan.project_id)).await? {
            if not_backupable(&inst).is_some() {
                continue;
            }
            let tags: BTreeMap<String, String> =
                if selector.tags.is_empty() { BTreeMap::new() } else { ctx.store.tags_of(&inst.id).await? };
            let group = if groups.is_empty() { None } else { ctx.store.instance_group_id(&inst.id).await? };
            if !domain::selects(&selector, &groups, &inst.id, &tags, group.as_deref()) {
                continue;
            }
            if let Some(id) = queue(ctx, &inst, &plan.repository_id, Some(&plan.id)).await? {
                tracing::info!(plan = %plan.id, instance = %inst.id, backup = %id, "scheduled backup queued");
                if let Some(host) = &inst.host_id {
                    ctx.bump_host(host);
                }
                queued.push(id);
            }
        }
    }
    Ok(queued)
}

/// Applies each plan's retention to its completed backups, per instance:
/// the backups it no longer keeps are deleted from their repository and
/// their rows removed. Returns the repositories that lost backups (to be
/// pruned).
pub async fn apply_retention(ctx: &Ctx) -> AppResult<Vec<String>> {
    let mut touched = Vec::new();
    for plan in ctx.store.backup_plans(None).await? {
        let retention = plan.retention();
        let mut by_instance: BTreeMap<String, Vec<BackupRow>> = BTreeMap::new();
        for b in ctx.store.completed_backups_of_plan(&plan.id).await? {
            by_instance.entry(b.instance_id.clone()).or_default().push(b);
        }
        for backups in by_instance.values() {
            let taken: Vec<(String, i64)> = backups.iter().map(|b| (b.id.clone(), b.created_at_ms)).collect();
            let kept = domain::keep(&taken, &retention);
            for b in backups.iter().filter(|b| !kept.contains(&b.id)) {
                match remove(ctx, b).await {
                    Ok(()) => {
                        ctx.store.delete_backup_row(&b.id).await?;
                        tracing::info!(plan = %plan.id, backup = %b.id, "backup past its plan's retention deleted");
                        if !touched.contains(&b.repository_id) {
                            touched.push(b.repository_id.clone());
                        }
                    }
                    // Tried again next round.
                    Err(e) => tracing::warn!(backup = %b.id, error = %e, "an expired backup could not be deleted"),
                }
            }
        }
    }
    Ok(touched)
}

/// Prunes a repository: marked first (no backup into it starts, and none
/// may be running), unmarked after, the freed bytes recorded. `None` when
/// it could not be marked (a backup runs, or a prune already does).
pub async fn prune(ctx: &Ctx, repo_id: &str) -> AppResult<Option<nubo_backup::PruneStats>> {
    if !ctx.store.mark_pruning(repo_id, now_ms()).await? {
        return Ok(None);
    }
    let result = match open_repository(ctx, repo_id).await {
        Ok(repo) => repo.prune().await.map_err(|e| {
            AppError::Unavailable(format!("cannot prune backup repository {repo_id}: {e}; it is retried later"))
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(stats) => {
            ctx.store.unmark_pruning(repo_id, Some((now_ms(), stats.bytes_freed))).await?;
            tracing::info!(
                repository = repo_id,
                chunks_deleted = stats.chunks_deleted,
                bytes_freed = stats.bytes_freed,
                bytes_kept = stats.bytes_kept,
                "backup repository pruned"
            );
            Ok(Some(stats))
        }
        Err(e) => {
            ctx.store.unmark_pruning(repo_id, None).await?;
            Err(e)
        }
    }
}

/// Fails running backups whose host has been silent for 10 minutes, and
/// clears prune marks left by a server that died pruning.
pub async fn expire(ctx: &Ctx, now: i64) -> AppResult<u64> {
    let cleared = ctx.store.clear_stale_prune_marks(now - domain::STALE_PRUNE_MS).await?;
    if cleared > 0 {
        tracing::warn!(repositories = cleared, "stale prune marks cleared");
    }
    let failed = ctx.store.fail_silent_backups(now - domain::SILENT_AFTER_MS, SILENT_ERROR).await?;
    if failed > 0 {
        tracing::warn!(backups = failed, "running backups whose host went silent failed");
    }
    Ok(failed)
}
