//! Backend health: the state machine that active checks and passive
//! observations drive, and the checks themselves (an HTTP GET of a path
//! expecting a status, or a TCP connect).
//!
//! A backend starts `unknown` when active checks are on (it is checked at
//! once) and `up` when they are off. `fall` consecutive failing checks take
//! it `down`, `rise` consecutive passing ones bring it back. Independently,
//! `passive_failures` consecutive failed requests mark it out of rotation
//! for `passive_down_ms` (then it gets traffic again, or the active checks
//! keep it down).

use crate::config::HealthConfig;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the active checks last concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not checked yet.
    Unknown,
    Up,
    Down,
}

/// Whether a backend may get the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    /// Up, and not passively marked down.
    Yes,
    /// Not checked yet: used only when no backend is up.
    Unchecked,
    No,
}

#[derive(Debug, Clone)]
pub struct HealthState {
    status: Status,
    passes: u32,
    fails: u32,
    passive_fails: u32,
    passive_until: Option<Instant>,
    /// Why the last check or request failed.
    pub last_error: Option<String>,
}

impl HealthState {
    pub fn new(active_checks: bool) -> Self {
        Self {
            status: if active_checks { Status::Unknown } else { Status::Up },
            passes: 0,
            fails: 0,
            passive_fails: 0,
            passive_until: None,
            last_error: None,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The result of one active check; returns the new status when it changed.
    pub fn record_check(&mut self, result: Result<(), String>, rise: u32, fall: u32) -> Option<Status> {
        let before = self.status;
        match result {
            Ok(()) => {
                self.fails = 0;
                self.passes = self.passes.saturating_add(1);
                // The first check decides at once: an unknown backend that
                // answers is up now, not `rise` intervals later.
                if self.status == Status::Unknown || self.passes >= rise {
                    self.status = Status::Up;
                }
            }
            Err(e) => {
                self.passes = 0;
                self.fails = self.fails.saturating_add(1);
                if self.status == Status::Unknown || self.fails >= fall {
                    self.status = Status::Down;
                }
                self.last_error = Some(e);
            }
        }
        (self.status != before).then_some(self.status)
    }

    /// A request to the backend failed before any response (refused,
    /// reset, closed). Returns true when this marks it out of rotation.
    pub fn record_failure(&mut self, now: Instant, cfg: &HealthConfig, error: String) -> bool {
        self.last_error = Some(error);
        self.passive_fails = self.passive_fails.saturating_add(1);
        if self.passive_fails >= cfg.passive_failures {
            self.passive_fails = 0;
            let was_out = self.passive_until.is_some_and(|t| now < t);
            self.passive_until = Some(now + Duration::from_millis(cfg.passive_down_ms));
            return !was_out;
        }
        false
    }

    /// A request got a response: failures are no longer consecutive.
    pub fn record_success(&mut self) {
        self.passive_fails = 0;
    }

    pub fn usable(&self, now: Instant) -> Usable {
        if self.passive_until.is_some_and(|t| now < t) {
            return Usable::No;
        }
        match self.status {
            Status::Up => Usable::Yes,
            Status::Unknown => Usable::Unchecked,
            Status::Down => Usable::No,
        }
    }

    /// `up`, `down`, `unknown`, or `failing` (passively out of rotation).
    pub fn label(&self, now: Instant) -> &'static str {
        if self.passive_until.is_some_and(|t| now < t) && self.status != Status::Down {
            return "failing";
        }
        match self.status {
            Status::Up => "up",
            Status::Down => "down",
            Status::Unknown => "unknown",
        }
    }
}

/// The client active HTTP checks use: a fresh connection per check, so a
/// check sees a listener that is gone instead of a pooled connection.
pub(crate) type CheckClient = Client<crate::dial::Dialer, Empty<Bytes>>;

pub(crate) fn check_client(dialer: &crate::dial::Dialer, connect_timeout: Duration) -> CheckClient {
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(dialer.with_timeout(connect_timeout))
}

/// GET `path` on `addr`; passes on `expect` (or any 2xx/3xx when `None`).
pub(crate) async fn check_http(
    client: &CheckClient,
    addr: SocketAddr,
    path: &str,
    expect: Option<u16>,
    timeout: Duration,
) -> Result<(), String> {
    let uri: hyper::Uri = format!("http://{addr}{path}").parse().map_err(|e| format!("bad check URI: {e}"))?;
    let req = hyper::Request::get(uri)
        .header(hyper::header::USER_AGENT, "nubo-lb-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(format!("GET {path} got no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("GET {path} failed: {}", error_chain(&e))),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let ok = match expect {
                Some(want) => status == want,
                None => (200..400).contains(&status),
            };
            if ok {
                Ok(())
            } else {
                let want = expect.map(|s| s.to_string()).unwrap_or_else(|| "2xx or 3xx".into());
                Err(format!("GET {path} answered {status}, expected {want}"))
            }
        }
    }
}

/// Connects to `addr`, then waits briefly: a forward whose other end has
/// nothing listening (QEMU's user networking accepts on the guest's
/// behalf, then closes) shows as a connection closed at once, which fails.
pub(crate) async fn check_tcp(dialer: &crate::dial::Dialer, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let mut s = match tokio::time::timeout(timeout, dialer.connect(addr)).await {
        Err(_) => return Err(format!("connect did not complete within {timeout:?}")),
        Ok(Err(e)) => return Err(format!("connect failed: {e}")),
        Ok(Ok(s)) => s,
    };
    let mut buf = [0u8; 1];
    match tokio::time::timeout(timeout.min(Duration::from_millis(300)), s.read(&mut buf)).await {
        Ok(Ok(0)) => Err("the connection was closed at once".into()),
        Ok(Err(e)) => Err(format!("the connection failed at once: {e}")),
        // Still open (or the server speaks first): something listens.
        _ => Ok(()),
    }
}

/// An error with its causes, one line (hyper's top-level message alone
/// is often just "client error (Connect)").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig { rise: 2, fall: 2, passive_failures: 2, passive_down_ms: 1_000, ..Default::default() }
    }

    #[test]
    fn checks_move_a_backend_down_and_back_up() {
        let c = cfg();
        let now = Instant::now();
        let mut h = HealthState::new(true);
        assert_eq!(h.usable(now), Usable::Unchecked);
        assert_eq!(h.record_check(Ok(()), c.rise, c.fall), Some(Status::Up), "the first check decides");
        assert_eq!(h.record_check(Err("refused".into()), c.rise, c.fall), None, "one failure is not `fall`");
        assert_eq!(h.usable(now), Usable::Yes);
        assert_eq!(h.record_check(Err("refused".into()), c.rise, c.fall), Some(Status::Down));
        assert_eq!((h.usable(now), h.label(now)), (Usable::No, "down"));
        assert_eq!(h.last_error.as_deref(), Some("refused"));
        assert_eq!(h.record_check(Ok(()), c.rise, c.fall), None, "one pass is not `rise`");
        assert_eq!(h.record_check(Ok(()), c.rise, c.fall), Some(Status::Up));
        assert_eq!(h.usable(now), Usable::Yes);
        // An unknown backend that fails its first check is down at once.
        let mut h = HealthState::new(true);
        assert_eq!(h.record_check(Err("x".into()), c.rise, c.fall), Some(Status::Down));
        // Without active checks a backend starts up.
        assert_eq!(HealthState::new(false).usable(now), Usable::Yes);
    }

    #[test]
    fn passive_failures_take_a_backend_out_for_a_while() {
        let c = cfg();
        let now = Instant::now();
        let mut h = HealthState::new(false);
        assert!(!h.record_failure(now, &c, "reset".into()), "one failure of two");
        h.record_success();
        assert!(!h.record_failure(now, &c, "reset".into()), "a success in between resets the streak");
        assert!(h.record_failure(now, &c, "reset".into()), "two in a row mark it");
        assert_eq!((h.usable(now), h.label(now)), (Usable::No, "failing"));
        let later = now + Duration::from_millis(1_001);
        assert_eq!((h.usable(later), h.label(later)), (Usable::Yes, "up"), "back after passive_down_ms");
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_real_sockets() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /ok ") { "200 OK" } else { "503 Unavailable" };
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        let dialer = crate::dial::Dialer::default();
        let client = check_client(&dialer, Duration::from_secs(1));
        let t = Duration::from_secs(2);
        assert_eq!(check_http(&client, addr, "/ok", None, t).await, Ok(()));
        assert!(check_http(&client, addr, "/bad", None, t).await.unwrap_err().contains("answered 503"));
        assert!(check_http(&client, addr, "/ok", Some(204), t).await.unwrap_err().contains("expected 204"));
        assert_eq!(check_tcp(&dialer, addr, t).await, Ok(()));
        // Nothing listens: refused.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(check_tcp(&dialer, gone, t).await.unwrap_err().contains("connect failed"));
        assert!(check_http(&client, gone, "/", None, t).await.unwrap_err().contains("failed"));
        // Accepted, then closed at once (what a forward to a dead guest port does).
        let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let caddr = closing.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = closing.accept().await {
                drop(s);
            }
        });
        assert!(check_tcp(&dialer, caddr, t).await.unwrap_err().contains("closed at once"));
    }
}
