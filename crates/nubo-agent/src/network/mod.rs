//! Private networks on this host. The plumbing of each network is:
//!
//! ```text
//!  guest eth0 ── tap nt… ─┐
//!  guest eth0 ── tap nt… ─┤ bridge nb<vni> ── vxlan nx<vni> ══ underlay ══ other hosts
//!                         └─ veth nr<vni> ══ gw (router namespace <prefix>r<vni>):
//!                              the gateway address, 169.254.169.254 (metadata), dnsmasq (DHCP, DNS)
//! ```
//!
//! The VXLAN and router ports are isolated from each other on the bridge,
//! so every host answers DHCP, ARP for the gateway and metadata for its own
//! guests only, with the same gateway MAC everywhere (a migrated guest's
//! ARP cache stays right). Each network's router has a namespace of its
//! own, so two projects may use the same range. Security groups become one
//! nftables ruleset for the host (see [`firewall`]); it is replaced in one
//! transaction on every change, and conntrack keeps open flows open.
//! Conntrack's table is split by network (a zone per VNI), so two
//! networks with the same range on one host never share a flow's state.
//!
//! DNS: each router's dnsmasq answers `<instance>.<network>.internal` (and
//! the bare `<instance>`) for every instance on the network, from a hosts
//! file re-read on SIGHUP, and forwards other names to the operator's
//! resolvers (none: it answers only the network's own names).
//!
//! Egress and forwarded ports: each router has an uplink, a veth pair to
//! the host's namespace with a /30 from 100.64.0.0/10 (RFC 6598) chosen by
//! the VNI, so overlapping tenant ranges never meet in the host's routing
//! table. The router masquerades what leaves by it and the host
//! masquerades again towards its own network. A forwarded port (an
//! instance's `--port`) is the host's underlay address and a port from its
//! range: the host DNATs it to the router's uplink, the router DNATs it to
//! the instance, and the instance's security groups still decide.
//!
//! In tests the host is itself a network namespace (`netns`), so several
//! hosts share a machine; everything below is then done inside it.
//!
//! How: links, bridge ports, addresses, routes, proxy ARP entries and the
//! VXLAN forwarding database through netlink ([`netlink`]: the `rtnetlink`
//! crate, a socket opened inside the namespace it changes), taps by the
//! tun driver's ioctls and sysctls by /proc/sys from a thread in the
//! namespace. Command-line tools stay where they are the interface:
//! `ip netns add/del/exec` (a named namespace is iproute2's bind-mount
//! convention, which operators enter with `ip netns exec`), `nft -f` (the
//! ruleset is one atomic transaction, and the text is what `nft list
//! ruleset` shows an operator) and dnsmasq. What was made is read back
//! with the same tools an operator debugs with (`ip -d link`,
//! `bridge fdb`, `nft list ruleset`).

mod balancer_legs;
mod external;
pub mod firewall;
mod garp;
mod host_bridge;
mod netlink;
mod networks;

pub use balancer_legs::balancer_netns;
pub use host_bridge::HostBridge;
use netlink::{Netlink, Route, Set};
pub(crate) use networks::Networks;

use nubo_api::agent::{DesiredNetwork, DesiredState};
use nubo_api::ids::InstanceId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

/// The MTU guests get by DHCP: the underlay's 1500 less VXLAN's 50 bytes.
pub const GUEST_MTU: u32 = 1450;
const VXLAN_PORT: u16 = 4789;

/// How this host runs private networks (`nubo agent --underlay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// This host's address on the underlay; VXLAN tunnels end here.
    pub underlay: Ipv4Addr,
    /// The network namespace the host's bridges live in (a test host);
    /// none: the agent's own.
    pub netns: Option<String>,
    /// External networks' interface names mapped to this host's
    /// interfaces or bridges (`--external NAME=IFACE`).
    pub externals: BTreeMap<String, String>,
    /// Where each network's DNS forwards names that are not the network's
    /// own (`nubo agent --resolver`); none: it answers only those.
    pub resolvers: Vec<Ipv4Addr>,
}

/// Why a network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// A command could not be run at all.
    #[error("cannot run `{program}`: {source}; install iproute2, nftables and dnsmasq-base")]
    Missing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Anything else, with what to do.
    #[error("{0}")]
    Other(String),
}

type Result<T> = std::result::Result<T, NetworkError>;

/// Looks up the metadata service of the instance at an address of a network.
pub type MetadataLookup = Arc<dyn Fn(u32, Ipv4Addr) -> Option<Arc<crate::imds::Imds>> + Send + Sync>;

/// What this host has set up, so each pass changes only what differs.
pub struct Plumbing {
    cfg: NetworkConfig,
    state_dir: PathBuf,
    /// The last desired networks applied in full, to skip unchanged passes.
    applied: Option<String>,
    /// The last failed attempt, so an unchanged desired state is retried
    /// with a growing pause instead of on every pass.
    retry: Option<Retry>,
    metadata: HashMap<u32, tokio::task::JoinHandle<()>>,
    lookup: MetadataLookup,
    /// Floating IPs this host answered for after the last pass: a new one
    /// is announced (gratuitous ARP) once its NAT is in place.
    announced: HashSet<String>,
}

/// A failed attempt at the desired networks with `fingerprint`.
struct Retry {
    fingerprint: String,
    failures: u32,
    not_before: std::time::Instant,
}

/// The pause after `failures` failed attempts in a row: 1 s, doubling, at
/// most 30 s (agent passes are 0.5 s apart; a missing program or a broken
/// namespace would otherwise be retried, and logged, twice a second).
fn retry_delay(failures: u32) -> std::time::Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    std::time::Duration::from_secs(secs.min(30))
}

/// The tap of an instance's `index`th NIC: `nt`, 8 hex digits of the
/// instance id's hash, and the index (IFNAMSIZ allows 15 bytes).
pub fn tap_name(instance: &InstanceId, index: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in instance.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("nt{h:08x}{index:x}")
}

/// The gateway's MAC on a network: the same on every host.
fn gateway_mac_octets(vni: u32) -> [u8; 6] {
    let b = vni.to_be_bytes();
    [0x02, 0x4e, 0x75, b[1], b[2], b[3]]
}

/// The gateway's MAC as text.
#[cfg(test)]
fn gateway_mac(vni: u32) -> String {
    let m = gateway_mac_octets(vni);
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The metadata service's address, on every router's `gw`.
const METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// An IPv4 address the control plane sent (`what` says which).
fn ipv4(what: &str, s: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| {
        NetworkError::Other(format!(
            "{what} {s:?} is not an IPv4 address; the control plane sent it: check its version matches this agent's"
        ))
    })
}

/// A CIDR (`10.0.0.0/24`) as address and prefix length.
fn cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, _) = s.split_once('/').unwrap_or((s, ""));
    Ok((ipv4("network range", a)?, prefix_len(s)?))
}

/// The file a named namespace is bound to.
fn netns_file(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Creates the named namespace `name`. By `ip netns add`, not a syscall of
/// our own: a named namespace is iproute2's convention (a bind mount under
/// /run/netns), and operators enter it with `ip netns exec`.
async fn add_netns(name: &str) -> Result<()> {
    run("ip", &strings(&["netns", "add", name]), None).await.map(drop)
}

/// Deletes the named namespace `name` (and the interfaces in it), by
/// `ip netns del` for the reason in `add_netns`.
async fn del_netns(name: &str) -> Result<()> {
    run("ip", &strings(&["netns", "del", name]), None).await.map(drop)
}

fn prefix_len(cidr: &str) -> Result<u8> {
    cidr.split_once('/')
        .and_then(|(_, l)| l.parse().ok())
        .ok_or_else(|| NetworkError::Other(format!("network range {cidr:?} is not a CIDR")))
}

fn netmask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0))
}

/// Runs a program; its stderr is the error.
async fn run(program: &str, args: &[String], stdin: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    } else {
        cmd.stdin(std::process::Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|source| NetworkError::Missing { program: program.into(), source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| NetworkError::Other(format!("cannot write to {program}: {e}")))?;
    }
    let out =
        child.wait_with_output().await.map_err(|source| NetworkError::Missing { program: program.into(), source })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Plumbing {
    pub fn new(cfg: NetworkConfig, data_dir: &std::path::Path, lookup: MetadataLookup) -> Self {
        Self {
            cfg,
            state_dir: data_dir.join("networks"),
            applied: None,
            retry: None,
            metadata: HashMap::new(),
            lookup,
            announced: HashSet::new(),
        }
    }

    /// The namespace file a tap's opener enters, if the host is one.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.cfg.netns.as_ref().map(|n| PathBuf::from("/run/netns").join(n))
    }

    fn router_ns(&self, vni: u32) -> String {
        match &self.cfg.netns {
            Some(ns) => format!("{ns}-r{vni}"),
            None => format!("nubo-r{vni}"),
        }
    }

    /// A netlink socket in the host's namespace.
    async fn host_nl(&self) -> Result<Netlink> {
        Netlink::open(self.netns_path().as_deref()).await
    }

    /// A program inside the host's namespace. `ip netns exec` is how
    /// iproute2 enters a named namespace for a program that cannot do it
    /// itself (nft).
    async fn host_exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        match &self.cfg.netns {
            Some(ns) => {
                let mut v = strings(&["netns", "exec", ns, program]);
                v.extend(strings(args));
                run("ip", &v, stdin).await
            }
            None => run(program, &strings(args), stdin).await,
        }
    }

    /// Makes this host match `d`'s networks: plumbing, VXLAN peers, DHCP,
    /// metadata and the firewall; removes networks no longer wanted.
    /// Skips the work when nothing changed since the last full success.
    pub async fn reconcile(&mut self, d: &DesiredState) -> Result<()> {
        let mut nics: BTreeMap<(String, usize), (u32, String)> = BTreeMap::new();
        let vni_of: HashMap<_, _> = d.networks.iter().map(|n| (n.id.clone(), n.vni)).collect();
        for i in d.instances.iter().filter(|i| i.power != nubo_api::agent::PowerState::Deleted) {
            for (index, nic) in i.nics.iter().enumerate() {
                if let Some(vni) = vni_of.get(&nic.network_id) {
                    nics.insert((i.id.to_string(), index), (*vni, tap_name(&i.id, index)));
                }
            }
        }
        // (JSON maps need string keys, so the NICs go in as a list.)
        let nic_list: Vec<_> = nics.iter().collect();
        let legs: Vec<_> = d.balancers.iter().filter_map(|b| b.network.as_ref().map(|n| (&b.id, n))).collect();
        let fingerprint = serde_json::to_string(&(&d.networks, &nic_list, &legs))
            .map_err(|e| NetworkError::Other(format!("cannot fingerprint the desired networks: {e}")))?;
        let metadata_alive = self.metadata.values().all(|t| !t.is_finished());
        if self.applied.as_deref() == Some(fingerprint.as_str()) && metadata_alive {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let failures = match &self.retry {
            Some(r) if r.fingerprint == fingerprint && now < r.not_before => return Ok(()),
            Some(r) if r.fingerprint == fingerprint => r.failures,
            _ => 0,
        };
        self.applied = None;
        match self.apply(d, &nics).await {
            Ok(()) => {
                self.applied = Some(fingerprint);
                self.retry = None;
                Ok(())
            }
            Err(e) => {
                let failures = failures + 1;
                self.retry = Some(Retry { fingerprint, failures, not_before: now + retry_delay(failures) });
                Err(e)
            }
        }
    }

    /// Sets up everything `d` wants (see `reconcile`), in order.
    async fn apply(&mut self, d: &DesiredState, nics: &BTreeMap<(String, usize), (u32, String)>) -> Result<()> {
        self.host_setup().await?;
        let forwards = firewall::forwards(d);
        for net in &d.networks {
            let span = tracing::info_span!("network", network = %net.id, vni = net.vni);
            let mine: Vec<_> = forwards.iter().filter(|f| f.vni == net.vni).cloned().collect();
            tracing::Instrument::instrument(self.ensure_network(net, &mine), span).await?;
        }
        for (vni, tap) in nics.values() {
            self.ensure_tap(tap, *vni).await?;
        }
        let wanted: HashSet<u32> = d.networks.iter().map(|n| n.vni).collect();
        self.remove_unwanted(&wanted).await?;
        self.sync_floating(&d.networks).await?;
        self.sync_balancer_legs(&d.balancers).await?;
        let taps: HashMap<(String, u32), String> =
            nics.iter().map(|((i, _), (vni, tap))| ((i.clone(), *vni), tap.clone())).collect();
        let mut ruleset =
            firewall::render(&d.networks, &|instance, vni| taps.get(&(instance.to_string(), vni)).cloned());
        ruleset.push_str(&firewall::render_host_nat(self.cfg.underlay, &forwards));
        ruleset.push_str(&render_host_guard());
        netlink::write_sysctl(self.netns_path().as_deref(), "net.ipv4.ip_forward", "1").await?;
        // nft, not a crate: the ruleset file is one atomic transaction, the
        // nftables crates drive this same binary (so nothing would be
        // gained), and the text is what an operator reads back with
        // `nft list ruleset`.
        self.host_exec("nft", &["-f", "-"], Some(&ruleset)).await?;
        Ok(())
    }

    /// Once per host: bridged IPv4 goes through nftables' inet hooks (the
    /// firewall's conntrack), which br_netfilter does when asked.
    async fn host_setup(&self) -> Result<()> {
        netlink::write_sysctl(self.netns_path().as_deref(), "net.bridge.bridge-nf-call-iptables", "1").await?;
        if self.cfg.netns.is_some() {
            self.host_nl().await?.set("lo", &[Set::Up]).await?;
        }
        Ok(())
    }

    async fn ensure_network(&mut self, net: &DesiredNetwork, forwards: &[firewall::Forward]) -> Result<()> {
        if let Some(link) = &net.external {
            return self.ensure_external(net, link).await;
        }
        let vni = net.vni;
        let (br, vx, rv) = (format!("nb{vni}"), format!("nx{vni}"), format!("nr{vni}"));
        let router = self.router_ns(vni);
        let nl = self.host_nl().await?;
        if !nl.exists(&br).await? {
            tracing::info!(bridge = %br, "creating the network's bridge");
            nl.add_bridge(&br).await?;
        }
        nl.set(&br, &[Set::Up]).await?;
        if !nl.exists(&vx).await? {
            nl.add_vxlan(&vx, vni, self.cfg.underlay, VXLAN_PORT, GUEST_MTU).await?;
        }
        nl.set(&vx, &[Set::Master(&br), Set::Up]).await?;
        nl.isolate(&vx).await?;
        self.sync_peers(&nl, &vx, &net.peers).await?;

        // The router namespace and its leg on the bridge.
        let ns_file = netns_file(&router);
        if !ns_file.exists() {
            add_netns(&router).await?;
        }
        if !nl.exists(&rv).await? {
            nl.add_veth(&rv, "gw", Some(&ns_file)).await?;
        }
        nl.set(&rv, &[Set::Master(&br), Set::Up]).await?;
        nl.isolate(&rv).await?;
        let len = prefix_len(&net.cidr)?;
        let gateway = ipv4("the network's gateway", &net.gateway)?;
        let rn = Netlink::open(Some(&ns_file)).await?;
        rn.set("lo", &[Set::Up]).await?;
        rn.set("gw", &[Set::Mac(gateway_mac_octets(vni)), Set::Mtu(GUEST_MTU), Set::Up]).await?;
        rn.ensure_address("gw", gateway, len).await?;
        rn.ensure_address("gw", METADATA_ADDRESS, 32).await?;
        self.ensure_uplink(vni, &router, (&nl, &rn), forwards, &net.floating).await?;
        self.ensure_dhcp(net, &router).await?;
        self.ensure_metadata(vni, &router)?;
        Ok(())
    }

    /// The router's way out (see the module doc), its NAT and the
    /// forwarded ports of instances on the network. `nl` and `rn` are
    /// netlink sockets in the host's and the router's namespaces.
    async fn ensure_uplink(
        &self,
        vni: u32,
        router: &str,
        (nl, rn): (&Netlink, &Netlink),
        forwards: &[firewall::Forward],
        floating: &[nubo_api::agent::FloatingNat],
    ) -> Result<()> {
        let (host_side, router_side) = uplink_addresses(vni);
        let nu = format!("nu{vni}");
        let ns_file = netns_file(router);
        if !nl.exists(&nu).await? {
            nl.add_veth(&nu, "uplink", Some(&ns_file)).await?;
        }
        nl.ensure_address(&nu, host_side, 30).await?;
        nl.set(&nu, &[Set::Up]).await?;
        rn.ensure_address("uplink", router_side, 30).await?;
        rn.set("uplink", &[Set::Up]).await?;
        let default = Route { dst: Ipv4Addr::UNSPECIFIED, len: 0, via: Some(host_side), dev: None, metric: None };
        rn.replace_route(default).await?;
        netlink::write_sysctl(Some(&ns_file), "net.ipv4.ip_forward", "1").await?;
        let ruleset = firewall::render_router(forwards, floating);
        // nft by `ip netns exec` (see `apply` for why nft).
        run("ip", &strings(&["netns", "exec", router, "nft", "-f", "-"]), Some(&ruleset)).await?;
        Ok(())
    }

    /// Head-end replication: one all-zero FDB entry per peer host, so
    /// broadcasts reach every host with the network; unicast is learnt.
    async fn sync_peers(&self, nl: &Netlink, vx: &str, peers: &[String]) -> Result<()> {
        let have: HashSet<Ipv4Addr> = nl.flood_peers(vx).await?.into_iter().collect();
        let mut wanted = HashSet::new();
        for p in peers {
            wanted.insert(ipv4("a VXLAN peer", p)?);
        }
        for p in wanted.iter().filter(|p| !have.contains(*p)) {
            tracing::info!(peer = %p, "VXLAN peer added");
            nl.append_flood_peer(vx, *p).await?;
        }
        for old in have.iter().filter(|h| !wanted.contains(*h)) {
            tracing::info!(peer = %old, "VXLAN peer removed");
            nl.delete_flood_peer(vx, *old).await?;
        }
        Ok(())
    }

    /// dnsmasq in the router namespace: fixed leases for this host's ports
    /// (by MAC), nothing for unknown ones, and the network's DNS (see the
    /// module doc); SIGHUP re-reads both hosts files. A dnsmasq started with
    /// other arguments (another agent version, other resolvers) is
    /// restarted.
    async fn ensure_dhcp(&self, net: &DesiredNetwork, router: &str) -> Result<()> {
        let dir = self.state_dir.join(net.vni.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| NetworkError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let hosts: String = net.ports.iter().map(|p| format!("{},{}\n", p.mac, p.address)).collect();
        let domain = dns_domain(net);
        let names = render_dns_hosts(net, &domain);
        // dnsmasq drops root (see dnsmasq_account) and then re-reads these
        // files on SIGHUP, so they live where that account can read them,
        // and only it: the data dir may be behind a 0700 directory.
        let account = dnsmasq_account()?;
        let hosts_dir = PathBuf::from(DHCP_HOSTS_DIR).join(router);
        std::fs::create_dir_all(&hosts_dir)
            .map_err(|e| NetworkError::Other(format!("cannot create {}: {e}", hosts_dir.display())))?;
        let hosts_file = hosts_dir.join("dhcp-hosts");
        let names_file = hosts_dir.join("dns-hosts");
        let mut changed = false;
        for (file, text) in [(&hosts_file, &hosts), (&names_file, &names)] {
            if std::fs::read_to_string(file).ok().as_deref() != Some(text.as_str()) {
                write_for(file, text, &account)?;
                changed = true;
            }
        }
        let pid_file = dir.join("dnsmasq.pid");
        let files = DnsmasqFiles { dhcp_hosts: &hosts_file, dns_hosts: &names_file, dir: &dir, pid_file: &pid_file };
        let args = dnsmasq_args(net, &domain, &files, &account, &self.cfg.resolvers)?;
        if let Some(pid) = dnsmasq_pid(&pid_file) {
            if dnsmasq_cmdline(pid).is_some_and(|running| running == args) {
                if changed {
                    // SAFETY: a signal to the dnsmasq this module started (its
                    // pidfile and command line were checked).
                    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
                }
                return Ok(());
            }
            tracing::info!(router, "restarting dnsmasq: its arguments changed");
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            for _ in 0..50 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        // dnsmasq binds its DHCP socket in the router's namespace, so it
        // starts there by `ip netns exec`.
        let mut cmd = strings(&["netns", "exec", router, "dnsmasq"]);
        cmd.extend(args);
        tracing::info!(router, "starting dnsmasq");
        run("ip", &cmd, None).await?;
        Ok(())
    }

    /// The metadata service at 169.254.169.254:80 inside the router
    /// namespace; each guest is told its own data, found by its address.
    fn ensure_metadata(&mut self, vni: u32, router: &str) -> Result<()> {
        if self.metadata.get(&vni).is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let ns = PathBuf::from("/run/netns").join(router);
        let listener = bind_in_netns(&ns, SocketAddr::from(([169, 254, 169, 254], 80)))?;
        let lookup = self.lookup.clone();
        let app = axum::Router::new().fallback(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
                  req: axum::extract::Request| {
                let lookup = lookup.clone();
                async move {
                    use axum::response::IntoResponse;
                    use tower::ServiceExt;
                    let found = match peer.ip() {
                        IpAddr::V4(a) => lookup(vni, a),
                        IpAddr::V6(_) => None,
                    };
                    match found {
                        Some(imds) => match crate::imds::router(imds).oneshot(req).await {
                            Ok(r) => r,
                            Err(never) => match never {},
                        },
                        None => (axum::http::StatusCode::NOT_FOUND, "no instance has this address\n").into_response(),
                    }
                }
            },
        );
        let task = tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, svc).await {
                tracing::warn!(vni, error = %e, "network metadata service stopped");
            }
        });
        self.metadata.insert(vni, task);
        Ok(())
    }

    /// The instance's tap: persistent (it outlives a stop), on the bridge.
    pub async fn ensure_tap(&self, tap: &str, vni: u32) -> Result<()> {
        let nl = self.host_nl().await?;
        if !nl.exists(tap).await? {
            netlink::create_tap(self.netns_path().as_deref(), tap).await?;
        }
        let br = format!("nb{vni}");
        nl.set(tap, &[Set::Master(&br), Set::Mtu(GUEST_MTU), Set::Up]).await?;
        Ok(())
    }

    /// Removes a deleted instance's taps.
    pub async fn remove_taps(&mut self, instance: &InstanceId) {
        self.applied = None;
        let nl = match self.host_nl().await {
            Ok(nl) => nl,
            Err(e) => {
                tracing::warn!(instance = %instance, error = %e, "cannot remove an instance's taps");
                return;
            }
        };
        for index in 0..16 {
            let tap = tap_name(instance, index);
            match nl.exists(&tap).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(tap, error = %e, "cannot remove a tap");
                    break;
                }
            }
            if let Err(e) = nl.delete(&tap).await {
                tracing::warn!(tap, error = %e, "cannot remove a tap");
            }
        }
    }

    /// Takes down networks this host set up and no longer has ports on.
    async fn remove_unwanted(&mut self, wanted: &HashSet<u32>) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else { return Ok(()) };
        let here: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
        for vni in here.into_iter().filter(|v| !wanted.contains(v)) {
            tracing::info!(vni, "removing a network no instance here uses");
            if let Some(t) = self.metadata.remove(&vni) {
                t.abort();
            }
            let dir = self.state_dir.join(vni.to_string());
            if let Some(pid) = dnsmasq_pid(&dir.join("dnsmasq.pid")) {
                // SAFETY: the dnsmasq this module started (checked by pidfile and command line).
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let ext_links = [format!("nv{vni}"), format!("nf{vni}"), format!("ne{vni}")];
            // An interface of the operator's that was enslaved (an
            // untagged external network) is released, not deleted.
            let nl = self.host_nl().await?;
            self.release_external_uplink(&nl, vni).await?;
            for link in [format!("nr{vni}"), format!("nu{vni}"), format!("nx{vni}"), format!("nb{vni}")]
                .into_iter()
                .chain(ext_links)
            {
                if nl.exists(&link).await? {
                    nl.delete(&link).await?;
                }
            }
            let router = self.router_ns(vni);
            let _ = std::fs::remove_dir_all(PathBuf::from(DHCP_HOSTS_DIR).join(&router));
            if netns_file(&router).exists() {
                del_netns(&router).await?;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(())
    }
}

/// What guests on private networks may open towards this host itself:
/// nothing. Their traffic reaches the host's namespace by the routers'
/// uplinks (`nu*`: the uplink's host side and, routed, every other address
/// of the host, the underlay's included) and by the bridges (`nb*`: IPv6
/// link-local addresses, broadcasts). Forwarded ports are DNAT'ed before
/// this hook and egress is forwarded, so neither comes here; replies to
/// what the host opened are `established`.
pub fn render_host_guard() -> String {
    "table inet nubo_host_guard {}\ndelete table inet nubo_host_guard\ntable inet nubo_host_guard {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    iifname \"nu*\" ct state new reject\n    iifname \"nb*\" ct state new reject\n  }\n}\n".to_string()
}

/// The uplink /30 of a network's router: (host side, router side).
pub fn uplink_addresses(vni: u32) -> (Ipv4Addr, Ipv4Addr) {
    // 2^18 networks of 4 addresses fill 100.64.0.0/10.
    let index = vni.wrapping_sub(1000) & 0x3_ffff;
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + index * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// Where each router's dnsmasq finds its hosts file (see `ensure_dhcp`).
const DHCP_HOSTS_DIR: &str = "/run/nubo/dhcp";

/// The unprivileged account dnsmasq runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqAccount {
    pub name: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
}

/// Debian's `dnsmasq` account when it exists, else `nobody`: dnsmasq
/// needs root only to bind its DHCP socket, then drops to this account
/// (a guest that exploits it gets nothing of the host's).
fn dnsmasq_account() -> Result<DnsmasqAccount> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    ["dnsmasq", "nobody"].iter().find_map(|n| account_from(&passwd, &group, n)).ok_or_else(|| {
        NetworkError::Other(
            "neither a `dnsmasq` nor a `nobody` account exists for dnsmasq to drop root to; create one (useradd --system dnsmasq)".into(),
        )
    })
}

/// The account `name` from passwd and group texts; never root.
fn account_from(passwd: &str, group: &str, name: &str) -> Option<DnsmasqAccount> {
    let fields: Vec<&str> = passwd.lines().find(|l| l.split(':').next() == Some(name))?.split(':').collect();
    let uid: u32 = fields.get(2)?.parse().ok()?;
    let gid: u32 = fields.get(3)?.parse().ok()?;
    if uid == 0 || gid == 0 {
        return None;
    }
    let group_name = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|g| g.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(gid))
        .and_then(|g| g.first().map(|s| s.to_string()))?;
    Some(DnsmasqAccount { name: name.to_string(), group: group_name, uid, gid })
}

/// Writes `text` to `path` readable by `account` alone (mode 0400).
fn write_for(path: &std::path::Path, text: &str, account: &DnsmasqAccount) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: std::io::Error| NetworkError::Other(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).map_err(err)?;
    std::os::unix::fs::chown(&tmp, Some(account.uid), Some(account.gid)).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400)).map_err(err)?;
    // Renamed into place, so dnsmasq never reads half a file.
    std::fs::rename(&tmp, path).map_err(err)
}

/// The files of one router's dnsmasq.
struct DnsmasqFiles<'a> {
    dhcp_hosts: &'a std::path::Path,
    dns_hosts: &'a std::path::Path,
    dir: &'a std::path::Path,
    pid_file: &'a std::path::Path,
}

/// The network's DNS domain as the guests see it: the control plane's,
/// checked label by label, or `<network id>.internal`.
fn dns_domain(net: &DesiredNetwork) -> String {
    let labels: Option<Vec<String>> = net.domain.split('.').map(nubo_api::agent::dns_label).collect();
    match labels {
        Some(l) if !net.domain.is_empty() && net.domain.len() <= 200 => l.join("."),
        _ => format!("{}.internal", net.id.as_str().to_ascii_lowercase()),
    }
}

/// The network's names as a hosts file (`address name.domain name`): each
/// name checked again as a DNS label and each address as IPv4, so nothing a
/// guest chose becomes more than a name (a bad one is left out).
fn render_dns_hosts(net: &DesiredNetwork, domain: &str) -> String {
    let mut out = String::new();
    for r in &net.dns {
        let (Some(name), Ok(address)) = (nubo_api::agent::dns_label(&r.name), r.address.parse::<Ipv4Addr>()) else {
            tracing::warn!(network = %net.id, name = %r.name.escape_debug(), "left a name out of the network's DNS: not a DNS label or not an IPv4 address");
            continue;
        };
        out.push_str(&format!("{address} {name}.{domain} {name}\n"));
    }
    out
}

/// dnsmasq's arguments for a network: DHCP (fixed leases, the gateway as
/// router and DNS server, the domain to search) and DNS on the gateway.
fn dnsmasq_args(
    net: &DesiredNetwork,
    domain: &str,
    files: &DnsmasqFiles<'_>,
    account: &DnsmasqAccount,
    resolvers: &[Ipv4Addr],
) -> Result<Vec<String>> {
    let len = prefix_len(&net.cidr)?;
    let network: Ipv4Addr = net
        .cidr
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| NetworkError::Other(format!("network range {:?} is not a CIDR", net.cidr)))?;
    let gateway: Ipv4Addr = net
        .gateway
        .parse()
        .map_err(|_| NetworkError::Other(format!("gateway {:?} is not an IPv4 address", net.gateway)))?;
    // The network's DNS answers on the gateway, or on an external
    // network (whose gateway is the LAN's router) on this host's service address.
    let dns_server = match &net.external {
        Some(link) => link.service_address.clone(),
        None => gateway.to_string(),
    };
    let mut args = vec![
        "--conf-file=/dev/null".to_string(),
        "--interface=gw".into(),
        "--bind-interfaces".into(),
        "--dhcp-authoritative".into(),
        "--no-ping".into(),
        format!("--user={}", account.name),
        format!("--group={}", account.group),
        format!("--dhcp-range={network},static,{},1h", netmask(len)),
        format!("--dhcp-hostsfile={}", files.dhcp_hosts.display()),
        format!("--dhcp-option=option:router,{gateway}"),
        format!("--dhcp-option=option:dns-server,{dns_server}"),
        format!("--dhcp-option=option:domain-search,{domain}"),
        format!("--dhcp-option-force=option:mtu,{GUEST_MTU}"),
        // DNS: the network's names from their own file only (not the
        // host's /etc/hosts), its domain never forwarded, plain names and
        // private reverse lookups never forwarded, and no resolv.conf: only
        // the operator's resolvers.
        format!("--domain={domain}"),
        "--no-hosts".into(),
        format!("--addn-hosts={}", files.dns_hosts.display()),
        format!("--local=/{domain}/"),
        "--domain-needed".into(),
        "--bogus-priv".into(),
        "--no-resolv".into(),
    ];
    args.extend(resolvers.iter().map(|r| format!("--server={r}")));
    // On an external network the default route is the LAN's router, so
    // metadata needs a route of its own to this host's service address
    // (RFC 3442, which then must repeat the default route).
    if let Some(link) = &net.external {
        args.push(format!(
            "--dhcp-option=option:classless-static-route,169.254.169.254/32,{},0.0.0.0/0,{gateway}",
            link.service_address
        ));
    }
    args.extend([
        format!("--dhcp-leasefile={}", files.dir.join("leases").display()),
        format!("--pid-file={}", files.pid_file.display()),
        format!("--log-facility={}", files.dir.join("dnsmasq.log").display()),
        "--log-dhcp".into(),
    ]);
    Ok(args)
}

/// The arguments (after the program) a running process was started with.
fn dnsmasq_cmdline(pid: u32) -> Option<Vec<String>> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut parts: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if parts.last().is_some_and(String::is_empty) {
        parts.pop();
    }
    (!parts.is_empty()).then(|| parts.split_off(1))
}

/// The pid of a dnsmasq we started, if it still runs.
fn dnsmasq_pid(pid_file: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = format!("--pid-file={}", pid_file.display());
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_bytes());
    ours.then_some(pid)
}

/// A TCP listener inside a network namespace: bound on a thread that
/// entered it (setns changes one thread), then served from this runtime.
fn bind_in_netns(ns: &std::path::Path, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let ns = ns.to_path_buf();
    let std_listener = std::thread::spawn(move || -> std::io::Result<std::net::TcpListener> {
        let f = std::fs::File::open(&ns)?;
        // SAFETY: setns with a namespace descriptor we own; it changes
        // only this short-lived thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| NetworkError::Other("the thread binding the metadata service panicked".into()))?
    .map_err(|e| NetworkError::Other(format!("cannot serve metadata on {addr}: {e}")))?;
    tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| NetworkError::Other(format!("cannot serve metadata on {addr}: {e}")))
}

/// Instances by (network vni, address), from the desired state.
pub fn address_index(d: &DesiredState) -> HashMap<(u32, Ipv4Addr), InstanceId> {
    let mut out = HashMap::new();
    for n in &d.networks {
        for p in &n.ports {
            if let Ok(a) = p.address.parse() {
                out.insert((n.vni, a), p.instance_id.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_open_nothing_towards_the_host() {
        let text = render_host_guard();
        assert!(text.starts_with("table inet nubo_host_guard {}\ndelete table inet nubo_host_guard\n"));
        assert!(text.contains("type filter hook input priority 0; policy accept;"));
        assert!(text.contains("iifname \"nu*\" ct state new reject"));
        assert!(text.contains("iifname \"nb*\" ct state new reject"));
    }

    #[test]
    fn dnsmasq_runs_as_an_unprivileged_account() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\ndnsmasq:x:999:65534:dnsmasq,,,:/var/lib/misc:/usr/sbin/nologin\nevil:x:0:5::/:/bin/sh\n";
        let group = "root:x:0:\nnogroup:x:65534:\n";
        let a = account_from(passwd, group, "dnsmasq").unwrap();
        assert_eq!(a, DnsmasqAccount { name: "dnsmasq".into(), group: "nogroup".into(), uid: 999, gid: 65534 });
        assert_eq!(account_from(passwd, group, "nobody").unwrap().uid, 65534);
        assert!(account_from(passwd, group, "root").is_none(), "never root");
        assert!(account_from(passwd, group, "evil").is_none(), "never uid 0 under another name");
        assert!(account_from(passwd, group, "absent").is_none());
        // On this machine: whichever account is found, it is not root.
        let mine = dnsmasq_account().unwrap();
        assert!(mine.uid != 0 && mine.gid != 0, "{mine:?}");
    }

    fn network(domain: &str, dns: &[(&str, &str)]) -> DesiredNetwork {
        DesiredNetwork {
            id: "net-0123456789abcdef0".parse().unwrap(),
            vni: 1000,
            cidr: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            peers: vec![],
            ports: vec![],
            domain: domain.into(),
            dns: dns
                .iter()
                .map(|(n, a)| nubo_api::agent::DnsRecord { name: n.to_string(), address: a.to_string() })
                .collect(),
            external: None,
            floating: vec![],
        }
    }

    #[test]
    fn dns_names_are_a_hosts_file_and_bad_ones_are_left_out() {
        let net = network(
            "blue.internal",
            &[
                ("web-1", "10.20.0.2"),
                ("Web-2", "10.20.0.3"),
                ("bad_name", "10.20.0.4"),
                ("x\naddn-hosts=/etc/shadow", "10.20.0.5"),
                ("evil", "10.20.0.6 other"),
            ],
        );
        assert_eq!(dns_domain(&net), "blue.internal");
        assert_eq!(
            render_dns_hosts(&net, "blue.internal"),
            "10.20.0.2 web-1.blue.internal web-1\n10.20.0.3 web-2.blue.internal web-2\n"
        );
        // A domain that is not labels falls back to the network id's.
        for bad in ["", "blue..internal", "bl ue.internal", "blue.internal/\n--server=1.1.1.1"] {
            assert_eq!(dns_domain(&network(bad, &[])), "net-0123456789abcdef0.internal", "{bad:?}");
        }
    }

    #[test]
    fn dnsmasq_serves_dns_on_the_gateway_and_forwards_only_to_the_operators_resolvers() {
        let net = network("blue.internal", &[]);
        let account = DnsmasqAccount { name: "dnsmasq".into(), group: "nogroup".into(), uid: 999, gid: 65534 };
        let p = std::path::Path::new;
        let files = DnsmasqFiles {
            dhcp_hosts: p("/run/nubo/dhcp/r/dhcp-hosts"),
            dns_hosts: p("/run/nubo/dhcp/r/dns-hosts"),
            dir: p("/data/networks/1000"),
            pid_file: p("/data/networks/1000/dnsmasq.pid"),
        };
        let args = dnsmasq_args(&net, "blue.internal", &files, &account, &[]).unwrap();
        for want in [
            "--dhcp-option=option:dns-server,10.20.0.1",
            "--dhcp-option=option:domain-search,blue.internal",
            "--domain=blue.internal",
            "--local=/blue.internal/",
            "--addn-hosts=/run/nubo/dhcp/r/dns-hosts",
            "--no-hosts",
            "--no-resolv",
            "--domain-needed",
            "--dhcp-hostsfile=/run/nubo/dhcp/r/dhcp-hosts",
            "--user=dnsmasq",
            "--pid-file=/data/networks/1000/dnsmasq.pid",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--port") || a.starts_with("--server")), "{args:?}");
        let resolvers = ["192.0.2.53".parse().unwrap(), "198.51.100.53".parse().unwrap()];
        let args = dnsmasq_args(&net, "blue.internal", &files, &account, &resolvers).unwrap();
        let servers: Vec<&String> = args.iter().filter(|a| a.starts_with("--server=")).collect();
        assert_eq!(servers, ["--server=192.0.2.53", "--server=198.51.100.53"]);
        assert!(args.iter().any(|a| a == "--no-resolv"));
    }

    #[test]
    fn failed_setups_are_retried_with_a_growing_pause() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX).as_secs(), 30);
    }

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        let id: InstanceId = "i-0123456789abcdef0".parse().unwrap();
        let t = tap_name(&id, 0);
        assert!(t.len() <= 15, "{t}");
        assert_eq!(t, tap_name(&id, 0));
        assert_ne!(t, tap_name(&id, 1));
        assert_eq!(gateway_mac(1000), "02:4e:75:00:03:e8");
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(prefix_len("10.0.0.0/24").unwrap(), 24);
        assert!(prefix_len("10.0.0.0").is_err());
    }
}
