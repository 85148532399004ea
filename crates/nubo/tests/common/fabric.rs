//! Network namespaces that stand in for a LAN: a switch (a bridge in a
//! namespace of its own, which also plays "the outside" at
//! 192.168.77.100) and hosts 192.168.77.1, .2, ... joined to it by veth
//! pairs. The tests' agents run inside the host namespaces (`--netns`), so
//! nothing leaves them but the agents' control-plane traffic on 127.0.0.1.
//! Every namespace whose name starts with the fabric's prefix (the ones
//! made here and the router namespaces the agents made) goes on drop.

use std::process::{Command, Output};

/// Runs `cmd` with `sh -c`.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("run sh")
}

/// Runs `cmd` with `sh -c`, which must succeed; its standard output.
pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces of one test: `sw` and `h1` to `h<hosts>`.
pub struct Fabric {
    prefix: String,
}

impl Fabric {
    /// Makes the switch and `hosts` hosts; fails (never skips) where
    /// namespaces cannot be made: the tests that use it run as root.
    /// `tag` keeps the names of tests running side by side apart.
    pub fn new(tag: &str, hosts: u32) -> Self {
        let prefix = format!("n{tag}{}", std::process::id() % 100_000);
        let probe = format!("{prefix}probe");
        let made = sh(&format!("ip netns add {probe} && ip netns del {probe}"));
        assert!(
            made.status.success(),
            "this test makes network namespaces: run it as root ({})",
            String::from_utf8_lossy(&made.stderr).trim()
        );
        let f = Fabric { prefix };
        let sw = f.ns("sw");
        sh_ok(&format!(
            "ip netns add {sw} && ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up && \
             ip -n {sw} addr add 192.168.77.100/24 dev br0 && ip -n {sw} link set lo up"
        ));
        for i in 1..=hosts {
            let h = f.ns(&format!("h{i}"));
            sh_ok(&format!(
                "ip netns add {h} && ip link add u{i} netns {sw} type veth peer name eth0 netns {h} && \
                 ip -n {sw} link set u{i} master br0 up && ip -n {h} addr add 192.168.77.{i}/24 dev eth0 && \
                 ip -n {h} link set eth0 up && ip -n {h} link set lo up"
            ));
        }
        f
    }

    /// Adds the "office": a namespace `office` that is the LAN (a bridge
    /// `lan` with a client at 192.168.50.10 and the LAN's router address
    /// .1), plugged into each of the first `hosts` hosts as their `lan0`
    /// (which their agents map with `--external lan=lan0`). Its name.
    pub fn office(&self, hosts: u32) -> String {
        let office = self.ns("office");
        sh_ok(&format!(
            "ip netns add {office} && ip -n {office} link add lan type bridge && ip -n {office} link set lan up && \
             ip -n {office} addr add 192.168.50.10/24 dev lan && ip -n {office} addr add 192.168.50.1/24 dev lan && \
             ip -n {office} link set lo up"
        ));
        for i in 1..=hosts {
            let h = self.ns(&format!("h{i}"));
            sh_ok(&format!(
                "ip link add o{i} netns {office} type veth peer name lan0 netns {h} && ip -n {office} link set o{i} master lan up"
            ));
        }
        office
    }

    /// The full name of this fabric's namespace `name` (`sw`, `h1`, ...).
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let list = sh("ip netns list");
        for line in String::from_utf8_lossy(&list.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with(&self.prefix) {
                let _ = sh(&format!("ip netns del {name}"));
            }
        }
    }
}

/// One GET from inside namespace `ns` (the office's client): the page's
/// text, or `failed: <error>`.
pub fn fetch_in(ns: &str, url: &str) -> String {
    const FETCH: &str = r#"
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())
except Exception as e:
    print("failed:", type(e).__name__)
"#;
    let out = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", FETCH, url]).output().expect("fetch");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The outside world's server in namespace `ns` at `address`:9000: answers
/// each connection with `hello-from-office <the address it came from>`
/// and prints `from <address>` for each. Stopped on drop.
pub struct OfficeServer {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

const OFFICE_SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9000)); s.listen(8)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    print("from", peer[0], flush=True)
    c.sendall(("hello-from-office %s\n" % peer[0]).encode()); c.close()
"#;

impl OfficeServer {
    pub fn start(ns: &str, address: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-u", "-c", OFFICE_SERVER, address])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the office server");
        let out = child.stdout.take().expect("the office server's output");
        let mut server = OfficeServer { child, lines: std::io::BufRead::lines(std::io::BufReader::new(out)) };
        assert_eq!(server.next_line(), "listening");
        server
    }

    /// The server's next line (it blocks until there is one).
    pub fn next_line(&mut self) -> String {
        self.lines.next().expect("the office server stopped").expect("the office server's output")
    }
}

impl Drop for OfficeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
