//! Where the control plane may fetch an image from (`nubo image import
//! --url`), and the connection it fetches with.
//!
//! A URL import makes the control plane send a request from inside the
//! cloud's network to a place a tenant chose, so it follows the outbound
//! rules webhooks follow (`webhooks`), tightened: only http(s), only hosts
//! the operator listed (`nubo server --image-url-allow HOST`: an exact
//! host, `.example.com` for any of its subdomains, or `*` for any host),
//! and never a loopback, private, link-local (the metadata address among
//! them) or other special address unless the operator listed that exact
//! host. The name is resolved once, every address it has is checked, and
//! the connection is pinned to the checked addresses, so a name whose
//! answer changes between the check and the connection (DNS rebinding)
//! reaches nothing else. Redirects are refused (the message names the
//! target, to import from it directly, where it is checked in turn), and
//! proxies from the environment are not used.

use crate::webhooks::permitted;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Resolving the host gets this long.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// The server gets this long to accept the connection...
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// ...and this long between two pieces of the file.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The setting that lists the hosts, for messages.
pub const SETTING: &str = "nubo server --image-url-allow HOST";

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error(
        "the URL is not an http:// or https:// URL of at most {MAX_URL_LEN} characters: give the image's full URL"
    )]
    NotHttp,
    #[error("the URL carries a user name or password, which would be stored and shown with the image: give a URL without them")]
    Credentials,
    #[error("this cloud imports images from no URL: an operator allows hosts with `{SETTING}`; or upload the file (`nubo image import FILE`)")]
    NoneAllowed,
    #[error("host {host} is not one this cloud imports images from: ask an operator to allow it (`{SETTING}`), or upload the file (`nubo image import FILE`)")]
    HostNotAllowed { host: String },
    #[error("host {host} is (or resolves to) {addr}, a {kind} address: images are not fetched from the cloud's own or private networks unless an operator allows that exact host (`nubo server --image-url-allow {host}`)")]
    Internal { host: String, addr: String, kind: &'static str },
    #[error("cannot resolve host {host}: {detail}; check the URL's host name")]
    Unresolved { host: String, detail: String },
}

/// A URL as checked against the operator's list (not yet resolved).
#[derive(Debug, Clone)]
pub struct CheckedUrl {
    pub url: reqwest::Url,
    /// The host as compared (lower case, no brackets, no trailing dot).
    pub host: String,
    /// The operator listed this exact host: its addresses may be special.
    pub exact: bool,
}

fn normalize(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// Checks a URL against the operator's list of hosts `allow`, and its
/// literal address (or `localhost`) against the special ranges. Names are
/// resolved and checked when the fetch starts (`resolve`).
pub fn check(url: &str, allow: &[String]) -> Result<CheckedUrl, UrlRefused> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlRefused::NotHttp);
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| UrlRefused::NotHttp)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlRefused::NotHttp);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    let host = normalize(parsed.host_str().ok_or(UrlRefused::NotHttp)?);
    if allow.is_empty() {
        return Err(UrlRefused::NoneAllowed);
    }
    let exact = allow.iter().any(|a| normalize(a) == host);
    let matched = exact
        || allow.iter().any(|a| {
            let a = normalize(a);
            a == "*" || (a.starts_with('.') && host.ends_with(&a))
        });
    if !matched {
        return Err(UrlRefused::HostNotAllowed { host });
    }
    if !exact {
        let literal = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if let Err(kind) = permitted(ip, &[]) {
                return Err(UrlRefused::Internal { host: host.clone(), addr: ip.to_string(), kind });
            }
        }
        let h = host.as_str();
        if h == "localhost" || h.ends_with(".localhost") {
            return Err(UrlRefused::Internal { host: host.clone(), addr: "localhost".into(), kind: "loopback" });
        }
    }
    Ok(CheckedUrl { url: parsed, host, exact })
}

/// Resolves a checked URL's host and checks every address it has (a name
/// with one internal address among public ones is refused whole): the
/// addresses to connect to, and nothing else. A literal address is its
/// own answer.
pub async fn resolve(c: &CheckedUrl) -> Result<Vec<SocketAddr>, UrlRefused> {
    let port = c.url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = match c.url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        _ => {
            let unresolved = |detail: String| UrlRefused::Unresolved { host: c.host.clone(), detail };
            tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((c.host.as_str(), port)))
                .await
                .map_err(|_| unresolved(format!("no answer within {} s", DNS_TIMEOUT.as_secs())))?
                .map_err(|e| unresolved(e.to_string()))?
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(UrlRefused::Unresolved { host: c.host.clone(), detail: "it has no address".into() });
    }
    if !c.exact {
        for a in &addrs {
            if let Err(kind) = permitted(a.ip(), &[]) {
                return Err(UrlRefused::Internal { host: c.host.clone(), addr: a.ip().to_string(), kind });
            }
        }
    }
    Ok(addrs)
}

/// The HTTP client for one fetch: connects to `addrs` alone (the ones
/// `resolve` checked) whatever a resolver would say later, follows no
/// redirect, uses no proxy.
pub fn client(c: &CheckedUrl, addrs: &[SocketAddr]) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT);
    if matches!(c.url.host(), Some(url::Host::Domain(_))) {
        b = b.resolve_to_addrs(&c.host, addrs);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_listed_hosts_and_no_internal_addresses_unless_exactly_listed() {
        let any = allow(&["*"]);
        assert!(check("https://cloud.debian.org/x.qcow2", &any).is_ok());
        assert_eq!(check("https://cloud.debian.org/x", &[]).unwrap_err(), UrlRefused::NoneAllowed);
        assert_eq!(check("ftp://cloud.debian.org/x", &any).unwrap_err(), UrlRefused::NotHttp);
        assert_eq!(check("http://u:p@cloud.debian.org/x", &any).unwrap_err(), UrlRefused::Credentials);
        for internal in [
            "http://127.0.0.1:8080/x",
            "http://169.254.169.254/latest",
            "http://10.1.2.3/x",
            "http://[::1]/x",
            "http://localhost/x",
        ] {
            assert!(matches!(check(internal, &any), Err(UrlRefused::Internal { .. })), "{internal}");
        }
        let suffix = allow(&[".debian.org"]);
        assert!(check("https://cloud.debian.org/x", &suffix).is_ok());
        assert!(matches!(check("https://evil.example/x", &suffix), Err(UrlRefused::HostNotAllowed { .. })));
        assert!(matches!(check("https://debian.org.evil.example/x", &suffix), Err(UrlRefused::HostNotAllowed { .. })));
        let exact = allow(&["127.0.0.1", "Mirror.Internal"]);
        let c = check("http://127.0.0.1:8080/x", &exact).unwrap();
        assert!(c.exact);
        assert!(check("http://mirror.internal./x", &exact).unwrap().exact);
        assert!(matches!(check("http://127.0.0.2/x", &exact), Err(UrlRefused::HostNotAllowed { .. })));
        let msg = check("http://127.0.0.2/x", &exact).unwrap_err().to_string();
        assert!(msg.contains("--image-url-allow"), "{msg}");
    }

    #[tokio::test]
    async fn every_resolved_address_is_checked() {
        // A name that resolves to loopback (built directly: `check` refuses
        // `localhost` before resolution) is refused after it.
        let c = CheckedUrl { url: "http://localhost/x".parse().unwrap(), host: "localhost".into(), exact: false };
        match resolve(&c).await {
            Err(UrlRefused::Internal { kind, .. }) => assert_eq!(kind, "loopback"),
            other => panic!("{other:?}"),
        }
        let c = check("http://127.0.0.1:9/x", &allow(&["127.0.0.1"])).unwrap();
        assert_eq!(resolve(&c).await.unwrap(), vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
    }
}
