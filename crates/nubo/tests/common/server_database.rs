//! The database of a `nubo server` (or `nubo up`) that a test starts by
//! hand rather than through [`super::Cloud`]: with `NUBO_TEST_DATABASE`
//! set, a PostgreSQL database of its own, made (and dropped) the way the
//! harness makes a cloud's; without it, none, and the server keeps SQLite
//! in its data directory. A server inside a network namespace cannot see
//! the root namespace's loopback, where PostgreSQL listens: it gets a
//! relay, a listener on that namespace's 127.0.0.1 that pipes each
//! connection to PostgreSQL's address (loopback to loopback, nothing
//! else).

use nubo_controlplane::testdb::TestDatabase;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;

/// One hand-started server's database. Declare it before the server's
/// process guard, so the server stops before its database is dropped.
pub struct ServerDatabase {
    /// Listeners of the relays into namespaces, shut on drop.
    relays: Vec<TcpListener>,
    db: Option<TestDatabase>,
}

impl ServerDatabase {
    /// A fresh database when `NUBO_TEST_DATABASE` is set; none otherwise.
    pub fn from_env() -> Self {
        ServerDatabase { relays: Vec::new(), db: super::test_database() }
    }

    /// `--database URL` for a server in the root network namespace, or
    /// nothing (SQLite).
    pub fn args(&self) -> Vec<String> {
        self.db.iter().flat_map(|db| ["--database".to_string(), db.url.clone()]).collect()
    }

    /// `--database URL` for a server inside network namespace `ns` (made
    /// by the test), through a relay on that namespace's 127.0.0.1; or
    /// nothing (SQLite).
    pub fn args_in_netns(&mut self, ns: &str) -> Vec<String> {
        let Some(db) = &self.db else { return Vec::new() };
        let (authority, target) = postgres_address(&db.url);
        let listener = listener_in_netns(ns);
        let port = listener.local_addr().expect("the relay's address").port();
        let relay = listener.try_clone().expect("a handle on the relay's listener");
        std::thread::spawn(move || {
            // Ends when Drop shuts the listener down.
            for inbound in relay.incoming() {
                let Ok(inbound) = inbound else { break };
                std::thread::spawn(move || pipe(inbound, target));
            }
        });
        self.relays.push(listener);
        vec!["--database".to_string(), db.url.replacen(&authority, &format!("127.0.0.1:{port}"), 1)]
    }

    /// Checks that the server whose data directory is `data_dir` keeps its
    /// state where this test meant it to: in this PostgreSQL database
    /// (which holds its bootstrap admin, and no SQLite file next to it),
    /// or, without `NUBO_TEST_DATABASE`, in SQLite in `data_dir`.
    pub fn assert_used_by(&self, data_dir: &Path) {
        let sqlite = data_dir.join("nubo.db");
        let Some(db) = &self.db else {
            assert!(sqlite.exists(), "no SQLite database at {}", sqlite.display());
            return;
        };
        assert!(
            !sqlite.exists(),
            "the server keeps SQLite at {}: it was not given --database, or did not use it",
            sqlite.display()
        );
        let url = db.url.clone();
        let admin = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let store = nubo_controlplane::store::Store::connect(&url).await.expect("connect to the test database");
                store.user_by_name(nubo_controlplane::identity::BOOTSTRAP_ADMIN).await.expect("read the users")
            })
        })
        .join()
        .expect("database check thread");
        assert!(admin.is_some(), "the server's PostgreSQL database has no bootstrap admin: the server did not use it");
    }
}

impl Drop for ServerDatabase {
    fn drop(&mut self) {
        for l in &self.relays {
            // Wakes the relay's accept (EINVAL on a shut listener), which ends it.
            // SAFETY: the descriptor belongs to a listener this struct still owns.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

/// The `host:port` part of a `postgres://` URL, and the address it names.
fn postgres_address(url: &str) -> (String, SocketAddr) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host_and_path = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let authority = host_and_path.split(['/', '?']).next().unwrap_or_default().to_string();
    let with_port = if authority.contains(':') { authority.clone() } else { format!("{authority}:5432") };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("NUBO_TEST_DATABASE names no reachable host:port ({authority})"));
    (authority, addr)
}

/// A listener on 127.0.0.1 of namespace `ns`. A socket belongs to the
/// namespace its thread was in when it was made, so a short-lived thread
/// enters `ns` (`setns`), binds, and ends; the socket stays there.
fn listener_in_netns(ns: &str) -> TcpListener {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || -> std::io::Result<TcpListener> {
        let file = std::fs::File::open(&path)?;
        // SAFETY: the descriptor is an open namespace file; setns changes
        // only this short-lived thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        TcpListener::bind("127.0.0.1:0")
    })
    .join()
    .expect("relay thread")
    .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1 in namespace {ns} (run the test as root): {e}"))
}

/// Copies both ways between `inbound` and a new connection to `target`
/// until either side closes.
fn pipe(inbound: TcpStream, target: SocketAddr) {
    let Ok(outbound) = TcpStream::connect(target) else { return };
    let (Ok(mut in_r), Ok(mut out_w)) = (inbound.try_clone(), outbound.try_clone()) else { return };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut in_r, &mut out_w);
        let _ = out_w.shutdown(Shutdown::Write);
    });
    let (mut out_r, mut in_w) = (outbound, inbound);
    let _ = std::io::copy(&mut out_r, &mut in_w);
    let _ = in_w.shutdown(Shutdown::Write);
    let _ = upstream.join();
}
