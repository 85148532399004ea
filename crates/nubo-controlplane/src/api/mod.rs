//! The HTTP routes. Each handler is annotated for OpenAPI, and the
//! document served at `/api/v1/openapi.json` is generated from them (and
//! checked in as docs/openapi.json; a test fails when the two drift).

pub mod agent;
pub mod hosts;
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
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .with_state(ctx)
}
