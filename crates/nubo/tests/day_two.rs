//! Day-two operations end to end on real `tiny` VMs, each result checked
//! from inside the guest through its guest agent (`nubo instance exec`):
//! * resize: a running instance gets a second vCPU online (hot-added,
//!   seen by the guest while it runs), and is told to stop first for more
//!   memory; stopped, it takes 256 MiB, and the guest sees both after its
//!   start;
//! * rebuild of a running instance: stopped, a fresh root disk (a file
//!   written before is gone), started again with the same id, ports and
//!   volume attached;
//! * revert: a volume and the instance's root disk put back as their
//!   snapshots hold them (a file's earlier content comes back).
//!
//! Two clouds, one guest each, run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);

fn launch(cloud: &Cloud, name: &str) -> String {
    let id = cloud.nubo_ok(&["instance", "run", "--name", name, "--memory", "192", "--wait"]).trim().to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    id
}

/// Starts `id` and waits until its guest has booted (the `n`th time).
fn start(cloud: &Cloud, id: &str, n: usize) {
    cloud.nubo_ok(&["instance", "start", id, "--wait"]);
    cloud.wait_console(id, nubo_api::BOOT_COMPLETE_MARKER, n, BOOT);
}

fn stages(cloud: &Cloud, id: &str) -> Vec<String> {
    cloud.instance(id)["events"].as_array().unwrap().iter().map(|e| e["stage"].as_str().unwrap().to_string()).collect()
}

#[test]
fn resize_and_rebuild() {
    let cloud = Cloud::up();
    let a = launch(&cloud, "a");
    assert_eq!(guest_sh(&cloud, &a, "grep -c ^processor /proc/cpuinfo").trim(), "1");
    let before = cloud.instance(&a);

    // A volume attached, and a file on the root disk.
    let vol = cloud.nubo_ok(&["volume", "create", "--size", "1", "--wait"]).trim().to_string();
    cloud.nubo_ok(&["volume", "attach", &vol, &a, "--wait"]);
    guest_sh(&cloud, &a, "echo before-rebuild > /root/marker && sync");

    // Rebuild while it runs: stopped, a fresh disk, started again.
    cloud.nubo_ok(&["instance", "rebuild", &a, "--image", "tiny", "--wait"]);
    cloud.wait_console(&a, nubo_api::BOOT_COMPLETE_MARKER, 2, BOOT);
    let (code, out) = guest(&cloud, &a, "cat /root/marker");
    assert_ne!(code, 0, "the file written before the rebuild is gone: {out}");
    let after = cloud.instance(&a);
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["ports"], before["ports"], "the same forwarded ports");
    assert_eq!(after["addresses"], before["addresses"], "the same addresses");
    assert_eq!(cloud.nubo_json(&["volume", "show", &vol])["attachment"]["instance_id"], a.as_str());
    let s = stages(&cloud, &a);
    for stage in ["rebuild", "rebuild_stopping", "root_disk_removed"] {
        assert!(s.contains(&stage.to_string()), "{stage} in {s:?}");
    }

    // Resize while running: a second vCPU, hot-added and brought online,
    // which the guest sees without a restart.
    let resized = cloud.nubo_json(&["instance", "resize", &a, "--vcpus", "2"]);
    assert_eq!((resized["vcpus"].as_u64(), resized["state"].as_str()), (Some(2), Some("running")), "{resized}");
    wait_until("the guest to see 2 vCPUs", Duration::from_secs(90), || {
        (guest_sh(&cloud, &a, "grep -c ^processor /proc/cpuinfo").trim() == "2").then_some(())
    });
    assert_eq!(guest_sh(&cloud, &a, "nproc").trim(), "2");
    assert!(stages(&cloud, &a).contains(&"vcpus_added".to_string()), "{:?}", stages(&cloud, &a));
    assert_eq!(cloud.instance(&a)["state"], "running");

    // More memory: refused while running, with what to do.
    let out = cloud.nubo(&["instance", "resize", &a, "--memory", "256"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("nubo instance stop {a}")), "{err}");

    // Stopped: 2 vCPUs and 256 MiB, seen by the guest after its start.
    cloud.nubo_ok(&["instance", "stop", &a, "--wait"]);
    let resized = cloud.nubo_json(&["instance", "resize", &a, "--vcpus", "2", "--memory", "256"]);
    assert_eq!((resized["vcpus"].as_u64(), resized["memory_mib"].as_u64()), (Some(2), Some(256)), "{resized}");
    start(&cloud, &a, 3);
    assert_eq!(guest_sh(&cloud, &a, "grep -c ^processor /proc/cpuinfo").trim(), "2");
    let mem_kib: u64 =
        guest_sh(&cloud, &a, "awk '/^MemTotal/ {print $2}' /proc/meminfo").trim().parse().expect("MemTotal");
    assert!(mem_kib > 200 * 1024, "the guest sees about 256 MiB (was 192): {mem_kib} KiB");
}

#[test]
fn volume_and_instance_revert() {
    let cloud = Cloud::up();
    let b = launch(&cloud, "b");
    let vol = cloud.nubo_ok(&["volume", "create", "--size", "1", "--wait"]).trim().to_string();
    cloud.nubo_ok(&["volume", "attach", &vol, &b, "--wait"]);
    let serial = vol.replacen('-', "", 1);
    let dev = wait_until("the guest to see the volume", Duration::from_secs(60), || {
        let out = guest_sh(&cloud, &b, "for d in /sys/block/vd*; do echo \"${d##*/} $(cat $d/serial)\"; done");
        out.lines().find(|l| l.ends_with(&serial)).and_then(|l| l.split_whitespace().next()).map(str::to_string)
    });
    let write = |text: &str| {
        guest_sh(
            &cloud,
            &b,
            &format!(
                "echo {text} > /root/marker && printf '{text}' | dd of=/dev/{dev} bs=512 seek=2048 conv=fsync 2>/dev/null && sync"
            ),
        );
    };
    let read = |cloud: &Cloud, id: &str, dev: &str| {
        let root = guest_sh(cloud, id, "cat /root/marker").trim().to_string();
        let volume = guest_sh(cloud, id, &format!("dd if=/dev/{dev} bs=512 skip=2048 count=1 2>/dev/null | head -c 9"));
        (root, volume)
    };

    // The first content, kept by a snapshot of each; then changed.
    write("content-1");
    let image = cloud.nubo_ok(&["instance", "snapshot", &b, "--name", "b-snap", "--wait"]).trim().to_string();
    let snap = cloud.nubo_ok(&["volume", "snapshot", &vol, "--wait"]).trim().to_string();
    write("content-2");
    assert_eq!(read(&cloud, &b, &dev), ("content-2".to_string(), "content-2".to_string()));

    // Refused while the instance runs, with what to do.
    for args in [
        vec!["volume", "revert", vol.as_str(), "--snapshot", snap.as_str()],
        vec!["instance", "revert", b.as_str(), "--snapshot", image.as_str()],
    ] {
        let out = cloud.nubo(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&format!("nubo instance stop {b}")), "{args:?}: {err}");
    }

    cloud.nubo_ok(&["instance", "stop", &b, "--wait"]);
    let v = cloud.nubo_json(&["volume", "revert", &vol, "--snapshot", &snap, "--wait"]);
    assert_eq!(v["state"], "in-use", "{v}");
    cloud.nubo_ok(&["instance", "revert", &b, "--snapshot", "b-snap"]);
    start(&cloud, &b, 2);
    let dev = wait_until("the guest to see the volume again", Duration::from_secs(60), || {
        let out = guest_sh(&cloud, &b, "for d in /sys/block/vd*; do echo \"${d##*/} $(cat $d/serial)\"; done");
        out.lines().find(|l| l.ends_with(&serial)).and_then(|l| l.split_whitespace().next()).map(str::to_string)
    });
    assert_eq!(read(&cloud, &b, &dev), ("content-1".to_string(), "content-1".to_string()), "both reverted");
    let s = stages(&cloud, &b);
    for stage in ["volume_revert", "revert", "root_disk_removed"] {
        assert!(s.contains(&stage.to_string()), "{stage} in {s:?}");
    }
}
