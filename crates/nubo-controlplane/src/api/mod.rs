//! The HTTP routes. Each handler is annotated for OpenAPI, and two
//! documents are generated from them: the user API at
//! `/api/v1/openapi.json` (docs/openapi.json) and the agent protocol, the
//! routes under `/api/v1/agent/` that only hosts call, at
//! `/api/v1/agent/openapi.json` (docs/openapi-agent.json). Both are checked
//! in; a test fails when either drifts from the code. They are apart
//! because they have different callers, credentials and compatibility
//! promises: a user tool should never see the agent's routes.

pub mod agent;
pub mod automation;
pub mod background;
pub mod backups;
pub mod consoles;
pub mod day_two;
pub mod floating_ips;
pub mod hosts;
pub mod identity;
pub mod images;
pub mod instances;
pub mod launch_templates;
pub mod load_balancers;
pub mod migrations;
pub mod monitoring;
pub mod networks;
pub mod provisioning;
pub mod restores;
pub mod tags;
pub mod volumes;

use crate::error::AppError;
use crate::Ctx;
use axum::response::IntoResponse;
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
        description = "Nubo IaaS control plane: instances, hosts, images, and everything users call."
    ),
    components(schemas(nubo_api::error::ErrorBody))
)]
struct ApiDoc;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nubo agent protocol",
        description = "What a compute host's agent calls on the control plane, with the host's own credential: \
                       joining, registration, desired state, reports, console, metrics, checks, runs, migrations \
                       and image files."
    ),
    components(schemas(nubo_api::error::ErrorBody))
)]
struct AgentDoc;

/// The user API's JSON routes.
fn routes() -> OpenApiRouter<Arc<Ctx>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(instances::list, instances::create))
        .routes(routes!(instances::show, instances::terminate))
        .routes(routes!(instances::stop))
        .routes(routes!(instances::start))
        .routes(routes!(instances::reboot))
        .routes(routes!(instances::console))
        .routes(routes!(consoles::vnc_ticket))
        .routes(routes!(instances::protect))
        .routes(routes!(instances::eject_cdrom))
        .routes(routes!(instances::insert_cdrom))
        .routes(routes!(instances::boot_order))
        .routes(routes!(hosts::list))
        .routes(routes!(background::list))
        .routes(routes!(migrations::migrate))
        .routes(routes!(migrations::list))
        .routes(routes!(migrations::show))
        .routes(routes!(migrations::drain))
        .routes(routes!(migrations::enable))
        .routes(routes!(migrations::evacuate))
        .routes(routes!(images::list, images::create))
        .routes(routes!(images::show, images::delete))
        .routes(routes!(images::snapshot_instance))
        .routes(routes!(images::set_hardware))
        .routes(routes!(images::import_url))
        .routes(routes!(images::build))
        .routes(routes!(networks::list, networks::create))
        .routes(routes!(networks::show, networks::delete))
        .routes(routes!(floating_ips::list, floating_ips::allocate))
        .routes(routes!(floating_ips::show, floating_ips::release))
        .routes(routes!(floating_ips::associate))
        .routes(routes!(floating_ips::disassociate))
        .routes(routes!(networks::list_groups, networks::create_group))
        .routes(routes!(networks::add_rule))
        .routes(routes!(networks::delete_rule))
        .routes(routes!(volumes::list, volumes::create))
        .routes(routes!(volumes::show, volumes::delete))
        .routes(routes!(volumes::attach))
        .routes(routes!(volumes::detach))
        .routes(routes!(volumes::extend))
        .routes(routes!(volumes::create_snapshot))
        .routes(routes!(volumes::list_snapshots))
        .routes(routes!(volumes::show_snapshot, volumes::delete_snapshot))
        .routes(routes!(restores::restore))
        .routes(routes!(restores::restore_volume))
        .routes(routes!(restores::restore_in_place))
        .routes(routes!(restores::evacuate_from_backups))
        .routes(routes!(day_two::resize))
        .routes(routes!(day_two::rebuild))
        .routes(routes!(day_two::revert_instance))
        .routes(routes!(day_two::revert_volume))
        .routes(routes!(tags::list))
        .routes(routes!(tags::show, tags::set, tags::unset))
        .routes(routes!(monitoring::series))
        .routes(routes!(monitoring::latest))
        .routes(routes!(monitoring::list_checks, monitoring::create_check))
        .routes(routes!(monitoring::show_check, monitoring::delete_check))
        .routes(routes!(monitoring::list_rules, monitoring::create_rule))
        .routes(routes!(monitoring::delete_rule))
        .routes(routes!(monitoring::list_alerts))
        .routes(routes!(monitoring::show_alert))
        .routes(routes!(monitoring::acknowledge))
        .routes(routes!(monitoring::silence))
        .routes(routes!(monitoring::events))
        .routes(routes!(monitoring::prometheus))
        .routes(routes!(automation::list, automation::apply))
        .routes(routes!(automation::show, automation::delete))
        .routes(routes!(automation::list_groups, automation::create_group))
        .routes(routes!(automation::show_group, automation::delete_group))
        .routes(routes!(automation::set_desired))
        .routes(routes!(backups::list_repositories, backups::create_repository))
        .routes(routes!(backups::show_repository, backups::delete_repository))
        .routes(routes!(backups::list_plans, backups::create_plan))
        .routes(routes!(backups::show_plan, backups::delete_plan))
        .routes(routes!(backups::run))
        .routes(routes!(backups::list))
        .routes(routes!(backups::show, backups::delete))
        .routes(routes!(launch_templates::list, launch_templates::create))
        .routes(routes!(launch_templates::show, launch_templates::delete))
        .routes(routes!(launch_templates::create_version))
        .routes(routes!(launch_templates::set_default))
        .routes(routes!(launch_templates::launch))
        .routes(routes!(load_balancers::list, load_balancers::create))
        .routes(routes!(load_balancers::show, load_balancers::delete))
        .routes(routes!(provisioning::create_keypair, provisioning::list_keypairs))
        .routes(routes!(provisioning::delete_keypair))
        .routes(routes!(provisioning::create_recipe, provisioning::list_recipes))
        .routes(routes!(provisioning::show_recipe, provisioning::delete_recipe))
        .routes(routes!(provisioning::create_run, provisioning::list_runs))
        .routes(routes!(provisioning::create_exec))
        .routes(routes!(provisioning::show_run))
        .routes(routes!(identity::login))
        .routes(routes!(identity::whoami))
        .routes(routes!(identity::create_token, identity::list_tokens))
        .routes(routes!(identity::revoke_token))
        .routes(routes!(identity::list_projects, identity::create_project))
        .routes(routes!(identity::set_quota))
        .routes(routes!(identity::set_member, identity::remove_member))
        .routes(routes!(identity::list_users, identity::create_user))
        .routes(routes!(identity::audit))
        .routes(routes!(identity::join_token))
        .routes(routes!(identity::create_access_key, identity::list_access_keys))
        .routes(routes!(identity::revoke_access_key))
}

/// The agent protocol's JSON routes.
fn agent_routes() -> OpenApiRouter<Arc<Ctx>> {
    OpenApiRouter::with_openapi(AgentDoc::openapi())
        .routes(routes!(agent::join))
        .routes(routes!(agent::register))
        .routes(routes!(agent::desired))
        .routes(routes!(agent::heartbeat))
        .routes(routes!(agent::report))
        .routes(routes!(agent::console))
        .routes(routes!(agent::run_progress))
        .routes(routes!(monitoring::ingest))
        .routes(routes!(monitoring::host_checks, monitoring::check_results))
        .routes(routes!(migrations::ready))
        .routes(routes!(migrations::done))
        .routes(routes!(images::agent_claim_build))
        .routes(routes!(images::agent_report_build))
        .routes(routes!(backups::agent_claim))
        .routes(routes!(backups::agent_report))
}

/// User routes whose bodies are image files: streamed, with their own
/// size limit instead of the JSON one.
fn file_routes() -> OpenApiRouter<Arc<Ctx>> {
    OpenApiRouter::new().routes(routes!(images::upload))
}

/// The agent's image-file routes (download to a host, upload a capture).
fn agent_file_routes() -> OpenApiRouter<Arc<Ctx>> {
    OpenApiRouter::new()
        .routes(routes!(images::agent_download, images::agent_capture))
        .routes(routes!(images::agent_upload_build))
}

/// The user API's OpenAPI document, exactly as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().merge(file_routes()).split_for_parts().1
}

/// The agent protocol's OpenAPI document, exactly as served.
pub fn agent_openapi() -> utoipa::openapi::OpenApi {
    agent_routes().merge(agent_file_routes()).split_for_parts().1
}

/// The CA this server's certificate chains to. Anyone may read it (a CA
/// certificate is no secret): a new host fetches it over an unchecked
/// connection and trusts it only if its fingerprint is the one in its join
/// token. Not in the OpenAPI document, as it is PEM, not JSON.
async fn tls_ca(axum::extract::State(ctx): axum::extract::State<Arc<Ctx>>) -> axum::response::Response {
    match &ctx.config.tls_ca {
        Some(ca) => ([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], ca.pem.clone()).into_response(),
        None => AppError::Conflict(
            "this server has no CA of its own (it serves plain HTTP or an operator's certificate): trust its \
             certificate through NUBO_CA_CERT (`nubo agent`: --ca-cert)"
                .into(),
        )
        .into_response(),
    }
}

/// `GET /`: a browser typing the server's address (no query, no
/// `Authorization`) is sent to the portal; anything else is an EC2 Query
/// request (`GET /?Action=...`, signed in the `Authorization` header) and
/// gets the EC2 answer it always got, errors included.
async fn root(state: axum::extract::State<Arc<Ctx>>, req: axum::extract::Request) -> axum::response::Response {
    let from_a_browser =
        req.uri().query().is_none_or(str::is_empty) && !req.headers().contains_key(axum::http::header::AUTHORIZATION);
    if from_a_browser {
        crate::auth::record_detail(req.extensions(), "to the portal".into(), true);
        return crate::portal::see_other(crate::portal::HOME);
    }
    crate::ec2::handle(state, req).await
}

pub fn router(ctx: Arc<Ctx>) -> axum::Router {
    let max_body = ctx.config.max_body_bytes;
    let max_file = usize::try_from(ctx.config.max_image_bytes).unwrap_or(usize::MAX);
    let (json, mut doc) = routes().split_for_parts();
    let (files, files_doc) = file_routes().split_for_parts();
    doc.merge(files_doc);
    let (agent_json, mut agent_doc) = agent_routes().split_for_parts();
    let (agent_files, agent_files_doc) = agent_file_routes().split_for_parts();
    agent_doc.merge(agent_files_doc);
    let json = json
        .merge(agent_json)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body))
        .layer(axum::extract::DefaultBodyLimit::max(max_body));
    let files = files
        .merge(agent_files)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(max_file))
        .layer(axum::extract::DefaultBodyLimit::disable());
    // The EC2 Query API (not in the OpenAPI document: its shapes are EC2's),
    // which shares `/` with a browser's first visit.
    let ec2 = axum::Router::new().route("/", axum::routing::post(crate::ec2::handle).get(root));
    json.merge(files)
        .merge(ec2)
        .route("/api/v1/openapi.json", get(move || async move { Json(doc) }))
        .route("/api/v1/agent/openapi.json", get(move || async move { Json(agent_doc) }))
        .route("/api/v1/health", get(|| async { "ok" }))
        .route("/api/v1/tls/ca.pem", get(tls_ca))
        .merge(crate::portal::router())
        .merge(consoles::router())
        .merge(crate::portal::consoles::vendor(ctx.config.web_assets_dir()))
        .fallback(|uri: axum::http::Uri| async move {
            if uri.path().starts_with("/ui") {
                return crate::portal::not_found();
            }
            AppError::UnknownRoute(uri.path().chars().take(200).collect()).into_response()
        })
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), crate::audit::middleware))
        .with_state(ctx)
}
