//! The network component the agent owns: the host's [`Plumbing`] behind
//! one lock (a pass and an instance's start never change bridges at the
//! same time), the taps of each instance's NICs, and their removal.

use super::{tap_name, MetadataLookup, NetworkConfig, Plumbing};
use nubo_api::agent::{DesiredInstance, DesiredState};
use nubo_api::ids::{InstanceId, NetworkId};
use nubo_hypervisor::TapNic;
use std::collections::HashMap;
use std::path::Path;

pub(crate) struct Networks {
    /// None when the host has user-mode networking only.
    plumbing: Option<tokio::sync::Mutex<Plumbing>>,
}

impl Networks {
    pub(crate) fn new(config: Option<NetworkConfig>, data_dir: &Path, lookup: MetadataLookup) -> Self {
        Self { plumbing: config.map(|n| tokio::sync::Mutex::new(Plumbing::new(n, data_dir, lookup))) }
    }

    /// Sets up the host's private networks for `d` (before instances
    /// start, so their taps exist). A failure is logged and retried after
    /// a pause that grows while it lasts, or at once when the desired
    /// networks change; instances whose tap is missing fail to start and
    /// say why.
    pub(crate) async fn reconcile(&self, d: &DesiredState) {
        let Some(net) = &self.plumbing else { return };
        if let Err(e) = net.lock().await.reconcile(d).await {
            tracing::warn!(error = %e, "private networks not (fully) set up; retrying in 1 to 30 s, or when they change");
        }
    }

    /// The tap NICs of `want`, created (and put on their bridges) if
    /// missing; `vni_of` gives each network's VNI in the desired state.
    pub(crate) async fn taps_for(
        &self,
        want: &DesiredInstance,
        vni_of: &HashMap<NetworkId, u32>,
    ) -> anyhow::Result<Vec<TapNic>> {
        if want.nics.is_empty() {
            return Ok(Vec::new());
        }
        let Some(net) = &self.plumbing else {
            anyhow::bail!(
                "instance {} has private network NICs but this host runs none; start its agent with --underlay ADDRESS",
                want.id
            );
        };
        let plumbing = net.lock().await;
        let mut taps = Vec::new();
        for (index, nic) in want.nics.iter().enumerate() {
            let vni = *vni_of.get(&nic.network_id).ok_or_else(|| {
                anyhow::anyhow!(
                    "network {} of instance {} is not in this host's desired state yet",
                    nic.network_id,
                    want.id
                )
            })?;
            let tap = tap_name(&want.id, index);
            plumbing.ensure_tap(&tap, vni).await?;
            taps.push(TapNic { tap, mac: nic.mac.clone(), netns: plumbing.netns_path() });
        }
        Ok(taps)
    }

    /// Removes the instance's taps (its VM is gone from this host).
    pub(crate) async fn remove_taps(&self, id: &InstanceId) {
        if let Some(net) = &self.plumbing {
            net.lock().await.remove_taps(id).await;
        }
    }
}
