//! `nubo backup restore`, `nubo backup restore-volume`, `nubo instance
//! restore` and `nubo host evacuate --from-backups`: restores from
//! backups, and following a restored instance until it runs.

use crate::cli::Conn;
use crate::client_cmds::{client, print_instance, wait_for};
use crate::output::{emit, table};
use nubo_api::backup::{EvacuatedInstance, RestoreInPlace, RestoreInstance, RestoreVolume};
use nubo_api::views::{Instance, InstanceState};
use nubo_client::Client;
use std::time::{Duration, Instant};

/// A restore copies whole disks from the repository: give it time.
const WAIT_LIMIT: Duration = Duration::from_secs(3600);

/// `nubo backup restore`: a new instance from a backup, followed until it runs with `wait`.
pub async fn restore(conn: &Conn, backup: String, params: RestoreInstance, wait: bool) -> anyhow::Result<()> {
    let c = client(conn)?;
    let mut i = c.restore_backup(&backup, &params).await?;
    if wait {
        i = follow(&c, &i.id.to_string()).await?;
    }
    emit(conn.output, &i, print_instance)
}

/// `nubo backup restore-volume`: a new volume from one disk of a backup.
pub async fn restore_volume(conn: &Conn, backup: String, params: RestoreVolume) -> anyhow::Result<()> {
    let v = client(conn)?.restore_backup_volume(&backup, &params).await?;
    emit(conn.output, &v, crate::storage_cmds::print_volume)
}

pub async fn restore_in_place(conn: &Conn, id: &str, backup: String) -> anyhow::Result<()> {
    let backup =
        backup.parse().map_err(|e| anyhow::anyhow!("{e}; give the backup's id (bak-...), see `nubo backup list`"))?;
    let i = client(conn)?.restore_instance(id, &RestoreInPlace { backup }).await?;
    emit(conn.output, &i, print_instance)
}

pub async fn evacuate_from_backups(conn: &Conn, host: &str, wait: bool) -> anyhow::Result<()> {
    let c = client(conn)?;
    let out = c.evacuate_from_backups(host).await?;
    if wait {
        for e in out.iter().filter(|e| e.host.is_some()) {
            let i = c.instance(e.instance_id.as_str()).await?;
            if i.desired_state == nubo_api::views::DesiredInstanceState::Running {
                follow(&c, e.instance_id.as_str()).await?;
            }
        }
    }
    emit(conn.output, &out, |out| print_evacuation(out))
}

fn print_evacuation(out: &[EvacuatedInstance]) {
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|e| {
            let none = || "-".to_string();
            vec![
                e.instance_id.to_string(),
                e.name.clone(),
                e.host_name.clone().or_else(|| e.host.clone()).unwrap_or_else(none),
                e.backup_id.as_ref().map(|b| b.to_string()).unwrap_or_else(none),
                match (&e.data_as_of, &e.data_age) {
                    (Some(at), Some(age)) => format!("{at} ({age} old)"),
                    _ => none(),
                },
                e.left_behind.clone().map(|w| format!("left behind: {w}")).unwrap_or_default(),
            ]
        })
        .collect();
    table(&["INSTANCE", "NAME", "NEW HOST", "BACKUP", "DATA AS OF", ""], &rows);
}

/// Prints each new stage of a restored instance (restoring 40%, ...)
/// until it runs.
async fn follow(c: &Client, id: &str) -> anyhow::Result<Instance> {
    let started = Instant::now();
    let mut seen = 0;
    loop {
        let i = c.instance(id).await?;
        for e in i.events.iter().skip(seen) {
            eprintln!("[{:>5.1}s] {} {}", started.elapsed().as_secs_f64(), e.stage, e.detail);
        }
        seen = seen.max(i.events.len());
        if i.state == InstanceState::Running || i.state == InstanceState::Error {
            return wait_for(c, id, InstanceState::Running, Duration::ZERO).await;
        }
        if started.elapsed() > WAIT_LIMIT {
            anyhow::bail!(
                "instance {id} is still {} after {} s; see `nubo instance show {id}`",
                i.state.as_str(),
                WAIT_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
