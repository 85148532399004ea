//! Which instances each host may send metrics for: its own, as the
//! database says. A host's batch comes every few seconds and may name
//! thousands of instances; reading every instance row of the host for
//! each batch cost more than storing the samples. The set is read once
//! and read again when the host's desired state changes (the generation
//! its agent long-polls on, which every placement, migration and
//! termination bumps), or after [`MAX_AGE`] in case a change made on
//! another server was not announced here.

use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a host's set is trusted without a change being seen.
pub const MAX_AGE: Duration = Duration::from_secs(60);

struct Owned {
    /// The host's desired-state generation when the set was read.
    generation: u64,
    read_at: Instant,
    ids: Arc<Owners>,
}

/// A host's instances: id to project id (the project labels the
/// instance's series in Prometheus remote write).
pub type Owners = HashMap<String, Option<String>>;

/// Per host, the ids of the instances it runs.
#[derive(Default)]
pub struct MetricOwners {
    hosts: Mutex<HashMap<String, Owned>>,
}

impl MetricOwners {
    /// The instances `host` runs; `generation` is the generation at which
    /// the host's desired state last changed.
    pub async fn of(&self, store: &Store, host: &str, generation: u64) -> Result<Arc<Owners>, sqlx::Error> {
        if let Some(owned) = self.lock().get(host) {
            if owned.generation == generation && owned.read_at.elapsed() < MAX_AGE {
                return Ok(owned.ids.clone());
            }
        }
        // Read the generation before the rows: a change landing between
        // the two is seen again at the next batch, never missed.
        let read_at = Instant::now();
        let ids: Arc<Owners> = Arc::new(store.instance_owners_on_host(host).await?.into_iter().collect());
        self.lock().insert(host.to_string(), Owned { generation, read_at, ids: ids.clone() });
        Ok(ids)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        // Each change is one insert: a poisoned map is still consistent.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store {
    /// The ids and project ids of the instances placed on `host` and not
    /// terminated.
    pub async fn instance_owners_on_host(&self, host: &str) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
        sqlx::query_as("SELECT id, project_id FROM instances WHERE host_id = $1 AND state <> 'terminated'")
            .bind(host)
            .fetch_all(&self.pool)
            .await
    }
}
