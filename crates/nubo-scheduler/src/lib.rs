//! Placement: which host gets a new instance, a moved one, or a volume's
//! bytes. Pure functions over a snapshot of hosts, so the same code runs
//! against the database's hosts and against the in-memory host set of the
//! placement benchmark.
//!
//! Filters each say yes or no with a reason; a refusal lists, per host,
//! the first filter that rejected it (never a bare "no valid host").
//! [`Constraints`] add the caller's conditions (a host to avoid or to
//! pin, private networks, shared storage) as filters of the same kind, so
//! every turned-away host is explained the same way. Weighers order the
//! survivors. The claim itself (atomic) is the caller's job: the control
//! plane re-checks capacity in one conditional UPDATE, whose condition is
//! the capacity filters' arithmetic (`used + asked <= limit`, the limits
//! from [`Policy::limits`]), and moves to the next candidate when a
//! concurrent claim won.
//!
//! [`HostIndex`] answers what [`choose`] answers without scanning every
//! host (hosts grouped by size and attributes, ordered by free capacity);
//! see `index`.

mod index;

pub use index::HostIndex;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the scheduler needs to know about one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSnapshot {
    pub id: String,
    pub name: String,
    /// The host reported recently and is not disabled.
    pub up: bool,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub used_vcpus: u32,
    pub used_memory_mib: u64,
    pub used_disk_gib: u64,
    /// The host runs private networks (bridges and VXLAN on an underlay).
    pub underlay: bool,
    /// The shared storage the host's disks are on, if any (its name).
    pub shared_storage: Option<String>,
    /// The external networks' interface names the host maps (`--external NAME=IFACE`).
    pub externals: Vec<String>,
}

/// The resources one instance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// What is asked of a host: room for an instance, or only room in its
/// storage pool (a volume, a volume grown, a snapshot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Instance(Demand),
    Pool { gib: u64 },
}

impl Demand {
    /// Nothing asked: a host's own free fraction.
    pub const ZERO: Demand = Demand { vcpus: 0, memory_mib: 0, disk_gib: 0 };
}

impl From<Demand> for Need {
    fn from(d: Demand) -> Self {
        Need::Instance(d)
    }
}

/// How hosts are ordered once filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Weigher {
    /// Prefer the host with the most free capacity (even load).
    #[default]
    Spread,
    /// Prefer the fullest host that still fits (free whole hosts).
    Pack,
    /// Prefer the host with the most free storage-pool space. Where
    /// volumes go; not an operator's choice for instances.
    #[serde(skip)]
    FreeDisk,
}

impl std::str::FromStr for Weigher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Self::Spread),
            "pack" => Ok(Self::Pack),
            other => Err(format!("unknown weigher '{other}': use 'spread' or 'pack'")),
        }
    }
}

/// Operator-tunable placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// vCPUs that may be promised per physical CPU (OpenStack's default is 16; ours 4).
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    pub disk_overcommit: f64,
    pub weigher: Weigher,
}

impl Default for Policy {
    fn default() -> Self {
        Self { cpu_overcommit: 4.0, memory_overcommit: 1.0, disk_overcommit: 1.0, weigher: Weigher::Spread }
    }
}

/// What a host may hold under a policy: the limits the capacity filters
/// compare against, and the ones the claim's conditional write re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

impl Policy {
    pub fn schedulable_vcpus(&self, h: &HostSnapshot) -> u64 {
        (f64::from(h.vcpus) * self.cpu_overcommit).floor() as u64
    }
    pub fn schedulable_memory(&self, h: &HostSnapshot) -> u64 {
        (h.memory_mib as f64 * self.memory_overcommit).floor() as u64
    }
    pub fn schedulable_disk(&self, h: &HostSnapshot) -> u64 {
        (h.disk_gib as f64 * self.disk_overcommit).floor() as u64
    }
    /// All three limits of a host.
    pub fn limits(&self, h: &HostSnapshot) -> Limits {
        Limits {
            vcpus: self.schedulable_vcpus(h),
            memory_mib: self.schedulable_memory(h),
            disk_gib: self.schedulable_disk(h),
        }
    }
}

/// The caller's conditions on the host, beyond room for the need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constraints<'a> {
    /// Only this host (by id) is considered; the others are not listed in
    /// a refusal, since the caller did not ask about them.
    pub pin: Option<&'a str>,
    /// Never this host (by id): the instance's own, or a dead one.
    pub exclude: Option<&'a str>,
    /// The host must run private networks (the instance is on some).
    pub underlay: bool,
    /// The host must share this storage (the instance's disks are on it).
    pub shared_storage: Option<&'a str>,
    /// The host must map each of these external networks' interface
    /// names (the instance is on them, or has a floating IP of one).
    pub externals: &'a [String],
    /// The host must be up. Off only where the need is bound to a host
    /// whatever its state (a volume's pool is claimed while its host is
    /// down, for the volume lives there).
    pub require_up: bool,
    /// How survivors are ordered; `None`: the policy's weigher (for an
    /// instance) or [`Weigher::FreeDisk`] (for a pool).
    pub weigher: Option<Weigher>,
}

impl Default for Constraints<'_> {
    fn default() -> Self {
        Self {
            pin: None,
            exclude: None,
            underlay: false,
            shared_storage: None,
            externals: &[],
            require_up: true,
            weigher: None,
        }
    }
}

/// One host turned away, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub host: String,
    pub filter: &'static str,
    pub reason: String,
}

/// No host can take the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rejections: Vec<Rejection>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rejections.is_empty() {
            return write!(f, "no compute host is registered: start `nubo agent` on a host (or use `nubo up`)");
        }
        write!(f, "no host can take this instance: ")?;
        // Long fleets: name the first few hosts, then summarise by filter.
        const SHOWN: usize = 5;
        for (i, r) in self.rejections.iter().take(SHOWN).enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "host {} rejected by {}: {}", r.host, r.filter, r.reason)?;
        }
        if self.rejections.len() > SHOWN {
            let mut counts: Vec<(&str, usize)> = Vec::new();
            for r in &self.rejections {
                match counts.iter_mut().find(|(n, _)| *n == r.filter) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((r.filter, 1)),
                }
            }
            let summary: Vec<String> = counts.iter().map(|(n, c)| format!("{n}: {c}")).collect();
            write!(f, "; {} hosts in all ({})", self.rejections.len(), summary.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// Names of the filters, for callers that explain a refusal their own way.
pub mod filter {
    pub const EXCLUDE: &str = "ExcludeFilter";
    pub const UNDERLAY: &str = "UnderlayFilter";
    pub const EXTERNAL: &str = "ExternalNetworkFilter";
    pub const SHARED_STORAGE: &str = "SharedStorageFilter";
    pub const HOST_STATE: &str = "HostStateFilter";
    pub const VCPU: &str = "VcpuFilter";
    pub const MEMORY: &str = "MemoryFilter";
    pub const DISK: &str = "DiskFilter";
    pub const POOL: &str = "PoolFilter";
}

type Filter = fn(&HostSnapshot, &Need, &Policy, &Constraints) -> Result<(), String>;

/// The filters, in the order they are applied: the caller's conditions
/// first (a host that may not take the instance at all is named for that,
/// not for being full), then state, then room.
const FILTERS: &[(&str, Filter)] = &[
    (filter::EXCLUDE, exclude_filter),
    (filter::UNDERLAY, underlay_filter),
    (filter::EXTERNAL, external_filter),
    (filter::SHARED_STORAGE, shared_storage_filter),
    (filter::HOST_STATE, host_state_filter),
    (filter::VCPU, vcpu_filter),
    (filter::MEMORY, memory_filter),
    (filter::DISK, disk_filter),
    (filter::POOL, pool_filter),
];

fn exclude_filter(h: &HostSnapshot, _: &Need, _: &Policy, c: &Constraints) -> Result<(), String> {
    match c.exclude {
        Some(x) if x == h.id => Err("the instance is already on it".into()),
        _ => Ok(()),
    }
}

fn underlay_filter(h: &HostSnapshot, _: &Need, _: &Policy, c: &Constraints) -> Result<(), String> {
    if !c.underlay || h.underlay {
        Ok(())
    } else {
        Err("runs no private networks (its agent has no --underlay)".into())
    }
}

fn external_filter(h: &HostSnapshot, _: &Need, _: &Policy, c: &Constraints) -> Result<(), String> {
    match c.externals.iter().find(|n| !h.externals.contains(n)) {
        Some(n) => Err(format!("maps no interface to external network '{n}' (its agent has no --external {n}=IFACE)")),
        None => Ok(()),
    }
}

fn shared_storage_filter(h: &HostSnapshot, _: &Need, _: &Policy, c: &Constraints) -> Result<(), String> {
    match c.shared_storage {
        Some(s) if h.shared_storage.as_deref() != Some(s) => Err(format!("does not share storage {s}")),
        _ => Ok(()),
    }
}

fn host_state_filter(h: &HostSnapshot, _: &Need, _: &Policy, c: &Constraints) -> Result<(), String> {
    if h.up || !c.require_up {
        Ok(())
    } else {
        Err("host is down or disabled".into())
    }
}

fn vcpu_filter(h: &HostSnapshot, n: &Need, p: &Policy, _: &Constraints) -> Result<(), String> {
    let Need::Instance(d) = n else { return Ok(()) };
    let limit = p.schedulable_vcpus(h);
    let free = limit.saturating_sub(u64::from(h.used_vcpus));
    if u64::from(d.vcpus) <= free {
        Ok(())
    } else {
        Err(format!(
            "needs {} vCPUs, {} free ({} used of {} schedulable = {} CPUs x overcommit {})",
            d.vcpus, free, h.used_vcpus, limit, h.vcpus, p.cpu_overcommit
        ))
    }
}

fn memory_filter(h: &HostSnapshot, n: &Need, p: &Policy, _: &Constraints) -> Result<(), String> {
    let Need::Instance(d) = n else { return Ok(()) };
    let limit = p.schedulable_memory(h);
    let free = limit.saturating_sub(h.used_memory_mib);
    if d.memory_mib <= free {
        Ok(())
    } else {
        Err(format!("needs {} MiB of memory, {} MiB free of {} MiB", d.memory_mib, free, limit))
    }
}

fn disk_filter(h: &HostSnapshot, n: &Need, p: &Policy, _: &Constraints) -> Result<(), String> {
    let Need::Instance(d) = n else { return Ok(()) };
    let limit = p.schedulable_disk(h);
    let free = limit.saturating_sub(h.used_disk_gib);
    if d.disk_gib <= free {
        Ok(())
    } else {
        Err(format!("needs {} GiB of disk, {} GiB free of {} GiB", d.disk_gib, free, limit))
    }
}

fn pool_filter(h: &HostSnapshot, n: &Need, p: &Policy, _: &Constraints) -> Result<(), String> {
    let Need::Pool { gib } = *n else { return Ok(()) };
    let limit = p.schedulable_disk(h);
    let free = limit.saturating_sub(h.used_disk_gib);
    if gib <= free {
        Ok(())
    } else {
        Err(format!("storage pool has {free} GiB free ({} of {limit} GiB in use)", h.used_disk_gib))
    }
}

/// Runs every filter on one host; the first that fails names the reason.
pub fn check(h: &HostSnapshot, n: &Need, p: &Policy, c: &Constraints) -> Result<(), Rejection> {
    for (name, f) in FILTERS {
        f(h, n, p, c).map_err(|reason| Rejection { host: h.name.clone(), filter: name, reason })?;
    }
    Ok(())
}

/// [`check`] for an instance with no constraints.
pub fn check_host(h: &HostSnapshot, d: &Demand, p: &Policy) -> Result<(), Rejection> {
    check(h, &Need::Instance(*d), p, &Constraints::default())
}

/// Free fraction of the host after placing `d`, averaged over CPU and memory.
fn free_fraction_after(h: &HostSnapshot, d: &Demand, p: &Policy) -> f64 {
    free_fraction(&p.limits(h), h.used_vcpus, h.used_memory_mib, d)
}

/// The same arithmetic from a host's limits and usage (the index keeps
/// these per class and usage), so both compute bit-identical weights.
fn free_fraction(l: &Limits, used_vcpus: u32, used_memory_mib: u64, d: &Demand) -> f64 {
    let cpu_limit = l.vcpus.max(1) as f64;
    let mem_limit = l.memory_mib.max(1) as f64;
    let cpu_free = (cpu_limit - f64::from(used_vcpus) - f64::from(d.vcpus)) / cpu_limit;
    let mem_free = (mem_limit - used_memory_mib as f64 - d.memory_mib as f64) / mem_limit;
    (cpu_free + mem_free) / 2.0
}

/// A host's weight under `w`: the higher, the better.
fn weight(h: &HostSnapshot, n: &Need, p: &Policy, w: Weigher) -> f64 {
    let d = match *n {
        Need::Instance(d) => d,
        Need::Pool { gib } => Demand { vcpus: 0, memory_mib: 0, disk_gib: gib },
    };
    match w {
        Weigher::Spread => free_fraction_after(h, &d, p),
        Weigher::Pack => -free_fraction_after(h, &d, p),
        Weigher::FreeDisk => p.schedulable_disk(h).saturating_sub(h.used_disk_gib) as f64,
    }
}

fn weigher_for(n: &Need, p: &Policy, c: &Constraints) -> Weigher {
    c.weigher.unwrap_or(match n {
        Need::Instance(_) => p.weigher,
        Need::Pool { .. } => Weigher::FreeDisk,
    })
}

/// Hosts that meet `n` under the constraints, best first. Ties keep
/// input order, so the result is deterministic for a given snapshot. A
/// refusal lists every considered host (all, or the pinned one).
pub fn choose<'a>(
    hosts: &'a [HostSnapshot],
    n: &Need,
    p: &Policy,
    c: &Constraints,
) -> Result<Vec<&'a HostSnapshot>, Refusal> {
    let w = weigher_for(n, p, c);
    let mut fits: Vec<(f64, &HostSnapshot)> = Vec::new();
    let mut rejections = Vec::new();
    for h in hosts.iter().filter(|h| c.pin.is_none_or(|id| id == h.id)) {
        match check(h, n, p, c) {
            Ok(()) => fits.push((weight(h, n, p, w), h)),
            Err(r) => rejections.push(r),
        }
    }
    if fits.is_empty() {
        return Err(Refusal { rejections });
    }
    fits.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(fits.into_iter().map(|(_, h)| h).collect())
}

/// [`choose`] for an instance with no constraints.
pub fn rank<'a>(hosts: &'a [HostSnapshot], d: &Demand, p: &Policy) -> Result<Vec<&'a HostSnapshot>, Refusal> {
    choose(hosts, &Need::Instance(*d), p, &Constraints::default())
}

/// The best host only: one pass, no sort. Used where only the winner
/// matters (the benchmark's placement rate).
pub fn pick<'a>(hosts: &'a [HostSnapshot], d: &Demand, p: &Policy) -> Result<&'a HostSnapshot, Refusal> {
    let n = Need::Instance(*d);
    let c = Constraints::default();
    let mut best: Option<(f64, &HostSnapshot)> = None;
    let mut rejections = Vec::new();
    for h in hosts {
        match check(h, &n, p, &c) {
            Ok(()) => {
                let w = weight(h, &n, p, p.weigher);
                if best.is_none_or(|(bw, _)| w > bw) {
                    best = Some((w, h));
                }
            }
            Err(r) => rejections.push(r),
        }
    }
    best.map(|(_, h)| h).ok_or(Refusal { rejections })
}

/// An in-memory host set for the placement benchmark and tests only: it
/// applies claims to its own snapshots, standing in for the database.
/// Placement goes through a [`HostIndex`] (rebuilt when the policy
/// changes); [`Self::place_by_scan`] keeps the full scan for comparison.
pub struct InMemoryHostSet {
    index: HostIndex,
}

impl InMemoryHostSet {
    /// These hosts, in this order (the tie-break order).
    pub fn new(hosts: Vec<HostSnapshot>) -> Self {
        Self { index: HostIndex::new(hosts, Policy::default()) }
    }

    /// `n` identical hosts of `vcpus` CPUs, `memory_mib` and `disk_gib`.
    pub fn uniform(n: usize, vcpus: u32, memory_mib: u64, disk_gib: u64) -> Self {
        let hosts = (0..n)
            .map(|i| HostSnapshot {
                id: format!("h-{i:017x}"),
                name: format!("bench-host-{i}"),
                up: true,
                vcpus,
                memory_mib,
                disk_gib,
                used_vcpus: 0,
                used_memory_mib: 0,
                used_disk_gib: 0,
                underlay: false,
                shared_storage: None,
                externals: Vec::new(),
            })
            .collect();
        Self::new(hosts)
    }

    pub fn hosts(&self) -> &[HostSnapshot] {
        self.index.hosts()
    }

    fn under(&mut self, p: &Policy) -> &mut HostIndex {
        if self.index.policy() != p {
            self.index = HostIndex::new(self.index.hosts().to_vec(), *p);
        }
        &mut self.index
    }

    /// Picks a host (through the index) and claims the demand on it;
    /// returns its position.
    pub fn place(&mut self, d: &Demand, p: &Policy) -> Result<usize, Refusal> {
        let index = self.under(p);
        let id = index.pick(d)?.id.clone();
        Ok(self.claim(&id, d))
    }

    /// [`Self::place`] by the full scan ([`pick`]): the baseline.
    pub fn place_by_scan(&mut self, d: &Demand, p: &Policy) -> Result<usize, Refusal> {
        let index = self.under(p);
        let id = pick(index.hosts(), d, p)?.id.clone();
        Ok(self.claim(&id, d))
    }

    fn claim(&mut self, id: &str, d: &Demand) -> usize {
        let i = self.index.position(id).unwrap_or(0);
        let h = &self.index.hosts()[i];
        let used = (h.used_vcpus + d.vcpus, h.used_memory_mib + d.memory_mib, h.used_disk_gib + d.disk_gib);
        self.index.set_used(i, used.0, used.1, used.2);
        i
    }

    /// Gives back `d` on the host at position `i` (an instance deleted).
    pub fn release(&mut self, i: usize, d: &Demand) {
        let h = &self.index.hosts()[i];
        let used = (
            h.used_vcpus.saturating_sub(d.vcpus),
            h.used_memory_mib.saturating_sub(d.memory_mib),
            h.used_disk_gib.saturating_sub(d.disk_gib),
        );
        self.index.set_used(i, used.0, used.1, used.2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, vcpus: u32, mem: u64, used_vcpus: u32, used_mem: u64) -> HostSnapshot {
        HostSnapshot {
            id: name.into(),
            name: name.into(),
            up: true,
            vcpus,
            memory_mib: mem,
            disk_gib: 100,
            used_vcpus,
            used_memory_mib: used_mem,
            used_disk_gib: 0,
            underlay: false,
            shared_storage: None,
            externals: Vec::new(),
        }
    }

    const D: Demand = Demand { vcpus: 2, memory_mib: 1024, disk_gib: 10 };

    #[test]
    fn spread_prefers_emptiest_pack_prefers_fullest() {
        let hosts = vec![host("a", 4, 8192, 8, 4096), host("b", 4, 8192, 0, 0)];
        let spread = rank(&hosts, &D, &Policy::default()).unwrap();
        assert_eq!(spread[0].name, "b");
        let pack = rank(&hosts, &D, &Policy { weigher: Weigher::Pack, ..Policy::default() }).unwrap();
        assert_eq!(pack[0].name, "a");
        assert_eq!(pick(&hosts, &D, &Policy::default()).unwrap().name, "b");
    }

    #[test]
    fn overcommit_ratio_limits_vcpus() {
        let hosts = vec![host("a", 2, 8192, 7, 0)];
        let p = Policy { cpu_overcommit: 4.0, ..Policy::default() };
        let refusal = rank(&hosts, &D, &p).unwrap_err();
        assert_eq!(refusal.rejections[0].filter, "VcpuFilter");
        assert!(refusal.rejections[0].reason.contains("1 free"), "{}", refusal.rejections[0].reason);
        let p = Policy { cpu_overcommit: 5.0, ..Policy::default() };
        assert!(rank(&hosts, &D, &p).is_ok());
    }

    #[test]
    fn refusal_names_each_host_and_filter() {
        let mut down = host("down", 8, 8192, 0, 0);
        down.up = false;
        let hosts = vec![down, host("small", 8, 512, 0, 0)];
        let refusal = rank(&hosts, &D, &Policy::default()).unwrap_err();
        let text = refusal.to_string();
        assert!(text.contains("host down rejected by HostStateFilter"), "{text}");
        assert!(text.contains("host small rejected by MemoryFilter"), "{text}");
    }

    #[test]
    fn empty_fleet_says_to_start_an_agent() {
        let refusal = rank(&[], &D, &Policy::default()).unwrap_err();
        assert!(refusal.to_string().contains("nubo agent"));
    }

    #[test]
    fn in_memory_set_fills_evenly_then_refuses() {
        let mut set = InMemoryHostSet::uniform(3, 1, 4096, 100);
        let d = Demand { vcpus: 1, memory_mib: 1024, disk_gib: 1 };
        let p = Policy { cpu_overcommit: 1.0, ..Policy::default() };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            seen.insert(set.place(&d, &p).unwrap());
        }
        assert_eq!(seen.len(), 3, "spread puts one on each host");
        assert!(set.place(&d, &p).is_err());
    }

    fn names(r: &[&HostSnapshot]) -> Vec<String> {
        r.iter().map(|h| h.name.clone()).collect()
    }

    fn only_filters(r: &Refusal) -> Vec<(&str, &'static str)> {
        r.rejections.iter().map(|x| (x.host.as_str(), x.filter)).collect()
    }

    #[test]
    fn exclude_turns_the_host_away_and_says_so() {
        let hosts = vec![host("a", 8, 8192, 0, 0), host("b", 8, 8192, 0, 0)];
        let c = Constraints { exclude: Some("a"), ..Constraints::default() };
        assert_eq!(names(&choose(&hosts, &D.into(), &Policy::default(), &c).unwrap()), ["b"]);
        let refusal = choose(&hosts[..1], &D.into(), &Policy::default(), &c).unwrap_err();
        assert_eq!(only_filters(&refusal), [("a", filter::EXCLUDE)]);
        assert!(refusal.to_string().contains("host a rejected by ExcludeFilter: the instance is already on it"));
    }

    #[test]
    fn an_external_network_needs_a_host_that_maps_it() {
        let mut hosts = vec![host("a", 8, 8192, 0, 0), host("b", 8, 8192, 0, 0)];
        hosts[1].externals = vec!["lan".into()];
        let lan = ["lan".to_string()];
        let c = Constraints { externals: &lan, ..Constraints::default() };
        assert_eq!(names(&choose(&hosts, &D.into(), &Policy::default(), &c).unwrap()), ["b"]);
        let wan = ["wan".to_string()];
        let c = Constraints { externals: &wan, ..Constraints::default() };
        let refusal = choose(&hosts, &D.into(), &Policy::default(), &c).unwrap_err();
        assert_eq!(only_filters(&refusal), [("a", filter::EXTERNAL), ("b", filter::EXTERNAL)]);
        assert!(refusal.to_string().contains("--external wan=IFACE"), "{refusal}");
    }

    #[test]
    fn underlay_and_shared_storage_come_before_room() {
        let mut a = host("a", 1, 512, 0, 0); // too small, and no underlay
        a.shared_storage = Some("nfs1".into());
        let mut b = host("b", 8, 8192, 0, 0);
        b.underlay = true;
        let mut c_host = host("c", 8, 8192, 0, 0);
        c_host.underlay = true;
        c_host.shared_storage = Some("nfs1".into());
        let hosts = vec![a, b, c_host];
        let p = Policy::default();
        let net = Constraints { underlay: true, ..Constraints::default() };
        assert_eq!(names(&choose(&hosts, &D.into(), &p, &net).unwrap()), ["b", "c"]);
        let shared = Constraints { shared_storage: Some("nfs1"), ..Constraints::default() };
        assert_eq!(names(&choose(&hosts, &D.into(), &p, &shared).unwrap()), ["c"]);
        let both = Constraints { underlay: true, shared_storage: Some("nfs2"), ..Constraints::default() };
        let refusal = choose(&hosts, &D.into(), &p, &both).unwrap_err();
        assert_eq!(
            only_filters(&refusal),
            [("a", filter::UNDERLAY), ("b", filter::SHARED_STORAGE), ("c", filter::SHARED_STORAGE)]
        );
        assert!(refusal.rejections[1].reason.contains("does not share storage nfs2"), "{refusal}");
    }

    #[test]
    fn pin_considers_that_host_only_and_explains_it_alone() {
        let mut down = host("down", 8, 8192, 0, 0);
        down.up = false;
        let hosts = vec![down, host("small", 8, 512, 0, 0), host("big", 8, 8192, 0, 0)];
        let p = Policy::default();
        let c = Constraints { pin: Some("small"), ..Constraints::default() };
        let refusal = choose(&hosts, &D.into(), &p, &c).unwrap_err();
        assert_eq!(only_filters(&refusal), [("small", filter::MEMORY)]);
        let c = Constraints { pin: Some("big"), ..Constraints::default() };
        assert_eq!(names(&choose(&hosts, &D.into(), &p, &c).unwrap()), ["big"]);
        // A pinned host that must not be down is refused for it; one whose
        // state does not matter (a volume's own pool) is not.
        let c = Constraints { pin: Some("down"), ..Constraints::default() };
        assert_eq!(only_filters(&choose(&hosts, &D.into(), &p, &c).unwrap_err()), [("down", filter::HOST_STATE)]);
        let c = Constraints { pin: Some("down"), require_up: false, ..Constraints::default() };
        assert_eq!(names(&choose(&hosts, &Need::Pool { gib: 10 }, &p, &c).unwrap()), ["down"]);
        // Pinned to a host that is not there: nothing considered.
        let c = Constraints { pin: Some("gone"), ..Constraints::default() };
        assert!(choose(&hosts, &D.into(), &p, &c).unwrap_err().rejections.is_empty());
    }

    #[test]
    fn pool_need_counts_only_the_pool_and_prefers_the_most_room() {
        let mut a = host("a", 1, 128, 0, 0); // no room for an instance, pool empty
        a.disk_gib = 50;
        let mut b = host("b", 8, 8192, 0, 0);
        b.used_disk_gib = 80; // 20 GiB free of 100
        let mut c_host = host("c", 8, 8192, 0, 0);
        c_host.used_disk_gib = 95;
        let hosts = vec![b, a, c_host];
        let p = Policy::default();
        let ranked = choose(&hosts, &Need::Pool { gib: 10 }, &p, &Constraints::default()).unwrap();
        assert_eq!(names(&ranked), ["a", "b"], "most free pool first; c is too full");
        let refusal = choose(&hosts, &Need::Pool { gib: 60 }, &p, &Constraints::default()).unwrap_err();
        assert_eq!(only_filters(&refusal), [("b", filter::POOL), ("a", filter::POOL), ("c", filter::POOL)]);
        assert_eq!(refusal.rejections[0].reason, "storage pool has 20 GiB free (80 of 100 GiB in use)");
    }

    #[test]
    fn a_weigher_in_the_constraints_overrides_the_policy() {
        let hosts = vec![host("a", 4, 8192, 8, 4096), host("b", 4, 8192, 0, 0)];
        let pack = Policy { weigher: Weigher::Pack, ..Policy::default() };
        assert_eq!(choose(&hosts, &D.into(), &pack, &Constraints::default()).unwrap()[0].name, "a");
        let spread = Constraints { weigher: Some(Weigher::Spread), ..Constraints::default() };
        assert_eq!(choose(&hosts, &D.into(), &pack, &spread).unwrap()[0].name, "b");
    }

    #[test]
    fn free_disk_is_no_operator_weigher() {
        assert!("freedisk".parse::<Weigher>().is_err());
        assert_eq!("pack".parse::<Weigher>(), Ok(Weigher::Pack));
    }

    #[test]
    fn limits_are_the_filters_limits() {
        let h = host("a", 3, 1000, 0, 0);
        let p = Policy { cpu_overcommit: 2.5, memory_overcommit: 1.5, disk_overcommit: 0.5, ..Policy::default() };
        assert_eq!(p.limits(&h), Limits { vcpus: 7, memory_mib: 1500, disk_gib: 50 });
    }
}
