//! A private OpenLDAP server for a test: Debian's `slapd` run from a
//! temporary directory with its own `slapd.conf` and an mdb database
//! loaded with `slapadd`, listening only on `ldap://127.0.0.1:<free
//! port>/`, in the foreground, and killed on drop. The system's own slapd,
//! if any, is not touched.
//!
//! The directory is `dc=nubo,dc=test` with `ou=people`, `ou=services` and
//! `ou=groups`; a test adds its own entries as LDIF ([`person`] builds a
//! user). Passwords are hashed `{SSHA}`, as an administrator would store
//! them. Without slapd installed, [`Slapd::start`] panics: a test of LDAP
//! must not pass without running.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory's base DN.
pub const SUFFIX: &str = "dc=nubo,dc=test";
/// The password of `cn=admin,<SUFFIX>`, the directory's administrator.
pub const ROOT_PW: &str = "root-secret";

const SLAPD: &str = "/usr/sbin/slapd";
const SCHEMA_DIR: &str = "/etc/ldap/schema";
const MODULE_DIR: &str = "/usr/lib/ldap";

/// One running slapd, killed on drop.
pub struct Slapd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Slapd {
    /// Starts a server holding the base entries and `entries` (LDIF).
    pub fn start(entries: &str) -> Slapd {
        assert!(Path::new(SLAPD).exists(), "slapd is not installed: apt-get install slapd ldap-utils");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::create_dir(d.join("db")).expect("db dir");
        let conf = d.join("slapd.conf");
        std::fs::write(&conf, slapd_conf(d)).expect("write slapd.conf");
        let ldif = d.join("base.ldif");
        std::fs::write(&ldif, format!("{}{entries}", base_ldif())).expect("write base.ldif");
        run(Command::new("/usr/sbin/slapadd").arg("-q").arg("-f").arg(&conf).arg("-l").arg(&ldif), None);

        let port = crate::free_port();
        let log = std::fs::File::create(d.join("slapd.log")).expect("slapd.log");
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(&conf)
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start slapd");
        let mut slapd = Slapd { child, port, dir };
        slapd.wait_listening();
        slapd
    }

    fn wait_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("slapd exited ({status}) before listening:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "slapd did not listen on {addr} within 10 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What slapd logged, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// A directory of the test's own, removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs an OpenLDAP client (`ldapmodify`, `ldapdelete`, ...) as the
    /// directory's administrator, with `input` on its standard input.
    pub fn admin(&self, tool: &str, args: &[&str], input: Option<&str>) -> String {
        run(
            Command::new(tool)
                .args(["-x", "-H", &self.url(), "-D", &format!("cn=admin,{SUFFIX}"), "-w", ROOT_PW])
                .args(args),
            input,
        )
    }
}

/// A user `uid=<uid>,ou=<ou>,<SUFFIX>` with `password` ({SSHA}), as LDIF.
pub fn person(uid: &str, ou: &str, password: &str) -> String {
    format!(
        "dn: uid={uid},ou={ou},{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n\
         userPassword: {}\n\n",
        ssha(password)
    )
}

/// `password` hashed the way an administrator would store it.
pub fn ssha(password: &str) -> String {
    run(Command::new("/usr/sbin/slappasswd").args(["-h", "{SSHA}", "-s", password]), None)
}

fn slapd_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "include {SCHEMA_DIR}/core.schema
include {SCHEMA_DIR}/cosine.schema
include {SCHEMA_DIR}/inetorgperson.schema
include {SCHEMA_DIR}/nis.schema
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath {MODULE_DIR}
moduleload back_mdb
database mdb
maxsize 16777216
suffix \"{SUFFIX}\"
rootdn \"cn=admin,{SUFFIX}\"
rootpw {ROOT_PW}
directory {d}/db
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"
    )
}

fn base_ldif() -> String {
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: nubo\no: Nubo test\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n"
    )
}

/// Runs `cmd` (with `input` on its standard input), which must succeed;
/// its trimmed standard output.
fn run(cmd: &mut Command, input: Option<&str>) -> String {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (apt-get install slapd ldap-utils)"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.unwrap_or("").as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
