//! Attacks on the `identity` boundary (see main.rs): guessing passwords
//! online, stalling the server with sign-ins, buying request budget with
//! more tokens, hoarding immortal tokens, keeping power after leaving the
//! directory, and filling the audit log anonymously. Each runs against a
//! real `nubo server` (and a private slapd for LDAP) on 127.0.0.1.

use crate::common::*;
use nubo_testkit::slapd::{person, Slapd, SUFFIX};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One answer: status, raw header block, body.
pub struct Resp {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.0 request to the cloud at `url` (`http://127.0.0.1:PORT`),
/// straight over a socket so that timings are the server's, not a
/// client's start-up. Panics when the server cannot be reached at all.
pub fn call(url: &str, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
    let addr = url.strip_prefix("http://").expect("a plain-HTTP test cloud");
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the answer");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Resp { status, headers: head.to_string(), body: body.to_string() }
}

/// Creates a local user with a password and gives it `role` in `project`.
pub fn user(cloud: &Cloud, name: &str, password: &str, project: &str, role: &str) {
    let r = call(
        &cloud.url,
        "POST",
        "/api/v1/users",
        Some(&cloud.token),
        Some(&json!({"name": name, "password": password, "admin": false})),
    );
    assert_eq!(r.status, 201, "create user {name}: {}", r.body);
    let r = call(
        &cloud.url,
        "PUT",
        &format!("/api/v1/projects/{project}/members/{name}"),
        Some(&cloud.token),
        Some(&json!({"role": role})),
    );
    assert_eq!(r.status, 200, "add {name} to {project}: {}", r.body);
}

pub fn login(url: &str, name: &str, password: &str) -> Resp {
    call(url, "POST", "/api/v1/auth/login", None, Some(&json!({"username": name, "password": password})))
}

/// Signs in and returns the session token.
pub fn token_of(url: &str, name: &str, password: &str) -> String {
    let r = login(url, name, password);
    assert_eq!(r.status, 200, "sign-in of {name}: {}", r.body);
    r.json()["token"].as_str().expect("token").to_string()
}

fn audit_rows(cloud: &Cloud) -> Vec<Value> {
    let r = call(&cloud.url, "GET", "/api/v1/audit?limit=10000", Some(&cloud.token), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().as_array().cloned().unwrap_or_default()
}

// ---- item 9: online guessing, hashing on the async workers, budgets, token caps ----

#[test]
fn identity_password_guessing_is_locked_out_even_for_the_right_password() {
    let cloud = Cloud::server_only();
    user(&cloud, "alice", "alice-password", "default", "member");
    let mut limited = None;
    for attempt in 1..=10 {
        let r = login(&cloud.url, "alice", &format!("guess-{attempt}"));
        match r.status {
            401 => continue,
            429 => {
                limited = Some((attempt, r));
                break;
            }
            other => panic!("attempt {attempt}: unexpected {other}: {}", r.body),
        }
    }
    let Some((attempt, r)) = limited else {
        panic!("10 wrong passwords in a row were all answered 401: nothing limits online guessing");
    };
    assert!(attempt <= 6, "the limit came only at attempt {attempt}");
    let retry: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("a Retry-After header");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("try again in"), "{message}");
    // The right password during the lockout is refused too.
    let r = login(&cloud.url, "alice", "alice-password");
    assert_eq!(r.status, 429, "the right password got through a lockout: {}", r.body);
    // Another address-independent user is not locked by alice's guesser.
    user(&cloud, "bob", "bob-password", "default", "member");
    assert_eq!(login(&cloud.url, "bob", "bob-password").status, 200);
    // After the wait, the right password works again.
    wait_until("the lockout to end", Duration::from_secs(retry + 10), || {
        (login(&cloud.url, "alice", "alice-password").status == 200).then_some(())
    });
}

#[test]
fn identity_a_sign_in_flood_does_not_stall_other_requests() {
    let cloud = Cloud::server_only();
    // 7 users x 4 wrong passwords = 28 argon2 verifications, within the
    // default per-user and per-address limits, so every one is hashed.
    let users: Vec<String> = (0..7).map(|i| format!("flood{i}")).collect();
    for u in &users {
        user(&cloud, u, "right-password", "default", "member");
    }
    let whoami = || {
        let t = Instant::now();
        let r = call(&cloud.url, "GET", "/api/v1/auth/whoami", Some(&cloud.token), None);
        assert_eq!(r.status, 200, "{}", r.body);
        t.elapsed()
    };
    let mut idle: Vec<Duration> = (0..5).map(|_| whoami()).collect();
    idle.sort();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(28));
    let flood: Vec<_> = users
        .iter()
        .flat_map(|u| std::iter::repeat_n(u.clone(), 4))
        .map(|u| {
            let (url, barrier) = (cloud.url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                (login(&url, &u, "wrong-password").status, t.elapsed())
            })
        })
        .collect();
    // Measure while the flood is being hashed.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut samples = 0;
    while !flood.iter().all(|h| h.is_finished()) && start.elapsed() < Duration::from_secs(120) {
        worst = worst.max(whoami());
        samples += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let results: Vec<(u16, Duration)> = flood.into_iter().map(|h| h.join().expect("flood thread")).collect();
    let hashed = results.iter().filter(|(s, _)| *s == 401).count();
    let flood_time = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "FIGURE sign-in flood: {hashed} of 28 wrong passwords hashed in {flood_time:?}; whoami idle median {:?}, \
         worst during the flood {worst:?} over {samples} samples",
        idle[2]
    );
    assert!(hashed >= 20, "only {hashed} sign-ins were hashed: {results:?}");
    assert!(samples >= 1, "no request was measured during the flood");
    assert!(
        worst < Duration::from_millis(500),
        "a cheap authenticated request took {worst:?} during a sign-in flood (idle: {:?})",
        idle[2]
    );
}

#[test]
fn identity_minting_tokens_buys_no_more_requests() {
    let cloud = Cloud::server_with(&["--api-rate-limit", "5"]);
    user(&cloud, "minter", "minter-password", "default", "member");
    let session = token_of(&cloud.url, "minter", "minter-password");
    let mut tokens = vec![session.clone()];
    for i in 0..5 {
        let r = call(&cloud.url, "POST", "/api/v1/tokens", Some(&session), Some(&json!({"name": format!("extra{i}")})));
        assert_eq!(r.status, 201, "{}", r.body);
        tokens.push(r.json()["token"].as_str().expect("token").to_string());
    }
    // Let the budget refill (it refills with time: there is nothing else
    // to wait on), then spend it round-robin over six tokens.
    std::thread::sleep(Duration::from_secs(3));
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..80 {
        let r = call(&cloud.url, "GET", "/api/v1/auth/whoami", Some(&tokens[i % tokens.len()]), None);
        match r.status {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // One user's budget: a burst of 10, then 5 a second.
    let allowed = 10.0 + 5.0 * elapsed + 2.0;
    println!("FIGURE 80 requests over 6 tokens of one user in {elapsed:.2} s: {ok} answered (one user's budget {allowed:.0})");
    assert!(
        (ok as f64) <= allowed,
        "{ok} requests were answered in {elapsed:.2} s with 6 tokens: more than one user's budget ({allowed:.0})"
    );
}

#[test]
fn identity_tokens_are_capped_in_number_and_life() {
    let cloud = Cloud::server_only();
    user(&cloud, "hoarder", "hoarder-password", "default", "member");
    let session = token_of(&cloud.url, "hoarder", "hoarder-password");
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // No expiry asked: the longest life (90 days by default), not forever.
    let r = call(&cloud.url, "POST", "/api/v1/tokens", Some(&session), Some(&json!({"name": "forever"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let expires = r.json()["expires_at_ms"].as_i64();
    let limit = now_ms() + 90 * 86_400_000 + 60_000;
    assert!(expires.is_some_and(|e| e <= limit), "a token asked for without an expiry expires at {expires:?}");
    // Ten years asked: refused, with the longest life named.
    let r = call(
        &cloud.url,
        "POST",
        "/api/v1/tokens",
        Some(&session),
        Some(&json!({"name": "decade", "expires_in_secs": 10 * 365 * 86400})),
    );
    assert_eq!(r.status, 400, "a 10-year token was accepted: {}", r.body);
    assert!(r.body.contains("longest token life"), "{}", r.body);
    // Mint until refused: at most 50 live tokens (the session counts).
    let mut minted = 2;
    let refusal = loop {
        let r =
            call(&cloud.url, "POST", "/api/v1/tokens", Some(&session), Some(&json!({"name": format!("t{minted}")})));
        if r.status != 201 {
            break r;
        }
        minted += 1;
        assert!(minted <= 60, "60 tokens were minted for one user: no cap");
    };
    assert_eq!(minted, 50, "the cap came at {minted} tokens");
    assert_eq!(refusal.status, 409, "{}", refusal.body);
    assert!(refusal.body.contains("nubo token revoke"), "{}", refusal.body);
    // Signing in again still works: the oldest session makes room.
    assert_eq!(login(&cloud.url, "hoarder", "hoarder-password").status, 200);
    let r = call(&cloud.url, "GET", "/api/v1/auth/whoami", Some(&session), None);
    assert_eq!(r.status, 401, "the oldest session was not the one replaced: {}", r.body);
}

// ---- item 10: LDAP users keep their power after leaving ----

const SERVICE_PW: &str = "service-secret";

/// A private slapd with alice (devs), bob (ops and auditors) and the
/// service account Nubo reads the directory with (in ops, as a directory's
/// own admin group often holds its service accounts).
fn start_slapd() -> Slapd {
    let mut ldif = person("alice", "people", "alice-secret");
    ldif += &person("bob", "people", "bob-secret");
    ldif += &person("nubo", "services", SERVICE_PW);
    ldif += &format!(
        "dn: cn=devs,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: devs\nmember: uid=alice,ou=people,{SUFFIX}\n\n\
         dn: cn=ops,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: ops\nmember: uid=bob,ou=people,{SUFFIX}\n\
         member: uid=nubo,ou=services,{SUFFIX}\n\n\
         dn: cn=auditors,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: auditors\nmember: uid=bob,ou=people,{SUFFIX}\n\n"
    );
    Slapd::start(&ldif)
}

#[test]
fn identity_a_user_removed_from_the_directory_loses_tokens_and_roles() {
    let slapd = start_slapd();
    let config = slapd.dir().join("nubo-ldap.json");
    std::fs::write(
        &config,
        json!({
            "url": slapd.url(),
            "user_dn_template": format!("uid={{user}},ou=people,{SUFFIX}"),
            "group_base": format!("ou=groups,{SUFFIX}"),
            "mappings": [
                {"group": "devs", "project": "dev", "role": "member"},
                {"group": "ops", "project": "ops", "role": "admin"},
                {"group": "auditors", "project": "dev", "role": "reader"}
            ],
            "bind_dn": format!("uid=nubo,ou=services,{SUFFIX}"),
            "bind_password": SERVICE_PW,
            "refresh_secs": 2
        })
        .to_string(),
    )
    .expect("write the LDAP settings");
    let cloud = Cloud::server_with(&["--ldap-config", config.to_str().expect("path")]);
    let alice = token_of(&cloud.url, "alice", "alice-secret");
    let bob = token_of(&cloud.url, "bob", "bob-secret");
    let who = |t: &str| call(&cloud.url, "GET", "/api/v1/auth/whoami", Some(t), None);
    assert_eq!(who(&alice).json()["role"], "member");
    assert_eq!(who(&bob).json()["admin"], true);

    // Alice leaves the company; bob leaves the ops team (he stays an auditor).
    slapd.admin("ldapdelete", &[&format!("uid=alice,ou=people,{SUFFIX}")], None);
    slapd.admin(
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: cn=ops,ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: uid=bob,ou=people,{SUFFIX}\n"
        )),
    );
    let removed = Instant::now();
    // Within one refresh interval (2 s), with room for a loaded machine.
    wait_until("alice's token to be refused", Duration::from_secs(15), || (who(&alice).status == 401).then_some(()));
    wait_until("bob's admin right to go", Duration::from_secs(15), || {
        (who(&bob).json()["admin"] == false).then_some(())
    });
    println!("FIGURE LDAP removal took effect after {:?} (refresh interval 2 s)", removed.elapsed());
    let users = call(&cloud.url, "GET", "/api/v1/users", Some(&cloud.token), None).json();
    let find = |name: &str| users.as_array().and_then(|a| a.iter().find(|u| u["name"] == name)).cloned().expect("user");
    let a = find("alice");
    assert!(
        a["projects"].as_array().is_none_or(|p| p.is_empty()) && a["projects"].as_object().is_none_or(|p| p.is_empty()),
        "alice kept memberships: {a}"
    );
    let b = find("bob");
    assert_eq!(b["admin"], false, "{b}");
    // Bob is still a reader of dev: his token works, without admin power.
    let r = call(&cloud.url, "GET", "/api/v1/hosts", Some(&bob), None);
    assert_eq!(r.status, 403, "bob still reads hosts: {}", r.body);
}

// ---- item 13: anonymous requests fill the audit log ----

#[test]
fn identity_an_anonymous_flood_adds_a_bounded_number_of_audit_rows() {
    let cloud = Cloud::server_only();
    let before = audit_rows(&cloud).len();
    let start = Instant::now();
    for _ in 0..300 {
        let r = call(&cloud.url, "POST", "/api/v1/instances", None, Some(&json!({})));
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let added = audit_rows(&cloud).len() - before;
    // The default budget: 60 at once, then 60 a minute, per address.
    let allowed = 60.0 + elapsed + 2.0;
    println!("FIGURE 300 unauthenticated POSTs in {elapsed:.1} s added {added} audit rows (budget {allowed:.0})");
    assert!((added as f64) <= allowed, "300 unauthenticated requests added {added} audit rows in {elapsed:.1} s");
    // An authenticated change is still logged.
    let r = call(&cloud.url, "POST", "/api/v1/projects", Some(&cloud.token), Some(&json!({"name": "audited"})));
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(audit_rows(&cloud).iter().any(|e| e["path"] == "/api/v1/projects" && e["actor"] == "admin"));
}

#[test]
fn identity_audit_rows_past_the_retention_are_deleted() {
    let cloud = Cloud::server_with(&["--audit-retention", "3s"]);
    let r = call(&cloud.url, "POST", "/api/v1/projects", Some(&cloud.token), Some(&json!({"name": "short-lived"})));
    assert_eq!(r.status, 201, "{}", r.body);
    let logged = |c: &Cloud| audit_rows(c).iter().any(|e| e["path"] == "/api/v1/projects" && e["status"] == 201);
    assert!(logged(&cloud), "the change was not audited");
    wait_until("the entry past its retention to be deleted", Duration::from_secs(15), || {
        (!logged(&cloud)).then_some(())
    });
}
