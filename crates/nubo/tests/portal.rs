//! The web portals in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`), driven over WebDriver, against
//! `nubo up` with a real `tiny` VM under TCG.
//!
//! A member signs in with her password, launches an instance from the
//! form, watches it reach running on the page (the page refreshes
//! itself), reads her user-data's output on its console, sees its CPU
//! chart draw, and is refused the operator pages. An operator then signs
//! in, reads the hosts' heat map and bars, finds her instance among every
//! project's, acknowledges an alert and finds her launch in the audit log.
//!
//! Screenshots of each page go to the test's data directory, or to
//! docs/screenshots/ with NUBO_UPDATE_SCREENSHOTS=1. Without
//! /usr/bin/chromedriver the test fails, saying what to install
//! (scripts/install-deps.sh installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::json;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thirtyfour::prelude::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const BOOT: Duration = Duration::from_secs(180);

/// chromedriver in its own process group, so the browsers it starts go
/// with it when the test ends (or fails).
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(log).expect("chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let d = Driver { child, port };
        wait_until("chromedriver to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", d.port)).ok().map(drop)
        });
        d
    }

    async fn browser(&self) -> WebDriver {
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(CHROMIUM).unwrap();
        for arg in
            ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1366,900"]
        {
            caps.add_arg(arg).unwrap();
        }
        WebDriver::new(&format!("http://127.0.0.1:{}", self.port), caps).await.expect("a Chromium session")
    }
}

/// Polls `f` every 250 ms until it gives Some, or panics after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where screenshots go.
fn shots(cloud: &Cloud) -> PathBuf {
    if std::env::var_os("NUBO_UPDATE_SCREENSHOTS").is_some() {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
    } else {
        cloud.data_dir().join("screenshots")
    }
}

async fn shot(b: &WebDriver, dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    b.screenshot(&dir.join(format!("{name}.png"))).await.expect("screenshot");
}

async fn sign_in(b: &WebDriver, url: &str, user: &str, password: &str) {
    b.goto(&format!("{url}/ui/instances")).await.unwrap();
    // Not signed in: the portal sends us to its sign-in page.
    assert!(b.current_url().await.unwrap().path().starts_with("/ui/login"));
    b.find(By::Name("username")).await.unwrap().send_keys(user).await.unwrap();
    b.find(By::Name("password")).await.unwrap().send_keys(password).await.unwrap();
    b.find(By::Css("#login-form button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for("the instances page after signing in", Duration::from_secs(20), || async {
        let url = b.current_url().await.ok()?;
        (url.path() == "/ui/instances").then_some(())
    })
    .await;
}

async fn text_of(b: &WebDriver, css: &str) -> Option<String> {
    b.find(By::Css(css)).await.ok()?.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_launches_and_watches_an_instance_and_operator_runs_the_cloud() {
    assert!(
        Path::new(CHROMEDRIVER).exists(),
        "{CHROMEDRIVER} is not installed: apt-get install chromium chromium-driver (scripts/install-deps.sh does)"
    );
    let cloud = Cloud::up();
    let dir = shots(&cloud);
    cloud.api_post("/api/v1/users", r#"{"name": "alice", "password": "alice-password"}"#);
    cloud.nubo_ok(&["project", "add-member", "default", "alice", "--role", "member"]);
    cloud.api_post("/api/v1/users", r#"{"name": "ops", "password": "ops-password", "admin": true}"#);

    let driver = Driver::start(&cloud.data_dir().join("chromedriver.log"));
    let b = driver.browser().await;

    // ---- the member ----
    b.goto(&format!("{}/ui/login", cloud.url)).await.unwrap();
    shot(&b, &dir, "login").await;
    sign_in(&b, &cloud.url, "alice", "alice-password").await;
    b.find(By::LinkText("Launch instance")).await.unwrap().click().await.unwrap();
    b.find(By::Name("name")).await.unwrap().send_keys("portal-web").await.unwrap();
    let user_data = b.find(By::Name("user_data")).await.unwrap();
    user_data
        .send_keys("#!/bin/sh\necho portal-hello-$((6*7))\nmkdir -p /www\necho portal-lb-ok > /www/index.html\nhttpd -p 80 -h /www\n")
        .await
        .unwrap();
    b.find(By::Name("ports")).await.unwrap().send_keys("80").await.unwrap();
    shot(&b, &dir, "launch").await;
    b.find(By::Css("#launch-form button[type=submit]")).await.unwrap().click().await.unwrap();
    let id = wait_for("the instance's page", Duration::from_secs(20), || async {
        let url = b.current_url().await.ok()?;
        url.path().strip_prefix("/ui/instances/i-").map(|rest| format!("i-{rest}"))
    })
    .await;
    let started = Instant::now();
    // The page refreshes its state by itself: no reload here.
    wait_for("the page to show running", BOOT, || async {
        let state = b.find(By::Css("#status .badge")).await.ok()?.attr("data-state").await.ok()??;
        assert_ne!(state, "error", "{}", cloud.console(&id));
        (state == "running").then_some(())
    })
    .await;
    println!("running on the page {:.1} s after the launch form was sent", started.elapsed().as_secs_f64());
    let console = wait_for("the user-data's output on the page's console", BOOT, || async {
        text_of(&b, "#console").await.filter(|t| t.contains("portal-hello-42"))
    })
    .await;
    assert!(!console.contains("$((6*7))"), "the console shows the script, not its output");
    // A CPU chart with a line, drawn from the monitoring samples.
    wait_for("a line in the CPU chart", Duration::from_secs(90), || async {
        let lines = b.find_all(By::Css("figure[data-metric=cpu_percent] path.series")).await.ok()?;
        (!lines.is_empty()).then_some(())
    })
    .await;
    shot(&b, &dir, "instance").await;
    b.goto(&format!("{}/ui/instances", cloud.url)).await.unwrap();
    let row = text_of(&b, &format!("tr[data-instance='{id}']")).await.expect("the instance in the list");
    assert!(row.contains("portal-web") && row.contains("running"), "{row}");
    shot(&b, &dir, "instances").await;

    // The network pages: the instance page's addresses name its networks,
    // and the networks page lists the instance on each of them.
    b.goto(&format!("{}/ui/instances/{id}", cloud.url)).await.unwrap();
    let addresses = text_of(&b, "#addresses").await.expect("the instance's addresses");
    b.find(By::LinkText("Networks")).await.unwrap().click().await.unwrap();
    b.find(By::Css("#network-form")).await.expect("the create form on the networks page");
    for row in b.find_all(By::Css("#networks tbody tr[data-network]")).await.unwrap() {
        let name = row.attr("data-network").await.unwrap().unwrap_or_default();
        let text = row.text().await.unwrap();
        assert_eq!(addresses.contains(&name), text.contains("portal-web"), "{name}: {text} (instance: {addresses})");
    }
    b.find(By::LinkText("Floating IPs")).await.unwrap().click().await.unwrap();
    assert!(text_of(&b, "main").await.unwrap_or_default().contains("Allocate a floating IP"));
    b.find(By::LinkText("Security groups")).await.unwrap().click().await.unwrap();
    let groups = text_of(&b, "#security-groups").await.expect("the security groups");
    assert!(groups.contains("default"), "{groups}");

    // A load balancer in front of it, made with the form; the page shows
    // the backend come up, and the balancer serves the guest's page.
    b.find(By::LinkText("Load balancers")).await.unwrap().click().await.unwrap();
    b.find(By::Css("#balancer-form input[name=name]")).await.unwrap().send_keys("portal-lb").await.unwrap();
    b.find(By::Css(format!("#balancer-form input[name='target:{id}']"))).await.unwrap().click().await.unwrap();
    b.find(By::Css("#balancer-form input[name=check_interval]")).await.unwrap().send_keys("1").await.unwrap();
    b.find(By::Css("#balancer-form button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for("the backend up on the balancer's page", Duration::from_secs(60), || async {
        let state =
            b.find(By::Css(format!("tr[data-backend='{id}'] .badge"))).await.ok()?.attr("data-state").await.ok()??;
        (state == "up").then_some(())
    })
    .await;
    let listen = text_of(&b, "dl.facts").await.unwrap_or_default();
    let addr = listen
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no listen address on the page: {listen}"))
        .to_string();
    let page = reqwest::get(format!("http://{addr}/")).await.unwrap().text().await.unwrap();
    assert_eq!(page.trim(), "portal-lb-ok");
    shot(&b, &dir, "balancer").await;

    // The operator pages refuse her, and show nothing of themselves.
    for page in ["hosts", "instances", "alerts", "audit", "projects", "users"] {
        b.goto(&format!("{}/ui/admin/{page}", cloud.url)).await.unwrap();
        let refusal = text_of(&b, "p.error").await.unwrap_or_default();
        assert!(refusal.contains("the operator portal is for operators"), "{page}: {refusal}");
        let status = b.find(By::Css("p.error")).await.unwrap().attr("data-status").await.unwrap();
        assert_eq!(status.as_deref(), Some("403"));
        assert!(b.find_all(By::Css("table.list, svg.heatmap")).await.unwrap().is_empty(), "{page} leaked");
        if page == "hosts" {
            shot(&b, &dir, "refused").await;
        }
    }
    b.goto(&format!("{}/ui/instances", cloud.url)).await.unwrap();
    b.find(By::Css("form[action='/ui/logout'] button")).await.unwrap().click().await.unwrap();
    wait_for("the sign-in page after signing out", Duration::from_secs(10), || async {
        (b.current_url().await.ok()?.path() == "/ui/login").then_some(())
    })
    .await;

    // ---- the operator ----
    sign_in(&b, &cloud.url, "ops", "ops-password").await;
    b.goto(&format!("{}/ui/admin/hosts", cloud.url)).await.unwrap();
    b.find(By::Css("svg.heatmap rect[data-host='test-host']")).await.expect("the host in the heat map");
    let host = text_of(&b, "#hosts tr[data-host='test-host']").await.unwrap();
    assert!(host.contains("vCPU") && host.contains("Memory") && host.contains("up"), "{host}");
    shot(&b, &dir, "hosts").await;

    b.goto(&format!("{}/ui/admin/instances", cloud.url)).await.unwrap();
    let row = text_of(&b, &format!("tr[data-instance='{id}']")).await.expect("alice's instance among all");
    assert!(row.contains("default"), "the project column: {row}");
    shot(&b, &dir, "all-instances").await;

    // An alert that fires at once; the operator acknowledges it.
    let rule = json!({"name": "busy", "kind": "metric", "target": id, "metric": "cpu_percent",
        "op": ">=", "threshold": 0, "for_secs": 0});
    cloud.api_post("/api/v1/alert-rules", &rule.to_string());
    let alert = wait_until("the alert to fire", Duration::from_secs(60), || {
        let list = cloud.api_get("/api/v1/alerts").ok()?;
        list.as_array()?
            .iter()
            .find(|a| a["state"] == "firing")
            .map(|a| a["id"].as_str().unwrap_or_default().to_string())
    });
    b.goto(&format!("{}/ui/admin/alerts", cloud.url)).await.unwrap();
    b.find(By::Css(format!("tr[data-alert='{alert}'] form[action*='acknowledge'] button")))
        .await
        .expect("an Acknowledge button")
        .click()
        .await
        .unwrap();
    let acked = wait_for("the alert to show who acknowledged it", Duration::from_secs(10), || async {
        text_of(&b, &format!("tr[data-alert='{alert}']")).await.filter(|t| t.contains("ops"))
    })
    .await;
    assert!(!acked.contains("Acknowledge\n"), "{acked}");
    assert_eq!(cloud.api_get(&format!("/api/v1/alerts/{alert}")).unwrap()["acknowledged_by"], "ops");
    shot(&b, &dir, "alerts").await;

    b.goto(&format!("{}/ui/admin/audit", cloud.url)).await.unwrap();
    let audit = text_of(&b, "#audit").await.unwrap();
    assert!(audit.contains("alice") && audit.contains("POST /ui/instances"), "{audit}");
    assert!(audit.contains("ops") && audit.contains("acknowledge"), "{audit}");
    shot(&b, &dir, "audit").await;
    b.goto(&format!("{}/ui/admin/projects", cloud.url)).await.unwrap();
    assert!(text_of(&b, "#projects").await.unwrap().contains("default"));
    shot(&b, &dir, "projects").await;

    b.quit().await.unwrap();
}
