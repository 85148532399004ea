//! The interactive serial console on a real `tiny` VM (TCG) under `nubo
//! up`: `nubo instance console ID --attach` in a real terminal (tmux),
//! typing `echo $((6*7))` and reading `42` back, detaching with Ctrl-];
//! a reader-role user attached at the same time watches the same output,
//! but what they type never reaches the guest; and the portal's console
//! page in headless Chromium, typing into xterm.js. And the graphical
//! console's relay, through the real agent, to a fake VNC server on the
//! VM's `vnc.sock`, admitted once by its ticket. And the graphical console
//! of a VM with a display, in noVNC: the guest's screen in the page (a
//! screenshot, kept in docs/screenshots/ with NUBO_UPDATE_SCREENSHOTS=1)
//! and keys typed there reaching the guest.
//!
//! Needs tmux, Debian's chromium and chromium-driver, and the portal's
//! browser libraries in .cache/web (scripts/install-deps.sh installs all
//! three; scripts/web-assets.sh the last alone).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use thirtyfour::prelude::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const BOOT: Duration = Duration::from_secs(180);

/// A tmux server of this test's own (its socket named after the test's
/// process), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux { socket: format!("nubo-console-test-{}", std::process::id()) }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is not installed: apt-get install tmux (scripts/install-deps.sh does)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 120x40 terminal named `name` running `command` (then its exit
    /// status, and a wait so the pane stays to be read).
    fn start(&self, name: &str, command: &str) {
        let shell = format!("{command}; echo EXIT=$?; sleep 600");
        self.run(&["new-session", "-d", "-s", name, "-x", "120", "-y", "40", &shell]);
    }

    fn pane(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name, "-S", "-200"])
    }

    fn wait_pane(&self, name: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
        wait_until(what, Duration::from_secs(60), || {
            let p = self.pane(name);
            f(&p).then_some(p)
        })
    }

    fn type_line(&self, name: &str, line: &str) {
        self.run(&["send-keys", "-t", name, "-l", line]);
        self.run(&["send-keys", "-t", name, "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
    }
}

/// Whether a line of `pane` is exactly `text` (not the command that printed it).
fn has_line(pane: &str, text: &str) -> bool {
    pane.lines().any(|l| l.trim() == text)
}

fn attach_command(cloud: &Cloud, token: &str, id: &str) -> String {
    format!("env NUBO_URL={} NUBO_TOKEN={token} {} instance console {id} --attach", cloud.url, nubo_bin())
}

/// A session token of `user` (who signs in with `password`).
fn login(cloud: &Cloud, user: &str, password: &str) -> String {
    use std::io::{Read, Write};
    let addr = cloud.url.trim_start_matches("http://");
    let body = format!(r#"{{"username": "{user}", "password": "{password}"}}"#);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!(
        "POST /api/v1/auth/login HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let json = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {resp}"));
    v["token"].as_str().unwrap_or_else(|| panic!("no token: {resp}")).to_string()
}

/// A graphical console ticket of the user whose token is `token`.
fn cloud_post_ticket(cloud: &Cloud, token: &str, id: &str) -> String {
    use std::io::{Read, Write};
    let addr = cloud.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let req = format!(
        "POST /api/v1/instances/{id}/console/vnc-ticket HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let json = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {resp}"));
    v["ticket"].as_str().unwrap_or_else(|| panic!("no ticket: {resp}")).to_string()
}

fn web_assets() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/web");
    assert!(
        dir.join("node_modules/@xterm/xterm/lib/xterm.js").is_file(),
        "{} has no xterm.js: run scripts/web-assets.sh (scripts/install-deps.sh does)",
        dir.display()
    );
    dir
}

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
        use std::os::unix::process::CommandExt;
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

async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_into_the_serial_console_from_the_cli_and_the_portal() {
    assert!(
        Path::new(CHROMEDRIVER).exists(),
        "{CHROMEDRIVER} is not installed: apt-get install chromium chromium-driver (scripts/install-deps.sh does)"
    );
    let assets = web_assets();
    let cloud = Cloud::up_with(&["--web-assets", assets.to_str().unwrap()]);
    cloud.api_post("/api/v1/users", r#"{"name": "alice", "password": "alice-password"}"#);
    cloud.nubo_ok(&["project", "add-member", "default", "alice", "--role", "member"]);
    cloud.api_post("/api/v1/users", r#"{"name": "rita", "password": "rita-password"}"#);
    cloud.nubo_ok(&["project", "add-member", "default", "rita", "--role", "reader"]);
    let alice = login(&cloud, "alice", "alice-password");
    let rita = login(&cloud, "rita", "rita-password");
    let id = cloud
        .nubo_ok(&["instance", "run", "--image", "tiny", "--vcpus", "1", "--memory", "192", "--name", "c", "--wait"])
        .trim()
        .to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);

    // ---- the CLI, in a real terminal ----
    let tmux = Tmux::new();
    tmux.start("member", &attach_command(&cloud, &alice, &id));
    tmux.start("reader", &attach_command(&cloud, &rita, &id));
    tmux.wait_pane("member", "the member's console to attach", |p| p.contains("Detach with Ctrl-]"));
    tmux.wait_pane("reader", "the reader's console to attach", |p| p.contains("connected read-only"));
    // A prompt, then the sum.
    tmux.type_line("member", "");
    tmux.type_line("member", "echo $((6*7))");
    tmux.wait_pane("member", "42 in the member's terminal", |p| has_line(p, "42"));
    // The reader watches the same console...
    tmux.wait_pane("reader", "42 in the reader's terminal too", |p| has_line(p, "42"));
    // ...but what they type never reaches the guest.
    tmux.type_line("reader", "touch /tmp/reader-was-here");
    tmux.wait_pane("reader", "the read-only notice", |p| p.contains("[nubo] read-only"));
    tmux.type_line("member", "test -e /tmp/reader-was-here && echo IN$((1+1)) || echo OUT$((2+3))");
    let member = tmux
        .wait_pane("member", "the member's check of the reader's file", |p| has_line(p, "OUT5") || has_line(p, "IN2"));
    assert!(has_line(&member, "OUT5"), "the reader's input reached the guest:\n{member}");
    assert!(!member.contains("touch /tmp/reader-was-here"), "the reader's keys were echoed by the guest:\n{member}");
    // Ctrl-] detaches, and the CLI exits cleanly with the terminal restored.
    tmux.run(&["send-keys", "-t", "member", "C-]"]);
    let done = tmux.wait_pane("member", "the CLI to exit", |p| p.contains("EXIT="));
    assert!(done.contains("Detached from") && has_line(&done, "EXIT=0"), "{done}");
    let stty = tmux.run(&["send-keys", "-t", "reader", "C-]"]);
    drop(stty);
    tmux.wait_pane("reader", "the reader's CLI to exit", |p| has_line(p, "EXIT=0"));

    // ---- the graphical console's relay, to a fake VNC server ----
    // (QEMU's VNC server on the VM's vnc.sock comes with the `display`
    // option; here a socket server of the test's own stands in for it.)
    let sock = cloud.agent_dir().join("instances").join(&id).join("vnc.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fake_vnc = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"RFB 003.008\n").unwrap();
        let mut hello = [0u8; 12];
        s.read_exact(&mut hello).unwrap();
        hello
    });
    let client = nubo_client::Client::new(&cloud.url, &alice).unwrap();
    let ticket = cloud_post_ticket(&cloud, &alice, &id);
    let upgraded = client.websocket(&format!("/api/v1/instances/{id}/console/vnc?ticket={ticket}")).await.unwrap();
    let mut vnc = tokio_tungstenite::WebSocketStream::from_raw_socket(
        upgraded,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let greeting = tokio::time::timeout(Duration::from_secs(30), vnc.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(greeting, Message::Binary(b"RFB 003.008\n".to_vec().into()));
    vnc.send(Message::Binary(b"RFB 003.008\n".to_vec().into())).await.unwrap();
    assert_eq!(&fake_vnc.join().unwrap(), b"RFB 003.008\n", "the viewer's bytes reached the VM's VNC socket");
    drop(vnc);
    // The ticket was spent.
    let again = client.websocket(&format!("/api/v1/instances/{id}/console/vnc?ticket={ticket}")).await;
    assert!(again.is_err());
    std::fs::remove_file(&sock).unwrap();

    // ---- the portal, in headless Chromium ----
    let driver = Driver::start(&cloud.data_dir().join("chromedriver.log"));
    let b = driver.browser().await;
    b.goto(&format!("{}/ui/login", cloud.url)).await.unwrap();
    b.find(By::Name("username")).await.unwrap().send_keys("alice").await.unwrap();
    b.find(By::Name("password")).await.unwrap().send_keys("alice-password").await.unwrap();
    b.find(By::Css("#login-form button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for("the instances page after signing in", Duration::from_secs(20), || async {
        (b.current_url().await.ok()?.path() == "/ui/instances").then_some(())
    })
    .await;
    b.goto(&format!("{}/ui/instances/{id}", cloud.url)).await.unwrap();
    b.find(By::LinkText("Open the interactive console")).await.unwrap().click().await.unwrap();
    let started = Instant::now();
    loop {
        let status = b.find(By::Id("console-status")).await.expect("the console's status line");
        if status.attr("data-event").await.unwrap().as_deref() == Some("ready") {
            break;
        }
        let text = status.text().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "the terminal did not connect: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let keys = b.find(By::Css(".xterm-helper-textarea")).await.expect("xterm's input");
    keys.send_keys("echo $((6*7))").await.unwrap();
    keys.send_keys(Key::Enter).await.unwrap();
    let rows = wait_for("42 in the page's terminal", Duration::from_secs(30), || async {
        let text = b.find(By::Css(".xterm-rows")).await.ok()?.text().await.ok()?;
        has_line(&text, "42").then_some(text)
    })
    .await;
    assert!(rows.contains("echo $((6*7))"), "{rows}");
    b.screenshot(&cloud.data_dir().join("console.png")).await.unwrap();
    b.quit().await.unwrap();
}

/// Where the graphical console's screenshot goes: docs/screenshots/ when
/// NUBO_UPDATE_SCREENSHOTS=1, else the cloud's data directory.
fn screenshot_path(cloud: &Cloud) -> PathBuf {
    if std::env::var("NUBO_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots/graphical-console.png")
    } else {
        cloud.data_dir().join("graphical-console.png")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphical_console_shows_the_guests_screen_and_takes_keys() {
    assert!(
        Path::new(CHROMEDRIVER).exists(),
        "{CHROMEDRIVER} is not installed: apt-get install chromium chromium-driver (scripts/install-deps.sh does)"
    );
    let assets = web_assets();
    let cloud = Cloud::up_with(&["--web-assets", assets.to_str().unwrap()]);
    cloud.api_post("/api/v1/users", r#"{"name": "alice", "password": "alice-password"}"#);
    cloud.nubo_ok(&["project", "add-member", "default", "alice", "--role", "member"]);
    let id = cloud
        .nubo_ok(&[
            "instance",
            "run",
            "--image",
            "tiny",
            "--vcpus",
            "1",
            "--memory",
            "192",
            "--name",
            "g",
            "--display",
            "--wait",
        ])
        .trim()
        .to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);

    let driver = Driver::start(&cloud.data_dir().join("chromedriver-screen.log"));
    let b = driver.browser().await;
    b.goto(&format!("{}/ui/login", cloud.url)).await.unwrap();
    b.find(By::Name("username")).await.unwrap().send_keys("alice").await.unwrap();
    b.find(By::Name("password")).await.unwrap().send_keys("alice-password").await.unwrap();
    b.find(By::Css("#login-form button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for("the instances page after signing in", Duration::from_secs(20), || async {
        (b.current_url().await.ok()?.path() == "/ui/instances").then_some(())
    })
    .await;
    b.goto(&format!("{}/ui/instances/{id}", cloud.url)).await.unwrap();
    b.find(By::LinkText("Open the graphical console")).await.unwrap().click().await.unwrap();
    wait_for("noVNC to connect", Duration::from_secs(30), || async {
        let status = b.find(By::Id("console-status")).await.ok()?;
        (status.attr("data-event").await.ok()?.as_deref() == Some("ready")).then_some(())
    })
    .await;
    // The guest's screen, as noVNC drew it: a canvas with more than one
    // colour in it (the shell's text on the VGA console), not a blank one.
    let canvas = b.find(By::Css("#screen canvas")).await.expect("noVNC's canvas");
    let colours = || async {
        let v = b
            .execute(
                r#"const c = document.querySelector('#screen canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   const seen = new Set();
                   for (let i = 0; i < d.length && seen.size < 50; i += 4) seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]);
                   return [c.width, c.height, seen.size];"#,
                vec![],
            )
            .await
            .ok()?;
        let v: Vec<u64> = v.convert().ok()?;
        (v[0] >= 640 && v[1] >= 400 && v[2] >= 2).then_some(v)
    };
    wait_for("the guest's screen in the page", Duration::from_secs(30), colours).await;
    // Keys typed into the page reach the guest's shell on the VGA console.
    canvas.click().await.unwrap();
    // Unshifted keys only: WebDriver's synthetic key events carry no
    // physical key code, and QEMU's keysym-to-scancode fallback maps a
    // shifted `>` to the `<` key of a 102-key keyboard.
    let line = "mkdir /tmp/typed-on-screen";
    b.action_chain().send_keys(line).perform().await.unwrap();
    // U+E007: WebDriver's code for the Enter key.
    b.action_chain().send_keys("\u{E007}").perform().await.unwrap();
    wait_until("the typed command to run in the guest", Duration::from_secs(60), || {
        let (code, out) = guest(&cloud, &id, "test -d /tmp/typed-on-screen && echo made-by-keys || true");
        (code == 0 && out.contains("made-by-keys")).then_some(())
    });
    // Let noVNC draw the command's line before the picture is taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.screenshot(&screenshot_path(&cloud)).await.unwrap();
    b.quit().await.unwrap();
}
