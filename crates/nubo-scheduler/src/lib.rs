//! Placement: which host gets a new instance. Pure functions over a
//! snapshot of hosts, so the same code runs against the database's hosts
//! and against the in-memory host set of the placement benchmark.
//!
//! Filters each say yes or no with a reason; a refusal lists, per host,
//! the first filter that rejected it (never a bare "no valid host").
//! Weighers order the survivors. The claim itself (atomic) is the
//! caller's job: the control plane re-checks capacity in one conditional
//! UPDATE and moves to the next candidate when a concurrent claim won.

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
}

/// The resources one instance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
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

type Filter = fn(&HostSnapshot, &Demand, &Policy) -> Result<(), String>;

/// The filters, in the order they are applied.
const FILTERS: &[(&str, Filter)] = &[
    ("HostStateFilter", host_state_filter),
    ("VcpuFilter", vcpu_filter),
    ("MemoryFilter", memory_filter),
    ("DiskFilter", disk_filter),
];

fn host_state_filter(h: &HostSnapshot, _: &Demand, _: &Policy) -> Result<(), String> {
    if h.up {
        Ok(())
    } else {
        Err("host is down or disabled".into())
    }
}

fn vcpu_filter(h: &HostSnapshot, d: &Demand, p: &Policy) -> Result<(), String> {
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

fn memory_filter(h: &HostSnapshot, d: &Demand, p: &Policy) -> Result<(), String> {
    let limit = p.schedulable_memory(h);
    let free = limit.saturating_sub(h.used_memory_mib);
    if d.memory_mib <= free {
        Ok(())
    } else {
        Err(format!("needs {} MiB of memory, {} MiB free of {} MiB", d.memory_mib, free, limit))
    }
}

fn disk_filter(h: &HostSnapshot, d: &Demand, p: &Policy) -> Result<(), String> {
    let limit = p.schedulable_disk(h);
    let free = limit.saturating_sub(h.used_disk_gib);
    if d.disk_gib <= free {
        Ok(())
    } else {
        Err(format!("needs {} GiB of disk, {} GiB free of {} GiB", d.disk_gib, free, limit))
    }
}

/// Runs every filter on one host; the first that fails names the reason.
pub fn check_host(h: &HostSnapshot, d: &Demand, p: &Policy) -> Result<(), Rejection> {
    for (name, f) in FILTERS {
        f(h, d, p).map_err(|reason| Rejection { host: h.name.clone(), filter: name, reason })?;
    }
    Ok(())
}

/// Free fraction of the host after placing `d`, averaged over CPU and memory.
fn free_fraction_after(h: &HostSnapshot, d: &Demand, p: &Policy) -> f64 {
    let cpu_limit = p.schedulable_vcpus(h).max(1) as f64;
    let mem_limit = p.schedulable_memory(h).max(1) as f64;
    let cpu_free = (cpu_limit - f64::from(h.used_vcpus) - f64::from(d.vcpus)) / cpu_limit;
    let mem_free = (mem_limit - h.used_memory_mib as f64 - d.memory_mib as f64) / mem_limit;
    (cpu_free + mem_free) / 2.0
}

/// Hosts that can take the instance, best first. Ties keep input order,
/// so the result is deterministic for a given snapshot.
pub fn rank<'a>(hosts: &'a [HostSnapshot], d: &Demand, p: &Policy) -> Result<Vec<&'a HostSnapshot>, Refusal> {
    let mut fits: Vec<(f64, &HostSnapshot)> = Vec::new();
    let mut rejections = Vec::new();
    for h in hosts {
        match check_host(h, d, p) {
            Ok(()) => {
                let free = free_fraction_after(h, d, p);
                let weight = match p.weigher {
                    Weigher::Spread => free,
                    Weigher::Pack => -free,
                };
                fits.push((weight, h));
            }
            Err(r) => rejections.push(r),
        }
    }
    if fits.is_empty() {
        return Err(Refusal { rejections });
    }
    fits.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(fits.into_iter().map(|(_, h)| h).collect())
}

/// The best host only: one pass, no sort. Used where only the winner
/// matters (the benchmark's placement rate, and single claims).
pub fn pick<'a>(hosts: &'a [HostSnapshot], d: &Demand, p: &Policy) -> Result<&'a HostSnapshot, Refusal> {
    let mut best: Option<(f64, &HostSnapshot)> = None;
    let mut rejections = Vec::new();
    for h in hosts {
        match check_host(h, d, p) {
            Ok(()) => {
                let free = free_fraction_after(h, d, p);
                let w = if p.weigher == Weigher::Spread { free } else { -free };
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
pub struct InMemoryHostSet {
    pub hosts: Vec<HostSnapshot>,
}

impl InMemoryHostSet {
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
            })
            .collect();
        Self { hosts }
    }

    /// Picks a host and claims the demand on it; returns its index.
    pub fn place(&mut self, d: &Demand, p: &Policy) -> Result<usize, Refusal> {
        let id = pick(&self.hosts, d, p)?.id.clone();
        let idx = self.hosts.iter().position(|h| h.id == id).unwrap_or(0);
        let h = &mut self.hosts[idx];
        h.used_vcpus += d.vcpus;
        h.used_memory_mib += d.memory_mib;
        h.used_disk_gib += d.disk_gib;
        Ok(idx)
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
}
