//! Tenancy through the CLI against real processes (`nubo server` and
//! `nubo agent`): users sign in with `nubo login`, and a member of one
//! project can neither list, read, change nor guess another project's
//! instances; tokens are created and revoked; the audit log has it all.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs the CLI as a signed-in user: no NUBO_URL/NUBO_TOKEN, only the
/// session `nubo login` saved under `config_home`.
fn as_user(config_home: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(nubo_bin())
        .args(args)
        .env_remove("NUBO_URL")
        .env_remove("NUBO_TOKEN")
        .env("XDG_CONFIG_HOME", config_home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nubo");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.unwrap_or("").as_bytes());
    }
    child.wait_with_output().expect("nubo output")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a refusal, got success: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
}

#[test]
fn members_are_isolated_through_the_cli() {
    let cloud = Cloud::split();
    for (user, project) in [("alice", "proj-a"), ("bob", "proj-b")] {
        cloud.nubo_ok(&["project", "create", project]);
        cloud.create_member(project, user, "password-of-user");
    }
    let homes = tempfile::tempdir().unwrap();
    let alice = homes.path().join("alice");
    let bob = homes.path().join("bob");
    let login = |home: &std::path::Path, user: &str, pw: &str| {
        as_user(home, &["login", "--url", &cloud.url, "--user", user, "--password-stdin"], Some(pw))
    };
    refused(login(&alice, "alice", "wrong-password"), "invalid username or password");
    assert!(ok(login(&alice, "alice", "password-of-user")).contains("project proj-a (role member)"));
    ok(login(&bob, "bob", "password-of-user"));

    let a_id = ok(as_user(&alice, &["instance", "run", "--memory", "128"], None)).trim().to_string();
    let b_id = ok(as_user(&bob, &["instance", "run", "--memory", "128"], None)).trim().to_string();

    let list: serde_json::Value =
        serde_json::from_str(&ok(as_user(&alice, &["instance", "list", "-o", "json"], None))).unwrap();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a_id.as_str()]);
    refused(as_user(&alice, &["instance", "show", &b_id], None), "does not exist");
    refused(as_user(&alice, &["instance", "console", &b_id], None), "does not exist");
    refused(as_user(&alice, &["instance", "stop", &b_id], None), "does not exist");
    refused(as_user(&alice, &["instance", "terminate", &b_id], None), "does not exist");
    refused(as_user(&alice, &["instance", "show", "i-00000000000000001"], None), "does not exist");
    refused(as_user(&alice, &["host", "list"], None), "admin role");
    refused(as_user(&alice, &["audit", "list"], None), "admin role");
    assert_eq!(cloud.instance(&b_id)["desired_state"], "running", "bob's instance was not touched");

    // Tokens: create, use, revoke, refused.
    let created: serde_json::Value =
        serde_json::from_str(&ok(as_user(&alice, &["token", "create", "--name", "ci", "-o", "json"], None))).unwrap();
    let (tid, secret) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let with_token = |args: &[&str]| {
        Command::new(nubo_bin()).args(args).env("NUBO_URL", &cloud.url).env("NUBO_TOKEN", secret).output().unwrap()
    };
    ok(with_token(&["instance", "list"]));
    ok(as_user(&alice, &["token", "revoke", tid], None));
    refused(with_token(&["instance", "list"]), "revoked");

    // The operator's audit log names alice's refused attempts.
    let audit = cloud.nubo_json(&["audit", "list", "--limit", "500"]);
    let entries = audit.as_array().unwrap();
    assert!(entries.iter().any(|e| e["actor"] == "alice"
        && e["path"] == format!("/api/v1/instances/{b_id}/stop")
        && e["outcome"] == "denied"));
    assert!(entries.iter().any(|e| e["path"] == "/api/v1/auth/login" && e["status"] == 401));
    assert!(entries.iter().any(|e| e["actor"] == "alice" && e["path"] == format!("/api/v1/tokens/{tid}")));

    ok(as_user(&alice, &["instance", "terminate", &a_id, "--wait"], None));
    ok(as_user(&bob, &["instance", "terminate", &b_id, "--wait"], None));
}
