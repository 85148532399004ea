//! Launch templates in SQL: the template rows (name, default and latest
//! version numbers) and their immutable versions, whose data is
//! `LaunchTemplateData` as JSON. What they mean, who may touch them and
//! how a launch resolves one is `app::launch_templates`'.

use crate::store::{now_ms, Store};
use nubo_api::launch_templates::LaunchTemplateData;
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct TemplateRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub default_version: i64,
    pub latest_version: i64,
    pub created_by: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct VersionRow {
    pub template_id: String,
    pub version: i64,
    pub description: Option<String>,
    pub data_json: String,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl VersionRow {
    pub fn data(&self) -> Option<LaunchTemplateData> {
        serde_json::from_str(&self.data_json).ok()
    }
}

/// A new template with its version 1.
pub struct NewTemplate<'a> {
    pub id: &'a str,
    pub project: &'a str,
    pub name: &'a str,
    pub created_by: &'a str,
    pub description: Option<&'a str>,
    pub data: &'a LaunchTemplateData,
    pub tags: &'a [(String, String)],
}

const TEMPLATE_COLUMNS: &str = "id, project_id, name, default_version, latest_version, created_by, created_at_ms";
const VERSION_COLUMNS: &str = "template_id, version, description, data_json, created_by, created_at_ms";

impl Store {
    /// Records a template and its version 1 (its default); false when the
    /// project already has a template of that name.
    pub async fn insert_launch_template(&self, t: &NewTemplate<'_>) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "INSERT INTO launch_templates (id, project_id, name, default_version, latest_version, created_by, created_at_ms)
             VALUES ($1, $2, $3, 1, 1, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(t.id)
        .bind(t.project)
        .bind(t.name)
        .bind(t.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        insert_version(&mut tx, t.id, 1, t.description, t.data, t.created_by, now).await?;
        for (k, v) in t.tags {
            crate::tags::upsert(&mut tx, t.id, "launch-template", t.project, k, v).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    pub async fn launch_template(&self, id: &str) -> Result<Option<TemplateRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {TEMPLATE_COLUMNS} FROM launch_templates WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn launch_template_by_name(&self, project: &str, name: &str) -> Result<Option<TemplateRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {TEMPLATE_COLUMNS} FROM launch_templates WHERE project_id = $1 AND name = $2"))
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// A project's templates (every project's for `None`), oldest first.
    pub async fn launch_templates(&self, project: Option<&str>) -> Result<Vec<TemplateRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {TEMPLATE_COLUMNS} FROM launch_templates WHERE ($1 IS NULL OR project_id = $1)
             ORDER BY created_at_ms, id"
        ))
        .bind(project)
        .fetch_all(&self.pool)
        .await
    }

    /// A template's versions, newest first.
    pub async fn launch_template_versions(&self, template: &str) -> Result<Vec<VersionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM launch_template_versions WHERE template_id = $1 ORDER BY version DESC"
        ))
        .bind(template)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn launch_template_version(
        &self,
        template: &str,
        version: i64,
    ) -> Result<Option<VersionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {VERSION_COLUMNS} FROM launch_template_versions WHERE template_id = $1 AND version = $2"
        ))
        .bind(template)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
    }

    /// Adds a version numbered one past the latest ever given; its number,
    /// or None when the template is gone.
    pub async fn add_launch_template_version(
        &self,
        template: &str,
        description: Option<&str>,
        data: &LaunchTemplateData,
        created_by: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        let mut tx = self.begin().await?;
        // The UPDATE takes the row's lock: concurrent versions get distinct numbers.
        let r = sqlx::query("UPDATE launch_templates SET latest_version = latest_version + 1 WHERE id = $1")
            .bind(template)
            .execute(&mut *tx)
            .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        let version: i64 = sqlx::query_scalar("SELECT latest_version FROM launch_templates WHERE id = $1")
            .bind(template)
            .fetch_one(&mut *tx)
            .await?;
        insert_version(&mut tx, template, version, description, data, created_by, now_ms()).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// Makes `version` the default; false when the template has no such version.
    pub async fn set_launch_template_default(&self, template: &str, version: i64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE launch_templates SET default_version = $1 WHERE id = $2
               AND EXISTS (SELECT 1 FROM launch_template_versions WHERE template_id = $2 AND version = $1)",
        )
        .bind(version)
        .bind(template)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes one version unless it is the default; whether it was deleted.
    pub async fn delete_launch_template_version(&self, template: &str, version: i64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "DELETE FROM launch_template_versions WHERE template_id = $1 AND version = $2
               AND version <> (SELECT default_version FROM launch_templates WHERE id = $1)",
        )
        .bind(template)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes a template with its versions and tags.
    pub async fn delete_launch_template(&self, template: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        for q in [
            "DELETE FROM launch_template_versions WHERE template_id = $1",
            "DELETE FROM tags WHERE resource_id = $1",
            "DELETE FROM launch_templates WHERE id = $1",
        ] {
            sqlx::query(q).bind(template).execute(&mut *tx).await?;
        }
        tx.commit().await
    }
}

async fn insert_version(
    tx: &mut crate::store::Tx<'_>,
    template: &str,
    version: i64,
    description: Option<&str>,
    data: &LaunchTemplateData,
    created_by: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO launch_template_versions (template_id, version, description, data_json, created_by, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(template)
    .bind(version)
    .bind(description)
    .bind(json)
    .bind(created_by)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
