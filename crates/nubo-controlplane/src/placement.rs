//! Placing a new instance: rank hosts with the scheduler's filters and
//! weigher, then claim on the best host, falling through to the next one
//! when a concurrent request won the race.

use crate::error::AppError;
use crate::store::{ClaimError, NewInstance};
use crate::Ctx;
use nubo_scheduler::{Demand, HostSnapshot};

/// Places and inserts the instance; returns the chosen host's id and the
/// forwarded ports (guest, host).
pub async fn place(ctx: &Ctx, new: &NewInstance<'_>) -> Result<(String, Vec<(u16, u16)>), AppError> {
    let demand = Demand { vcpus: new.vcpus, memory_mib: new.memory_mib, disk_gib: new.disk_gib };
    // A few rounds: each round re-reads the hosts, so a lost claim is
    // retried against fresh numbers rather than a stale snapshot.
    for _ in 0..5 {
        let snapshot = ctx.host_snapshots().await?;
        let ranked = nubo_scheduler::rank(&snapshot, &demand, &ctx.config.policy)
            .map_err(|refusal| AppError::NoValidHost(refusal.to_string()))?;
        for host in ranked {
            match claim(ctx, host, new).await {
                Ok(ports) => return Ok((host.id.clone(), ports)),
                Err(ClaimError::Lost) => continue,
                Err(ClaimError::NoPorts) => continue,
                Err(ClaimError::Quota(msg)) => return Err(AppError::QuotaExceeded(msg)),
                Err(ClaimError::Db(e)) => return Err(e.into()),
            }
        }
    }
    Err(AppError::NoValidHost("every fitting host was claimed by concurrent requests; retry the request".into()))
}

async fn claim(ctx: &Ctx, host: &HostSnapshot, new: &NewInstance<'_>) -> Result<Vec<(u16, u16)>, ClaimError> {
    let p = &ctx.config.policy;
    ctx.store
        .claim_and_insert(
            &host.id,
            p.schedulable_vcpus(host) as i64,
            p.schedulable_memory(host) as i64,
            p.schedulable_disk(host) as i64,
            ctx.config.port_range,
            new,
        )
        .await
}
