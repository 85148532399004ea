//! A repository on an SSH server over SFTP: Debian's sshd, run by the
//! test on 127.0.0.1 with its own config, host key and authorized key.
//! Backups are written and restored through it, and a server showing
//! another host key is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nubo_api::backup::RepositoryLocation;
use nubo_backup::{BackupError, RepoKey, Repository};

const SSHD: &str = "/usr/sbin/sshd";

struct Sshd {
    child: Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> (String, String) {
    common::run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "nubo-test", "-f"]).arg(path));
    let private = std::fs::read_to_string(path).unwrap();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (private, public.trim().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// sshd on 127.0.0.1 accepting `client_pub` for the current user.
fn sshd(dir: &Path, client_pub: &str) -> Sshd {
    // sshd refuses to start without its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    keygen(&dir.join("host_key"));
    std::fs::write(dir.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
    let port = free_port();
    let config = format!(
        "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    let child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run sshd (scripts/install-deps.sh installs openssh-server)");
    let server = Sshd { child, port };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "sshd did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

fn user() -> String {
    common::run(Command::new("id").arg("-un")).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_repository() {
    assert!(Path::new(SSHD).exists(), "{SSHD} is missing: install openssh-server (scripts/install-deps.sh does)");
    let tmp = tempfile::tempdir().unwrap();
    let (client_key, client_pub) = keygen(&tmp.path().join("client_key"));
    let server = sshd(tmp.path(), &client_pub);
    let host_key = std::fs::read_to_string(tmp.path().join("host_key.pub")).unwrap();
    let store = tmp.path().join("srv/backups/nubo");
    let location = |host_key: &str, private_key: &str| RepositoryLocation::Sftp {
        host: "127.0.0.1".into(),
        port: server.port,
        user: user(),
        path: store.display().to_string(),
        private_key: private_key.into(),
        host_key: host_key.into(),
    };

    common::scenario(location(host_key.trim(), &client_key), tmp.path(), Some(&store)).await;

    // A server showing another host key is refused before anything is sent.
    let (_, other_host) = keygen(&tmp.path().join("other_host"));
    let err = Repository::open(&location(&other_host, &client_key), &RepoKey::generate()).await.err().unwrap();
    assert!(matches!(err, BackupError::HostKey { .. }), "{err}");
    assert!(err.to_string().contains("host key"), "{err}");
    // A key the server does not accept is a clear login failure.
    let (other_client, _) = keygen(&tmp.path().join("other_client"));
    let err = Repository::open(&location(host_key.trim(), &other_client), &RepoKey::generate()).await.err().unwrap();
    assert!(err.to_string().contains("authorized_keys"), "{err}");
}
