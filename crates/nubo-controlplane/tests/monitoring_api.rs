//! Monitoring through the real router, with a host played by agent API
//! calls (no VM): samples in and series out (raw, stepped), a host
//! speaking only for itself, checks' soft and hard states from results,
//! metric alert rules with a hold time, webhook delivery with retries and
//! its failure, silences, and who may see what.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_controlplane::store::now_ms;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

async fn instance(t: &T, token: &str, ports: &[u16]) -> String {
    let v = t
        .ok(
            "POST",
            "/api/v1/instances",
            token,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "ports": ports})),
        )
        .await;
    v["id"].as_str().unwrap().to_string()
}

/// Marks the instance running, as its agent would.
async fn running(t: &T, host: &str, cred: &str, id: &str) {
    let r = json!({"instances": [{"id": id, "power": "running", "pid": 1, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), cred, Some(r)).await;
}

#[tokio::test]
async fn samples_in_series_out_and_a_host_speaks_only_for_itself() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let (other_host, other_cred) = t.add_host_with_id().await;
    let admin = t.admin.clone();
    let id = instance(&t, &admin, &[]).await;
    let mine = t.ctx.store.instance(&id).await.unwrap().unwrap().host_id.unwrap();
    let (host, cred, other_cred) =
        if mine == host.as_str() { (host, cred, other_cred) } else { (other_host, other_cred, cred) };
    let now = now_ms();
    let samples: Vec<Value> = (0..12)
        .map(|i| json!({"resource": id, "metric": "cpu_percent", "at_ms": now - 60_000 + i * 5_000, "value": (i * 10) as f64}))
        .chain([
            json!({"resource": id, "metric": "Bad Name", "at_ms": now, "value": 1.0}),
            json!({"resource": host.to_string(), "metric": "load1", "at_ms": now, "value": 0.5}),
        ])
        .collect();
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/metrics"), &cred, Some(json!({"samples": samples}))).await;
    // Another host cannot speak for this instance, nor post as this host.
    let forged = json!({"samples": [{"resource": id, "metric": "cpu_percent", "at_ms": now, "value": 999.0}]});
    let other = t.ctx.store.hosts().await.unwrap().into_iter().find(|h| h.id != host.as_str()).unwrap().id;
    t.ok("POST", &format!("/api/v1/agent/hosts/{other}/metrics"), &other_cred, Some(forged.clone())).await;
    let (s, _) = t.call("POST", &format!("/api/v1/agent/hosts/{host}/metrics"), Some(&other_cred), Some(forged)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let series = t.ok("GET", &format!("/api/v1/metrics?resource={id}&metric=cpu&from=2m&step=20s"), &admin, None).await;
    assert_eq!(
        (series["metric"].as_str(), series["source"].as_str(), series["step_ms"].as_i64()),
        (Some("cpu_percent"), Some("raw"), Some(20_000))
    );
    let values: Vec<f64> = series["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).collect();
    assert!(values.iter().all(|v| *v < 200.0), "the forged sample was dropped: {values:?}");
    assert!(values.iter().sum::<f64>() / values.len() as f64 > 30.0, "{values:?}");
    let latest = t.ok("GET", &format!("/api/v1/metrics/latest?resource={id}"), &admin, None).await;
    assert_eq!(latest.as_array().unwrap().len(), 1, "only the valid series: {latest}");
    assert_eq!(latest[0]["value"], 110.0);
    // Bad queries.
    for q in ["metric=cpu", "resource=nope&metric=cpu", &format!("resource={id}&metric=cpu&from=yesterday")] {
        let (s, _) = t.call("GET", &format!("/api/v1/metrics?{q}"), Some(&admin), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
    }
    // A member of another project sees nothing of it; hosts are operators'.
    let bob = t.user("bob", "proj-b", "member").await;
    let (s, _) = t.call("GET", &format!("/api/v1/metrics?resource={id}&metric=cpu"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call("GET", &format!("/api/v1/metrics/latest?resource={host}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t.call("GET", "/metrics", Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = t.raw("GET", "/metrics", Some(&admin), "text/plain", Vec::new()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn checks_go_soft_then_hard_and_alerts_notify_a_webhook_with_retries() {
    // A webhook that fails twice, then takes notifications.
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls = Arc::new(Mutex::new(0u32));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (g, c) = (got.clone(), calls.clone());
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                let (g, c) = (g.clone(), c.clone());
                async move {
                    let n = {
                        let mut c = c.lock().unwrap();
                        *c += 1;
                        *c
                    };
                    if n <= 2 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    g.lock().unwrap().push(v);
                    StatusCode::OK
                }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });

    // The receivers are on loopback, which only an operator's allow-list opens.
    let t = T::with(allow_loopback).await;
    let (host, cred) = t.add_host_with_id().await;
    let admin = t.admin.clone();
    let id = instance(&t, &admin, &[80]).await;
    running(&t, host.as_str(), &cred, &id).await;
    // Members may not run plugins on hosts; ports must be forwarded.
    let alice = t.user("alice", "default", "member").await;
    let plugin = json!({"name": "web", "target": id, "kind": "plugin", "command": ["check_http", "-H", "$HOSTADDRESS$", "-p", "$PORT:80$"]});
    let (s, v) = t.call("POST", "/api/v1/checks", Some(&alice), Some(plugin.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/checks",
            Some(&admin),
            Some(json!({"name": "x", "target": id, "kind": "tcp", "port": 22})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("not forwarded"), "{v}");
    let (s, _) = t
        .call(
            "POST",
            "/api/v1/checks",
            Some(&admin),
            Some(json!({"name": "p", "target": id, "kind": "plugin", "command": ["/bin/sh", "-c", "id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "only plugin names, never paths");

    let mut body = plugin;
    body["max_attempts"] = json!(3);
    let check = t.ok("POST", "/api/v1/checks", &admin, Some(body)).await;
    let check_id = check["id"].as_str().unwrap().to_string();
    // The host is told what to run, with the macros resolved.
    let hc = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/checks"), &cred, None).await;
    let cmd = hc["checks"][0]["action"]["command"].as_array().unwrap().clone();
    let port = t.ctx.store.ports(&id).await.unwrap()[0].host_port.to_string();
    assert_eq!(cmd, vec![json!("check_http"), json!("-H"), json!("127.0.0.1"), json!("-p"), json!(port)]);
    t.ok(
        "POST",
        "/api/v1/alert-rules",
        &admin,
        Some(json!({"name": "web-down", "kind": "check", "target": id, "webhook_url": url})),
    )
    .await;

    let result = |status: u8| json!({"results": [{"check_id": check_id, "status": status, "output": format!("status {status}"), "perfdata": "time=0.5s;;;0", "at_ms": now_ms()}]});
    let post = |status: u8| {
        let t = &t;
        let (host, cred) = (host.to_string(), cred.clone());
        let body = result(status);
        async move { t.ok("POST", &format!("/api/v1/agent/hosts/{host}/checks"), &cred, Some(body)).await }
    };
    let show = || async { t.ok("GET", &format!("/api/v1/checks/{check_id}"), &admin, None).await };
    post(0).await;
    assert_eq!(show().await["state"], "OK");
    post(2).await;
    let s1 = show().await;
    assert_eq!(
        (s1["state"].as_str(), s1["state_type"].as_str(), s1["attempt"].as_u64()),
        (Some("CRITICAL"), Some("SOFT"), Some(1))
    );
    // While soft, the host re-checks at the retry interval.
    let hc = t.ok("GET", &format!("/api/v1/agent/hosts/{host}/checks"), &cred, None).await;
    assert_eq!(hc["checks"][0]["interval_secs"], check["retry_interval_secs"]);
    nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    assert!(
        t.ok("GET", "/api/v1/alerts", &admin, None).await.as_array().unwrap().is_empty(),
        "soft problems do not alert"
    );
    post(2).await;
    post(2).await;
    let s3 = show().await;
    assert_eq!((s3["state_type"].as_str(), s3["attempt"].as_u64()), (Some("HARD"), Some(3)));
    assert_eq!(s3["history"].as_array().unwrap().len(), 3, "OK, SOFT, HARD: {s3}");
    // Perfdata became a metric of the instance.
    let latest = t.ok("GET", &format!("/api/v1/metrics/latest?resource={id}"), &admin, None).await;
    assert!(
        latest.as_array().unwrap().iter().any(|m| m["metric"] == "check_web_time" && m["value"] == 0.5),
        "{latest}"
    );

    // Hard CRITICAL: the alert fires once; delivery is retried until the webhook takes it.
    for _ in 0..3 {
        nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    }
    let alerts = t.ok("GET", "/api/v1/alerts", &admin, None).await;
    assert_eq!(alerts.as_array().unwrap().len(), 1);
    assert_eq!(alerts[0]["notifications"].as_array().unwrap().len(), 1, "one notification per breach");
    let http = webhook_client(&t);
    for _ in 0..40 {
        nubo_controlplane::alerts::deliver(&t.ctx.store, &http).await.unwrap();
        if !got.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(got.lock().unwrap().len(), 1);
    assert_eq!(*calls.lock().unwrap(), 3, "two failures, then delivered");
    let alert_id = alerts[0]["id"].as_str().unwrap().to_string();
    let a = t.ok("GET", &format!("/api/v1/alerts/{alert_id}"), &admin, None).await;
    assert_eq!(
        (a["notifications"][0]["state"].as_str(), a["notifications"][0]["attempts"].as_u64()),
        (Some("sent"), Some(3))
    );
    assert_eq!(got.lock().unwrap()[0]["target"], id.as_str());

    // Silenced, the recovery is logged but not posted.
    t.ok("POST", &format!("/api/v1/alerts/{alert_id}/silence"), &admin, Some(json!({"for_secs": 3600}))).await;
    post(0).await;
    nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    let a = t.ok("GET", &format!("/api/v1/alerts/{alert_id}"), &admin, None).await;
    assert_eq!(a["state"], "resolved");
    assert_eq!(a["notifications"].as_array().unwrap().len(), 1, "no resolved notification while silenced");
    let events = t.ok("GET", "/api/v1/events", &admin, None).await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"alert_firing") && kinds.contains(&"alert_resolved"), "{kinds:?}");
}

#[tokio::test]
async fn metric_rules_hold_before_firing_and_failed_deliveries_are_marked() {
    let t = T::with(allow_loopback).await;
    let (host, cred) = t.add_host_with_id().await;
    let admin = t.admin.clone();
    let id = instance(&t, &admin, &[]).await;
    running(&t, host.as_str(), &cred, &id).await;
    // Nothing listens on this port: every attempt fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    t.ok("POST", "/api/v1/alert-rules", &admin, Some(json!({"name": "hot", "kind": "metric", "target": "*", "metric": "cpu", "op": ">", "threshold": 80, "for_secs": 1, "webhook_url": format!("http://127.0.0.1:{dead}/")}))).await;
    let sample =
        |v: f64| json!({"samples": [{"resource": id, "metric": "cpu_percent", "at_ms": now_ms(), "value": v}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/metrics"), &cred, Some(sample(95.0))).await;
    nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    assert!(
        t.ok("GET", "/api/v1/alerts", &admin, None).await.as_array().unwrap().is_empty(),
        "pending, not firing yet"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    let alerts = t.ok("GET", "/api/v1/alerts", &admin, None).await;
    assert_eq!(alerts[0]["state"], "firing", "{alerts}");
    assert_eq!(alerts[0]["value"], 95.0);
    // Deliveries fail and back off; after the last attempt the notification is failed.
    let http = webhook_client(&t);
    let store = &t.ctx.store;
    for _ in 0..nubo_controlplane::alerts::MAX_ATTEMPTS {
        // Make the next attempt due at once instead of waiting out the backoff.
        sqlx_due(store).await;
        nubo_controlplane::alerts::deliver(store, &http).await.unwrap();
    }
    let a = t.ok("GET", &format!("/api/v1/alerts/{}", alerts[0]["id"].as_str().unwrap()), &admin, None).await;
    let n = &a["notifications"][0];
    assert_eq!(
        (n["state"].as_str(), n["attempts"].as_u64()),
        (Some("failed"), Some(nubo_controlplane::alerts::MAX_ATTEMPTS as u64)),
        "{a}"
    );
    assert!(n["last_error"].as_str().unwrap().contains("cannot reach"), "{n}");
    // A value back below the threshold resolves it.
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/metrics"), &cred, Some(sample(10.0))).await;
    nubo_controlplane::background::alert_rules::evaluate(&t.ctx).await.unwrap();
    assert!(t.ok("GET", "/api/v1/alerts", &admin, None).await.as_array().unwrap().is_empty());
    // Rules are validated.
    for bad in [
        json!({"name": "a", "kind": "metric", "target": "*", "metric": "cpu", "op": "==", "threshold": 1}),
        json!({"name": "b", "kind": "metric", "target": "*", "metric": "cpu"}),
        json!({"name": "c", "kind": "check", "target": "*", "min_state": "OK"}),
        json!({"name": "d", "kind": "metric", "target": "*", "metric": "cpu", "threshold": 1, "webhook_url": "file:///etc/passwd"}),
        json!({"name": "e", "kind": "sometimes", "target": "*"}),
    ] {
        let (s, v) = t.call("POST", "/api/v1/alert-rules", Some(&admin), Some(bad.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
}

/// The settings of a cloud whose operator lets webhooks reach loopback.
fn allow_loopback(c: &mut nubo_controlplane::Config) {
    c.webhook_allow = vec!["127.0.0.0/8".parse().unwrap()];
}

/// The webhook client of `t`'s server (its allow-list).
fn webhook_client(t: &T) -> nubo_controlplane::webhooks::WebhookClient {
    nubo_controlplane::webhooks::WebhookClient::new(&t.ctx.config.webhook_allow).unwrap()
}

/// Makes every pending notification due now (the test does not wait out backoffs).
async fn sqlx_due(store: &nubo_controlplane::store::Store) {
    store.make_notifications_due().await.unwrap();
}
