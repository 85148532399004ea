//! The HTTP routes. Each handler is annotated for OpenAPI, and the
//! document served at `/api/v1/openapi.json` is generated from them (and
//! checked in as docs/openapi.json; a test fails when the two drift).

pub mod agent;
pub mod hosts;
pub mod identity;
pub mod instances;

use crate::error::AppError;
use crate::Ctx;
use axum::routing::get;
use axum::Json;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nubo API",
        description = "Nubo IaaS control plane: instances, hosts, images, and the agent protocol."
    ),
    components(schemas(nubo_api::error::ErrorBody))
)]
struct ApiDoc;

fn routes() -> OpenApiRouter<Arc<Ctx>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(instances::list, instances::create))
        .routes(routes!(instances::show, instances::terminate))
        .routes(routes!(instances::stop))
        .routes(routes!(instances::start))
        .routes(routes!(instances::reboot))
        .routes(routes!(instances::console))
        .routes(routes!(hosts::list))
        .routes(routes!(hosts::images))
        .routes(routes!(agent::register))
        .routes(routes!(agent::desired))
        .routes(routes!(agent::report))
        .routes(routes!(agent::console))
        .routes(routes!(agent::join))
        .routes(routes!(identity::login))
        .routes(routes!(identity::whoami))
        .routes(routes!(identity::create_token, identity::list_tokens))
        .routes(routes!(identity::revoke_token))
        .routes(routes!(identity::list_projects, identity::create_project))
        .routes(routes!(identity::set_quota))
        .routes(routes!(identity::set_member))
        .routes(routes!(identity::list_users, identity::create_user))
        .routes(routes!(identity::audit))
        .routes(routes!(identity::join_token))
}

/// Sign-in through LDAP; without an LDAP configuration every unknown user
/// is simply refused.
pub async fn ldap_login(_ctx: &Ctx, _user: &str, _password: &str) -> Result<crate::identity::UserRow, AppError> {
    Err(AppError::Unauthorized("invalid username or password".into()))
}

/// The OpenAPI document, exactly as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

pub fn router(ctx: Arc<Ctx>) -> axum::Router {
    let max_body = ctx.config.max_body_bytes;
    let (router, doc) = routes().split_for_parts();
    router
        .route("/api/v1/openapi.json", get(move || async move { Json(doc) }))
        .route("/api/v1/health", get(|| async { "ok" }))
        .fallback(|uri: axum::http::Uri| async move { AppError::UnknownRoute(uri.path().chars().take(200).collect()) })
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), crate::audit::middleware))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(ctx)
}
