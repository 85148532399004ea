//! Image jobs in SQL: the background work that makes a registry image
//! (a fetch from a URL, a build on a host), one row per image, with its
//! progress. The row goes with its image (`ON DELETE CASCADE`).

use crate::store::{now_ms, Store};
use nubo_api::views::ImageJob;
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct ImageJobRow {
    pub image_id: String,
    pub kind: String,
    pub url: Option<String>,
    pub base: Option<String>,
    pub packages: Option<String>,
    pub host_id: Option<String>,
    pub status: Option<String>,
    pub bytes_done: i64,
    pub bytes_total: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl ImageJobRow {
    pub fn view(&self) -> ImageJob {
        ImageJob {
            kind: self.kind.clone(),
            url: self.url.clone(),
            base: self.base.clone(),
            packages: self.packages.as_deref().unwrap_or_default().split_whitespace().map(String::from).collect(),
            host: self.host_id.clone(),
            status: self.status.clone(),
            bytes_done: self.bytes_done.max(0) as u64,
            bytes_total: self.bytes_total.map(|b| b.max(0) as u64),
        }
    }
}

/// What a new job makes its image from.
pub enum JobSource<'a> {
    Url(&'a str),
    Build { base: &'a str, packages: &'a [String] },
}

impl Store {
    pub async fn insert_image_job(&self, image_id: &str, source: JobSource<'_>) -> Result<(), sqlx::Error> {
        let (kind, url, base, packages) = match source {
            JobSource::Url(u) => ("url", Some(u.to_string()), None, None),
            JobSource::Build { base, packages } => ("build", None, Some(base.to_string()), Some(packages.join(" "))),
        };
        let now = now_ms();
        sqlx::query(
            "INSERT INTO image_jobs (image_id, kind, url, base, packages, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(image_id)
        .bind(kind)
        .bind(url)
        .bind(base)
        .bind(packages)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn image_job(&self, image_id: &str) -> Result<Option<ImageJobRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM image_jobs WHERE image_id = $1").bind(image_id).fetch_optional(&self.pool).await
    }

    /// Every job (there are few: one per fetched or built image).
    pub async fn image_jobs(&self) -> Result<Vec<ImageJobRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM image_jobs").fetch_all(&self.pool).await
    }

    /// Records how far a job's file has come.
    pub async fn set_image_job_progress(
        &self,
        image_id: &str,
        bytes_done: u64,
        bytes_total: Option<u64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE image_jobs SET bytes_done = $1, bytes_total = COALESCE($2, bytes_total), updated_at_ms = $3
             WHERE image_id = $4",
        )
        .bind(bytes_done as i64)
        .bind(bytes_total.map(|b| b as i64))
        .bind(now_ms())
        .bind(image_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a waiting build to `host`: true when it was still free (or
    /// already this host's), so two hosts never build one image.
    pub async fn claim_image_build(&self, image_id: &str, host: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE image_jobs SET host_id = $1, updated_at_ms = $2
             WHERE image_id = $3 AND kind = 'build' AND (host_id IS NULL OR host_id = $1)",
        )
        .bind(host)
        .bind(now_ms())
        .bind(image_id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Builds still saving: waiting for a host, or being built on one.
    pub async fn pending_image_builds(&self) -> Result<Vec<ImageJobRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT image_jobs.* FROM image_jobs JOIN images ON images.id = image_jobs.image_id
             WHERE image_jobs.kind = 'build' AND images.state = 'saving'
             ORDER BY image_jobs.created_at_ms, image_jobs.image_id",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Records the last step a host reported of a build.
    pub async fn set_image_job_status(&self, image_id: &str, status: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE image_jobs SET status = $1, updated_at_ms = $2 WHERE image_id = $3")
            .bind(status)
            .bind(now_ms())
            .bind(image_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
