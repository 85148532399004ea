//! Online vCPU resize on this host: how many vCPU slots a VM boots with,
//! and applying a running instance's desired vCPU count once it differs
//! from what was applied (`applied.json`): QEMU hot-adds the CPUs, then
//! the guest agent brings them online in a guest without udev (such as
//! `tiny`), where the kernel leaves a hot-added CPU offline. Each outcome
//! is reported as an instance event.

use std::time::Duration;

use nubo_api::agent::DesiredInstance;
use nubo_hypervisor::GuestExec;

use crate::host::Host;
use crate::instances::applied::{read_applied, write_applied, Applied};
use crate::instances::Instances;

/// The vCPU slots a VM boots with when it asks for fewer: room to grow
/// online up to this. The same on every host, so that a live migration's
/// target has the source's CPU topology; 16 covers the usual instance
/// type steps while keeping small what a guest reserves for each possible
/// CPU (Linux sizes its per-CPU areas for all of them; QEMU itself starts
/// no thread for an empty slot).
pub(crate) const HOT_ADD_CEILING: u32 = 16;

/// `max_vcpus` for a VM booting with `vcpus`.
pub(crate) fn max_vcpus(vcpus: u32) -> u32 {
    vcpus.max(HOT_ADD_CEILING)
}

/// Whether the running instance's vCPU count is to be applied now: it
/// differs from the one applied and was not refused already (a refusal is
/// reported once, not retried on every pass, until the desired count
/// changes).
pub(crate) fn pending(want: &DesiredInstance, applied: &Applied) -> bool {
    want.vcpus != applied.vcpus && want.vcpus != applied.vcpus_refused
}

/// Why the running VM cannot be live-migrated now, if it cannot: vCPUs
/// were hot-added since it booted. Its target boots with all of them,
/// and QEMU sizes devices by the boot count (a virtio disk gets a queue
/// per boot vCPU), so the state would not load there (checked by hand:
/// `get_pci_config_device: Bad config data` on the target). A restart
/// boots it with all its vCPUs and lifts this.
pub(crate) fn migration_blocker(applied: &Applied) -> Option<String> {
    (applied.vcpus != applied.booted_vcpus).then(|| {
        format!(
            "the start: {} vCPUs were hot-added since the instance booted with {}, and a target cannot take that state; \
             stop and start the instance (it boots with all {}), then migrate it",
            applied.vcpus.saturating_sub(applied.booted_vcpus),
            applied.booted_vcpus,
            applied.vcpus
        )
    })
}

/// Gives the running VM `want.vcpus` vCPUs, records it, and reports.
pub(crate) async fn apply(host: &Host, instances: &Instances, want: &DesiredInstance) {
    let dir = host.dir(&want.id);
    let mut applied = read_applied(&dir);
    match host.hypervisor.set_vcpus(&dir, want.vcpus).await {
        Ok(()) if applied.booted_vcpus == 0 => {
            // A VM started before these counts were recorded: it had no
            // empty slots, so this succeeded only as a no-op; it booted
            // with what it has.
            applied.vcpus = want.vcpus;
            applied.booted_vcpus = want.vcpus;
            write_applied(&dir, &applied);
        }
        Ok(()) => {
            applied.vcpus = want.vcpus;
            applied.vcpus_refused = 0;
            write_applied(&dir, &applied);
            let online = match online(instances, want).await {
                Ok(()) => "online in the guest".to_string(),
                Err(e) => format!(
                    "plugged in; a guest with udev brings them online itself, and the guest agent could not be asked to: {e}"
                ),
            };
            tracing::info!(vcpus = want.vcpus, "vCPUs hot-added");
            instances.event(&want.id, "vcpus_added", format!("{} vCPUs, {online}", want.vcpus));
        }
        Err(e) => {
            applied.vcpus_refused = want.vcpus;
            write_applied(&dir, &applied);
            tracing::warn!(vcpus = want.vcpus, error = %e, "vCPU hot-add refused");
            instances.event(&want.id, "vcpus_refused", e.to_string());
        }
    }
}

/// Asks the guest agent to bring every offline CPU online, first waiting
/// (up to 20 s) for the guest kernel to see the new ones.
async fn online(instances: &Instances, want: &DesiredInstance) -> Result<(), String> {
    let script = format!(
        "i=0; while [ \"$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)\" -lt {n} ] && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done; \
         for f in /sys/devices/system/cpu/cpu[0-9]*/online; do [ \"$(cat $f)\" = 1 ] || echo 1 > $f || exit 1; done",
        n = want.vcpus
    );
    let mut session = instances.guest_agent(&want.id, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    let req = GuestExec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script],
        capture_output: true,
        ..Default::default()
    };
    let status = session.client.run(&req, Duration::from_secs(40)).await.map_err(|e| e.to_string())?;
    match status.exit_code {
        Some(0) => Ok(()),
        code => Err(format!(
            "onlining exited with {code:?}: {}",
            String::from_utf8_lossy(&status.stderr).chars().take(200).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_with_hot_added_vcpus_is_not_migrated() {
        let booted = Applied { vcpus: 2, booted_vcpus: 2, ..Applied::default() };
        assert_eq!(migration_blocker(&booted), None);
        // Started before these fields were recorded: nothing known, nothing blocked.
        assert_eq!(migration_blocker(&Applied::default()), None);
        let grown = Applied { vcpus: 3, booted_vcpus: 1, ..Applied::default() };
        let why = migration_blocker(&grown).unwrap();
        assert!(why.contains("2 vCPUs were hot-added") && why.contains("stop and start"), "{why}");
    }
}
