//! Instance attributes in SQL (migration 0024): termination and stop
//! protection, the shutdown behaviour, the source/destination check, and
//! the changes only a stopped instance takes (its size, its user-data);
//! and replacing an instance's security groups. The checks of who may
//! change what are `app::instance_attributes`'.

use crate::store::{claim_capacity, now_ms, release_capacity, Size, Store};

/// A guest-initiated poweroff stops the instance (the default).
pub const SHUTDOWN_STOP: &str = "stop";
/// A guest-initiated poweroff terminates the instance.
pub const SHUTDOWN_TERMINATE: &str = "terminate";

/// Why a resize was not recorded.
#[derive(Debug)]
pub enum ResizeError {
    /// The instance is no longer stopped (it was started meanwhile).
    NotStopped,
    /// The project's quota does not allow the larger size: its usage.
    Quota(String),
    /// The host's capacity was taken meanwhile.
    Lost,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for ResizeError {
    fn from(e: sqlx::Error) -> Self {
        ResizeError::Db(e)
    }
}

impl Store {
    /// Sets what is given of termination and stop protection.
    pub async fn set_protection(
        &self,
        id: &str,
        termination: Option<bool>,
        stop: Option<bool>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE instances SET termination_protection = COALESCE($1, termination_protection),
               stop_protection = COALESCE($2, stop_protection), updated_at_ms = $3 WHERE id = $4",
        )
        .bind(termination.map(i64::from))
        .bind(stop.map(i64::from))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets what a guest-initiated poweroff does ([`SHUTDOWN_STOP`] or [`SHUTDOWN_TERMINATE`]).
    pub async fn set_shutdown_behavior(&self, id: &str, behavior: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE instances SET shutdown_behavior = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(behavior)
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets the source/destination check.
    pub async fn set_source_dest_check(&self, id: &str, on: bool) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE instances SET source_dest_check = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(i64::from(on))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces the user-data of a stopped instance; false when it is not
    /// stopped (any more).
    pub async fn set_user_data_stopped(&self, id: &str, user_data: Option<&str>) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE instances SET user_data = $1, updated_at_ms = $2
             WHERE id = $3 AND desired = 'stopped' AND state = 'stopped'",
        )
        .bind(user_data)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives a stopped instance a new size in one transaction: the
    /// project's quota and its host's claim change by the difference
    /// (each a conditional UPDATE, as a launch claims), within `limits`
    /// (the host's, as placement chose them). The host keeps a stopped
    /// instance's claim, so the new size is what the host holds for it
    /// when it starts again.
    #[allow(clippy::too_many_arguments)]
    pub async fn resize_stopped(
        &self,
        id: &str,
        project: &str,
        host: Option<&str>,
        from: Size,
        to: Size,
        limits: Size,
        instance_type: &str,
    ) -> Result<(), ResizeError> {
        self.resize_while(id, project, host, from, to, limits, Some(instance_type), "stopped").await
    }

    /// [`Store::resize_stopped`] for an instance whose desired and actual
    /// state are both `power` (`stopped`, or `running` for a vCPU hot-add);
    /// `instance_type` none: a custom size (`custom-<vcpus>-<mib>`).
    /// `ResizeError::NotStopped` then means "no longer `power`".
    #[allow(clippy::too_many_arguments)]
    pub async fn resize_while(
        &self,
        id: &str,
        project: &str,
        host: Option<&str>,
        from: Size,
        to: Size,
        limits: Size,
        instance_type: Option<&str>,
        power: &str,
    ) -> Result<(), ResizeError> {
        let delta = Size { vcpus: to.vcpus - from.vcpus, memory_mib: to.memory_mib - from.memory_mib, disk_gib: 0 };
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE instances SET vcpus = $1, memory_mib = $2, instance_type = $3, updated_at_ms = $4
             WHERE id = $5 AND desired = $8 AND state = $8 AND vcpus = $6 AND memory_mib = $7",
        )
        .bind(to.vcpus)
        .bind(to.memory_mib)
        .bind(instance_type)
        .bind(now_ms())
        .bind(id)
        .bind(from.vcpus)
        .bind(from.memory_mib)
        .bind(power)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(ResizeError::NotStopped);
        }
        let within_quota = sqlx::query(
            "UPDATE projects SET used_vcpus = used_vcpus + $1, used_memory_mib = used_memory_mib + $2
             WHERE id = $3 AND used_vcpus + $1 <= quota_vcpus AND used_memory_mib + $2 <= quota_memory_mib",
        )
        .bind(delta.vcpus)
        .bind(delta.memory_mib)
        .bind(project)
        .execute(&mut *tx)
        .await?;
        // A smaller size always fits, even in a project over its quota (an
        // operator lowered it): only growth is refused.
        if within_quota.rows_affected() != 1 && (delta.vcpus > 0 || delta.memory_mib > 0) {
            let p: Option<crate::identity::ProjectRow> =
                sqlx::query_as("SELECT * FROM projects WHERE id = $1").bind(project).fetch_optional(&mut *tx).await?;
            return Err(ResizeError::Quota(match p {
                Some(p) => format!(
                    "project {} is at its quota: vCPUs {}/{}, memory {}/{} MiB; the new size needs {} more vCPUs and {} more MiB. Choose a smaller type, terminate instances or ask an operator to raise the quota",
                    p.name, p.used_vcpus, p.quota_vcpus, p.used_memory_mib, p.quota_memory_mib,
                    delta.vcpus.max(0), delta.memory_mib.max(0)
                ),
                None => "the instance's project no longer exists".to_string(),
            }));
        }
        if within_quota.rows_affected() != 1 {
            sqlx::query(
                "UPDATE projects SET used_vcpus = used_vcpus + $1, used_memory_mib = used_memory_mib + $2 WHERE id = $3",
            )
            .bind(delta.vcpus)
            .bind(delta.memory_mib)
            .bind(project)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(host) = host {
            if delta.vcpus > 0 || delta.memory_mib > 0 {
                if !claim_capacity(&mut tx, host, delta, limits).await? {
                    self.changed_hosts.mark(host);
                    return Err(ResizeError::Lost);
                }
            } else {
                let freed = Size { vcpus: -delta.vcpus, memory_mib: -delta.memory_mib, disk_gib: 0 };
                release_capacity(&mut tx, host, freed).await?;
            }
        }
        crate::store::insert_event(
            &mut tx,
            id,
            now_ms(),
            "resize",
            &format!("{} vCPUs, {} MiB ({})", to.vcpus, to.memory_mib, instance_type.unwrap_or("custom size")),
        )
        .await?;
        tx.commit().await?;
        if let Some(host) = host {
            self.changed_hosts.mark(host);
        }
        Ok(())
    }

    /// Replaces an instance's security groups (ids of its project's groups).
    pub async fn set_instance_security_groups(&self, id: &str, groups: &[String]) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM instance_security_groups WHERE instance_id = $1").bind(id).execute(&mut *tx).await?;
        for g in groups {
            sqlx::query(
                "INSERT INTO instance_security_groups (instance_id, group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(g)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE instances SET updated_at_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
