//! An index of hosts by free capacity, so that a placement looks at a few
//! hosts instead of scanning the fleet. It answers exactly what
//! [`crate::choose`] answers over the same hosts in the same order: the
//! same best host, the same alternatives, the same tie-breaks (input
//! order); a randomized test in this module compares the two.
//!
//! Hosts are grouped into classes of identical size and attributes (CPUs,
//! memory, disk, up, underlay, shared storage, externals), so that within
//! a class the limits are the same and the caller's conditions say yes or
//! no for the whole class at once. Within a class, hosts are grouped by
//! usage (the same used vCPUs, memory and disk weigh the same and fit the
//! same), and the usages are ordered by the free fraction the Spread and
//! Pack weighers rank by. Spread walks a class from the emptiest usage
//! down; Pack from the fullest usage that can still fit up. A class stops
//! as soon as it has `k` fitting hosts and the next usage is clearly
//! worse; the classes' candidates are then compared on the exact weight
//! the scan computes, ties by input order.
//!
//! The rare paths stay the scan's: a refusal (nothing fits) is explained
//! by [`crate::choose`] over every host, and the FreeDisk weigher (storage
//! pools, seldom chosen without a pin) scans too.

use crate::{choose, Constraints, Demand, HostSnapshot, Limits, Need, Policy, Refusal, Weigher};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What makes hosts interchangeable for the filters: the same limits and
/// the same answers to the caller's conditions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClassKey {
    vcpus: u32,
    memory_mib: u64,
    disk_gib: u64,
    up: bool,
    underlay: bool,
    shared_storage: Option<String>,
    externals: Vec<String>,
}

impl ClassKey {
    fn of(h: &HostSnapshot) -> Self {
        Self {
            vcpus: h.vcpus,
            memory_mib: h.memory_mib,
            disk_gib: h.disk_gib,
            up: h.up,
            underlay: h.underlay,
            shared_storage: h.shared_storage.clone(),
            externals: h.externals.clone(),
        }
    }
}

/// An f64 ordered by `total_cmp`, to key an ordered map.
#[derive(Debug, Clone, Copy)]
struct Score(f64);

impl PartialEq for Score {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0).is_eq()
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Score {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// One usage within a class: its free fraction (the weighers' order),
/// then the usage itself (hosts with the same usage weigh the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Usage {
    free: Score,
    vcpus: u32,
    memory_mib: u64,
    disk_gib: u64,
}

struct Class {
    key: ClassKey,
    limits: Limits,
    /// Hosts (positions in input order) by usage.
    usages: BTreeMap<Usage, BTreeSet<usize>>,
}

impl Class {
    /// The caller's conditions, which hold for every host of the class or none.
    fn admits(&self, c: &Constraints) -> bool {
        let k = &self.key;
        (k.up || !c.require_up)
            && (!c.underlay || k.underlay)
            && c.shared_storage.is_none_or(|s| k.shared_storage.as_deref() == Some(s))
            && c.externals.iter().all(|n| k.externals.contains(n))
    }

    /// The capacity filters' arithmetic, for one usage of this class.
    fn fits(&self, u: &Usage, n: &Need) -> bool {
        let l = &self.limits;
        match *n {
            Need::Instance(d) => {
                u64::from(d.vcpus) <= l.vcpus.saturating_sub(u64::from(u.vcpus))
                    && d.memory_mib <= l.memory_mib.saturating_sub(u.memory_mib)
                    && d.disk_gib <= l.disk_gib.saturating_sub(u.disk_gib)
            }
            Need::Pool { gib } => gib <= l.disk_gib.saturating_sub(u.disk_gib),
        }
    }
}

/// How far two free fractions may differ through rounding alone: the
/// weight with a demand is the free fraction minus a constant of the
/// class, each computed to a few ulps, so usages further apart than this
/// are ordered the same by both.
fn rounding_slack(free: f64) -> f64 {
    1e-9 * (4.0 + free.abs())
}

/// Hosts indexed for placement under one policy.
pub struct HostIndex {
    policy: Policy,
    hosts: Vec<HostSnapshot>,
    by_id: HashMap<String, usize>,
    classes: Vec<Class>,
    class_by_key: HashMap<ClassKey, usize>,
    /// Each host's class.
    class_of: Vec<usize>,
}

impl HostIndex {
    /// Indexes `hosts`; their order is the tie-break, as in the scan.
    pub fn new(hosts: Vec<HostSnapshot>, policy: Policy) -> Self {
        let mut index = Self {
            policy,
            hosts: Vec::with_capacity(hosts.len()),
            by_id: HashMap::with_capacity(hosts.len()),
            classes: Vec::new(),
            class_by_key: HashMap::new(),
            class_of: Vec::with_capacity(hosts.len()),
        };
        for h in hosts {
            index.push(h);
        }
        index
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Every host, in input order.
    pub fn hosts(&self) -> &[HostSnapshot] {
        &self.hosts
    }

    pub fn get(&self, id: &str) -> Option<&HostSnapshot> {
        self.by_id.get(id).map(|&i| &self.hosts[i])
    }

    /// A host's position in input order.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// Adds a host after the others (last in the tie-break order); one
    /// already indexed (same id) is updated in place instead.
    pub fn push(&mut self, h: HostSnapshot) {
        if let Some(&i) = self.by_id.get(&h.id) {
            self.replace(i, h);
            return;
        }
        let i = self.hosts.len();
        let class = self.class_for(&h);
        self.by_id.insert(h.id.clone(), i);
        self.class_of.push(class);
        self.insert_usage(class, &h, i);
        self.hosts.push(h);
    }

    /// Replaces what is known of a host (by id): its usage, state or size.
    /// Returns false when the host is not indexed (nothing changes).
    pub fn update(&mut self, h: HostSnapshot) -> bool {
        match self.by_id.get(&h.id) {
            Some(&i) => {
                self.replace(i, h);
                true
            }
            None => false,
        }
    }

    /// Sets the usage of the host at position `i` (a claim or a release).
    pub fn set_used(&mut self, i: usize, vcpus: u32, memory_mib: u64, disk_gib: u64) {
        let mut h = self.hosts[i].clone();
        h.used_vcpus = vcpus;
        h.used_memory_mib = memory_mib;
        h.used_disk_gib = disk_gib;
        self.replace(i, h);
    }

    fn replace(&mut self, i: usize, h: HostSnapshot) {
        let old = self.class_of[i];
        let usage = self.usage_of(old, &self.hosts[i]);
        if let Some(set) = self.classes[old].usages.get_mut(&usage) {
            set.remove(&i);
            if set.is_empty() {
                self.classes[old].usages.remove(&usage);
            }
        }
        let class = if self.classes[old].key == ClassKey::of(&h) { old } else { self.class_for(&h) };
        self.class_of[i] = class;
        self.insert_usage(class, &h, i);
        self.hosts[i] = h;
    }

    fn class_for(&mut self, h: &HostSnapshot) -> usize {
        let key = ClassKey::of(h);
        if let Some(&c) = self.class_by_key.get(&key) {
            return c;
        }
        let c = self.classes.len();
        self.classes.push(Class { key: key.clone(), limits: self.policy.limits(h), usages: BTreeMap::new() });
        self.class_by_key.insert(key, c);
        c
    }

    fn usage_of(&self, class: usize, h: &HostSnapshot) -> Usage {
        let free = crate::free_fraction(&self.classes[class].limits, h.used_vcpus, h.used_memory_mib, &Demand::ZERO);
        Usage { free: Score(free), vcpus: h.used_vcpus, memory_mib: h.used_memory_mib, disk_gib: h.used_disk_gib }
    }

    fn insert_usage(&mut self, class: usize, h: &HostSnapshot, i: usize) {
        let usage = self.usage_of(class, h);
        self.classes[class].usages.entry(usage).or_default().insert(i);
    }

    /// The best `k` hosts for the need, best first: the first `k` of what
    /// [`crate::choose`] answers over [`Self::hosts`]. A refusal is the
    /// scan's, explaining every considered host.
    pub fn choose(&self, n: &Need, c: &Constraints, k: usize) -> Result<Vec<&HostSnapshot>, Refusal> {
        let w = crate::weigher_for(n, &self.policy, c);
        if let Some(pin) = c.pin {
            let only = self.by_id.get(pin).map(|&i| std::slice::from_ref(&self.hosts[i])).unwrap_or(&[]);
            return choose(only, n, &self.policy, c).map(|mut v| {
                v.truncate(k);
                v
            });
        }
        if w == Weigher::FreeDisk || k == 0 {
            return self.scan(n, c, k);
        }
        let exclude = c.exclude.and_then(|id| self.by_id.get(id).copied());
        let mut found: Vec<(f64, usize)> = Vec::new();
        for class in self.classes.iter().filter(|cl| cl.admits(c)) {
            self.best_of_class(class, n, w, exclude, k, &mut found);
        }
        if found.is_empty() {
            return self.scan(n, c, k);
        }
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(found.into_iter().take(k).map(|(_, i)| &self.hosts[i]).collect())
    }

    /// [`Self::choose`]'s best host for an instance with no constraints.
    pub fn pick(&self, d: &Demand) -> Result<&HostSnapshot, Refusal> {
        let mut best = self.choose(&Need::Instance(*d), &Constraints::default(), 1)?;
        // choose never answers an empty list; the scan explains if it did.
        best.pop().map_or_else(|| crate::pick(&self.hosts, d, &self.policy), Ok)
    }

    fn scan(&self, n: &Need, c: &Constraints, k: usize) -> Result<Vec<&HostSnapshot>, Refusal> {
        let mut all = choose(&self.hosts, n, &self.policy, c)?;
        all.truncate(k);
        Ok(all)
    }

    /// Adds the class's best `k` fitting hosts (weight, position) to `out`:
    /// usages in weigher order, stopping once `k` are found and the next
    /// usage's free fraction is beyond rounding of the k-th's.
    fn best_of_class(
        &self,
        class: &Class,
        n: &Need,
        w: Weigher,
        exclude: Option<usize>,
        k: usize,
        out: &mut Vec<(f64, usize)>,
    ) {
        let d = match *n {
            Need::Instance(d) => d,
            Need::Pool { gib } => Demand { vcpus: 0, memory_mib: 0, disk_gib: gib },
        };
        let ordered: Box<dyn Iterator<Item = (&Usage, &BTreeSet<usize>)>> = match w {
            Weigher::Pack => match pack_start(&class.limits, n) {
                Some(start) => Box::new(class.usages.range(start..)),
                None => return,
            },
            _ => Box::new(class.usages.iter().rev()),
        };
        let mut taken = 0;
        let mut kth: Option<f64> = None;
        for (usage, hosts) in ordered {
            if let Some(kth) = kth {
                if (usage.free.0 - kth).abs() > rounding_slack(kth) {
                    break;
                }
            }
            if !class.fits(usage, n) {
                continue;
            }
            let free_after = crate::free_fraction(&class.limits, usage.vcpus, usage.memory_mib, &d);
            let weight = if w == Weigher::Pack { -free_after } else { free_after };
            for &i in hosts.iter().filter(|&&i| Some(i) != exclude).take(k) {
                out.push((weight, i));
                taken += 1;
            }
            if taken >= k && kth.is_none() {
                kth = Some(usage.free.0);
            }
        }
    }
}

/// Where Pack starts in a class: below this free fraction no usage leaves
/// room for the need (each of CPU and memory must have the demand free).
/// None: the need cannot fit the class at all.
fn pack_start(l: &Limits, n: &Need) -> Option<Usage> {
    let lowest = |free: f64| Usage { free: Score(free), vcpus: 0, memory_mib: 0, disk_gib: 0 };
    let Need::Instance(d) = *n else { return Some(lowest(f64::NEG_INFINITY)) };
    if u64::from(d.vcpus) > l.vcpus || d.memory_mib > l.memory_mib || d.disk_gib > l.disk_gib {
        return None;
    }
    // A used count above the limit (a policy lowered) leaves a negative
    // fraction yet fits a zero demand: no bound then.
    if d.vcpus == 0 || d.memory_mib == 0 {
        return Some(lowest(f64::NEG_INFINITY));
    }
    let bound = (f64::from(d.vcpus) / l.vcpus.max(1) as f64 + d.memory_mib as f64 / l.memory_mib.max(1) as f64) / 2.0;
    Some(lowest(bound - rounding_slack(bound)))
}

#[cfg(test)]
mod tests;
