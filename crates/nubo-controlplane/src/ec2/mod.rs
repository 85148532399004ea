//! The EC2-compatible API: the EC2 Query protocol (version 2016-11-15)
//! on the API listener's `/` (form-encoded `Action=...&Version=...`,
//! SigV4-signed with an access key), so that the stock `aws ec2` CLI and
//! boto3 drive Nubo. Each action maps onto the REST handlers and the
//! store: an `i-...`, `vol-...` or `ami-...` is the same resource through
//! REST, the CLI and EC2, and the access key's user, project and role make
//! the caller, so tenancy, quotas and the audit log apply as for REST.
//!
//! Modules: `sigv4` (signature checks), `replay` (each signature once),
//! `instance_status` (EC2's status checks from Nubo's own),
//! `instance_attributes` (one attribute of an instance, read or changed),
//! `instance_filters` (DescribeInstances' filters),
//! `sts` (STS's GetCallerIdentity, signed for service `sts` to this URL),
//! `launch_templates` (launch templates, and RunInstances from one),
//! `vpcs` (VPCs and subnets over private networks), `addresses`
//! (Elastic IPs over floating IPs), `snapshots` (over volume snapshots),
//! `images` (CreateImage, DeregisterImage), `volume_modifications`
//! (ModifyVolume and its records),
//! `query` (parameters), `xml`
//! (answers), `error` (EC2 error codes), and one module per resource.

pub mod addresses;
pub mod block_devices;
pub mod catalog;
pub mod error;
pub mod images;
pub mod instance_attributes;
pub mod instance_filters;
pub mod instance_status;
pub mod instances;
pub mod keypairs;
pub mod launch_templates;
pub mod query;
pub mod replace_root;
pub mod replay;
pub mod security_groups;
pub mod sigv4;
pub mod snapshots;
pub mod sts;
pub mod tags;
pub mod volume_modifications;
pub mod volumes;
pub mod vpcs;
pub mod xml;

use crate::auth::{caller_of, record, record_detail, Caller, Role};
use crate::Ctx;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use error::{Ec2Error, Ec2Result};
use query::Params;
use std::sync::Arc;
use tracing::Instrument;
use xml::El;

/// The only API version served.
pub const API_VERSION: &str = "2016-11-15";
/// The SigV4 service name clients sign for.
pub const SERVICE: &str = "ec2";

/// What one action answers: the elements under the response's root.
pub type Answer = Vec<El>;

/// Does this action only read? (Reads are not written to the audit log.)
fn read_only(action: &str) -> bool {
    action.starts_with("Describe") || action.starts_with("Get")
}

/// May a copy of this signed request run again? Reads (see `replay`), and
/// a RunInstances with a ClientToken, whose copy gets the first one's
/// reservation: refusing it would break the token's own retries.
fn replay_harmless(action: &str, params: &Params) -> bool {
    read_only(action) || (action == "RunInstances" && params.str("ClientToken").is_some_and(|t| !t.is_empty()))
}

/// `POST /` (and `GET /?Action=...`): one EC2 request.
pub async fn handle(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let request_id = xml::request_id();
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, ctx.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            let e = Ec2Error::invalid(format!(
                "the request body is larger than {} bytes (or was cut off)",
                ctx.config.max_body_bytes
            ));
            return error_response(&e, &request_id);
        }
    };
    let mut params = Params::from_form(&body);
    if let Some(q) = parts.uri.query() {
        params.merge_form(q.as_bytes());
    }
    let action = params.str("Action").unwrap_or_default().to_string();
    if signed_for_sts(&parts) {
        return handle_sts(&ctx, &parts, &body, &params, &action, &request_id).await;
    }
    let span =
        tracing::info_span!("ec2", action = %action.chars().take(64).collect::<String>(), request_id = %request_id);
    record_detail(
        &parts.extensions,
        format!("ec2:{}", action.chars().take(64).collect::<String>()),
        read_only(&action),
    );
    let mut claimed: Option<String> = None;
    let result = async {
        let (caller, signature) = authenticate(&ctx, &parts, &body, replay_harmless(&action, &params), SERVICE).await?;
        claimed = signature;
        if action.is_empty() {
            return Err(Ec2Error::missing("Action"));
        }
        match params.str("Version") {
            Some(API_VERSION) | None => {}
            Some(v) => {
                return Err(Ec2Error::bad(
                    "InvalidParameterValue",
                    format!(
                        "API version '{}' is not served; use Version={API_VERSION}",
                        v.chars().take(20).collect::<String>()
                    ),
                ))
            }
        }
        if params.bool("DryRun")? == Some(true) {
            return Err(dry_run(&caller, &action));
        }
        let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
        dispatch(&ctx, &caller, &action, &params, &host).await
    }
    .instrument(span)
    .await;
    if let (Err(e), Some(signature)) = (&result, &claimed) {
        // botocore retries a 5xx, within the same second with the same
        // signature: that retry is not a replay (see `replay`).
        if e.status.is_server_error() {
            if let Err(db) = ctx.store.release_signature(signature).await {
                tracing::warn!(error = %db, "cannot release a SigV4 signature claim: the client's retry may be refused");
            }
        }
    }
    match result {
        Ok(body) => {
            let doc = xml::response(&action, &request_id, body);
            ([(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], doc).into_response()
        }
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(code = %e.code, %action, "EC2 request failed");
            } else {
                tracing::info!(code = %e.code, %action, "EC2 request refused");
            }
            error_response(&e, &request_id)
        }
    }
}

/// Is the request signed for STS (its credential scope's service)?
fn signed_for_sts(parts: &axum::http::request::Parts) -> bool {
    let header = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    header.and_then(|h| sigv4::parse_authorization(h).ok()).is_some_and(|a| a.service == sts::SERVICE)
}

/// One STS request (see `sts`): authenticated as EC2 requests are.
async fn handle_sts(
    ctx: &Arc<Ctx>,
    parts: &axum::http::request::Parts,
    body: &[u8],
    params: &Params,
    action: &str,
    request_id: &str,
) -> Response {
    let span =
        tracing::info_span!("sts", action = %action.chars().take(64).collect::<String>(), request_id = %request_id);
    record_detail(&parts.extensions, format!("sts:{}", action.chars().take(64).collect::<String>()), true);
    let result = async {
        // Every STS action served only reads: a replayed copy is harmless.
        let (caller, _) = authenticate(ctx, parts, body, true, sts::SERVICE).await?;
        sts::answer(&caller, action, params.str("Version"), request_id)
    }
    .instrument(span)
    .await;
    let (status, doc) = match result {
        Ok(doc) => (StatusCode::OK, doc),
        Err(e) => (e.status, sts::error(&e, request_id)),
    };
    (status, [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], doc).into_response()
}

fn error_response(e: &Ec2Error, request_id: &str) -> Response {
    let doc = xml::error(&e.code, &e.message, request_id);
    let mut resp = Response::new(Body::from(doc));
    *resp.status_mut() = e.status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/xml;charset=UTF-8"));
    resp
}

/// The SigV4 signature, then the access key's owner as the caller; and
/// the signature (hex) when it was claimed against replays (unless
/// `replay_harmless`).
async fn authenticate(
    ctx: &Ctx,
    parts: &axum::http::request::Parts,
    body: &[u8],
    replay_harmless: bool,
    service: &str,
) -> Ec2Result<(Caller, Option<String>)> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Ec2Error::auth(sigv4::SigError::Missing.to_string()))?;
    let auth = sigv4::parse_authorization(header).map_err(|e| Ec2Error::auth(e.to_string()))?;
    let Some((sealed, owner)) = ctx.store.access_key_owner(&auth.access_key).await? else {
        record(parts, "invalid-access-key".into(), None);
        return Err(Ec2Error::auth(format!(
            "AWS was not able to validate the provided access credentials: access key '{}' does not exist or was revoked; create one with `nubo access-key create`",
            auth.access_key.chars().take(40).collect::<String>()
        )));
    };
    crate::auth::rate_limit(ctx, &crate::auth::user_key(&owner))
        .map_err(|e| Ec2Error::from_app(e, error::Domain::Other))?;
    let secret = ctx.sealer.unseal(&sealed).map_err(|e| {
        tracing::error!(error = %e, key = %auth.access_key, "cannot unseal an access key's secret");
        Ec2Error::internal()
    })?;
    let signed = sigv4::SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body,
    };
    let now_ms = crate::store::now_ms();
    let at = match sigv4::verify(&auth, &signed, &secret, &ctx.config.region, service, now_ms / 1000) {
        Ok(at) => at,
        Err(e) => {
            record(parts, format!("invalid-signature:{}", auth.access_key), None);
            return Err(match e {
                sigv4::SigError::Skewed { .. } => Ec2Error::bad("RequestExpired", e.to_string()),
                other => Ec2Error::auth(other.to_string()),
            });
        }
    };
    // Claimed only once verified, so forged signatures cannot fill the
    // table. EC2 has no code for a replay; RequestExpired is the one for
    // "this signed request is no longer good", and botocore does not retry
    // it (a retry would be signed anew and succeed, hiding nothing).
    let expires_ms = (at + sigv4::MAX_SKEW_SECS + 1) * 1000;
    let signature = hex::encode(&auth.signature);
    if !replay_harmless && !ctx.store.claim_signature(&signature, expires_ms, now_ms).await? {
        record(parts, format!("replayed-signature:{}", auth.access_key), None);
        tracing::warn!(key = %auth.access_key, "refused a replayed EC2 request");
        return Err(Ec2Error::bad("RequestExpired", sigv4::SigError::Replayed.to_string()));
    }
    record(parts, owner.user_name.clone(), owner.project_id.clone());
    Ok((caller_of(owner), (!replay_harmless).then_some(signature)))
}

/// EC2's DryRun: would the caller be allowed? (`DryRunOperation` if so.)
fn dry_run(caller: &Caller, action: &str) -> Ec2Error {
    let allowed = if read_only(action) {
        caller.admin || (caller.project_id.is_some() && caller.role != Role::None)
    } else {
        crate::authz::creation_project(caller).is_ok()
    };
    if allowed {
        Ec2Error::dry_run_ok()
    } else {
        Ec2Error::unauthorized(format!(
            "You are not authorized to perform this operation: your role in project {} is {}",
            caller.project_name.as_deref().unwrap_or("?"),
            caller.role.as_str()
        ))
    }
}

/// The project an EC2 caller works in (the access key's).
pub(crate) fn project_of(caller: &Caller) -> Ec2Result<String> {
    crate::authz::caller_project(caller).map_err(|_| {
        Ec2Error::unauthorized(
            "this access key is not scoped to a project: create it after `nubo login --project NAME`",
        )
    })
}

/// Every action `dispatch` serves, named in the InvalidAction answer (a
/// test below keeps the two the same).
const SERVED: &[&str] = &[
    "RunInstances",
    "DescribeInstances",
    "DescribeInstanceStatus",
    "DescribeInstanceAttribute",
    "ModifyInstanceAttribute",
    "StartInstances",
    "StopInstances",
    "RebootInstances",
    "TerminateInstances",
    "GetConsoleOutput",
    "DescribeInstanceTypes",
    "DescribeImages",
    "DescribeRegions",
    "DescribeAvailabilityZones",
    "CreateVolume",
    "DescribeVolumes",
    "AttachVolume",
    "DetachVolume",
    "DeleteVolume",
    "ModifyVolume",
    "DescribeVolumesModifications",
    "CreateSnapshot",
    "DescribeSnapshots",
    "DeleteSnapshot",
    "DescribeSnapshotAttribute",
    "CreateImage",
    "DeregisterImage",
    "CreateKeyPair",
    "ImportKeyPair",
    "DescribeKeyPairs",
    "DeleteKeyPair",
    "CreateSecurityGroup",
    "DescribeSecurityGroups",
    "AuthorizeSecurityGroupIngress",
    "RevokeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupEgress",
    "DeleteSecurityGroup",
    "CreateVpc",
    "DescribeVpcs",
    "DeleteVpc",
    "DescribeVpcAttribute",
    "ModifyVpcAttribute",
    "CreateSubnet",
    "DescribeSubnets",
    "DeleteSubnet",
    "AllocateAddress",
    "AssociateAddress",
    "DisassociateAddress",
    "ReleaseAddress",
    "DescribeAddresses",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
    "CreateLaunchTemplate",
    "DescribeLaunchTemplates",
    "ModifyLaunchTemplate",
    "DeleteLaunchTemplate",
    "CreateLaunchTemplateVersion",
    "DescribeLaunchTemplateVersions",
    "DeleteLaunchTemplateVersions",
    "CreateReplaceRootVolumeTask",
    "DescribeReplaceRootVolumeTasks",
];

async fn dispatch(ctx: &Arc<Ctx>, caller: &Caller, action: &str, p: &Params, host: &str) -> Ec2Result<Answer> {
    match action {
        "RunInstances" => instances::run(ctx, caller, p).await,
        "DescribeInstances" => instances::describe(ctx, caller, p).await,
        "DescribeInstanceStatus" => instance_status::describe(ctx, caller, p).await,
        "DescribeInstanceAttribute" => instance_attributes::describe(ctx, caller, p).await,
        "ModifyInstanceAttribute" => instance_attributes::modify(ctx, caller, p).await,
        "StartInstances" => instances::power(ctx, caller, p, instances::Power::Start).await,
        "StopInstances" => instances::power(ctx, caller, p, instances::Power::Stop).await,
        "RebootInstances" => instances::power(ctx, caller, p, instances::Power::Reboot).await,
        "TerminateInstances" => instances::power(ctx, caller, p, instances::Power::Terminate).await,
        "GetConsoleOutput" => instances::console(ctx, caller, p).await,
        "DescribeInstanceTypes" => catalog::instance_types(ctx, p),
        "DescribeImages" => catalog::images(ctx, caller, p).await,
        "DescribeRegions" => catalog::regions(ctx, p, host),
        "DescribeAvailabilityZones" => catalog::zones(ctx, p),
        "CreateVolume" => volumes::create(ctx, caller, p).await,
        "DescribeVolumes" => volumes::describe(ctx, caller, p).await,
        "AttachVolume" => volumes::attach(ctx, caller, p).await,
        "DetachVolume" => volumes::detach(ctx, caller, p).await,
        "DeleteVolume" => volumes::delete(ctx, caller, p).await,
        "ModifyVolume" => volume_modifications::modify(ctx, caller, p).await,
        "DescribeVolumesModifications" => volume_modifications::describe(ctx, caller, p).await,
        "CreateSnapshot" => snapshots::create(ctx, caller, p).await,
        "DescribeSnapshots" => snapshots::describe(ctx, caller, p).await,
        "DeleteSnapshot" => snapshots::delete(ctx, caller, p).await,
        "DescribeSnapshotAttribute" => snapshots::describe_attribute(ctx, caller, p).await,
        "CreateImage" => images::create(ctx, caller, p).await,
        "DeregisterImage" => images::deregister(ctx, caller, p).await,
        "CreateKeyPair" => keypairs::create(ctx, caller, p).await,
        "ImportKeyPair" => keypairs::import(ctx, caller, p).await,
        "DescribeKeyPairs" => keypairs::describe(ctx, caller, p).await,
        "DeleteKeyPair" => keypairs::delete(ctx, caller, p).await,
        "CreateSecurityGroup" => security_groups::create(ctx, caller, p).await,
        "DescribeSecurityGroups" => security_groups::describe(ctx, caller, p).await,
        "AuthorizeSecurityGroupIngress" => security_groups::authorize_ingress(ctx, caller, p).await,
        "RevokeSecurityGroupIngress" => security_groups::revoke_ingress(ctx, caller, p).await,
        "AuthorizeSecurityGroupEgress" => security_groups::authorize_egress(ctx, caller, p).await,
        "RevokeSecurityGroupEgress" => security_groups::revoke_egress(ctx, caller, p).await,
        "DeleteSecurityGroup" => security_groups::delete(ctx, caller, p).await,
        "CreateVpc" => vpcs::create_vpc(ctx, caller, p).await,
        "DescribeVpcs" => vpcs::describe_vpcs(ctx, caller, p).await,
        "DeleteVpc" => vpcs::delete_vpc(ctx, caller, p).await,
        "DescribeVpcAttribute" => vpcs::describe_vpc_attribute(ctx, caller, p).await,
        "ModifyVpcAttribute" => vpcs::modify_vpc_attribute(ctx, caller, p).await,
        "CreateSubnet" => vpcs::create_subnet(ctx, caller, p).await,
        "DescribeSubnets" => vpcs::describe_subnets(ctx, caller, p).await,
        "DeleteSubnet" => vpcs::delete_subnet(ctx, caller, p).await,
        "AllocateAddress" => addresses::allocate(ctx, caller, p).await,
        "AssociateAddress" => addresses::associate(ctx, caller, p).await,
        "DisassociateAddress" => addresses::disassociate(ctx, caller, p).await,
        "ReleaseAddress" => addresses::release(ctx, caller, p).await,
        "DescribeAddresses" => addresses::describe(ctx, caller, p).await,
        "CreateTags" => tags::create(ctx, caller, p).await,
        "DeleteTags" => tags::delete(ctx, caller, p).await,
        "DescribeTags" => tags::describe(ctx, caller, p).await,
        "CreateLaunchTemplate" => launch_templates::create(ctx, caller, p).await,
        "DescribeLaunchTemplates" => launch_templates::describe(ctx, caller, p).await,
        "ModifyLaunchTemplate" => launch_templates::modify(ctx, caller, p).await,
        "DeleteLaunchTemplate" => launch_templates::delete(ctx, caller, p).await,
        "CreateLaunchTemplateVersion" => launch_templates::create_version(ctx, caller, p).await,
        "DescribeLaunchTemplateVersions" => launch_templates::describe_versions(ctx, caller, p).await,
        "DeleteLaunchTemplateVersions" => launch_templates::delete_versions(ctx, caller, p).await,
        "CreateReplaceRootVolumeTask" => replace_root::create(ctx, caller, p).await,
        "DescribeReplaceRootVolumeTasks" => replace_root::describe(ctx, caller, p).await,
        other => Err(Ec2Error::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!(
                "The action {} is not valid for this web service; Nubo serves: {}",
                other.chars().take(64).collect::<String>(),
                SERVED.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    /// `SERVED` names exactly the actions `dispatch` has an arm for.
    #[test]
    fn served_list_matches_the_dispatch_arms() {
        let source = include_str!("mod.rs");
        let body = &source[source.find("async fn dispatch(").unwrap_or(0)..];
        let arms: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix('"')?.split_once("\" => ").map(|(a, _)| a))
            .collect();
        assert_eq!(arms, super::SERVED, "add the action to SERVED (or its arm to dispatch)");
    }
}
