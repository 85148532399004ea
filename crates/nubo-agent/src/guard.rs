//! What a guest reaches on its host. This module owns the confinement of
//! guests' host-side traffic: the cgroup v2 subtree every QEMU of this
//! agent runs in, and the nftables table that refuses what comes out of it
//! towards the host itself.
//!
//! Why this mechanism: QEMU's user-mode network (libslirp) hands a
//! guest's connections to its gateway (169.254.0.2) to the host's
//! 127.0.0.1, so without it a guest reaches the control plane, the agent,
//! other instances' forwarded ports, balancers and any local database.
//! QEMU 7.2 does not expose libslirp's `disable_host_loopback`;
//! `restrict=on` also ends all egress; and running slirp in a network
//! namespace of its own would move the forwarded ports (`hostfwd` on the
//! host's 127.0.0.1) out of the host's reach. What QEMU sends on the
//! guest's behalf are ordinary sockets of the QEMU process, so the kernel
//! can tell them apart by that process's cgroup: every QEMU is moved into
//! `<cgroup2>/nubo/<host-id>/<instance-id>` before it runs (see
//! `nubo_hypervisor::Qemu::with_cgroup`; its children, the metadata
//! relays, inherit it), and one table in the namespace QEMU runs in
//! rejects every *new* flow (TCP, UDP and the rest, IPv4 and IPv6) from
//! that subtree to any address of this host (`fib daddr type local`:
//! loopback and the host's own addresses alike). Replies on forwarded
//! ports belong to flows the host opened (`established`), so they pass;
//! egress to other machines passes. The metadata relay talks to the agent
//! over a unix socket, which no IP rule touches.
//!
//! One more wrinkle: libslirp hands each guest connection to the metadata
//! relay (`guestfwd=...-cmd:`) through a TCP "socketpair" of its own: a
//! listener on 127.0.0.1:<ephemeral> and a connect to it, inside QEMU.
//! So a guest QEMU's TCP towards a local address is only marked on the
//! way out, with a mark per VM, and decided on the way in, where the
//! kernel knows the listening socket: it passes only when that listener
//! belongs to the same VM's QEMU. Another VM's forwarded port, the control
//! plane and every other service fail that test.
//!
//! Exceptions, each as narrow as it can be:
//! - a live migration's streams: the source QEMU connects to the target's
//!   NBD and migration ports, which are on 127.0.0.1 when both hosts share
//!   a machine (tests). [`GuestGuard::allow_migration`] lets exactly that
//!   VM's cgroup reach exactly those ports for the migration's duration.
//! - DNS: slirp forwards a guest's queries to the host's resolvers, which
//!   may be a loopback stub (127.0.0.53); those addresses, port 53 only.
//!
//! Several agents may share a machine (tests do): each has its own
//! subtree and table, named after its host id, and holds a lock file for
//! its life, so an agent starting later removes what a dead one left
//! behind once no VM of it runs any more.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// nft resolves `socket cgroupv2` paths under this directory.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// VMs per host that get a conntrack mark of their own (more than any
/// host runs): the low 16 bits of the mark; the high 16 bits are the
/// agent's tag (see `agent_tag`), since every agent's input chain sees
/// every agent's connections.
const MAX_VM_MARKS: usize = 0xfffe;
/// Where agents keep the lock files that say they are alive.
const LOCK_DIR: &str = "/run/nubo/guard";

/// Why guests could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("no cgroup v2 hierarchy is mounted under {CGROUP_ROOT} (see /proc/self/mountinfo); mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`)")]
    NoCgroup2,
    #[error("cannot {what} {path}: {source}; the agent must run as root")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run nft: {0}; install nftables")]
    NftMissing(#[source] std::io::Error),
    #[error("nft refused the guest confinement table: {0}")]
    Nft(String),
}

impl GuardError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        GuardError::Io { what, path: path.to_path_buf(), source }
    }
}

/// A cgroup as nft names it: the path below /sys/fs/cgroup and its depth
/// in the v2 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRef {
    pub path: String,
    pub level: usize,
}

/// A live migration's streams that may leave the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Allowance {
    instance: String,
    dest: IpAddr,
    ports: Vec<u16>,
}

/// The confinement of this agent's guests (see the module doc).
#[derive(Debug)]
pub struct GuestGuard {
    host: String,
    cgroup: PathBuf,
    cg: CgroupRef,
    table: String,
    dns: Vec<IpAddr>,
    allowances: Mutex<(u64, BTreeMap<u64, Allowance>)>,
    /// Held for the agent's life: the proof that it is alive.
    _lock: std::fs::File,
}

/// The table name of host `host`: nft names take letters, digits and `_`.
pub fn table_name(host: &str) -> String {
    let clean: String = host.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("nubo_guard_{clean}")
}

/// The mount point of the cgroup v2 hierarchy, from a mountinfo text:
/// one under /sys/fs/cgroup (nft looks nowhere else).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2" && Path::new(mount).starts_with(CGROUP_ROOT))
            .then(|| PathBuf::from(mount))
    })
}

/// How nft names `dir` (a cgroup below the v2 mount `mount`).
pub fn cgroup_ref(mount: &Path, dir: &Path) -> Option<CgroupRef> {
    let below_root = dir.strip_prefix(CGROUP_ROOT).ok()?;
    let level = dir.strip_prefix(mount).ok()?.components().count();
    Some(CgroupRef { path: below_root.to_str()?.to_string(), level })
}

/// Loopback name servers in a resolv.conf text (slirp forwards DNS there).
pub fn loopback_resolvers(resolv: &str) -> Vec<IpAddr> {
    resolv
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|a| a.is_loopback())
        .collect()
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// The whole table, replacing any earlier one in the same transaction.
/// `vms` are the instance ids whose QEMU cgroups exist now: each gets a
/// mark of its own, so the input hook can let a VM's QEMU reach its own
/// listeners (slirp's socketpair) and nothing else on this host.
/// The high half of this agent's conntrack marks: a hash of its host id,
/// never 0 (unmarked connections). Two agents on one machine with the same
/// tag would refuse each other's metadata connections (closed, not open).
pub fn agent_tag(host: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in host.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h ^ (h >> 16)) & 0xffff).max(1)
}

fn render(table: &str, cg: &CgroupRef, dns: &[IpAddr], allowances: &[&Allowance], vms: &[String], tag: u32) -> String {
    let mut guests = String::new();
    let mut input = String::new();
    for a in allowances {
        let ports: Vec<String> = a.ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            guests,
            "    socket cgroupv2 level {} \"{}/{}\" {} daddr {} tcp dport {{ {} }} accept",
            cg.level + 1,
            cg.path,
            a.instance,
            family(&a.dest),
            a.dest,
            ports.join(", ")
        );
    }
    for d in dns {
        let _ = writeln!(guests, "    {} daddr {d} meta l4proto {{ tcp, udp }} th dport 53 accept", family(d));
    }
    for (i, vm) in vms.iter().take(MAX_VM_MARKS).enumerate() {
        let mark = (tag << 16) | (1 + i as u32);
        let sock = format!("socket cgroupv2 level {} \"{}/{vm}\"", cg.level + 1, cg.path);
        let _ = writeln!(guests, "    {sock} meta l4proto tcp fib daddr type local ct mark set {mark:#x} accept");
        let _ = writeln!(input, "    ct mark {mark:#x} ct state new {sock} accept");
    }
    // A QEMU without a mark of its own (not yet in `vms`) reaches nothing.
    guests.push_str("    fib daddr type local reject\n");
    format!(
        "table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    ct state new socket cgroupv2 level {level} \"{path}\" jump guests\n  }}\n  chain guests {{\n{guests}  }}\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{input}    ct mark and 0xffff0000 == {agent:#x} ct state new meta l4proto tcp reject with tcp reset\n  }}\n}}\n",
        level = cg.level,
        path = cg.path,
        agent = tag << 16,
    )
}

fn nft(ruleset: &str) -> Result<(), GuardError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(GuardError::NftMissing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes()).map_err(GuardError::NftMissing)?;
    }
    let out = child.wait_with_output().map_err(GuardError::NftMissing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GuardError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Whether a cgroup and all below it hold no process.
fn cgroup_empty(dir: &Path) -> bool {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if !procs.trim().is_empty() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return true };
    entries.flatten().filter(|e| e.path().is_dir()).all(|e| cgroup_empty(&e.path()))
}

/// Removes an empty cgroup subtree (children first); false if it is not.
fn remove_cgroup(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten().filter(|e| e.path().is_dir()) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

impl GuestGuard {
    /// Sets up the confinement of host `host`'s guests, replacing any left
    /// from an earlier run: the cgroup subtree, the table, and the clean-up
    /// of what dead agents left behind.
    pub fn install(host: &str) -> Result<Arc<Self>, GuardError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| GuardError::io("read", Path::new("/proc/self/mountinfo"), e))?;
        let mount = cgroup2_mount(&mountinfo).ok_or(GuardError::NoCgroup2)?;
        let base = mount.join("nubo");
        let cgroup = base.join(host);
        std::fs::create_dir_all(&cgroup).map_err(|e| GuardError::io("create the cgroup", &cgroup, e))?;
        let cg = cgroup_ref(&mount, &cgroup).ok_or(GuardError::NoCgroup2)?;
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| GuardError::io("create", Path::new(LOCK_DIR), e))?;
        let lock_path = Path::new(LOCK_DIR).join(format!("{host}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| GuardError::io("open", &lock_path, e))?;
        // Blocks only while an agent of the same host id is still exiting.
        lock.lock().map_err(|e| GuardError::io("lock", &lock_path, e))?;
        let dns = loopback_resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        let guard = GuestGuard {
            host: host.to_string(),
            cgroup,
            cg,
            table: table_name(host),
            dns,
            allowances: Mutex::new((0, BTreeMap::new())),
            _lock: lock,
        };
        guard.apply()?;
        tracing::info!(host, cgroup = %guard.cgroup.display(), table = %guard.table,
            "guests confined: no new connection from a VM to this host's addresses");
        collect_dead_agents(&base, host);
        Ok(Arc::new(guard))
    }

    /// The cgroup every QEMU of this agent starts in (a child per VM).
    pub fn cgroup_dir(&self) -> &Path {
        &self.cgroup
    }

    fn apply(&self) -> Result<(), GuardError> {
        let a = self.allowances.lock().unwrap_or_else(|p| p.into_inner());
        let list: Vec<&Allowance> = a.1.values().collect();
        // The VMs' cgroups as they are now; one may go between this look
        // and the load (nft then refuses its path), so a second try.
        let mut last = Ok(());
        for _ in 0..2 {
            let vms = self.vm_cgroups();
            last = nft(&render(&self.table, &self.cg, &self.dns, &list, &vms, agent_tag(&self.host)));
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// The instance ids that have a cgroup under this agent's.
    fn vm_cgroups(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.cgroup)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Called after a QEMU started (its cgroup now exists): gives it its
    /// mark, without which it cannot reach even its own metadata relay.
    pub fn vm_started(&self, instance: &str) {
        if let Err(e) = self.apply() {
            tracing::warn!(instance, error = %e, "cannot update the guest confinement for a new VM; its metadata service fails until the next start");
        }
    }

    /// Lets instance `instance`'s QEMU (only it) open connections to
    /// `dest` on `ports` until the returned window drops: a live
    /// migration's NBD and state streams to a target on this machine.
    /// Acceptable because it is one VM's cgroup, one address, two ports
    /// and the seconds the migration runs; the ports are the target QEMU's
    /// own listeners for this VM, and its guest can already do anything
    /// that VM can.
    pub fn allow_migration(
        self: &Arc<Self>,
        instance: &str,
        dest: IpAddr,
        ports: &[u16],
    ) -> Result<MigrationWindow, GuardError> {
        let id = {
            let mut a = self.allowances.lock().unwrap_or_else(|p| p.into_inner());
            a.0 += 1;
            let id = a.0;
            a.1.insert(id, Allowance { instance: instance.to_string(), dest, ports: ports.to_vec() });
            id
        };
        let window = MigrationWindow { guard: self.clone(), id };
        self.apply()?;
        tracing::info!(instance, %dest, ?ports, "migration streams may leave the guest confinement");
        Ok(window)
    }

    /// On a clean shutdown: removes the table and the cgroup, unless VMs
    /// still run in it (they outlive the agent, and stay confined).
    pub fn remove(&self) {
        if !cgroup_empty(&self.cgroup) {
            tracing::info!(host = %self.host, "VMs keep running: their confinement stays in place");
            return;
        }
        if remove_cgroup(&self.cgroup) {
            let t = &self.table;
            if let Err(e) = nft(&format!("table inet {t} {{}}\ndelete table inet {t}\n")) {
                tracing::warn!(host = %self.host, error = %e, "cannot remove the guest confinement table");
            }
        }
    }
}

/// A migration's exception to the confinement; closed when dropped.
#[derive(Debug)]
pub struct MigrationWindow {
    guard: Arc<GuestGuard>,
    id: u64,
}

impl Drop for MigrationWindow {
    fn drop(&mut self) {
        self.guard.allowances.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&self.id);
        if let Err(e) = self.guard.apply() {
            tracing::warn!(host = %self.guard.host, error = %e, "cannot close a migration's window in the guest confinement");
        }
    }
}

/// Removes the subtrees and tables of agents that are gone (their lock is
/// free) and whose VMs are all gone too.
fn collect_dead_agents(base: &Path, me: &str) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        if name == me || !e.path().is_dir() {
            continue;
        }
        let lock_path = Path::new(LOCK_DIR).join(format!("{name}.lock"));
        let Ok(lock) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path) else {
            continue;
        };
        if lock.try_lock().is_err() || !cgroup_empty(&e.path()) {
            continue;
        }
        if remove_cgroup(&e.path()) {
            let t = table_name(&name);
            let _ = nft(&format!("table inet {t} {{}}\ndelete table inet {t}\n"));
            let _ = std::fs::remove_file(&lock_path);
            tracing::info!(host = %name, "removed the guest confinement of an agent that is gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let mount = cgroup2_mount(hybrid).unwrap();
        assert_eq!(mount, PathBuf::from("/sys/fs/cgroup/unified"));
        let r = cgroup_ref(&mount, &mount.join("nubo/h-1")).unwrap();
        assert_eq!(r, CgroupRef { path: "unified/nubo/h-1".into(), level: 2 });
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let mount = cgroup2_mount(unified).unwrap();
        assert_eq!(cgroup_ref(&mount, &mount.join("nubo/h-1")).unwrap().path, "nubo/h-1");
        assert_eq!(cgroup2_mount("41 31 0:38 / /mnt/cg rw - cgroup2 cgroup2 rw\n"), None);
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn agents_have_tags_of_their_own() {
        assert_ne!(agent_tag("h-0123456789abcdef0"), agent_tag("h-0123456789abcdef1"));
        assert!((1..=0xffff).contains(&agent_tag("")));
    }

    #[test]
    fn table_names_and_resolvers() {
        assert_eq!(table_name("h-0123abcd"), "nubo_guard_h_0123abcd");
        let r = loopback_resolvers("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\nsearch x\n");
        assert_eq!(r, vec!["127.0.0.53".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]);
    }

    /// The host's own addresses (not only loopback) are refused: the rule
    /// is `fib daddr type local`, for every protocol, after the exceptions;
    /// TCP only to a listener of the same VM's QEMU.
    #[test]
    fn ruleset_refuses_every_local_address_after_narrow_exceptions() {
        let cg = CgroupRef { path: "unified/nubo/h-1".into(), level: 2 };
        let mig = Allowance { instance: "i-1".into(), dest: "127.0.0.1".parse().unwrap(), ports: vec![4000, 4001] };
        let vms = vec!["i-1".to_string(), "i-2".to_string()];
        let text = render("nubo_guard_h_1", &cg, &["127.0.0.53".parse().unwrap()], &[&mig], &vms, 0x4e75);
        assert!(text.starts_with("table inet nubo_guard_h_1 {}\ndelete table inet nubo_guard_h_1\n"), "{text}");
        assert!(text.contains("type filter hook output priority 0; policy accept;"));
        assert!(text.contains("ct state new socket cgroupv2 level 2 \"unified/nubo/h-1\" jump guests"));
        let guests = text.split("chain guests {").nth(1).unwrap();
        let lines: Vec<&str> = guests.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "socket cgroupv2 level 3 \"unified/nubo/h-1/i-1\" ip daddr 127.0.0.1 tcp dport { 4000, 4001 } accept",
                "ip daddr 127.0.0.53 meta l4proto { tcp, udp } th dport 53 accept",
                "socket cgroupv2 level 3 \"unified/nubo/h-1/i-1\" meta l4proto tcp fib daddr type local ct mark set 0x4e750001 accept",
                "socket cgroupv2 level 3 \"unified/nubo/h-1/i-2\" meta l4proto tcp fib daddr type local ct mark set 0x4e750002 accept",
                "fib daddr type local reject",
                "}",
                "chain input {",
                "type filter hook input priority 0; policy accept;",
                "ct mark 0x4e750001 ct state new socket cgroupv2 level 3 \"unified/nubo/h-1/i-1\" accept",
                "ct mark 0x4e750002 ct state new socket cgroupv2 level 3 \"unified/nubo/h-1/i-2\" accept",
                "ct mark and 0xffff0000 == 0x4e750000 ct state new meta l4proto tcp reject with tcp reset",
                "}",
                "}",
            ]
        );
        let v6 = render("t", &cg, &["::1".parse().unwrap()], &[], &[], 1);
        assert!(v6.contains("ip6 daddr ::1 meta l4proto { tcp, udp } th dport 53 accept"));
    }
}
