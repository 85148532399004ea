//! The SigV4 verifier on arbitrary requests: the first line is the
//! Authorization header, the next ones `name: value` headers until an
//! empty line, then `METHOD PATH?QUERY`, then the body. No panic; the
//! canonical request is deterministic and ends with the hash of the body
//! that arrived; an `x-amz-content-sha256` header that is not that hash is
//! always refused (the body swap of issue 19); and nothing verifies
//! without the secret's signature.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use nubo_controlplane::ec2::sigv4::{self, SigError, SignedRequest};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let authorization = lines.next().unwrap_or("");
    let mut headers = HeaderMap::new();
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else { continue };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let target = lines.next().unwrap_or("POST /");
    let (method, rest) = target.split_once(' ').unwrap_or(("POST", target));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let body = lines.collect::<Vec<_>>().join("\n");
    let req = SignedRequest { method, path, query, headers: &headers, body: body.as_bytes() };

    let parsed = sigv4::parse_authorization(authorization);
    let signed: Vec<String> = match &parsed {
        Ok(h) => h.signed_headers.clone(),
        Err(_) => headers.keys().map(|k| k.as_str().to_string()).collect(),
    };
    let body_hash = hex::encode(Sha256::digest(body.as_bytes()));
    let lies = headers
        .get_all("x-amz-content-sha256")
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(body_hash.as_bytes()));
    match sigv4::canonical_request(&req, &signed) {
        Ok(c) => {
            assert!(!lies, "a body that is not x-amz-content-sha256's was canonicalised");
            assert!(c.ends_with(&body_hash), "the canonical request does not end with the body's hash");
            assert_eq!(sigv4::canonical_request(&req, &signed).ok().as_deref(), Some(c.as_str()));
        }
        Err(SigError::BodyMismatch) => assert!(lies),
        Err(_) => {}
    }
    if let Ok(auth) = parsed {
        let now = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .and_then(sigv4::parse_amz_date)
            .unwrap_or(1_440_938_160);
        let r = sigv4::verify(&auth, &req, "fuzz-secret", &auth.region.clone(), &auth.service.clone(), now);
        if r.is_ok() {
            // Only the real signature over this canonical request verifies.
            let canonical = sigv4::canonical_request(&req, &auth.signed_headers).expect("verified, so canonical");
            let amz = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).unwrap_or("");
            let to_sign = sigv4::string_to_sign(amz, &auth, &canonical);
            let key = sigv4::signing_key("fuzz-secret", &auth.date, &auth.region, &auth.service);
            use hmac::Mac;
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).expect("any key");
            mac.update(to_sign.as_bytes());
            assert_eq!(mac.finalize().into_bytes().as_slice(), auth.signature.as_slice());
        }
    }
});
