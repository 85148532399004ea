//! End to end on a real `tiny` VM under `nubo up`: boot-complete and the
//! user-data's output on the console, a disk of the requested size inside
//! the guest, a forwarded port reaching a server the user-data started,
//! then stop, start, reboot and terminate, and terminate freeing the
//! host's capacity and the instance's files. And a new host joined with a
//! join token into a data directory that does not exist yet, as the
//! README says: it offers its file system's real size at once, and runs an
//! instance.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::time::Duration;

const USER_DATA: &str = r#"#!/bin/sh
echo "user-data-says-hello"
echo "disk-sectors=$(cat /sys/block/vda/size)"
echo "df-root-kb=$(df -k / | awk 'NR==2 {print $2}')"
mkdir -p /www && echo hello-from-guest > /www/index.html
httpd -p 80 -h /www
echo "httpd-started"
"#;

/// The number after `key` on the console. Anywhere in a line: the root
/// shell on the serial console may have printed its prompt first.
fn value_after(console: &str, key: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.find(key).map(|at| &l[at + key.len()..]))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{key}' line on the console:\n{console}"))
}

#[test]
fn tiny_vm_boots_serves_and_obeys_power_commands() {
    let cloud = Cloud::up();
    let ud = cloud.data_dir().join("user-data.sh");
    std::fs::write(&ud, USER_DATA).unwrap();
    let ud = ud.to_str().unwrap();
    let out = cloud.nubo_ok(&[
        "instance",
        "run",
        "--image",
        "tiny",
        "--vcpus",
        "1",
        "--memory",
        "192",
        "--disk",
        "3",
        "--name",
        "web",
        "--port",
        "80",
        "--user-data",
        ud,
        "--wait",
    ]);
    let id = out.trim().to_string();
    assert!(id.starts_with("i-"), "run prints the id, got {out}");

    let i = cloud.instance(&id);
    assert_eq!(i["state"], "running");
    assert_eq!(i["vcpus"], 1);
    assert_eq!(i["memory_mib"], 192);
    assert_eq!(i["disk_gib"], 3);
    assert_eq!(i["name"], "web");
    assert!(i["host"].as_str().unwrap().starts_with("h-"));
    let addr = i["ports"]["80"].as_str().expect("port 80 forwarded").to_string();
    assert!(addr.starts_with("127.0.0.1:"));

    // Console: boot-complete, then the user-data's output.
    let console = cloud.wait_console(&id, "httpd-started", 1, Duration::from_secs(120));
    assert!(console.contains(nubo_api::BOOT_COMPLETE_MARKER), "{console}");
    assert!(console.contains("user-data-says-hello"));
    // The guest sees a 3 GiB disk, and its root filesystem spans it.
    assert_eq!(value_after(&console, "disk-sectors="), 3 * 1024 * 1024 * 2);
    let df_kb = value_after(&console, "df-root-kb=");
    assert!(df_kb > 2_800_000, "root filesystem is only {df_kb} KiB");

    // The forwarded port reaches the guest's web server.
    let page = wait_until("the guest's web server", Duration::from_secs(30), || {
        http(&addr, "GET", "/index.html", "").filter(|p| p.contains("hello-from-guest"))
    });
    assert!(page.starts_with("HTTP/1."), "{page}");

    let hosts = cloud.nubo_json(&["host", "list"]);
    assert_eq!(hosts[0]["used_vcpus"], 1);
    assert_eq!(hosts[0]["used_memory_mib"], 192);
    assert_eq!(hosts[0]["instances"], 1);
    assert_eq!(hosts[0]["accel"], "tcg");

    // Stop: the QEMU process goes away and the state says so.
    let pid = cloud.qemu_pid(&id).expect("pidfile");
    assert!(alive(pid));
    cloud.nubo_ok(&["instance", "stop", &id, "--wait"]);
    wait_until("QEMU to exit after stop", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    assert!(http(&addr, "GET", "/index.html", "").is_none_or(|p| !p.contains("hello-from-guest")));

    // Start: boots again from the same disk.
    cloud.nubo_ok(&["instance", "start", &id, "--wait"]);
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 2, Duration::from_secs(120));
    let pid2 = cloud.qemu_pid(&id).expect("pidfile after start");
    assert_ne!(pid, pid2);
    // The first boot's files survived the stop (it is the same disk).
    wait_until("the web server after start", Duration::from_secs(60), || {
        http(&addr, "GET", "/index.html", "").filter(|p| p.contains("hello-from-guest"))
    });

    // Reboot: same QEMU process, the guest boots once more.
    cloud.nubo_ok(&["instance", "reboot", &id]);
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 3, Duration::from_secs(120));
    assert_eq!(cloud.qemu_pid(&id), Some(pid2));
    let events = cloud.instance(&id)["events"].clone();
    let stages: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["stage"].as_str()).collect();
    for s in ["requested", "scheduled", "qemu_started", "boot_complete", "stopped", "rebooted"] {
        assert!(stages.contains(&s), "missing event {s} in {stages:?}");
    }

    // Terminate: VM, files and the host's claim are gone.
    cloud.nubo_ok(&["instance", "terminate", &id, "--wait"]);
    assert!(!alive(pid2));
    assert!(!cloud.agent_dir().join("instances").join(&id).exists(), "instance files left behind");
    let hosts = cloud.nubo_json(&["host", "list"]);
    assert_eq!(hosts[0]["used_vcpus"], 0);
    assert_eq!(hosts[0]["used_memory_mib"], 0);
    assert_eq!(hosts[0]["used_disk_gib"], 0);
    assert_eq!(hosts[0]["instances"], 0);
    assert_eq!(cloud.instance(&id)["state"], "terminated");
    // A terminated instance cannot be started again.
    let out = cloud.nubo(&["instance", "start", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("terminated"));
}

/// The size in GiB of the file system holding `path`, as `stat -f` reads
/// it (fundamental block size times blocks: what statfs reports).
fn file_system_gib(path: &std::path::Path) -> u64 {
    let out = sh_ok(&format!("stat -f -c '%S %b' '{}'", path.display()));
    let mut fields = out.split_whitespace().map(|f| f.parse::<u64>().expect("a number from stat -f"));
    let (block, blocks) = (fields.next().expect("block size"), fields.next().expect("blocks"));
    (block * blocks) >> 30
}

#[test]
fn a_host_joined_into_an_empty_data_dir_offers_its_disk_and_runs_an_instance() {
    let mut cloud = Cloud::server_only();
    let dir = cloud.host_dir("fresh");
    assert!(!dir.exists(), "the host's data directory must not exist before it joins");
    // `nubo agent --server URL --join-token T` with no --disk-gib.
    cloud.start_host_with("fresh", &host_args_measuring_disk(), &[]);
    assert!(dir.is_dir());

    let hosts = cloud.nubo_json(&["host", "list"]);
    let host = hosts.as_array().and_then(|a| a.iter().find(|h| h["name"] == "fresh")).expect("host fresh").clone();
    let real = file_system_gib(&dir);
    assert!(real >= 2, "the test needs a file system of at least 2 GiB under {}", dir.display());
    assert_eq!(host["disk_gib"].as_u64(), Some(real), "the host offers its data directory's file system: {host}");

    // A tag that is not KEY=VALUE is refused before anything is launched.
    let bad = cloud.nubo(&["instance", "run", "--memory", "128", "--tag", "=db"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));
    let id = cloud
        .nubo_ok(&[
            "instance", "run", "--image", "tiny", "--memory", "128", "--disk", "2", "--tag", "role=db", "--tag",
            "tier=", "--wait",
        ])
        .trim()
        .to_string();
    let i = cloud.wait_state(&id, "running", Duration::from_secs(120));
    assert_eq!(i["host"], host["id"], "placed on the new host");
    assert_eq!(i["tags"], serde_json::json!({"role": "db", "tier": ""}), "{i}");
    assert!(cloud.nubo_ok(&["instance", "show", &id]).contains("role=db, tier="));
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, Duration::from_secs(120));
    let hosts = cloud.nubo_json(&["host", "list"]);
    assert_eq!(hosts[0]["used_disk_gib"], 2);
}
