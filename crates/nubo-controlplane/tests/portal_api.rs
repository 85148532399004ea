//! The web portal through the real router, in-process: the server's own
//! address leading a browser to it (and EC2 clients not), signing in (local
//! password and API token), the session cookie's attributes over HTTP
//! and HTTPS, CSRF and cross-origin refusals, a member refused every
//! operator page and form, launching from the form, logout revoking the
//! session, switching projects, and the audit log naming portal users.
//! (The browser tests in crates/nubo/tests/portal.rs drive the same pages
//! in headless Chromium against a real VM.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::T;
use http_body_util::BodyExt;
use nubo_controlplane::portal::Transport;
use serde_json::json;
use std::collections::BTreeMap;
use tower::ServiceExt;

/// A browser without JavaScript: a cookie jar and form posts.
struct Browser<'a> {
    t: &'a T,
    cookies: BTreeMap<String, String>,
    https: bool,
}

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers.get("location").and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The first form's CSRF field.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").unwrap_or_else(|| panic!("no csrf field in {}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }
}

impl<'a> Browser<'a> {
    fn new(t: &'a T) -> Self {
        Browser { t, cookies: BTreeMap::new(), https: false }
    }

    async fn send(&mut self, req: axum::http::request::Builder, body: String) -> Page {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let req = req.header("host", "127.0.0.1:8080").header("cookie", cookie).body(Body::from(body)).unwrap();
        let mut app = nubo_controlplane::app(self.t.ctx.clone());
        if self.https {
            app = app.layer(axum::Extension(Transport::Https));
        }
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        for c in headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") || v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        Page { status, headers, body }
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send(Request::builder().method("GET").uri(path), String::new()).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let mut req =
            Request::builder().method("POST").uri(path).header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        self.send(req, body).await
    }

    async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/ui/login").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        self.post(
            "/ui/login",
            &[("csrf", &csrf), ("username", user), ("password", password), ("next", "/ui/instances")],
            Some("http://127.0.0.1:8080"),
        )
        .await
    }

    async fn sign_in_with_token(&mut self, token: &str) -> Page {
        let csrf = self.get("/ui/login").await.csrf();
        self.post("/ui/login/token", &[("csrf", &csrf), ("token", token), ("next", "/ui/admin/hosts")], None).await
    }

    /// The session's CSRF token, read from a page's form.
    async fn csrf(&mut self) -> String {
        self.get("/ui/keypairs").await.csrf()
    }
}

#[tokio::test]
async fn the_server_address_in_a_browser_leads_to_the_portal() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    let mut b = Browser::new(&t);

    // `/` sends a browser to the portal's home, which without a session
    // sends it on to the sign-in form, coming back home after it.
    let p = b.get("/").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/ui/instances");
    let p = b.get(p.location().to_string().as_str()).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/login?next=%2Fui%2Finstances");
    let p = b.get(p.location().to_string().as_str()).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("name=\"password\""), "the sign-in form: {}", p.body);
    // Signed in, the same address lands on the home page itself.
    assert_eq!(b.sign_in("alice", "s3cret-pass").await.status, StatusCode::SEE_OTHER);
    let p = b.get("/").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, "/ui/instances"));
    let p = b.get(p.location().to_string().as_str()).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("Launch instance"), "{}", p.body);

    // An EC2 client's GET (a query, or a signature) still gets EC2's XML
    // answer: here the refusal of a request that is not validly signed.
    for (uri, authorization) in [
        ("/?Action=DescribeRegions&Version=2016-11-15", None),
        ("/", Some("AWS4-HMAC-SHA256 Credential=AKIAUNKNOWNUNKNOWN00/20260101/nubo-1/ec2/aws4_request")),
    ] {
        let mut req = Request::builder().method("GET").uri(uri).header("host", "127.0.0.1:8080");
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let resp = nubo_controlplane::app(t.ctx.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri}");
        assert!(resp.headers().get("location").is_none(), "{uri}: an API client is not redirected");
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("<Code>AuthFailure</Code>"), "{uri}: {body}");
    }
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_session_cookie() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    let mut b = Browser::new(&t);

    let p = b.get("/ui/instances").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/login?next=%2Fui%2Finstances");

    let p = b.sign_in("alice", "wrong-password").await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(p.body.contains("invalid username or password"), "{}", p.body);
    assert!(!b.cookies.contains_key("nubo_session"));

    let p = b.sign_in("alice", "s3cret-pass").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/ui/instances");
    let cookie = p.set_cookies().into_iter().find(|c| c.starts_with("nubo_session=")).expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let p = b.get("/ui/instances").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("Launch instance") && p.body.contains("alice"));
    // Every page forbids framing and outside sources, and is not cached.
    let csp = p.headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(p.headers.get("x-frame-options").unwrap(), "DENY");
    assert_eq!(p.headers.get("cache-control").unwrap(), "no-store");
    // The session is an API token of alice's, with her role.
    let token = b.cookies["nubo_session"].clone();
    let who = t.ok("GET", "/api/v1/auth/whoami", &token, None).await;
    assert_eq!((who["user"].as_str(), who["role"].as_str()), (Some("alice"), Some("member")));

    // A fragment without a session goes to sign in, like a page.
    let mut anonymous = Browser::new(&t);
    assert_eq!(anonymous.get("/ui/instances/rows").await.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/ui/instances/rows").await.status, StatusCode::OK);
    // Unknown portal pages are HTML 404s, not the API's JSON.
    let p = b.get("/ui/nonsense").await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert!(p.body.contains("no portal page"));
}

#[tokio::test]
async fn over_https_the_cookie_is_secure_and_host_prefixed() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    let mut b = Browser::new(&t);
    b.https = true;
    let p = b.sign_in("alice", "s3cret-pass").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let cookie = p.set_cookies().into_iter().find(|c| c.starts_with("__Host-nubo_session=")).expect("cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/;"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert_eq!(b.get("/ui/instances").await.status, StatusCode::OK);
    // The plain-HTTP cookie name is not accepted over HTTPS.
    let token = b.cookies.remove("__Host-nubo_session").unwrap();
    b.cookies.insert("nubo_session".into(), token);
    assert_eq!(b.get("/ui/instances").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn forms_need_the_session_csrf_token_and_our_origin() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    t.add_host().await;
    let mut b = Browser::new(&t);
    b.sign_in("alice", "s3cret-pass").await;
    let csrf = b.csrf().await;
    let launch = |csrf: &str| {
        vec![
            ("csrf", csrf.to_string()),
            ("image", "tiny".to_string()),
            ("vcpus", "1".to_string()),
            ("memory_mib", "256".to_string()),
            ("disk_gib", "1".to_string()),
        ]
    };
    let as_refs = |v: &Vec<(&'static str, String)>| v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    for (fields, origin, why) in [
        (launch(""), None, "no token"),
        (launch("0000"), None, "a wrong token"),
        (launch(&csrf), Some("https://evil.example"), "another site's origin"),
    ] {
        let f = as_refs(&fields);
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let p = b.post("/ui/instances", &f, origin).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{why}: {}", p.body);
    }
    let listed = t.ok("GET", "/api/v1/instances", &t.admin, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 0, "a refused form launched something");

    // The sign-in form has its own double-submit token.
    let mut fresh = Browser::new(&t);
    let p = fresh.post("/ui/login", &[("csrf", "x"), ("username", "alice"), ("password", "s3cret-pass")], None).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert!(!fresh.cookies.contains_key("nubo_session"));

    // With the token and from our own page, the launch goes through.
    let f = launch(&csrf);
    let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let p = b.post("/ui/instances", &f, Some("http://127.0.0.1:8080")).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
}

#[tokio::test]
async fn a_member_is_refused_every_operator_page_and_form() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    t.add_host().await;
    let mut alice = Browser::new(&t);
    alice.sign_in("alice", "s3cret-pass").await;
    let mut ops = Browser::new(&t);
    let p = ops.sign_in_with_token(&t.admin).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/admin/hosts");

    let pages = [
        ("/ui/admin/hosts", "Heat map"),
        ("/ui/admin/instances", "All instances"),
        ("/ui/admin/alerts", "All alerts"),
        ("/ui/admin/audit", "Audit log"),
        ("/ui/admin/projects", "Projects &amp; quotas"),
        ("/ui/admin/users", "Create a local user"),
        ("/ui/admin/tasks", "Runs / failures"),
    ];
    for (path, marker) in pages {
        let p = alice.get(path).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        assert!(p.body.contains("the operator portal is for operators"), "{path}: {}", p.body);
        assert!(!p.body.contains(marker), "{path} leaked its page to a member");
        let p = ops.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
        assert!(p.body.contains(marker), "{path}");
    }
    // The operator's hosts page shows the host in the heat map and its bars.
    let hosts = ops.get("/ui/admin/hosts").await.body;
    assert!(hosts.contains("data-host=\"h1\"") && hosts.contains("<meter"), "{hosts}");
    // The operator navigation is not even shown to a member.
    assert!(!alice.get("/ui/instances").await.body.contains("/ui/admin/hosts"));

    // Operator forms are refused too, even with alice's valid CSRF token.
    let csrf = alice.csrf().await;
    let p = alice
        .post("/ui/admin/users", &[("csrf", &csrf), ("name", "mallory"), ("password", "longpassword")], None)
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let users = t.ok("GET", "/api/v1/users", &t.admin, None).await;
    assert!(!users.to_string().contains("mallory"));
    // And done by the operator, they work.
    let csrf = ops.csrf().await;
    let p = ops.post("/ui/admin/users", &[("csrf", &csrf), ("name", "bob"), ("password", "longpassword")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let users = t.ok("GET", "/api/v1/users", &t.admin, None).await;
    assert!(users.to_string().contains("\"bob\""));
}

#[tokio::test]
async fn launching_from_the_form_and_what_the_instance_page_shows() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    t.add_host().await;
    let mut b = Browser::new(&t);
    b.sign_in("alice", "s3cret-pass").await;
    let form = b.get("/ui/instances/new").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("name=\"user_data\"") && form.body.contains("value=\"tiny\""));
    let csrf = form.csrf();

    // A field that is not a number: the form comes back as typed, with why.
    let p = b
        .post(
            "/ui/instances",
            &[
                ("csrf", &csrf),
                ("name", "web-1"),
                ("image", "tiny"),
                ("vcpus", "two"),
                ("memory_mib", "256"),
                ("disk_gib", "1"),
            ],
            None,
        )
        .await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("vCPUs must be a whole number") && p.body.contains("value=\"web-1\""), "{}", p.body);
    // More than the quota: the API's message, on the form.
    let p = b
        .post(
            "/ui/instances",
            &[("csrf", &csrf), ("image", "tiny"), ("vcpus", "1000"), ("memory_mib", "256"), ("disk_gib", "1")],
            None,
        )
        .await;
    assert!(p.status.is_client_error(), "{}", p.status);
    assert!(p.body.contains("role=\"alert\""), "{}", p.body);

    let p = b
        .post(
            "/ui/instances",
            &[
                ("csrf", &csrf),
                ("name", "web-1"),
                ("image", "tiny"),
                ("vcpus", "2"),
                ("memory_mib", "512"),
                ("disk_gib", "3"),
                ("ports", "22, 80"),
                ("user_data", "#!/bin/sh\r\necho hello\r\n"),
            ],
            None,
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let id = p.location().strip_prefix("/ui/instances/").unwrap().to_string();
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), &t.admin, None).await;
    assert_eq!(
        (i["name"].as_str(), i["vcpus"].as_u64(), i["memory_mib"].as_u64()),
        (Some("web-1"), Some(2), Some(512))
    );
    assert_eq!(i["ports"].as_object().unwrap().len(), 2);
    let row = t.ctx.store.instance(&id).await.unwrap().unwrap();
    assert_eq!(row.user_data.as_deref(), Some("#!/bin/sh\necho hello\n"));

    let page = b.get(&format!("/ui/instances/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    for part in
        ["id=\"console\"", "data-chart=\"CPU\"", "data-chart=\"Network\"", "Volumes", "Recipe runs", "Terminate"]
    {
        assert!(page.body.contains(part), "the instance page lacks {part}");
    }
    assert_eq!(b.get(&format!("/ui/instances/{id}/charts?range=1h")).await.status, StatusCode::OK);
    assert!(b.get("/ui/instances/rows").await.body.contains(&id));

    // Another project's member cannot open it.
    t.user("eve", "other", "member").await;
    let mut eve = Browser::new(&t);
    eve.sign_in("eve", "s3cret-pass").await;
    assert_eq!(eve.get(&format!("/ui/instances/{id}")).await.status, StatusCode::NOT_FOUND);

    // Terminating from the page asks the API to.
    let csrf = b.csrf().await;
    let p = b.post(&format!("/ui/instances/{id}/action/terminate"), &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let i = t.ok("GET", &format!("/api/v1/instances/{id}"), &t.admin, None).await;
    assert_eq!(i["desired_state"], "terminated");

    // The audit log names alice and the portal path.
    let audit = t.audit().await;
    assert!(
        audit.iter().any(|e| e["actor"] == "alice" && e["path"] == "/ui/instances" && e["status"] == 303),
        "{audit:?}"
    );
    assert!(audit.iter().any(|e| e["actor"] == "alice" && e["path"] == "/ui/login" && e["status"] == 303));
}

#[tokio::test]
async fn signing_out_revokes_the_session_and_projects_can_be_switched() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    t.ok("POST", "/api/v1/projects", &t.admin.clone(), Some(json!({"name": "data"}))).await;
    t.ok("PUT", "/api/v1/projects/data/members/alice", &t.admin.clone(), Some(json!({"role": "reader"}))).await;
    let mut b = Browser::new(&t);
    b.sign_in("alice", "s3cret-pass").await;
    let first = b.cookies["nubo_session"].clone();

    let csrf = b.csrf().await;
    let p = b.post("/ui/project", &[("csrf", &csrf), ("project", "data")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let second = b.cookies["nubo_session"].clone();
    assert_ne!(first, second);
    let who = t.ok("GET", "/api/v1/auth/whoami", &second, None).await;
    assert_eq!((who["project"].as_str(), who["role"].as_str()), (Some("data"), Some("reader")));
    let (s, _) = t.call("GET", "/api/v1/auth/whoami", Some(&first), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the old session outlived the switch");
    // A reader may look but not launch.
    let csrf = b.csrf().await;
    let p = b
        .post(
            "/ui/instances",
            &[("csrf", &csrf), ("image", "tiny"), ("vcpus", "1"), ("memory_mib", "256"), ("disk_gib", "1")],
            None,
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    // A project she is not in cannot be entered.
    let p = b.post("/ui/project", &[("csrf", &csrf), ("project", "default")], None).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    let p = b.post("/ui/logout", &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/login");
    assert!(!b.cookies.contains_key("nubo_session"));
    let (s, _) = t.call("GET", "/api/v1/auth/whoami", Some(&second), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the session outlived signing out");
}

#[tokio::test]
async fn resource_pages_render_and_their_forms_work() {
    let t = T::new().await;
    t.user("alice", "web", "member").await;
    t.add_host().await;
    let mut b = Browser::new(&t);
    b.sign_in("alice", "s3cret-pass").await;
    for path in
        ["/ui/volumes", "/ui/images", "/ui/keypairs", "/ui/policies", "/ui/groups", "/ui/alerts", "/ui/alerts?all=true"]
    {
        let p = b.get(path).await;
        assert_eq!(p.status, StatusCode::OK, "{path}: {}", p.body);
    }
    let csrf = b.csrf().await;
    // A generated key pair: its private key is shown once.
    let p = b.post("/ui/keypairs", &[("csrf", &csrf), ("name", "laptop"), ("public_key", "")], None).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("BEGIN OPENSSH PRIVATE KEY"));
    assert!(!b.get("/ui/keypairs").await.body.contains("BEGIN OPENSSH PRIVATE KEY"));
    // A volume.
    let p = b.post("/ui/volumes", &[("csrf", &csrf), ("size_gib", "5"), ("name", "data")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let vols = t.ok("GET", "/api/v1/volumes", &t.admin, None).await;
    assert_eq!(vols[0]["name"], "data");
    // A policy pasted as YAML, then shown.
    let doc = "name: grow\nscope: {tag: {key: role, value: db}}\ncondition: {metric: fs_used_percent, op: '>=', threshold: 80}\nactions: [{attach_volume: {size_gib: 10}}]\n";
    let p = b.post("/ui/policies", &[("csrf", &csrf), ("doc", doc)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/ui/policies/grow");
    assert!(b.get("/ui/policies/grow").await.body.contains("fs_used_percent"));
    let p = b.post("/ui/policies", &[("csrf", &csrf), ("doc", "name: [")], None).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("not valid YAML"));
    // A group.
    let p = b
        .post(
            "/ui/groups",
            &[("csrf", &csrf), ("doc", "name: web\nmin: 0\nmax: 2\ndesired: 0\ntemplate: {image: tiny, vcpus: 1, memory_mib: 256, disk_gib: 1}\n")],
            None,
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert!(b.get("/ui/groups/web").await.body.contains("Members"));
}
