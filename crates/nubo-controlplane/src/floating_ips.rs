//! Floating IPs in SQL: addresses of an external network's pool held by a
//! project, each associated with at most one instance at a time. The pool
//! is shared with instances attached to the network directly, so both
//! allocations read the same set of taken addresses in one transaction.

use crate::networks::{external_addresses_used, first_free, lock_pool, NetworkRow};
use crate::store::{now_ms, Store};
use nubo_api::ids::FloatingIpId;
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct FloatingIpRow {
    pub id: String,
    pub project_id: String,
    pub network_id: String,
    pub address: String,
    pub instance_id: Option<String>,
    pub created_at_ms: i64,
    /// The load balancer listening on it, instead of an instance.
    pub lb_id: Option<String>,
    /// 1: assigned automatically at launch (see migration 0022): the
    /// instance's, released with it, outside the project's quota.
    pub auto: i64,
}

/// Why no address was allocated.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("the project holds {held} floating IPs, its quota; release one (`nubo floating-ip release`) or ask an operator to raise the quota")]
    Quota { held: i64 },
    #[error("external network {0} has no free address left in its pool; release floating IPs or ask the operator for a larger pool")]
    PoolFull(String),
    #[error("another allocation took the same address at the same moment; try again")]
    Raced,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Why an association was refused.
#[derive(Debug, thiserror::Error)]
pub enum AssociateError {
    #[error("instance {0} already has floating IP {1}; disassociate that one first")]
    InstanceHasOne(String, String),
    #[error("a load balancer listens on this floating IP; delete the load balancer first")]
    UsedByBalancer,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Store {
    /// Takes the lowest free address of `network`'s pool for `project`,
    /// within its floating-IP quota.
    pub async fn allocate_floating_ip(
        &self,
        project: &str,
        network: &NetworkRow,
    ) -> Result<FloatingIpRow, AllocateError> {
        let mut tx = self.begin().await?;
        // Touching the project row first serialises allocations of one
        // project on PostgreSQL, so two cannot both pass the quota check.
        sqlx::query("UPDATE projects SET quota_floating_ips = quota_floating_ips WHERE id = $1")
            .bind(project)
            .execute(&mut *tx)
            .await?;
        let (held, quota): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM floating_ips WHERE project_id = $1 AND auto = 0), quota_floating_ips
             FROM projects WHERE id = $1",
        )
        .bind(project)
        .fetch_one(&mut *tx)
        .await?;
        if held >= quota {
            return Err(AllocateError::Quota { held });
        }
        let row = insert_from_pool(&mut tx, project, network, None).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Gives `instance` an address of `network`'s pool of its own (EC2's
    /// auto-assigned public address): outside the quota, and released
    /// with the instance. None when the instance already has a floating IP.
    pub async fn assign_auto_floating_ip(
        &self,
        project: &str,
        network: &NetworkRow,
        instance: &str,
    ) -> Result<Option<FloatingIpRow>, AllocateError> {
        let mut tx = self.begin().await?;
        let has: Option<String> = sqlx::query_scalar("SELECT id FROM floating_ips WHERE instance_id = $1")
            .bind(instance)
            .fetch_optional(&mut *tx)
            .await?;
        if has.is_some() {
            return Ok(None);
        }
        let row = insert_from_pool(&mut tx, project, network, Some(instance)).await?;
        tx.commit().await?;
        Ok(Some(row))
    }

    /// All floating IPs, or one project's.
    pub async fn floating_ips(&self, project: Option<&str>) -> Result<Vec<FloatingIpRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM floating_ips WHERE ($1 IS NULL OR project_id = $1) ORDER BY address, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// A floating IP by id, or by address.
    pub async fn floating_ip(&self, reference: &str) -> Result<Option<FloatingIpRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM floating_ips WHERE id = $1 OR address = $1 ORDER BY id LIMIT 1")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
    }

    /// Points `id` at `instance` (or at nothing). An instance has at most
    /// one floating IP: its first private NIC is what it translates to.
    pub async fn associate_floating_ip(&self, id: &str, instance: Option<&str>) -> Result<(), AssociateError> {
        let mut tx = self.begin().await?;
        if let Some(instance) = instance {
            // An address of the project's own replaces the instance's
            // automatic one, as an elastic IP replaces EC2's public IP.
            sqlx::query("DELETE FROM floating_ips WHERE instance_id = $1 AND auto = 1 AND id <> $2")
                .bind(instance)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let other: Option<String> =
                sqlx::query_scalar("SELECT address FROM floating_ips WHERE instance_id = $1 AND id <> $2")
                    .bind(instance)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(other) = other {
                return Err(AssociateError::InstanceHasOne(instance.to_string(), other));
            }
        }
        // A balancer's floating IP stays its balancer's until it is deleted.
        let done = sqlx::query("UPDATE floating_ips SET instance_id = $2 WHERE id = $1 AND lb_id IS NULL")
            .bind(id)
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Err(AssociateError::UsedByBalancer);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Gives the address back to the pool.
    pub async fn release_floating_ip(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM floating_ips WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }
}

/// Inserts a floating IP with the lowest free address of `network`'s pool:
/// the project's (`instance` None), or assigned to `instance` automatically.
async fn insert_from_pool(
    tx: &mut crate::store::Tx<'_>,
    project: &str,
    network: &NetworkRow,
    instance: Option<&str>,
) -> Result<FloatingIpRow, AllocateError> {
    let pool = network.pool().ok_or_else(|| AllocateError::PoolFull(network.name.clone()))?;
    lock_pool(tx, &network.id).await?;
    let used = external_addresses_used(tx, &network.id).await?;
    let address = first_free(pool, &used).ok_or_else(|| AllocateError::PoolFull(network.name.clone()))?;
    let row = FloatingIpRow {
        id: FloatingIpId::generate().to_string(),
        project_id: project.to_string(),
        network_id: network.id.clone(),
        address: address.to_string(),
        instance_id: instance.map(str::to_string),
        created_at_ms: now_ms(),
        lb_id: None,
        auto: i64::from(instance.is_some()),
    };
    sqlx::query(
        "INSERT INTO floating_ips (id, project_id, network_id, address, instance_id, created_at_ms, auto)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&row.id)
    .bind(&row.project_id)
    .bind(&row.network_id)
    .bind(&row.address)
    .bind(&row.instance_id)
    .bind(row.created_at_ms)
    .bind(row.auto)
    .execute(&mut **tx)
    .await
    .map_err(|e| match e.as_database_error() {
        Some(d) if d.is_unique_violation() => AllocateError::Raced,
        _ => AllocateError::Db(e),
    })?;
    Ok(row)
}
