//! The console relay through a real loopback server: a viewer's websocket,
//! a fake agent that joins the session with its two streams and echoes
//! like a guest's shell, who may type (members) and who may only watch
//! (readers), another project's instance kept out, the audit of writable
//! consoles, cookie websockets from other sites, and the graphical
//! console's tickets.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::T;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

struct Cloud {
    t: T,
    addr: std::net::SocketAddr,
    host: String,
    cred: String,
    member: String,
    instance: String,
    /// Every byte the fake guest received, in order.
    typed: Arc<Mutex<Vec<u8>>>,
}

/// A server on loopback with a host, a member and a reader of project
/// `p1`, a running instance of `p1`, and a fake agent that joins every
/// console session: the guest it fakes prints `login: ` at once and
/// echoes each byte it receives (as a shell's terminal does).
async fn cloud() -> Cloud {
    cloud_with(None).await
}

async fn cloud_with(web_assets: Option<std::path::PathBuf>) -> Cloud {
    let t = T::with(|c| c.web_assets = web_assets).await;
    let (host, cred) = t.add_host_with_id().await;
    let member = t.user("alice", "p1", "member").await;
    let v = t
        .ok(
            "POST",
            "/api/v1/instances",
            &member,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let instance = v["id"].as_str().unwrap().to_string();
    let report = json!({"instances": [{"id": instance, "power": "running", "pid": 1, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report)).await;
    assert_eq!(t.ok("GET", &format!("/api/v1/instances/{instance}"), &member, None).await["state"], "running");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(nubo_controlplane::serve(t.ctx.clone(), listener));
    let typed = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(fake_agent(format!("http://{addr}"), host.to_string(), cred.clone(), typed.clone()));
    Cloud { t, addr, host: host.to_string(), cred, member, instance, typed }
}

async fn fake_agent(base: String, host: String, cred: String, typed: Arc<Mutex<Vec<u8>>>) {
    let http = reqwest::Client::new();
    let mut joined = std::collections::HashSet::new();
    loop {
        let d: Value = http
            .get(format!("{base}/api/v1/agent/hosts/{host}/desired"))
            .bearer_auth(&cred)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for s in d["console_sessions"].as_array().unwrap() {
            let id = s["id"].as_str().unwrap().to_string();
            if !joined.insert(id.clone()) {
                continue;
            }
            let (http, base, host, cred, typed) =
                (http.clone(), base.clone(), host.clone(), cred.clone(), typed.clone());
            tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
                tx.send(b"login: ".to_vec()).await.unwrap();
                let body = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
                });
                let out = http
                    .post(format!("{base}/api/v1/agent/hosts/{host}/consoles/{id}/output"))
                    .bearer_auth(&cred)
                    .body(reqwest::Body::wrap_stream(body))
                    .send();
                let input = async {
                    let resp = http
                        .get(format!("{base}/api/v1/agent/hosts/{host}/consoles/{id}/input"))
                        .bearer_auth(&cred)
                        .send()
                        .await
                        .unwrap();
                    assert!(resp.status().is_success());
                    let mut body = resp.bytes_stream();
                    while let Some(Ok(chunk)) = body.next().await {
                        typed.lock().unwrap().extend_from_slice(&chunk);
                        if tx.send(chunk.to_vec()).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! { _ = out => {}, _ = input => {} }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cloud {
    /// A websocket to `path` with `headers`; the HTTP status of a refusal.
    async fn ws(&self, path: &str, headers: &[(&'static str, String)]) -> Result<Ws, u16> {
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket to {path}: {e}"),
        }
    }

    async fn serial(&self, token: &str) -> Result<Ws, u16> {
        let path = format!("/api/v1/instances/{}/console/ws", self.instance);
        self.ws(&path, &[("authorization", format!("Bearer {token}"))]).await
    }
}

/// The next notice (text message) on `ws`, skipping output.
async fn notice(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Binary(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Output read from `ws` until it contains `want`.
async fn read_until(ws: &mut Ws, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(_)))) => {}
            other => panic!("waiting for {want:?} after {seen:?}: {other:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn a_member_types_into_the_console_and_it_is_audited() {
    let c = cloud().await;
    let mut ws = c.serial(&c.member).await.unwrap();
    let ready = notice(&mut ws).await;
    assert_eq!((ready["event"].as_str(), ready["writable"].as_bool()), (Some("ready"), Some(true)), "{ready}");
    read_until(&mut ws, "login: ").await;
    ws.send(Message::Binary(b"echo $((6*7))\r".to_vec().into())).await.unwrap();
    read_until(&mut ws, "echo $((6*7))\r").await;
    assert_eq!(c.typed.lock().unwrap().as_slice(), b"echo $((6*7))\r");
    let audit = c.t.audit().await;
    let entry = audit
        .iter()
        .find(|e| e["path"].as_str().unwrap().contains("writable serial console opened"))
        .expect("a writable console is audited");
    assert_eq!(entry["actor"], "alice");
    assert!(entry["path"].as_str().unwrap().contains(&c.instance));
    assert!(entry["at_ms"].as_i64().unwrap() > 0, "when: {entry}");

    // Closing the websocket ends the session: it leaves the host's desired state.
    ws.close(None).await.unwrap();
    let path = format!("/api/v1/agent/hosts/{}/desired", c.host);
    for _ in 0..100 {
        let d = c.t.ok("GET", &path, &c.cred, None).await;
        if d["console_sessions"].as_array().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the session stayed in the desired state after its viewer left");
}

#[tokio::test]
async fn a_reader_watches_but_the_guest_never_gets_their_input() {
    let c = cloud().await;
    let reader = c.t.user("rita", "p1", "reader").await;
    let mut ws = c.serial(&reader).await.unwrap();
    let ready = notice(&mut ws).await;
    assert_eq!(ready["writable"], false, "{ready}");
    assert!(ready["message"].as_str().unwrap().contains("read-only"), "{ready}");
    // Several viewers at once: the member's session is open too.
    let mut member = c.serial(&c.member).await.unwrap();
    notice(&mut member).await;
    read_until(&mut ws, "login: ").await;
    ws.send(Message::Binary(b"rm -rf /\r".to_vec().into())).await.unwrap();
    let told = notice(&mut ws).await;
    assert_eq!(told["event"], "read-only", "{told}");
    member.send(Message::Binary(b"true\r".to_vec().into())).await.unwrap();
    read_until(&mut member, "true\r").await;
    assert_eq!(c.typed.lock().unwrap().as_slice(), b"true\r", "only the member's input reached the guest");
    let audit = c.t.audit().await;
    let opened = |e: &&Value| e["path"].as_str().unwrap().contains("console opened");
    assert!(
        !audit.iter().filter(opened).any(|e| e["actor"] == "rita"),
        "a read-only console is not a write: {audit:?}"
    );
    assert!(audit.iter().filter(opened).any(|e| e["actor"] == "alice"));
}

#[tokio::test]
async fn another_project_or_nobody_or_another_site_is_kept_out() {
    let c = cloud().await;
    let olga = c.t.user("olga", "p2", "member").await;
    assert_eq!(c.serial(&olga).await.err(), Some(404), "another project's instance does not exist for them");
    let path = format!("/api/v1/instances/{}/console/ws", c.instance);
    assert_eq!(c.ws(&path, &[]).await.err(), Some(401));
    assert_eq!(c.serial("nubo_not-a-token").await.err(), Some(401));
    // The portal's cookie: only from the portal's own pages.
    let cookie = ("cookie", format!("nubo_session={}", c.member));
    let evil = ("origin", "http://evil.example".to_string());
    assert_eq!(c.ws(&path, &[cookie.clone(), evil]).await.err(), Some(403));
    assert_eq!(c.ws(&path, std::slice::from_ref(&cookie)).await.err(), Some(403), "no Origin");
    let ours = ("origin", format!("http://{}", c.addr));
    let mut ws = c.ws(&path, &[cookie.clone(), ours.clone()]).await.unwrap();
    assert_eq!(notice(&mut ws).await["writable"], true);
    // Where the portal's pages open it (over HTTP its cookie is sent only under /ui).
    let ui = format!("/ui/instances/{}/console/ws", c.instance);
    assert_eq!(c.ws(&ui, &[cookie.clone(), ("origin", "http://evil.example".to_string())]).await.err(), Some(403));
    let mut ws = c.ws(&ui, &[cookie, ours]).await.unwrap();
    assert_eq!(notice(&mut ws).await["writable"], true);
    // A stopped instance has no console, and the error says what to do.
    let bad = format!("/api/v1/instances/{}/console/ws", "i-00000000000000000000000000000000");
    let refused = c.ws(&bad, &[("authorization", format!("Bearer {}", c.member))]).await.err();
    assert!(matches!(refused, Some(400 | 404)), "{refused:?}");
    // An agent cannot take another host's session.
    let (_, other_cred) = c.t.add_host_with_id().await;
    let d = c.t.ok("GET", &format!("/api/v1/agent/hosts/{}/desired", c.host), &c.cred, None).await;
    let sid = d["console_sessions"][0]["id"].as_str().unwrap().to_string();
    let (s, _) =
        c.t.call("GET", &format!("/api/v1/agent/hosts/{}/consoles/{sid}/input", c.host), Some(&other_cred), None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn a_graphical_console_ticket_admits_once_its_user() {
    let c = cloud().await;
    let ticket_path = format!("/api/v1/instances/{}/console/vnc-ticket", c.instance);
    let reader = c.t.user("rita", "p1", "reader").await;
    let (s, v) = c.t.call("POST", &ticket_path, Some(&reader), None).await;
    assert_eq!(s, 403, "{v}");
    assert!(v.to_string().contains("the graphical console needs it"), "{v}");
    let olga = c.t.user("olga", "p2", "member").await;
    assert_eq!(c.t.call("POST", &ticket_path, Some(&olga), None).await.0, 404);

    let t = c.t.ok("POST", &ticket_path, &c.member, None).await;
    assert_eq!(t["expires_in_secs"], 30);
    let path = t["path"].as_str().unwrap().to_string();
    let auth = |tok: &str| vec![("authorization", format!("Bearer {tok}"))];
    // Another member of the project cannot use alice's ticket (and spends it).
    let bob = c.t.user("bob", "p1", "member").await;
    let stolen = c.t.ok("POST", &ticket_path, &c.member, None).await["path"].as_str().unwrap().to_string();
    assert_eq!(c.ws(&stolen, &auth(&bob)).await.err(), Some(403));
    assert_eq!(c.ws(&stolen, &auth(&c.member)).await.err(), Some(403), "a refused attempt spent it");

    let mut ws = c.ws(&path, &auth(&c.member)).await.unwrap();
    // Binary only (RFB): the fake guest's first bytes, then an echo.
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first, Message::Binary(b"login: ".to_vec().into()));
    ws.send(Message::Binary(vec![3, 0, 0, 0].into())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo, Message::Binary(vec![3, 0, 0, 0].into()));
    // Used once: not again.
    assert_eq!(c.ws(&path, &auth(&c.member)).await.err(), Some(403));
    let audit = c.t.audit().await;
    assert!(audit.iter().any(|e| e["path"].as_str().unwrap().contains("writable graphical console opened")));
}

#[tokio::test]
async fn the_portal_console_pages_load_their_libraries_or_say_what_to_run() {
    let assets = tempfile::tempdir().unwrap();
    let c = cloud_with(Some(assets.path().to_path_buf())).await;
    let http = reqwest::Client::new();
    let get = |path: String, token: String| {
        let http = http.clone();
        let url = format!("http://{}{path}", c.addr);
        async move {
            let r = http.get(url).header("cookie", format!("nubo_session={token}")).send().await.unwrap();
            let csp = r.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), r.text().await.unwrap(), csp)
        }
    };
    let page = format!("/ui/instances/{}/terminal", c.instance);
    // Without the libraries: the page says what to run.
    let (s, body, _) = get(page.clone(), c.member.clone()).await;
    assert_eq!(s, 200);
    assert!(body.contains("scripts/web-assets.sh") && body.contains("--web-assets"), "{body}");
    assert!(!body.contains("console.js"));
    let screen = format!("/ui/instances/{}/screen", c.instance);
    assert!(get(screen.clone(), c.member.clone()).await.1.contains("scripts/web-assets.sh"));

    // With them: the terminal, its websocket, and the files served.
    let xterm = assets.path().join("node_modules/@xterm/xterm");
    std::fs::create_dir_all(xterm.join("lib")).unwrap();
    std::fs::create_dir_all(xterm.join("css")).unwrap();
    std::fs::write(xterm.join("lib/xterm.js"), "window.Terminal = function () {};").unwrap();
    std::fs::write(xterm.join("css/xterm.css"), ".xterm {}").unwrap();
    let (s, body, csp) = get(page.clone(), c.member.clone()).await;
    assert_eq!(s, 200);
    assert!(body.contains(&format!("/ui/instances/{}/console/ws", c.instance)), "{body}");
    assert!(body.contains("/ui/vendor/@xterm/xterm/lib/xterm.js") && body.contains("/ui/static/console.js"));
    assert!(!body.contains("watch this console, not type"), "a member may type");
    let csp = csp.unwrap();
    assert!(csp.contains("script-src 'self';") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let (s, js, _) = get("/ui/vendor/@xterm/xterm/lib/xterm.js".into(), c.member.clone()).await;
    assert_eq!((s, js.as_str()), (200, "window.Terminal = function () {};"));
    assert_eq!(get("/ui/static/console.js".into(), c.member.clone()).await.0, 200);
    // Nothing outside the libraries' directory.
    std::fs::write(assets.path().join("secret"), "no").unwrap();
    for p in ["/ui/vendor/../secret", "/ui/vendor/%2e%2e/secret", "/ui/vendor/..%2fsecret"] {
        let (s, body, _) = get(p.into(), c.member.clone()).await;
        assert!(s == 404 || s == 400, "{p}: {s} {body}");
        assert_ne!(body, "no");
    }
    // A reader is told they only watch; another project's instance does not exist.
    let reader = c.t.user("rita", "p1", "reader").await;
    let (s, body, _) = get(page.clone(), reader).await;
    assert_eq!(s, 200);
    assert!(body.contains("watch this console, not type"), "{body}");
    let olga = c.t.user("olga", "p2", "member").await;
    assert_eq!(get(page, olga).await.0, 404);
}
