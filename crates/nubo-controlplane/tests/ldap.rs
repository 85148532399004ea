//! LDAP sign-in against a real OpenLDAP server: each test runs its own
//! private `slapd` on 127.0.0.1 (`nubo_testkit::slapd`, Debian's `slapd`
//! and `ldap-utils`), loaded with the users and groups below.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_controlplane::ldap::{authenticate, GroupMapping, LdapConfig, LdapError};
use nubo_testkit::free_port;
use nubo_testkit::slapd::{person, Slapd, SUFFIX};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A server with alice (devs), bob (ops and auditors) and carol (only a
/// group that maps to nothing).
fn start() -> Slapd {
    let mut ldif = person("alice", "people", "alice-secret");
    ldif += &person("bob", "people", "bob-secret");
    ldif += &person("carol", "people", "carol-secret");
    // groupOfNames, with the cn in another case than the mapping's.
    ldif += &format!(
        "dn: cn=devs,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: Devs\nmember: uid=alice,ou=people,{SUFFIX}\n\n"
    );
    ldif += &format!(
        "dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: uid=bob,ou=people,{SUFFIX}\n\n"
    );
    // posixGroup: membership by user name, found by memberUid={user}.
    ldif += &format!(
        "dn: cn=auditors,ou=groups,{SUFFIX}\nobjectClass: posixGroup\ncn: auditors\ngidNumber: 2000\nmemberUid: bob\n\n"
    );
    // A group that maps to nothing: carol's only group.
    ldif += &format!(
        "dn: cn=interns,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: interns\nmember: uid=carol,ou=people,{SUFFIX}\n\n"
    );
    Slapd::start(&ldif)
}

/// Nubo's settings for `slapd`.
fn ldap_config(slapd: &Slapd) -> LdapConfig {
    let mut cfg = config(&slapd.url());
    cfg.timeout_secs = Some(5);
    cfg
}

fn config(url: &str) -> LdapConfig {
    let mapping = |group: &str, project: &str, role: &str| GroupMapping {
        group: group.into(),
        project: project.into(),
        role: role.into(),
    };
    serde_json::from_value(serde_json::json!({
        "url": url,
        "user_dn_template": format!("uid={{user}},ou=people,{SUFFIX}"),
        "group_base": format!("ou=groups,{SUFFIX}"),
        "mappings": [mapping("devs", "dev", "member"), mapping("ops", "ops", "admin"), mapping("auditors", "dev", "reader")],
    }))
    .expect("config")
}

#[tokio::test]
async fn alice_signs_in_as_dev_member() {
    let slapd = start();
    let id = authenticate(&ldap_config(&slapd), "alice", "alice-secret")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", slapd.log()));
    assert_eq!(id.username, "alice");
    assert_eq!(id.dn, format!("uid=alice,ou=people,{SUFFIX}"));
    assert_eq!(id.groups, vec!["Devs".to_string()]);
    assert_eq!(id.grants, vec![GroupMapping { group: "devs".into(), project: "dev".into(), role: "member".into() }]);
    assert_eq!(id.role_in("dev"), Some("member"));
    assert_eq!(id.role_in("ops"), None);
}

#[tokio::test]
async fn bob_signs_in_as_ops_admin_and_dev_reader() {
    let slapd = start();
    let id = authenticate(&ldap_config(&slapd), "bob", "bob-secret")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", slapd.log()));
    assert_eq!(id.groups, vec!["auditors".to_string(), "ops".to_string()]);
    let grants: Vec<(&str, &str)> = id.grants.iter().map(|g| (g.project.as_str(), g.role.as_str())).collect();
    assert_eq!(grants, vec![("ops", "admin"), ("dev", "reader")]);
    assert_eq!(id.role_in("ops"), Some("admin"));
    assert_eq!(id.role_in("dev"), Some("reader"));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    let slapd = start();
    let cfg = ldap_config(&slapd);
    for (user, password) in [("alice", "bob-secret"), ("alice", "alice-secret "), ("nobody", "alice-secret")] {
        let err = authenticate(&cfg, user, password).await.expect_err(user);
        assert!(matches!(err, LdapError::InvalidCredentials), "{user}/{password}: {err:?}");
        assert!(err.to_string().contains("invalid username or password"), "{err}");
    }
}

#[tokio::test]
async fn empty_password_is_refused() {
    let slapd = start();
    let err = authenticate(&ldap_config(&slapd), "alice", "").await.expect_err("empty password");
    assert!(matches!(err, LdapError::InvalidCredentials), "{err:?}");
    // Refused before connecting: the same answer with no server at all.
    let err =
        authenticate(&config(&format!("ldap://127.0.0.1:{}", free_port())), "alice", "").await.expect_err("empty");
    assert!(matches!(err, LdapError::InvalidCredentials), "{err:?}");
}

#[tokio::test]
async fn carol_has_no_mapped_group() {
    let slapd = start();
    let err = authenticate(&ldap_config(&slapd), "carol", "carol-secret").await.expect_err("carol has no mapped group");
    assert!(matches!(&err, LdapError::NoMatchingGroup { user } if user == "carol"), "{err:?}");
    // Her password is still checked first.
    let err = authenticate(&ldap_config(&slapd), "carol", "wrong").await.expect_err("wrong password");
    assert!(matches!(err, LdapError::InvalidCredentials), "{err:?}");
}

#[tokio::test]
async fn metacharacters_in_username_never_reach_the_server() {
    let slapd = start();
    let dead = config(&format!("ldap://127.0.0.1:{}", free_port()));
    for user in ["*)(uid=*", "*", "alice)(|(uid=*", "uid=alice,ou=people", "alice\0", "alice,ou=people", "(alice)"] {
        for cfg in [&ldap_config(&slapd), &dead] {
            let err = authenticate(cfg, user, "alice-secret").await.expect_err(user);
            // Against the dead server, anything but InvalidCredentials would
            // mean a connection was tried.
            assert!(matches!(err, LdapError::InvalidCredentials), "{user:?}: {err:?}");
        }
    }
    // The server is still fine for a good sign-in.
    authenticate(&ldap_config(&slapd), "alice", "alice-secret").await.expect("alice");
}

#[tokio::test]
async fn unreachable_server_fails_fast_and_names_the_url() {
    let url = format!("ldap://127.0.0.1:{}", free_port());
    let start = Instant::now();
    let err = authenticate(&config(&url), "alice", "alice-secret").await.expect_err("nobody listens");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert!(matches!(&err, LdapError::Unreachable { url: u, .. } if *u == url), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("check that the server is running"), "{msg}");
}

#[tokio::test]
async fn silent_server_times_out() {
    // Accepts the connection but never answers: the bind must give up after timeout_secs.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("ldap://{}", listener.local_addr().expect("addr"));
    let mut cfg = config(&url);
    cfg.timeout_secs = Some(1);
    let start = Instant::now();
    let err = authenticate(&cfg, "alice", "alice-secret").await.expect_err("silent server");
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(matches!(&err, LdapError::Unreachable { detail, .. } if detail.contains("no answer")), "{err:?}");
    drop(listener);
}

#[tokio::test]
async fn missing_group_base_is_a_config_error() {
    let slapd = start();
    let mut cfg = ldap_config(&slapd);
    cfg.group_base = format!("ou=teams,{SUFFIX}");
    let err = authenticate(&cfg, "alice", "alice-secret").await.expect_err("no such base");
    assert!(matches!(&err, LdapError::Config(m) if m.contains("ou=teams")), "{err:?}");
}

/// Sign-in through the API: `POST /api/v1/auth/login` binds against the
/// real slapd, and the token carries the role the LDAP group maps to.
#[tokio::test]
async fn login_through_the_api_gets_the_mapped_role() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let slapd = start();
    let dir = tempfile::tempdir().unwrap();
    let _db = nubo_controlplane::testdb::from_env().await.unwrap();
    let mut config = nubo_controlplane::Config::new(dir.path().to_path_buf());
    config.database = _db.as_ref().map(|d| d.url.clone());
    config.ldap = Some(ldap_config(&slapd));
    let ctx = nubo_controlplane::Ctx::new(config).await.unwrap();
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<serde_json::Value>| {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Body::from(body.map(|b| b.to_string()).unwrap_or_default())).unwrap();
        let app = nubo_controlplane::app(ctx.clone());
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default())
        }
    };
    let login = |user: &str, pw: &str| serde_json::json!({"username": user, "password": pw});

    let (s, v) = call("POST", "/api/v1/auth/login", None, Some(login("alice", "alice-secret"))).await;
    assert_eq!(s, StatusCode::OK, "{v}\n{}", slapd.log());
    assert_eq!(v["project"], "dev");
    assert_eq!(v["role"], "member");
    let alice = v["token"].as_str().unwrap().to_string();
    let (s, who) = call("GET", "/api/v1/auth/whoami", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(who["admin"], false);
    // A member is refused the operator's endpoints.
    let (s, _) = call("GET", "/api/v1/hosts", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // bob's group maps to admin: he is an operator.
    let (s, v) = call("POST", "/api/v1/auth/login", None, Some(login("bob", "bob-secret"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["role"], "admin");
    let bob = v["token"].as_str().unwrap().to_string();
    let (s, _) = call("GET", "/api/v1/hosts", Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK);

    // Wrong password, and a user in no mapped group.
    let (s, v) = call("POST", "/api/v1/auth/login", None, Some(login("alice", "not-her-password"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["message"], "invalid username or password");
    let (s, _) = call("POST", "/api/v1/auth/login", None, Some(login("carol", "carol-secret"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Every attempt is in the audit log.
    let (_, audit) = call("GET", "/api/v1/audit", Some(&bob), None).await;
    let logins: Vec<u64> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/api/v1/auth/login")
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(logins.len(), 4, "{audit}");
    assert!(logins.contains(&401) && logins.contains(&403) && logins.contains(&200));
}

/// The web portal's sign-in form binds against the real slapd too: a
/// directory member gets a session in her mapped project, and is refused
/// the operator pages that a directory operator opens.
#[tokio::test]
async fn portal_sign_in_through_ldap() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let slapd = start();
    let dir = tempfile::tempdir().unwrap();
    let _db = nubo_controlplane::testdb::from_env().await.unwrap();
    let mut config = nubo_controlplane::Config::new(dir.path().to_path_buf());
    config.database = _db.as_ref().map(|d| d.url.clone());
    config.ldap = Some(ldap_config(&slapd));
    let ctx = nubo_controlplane::Ctx::new(config).await.unwrap();
    // GET or POST (form) with cookies; the status, Set-Cookie headers and body.
    let send = |method: &str, path: &str, cookie: String, form: Option<Vec<(&str, String)>>| {
        let body =
            form.map(|f| form_urlencoded::Serializer::new(String::new()).extend_pairs(f).finish()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap();
        let app = nubo_controlplane::app(ctx.clone());
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            let cookies: Vec<String> =
                resp.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
            let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            (status, cookies, body)
        }
    };
    let sign_in = |user: &'static str, pw: &'static str| {
        let send = &send;
        async move {
            let (_, cookies, body) = send("GET", "/ui/login", String::new(), None).await;
            let login_cookie = cookies[0].split(';').next().unwrap().to_string();
            let csrf = login_cookie.split_once('=').unwrap().1.to_string();
            assert!(body.contains(&csrf));
            let form = vec![("csrf", csrf), ("username", user.to_string()), ("password", pw.to_string())];
            let (status, cookies, body) = send("POST", "/ui/login", login_cookie, Some(form)).await;
            (status, cookies.into_iter().find(|c| c.starts_with("nubo_session=")), body)
        }
    };

    let (status, cookie, body) = sign_in("alice", "alice-secret").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}\n{}", slapd.log());
    let alice = cookie.expect("a session cookie").split(';').next().unwrap().to_string();
    let (status, _, page) = send("GET", "/ui/instances", alice.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("alice · member") && page.contains(">dev<"), "{page}");
    let (status, _, page) = send("GET", "/ui/admin/hosts", alice, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!page.contains("Heat map"));

    let (status, cookie, _) = sign_in("bob", "bob-secret").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let bob = cookie.unwrap().split(';').next().unwrap().to_string();
    let (status, _, page) = send("GET", "/ui/admin/hosts", bob, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Heat map"));

    let (status, cookie, page) = sign_in("alice", "not-her-password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(cookie.is_none() && page.contains("invalid username or password"));
}
