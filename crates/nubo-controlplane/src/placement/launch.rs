//! Placing a new instance: choose hosts, then claim on the best one,
//! falling through to the next when a concurrent request won the race.

use super::{choose, Chosen, Constraints, Demand};
use crate::error::AppError;
use crate::store::{ClaimError, NewInstance};
use crate::Ctx;

/// Places and inserts the instance; returns the chosen host's id and the
/// forwarded ports (guest, host).
pub async fn place(ctx: &Ctx, new: &NewInstance<'_>) -> Result<(String, Vec<(u16, u16)>), AppError> {
    let demand = Demand { vcpus: new.vcpus, memory_mib: new.memory_mib, disk_gib: new.disk_gib };
    // Private networks need a host that runs them (bridges and VXLAN on
    // an underlay); user-mode-only hosts cannot.
    // An external network only on hosts that map its interface name.
    let externals = ctx.store.external_names(new.ec2.networks).await?;
    // A restore may be pinned to a host (an operator's choice).
    let pin = new.ec2.restore.and_then(|r| r.pin.as_deref());
    let constraints =
        Constraints { underlay: !new.ec2.networks.is_empty(), externals: &externals, pin, ..Constraints::default() };
    // A few rounds: a lost claim marks its host for the index to read
    // again, so the next round chooses from fresh numbers for it.
    for _ in 0..5 {
        let choice = choose(ctx, demand, &constraints).await?;
        for host in choice.hosts() {
            match claim(ctx, host, new).await {
                Ok(ports) => return Ok((host.id.clone(), ports)),
                Err(ClaimError::Lost) => {
                    ctx.store.changed_hosts.mark(&host.id);
                    continue;
                }
                Err(ClaimError::NoPorts) => continue,
                Err(ClaimError::Quota(msg)) => return Err(AppError::QuotaExceeded(msg)),
                Err(ClaimError::AddressTaken(msg)) => {
                    return Err(AppError::Conflict(format!("{msg}: ask for another address, or for none")))
                }
                Err(ClaimError::Db(e)) => return Err(e.into()),
            }
        }
    }
    Err(AppError::NoValidHost("every fitting host was claimed by concurrent requests; retry the request".into()))
}

async fn claim(ctx: &Ctx, host: &Chosen, new: &NewInstance<'_>) -> Result<Vec<(u16, u16)>, ClaimError> {
    ctx.store.claim_and_insert(&host.id, host.limits, ctx.config.port_range, new).await
}
