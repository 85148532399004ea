//! `/api/v1/hosts`: what the cloud runs on. The work is `app::hosts`'s.

use crate::auth::Caller;
use crate::error::AppResult;
use crate::Ctx;
use axum::extract::State;
use axum::Json;
use nubo_api::views::Host;
use std::sync::Arc;

/// List compute hosts with capacity and use.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", operation_id = "list_hosts",
    responses((status = 200, body = Vec<Host>), (status = 401, body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Host>>> {
    Ok(Json(crate::app::hosts::list(&ctx, &caller).await?))
}
