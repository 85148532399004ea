//! The data plane through real sockets on 127.0.0.1: backends are small
//! hyper servers that answer with their name. Round-robin spread, the
//! forwarded headers, keep-alive through a reconfiguration, draining of a
//! removed backend with a request under way, retries and passive marks
//! on a dead backend, active checks taking a backend out and back, and
//! the TCP listener.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nubo_lb::{Algorithm, BackendConfig, Balancer, HealthConfig, ListenerConfig, Protocol, Timeouts};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A backend named `name`: `/` answers the name, `/slow` the name after
/// 800 ms, `/xff` the forwarded headers it got, `/health` `health`'s status.
async fn backend(name: &'static str, health: Arc<AtomicU16>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let health = health.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/slow" => {
                                tokio::time::sleep(Duration::from_millis(800)).await;
                                (200, name.to_string())
                            }
                            "/xff" => (
                                200,
                                format!(
                                    "{}|{}",
                                    req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or(""),
                                    req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("")
                                ),
                            ),
                            "/health" => (health.load(Ordering::Relaxed), name.to_string()),
                            _ => (200, name.to_string()),
                        };
                        let mut r = Response::new(http_body_util::Full::new(Bytes::from(body)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

fn listener(backends: &[(&str, SocketAddr)], algorithm: Algorithm, health: HealthConfig) -> ListenerConfig {
    ListenerConfig {
        id: "lb-test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        protocol: Protocol::Http,
        algorithm,
        backends: backends.iter().map(|(id, a)| BackendConfig { id: id.to_string(), address: *a, weight: 1 }).collect(),
        health,
        timeouts: Timeouts { drain_ms: 5_000, ..Default::default() },
    }
}

/// One keep-alive client connection to `addr`.
async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn get(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) -> (u16, String) {
    send.ready().await.unwrap();
    let req = Request::get(path).header("host", "lb").body(Empty::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn health_of(b: &Balancer, id: &str) -> String {
    b.stats().backends.iter().find(|s| s.id == id).map(|s| s.health.clone()).unwrap_or_default()
}

#[tokio::test]
async fn round_robin_forwarded_headers_and_a_reconfiguration_that_drops_nothing() {
    let ok = Arc::new(AtomicU16::new(200));
    let (a, b, c) = (backend("a", ok.clone()).await, backend("b", ok.clone()).await, backend("c", ok.clone()).await);
    let lb = Balancer::start(listener(&[("a", a), ("b", b), ("c", c)], Algorithm::RoundRobin, HealthConfig::default()))
        .unwrap();
    let addr = lb.local_addr();
    wait_for("three backends up", || lb.stats().backends.iter().all(|s| s.health == "up")).await;
    let mut conn = connect(addr).await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        let (status, body) = get(&mut conn, "/").await;
        assert_eq!(status, 200);
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!((counts["a"], counts["b"], counts["c"]), (10, 10, 10), "one keep-alive connection, spread evenly");
    let (_, xff) = get(&mut conn, "/xff").await;
    assert_eq!(xff, "127.0.0.1|http");
    let stats = lb.stats();
    assert_eq!(stats.backends.iter().map(|s| s.requests).sum::<u64>(), 31);

    // A slow request is under way on some backend when the set changes:
    // `c` is removed, `a` weighs 3. The request finishes on its backend.
    let mut slow_conns = Vec::new();
    for _ in 0..3 {
        slow_conns.push(connect(addr).await);
    }
    let mut slow = Vec::new();
    for mut s in slow_conns {
        slow.push(tokio::spawn(async move { get(&mut s, "/slow").await }));
    }
    wait_for("three slow requests in flight", || lb.stats().backends.iter().map(|s| s.in_flight).sum::<u64>() == 3)
        .await;
    let mut next = listener(&[("a", a), ("b", b)], Algorithm::RoundRobin, HealthConfig::default());
    next.backends[0].weight = 3;
    lb.reconfigure(next).unwrap();
    assert_eq!(health_of(&lb, "c"), "draining");
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..8 {
        let (status, body) = get(&mut conn, "/").await;
        assert_eq!(status, 200, "the client's connection survived the reconfiguration");
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!((counts["a"], counts["b"], counts.get("c")), (6, 2, None), "new weights, c gets nothing new");
    let finished: Vec<String> = futures_join(slow).await;
    assert_eq!(finished.len(), 3);
    assert!(finished.contains(&"c".to_string()), "the request on the removed backend finished there: {finished:?}");
    wait_for("c drained and forgotten", || lb.stats().backends.iter().all(|s| s.id != "c")).await;
    lb.stop();
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<(u16, String)>>) -> Vec<String> {
    let mut out = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        out.push(body);
    }
    out
}

#[tokio::test]
async fn a_dead_backend_is_retried_around_then_marked_and_a_failing_check_takes_one_out() {
    let ok = Arc::new(AtomicU16::new(200));
    let live = backend("live", ok.clone()).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // No active checks: only passive marks keep traffic off the dead one.
    let health = HealthConfig { active: false, passive_down_ms: 60_000, ..Default::default() };
    let lb = Balancer::start(listener(&[("dead", dead), ("live", live)], Algorithm::RoundRobin, health)).unwrap();
    let mut conn = connect(lb.local_addr()).await;
    for _ in 0..10 {
        assert_eq!(get(&mut conn, "/").await, (200, "live".to_string()), "GETs are retried on the live backend");
    }
    let s = lb.stats();
    let d = s.backends.iter().find(|b| b.id == "dead").unwrap();
    assert_eq!((d.health.as_str(), d.errors), ("failing", 1), "one refused connect marks it: {d:?}");
    assert!(d.last_error.as_deref().unwrap_or("").contains("onnect"), "{d:?}");
    lb.stop();

    // Active checks: /health answering 503 takes `sick` out, 200 brings it back.
    let sick_health = Arc::new(AtomicU16::new(200));
    let sick = backend("sick", sick_health.clone()).await;
    let cfg = HealthConfig { interval_ms: 100, path: Some("/health".into()), ..Default::default() };
    let lb = Balancer::start(listener(&[("sick", sick), ("live", live)], Algorithm::RoundRobin, cfg)).unwrap();
    wait_for("both up", || lb.stats().backends.iter().all(|s| s.health == "up")).await;
    sick_health.store(503, Ordering::Relaxed);
    let t0 = Instant::now();
    wait_for("sick down", || health_of(&lb, "sick") == "down").await;
    assert!(t0.elapsed() < Duration::from_millis(500), "taken out within about one interval: {:?}", t0.elapsed());
    let mut conn = connect(lb.local_addr()).await;
    for _ in 0..6 {
        assert_eq!(get(&mut conn, "/").await.1, "live");
    }
    sick_health.store(200, Ordering::Relaxed);
    wait_for("sick back up", || health_of(&lb, "sick") == "up").await;
    let bodies: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(get(&mut conn, "/").await.1);
        }
        v
    };
    assert!(bodies.contains(&"sick".to_string()), "it gets traffic again: {bodies:?}");
    let sick_stats = lb.stats().backends.into_iter().find(|s| s.id == "sick").unwrap();
    assert!(sick_stats.last_error.unwrap_or_default().contains("answered 503"));
    lb.stop();
}

#[tokio::test]
async fn least_connections_and_least_loaded_through_the_proxy() {
    let ok = Arc::new(AtomicU16::new(200));
    let (a, b) = (backend("a", ok.clone()).await, backend("b", ok.clone()).await);
    let lb =
        Balancer::start(listener(&[("a", a), ("b", b)], Algorithm::LeastConnections, HealthConfig::default())).unwrap();
    wait_for("up", || lb.stats().backends.iter().all(|s| s.health == "up")).await;
    let addr = lb.local_addr();
    let mut held = connect(addr).await;
    let slow = tokio::spawn(async move { get(&mut held, "/slow").await.1 });
    wait_for("one in flight", || lb.stats().backends.iter().any(|s| s.in_flight == 1)).await;
    let busy = lb.stats().backends.into_iter().find(|s| s.in_flight == 1).unwrap().id;
    let mut conn = connect(addr).await;
    for _ in 0..5 {
        assert_ne!(get(&mut conn, "/").await.1, busy, "quick requests avoid the backend holding one open");
    }
    assert_eq!(slow.await.unwrap(), busy);

    // least-loaded: `a` reported 100% busy gets nothing while `b` is idle.
    let mut cfg = lb.config().as_ref().clone();
    cfg.algorithm = Algorithm::LeastLoaded;
    lb.reconfigure(cfg).unwrap();
    lb.set_cpu("a", Some(1.0));
    lb.set_cpu("b", Some(0.1));
    for _ in 0..10 {
        assert_eq!(get(&mut conn, "/").await.1, "b");
    }
    assert_eq!(lb.stats().backends.iter().find(|s| s.id == "a").unwrap().cpu_percent, Some(100.0));
    lb.stop();
}

#[tokio::test]
async fn tcp_connections_are_balanced_and_a_refusing_backend_is_skipped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn echo(name: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf).await {
                        let _ = s.write_all(format!("{name}:{}", String::from_utf8_lossy(&buf[..n])).as_bytes()).await;
                    }
                });
            }
        });
        addr
    }
    let (x, y) = (echo("x").await, echo("y").await);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = listener(
        &[("x", x), ("y", y), ("dead", dead)],
        Algorithm::RoundRobin,
        HealthConfig { active: false, ..Default::default() },
    );
    cfg.protocol = Protocol::Tcp;
    let lb = Balancer::start(cfg).unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for i in 0..12 {
        let mut s = tokio::net::TcpStream::connect(lb.local_addr()).await.unwrap();
        s.write_all(format!("hi{i}").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (name, echoed) = out.split_once(':').unwrap();
        assert_eq!(echoed, format!("hi{i}"));
        *counts.entry(name.to_string()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<u32>(), 12, "every connection got through: {counts:?}");
    assert!(counts["x"] >= 5 && counts["y"] >= 5, "{counts:?}");
    assert_eq!(health_of(&lb, "dead"), "failing");
    assert!(Balancer::start(lb.config().as_ref().clone()).is_ok(), "port 0 binds anew");
    let mut same = lb.config().as_ref().clone();
    same.listen = lb.local_addr();
    assert!(Balancer::start(same).err().unwrap().to_string().contains("cannot listen on"));
    lb.stop();
}
