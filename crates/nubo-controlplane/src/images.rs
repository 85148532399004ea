//! Image state in SQL: the builtin images (each agent builds them), images
//! users imported, and images taken from instances (instance snapshots).
//! Who may see and use which image is decided here too, because it is a
//! property of the image (its visibility and owner). The files themselves
//! live in the registry (`registry`).

use crate::store::{now_ms, Store};
use nubo_api::ids::ImageId;
use nubo_api::views::ImageState;
use sqlx::FromRow;

#[derive(Debug, Clone, FromRow)]
pub struct ImageRow {
    pub id: String,
    pub name: String,
    pub project_id: Option<String>,
    pub visibility: String,
    pub source: String,
    pub state: ImageState,
    pub description: String,
    pub disk_format: Option<String>,
    pub sha256: Option<String>,
    pub expected_sha256: Option<String>,
    pub size_bytes: Option<i64>,
    pub virtual_size_bytes: Option<i64>,
    pub min_disk_gib: i64,
    pub min_memory_mib: i64,
    pub kernel_image: Option<String>,
    pub parent_id: Option<String>,
    pub source_instance: Option<String>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// What instances of it need (JSON, see `hardware`; NULL: defaults).
    #[sqlx(default)]
    pub hardware: Option<String>,
}

impl ImageRow {
    /// Whether a caller working in `project` (any project when `None`, as
    /// an operator) may see and boot this image.
    pub fn visible_to(&self, project: Option<&str>) -> bool {
        self.visibility == "public" || project.is_none() || self.project_id.as_deref() == project
    }
}

/// A new registry image (imported or an instance snapshot).
pub struct NewImage<'a> {
    pub id: &'a ImageId,
    pub name: &'a str,
    pub project_id: &'a str,
    pub visibility: &'a str,
    pub source: &'a str,
    pub state: ImageState,
    pub description: &'a str,
    pub disk_format: Option<&'a str>,
    pub size_bytes: Option<u64>,
    pub min_disk_gib: u64,
    pub min_memory_mib: u64,
    pub kernel_image: Option<&'a str>,
    pub parent_id: Option<&'a str>,
    pub source_instance: Option<&'a str>,
}

/// A project's image bytes against its quota, when an image does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageQuotaUsage {
    pub used: u64,
    pub quota: u64,
    /// What the refused image needed.
    pub needed: u64,
}

/// Takes the project's row lock (so two uploads of one project cannot
/// both fit in the room left for one; SQLite's writer lock does the same),
/// and returns the bytes its images keep or are receiving, except `except`'s.
async fn lock_image_usage(
    tx: &mut crate::store::Tx<'_>,
    project: &str,
    except: Option<&str>,
) -> Result<u64, sqlx::Error> {
    sqlx::query("UPDATE projects SET quota_volume_gib = quota_volume_gib WHERE id = $1")
        .bind(project)
        .execute(&mut **tx)
        .await?;
    let used: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM images
         WHERE project_id = $1 AND state IN ('queued', 'saving', 'active') AND id <> $2",
    )
    .bind(project)
    .bind(except.unwrap_or(""))
    .fetch_one(&mut **tx)
    .await?;
    Ok(used.max(0) as u64)
}

async fn insert_image_on<'e, E>(exec: E, n: &NewImage<'_>) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = crate::store::Db>,
{
    let now = now_ms();
    let r = sqlx::query(
        "INSERT INTO images (id, name, project_id, visibility, source, state, description, disk_format,
           size_bytes, min_disk_gib, min_memory_mib, kernel_image, parent_id, source_instance,
           created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
         ON CONFLICT DO NOTHING",
    )
    .bind(n.id.as_str())
    .bind(n.name)
    .bind(n.project_id)
    .bind(n.visibility)
    .bind(n.source)
    .bind(n.state)
    .bind(n.description)
    .bind(n.disk_format)
    .bind(n.size_bytes.map(|s| s as i64))
    .bind(n.min_disk_gib as i64)
    .bind(n.min_memory_mib as i64)
    .bind(n.kernel_image)
    .bind(n.parent_id)
    .bind(n.source_instance)
    .bind(now)
    .execute(exec)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Why an image cannot be deleted.
#[derive(Debug)]
pub enum ImageInUse {
    /// Instances (not terminated) boot from it.
    Instances(Vec<String>),
    /// Instance snapshots were taken from it.
    Snapshots(Vec<String>),
}

impl Store {
    /// Writes a builtin image's row (its id is derived from its name).
    pub async fn upsert_builtin_image(&self, name: &str, description: &str) -> Result<(), sqlx::Error> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO images (id, name, project_id, visibility, source, state, description, kernel_image,
               created_at_ms, updated_at_ms)
             VALUES ($1, $2, NULL, 'public', 'builtin', 'active', $3, $2, $4, $4)
             ON CONFLICT (id) DO UPDATE SET description = excluded.description, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(ImageId::builtin(name).as_str())
        .bind(name)
        .bind(description)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inserts a registry image; false when the project already has one by that name.
    pub async fn insert_image(&self, n: &NewImage<'_>) -> Result<bool, sqlx::Error> {
        insert_image_on(&self.pool, n).await
    }

    /// Inserts an imported image whose declared size counts against the
    /// project's image quota at once (the upload can never be larger), if
    /// it fits: `Ok(Err(usage))` when it does not.
    pub async fn insert_image_within_quota(
        &self,
        n: &NewImage<'_>,
        quota: u64,
    ) -> Result<Result<bool, ImageQuotaUsage>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let used = lock_image_usage(&mut tx, n.project_id, None).await?;
        let needed = n.size_bytes.unwrap_or(0);
        if used.saturating_add(needed) > quota {
            return Ok(Err(ImageQuotaUsage { used, quota, needed }));
        }
        let inserted = insert_image_on(&mut *tx, n).await?;
        tx.commit().await?;
        Ok(Ok(inserted))
    }

    /// Reserves `size` bytes of the project's image quota for the file of
    /// image `id` (an instance snapshot arriving), if it fits.
    pub async fn reserve_image_bytes(
        &self,
        project: &str,
        id: &str,
        size: u64,
        quota: u64,
    ) -> Result<Result<(), ImageQuotaUsage>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let used = lock_image_usage(&mut tx, project, Some(id)).await?;
        if used.saturating_add(size) > quota {
            return Ok(Err(ImageQuotaUsage { used, quota, needed: size }));
        }
        sqlx::query("UPDATE images SET size_bytes = $1 WHERE id = $2")
            .bind(size as i64)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Bytes of image files the project keeps or is receiving.
    pub async fn image_bytes_used(&self, project: &str) -> Result<u64, sqlx::Error> {
        let used: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM images
             WHERE project_id = $1 AND state IN ('queued', 'saving', 'active')",
        )
        .bind(project)
        .fetch_one(&self.pool)
        .await?;
        Ok(used.max(0) as u64)
    }

    pub async fn image(&self, id: &str) -> Result<Option<ImageRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM images WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// Every image `project` may see (every image for `None`), builtin first.
    pub async fn images_visible(&self, project: Option<&str>) -> Result<Vec<ImageRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM images WHERE ($1 IS NULL OR visibility = 'public' OR project_id = $1)
             ORDER BY CASE source WHEN 'builtin' THEN 0 ELSE 1 END, name, created_at_ms",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await
    }

    /// The image `key` (an id, or a name) as `project` resolves it: an id
    /// it may see; else its own image by that name, then a builtin one, then
    /// another project's public one (when exactly one has the name).
    pub async fn resolve_image(&self, project: Option<&str>, key: &str) -> Result<Option<ImageRow>, sqlx::Error> {
        if key.parse::<ImageId>().is_ok() {
            return Ok(self.image(key).await?.filter(|i| i.visible_to(project)));
        }
        let candidates: Vec<ImageRow> = sqlx::query_as("SELECT * FROM images WHERE name = $1")
            .bind(key)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .filter(|i: &ImageRow| i.visible_to(project))
            .collect();
        if let Some(own) = candidates.iter().find(|i| project.is_some() && i.project_id.as_deref() == project) {
            return Ok(Some(own.clone()));
        }
        if let Some(builtin) = candidates.iter().find(|i| i.source == "builtin") {
            return Ok(Some(builtin.clone()));
        }
        Ok(if candidates.len() == 1 { candidates.into_iter().next() } else { None })
    }

    /// Moves an image between states (e.g. queued -> saving); false when
    /// it was not in `from` (someone else got there first) or may not
    /// become `to` from where it is.
    pub async fn set_image_state(&self, id: &str, from: &[ImageState], to: ImageState) -> Result<bool, sqlx::Error> {
        let row = match self.image(id).await? {
            Some(r) if from.contains(&r.state) && r.state.can_become(to) => r,
            _ => return Ok(false),
        };
        let r =
            sqlx::query("UPDATE images SET state = $1, error = NULL, updated_at_ms = $2 WHERE id = $3 AND state = $4")
                .bind(to)
                .bind(now_ms())
                .bind(id)
                .bind(row.state)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The image's file was stored and checked: it is bootable now.
    pub async fn activate_image(
        &self,
        id: &str,
        sha256: &str,
        size_bytes: u64,
        virtual_size_bytes: u64,
        min_disk_gib: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE images SET state = $7, sha256 = $1, size_bytes = $2, virtual_size_bytes = $3,
               min_disk_gib = $4, error = NULL, updated_at_ms = $5 WHERE id = $6",
        )
        .bind(sha256)
        .bind(size_bytes as i64)
        .bind(virtual_size_bytes as i64)
        .bind(min_disk_gib as i64)
        .bind(now_ms())
        .bind(id)
        .bind(ImageState::Active)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_expected_sha256(&self, id: &str, sha256: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE images SET expected_sha256 = $1 WHERE id = $2")
            .bind(sha256)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn expected_sha256(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT expected_sha256 FROM images WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    pub async fn fail_image(&self, id: &str, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE images SET state = $4, error = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .bind(ImageState::Error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Imports whose upload was under way when the server stopped: in error,
    /// so their owners see it and upload again.
    pub async fn fail_interrupted_uploads(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE images SET state = 'error', error = 'the upload was interrupted by a control-plane restart; delete the image and import it again', updated_at_ms = $1
             WHERE source = 'import' AND state = 'saving'",
        )
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An instance snapshot its host could not take; true when it moved to error.
    pub async fn fail_capture(&self, image: &str, instance: &str, error: Option<&str>) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE images SET state = $5, error = $1, updated_at_ms = $2
             WHERE id = $3 AND source_instance = $4 AND state = $6",
        )
        .bind(error.unwrap_or("the host could not take the snapshot"))
        .bind(now_ms())
        .bind(image)
        .bind(instance)
        .bind(ImageState::Error)
        .bind(ImageState::Saving)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// What keeps an image from being deleted, if anything.
    pub async fn image_in_use(&self, id: &str) -> Result<Option<ImageInUse>, sqlx::Error> {
        let instances: Vec<String> =
            // An ISO in an instance's CD-ROM drive is in use as well.
            sqlx::query_scalar(
                "SELECT id FROM instances WHERE (image_id = $1 OR cdrom_image_id = $1) AND state <> 'terminated'
                 ORDER BY id",
            )
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        if !instances.is_empty() {
            return Ok(Some(ImageInUse::Instances(instances)));
        }
        let snapshots: Vec<String> = sqlx::query_scalar("SELECT id FROM images WHERE parent_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok((!snapshots.is_empty()).then_some(ImageInUse::Snapshots(snapshots)))
    }

    /// Deletes the row; returns its file's sha256 when no other image
    /// shares that file (so the caller may remove it).
    pub async fn delete_image(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let sha: Option<Option<String>> =
            sqlx::query_scalar("SELECT sha256 FROM images WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
        sqlx::query("DELETE FROM images WHERE id = $1").bind(id).execute(&mut *tx).await?;
        let orphan = match sha.flatten() {
            Some(sha) => {
                let others: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE sha256 = $1")
                    .bind(&sha)
                    .fetch_one(&mut *tx)
                    .await?;
                (others == 0).then_some(sha)
            }
            None => None,
        };
        tx.commit().await?;
        Ok(orphan)
    }

    /// Instance snapshots waiting to be taken on `host`: (image id, instance id).
    pub async fn pending_captures_on_host(&self, host: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT images.id, images.source_instance FROM images JOIN instances ON instances.id = images.source_instance
             WHERE images.source = 'snapshot' AND images.state = 'saving' AND instances.host_id = $1
             ORDER BY images.created_at_ms",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await
    }
}
