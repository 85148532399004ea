//! `/api/v1/launch-templates`: launch templates with their versions, the
//! default version, and launching an instance from one. The work is
//! `app::launch_templates`'. `{name}` is a template's name or `lt-...` id.

use crate::app::launch_templates as app;
use crate::auth::Caller;
use crate::error::{ApiJson, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use nubo_api::launch_templates::{
    LaunchTemplate, LaunchTemplateCreate, LaunchTemplateDefault, LaunchTemplateLaunch, LaunchTemplateVersion,
    LaunchTemplateVersionCreate,
};
use nubo_api::views::Instance;
use std::sync::Arc;

/// Create a launch template with its version 1 (the default).
#[utoipa::path(post, path = "/api/v1/launch-templates", tag = "launch-templates", operation_id = "create_launch_template",
    request_body = LaunchTemplateCreate,
    responses((status = 201, body = LaunchTemplate), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 409, description = "the name is taken", body = nubo_api::error::ErrorBody)))]
pub async fn create(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(c): ApiJson<LaunchTemplateCreate>,
) -> AppResult<(StatusCode, Json<LaunchTemplate>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, &c).await?)))
}

/// List launch templates (without their versions).
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/launch-templates", tag = "launch-templates", operation_id = "list_launch_templates",
    params(crate::pagination::ListQuery),
    responses((status = 200, body = Vec<LaunchTemplate>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>, page: Page) -> AppResult<Paged<LaunchTemplate>> {
    Ok(Paged(app::list(&ctx, &caller).await?, page))
}

/// A launch template with every version, newest first.
#[utoipa::path(get, path = "/api/v1/launch-templates/{name}", tag = "launch-templates", operation_id = "show_launch_template",
    params(("name" = String, Path, description = "template name or id (lt-...)")),
    responses((status = 200, body = LaunchTemplate), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
) -> AppResult<Json<LaunchTemplate>> {
    Ok(Json(app::show(&ctx, &caller, &name).await?))
}

/// Delete a launch template and all its versions.
#[utoipa::path(delete, path = "/api/v1/launch-templates/{name}", tag = "launch-templates", operation_id = "delete_launch_template",
    params(("name" = String, Path, description = "template name or id (lt-...)")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(name): Path<String>) -> AppResult<StatusCode> {
    app::delete(&ctx, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a version (the template's latest; the default does not change).
#[utoipa::path(post, path = "/api/v1/launch-templates/{name}/versions", tag = "launch-templates",
    operation_id = "create_launch_template_version", request_body = LaunchTemplateVersionCreate,
    params(("name" = String, Path, description = "template name or id (lt-...)")),
    responses((status = 201, body = LaunchTemplateVersion), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn create_version(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    ApiJson(c): ApiJson<LaunchTemplateVersionCreate>,
) -> AppResult<(StatusCode, Json<LaunchTemplateVersion>)> {
    Ok((StatusCode::CREATED, Json(app::create_version(&ctx, &caller, &name, &c).await?.1)))
}

/// Set the default version (a number or `$Latest`).
#[utoipa::path(post, path = "/api/v1/launch-templates/{name}/default", tag = "launch-templates",
    operation_id = "set_launch_template_default", request_body = LaunchTemplateDefault,
    params(("name" = String, Path, description = "template name or id (lt-...)")),
    responses((status = 200, body = LaunchTemplate), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn set_default(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    ApiJson(d): ApiJson<LaunchTemplateDefault>,
) -> AppResult<Json<LaunchTemplate>> {
    Ok(Json(app::set_default(&ctx, &caller, &name, &d.version).await?))
}

/// Launch an instance from a version (the default unless named), with
/// fields overridden.
#[utoipa::path(post, path = "/api/v1/launch-templates/{name}/instances", tag = "launch-templates",
    operation_id = "launch_from_template", request_body = LaunchTemplateLaunch,
    params(("name" = String, Path, description = "template name or id (lt-...), optionally with :VERSION")),
    responses((status = 201, body = Instance), (status = 400, body = nubo_api::error::ErrorBody),
        (status = 404, body = nubo_api::error::ErrorBody),
        (status = 409, description = "no host can take it", body = nubo_api::error::ErrorBody)))]
pub async fn launch(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(name): Path<String>,
    ApiJson(l): ApiJson<LaunchTemplateLaunch>,
) -> AppResult<(StatusCode, Json<Instance>)> {
    Ok((StatusCode::CREATED, Json(app::launch(&ctx, &caller, &name, &l).await?)))
}

impl crate::pagination::Listed for LaunchTemplate {
    fn cursor(&self) -> crate::pagination::Cursor {
        crate::pagination::Cursor::of(self.created_at_ms, &self.id)
    }
}
