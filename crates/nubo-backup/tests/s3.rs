//! A repository in an S3 bucket: a real S3 server (PyPI's moto in server
//! mode, from a virtualenv in `<repo>/.cache/venv-moto` made on first use
//! the way the end-to-end tests make `.cache/venv-aws`) on 127.0.0.1.
//! Backups are written, restored and pruned through it, under a prefix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nubo_api::backup::RepositoryLocation;

/// moto with its server extra, pinned so every run drives the same server.
const MOTO: &str = "moto[server]==5.2.6";

/// `<repo>/.cache/venv-moto` with moto installed, made when missing (needs
/// PyPI); `Err` says why it could not be made.
fn moto_venv() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv-moto");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    // Test processes side by side: one makes the venv, the others wait.
    let lock = std::fs::File::create(dir.with_extension("lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(locked, 0, "cannot lock {}: {}", dir.display(), std::io::Error::last_os_error());
    let ready = dir.join(".nubo-ready");
    // A venv made at another path (a moved checkout) has scripts that
    // point at a python that is gone: only one whose python imports moto
    // counts as made.
    let works = || {
        Command::new(dir.join("bin/python"))
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if std::fs::read_to_string(&ready).ok().as_deref() == Some(MOTO) && works() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let st = Command::new(python).args(["-m", "venv"]).arg(&dir).status().map_err(|e| format!("python3: {e}"))?;
    if !st.success() {
        return Err("python3 -m venv failed: install python3-venv (scripts/install-deps.sh does)".into());
    }
    let st = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", MOTO])
        .status()
        .map_err(|e| format!("pip: {e}"))?;
    if !st.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!("pip install {MOTO} failed (it needs PyPI)"));
    }
    std::fs::write(&ready, MOTO).unwrap();
    Ok(dir)
}

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, request: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn moto(venv: &Path) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(venv.join("bin/python"))
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Moto { child, port };
    let start = Instant::now();
    loop {
        let r = http(port, "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        if r.is_some_and(|r| r.starts_with("HTTP/1.")) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "moto did not answer on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repository() {
    let venv = match moto_venv() {
        Ok(v) => v,
        Err(why) => {
            println!("SKIPPED s3_repository: no S3 server to test against: {why}");
            return;
        }
    };
    let server = moto(&venv);
    // moto accepts unsigned requests: make the bucket with a plain PUT.
    let created =
        http(server.port, "PUT /nubo-backups HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(created.starts_with("HTTP/1.0 200") || created.starts_with("HTTP/1.1 200"), "{created}");
    let tmp = tempfile::tempdir().unwrap();
    let location = RepositoryLocation::S3 {
        endpoint: format!("http://127.0.0.1:{}", server.port),
        region: "us-east-1".into(),
        bucket: "nubo-backups".into(),
        prefix: "cloud-1/repo".into(),
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret".into(),
    };
    common::scenario(location, tmp.path(), None).await;
    // Everything went under the prefix, and no object holds the disk's
    // marker in the clear (read back with the store's own client).
    let creds = s3::creds::Credentials::new(Some("AKIDTEST"), Some("secret"), None, None, None).unwrap();
    let region =
        s3::Region::Custom { region: "us-east-1".into(), endpoint: format!("http://127.0.0.1:{}", server.port) };
    let bucket = s3::Bucket::new("nubo-backups", region, creds).unwrap().with_path_style();
    let objects: Vec<String> =
        bucket.list(String::new(), None).await.unwrap().into_iter().flat_map(|p| p.contents).map(|o| o.key).collect();
    assert!(objects.len() > 10, "{objects:?}");
    assert!(objects.iter().all(|k| k.starts_with("cloud-1/repo/")), "{objects:?}");
    assert!(objects.iter().any(|k| k == "cloud-1/repo/config"), "{objects:?}");
    let marker = common::MARKER.as_bytes();
    for key in objects {
        let object = bucket.get_object(&key).await.unwrap();
        assert_eq!(object.status_code(), 200, "GET {key}");
        assert!(!object.as_slice().windows(marker.len()).any(|w| w == marker), "the marker is readable in {key}");
    }
}
