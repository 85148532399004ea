//! What the agent last did to an instance, kept in its directory
//! (`applied.json`), so that a restarted agent re-adopts running VMs and
//! neither restarts nor forgets them.

use nubo_hypervisor::VmDir;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub(crate) start_seq: i64,
    pub(crate) reboot_count: i64,
    /// The VM was stopped on purpose (so its absence is not a crash).
    pub(crate) stopped_on_purpose: bool,
    /// The last rebuild whose fresh root disk was made (`DesiredInstance::rebuild_seq`).
    #[serde(default)]
    pub(crate) rebuild_seq: i64,
    /// The vCPUs the running VM has (booted with, or hot-added); 0 for a
    /// VM started before this was recorded.
    #[serde(default)]
    pub(crate) vcpus: u32,
    /// A vCPU count the running VM refused (see `crate::vcpus`), not asked
    /// again until the desired count changes; 0: none.
    #[serde(default)]
    pub(crate) vcpus_refused: u32,
    /// The vCPUs the VM booted with (`vcpus` minus those hot-added since).
    #[serde(default)]
    pub(crate) booted_vcpus: u32,
}

pub(crate) fn read_applied(dir: &VmDir) -> Applied {
    std::fs::read(dir.path().join("applied.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub(crate) fn write_applied(dir: &VmDir, a: &Applied) {
    let path = dir.path().join("applied.json");
    let tmp = dir.path().join("applied.json.tmp");
    let result = serde_json::to_vec(a)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        tracing::error!(path = %path.display(), error = %e, "cannot record applied state");
    }
}
