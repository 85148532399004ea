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
        let mut snapshot = ctx.host_snapshots().await?;
        if !new.ec2.networks.is_empty() {
            // Private networks need a host that runs them (bridges and
            // VXLAN on an underlay); user-mode-only hosts cannot.
            let bridged: std::collections::HashSet<String> =
                ctx.store.hosts().await?.into_iter().filter(|h| h.underlay.is_some()).map(|h| h.id).collect();
            snapshot.retain(|h| bridged.contains(&h.id));
            if snapshot.is_empty() {
                return Err(AppError::NoValidHost(
                    "no host runs private networks: start an agent with --underlay ADDRESS (see docs/networks.md)"
                        .into(),
                ));
            }
        }
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

/// Picks the host whose storage pool takes `gib` more (the one with the
/// most room), or checks that `only` does. Returns the host and its pool
/// limit (the claim re-checks it atomically). A refusal names each host's
/// free space.
pub async fn place_storage(ctx: &Ctx, gib: u64, only: Option<&str>) -> Result<(String, i64), AppError> {
    let p = &ctx.config.policy;
    let hosts = ctx.host_snapshots().await?;
    let mut best: Option<(&HostSnapshot, u64)> = None;
    let mut reasons = Vec::new();
    for h in hosts.iter().filter(|h| only.is_none_or(|o| o == h.id)) {
        let limit = p.schedulable_disk(h);
        let free = limit.saturating_sub(h.used_disk_gib);
        if !h.up && only.is_none() {
            reasons.push(format!("host {} is down", h.name));
        } else if free < gib {
            reasons.push(format!(
                "host {}'s storage pool has {free} GiB free ({} of {limit} GiB in use)",
                h.name, h.used_disk_gib
            ));
        } else if best.is_none_or(|(_, f)| free > f) {
            best = Some((h, free));
        }
    }
    match best {
        Some((h, _)) => Ok((h.id.clone(), p.schedulable_disk(h) as i64)),
        None if reasons.is_empty() => Err(AppError::NoValidHost(
            "no compute host is registered: start `nubo agent` on a host (or use `nubo up`)".into(),
        )),
        None => Err(AppError::NoValidHost(format!(
            "no storage pool can take {gib} GiB: {}; choose a smaller size or free space",
            reasons.join("; ")
        ))),
    }
}
