//! Attacks on the `guests` boundary (see main.rs): what a guest reaches on
//! its host. Each test runs the attack from inside a real `tiny` guest
//! through `nubo instance exec`, and tells a refused connection apart from
//! an exec that did not run (every guest script ends with a marker).

use crate::common::*;
use std::io::{Read, Write};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);
/// Printed by every guest script as its last line: without it the exec
/// itself failed, and the probe proved nothing.
const DONE: &str = "probe-finished";

/// B's web server: a page with a marker the attacker looks for.
const WEB_USER_DATA: &str = "#!/bin/sh
mkdir -p /www
echo page-of-instance-b > /www/index.html
httpd -p 80 -h /www
echo web-ready
";

/// A guest asks its metadata service for its instance id (the sleep keeps
/// nc's stdin open until the answer is in).
const METADATA_ID: &str =
    "(printf 'GET /latest/meta-data/instance-id HTTP/1.0\\r\\n\\r\\n'; sleep 2) | nc -w 5 169.254.169.254 80; echo";

fn launch(cloud: &Cloud, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["instance", "run", "--image", "tiny", "--vcpus", "1", "--memory", "128", "--name", name];
    args.extend_from_slice(extra);
    args.push("--wait");
    let id = cloud.nubo_ok(&args).trim().to_string();
    assert!(id.starts_with("i-"), "run prints the id, got {id}");
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    id
}

/// Runs `script` in the guest and insists that the exec itself worked.
fn guest(cloud: &Cloud, id: &str, script: &str) -> String {
    let full = format!("{script}\necho {DONE}");
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "90", "--", "/bin/sh", "-c", &full]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains(DONE), "the exec in {id} did not run: {text}");
    text
}

/// From the guest: sends an HTTP request to `ip:port` and prints what came
/// back between markers, so the caller sees whether anything answered.
fn probe(cloud: &Cloud, id: &str, ip: &str, port: u16) -> String {
    let script = format!(
        "printf 'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | timeout 10 nc {ip} {port} > /tmp/probe 2>&1; \
         echo \"rc=$?\"; echo reply-begin; cat /tmp/probe; echo reply-end"
    );
    let text = guest(cloud, id, &script);
    let reply = text.split("reply-begin").nth(1).and_then(|r| r.split("reply-end").next()).unwrap_or_default();
    reply.trim().to_string()
}

/// A listener on the host's 127.0.0.1 that greets whoever connects with a
/// secret; the accepted connections are counted.
fn host_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a host listener");
    let port = l.local_addr().expect("its address").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost-secret\n");
        }
    });
    (port, hits)
}

/// A UDP socket on the host's 127.0.0.1 that counts datagrams.
fn host_udp() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a host UDP socket");
    let port = s.local_addr().expect("its address").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while s.recv(&mut buf).is_ok() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (port, hits)
}

/// What QEMU (and the relays it started) logged for instance `id`.
fn qemu_log(cloud: &Cloud, id: &str) -> String {
    std::fs::read_to_string(cloud.agent_dir().join("instances").join(id).join("qemu.log")).unwrap_or_default()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

/// Item 1: through QEMU's user-mode network, 169.254.0.2 is the host's
/// 127.0.0.1. A guest must reach none of the host's listeners (control
/// plane, another instance's forwarded port, anything else), by TCP or
/// UDP, while its metadata service still answers and the host still
/// reaches a forwarded port.
#[test]
fn guest_reaches_no_host_loopback_listener() {
    let cloud = Cloud::up();
    let ud = cloud.data_dir().join("web.sh");
    std::fs::write(&ud, WEB_USER_DATA).expect("user data");
    let b = launch(&cloud, "b", &["--port", "80", "--user-data", ud.to_str().expect("utf-8 path")]);
    let a = launch(&cloud, "a", &[]);
    let b_addr = cloud.instance(&b)["ports"]["80"].as_str().expect("b's port 80 is forwarded").to_string();
    // The host reaches B's forwarded port.
    wait_until("B's page through its forwarded port", Duration::from_secs(60), || {
        http(&b_addr, "GET", "/", "").filter(|p| p.contains("page-of-instance-b"))
    });
    let (secret_port, hits) = host_listener();
    let (udp_port, udp_hits) = host_udp();
    let cp_port = port_of(&cloud.url);

    let control_plane = probe(&cloud, &a, "169.254.0.2", cp_port);
    let instance_b = probe(&cloud, &a, "169.254.0.2", port_of(&b_addr));
    let other = probe(&cloud, &a, "169.254.0.2", secret_port);
    guest(&cloud, &a, &format!("for i in 1 2 3; do echo x | timeout 2 nc -u 169.254.0.2 {udp_port}; done"));
    assert!(!control_plane.contains("HTTP/1."), "the guest reached the control plane: {control_plane}");
    assert!(!instance_b.contains("page-of-instance-b"), "the guest reached B's forwarded port: {instance_b}");
    assert!(!other.contains("host-secret"), "the guest reached a host listener: {other}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the host listener accepted the guest");
    assert_eq!(udp_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the host UDP socket got the guest's datagrams");

    // What must keep working: the metadata service, and the forwarded port.
    let md = guest(&cloud, &a, METADATA_ID);
    assert!(md.contains(&a), "metadata no longer answers A's id: {md}\nQEMU log: {}", qemu_log(&cloud, &a));
    let page = http(&b_addr, "GET", "/", "").unwrap_or_default();
    assert!(page.contains("page-of-instance-b"), "the host no longer reaches B's forwarded port: {page}");
}

/// The live `nubo imds-relay` processes serving instance `id` (QEMU
/// starts them through glib, which leaves them to init: they are found by
/// their command line, which names the instance's socket).
fn relays_of(id: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        if stat.rsplit(')').next().unwrap_or_default().split_whitespace().next() == Some("Z") {
            continue;
        }
        let mut cmdline = Vec::new();
        if std::fs::File::open(e.path().join("cmdline")).and_then(|mut f| f.read_to_end(&mut cmdline)).is_ok() {
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            // QEMU's own command line names the relay too: argv[1] tells them apart.
            if args.get(1).is_some_and(|a| a == "imds-relay") && args.iter().any(|a| a.contains(id)) {
                out.push(pid);
            }
        }
    }
    out
}

/// Item 3: each guest connection to 169.254.169.254 costs the host a
/// process. A guest holding 60 idle connections must not get 60
/// processes; and once they are cut off, metadata answers again.
#[test]
fn metadata_connection_flood_is_bounded() {
    let cloud = Cloud::up();
    let a = launch(&cloud, "a", &[]);
    // Connections that stay open: nc's stdin never ends, and the relay
    // waits for a request that never comes.
    guest(
        &cloud,
        &a,
        "for i in $(seq 1 60); do setsid sh -c 'sleep 300 | nc 169.254.169.254 80' </dev/null >/dev/null 2>&1 & done; sleep 3",
    );
    let mut most = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        most = most.max(relays_of(&a).len());
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("relay processes at most: {most}");
    assert!(most <= 16, "a guest's 60 idle metadata connections hold {most} relay processes on the host");
    // The idle ones are cut off, and the service answers again.
    wait_until("the idle relays to be gone", Duration::from_secs(60), || relays_of(&a).is_empty().then_some(()));
    let md = guest(&cloud, &a, METADATA_ID);
    assert!(md.contains(&a), "metadata no longer answers after the flood: {md}\nQEMU log: {}", qemu_log(&cloud, &a));
    guest(&cloud, &a, "killall sleep nc 2>/dev/null; true");
}

/// A web server inside namespace `ns` on `port`, serving `page`; killed
/// when dropped.
/// (The directory is kept for the server's life.)
struct NsServer(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl NsServer {
    fn start(ns: &str, port: u16, page: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("index.html"), page).expect("page");
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-m", "http.server", &port.to_string(), "--bind", "0.0.0.0"])
            .arg("--directory")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http.server");
        wait_until(&format!("the web server in {ns}"), Duration::from_secs(20), || {
            let out = sh(&format!("ip netns exec {ns} curl -s --max-time 2 http://127.0.0.1:{port}/"));
            String::from_utf8_lossy(&out.stdout).contains(page).then_some(())
        });
        NsServer(child, dir)
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Items 1 and 5 on a private network: a guest opens nothing on its host
/// (the uplink's host side, the underlay address), while the outside still
/// answers it; and the DHCP server that answered it does not run as root.
#[test]
fn private_network_guest_reaches_nothing_on_its_host_and_dnsmasq_is_not_root() {
    let fabric = Fabric::new("sg", 1);
    let h = fabric.ns("h1");
    let mut cloud = Cloud::server_only();
    cloud.start_host("h1", &["--underlay", "192.168.77.1", "--netns", &h]);
    cloud.nubo_ok(&["network", "create", "blue", "--cidr", "10.20.0.0/24"]);
    let a =
        cloud.nubo_ok(&["instance", "run", "--memory", "128", "--name", "a", "--network", "blue"]).trim().to_string();
    let v = cloud.wait_state(&a, "running", BOOT);
    let ip = v["addresses"][0]["address"].as_str().expect("an address").to_string();
    cloud.wait_console(&a, nubo_api::BOOT_COMPLETE_MARKER, 1, BOOT);
    wait_until("a's DHCP lease", BOOT, || {
        guest(&cloud, &a, "ip -4 addr show dev eth0").contains(&format!("inet {ip}/24")).then_some(())
    });

    // Item 5: the dnsmasq that handed out that lease is not root.
    let nets = cloud.data_dir().join("agent-h1").join("networks");
    let pid = std::fs::read_dir(&nets)
        .expect("the agent's networks directory")
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("dnsmasq.pid")).ok())
        .expect("a dnsmasq pid file");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("dnsmasq's status");
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("a Uid line").to_string();
    // Both attacks are checked before either fails, so one run shows both.
    let mut problems = Vec::new();
    if uid.split_whitespace().any(|u| u == "0") {
        problems.push(format!("dnsmasq runs as root: Uid:{uid}"));
    }

    // Item 1: listeners on the host's own addresses, and one outside.
    let uplink = sh_ok(&format!("ip -n {h} -4 -o addr show"))
        .lines()
        .find(|l| l.split_whitespace().nth(1).is_some_and(|d| d.starts_with("nu")))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|c| c.split('/').next())
        .expect("the uplink's host-side address")
        .to_string();
    let _host = NsServer::start(&h, 18090, "host-secret");
    let _outside = NsServer::start(&fabric.ns("sw"), 18090, "outside-page");
    let outside = probe(&cloud, &a, "192.168.77.100", 18090);
    assert!(outside.contains("outside-page"), "the probe reaches nothing at all, so it proves nothing: {outside}");
    for target in [uplink.as_str(), "192.168.77.1"] {
        let got = probe(&cloud, &a, target, 18090);
        if got.contains("host-secret") {
            problems.push(format!("the guest reached its host at {target}: {got}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
