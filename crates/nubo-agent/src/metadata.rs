//! The metadata component: one metadata service (`imds`) per instance, on
//! `instances/<id>/imds.sock` for the relay QEMU runs on user-mode
//! networking, and found by address for bridged instances (the network's
//! router sends 169.254.169.254 to the agent, see `network`). A service
//! runs whenever the instance's directory exists, so a VM re-adopted after
//! an agent restart keeps its metadata.

use crate::imds::{Imds, InstanceMetadata};
use crate::instances::Instances;
use crate::network::MetadataLookup;
use nubo_api::agent::DesiredInstance;
use nubo_api::ids::InstanceId;
use nubo_hypervisor::VmDir;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::task::JoinHandle;

/// Each instance's service and the task serving it.
type Services = HashMap<InstanceId, (Arc<Imds>, JoinHandle<()>)>;

pub(crate) struct Metadata {
    /// QEMU relays guests' metadata connections to the agent (user-mode
    /// networking); without it only bridged instances have a service.
    relayed: bool,
    services: Mutex<Services>,
}

impl Metadata {
    pub(crate) fn new(relayed: bool) -> Self {
        Self { relayed, services: Mutex::default() }
    }

    fn services(&self) -> MutexGuard<'_, Services> {
        // Each entry is replaced whole; recover from a panicked holder.
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or refreshes) `want`'s metadata service in `dir`.
    pub(crate) fn ensure(&self, want: &DesiredInstance, dir: &VmDir) {
        // Bridged instances reach their service over the network.
        if !self.relayed && want.nics.is_empty() {
            return;
        }
        let data = instance_metadata(want);
        let mut services = self.services();
        if let Some((imds, task)) = services.get(&want.id) {
            if !task.is_finished() {
                imds.update(data);
                return;
            }
        }
        if !dir.path().exists() {
            return;
        }
        let imds = Imds::new(data);
        match crate::imds::serve(&dir.imds_socket(), imds.clone()) {
            Ok(task) => {
                services.insert(want.id.clone(), (imds, task));
            }
            Err(e) => tracing::warn!(instance = %want.id, error = %e, "cannot start the metadata service"),
        }
    }

    /// Stops the instance's service (its VM is gone).
    pub(crate) fn remove(&self, id: &InstanceId) {
        if let Some((_, task)) = self.services().remove(id) {
            task.abort();
        }
    }

    /// The instance's metadata service, while it has one.
    fn of(&self, id: &InstanceId) -> Option<Arc<Imds>> {
        self.services().get(id).map(|(imds, _)| imds.clone())
    }

    /// The lookup the networks' metadata address uses: the address's
    /// instance in the last desired state, and that instance's service.
    pub(crate) fn lookup(self: &Arc<Self>, instances: Arc<Instances>) -> MetadataLookup {
        let this = self.clone();
        Arc::new(move |vni, addr| {
            let id = instances.with_desired(|d| {
                let n = d?.networks.iter().find(|n| n.vni == vni)?;
                Some(n.ports.iter().find(|p| p.address == addr.to_string())?.instance_id.clone())
            })?;
            this.of(&id)
        })
    }
}

/// What the metadata service tells `want`'s guest.
fn instance_metadata(want: &DesiredInstance) -> InstanceMetadata {
    InstanceMetadata {
        instance_id: want.id.to_string(),
        hostname: want.name.clone(),
        image: want.image.clone(),
        instance_type: want
            .instance_type
            .clone()
            .unwrap_or_else(|| nubo_api::views::custom_instance_type(want.vcpus, want.memory_mib)),
        availability_zone: want.availability_zone.clone(),
        local_ipv4: match want.nics.first() {
            Some(nic) => nic.address.clone(),
            None => nubo_hypervisor::GUEST_ADDR.to_string(),
        },
        mac: match want.nics.first() {
            Some(nic) => nic.mac.clone(),
            None => nubo_hypervisor::mac_for(want.id.as_str()),
        },
        public_keys: want.public_keys.clone(),
        user_data: want.user_data.clone(),
        tokens_required: want.imds_tokens_required,
    }
}
