//! Test fixtures shared across crates' test targets (a dev-dependency
//! only). Fixtures that one crate's tests share stay in that crate's
//! `tests/common`; what lives here is used by tests of several crates.
//! Like all test code it may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod slapd;

/// A TCP port free on 127.0.0.1 right now (the kernel's pick for port 0),
/// for a server a test starts. Panics when none can be had.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A program of Debian's `prometheus` package (`prometheus`, `promtool`):
/// as scripts/install-deps.sh unpacks it into the source tree's
/// `.cache/tools`, else from PATH.
pub fn prometheus_program(name: &str) -> String {
    let unpacked =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/tools/prometheus/usr/bin").join(name);
    if unpacked.is_file() {
        return unpacked.display().to_string();
    }
    name.into()
}
