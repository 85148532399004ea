//! `nubo image import URL` against a real `nubo server` (no host, no VM)
//! started with `--image-url-allow 127.0.0.1`, fetching from an HTTP server
//! on 127.0.0.1 that the test runs and that sends the file slowly: the CLI
//! shows the fetch's progress, a line a second, until the image is stored;
//! a checksum mismatch fails the command with the expected and the actual
//! SHA-256; a host the operator did not allow is refused naming the setting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

const SIZE: usize = 4 << 20;

fn disk() -> Vec<u8> {
    (0..SIZE as u32).map(|i| (i % 251) as u8).collect()
}

/// Serves `disk()` at any path, 128 KiB every 100 ms (about 3 s in all),
/// with its length announced. Returns the base URL.
fn slow_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let mut s = r.into_inner();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n");
                if s.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for piece in disk().chunks(128 << 10) {
                    std::thread::sleep(Duration::from_millis(100));
                    if s.write_all(piece).is_err() {
                        return;
                    }
                }
            });
        }
    });
    base
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn the_cli_follows_a_url_import_and_fails_on_a_checksum_mismatch() {
    let cloud = Cloud::server_with(&["--image-url-allow", "127.0.0.1"]);
    let base = slow_server();
    let sum = sha256(&disk());

    let url = format!("{base}/images/web-disk.raw");
    let out = cloud.nubo(&["image", "import", &url, "--sha256", &sum]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    println!("{stderr}");
    // Lines of progress part-way (not 0, not 100%), then the stored image.
    let partway = stderr
        .lines()
        .filter_map(|l| l.split('%').next()?.split_whitespace().last()?.parse::<f64>().ok())
        .filter(|p| *p > 0.0 && *p < 100.0)
        .count();
    assert!(partway >= 1, "no progress line part-way:\n{stderr}");
    assert!(stderr.contains("of 4.0 MiB"), "{stderr}");
    assert!(stderr.contains(&format!("stored: web-disk (4.0 MiB, sha256 {sum})")), "{stderr}");
    let image = cloud.nubo_json(&["image", "show", "web-disk"]);
    assert_eq!(image["state"], "active");
    assert_eq!(image["sha256"], sum.as_str());
    assert_eq!(image["job"]["url"], url.as_str());

    // A checksum mismatch: the command fails with both sums, the image
    // is in error, and it says why.
    let wrong = "ab".repeat(32);
    let out = cloud.nubo(&["image", "import", &url, "--sha256", &wrong, "--name", "tampered"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("expected {wrong}")) && stderr.contains(&format!("got {sum}")), "{stderr}");
    let image = cloud.nubo_json(&["image", "show", "tampered"]);
    assert_eq!(image["state"], "error");

    // A host the operator did not allow: refused at once, naming the setting.
    let other = url.replace("127.0.0.1", "127.0.0.2");
    let out = cloud.nubo(&["image", "import", &other, "--name", "elsewhere"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(stderr.contains("127.0.0.2") && stderr.contains("--image-url-allow"), "{stderr}");

    // Without a format the URL's extension does not give, the CLI asks for one.
    let out = cloud.nubo(&["image", "import", &format!("{base}/disk"), "--name", "noext"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format"));
}
