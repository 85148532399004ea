//! Provisioning end to end on real `tiny` VMs under `nubo up`:
//! user-data from the NoCloud seed, the metadata service (IMDSv1 and v2)
//! read from inside the guest through the guest agent, SSH with a key
//! pair (and no password login), recipes at launch and on a running
//! instance answering through forwarded ports, a failing recipe reported
//! with its log, guest-get-fsinfo following the guest's disk use, and
//! bad input refused with reasons.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn port(instance: &Value, guest: u16) -> String {
    instance["ports"][guest.to_string()].as_str().expect("forwarded port").to_string()
}

/// A shell function for the guest: an HTTP/1.0 request to the metadata
/// service with busybox nc (its stdin is held open until the answer came).
const IMDS_FN: &str =
    r#"q() { { printf '%s %s HTTP/1.0\r\n%b\r\n' "$1" "$2" "$3"; sleep 1; } | nc 169.254.169.254 80; }"#;

/// Runs `script` in the guest through the guest agent (`nubo instance exec`).
fn guest_sh(cloud: &Cloud, id: &str, script: &str) -> (i32, String) {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn body(response: &str) -> &str {
    response.split("\r\n\r\n").nth(1).unwrap_or("")
}

#[test]
fn provisioning_end_to_end() {
    let cloud = Cloud::up();
    let dir = cloud.data_dir();
    let key = dir.join("k1.pem");
    cloud.nubo_ok(&["keypair", "create", "k1", "--private-key-file", key.to_str().unwrap()]);
    let ud = dir.join("user-data.sh");
    std::fs::write(&ud, "#!/bin/sh\necho user-data-ran-from-seed\n").unwrap();

    // Launch with a key, user-data and a recipe that installs a web server.
    let launched = cloud.nubo_ok(&[
        "instance",
        "run",
        "--name",
        "web-1",
        "--key-name",
        "k1",
        "--user-data",
        ud.to_str().unwrap(),
        "--port",
        "22",
        "--port",
        "8080",
        "--port",
        "8081",
        "--recipe",
        "web-server",
        "--param",
        "port=8080",
        "--param",
        "page=hello-from-recipe",
    ]);
    let id = launched.trim().to_string();
    cloud.wait_console(&id, "user-data-ran-from-seed", 1, BOOT);
    let i = cloud.wait_state(&id, "running", BOOT);

    // The launch recipe succeeded and its server answers through the forwarded port.
    let run = wait_until("the launch recipe to finish", BOOT, || {
        let runs = cloud.nubo_json(&["instance", "runs", &id]);
        let r = runs.as_array()?.first()?.clone();
        (r["state"] == "succeeded" || r["state"] == "failed").then_some(r)
    });
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["exit_code"], 0);
    assert!(run["log"].as_str().unwrap().contains("serving /srv/www on port 8080"), "{run}");
    let web = port(&i, 8080);
    let page = wait_until("the web server", Duration::from_secs(30), || http(&web, "GET", "/", ""));
    assert!(page.starts_with("HTTP/1.") && page.contains("hello-from-recipe"), "{page}");

    // IMDSv1 and IMDSv2 from inside the guest, through the guest agent.
    let (code, out) = guest_sh(
        &cloud,
        &id,
        &format!(
            "{IMDS_FN}\n\
             echo v1-id=$(q GET /latest/meta-data/instance-id | tail -n 1)\n\
             echo v1-key=$(q GET /latest/meta-data/public-keys/0/openssh-key | tail -n 1)\n\
             echo v1-zone=$(q GET /latest/meta-data/placement/availability-zone | tail -n 1)\n\
             echo v1-ud=$(q GET /latest/user-data | tail -n 1)\n\
             T=$(q PUT /latest/api/token 'X-aws-ec2-metadata-token-ttl-seconds: 60\\r\\n' | tail -n 1)\n\
             echo v2-id=$(q GET /latest/meta-data/instance-id \"X-aws-ec2-metadata-token: $T\\r\\n\" | tail -n 1)\n\
             echo v2-forged=$(q GET /latest/meta-data/instance-id 'X-aws-ec2-metadata-token: forged\\r\\n' | head -n 1)"
        ),
    );
    assert_eq!(code, 0, "{out}");
    let public_key = cloud.nubo_json(&["keypair", "list"])[0]["public_key"].as_str().unwrap().to_string();
    assert!(out.contains(&format!("v1-id={id}")), "{out}");
    assert!(out.contains(&format!("v1-key={public_key}")), "{out}");
    assert!(out.contains("v1-zone=nubo-1a"), "{out}");
    assert!(out.contains("v1-ud=echo user-data-ran-from-seed"), "{out}");
    assert!(out.contains(&format!("v2-id={id}")), "{out}");
    assert!(out.contains("v2-forged=HTTP/1.0 401"), "{out}");

    // SSH with the key pair works; a password is not even offered.
    let ssh_port = port(&i, 22).rsplit(':').next().unwrap().to_string();
    let ssh = |extra: &[&str]| {
        Command::new("ssh")
            .args(["-p", &ssh_port, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .args(extra)
            .args(["root@127.0.0.1", "echo ssh-ok-$(hostname)"])
            .output()
            .expect("run ssh")
    };
    let ok = wait_until("ssh with the key", Duration::from_secs(60), || {
        let o = ssh(&["-i", key.to_str().unwrap()]);
        o.status.success().then_some(o)
    });
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "ssh-ok-web-1");
    let pw = ssh(&["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"]);
    assert!(!pw.status.success());
    let why = String::from_utf8_lossy(&pw.stderr);
    assert!(why.contains("Permission denied (publickey)"), "password login must not be offered: {why}");

    // A second recipe on the running instance: a key-value service that
    // another client (here the test, through the forwarded port) queries.
    let out = cloud.nubo_ok(&["instance", "provision", &id, "--recipe", "kv-store", "--param", "port=8081"]);
    assert!(out.contains("kv-store on port 8081"), "{out}");
    let kv = port(&i, 8081);
    let stored = http(&kv, "POST", "/cgi-bin/kv?key=colour", "blue").expect("kv store");
    assert!(stored.contains("stored colour"), "{stored}");
    let read = http(&kv, "GET", "/cgi-bin/kv?key=colour", "").expect("kv read");
    assert_eq!(body(&read), "blue", "{read}");
    let missing = http(&kv, "GET", "/cgi-bin/kv?key=nothing", "").expect("kv answer for a missing key");
    assert!(status_line(&missing).contains("404"), "{missing}");
    let status = http(&kv, "GET", "/cgi-bin/status", "").expect("kv status");
    assert!(body(&status).starts_with("ok\n"), "{status}");
    // Re-running is safe: the stored value survives, the server restarts.
    cloud.nubo_ok(&["instance", "provision", &id, "--recipe", "kv-store", "--param", "port=8081"]);
    let read =
        wait_until("kv after re-run", Duration::from_secs(20), || http(&kv, "GET", "/cgi-bin/kv?key=colour", ""));
    assert_eq!(body(&read), "blue", "{read}");

    // A failing recipe: failed, with its exit code and log; the instance keeps running.
    let recipe = dir.join("broken.toml");
    std::fs::write(
        &recipe,
        "name = \"broken\"\nversion = \"1\"\nbody = '''\n#!/bin/sh\necho step one done\necho \"cannot configure $WHAT\" >&2\nexit 7\n'''\n[[params]]\nname = \"what\"\n",
    )
    .unwrap();
    cloud.nubo_ok(&["recipe", "create", "-f", recipe.to_str().unwrap()]);
    let missing = cloud.nubo(&["instance", "provision", &id, "--recipe", "broken"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("needs parameter 'what'"));
    let failed = cloud.nubo(&["instance", "provision", &id, "--recipe", "broken", "--param", "what=the-flux"]);
    assert!(!failed.status.success());
    let shown = cloud.instance(&id);
    let last = &shown["runs"][0];
    assert_eq!(last["state"], "failed", "{last}");
    assert_eq!(last["exit_code"], 7);
    let log = last["log"].as_str().unwrap();
    assert!(log.contains("step one done") && log.contains("cannot configure the-flux"), "{log}");
    assert_eq!(shown["state"], "running");

    // guest-get-fsinfo: the root file system's use grows when the guest writes.
    let used = |min: u64| {
        wait_until("guest file system use", Duration::from_secs(60), || {
            let i = cloud.instance(&id);
            let fs = i["guest"]["filesystems"].as_array()?.iter().find(|f| f["mountpoint"] == "/")?.clone();
            let used = fs["used_bytes"].as_u64()?;
            (used >= min).then_some(used)
        })
    };
    let before = used(1);
    let (code, _) = guest_sh(&cloud, &id, "dd if=/dev/zero of=/root/fill bs=1M count=24 2>/dev/null && sync");
    assert_eq!(code, 0);
    let after = used(before + 20 * 1024 * 1024);
    assert!(after >= before + 20 * 1024 * 1024, "before {before}, after {after}");

    // Exec reports the command's exit code.
    let (code, out) = guest_sh(&cloud, &id, "echo to-stdout; exit 5");
    assert_eq!((code, out.trim()), (5, "to-stdout"));
}

#[test]
fn imdsv2_required_refuses_tokenless_requests() {
    let cloud = Cloud::up();
    let id = cloud.nubo_ok(&["instance", "run", "--metadata-tokens", "required", "--wait"]).trim().to_string();
    let shown = cloud.instance(&id);
    assert_eq!(shown["metadata_http_tokens"], "required");
    let (code, out) = guest_sh(
        &cloud,
        &id,
        &format!(
            "{IMDS_FN}\n\
             echo v1=$(q GET /latest/meta-data/instance-id | head -n 1)\n\
             T=$(q PUT /latest/api/token 'X-aws-ec2-metadata-token-ttl-seconds: 30\\r\\n' | tail -n 1)\n\
             echo v2=$(q GET /latest/meta-data/instance-id \"X-aws-ec2-metadata-token: $T\\r\\n\" | tail -n 1)\n\
             echo ud=$(q GET /latest/user-data \"X-aws-ec2-metadata-token: $T\\r\\n\" | head -n 1)\n\
             echo no-ttl=$(q PUT /latest/api/token '' | head -n 1)"
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("v1=HTTP/1.0 401"), "a token-less request must be refused: {out}");
    assert!(out.contains(&format!("v2={id}")), "{out}");
    assert!(out.contains("ud=HTTP/1.0 404"), "no user-data is a 404: {out}");
    assert!(out.contains("no-ttl=HTTP/1.0 400"), "{out}");
}

#[test]
fn keypairs_and_bad_input() {
    let cloud = Cloud::up();
    let dir = cloud.data_dir();
    let err = |args: &[&str]| {
        let out = cloud.nubo(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let not_a_key = dir.join("not-a-key.pub");
    std::fs::write(&not_a_key, "hello world\n").unwrap();
    assert!(err(&["keypair", "import", "bad", "--public-key-file", not_a_key.to_str().unwrap()])
        .contains("not an OpenSSH public key"));
    let big = dir.join("big-user-data");
    std::fs::write(&big, "#!/bin/sh\n".to_string() + &"#".repeat(65 * 1024)).unwrap();
    assert!(err(&["instance", "run", "--user-data", big.to_str().unwrap()]).contains("64 KiB"));
    assert!(err(&["instance", "run", "--key-name", "nope"]).contains("key pair 'nope' does not exist"));
    assert!(
        err(&["instance", "run", "--recipe", "web-server", "--param", "colour=red"]).contains("no parameter 'colour'")
    );
    assert!(err(&["instance", "run", "--recipe", "no-such-recipe"]).contains("recipe 'no-such-recipe' does not exist"));
    let bad_recipe = dir.join("bad.toml");
    std::fs::write(&bad_recipe, "name = \"x\"\nversion = \"1\"\nkind = \"ansible\"\nbody = \"x\"\n").unwrap();
    assert!(err(&["recipe", "create", "-f", bad_recipe.to_str().unwrap()]).contains("kind 'ansible' is unknown"));
    // Nothing was launched by any of that.
    assert_eq!(cloud.nubo_json(&["instance", "list"]).as_array().unwrap().len(), 0);

    // Import a key made by ssh-keygen; the fingerprint matches ssh-keygen's own.
    let key = dir.join("id_test");
    let made =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f"]).arg(&key).status();
    assert!(made.expect("ssh-keygen").success());
    let pubkey = dir.join("id_test.pub");
    let imported = cloud.nubo_json(&["keypair", "import", "laptop", "--public-key-file", pubkey.to_str().unwrap()]);
    let fp = Command::new("ssh-keygen").arg("-lf").arg(&pubkey).output().expect("ssh-keygen -l");
    let fp = String::from_utf8_lossy(&fp.stdout).split_whitespace().nth(1).unwrap_or_default().to_string();
    assert_eq!(imported["keypair"]["fingerprint"], fp.as_str());
    assert!(imported["private_key"].is_null(), "an imported pair has no private key to show");
    assert!(
        err(&["keypair", "import", "laptop", "--public-key-file", pubkey.to_str().unwrap()]).contains("already exists")
    );
    cloud.nubo_ok(&["keypair", "delete", "laptop"]);
    assert_eq!(cloud.nubo_json(&["keypair", "list"]).as_array().unwrap().len(), 0);
    assert!(err(&["keypair", "delete", "laptop"]).contains("does not exist"));
}
