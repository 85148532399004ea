//! Boots the real `tiny` image under QEMU (TCG) and drives its guest agent
//! through [`QgaClient`] over the VM's qga.sock: ping, info, exec, files,
//! fsinfo, osinfo, network, disks (with a volume hot-plugged over QMP and
//! found by its serial), fsfreeze, shutdown; and checks that dropbear answers
//! SSH on a forwarded port (and, when `ssh`/`ssh-keygen` are installed, that
//! a key login works and a password login does not).
//!
//! The image comes from the shared cache `$NUBO_IMAGE_CACHE` (default
//! `<workspace>/.cache/images`), built first if needed; that needs the static
//! guest agent (scripts/test.sh builds it and sets NUBO_GUEST_AGENT).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nubo_hypervisor::{
    Accel, Boot, GuestExec, Hypervisor, PortForward, Qemu, QgaClient, QgaError, ShutdownMode, VmConfig, VmDir,
    VmStatus, DEFAULT_HOTPLUG_SLOTS,
};
use nubo_image::seed::{write_nocloud_seed, SeedData};
use nubo_image::{ImageCache, BOOT_COMPLETE_MARKER};
use serde_json::json;

/// The hot-plugged volume: 20 characters, the most virtio-blk keeps.
const VOLUME_SERIAL: &str = "vol0123456789abcdef0";
const VOLUME_SIZE: u64 = 48 << 20;

/// Polls `check` every 200 ms until it returns Some or `limit` passes.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The SSH identification line the server sends first.
fn ssh_banner(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    // Only the identification line: the key exchange follows on the same read.
    let text = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string();
    text.starts_with("SSH-").then_some(text)
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn ssh(key: &Path, port: u16, extra: &[&str]) -> std::process::Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=60", "-o", "LogLevel=ERROR"])
        .args(extra)
        .args(["root@127.0.0.1", "echo ssh-ok"])
        .output()
        .unwrap()
}

#[tokio::test]
async fn guest_agent_and_ssh_in_tiny() {
    require_qemu();
    let started = Instant::now();
    let cache = ImageCache::new(cache_root());
    let image = tokio::task::spawn_blocking(move || cache.ensure("tiny", &mut |m: &str| eprintln!("[nubo-image] {m}")))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("building the tiny image: {e}"));
    println!("image ready after {:?}", started.elapsed());

    let tmp = tempfile::tempdir().unwrap();
    assert!(
        have("ssh") && have("ssh-keygen"),
        "ssh or ssh-keygen is not installed: apt-get install openssh-client (scripts/install-deps.sh does)"
    );
    let key = tmp.path().join("id_ed25519");
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let public_keys = vec![std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_string()];
    let vm_dir = tmp.path().join("vm-qga");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let dir = VmDir::new(&vm_dir);
    let _reaper = Reaper(dir.clone());
    let seed = vm_dir.join("seed.img");
    let data = SeedData { instance_id: "i-qga".into(), hostname: "qga-test".into(), user_data: None, public_keys };
    write_nocloud_seed(&seed, &data).unwrap();
    let ssh_port = free_port();
    let cfg = VmConfig {
        id: "vm-qga".into(),
        name: "qga test".into(),
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
        port_forwards: vec![PortForward { host_port: ssh_port, guest_port: 22 }],
        accel: Accel::Tcg,
        // Free pcie-root-ports hp0.. for the volume hot-plug below.
        hotplug_slots: DEFAULT_HOTPLUG_SLOTS,
        metadata_relay: None,
        mac: None,
        base_format: None,
        disks: Vec::new(),
        taps: Vec::new(),
        incoming: false,
        cdrom: None,
        hardware: Default::default(),
        max_vcpus: None,
    };
    let qemu = Qemu::default();
    qemu.prepare_disk(&dir, &cfg).await.unwrap();
    let boot = Instant::now();
    qemu.start(&dir, &cfg).await.unwrap();
    assert!(dir.qga_socket().exists());

    // Before the guest agent runs, connect fails fast and says why.
    let t = Instant::now();
    match QgaClient::connect(&dir.qga_socket(), Duration::from_millis(500)).await {
        Err(QgaError::NotResponding { .. }) => assert!(t.elapsed() < Duration::from_secs(3)),
        Ok(_) => println!("(guest agent already up at the first try)"),
        Err(e) => panic!("unexpected error before boot: {e}"),
    }

    let console = dir.console_log();
    wait_for("the boot marker", Duration::from_secs(240), || {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        async move { text.contains(BOOT_COMPLETE_MARKER).then_some(()) }
    })
    .await;
    println!("boot marker after {:?}", boot.elapsed());

    let sock = dir.qga_socket();
    let mut qga = wait_for("the guest agent", Duration::from_secs(60), || {
        let sock = sock.clone();
        async move { QgaClient::connect(&sock, Duration::from_secs(5)).await.ok() }
    })
    .await;
    println!("guest agent answered after {:?}", boot.elapsed());

    qga.ping().await.unwrap();
    let info = qga.info().await.unwrap();
    for cmd in ["guest-exec", "guest-exec-status", "guest-file-open", "guest-get-fsinfo", "guest-shutdown"] {
        assert!(info.supported_commands.iter().any(|c| c == cmd), "{cmd} missing from {info:?}");
    }

    let st = qga
        .run(
            &GuestExec { path: "echo".into(), args: vec!["hi".into()], capture_output: true, ..Default::default() },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!((st.exited, st.exit_code, st.stdout.as_slice()), (true, Some(0), b"hi\n".as_slice()), "{st:?}");
    let st = qga.run(&sh("echo failing >&2; exit 7"), Duration::from_secs(30)).await.unwrap();
    assert_eq!((st.exit_code, st.stderr.as_slice()), (Some(7), b"failing\n".as_slice()), "{st:?}");
    let input = GuestExec { input: Some(b"from stdin".to_vec()), ..sh("cat") };
    assert_eq!(qga.run(&input, Duration::from_secs(30)).await.unwrap().stdout, b"from stdin");
    match qga.exec(&GuestExec { path: "/no/such/program".into(), ..Default::default() }).await {
        Err(QgaError::Guest { class, .. }) => assert_eq!(class, "GenericError"),
        other => panic!("exec of a missing program: {other:?}"),
    }

    // Files: write, then read back in small pieces.
    let content: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
    qga.write_file("/root/blob.bin", &content).await.unwrap();
    let h = qga.file_open("/root/blob.bin", "r").await.unwrap();
    let mut back = Vec::new();
    loop {
        let r = qga.file_read(h, 7000).await.unwrap();
        back.extend_from_slice(&r.data);
        if r.eof {
            break;
        }
    }
    qga.file_close(h).await.unwrap();
    assert_eq!(back, content);
    let st = qga.run(&sh("md5sum /root/blob.bin"), Duration::from_secs(30)).await.unwrap();
    assert_eq!(st.exit_code, Some(0));

    // fsinfo: the root file system, and its use grows with a 16 MiB file.
    let root_fs = |list: Vec<nubo_hypervisor::GuestFilesystem>| list.into_iter().find(|f| f.mountpoint == "/");
    let before = root_fs(qga.fsinfo().await.unwrap()).expect("/ in fsinfo");
    println!("root fs before: {before:?}");
    assert_eq!(before.fs_type, "ext4");
    let (used0, total0) = (before.used_bytes.unwrap(), before.total_bytes.unwrap());
    assert!(used0 > 0 && total0 > 512 << 20, "root fs grown to the 1 GiB disk: {before:?}");
    let st =
        qga.run(&sh("dd if=/dev/zero of=/root/fill bs=1M count=16 && sync"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(st.exit_code, Some(0), "{st:?}");
    let after = root_fs(qga.fsinfo().await.unwrap()).expect("/ in fsinfo");
    let used1 = after.used_bytes.unwrap();
    assert!(used1 >= used0 + (8 << 20), "used bytes {used0} -> {used1}");

    let os = qga.osinfo().await.unwrap();
    println!("{os:?}");
    assert_eq!(os.id.as_deref(), Some("nubo-tiny"));
    assert!(os.kernel_release.as_deref().is_some_and(|k| k.contains("cloud-amd64")), "{os:?}");
    assert_eq!(os.machine.as_deref(), Some("x86_64"));

    // DHCP may still be settling: poll (the helper cannot lend `qga` to a future).
    let deadline = Instant::now() + Duration::from_secs(30);
    let eth0 = loop {
        let list = qga.network_interfaces().await.unwrap();
        if let Some(n) =
            list.into_iter().find(|n| n.name == "eth0" && n.ip_addresses.iter().any(|ip| ip.family == "ipv4"))
        {
            break n;
        }
        assert!(Instant::now() < deadline, "no IPv4 address on eth0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("{eth0:?}");
    assert!(eth0.hardware_address.as_deref().is_some_and(|m| m.len() == 17), "{eth0:?}");

    // Disks: the root disk and the NoCloud seed, both virtio-blk.
    let disks = qga.disks().await.unwrap();
    println!("disks: {disks:?}");
    let root = disks.iter().find(|d| d.name == "/dev/vda").expect("/dev/vda in guest-get-disks");
    assert_eq!(
        (root.partition, root.bus_type.as_deref(), root.dev.as_deref()),
        (false, Some("virtio"), Some("/dev/vda")),
        "{root:?}"
    );
    assert!(
        disks.iter().any(|d| d.name == "/dev/vdb" && !d.partition && d.bus_type.as_deref() == Some("virtio")),
        "no seed disk in {disks:?}"
    );

    // A volume hot-plugged the way Nubo attaches them shows up, found by its serial.
    let volume = tmp.path().join("vol0.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&volume)
        .arg(VOLUME_SIZE.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut qmp = qemu.qmp(&dir).await.unwrap();
    let file = json!({"driver": "file", "filename": volume.to_str().unwrap()});
    qmp.execute("blockdev-add", Some(json!({"driver": "qcow2", "node-name": "vol0", "file": file}))).await.unwrap();
    let device =
        json!({"driver": "virtio-blk-pci", "id": "vol0-disk", "drive": "vol0", "serial": VOLUME_SERIAL, "bus": "hp0"});
    qmp.execute("device_add", Some(device)).await.unwrap();
    drop(qmp);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(30);
    let vol = loop {
        let list = qga.disks().await.unwrap();
        if let Some(d) = list.into_iter().find(|d| d.serial.as_deref() == Some(VOLUME_SERIAL)) {
            break d;
        }
        assert!(Instant::now() < deadline, "the hot-plugged volume never showed up in guest-get-disks");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("hot-plugged volume {vol:?} seen after {:?}", t.elapsed());
    assert_eq!((vol.partition, vol.bus_type.as_deref()), (false, Some("virtio")), "{vol:?}");
    let kname = vol.name.strip_prefix("/dev/").expect("a /dev path");
    let size = qga.read_small_file(&format!("/sys/block/{kname}/size"), 64).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&size).trim(), (VOLUME_SIZE / 512).to_string(), "size in 512-byte sectors");

    // fsfreeze: a ticker appends the time to a file on / every 0.2 s; while
    // frozen its writes block (a gap in its ticks) and the agent refuses exec.
    assert_eq!(qga.fsfreeze_status().await.unwrap(), "thawed");
    let ticker = qga.exec(&sh("for i in $(seq 30); do date +%s >> /root/ticks; sleep 0.2; done")).await.unwrap();
    // Freeze once the ticker is writing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while qga.read_small_file("/root/ticks", 4096).await.map_or(true, |t| t.is_empty()) {
        assert!(Instant::now() < deadline, "the ticker wrote nothing to /root/ticks in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = Instant::now();
    let frozen = qga.fsfreeze_freeze().await.unwrap();
    println!("froze {frozen} file system(s) in {:?}", t.elapsed());
    assert!(frozen >= 1, "nothing frozen");
    assert_eq!(qga.fsfreeze_status().await.unwrap(), "frozen");
    match qga.exec(&sh("touch /root/while-frozen")).await {
        Err(QgaError::Guest { class, desc }) => {
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("the agent is in frozen state"), "{desc}");
        }
        other => panic!("exec while frozen: {other:?}"),
    }
    let info = qga.info().await.unwrap();
    assert!(!info.supported_commands.iter().any(|c| c == "guest-exec"), "{info:?}");
    // Part of what is tested: frozen for 3 s, which must show as a gap in
    // the ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    assert_eq!(qga.fsfreeze_thaw().await.unwrap(), frozen);
    println!("thawed in {:?}", t.elapsed());
    assert_eq!(qga.fsfreeze_status().await.unwrap(), "thawed");
    let st =
        qga.run(&sh("echo thawed > /root/after-thaw && cat /root/after-thaw"), Duration::from_secs(30)).await.unwrap();
    assert_eq!((st.exit_code, st.stdout.as_slice()), (Some(0), b"thawed\n".as_slice()), "{st:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !qga.exec_status(ticker).await.unwrap().exited {
        assert!(Instant::now() < deadline, "the ticker did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gap = qga
        .run(
            &sh("awk 'NR > 1 && $1 - p > m { m = $1 - p } { p = $1 } END { print m + 0 }' /root/ticks"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let gap: u64 = String::from_utf8_lossy(&gap.stdout).trim().parse().unwrap();
    println!("longest gap between ticks: {gap} s");
    assert!(gap >= 2, "the ticker kept writing while frozen (longest gap {gap} s)");
    drop(qga);

    // A new connection resynchronises and works.
    let mut qga = QgaClient::connect(&sock, Duration::from_secs(10)).await.unwrap();
    qga.ping().await.unwrap();

    // SSH: dropbear answers on the forwarded port.
    let banner = wait_for("the SSH banner", Duration::from_secs(60), || async { ssh_banner(ssh_port) }).await;
    println!("banner: {}", banner.trim());
    assert!(banner.starts_with("SSH-2.0-dropbear"), "{banner}");
    let t = Instant::now();
    let key_login = tokio::task::spawn_blocking({
        let key = key.clone();
        move || ssh(&key, ssh_port, &[])
    })
    .await
    .unwrap();
    println!("ssh key login took {:?}", t.elapsed());
    assert!(
        key_login.status.success() && String::from_utf8_lossy(&key_login.stdout).contains("ssh-ok"),
        "{key_login:?}"
    );
    let password = ssh(&key, ssh_port, &["-o", "PasswordAuthentication=yes", "-o", "PubkeyAuthentication=no"]);
    assert!(!password.status.success(), "password login must fail: {password:?}");

    // guest-shutdown: no reply, and the VM powers off.
    qga.shutdown(ShutdownMode::Powerdown).await.unwrap();
    drop(qga);
    let t = Instant::now();
    wait_for("the VM to power off", Duration::from_secs(60), || {
        let (qemu, dir) = (&qemu, &dir);
        async move { (qemu.status(dir).await == VmStatus::NotRunning).then_some(()) }
    })
    .await;
    println!("powered off {:?} after guest-shutdown; whole test {:?}", t.elapsed(), started.elapsed());
    qemu.destroy(&dir).await.unwrap();
}
