//! What happens to the instances of a host that stopped reporting. Once it
//! has been silent for the heartbeat timeout it is down (the scheduler
//! skips it); after as long again, each of its instances is dealt with
//! once:
//!
//! * its disks are on storage another up host shares: it moves to the
//!   best such host, and one that should run is started there from its
//!   disk (a new `start_seq`), with its address and volumes;
//! * otherwise it is marked `lost`, with the reason: its disks went down
//!   with the host.
//!
//! The same round gives up on live migrations whose target never got
//! ready (`expire_unready_migrations`).
//!
//! Nothing fences the silent host: restarting elsewhere trusts that it is
//! really gone (a host that was only cut off would run a second copy on
//! the same disk). Operators of shared storage fence with its own tools.

use crate::store::{now_ms, Size};
use crate::Ctx;

/// Fails the live migrations whose target has not said it is ready within
/// the prepare timeout. Nothing has moved while a migration prepares (the
/// source starts copying only once the target is ready), so failing it is
/// safe: the instance runs on at the source, the target's claim is freed,
/// and the target removes its copy if it ever made one.
pub async fn expire_unready_migrations(ctx: &Ctx) -> Result<(), sqlx::Error> {
    let timeout = ctx.config.migration_prepare_timeout;
    let before = now_ms() - timeout.as_millis() as i64;
    for m in ctx.store.preparing_since(before).await? {
        let target = ctx.store.host(&m.target_host).await?.map(|h| h.name).unwrap_or_else(|| m.target_host.clone());
        let outcome = crate::migrations::Outcome {
            ok: false,
            error: Some(format!(
                "the target host {target} was not ready within {} s; check its agent (`nubo host list`, its log), then migrate again",
                timeout.as_secs()
            )),
            ..Default::default()
        };
        if ctx.store.finish_migration(&m.id, &m.target_host, &outcome).await?.is_some() {
            tracing::warn!(migration = %m.id, instance = %m.instance_id, target = %target,
                "live migration given up: its target never got ready");
            ctx.bump();
        }
    }
    Ok(())
}

/// One round: handles the instances of hosts silent for twice the heartbeat timeout.
pub async fn run_once(ctx: &Ctx) -> Result<(), sqlx::Error> {
    expire_unready_migrations(ctx).await?;
    let silent_ms = 2 * ctx.config.heartbeat_timeout.as_millis() as i64;
    let now = now_ms();
    let hosts = ctx.store.hosts().await?;
    let snapshots = ctx.host_snapshots().await?;
    for dead in hosts.iter().filter(|h| now - h.last_heartbeat_ms > silent_ms) {
        let instances = ctx.store.instances_on_host(&dead.id).await?;
        for row in instances.into_iter().filter(|r| !matches!(r.state.as_str(), "lost" | "terminated")) {
            let demand = nubo_scheduler::Demand {
                vcpus: row.vcpus as u32,
                memory_mib: row.memory_mib as u64,
                disk_gib: row.disk_gib as u64,
            };
            let candidates: Vec<_> = match &dead.shared_storage {
                Some(s) => snapshots
                    .iter()
                    .filter(|snap| {
                        snap.id != dead.id
                            && hosts.iter().any(|h| h.id == snap.id && h.shared_storage.as_deref() == Some(s.as_str()))
                    })
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            let p = &ctx.config.policy;
            let target =
                nubo_scheduler::rank(&candidates, &demand, p).ok().and_then(|r| r.first().map(|h| (*h).clone()));
            match target {
                Some(t) => {
                    let limits = Size::limits(p, &t);
                    if ctx.store.restart_elsewhere(&row, &dead.id, &t.id, limits).await? {
                        tracing::warn!(instance = %row.id, from = %dead.name, to = %t.name,
                            "host stopped reporting; instance restarted from its shared disk");
                        ctx.bump();
                    }
                }
                None => {
                    let reason = match &dead.shared_storage {
                        Some(_) => format!(
                            "lost: host {} stopped reporting and no up host that shares its storage can take it; \
                             start the host again, or terminate the instance",
                            dead.name
                        ),
                        None => format!(
                            "lost: host {} stopped reporting and the instance's disks were local to it; \
                             start the host again to get it back, or terminate it",
                            dead.name
                        ),
                    };
                    ctx.store.mark_lost(&row.id, &reason).await?;
                    tracing::warn!(instance = %row.id, host = %dead.name, "instance lost with its host");
                }
            }
        }
    }
    Ok(())
}

impl crate::store::Store {
    /// Moves an instance of a dead host to `target` (capacity claimed under
    /// `limits`, the dead host's freed), with its volumes; a running one is
    /// started there. False when the target had no room or it moved already.
    pub async fn restart_elsewhere(
        &self,
        row: &crate::store::InstanceRow,
        dead: &str,
        target: &str,
        limits: Size,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin().await?;
        if !crate::store::claim_capacity(&mut tx, target, Size::of(row), limits).await? {
            return Ok(false);
        }
        let now = now_ms();
        let start = i64::from(row.desired == "running");
        let moved = sqlx::query(
            "UPDATE instances SET host_id = $1, start_seq = start_seq + $2,
               state = CASE WHEN desired = 'running' THEN 'pending' ELSE state END, error = NULL, updated_at_ms = $3
             WHERE id = $4 AND host_id = $5",
        )
        .bind(target)
        .bind(start)
        .bind(now)
        .bind(&row.id)
        .bind(dead)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
            return Ok(false);
        }
        crate::store::release_capacity(&mut tx, dead, Size::of(row)).await?;
        sqlx::query("UPDATE volumes SET host_id = $1 WHERE instance_id = $2")
            .bind(target)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        // Forwarded ports belonged to the dead host's 127.0.0.1.
        sqlx::query("DELETE FROM instance_ports WHERE instance_id = $1").bind(&row.id).execute(&mut *tx).await?;
        crate::store::insert_event(
            &mut tx,
            &row.id,
            now,
            "restarted_elsewhere",
            &format!("{dead} stopped reporting; now on {target}"),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Marks an instance of a dead host lost, with why.
    pub async fn mark_lost(&self, id: &str, reason: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE instances SET state = 'lost', error = $1, updated_at_ms = $2 WHERE id = $3 AND state <> 'lost'",
        )
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 1 {
            crate::store::insert_event(&mut tx, id, now, "lost", reason).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
