//! Live migration without shared storage, as QEMU does it for libvirt:
//! the target VM is started with `-incoming defer` and identical devices,
//! exports its (empty) disks over NBD and listens for the migration
//! stream; the source mirrors each disk into those exports
//! (`blockdev-mirror`), and once every mirror is in sync sends RAM and
//! device state (`migrate`). QEMU pauses the guest only for the last
//! round, and reports that pause as `downtime`.

use crate::error::HypervisorError;
use crate::qemu::Qemu;
use crate::qmp::QmpClient;
use crate::VmDir;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A disk to move: its block node and whether only the top layer (the
/// overlay over a base image both hosts have) is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigratingDisk {
    pub node: String,
    pub top_only: bool,
}

/// What a finished migration cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// The pause the guest saw, as QEMU measured it.
    pub downtime_ms: u64,
    /// From the first disk copy to the target running.
    pub total_ms: u64,
    pub disk_bytes: u64,
    pub ram_bytes: u64,
}

fn failed(what: &str, detail: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Migration(format!("{what}: {detail}"))
}

impl Qemu {
    async fn qmp_long(&self, dir: &VmDir) -> Result<QmpClient, HypervisorError> {
        let mut c = self.qmp(dir).await?;
        c.set_timeout(Duration::from_secs(30));
        Ok(c)
    }

    /// On the target (started with `incoming`): export `nodes` writable over
    /// NBD at `host:nbd_port` and listen for the state at `host:migrate_port`.
    pub async fn migration_listen(
        &self,
        dir: &VmDir,
        host: &str,
        nbd_port: u16,
        migrate_port: u16,
        nodes: &[String],
    ) -> Result<(), HypervisorError> {
        let mut c = self.qmp_long(dir).await?;
        c.execute(
            "nbd-server-start",
            Some(json!({"addr": {"type": "inet", "data": {"host": host, "port": nbd_port.to_string()}}})),
        )
        .await
        .map_err(|e| failed("cannot start the NBD server", e))?;
        for node in nodes {
            c.execute(
                "block-export-add",
                Some(json!({"type": "nbd", "id": format!("mig-{node}"), "node-name": node, "name": node,
                    "writable": true})),
            )
            .await
            .map_err(|e| failed(&format!("cannot export disk {node}"), e))?;
        }
        c.execute("migrate-incoming", Some(json!({"uri": format!("tcp:{host}:{migrate_port}")})))
            .await
            .map_err(|e| failed("cannot listen for the migration", e))?;
        Ok(())
    }

    /// On the target once the instance runs here: stop the NBD server.
    pub async fn migration_target_finish(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        let mut c = self.qmp(dir).await?;
        let _ = c.execute("nbd-server-stop", None).await;
        Ok(())
    }

    /// On the source: mirror `disks` to the target's NBD server, then send
    /// the VM's state to `uri`. Returns once the target runs the guest
    /// (this VM is then paused for good); on failure this VM keeps running.
    pub async fn migration_send(
        &self,
        dir: &VmDir,
        nbd_host: &str,
        nbd_port: u16,
        uri: &str,
        disks: &[MigratingDisk],
        timeout: Duration,
    ) -> Result<MigrationStats, HypervisorError> {
        let started = Instant::now();
        let mut c = self.qmp_long(dir).await?;
        let result = send(&mut c, nbd_host, nbd_port, uri, disks, started, timeout).await;
        if result.is_err() {
            // Unwind: the guest must keep running here.
            let _ = c.execute("migrate_cancel", None).await;
            for d in disks {
                let _ = c
                    .execute("block-job-cancel", Some(json!({"device": format!("mig-{}", d.node), "force": true})))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            for d in disks {
                let _ = c.execute("blockdev-del", Some(json!({"node-name": format!("nbd-{}", d.node)}))).await;
            }
            if let Ok(s) = c.query_status().await {
                if !s.running {
                    let _ = c.cont().await;
                }
            }
        }
        result
    }
}

async fn send(
    c: &mut QmpClient,
    nbd_host: &str,
    nbd_port: u16,
    uri: &str,
    disks: &[MigratingDisk],
    started: Instant,
    timeout: Duration,
) -> Result<MigrationStats, HypervisorError> {
    for d in disks {
        let target = format!("nbd-{}", d.node);
        c.execute(
            "blockdev-add",
            Some(json!({"driver": "nbd", "node-name": target, "export": d.node,
                "server": {"type": "inet", "host": nbd_host, "port": nbd_port.to_string()}})),
        )
        .await
        .map_err(|e| failed(&format!("cannot reach the target's disk {}", d.node), e))?;
        c.execute(
            "blockdev-mirror",
            Some(json!({"job-id": format!("mig-{}", d.node), "device": d.node, "target": target,
                "sync": if d.top_only { "top" } else { "full" }})),
        )
        .await
        .map_err(|e| failed(&format!("cannot start copying disk {}", d.node), e))?;
    }
    // Every mirror in sync (new writes then go to both sides).
    let mut disk_bytes = 0;
    loop {
        let jobs = c.execute("query-block-jobs", None).await?;
        let ours: Vec<&Value> = jobs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["device"].as_str().is_some_and(|d| d.starts_with("mig-")))
            .collect();
        if ours.len() < disks.len() {
            return Err(failed("a disk copy stopped", format!("{} of {} copies left", ours.len(), disks.len())));
        }
        disk_bytes = ours.iter().filter_map(|j| j["len"].as_u64()).sum::<u64>().max(disk_bytes);
        if ours.iter().all(|j| j["ready"] == true) {
            break;
        }
        if started.elapsed() > timeout {
            return Err(failed("copying the disks", format!("not in sync within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.execute("migrate", Some(json!({"uri": uri}))).await.map_err(|e| failed("cannot start sending the state", e))?;
    let info = loop {
        let info = c.execute("query-migrate", None).await?;
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("failed" | "cancelled") => {
                return Err(failed("QEMU migration", info["error-desc"].as_str().unwrap_or("failed")));
            }
            _ => {}
        }
        if started.elapsed() > timeout {
            return Err(failed("sending the state", format!("not done within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The target runs now; the mirrors' copies are complete (this side is
    // paused), so the jobs end without switching this VM to them.
    for d in disks {
        let _ = c.execute("block-job-cancel", Some(json!({"device": format!("mig-{}", d.node)}))).await;
    }
    let total_ms = started.elapsed().as_millis() as u64;
    Ok(MigrationStats {
        downtime_ms: info["downtime"].as_u64().unwrap_or(0),
        total_ms,
        disk_bytes,
        ram_bytes: info["ram"]["transferred"].as_u64().unwrap_or(0),
    })
}
