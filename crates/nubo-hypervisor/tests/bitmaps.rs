//! Incremental copies through persistent dirty bitmaps, on a stopped VM's
//! disk opened by `qemu-storage-daemon` (no VM is booted): a full copy of
//! an overlay disk starts a bitmap that is stored in the qcow2 when the
//! daemon quits; writes made with `qemu-io` while no daemon runs are
//! recorded in it; the next copy, taken from that bitmap, holds exactly
//! the 1 MiB granules written, with the new data, and starts a bitmap of
//! its own; removing the old one leaves only the new one in the file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nubo_hypervisor::{Hypervisor, MapExtent, OfflineDisk, Qemu, TrackedCopy};

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; install qemu-utils"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(file: &Path, cmd: &str) -> String {
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(file))
}

/// The names of the persistent bitmaps stored in a qcow2 file.
fn stored_bitmaps(file: &Path) -> Vec<String> {
    let out = run(Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(file));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v["format-specific"]["data"]["bitmaps"].as_array().cloned().unwrap_or_default();
    list.iter().map(|b| b["name"].as_str().unwrap().to_string()).collect()
}

/// The (start, length) of the extents a copy holds, neighbours merged.
fn present(map: &[MapExtent]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in map.iter().filter(|e| e.present) {
        match out.last_mut() {
            Some((s, l)) if *s + *l == e.start => *l += e.length,
            _ => out.push((e.start, e.length)),
        }
    }
    out
}

#[tokio::test]
async fn incremental_copies_hold_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let qemu = Qemu::default();
    let hv: &dyn Hypervisor = &qemu;

    // The root disk's shape: an overlay on a backing image with data.
    let base = t.join("base.qcow2");
    let disk = t.join("disk.qcow2");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("8M"));
    qemu_io(&base, "write -P 0x11 0 3M");
    run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(&base).arg(&disk));
    let disks = [OfflineDisk { node: "root".into(), path: disk.clone() }];

    // 1. A full copy, starting bitmap nubo-bak-1.
    let full = t.join("full.qcow2");
    let daemon = hv.open_disks_offline(&t.join("qsd"), &disks).await.unwrap();
    assert!(hv.dirty_bitmaps(daemon.dir(), "root").await.unwrap().is_empty());
    let copy = TrackedCopy {
        node: "root".into(),
        target: full.clone(),
        new_bitmap: "nubo-bak-1".into(),
        granularity: MIB,
        since: None,
    };
    let job = hv.backup_start_tracked(daemon.dir(), &copy).await.unwrap();
    hv.backup_finish(daemon.dir(), &job, Duration::from_secs(60)).await.unwrap();
    let bitmaps = hv.dirty_bitmaps(daemon.dir(), "root").await.unwrap();
    assert_eq!(bitmaps.len(), 1);
    assert_eq!((bitmaps[0].name.as_str(), bitmaps[0].granularity, bitmaps[0].count), ("nubo-bak-1", MIB, 0));
    assert!(bitmaps[0].persistent && bitmaps[0].usable());
    daemon.stop().await.unwrap();
    assert_eq!(stored_bitmaps(&disk), ["nubo-bak-1"]);

    // The full copy holds the whole disk, the backing image's data included.
    let map = hv.allocation_map(&full).await.unwrap();
    assert_eq!(present(&map), [(0, 8 * MIB)]);
    assert!(map.iter().any(|e| e.start == 0 && e.data), "{map:?}");
    qemu_io(&full, "read -P 0x11 0 3M");

    // 2. Writes while no daemon runs: granule 0 and granule 5.
    qemu_io(&disk, "write -P 0x22 512 4k");
    qemu_io(&disk, "write -P 0x33 5348K 8k");

    // 3. The incremental copy from nubo-bak-1, starting nubo-bak-2.
    let inc = t.join("inc.qcow2");
    let daemon = hv.open_disks_offline(&t.join("qsd"), &disks).await.unwrap();
    let bitmaps = hv.dirty_bitmaps(daemon.dir(), "root").await.unwrap();
    assert_eq!(bitmaps.len(), 1);
    assert_eq!(bitmaps[0].count, 2 * MIB, "two granules written: {bitmaps:?}");
    let copy = TrackedCopy {
        node: "root".into(),
        target: inc.clone(),
        new_bitmap: "nubo-bak-2".into(),
        granularity: MIB,
        since: Some("nubo-bak-1".into()),
    };
    let job = hv.backup_start_tracked(daemon.dir(), &copy).await.unwrap();
    hv.backup_finish(daemon.dir(), &job, Duration::from_secs(60)).await.unwrap();
    hv.remove_dirty_bitmap(daemon.dir(), "root", "nubo-bak-1").await.unwrap();
    // Removing one that is not there is done, not an error.
    hv.remove_dirty_bitmap(daemon.dir(), "root", "nubo-bak-1").await.unwrap();
    // A second copy starting an existing bitmap is refused, and leaves no file.
    let again = t.join("again.qcow2");
    let dup = TrackedCopy { target: again.clone(), since: None, ..copy.clone() };
    assert!(hv.backup_start_tracked(daemon.dir(), &dup).await.is_err());
    assert!(!again.exists());
    daemon.stop().await.unwrap();
    assert_eq!(stored_bitmaps(&disk), ["nubo-bak-2"]);

    let map = hv.allocation_map(&inc).await.unwrap();
    assert_eq!(present(&map), [(0, MIB), (5 * MIB, MIB)], "{map:?}");
    qemu_io(&inc, "read -P 0x11 0 512");
    qemu_io(&inc, "read -P 0x22 512 4k");
    qemu_io(&inc, "read -P 0x11 4608 1043968");
    qemu_io(&inc, "read -P 0x33 5348K 8k");
    qemu_io(&inc, "read -P 0 5M 100k");
}

#[tokio::test]
async fn a_daemon_that_cannot_open_the_disk_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let qemu = Qemu::default();
    let disks = [OfflineDisk { node: "root".into(), path: tmp.path().join("missing.qcow2") }];
    let err = qemu.open_disks_offline(&tmp.path().join("qsd"), &disks).await.unwrap_err().to_string();
    assert!(err.contains("qemu-storage-daemon") && err.contains("missing.qcow2"), "{err}");
}
