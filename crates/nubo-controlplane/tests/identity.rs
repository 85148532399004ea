//! Tenancy and security through the real router (no socket, no VM):
//! project isolation, roles, token expiry and revocation, quotas under
//! parallel requests, host joins, and the audit log of every attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use axum::http::StatusCode;
use common::T;
use nubo_api::ids::HostId;
use serde_json::{json, Value};
use std::sync::Arc;

fn small() -> Value {
    json!({"image": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})
}

#[tokio::test]
async fn a_member_of_a_cannot_see_touch_or_guess_b_resources() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let b_inst = t.ok("POST", "/api/v1/instances", &bob, Some(small())).await;
    let b_id = b_inst["id"].as_str().unwrap();
    let a_inst = t.ok("POST", "/api/v1/instances", &alice, Some(small())).await;

    // List: only her own.
    let list = t.ok("GET", "/api/v1/instances", &alice, None).await;
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a_inst["id"].as_str().unwrap()]);
    // Read, change, console: B's instance does not exist for her (no probing).
    for (method, path) in [
        ("GET", format!("/api/v1/instances/{b_id}")),
        ("GET", format!("/api/v1/instances/{b_id}/console")),
        ("POST", format!("/api/v1/instances/{b_id}/stop")),
        ("POST", format!("/api/v1/instances/{b_id}/reboot")),
        ("DELETE", format!("/api/v1/instances/{b_id}")),
    ] {
        let (s, v) = t.call(method, &path, Some(&alice), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    // A guessed id answers exactly like a real one of another project.
    let (s, guessed) = t.call("GET", "/api/v1/instances/i-0000000000000000a", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, real) = t.call("GET", &format!("/api/v1/instances/{b_id}"), Some(&alice), None).await;
    assert_eq!(guessed["error"]["code"], real["error"]["code"]);
    // Bob's instance is untouched.
    let still = t.ok("GET", &format!("/api/v1/instances/{b_id}"), &bob, None).await;
    assert_eq!(still["desired_state"], "running");
    // Operator-only endpoints are refused to members.
    for path in ["/api/v1/hosts", "/api/v1/users", "/api/v1/audit"] {
        let (s, _) = t.call("GET", path, Some(&alice), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
    }
    // The operator sees both.
    let all = t.ok("GET", "/api/v1/instances", &t.admin.clone(), None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    // Each refused attempt is in the audit log, with who and the outcome.
    let audit = t.audit().await;
    assert!(audit.iter().any(|e| e["actor"] == "alice"
        && e["method"] == "POST"
        && e["path"] == format!("/api/v1/instances/{b_id}/stop")
        && e["outcome"] == "denied"
        && e["status"] == 404));
    assert!(audit.iter().any(|e| e["actor"] == "bob" && e["path"] == "/api/v1/instances" && e["outcome"] == "ok"));
}

#[tokio::test]
async fn a_reader_reads_but_cannot_change() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let carol = t.user("carol", "proj-a", "reader").await;
    let i = t.ok("POST", "/api/v1/instances", &alice, Some(small())).await;
    let id = i["id"].as_str().unwrap();
    t.ok("GET", &format!("/api/v1/instances/{id}"), &carol, None).await;
    let (s, v) = t.call("POST", &format!("/api/v1/instances/{id}/stop"), Some(&carol), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("member role"));
    let (s, _) = t.call("POST", "/api/v1/instances", Some(&carol), Some(small())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn wrong_password_expired_and_revoked_tokens_are_refused() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let (s, v) =
        t.call("POST", "/api/v1/auth/login", None, Some(json!({"username": "alice", "password": "nope-nope"}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["message"], "invalid username or password");
    let (s, _) =
        t.call("POST", "/api/v1/auth/login", None, Some(json!({"username": "nobody", "password": "whatever1"}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Expiry.
    let short = t.ok("POST", "/api/v1/tokens", &alice, Some(json!({"name": "short", "expires_in_secs": 1}))).await;
    let short = short["token"].as_str().unwrap().to_string();
    t.ok("GET", "/api/v1/auth/whoami", &short, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, v) = t.call("GET", "/api/v1/auth/whoami", Some(&short), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));

    // Revocation, effective at once; a user cannot revoke someone else's token.
    let long = t.ok("POST", "/api/v1/tokens", &alice, Some(json!({"name": "ci"}))).await;
    let (long_id, long) = (long["id"].as_str().unwrap().to_string(), long["token"].as_str().unwrap().to_string());
    let bob = t.user("bob", "proj-b", "member").await;
    let (s, _) = t.call("DELETE", &format!("/api/v1/tokens/{long_id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.ok("GET", "/api/v1/instances", &long, None).await;
    t.ok("DELETE", &format!("/api/v1/tokens/{long_id}"), &alice, None).await;
    let (s, _) = t.call("GET", "/api/v1/instances", Some(&long), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let tokens = t.ok("GET", "/api/v1/tokens", &alice, None).await;
    assert!(tokens.as_array().unwrap().iter().any(|x| x["id"] == long_id.as_str() && x["revoked"] == true));
    // Tokens are stored hashed: the secret is nowhere in the database file.
    let db = t.database_bytes().await;
    assert!(!db.windows(long.len()).any(|w| w == long.as_bytes()));

    let audit = t.audit().await;
    assert!(audit.iter().any(|e| e["path"] == "/api/v1/auth/login" && e["status"] == 401));
    assert!(audit.iter().any(|e| e["path"] == format!("/api/v1/tokens/{long_id}") && e["actor"] == "alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quotas_hold_under_20_parallel_requests() {
    let t = T::new().await;
    t.add_host().await;
    let alice = t.user("alice", "proj-a", "member").await;
    t.ok("PUT", "/api/v1/projects/proj-a/quota", &t.admin.clone(), Some(json!({"instances": 3}))).await;
    let t = Arc::new(t);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (t, alice) = (t.clone(), alice.clone());
        tasks.push(tokio::spawn(async move { t.call("POST", "/api/v1/instances", Some(&alice), Some(small())).await }));
    }
    let mut created = 0;
    for task in tasks {
        let (s, v) = task.await.unwrap();
        match s {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => {
                assert_eq!(v["error"]["code"], "quota_exceeded");
                assert!(v["error"]["message"].as_str().unwrap().contains("instances 3/3"), "{v}");
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(created, 3);
    let projects = t.ok("GET", "/api/v1/projects", &alice, None).await;
    assert_eq!(projects[0]["used"]["instances"], 3);
    // vCPU quota too.
    t.ok("PUT", "/api/v1/projects/proj-a/quota", &t.admin.clone(), Some(json!({"instances": 100, "vcpus": 4}))).await;
    let (s, v) = t
        .call(
            "POST",
            "/api/v1/instances",
            Some(&alice),
            Some(json!({"image": "tiny", "vcpus": 2, "memory_mib": 128, "disk_gib": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn a_host_cannot_register_without_joining() {
    let t = T::new().await;
    let id = HostId::generate();
    let reg = json!({"host_id": id, "name": "rogue", "accel": "tcg", "vcpus": 8, "memory_mib": 8192, "disk_gib": 10});
    let (s, _) = t.call("POST", "/api/v1/agent/register", None, Some(reg.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = t.call("POST", "/api/v1/agent/register", Some("nubo_made_up"), Some(reg.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A user token is not a host credential either.
    let (s, _) = t.call("POST", "/api/v1/agent/register", Some(&t.admin), Some(reg.clone())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A made-up join token is refused; a real one works once.
    let (s, _) =
        t.call("POST", "/api/v1/agent/join", None, Some(json!({"join_token": "nubo_guess", "host_id": id}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let join =
        t.ok("POST", "/api/v1/hosts/join-tokens", &t.admin.clone(), None).await["token"].as_str().unwrap().to_string();
    let v = t.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": id}))).await;
    let cred = v["credential"].as_str().unwrap().to_string();
    let (s, _) = t
        .call("POST", "/api/v1/agent/join", None, Some(json!({"join_token": join, "host_id": HostId::generate()})))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a join token is one-time");
    t.ok("POST", "/api/v1/agent/register", &cred, Some(reg)).await;
    // The credential only acts as its own host.
    let other = HostId::generate();
    let reg2 =
        json!({"host_id": other, "name": "other", "accel": "tcg", "vcpus": 8, "memory_mib": 8192, "disk_gib": 10});
    let (s, _) = t.call("POST", "/api/v1/agent/register", Some(&cred), Some(reg2)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let hosts = t.ok("GET", "/api/v1/hosts", &t.admin.clone(), None).await;
    assert_eq!(hosts.as_array().unwrap().len(), 1);
    // Members cannot mint join tokens.
    let alice = t.user("alice", "proj-a", "member").await;
    let (s, _) = t.call("POST", "/api/v1/hosts/join-tokens", Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let audit = t.audit().await;
    assert!(audit
        .iter()
        .any(|e| e["path"] == "/api/v1/agent/register" && e["actor"] == "anonymous" && e["status"] == 401));
    assert!(audit.iter().any(|e| e["path"] == "/api/v1/agent/join" && e["outcome"] == "denied"));
    assert!(audit
        .iter()
        .any(|e| e["path"] == "/api/v1/hosts/join-tokens" && e["actor"] == "alice" && e["status"] == 403));
}

#[tokio::test]
async fn each_credential_is_rate_limited() {
    let t = T::with(|config| config.rate_per_sec = 5).await;
    let mut limited = 0;
    let started = std::time::Instant::now();
    for _ in 0..30 {
        let (s, v) = t.call("GET", "/api/v1/instances", Some(&t.admin), None).await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(v["error"]["message"].as_str().unwrap().contains("slow down"));
            limited += 1;
        }
    }
    // A burst of 10, then 5 a second: in under a second at least 15 of 30
    // are limited; on a loaded machine the loop takes longer, and the
    // limiter lets through what the elapsed time has refilled.
    let refilled = (5.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    let answered = 30 - limited;
    assert!(
        limited >= 1 && answered <= 10 + refilled,
        "{answered} of 30 rapid requests answered in {:?} (burst 10, then 5 a second)",
        started.elapsed()
    );
}

#[tokio::test]
async fn access_keys_are_issued_once_stored_sealed_and_revocable() {
    let t = T::new().await;
    let alice = t.user("alice", "proj-a", "member").await;
    let bob = t.user("bob", "proj-b", "member").await;
    let k = t.ok("POST", "/api/v1/access-keys", &alice, None).await;
    let (id, secret) = (k["access_key_id"].as_str().unwrap(), k["secret_access_key"].as_str().unwrap());
    assert!(id.starts_with("AKIA") && id.len() == 20, "{id}");
    assert_eq!(secret.len(), 40);
    assert_eq!(k["project"], "proj-a");
    // Listed without the secret.
    let list = t.ok("GET", "/api/v1/access-keys", &alice, None).await;
    assert_eq!(list[0]["access_key_id"], id);
    assert!(!list.to_string().contains(secret));
    // The server can read the secret back (SigV4 needs it), the database alone cannot.
    let (sealed, _, _) = t.ctx.store.access_key_secret(id).await.unwrap().unwrap();
    assert_eq!(t.ctx.sealer.unseal(&sealed).unwrap(), secret);
    let db = t.database_bytes().await;
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
    // Only its owner (or an operator) can revoke it; then it is gone for SigV4.
    let (s, _) = t.call("DELETE", &format!("/api/v1/access-keys/{id}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.ok("DELETE", &format!("/api/v1/access-keys/{id}"), &alice, None).await;
    assert!(t.ctx.store.access_key_secret(id).await.unwrap().is_none());
}

#[tokio::test]
async fn tokens_from_before_the_lifetime_cap_get_one_but_the_bootstrap_admins() {
    let t = T::new().await;
    let store = &t.ctx.store;
    let old = store.upsert_user("old-timer", "local", None, false).await.unwrap();
    store.issue_token(&old.id, None, "forever", None).await.unwrap();
    let bootstrap = t.ctx.bootstrap_admin_token().await.unwrap();
    let day = 86_400_000;
    assert_eq!(store.cap_token_lifetimes(day).await.unwrap(), 1);
    for tok in store.tokens(None).await.unwrap() {
        match tok.name.as_str() {
            "forever" => assert_eq!(tok.expires_at_ms, Some(tok.created_at_ms + day)),
            // admin.env's token stays usable across restarts.
            "bootstrap" => assert_eq!(tok.expires_at_ms, None),
            _ => {}
        }
    }
    assert!(store.token_owner(&bootstrap).await.unwrap().is_some());
    // Run again: nothing left to cap.
    assert_eq!(store.cap_token_lifetimes(day).await.unwrap(), 0);
}

/// Hosts' credentials and registrations are answered from memory once
/// read (`known_hosts`): that memory must not let a credential act for
/// another host, let a made-up one in, or call a host registered before
/// it has.
#[tokio::test]
async fn remembered_host_credentials_still_refuse_what_they_must() {
    let t = T::new().await;
    let (a, cred_a) = t.add_host_with_id().await;
    let (b, _) = t.add_host_with_id().await;
    for _ in 0..3 {
        let (status, _) = t.call("POST", &format!("/api/v1/agent/hosts/{a}/heartbeat"), Some(&cred_a), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, body) = t.call("POST", &format!("/api/v1/agent/hosts/{b}/heartbeat"), Some(&cred_a), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = t.call("GET", &format!("/api/v1/agent/hosts/{b}/desired"), Some(&cred_a), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let mut forged = cred_a.clone();
    let last = if forged.ends_with('A') { 'B' } else { 'A' };
    forged.pop();
    forged.push(last);
    for made_up in [forged.as_str(), "not-a-credential", ""] {
        let (status, body) = t.call("POST", &format!("/api/v1/agent/hosts/{a}/heartbeat"), Some(made_up), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{made_up:?}: {body}");
    }

    // Joined but not registered: its state is not found until it registers.
    let (join, _) = t.ctx.store.create_join_token(60_000).await.unwrap();
    let c = HostId::generate();
    let v = t.ok("POST", "/api/v1/agent/join", "", Some(json!({"join_token": join, "host_id": c}))).await;
    let cred_c = v["credential"].as_str().unwrap().to_string();
    let desired = format!("/api/v1/agent/hosts/{c}/desired");
    let (status, body) = t.call("GET", &desired, Some(&cred_c), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let reg = json!({"host_id": c, "name": "h3", "accel": "tcg", "vcpus": 4, "memory_mib": 4096, "disk_gib": 10});
    t.ok("POST", "/api/v1/agent/register", &cred_c, Some(reg)).await;
    let (status, body) = t.call("GET", &desired, Some(&cred_c), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
