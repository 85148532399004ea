//! The host every component works on: its id, its connection to the
//! control plane, its hypervisor, its image cache and its configuration.
//! Read-only once the agent runs, so each component holds a shared
//! reference instead of reaching into the reconciler.

use crate::config::AgentConfig;
use nubo_api::ids::{HostId, InstanceId};
use nubo_client::Client;
use nubo_hypervisor::{Accel, Hypervisor, VmDir};
use nubo_image::ImageCache;
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) struct Host {
    pub(crate) id: HostId,
    pub(crate) client: Client,
    pub(crate) hypervisor: Arc<dyn Hypervisor>,
    pub(crate) images: Arc<ImageCache>,
    pub(crate) accel: Accel,
    pub(crate) config: AgentConfig,
}

impl Host {
    /// The directory of an instance's files (disk, seed, sockets, logs).
    pub(crate) fn dir(&self, id: &InstanceId) -> VmDir {
        VmDir::new(self.config.instances_root().join(id.as_str()))
    }

    /// Where registry image files are cached on this host.
    pub(crate) fn blob_root(&self) -> PathBuf {
        self.images.root().join("blobs")
    }

    pub(crate) async fn vm_running(&self, id: &InstanceId) -> bool {
        self.hypervisor.status(&self.dir(id)).await.is_running()
    }
}
