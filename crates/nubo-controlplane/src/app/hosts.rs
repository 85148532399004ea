//! Hosts: what the cloud runs on, with capacity, use and whether each is
//! up, drained or down (operators only).

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::Ctx;
use nubo_api::views::Host;
use nubo_api::views::HostState;
use std::collections::HashMap;
use std::sync::Arc;

/// Compute hosts with capacity and use (operators only).
pub async fn list(ctx: &Arc<Ctx>, caller: &Caller) -> AppResult<Vec<Host>> {
    crate::authz::require_admin(caller)?;
    let counts: HashMap<String, i64> = ctx.store.instance_counts_by_host().await?.into_iter().collect();
    let mut out = Vec::new();
    // Both lists come from the same ORDER BY; the snapshot says whether the host is up.
    for (h, snap) in ctx.store.hosts().await?.into_iter().zip(ctx.host_snapshots().await?) {
        out.push(Host {
            id: h.id.parse().map_err(AppError::internal)?,
            // Drained hosts take no new instances (their heartbeat still counts).
            state: match (h.enabled, snap.up) {
                (0, _) => HostState::Drained,
                (_, true) => HostState::Up,
                _ => HostState::Down,
            },
            accel: h.accel,
            vcpus: h.vcpus as u32,
            memory_mib: h.memory_mib as u64,
            disk_gib: h.disk_gib as u64,
            used_vcpus: h.used_vcpus as u32,
            used_memory_mib: h.used_memory_mib as u64,
            used_disk_gib: h.used_disk_gib as u64,
            schedulable_vcpus: ctx.config.policy.schedulable_vcpus(&snap) as u32,
            instances: counts.get(&h.id).copied().unwrap_or(0) as u32,
            last_heartbeat_ms: h.last_heartbeat_ms,
            networking: if h.underlay.is_some() { "bridged" } else { "user-mode" }.to_string(),
            underlay: h.underlay,
            name: h.name,
        });
    }
    Ok(out)
}
