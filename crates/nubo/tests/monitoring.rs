//! Monitoring end to end on a real `tiny` VM under `nubo up` (sampling
//! every 2 s): the instance's CPU metric rises while its user-data runs a
//! busy loop and falls after; the guest's disk use grows as it writes; a
//! check_http from Debian's monitoring-plugins turns CRITICAL (soft, then
//! hard) when the guest's web server stops, a webhook receives the
//! notification exactly once, and the check recovers to OK (with a
//! resolved notification); `/metrics` passes Prometheus' own `promtool
//! check metrics`; and `nubo metrics show` draws the chart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

/// A webhook receiver on 127.0.0.1: every POST body it got.
fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let _ = r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn latest(cloud: &Cloud, id: &str, metric: &str) -> Option<f64> {
    let list = cloud.nubo_json(&["metrics", "list", id]);
    list.as_array()?.iter().find(|m| m["metric"] == metric)?["value"].as_f64()
}

fn sh(cloud: &Cloud, id: &str, script: &str) {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn metrics_checks_and_alerts_end_to_end() {
    // The webhook receiver is on 127.0.0.1, which only an operator's allow-list opens.
    let cloud = Cloud::up_with(&["--webhook-allow", "127.0.0.1/32"]);
    let dir = cloud.data_dir();
    let ud = dir.join("busy.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\nmkdir -p /www && echo up > /www/index.html && httpd -p 80 -h /www\n\
         end=$(( $(date +%s) + 25 )); while [ $(date +%s) -lt $end ]; do :; done; echo busy-loop-done\n",
    )
    .unwrap();
    let id = cloud
        .nubo_ok(&["instance", "run", "--name", "busy", "--port", "80", "--user-data", ud.to_str().unwrap(), "--wait"])
        .trim()
        .to_string();

    // CPU rises during the busy loop...
    let high = wait_until("cpu_percent above 70", BOOT, || latest(&cloud, &id, "cpu_percent").filter(|v| *v > 70.0));
    println!("cpu_percent while busy: {high:.1}");
    cloud.wait_console(&id, "busy-loop-done", 1, Duration::from_secs(120));
    // ...and falls after.
    let low = wait_until("cpu_percent below 20", Duration::from_secs(60), || {
        latest(&cloud, &id, "cpu_percent").filter(|v| *v < 20.0)
    });
    println!("cpu_percent after: {low:.1}");
    let series = cloud.nubo_json(&["metrics", "show", &id, "--metric", "cpu", "--since", "5m", "--step", "2s"]);
    let values: Vec<f64> = series["points"].as_array().unwrap().iter().filter_map(|p| p["value"].as_f64()).collect();
    let peak = values.iter().position(|v| *v > 70.0).expect("a busy point in the series");
    assert!(values[peak..].iter().any(|v| *v < 20.0), "the series falls after the busy loop: {values:?}");
    let chart = cloud.nubo_ok(&["metrics", "show", &id, "--metric", "cpu", "--since", "5m"]);
    assert!(chart.contains('█') && chart.contains("cpu_percent"), "{chart}");

    // The guest's disk use grows as it writes (guest agent fsinfo).
    let before = wait_until("fs_used_bytes", Duration::from_secs(60), || latest(&cloud, &id, "fs_used_bytes"));
    sh(&cloud, &id, "dd if=/dev/zero of=/root/fill bs=1M count=64 2>/dev/null && sync");
    let after = wait_until("fs_used_bytes to grow by 48 MiB", Duration::from_secs(60), || {
        latest(&cloud, &id, "fs_used_bytes").filter(|v| *v >= before + 48.0 * 1048576.0)
    });
    println!("fs_used_bytes {before} -> {after}");
    assert!(latest(&cloud, &id, "disk_write_bytes_total").is_some_and(|v| v > 64.0 * 1048576.0));
    // Network counters come from the guest agent's interface statistics.
    assert!(latest(&cloud, &id, "net_rx_bytes_total").is_some_and(|v| v > 0.0));

    // A Nagios plugin check with an alert rule that notifies a webhook.
    let (url, hooks) = webhook();
    let check = cloud
        .nubo_ok(&[
            "check",
            "create",
            &id,
            "--name",
            "web",
            "--interval",
            "2",
            "--retry-interval",
            "1",
            "--max-attempts",
            "3",
            "--",
            "check_http",
            "-H",
            "$HOSTADDRESS$",
            "-p",
            "$PORT:80$",
            "-u",
            "/",
        ])
        .trim()
        .to_string();
    cloud.nubo_ok(&[
        "alert",
        "rule",
        "create",
        "--name",
        "web-down",
        "--target",
        &id,
        "--check-state",
        "critical",
        "--webhook",
        &url,
    ]);
    let state = |c: &Cloud| c.nubo_json(&["check", "show", &check]);
    wait_until("the check to be OK", Duration::from_secs(60), || (state(&cloud)["state"] == "OK").then_some(()));
    assert!(state(&cloud)["perfdata"].as_str().unwrap().contains("time="), "check_http's perfdata");
    wait_until("perfdata as a metric", Duration::from_secs(30), || latest(&cloud, &id, "check_web_time"));

    // The web server stops: soft CRITICAL first, then hard, then one notification.
    sh(&cloud, &id, "killall httpd");
    let hard = wait_until("a hard CRITICAL", Duration::from_secs(60), || {
        let s = state(&cloud);
        (s["state"] == "CRITICAL" && s["state_type"] == "HARD").then_some(s)
    });
    let history = hard["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["state"] == "CRITICAL" && h["state_type"] == "SOFT"), "soft before hard: {hard}");
    wait_until("the webhook notification", Duration::from_secs(30), || {
        (!hooks.lock().unwrap().is_empty()).then_some(())
    });
    // Several more failing checks (three intervals' worth, seen in the
    // check's own last run): still exactly one notification.
    let hard_at = hard["last_check_ms"].as_i64().expect("the hard CRITICAL's check time");
    let interval_ms = hard["interval_secs"].as_i64().expect("the check's interval") * 1000;
    wait_until("three more failing checks", Duration::from_secs(60), || {
        let s = state(&cloud);
        assert_eq!(s["state"], "CRITICAL", "the check recovered: {s}");
        (s["last_check_ms"].as_i64()? >= hard_at + 3 * interval_ms).then_some(())
    });
    let firing: Vec<Value> = hooks.lock().unwrap().iter().filter(|h| h["state"] == "firing").cloned().collect();
    assert_eq!(firing.len(), 1, "notified once: {firing:?}");
    assert_eq!(firing[0]["target"], id.as_str());
    let alerts = cloud.nubo_json(&["alert", "list"]);
    let alert = alerts.as_array().unwrap().first().expect("a firing alert").clone();
    assert_eq!(alert["state"], "firing");
    let alert_id = alert["id"].as_str().unwrap();
    let acked = cloud.nubo_json(&["alert", "ack", alert_id]);
    assert_eq!(acked["acknowledged_by"], "admin");

    // It comes back: OK again, the alert resolved, one resolved notification.
    sh(&cloud, &id, "httpd -p 80 -h /www");
    wait_until("the check to recover", Duration::from_secs(60), || (state(&cloud)["state"] == "OK").then_some(()));
    wait_until("the resolved notification", Duration::from_secs(30), || {
        hooks.lock().unwrap().iter().any(|h| h["state"] == "resolved").then_some(())
    });
    assert_eq!(hooks.lock().unwrap().iter().filter(|h| h["state"] == "firing").count(), 1);
    let events = cloud.nubo_ok(&["event", "list"]);
    assert!(events.contains("alert_firing") && events.contains("alert_resolved"), "{events}");

    // /metrics: Prometheus' own parser and linter accept it.
    let text = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {}", cloud.token))
        .arg(format!("{}/metrics", cloud.url))
        .output()
        .unwrap()
        .stdout;
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(&format!("nubo_instance_cpu_percent{{instance=\"{id}\"")), "{text}");
    assert!(text.contains("# TYPE nubo_instance_disk_write_bytes_total counter"));
    let mut child = Command::new(nubo_testkit::prometheus_program("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh unpacks it into .cache/tools)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only operators scrape.
    let user = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{}/metrics", cloud.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&user.stdout), "401");
}
