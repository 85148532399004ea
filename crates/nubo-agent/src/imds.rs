//! The instance metadata service (IMDS), EC2-style, one per instance.
//!
//! Each VM's user-mode network hands every TCP connection the guest opens
//! to 169.254.169.254:80 to `nubo imds-relay <socket>`, which pipes it into
//! this server's unix socket in the instance directory. Which socket a
//! connection arrives on is what identifies the instance, so a guest can
//! only ever read its own data.
//!
//! Served: `/latest/meta-data/...` (instance-id, hostname, local-ipv4,
//! public-keys, placement, ...), `/latest/user-data` (404 when there is
//! none), `/latest/dynamic/instance-identity/document`, and IMDSv2 session
//! tokens (`PUT /latest/api/token`); with tokens required, a request
//! without a valid token gets 401, as on EC2.

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nubo_api::agent::NamedKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// EC2's limit on a session token's lifetime (6 hours).
const MAX_TTL_SECS: u64 = 21_600;
/// Live tokens kept per instance; the oldest go first beyond this.
const MAX_TOKENS: usize = 1024;

/// What one instance's metadata says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub hostname: String,
    pub image: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub local_ipv4: String,
    pub mac: String,
    pub public_keys: Vec<NamedKey>,
    pub user_data: Option<String>,
    /// IMDSv2 only: refuse requests without a session token.
    pub tokens_required: bool,
}

impl InstanceMetadata {
    /// The region is the zone without its trailing letter (`nubo-1a` -> `nubo-1`).
    fn region(&self) -> &str {
        let z = self.availability_zone.as_str();
        match z.char_indices().last() {
            Some((i, c)) if c.is_ascii_lowercase() && i > 0 => &z[..i],
            _ => z,
        }
    }

    fn identity_document(&self) -> String {
        serde_json::json!({
            "instanceId": self.instance_id,
            "imageId": self.image,
            "instanceType": self.instance_type,
            "availabilityZone": self.availability_zone,
            "region": self.region(),
            "privateIp": self.local_ipv4,
            "architecture": "x86_64",
            "version": "2017-09-30",
        })
        .to_string()
    }

    /// The text at `path` under `/latest/meta-data/` (no leading slash),
    /// or `None` when there is nothing there.
    fn meta_data(&self, path: &str) -> Option<String> {
        let path = path.trim_end_matches('/');
        let mut listing = vec![
            "ami-id",
            "hostname",
            "instance-id",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "mac",
            "placement/",
        ];
        if !self.public_keys.is_empty() {
            listing.push("public-keys/");
        }
        Some(match path {
            "" => listing.join("\n"),
            "ami-id" => self.image.clone(),
            "hostname" | "local-hostname" => self.hostname.clone(),
            "instance-id" => self.instance_id.clone(),
            "instance-type" => self.instance_type.clone(),
            "local-ipv4" => self.local_ipv4.clone(),
            "mac" => self.mac.clone(),
            "placement" => "availability-zone\nregion".into(),
            "placement/availability-zone" => self.availability_zone.clone(),
            "placement/region" => self.region().to_string(),
            "public-keys" if !self.public_keys.is_empty() => self
                .public_keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{i}={}", k.name))
                .collect::<Vec<_>>()
                .join("\n"),
            other => {
                let rest = other.strip_prefix("public-keys/")?;
                let (index, field) = rest.split_once('/').unwrap_or((rest, ""));
                let key = self.public_keys.get(index.parse::<usize>().ok()?)?;
                match field {
                    "" => "openssh-key".into(),
                    "openssh-key" => key.public_key.clone(),
                    _ => return None,
                }
            }
        })
    }
}

/// One instance's metadata service: its data and its IMDSv2 tokens.
#[derive(Debug, Default)]
pub struct Imds {
    data: RwLock<InstanceMetadata>,
    tokens: Mutex<HashMap<String, Instant>>,
}

impl Imds {
    pub fn new(data: InstanceMetadata) -> Arc<Self> {
        Arc::new(Self { data: RwLock::new(data), tokens: Mutex::default() })
    }

    /// Replaces the data (e.g. after a change of desired state).
    pub fn update(&self, data: InstanceMetadata) {
        let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
        if *d != data {
            *d = data;
        }
    }

    fn data(&self) -> InstanceMetadata {
        self.data.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn issue_token(&self, ttl: Duration) -> String {
        // URL-safe base64 without padding: the token goes in a header as is.
        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        tokens.retain(|_, expires| *expires > now);
        if tokens.len() >= MAX_TOKENS {
            if let Some(oldest) = tokens.iter().min_by_key(|(_, e)| **e).map(|(t, _)| t.clone()) {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(token.clone(), now + ttl);
        token
    }

    fn token_valid(&self, token: &str) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).is_some_and(|expires| *expires > Instant::now())
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [("content-type", "text/plain")], Body::from(body.into())).into_response()
}

/// The router of one instance's service (callable without a socket in tests).
pub fn router(imds: Arc<Imds>) -> Router {
    Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
        let imds = imds.clone();
        async move { handle(&imds, &method, uri.path(), &headers) }
    })
}

fn handle(imds: &Imds, method: &Method, path: &str, headers: &HeaderMap) -> Response {
    // A request that came through a proxy is refused, as EC2 does, so a
    // misconfigured proxy in the guest cannot hand tokens to others.
    if headers.contains_key("x-forwarded-for") {
        return text(StatusCode::FORBIDDEN, "Forbidden");
    }
    if path == "/latest/api/token" {
        if method != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        }
        let ttl = headers.get(TTL_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        return match ttl {
            Some(ttl) if (1..=MAX_TTL_SECS).contains(&ttl) => {
                let token = imds.issue_token(Duration::from_secs(ttl));
                (StatusCode::OK, [("content-type", "text/plain"), (TTL_HEADER, &ttl.to_string())], token)
                    .into_response()
            }
            _ => text(StatusCode::BAD_REQUEST, format!("{TTL_HEADER} must be between 1 and {MAX_TTL_SECS}")),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    let data = imds.data();
    match headers.get(TOKEN_HEADER).map(|v| v.to_str().unwrap_or("")) {
        Some(token) if !imds.token_valid(token) => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Some(_) => {}
        None if data.tokens_required => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        None => {}
    }
    let not_found = || text(StatusCode::NOT_FOUND, "Not Found");
    if path == "/" {
        return text(StatusCode::OK, "latest");
    }
    // Any API version answers like `latest` (cloud-init asks for dated ones).
    let Some(rest) = path.strip_prefix('/').and_then(|p| p.split_once('/').map(|(_, r)| r).or(Some(""))) else {
        return not_found();
    };
    let version = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let known_version = version == "latest" || (version.len() == 10 && version.as_bytes()[4] == b'-');
    if !known_version {
        return not_found();
    }
    match rest {
        "" => {
            let mut list = vec!["dynamic", "meta-data"];
            if data.user_data.is_some() {
                list.push("user-data");
            }
            text(StatusCode::OK, list.join("\n"))
        }
        "user-data" | "user-data/" => match &data.user_data {
            Some(ud) => text(StatusCode::OK, ud.clone()),
            None => not_found(),
        },
        "dynamic" | "dynamic/" => text(StatusCode::OK, "instance-identity/"),
        "dynamic/instance-identity" | "dynamic/instance-identity/" => text(StatusCode::OK, "document"),
        "dynamic/instance-identity/document" => {
            (StatusCode::OK, [("content-type", "application/json")], data.identity_document()).into_response()
        }
        "meta-data" => text(StatusCode::OK, data.meta_data("").unwrap_or_default()),
        other => match other.strip_prefix("meta-data/").and_then(|p| data.meta_data(p)) {
            Some(body) => text(StatusCode::OK, body),
            None => not_found(),
        },
    }
}

/// Serves `imds` on a unix socket at `path` (replacing a stale one) until
/// the task is aborted.
pub fn serve(path: &Path, imds: Arc<Imds>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    let label = path.display().to_string();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(imds)).await {
            tracing::warn!(socket = %label, error = %e, "metadata service stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use tower::ServiceExt;

    fn data() -> InstanceMetadata {
        InstanceMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            hostname: "web-1".into(),
            image: "tiny".into(),
            instance_type: "nubo.c1m256".into(),
            availability_zone: "nubo-1a".into(),
            local_ipv4: "169.254.0.15".into(),
            mac: "52:54:00:12:34:56".into(),
            public_keys: vec![NamedKey { name: "me".into(), public_key: "ssh-ed25519 AAAA me@x".into() }],
            user_data: Some("#!/bin/sh\necho hi\n".into()),
            tokens_required: false,
        }
    }

    async fn call(imds: &Arc<Imds>, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = router(imds.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn imdsv1_paths() {
        let imds = Imds::new(data());
        assert_eq!(call(&imds, "GET", "/latest/meta-data/instance-id", &[]).await, (200, "i-0123456789abcdef0".into()));
        let (s, listing) = call(&imds, "GET", "/latest/meta-data/", &[]).await;
        assert_eq!(s, 200);
        assert!(listing.lines().any(|l| l == "public-keys/") && listing.lines().any(|l| l == "local-ipv4"));
        assert_eq!(call(&imds, "GET", "/latest/meta-data/public-keys/", &[]).await.1, "0=me");
        assert_eq!(call(&imds, "GET", "/latest/meta-data/public-keys/0/", &[]).await.1, "openssh-key");
        assert_eq!(
            call(&imds, "GET", "/latest/meta-data/public-keys/0/openssh-key", &[]).await.1,
            "ssh-ed25519 AAAA me@x"
        );
        assert_eq!(call(&imds, "GET", "/latest/meta-data/placement/availability-zone", &[]).await.1, "nubo-1a");
        assert_eq!(call(&imds, "GET", "/latest/meta-data/placement/region", &[]).await.1, "nubo-1");
        assert_eq!(call(&imds, "GET", "/latest/user-data", &[]).await, (200, "#!/bin/sh\necho hi\n".into()));
        assert_eq!(call(&imds, "GET", "/2009-04-04/meta-data/hostname", &[]).await.1, "web-1");
        assert_eq!(call(&imds, "GET", "/latest/meta-data/public-keys/1/openssh-key", &[]).await.0, 404);
        assert_eq!(call(&imds, "GET", "/latest/meta-data/nope", &[]).await.0, 404);
        assert_eq!(call(&imds, "GET", "/secret/meta-data/", &[]).await.0, 404);
        let doc = call(&imds, "GET", "/latest/dynamic/instance-identity/document", &[]).await.1;
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["instanceId"], "i-0123456789abcdef0");

        imds.update(InstanceMetadata { user_data: None, ..data() });
        assert_eq!(call(&imds, "GET", "/latest/user-data", &[]).await.0, 404);
    }

    #[tokio::test]
    async fn imdsv2_tokens() {
        let imds = Imds::new(InstanceMetadata { tokens_required: true, ..data() });
        assert_eq!(call(&imds, "GET", "/latest/meta-data/instance-id", &[]).await.0, 401);
        assert_eq!(call(&imds, "PUT", "/latest/api/token", &[]).await.0, 400);
        assert_eq!(call(&imds, "PUT", "/latest/api/token", &[(TTL_HEADER, "0")]).await.0, 400);
        assert_eq!(call(&imds, "PUT", "/latest/api/token", &[(TTL_HEADER, "21601")]).await.0, 400);
        assert_eq!(call(&imds, "GET", "/latest/api/token", &[(TTL_HEADER, "60")]).await.0, 405);
        assert_eq!(
            call(&imds, "PUT", "/latest/api/token", &[(TTL_HEADER, "60"), ("x-forwarded-for", "1.2.3.4")]).await.0,
            403
        );
        let (s, token) = call(&imds, "PUT", "/latest/api/token", &[(TTL_HEADER, "60")]).await;
        assert_eq!(s, 200);
        assert!(token.len() >= 40, "{token}");
        assert_eq!(
            call(&imds, "GET", "/latest/meta-data/instance-id", &[(TOKEN_HEADER, &token)]).await,
            (200, "i-0123456789abcdef0".into())
        );
        assert_eq!(call(&imds, "GET", "/latest/meta-data/instance-id", &[(TOKEN_HEADER, "forged")]).await.0, 401);
        // An expired token no longer works.
        let short = imds.issue_token(Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(call(&imds, "GET", "/latest/meta-data/instance-id", &[(TOKEN_HEADER, &short)]).await.0, 401);
        // With tokens optional, both kinds of request work, but a bad token is still refused.
        imds.update(data());
        assert_eq!(call(&imds, "GET", "/latest/meta-data/instance-id", &[]).await.0, 200);
        assert_eq!(call(&imds, "GET", "/latest/meta-data/instance-id", &[(TOKEN_HEADER, "forged")]).await.0, 401);
    }
}
