//! The web portal through the real router, in-process: the server's own
//! address leading a browser to it (and EC2 clients not), signing in (local
//! password and API token), the session cookie's attributes over HTTP
//! and HTTPS, CSRF and cross-origin refusals, a member refused every
//! operator page and form, launching from the form, logout revoking the
//! session, switching projects, the audit log naming portal users, and
//! the network pages (networks, security groups and their rules, floating
//! IPs, an instance's addresses) with their forms, kept within a project.
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

/// A host that runs private networks and maps the external name `lan`,
/// and the external network `lan` an operator made on it.
async fn external_lan(t: &T) {
    t.add_bridging_host(&["lan"]).await;
    let admin = t.admin.clone();
    let lan = json!({"name": "lan", "cidr": "192.168.50.0/24",
        "external": {"interface": "lan", "gateway": "192.168.50.1", "pool": "192.168.50.100-192.168.50.110"}});
    t.ok("POST", "/api/v1/networks", &admin, Some(lan)).await;
}

/// An instance of the token's project on `network`.
async fn launch_on(t: &T, token: &str, network: &str) -> String {
    let body = json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1, "networks": [network]});
    t.ok("POST", "/api/v1/instances", token, Some(body)).await["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn networks_security_groups_and_floating_ips_through_the_forms() {
    let t = T::new().await;
    external_lan(&t).await;
    let alice = t.user("alice", "web", "member").await;
    let mut b = Browser::new(&t);
    b.sign_in("alice", "s3cret-pass").await;
    let csrf = b.csrf().await;

    // The navigation leads to the three pages; the shared external network is listed.
    let home = b.get("/ui/instances").await.body;
    for link in ["/ui/networks", "/ui/security-groups", "/ui/floating-ips"] {
        assert!(home.contains(&format!("href=\"{link}\"")), "the navigation lacks {link}");
    }
    let p = b.get("/ui/networks").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("data-network=\"lan\"") && p.body.contains("external"), "{}", p.body);
    assert!(p.body.contains("192.168.50.100–192.168.50.110"), "the pool: {}", p.body);

    // A private network from the form; a bad range comes back with the reason.
    let p = b.post("/ui/networks", &[("csrf", &csrf), ("name", "blue"), ("cidr", "10.30.0.0/33")], None).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("role=\"alert\""), "{}", p.body);
    let p = b.post("/ui/networks", &[("csrf", &csrf), ("name", "blue"), ("cidr", "10.30.0.0/24")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let blue_page = p.location().to_string();
    let blue = t.ok("GET", "/api/v1/networks/blue", &alice, None).await;
    assert_eq!((blue["cidr"].as_str(), blue["gateway"].as_str()), (Some("10.30.0.0/24"), Some("10.30.0.1")));
    assert_eq!(blue_page, format!("/ui/networks/{}", blue["id"].as_str().unwrap()));

    // An instance on it: the network's page and the list show it and its address.
    let vm = launch_on(&t, &alice, "blue").await;
    let p = b.get(&blue_page).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains(&format!("data-instance=\"{vm}\"")) && p.body.contains("10.30.0.2"), "{}", p.body);
    let list = b.get("/ui/networks").await.body;
    assert!(list.contains("data-network=\"blue\"") && list.contains("10.30.0.2"), "{list}");
    // It cannot be deleted while the instance is on it; an empty one can.
    let p = b.post(&format!("{blue_page}/delete"), &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains("has instances attached"), "{}", p.body);
    b.post("/ui/networks", &[("csrf", &csrf), ("name", "spare"), ("cidr", "10.31.0.0/24")], None).await;
    let p = b.post("/ui/networks/spare/delete", &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let (s, _) = t.call("GET", "/api/v1/networks/spare", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A security group, a rule added from its page, shown, then deleted.
    let p =
        b.post("/ui/security-groups", &[("csrf", &csrf), ("name", "web"), ("description", "the web tier")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let group_page = p.location().to_string();
    let gid = group_page.strip_prefix("/ui/security-groups/").unwrap().to_string();
    assert!(gid.starts_with("sg-"), "{group_page}");
    let rule = |direction: &'static str, port: &'static str, cidr: &'static str, source: &'static str| {
        vec![
            ("direction", direction),
            ("protocol", "tcp"),
            ("from_port", port),
            ("to_port", ""),
            ("cidr", cidr),
            ("source_group", source),
        ]
    };
    let post_rule = |fields: Vec<(&'static str, &'static str)>| {
        let mut f = vec![("csrf", csrf.as_str())];
        f.extend(fields);
        f
    };
    let p = b.post(&format!("{group_page}/rules"), &post_rule(rule("ingress", "22", "0.0.0.0/0", "")), None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let p = b.post(&format!("{group_page}/rules"), &post_rule(rule("egress", "5432", "", "default")), None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    // Both a range and a group, or a port that is no number: refused with why.
    let p =
        b.post(&format!("{group_page}/rules"), &post_rule(rule("ingress", "80", "10.0.0.0/8", "default")), None).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("either a cidr or a source_group"), "{}", p.body);
    let p = b.post(&format!("{group_page}/rules"), &post_rule(rule("ingress", "ssh", "0.0.0.0/0", "")), None).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert!(p.body.contains("first port"), "{}", p.body);
    let groups = t.ok("GET", "/api/v1/security-groups", &alice, None).await;
    let web = groups.as_array().unwrap().iter().find(|g| g["name"] == "web").unwrap().clone();
    let rules = web["rules"].as_array().unwrap();
    let ssh = rules.iter().find(|r| r["from_port"] == 22).expect("the ssh rule");
    assert_eq!((ssh["direction"].as_str(), ssh["cidr"].as_str()), (Some("ingress"), Some("0.0.0.0/0")));
    let pg = rules.iter().find(|r| r["from_port"] == 5432).expect("the egress rule");
    assert_eq!(pg["direction"], "egress");
    assert!(pg["source_group_id"].as_str().unwrap().starts_with("sg-"), "{pg}");
    let ssh_id = ssh["id"].as_str().unwrap().to_string();
    let page = b.get(&group_page).await.body;
    assert!(page.contains(&format!("data-rule=\"{ssh_id}\"")) && page.contains("0.0.0.0/0"), "{page}");
    assert!(page.contains("group <a href=\"/ui/security-groups/sg-") && page.contains("5432"), "{page}");
    let list = b.get("/ui/security-groups").await.body;
    assert!(list.contains("data-group=\"web\"") && list.contains("the web tier") && list.contains("0.0.0.0/0"));
    let p = b.post(&format!("{group_page}/rules/{ssh_id}/delete"), &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert!(!b.get(&group_page).await.body.contains(&ssh_id));
    let groups = t.ok("GET", "/api/v1/security-groups", &alice, None).await;
    assert!(!groups.to_string().contains(&ssh_id), "{groups}");
    // The default group stays; web goes.
    let p = b.post("/ui/security-groups/default/delete", &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains("default group"), "{}", p.body);
    let p = b.post(&format!("{group_page}/delete"), &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let groups = t.ok("GET", "/api/v1/security-groups", &alice, None).await;
    assert!(!groups.to_string().contains("\"web\""), "{groups}");

    // Floating IPs: the page offers the external network and the instance.
    let p = b.get("/ui/floating-ips").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains("No floating IPs yet") && p.body.contains("<option value=\"lan\""), "{}", p.body);
    let p = b.post("/ui/floating-ips", &[("csrf", &csrf), ("network", "blue")], None).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "a private network has no floating IPs: {}", p.body);
    assert!(p.body.contains("is private"), "{}", p.body);
    let p = b.post("/ui/floating-ips", &[("csrf", &csrf), ("network", "lan")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let fips = t.ok("GET", "/api/v1/floating-ips", &alice, None).await;
    let fip = fips[0].clone();
    let fid = fip["id"].as_str().unwrap().to_string();
    assert_eq!(fip["address"], "192.168.50.101");
    let page = b.get("/ui/floating-ips").await.body;
    assert!(page.contains("data-floating-ip=\"192.168.50.101\""), "{page}");
    assert!(page.contains(&format!("<option value=\"{vm}\">")) && page.contains("(10.30.0.2)"), "{page}");

    let p = b.post(&format!("/ui/floating-ips/{fid}/associate"), &[("csrf", &csrf), ("instance", &vm)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let v = t.ok("GET", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
    assert_eq!((v["instance_id"].as_str(), v["private_address"].as_str()), (Some(vm.as_str()), Some("10.30.0.2")));
    let page = b.get("/ui/floating-ips").await.body;
    assert!(page.contains(&format!("href=\"/ui/instances/{vm}\"")) && page.contains("Disassociate"), "{page}");
    // The instance's page shows each address with its network and its floating IP.
    let page = b.get(&format!("/ui/instances/{vm}")).await.body;
    assert!(page.contains(&format!("href=\"{blue_page}\">blue</a>")), "{page}");
    assert!(
        page.contains("data-address=\"10.30.0.2\"") && page.contains("data-floating-ip=\"192.168.50.101\""),
        "{page}"
    );
    // And so does the network's page.
    assert!(b.get(&blue_page).await.body.contains("192.168.50.101"));

    let p = b.post(&format!("/ui/floating-ips/{fid}/disassociate"), &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let v = t.ok("GET", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
    assert_eq!(v["instance_id"], serde_json::Value::Null, "{v}");
    assert!(!b.get(&format!("/ui/instances/{vm}")).await.body.contains("192.168.50.101"));
    let p = b.post(&format!("/ui/floating-ips/{fid}/release"), &[("csrf", &csrf)], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(t.ok("GET", "/api/v1/floating-ips", &alice, None).await, json!([]));
    assert!(b.get("/ui/floating-ips").await.body.contains("No floating IPs yet"));
}

#[tokio::test]
async fn another_projects_network_resources_cannot_be_changed_by_a_forged_form() {
    let t = T::new().await;
    external_lan(&t).await;
    let alice = t.user("alice", "team-a", "member").await;
    let bob = t.user("bob", "team-b", "member").await;
    t.ok("POST", "/api/v1/networks", &alice, Some(json!({"name": "blue", "cidr": "10.30.0.0/24"}))).await;
    let alices_vm = launch_on(&t, &alice, "blue").await;
    let fip = t.ok("POST", "/api/v1/floating-ips", &alice, Some(json!({"network": "lan"}))).await;
    let fid = fip["id"].as_str().unwrap().to_string();
    t.ok("POST", &format!("/api/v1/floating-ips/{fid}/associate"), &alice, Some(json!({"instance": alices_vm}))).await;
    let g = t.ok("POST", "/api/v1/security-groups", &alice, Some(json!({"name": "db"}))).await;
    let gid = g["id"].as_str().unwrap().to_string();
    let g = t
        .ok(
            "POST",
            &format!("/api/v1/security-groups/{gid}/rules"),
            &alice,
            Some(json!({"protocol": "tcp", "from_port": 5432, "cidr": "10.30.0.0/24"})),
        )
        .await;
    let rid = g["rules"].as_array().unwrap().iter().find(|r| r["from_port"] == 5432).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let net = t.ok("GET", "/api/v1/networks/blue", &alice, None).await["id"].as_str().unwrap().to_string();
    // Bob's own instance and floating IP, to try pointing them at Alice's.
    t.ok("POST", "/api/v1/networks", &bob, Some(json!({"name": "red", "cidr": "10.40.0.0/24"}))).await;
    let bobs_fip = t.ok("POST", "/api/v1/floating-ips", &bob, Some(json!({"network": "lan"}))).await;
    let bobs_fid = bobs_fip["id"].as_str().unwrap().to_string();

    // Bob, signed in with a valid session and CSRF token of his own,
    // posts forms naming Alice's resources: each is not found.
    let mut b = Browser::new(&t);
    b.sign_in("bob", "s3cret-pass").await;
    let csrf = b.csrf().await;
    let forged: Vec<(String, Vec<(&str, &str)>)> = vec![
        (format!("/ui/floating-ips/{fid}/release"), vec![]),
        (format!("/ui/floating-ips/{fid}/disassociate"), vec![]),
        (format!("/ui/floating-ips/{fid}/associate"), vec![("instance", "")]),
        (format!("/ui/floating-ips/{}/release", fip["address"].as_str().unwrap()), vec![]),
        (format!("/ui/floating-ips/{bobs_fid}/associate"), vec![("instance", alices_vm.as_str())]),
        (
            format!("/ui/security-groups/{gid}/rules"),
            vec![("protocol", "tcp"), ("from_port", "22"), ("cidr", "0.0.0.0/0")],
        ),
        (format!("/ui/security-groups/{gid}/rules/{rid}/delete"), vec![]),
        (format!("/ui/security-groups/{gid}/delete"), vec![]),
        (format!("/ui/networks/{net}/delete"), vec![]),
    ];
    for (path, mut fields) in forged {
        if path.ends_with("/associate") && fields[0].1.is_empty() {
            fields[0].1 = "i-0000000000000000";
        }
        fields.insert(0, ("csrf", csrf.as_str()));
        let p = b.post(&path, &fields, None).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{path}: {}", p.body);
    }
    // Nor does he see them on his pages.
    for path in [format!("/ui/security-groups/{gid}"), format!("/ui/networks/{net}")] {
        assert_eq!(b.get(&path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    for path in ["/ui/floating-ips", "/ui/security-groups", "/ui/networks"] {
        let body = b.get(path).await.body;
        for secret in [fid.as_str(), "192.168.50.101", gid.as_str(), "10.30.0.2", alices_vm.as_str()] {
            assert!(!body.contains(secret), "{path} shows Alice's {secret}");
        }
    }

    // Everything of Alice's is as it was.
    let v = t.ok("GET", &format!("/api/v1/floating-ips/{fid}"), &alice, None).await;
    assert_eq!(v["instance_id"].as_str(), Some(alices_vm.as_str()));
    let groups = t.ok("GET", "/api/v1/security-groups", &alice, None).await;
    let db = groups.as_array().unwrap().iter().find(|g| g["id"] == gid.as_str()).expect("the group stays").clone();
    let ports: Vec<i64> = db["rules"].as_array().unwrap().iter().filter_map(|r| r["from_port"].as_i64()).collect();
    assert!(ports.contains(&5432) && !ports.contains(&22), "{db}");
    t.ok("GET", "/api/v1/networks/blue", &alice, None).await;
    let v = t.ok("GET", &format!("/api/v1/floating-ips/{bobs_fid}"), &bob, None).await;
    assert_eq!(v["instance_id"], serde_json::Value::Null, "{v}");
}

#[tokio::test]
async fn day_two_forms_resize_and_rebuild_and_keep_another_project_out() {
    let t = T::new().await;
    let (host, cred) = t.add_host_with_id().await;
    let alice = t.user("alice", "web", "member").await;
    t.user("bob", "other", "member").await;
    let i = t
        .ok(
            "POST",
            "/api/v1/instances",
            &alice,
            Some(json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    let id = i["id"].as_str().unwrap().to_string();
    let report = |power: &str| json!({"instances": [{"id": id, "power": power, "pid": null, "error": null}]});
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report("running"))).await;

    let mut b = Browser::new(&t);
    b.sign_in("alice", "s3cret-pass").await;
    let page = b.get(&format!("/ui/instances/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    for needle in ["Resize", "Rebuild", "Revert", &format!("/ui/instances/{id}/resize")] {
        assert!(page.body.contains(needle), "{needle} on the instance page");
    }
    let csrf = page.csrf();
    let resize = format!("/ui/instances/{id}/resize");
    let fields = [("csrf", csrf.as_str()), ("vcpus", "2"), ("memory_mib", "256")];
    // Running: refused, with what to do.
    let p = b.post(&resize, &fields, None).await;
    assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.body);
    assert!(p.body.contains("stop it first"), "{}", p.body);
    // Without the CSRF token: refused, nothing changes.
    let p = b.post(&resize, &[("vcpus", "2"), ("memory_mib", "256")], None).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // Running, more vCPUs and the same memory: taken online.
    let p = b.post(&resize, &[("csrf", csrf.as_str()), ("vcpus", "2"), ("memory_mib", "128")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let shown = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!((shown["vcpus"].as_u64(), shown["state"].as_str()), (Some(2), Some("running")), "{shown}");

    t.ok("POST", &format!("/api/v1/instances/{id}/stop"), &alice, None).await;
    t.ok("POST", &format!("/api/v1/agent/hosts/{host}/report"), &cred, Some(report("stopped"))).await;
    let p = b.post(&resize, &fields, None).await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, format!("/ui/instances/{id}").as_str()));
    let shown = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!((shown["vcpus"].as_u64(), shown["memory_mib"].as_u64()), (Some(2), Some(256)));
    let p = b.post(&format!("/ui/instances/{id}/rebuild"), &[("csrf", &csrf), ("image", "tiny")], None).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let shown = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert!(shown["events"].as_array().unwrap().iter().any(|e| e["stage"] == "rebuild"), "{shown}");

    // Bob, with a session and CSRF token of his own, cannot touch it.
    let mut bob = Browser::new(&t);
    bob.sign_in("bob", "s3cret-pass").await;
    let csrf = bob.csrf().await;
    for (path, fields) in [
        (resize.clone(), vec![("csrf", csrf.as_str()), ("vcpus", "4"), ("memory_mib", "512")]),
        (format!("/ui/instances/{id}/rebuild"), vec![("csrf", csrf.as_str()), ("image", "tiny")]),
        (format!("/ui/instances/{id}/revert"), vec![("csrf", csrf.as_str()), ("snapshot", "tiny")]),
    ] {
        let p = bob.post(&path, &fields, None).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "{path}: {}", p.body);
    }
    let shown = t.ok("GET", &format!("/api/v1/instances/{id}"), &alice, None).await;
    assert_eq!(shown["vcpus"], 2, "unchanged by Bob");
}
