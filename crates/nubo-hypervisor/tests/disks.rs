//! Data disks on a real `tiny` guest under QEMU (TCG), checked from inside
//! the guest through its guest agent: a disk plugged at boot and one
//! hot-plugged later both show up with their serials and sizes; an online
//! resize is seen by the guest; a point-in-time copy of a disk holds the
//! data as of its start even though the guest overwrites it during the
//! copy; both disks unplug; and the offline file operations work.
//!
//! The image comes from the shared cache `$NUBO_IMAGE_CACHE` (default
//! `<workspace>/.cache/images`), built first if needed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nubo_hypervisor::{Accel, Boot, DataDisk, Hypervisor, Qemu, QgaClient, VmConfig, VmDir, DEFAULT_HOTPLUG_SLOTS};
use nubo_image::seed::{write_nocloud_seed, SeedData};
use nubo_image::{ImageCache, BOOT_COMPLETE_MARKER};

const MIB: u64 = 1024 * 1024;

async fn guest(qga: &mut QgaClient, cmd: &str) -> String {
    let st = qga.run(&sh(cmd), Duration::from_secs(60)).await.unwrap();
    assert_eq!(st.exit_code, Some(0), "`{cmd}` failed: {}", String::from_utf8_lossy(&st.stderr));
    String::from_utf8_lossy(&st.stdout).into_owned()
}

/// `name serial sectors` for each virtio disk the guest has.
const LIST_DISKS: &str =
    "for d in /sys/block/vd*; do echo \"$(basename $d) $(cat $d/serial 2>/dev/null) $(cat $d/size)\"; done";

/// The guest's device name and size in bytes of the disk with `serial`.
async fn guest_disk(qga: &mut QgaClient, serial: &str) -> Option<(String, u64)> {
    let out = guest(qga, LIST_DISKS).await;
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[1] == serial).then(|| (f[0].to_string(), f[2].parse::<u64>().unwrap_or(0) * 512))
    })
}

async fn wait_guest_disk(qga: &mut QgaClient, serial: &str, size: u64, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    loop {
        if let Some((dev, got)) = guest_disk(qga, serial).await {
            if got == size {
                return (dev, t.elapsed());
            }
        }
        assert!(t.elapsed() < limit, "the guest did not see disk {serial} with {size} bytes within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn volume(dir: &Path, name: &str, slot: u32) -> DataDisk {
    let hex = format!("{name:0>17}");
    DataDisk { id: format!("vol-{hex}"), path: dir.join(format!("vol-{hex}.qcow2")), serial: format!("vol{hex}"), slot }
}

/// The bytes at `offset` of a qcow2 file, read through a raw conversion.
fn qcow2_bytes(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    let raw = path.with_extension("raw");
    let out =
        Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(path).arg(&raw).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let data = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    data[offset..offset + len].to_vec()
}

#[tokio::test]
async fn data_disks_hot_plug_resize_copy_and_unplug() {
    require_qemu();
    let cache = ImageCache::new(cache_root());
    let image = tokio::task::spawn_blocking(move || cache.ensure("tiny", &mut |m: &str| eprintln!("[nubo-image] {m}")))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("building the tiny image: {e}"));

    let tmp = tempfile::tempdir().unwrap();
    let vols = tmp.path().join("volumes");
    std::fs::create_dir_all(&vols).unwrap();
    let vm_dir = tmp.path().join("vm-disks");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let dir = VmDir::new(&vm_dir);
    let _reaper = Reaper(dir.clone());
    let qemu = Qemu::default();

    // Two volumes: one plugged at boot (slot 0), one hot-plugged (slot 3).
    let cold = volume(&vols, "a", 0);
    let hot = volume(&vols, "b", 3);
    qemu.create_volume(&cold.path, 64 * MIB).await.unwrap();
    qemu.create_volume(&hot.path, 32 * MIB).await.unwrap();
    qemu.create_volume(&hot.path, 32 * MIB).await.unwrap(); // idempotent
    assert_eq!(qemu.volume_size(&hot.path).await.unwrap(), 32 * MIB);
    assert!(!vols.join(format!("{}.qcow2.tmp", hot.id)).exists());

    let seed = vm_dir.join("seed.img");
    let data =
        SeedData { instance_id: "i-disks".into(), hostname: "disks".into(), user_data: None, public_keys: vec![] };
    write_nocloud_seed(&seed, &data).unwrap();
    let cfg = VmConfig {
        id: "vm-disks".into(),
        name: "disk test".into(),
        vcpus: 1,
        memory_mib: 256,
        disk_gib: 1,
        boot: Boot::Direct {
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            cmdline: image.cmdline.clone(),
        },
        base_disk: image.disk.clone(),
        seed_image: Some(seed),
        port_forwards: vec![],
        accel: Accel::Tcg,
        hotplug_slots: DEFAULT_HOTPLUG_SLOTS,
        metadata_relay: None,
        mac: None,
        base_format: Some("qcow2".into()),
        disks: vec![cold.clone()],
        taps: Vec::new(),
        incoming: false,
        cdrom: None,
        hardware: Default::default(),
        max_vcpus: None,
    };
    qemu.prepare_disk(&dir, &cfg).await.unwrap();
    qemu.start(&dir, &cfg).await.unwrap();
    let console = dir.console_log();
    let t = Instant::now();
    while !std::fs::read_to_string(&console).unwrap_or_default().contains(BOOT_COMPLETE_MARKER) {
        assert!(t.elapsed() < Duration::from_secs(240), "no boot marker");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sock = dir.qga_socket();
    let mut qga = loop {
        if let Ok(c) = QgaClient::connect(&sock, Duration::from_secs(5)).await {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "the guest agent never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The disk plugged at boot: the root disk is still /dev/vda.
    let (cold_dev, _) = wait_guest_disk(&mut qga, &cold.serial, 64 * MIB, Duration::from_secs(30)).await;
    let listed = guest(&mut qga, LIST_DISKS).await;
    assert!(listed.lines().next().is_some_and(|l| l.starts_with("vda ")), "{listed}");
    let attached = qemu.attached_disks(&dir).await.unwrap();
    assert_eq!(attached.iter().map(|d| (d.id.as_str(), d.size)).collect::<Vec<_>>(), [(cold.id.as_str(), 64 * MIB)]);

    // Hot-plug: seen by the guest within seconds; attaching again is a no-op.
    let t = Instant::now();
    qemu.attach_disk(&dir, &hot).await.unwrap();
    let (hot_dev, seen) = wait_guest_disk(&mut qga, &hot.serial, 32 * MIB, Duration::from_secs(30)).await;
    println!(
        "hot-plugged {} seen by the guest as /dev/{hot_dev} {:?} after device_add ({seen:?} polling)",
        hot.id,
        t.elapsed()
    );
    qemu.attach_disk(&dir, &hot).await.unwrap();
    assert_eq!(qemu.attached_disks(&dir).await.unwrap().len(), 2);

    // Online resize, seen by the guest.
    let t = Instant::now();
    qemu.resize_attached_disk(&dir, &hot.id, 48 * MIB).await.unwrap();
    let (_, seen) = wait_guest_disk(&mut qga, &hot.serial, 48 * MIB, Duration::from_secs(30)).await;
    println!("online resize seen by the guest after {:?} ({seen:?} polling)", t.elapsed());

    // A point-in-time copy: write A, start the copy, overwrite with B at
    // once; the copy must hold A. (The guest writes with O_DIRECT-like
    // sync so QEMU has the data before the copy starts.)
    let a = "AAAA-before-the-copy";
    guest(&mut qga, &format!("printf '{a}' | dd of=/dev/{cold_dev} bs=512 seek=8 conv=fsync 2>/dev/null")).await;
    let target = tmp.path().join("copy.qcow2");
    let job = qemu.backup_start(&dir, &cold.id, &target).await.unwrap();
    guest(
        &mut qga,
        &format!("printf 'BBBB-during-the-copy' | dd of=/dev/{cold_dev} bs=512 seek=8 conv=fsync 2>/dev/null"),
    )
    .await;
    qemu.backup_finish(&dir, &job, Duration::from_secs(120)).await.unwrap();
    assert_eq!(qcow2_bytes(&target, 8 * 512, a.len()), a.as_bytes(), "the copy holds the data as of its start");
    // The root disk copies too, self-contained (no backing file).
    let root_copy = tmp.path().join("root-copy.qcow2");
    let job = qemu.backup_start(&dir, "root", &root_copy).await.unwrap();
    qemu.backup_finish(&dir, &job, Duration::from_secs(300)).await.unwrap();
    let info =
        Command::new("qemu-img").args(["info", "--output=json", "-f", "qcow2"]).arg(&root_copy).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_eq!(info["virtual-size"].as_u64(), Some(1 << 30));
    // Bad requests fail cleanly.
    assert!(qemu.backup_start(&dir, "no-such-node", &tmp.path().join("x.qcow2")).await.is_err());
    assert!(qemu.backup_start(&dir, "root", &root_copy).await.is_err(), "an existing target is refused");

    // Unplug both; the guest lets go and they leave its /sys/block.
    for d in [&hot, &cold] {
        let t = Instant::now();
        qemu.detach_disk(&dir, &d.id, Duration::from_secs(60)).await.unwrap();
        println!("unplugged {} after {:?}", d.id, t.elapsed());
        assert_eq!(guest_disk(&mut qga, &d.serial).await, None);
        qemu.detach_disk(&dir, &d.id, Duration::from_secs(5)).await.unwrap(); // idempotent
    }
    assert!(qemu.attached_disks(&dir).await.unwrap().is_empty());
    // A detached disk can be plugged in again (its node was removed cleanly).
    qemu.attach_disk(&dir, &hot).await.unwrap();
    wait_guest_disk(&mut qga, &hot.serial, 48 * MIB, Duration::from_secs(30)).await;

    drop(qga);
    qemu.kill(&dir).await.unwrap();

    // Offline: grow a file and copy one.
    qemu.resize_volume(&hot.path, 96 * MIB).await.unwrap();
    assert_eq!(qemu.volume_size(&hot.path).await.unwrap(), 96 * MIB);
    let copy = vols.join("copy-of-a.qcow2");
    qemu.copy_disk_file(&cold.path, &copy).await.unwrap();
    assert_eq!(qcow2_bytes(&copy, 8 * 512, 4), b"BBBB");
    qemu.destroy(&dir).await.unwrap();
}
