//! Backups that leave the host, end to end with real `tiny` guests:
//!
//! * a plan on a schedule backs up a running instance with a volume into a
//!   directory repository (standing for an NFS mount both hosts see); the
//!   guest writes 10 MiB and the next backup is incremental (its figures
//!   are printed); a marker the guest wrote is nowhere in the repository
//!   (it is encrypted); a restore onto the other host boots with the files
//!   and the volume's bytes; the plan keeps exactly its last two backups
//!   and pruning frees what only the dropped one held;
//! * a host dies (agent killed, VMs killed, its directory deleted):
//!   `nubo host evacuate --from-backups` brings its instance back on the
//!   other host from its newest backup, and says how old the data is.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

/// Runs `script` in the guest; its stdout.
fn guest_sh(cloud: &Cloud, id: &str, script: &str) -> String {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
    assert!(
        out.status.success(),
        "`{script}` in {id} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn launch(cloud: &Cloud, name: &str) -> String {
    let id = cloud.nubo_ok(&["instance", "run", "--name", name, "--memory", "192", "--wait"]).trim().to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    id
}

/// The instance's backups, newest first.
fn backups_of(cloud: &Cloud, id: &str) -> Vec<Value> {
    let mut v = cloud.nubo_json(&["backup", "list", "--instance", id]).as_array().cloned().unwrap_or_default();
    v.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
    v
}

/// Bytes of every file under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { tree_bytes(&e.path()) } else { m.len() };
    }
    total
}

/// Whether `needle` occurs in any file under `dir`.
fn tree_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            tree_contains(&p, needle)
        } else {
            std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle)
        }
    })
}

/// The guest's disk with this serial (`vol<hex>`).
fn guest_device(cloud: &Cloud, id: &str, serial: &str) -> String {
    wait_until(&format!("{id} to see disk {serial}"), Duration::from_secs(60), || {
        let out = guest_sh(cloud, id, "for d in /sys/block/vd*; do echo \"${d##*/} $(cat $d/serial)\"; done");
        out.lines().find(|l| l.ends_with(serial)).map(|l| l.split_whitespace().next().unwrap().to_string())
    })
}

#[test]
fn a_planned_backup_is_incremental_encrypted_kept_by_its_plan_and_restores_on_another_host() {
    let mut cloud = Cloud::server_only();
    cloud.start_host("h1", &[]);
    let id = launch(&cloud, "db");
    let vol = cloud.nubo_ok(&["volume", "create", "--size", "1", "--name", "db-data", "--wait"]).trim().to_string();
    cloud.nubo_ok(&["volume", "attach", &vol, &id, "--wait"]);
    // The second host joins now, so that the instance and its volume are on h1.
    cloud.start_host("h2", &[]);
    assert_eq!(cloud.instance(&id)["host_name"], "h1");

    let marker = format!("nubo-secret-{:016x}", rand_u64());
    let dev = guest_device(&cloud, &id, &vol.replacen('-', "", 1));
    guest_sh(
        &cloud,
        &id,
        &format!(
            "echo {marker} > /root/marker && printf '{marker}-volume' | dd of=/dev/{dev} bs=512 seek=2048 conv=fsync 2>/dev/null && sync"
        ),
    );

    let repo = cloud.data_dir().join("nfs-backups");
    std::fs::create_dir_all(&repo).unwrap();
    cloud.nubo_ok(&["backup", "repo", "add", "nfs", "--dir", repo.to_str().unwrap()]);
    cloud.nubo_ok(&[
        "backup",
        "plan",
        "create",
        "nightly",
        "--repo",
        "nfs",
        "--instance",
        &id,
        "--schedule",
        "* * * * *",
        "--keep-last",
        "2",
    ]);

    // The schedule fires within a minute: the first backup is full.
    let first = wait_until("the plan's first backup", Duration::from_secs(240), || {
        backups_of(&cloud, &id).into_iter().find(|b| b["state"] == "completed")
    });
    let disks = first["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "root and the volume: {first}");
    assert!(disks.iter().all(|d| d["incremental"] == false), "{first}");

    // The guest writes 10 MiB: the next backup reads little more than that.
    guest_sh(
        &cloud,
        &id,
        "dd if=/dev/urandom of=/root/written bs=1M count=10 conv=fsync 2>/dev/null && echo two > /root/second && sync",
    );
    let out = cloud.nubo_ok(&["backup", "run", &id, "--plan", "nightly", "--wait"]);
    eprintln!("incremental backup:\n{out}");
    let second = backups_of(&cloud, &id).into_iter().next().unwrap();
    assert_eq!(second["state"], "completed", "{second}");
    assert_eq!(second["parent_id"], first["id"], "{second}");
    let root = second["disks"].as_array().unwrap().iter().find(|d| d["name"] == "root").unwrap().clone();
    assert_eq!(root["incremental"], true, "{second}");
    let read = root["bytes_read"].as_u64().unwrap();
    assert!((10 << 20..40 << 20).contains(&read), "10 MiB written, {read} bytes read: {second}");
    assert!(out.contains("incremental"), "{out}");

    // Encrypted: the guest's marker is nowhere in the repository.
    assert!(!tree_contains(&repo, marker.as_bytes()), "the marker is readable in the repository");

    // Restored onto the other host, it boots with both files and the volume's bytes.
    let out = cloud.nubo_ok(&["backup", "restore", second["id"].as_str().unwrap(), "--host", "h2", "--wait"]);
    let restored = out.split_whitespace().find(|w| w.starts_with("i-")).unwrap().to_string();
    let view = cloud.wait_state(&restored, "running", BOOT);
    assert_eq!(view["host_name"], "h2", "{view}");
    cloud.wait_console(&restored, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    assert_eq!(guest_sh(&cloud, &restored, "cat /root/marker").trim(), marker);
    assert_eq!(guest_sh(&cloud, &restored, "cat /root/second").trim(), "two");
    let rvol = view["volumes"][0]["volume_id"].as_str().unwrap().to_string();
    let rdev = guest_device(&cloud, &restored, &rvol.replacen('-', "", 1));
    let bytes = guest_sh(&cloud, &restored, &format!("dd if=/dev/{rdev} bs=512 skip=2048 count=1 2>/dev/null"));
    assert!(bytes.starts_with(&format!("{marker}-volume")), "{bytes:?}");

    // A third backup: the plan keeps its last two, and pruning frees space.
    guest_sh(&cloud, &id, "dd if=/dev/urandom of=/root/written bs=1M count=10 conv=fsync 2>/dev/null && sync");
    let before = tree_bytes(&repo);
    cloud.nubo_ok(&["backup", "run", &id, "--plan", "nightly", "--wait"]);
    let kept = wait_until("the plan to keep exactly two", Duration::from_secs(120), || {
        let all = backups_of(&cloud, &id);
        (all.iter().filter(|b| b["state"] == "completed").count() == 2).then_some(all)
    });
    assert!(kept.iter().all(|b| b["id"] != first["id"]), "the oldest went: {kept:?}");
    let third = backups_of(&cloud, &id).into_iter().next().unwrap();
    let added = third["bytes_sent"].as_u64().unwrap();
    let freed = wait_until("the prune's figures", Duration::from_secs(120), || {
        let repos = cloud.nubo_json(&["backup", "repo", "list"]);
        let nfs = repos.as_array()?.iter().find(|r| r["name"] == "nfs")?.clone();
        nfs["last_prune_bytes_freed"].as_u64().filter(|&f| f > 0)
    });
    let after = tree_bytes(&repo);
    eprintln!(
        "repository: {before} bytes before the third backup, which added {added}; the prune freed {freed}; {after} bytes now"
    );
    assert!(after < before + added, "pruning freed nothing: {before} + {added} -> {after}");
}

#[test]
fn a_dead_hosts_instances_come_back_from_their_backups() {
    let mut cloud = Cloud::server_with(&["--heartbeat-timeout-secs", "5"]);
    cloud.start_host("h1", &[]);
    let id = launch(&cloud, "app");
    cloud.start_host("h2", &[]);
    guest_sh(&cloud, &id, "echo before-the-fire > /root/state && sync");
    let repo = cloud.data_dir().join("nfs-backups");
    std::fs::create_dir_all(&repo).unwrap();
    cloud.nubo_ok(&["backup", "repo", "add", "nfs", "--dir", repo.to_str().unwrap()]);
    cloud.nubo_ok(&["backup", "run", &id, "--wait"]);

    // h1 is gone: its agent, its VM and its directory.
    let pid = cloud.qemu_pid(&id);
    cloud.kill_host("h1");
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    std::fs::remove_dir_all(cloud.host_dir("h1")).unwrap();
    wait_until("h1 down", Duration::from_secs(60), || {
        let hosts = cloud.nubo_json(&["host", "list"]);
        hosts.as_array()?.iter().any(|h| h["name"] == "h1" && h["state"] != "up").then_some(())
    });

    // Refused while h1 may still run its VMs (its lease and the time its
    // agent has to stop them), then done.
    let out = wait_until("h1 to count as gone", Duration::from_secs(120), || {
        let out = cloud.nubo(&["host", "evacuate", "h1", "--from-backups", "--wait"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            assert!(stderr.contains("try again in"), "{stderr}");
            std::thread::sleep(Duration::from_secs(2));
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    });
    eprintln!("evacuate --from-backups:\n{out}");
    assert!(out.contains(&id) && out.contains("h2"), "{out}");
    let view = cloud.wait_state(&id, "running", BOOT);
    assert_eq!(view["host_name"], "h2", "{view}");
    // It says which backup it came back from, and how old its data is.
    let restored = view["events"].as_array().unwrap().iter().find(|e| e["stage"] == "restored_elsewhere").unwrap();
    let detail = restored["detail"].as_str().unwrap();
    assert!(detail.contains("bak-") && detail.contains("old"), "{detail}");
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    assert_eq!(guest_sh(&cloud, &id, "cat /root/state").trim(), "before-the-fire");
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}
