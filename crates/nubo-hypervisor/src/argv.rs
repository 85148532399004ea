//! The QEMU command line for a VM, built as a pure function of its directory
//! and config (no filesystem access, no shell).

use std::ffi::OsString;
use std::path::Path;

use serde_json::json;

use crate::dir::MAX_SOCKET_PATH;
use crate::{Accel, Boot, HypervisorError, VmConfig, VmDir};

/// Arguments (without `argv[0]`) that start `cfg` in `dir` as a daemonized QEMU.
///
/// `dir` and every path in `cfg` must be absolute (QEMU `-daemonize` changes
/// directory to `/`) and valid UTF-8. The pidfile path is how
/// [`crate::Hypervisor::status`] recognises the process later, so it must be
/// the same absolute path every time.
pub fn qemu_argv(dir: &VmDir, cfg: &VmConfig) -> Result<Vec<OsString>, HypervisorError> {
    cfg.validate()?;
    path_str("instance directory", dir.path())?;
    let disk = dir.disk();
    let console = dir.console_socket();
    let qmp = dir.qmp_socket();
    let pidfile = dir.pidfile();
    let log = dir.qemu_log();
    let qga = dir.qga_socket();
    let console_s = socket_path("console socket", &console)?;
    let qmp_s = socket_path("QMP socket", &qmp)?;
    let qga_s = socket_path("guest agent socket", &qga)?;

    let mut a: Vec<String> = Vec::with_capacity(64);
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&["-name", &format!("{},process=nubo-{}", cfg.id, cfg.id)]);
    let hw = &cfg.hardware;
    // Secure Boot's OVMF keeps its variables in SMM-only flash, so the
    // guest's OS cannot write them behind the firmware's back.
    push(&["-machine", if hw.secure_boot { "q35,smm=on" } else { "q35" }]);
    match cfg.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    // Empty CPU slots up to max_vcpus cost the guest a little per-CPU
    // memory and no host thread; they let set_vcpus hot-add vCPUs.
    match cfg.max_vcpus.filter(|m| *m > cfg.vcpus) {
        Some(max) => push(&["-smp", &format!("{},maxcpus={max}", cfg.vcpus)]),
        None => push(&["-smp", &cfg.vcpus.to_string()]),
    }
    push(&["-m", &cfg.memory_mib.to_string()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-vga", "none"]);
    push(&["-msg", "timestamp=on"]);
    // The serial console goes to a socket the agent's pump reads and caps
    // on disk (see crate::console): with nobody connected QEMU drops the
    // output, so the guest never blocks on it and QEMU never buffers it.
    push(&[
        "-chardev",
        &format!("socket,id=con0,path={},server=on,wait=off", opt_escape(console_s)),
        "-serial",
        "chardev:con0",
    ]);
    push(&[
        "-chardev",
        &format!("socket,id=qmp0,path={},server=on,wait=off", opt_escape(qmp_s)),
        "-mon",
        "chardev=qmp0,mode=control",
    ]);
    push(&["-pidfile", path_str("pidfile", &pidfile)?]);
    // With -D, a daemonized QEMU keeps stderr (our qemu.log) open instead of
    // sending it to /dev/null, so runtime errors are kept too.
    push(&["-D", path_str("QEMU log", &log)?]);
    push(&["-daemonize"]);
    push(&["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]);
    // The guest agent channel: a virtio-serial port the in-guest agent
    // finds by name, backed by a unix socket for crate::QgaClient.
    push(&[
        "-chardev",
        &format!("socket,id=qga0,path={},server=on,wait=off", opt_escape(qga_s)),
        "-device",
        "virtio-serial-pci,id=vser0",
        "-device",
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ]);

    if hw.uefi {
        let code = crate::firmware::ovmf_code(hw.secure_boot);
        let vars = dir.efi_vars();
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={}", opt_escape(path_str("OVMF code", &code)?)),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", opt_escape(path_str("UEFI variable store", &vars)?)),
        ]);
        if hw.secure_boot {
            push(&["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
    }
    if hw.tpm {
        let sock = dir.swtpm_socket();
        push(&[
            "-chardev",
            &format!("socket,id=chrtpm,path={}", opt_escape(socket_path("swtpm socket", &sock)?)),
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            // CRB: the interface TPM 2.0 defines, which the guest kernel
            // drives without the legacy TIS port I/O.
            "-device",
            "tpm-crb,tpmdev=tpm0",
        ]);
    }
    if hw.display {
        // VNC on a unix socket only: nothing listens on the network, and
        // only the agent (relaying the console) can open it.
        let vnc = dir.vnc_socket();
        push(&["-device", "VGA,id=video0", "-vnc", &format!("unix:{}", opt_escape(socket_path("VNC socket", &vnc)?))]);
    }

    // Keys in alphabetical order so the text is the same whether or not
    // serde_json's `preserve_order` feature is on somewhere in the workspace.
    let root = json!({
        "discard": "unmap",
        "driver": "qcow2",
        "file": {"discard": "unmap", "driver": "file", "filename": path_str("root disk", &disk)?},
        "node-name": "root",
    });
    // Firmware boot: boot from the root disk first (or second, after a CD
    // booted first). Direct boot: QEMU's kernel loader ROM takes bootindex
    // 0 itself.
    let cd_first = matches!(cfg.boot, Boot::Firmware) && cfg.cdrom.as_ref().is_some_and(|c| c.boot_first);
    let root_dev = match cfg.boot {
        Boot::Firmware if cd_first => "virtio-blk-pci,drive=root,id=root-disk,bootindex=1",
        Boot::Firmware => "virtio-blk-pci,drive=root,id=root-disk,bootindex=0",
        Boot::Direct { .. } => "virtio-blk-pci,drive=root,id=root-disk",
    };
    push(&["-blockdev", &root.to_string(), "-device", root_dev]);
    if let Some(cd) = &cfg.cdrom {
        // A -drive (not -blockdev), so the drive may be empty and its disc
        // changed over QMP; on the board's own AHCI controller, which q35
        // has even with -nodefaults.
        let mut drive = String::from("if=none,id=cd0drv,media=cdrom,readonly=on");
        if let Some(iso) = &cd.media {
            drive.push_str(&format!(",format=raw,file={}", opt_escape(path_str("CD-ROM image", iso)?)));
        }
        let mut device = format!("ide-cd,bus=ide.0,drive=cd0drv,id={}", crate::config::CDROM_DEVICE);
        match cfg.boot {
            Boot::Firmware if cd_first => device.push_str(",bootindex=0"),
            Boot::Firmware => device.push_str(",bootindex=1"),
            Boot::Direct { .. } => {}
        }
        push(&["-drive", &drive, "-device", &device]);
    }
    if let Some(seed) = &cfg.seed_image {
        let seed = json!({
            "driver": "raw",
            "file": {"driver": "file", "filename": path_str("seed image", seed)?, "read-only": true},
            "node-name": "seed",
            "read-only": true,
        });
        push(&["-blockdev", &seed.to_string(), "-device", "virtio-blk-pci,drive=seed,id=seed-disk"]);
    }

    // Bridged NICs first, so the guest's eth0 is the first network's.
    for (i, nic) in cfg.taps.iter().enumerate() {
        let fd = crate::tap::TAP_FD_BASE + i as i32;
        push(&["-netdev", &format!("tap,id=tap{i},fd={fd}")]);
        push(&["-device", &format!("virtio-net-pci,netdev=tap{i},id=tapnic{i},mac={}", nic.mac)]);
    }
    let user_net = cfg.taps.is_empty() || cfg.metadata_relay.is_some() || !cfg.port_forwards.is_empty();
    let mut netdev = String::from("user,id=net0");
    if let Some(relay) = &cfg.metadata_relay {
        // libslirp splits the command with g_shell_parse_argv (no shell
        // runs); validate() keeps every argument a single plain word.
        netdev.push_str(&format!(
            ",net={},host={},dhcpstart={},guestfwd=tcp:{}:80-cmd:{}",
            crate::config::METADATA_NET,
            crate::config::GATEWAY_ADDR,
            crate::config::GUEST_ADDR,
            crate::config::METADATA_ADDR,
            opt_escape(&relay.join(" "))
        ));
    }
    for pf in &cfg.port_forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", pf.host_port, pf.guest_port));
    }
    let nic = match &cfg.mac {
        Some(mac) => format!("virtio-net-pci,netdev=net0,id=nic0,mac={mac}"),
        None => "virtio-net-pci,netdev=net0,id=nic0".to_string(),
    };
    if user_net {
        push(&["-netdev", &netdev, "-device", &nic]);
    }

    if cfg.incoming {
        push(&["-incoming", "defer"]);
    }
    for i in 0..cfg.hotplug_slots {
        push(&["-device", &format!("pcie-root-port,id=hp{i},chassis={}", i + 1)]);
    }
    // Data disks go behind root ports (not on pcie.0, whose devices cannot
    // be unplugged), exactly as a later hot-plug puts them.
    for d in &cfg.disks {
        let node = crate::disks::data_disk_node(d, path_str("data disk", &d.path)?);
        push(&["-blockdev", &node.to_string(), "-device", &crate::disks::data_disk_device(d)]);
    }

    if let Boot::Direct { kernel, initrd, cmdline } = &cfg.boot {
        push(&["-kernel", path_str("kernel", kernel)?]);
        push(&["-initrd", path_str("initrd", initrd)?]);
        push(&["-append", cmdline]);
    }

    Ok(a.into_iter().map(OsString::from).collect())
}

/// Adds `restrict=on` to the user-mode network of `argv` (from
/// [`qemu_argv`]): the guest then reaches nothing outside QEMU, while
/// forwarded ports (`hostfwd`) and the metadata relay (`guestfwd`) still
/// work. Operators turn guest egress off with it.
pub fn restrict_user_net(argv: &mut [OsString]) {
    for a in argv.iter_mut() {
        if a.to_str().is_some_and(|s| s.starts_with("user,id=net0")) {
            a.push(",restrict=on");
        }
    }
}

/// A path as UTF-8, insisting that it is absolute.
fn path_str<'a>(what: &str, p: &'a Path) -> Result<&'a str, HypervisorError> {
    if !p.is_absolute() {
        return Err(HypervisorError::InvalidConfig(format!(
            "{what} path {} is relative; pass an absolute path",
            p.display()
        )));
    }
    p.to_str().ok_or_else(|| {
        HypervisorError::InvalidConfig(format!("{what} path {} is not valid UTF-8; rename it", p.display()))
    })
}

/// A unix socket path as UTF-8, checked to fit in `sun_path`.
fn socket_path<'a>(what: &str, p: &'a Path) -> Result<&'a str, HypervisorError> {
    let s = path_str(what, p)?;
    if s.len() > MAX_SOCKET_PATH {
        return Err(HypervisorError::InvalidConfig(format!(
            "{what} path {s} is {} bytes, longer than the {MAX_SOCKET_PATH} a unix socket allows; use a shorter state directory",
            s.len()
        )));
    }
    Ok(s)
}

/// Escape a value for QEMU's `key=value,...` option syntax (`,` becomes `,,`).
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortForward;
    use std::path::PathBuf;

    fn cfg() -> VmConfig {
        VmConfig {
            id: "vm-1".into(),
            name: "web".into(),
            vcpus: 2,
            memory_mib: 512,
            disk_gib: 10,
            boot: Boot::Firmware,
            base_disk: "/images/base.qcow2".into(),
            seed_image: Some("/var/lib/nubo/vms/vm-1/seed.img".into()),
            port_forwards: vec![
                PortForward { host_port: 2222, guest_port: 22 },
                PortForward { host_port: 8080, guest_port: 80 },
            ],
            accel: Accel::Tcg,
            hotplug_slots: 2,
            metadata_relay: None,
            mac: None,
            base_format: None,
            disks: Vec::new(),
            taps: Vec::new(),
            incoming: false,
            cdrom: None,
            hardware: crate::VmHardware::default(),
            max_vcpus: None,
        }
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn full_argv() {
        let dir = VmDir::new("/var/lib/nubo/vms/vm-1");
        let got = strings(qemu_argv(&dir, &cfg()).unwrap());
        #[rustfmt::skip]
        let want: Vec<&str> = vec![
            "-name", "vm-1,process=nubo-vm-1",
            "-machine", "q35",
            "-accel", "tcg",
            "-cpu", "max",
            "-smp", "2",
            "-m", "512",
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-vga", "none",
            "-msg", "timestamp=on",
            "-chardev", "socket,id=con0,path=/var/lib/nubo/vms/vm-1/console.sock,server=on,wait=off",
            "-serial", "chardev:con0",
            "-chardev", "socket,id=qmp0,path=/var/lib/nubo/vms/vm-1/qmp.sock,server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
            "-pidfile", "/var/lib/nubo/vms/vm-1/qemu.pid",
            "-D", "/var/lib/nubo/vms/vm-1/qemu.log",
            "-daemonize",
            "-object", "rng-random,id=rng0,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng0",
            "-chardev", "socket,id=qga0,path=/var/lib/nubo/vms/vm-1/qga.sock,server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-blockdev", r#"{"discard":"unmap","driver":"qcow2","file":{"discard":"unmap","driver":"file","filename":"/var/lib/nubo/vms/vm-1/disk.qcow2"},"node-name":"root"}"#,
            "-device", "virtio-blk-pci,drive=root,id=root-disk,bootindex=0",
            "-blockdev", r#"{"driver":"raw","file":{"driver":"file","filename":"/var/lib/nubo/vms/vm-1/seed.img","read-only":true},"node-name":"seed","read-only":true}"#,
            "-device", "virtio-blk-pci,drive=seed,id=seed-disk",
            "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
            "-device", "virtio-net-pci,netdev=net0,id=nic0",
            "-device", "pcie-root-port,id=hp0,chassis=1",
            "-device", "pcie-root-port,id=hp1,chassis=2",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn max_vcpus_leaves_empty_cpu_slots_to_hot_add() {
        let dir = VmDir::new("/var/lib/nubo/vms/vm-1");
        let mut c = cfg();
        c.max_vcpus = Some(8);
        let got = strings(qemu_argv(&dir, &c).unwrap());
        assert_eq!(arg_after(&got, "-smp", ""), Some("2,maxcpus=8"));
        // No room above the current count: plain -smp, as before.
        c.max_vcpus = Some(2);
        assert_eq!(arg_after(&strings(qemu_argv(&dir, &c).unwrap()), "-smp", ""), Some("2"));
        c.max_vcpus = Some(1000);
        assert!(qemu_argv(&dir, &c).unwrap_err().to_string().contains("max_vcpus"));
    }

    /// The pair of arguments that follows `flag` whose value starts with `prefix`.
    fn arg_after<'a>(argv: &'a [String], flag: &str, prefix: &str) -> Option<&'a str> {
        argv.windows(2).find(|w| w[0] == flag && w[1].starts_with(prefix)).map(|w| w[1].as_str())
    }

    #[test]
    fn cdrom_drive_and_boot_order() {
        let dir = VmDir::new("/var/lib/nubo/vms/vm-1");
        let mut c = cfg();
        c.cdrom = Some(crate::CdRom { media: Some("/cache/blobs/a,b.iso".into()), boot_first: true });
        let got = strings(qemu_argv(&dir, &c).unwrap());
        assert_eq!(
            arg_after(&got, "-drive", "if=none,id=cd0drv"),
            Some("if=none,id=cd0drv,media=cdrom,readonly=on,format=raw,file=/cache/blobs/a,,b.iso")
        );
        assert_eq!(arg_after(&got, "-device", "ide-cd"), Some("ide-cd,bus=ide.0,drive=cd0drv,id=cd0,bootindex=0"));
        assert_eq!(
            arg_after(&got, "-device", "virtio-blk-pci,drive=root"),
            Some("virtio-blk-pci,drive=root,id=root-disk,bootindex=1")
        );

        // Disk first, and an empty drive (ejected): no file.
        c.cdrom = Some(crate::CdRom { media: None, boot_first: false });
        let got = strings(qemu_argv(&dir, &c).unwrap());
        assert_eq!(arg_after(&got, "-drive", "if=none,id=cd0drv"), Some("if=none,id=cd0drv,media=cdrom,readonly=on"));
        assert_eq!(arg_after(&got, "-device", "ide-cd"), Some("ide-cd,bus=ide.0,drive=cd0drv,id=cd0,bootindex=1"));
        assert_eq!(
            arg_after(&got, "-device", "virtio-blk-pci,drive=root"),
            Some("virtio-blk-pci,drive=root,id=root-disk,bootindex=0")
        );

        // A relative ISO path is refused, as every other path.
        c.cdrom = Some(crate::CdRom { media: Some("cd.iso".into()), boot_first: true });
        assert!(qemu_argv(&dir, &c).is_err());
    }

    #[test]
    fn kvm_direct_boot_no_seed() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        c.seed_image = None;
        c.port_forwards.clear();
        c.hotplug_slots = 0;
        c.boot = Boot::Direct {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.img".into(),
            cmdline: "console=ttyS0 root=/dev/vda1 ds=nocloud".into(),
        };
        let got = strings(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap());
        let pos = |s: &str| got.iter().position(|a| a == s);
        let accel = pos("-accel").unwrap();
        assert_eq!(&got[accel..accel + 4], ["-accel", "kvm", "-cpu", "host"]);
        assert!(pos("seed-disk").is_none() && !got.iter().any(|a| a.contains("seed")));
        assert!(!got.iter().any(|a| a.contains("pcie-root-port")));
        assert!(got.contains(&"user,id=net0".to_string()));
        assert!(got.contains(&"virtio-blk-pci,drive=root,id=root-disk".to_string()));
        assert!(!got.iter().any(|a| a.contains("bootindex")));
        let tail: Vec<&str> = got[got.len() - 6..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            ["-kernel", "/k/vmlinuz", "-initrd", "/k/initrd.img", "-append", "console=ttyS0 root=/dev/vda1 ds=nocloud"]
        );
    }

    #[test]
    fn metadata_relay_and_mac() {
        let mut c = cfg();
        c.metadata_relay = Some(vec!["/usr/bin/nubo".into(), "imds-relay".into(), "/d/a,b/imds.sock".into()]);
        c.mac = Some("52:54:00:aa:bb:cc".into());
        let got = strings(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap());
        assert!(got.contains(
            &"user,id=net0,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,guestfwd=tcp:169.254.169.254:80-cmd:/usr/bin/nubo imds-relay /d/a,,b/imds.sock,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80"
                .to_string()
        ), "{got:?}");
        assert!(got.contains(&"virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:aa:bb:cc".to_string()));
        c.metadata_relay = Some(vec!["/opt/my dir/nubo".into()]);
        assert!(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap_err().to_string().contains("plain paths"));
    }

    #[test]
    fn restricted_egress_keeps_forwards_and_metadata() {
        let mut c = cfg();
        c.metadata_relay = Some(vec!["/usr/bin/nubo".into(), "imds-relay".into(), "/d/imds.sock".into()]);
        let mut argv = qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap();
        restrict_user_net(&mut argv);
        let got = strings(argv);
        let net = got.iter().find(|a| a.starts_with("user,id=net0")).unwrap();
        assert!(net.ends_with(",restrict=on"), "{net}");
        assert!(net.contains("guestfwd=tcp:169.254.169.254:80-cmd:") && net.contains("hostfwd=tcp:127.0.0.1:8080-:80"));
        assert_eq!(got.iter().filter(|a| a.contains("restrict")).count(), 1);
    }

    #[test]
    fn data_disks_sit_behind_root_ports() {
        let mut c = cfg();
        c.disks.push(crate::DataDisk {
            id: "vol-0123456789abcdef0".into(),
            path: "/v/a,b.qcow2".into(),
            serial: "vol0123456789abcdef0".into(),
            slot: 1,
        });
        let got = strings(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap());
        let tail: Vec<&str> = got[got.len() - 4..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "-blockdev",
                r#"{"discard":"unmap","driver":"qcow2","file":{"discard":"unmap","driver":"file","filename":"/v/a,b.qcow2"},"node-name":"vol-0123456789abcdef0"}"#,
                "-device",
                "virtio-blk-pci,drive=vol-0123456789abcdef0,id=vol-0123456789abcdef0,serial=vol0123456789abcdef0,bus=hp1",
            ]
        );
        c.disks[0].slot = 2;
        assert!(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap_err().to_string().contains("slot"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let got = strings(qemu_argv(&VmDir::new("/d/a,b"), &cfg()).unwrap());
        assert!(got.contains(&"socket,id=con0,path=/d/a,,b/console.sock,server=on,wait=off".to_string()));
        assert!(got.contains(&"socket,id=qga0,path=/d/a,,b/qga.sock,server=on,wait=off".to_string()));
        // JSON blockdev values need no escaping.
        assert!(got.iter().any(|a| a.contains(r#""filename":"/d/a,b/disk.qcow2""#)));
    }

    #[test]
    fn uefi_secure_boot_tpm_and_display() {
        let mut c = cfg();
        c.hardware = crate::VmHardware { uefi: true, ..Default::default() };
        let got = strings(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap());
        let i = got.iter().position(|a| a == "-drive").unwrap();
        assert_eq!(
            &got[i..i + 4],
            [
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "-drive",
                "if=pflash,format=raw,unit=1,file=/d/vm-1/efivars.fd",
            ]
        );
        assert!(got.contains(&"q35".to_string()) && !got.iter().any(|a| a.contains("smm") || a.contains("secure")));
        assert!(!got.iter().any(|a| a.contains("tpm") || a.contains("VGA") || a == "-vnc"));

        c.hardware = crate::VmHardware { uefi: true, secure_boot: true, tpm: true, display: true };
        let got = strings(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap());
        let after = |flag: &str| -> Vec<&str> {
            got.iter().enumerate().filter(|(_, a)| *a == flag).map(|(i, _)| got[i + 1].as_str()).collect()
        };
        assert_eq!(after("-machine"), ["q35,smm=on"]);
        assert!(after("-drive")
            .contains(&"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"));
        assert_eq!(after("-global"), ["driver=cfi.pflash01,property=secure,value=on"]);
        assert!(after("-chardev").contains(&"socket,id=chrtpm,path=/d/vm-1/swtpm.sock"));
        assert_eq!(after("-tpmdev"), ["emulator,id=tpm0,chardev=chrtpm"]);
        let devices = after("-device");
        assert!(devices.contains(&"tpm-crb,tpmdev=tpm0") && devices.contains(&"VGA,id=video0"), "{devices:?}");
        assert_eq!(after("-vnc"), ["unix:/d/vm-1/vnc.sock"]);
        // The display is served on the socket only: no VNC port, no window.
        assert_eq!(after("-display"), ["none"]);

        // A TPM or a display without UEFI: SeaBIOS, no flash.
        c.hardware = crate::VmHardware { tpm: true, display: true, ..Default::default() };
        let got = strings(qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap());
        assert!(!got.iter().any(|a| a.contains("pflash")) && got.contains(&"tpm-crb,tpmdev=tpm0".to_string()));

        c.hardware = crate::VmHardware { secure_boot: true, ..Default::default() };
        let msg = qemu_argv(&VmDir::new("/d/vm-1"), &c).unwrap_err().to_string();
        assert!(msg.contains("UEFI"), "{msg}");
    }

    #[test]
    fn rejects_bad_input() {
        let dir = VmDir::new("/d/vm-1");
        let mut c = cfg();
        c.id = "../etc".into();
        assert!(matches!(qemu_argv(&dir, &c), Err(HypervisorError::InvalidId { .. })));
        assert!(matches!(qemu_argv(&VmDir::new("relative/dir"), &cfg()), Err(HypervisorError::InvalidConfig(_))));
        let mut c = cfg();
        c.seed_image = Some(PathBuf::from("seed.img"));
        let msg = qemu_argv(&dir, &c).unwrap_err().to_string();
        assert!(msg.contains("relative"), "{msg}");
        let mut c = cfg();
        c.port_forwards.push(PortForward { host_port: 2222, guest_port: 23 });
        assert!(qemu_argv(&dir, &c).unwrap_err().to_string().contains("twice"));
        let mut c = cfg();
        c.vcpus = 0;
        assert!(qemu_argv(&dir, &c).is_err());
        let long = format!("/{}", "x".repeat(120));
        let msg = qemu_argv(&VmDir::new(long), &cfg()).unwrap_err().to_string();
        assert!(msg.contains("unix socket"), "{msg}");
    }
}
