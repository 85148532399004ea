//! vCPU hot-add for a running QEMU VM: which empty CPU slots to fill
//! (`query-hotpluggable-cpus`) and the `device_add` for each. The VM gets
//! its slots at start (`-smp N,maxcpus=MAX`, see
//! [`crate::VmConfig::max_vcpus`]). Bringing a new CPU online inside the
//! guest is the guest's business (udev does it; the agent asks the guest
//! agent where there is no udev).

use serde_json::Value;
use tracing::info;

use crate::qmp::{HotpluggableCpu, QmpClient};
use crate::HypervisorError;

/// The QMP device id of a hot-added CPU, from its slot's position, so that
/// a repeated hot-add of the same slot is recognised.
fn device_id(slot: &HotpluggableCpu) -> String {
    let n = |k: &str| slot.props.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!("cpu-s{}-c{}-t{}", n("socket-id"), n("core-id"), n("thread-id"))
}

/// The empty slots to fill to go from the CPUs plugged in `slots` to
/// `want`, lowest position first (the guest numbers them in that order);
/// or why that cannot be done.
pub(crate) fn slots_to_fill(slots: &[HotpluggableCpu], want: u32) -> Result<Vec<&HotpluggableCpu>, HypervisorError> {
    let plugged = slots.iter().filter(|s| s.qom_path.is_some()).count() as u32;
    if want < plugged {
        return Err(HypervisorError::Vcpus(format!(
            "it has {plugged} vCPUs and removing vCPUs from a running guest is not offered; stop the instance, resize it, then start it"
        )));
    }
    let mut free: Vec<&HotpluggableCpu> = slots.iter().filter(|s| s.qom_path.is_none()).collect();
    let need = (want - plugged) as usize;
    if need > free.len() {
        return Err(HypervisorError::Vcpus(format!(
            "it was started with room for {} vCPUs and {want} were asked; stop and start the instance to boot it with {want}",
            plugged as usize + free.len()
        )));
    }
    let pos = |s: &HotpluggableCpu| {
        ["socket-id", "die-id", "core-id", "thread-id"].map(|k| s.props.get(k).and_then(Value::as_u64).unwrap_or(0))
    };
    free.sort_by_key(|s| pos(s));
    free.truncate(need);
    Ok(free)
}

/// Hot-adds CPUs until the VM behind `qmp` has `want` (see
/// [`crate::Hypervisor::set_vcpus`]).
pub(crate) async fn set_vcpus(qmp: &mut QmpClient, want: u32) -> Result<(), HypervisorError> {
    let slots = qmp.query_hotpluggable_cpus().await?;
    for slot in slots_to_fill(&slots, want)? {
        let mut args = slot.props.clone();
        args.insert("driver".into(), Value::String(slot.driver.clone()));
        args.insert("id".into(), Value::String(device_id(slot)));
        qmp.execute("device_add", Some(Value::Object(args))).await?;
        info!(cpu = %device_id(slot), "vCPU hot-added");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slots(plugged: u32, total: u32) -> Vec<HotpluggableCpu> {
        // QEMU lists the slots highest first.
        (0..total)
            .rev()
            .map(|core| {
                serde_json::from_value(json!({
                    "type": "max-x86_64-cpu",
                    "vcpus-count": 1,
                    "props": {"socket-id": 0, "core-id": core, "thread-id": 0},
                    "qom-path": (core < plugged).then(|| format!("/machine/unattached/device[{core}]")),
                }))
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn fills_the_lowest_empty_slots() {
        let s = slots(1, 4);
        let got: Vec<String> = slots_to_fill(&s, 3).unwrap().into_iter().map(device_id).collect();
        assert_eq!(got, ["cpu-s0-c1-t0", "cpu-s0-c2-t0"]);
        assert!(slots_to_fill(&s, 1).unwrap().is_empty());
    }

    #[test]
    fn refuses_shrinking_and_more_than_the_slots() {
        let s = slots(2, 4);
        let msg = slots_to_fill(&s, 1).unwrap_err().to_string();
        assert!(msg.contains("removing vCPUs") && msg.contains("stop the instance"), "{msg}");
        let msg = slots_to_fill(&s, 5).unwrap_err().to_string();
        assert!(msg.contains("room for 4 vCPUs") && msg.contains("stop and start"), "{msg}");
    }
}
