//! Network benchmark: TCP throughput (iperf3) and ping latency of every
//! path a guest's traffic takes, measured in one run on this machine, next
//! to a bare-QEMU baseline measured in the same run.
//!
//! Run (as root: it makes network namespaces and taps):
//! `cargo bench -p nubo --bench network_paths`
//!
//! - The `nubo` binary: the one cargo builds for the bench (CARGO_BIN_EXE_nubo),
//!   or $NUBO_BIN. Rounds: NUBO_BENCH_RUNS (default 3). Image: the shared
//!   cache `<repo>/.cache/images` (or $NUBO_IMAGE_CACHE). QEMU under TCG.
//!
//! Paths, each measured once per round, in this order:
//!
//! - (d1) baseline: two bare QEMUs (the same command line Nubo's driver
//!   builds, through `nubo_hypervisor::Qemu`, same image, 1 vCPU, 128 MiB)
//!   with taps on a plain Linux bridge in a namespace of their own; no
//!   Nubo; guest to guest, the baseline of (a) and (b);
//! - (d2) baseline: that namespace (the bridge's address) to one of the
//!   bare guests, the baseline of (c) and (e), whose other end is a host
//!   process too: under TCG a path with one emulated guest is much faster
//!   than a path with two;
//! - (d3) a second baseline for (b): two bare QEMUs in two namespaces
//!   joined by a veth pair, each with a bridge and Linux's VXLAN device
//!   (guest MTU 1450, as on Nubo's networks); no Nubo;
//! - (d4) the fair baseline for (b): as (d3), but the two namespaces are
//!   joined as the bench's Nubo hosts are, each by a veth pair to a bridge
//!   in a third, switch namespace (veth, bridge, veth); no Nubo. (d3) and
//!   (d4) differ only in that underlay, so (d4) over (d3) is the cost of
//!   the test's switch, and (b) over (d4) is what Nubo's cross-host path
//!   costs on top;
//! - (a) guest to guest on one host, on one private network;
//! - (b) guest to guest across two hosts, the same network over VXLAN;
//! - (b1) (b) again, with a bench-added nftables table in both hosts that
//!   leaves VXLAN's UDP (port 4789) out of conntrack (`notrack` at raw
//!   priority in prerouting and output), removed right after;
//! - (b2) (b) again, with every nftables rule of both hosts removed (Nubo's
//!   security groups, conntrack zones, NAT and guards), restored right
//!   after from `nft list ruleset`: (b2) over (b) is what the hosts'
//!   netfilter work costs the cross-host path, (d4) over (b2) the rest;
//! - (c) an "office" client on an external network to a guest's floating IP;
//! - (e) user-mode networking (`--network none --port 5201`): the host
//!   to the guest through the port QEMU forwards from 127.0.0.1 (guests
//!   cannot open connections to the host's own listeners: the agent's
//!   guard keeps them out, so the forwarded port is the way in). Ping:
//!   the guest to its user-mode gateway, which QEMU answers itself.
//!
//! The topology is the one of `tests/external_networks.rs`: a switch
//! namespace joining two host namespaces (`nubo agent --netns ...
//! --underlay ... --external lan=lan0`) and an office namespace that is the
//! LAN. Nothing leaves the namespaces but control-plane traffic and (e)'s
//! connection, both on 127.0.0.1.
//!
//! Guests need iperf3. The `debian` image could take it with `--packages
//! iperf3`, but it boots in minutes under TCG and needs far more memory; the
//! `tiny` image already holds glibc (for resize2fs and dropbear), so Debian's
//! own iperf3 runs there with its few libraries next to it. The bench
//! fetches the .debs with `apt-get download` into the git-ignored
//! `<repo>/.cache/net-bench`, writes iperf3 and the libraries into a copy of
//! tiny's root disk with debugfs (no mount), and imports that disk as the
//! image `tiny-iperf3` booted with tiny's kernel (`--kernel-image tiny`).
//! The office and the host run the same extracted iperf3.
//!
//! Everything it started is killed and every namespace it made deleted at
//! the end, also on a panic or Ctrl-C. Without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;
use nubo_hypervisor::{Accel, Boot, GuestExec, Hypervisor, Qemu, QgaClient, TapNic, VmConfig, VmDir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Seconds of each iperf3 run: short, so the whole bench takes minutes.
const IPERF_SECS: u32 = 5;
/// Pings per path and round, 0.2 s apart.
const PINGS: u32 = 25;
/// The iperf3 server port in the guests.
const PORT: u16 = 5201;
/// The baseline bridge's own address (its namespace is the baseline's
/// "host" for the one-guest paths).
const BARE_HOST: &str = "10.99.0.100";
const BOOT: Duration = Duration::from_secs(300);
/// Memory of every guest (MiB), Nubo's and the baseline's.
const MEMORY_MIB: u64 = 128;
const HOST_ARGS: &[&str] =
    &["--vcpus", "4", "--memory-mib", "4096", "--disk-gib", "200", "--accel", "tcg", "--stop-grace-secs", "5"];
/// The packages iperf3 needs beyond what tiny holds (libm comes from libc6,
/// whose libc.so.6 tiny already has).
const DEBS: &[&str] = &["iperf3", "libiperf0", "libsctp1", "libssl3", "libc6"];

fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("run sh")
}

fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Where the bench keeps its downloads and the derived disk (git-ignored).
fn bench_cache() -> PathBuf {
    repo_root().join(".cache/net-bench")
}

/// Debian's iperf3 and its libraries, unpacked under `<cache>/root`
/// (downloaded once with `apt-get download`).
fn iperf3_root() -> PathBuf {
    let cache = bench_cache();
    let root = cache.join("root");
    if root.join("usr/bin/iperf3").is_file() && root.join("lib/x86_64-linux-gnu/libm.so.6").is_file() {
        return root;
    }
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).expect("create the .deb cache");
    let out = Command::new("apt-get").arg("download").args(DEBS).current_dir(&debs).output().expect("run apt-get");
    assert!(
        out.status.success(),
        "apt-get download {} failed (the host's apt sources must reach Debian; `apt-get update` refreshes them): {}",
        DEBS.join(" "),
        text(&out)
    );
    std::fs::create_dir_all(&root).expect("create the unpack directory");
    for e in std::fs::read_dir(&debs).expect("read the .deb cache").flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            sh_ok(&format!("dpkg-deb -x '{}' '{}'", e.path().display(), root.display()));
        }
    }
    root
}

/// The host-side iperf3 command (the unpacked binary and libraries).
fn host_iperf3(root: &Path) -> String {
    format!("env LD_LIBRARY_PATH={0}/usr/lib/x86_64-linux-gnu {0}/usr/bin/iperf3", root.display())
}

/// The directory of the cached builtin image `name`.
fn image_dir(name: &str) -> PathBuf {
    let sha = std::fs::read_to_string(image_cache().join("names").join(name)).expect("image name in the cache");
    image_cache().join("sha256").join(sha.trim())
}

/// tiny's root disk with iperf3 in /opt/iperf3 and a wrapper at
/// /usr/bin/iperf3 (LD_LIBRARY_PATH, so nothing of tiny's changes); made
/// once per tiny build.
fn derived_disk(root: &Path) -> PathBuf {
    let tiny = image_dir("tiny");
    let tag: String = tiny.file_name().and_then(|n| n.to_str()).unwrap_or("tiny").chars().take(12).collect();
    let out = bench_cache().join(format!("tiny-iperf3-{tag}.qcow2"));
    if out.is_file() {
        return out;
    }
    let raw = bench_cache().join("derive.raw");
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    let wrapper = bench_cache().join("iperf3-wrapper");
    std::fs::write(&wrapper, "#!/bin/sh\nLD_LIBRARY_PATH=/opt/iperf3 exec /opt/iperf3/iperf3 \"$@\"\n")
        .expect("wrapper");
    sh_ok(&format!("chmod 755 '{}'", wrapper.display()));
    sh_ok(&format!("qemu-img convert -O raw '{}' '{}'", tiny.join("disk.qcow2").display(), raw.display()));
    let cmds = [
        "mkdir /opt".to_string(),
        "mkdir /opt/iperf3".to_string(),
        format!("write {} /opt/iperf3/iperf3", root.join("usr/bin/iperf3").display()),
        format!(
            "write {} /opt/iperf3/libiperf.so.0",
            lib.join("libiperf.so.0").canonicalize().expect("libiperf").display()
        ),
        format!(
            "write {} /opt/iperf3/libsctp.so.1",
            lib.join("libsctp.so.1").canonicalize().expect("libsctp").display()
        ),
        format!("write {} /opt/iperf3/libssl.so.3", lib.join("libssl.so.3").display()),
        format!("write {} /opt/iperf3/libcrypto.so.3", lib.join("libcrypto.so.3").display()),
        format!("write {} /opt/iperf3/libm.so.6", root.join("lib/x86_64-linux-gnu/libm.so.6").display()),
        format!("write {} /usr/bin/iperf3", wrapper.display()),
    ];
    let script = bench_cache().join("debugfs.cmds");
    std::fs::write(&script, cmds.join("\n") + "\n").expect("debugfs script");
    sh_ok(&format!("debugfs -w -f '{}' '{}'", script.display(), raw.display()));
    // debugfs exits 0 even when a command failed: check what it wrote.
    let listing = sh_ok(&format!("debugfs -R 'ls /opt/iperf3' '{}' 2>/dev/null", raw.display()));
    for f in ["iperf3", "libiperf.so.0", "libsctp.so.1", "libssl.so.3", "libcrypto.so.3", "libm.so.6"] {
        assert!(listing.contains(f), "debugfs did not write /opt/iperf3/{f}: {listing}");
    }
    let tmp = out.with_extension("tmp");
    sh_ok(&format!("qemu-img convert -O qcow2 '{}' '{}'", raw.display(), tmp.display()));
    std::fs::rename(&tmp, &out).expect("rename the derived disk");
    let _ = std::fs::remove_file(&raw);
    out
}

/// Everything one run starts: namespaces, `nubo server`, one agent per
/// host, the host's iperf3 server, the baseline's QEMUs. Dropping it kills
/// them and deletes the namespaces, in that order.
struct Bench {
    dir: tempfile::TempDir,
    prefix: String,
    procs: Vec<Child>,
    url: String,
    token: String,
}

impl Bench {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(name)).expect("log file")
    }

    fn nubo(&self, args: &[&str]) -> Output {
        Command::new(nubo_bin())
            .args(args)
            .env("NUBO_URL", &self.url)
            .env("NUBO_TOKEN", &self.token)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .stdin(Stdio::null())
            .output()
            .expect("run nubo")
    }

    fn nubo_ok(&self, args: &[&str]) -> String {
        let out = self.nubo(args);
        assert!(out.status.success(), "nubo {args:?} failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn nubo_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.nubo_ok(&a)).expect("json output")
    }

    /// A shell command in a guest through its guest agent: (exit code, its
    /// standard output, and the error output too when it failed; the CLI
    /// writes its progress there).
    fn guest(&self, id: &str, script: &str) -> (i32, String) {
        let out = self.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
        let code = out.status.code().unwrap_or(-1);
        (code, if code == 0 { String::from_utf8_lossy(&out.stdout).into_owned() } else { text(&out) })
    }

    /// The switch, two hosts and the office (as in tests/external_networks.rs).
    fn namespaces(&self) {
        let (sw, office) = (self.ns("sw"), self.ns("office"));
        sh_ok(&format!(
            "ip netns add {sw} && ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up && \
             ip -n {sw} addr add 192.168.77.100/24 dev br0 && ip -n {sw} link set lo up && \
             ip netns add {office} && ip -n {office} link add lan type bridge && ip -n {office} link set lan up && \
             ip -n {office} addr add 192.168.50.10/24 dev lan && ip -n {office} addr add 192.168.50.1/24 dev lan && \
             ip -n {office} link set lo up"
        ));
        for i in 1..=2 {
            let h = self.ns(&format!("h{i}"));
            sh_ok(&format!(
                "ip netns add {h} && ip link add u{i} netns {sw} type veth peer name eth0 netns {h} && \
                 ip -n {sw} link set u{i} master br0 up && ip -n {h} addr add 192.168.77.{i}/24 dev eth0 && \
                 ip -n {h} link set eth0 up && ip -n {h} link set lo up && \
                 ip link add o{i} netns {office} type veth peer name lan0 netns {h} && \
                 ip -n {office} link set o{i} master lan up"
            ));
        }
    }

    fn start_server(&mut self) {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(nubo_bin())
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--listen")
            .arg(&listen)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(self.log("server.log"))
            .stderr(self.log("server.log"))
            .spawn()
            .expect("spawn nubo server");
        self.procs.push(child);
        let env_file = self.dir.path().join("admin.env");
        let text =
            wait_until("DATA_DIR/admin.env", Duration::from_secs(600), || std::fs::read_to_string(&env_file).ok());
        self.url = admin_env_var(&text, "NUBO_URL");
        self.token = admin_env_var(&text, "NUBO_TOKEN");
    }

    fn start_host(&mut self, i: u32) {
        let name = format!("h{i}");
        let token = self.nubo_ok(&["host", "join-token"]);
        let log = format!("agent-{name}.log");
        let child = Command::new(nubo_bin())
            .arg("agent")
            .args(HOST_ARGS)
            .args(["--host-name", &name, "--server", &self.url, "--join-token", &token, "--data-dir"])
            .arg(self.dir.path().join(format!("agent-{name}")))
            .args(["--underlay", &format!("192.168.77.{i}"), "--netns", &self.ns(&name), "--external", "lan=lan0"])
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(self.log(&log))
            .stderr(self.log(&log))
            .spawn()
            .expect("spawn nubo agent");
        self.procs.push(child);
        wait_until(&format!("host {name} up"), Duration::from_secs(600), || {
            let hosts = self.nubo_json(&["host", "list"]);
            hosts.as_array()?.iter().any(|h| h["name"] == name.as_str() && h["state"] == "up").then_some(())
        });
    }

    /// Every QEMU started under this run's directory (Nubo's and the baseline's).
    fn qemu_pids(&self) -> Vec<i32> {
        let needle = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        let me = std::process::id() as i32;
        let mut pids = Vec::new();
        for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            if let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) {
                let is_qemu = cmdline.split(|b| *b == 0).next().is_some_and(|a| a.windows(4).any(|w| w == b"qemu"));
                if is_qemu && cmdline.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pids = self.qemu_pids();
        for &pid in &pids {
            // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let start = Instant::now();
        while pids.iter().any(|&p| alive(p)) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let list = sh("ip netns list");
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&self.prefix) {
                let _ = sh(&format!("ip netns del {name}"));
            }
        }
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.path().display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        }
    }
}

/// The baseline: two QEMUs on a bridge in a namespace of their own,
/// started by Nubo's own driver (the command line of Nubo's VMs; only the
/// agent's per-VM cgroup is left out) and reached through their guest agents.
struct Bare {
    rt: tokio::runtime::Runtime,
    qga: Vec<QgaClient>,
}

impl Bare {
    fn start(bench: &Bench, disk: &Path) -> Bare {
        let ns = bench.ns("bare");
        sh_ok(&format!(
            "ip netns add {ns} && ip -n {ns} link set lo up && ip -n {ns} link add br0 type bridge && \
             ip -n {ns} link set br0 up && ip -n {ns} addr add {BARE_HOST}/24 dev br0"
        ));
        // A second baseline for (b): two "hosts" joined by a veth pair, each
        // with a bridge and a VXLAN device on it (Linux's own VXLAN, no Nubo).
        let (xa, xb) = (bench.ns("bxa"), bench.ns("bxb"));
        sh_ok(&format!(
            "ip netns add {xa} && ip netns add {xb} && ip link add v0 netns {xa} type veth peer name v0 netns {xb}"
        ));
        for (n, me, peer) in [(&xa, 1, 2), (&xb, 2, 1)] {
            sh_ok(&format!(
                "ip -n {n} link set lo up && ip -n {n} addr add 10.98.0.{me}/24 dev v0 && ip -n {n} link set v0 up && \
                 ip -n {n} link add br0 type bridge && ip -n {n} link set br0 up && \
                 ip -n {n} link add vxlan0 type vxlan id 42 local 10.98.0.{me} remote 10.98.0.{peer} dstport 4789 dev v0 && \
                 ip -n {n} link set vxlan0 master br0 up"
            ));
        }
        // The fair baseline for (b): the same, but each "host" reaches the
        // other through a switch namespace, as the Nubo hosts of this bench do.
        let (ysw, ya, yb) = (bench.ns("bysw"), bench.ns("bya"), bench.ns("byb"));
        sh_ok(&format!(
            "ip netns add {ysw} && ip -n {ysw} link set lo up && ip -n {ysw} link add br0 type bridge && \
             ip -n {ysw} link set br0 up"
        ));
        for (n, me, peer) in [(&ya, 1, 2), (&yb, 2, 1)] {
            sh_ok(&format!(
                "ip netns add {n} && ip link add u{me} netns {ysw} type veth peer name eth0 netns {n} && \
                 ip -n {ysw} link set u{me} master br0 up && \
                 ip -n {n} link set lo up && ip -n {n} addr add 10.96.0.{me}/24 dev eth0 && ip -n {n} link set eth0 up && \
                 ip -n {n} link add br0 type bridge && ip -n {n} link set br0 up && \
                 ip -n {n} link add vxlan0 type vxlan id 43 local 10.96.0.{me} remote 10.96.0.{peer} dstport 4789 dev eth0 && \
                 ip -n {n} link set vxlan0 master br0 up"
            ));
        }
        // (guest, namespace, guest address, MTU: VXLAN's 50 bytes less across the tunnel)
        let vms = [
            (1, &ns, "10.99.0.1", 1500),
            (2, &ns, "10.99.0.2", 1500),
            (3, &xa, "10.97.0.3", 1450),
            (4, &xb, "10.97.0.4", 1450),
            (5, &ya, "10.95.0.5", 1450),
            (6, &yb, "10.95.0.6", 1450),
        ];
        let tiny = image_dir("tiny");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(tiny.join("manifest.json")).expect("tiny's manifest")).expect("json");
        let cmdline = manifest["cmdline"].as_str().expect("tiny's kernel command line").to_string();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let qemu = Qemu::default();
        let mut qga = Vec::new();
        let mut dirs = Vec::new();
        for (i, ns, _, _) in vms {
            let tap = format!("tbare{i}");
            sh_ok(&format!("ip -n {ns} tuntap add dev {tap} mode tap && ip -n {ns} link set {tap} master br0 up"));
            let id = format!("bare-{i}");
            let mac = nubo_hypervisor::mac_for(&id);
            let dir = VmDir::new(bench.dir.path().join("bare").join(&id));
            let cfg = VmConfig {
                id: id.clone(),
                name: id.clone(),
                vcpus: 1,
                memory_mib: MEMORY_MIB,
                disk_gib: 1,
                boot: Boot::Direct {
                    kernel: tiny.join("kernel"),
                    initrd: tiny.join("initrd"),
                    cmdline: cmdline.clone(),
                },
                base_disk: disk.to_path_buf(),
                seed_image: Some(dir.seed()),
                port_forwards: Vec::new(),
                accel: Accel::Tcg,
                hotplug_slots: nubo_api::MAX_VOLUMES_PER_INSTANCE,
                metadata_relay: None,
                mac: Some(mac.clone()),
                base_format: Some("qcow2".into()),
                disks: Vec::new(),
                taps: vec![TapNic { tap, mac, netns: Some(PathBuf::from(format!("/run/netns/{ns}"))) }],
                incoming: false,
                cdrom: None,
                hardware: Default::default(),
                max_vcpus: None,
            };
            rt.block_on(async {
                qemu.prepare_disk(&dir, &cfg).await.expect("the baseline's root disk");
                let seed = nubo_image::seed::SeedData {
                    instance_id: id.clone(),
                    hostname: id.clone(),
                    user_data: None,
                    public_keys: Vec::new(),
                };
                nubo_image::seed::write_nocloud_seed(&dir.seed(), &seed).expect("the baseline's seed");
                qemu.start(&dir, &cfg).await.expect("start the baseline's QEMU");
            });
            dirs.push(dir);
        }
        for (i, dir) in dirs.iter().enumerate() {
            let client = wait_until(&format!("the guest agent of bare-{}", i + 1), BOOT, || {
                rt.block_on(QgaClient::connect(&dir.qga_socket(), Duration::from_secs(3))).ok()
            });
            qga.push(client);
        }
        let mut bare = Bare { rt, qga };
        // No DHCP on these bridges: stop tiny's udhcpc and set the addresses.
        for (k, (i, _, ip, mtu)) in vms.iter().enumerate() {
            let (code, out) = bare.sh(
                k,
                &format!(
                    "kill $(cat /run/udhcpc.eth0.pid) 2>/dev/null; ip addr flush dev eth0; \
                     ip link set eth0 mtu {mtu} && ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
                ),
            );
            assert_eq!(code, 0, "configuring bare-{i}: {out}");
        }
        bare
    }

    fn sh(&mut self, vm: usize, script: &str) -> (i32, String) {
        let req = GuestExec {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            capture_output: true,
            ..Default::default()
        };
        let client = &mut self.qga[vm];
        match self.rt.block_on(client.run(&req, Duration::from_secs(60))) {
            Ok(s) => (
                s.exit_code.unwrap_or(-1),
                format!("{}{}", String::from_utf8_lossy(&s.stdout), String::from_utf8_lossy(&s.stderr)),
            ),
            Err(e) => (-1, e.to_string()),
        }
    }
}

/// One path's samples over all rounds.
#[derive(Default)]
struct Samples {
    mbps: Vec<f64>,
    rtt_ms: Vec<f64>,
    errors: Vec<String>,
}

/// The receiver's throughput (Mbit/s) in iperf3's JSON output.
fn iperf_mbps(out: &str) -> Result<f64, String> {
    let start = out.find('{').ok_or_else(|| format!("no JSON from iperf3: {out}"))?;
    let v: Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("no JSON from iperf3: {out}"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    v["end"]["sum_received"]["bits_per_second"].as_f64().map(|b| b / 1e6).ok_or_else(|| format!("no result: {out}"))
}

/// The `time=X ms` values of ping's (iputils' or busybox's) output.
fn ping_rtts(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next())
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// The client commands of one measurement.
fn iperf_client(iperf3: &str, addr: &str, port: u16) -> String {
    format!("{iperf3} -c {addr} -p {port} -t {IPERF_SECS} --connect-timeout 5000 -J")
}

fn ping_cmd(addr: &str) -> String {
    format!("ping -c {PINGS} -i 0.2 -W 2 {addr}")
}

fn record(s: &mut Samples, iperf: (i32, String), ping: (i32, String)) {
    match iperf_mbps(&iperf.1) {
        Ok(m) => s.mbps.push(m),
        Err(e) => s.errors.push(e.chars().take(300).collect()),
    }
    let rtts = ping_rtts(&ping.1);
    if rtts.is_empty() {
        s.errors.push(format!("ping: {}", ping.1.chars().take(300).collect::<String>()));
    }
    s.rtt_ms.extend(rtts);
}

/// Nearest-rank percentile `p` (0-100) of `v`.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn main() {
    let Some(runs) = bench_runs("network_paths") else { return };
    let runs = if std::env::var_os("NUBO_BENCH_RUNS").is_some() { runs } else { 3 };
    let load_before = loadavg();
    let started = Instant::now();
    ensure_image();
    let root = iperf3_root();
    let disk = derived_disk(&root);
    let iperf3_host = host_iperf3(&root);
    eprintln!("iperf3 image disk: {}", disk.display());

    let prefix = format!("nbn{}", std::process::id() % 100_000);
    let probe = format!("{prefix}probe");
    let made = sh(&format!("ip netns add {probe} && ip netns del {probe}"));
    assert!(made.status.success(), "this bench makes network namespaces: run it as root ({})", text(&made).trim());
    let mut bench = Bench {
        dir: tempfile::Builder::new().prefix("nbn").tempdir().expect("tempdir"),
        prefix,
        procs: Vec::new(),
        url: String::new(),
        token: String::new(),
    };
    bench.namespaces();
    bench.start_server();
    bench.start_host(1);
    bench.start_host(2);

    // The baseline first: it boots while Nubo's guests are launched.
    let mut bare = Bare::start(&bench, &disk);
    eprintln!("baseline: up after {:.0} s", started.elapsed().as_secs_f64());

    bench.nubo_ok(&[
        "image",
        "import",
        disk.to_str().expect("utf-8 path"),
        "--name",
        "tiny-iperf3",
        "--format",
        "qcow2",
        "--kernel-image",
        "tiny",
    ]);
    bench.nubo_ok(&[
        "network",
        "create",
        "lan",
        "--cidr",
        "192.168.50.0/24",
        "--external",
        "--interface",
        "lan",
        "--gateway",
        "192.168.50.1",
        "--pool",
        "192.168.50.100-192.168.50.199",
    ]);
    bench.nubo_ok(&["network", "create", "blue", "--cidr", "10.30.0.0/24"]);
    bench.nubo_ok(&["security-group", "create", "bench"]);
    bench.nubo_ok(&["security-group", "allow", "bench", "--protocol", "icmp", "--cidr", "0.0.0.0/0"]);
    bench.nubo_ok(&[
        "security-group",
        "allow",
        "bench",
        "--protocol",
        "tcp",
        "--port",
        &PORT.to_string(),
        "--cidr",
        "0.0.0.0/0",
    ]);
    let mem = MEMORY_MIB.to_string();
    let run = |name: &str, net: &[&str]| {
        let mut a = vec!["instance", "run", "--image", "tiny-iperf3", "--memory", &mem, "--name", name];
        a.extend_from_slice(net);
        bench.nubo_ok(&a)
    };
    let priv_net = ["--network", "blue", "--security-group", "bench"];
    let ids: Vec<String> = ["g1", "g2", "g3"].iter().map(|n| run(n, &priv_net)).collect();
    let port = PORT.to_string();
    let user = run("u1", &["--network", "none", "--port", &port]);
    let mut view = std::collections::HashMap::new();
    for id in ids.iter().chain([&user]) {
        let v = wait_until(&format!("{id} running"), BOOT, || {
            let v = bench.nubo_json(&["instance", "show", id]);
            assert_ne!(v["state"], "error", "instance went to error: {v}");
            (v["state"] == "running").then_some(v)
        });
        view.insert(id.clone(), v);
    }
    let host_of = |v: &Value| v["host_name"].as_str().unwrap_or_default().to_string();

    // Two of the three on one host, the third on the other; a live
    // migration makes it so if the scheduler put all three together.
    let (mut same, mut other) = (Vec::new(), Vec::new());
    let first_host = host_of(&view[&ids[0]]);
    for id in &ids {
        if host_of(&view[id]) == first_host {
            same.push(id.clone())
        } else {
            other.push(id.clone())
        }
    }
    if other.len() > same.len() {
        std::mem::swap(&mut same, &mut other);
    }
    if other.is_empty() {
        let moved = same.pop().expect("three instances");
        let to = if first_host == "h1" { "h2" } else { "h1" };
        bench.nubo_ok(&["instance", "migrate", &moved, "--to", to, "--wait"]);
        other.push(moved);
    }
    let (x, y, z) = (same[0].clone(), same[1].clone(), other[0].clone());
    let addr = |id: &str| {
        let v = bench.nubo_json(&["instance", "show", id]);
        v["addresses"][0]["address"].as_str().expect("an address").to_string()
    };
    let (x_ip, y_ip, z_ip) = (addr(&x), addr(&y), addr(&z));
    for (id, ip) in [(&x, &x_ip), (&y, &y_ip), (&z, &z_ip)] {
        let want = format!("inet {ip}/");
        wait_until(&format!("{id}'s DHCP lease"), BOOT, || {
            bench.guest(id, "ip -4 addr show dev eth0").1.contains(&want).then_some(())
        });
    }
    wait_until("u1's guest agent", BOOT, || (bench.guest(&user, "true").0 == 0).then_some(()));
    let fip = bench.nubo_json(&["floating-ip", "allocate", "--network", "lan"]);
    let (fip_id, fip_addr) = (fip["id"].as_str().unwrap().to_string(), fip["address"].as_str().unwrap().to_string());
    bench.nubo_ok(&["floating-ip", "associate", &fip_id, &y]);

    // iperf3 servers in the receiving guests (daemons, stdio closed so the
    // guest agent's exec returns).
    let daemon = format!("/usr/bin/iperf3 -s -D -p {PORT} </dev/null >/dev/null 2>&1; sleep 0.5; pidof iperf3");
    for id in [&y, &z, &user] {
        let (code, out) = bench.guest(id, &daemon);
        assert!(code == 0 && !out.trim().is_empty(), "iperf3 server in {id}: {out}");
    }
    for vm in [1, 3, 5] {
        let (code, out) = bare.sh(vm, &daemon);
        assert!(code == 0 && !out.trim().is_empty(), "iperf3 server in bare-{}: {out}", vm + 1);
    }
    let office = bench.ns("office");
    let bare_ns = bench.ns("bare");
    wait_until("the floating IP answering the office", Duration::from_secs(60), || {
        sh(&format!("ip netns exec {office} ping -c 1 -W 1 {fip_addr}")).status.success().then_some(())
    });
    let user_gw = bench.guest(&user, "ip route | awk '/^default/ {print $3}'").1.trim().to_string();
    assert!(!user_gw.is_empty(), "u1 has no default route");
    // (e) through the port QEMU forwards from the host's 127.0.0.1.
    let user_fwd = bench.nubo_json(&["instance", "show", &user])["ports"][&port]
        .as_str()
        .expect("u1's forwarded port")
        .to_string();
    let (fwd_addr, fwd_port) = user_fwd.rsplit_once(':').expect("ADDRESS:PORT");
    let (fwd_addr, fwd_port): (String, u16) = (fwd_addr.to_string(), fwd_port.parse().expect("a port"));

    // Facts worth printing with the results: which host each guest is on and its MTU.
    let mtu = |s: (i32, String)| s.1.trim().to_string();
    let mut facts = Vec::new();
    for (label, id) in [("x", &x), ("y", &y), ("z", &z), ("u1", &user)] {
        let h = host_of(&bench.nubo_json(&["instance", "show", id]));
        facts.push(format!("{label} on {h}, eth0 mtu {}", mtu(bench.guest(id, "cat /sys/class/net/eth0/mtu"))));
    }
    facts.push(format!("bare-1/2 eth0 mtu {}", mtu(bare.sh(0, "cat /sys/class/net/eth0/mtu"))));
    facts.push(format!("bare-3/4 eth0 mtu {}", mtu(bare.sh(2, "cat /sys/class/net/eth0/mtu"))));
    facts.push(format!("bare-5/6 eth0 mtu {}", mtu(bare.sh(4, "cat /sys/class/net/eth0/mtu"))));

    // Each path with the baseline it is held against: two guests (both
    // under TCG) for guest to guest, one guest for the paths whose other
    // end is a host process.
    const PATHS: &[(&str, usize)] = &[
        ("(d1) bare QEMU: guest to guest, tap + bridge", 0),
        ("(d2) bare QEMU: bridge's netns to guest, tap", 1),
        ("(d3) bare QEMU: guest to guest, VXLAN, 2 netns", 0),
        ("(d4) bare QEMU: VXLAN, 2 netns via a switch ns", 0),
        ("(a) guest to guest, one host, private network", 0),
        ("(b) guest to guest, two hosts, VXLAN", 0),
        ("(b1) = (b), VXLAN's UDP untracked on both hosts", 0),
        ("(b2) = (b), both hosts' nftables rules removed", 0),
        ("(c) office to guest, floating IP", 1),
        ("(e) user-mode NAT, host to guest, fwd port", 1),
    ];
    let guest_iperf = "/usr/bin/iperf3";
    let mut samples: Vec<Samples> = PATHS.iter().map(|_| Samples::default()).collect();
    for round in 1..=runs {
        // Ctrl-C ends the bench between measurements, through Bench's drop.
        assert!(!INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst), "interrupted");
        let t = Instant::now();
        let cmd = iperf_client(guest_iperf, "10.99.0.2", PORT);
        let i = bare.sh(0, &cmd);
        let p = bare.sh(0, &ping_cmd("10.99.0.2"));
        record(&mut samples[0], i, p);
        let in_ns = |ns: &str, c: &str| {
            let out = sh(&format!("ip netns exec {ns} {c}"));
            (out.status.code().unwrap_or(-1), text(&out))
        };
        let i = in_ns(&bare_ns, &iperf_client(&iperf3_host, "10.99.0.2", PORT));
        let p = in_ns(&bare_ns, &ping_cmd("10.99.0.2"));
        record(&mut samples[1], i, p);
        let i = bare.sh(2, &iperf_client(guest_iperf, "10.97.0.4", PORT));
        let p = bare.sh(2, &ping_cmd("10.97.0.4"));
        record(&mut samples[2], i, p);
        let i = bare.sh(4, &iperf_client(guest_iperf, "10.95.0.6", PORT));
        let p = bare.sh(4, &ping_cmd("10.95.0.6"));
        record(&mut samples[3], i, p);
        let i = bench.guest(&x, &iperf_client(guest_iperf, &y_ip, PORT));
        let p = bench.guest(&x, &ping_cmd(&y_ip));
        record(&mut samples[4], i, p);
        let i = bench.guest(&x, &iperf_client(guest_iperf, &z_ip, PORT));
        let p = bench.guest(&x, &ping_cmd(&z_ip));
        record(&mut samples[5], i, p);
        let hosts = [bench.ns("h1"), bench.ns("h2")];
        for h in &hosts {
            sh_ok(&format!(
                "printf '%s\\n' 'table inet bench_notrack {{' \
                 '  chain pre {{ type filter hook prerouting priority raw; udp dport 4789 notrack; }}' \
                 '  chain out {{ type filter hook output priority raw; udp dport 4789 notrack; }}' '}}' | \
                 ip netns exec {h} nft -f -"
            ));
        }
        let i = bench.guest(&x, &iperf_client(guest_iperf, &z_ip, PORT));
        let p = bench.guest(&x, &ping_cmd(&z_ip));
        record(&mut samples[6], i, p);
        for h in &hosts {
            sh_ok(&format!("ip netns exec {h} nft delete table inet bench_notrack"));
        }
        let saved: Vec<PathBuf> = hosts.iter().map(|h| bench.dir.path().join(format!("{h}.nft"))).collect();
        for (h, f) in hosts.iter().zip(&saved) {
            sh_ok(&format!(
                "ip netns exec {h} nft list ruleset > '{}' && ip netns exec {h} nft flush ruleset",
                f.display()
            ));
        }
        let i = bench.guest(&x, &iperf_client(guest_iperf, &z_ip, PORT));
        let p = bench.guest(&x, &ping_cmd(&z_ip));
        record(&mut samples[7], i, p);
        for (h, f) in hosts.iter().zip(&saved) {
            sh_ok(&format!("ip netns exec {h} nft -f '{}'", f.display()));
        }
        let i = in_ns(&office, &iperf_client(&iperf3_host, &fip_addr, PORT));
        let p = in_ns(&office, &ping_cmd(&fip_addr));
        record(&mut samples[8], i, p);
        let out = sh(&iperf_client(&iperf3_host, &fwd_addr, fwd_port));
        let i = (out.status.code().unwrap_or(-1), text(&out));
        let p = bench.guest(&user, &ping_cmd(&user_gw));
        record(&mut samples[9], i, p);
        eprintln!(
            "round {round}/{runs} ({:.0} s): {}",
            t.elapsed().as_secs_f64(),
            samples
                .iter()
                .map(|s| s.mbps.last().map_or("-".into(), |m| format!("{m:.0}")))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let load_after = loadavg();
    let total = started.elapsed().as_secs_f64();
    drop(bare);
    drop(bench);

    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!();
    println!("network paths: iperf3 TCP, {IPERF_SECS} s per run, {runs} rounds; ping: {PINGS} per round, 0.2 s apart");
    println!(
        "machine: {threads} CPUs, {}, {}, guests under TCG (1 vCPU, {MEMORY_MIB} MiB)",
        cpu_model(),
        qemu_version()
    );
    println!("load:    {load_before} before, {load_after} after (1/5/15-min load average); whole bench {total:.0} s");
    println!("bench:   cargo bench -p nubo --bench network_paths   (NUBO_BENCH_RUNS={runs})");
    println!("guests:  {}", facts.join("; "));
    println!();
    let median = |i: usize| stats(samples[i].mbps.iter().copied()).map(|s| s.1);
    println!(
        "{:<48} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "path (Mbit/s: min, median, max)", "min", "median", "max", "x bare", "ping p50", "ping p99"
    );
    for ((name, base), s) in PATHS.iter().zip(&samples) {
        let st = stats(s.mbps.iter().copied());
        let ratio = match (st, median(*base)) {
            (Some(st), Some(b)) if b > 0.0 => format!("{:.2} d{}", st.1 / b, base + 1),
            _ => "-".into(),
        };
        let ms = |p: f64| percentile(&s.rtt_ms, p).map_or("-".into(), |v| format!("{v:.2} ms"));
        println!("{name:<48} {} {ratio:>9} {:>9} {:>9}", fmt_stats(st), ms(50.0), ms(99.0));
    }
    // The cross-host path against both VXLAN baselines: (d3) without the
    // switch namespace, (d4) through one as (b)'s hosts are.
    if let (Some(b), Some(d3), Some(d4)) = (median(5), median(2), median(3)) {
        println!();
        println!("(b) over (d3): {:.2}; (b) over (d4): {:.2}; (d4) over (d3): {:.2}", b / d3, b / d4, d4 / d3);
    }
    // What the hosts' netfilter costs (b): the same path without it.
    if let (Some(b), Some(b1), Some(b2)) = (median(5), median(6), median(7)) {
        println!("(b1) over (b): {:.2}; (b2) over (b): {:.2}", b1 / b, b2 / b);
    }
    for ((name, _), s) in PATHS.iter().zip(&samples) {
        for e in &s.errors {
            println!("error in {name}: {e}");
        }
    }
}
