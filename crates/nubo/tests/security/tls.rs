//! Credentials never cross a LAN in clear (issue 19, item 14): a
//! `nubo server` listening on a non-loopback address serves HTTPS with a
//! CA of its own without being asked, and an agent joins it with nothing
//! but `--server https://ADDR:PORT --join-token T`: the token carries the
//! SHA-256 fingerprint of the server's CA, the agent fetches the CA,
//! accepts it only if the fingerprint matches, and keeps it for later.
//!
//! The "LAN" is two network namespaces this test makes, joined by a veth
//! pair on 10.231.0.0/24: the server listens on 10.231.0.1 inside one, the
//! agent (simulated driver: the point is the control-plane connection, not
//! the VM) and the CLI run in the other. Nothing is sent anywhere else.
//! Needs root for the namespaces; without it the tests fail, saying so.
//! With `NUBO_TEST_DATABASE` each server keeps its state in a PostgreSQL
//! database of its own, reached from its namespace through a relay.

use crate::common::{image_cache, nubo_bin, sh, sh_ok, wait_until, ServerDatabase, HOST_ARGS};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SERVER_IP: &str = "10.231.0.1";

/// Two namespaces joined by a veth pair: `srv` holds 10.231.0.1, `lan`
/// 10.231.0.2. Removed on drop.
struct Lan {
    srv: String,
    lan: String,
}

impl Lan {
    fn new(tag: &str) -> Self {
        let prefix = format!("tls{tag}{}", std::process::id() % 100_000);
        let (srv, lan) = (format!("{prefix}s"), format!("{prefix}l"));
        let probe = sh(&format!("ip netns add {srv}"));
        assert!(
            probe.status.success(),
            "this test needs to make network namespaces (run it as root): {}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let l = Lan { srv, lan };
        sh_ok(&format!(
            "ip netns add {lan} && ip link add eth0 netns {srv} type veth peer name eth0 netns {lan} && \
             ip -n {srv} addr add {SERVER_IP}/24 dev eth0 && ip -n {lan} addr add 10.231.0.2/24 dev eth0 && \
             ip -n {srv} link set eth0 up && ip -n {lan} link set eth0 up && \
             ip -n {srv} link set lo up && ip -n {lan} link set lo up",
            srv = l.srv,
            lan = l.lan
        ));
        l
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.lan));
        let _ = sh(&format!("ip netns del {}", self.srv));
    }
}

/// A `nubo server` or `nubo agent` process, killed on drop (its log shown
/// if the test failed).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Runs `nubo ARGS` inside namespace `ns`, logging to `log`.
    fn spawn(ns: &str, args: &[&str], log: &Path) -> Self {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, nubo_bin()])
            .args(args)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env_remove("NUBO_CA_CERT")
            .env_remove("NUBO_URL")
            .env_remove("NUBO_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("spawn nubo");
        Daemon { child, log: log.to_path_buf() }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    /// Waits for the process to end by itself; its exit status and log.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let status = wait_until("the process to exit", limit, || self.child.try_wait().ok().flatten());
        (status, self.log_text())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// A `nubo server` in `ns` on `listen` (plus `extra` flags) with its data
/// in `dir` and `db`; waits for admin.env and join.token. Returns the
/// server, admin.env's values and the join token.
fn server(
    ns: &str,
    dir: &Path,
    db: &mut ServerDatabase,
    listen: &str,
    extra: &[&str],
) -> (Daemon, HashMap<String, String>, String) {
    let dir_s = dir.to_str().expect("utf-8 path");
    let database = db.args_in_netns(ns);
    let mut args = vec!["server", "--data-dir", dir_s, "--listen", listen];
    args.extend(extra);
    args.extend(database.iter().map(String::as_str));
    let mut d = Daemon::spawn(ns, &args, &dir.with_extension("log"));
    let (env, join) = wait_until("the server's admin.env and join.token", Duration::from_secs(120), || {
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("nubo server {extra:?} exited early with {status}:\n{}", d.log_text());
        }
        let env = std::fs::read_to_string(dir.join("admin.env")).ok()?;
        let join = std::fs::read_to_string(dir.join("join.token")).ok()?;
        Some((env, join.trim().to_string()))
    });
    let values = env
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    (d, values, join)
}

/// `nubo agent` in `ns` with only the given flags (and the test's host
/// capacity), its data in `dir`.
fn agent(ns: &str, dir: &Path, name: &str, flags: &[&str]) -> Daemon {
    let dir_s = dir.to_str().expect("utf-8 path");
    let mut args = vec!["agent", "--data-dir", dir_s, "--host-name", name, "--hypervisor", "simulated"];
    args.extend(flags);
    args.extend(HOST_ARGS);
    Daemon::spawn(ns, &args, &dir.with_extension("log"))
}

/// The CLI in `ns` with NUBO_URL/NUBO_TOKEN from `env` and NUBO_CA_CERT
/// as admin.env sets it (or unset).
fn cli(ns: &str, env: &HashMap<String, String>, with_ca: bool, args: &[&str], stdin: &str) -> Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, nubo_bin()])
        .args(args)
        .env("NUBO_URL", &env["NUBO_URL"])
        .env("NUBO_TOKEN", &env["NUBO_TOKEN"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("NUBO_CA_CERT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ca) = env.get("NUBO_CA_CERT").filter(|_| with_ca) {
        cmd.env("NUBO_CA_CERT", ca);
    }
    let mut child = cmd.spawn().expect("run nubo");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("run nubo")
}

fn cli_json(ns: &str, env: &HashMap<String, String>, args: &[&str]) -> Value {
    let out = cli(ns, env, true, args, "");
    assert!(out.status.success(), "nubo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

fn host_state(ns: &str, env: &HashMap<String, String>, name: &str) -> Option<String> {
    let hosts = cli_json(ns, env, &["host", "list", "-o", "json"]);
    hosts.as_array()?.iter().find(|h| h["name"] == name).and_then(|h| h["state"].as_str().map(String::from))
}

/// curl from `ns`: (HTTP status, 0 without an HTTP answer; body).
fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn an_agent_joins_a_lan_server_over_tls_with_only_the_join_token() {
    let net = Lan::new("j");
    let tmp = tempfile::tempdir().expect("tempdir");
    let listen = format!("{SERVER_IP}:8780");
    let sdir = tmp.path().join("server");
    let mut db = ServerDatabase::from_env();
    let (_server, env, join) = server(&net.srv, &sdir, &mut db, &listen, &[]);
    db.assert_used_by(&sdir);

    // HTTPS without --tls, with the server's own CA; the CLI trusts it
    // through NUBO_CA_CERT, as admin.env says.
    assert_eq!(env["NUBO_URL"], format!("https://{listen}"), "a LAN listener must serve HTTPS by default");
    assert_eq!(Path::new(&env["NUBO_CA_CERT"]), sdir.join("tls/ca.pem"));
    // Plain HTTP to that port gets no API.
    let (code, body) = curl(&net.lan, &[&format!("http://{listen}/api/v1/health")]);
    assert!(code != 200 && !body.contains("ok"), "plain HTTP answered on the LAN: {code} {body:?}");

    // The agent gets the URL and the token, nothing else.
    let adir = tmp.path().join("agent");
    let url = format!("https://{listen}");
    let a = agent(&net.lan, &adir, "lan-host", &["--server", &url, "--join-token", &join]);
    wait_until("the LAN host to be up", Duration::from_secs(60), || {
        (host_state(&net.lan, &env, "lan-host").as_deref() == Some("up")).then_some(())
    });
    // It pinned the server's CA, the one the token named.
    assert_eq!(read(&adir.join("server-ca.pem")), read(&sdir.join("tls/ca.pem")));
    // Tokens minted through the API name the same CA.
    let fingerprint = join.split_once(".ca-sha256-").map(|(_, fp)| fp.to_string()).expect("a fingerprint");
    let out = cli(&net.lan, &env, true, &["host", "join-token"], "");
    let minted = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && minted.ends_with(&format!(".ca-sha256-{fingerprint}")), "{minted}");

    // An instance runs there.
    let out =
        cli(&net.lan, &env, true, &["instance", "run", "--image", "tiny", "--memory", "128", "--name", "lan"], "");
    assert!(out.status.success(), "instance run failed: {}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    wait_until("the instance to run on the LAN host", Duration::from_secs(60), || {
        let i = cli_json(&net.lan, &env, &["instance", "show", &id, "-o", "json"]);
        (i["state"] == "running").then_some(())
    });

    // Restarted without the token, the agent uses the CA it kept.
    let log = a.stop();
    assert!(log.contains("agent registered"), "{log}");
    let before = log.matches("agent registered").count();
    let a = agent(&net.lan, &adir, "lan-host", &["--server", &url]);
    wait_until("the restarted agent to register again", Duration::from_secs(60), || {
        (a.log_text().matches("agent registered").count() > before).then_some(())
    });

    // `nubo login` to the https URL: an unknown CA is refused with what to
    // do; with NUBO_CA_CERT it signs in.
    let out = cli(&net.lan, &env, true, &["user", "create", "alice"], "alice-pw-123456\n");
    assert!(out.status.success(), "user create: {}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&net.lan, &env, true, &["project", "add-member", "default", "alice"], "");
    assert!(out.status.success(), "add-member: {}", String::from_utf8_lossy(&out.stderr));
    let login = ["login", "--url", url.as_str(), "--user", "alice", "--password-stdin"];
    let out = cli(&net.lan, &env, false, &login, "alice-pw-123456\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "login trusted an unknown CA");
    assert!(err.contains("certificate") && err.contains("NUBO_CA_CERT"), "unhelpful error: {err}");
    let out = cli(&net.lan, &env, true, &login, "alice-pw-123456\n");
    assert!(out.status.success(), "login with the CA failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_join_token_for_another_servers_ca_is_refused() {
    let net = Lan::new("x");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a_listen, b_listen) = (format!("{SERVER_IP}:8780"), format!("{SERVER_IP}:8781"));
    let (mut a_db, mut b_db) = (ServerDatabase::from_env(), ServerDatabase::from_env());
    let (_a, a_env, _) = server(&net.srv, &tmp.path().join("a"), &mut a_db, &a_listen, &[]);
    let (_b, _, b_join) = server(&net.srv, &tmp.path().join("b"), &mut b_db, &b_listen, &[]);
    a_db.assert_used_by(&tmp.path().join("a"));
    b_db.assert_used_by(&tmp.path().join("b"));
    assert!(
        a_env["NUBO_URL"].starts_with("https://"),
        "a LAN listener must serve HTTPS by default: {}",
        a_env["NUBO_URL"]
    );

    // B's token, A's address (or someone posing as A): refused before
    // the token's secret is sent.
    let a_url = format!("https://{a_listen}");
    let mut agent_x = agent(&net.lan, &tmp.path().join("x"), "x", &["--server", &a_url, "--join-token", &b_join]);
    let (status, log) = agent_x.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the agent trusted a CA its join token does not name");
    assert!(log.contains("fingerprint") && log.contains("join-token"), "unhelpful error: {log}");
    assert!(!tmp.path().join("x/server-ca.pem").exists() && !tmp.path().join("x/host-credential").exists());
    let hosts = cli_json(&net.lan, &a_env, &["host", "list", "-o", "json"]);
    assert_eq!(hosts.as_array().map(Vec::len), Some(0), "{hosts}");

    // A token without a fingerprint (older Nubo): told to mint a new one.
    let (secret, _) = b_join.split_once('.').expect("the join token carries a CA fingerprint");
    let mut agent_y = agent(&net.lan, &tmp.path().join("y"), "y", &["--server", &a_url, "--join-token", secret]);
    let (status, log) = agent_y.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the agent joined over TLS with nothing to check the server against");
    assert!(log.contains("nubo host join-token"), "unhelpful error: {log}");

    // B's token was never spent: it still joins B.
    let b_url = format!("https://{b_listen}");
    let _agent_b = agent(&net.lan, &tmp.path().join("xb"), "xb", &["--server", &b_url, "--join-token", &b_join]);
    let b_env: HashMap<String, String> = HashMap::from([
        ("NUBO_URL".to_string(), b_url.clone()),
        ("NUBO_TOKEN".to_string(), env_value(&tmp.path().join("b/admin.env"), "NUBO_TOKEN")),
        ("NUBO_CA_CERT".to_string(), tmp.path().join("b/tls/ca.pem").display().to_string()),
    ]);
    wait_until("B's token to join B", Duration::from_secs(60), || {
        (host_state(&net.lan, &b_env, "xb").as_deref() == Some("up")).then_some(())
    });
}

fn env_value(file: &Path, key: &str) -> String {
    read(file)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("export {key}=")).map(|v| v.trim_matches('\'').to_string()))
        .unwrap_or_else(|| panic!("no {key} in {}", file.display()))
}

#[test]
fn plain_http_beyond_loopback_takes_a_flag_on_both_sides() {
    let net = Lan::new("p");
    let tmp = tempfile::tempdir().expect("tempdir");
    let listen = format!("{SERVER_IP}:8780");
    let sdir = tmp.path().join("server");
    let mut db = ServerDatabase::from_env();
    let (server_d, env, join) = server(&net.srv, &sdir, &mut db, &listen, &["--insecure-http"]);
    db.assert_used_by(&sdir);
    assert_eq!(env["NUBO_URL"], format!("http://{listen}"));
    assert!(!env.contains_key("NUBO_CA_CERT"), "{env:?}");
    let log = server_d.log_text();
    assert!(log.contains("WARN") && log.contains("--insecure-http"), "no warning about plain HTTP: {log}");

    // An agent does not send its token in clear unless told to.
    let url = format!("http://{listen}");
    let mut refused = agent(&net.lan, &tmp.path().join("a1"), "a1", &["--server", &url, "--join-token", &join]);
    let (status, log) = refused.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the agent sent its join token over plain HTTP on a LAN");
    assert!(log.contains("--insecure-http") && log.contains("https"), "unhelpful error: {log}");

    let _a =
        agent(&net.lan, &tmp.path().join("a2"), "a2", &["--server", &url, "--join-token", &join, "--insecure-http"]);
    wait_until("the host to join over plain HTTP", Duration::from_secs(60), || {
        (host_state(&net.lan, &env, "a2").as_deref() == Some("up")).then_some(())
    });
}
