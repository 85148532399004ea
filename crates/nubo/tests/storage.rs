//! Storage end to end on real `tiny` VMs, every check made from inside
//! the guest through its guest agent (`nubo instance exec`):
//! * volumes: two attached to a running instance, each seen with its size;
//!   data written to one, detached, attached to another instance and read
//!   back; an online extend seen by the guest; attachments kept across an
//!   instance stop and start, an agent restart and a server restart (and
//!   nothing plugged twice); a volume larger than the pool refused with no
//!   file left behind; a volume snapshot of an in-use volume (file systems
//!   frozen) restored into a new volume;
//! * images: every bad image refused (backing file, external data file,
//!   a file lying about its format, an unaccepted format, one larger than
//!   declared, a truncated one, a name with `../`), with nothing stored and
//!   nothing outside the data directory opened; good imports booted (one
//!   with tiny's kernel, one by the firmware from its own boot loader); an
//!   instance snapshot that boots a new instance with the first one's data;
//!   deletes refused while an instance or a snapshot uses the image.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const GIB: u64 = 1 << 30;

/// The guest's disks: serial -> (device name, size in bytes).
fn guest_disks(cloud: &Cloud, id: &str) -> std::collections::HashMap<String, (String, u64)> {
    let out =
        guest_sh(cloud, id, "for d in /sys/block/vd*; do echo \"${d##*/} $(cat $d/serial) $(cat $d/size)\"; done");
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[1].to_string(), (f[0].to_string(), f[2].parse::<u64>().unwrap_or(0) * 512)))
        })
        .collect()
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since_epoch.map(|d| d.as_millis() as i64).expect("a clock after 1970")
}

fn serial(volume: &str) -> String {
    volume.replacen('-', "", 1)
}

fn launch(cloud: &Cloud, name: &str) -> String {
    let id = cloud.nubo_ok(&["instance", "run", "--name", name, "--memory", "192", "--wait"]).trim().to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    id
}

/// The files in the agent's volume directory. A directory that cannot be
/// read fails the test: read as "no files", it would make every "no file
/// left" check pass whatever the agent did.
fn volume_files(cloud: &Cloud) -> Vec<String> {
    let dir = cloud.agent_dir().join("volumes");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the agent's volume directory {}: {e}", dir.display()))
        .map(|e| e.expect("a volume directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn used_disk(cloud: &Cloud) -> u64 {
    cloud.nubo_json(&["host", "list"])[0]["used_disk_gib"].as_u64().unwrap()
}

/// Waits until the guest sees the disk of `volume` with `size` bytes; its device name.
fn wait_guest_disk(cloud: &Cloud, id: &str, volume: &str, size: u64) -> String {
    wait_until(&format!("{id} to see {volume} with {size} bytes"), Duration::from_secs(60), || {
        guest_disks(cloud, id).get(&serial(volume)).filter(|d| d.1 == size).map(|d| d.0.clone())
    })
}

#[test]
fn volumes_end_to_end() {
    let mut cloud = Cloud::split();
    let a = launch(&cloud, "a");
    let b = launch(&cloud, "b");
    let disk_before = used_disk(&cloud);

    // Two volumes on a, each seen by the guest with its size.
    let v1 = cloud.nubo_ok(&["volume", "create", "--size", "1", "--name", "data", "--wait"]).trim().to_string();
    let v2 = cloud.nubo_ok(&["volume", "create", "--size", "2", "--wait"]).trim().to_string();
    assert_eq!(used_disk(&cloud), disk_before + 3, "volumes are claimed on the host's pool");
    let t = Instant::now();
    cloud.nubo_ok(&["volume", "attach", &v1, &a, "--wait"]);
    println!("attach of {v1} done (guest sees it) after {:?}", t.elapsed());
    cloud.nubo_ok(&["volume", "attach", &v2, &a, "--wait"]);
    let seen = guest_disks(&cloud, &a);
    assert_eq!(seen.get(&serial(&v1)).map(|d| d.1), Some(GIB), "{seen:?}");
    assert_eq!(seen.get(&serial(&v2)).map(|d| d.1), Some(2 * GIB), "{seen:?}");
    let shown = cloud.nubo_json(&["volume", "show", &v1]);
    assert_eq!(shown["state"], "in-use");
    assert_eq!(shown["attachment"]["state"], "attached");
    assert_eq!(shown["attachment"]["guest_device"], format!("/dev/{}", seen[&serial(&v1)].0));
    assert_eq!(shown["attachment"]["guest_size_bytes"], GIB);
    let listed = cloud.instance(&a)["volumes"].as_array().unwrap().len();
    assert_eq!(listed, 2);
    // Attaching again, or deleting an attached volume, is refused.
    let again = cloud.nubo(&["volume", "attach", &v1, &b]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already attached"));
    let del = cloud.nubo(&["volume", "delete", &v1]);
    assert!(!del.status.success() && String::from_utf8_lossy(&del.stderr).contains("detach it first"));

    // Data written on a, detached, attached to b, read back intact.
    let dev1 = &seen[&serial(&v1)].0;
    guest_sh(
        &cloud,
        &a,
        &format!("printf 'nubo-volume-data-42' | dd of=/dev/{dev1} bs=512 seek=2048 conv=fsync 2>/dev/null"),
    );
    let t = Instant::now();
    cloud.nubo_ok(&["volume", "detach", &v1, "--wait"]);
    println!("detach done after {:?}", t.elapsed());
    assert!(!guest_disks(&cloud, &a).contains_key(&serial(&v1)), "the guest let go of it");
    assert_eq!(cloud.nubo_json(&["volume", "show", &v1])["state"], "available");
    cloud.nubo_ok(&["volume", "attach", &v1, &b, "--wait"]);
    let dev_b = wait_guest_disk(&cloud, &b, &v1, GIB);
    let back = guest_sh(&cloud, &b, &format!("dd if=/dev/{dev_b} bs=512 skip=2048 count=1 2>/dev/null | head -c 19"));
    assert_eq!(back, "nubo-volume-data-42");

    // Online extend, seen by the guest.
    let t = Instant::now();
    cloud.nubo_ok(&["volume", "extend", &v2, "--size", "3", "--wait"]);
    println!("online extend seen by the guest after {:?}", t.elapsed());
    assert_eq!(guest_disks(&cloud, &a).get(&serial(&v2)).map(|d| d.1), Some(3 * GIB));
    assert_eq!(cloud.nubo_json(&["volume", "show", &v2])["actual_size_gib"], 3);
    let shrink = cloud.nubo(&["volume", "extend", &v2, "--size", "1"]);
    assert!(!shrink.status.success() && String::from_utf8_lossy(&shrink.stderr).contains("larger"));

    // A snapshot of v1 while b uses it (file systems frozen), restored into a new volume on a.
    let snap = cloud.nubo_ok(&["volume", "snapshot", &v1, "--wait"]).trim().to_string();
    let s = cloud.nubo_json(&["snapshot", "show", &snap]);
    assert_eq!(s["state"], "completed");
    assert_eq!(s["consistency"], "filesystem", "{s}");
    guest_sh(
        &cloud,
        &b,
        &format!("printf 'overwritten-after-the-snap' | dd of=/dev/{dev_b} bs=512 seek=2048 conv=fsync 2>/dev/null"),
    );
    let v3 = cloud.nubo_ok(&["volume", "create", "--size", "2", "--snapshot", &snap, "--wait"]).trim().to_string();
    cloud.nubo_ok(&["volume", "attach", &v3, &a, "--wait"]);
    let dev3 = wait_guest_disk(&cloud, &a, &v3, 2 * GIB);
    let restored =
        guest_sh(&cloud, &a, &format!("dd if=/dev/{dev3} bs=512 skip=2048 count=1 2>/dev/null | head -c 19"));
    assert_eq!(restored, "nubo-volume-data-42", "the snapshot holds the data as of when it was taken");

    // A volume larger than the pool is refused up front, leaving no file.
    let files = volume_files(&cloud);
    for v in [&v1, &v2, &v3] {
        assert!(files.iter().any(|f| f.starts_with(v.as_str())), "no file of {v} among {files:?}");
    }
    let used = used_disk(&cloud);
    let big = cloud.nubo(&["volume", "create", "--size", "500"]);
    let err = String::from_utf8_lossy(&big.stderr);
    assert!(!big.status.success() && err.contains("storage pool") && err.contains("GiB free"), "{err}");
    // "Nothing appears": the refusal is synchronous, and the second is
    // there for an agent that would make the file anyway, a little later.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(volume_files(&cloud), files, "no file for a refused volume");
    assert_eq!(used_disk(&cloud), used);
    assert_eq!(cloud.nubo_json(&["volume", "list"]).as_array().unwrap().len(), 3);

    // Attachments survive an instance stop and start...
    cloud.nubo_ok(&["instance", "stop", &a, "--wait"]);
    assert_eq!(cloud.nubo_json(&["volume", "show", &v2])["attachment"]["state"], "attached");
    cloud.nubo_ok(&["instance", "start", &a, "--wait"]);
    cloud.wait_console(&a, nubo_api::BOOT_COMPLETE_MARKER, 2, BOOT);
    wait_guest_disk(&cloud, &a, &v2, 3 * GIB);
    wait_guest_disk(&cloud, &a, &v3, 2 * GIB);
    wait_until("both attachments attached again", Duration::from_secs(60), || {
        let vols = cloud.instance(&a)["volumes"].clone();
        vols.as_array()?.iter().all(|v| v["state"] == "attached").then_some(())
    });

    // ...an agent restart and a server restart, with nothing plugged twice.
    let pid = cloud.qemu_pid(&a).expect("pidfile");
    cloud.kill_agent();
    cloud.start_agent();
    cloud.kill_server();
    let restarted_ms = now_ms();
    cloud.start_server();
    // The agent has reached the restarted server (and had its chance to
    // plug anything twice) once it reported after the restart.
    wait_until("the agent to report to the restarted server", Duration::from_secs(60), || {
        let beat = cloud.nubo_json(&["host", "list"])[0]["last_heartbeat_ms"].as_i64()?;
        (beat > restarted_ms).then_some(())
    });
    assert_eq!(cloud.qemu_pid(&a), Some(pid), "the VM was re-adopted");
    let disks = guest_disks(&cloud, &a);
    assert_eq!(disks.len(), 2, "the two volumes, once each: {disks:?}");
    let all = guest_sh(&cloud, &a, "ls /sys/block | grep -c vd");
    assert_eq!(all.trim(), "4", "root, seed and the two volumes");
    assert_eq!(disks.get(&serial(&v2)).map(|d| d.1), Some(3 * GIB));
    for v in [&v2, &v3] {
        let shown = cloud.nubo_json(&["volume", "show", v]);
        assert_eq!(
            (shown["state"].as_str(), shown["attachment"]["state"].as_str()),
            (Some("in-use"), Some("attached"))
        );
    }
    // And the restarted agent still obeys: detach, delete.
    cloud.nubo_ok(&["volume", "detach", &v3, "--wait"]);
    assert!(!guest_disks(&cloud, &a).contains_key(&serial(&v3)));
    cloud.nubo_ok(&["volume", "delete", &v3, "--wait"]);
    assert!(!volume_files(&cloud).iter().any(|f| f.starts_with(&v3)), "the file is gone");

    // Terminating an instance keeps its volumes (EC2's default) and frees them.
    cloud.nubo_ok(&["instance", "terminate", &b, "--wait"]);
    let v1_after = cloud.nubo_json(&["volume", "show", &v1]);
    assert_eq!(v1_after["state"], "available", "{v1_after}");
    assert!(v1_after["attachment"].is_null());
}

/// A qcow2 made with `qemu-img create` and extra arguments.
fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn registry_files(cloud: &Cloud) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["sha256", "tmp"] {
        if let Ok(d) = std::fs::read_dir(cloud.data_dir().join("registry").join(sub)) {
            out.extend(d.flatten().map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())));
        }
    }
    out.sort();
    out
}

fn image_names(cloud: &Cloud) -> Vec<String> {
    let list = cloud.nubo_json(&["image", "list"]);
    list.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect()
}

/// Imports `file` and expects a refusal whose message has `needle`, within
/// a few seconds (a FIFO as backing or data file would block anyone who
/// opened it), with nothing stored.
fn refused(cloud: &Cloud, file: &Path, extra: &[&str], needle: &str) {
    let before = (registry_files(cloud), image_names(cloud));
    let t = Instant::now();
    let mut args = vec!["image", "import", file.to_str().unwrap(), "--name", "bad-image"];
    args.extend(extra);
    let out = cloud.nubo(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{file:?} {extra:?} was accepted");
    assert!(err.contains(needle), "{file:?}: expected '{needle}' in: {err}");
    assert!(t.elapsed() < Duration::from_secs(20), "the refusal took {:?}", t.elapsed());
    assert_eq!((registry_files(cloud), image_names(cloud)), before, "a refused image left something behind");
    println!("refused {}: {}", file.display(), err.lines().last().unwrap_or(""));
}

#[test]
fn images_end_to_end() {
    let cloud = Cloud::up();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let ps = |name: &str| p(name).to_str().unwrap().to_string();

    // Files outside the data directory that a bad image points at: FIFOs,
    // which would hang whoever opened them.
    let outside = tempfile::tempdir().unwrap();
    let fifo = outside.path().join("secret.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fifo = fifo.to_str().unwrap();

    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-b", fifo, "-F", "raw", &ps("backing.qcow2"), "64M"]);
    refused(&cloud, &p("backing.qcow2"), &[], "backing file");
    qemu_img(&["create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", &ps("shadow.qcow2"), "1G"]);
    refused(&cloud, &p("shadow.qcow2"), &[], "/etc/shadow");
    // A "raw" image whose bytes are a qcow2 with a backing file: the classic format confusion.
    refused(&cloud, &p("shadow.qcow2"), &["--format", "raw"], "declared raw but it is a qcow2");
    qemu_img(&["create", "-q", "-f", "raw", &ps("data.raw"), "64M"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", ps("data.raw")),
        &ps("datafile.qcow2"),
        "64M",
    ]);
    refused(&cloud, &p("datafile.qcow2"), &[], "external data file");
    std::fs::write(p("plain.raw"), vec![7u8; 1 << 20]).unwrap();
    refused(&cloud, &p("plain.raw"), &["--format", "qcow2"], "declared qcow2 but it is not a qcow2");
    qemu_img(&["create", "-q", "-f", "vmdk", &ps("disk.vmdk"), "64M"]);
    refused(&cloud, &p("disk.vmdk"), &[], "vmdk");
    // Truncated: a qcow2 with data, cut short.
    let mut data = vec![0u8; 8 << 20];
    data.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
    std::fs::write(p("full.raw"), &data).unwrap();
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "qcow2", &ps("full.raw"), &ps("full.qcow2")]);
    let full = std::fs::read(p("full.qcow2")).unwrap();
    std::fs::write(p("cut.qcow2"), &full[..full.len() / 2]).unwrap();
    refused(&cloud, &p("cut.qcow2"), &[], "refused and not stored");
    // A name that is a path.
    let out = cloud.nubo(&["image", "import", &ps("full.qcow2"), "--name", "../../etc/x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not valid"));

    // A file larger than its declared size: register 1 MiB, send 8.
    let created = cloud.api_post(
        "/api/v1/images",
        &serde_json::json!({"name": "liar", "disk_format": "raw", "size_bytes": 1 << 20}).to_string(),
    );
    let id = created["id"].as_str().expect("image id").to_string();
    let before = registry_files(&cloud);
    let (status, body) = cloud.api_put_file(&format!("/api/v1/images/{id}/file"), &p("full.raw"));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than the declared size"), "{body}");
    assert_eq!(registry_files(&cloud), before);
    assert!(!image_names(&cloud).contains(&"liar".to_string()), "a refused image is not kept");

    // A good import: tiny's own root disk, booted with tiny's kernel.
    let tiny_disk = Path::new(cloud.image_of("tiny").as_str()).join("disk.qcow2");
    let imported = cloud
        .nubo_ok(&["image", "import", tiny_disk.to_str().unwrap(), "--name", "my-tiny", "--kernel-image", "tiny"])
        .trim()
        .to_string();
    let image = cloud.nubo_json(&["image", "show", "my-tiny"]);
    assert_eq!((image["id"].as_str(), image["state"].as_str()), (Some(imported.as_str()), Some("active")));
    assert_eq!(image["disk_format"], "qcow2");
    let sha = sha256_file(&tiny_disk);
    assert_eq!(image["sha256"], sha, "stored under its sha256");
    assert!(cloud.data_dir().join("registry/sha256").join(&sha).is_file());
    let raw_id = cloud.nubo_ok(&["image", "import", &ps("full.raw"), "--name", "plain-raw"]).trim().to_string();
    assert_eq!(cloud.nubo_json(&["image", "show", &raw_id])["virtual_size_bytes"], 8 << 20);

    // An image with its own boot loader, booted by the firmware: a raw disk
    // with an MBR, a FAT partition holding syslinux, tiny's kernel and
    // initrd, and tiny's root file system as the second partition.
    let bootable = bios_bootable_disk(&cloud, dir.path());
    let fw = cloud.nubo_ok(&["image", "import", bootable.to_str().unwrap(), "--name", "fw-tiny"]).trim().to_string();
    let fw_image = cloud.nubo_json(&["image", "show", &fw]);
    assert_eq!((fw_image["disk_format"].as_str(), fw_image["kernel_image"].as_str()), (Some("raw"), None));
    let f = cloud.nubo_ok(&["instance", "run", "--image", "fw-tiny", "--name", "fw", "--wait"]).trim().to_string();
    cloud.wait_console(&f, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    let cmdline = guest_sh(&cloud, &f, "cat /proc/cmdline");
    assert!(
        cmdline.contains("BOOT_IMAGE=vmlinuz") && cmdline.contains("root=/dev/vda2"),
        "booted by syslinux: {cmdline}"
    );
    cloud.nubo_ok(&["instance", "terminate", &f, "--wait"]);

    // Boot it; write data on the root disk; snapshot the instance.
    let a = cloud.nubo_ok(&["instance", "run", "--image", "my-tiny", "--name", "a", "--wait"]).trim().to_string();
    cloud.wait_console(&a, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    guest_sh(&cloud, &a, "echo first-instance-data > /root/marker && sync");
    let t = Instant::now();
    let snap = cloud.nubo_ok(&["instance", "snapshot", &a, "--name", "a-snap", "--wait"]).trim().to_string();
    println!("instance snapshot active after {:?}", t.elapsed());
    let s = cloud.nubo_json(&["image", "show", &snap]);
    assert_eq!((s["source"].as_str(), s["parent"].as_str()), (Some("snapshot"), Some(imported.as_str())));
    assert_eq!(s["kernel_image"], "tiny");

    // A new instance boots from the snapshot with the first one's data.
    let b = cloud
        .nubo_ok(&["instance", "run", "--image", "a-snap", "--name", "b", "--disk", "2", "--wait"])
        .trim()
        .to_string();
    cloud.wait_console(&b, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    assert_eq!(guest_sh(&cloud, &b, "cat /root/marker").trim(), "first-instance-data");
    assert!(cloud.console(&b).contains(&format!("instance-id={b}")), "it is a new instance");

    // Deletes refused while used: by an instance, then by a snapshot.
    let del = cloud.nubo(&["image", "delete", "a-snap"]);
    assert!(String::from_utf8_lossy(&del.stderr).contains(&format!("in use by instances {b}")));
    cloud.nubo_ok(&["instance", "terminate", &a, "--wait"]);
    let del = cloud.nubo(&["image", "delete", "my-tiny"]);
    assert!(String::from_utf8_lossy(&del.stderr).contains("snapshots taken from it"), "{del:?}");
    cloud.nubo_ok(&["instance", "terminate", &b, "--wait"]);
    cloud.nubo_ok(&["image", "delete", "a-snap"]);
    cloud.nubo_ok(&["image", "delete", "my-tiny"]);
    assert!(!cloud.data_dir().join("registry/sha256").join(&sha).exists(), "an unused file is removed");
    let builtin = cloud.nubo(&["image", "delete", "tiny"]);
    assert!(String::from_utf8_lossy(&builtin.stderr).contains("builtin"));
}

/// A raw disk that SeaBIOS boots: syslinux's MBR, a FAT partition with
/// syslinux, tiny's kernel and initrd, and tiny's root file system as
/// partition 2. Built without root or loop devices (mtools, sfdisk, dd).
fn bios_bootable_disk(cloud: &Cloud, dir: &Path) -> std::path::PathBuf {
    let tiny = cloud.image_of("tiny");
    let script = r#"set -eu
T="$1"; cd "$2"
truncate -s 32M boot.img && mkfs.vfat -n BOOT boot.img >/dev/null
printf 'DEFAULT nubo
PROMPT 0
TIMEOUT 1
LABEL nubo
  KERNEL vmlinuz
  INITRD initrd
  APPEND console=ttyS0 root=/dev/vda2 rw quiet
' > syslinux.cfg
mcopy -i boot.img "$T/kernel" ::vmlinuz && mcopy -i boot.img "$T/initrd" ::initrd && mcopy -i boot.img syslinux.cfg ::syslinux.cfg
syslinux --install boot.img
qemu-img convert -f qcow2 -O raw "$T/disk.qcow2" root.img
truncate -s $((1048576 + 33554432 + $(stat -c %s root.img))) bootable.raw
printf 'label: dos
start=2048, size=65536, type=c, bootable
start=67584, type=83
' | sfdisk -q bootable.raw
dd if=boot.img of=bootable.raw bs=1M seek=1 conv=notrunc status=none
dd if=root.img of=bootable.raw bs=512 seek=67584 conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of=bootable.raw bs=440 count=1 conv=notrunc status=none
"#;
    let out = Command::new("sh").args(["-c", script, "sh", &tiny]).arg(dir).output().expect("sh");
    assert!(
        out.status.success(),
        "building a BIOS-bootable disk (needs syslinux, mtools, dosfstools, fdisk: scripts/install-deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("bootable.raw")
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}
