//! Monitoring's routes: metric series and latest values, health checks
//! and their history, alert rules, alerts (acknowledge, silence), the
//! event log, the Prometheus exposition at `/metrics`, and the agent side
//! (samples in, checks out, check results in). The work is
//! `app::monitoring`'s.

use crate::app::monitoring as app;
use crate::auth::{Caller, HostCaller};
use crate::error::{ApiJson, ApiQuery, AppResult};
use crate::pagination::{Page, Paged};
use crate::Ctx;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use nubo_api::monitoring::{
    Alert, AlertRule, AlertRuleCreate, AlertSilence, Check, CheckCreate, CheckResults, CloudEvent, HostChecks,
    MetricLatest, MetricSeries, MetricsBatch,
};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SeriesQuery {
    /// An instance (`i-...`) or host (`h-...`) id.
    pub resource: String,
    /// e.g. `cpu_percent`.
    pub metric: String,
    /// Start: ms since the epoch, `now`, or a duration ago (`15m`, `2h`); default 15m.
    pub from: Option<String>,
    /// End; default now.
    pub to: Option<String>,
    /// Step: `10s`, `1m`, or seconds; default the range over 60.
    pub step: Option<String>,
}

/// A metric series: the average per step over the range (raw samples for
/// the last day, one-minute rollups before that).
#[utoipa::path(get, path = "/api/v1/metrics", tag = "monitoring", operation_id = "metric_series",
    params(SeriesQuery),
    responses((status = 200, body = MetricSeries), (status = 400, body = nubo_api::error::ErrorBody), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn series(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiQuery(q): ApiQuery<SeriesQuery>,
) -> AppResult<Json<MetricSeries>> {
    let spec = app::SeriesSpec { resource: q.resource, metric: q.metric, from: q.from, to: q.to, step: q.step };
    Ok(Json(app::series(&ctx, &caller, spec).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LatestQuery {
    pub resource: String,
}

/// The newest value of every metric of a resource.
#[utoipa::path(get, path = "/api/v1/metrics/latest", tag = "monitoring", operation_id = "metric_latest",
    params(LatestQuery), responses((status = 200, body = Vec<MetricLatest>), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn latest(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiQuery(q): ApiQuery<LatestQuery>,
) -> AppResult<Json<Vec<MetricLatest>>> {
    Ok(Json(app::latest(&ctx, &caller, &q.resource).await?))
}

/// A host's samples of itself and its instances.
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/metrics", tag = "agent", operation_id = "agent_metrics",
    request_body = MetricsBatch, params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "stored"), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn ingest(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<MetricsBatch>,
) -> AppResult<Json<()>> {
    Ok(Json(app::ingest(&ctx, &caller, &id, b).await?))
}

/// The checks a host runs now.
#[utoipa::path(get, path = "/api/v1/agent/hosts/{id}/checks", tag = "agent", operation_id = "agent_checks",
    params(("id" = String, Path, description = "host id")), responses((status = 200, body = HostChecks)))]
pub async fn host_checks(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<HostChecks>> {
    Ok(Json(app::host_checks(&ctx, &caller, &id).await?))
}

/// Results of the checks a host ran.
#[utoipa::path(post, path = "/api/v1/agent/hosts/{id}/checks", tag = "agent", operation_id = "agent_check_results",
    request_body = CheckResults, params(("id" = String, Path, description = "host id")),
    responses((status = 200, description = "applied")))]
pub async fn check_results(
    caller: HostCaller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<CheckResults>,
) -> AppResult<Json<()>> {
    Ok(Json(app::check_results(&ctx, &caller, &id, r).await?))
}

/// Create a health check of an instance (or, for operators, a host).
#[utoipa::path(post, path = "/api/v1/checks", tag = "monitoring", operation_id = "create_check", request_body = CheckCreate,
    responses((status = 201, body = Check), (status = 400, body = nubo_api::error::ErrorBody), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn create_check(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<CheckCreate>,
) -> AppResult<(StatusCode, Json<Check>)> {
    Ok((StatusCode::CREATED, Json(app::create_check(&ctx, &caller, p).await?)))
}

#[utoipa::path(get, path = "/api/v1/checks", tag = "monitoring", operation_id = "list_checks",
    responses((status = 200, body = Vec<Check>)))]
pub async fn list_checks(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<Check>>> {
    Ok(Json(app::list_checks(&ctx, &caller).await?))
}

/// A check with its state history.
#[utoipa::path(get, path = "/api/v1/checks/{id}", tag = "monitoring", operation_id = "show_check",
    params(("id" = String, Path, description = "check id")),
    responses((status = 200, body = Check), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_check(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Check>> {
    Ok(Json(app::show_check(&ctx, &caller, &id).await?))
}

#[utoipa::path(delete, path = "/api/v1/checks/{id}", tag = "monitoring", operation_id = "delete_check",
    params(("id" = String, Path, description = "check id")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_check(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<StatusCode> {
    app::delete_check(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an alert rule on a metric or on checks.
#[utoipa::path(post, path = "/api/v1/alert-rules", tag = "monitoring", operation_id = "create_alert_rule",
    request_body = AlertRuleCreate,
    responses((status = 201, body = AlertRule), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn create_rule(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiJson(p): ApiJson<AlertRuleCreate>,
) -> AppResult<(StatusCode, Json<AlertRule>)> {
    Ok((StatusCode::CREATED, Json(app::create_rule(&ctx, &caller, p).await?)))
}

/// List alert rules.
/// With `limit`, one page of them, ordered by creation time then id:
/// the `Next-Page-Token` header says where the next one starts.
#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "monitoring", operation_id = "list_alert_rules",
    params(crate::pagination::ListQuery),
    responses((status = 200, body = Vec<AlertRule>,
            headers(("next-page-token" = String, description = "where the next page starts; absent on the last page"))),
        (status = 400, description = "a bad limit or page token", body = nubo_api::error::ErrorBody)))]
pub async fn list_rules(caller: Caller, State(ctx): State<Arc<Ctx>>, page: Page) -> AppResult<Paged<AlertRule>> {
    Ok(Paged(app::list_rules(&ctx, &caller).await?, page))
}

#[utoipa::path(delete, path = "/api/v1/alert-rules/{id}", tag = "monitoring", operation_id = "delete_alert_rule",
    params(("id" = String, Path, description = "rule id")),
    responses((status = 204), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn delete_rule(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<StatusCode> {
    app::delete_rule(&ctx, &caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AlertsQuery {
    /// Include resolved alerts.
    #[serde(default)]
    pub all: bool,
}

/// Firing alerts (with `all=true`, resolved ones too).
#[utoipa::path(get, path = "/api/v1/alerts", tag = "monitoring", operation_id = "list_alerts", params(AlertsQuery),
    responses((status = 200, body = Vec<Alert>)))]
pub async fn list_alerts(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    ApiQuery(q): ApiQuery<AlertsQuery>,
) -> AppResult<Json<Vec<Alert>>> {
    Ok(Json(app::list_alerts(&ctx, &caller, q.all).await?))
}

#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "monitoring", operation_id = "show_alert",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = Alert), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn show_alert(caller: Caller, State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> AppResult<Json<Alert>> {
    Ok(Json(app::show_alert(&ctx, &caller, &id).await?))
}

/// Acknowledge an alert (someone is on it).
#[utoipa::path(post, path = "/api/v1/alerts/{id}/acknowledge", tag = "monitoring", operation_id = "acknowledge_alert",
    params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = Alert), (status = 404, body = nubo_api::error::ErrorBody)))]
pub async fn acknowledge(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
) -> AppResult<Json<Alert>> {
    Ok(Json(app::acknowledge(&ctx, &caller, &id).await?))
}

/// Silence an alert's notifications for a while.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/silence", tag = "monitoring", operation_id = "silence_alert",
    request_body = AlertSilence, params(("id" = String, Path, description = "alert id")),
    responses((status = 200, body = Alert), (status = 400, body = nubo_api::error::ErrorBody)))]
pub async fn silence(
    caller: Caller,
    State(ctx): State<Arc<Ctx>>,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<AlertSilence>,
) -> AppResult<Json<Alert>> {
    Ok(Json(app::silence(&ctx, &caller, &id, p.for_secs).await?))
}

/// The event log: alerts firing and resolving, check state changes.
#[utoipa::path(get, path = "/api/v1/events", tag = "monitoring", operation_id = "list_events",
    responses((status = 200, body = Vec<CloudEvent>)))]
pub async fn events(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<Json<Vec<CloudEvent>>> {
    Ok(Json(app::events(&ctx, &caller).await?))
}

/// The whole cloud's newest metrics in Prometheus' text format (operators;
/// scrape with `authorization: {credentials: <token>}`).
#[utoipa::path(get, path = "/metrics", tag = "monitoring", operation_id = "prometheus_metrics",
    responses((status = 200, content_type = "text/plain", body = String), (status = 403, body = nubo_api::error::ErrorBody)))]
pub async fn prometheus(caller: Caller, State(ctx): State<Arc<Ctx>>) -> AppResult<impl IntoResponse> {
    let text = app::prometheus(&ctx, &caller).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}
