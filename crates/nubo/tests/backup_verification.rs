//! Verified backups, end to end with real `tiny` guests: an instance whose
//! web server is started at each boot by a script on its disk (installed
//! once by its user-data) is backed up by a plan with `--verify each`; the
//! backup is booted as a throwaway instance, its copied HTTP check passes
//! (HTTP, not TCP: with user-mode networking QEMU itself accepts on the
//! forwarded port whether or not the guest listens),
//! and the backup shows `verified`. Then the start script is removed inside
//! the guest: the next backup boots to nothing listening on port 80, fails
//! verification naming the check, and an alert rule on the instance fires.
//! The throwaway instances are gone afterwards and the project's quota
//! usage is as before.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
/// A verification: the restore, a boot, the checks, at most 5 minutes.
const VERIFY: Duration = Duration::from_secs(420);

/// Installs the web server's start script on the disk the first time, and
/// runs it, if it is still there, at every boot (tiny runs the user-data
/// at each boot; a restored copy gets the same user-data, so what it
/// serves depends on its disk).
const USER_DATA: &str = "#!/bin/sh
if [ ! -f /etc/web-installed ]; then
    printf '#!/bin/sh\\nmkdir -p /www && echo up > /www/index.html && httpd -p 80 -h /www\\n' > /etc/web.sh
    chmod 755 /etc/web.sh && touch /etc/web-installed && sync
fi
if [ -x /etc/web.sh ]; then /etc/web.sh && echo web-started; else echo web-not-installed; fi
";

/// The instance's backups, newest first.
fn backups_of(cloud: &Cloud, id: &str) -> Vec<Value> {
    let mut v = cloud.nubo_json(&["backup", "list", "--instance", id]).as_array().cloned().unwrap_or_default();
    v.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
    v
}

/// Waits until the newest backup's verification has ended; that backup.
fn verified(cloud: &Cloud, id: &str) -> Value {
    wait_until("the newest backup's verification to end", VERIFY, || {
        backups_of(cloud, id).into_iter().next().filter(|b| b["verify"] == "verified" || b["verify"] == "failed")
    })
}

/// Every project's quota usage.
fn usage(cloud: &Cloud) -> Vec<Value> {
    let projects = cloud.api_get("/api/v1/projects").unwrap();
    projects.as_array().unwrap().iter().map(|p| serde_json::json!([p["name"], p["used"]])).collect()
}

/// Verification instances that are not yet terminated.
fn throwaways(cloud: &Cloud) -> Vec<String> {
    let list = cloud.nubo_json(&["instance", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().is_some_and(|n| n.starts_with("verify-")) && i["state"] != "terminated")
        .map(|i| format!("{} {}", i["name"], i["state"]))
        .collect()
}

#[test]
fn a_backup_is_verified_by_booting_it_and_a_broken_one_fails_and_alerts() {
    let mut cloud = Cloud::server_only();
    cloud.start_host("h1", &[]);
    let ud = cloud.data_dir().join("web.sh");
    std::fs::write(&ud, USER_DATA).unwrap();
    let id = cloud
        .nubo_ok(&[
            "instance",
            "run",
            "--name",
            "web",
            "--memory",
            "192",
            "--port",
            "80",
            "--user-data",
            ud.to_str().unwrap(),
            "--wait",
        ])
        .trim()
        .to_string();
    cloud.wait_console(&id, "web-started", 1, BOOT);
    let check =
        cloud.nubo_ok(&["check", "create", &id, "--name", "web", "--http", "80", "--path", "/", "--interval", "5"]);
    let check = check.trim().to_string();
    wait_until("the web check to be OK", Duration::from_secs(60), || {
        (cloud.nubo_json(&["check", "show", &check])["state"] == "OK").then_some(())
    });

    let repo = cloud.data_dir().join("nfs-backups");
    std::fs::create_dir_all(&repo).unwrap();
    cloud.nubo_ok(&["backup", "repo", "add", "nfs", "--dir", repo.to_str().unwrap()]);
    // A schedule that does not fire during the test: backups are run by hand.
    cloud.nubo_ok(&[
        "backup",
        "plan",
        "create",
        "checked",
        "--repo",
        "nfs",
        "--instance",
        &id,
        "--schedule",
        "0 3 * * *",
        "--keep-last",
        "5",
        "--verify",
        "each",
    ]);
    let before = usage(&cloud);

    // A good backup boots, answers, and its copied check passes.
    cloud.nubo_ok(&["backup", "run", &id, "--plan", "checked", "--wait"]);
    let good = verified(&cloud, &id);
    println!("first backup: {} {}", good["verify"], good["verify_detail"]);
    assert_eq!(good["verify"], "verified", "{good}");
    assert!(good["verify_detail"].as_str().unwrap().contains("checks passed: web"), "{good}");
    let listed = cloud.nubo_ok(&["backup", "list", "--instance", &id]);
    assert!(listed.contains("VERIFIED") && listed.contains("verified"), "{listed}");

    // Broken on purpose: a restored copy starts nothing on port 80.
    guest_sh(&cloud, &id, "rm /etc/web.sh && sync");
    cloud.nubo_ok(&[
        "alert",
        "rule",
        "create",
        "--name",
        "backup-broken",
        "--target",
        &id,
        "--check-state",
        "critical",
    ]);
    cloud.nubo_ok(&["backup", "run", &id, "--plan", "checked", "--wait"]);
    let bad = verified(&cloud, &id);
    println!("second backup: {} {}", bad["verify"], bad["verify_detail"]);
    assert_eq!(bad["verify"], "failed", "{bad}");
    let detail = bad["verify_detail"].as_str().unwrap();
    assert!(detail.contains("check web is CRITICAL"), "{detail}");
    assert!(detail.contains("web-not-installed"), "the console's last lines: {detail}");
    let shown = cloud.nubo_ok(&["backup", "show", bad["id"].as_str().unwrap()]);
    assert!(shown.contains("failed") && shown.contains("check web"), "{shown}");
    let alert = wait_until("the alert to fire", Duration::from_secs(60), || {
        cloud.nubo_json(&["alert", "list"]).as_array().and_then(|a| a.first().cloned())
    });
    assert!(alert.to_string().contains("backup-verification"), "{alert}");
    let checks = cloud.nubo_ok(&["check", "list"]);
    assert!(checks.contains("backup-verification") && checks.contains("backup_verification"), "{checks}");

    // Cleaned up: the throwaway instances are gone, the quota usage is as before.
    wait_until("the throwaway instances to go", Duration::from_secs(120), || {
        throwaways(&cloud).is_empty().then_some(())
    });
    assert_eq!(usage(&cloud), before);
}
