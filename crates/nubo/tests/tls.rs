//! HTTPS: `nubo server --tls` (with a generated CA, or the operator's
//! certificate) and `nubo up --tls`, driven through the real binary, the
//! CLI and curl. Only `up_tls_*` needs the tiny image (it starts an
//! agent, but no VM); the rest needs no VM at all. With
//! `NUBO_TEST_DATABASE` each server keeps its state in a PostgreSQL
//! database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use common::{image_cache, nubo_bin, wait_until, ServerDatabase, HOST_ARGS};
use nubo_testkit::free_port;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A `nubo server`/`nubo up` process, killed on drop (with its log shown
/// if the test failed).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Starts `nubo <args> --data-dir DIR --listen LISTEN` with its state in
/// `db`, and waits for DIR/admin.env; returns the daemon and admin.env's
/// values.
fn start(args: &[&str], dir: &Path, db: &ServerDatabase, listen: &str) -> (Daemon, HashMap<String, String>) {
    let env_file = dir.join("admin.env");
    let _ = std::fs::remove_file(&env_file);
    let log = dir.with_extension("log");
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
    let child = Command::new(nubo_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(listen)
        .args(db.args())
        .env("NUBO_IMAGE_CACHE", image_cache())
        .env_remove("NUBO_CA_CERT")
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("spawn nubo");
    let mut daemon = Daemon { child, log };
    let text = wait_until("admin.env", Duration::from_secs(600), || {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            panic!("nubo {args:?} exited early with {status}");
        }
        std::fs::read_to_string(&env_file).ok()
    });
    let values = text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    (daemon, values)
}

/// Runs the CLI with NUBO_URL/NUBO_TOKEN from `env`, and NUBO_CA_CERT = `ca`.
fn nubo(env: &HashMap<String, String>, ca: Option<&Path>, args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(nubo_bin());
    cmd.args(args)
        .env("NUBO_URL", &env["NUBO_URL"])
        .env("NUBO_TOKEN", &env["NUBO_TOKEN"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("NUBO_CA_CERT")
        .stdin(Stdio::null());
    if let Some(ca) = ca {
        cmd.env("NUBO_CA_CERT", ca);
    }
    cmd.output().expect("run nubo")
}

fn hosts(env: &HashMap<String, String>, ca: &Path) -> Vec<Value> {
    let out = nubo(env, Some(ca), &["host", "list", "-o", "json"]);
    assert!(out.status.success(), "host list over HTTPS failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json output");
    v.as_array().expect("a list of hosts").clone()
}

/// curl's body and HTTP status (0 if there was no HTTP answer).
fn curl(args: &[&str]) -> (String, u16) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]).args(args).output();
    let out = out.expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_string(), code.trim().parse().unwrap_or(0))
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn server_tls_with_a_generated_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let db = ServerDatabase::from_env();
    let (daemon, env) = start(&["server", "--tls"], &dir, &db, &listen);
    db.assert_used_by(&dir);

    assert_eq!(env["NUBO_URL"], format!("https://{listen}"));
    let ca = dir.join("tls/ca.pem");
    assert_eq!(Path::new(&env["NUBO_CA_CERT"]), ca);
    for key in ["tls/ca-key.pem", "tls/server-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(key)).expect("key file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    // The CLI trusts the server through NUBO_CA_CERT...
    assert!(hosts(&env, &ca).is_empty());
    // The audit log still sees the client's address (ConnectInfo over TLS).
    assert!(nubo(&env, Some(&ca), &["host", "join-token"]).status.success());
    let out = nubo(&env, Some(&ca), &["audit", "list", "-o", "json"]);
    assert!(out.status.success(), "audit list failed: {}", String::from_utf8_lossy(&out.stderr));
    let audit: Value = serde_json::from_slice(&out.stdout).expect("json output");
    let entry =
        audit.as_array().and_then(|a| a.iter().find(|e| e["path"].as_str().is_some_and(|p| p.contains("join"))));
    assert_eq!(entry.map(|e| e["source"].clone()), Some(Value::from("127.0.0.1")), "audit: {audit}");
    // ...and without it says what is wrong and what to do.
    let out = nubo(&env, None, &["host", "list", "-o", "json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "host list without the CA succeeded");
    assert!(err.contains("certificate") && err.contains("NUBO_CA_CERT"), "unhelpful error: {err}");
    // A CA file that is not there is named.
    let out = nubo(&env, Some(&dir.join("nope.pem")), &["host", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope.pem"), "unhelpful error: {err}");

    // curl with the CA gets the API; plain HTTP to the same port gets nothing.
    let ca_arg = ca.to_str().expect("utf-8 path");
    assert_eq!(curl(&["--cacert", ca_arg, &format!("https://{listen}/api/v1/health")]), ("ok".to_string(), 200));
    assert_eq!(curl(&["--cacert", ca_arg, &format!("https://localhost:{port}/api/v1/health")]).1, 200);
    let (body, code) = curl(&[&format!("http://{listen}/api/v1/health")]);
    assert!(code != 200 && !body.contains("ok"), "plain HTTP answered: {code} {body:?}");
    let (body, _) = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", env["NUBO_TOKEN"]),
        &format!("http://{listen}/api/v1/hosts"),
    ]);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "plain HTTP returned API data: {body:?}");

    // A restart reuses the CA and the certificate.
    let (ca_pem, server_pem) = (read(&ca), read(&dir.join("tls/server.pem")));
    drop(daemon);
    let (daemon, env) = start(&["server", "--tls"], &dir, &db, &listen);
    assert_eq!(read(&ca), ca_pem);
    assert_eq!(read(&dir.join("tls/server.pem")), server_pem);
    assert!(hosts(&env, &ca).is_empty());
    drop(daemon);

    // A new listen address gets a new server certificate from the same CA.
    let listen2 = format!("127.0.0.2:{}", free_port());
    let (_daemon, env) = start(&["server", "--tls"], &dir, &db, &listen2);
    assert_eq!(read(&ca), ca_pem);
    assert_ne!(read(&dir.join("tls/server.pem")), server_pem);
    assert!(hosts(&env, &ca).is_empty());
    assert_eq!(curl(&["--cacert", ca_arg, &format!("https://{listen2}/api/v1/health")]).0, "ok");
}

#[test]
fn server_tls_with_the_operators_certificate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Any CA and certificate will do: take the ones another server generated.
    let issuer_db = ServerDatabase::from_env();
    let issuer_dir = tmp.path().join("issuer");
    let (issuer, _) = start(&["server", "--tls"], &issuer_dir, &issuer_db, &format!("127.0.0.1:{}", free_port()));
    drop(issuer);
    let tls = tmp.path().join("issuer/tls");
    let (cert, key, ca) = (tls.join("server.pem"), tls.join("server-key.pem"), tls.join("ca.pem"));
    let (cert_s, key_s) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));

    let dir = tmp.path().join("data");
    let listen = format!("127.0.0.1:{}", free_port());
    let db = ServerDatabase::from_env();
    let (_daemon, env) = start(&["server", "--tls-cert", cert_s, "--tls-key", key_s], &dir, &db, &listen);
    db.assert_used_by(&dir);
    assert_eq!(env["NUBO_URL"], format!("https://{listen}"));
    assert!(!env.contains_key("NUBO_CA_CERT"), "no CA of ours to trust: {env:?}");
    assert!(!dir.join("tls").exists(), "a CA was generated next to the operator's certificate");
    assert!(hosts(&env, &ca).is_empty());

    // Bad files stop the server at once with a message naming them.
    let bad = |args: &[&str], needles: &[&str]| {
        let out = Command::new(nubo_bin())
            .args(["server", "--data-dir"])
            .arg(tmp.path().join("bad"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("run nubo");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "nubo server {args:?} started");
        assert!(needles.iter().all(|n| err.contains(n)), "nubo server {args:?}: unhelpful error: {err}");
    };
    bad(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", key_s], &["/nonexistent/cert.pem", "--tls-cert"]);
    let ca_key = tls.join("ca-key.pem");
    bad(&["--tls-cert", cert_s, "--tls-key", ca_key.to_str().expect("utf-8")], &["ca-key.pem", "key"]);
    bad(&["--tls-cert", cert_s], &["--tls-key"]);
}

#[test]
fn up_tls_local_agent_joins_over_https() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut args = vec!["up", "--tls", "--host-name", "tls-host"];
    args.extend(HOST_ARGS);
    let db = ServerDatabase::from_env();
    let (_daemon, env) = start(&args, &dir, &db, &format!("127.0.0.1:{}", free_port()));
    assert!(env["NUBO_URL"].starts_with("https://"));
    let ca = PathBuf::from(&env["NUBO_CA_CERT"]);
    let host = wait_until("the local agent to report over HTTPS", Duration::from_secs(60), || {
        hosts(&env, &ca).into_iter().find(|h| h["name"] == "tls-host" && h["state"] == "up")
    });
    assert_eq!(host["name"], "tls-host");
    db.assert_used_by(&dir);
}
