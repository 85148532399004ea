//! Where a balancer's sockets are made: in the process's own network
//! namespace, or in another one. A balancer in front of instances on a
//! private network runs in a namespace with a leg on that network, so its
//! listener and every connection to a backend (proxied requests, TCP
//! relays and health checks alike) must be made there.
//!
//! A socket belongs to the namespace it was created in, whichever thread
//! uses it afterwards; so only the creation happens on a thread that
//! entered the namespace (`setns` changes one thread), which lives as long
//! as the balancer and makes sockets on request. Connecting, reading and
//! writing then happen on the runtime as usual.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

enum Request {
    /// A fresh non-blocking IPv4 stream socket.
    Socket(oneshot::Sender<io::Result<OwnedFd>>),
    /// A listener bound to the address.
    Listen(SocketAddr, mpsc::Sender<io::Result<std::net::TcpListener>>),
}

/// A thread inside a network namespace that makes sockets there.
pub struct Netns {
    requests: std::sync::Mutex<mpsc::Sender<Request>>,
}

impl Netns {
    /// Enters the namespace at `path` (`/run/netns/NAME`) on a thread of
    /// its own; fails if it cannot be entered.
    pub fn enter(path: &Path) -> io::Result<Arc<Self>> {
        let file = std::fs::File::open(path)?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new().name("nubo-lb-netns".into()).spawn(move || {
            // SAFETY: setns with a namespace descriptor we own; it changes only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = ready_tx.send(Err(io::Error::last_os_error()));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            // Ends when the balancer (the last sender) is dropped.
            for request in rx {
                match request {
                    Request::Socket(reply) => {
                        let _ = reply.send(new_socket());
                    }
                    Request::Listen(addr, reply) => {
                        let _ = reply.send(std::net::TcpListener::bind(addr));
                    }
                }
            }
        })?;
        ready_rx.recv().map_err(|_| io::Error::other("the namespace thread ended at once"))??;
        Ok(Arc::new(Self { requests: std::sync::Mutex::new(tx) }))
    }

    fn send(&self, r: Request) -> io::Result<()> {
        let tx = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(r).map_err(|_| io::Error::other("the namespace thread is gone"))
    }

    async fn socket(&self) -> io::Result<TcpSocket> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Socket(reply))?;
        let fd = answer.await.map_err(|_| io::Error::other("the namespace thread is gone"))??;
        // SAFETY: a stream socket just made, owned by nothing else.
        Ok(unsafe { TcpSocket::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) })
    }

    /// A listener bound inside the namespace (blocking: at start only).
    pub fn listen(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        // A std channel: this may run on a runtime's thread, where a
        // oneshot's blocking receive is refused; binding takes microseconds.
        let (reply, answer) = mpsc::channel();
        self.send(Request::Listen(addr, reply))?;
        answer.recv().map_err(|_| io::Error::other("the namespace thread is gone"))?
    }
}

fn new_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects to backends, in the balancer's namespace; also hyper's
/// connector for proxied requests and HTTP health checks.
#[derive(Clone, Default)]
pub struct Dialer {
    netns: Option<Arc<Netns>>,
    timeout: Option<Duration>,
}

impl Dialer {
    pub fn new(netns: Option<Arc<Netns>>) -> Self {
        Self { netns, timeout: None }
    }

    /// The same dialer, giving up on a connect after `timeout`.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { netns: self.netns.clone(), timeout: Some(timeout) }
    }

    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let connect = async {
            let stream = match &self.netns {
                None => TcpStream::connect(addr).await?,
                Some(ns) if addr.is_ipv4() => ns.socket().await?.connect(addr).await?,
                Some(_) => {
                    return Err(io::Error::new(io::ErrorKind::Unsupported, "only IPv4 backends inside a namespace"))
                }
            };
            let _ = stream.set_nodelay(true);
            Ok(stream)
        };
        match self.timeout {
            Some(t) => tokio::time::timeout(t, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {t:?}")))?,
            None => connect.await,
        }
    }
}

/// The backend of a request URI: backends are addresses (`10.0.0.5:80`),
/// never names, so no resolver is involved.
fn target(uri: &hyper::Uri) -> io::Result<SocketAddr> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in the URI"))?;
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("backend {host} is not an address")))?;
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

impl tower_service::Service<hyper::Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let addr = target(&uri)?;
            Ok(TokioIo::new(dialer.connect(addr).await?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_addresses() {
        let a = target(&"http://10.0.0.5:8080/x".parse().unwrap()).unwrap();
        assert_eq!(a, "10.0.0.5:8080".parse().unwrap());
        assert_eq!(target(&"http://10.0.0.5/".parse().unwrap()).unwrap().port(), 80);
        assert!(target(&"http://example.com/".parse().unwrap()).is_err(), "no name is resolved");
    }

    /// Needs root (it makes a network namespace), as the tests of
    /// private networks do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_namespace_s_listener_and_connections_stay_in_it() {
        let name = format!("nubolbdial{}", std::process::id());
        let run = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap().success();
        assert!(run(&["netns", "add", &name]), "this test makes a network namespace: run it as root");
        assert!(run(&["-n", &name, "link", "set", "lo", "up"]));
        let ns = Netns::enter(&std::path::PathBuf::from("/run/netns").join(&name)).unwrap();
        let inside = ns.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        inside.set_nonblocking(true).unwrap();
        let inside = tokio::net::TcpListener::from_std(inside).unwrap();
        let addr = inside.local_addr().unwrap();
        let accepted = tokio::spawn(async move { inside.accept().await.map(|(_, peer)| peer) });
        // Inside: the dialer reaches it. Outside: the same address is another machine's loopback.
        let d = Dialer::new(Some(ns.clone())).with_timeout(Duration::from_secs(2));
        let s = d.connect(addr).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
        assert!(accepted.await.unwrap().is_ok());
        let outside = Dialer::default().with_timeout(Duration::from_secs(1)).connect(addr).await;
        assert!(outside.is_err(), "the namespace's listener was reachable from outside it");
        drop((d, ns));
        assert!(run(&["netns", "del", &name]));
    }

    #[tokio::test]
    async fn the_default_dialer_connects_in_this_namespace() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let d = Dialer::default().with_timeout(Duration::from_secs(2));
        let s = d.connect(addr).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
    }
}
