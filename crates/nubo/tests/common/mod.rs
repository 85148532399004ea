//! Test harness: runs the real `nubo` binary (`up`, or `server` plus
//! `agent`) in a temporary data directory and drives it through the CLI
//! and the HTTP API. Guests are real `tiny` VMs under TCG. The image is
//! built once into `<repo>/.cache/images` (or $NUBO_IMAGE_CACHE) and
//! shared by every test. With `NUBO_TEST_DATABASE=postgres://...` the
//! server keeps its state in a PostgreSQL database of the cloud's own
//! (`--database`), dropped with the cloud.
#![allow(dead_code)]

use nubo_testkit::free_port;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod aws;
mod fabric;
mod server_database;
// Each test target compiles this module and uses only part of it.
#[allow(unused_imports)]
pub use aws::Aws;
#[allow(unused_imports)]
pub use fabric::{fetch_in, sh, sh_ok, Fabric, OfficeServer};
#[allow(unused_imports)]
pub use server_database::ServerDatabase;

pub fn nubo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nubo")
}

pub fn image_cache() -> PathBuf {
    std::env::var_os("NUBO_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/images"))
}

/// The aws CLI and boto3, pinned so that every run drives the same client
/// code.
pub const AWS_PIP_PACKAGES: &[&str] = &["awscli==1.46.3", "boto3==1.44.8"];

/// Ansible with its bundled `amazon.aws` collection (PyPI's `ansible`
/// package; ansible-galaxy's server is not needed) and the boto3 that
/// the collection drives, pinned as [`AWS_PIP_PACKAGES`] are.
pub const ANSIBLE_PIP_PACKAGES: &[&str] = &["ansible==12.3.0", "boto3==1.44.8"];

/// The virtualenv with `aws` and boto3 (`<repo>/.cache/venv-aws`), made
/// when missing (needs PyPI) and shared by every test that drives them.
pub fn aws_venv() -> PathBuf {
    venv("venv-aws", AWS_PIP_PACKAGES, "aws")
}

/// The virtualenv with `ansible-playbook` (`<repo>/.cache/venv-ansible`).
pub fn ansible_venv() -> PathBuf {
    venv("venv-ansible", ANSIBLE_PIP_PACKAGES, "ansible-playbook")
}

/// `<repo>/.cache/NAME`, a virtualenv with `packages` installed, made
/// when missing or when the pins changed; `program` is one of its
/// commands, checked to be there.
fn venv(name: &str, packages: &[&str], program: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache").join(name);
    std::fs::create_dir_all(dir.parent().expect("cache dir")).expect("create .cache");
    // Tests run in processes side by side: the first makes the venv while
    // the others wait on this lock, instead of all writing into one venv.
    let lock = std::fs::File::create(dir.with_extension("lock")).expect("the venv's lock file");
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "cannot lock {}: {}", dir.display(), std::io::Error::last_os_error());
    let ready = dir.join(".nubo-ready");
    let want = packages.join(" ");
    if std::fs::read_to_string(&ready).ok().as_deref() == Some(want.as_str()) && dir.join("bin").join(program).exists()
    {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().expect("cache dir")).expect("create .cache");
    // Debian's python3 (with python3-venv) rather than a pyenv shim.
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let st = Command::new(python).args(["-m", "venv"]).arg(&dir).status().expect("run python3 -m venv");
    assert!(st.success(), "python3 -m venv failed: install python3-venv (scripts/install-deps.sh does)");
    let st = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("run pip");
    assert!(st.success(), "pip install {want} failed (it needs PyPI)");
    std::fs::write(&ready, &want).expect("mark the venv ready");
    dir
}

/// Polls `f` every 100 ms until it returns Some, or panics after `limit`
/// with `what` (no fixed sleeps in tests).
pub fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {:?} waiting for {what}", limit);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One HTTP/1.0 request to `addr` (`127.0.0.1:PORT`); the raw response.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).ok()?;
    // Keep what arrived even if the connection then ends with a reset
    // (slirp passes on a guest's abortive close).
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    (!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Claims one of 100 windows of 100 host ports (20000-29999) for a
/// cloud's forwarded ports and balancers. Holding a listener on
/// 127.0.0.1:(19800 + window) is the claim, so clouds of tests running side
/// by side, in any process, never share a window (a window picked from a
/// hash of the pid once did collide, and a guest's port was already taken).
fn claim_port_window() -> (std::net::TcpListener, String) {
    let start = (std::process::id() as usize).wrapping_mul(31).wrapping_add(usize::from(free_port())) % 100;
    for k in 0..100 {
        let window = (start + k) % 100;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", 19800 + window as u16)) {
            let first = 20000 + window as u16 * 100;
            return (l, format!("{first}-{}", first + 99));
        }
    }
    panic!("all 100 port windows (claims on 127.0.0.1:19800-19899) are held by other test clouds");
}

/// Capacity every test host offers, so results do not depend on the machine.
/// Monitoring samples every 2 s, so tests see metrics move quickly.
pub const HOST_ARGS: &[&str] = &[
    "--vcpus",
    "4",
    "--memory-mib",
    "4096",
    "--disk-gib",
    "200",
    "--accel",
    "tcg",
    "--stop-grace-secs",
    "5",
    "--metrics-interval-secs",
    "2",
];

/// [`HOST_ARGS`] without `--disk-gib`: the host offers the size of its
/// data directory's file system, as a host started by the README does.
pub fn host_args_measuring_disk() -> Vec<&'static str> {
    let at = HOST_ARGS.iter().position(|a| *a == "--disk-gib").expect("HOST_ARGS has --disk-gib");
    HOST_ARGS.iter().enumerate().filter(|(i, _)| *i != at && *i != at + 1).map(|(_, a)| *a).collect()
}

pub struct Cloud {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub token: String,
    pub agent_token: String,
    server: Option<Child>,
    agent: Option<Child>,
    /// Agents started by `start_host`, by host name.
    hosts: Vec<(String, Child)>,
    /// Extra arguments of `nubo server` (`server_with`).
    server_args: Vec<String>,
    /// A second `nubo server` on the same PostgreSQL (`two_servers`): its
    /// URL and process; its data directory is `DIR/server-b`.
    pub second_url: Option<String>,
    second: Option<Child>,
    /// `nubo up` (true) or `nubo server` + `nubo agent` (false).
    all_in_one: bool,
    listen: String,
    /// The host ports this cloud forwards from (FIRST-LAST), and the
    /// listener that holds that window for it (see `claim_port_window`).
    port_range: String,
    _port_window: std::net::TcpListener,
    /// The cloud's PostgreSQL database (with `NUBO_TEST_DATABASE`); last,
    /// so it is dropped after `Drop` has stopped the server.
    db: Option<nubo_controlplane::testdb::TestDatabase>,
}

/// A fresh database when `NUBO_TEST_DATABASE` is set (set to anything
/// but a PostgreSQL URL, the test fails and says why). The harness is
/// synchronous, and may be called from inside a test's runtime: the
/// database is made on a thread with a runtime of its own.
fn test_database() -> Option<nubo_controlplane::testdb::TestDatabase> {
    let made = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(nubo_controlplane::testdb::from_env()).map_err(|e| e.to_string())
    })
    .join()
    .expect("test database thread");
    made.unwrap_or_else(|e| panic!("{e}"))
}

impl Cloud {
    /// `nubo up` in a fresh data directory.
    pub fn up() -> Self {
        let mut c = Self::fresh(true);
        c.start_server();
        c
    }

    /// `nubo up ARGS...` in a fresh data directory.
    pub fn up_with(args: &[&str]) -> Self {
        let mut c = Self::fresh(true);
        c.server_args = args.iter().map(|a| a.to_string()).collect();
        c.start_server();
        c
    }

    /// `nubo server` and a separate `nubo agent` process.
    pub fn split() -> Self {
        let mut c = Self::fresh(false);
        c.start_server();
        c.start_agent();
        c
    }

    /// Two `nubo server` processes on one PostgreSQL (needs
    /// `NUBO_TEST_DATABASE`; None without it) and one `nubo agent` given
    /// both addresses. The second server has a data directory of its own
    /// with a copy of the first one's sealing key, as an operator sets a
    /// second server up.
    pub fn two_servers() -> Option<Self> {
        let mut c = Self::fresh(false);
        c.db.as_ref()?;
        c.start_server();
        let dir = c.dir.path().join("server-b");
        std::fs::create_dir_all(&dir).expect("server-b dir");
        std::fs::copy(c.dir.path().join("secret.key"), dir.join("secret.key")).expect("copy the sealing key");
        let listen = format!("127.0.0.1:{}", free_port());
        let mut cmd = c.server_command(false, &dir, &listen, "server-b.log");
        c.second = Some(cmd.spawn().expect("spawn the second nubo server"));
        wait_until("the second server's admin.env", Duration::from_secs(120), || {
            std::fs::read_to_string(dir.join("admin.env")).ok()
        });
        c.second_url = Some(format!("http://{listen}"));
        c.start_agent();
        Some(c)
    }

    fn fresh(all_in_one: bool) -> Self {
        let window = claim_port_window();
        Cloud {
            dir: tempfile::tempdir().expect("tempdir"),
            url: String::new(),
            token: String::new(),
            agent_token: String::new(),
            server: None,
            agent: None,
            hosts: Vec::new(),
            server_args: Vec::new(),
            second_url: None,
            second: None,
            all_in_one,
            listen: format!("127.0.0.1:{}", free_port()),
            port_range: window.1,
            _port_window: window.0,
            db: test_database(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn agent_dir(&self) -> PathBuf {
        if self.all_in_one {
            self.dir.path().to_path_buf()
        } else {
            self.dir.path().join("agent")
        }
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(name)).expect("log file")
    }

    /// `nubo up` (all in one) or `nubo server` with its data in `dir`,
    /// listening on `listen`, logging to `log` in the cloud's directory:
    /// this cloud's port window, database and extra server arguments.
    fn server_command(&self, all_in_one: bool, dir: &Path, listen: &str, log: &str) -> Command {
        let mut cmd = Command::new(nubo_bin());
        if all_in_one {
            cmd.arg("up").args(HOST_ARGS).arg("--host-name").arg("test-host");
            // As root, `nubo up` would make its host network, a bridge with
            // a private range, in this machine's own namespace: only a test
            // that gives it a namespace of its own (`--netns`) gets one.
            if !self.server_args.iter().any(|a| a == "--netns") {
                cmd.arg("--no-host-network");
            }
        } else {
            cmd.arg("server");
        }
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(listen)
            .arg("--port-range")
            .arg(&self.port_range)
            .args(self.db.iter().flat_map(|db| ["--database", db.url.as_str()]))
            .args(&self.server_args)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env("RUST_LOG", "info")
            .stdout(self.log(log))
            .stderr(self.log(log));
        cmd
    }

    pub fn start_server(&mut self) {
        let env_file = self.dir.path().join("admin.env");
        let _ = std::fs::remove_file(&env_file);
        let mut cmd = self.server_command(self.all_in_one, self.dir.path(), &self.listen, "server.log");
        self.server = Some(cmd.spawn().expect("spawn nubo"));
        let text = wait_until("admin.env", Duration::from_secs(600), || std::fs::read_to_string(&env_file).ok());
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .expect("admin.env value")
        };
        self.url = get("NUBO_URL");
        self.token = get("NUBO_TOKEN");
        if !self.all_in_one {
            // `nubo server` writes join.token after admin.env.
            let file = self.dir.path().join("join.token");
            self.agent_token = wait_until("join.token", Duration::from_secs(60), || {
                std::fs::read_to_string(&file).ok().filter(|t| t.ends_with('\n'))
            })
            .trim()
            .to_string();
        }
    }

    pub fn start_agent(&mut self) {
        assert!(!self.all_in_one);
        let mut cmd = Command::new(nubo_bin());
        cmd.arg("agent")
            .args(HOST_ARGS)
            .arg("--host-name")
            .arg("test-agent")
            .arg("--server")
            .arg(match &self.second_url {
                Some(b) => format!("{},{b}", self.url),
                None => self.url.clone(),
            })
            .arg("--join-token")
            .arg(&self.agent_token)
            .arg("--data-dir")
            .arg(self.agent_dir())
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env("RUST_LOG", "info")
            .stdout(self.log("agent.log"))
            .stderr(self.log("agent.log"));
        self.agent = Some(cmd.spawn().expect("spawn nubo agent"));
        wait_until("a registered host", Duration::from_secs(600), || {
            let hosts = self.api_get("/api/v1/hosts").ok()?;
            (hosts.as_array()?.iter().any(|h| h["state"] == "up")).then_some(())
        });
    }

    /// `nubo server` alone; hosts join with [`Cloud::start_host`].
    pub fn server_only() -> Self {
        Self::server_with(&[])
    }

    /// `nubo server ARGS...` alone.
    pub fn server_with(args: &[&str]) -> Self {
        let mut c = Self::fresh(false);
        c.server_args = args.iter().map(|a| a.to_string()).collect();
        c.start_server();
        c
    }

    /// The data directory of the host `name` of [`Cloud::start_host`].
    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{name}"))
    }

    /// Starts an agent for host `name` (data dir `DIR/agent-NAME`, log
    /// `agent-NAME.log`) with `extra` arguments, and waits until it is up.
    pub fn start_host(&mut self, name: &str, extra: &[&str]) {
        self.start_host_with(name, HOST_ARGS, extra);
    }

    /// [`Cloud::start_host`] with `host_args` in place of [`HOST_ARGS`]
    /// (e.g. [`host_args_measuring_disk`]).
    pub fn start_host_with(&mut self, name: &str, host_args: &[&str], extra: &[&str]) {
        assert!(!self.all_in_one);
        let dir = self.host_dir(name);
        let log = format!("agent-{name}.log");
        // Join tokens are single-use: each host gets one of its own.
        let token = self.nubo_ok(&["host", "join-token"]).trim().to_string();
        let mut cmd = Command::new(nubo_bin());
        cmd.arg("agent")
            .args(host_args)
            .arg("--host-name")
            .arg(name)
            .arg("--server")
            .arg(&self.url)
            .arg("--join-token")
            .arg(&token)
            .arg("--data-dir")
            .arg(&dir)
            .args(extra)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .env("RUST_LOG", "info")
            .stdout(self.log(&log))
            .stderr(self.log(&log));
        self.hosts.push((name.to_string(), cmd.spawn().expect("spawn nubo agent")));
        wait_until(&format!("host {name} up"), Duration::from_secs(600), || {
            if let Some((_, c)) = self.hosts.iter_mut().find(|(n, _)| n == name) {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("the agent of host {name} exited ({status}); see {log}");
                }
            }
            let hosts = self.api_get("/api/v1/hosts").ok()?;
            (hosts.as_array()?.iter().any(|h| h["name"] == name && h["state"] == "up")).then_some(())
        });
    }

    /// Starts an agent in each of `fabric`'s first `hosts` hosts, mapping
    /// the office LAN (`Fabric::office`) as `lan`, and creates the external
    /// network `lan` on it (192.168.50.0/24, router .1, pool .100-.199).
    pub fn start_hosts_on_the_office_lan(&mut self, fabric: &Fabric, hosts: u32) {
        for i in 1..=hosts {
            let h = fabric.ns(&format!("h{i}"));
            let underlay = format!("192.168.77.{i}");
            self.start_host(&format!("h{i}"), &["--underlay", &underlay, "--netns", &h, "--external", "lan=lan0"]);
        }
        self.nubo_ok(&[
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
    }

    /// SIGKILL of a `start_host` agent, as a crash would (its VMs run on).
    pub fn kill_host(&mut self, name: &str) {
        if let Some(pos) = self.hosts.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.hosts.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The (first) server's process id, to kill it while `&self` is shared.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|c| c.id())
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI with this cloud's credentials.
    /// Creates the user `user` with `password` (typed on stdin, as a
    /// person would) and makes it a member of `project`.
    pub fn create_member(&self, project: &str, user: &str, password: &str) {
        let mut c = Command::new(nubo_bin())
            .args(["user", "create", user])
            .env("NUBO_URL", &self.url)
            .env("NUBO_TOKEN", &self.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("nubo user create");
        c.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("password");
        assert!(c.wait().expect("user create").success(), "nubo user create {user} failed");
        self.nubo_ok(&["project", "add-member", project, user, "--role", "member"]);
    }

    pub fn nubo(&self, args: &[&str]) -> std::process::Output {
        Command::new(nubo_bin())
            .args(args)
            .env("NUBO_URL", &self.url)
            .env("NUBO_TOKEN", &self.token)
            .env("NUBO_IMAGE_CACHE", image_cache())
            .stdin(Stdio::null())
            .output()
            .expect("run nubo")
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn nubo_ok(&self, args: &[&str]) -> String {
        let out = self.nubo(args);
        assert!(
            out.status.success(),
            "nubo {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn nubo_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.nubo_ok(&a)).expect("json output")
    }

    pub fn api_get(&self, path: &str) -> Result<Value, String> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg(format!("{}{path}", self.url))
            .output()
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// POST a JSON body with this cloud's token; the JSON answer.
    pub fn api_post(&self, path: &str, body: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-X", "POST", "-H", "Content-Type: application/json", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg("--data-binary")
            .arg(body)
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// PUT a file as the raw body; the HTTP status and the body.
    pub fn api_put_file(&self, path: &str, file: &Path) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "60", "-X", "PUT", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .args(["-H", "Content-Type: application/octet-stream", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The directory of the builtin image `name` in the shared image cache.
    pub fn image_of(&self, name: &str) -> String {
        let cache = image_cache();
        let sha = std::fs::read_to_string(cache.join("names").join(name)).expect("image name in the cache");
        cache.join("sha256").join(sha.trim()).display().to_string()
    }

    pub fn instance(&self, id: &str) -> Value {
        self.nubo_json(&["instance", "show", id])
    }

    pub fn wait_state(&self, id: &str, state: &str, limit: Duration) -> Value {
        wait_until(&format!("{id} to be {state}"), limit, || {
            let i = self.instance(id);
            assert_ne!(i["state"], "error", "instance went to error: {i}");
            (i["state"] == state).then_some(i)
        })
    }

    pub fn console(&self, id: &str) -> String {
        self.nubo_ok(&["instance", "console", id])
    }

    /// Waits until the console contains `needle` `count` times.
    pub fn wait_console(&self, id: &str, needle: &str, count: usize, limit: Duration) -> String {
        wait_until(&format!("'{needle}' x{count} on the console of {id}"), limit, || {
            let c = self.console(id);
            (c.matches(needle).count() >= count).then_some(c)
        })
    }

    /// The pid of an instance's QEMU, from the agent's pidfile.
    pub fn qemu_pid(&self, id: &str) -> Option<i32> {
        let p = self.agent_dir().join("instances").join(id).join("qemu.pid");
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }
}

pub fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie is not "alive" for us.
    // SAFETY: kill with signal 0 only checks; it has no memory effects.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(true);
    exists && !zombie
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill_agent();
        self.kill_server();
        if let Some(mut c) = self.second.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names: Vec<String> = self.hosts.iter().map(|(n, _)| n.clone()).collect();
        for n in &names {
            self.kill_host(n);
        }
        // Leave no VM (nor dnsmasq of a private network) behind.
        let mut agent_dirs = vec![self.agent_dir()];
        agent_dirs.extend(names.iter().map(|n| self.dir.path().join(format!("agent-{n}"))));
        // Hosts of a test may keep disks on storage they share.
        agent_dirs.push(self.dir.path().join("shared"));
        for dir in &agent_dirs {
            for (sub, pidfile) in [("instances", "qemu.pid"), ("networks", "dnsmasq.pid")] {
                let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
                for e in entries.flatten() {
                    if let Some(pid) =
                        std::fs::read_to_string(e.path().join(pidfile)).ok().and_then(|s| s.trim().parse::<i32>().ok())
                    {
                        // SAFETY: kill takes plain integers; a stale pid is an error, not UB.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        // On failure, show what the daemons said.
        if std::thread::panicking() {
            let mut logs: Vec<String> = ["server.log", "server-b.log", "agent.log"].map(String::from).to_vec();
            logs.extend(names.iter().map(|n| format!("agent-{n}.log")));
            for log in &logs {
                if let Ok(text) = std::fs::read_to_string(self.dir.path().join(log)) {
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
                    eprintln!("---- last lines of {log} ----");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

/// Runs `script` with `/bin/sh -c` in guest `id` through its guest agent
/// (30 s at most): its exit code (-1 when there is none) and its output,
/// stdout then stderr.
pub fn guest(cloud: &Cloud, id: &str, script: &str) -> (i32, String) {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "30", "--", "/bin/sh", "-c", script]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `script` with `/bin/sh -c` in guest `id` (60 s at most) and
/// expects it to succeed; its stdout.
pub fn guest_sh(cloud: &Cloud, id: &str, script: &str) -> String {
    let out = cloud.nubo(&["instance", "exec", id, "--timeout", "60", "--", "/bin/sh", "-c", script]);
    assert!(
        out.status.success(),
        "`{script}` in {id} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` in the guest, then prints its exit code
/// (`probe-exit=N`) and `probe-done`; its output, once it is sure the
/// exec itself ran: "no answer" from a guest must mean the connection
/// failed, not that the probe never ran (no guest agent, a timeout).
pub fn guest_probe(cloud: &Cloud, id: &str, script: &str) -> String {
    let (code, text) = guest(cloud, id, &format!("{script}; echo probe-exit=$?; echo probe-done"));
    assert!(code == 0 && text.contains("probe-done"), "the probe did not run in {id} (exit {code}): {text}");
    text
}
