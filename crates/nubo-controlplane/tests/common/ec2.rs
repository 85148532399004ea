//! The EC2 Query API's side of the harness: access keys, and requests
//! signed by AWS's own SigV4 signer (`aws-sigv4`), never by our
//! verifier's code, sent through the router; small readers of the XML.

use super::T;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use std::time::{Duration, SystemTime};
use tower::ServiceExt;

pub struct Key {
    pub id: String,
    pub secret: String,
}

pub async fn key(t: &T, token: &str) -> Key {
    let v = t.ok("POST", "/api/v1/access-keys", token, None).await;
    Key { id: v["access_key_id"].as_str().unwrap().into(), secret: v["secret_access_key"].as_str().unwrap().into() }
}

/// One EC2 request signed for `region` at `time`; the status and XML.
pub async fn signed(t: &T, k: &Key, region: &str, time: SystemTime, params: &[(&str, &str)]) -> (StatusCode, String) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Version", "2016-11-15");
    for (name, value) in params {
        form.append_pair(name, value);
    }
    let body = form.finish();
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let identity = aws_credential_types::Credentials::new(&k.id, &k.secret, None, None, "test").into();
    let signing: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("host", "127.0.0.1:8780"), ("content-type", content_type)];
    let signable = SignableRequest::new(
        "POST",
        "http://127.0.0.1:8780/",
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &signing).unwrap().into_parts();
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "127.0.0.1:8780")
        .header("content-type", content_type)
        .body(body)
        .unwrap();
    instructions.apply_to_request_http1x(&mut req);
    send(t, req.map(Body::from)).await
}

/// One EC2 request sent the other way the Query API allows: `GET
/// /?Action=...`, the parameters in the signed query string.
pub async fn signed_get(t: &T, k: &Key, params: &[(&str, &str)]) -> (StatusCode, String) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Version", "2016-11-15");
    for (name, value) in params {
        form.append_pair(name, value);
    }
    let query = form.finish();
    let identity = aws_credential_types::Credentials::new(&k.id, &k.secret, None, None, "test").into();
    let signing: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region("nubo-1")
        .name("ec2")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = format!("http://127.0.0.1:8780/?{query}");
    let signable =
        SignableRequest::new("GET", &url, [("host", "127.0.0.1:8780")].into_iter(), SignableBody::Bytes(b"")).unwrap();
    let (instructions, _) = sign(signable, &signing).unwrap().into_parts();
    let mut req = http::Request::builder()
        .method("GET")
        .uri(format!("/?{query}"))
        .header("host", "127.0.0.1:8780")
        .body("")
        .unwrap();
    instructions.apply_to_request_http1x(&mut req);
    send(t, req.map(Body::from)).await
}

pub async fn send(t: &T, req: http::Request<Body>) -> (StatusCode, String) {
    let resp = nubo_controlplane::app(t.ctx.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Each call is signed at a second of its own (now plus one second per
/// call, inside the 5-minute window; both only grow, so two calls never
/// share a second), as a client's calls a second apart are: two identical
/// calls are then two requests, not one signed request sent twice, which
/// the server refuses as a replay (ec2/replay.rs).
pub async fn ec2(t: &T, k: &Key, params: &[(&str, &str)]) -> (StatusCode, String) {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 240;
    signed(t, k, "nubo-1", SystemTime::now() + Duration::from_secs(n), params).await
}

pub async fn ok(t: &T, k: &Key, params: &[(&str, &str)]) -> String {
    let (s, body) = ec2(t, k, params).await;
    assert_eq!(s, StatusCode::OK, "{params:?}: {body}");
    body
}

/// Expects an EC2 error document with `code` and `status`.
pub fn is_error(got: (StatusCode, String), status: StatusCode, code: &str) -> String {
    let (s, body) = got;
    assert_eq!(s, status, "{body}");
    assert!(body.contains(&format!("<Response><Errors><Error><Code>{code}</Code><Message>")), "{body}");
    assert!(body.contains("</Message></Error></Errors><RequestID>"), "{body}");
    body
}

/// The texts of every `<tag>` in `xml`, in order.
pub fn all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].to_string());
        rest = &after[j..];
    }
    out
}

pub fn one(xml: &str, tag: &str) -> String {
    all(xml, tag).into_iter().next().unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}

pub async fn admin_key(t: &T) -> Key {
    let admin = t.admin.clone();
    key(t, &admin).await
}
