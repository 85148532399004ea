//! `/api/v1/tags` and `/api/v1/resources/{id}/tags`: the REST adapter over
//! `app::tags` (the tags of instances, volumes, snapshots, images,
//! security groups, networks, floating IPs and key pairs, the same the EC2 API's
//! CreateTags and DescribeTags see), and the `tag` filter the lists of
//! those resources take (`?tag=KEY=VALUE&tag=KEY`: all must match).
//! Repeated query parameters are read from the raw query, which the
//! typed query extractor does not collect.

use crate::app::tags as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppError, AppResult};
use crate::Ctx;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use nubo_api::params::TagSet;
use nubo_api::views::{ResourceTags, Tag};
use std::sync::Arc;

/// Every value of the query parameter `name`, in order.
fn values(query: Option<&str>, name: &str) -> Vec<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The single value of `name`; given twice, a 400 that says so.
fn single(query: Option<&str>, name: &str) -> AppResult<Option<String>> {
    let mut all = values(query, name);
    if all.len() > 1 {
        return Err(AppError::BadRequest(format!(
            "the query parameter '{name}' is given {} times: give it once",
            all.len()
        )));
    }
    Ok(all.pop())
}

/// The `tag` filters of a list (`?tag=KEY=VALUE` or `?tag=KEY`,
/// repeatable): only resources with every tag named are listed.
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TagQuery {
    /// Only resources with this tag: `KEY=VALUE` (exactly that value) or
    /// `KEY` (any value). Repeat it for several; all must match.
    #[param(explode, style = Form)]
    pub tag: Option<Vec<String>>,
}

/// A list's tag filters, read from its query.
pub struct TagFilters(pub app::TagFilter);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TagFilters {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(TagFilters(app::TagFilter::parse(&values(parts.uri.query(), "tag"))?))
    }
}

/// What `GET /api/v1/tags` takes (documentation; the handler reads the
/// raw query, as `key` repeats).
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TagListQuery {
    /// Only this resource's tags (its id: `i-...`, `vol-...`, `net-...`, ...).
    pub resource: Option<String>,
    /// Only tags with this key; repeat it for several.
    #[param(explode, style = Form)]
    pub key: Option<Vec<String>>,
    /// At most this many tags (1 to 1000); the answer's `Next-Page-Token`
    /// header says where the next page starts. Without `limit` and
    /// `page_token` the answer is every tag.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `Next-Page-Token` of the previous answer, unchanged.
    pub page_token: Option<String>,
}

/// List the tags the caller's project put on its resources (an operator:
/// every project's), ordered by resource and key.
/// With `limit`, one page of them: the `Next-Page-Token` header says
/// where the next one starts.
#[utoipa::path(get, path = "/api/v1/tags", tag = "tags", operation_id = "list_tags",
    params(TagListQuery),
    responses((status = 200, body = Vec<Tag>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad resource id, limit or page token", body = nubo_api::error::ErrorBody),
        (status = 401, body = nubo_api::error::ErrorBody),
        (status = 404, description = "the resource does not exist or is another project's", body = nubo_api::error::ErrorBody)))]
pub async fn list(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    RawQuery(q): RawQuery,
) -> AppResult<axum::response::Response> {
    let q = q.as_deref();
    let page = app::TagPage::parse(single(q, "limit")?.as_deref(), single(q, "page_token")?.as_deref())?;
    let resource = single(q, "resource")?;
    let (tags, next) = app::list(&ctx, &caller, resource.as_deref(), &values(q, "key"), &page).await?;
    Ok(crate::pagination::paged_json(tags, next))
}

/// Show one resource's tags.
#[utoipa::path(get, path = "/api/v1/resources/{id}/tags", tag = "tags", operation_id = "show_tags",
    params(("id" = String, Path, description = "the resource's id: i-, vol-, snap-, ami-, sg-, net- (or vpc-, subnet-), fip-, key-")),
    responses((status = 200, body = ResourceTags), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<ResourceTags>> {
    Ok(Json(app::show(&ctx, &caller, &id).await?))
}

/// Set tags on a resource: each key given is added or overwritten, the
/// resource's other tags stay (as EC2's CreateTags). Keys are 1-128
/// characters and may not start with `aws:`; values are at most 256
/// characters; a resource carries at most 50 tags. Needs a role that may
/// change the resource.
#[utoipa::path(put, path = "/api/v1/resources/{id}/tags", tag = "tags", operation_id = "set_tags", request_body = TagSet,
    params(("id" = String, Path, description = "the resource's id: i-, vol-, snap-, ami-, sg-, net- (or vpc-, subnet-), fip-, key-")),
    responses((status = 200, description = "every tag the resource carries now", body = ResourceTags),
        (status = 400, description = "a bad key or value, or more than 50 tags", body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn set(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<TagSet>,
) -> AppResult<Json<ResourceTags>> {
    Ok(Json(app::set(&ctx, &caller, &id, &p.tags).await?))
}

/// Remove tags from a resource by key (`?key=K`, repeated; keys it does
/// not carry are no error). Needs a role that may change the resource.
#[utoipa::path(delete, path = "/api/v1/resources/{id}/tags", tag = "tags", operation_id = "unset_tags",
    params(("id" = String, Path, description = "the resource's id"),
        ("key" = Vec<String>, Query, description = "a key to remove; repeat it for several", explode, style = Form)),
    responses((status = 200, description = "the tags the resource still carries", body = ResourceTags),
        (status = 400, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn unset(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> AppResult<Json<ResourceTags>> {
    Ok(Json(app::unset(&ctx, &caller, &id, &values(q.as_deref(), "key")).await?))
}
