//! `nubo backup`: repositories (operators register them), plans (what is
//! backed up, when, and how long it is kept), backups taken now
//! (`run`, with `--wait` following its progress), and the backups kept.

use crate::cli::Conn;
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use nubo_api::backup::{
    Backup, BackupPlan, BackupRepository, BackupRun, BackupState, PlanCreate, PlanSelector, RepositoryCreate,
    RepositoryLocation, Retention, VerifyMode,
};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Backup repositories: where backups are kept (operators add and delete them).
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Backup plans: which instances, when (cron, UTC), where, what to keep.
    #[command(subcommand)]
    Plan(PlanCmd),
    /// Back an instance up now (all its disks).
    Run {
        /// Instance id.
        instance: String,
        /// Repository (name or id); default: the plan's, or the only one.
        #[arg(long)]
        repo: Option<String>,
        /// Count it as a backup of this plan (its retention then applies).
        #[arg(long)]
        plan: Option<String>,
        /// Follow its progress until it completes (exit non-zero if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// The project's backups.
    List {
        /// Only this instance's.
        #[arg(long)]
        instance: Option<String>,
        /// Only this plan's (name or id).
        #[arg(long)]
        plan: Option<String>,
    },
    /// A backup: its state, figures and disks.
    Show { id: String },
    /// Delete a backup (from its repository too).
    Delete { id: String },
    /// A new instance from a backup: its size, disks and volumes.
    Restore {
        backup: String,
        /// The new instance's name (default: the original's with `-restored`).
        #[arg(long)]
        name: Option<String>,
        /// Put it on the original's private networks (by default it gets
        /// none, so it does not clash with a still-running original).
        #[arg(long)]
        with_networks: bool,
        /// Pin it to a host (operators).
        #[arg(long)]
        host: Option<String>,
        /// Return once it runs, printing its stages.
        #[arg(long)]
        wait: bool,
    },
    /// A new volume from one disk of a backup.
    RestoreVolume {
        backup: String,
        /// `root`, or the id of a volume the backup holds.
        #[arg(long)]
        disk: String,
        #[arg(long)]
        name: Option<String>,
    },
}

// Parsed once per process: the size of `add`'s flags costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum RepoCmd {
    /// Register a repository: exactly one of --dir, --sftp, --s3.
    Add(RepoAdd),
    List,
    /// Forget a repository (refused while plans or backups use it).
    Delete {
        name: String,
    },
}

#[derive(Args)]
pub struct RepoAdd {
    name: String,
    /// A directory every host sees at the same path (an NFS mount).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["sftp", "s3"])]
    dir: Option<String>,
    /// An SFTP server: USER@HOST[:PORT]:/PATH.
    #[arg(long, value_name = "USER@HOST[:PORT]:/PATH", conflicts_with = "s3", requires_all = ["ssh_key", "host_key"])]
    sftp: Option<String>,
    /// The SFTP client's private key file (OpenSSH, unencrypted).
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// The SFTP server's public host key: 'ssh-ed25519 AAAA...' (ssh-keyscan prints it).
    #[arg(long, value_name = "KEY")]
    host_key: Option<String>,
    /// An S3-compatible store's URL (https://s3.eu-west-1.amazonaws.com).
    #[arg(long, value_name = "ENDPOINT", requires_all = ["bucket", "access_key_id"])]
    s3: Option<String>,
    #[arg(long)]
    bucket: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, value_name = "KEY")]
    access_key_id: Option<String>,
    /// The S3 secret key (better: the environment variable, kept out of the shell history).
    #[arg(long, env = "NUBO_S3_SECRET_ACCESS_KEY", hide_env_values = true, value_name = "SECRET")]
    secret_access_key: Option<String>,
}

#[derive(Subcommand)]
pub enum PlanCmd {
    /// Create a plan; it selects instances by id, tag (all must match) or group.
    Create {
        name: String,
        /// Repository (name or id).
        #[arg(long)]
        repo: String,
        /// An instance id (repeatable).
        #[arg(long = "instance", value_name = "ID")]
        instances: Vec<String>,
        /// A tag, KEY=VALUE (repeatable; an instance needs all of them).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// An instance group, by name or id (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// When, as five cron fields in UTC: '0 3 * * *' is every day at 03:00.
        #[arg(long)]
        schedule: String,
        /// Keep the newest N.
        #[arg(long, default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest of each of the last N days.
        #[arg(long, default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest of each of the last N ISO weeks.
        #[arg(long, default_value_t = 0)]
        keep_weekly: u32,
        /// Keep the newest of each of the last N months.
        #[arg(long, default_value_t = 0)]
        keep_monthly: u32,
        /// Prove backups by restoring them: none, each, daily.
        #[arg(long, default_value = "none", value_parser = parse_verify)]
        verify: VerifyMode,
    },
    List,
    Show {
        name: String,
    },
    /// Delete a plan (its backups stay).
    Delete {
        name: String,
    },
}

fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE: write it as env=prod")),
    }
}

fn parse_verify(s: &str) -> Result<VerifyMode, String> {
    VerifyMode::parse(s).ok_or_else(|| format!("'{s}' is not a verification mode: use none, each or daily"))
}

/// `USER@HOST[:PORT]:/PATH` as (user, host, port, path).
fn parse_sftp(s: &str) -> anyhow::Result<(String, String, u16, String)> {
    let form = "write it as USER@HOST[:PORT]:/PATH, e.g. nubo@backup.example:/srv/nubo";
    let (user, rest) =
        s.split_once('@').filter(|(u, _)| !u.is_empty()).with_context(|| format!("'{s}' has no user: {form}"))?;
    let at = rest.find(":/").with_context(|| format!("'{s}' has no absolute path: {form}"))?;
    let (host_port, path) = (&rest[..at], &rest[at + 1..]);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().with_context(|| format!("port '{p}' is not a number: {form}"))?),
        None => (host_port, 22),
    };
    if host.is_empty() {
        bail!("'{s}' has no host: {form}");
    }
    Ok((user.to_string(), host.to_string(), port, path.to_string()))
}

fn location(a: RepoAdd) -> anyhow::Result<RepositoryLocation> {
    if let Some(path) = a.dir {
        return Ok(RepositoryLocation::Dir { path });
    }
    if let Some(spec) = a.sftp {
        let (user, host, port, path) = parse_sftp(&spec)?;
        let key_file = a.ssh_key.context("--sftp needs --ssh-key FILE (the client's private key)")?;
        let private_key = std::fs::read_to_string(&key_file)
            .with_context(|| format!("cannot read the SSH key {}", key_file.display()))?;
        let host_key = a.host_key.context("--sftp needs --host-key 'ssh-ed25519 AAAA...' (ssh-keyscan HOST)")?;
        return Ok(RepositoryLocation::Sftp { host, port, user, path, private_key, host_key });
    }
    if let Some(endpoint) = a.s3 {
        return Ok(RepositoryLocation::S3 {
            endpoint,
            region: a.region,
            bucket: a.bucket.context("--s3 needs --bucket")?,
            prefix: a.prefix,
            access_key_id: a.access_key_id.context("--s3 needs --access-key-id")?,
            secret_access_key: a
                .secret_access_key
                .context("--s3 needs the secret key: set NUBO_S3_SECRET_ACCESS_KEY (or give --secret-access-key)")?,
        });
    }
    bail!("say where the repository is: --dir PATH, --sftp USER@HOST:/PATH or --s3 ENDPOINT")
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn print_repo(r: &BackupRepository) {
    println!("{} ({}) {}", r.name, r.id, r.location.url);
    if let (Some(at), Some(freed)) = (&r.last_prune_at, r.last_prune_bytes_freed) {
        println!("  last pruned {at}, freed {}", mib(freed));
    }
    if r.pruning {
        println!("  being pruned");
    }
}

fn retention(r: &Retention) -> String {
    let mut parts = Vec::new();
    for (n, what) in [(r.last, "last"), (r.daily, "daily"), (r.weekly, "weekly"), (r.monthly, "monthly")] {
        if n > 0 {
            parts.push(format!("{what} {n}"));
        }
    }
    parts.join(", ")
}

fn selector(s: &PlanSelector) -> String {
    let mut parts: Vec<String> = s.instances.iter().map(|i| i.to_string()).collect();
    parts.extend(s.tags.iter().map(|(k, v)| format!("tag:{k}={v}")));
    parts.extend(s.groups.iter().map(|g| format!("group:{g}")));
    parts.join(",")
}

fn print_plan(p: &BackupPlan) {
    println!("{} ({})", p.name, p.id);
    println!("  repository  {}", p.repository_id);
    println!("  selects     {}", selector(&p.selector));
    println!("  schedule    {} (UTC)", p.schedule);
    println!("  keeps       {}", retention(&p.retention));
    println!("  verify      {}", p.verify);
    println!("  next run    {}", p.next_run_at.as_deref().unwrap_or("-"));
    println!("  last run    {}", p.last_run_at.as_deref().unwrap_or("-"));
}

/// One line per disk: how it was copied and what it cost.
fn disk_lines(b: &Backup) {
    for d in &b.disks {
        let how = if d.incremental {
            "incremental".to_string()
        } else {
            format!("full ({})", d.full_reason.as_deref().unwrap_or("no reason given"))
        };
        println!(
            "  {:<22} {how}: read {}, sent {}, stored {} ({} of {} chunks new)",
            d.name,
            mib(d.bytes_read),
            mib(d.bytes_sent),
            mib(d.bytes_stored),
            d.chunks_new,
            d.chunks
        );
    }
}

fn print_backup(b: &Backup) {
    println!("{} of {} ({}): {}", b.id, b.instance_name, b.instance_id, b.state);
    println!("  repository   {}", b.repository_id);
    if let Some(p) = &b.plan_id {
        println!("  plan         {p}");
    }
    println!("  parent       {}", b.parent_id.as_ref().map(|p| p.to_string()).unwrap_or("-".into()));
    println!(
        "  taken        {}{}",
        b.created_at,
        b.finished_at.as_deref().map(|f| format!(" .. {f}")).unwrap_or_default()
    );
    if let Some(c) = &b.consistency {
        println!("  consistency  {c}");
    }
    match b.bytes_total {
        Some(t) if b.state == BackupState::Running => println!("  progress     {} of {}", mib(b.bytes_done), mib(t)),
        _ => {}
    }
    println!("  sent         {}, stored {}", mib(b.bytes_sent), mib(b.bytes_stored));
    println!("  verified     {}{}", b.verify, b.verify_detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default());
    if let Some(e) = &b.error {
        println!("  error        {e}");
    }
    disk_lines(b);
}

fn backup_rows(list: &[Backup]) -> Vec<Vec<String>> {
    list.iter()
        .map(|b| {
            vec![
                b.id.to_string(),
                b.instance_name.clone(),
                b.state.to_string(),
                b.created_at.clone(),
                if b.disks.iter().any(|d| !d.incremental) || b.disks.is_empty() {
                    "full".into()
                } else {
                    "incremental".into()
                },
                mib(b.bytes_stored),
                b.plan_id.as_ref().map(|p| p.to_string()).unwrap_or("-".into()),
                b.verify.to_string(),
            ]
        })
        .collect()
}

/// Follows a backup until it ends: a progress line a second.
async fn wait(conn: &Conn, id: &str) -> anyhow::Result<Backup> {
    let c = client(conn)?;
    loop {
        let b = c.backup(id).await?;
        match b.state {
            BackupState::Completed | BackupState::Failed => return Ok(b),
            BackupState::Pending => println!("waiting for the host to take it"),
            BackupState::Running => {
                let pct = b.bytes_total.filter(|t| *t > 0).map(|t| b.bytes_done * 100 / t).unwrap_or(0);
                println!("{pct:>3}%  {} of {}", mib(b.bytes_done), b.bytes_total.map(mib).unwrap_or("?".into()));
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn backup(cmd: BackupCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Repo(RepoCmd::Add(a)) => {
            let p = RepositoryCreate { name: a.name.clone(), location: location(a)? };
            let r = client(conn)?.create_backup_repository(&p).await?;
            emit(conn.output, &r, print_repo)
        }
        BackupCmd::Repo(RepoCmd::List) => {
            let list = client(conn)?.backup_repositories().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.id.to_string(),
                            r.location.kind.clone(),
                            r.location.url.clone(),
                            r.last_prune_at.clone().unwrap_or("-".into()),
                        ]
                    })
                    .collect();
                table(&["NAME", "ID", "KIND", "WHERE", "LAST PRUNE"], &rows);
            })
        }
        BackupCmd::Repo(RepoCmd::Delete { name }) => {
            client(conn)?.delete_backup_repository(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
        BackupCmd::Plan(PlanCmd::Create {
            name,
            repo,
            instances,
            tags,
            groups,
            schedule,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            verify,
        }) => {
            let instances = instances
                .iter()
                .map(|i| i.parse().map_err(|e: nubo_api::ids::IdError| anyhow::anyhow!("{e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let p = PlanCreate {
                name,
                repository: repo,
                selector: PlanSelector { instances, tags: tags.into_iter().collect(), groups },
                schedule,
                retention: Retention { last: keep_last, daily: keep_daily, weekly: keep_weekly, monthly: keep_monthly },
                verify,
            };
            let plan = client(conn)?.create_backup_plan(&p).await?;
            emit(conn.output, &plan, print_plan)
        }
        BackupCmd::Plan(PlanCmd::List) => {
            let list = client(conn)?.backup_plans().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.id.to_string(),
                            p.schedule.clone(),
                            selector(&p.selector),
                            retention(&p.retention),
                            p.next_run_at.clone().unwrap_or("-".into()),
                        ]
                    })
                    .collect();
                table(&["NAME", "ID", "SCHEDULE", "SELECTS", "KEEPS", "NEXT RUN"], &rows);
            })
        }
        BackupCmd::Plan(PlanCmd::Show { name }) => {
            let p = client(conn)?.backup_plan(&name).await?;
            emit(conn.output, &p, print_plan)
        }
        BackupCmd::Plan(PlanCmd::Delete { name }) => {
            client(conn)?.delete_backup_plan(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
        BackupCmd::Run { instance, repo, plan, wait: follow } => {
            let b = client(conn)?.run_backup(&instance, &BackupRun { repository: repo, plan }).await?;
            if !follow {
                return emit(conn.output, &b, |b| println!("{} queued ({})", b.id, b.state));
            }
            println!("{} queued", b.id);
            let b = wait(conn, b.id.as_str()).await?;
            if b.state == BackupState::Failed {
                bail!("backup {} failed: {}", b.id, b.error.as_deref().unwrap_or("no reason given"));
            }
            emit(conn.output, &b, |b| {
                println!("{} completed: sent {}, stored {}", b.id, mib(b.bytes_sent), mib(b.bytes_stored));
                disk_lines(b);
            })
        }
        BackupCmd::List { instance, plan } => {
            let list = client(conn)?.backups(instance.as_deref(), plan.as_deref()).await?;
            emit(conn.output, &list, |list| {
                table(&["ID", "INSTANCE", "STATE", "TAKEN", "KIND", "STORED", "PLAN", "VERIFIED"], &backup_rows(list));
            })
        }
        BackupCmd::Show { id } => {
            let b = client(conn)?.backup(&id).await?;
            emit(conn.output, &b, print_backup)
        }
        BackupCmd::Restore { backup, name, with_networks, host, wait } => {
            crate::restore_cmds::restore(
                conn,
                backup,
                nubo_api::backup::RestoreInstance { name, with_networks, host },
                wait,
            )
            .await
        }
        BackupCmd::RestoreVolume { backup, disk, name } => {
            crate::restore_cmds::restore_volume(conn, backup, nubo_api::backup::RestoreVolume { disk, name }).await
        }
        BackupCmd::Delete { id } => {
            client(conn)?.delete_backup(&id).await?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sftp_specs() {
        assert_eq!(
            super::parse_sftp("nubo@backup.example:/srv/nubo").unwrap(),
            ("nubo".into(), "backup.example".into(), 22, "/srv/nubo".into())
        );
        assert_eq!(
            super::parse_sftp("u@10.0.0.5:2222:/b").unwrap(),
            ("u".into(), "10.0.0.5".into(), 2222, "/b".into())
        );
        for bad in ["backup:/srv", "u@backup:srv", "u@:/srv", "u@h:x:/srv"] {
            let e = super::parse_sftp(bad).unwrap_err().to_string();
            assert!(e.contains("USER@HOST[:PORT]:/PATH"), "{bad}: {e}");
        }
    }
}
