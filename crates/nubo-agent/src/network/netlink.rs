//! The kernel's network configuration through rtnetlink: links (bridges,
//! VXLAN, veth pairs, VLANs), their flags, MTU, MAC and bridge port, IPv4
//! addresses and routes, proxy ARP entries and the VXLAN forwarding
//! database. A [`Netlink`] is a socket opened *inside* one network
//! namespace (a netlink socket stays in the namespace it was created in),
//! so the host's namespace (a test host's, or the agent's own) and every
//! router's are driven the same way, with no `ip -n` per change.
//!
//! Also here, because rtnetlink cannot do them: persistent tap devices
//! (created with the tun driver's ioctls, see [`create_tap`]) and
//! per-namespace sysctls (see [`write_sysctl`]).

use super::{NetworkError, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteScope};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVlan, LinkVxlan, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// One change of `Netlink::set`; several go in one message, as
/// `ip link set NAME master BR mtu M up` would send them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Set<'a> {
    Up,
    Master(&'a str),
    NoMaster,
    Mtu(u32),
    Mac([u8; 6]),
}

/// A route to add or replace (`ip route replace`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Route<'a> {
    pub dst: Ipv4Addr,
    pub len: u8,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<&'a str>,
    pub metric: Option<u32>,
}

/// A netlink socket inside one namespace; its connection task ends when
/// this is dropped.
pub(super) struct Netlink {
    handle: rtnetlink::Handle,
    /// Which namespace, for error messages.
    place: String,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn place_of(ns: Option<&Path>) -> String {
    match ns {
        Some(p) => format!("namespace {}", p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
        None => "the agent's namespace".to_string(),
    }
}

/// Runs `f` on a short-lived thread that entered the namespace `ns`
/// (setns changes only the calling thread, which must not be one the
/// runtime reuses), and waits for it without blocking the runtime.
async fn in_netns<T, F>(ns: Option<&Path>, what: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    use std::os::fd::AsRawFd;
    let path = ns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> std::io::Result<T> {
            if let Some(p) = path {
                let f = std::fs::File::open(p)?;
                // SAFETY: setns with a namespace descriptor we own; it
                // changes only this thread, which ends after `f`.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            f()
        };
        let _ = tx.send(run());
    });
    let place = place_of(ns);
    rx.await.map_err(|_| NetworkError::Other(format!("the thread that would {what} in {place} panicked")))?.map_err(
        |e| {
            NetworkError::Other(format!(
                "cannot {what} in {place}: {e}; check that the namespace exists and the agent runs as root"
            ))
        },
    )
}

/// What to do about a failed netlink request, by its errno.
fn advice(e: &rtnetlink::Error) -> &'static str {
    let errno = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => "run the agent as root (it needs CAP_NET_ADMIN)",
        Some(libc::EOPNOTSUPP) | Some(libc::EAFNOSUPPORT) => {
            "load the kernel's modules for it (modprobe bridge veth vxlan 8021q)"
        }
        Some(libc::EEXIST) => "another interface or entry has this name or address; remove it (`ip link del`) and the next pass recreates it",
        Some(libc::ENODEV) => "an interface it needs is gone; the next pass recreates it",
        _ => "the next pass retries; `ip -d link` and `bridge fdb` show the current state",
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(errno))
}

impl Netlink {
    /// A socket inside `ns` (a `/run/netns/NAME` file), or the agent's own
    /// namespace for none.
    pub async fn open(ns: Option<&Path>) -> Result<Netlink> {
        let place = place_of(ns);
        // The socket is registered with this runtime's reactor from the
        // thread that creates it, so that thread enters the runtime.
        let rt = tokio::runtime::Handle::current();
        let (conn, handle) = in_netns(ns, "open a netlink socket", move || {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            Ok((conn, handle))
        })
        .await?;
        let conn = tokio::spawn(conn);
        Ok(Netlink { handle, place, conn })
    }

    fn fail(&self, what: &str, e: rtnetlink::Error) -> NetworkError {
        NetworkError::Other(format!("cannot {what} in {}: {e}; {}", self.place, advice(&e)))
    }

    /// The link called `name`, if there is one.
    async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self.handle.link().get().match_name(name).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(self.fail(&format!("look up interface {name}"), e)),
        }
    }

    /// The index of link `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link(name).await?.map(|m| m.header.index))
    }

    pub async fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.index(name).await?.is_some())
    }

    /// The index of link `name`, or an error saying it is missing.
    async fn require(&self, name: &str) -> Result<u32> {
        self.index(name).await?.ok_or_else(|| {
            NetworkError::Other(format!(
                "interface {name} does not exist in {}; the next pass recreates it",
                self.place
            ))
        })
    }

    /// The kind of link `name` (`bridge`, `veth`, ...), if it has one.
    pub async fn kind(&self, name: &str) -> Result<Option<String>> {
        let Some(m) = self.link(name).await? else { return Ok(None) };
        Ok(m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(k) => Some(k.to_string()),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// The index of the bridge link `name` is a port of, if any.
    pub async fn master(&self, name: &str) -> Result<Option<u32>> {
        let Some(m) = self.link(name).await? else { return Ok(None) };
        Ok(m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        }))
    }

    /// The MAC address of link `name`, if it has one.
    pub async fn mac(&self, name: &str) -> Result<Option<[u8; 6]>> {
        let Some(m) = self.link(name).await? else { return Ok(None) };
        Ok(m.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
            _ => None,
        }))
    }

    async fn add_link(&self, what: &str, msg: LinkMessage) -> Result<()> {
        self.handle.link().add(msg).execute().await.map_err(|e| self.fail(what, e))
    }

    pub async fn add_bridge(&self, name: &str) -> Result<()> {
        self.add_link(&format!("create bridge {name}"), LinkBridge::new(name).build()).await
    }

    /// A VXLAN device for `vni`, its tunnels ending at `local`:`port`.
    pub async fn add_vxlan(&self, name: &str, vni: u32, local: Ipv4Addr, port: u16, mtu: u32) -> Result<()> {
        let msg = LinkVxlan::new(name, vni).local(local).port(port).mtu(mtu).build();
        self.add_link(&format!("create VXLAN device {name}"), msg).await
    }

    /// A veth pair `name`/`peer`; the peer is moved into the namespace
    /// `peer_ns` (a `/run/netns/NAME` file) when given, and named there.
    pub async fn add_veth(&self, name: &str, peer: &str, peer_ns: Option<&Path>) -> Result<()> {
        use std::os::fd::AsRawFd;
        let what = format!("create veth pair {name}/{peer}");
        // Open for as long as the request runs: the kernel reads the fd.
        let ns_file = match peer_ns {
            Some(p) => Some(std::fs::File::open(p).map_err(|e| {
                NetworkError::Other(format!(
                    "cannot {what}: cannot open {}: {e}; the next pass recreates the namespace",
                    p.display()
                ))
            })?),
            None => None,
        };
        let mut peer_msg = LinkUnspec::new_with_name(peer);
        if let Some(f) = &ns_file {
            peer_msg = peer_msg.setns_by_fd(f.as_raw_fd());
        }
        let msg = LinkVeth::new(name, peer).set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build()))).build();
        let r = self.add_link(&what, msg).await;
        drop(ns_file);
        r
    }

    /// A VLAN link `name` on `parent`, tagged `id`.
    pub async fn add_vlan(&self, name: &str, parent: &str, id: u16) -> Result<()> {
        let parent_index = self.require(parent).await?;
        self.add_link(&format!("create VLAN {name} on {parent}"), LinkVlan::new(name, parent_index, id).build()).await
    }

    /// Applies `changes` to link `name` in one message.
    pub async fn set(&self, name: &str, changes: &[Set<'_>]) -> Result<()> {
        let index = self.require(name).await?;
        let mut b = LinkUnspec::new_with_index(index);
        for c in changes {
            b = match *c {
                Set::Up => b.up(),
                Set::Master(m) => b.controller(self.require(m).await?),
                Set::NoMaster => b.nocontroller(),
                Set::Mtu(mtu) => b.mtu(mtu),
                Set::Mac(mac) => b.address(mac.to_vec()),
            };
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| self.fail(&format!("configure interface {name}"), e))
    }

    /// Makes bridge port `name` isolated: it forwards only to ports that
    /// are not.
    pub async fn isolate(&self, name: &str) -> Result<()> {
        let index = self.require(name).await?;
        let msg = LinkBridgePort::new(index).isolated(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| self.fail(&format!("isolate bridge port {name}"), e))
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let index = self.require(name).await?;
        self.handle.link().del(index).execute().await.map_err(|e| self.fail(&format!("delete interface {name}"), e))
    }

    /// The IPv4 addresses of link `name` with their prefix lengths.
    pub async fn addresses(&self, name: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        let index = self.require(name).await?;
        let what = format!("list the addresses of {name}");
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail(&what, e))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.index == index) {
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on a point-to-point link); `ip addr` shows the same.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if let Some(a) = local.or(address) {
                out.push((a, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds `addr/len` to link `name` unless it is there already.
    pub async fn ensure_address(&self, name: &str, addr: Ipv4Addr, len: u8) -> Result<()> {
        if self.addresses(name).await?.contains(&(addr, len)) {
            return Ok(());
        }
        let index = self.require(name).await?;
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), len)
            .execute()
            .await
            .map_err(|e| self.fail(&format!("add {addr}/{len} to {name}"), e))
    }

    /// Adds `r`, or replaces the route to the same prefix.
    pub async fn replace_route(&self, r: Route<'_>) -> Result<()> {
        // As `ip route` does: its protocol is "boot", and a route with no
        // gateway is on-link.
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new().protocol(RouteProtocol::Boot);
        if r.len > 0 {
            b = b.destination_prefix(r.dst, r.len);
        }
        match r.via {
            Some(gw) => b = b.gateway(gw),
            None => b = b.scope(RouteScope::Link),
        }
        if let Some(dev) = r.dev {
            b = b.output_interface(self.require(dev).await?);
        }
        if let Some(m) = r.metric {
            b = b.priority(m);
        }
        let what = format!("set the route to {}/{}", r.dst, r.len);
        self.handle.route().add(b.build()).replace().execute().await.map_err(|e| self.fail(&what, e))
    }

    /// The main table's IPv4 routes: (destination, prefix length, output
    /// interface index).
    async fn main_routes(&self) -> Result<Vec<(Ipv4Addr, u8, Option<u32>)>> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail("list the routes", e))?;
        let main = u32::from(RouteHeader::RT_TABLE_MAIN);
        Ok(msgs
            .iter()
            .filter(|m| {
                let table = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                });
                table.unwrap_or(u32::from(m.header.table)) == main
            })
            .filter_map(|m| {
                let dst = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                    _ => None,
                })?;
                let oif = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                Some((dst, m.header.destination_prefix_length, oif))
            })
            .collect())
    }

    /// The destinations of the main table's /32 routes out of `dev`.
    pub async fn host_routes(&self, dev: &str) -> Result<Vec<Ipv4Addr>> {
        let index = self.require(dev).await?;
        let routes = self.main_routes().await?;
        Ok(routes.into_iter().filter(|(_, len, oif)| *len == 32 && *oif == Some(index)).map(|(d, _, _)| d).collect())
    }

    /// The interfaces (names) the main table routes exactly `dst/len` through.
    pub async fn route_devices(&self, dst: Ipv4Addr, len: u8) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (_, _, oif) in self.main_routes().await?.into_iter().filter(|(d, l, _)| *d == dst && *l == len) {
            let Some(index) = oif else { continue };
            let mut links = self.handle.link().get().match_index(index).execute();
            let name = match links.try_next().await {
                Ok(Some(m)) => m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }),
                _ => None,
            };
            out.push(name.unwrap_or_else(|| format!("interface #{index}")));
        }
        Ok(out)
    }

    /// Deletes the main table's route to `dst/32` out of `dev`.
    pub async fn delete_host_route(&self, dst: Ipv4Addr, dev: &str) -> Result<()> {
        let index = self.require(dev).await?;
        let mut msg =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, 32).output_interface(index).build();
        // Any protocol and scope: the kernel matches those only when set.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        self.handle.route().del(msg).execute().await.map_err(|e| self.fail(&format!("delete the route to {dst}/32"), e))
    }

    /// Sends a request the typed requests cannot express (flags of its own).
    async fn request(&self, what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut resp = self.handle.clone().request(req).map_err(|e| self.fail(what, e))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(err) = m.payload {
                if err.code.is_some() {
                    return Err(self.fail(what, rtnetlink::Error::NetlinkError(err)));
                }
            }
        }
        Ok(())
    }

    /// The remote ends of the all-zero-MAC forwarding entries of VXLAN
    /// device `dev` (head-end replication: one per peer host).
    pub async fn flood_peers(&self, dev: &str) -> Result<Vec<Ipv4Addr>> {
        let index = self.require(dev).await?;
        let what = format!("list the forwarding entries of {dev}");
        let msgs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.fail(&what, e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| {
                m.attributes.iter().any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(l) if l == &[0u8; 6]))
            })
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    _ => None,
                })
            })
            .collect())
    }

    fn flood_entry(index: u32, peer: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(peer)));
        m
    }

    /// Adds an all-zero-MAC entry towards `peer` on VXLAN device `dev`
    /// (`bridge fdb append 00:00:00:00:00:00 dev DEV dst PEER`).
    pub async fn append_flood_peer(&self, dev: &str, peer: Ipv4Addr) -> Result<()> {
        let index = self.require(dev).await?;
        let msg = RouteNetlinkMessage::NewNeighbour(Self::flood_entry(index, peer));
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.request(&format!("add VXLAN peer {peer} to {dev}"), msg, flags).await
    }

    /// Deletes the all-zero-MAC entry towards `peer` on VXLAN device `dev`.
    pub async fn delete_flood_peer(&self, dev: &str, peer: Ipv4Addr) -> Result<()> {
        let index = self.require(dev).await?;
        let msg = RouteNetlinkMessage::DelNeighbour(Self::flood_entry(index, peer));
        self.request(&format!("remove VXLAN peer {peer} from {dev}"), msg, NLM_F_REQUEST | NLM_F_ACK).await
    }

    /// The addresses link `dev` answers ARP for (proxy entries).
    pub async fn proxies(&self, dev: &str) -> Result<Vec<Ipv4Addr>> {
        let index = self.require(dev).await?;
        let what = format!("list the proxy ARP entries of {dev}");
        let msgs: Vec<_> =
            self.handle.neighbours().get().proxies().execute().try_collect().await.map_err(|e| self.fail(&what, e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.flags.contains(NeighbourFlags::Proxy))
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(*d),
                    _ => None,
                })
            })
            .collect())
    }

    /// Makes link `dev` answer ARP for `addr` (`ip neigh replace proxy`).
    pub async fn replace_proxy(&self, dev: &str, addr: Ipv4Addr) -> Result<()> {
        let index = self.require(dev).await?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .flags(NeighbourFlags::Proxy)
            .replace()
            .execute()
            .await
            .map_err(|e| self.fail(&format!("answer ARP for {addr} on {dev}"), e))
    }

    pub async fn delete_proxy(&self, dev: &str, addr: Ipv4Addr) -> Result<()> {
        let index = self.require(dev).await?;
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Proxy;
        m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(addr)));
        self.handle
            .neighbours()
            .del(m)
            .execute()
            .await
            .map_err(|e| self.fail(&format!("stop answering ARP for {addr} on {dev}"), e))
    }
}

/// Whether `kind` (from [`Netlink::kind`]) is a bridge's.
pub(super) fn is_bridge_kind(kind: Option<&str>) -> bool {
    kind == Some(InfoKind::Bridge.to_string().as_str())
}

/// Creates the persistent tap `name` inside `ns` (none: the agent's own
/// namespace), as `ip tuntap add dev NAME mode tap` does. rtnetlink cannot
/// create tun/tap devices (the tun driver refuses RTM_NEWLINK), so this is
/// the driver's own interface: TUNSETIFF on /dev/net/tun names and creates
/// the device, TUNSETPERSIST keeps it once the descriptor closes. The
/// device is made in the namespace of the thread that opens /dev/net/tun.
pub(super) async fn create_tap(ns: Option<&Path>, name: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetworkError::Other(format!(
            "tap name {name:?} does not fit IFNAMSIZ; this is a bug in the agent"
        )));
    }
    let tap = name.to_string();
    in_netns(ns, &format!("create tap {name}"), move || {
        let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(tap.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: TUNSETPERSIST takes an integer argument.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
    .await
}

/// Sets the sysctl `key` (dotted, `net.ipv4.ip_forward`) to `value` inside
/// `ns` (none: the agent's namespace), as `sysctl -w` would there: a
/// /proc/sys/net file refers to the namespace of the thread that opens it.
pub(super) async fn write_sysctl(ns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    in_netns(ns, &format!("set {key}={value}"), move || std::fs::write(&path, value.as_bytes())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names of throwaway namespaces, deleted when dropped (even when an
    /// assertion failed first).
    struct Namespaces(Vec<String>);

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }

    fn ip_json(ns: &str, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new("ip").args(["-n", ns, "-d", "-j"]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        uid == 0
    }

    #[tokio::test]
    async fn builds_a_network_inside_namespaces_and_reads_it_back() {
        if !root() {
            eprintln!("skipped: creating namespaces needs root");
            return;
        }
        let pid = std::process::id();
        let (host, router) = (format!("nubo-nlt{pid}h"), format!("nubo-nlt{pid}r"));
        let _guard = Namespaces(vec![host.clone(), router.clone()]);
        for n in [&host, &router] {
            assert!(std::process::Command::new("ip").args(["netns", "add", n]).status().unwrap().success());
        }
        let host_path = PathBuf::from("/run/netns").join(&host);
        let router_path = PathBuf::from("/run/netns").join(&router);
        let h = Netlink::open(Some(&host_path)).await.unwrap();
        let r = Netlink::open(Some(&router_path)).await.unwrap();

        assert!(!h.exists("nb7").await.unwrap());
        h.add_bridge("nb7").await.unwrap();
        assert!(h.exists("nb7").await.unwrap());
        assert!(is_bridge_kind(h.kind("nb7").await.unwrap().as_deref()));
        h.set("lo", &[Set::Up]).await.unwrap();
        h.set("nb7", &[Set::Up]).await.unwrap();

        // A veth whose peer lands, named, in the router's namespace.
        h.add_veth("nr7", "gw", Some(&router_path)).await.unwrap();
        assert!(!h.exists("gw").await.unwrap(), "the peer left the host's namespace");
        assert!(r.exists("gw").await.unwrap());
        h.set("nr7", &[Set::Master("nb7"), Set::Mtu(1450), Set::Up]).await.unwrap();
        h.isolate("nr7").await.unwrap();
        let mac = [0x02, 0x4e, 0x75, 0, 0, 7];
        r.set("gw", &[Set::Mac(mac), Set::Mtu(1450), Set::Up]).await.unwrap();
        let gw: Ipv4Addr = "10.7.0.1".parse().unwrap();
        r.ensure_address("gw", gw, 24).await.unwrap();
        r.ensure_address("gw", gw, 24).await.unwrap(); // idempotent
        r.ensure_address("gw", "169.254.169.254".parse().unwrap(), 32).await.unwrap();
        let mut addrs = r.addresses("gw").await.unwrap();
        addrs.sort();
        assert_eq!(addrs, [(gw, 24), ("169.254.169.254".parse().unwrap(), 32)]);
        assert_eq!(r.mac("gw").await.unwrap(), Some(mac));

        let bridge_index = h.index("nb7").await.unwrap();
        assert_eq!(h.master("nr7").await.unwrap(), bridge_index);
        let port = &ip_json(&host, &["link", "show", "dev", "nr7"])[0];
        assert_eq!(port["mtu"], 1450);
        assert_eq!(port["linkinfo"]["info_slave_kind"], "bridge");
        assert_eq!(port["linkinfo"]["info_slave_data"]["isolated"], true);

        // VXLAN with head-end replication entries.
        let underlay: Ipv4Addr = "192.0.2.10".parse().unwrap();
        h.add_vxlan("nx7", 7, underlay, 4789, 1450).await.unwrap();
        let vx = &ip_json(&host, &["link", "show", "dev", "nx7"])[0];
        assert_eq!(vx["linkinfo"]["info_kind"], "vxlan");
        assert_eq!(vx["linkinfo"]["info_data"]["id"], 7);
        assert_eq!(vx["linkinfo"]["info_data"]["local"], "192.0.2.10");
        assert_eq!(vx["linkinfo"]["info_data"]["port"], 4789);
        assert_eq!(vx["mtu"], 1450);
        // As `ip link add ... type vxlan` leaves them: unicast is learnt.
        assert_eq!(vx["linkinfo"]["info_data"]["learning"], true);
        let (p1, p2): (Ipv4Addr, Ipv4Addr) = ("192.0.2.11".parse().unwrap(), "192.0.2.12".parse().unwrap());
        h.append_flood_peer("nx7", p1).await.unwrap();
        h.append_flood_peer("nx7", p2).await.unwrap();
        let mut peers = h.flood_peers("nx7").await.unwrap();
        peers.sort();
        assert_eq!(peers, [p1, p2]);
        h.delete_flood_peer("nx7", p1).await.unwrap();
        assert_eq!(h.flood_peers("nx7").await.unwrap(), [p2]);

        // Routes and proxy ARP entries.
        h.set("nr7", &[Set::NoMaster]).await.unwrap();
        assert_eq!(h.master("nr7").await.unwrap(), None);
        h.ensure_address("nb7", "100.64.0.1".parse().unwrap(), 30).await.unwrap();
        let fip: Ipv4Addr = "203.0.113.5".parse().unwrap();
        let route =
            Route { dst: fip, len: 32, via: Some("100.64.0.2".parse().unwrap()), dev: Some("nb7"), metric: None };
        h.replace_route(route).await.unwrap();
        h.replace_route(route).await.unwrap(); // idempotent
        let on_link =
            Route { dst: "198.51.100.0".parse().unwrap(), len: 24, via: None, dev: Some("nb7"), metric: Some(4242) };
        h.replace_route(on_link).await.unwrap();
        assert_eq!(h.host_routes("nb7").await.unwrap(), [fip]);
        let routes = ip_json(&host, &["route", "show", "dev", "nb7"]);
        let lan = routes.as_array().unwrap().iter().find(|r| r["dst"] == "198.51.100.0/24").unwrap();
        assert_eq!(lan["metric"], 4242);
        assert_eq!(lan["scope"], "link");
        h.delete_host_route(fip, "nb7").await.unwrap();
        assert!(h.host_routes("nb7").await.unwrap().is_empty());
        r.ensure_address("gw", gw, 24).await.unwrap();
        r.replace_route(Route {
            dst: Ipv4Addr::UNSPECIFIED,
            len: 0,
            via: Some("10.7.0.9".parse().unwrap()),
            dev: None,
            metric: None,
        })
        .await
        .unwrap();
        let default = ip_json(&router, &["route", "show", "default"]);
        assert_eq!(default[0]["gateway"], "10.7.0.9");
        h.replace_proxy("nb7", fip).await.unwrap();
        h.replace_proxy("nb7", fip).await.unwrap(); // idempotent
        assert_eq!(h.proxies("nb7").await.unwrap(), [fip]);
        h.delete_proxy("nb7", fip).await.unwrap();
        assert!(h.proxies("nb7").await.unwrap().is_empty());

        // A VLAN, a persistent tap, and a per-namespace sysctl.
        let mut links = vec!["nt7", "nx7", "nr7", "nb7"];
        match h.add_vlan("nv7", "nr7", 42).await {
            Ok(()) => {
                let vlan = &ip_json(&host, &["link", "show", "dev", "nv7"])[0];
                assert_eq!(vlan["linkinfo"]["info_data"]["id"], 42);
                links.insert(0, "nv7");
            }
            // Some kernels (this test's CI VM's) are built without 802.1Q.
            Err(e) if e.to_string().contains("os error 95") => eprintln!("VLAN part skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
        create_tap(Some(&host_path), "nt7").await.unwrap();
        let tap = &ip_json(&host, &["link", "show", "dev", "nt7"])[0];
        assert_eq!(tap["linkinfo"]["info_kind"], "tun");
        assert_eq!(tap["linkinfo"]["info_data"]["type"], "tap");
        assert_eq!(tap["linkinfo"]["info_data"]["persist"], true);
        // A new namespace starts from the machine's own setting (IPv4's
        // inherit it), which other tests or the machine may have turned on.
        write_sysctl(Some(&host_path), "net.ipv4.ip_forward", "0").await.unwrap();
        write_sysctl(Some(&router_path), "net.ipv4.ip_forward", "1").await.unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &router, "cat", "/proc/sys/net/ipv4/ip_forward"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &host, "cat", "/proc/sys/net/ipv4/ip_forward"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "only the router's namespace changed");

        for l in links {
            h.delete(l).await.unwrap();
            assert!(!h.exists(l).await.unwrap(), "{l}");
        }
        assert!(!r.exists("gw").await.unwrap(), "deleting one end of a veth deletes both");
    }
}
