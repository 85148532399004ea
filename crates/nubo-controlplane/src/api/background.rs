//! `/api/v1/background-tasks`: what the control plane does on its own,
//! and how its last runs went (operators only).

use crate::auth::Caller;
use crate::error::AppResult;
use crate::Ctx;
use axum::extract::State;
use axum::Json;
use nubo_api::views::BackgroundTasks;
use std::sync::Arc;

/// List the background tasks with each one's last run on this server.
#[utoipa::path(get, path = "/api/v1/background-tasks", tag = "background-tasks", operation_id = "list_background_tasks",
    responses((status = 200, body = BackgroundTasks), (status = 401, body = nubo_api::error::ErrorBody),
        (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn list(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<BackgroundTasks>> {
    Ok(Json(crate::background::overview(&ctx, &caller).await?))
}
