//! Webhooks: where the cloud may POST a tenant's notification, and the
//! task that delivers them.
//!
//! A webhook URL is a tenant's choice of destination for a request the
//! control plane makes from inside the cloud's network, so it is checked
//! like one: loopback, private, link-local (the metadata address among
//! them), shared, multicast and other special addresses are refused unless
//! the operator allows them (`--webhook-allow CIDR`). The URL is checked
//! when a rule or policy is saved (its literal address, and `localhost`),
//! and again at each delivery after DNS resolution by a resolver that hands
//! the HTTP client only the addresses it checked, so a name that changes
//! its answer between the check and the connection (DNS rebinding) still
//! reaches nothing it should not. Redirects are not followed, proxies
//! from the environment are not used, and the tenant sees only a generic
//! outcome (status class, "refused by policy", no answer in time), never
//! the network's detail.
//!
//! Delivery runs in a task of its own: the monitor loop only hands due
//! notifications over, through a bounded queue, a few per project at a
//! time, and a semaphore bounds how many POSTs are in flight. One tenant's
//! black-hole webhooks can then hold at most its own few slots for one
//! short timeout each, never the monitor loop nor another project's
//! notifications.

use crate::alerts::NotificationRow;
use crate::store::{now_ms, Store};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// A webhook gets this long to accept the connection...
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// ...and this long in all to answer (a slow receiver holds one slot of its
/// project for at most this long per attempt).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Name resolution gets this long (a tenant's name server can be slow on purpose).
const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// POSTs in flight for the whole cloud.
pub const MAX_IN_FLIGHT: usize = 32;
/// POSTs queued or in flight for one project: fewer than `MAX_IN_FLIGHT`,
/// so a project's slow webhooks never take every slot.
pub const PER_PROJECT: usize = 4;
/// Notifications waiting for a slot. When full, a notification is not
/// queued this round; it stays due, with the reason recorded.
pub const QUEUE_LEN: usize = 256;
/// A notification handed to the task is not handed over again for this
/// long (longer than an attempt can take); if the server dies meanwhile,
/// it is due again after it.
const CLAIM_MS: i64 = 30_000;
/// A notification the full queue could not take is due again after this.
const REQUEUE_MS: i64 = 2_000;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("is not an http:// or https:// URL of at most {MAX_URL_LEN} characters")]
    NotHttp,
    #[error(
        "points at {host}, a {kind} address: this cloud does not send webhooks into its own or private networks; \
         use a public address, or ask an operator to allow it (nubo server --webhook-allow CIDR)"
    )]
    Refused { host: String, kind: &'static str },
}

/// The special-purpose range `ip` is in, if any (the kind, for messages).
/// Hand-written because std's `is_global` is not stable; the ranges are
/// IANA's special-purpose registries (RFC 6890 and its updates).
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special_v4(v4),
            None => special_v6(v6),
        },
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_link_local() => "link-local (instance metadata)",
        _ if ip.is_private() => "private (RFC 1918)",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (0, _, _) => "unspecified (this network)",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _, _) => "reserved",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (192, 88, 99) => "6to4 relay",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xfc00..=0xfdff => "private (unique local)",
        0x2001 if s[1] == 0x0db8 => "documentation",
        // IETF protocol assignments, Teredo among them.
        0x2001 if s[1] < 0x0200 => "IETF protocol assignment",
        // 6to4 and NAT64 carry an IPv4 address that may be anyone's.
        0x2002 => "6to4",
        0x0064 if s[1] == 0xff9b => "NAT64",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only",
        // IPv4-compatible (deprecated) and other reserved low addresses.
        0x0000 => "reserved",
        _ => return None,
    })
}

/// Whether the cloud may connect to `ip`: not special, or allowed by the operator.
pub fn permitted(ip: IpAddr, allow: &[IpNet]) -> Result<(), &'static str> {
    let ip = ip.to_canonical();
    if allow.iter().any(|net| net.contains(&ip)) {
        return Ok(());
    }
    match special(ip) {
        Some(kind) => Err(kind),
        None => Ok(()),
    }
}

/// Whether `host` is a `localhost` name (RFC 6761: always loopback,
/// whatever a resolver says).
fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// Checks a webhook URL as saved: http(s), not too long, and not a literal
/// address (or `localhost`) the cloud does not send to. Names are checked
/// again at each delivery, after resolution; they are not resolved here,
/// where a tenant's slow name server would hold an API request and where
/// the answer could change by the time anything is sent anyway.
pub fn check_url(url: &str, allow: &[IpNet]) -> Result<reqwest::Url, UrlError> {
    if url.len() > MAX_URL_LEN {
        return Err(UrlError::NotHttp);
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| UrlError::NotHttp)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlError::NotHttp);
    }
    let refused = |host: String, kind| Err(UrlError::Refused { host, kind });
    match parsed.host() {
        None => Err(UrlError::NotHttp),
        Some(url::Host::Domain(d)) if is_localhost(d) => refused(d.to_string(), "loopback"),
        Some(url::Host::Domain(_)) => Ok(parsed),
        Some(url::Host::Ipv4(ip)) => match permitted(IpAddr::V4(ip), allow) {
            Ok(()) => Ok(parsed),
            Err(kind) => refused(ip.to_string(), kind),
        },
        Some(url::Host::Ipv6(ip)) => match permitted(IpAddr::V6(ip), allow) {
            Ok(()) => Ok(parsed),
            Err(kind) => refused(ip.to_string(), kind),
        },
    }
}

/// A delivery that did not succeed: what the tenant sees (`Display`), and
/// the detail for the operator's log.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("refused by policy: the webhook's address is one this cloud does not send to (loopback, private, link-local or another special range); use a public address")]
    Refused { detail: String },
    #[error("the webhook answered with a redirect (HTTP 3xx), which is not followed: give its final URL")]
    Redirect,
    #[error("the webhook answered HTTP {class}xx")]
    Status { class: u16 },
    #[error("cannot reach the webhook: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    TimedOut,
    #[error("cannot reach the webhook: no connection")]
    Unreachable { detail: String },
}

impl DeliveryError {
    /// What the operator's log gets: the network detail the tenant does not.
    pub fn detail(&self) -> String {
        match self {
            Self::Refused { detail } | Self::Unreachable { detail } => detail.clone(),
            other => other.to_string(),
        }
    }
}

/// The resolver's refusal, found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{name} resolves only to refused addresses ({addrs})")]
struct ResolvedRefused {
    name: String,
    addrs: String,
}

/// Resolves names for webhook connections and passes on only the
/// addresses the cloud may connect to: the client connects to nothing
/// else, so the check and the connection see the same addresses.
struct CheckedResolver {
    allow: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let name = name.as_str().to_string();
        Box::pin(async move {
            if is_localhost(&name) {
                return Err(Box::new(ResolvedRefused { name, addrs: "localhost".into() }) as _);
            }
            let found: Vec<SocketAddr> = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0)))
                .await
                .map_err(|_| format!("resolving {name} took longer than {} s", DNS_TIMEOUT.as_secs()))??
                .collect();
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| permitted(a.ip(), &allow).is_ok());
            if ok.is_empty() {
                let addrs = refused.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", ");
                return Err(Box::new(ResolvedRefused { name, addrs }) as _);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of webhooks, with the operator's allow-list.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    allow: Arc<Vec<IpNet>>,
}

impl WebhookClient {
    pub fn new(allow: &[IpNet]) -> Result<Self, reqwest::Error> {
        let allow = Arc::new(allow.to_vec());
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver { allow: allow.clone() }))
            // A redirect would be a second, unchecked destination.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY would connect somewhere the check never saw.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self { http, allow })
    }

    /// POSTs `payload` (JSON) to `url`, if the cloud may send there.
    pub async fn post(&self, url: &str, payload: String) -> Result<(), DeliveryError> {
        // Literal addresses never reach the resolver: checked here.
        check_url(url, &self.allow).map_err(|e| DeliveryError::Refused { detail: format!("{url} {e}") })?;
        let result = self.http.post(url).header("content-type", "application/json").body(payload).send().await;
        match result {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) if r.status().is_redirection() => Err(DeliveryError::Redirect),
            Ok(r) => Err(DeliveryError::Status { class: r.status().as_u16() / 100 }),
            Err(e) if e.is_timeout() => Err(DeliveryError::TimedOut),
            Err(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
                while let Some(s) = source {
                    if let Some(r) = s.downcast_ref::<ResolvedRefused>() {
                        return Err(DeliveryError::Refused { detail: r.to_string() });
                    }
                    source = s.source();
                }
                Err(DeliveryError::Unreachable { detail: error_chain(&e) })
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A due notification with the project it belongs to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueNotification {
    #[sqlx(flatten)]
    pub n: NotificationRow,
    pub project: String,
}

impl Store {
    /// Due notifications, the oldest first, at most `per_project` of each
    /// project (so one project's backlog never hides another's) and
    /// `limit` in all.
    pub async fn due_notifications_fair(
        &self,
        per_project: i64,
        limit: i64,
    ) -> Result<Vec<DueNotification>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, alert_id, kind, url, payload, state, attempts, next_attempt_ms, last_error, created_at_ms, project
             FROM (SELECT n.*, COALESCE(a.project_id, f.project_id, '') AS project,
                     ROW_NUMBER() OVER (PARTITION BY COALESCE(a.project_id, f.project_id, '')
                                        ORDER BY n.next_attempt_ms, n.id) AS rank_in_project
                   FROM notifications n
                   LEFT JOIN alerts a ON a.id = n.alert_id
                   LEFT JOIN policy_firings f ON f.id = n.alert_id
                   WHERE n.state = 'pending' AND n.next_attempt_ms <= $1) due
             WHERE rank_in_project <= $2 ORDER BY next_attempt_ms, id LIMIT $3",
        )
        .bind(now_ms())
        .bind(per_project)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Hands a due notification to the delivery task: not due again until
    /// `until_ms` (unless the attempt records its outcome first). False
    /// when it is no longer due as it was.
    pub async fn claim_notification(&self, n: &NotificationRow, until_ms: i64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE notifications SET next_attempt_ms = $1 WHERE id = $2 AND state = 'pending' AND next_attempt_ms = $3",
        )
        .bind(until_ms)
        .bind(&n.id)
        .bind(n.next_attempt_ms)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A notification the delivery queue had no room for: not an attempt,
    /// but the reason is recorded and it is due again shortly.
    pub async fn defer_notification(&self, id: &str, reason: &str, until_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE notifications SET next_attempt_ms = $1, last_error = $2 WHERE id = $3 AND state = 'pending'",
        )
        .bind(until_ms)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Makes one attempt at `n` and records its outcome.
pub async fn attempt(store: &Store, client: &WebhookClient, n: &NotificationRow) -> Result<bool, sqlx::Error> {
    let outcome = client.post(&n.url, n.payload.clone()).await;
    if let Err(e) = &outcome {
        tracing::info!(notification = %n.id, source = %n.alert_id, url = %n.url, error = %e.detail(),
            "webhook delivery failed");
    }
    let sent = outcome.is_ok();
    // The record keeps the generic outcome: tenants read it.
    let mut row = n.clone();
    // The claim moved next_attempt_ms; the record is of the attempt.
    row.next_attempt_ms = now_ms();
    store.record_delivery(&row, outcome.err().map(|e| e.to_string())).await?;
    Ok(sent)
}

/// Releases a project's slot when a delivery ends (even by a panic).
struct Slot {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    project: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.in_flight.lock() {
            if let Some(c) = m.get_mut(&self.project) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    m.remove(&self.project);
                }
            }
        }
    }
}

struct Job {
    n: NotificationRow,
    slot: Slot,
}

/// The delivery task's intake: the monitor loop calls [`Dispatcher::enqueue_due`].
pub struct Dispatcher {
    queue: mpsc::Sender<Job>,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

impl Dispatcher {
    /// Starts the delivery task (it ends when the dispatcher is dropped).
    pub fn start(store: Store, client: WebhookClient) -> Self {
        let (queue, mut rx) = mpsc::channel::<Job>(QUEUE_LEN);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            while let Some(job) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (store, client) = (store.clone(), client.clone());
                tokio::spawn(async move {
                    if let Err(e) = attempt(&store, &client, &job.n).await {
                        tracing::warn!(notification = %job.n.id, error = %e,
                            "cannot record a webhook delivery; it is tried again after its claim expires");
                    }
                    drop(job.slot);
                    drop(permit);
                });
            }
        });
        Self { queue, in_flight: Arc::default() }
    }

    /// Hands due notifications to the delivery task, at most
    /// [`PER_PROJECT`] of each project queued or in flight; returns how
    /// many it handed over. Never waits for a delivery.
    pub async fn enqueue_due(&self, store: &Store) -> Result<usize, sqlx::Error> {
        let due = store.due_notifications_fair(PER_PROJECT as i64, QUEUE_LEN as i64).await?;
        let mut handed = 0;
        for d in due {
            let busy = self.in_flight.lock().map(|m| m.get(&d.project).copied().unwrap_or(0)).unwrap_or(PER_PROJECT);
            if busy >= PER_PROJECT {
                continue;
            }
            let now = now_ms();
            if !store.claim_notification(&d.n, now + CLAIM_MS).await? {
                continue;
            }
            if let Ok(mut m) = self.in_flight.lock() {
                *m.entry(d.project.clone()).or_insert(0) += 1;
            }
            let slot = Slot { in_flight: self.in_flight.clone(), project: d.project.clone() };
            match self.queue.try_send(Job { n: d.n, slot }) {
                Ok(()) => handed += 1,
                Err(e) => {
                    let job = match e {
                        mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                    };
                    tracing::warn!(notification = %job.n.id, project = %d.project,
                        "the webhook delivery queue is full; the notification waits for the next round");
                    store
                        .defer_notification(
                            &job.n.id,
                            "not attempted yet: the cloud's webhook queue was full; it is tried again shortly",
                            now + REQUEUE_MS,
                        )
                        .await?;
                }
            }
        }
        Ok(handed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> bool {
        matches!(check_url(url, &[]), Err(UrlError::Refused { .. }))
    }

    #[test]
    fn special_destinations_are_refused_at_creation() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1.2.3:8780/api",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://0.0.0.0:8780/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a00:1]/",
            "http://localhost:8780/",
            "http://LocalHost./",
            "http://api.localhost/",
            // The URL parser's other spellings of 127.0.0.1.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.000.000.001/",
        ] {
            assert!(refused(url), "{url} was accepted");
        }
        for url in [
            "https://hooks.example.com/x",
            "http://8.8.8.8/",
            "http://[2606:4700::1111]/",
            "http://93.184.216.34:8080/a?b",
        ] {
            assert!(check_url(url, &[]).is_ok(), "{url} was refused");
        }
        for url in
            ["file:///etc/passwd", "gopher://x/", "http://", "not a url", &format!("http://a/{}", "x".repeat(2100))]
        {
            assert_eq!(check_url(url, &[]).err(), Some(UrlError::NotHttp), "{url}");
        }
    }

    #[test]
    fn the_operator_allow_list_opens_exactly_its_ranges() {
        let allow: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(check_url("http://10.1.2.3/", &allow).is_ok());
        assert!(check_url("http://[::1]/", &allow).is_ok());
        assert!(check_url("http://[::ffff:10.0.0.1]/", &allow).is_ok(), "mapped addresses are their IPv4");
        assert!(matches!(check_url("http://127.0.0.1/", &allow), Err(UrlError::Refused { .. })));
        assert!(matches!(check_url("http://192.168.0.1/", &allow), Err(UrlError::Refused { .. })));
        let msg = check_url("http://169.254.169.254/", &allow).unwrap_err().to_string();
        assert!(msg.contains("169.254.169.254") && msg.contains("--webhook-allow"), "{msg}");
    }

    #[tokio::test]
    async fn delivery_checks_resolved_names_and_sends_nothing_refused() {
        // A listener that counts connections: a refused delivery makes none.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let client = WebhookClient::new(&[]).unwrap();
        // `localhost` is refused by name; a name from /etc/hosts that
        // resolves to loopback (127.0.0.1 is always in the file) is refused
        // after resolution.
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let mut names = vec!["localhost".to_string()];
        names.extend(hosts.lines().filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip: IpAddr = f.next()?.parse().ok()?;
            if !ip.is_loopback() {
                return None;
            }
            f.find(|n| !n.starts_with('#') && !is_localhost(n)).map(str::to_string)
        }));
        for name in &names {
            let e = client.post(&format!("http://{name}:{port}/"), "{}".into()).await.unwrap_err();
            assert!(matches!(e, DeliveryError::Refused { .. }), "{name}: {e:?}");
            assert!(e.to_string().starts_with("refused by policy"), "{e}");
        }
        let e = client.post(&format!("http://127.0.0.1:{port}/"), "{}".into()).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Refused { .. }), "{e:?}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0, "a refused webhook got a connection");
        // Allowed by the operator, it is delivered (and answers 404 here: a class, no detail).
        let allowed = WebhookClient::new(&["127.0.0.0/8".parse().unwrap()]).unwrap();
        let e = allowed.post(&format!("http://127.0.0.1:{port}/"), "{}".into()).await.unwrap_err();
        assert!(matches!(e, DeliveryError::TimedOut | DeliveryError::Unreachable { .. }), "{e:?}");
        assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_statuses_are_classes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/redirect",
                axum::routing::post(|| async {
                    (axum::http::StatusCode::FOUND, [("location", "http://169.254.169.254/latest/meta-data/")])
                }),
            )
            .route("/teapot", axum::routing::post(|| async { axum::http::StatusCode::IM_A_TEAPOT }))
            .route("/ok", axum::routing::post(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = WebhookClient::new(&["127.0.0.1/32".parse().unwrap()]).unwrap();
        let e = client.post(&format!("http://{addr}/redirect"), "{}".into()).await.unwrap_err();
        assert!(matches!(e, DeliveryError::Redirect), "{e:?}");
        let e = client.post(&format!("http://{addr}/teapot"), "{}".into()).await.unwrap_err();
        assert_eq!(e.to_string(), "the webhook answered HTTP 4xx");
        client.post(&format!("http://{addr}/ok"), "{}".into()).await.unwrap();
    }
}
