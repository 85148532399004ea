//! Tags in SQL: key/value pairs on any resource of a project (instances,
//! volumes, images, snapshots, security groups, VPCs and subnets, floating
//! IPs, key pairs), by the resource's id. The EC2 API and the native API
//! (`app::tags`: who may change them, and the native ids) set and list
//! them; REST views show them; policies select resources by them.

use crate::store::Store;
use sqlx::FromRow;
use std::collections::{BTreeMap, HashMap};

/// Most tags one resource may have, as on EC2.
pub const MAX_TAGS_PER_RESOURCE: i64 = 50;

#[derive(Debug, Clone, FromRow)]
pub struct TagRow {
    pub resource_id: String,
    pub resource_type: String,
    pub project_id: String,
    pub key: String,
    pub value: String,
}

/// The kind of resource an EC2 id names, from its prefix (`None`: not
/// taggable through the EC2 API; `app::tags::kind_of` adds the native ids).
pub fn resource_type_of(id: &str) -> Option<&'static str> {
    [
        ("i-", "instance"),
        ("vol-", "volume"),
        ("ami-", "image"),
        ("snap-", "snapshot"),
        ("sg-", "security-group"),
        ("vpc-", "vpc"),
        ("subnet-", "subnet"),
    ]
    .into_iter()
    .find(|(prefix, _)| id.starts_with(prefix))
    .map(|(_, t)| t)
}

pub(crate) async fn upsert(
    tx: &mut crate::store::Tx<'_>,
    resource: &str,
    resource_type: &str,
    project: &str,
    key: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tags (resource_id, resource_type, project_id, key, value) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (resource_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(resource)
    .bind(resource_type)
    .bind(project)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Why tags were not set.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error(
        "resource {resource} would have {count} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed: delete some first"
    )]
    TooMany { resource: String, count: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Store {
    /// Sets (adds or overwrites) tags on resources, all or none: a
    /// resource that would pass the limit leaves everything unchanged.
    /// Each resource is (id, type, project).
    pub async fn set_tags(
        &self,
        resources: &[(String, &'static str, String)],
        tags: &[(String, String)],
    ) -> Result<(), TagError> {
        let mut tx = self.begin().await?;
        for (id, kind, project) in resources {
            for (k, v) in tags {
                upsert(&mut tx, id, kind, project, k, v).await?;
            }
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tags WHERE resource_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if count > MAX_TAGS_PER_RESOURCE {
                return Err(TagError::TooMany { resource: id.clone(), count });
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes tags by key; with a value, only where the value matches.
    /// With no keys at all, every tag of the resources goes (as on EC2).
    pub async fn delete_tags(
        &self,
        resources: &[String],
        tags: &[(String, Option<String>)],
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        for id in resources {
            if tags.is_empty() {
                sqlx::query("DELETE FROM tags WHERE resource_id = $1").bind(id).execute(&mut *tx).await?;
            }
            for (k, v) in tags {
                sqlx::query("DELETE FROM tags WHERE resource_id = $1 AND key = $2 AND ($3 IS NULL OR value = $3)")
                    .bind(id)
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// One resource's tags.
    pub async fn tags_of(&self, resource: &str) -> Result<BTreeMap<String, String>, sqlx::Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT key, value FROM tags WHERE resource_id = $1 ORDER BY key")
                .bind(resource)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Every tag of a project (all projects' for `None`), ordered by
    /// resource and key.
    pub async fn tags(&self, project: Option<&str>) -> Result<Vec<TagRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT resource_id, resource_type, project_id, key, value FROM tags
             WHERE ($1 IS NULL OR project_id = $1) ORDER BY resource_id, key",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await
    }

    /// A project's tags grouped by resource, for listings.
    pub async fn tags_by_resource(
        &self,
        project: Option<&str>,
    ) -> Result<HashMap<String, BTreeMap<String, String>>, sqlx::Error> {
        let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for t in self.tags(project).await? {
            out.entry(t.resource_id).or_default().insert(t.key, t.value);
        }
        Ok(out)
    }
}
