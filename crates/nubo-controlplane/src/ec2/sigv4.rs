//! AWS Signature Version 4, the server's side: parse the
//! `Authorization: AWS4-HMAC-SHA256 Credential=.../DATE/REGION/SERVICE/aws4_request,
//! SignedHeaders=..., Signature=...` header, rebuild the canonical request
//! from what arrived (method, path, query, the signed headers, the body's
//! SHA-256), derive the signing key from the secret and the credential
//! scope, and compare signatures in constant time (`Mac::verify_slice`).
//! The request time (`X-Amz-Date`) must be within 5 minutes of ours and
//! of the scope's date, as AWS requires.
//!
//! The body is always hashed here: an `x-amz-content-sha256` header is
//! only compared with that hash, never trusted for it, since the header
//! need not be signed and a copy of one signed request would otherwise
//! carry any other body. Replays of a whole signed request are refused by
//! the caller (`ec2::replay`), once the signature is known to be good.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the request's time may be from ours, in seconds.
pub const MAX_SKEW_SECS: i64 = 5 * 60;

/// The parts of the Authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub access_key: String,
    /// `YYYYMMDD`
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case, as listed (sorted by the signer).
    pub signed_headers: Vec<String>,
    pub signature: Vec<u8>,
}

/// Why a signature was not accepted. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("the request is not signed: send an 'Authorization: AWS4-HMAC-SHA256 ...' header (any AWS SDK or the aws CLI does this with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")]
    Missing,
    #[error("the Authorization header is not a valid SigV4 header: {0}")]
    Malformed(String),
    #[error("{0}")]
    Scope(String),
    #[error(
        "the request time {request} is more than 5 minutes from the server's time {server}: check this machine's clock"
    )]
    Skewed { request: String, server: String },
    #[error("AWS was not able to validate the provided access credentials: the signature does not match (check AWS_SECRET_ACCESS_KEY)")]
    Mismatch,
    #[error("AWS was not able to validate the provided access credentials: the body's SHA-256 is not the x-amz-content-sha256 header's value (the body was changed after signing); sign the body you send, or leave the header out")]
    BodyMismatch,
    #[error("this signed request was already received: each signature is accepted once; sign each request anew (the aws CLI and the AWS SDKs do, retries included)")]
    Replayed,
}

pub fn parse_authorization(value: &str) -> Result<AuthHeader, SigError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| SigError::Malformed(format!("only {ALGORITHM} signatures are accepted")))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let missing = |what: &str| SigError::Malformed(format!("it has no {what}"));
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, terminator] = scope.as_slice() else {
        return Err(SigError::Malformed("Credential must be KEY/YYYYMMDD/REGION/SERVICE/aws4_request".into()));
    };
    if *terminator != "aws4_request" || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigError::Malformed("Credential must be KEY/YYYYMMDD/REGION/SERVICE/aws4_request".into()));
    }
    let signature = hex::decode(signature)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| SigError::Malformed("Signature must be 64 hex digits".into()))?;
    let signed_headers: Vec<String> = signed.split(';').map(|h| h.trim().to_ascii_lowercase()).collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::Malformed("SignedHeaders must include host".into()));
    }
    Ok(AuthHeader {
        access_key: access_key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature,
    })
}

/// What the signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as it arrived (already URI-encoded).
    pub path: &'a str,
    /// The raw query string (without `?`).
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters stay, all
/// else is `%XX` in upper case.
fn uri_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            let (mut ek, mut ev) = (String::new(), String::new());
            uri_encode(&k, &mut ek);
            uri_encode(&v, &mut ev);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The canonical request of SigV4 for `req`, covering `signed_headers`.
pub fn canonical_request(req: &SignedRequest<'_>, signed_headers: &[String]) -> Result<String, SigError> {
    let mut headers = String::new();
    for name in signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                // Trimmed, with runs of spaces made one.
                String::from_utf8_lossy(v.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(SigError::Malformed(format!("the signed header '{name}' is not in the request")));
        }
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    // The hash of what arrived, whatever a header claims (see the module's doc).
    let payload = hex::encode(Sha256::digest(req.body));
    for claimed in req.headers.get_all("x-amz-content-sha256") {
        // UNSIGNED-PAYLOAD and streaming forms are S3's; EC2 bodies are signed.
        if !claimed.as_bytes().eq_ignore_ascii_case(payload.as_bytes()) {
            return Err(SigError::BodyMismatch);
        }
    }
    let path = if req.path.is_empty() { "/" } else { req.path };
    Ok(format!(
        "{}\n{path}\n{}\n{headers}\n{}\n{payload}",
        req.method,
        canonical_query(req.query),
        signed_headers.join(";")
    ))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

pub fn string_to_sign(amz_date: &str, auth: &AuthHeader, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

/// `YYYYMMDDTHHMMSSZ` as seconds since the epoch.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(num(0..4)?).ok()?, month, u8::try_from(num(6..8)?).ok()?).ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp())
}

fn format_amz_date(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Checks the scope (`region`, `service`), the time (`now` in seconds since
/// the epoch) and, last, the signature made with `secret`. Returns the
/// request's time (seconds since the epoch).
pub fn verify(
    auth: &AuthHeader,
    req: &SignedRequest<'_>,
    secret: &str,
    region: &str,
    service: &str,
    now: i64,
) -> Result<i64, SigError> {
    if auth.service != service {
        return Err(SigError::Scope(format!(
            "the credential is scoped to service '{}': sign for service '{service}'",
            auth.service.chars().take(40).collect::<String>()
        )));
    }
    if auth.region != region {
        return Err(SigError::Scope(format!(
            "the credential is scoped to region '{}', but this endpoint is region '{region}': set AWS_DEFAULT_REGION={region} (or --region {region})",
            auth.region.chars().take(40).collect::<String>()
        )));
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigError::Malformed("the request has no X-Amz-Date header".into()))?;
    let at =
        parse_amz_date(amz_date).ok_or_else(|| SigError::Malformed("X-Amz-Date must be YYYYMMDDTHHMMSSZ".into()))?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigError::Scope("the credential scope's date is not the date of X-Amz-Date".into()));
    }
    if (now - at).abs() > MAX_SKEW_SECS {
        return Err(SigError::Skewed { request: amz_date.to_string(), server: format_amz_date(now) });
    }
    let canonical = canonical_request(req, &auth.signed_headers)?;
    let to_sign = string_to_sign(amz_date, auth, &canonical);
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&key).map_err(|_| SigError::Mismatch)?;
    mac.update(to_sign.as_bytes());
    // Constant time: no early exit on the first differing byte.
    mac.verify_slice(&auth.signature).map_err(|_| SigError::Mismatch)?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of AWS's SigV4 documentation (IAM ListUsers).
    #[test]
    fn matches_the_documented_example() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/x-www-form-urlencoded; charset=utf-8".parse().unwrap());
        headers.insert("host", "iam.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let req = SignedRequest {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        )
        .unwrap();
        let canonical = canonical_request(&req, &auth.signed_headers).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let now = parse_amz_date("20150830T123600Z").unwrap();
        verify(&auth, &req, secret, "us-east-1", "iam", now).unwrap();
        assert_eq!(verify(&auth, &req, "wrong", "us-east-1", "iam", now), Err(SigError::Mismatch));
        assert!(matches!(verify(&auth, &req, secret, "us-east-1", "iam", now + 301), Err(SigError::Skewed { .. })));
        assert!(matches!(verify(&auth, &req, secret, "nubo-1", "iam", now), Err(SigError::Scope(_))));
    }

    /// A POST signed with the documented example's key, its body hashed.
    fn signed_post(body: &[u8], secret: &str) -> (HeaderMap, AuthHeader) {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/x-www-form-urlencoded; charset=utf-8".parse().unwrap());
        headers.insert("host", "127.0.0.1:8780".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let signed = vec!["content-type".to_string(), "host".to_string(), "x-amz-date".to_string()];
        let req = SignedRequest { method: "POST", path: "/", query: "", headers: &headers, body };
        let mut auth = AuthHeader {
            access_key: "AKIDEXAMPLE".into(),
            date: "20150830".into(),
            region: "nubo-1".into(),
            service: "ec2".into(),
            signed_headers: signed,
            signature: vec![],
        };
        let canonical = canonical_request(&req, &auth.signed_headers).unwrap();
        let to_sign = string_to_sign("20150830T123600Z", &auth, &canonical);
        auth.signature = hmac(&signing_key(secret, "20150830", "nubo-1", "ec2"), to_sign.as_bytes());
        (headers, auth)
    }

    #[test]
    fn the_signature_covers_the_body_whatever_x_amz_content_sha256_says() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let now = parse_amz_date("20150830T123600Z").unwrap();
        let good = b"Action=DescribeInstances&Version=2016-11-15";
        let evil = b"Action=TerminateInstances&InstanceId.1=i-0123456789abcdef0&Version=2016-11-15";
        let (mut headers, auth) = signed_post(good, secret);
        let req = |headers: &HeaderMap, body: &'static [u8]| {
            verify(
                &auth,
                &SignedRequest { method: "POST", path: "/", query: "", headers, body },
                secret,
                "nubo-1",
                "ec2",
                now,
            )
        };
        assert_eq!(req(&headers, good), Ok(now));
        assert_eq!(req(&headers, evil), Err(SigError::Mismatch));
        // The attack: an unsigned header naming the signed body's hash.
        headers.insert("x-amz-content-sha256", hex::encode(Sha256::digest(good)).parse().unwrap());
        assert_eq!(req(&headers, evil), Err(SigError::BodyMismatch));
        // The honest use of the header (its hash, any case) still verifies.
        assert_eq!(req(&headers, good), Ok(now));
        headers.insert("x-amz-content-sha256", hex::encode_upper(Sha256::digest(good)).parse().unwrap());
        assert_eq!(req(&headers, good), Ok(now));
        headers.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert_eq!(req(&headers, good), Err(SigError::BodyMismatch));
        // Two headers: each must match.
        headers.insert("x-amz-content-sha256", hex::encode(Sha256::digest(good)).parse().unwrap());
        headers.append("x-amz-content-sha256", hex::encode(Sha256::digest(evil)).parse().unwrap());
        assert_eq!(req(&headers, good), Err(SigError::BodyMismatch));
    }

    #[test]
    fn refuses_malformed_headers() {
        assert!(parse_authorization("Bearer x").is_err());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00").is_err());
        let no_host = "AWS4-HMAC-SHA256 Credential=AK/20150830/r/ec2/aws4_request, SignedHeaders=x-amz-date, Signature="
            .to_string() + &"0".repeat(64);
        assert!(parse_authorization(&no_host).is_err());
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(format_amz_date(1_440_938_160), "20150830T123600Z");
    }
}
