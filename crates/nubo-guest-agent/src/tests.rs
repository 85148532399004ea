//! Dispatcher tests: JSON lines in, replies out, no VM needed. Freezing
//! goes through a fake [`FsOps`] (never the real ioctls: these tests may run
//! as root on a developer's machine), disks through a fake sysfs tree.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nubo_guest_protocol::{FsfreezeStatus, ShutdownMode};
use serde_json::{json, Value};

use crate::commands::{Agent, QgaError};
use crate::disks::{bus_type, disks_in, pci_address, scsi_address, PciAddress};
use crate::fsfreeze::{targets, Freezer, FsOps};
use crate::protocol::{Session, SENTINEL};
use crate::sysinfo::{parse_mountinfo, parse_os_release, Mount};

fn no_shutdown(mode: ShutdownMode) -> Result<(), QgaError> {
    if mode == ShutdownMode::Halt {
        Err(QgaError::generic("halt is not allowed in tests"))
    } else {
        Ok(())
    }
}

/// A mountinfo with one of each case: the root, virtual file systems, a
/// partition, a read-only seed, a bind mount of the root, an xfs data disk
/// and a writable vfat (which Linux cannot freeze).
const MOUNTINFO: &str = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
    23 22 0:21 / /proc rw,nosuid - proc proc rw\n\
    24 22 0:5 / /dev rw - devtmpfs devtmpfs rw,size=1024k\n\
    25 22 0:22 / /tmp rw - tmpfs tmpfs rw\n\
    26 22 254:1 / /boot rw,relatime - ext4 /dev/vda1 rw\n\
    27 22 254:16 / /run/cidata ro,relatime - vfat /dev/vdb ro,fmask=0022\n\
    28 22 254:0 /srv /srv rw,relatime - ext4 /dev/vda rw\n\
    29 22 254:32 / /data rw,noatime - xfs /dev/vdc rw,attr2\n\
    30 22 254:48 / /mnt/usb rw - vfat /dev/vdd rw\n";

/// FIFREEZE and FITHAW as Linux answers them (EBUSY when already frozen,
/// EINVAL when not frozen, EOPNOTSUPP for vfat), on a fixed mountinfo,
/// recording every call.
struct FakeFs {
    mountinfo: String,
    frozen: Mutex<HashSet<String>>,
    calls: Mutex<Vec<String>>,
    /// errno for the freeze of a mount point.
    fail: Option<(&'static str, i32)>,
}

impl FakeFs {
    fn new(mountinfo: &str) -> Arc<Self> {
        Self::failing(mountinfo, None)
    }

    fn failing(mountinfo: &str, fail: Option<(&'static str, i32)>) -> Arc<Self> {
        Arc::new(FakeFs { mountinfo: mountinfo.into(), frozen: Mutex::default(), calls: Mutex::default(), fail })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
}

impl FsOps for FakeFs {
    fn mountinfo(&self) -> std::io::Result<String> {
        Ok(self.mountinfo.clone())
    }

    fn freeze(&self, mountpoint: &str) -> std::io::Result<()> {
        self.calls.lock().expect("lock").push(format!("freeze {mountpoint}"));
        let errno = |e| Err(std::io::Error::from_raw_os_error(e));
        match self.fail {
            Some((mp, e)) if mp == mountpoint => return errno(e),
            _ => {}
        }
        if mountpoint == "/mnt/usb" {
            return errno(libc::EOPNOTSUPP);
        }
        if self.frozen.lock().expect("lock").insert(mountpoint.to_string()) {
            Ok(())
        } else {
            errno(libc::EBUSY)
        }
    }

    fn thaw(&self, mountpoint: &str) -> std::io::Result<()> {
        self.calls.lock().expect("lock").push(format!("thaw {mountpoint}"));
        if self.frozen.lock().expect("lock").remove(mountpoint) {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        }
    }
}

fn session_with(fs: Arc<FakeFs>) -> Session {
    Session::new(Agent::new(no_shutdown, Freezer::new(fs, Duration::from_secs(3600))))
}

fn session() -> Session {
    session_with(FakeFs::new(MOUNTINFO))
}

/// Sends one request; returns the raw reply bytes.
fn raw(s: &mut Session, request: &str) -> Vec<u8> {
    s.feed(format!("{request}\n").as_bytes())
}

/// Sends one request and parses its single reply line.
fn call(s: &mut Session, request: Value) -> Value {
    let out = raw(s, &request.to_string());
    assert_eq!(out.last(), Some(&b'\n'), "{}", String::from_utf8_lossy(&out));
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", String::from_utf8_lossy(&out));
    serde_json::from_slice(lines[0]).expect("reply is JSON")
}

fn ret(s: &mut Session, command: &str, args: Value) -> Value {
    let reply = call(s, json!({"execute": command, "arguments": args}));
    match reply.get("return") {
        Some(v) => v.clone(),
        None => panic!("{command} failed: {reply}"),
    }
}

fn err(s: &mut Session, command: &str, args: Value) -> (String, String) {
    let reply = call(s, json!({"execute": command, "arguments": args}));
    let e = reply.get("error").unwrap_or_else(|| panic!("{command} should fail: {reply}"));
    (e["class"].as_str().unwrap_or_default().into(), e["desc"].as_str().unwrap_or_default().into())
}

#[test]
fn sync_ping_info_and_ids() {
    let mut s = session();
    assert_eq!(ret(&mut s, "guest-sync", json!({"id": 12345})), json!(12345));
    assert_eq!(ret(&mut s, "guest-ping", json!({})), json!({}));
    let reply = call(&mut s, json!({"execute": "guest-ping", "id": "abc"}));
    assert_eq!(reply, json!({"return": {}, "id": "abc"}));

    let info = ret(&mut s, "guest-info", json!({}));
    assert!(info["version"].as_str().is_some());
    let cmds = info["supported_commands"].as_array().expect("list");
    let find = |n: &str| cmds.iter().find(|c| c["name"] == n).cloned();
    assert_eq!(find("guest-exec"), Some(json!({"name": "guest-exec", "enabled": true, "success-response": true})));
    assert_eq!(find("guest-shutdown").map(|c| c["success-response"].clone()), Some(json!(false)));
}

#[test]
fn sync_delimited_sends_sentinel_and_resets_parser() {
    let mut s = session();
    // Garbage from a vanished client, then the sentinel, then the sync.
    let mut input = b"{\"execute\": \"guest-pi".to_vec();
    input.push(SENTINEL);
    input.extend_from_slice(b"{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":77}}\n");
    let out = s.feed(&input);
    assert_eq!(out[0], SENTINEL);
    let v: Value = serde_json::from_slice(&out[1..]).expect("JSON after sentinel");
    assert_eq!(v, json!({"return": 77}));
}

#[test]
fn partial_and_batched_requests() {
    let mut s = session();
    assert!(s.feed(b"{\"execute\":").is_empty());
    let out = s.feed(b"\"guest-ping\"}{\"execute\":\"guest-sync\",\"arguments\":{\"id\":1}}\n");
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text, "{\"return\":{}}\n{\"return\":1}\n");
    // A host disconnect drops a partial request.
    assert!(s.feed(b"{\"execute\":\"guest-").is_empty());
    s.reset();
    assert_eq!(String::from_utf8(s.feed(b"{\"execute\":\"guest-ping\"}")).expect("utf8"), "{\"return\":{}}\n");
}

#[test]
fn errors_have_qga_shape() {
    let mut s = session();
    let (class, desc) = err(&mut s, "guest-frobnicate", json!({}));
    assert_eq!(class, "CommandNotFound");
    assert!(desc.contains("guest-frobnicate"), "{desc}");
    assert_eq!(err(&mut s, "guest-sync", json!({})), ("GenericError".into(), "Parameter 'id' missing".into()));
    assert_eq!(
        err(&mut s, "guest-ping", json!({"x": 1})),
        ("GenericError".into(), "Parameter 'x' is unexpected".into())
    );
    let (class, _) = err(&mut s, "guest-exec-status", json!({"pid": "one"}));
    assert_eq!(class, "GenericError");
    let reply: Value = serde_json::from_slice(&raw(&mut s, "{not json")).expect("JSON");
    assert_eq!(reply["error"]["class"], "GenericError");
    assert!(reply["error"]["desc"].as_str().unwrap_or_default().contains("JSON parse error"));
    // The parser recovers on the next line.
    assert_eq!(ret(&mut s, "guest-ping", json!({})), json!({}));
    let reply = call(&mut s, json!({"arguments": {}}));
    assert_eq!(reply["error"]["desc"], "QMP input lacks member 'execute'");
    let reply = call(&mut s, json!([1, 2]));
    assert_eq!(reply["error"]["class"], "GenericError");
}

/// Polls guest-exec-status until the process has exited.
fn wait_exec(s: &mut Session, pid: &Value) -> Value {
    for _ in 0..500 {
        let st = ret(s, "guest-exec-status", json!({"pid": pid}));
        if st["exited"] == true {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("process {pid} did not exit");
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap_or_default()).expect("base64")
}

#[test]
fn exec_captures_output_input_and_status() {
    let mut s = session();
    let pid = ret(
        &mut s,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "cat; echo oops >&2; exit 3"],
               "input-data": B64.encode("hello\n"), "capture-output": true}),
    )["pid"]
        .clone();
    assert!(pid.as_i64().is_some_and(|p| p > 0));
    let st = wait_exec(&mut s, &pid);
    assert_eq!(st["exitcode"], 3);
    assert_eq!(b64(&st["out-data"]), b"hello\n");
    assert_eq!(b64(&st["err-data"]), b"oops\n");
    assert!(st.get("signal").is_none() && st.get("out-truncated").is_none());
    // The status is handed out once, then the pid is forgotten, as in qemu-ga.
    assert_eq!(err(&mut s, "guest-exec-status", json!({"pid": pid})).0, "GenericError");

    let pid = ret(&mut s, "guest-exec", json!({"path": "/bin/sh", "arg": ["-c", "kill -9 $$"]}))["pid"].clone();
    let st = wait_exec(&mut s, &pid);
    assert_eq!(st["signal"], 9);
    assert!(st.get("exitcode").is_none() && st.get("out-data").is_none());

    // env replaces the environment; merged capture mode.
    let pid = ret(
        &mut s,
        "guest-exec",
        json!({"path": "/bin/sh", "arg": ["-c", "echo $FOO; echo e >&2"], "env": ["FOO=bar"], "capture-output": "merged"}),
    )["pid"]
        .clone();
    let st = wait_exec(&mut s, &pid);
    assert_eq!(st["exitcode"], 0);
    assert_eq!(b64(&st["out-data"]), b"bar\ne\n");

    let (class, desc) = err(&mut s, "guest-exec", json!({"path": "/nonexistent/program"}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("/nonexistent/program"), "{desc}");
}

#[test]
fn file_open_write_seek_read_close() {
    let dir = tempfile_dir("files");
    let path = dir.join("f.txt");
    let path = path.to_str().expect("utf8 path");
    let mut s = session();
    let h = ret(&mut s, "guest-file-open", json!({"path": path, "mode": "w+"}));
    assert!(h.as_i64().is_some_and(|h| h >= 1000));
    let w = ret(&mut s, "guest-file-write", json!({"handle": h, "buf-b64": B64.encode("hello world")}));
    assert_eq!(w, json!({"count": 11, "eof": false}));
    assert_eq!(ret(&mut s, "guest-file-flush", json!({"handle": h})), json!({}));
    assert_eq!(ret(&mut s, "guest-file-seek", json!({"handle": h, "offset": 6, "whence": "set"}))["position"], 6);
    let r = ret(&mut s, "guest-file-read", json!({"handle": h, "count": 100}));
    assert_eq!(r["count"], 5);
    assert_eq!(r["eof"], true);
    assert_eq!(b64(&r["buf-b64"]), b"world");
    assert_eq!(ret(&mut s, "guest-file-seek", json!({"handle": h, "offset": 0, "whence": 0}))["position"], 0);
    let r = ret(&mut s, "guest-file-read", json!({"handle": h, "count": 5}));
    assert_eq!((r["count"].clone(), r["eof"].clone()), (json!(5), json!(false)));
    assert_eq!(ret(&mut s, "guest-file-close", json!({"handle": h})), json!({}));
    let (class, desc) = err(&mut s, "guest-file-read", json!({"handle": h}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("not been found"), "{desc}");
    assert_eq!(std::fs::read(path).expect("read back"), b"hello world");
    let (_, desc) = err(&mut s, "guest-file-open", json!({"path": dir.join("missing/x").to_str(), "mode": "r"}));
    assert!(desc.contains("failed to open file"), "{desc}");
    assert!(err(&mut s, "guest-file-open", json!({"path": path, "mode": "q"})).1.contains("mode"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nubo-guest-agent-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn system_facts() {
    let mut s = session();
    let fs = ret(&mut s, "guest-get-fsinfo", json!({}));
    for f in fs.as_array().expect("list") {
        assert!(f["name"].is_string() && f["mountpoint"].is_string() && f["type"].is_string(), "{f}");
        assert_ne!(f["type"], "proc");
        assert_eq!(f["disk"], json!([]));
    }
    let os = ret(&mut s, "guest-get-osinfo", json!({}));
    assert!(os["kernel-release"].is_string() && os["machine"].is_string(), "{os}");
    let nics = ret(&mut s, "guest-network-get-interfaces", json!({}));
    let lo = nics.as_array().and_then(|l| l.iter().find(|n| n["name"] == "lo")).cloned().expect("lo");
    let ips = lo["ip-addresses"].as_array().expect("ips");
    assert!(ips.iter().any(|ip| ip == &json!({"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8})));
}

#[test]
fn shutdown_replies_only_on_error() {
    let mut s = session();
    assert!(raw(&mut s, r#"{"execute":"guest-shutdown"}"#).is_empty());
    assert!(raw(&mut s, r#"{"execute":"guest-shutdown","arguments":{"mode":"reboot"}}"#).is_empty());
    assert_eq!(err(&mut s, "guest-shutdown", json!({"mode": "halt"})).0, "GenericError");
    assert!(err(&mut s, "guest-shutdown", json!({"mode": "explode"})).1.contains("explode"));
}

#[test]
fn unknown_enum_values_are_refused_in_qemu_gas_words() {
    let mut s = session();
    assert_eq!(
        err(&mut s, "guest-shutdown", json!({"mode": "explode"})),
        ("GenericError".into(), "Parameter 'mode' does not accept value 'explode'".into())
    );
    assert_eq!(
        err(&mut s, "guest-exec", json!({"path": "/bin/true", "capture-output": "sideways"})),
        ("GenericError".into(), "Parameter 'capture-output' does not accept value 'sideways'".into())
    );
}

#[test]
fn parses_mountinfo_and_os_release() {
    let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                23 22 0:21 / /proc rw - proc proc rw\n\
                30 22 254:16 / /run/my\\040seed ro - vfat /dev/vdb ro\n\
                garbage\n";
    let m = parse_mountinfo(text);
    assert_eq!(m.len(), 3);
    assert_eq!(
        m[2],
        Mount {
            major: 254,
            minor: 16,
            mountpoint: "/run/my seed".into(),
            fstype: "vfat".into(),
            source: "/dev/vdb".into(),
            read_only: true,
        }
    );
    assert!(!m[0].read_only);
    let os = parse_os_release("NAME=\"Nubo tiny\"\n# c\nID=nubo-tiny\nPRETTY_NAME='a \\\"b\\\"'\n");
    assert_eq!(os.get("NAME").map(String::as_str), Some("Nubo tiny"));
    assert_eq!(os.get("ID").map(String::as_str), Some("nubo-tiny"));
    assert_eq!(os.get("PRETTY_NAME").map(String::as_str), Some("a \"b\""));
}

#[test]
fn freeze_targets_are_writable_block_file_systems_once_each() {
    let mounts = parse_mountinfo(MOUNTINFO);
    // Not proc, devtmpfs, tmpfs, the read-only seed or the bind mount of /.
    assert_eq!(targets(&mounts), ["/", "/boot", "/data", "/mnt/usb"]);
    // A read-only bind of a writable file system still freezes it (the
    // superblock options decide), once.
    let bind = "22 1 254:0 / / rw - ext4 /dev/vda rw\n40 22 254:0 / /ro-view ro - ext4 /dev/vda rw\n";
    assert_eq!(targets(&parse_mountinfo(bind)), ["/"]);
    // btrfs: an anonymous 0:N device, still a disk file system.
    let btrfs = "22 1 0:31 /@ / rw - btrfs /dev/sda2 rw,subvol=/@\n23 22 0:31 /@home /home rw - btrfs /dev/sda2 rw\n";
    assert_eq!(targets(&parse_mountinfo(btrfs)), ["/"]);
}

const FROZEN: &str = "the agent is in frozen state";

#[test]
fn freeze_gates_commands_until_thaw() {
    let fs = FakeFs::new(MOUNTINFO);
    let mut s = session_with(fs.clone());
    assert_eq!(ret(&mut s, "guest-fsfreeze-status", json!({})), json!("thawed"));
    // vfat cannot be frozen (EOPNOTSUPP): 3 of the 4 targets.
    assert_eq!(ret(&mut s, "guest-fsfreeze-freeze", json!({})), json!(3));
    assert_eq!(fs.calls(), ["freeze /mnt/usb", "freeze /data", "freeze /boot", "freeze /"]);
    assert_eq!(ret(&mut s, "guest-fsfreeze-status", json!({})), json!("frozen"));

    // Refused with qemu-ga's error, before the arguments are even looked at.
    for cmd in ["guest-exec", "guest-file-open", "guest-get-disks", "guest-fsfreeze-freeze", "guest-shutdown"] {
        let (class, desc) = err(&mut s, cmd, json!({"path": "/bin/true"}));
        assert_eq!(class, "CommandNotFound", "{cmd}");
        assert_eq!(desc, format!("Command {cmd} has been disabled: {FROZEN}"));
    }
    // Unknown commands stay unknown.
    assert!(err(&mut s, "guest-frobnicate", json!({})).1.contains("has not been found"));
    // The allow-list still runs, and guest-info says what is disabled.
    assert_eq!(ret(&mut s, "guest-ping", json!({})), json!({}));
    assert_eq!(ret(&mut s, "guest-sync", json!({"id": 3})), json!(3));
    let out = s.feed(b"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":4}}\n");
    assert_eq!(out[0], SENTINEL);
    let info = ret(&mut s, "guest-info", json!({}));
    let enabled = |name: &str| {
        info["supported_commands"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == name))
            .map(|c| c["enabled"].clone())
    };
    assert_eq!(enabled("guest-exec"), Some(json!(false)));
    assert_eq!(enabled("guest-fsfreeze-thaw"), Some(json!(true)));
    assert_eq!(enabled("guest-info"), Some(json!(true)));

    // Thawed in mount order; the vfat was never frozen (EINVAL, not counted).
    assert_eq!(ret(&mut s, "guest-fsfreeze-thaw", json!({})), json!(3));
    assert_eq!(&fs.calls()[4..], ["thaw /", "thaw /boot", "thaw /data", "thaw /mnt/usb"]);
    assert_eq!(ret(&mut s, "guest-fsfreeze-status", json!({})), json!("thawed"));
    assert!(ret(&mut s, "guest-exec", json!({"path": "/bin/true"}))["pid"].is_i64());
    let info = ret(&mut s, "guest-info", json!({}));
    assert!(info["supported_commands"].as_array().expect("list").iter().all(|c| c["enabled"] == true));
    // A thaw with nothing frozen thaws nothing.
    assert_eq!(ret(&mut s, "guest-fsfreeze-thaw", json!({})), json!(0));
}

#[test]
fn failed_freeze_thaws_what_it_froze() {
    let fs = FakeFs::failing(MOUNTINFO, Some(("/", libc::EIO)));
    let mut s = session_with(fs.clone());
    let (class, desc) = err(&mut s, "guest-fsfreeze-freeze", json!({}));
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("failed to freeze /: "), "{desc}");
    assert_eq!(fs.calls(), ["freeze /mnt/usb", "freeze /data", "freeze /boot", "freeze /", "thaw /boot", "thaw /data"]);
    assert_eq!(ret(&mut s, "guest-fsfreeze-status", json!({})), json!("thawed"));
    assert!(ret(&mut s, "guest-exec", json!({"path": "/bin/true"}))["pid"].is_i64());
}

#[test]
fn freeze_counts_already_frozen_and_may_freeze_nothing() {
    // Frozen by someone else (EBUSY): frozen all the same, and thawed by us.
    let fs = FakeFs::new(MOUNTINFO);
    fs.frozen.lock().expect("lock").insert("/data".into());
    let mut s = session_with(fs.clone());
    assert_eq!(ret(&mut s, "guest-fsfreeze-freeze", json!({})), json!(3));
    assert_eq!(ret(&mut s, "guest-fsfreeze-thaw", json!({})), json!(3));
    assert!(fs.frozen.lock().expect("lock").is_empty());

    // Only virtual file systems: 0, and the agent stays thawed.
    let mut s =
        session_with(FakeFs::new("23 1 0:21 / /proc rw - proc proc rw\n25 1 0:22 / /tmp rw - tmpfs tmpfs rw\n"));
    assert_eq!(ret(&mut s, "guest-fsfreeze-freeze", json!({})), json!(0));
    assert_eq!(ret(&mut s, "guest-fsfreeze-status", json!({})), json!("thawed"));
    assert_eq!(ret(&mut s, "guest-ping", json!({})), json!({}));
}

#[test]
fn auto_thaw_undoes_only_its_own_freeze() {
    // The timer of an undone freeze does nothing, even after a new freeze.
    let fs = FakeFs::new(MOUNTINFO);
    let f = Freezer::new(fs.clone(), Duration::from_secs(3600));
    assert_eq!(f.freeze().expect("freeze"), json!(3));
    let first = f.generation();
    assert_eq!(f.thaw().expect("thaw"), json!(3));
    assert_eq!(f.freeze().expect("freeze"), json!(3));
    assert_eq!(f.expire(first), None);
    assert!(f.is_frozen());
    let second = f.generation();
    assert_eq!(f.expire(second), Some(3));
    assert!(!f.is_frozen() && fs.frozen.lock().expect("lock").is_empty());
    assert_eq!(f.expire(second), None);

    // The real timer fires by itself.
    let fs = FakeFs::new(MOUNTINFO);
    let f = Freezer::new(fs.clone(), Duration::from_millis(50));
    assert_eq!(f.freeze().expect("freeze"), json!(3));
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.is_frozen() {
        assert!(Instant::now() < deadline, "no automatic thaw");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(fs.frozen.lock().expect("lock").is_empty());
    assert_eq!(f.status(), FsfreezeStatus::Thawed);
}

#[test]
fn parses_sysfs_pci_and_scsi_paths() {
    let pci = |domain, bus, slot, function| Some(PciAddress { domain, bus, slot, function });
    // The agent canonicalises /sys/block/<d>/device (its link target is just
    // ../../../virtioN); the last PCI function on the path is the disk's own,
    // not the PCIe root port it sits behind.
    assert_eq!(pci_address("../../../0000:00:03.0/virtio1"), pci(0, 0, 3, 0));
    assert_eq!(pci_address("/sys/devices/pci0000:00/0000:00:1c.2/0000:01:00.0/virtio3"), pci(0, 1, 0, 0));
    assert_eq!(pci_address("/sys/devices/pci0001:10/0001:10:1f.7/host0/target0:0:1/0:0:1:2"), pci(1, 0x10, 0x1f, 7));
    assert_eq!(pci_address("/sys/devices/platform/virtio-mmio.0/virtio0"), None);
    assert_eq!(pci_address("/sys/devices/pci0000:00/0000:00:0g.0/virtio1"), None);
    assert_eq!(pci_address(""), None);
    assert_eq!(scsi_address("/sys/devices/pci0000:00/0000:00:05.0/host2/target2:0:1/2:0:1:3"), Some((0, 1, 3)));
    assert_eq!(scsi_address("/sys/devices/pci0000:00/0000:00:05.0/virtio2"), None);
    assert_eq!((bus_type("vdc"), bus_type("sda"), bus_type("nvme0n1")), ("virtio", "scsi", "unknown"));
}

/// Writes `text` to `path`, creating its directory.
fn put(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

#[test]
fn lists_disks_from_sysfs() {
    let root = tempfile_dir("sysfs");
    let devices = root.join("devices");
    let block = root.join("block");
    std::fs::create_dir_all(&block).expect("mkdir");
    // Each disk: a real directory under devices/, linked from block/, with a
    // `device` link to its parent, as in sysfs.
    let disk = |parent: &str, name: &str, size: &str| {
        let dir = devices.join(parent).join("block").join(name);
        put(&dir.join("size"), size);
        std::os::unix::fs::symlink("../..", dir.join("device")).expect("device link");
        std::os::unix::fs::symlink(&dir, block.join(name)).expect("block link");
        dir
    };
    let vda = disk("pci0000:00/0000:00:03.0/virtio1", "vda", "2097152\n");
    put(&vda.join("vda1/partition"), "1\n");
    put(&vda.join("vda10/partition"), "10\n");
    put(&vda.join("vda2/partition"), "2\n");
    put(&vda.join("queue/rotational"), "0\n");
    put(&vda.join("serial"), "\n");
    let vdc = disk("pci0000:00/0000:00:1c.0/0000:01:00.0/virtio3", "vdc", "131072\n");
    put(&vdc.join("serial"), "vol0123456789abcdef0");
    disk("pci0000:00/0000:00:05.0/host0/target0:0:1/0:0:1:2", "sda", "8\n");
    disk("platform/virtio-mmio.0/virtio0", "vdz", "8\n");
    disk("virtual", "loop0", "8\n");
    disk("virtual", "zram0", "8\n");
    disk("pci0000:00/0000:00:1f.2/ata1/host1/target1:0:0/1:0:0:0", "sr0", "8\n");
    disk("virtual", "nbd0", "0\n");

    // Checked as the host sees it: the JSON on the wire.
    let list = serde_json::to_value(disks_in(&block).expect("disks")).expect("JSON");
    let names: Vec<&str> = list.as_array().expect("list").iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["/dev/sda", "/dev/vda", "/dev/vda1", "/dev/vda2", "/dev/vda10", "/dev/vdc", "/dev/vdz"]);
    let get = |name: &str| list.as_array().and_then(|l| l.iter().find(|d| d["name"] == name)).cloned().expect(name);
    assert_eq!(
        get("/dev/vda"),
        json!({"name": "/dev/vda", "partition": false, "dependencies": [], "address": {
            "pci-controller": {"domain": 0, "bus": 0, "slot": 3, "function": 0},
            "bus-type": "virtio", "bus": 0, "target": 0, "unit": 0, "dev": "/dev/vda"}})
    );
    assert_eq!(get("/dev/vda2"), json!({"name": "/dev/vda2", "partition": true, "dependencies": ["/dev/vda"]}));
    let vdc = get("/dev/vdc");
    assert_eq!(vdc["address"]["serial"], "vol0123456789abcdef0");
    assert_eq!(vdc["address"]["pci-controller"], json!({"domain": 0, "bus": 1, "slot": 0, "function": 0}));
    let sda = get("/dev/sda")["address"].clone();
    assert_eq!(
        (sda["bus-type"].clone(), sda["bus"].clone(), sda["target"].clone(), sda["unit"].clone()),
        (json!("scsi"), json!(0), json!(1), json!(2))
    );
    let vdz = get("/dev/vdz")["address"].clone();
    assert_eq!(vdz["pci-controller"], json!({"domain": -1, "bus": -1, "slot": -1, "function": -1}));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn get_disks_on_this_machine_has_the_mandatory_members() {
    let mut s = session();
    let list = ret(&mut s, "guest-get-disks", json!({}));
    for d in list.as_array().expect("list") {
        assert!(d["name"].as_str().is_some_and(|n| n.starts_with("/dev/")) && d["partition"].is_boolean(), "{d}");
        if d["partition"] == false {
            let a = &d["address"];
            for key in ["bus-type", "bus", "target", "unit"] {
                assert!(!a[key].is_null(), "{key} missing in {d}");
            }
            assert!(["domain", "bus", "slot", "function"].iter().all(|k| a["pci-controller"][k].is_i64()), "{d}");
        }
    }
}
