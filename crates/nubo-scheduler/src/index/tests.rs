//! The index answers what the scan answers: random fleets, needs,
//! constraints, claims, releases and host changes, compared step by step.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZES: &[(u32, u64, u64)] = &[(2, 4096, 50), (4, 8192, 100), (8, 16384, 200), (16, 65536, 400), (1, 1000, 7)];
const STORAGES: &[Option<&str>] = &[None, Some("nfs1"), Some("nfs2")];
const NETS: &[&str] = &["lan", "wan"];

fn random_host(rng: &mut StdRng, i: usize, p: &Policy) -> HostSnapshot {
    let (vcpus, memory_mib, disk_gib) = SIZES[rng.gen_range(0..SIZES.len())];
    let mut h = HostSnapshot {
        id: format!("id-{i}"),
        name: format!("host-{i}"),
        up: rng.gen_bool(0.9),
        vcpus,
        memory_mib,
        disk_gib,
        used_vcpus: 0,
        used_memory_mib: 0,
        used_disk_gib: 0,
        underlay: rng.gen_bool(0.6),
        shared_storage: STORAGES[rng.gen_range(0..STORAGES.len())].map(str::to_string),
        externals: NETS.iter().filter(|_| rng.gen_bool(0.5)).map(|n| n.to_string()).collect(),
    };
    // Usage on a coarse grid, so that many hosts share one; now and then
    // above the limit (a policy lowered since the claims).
    let l = p.limits(&h);
    let over = if rng.gen_bool(0.05) { 5 } else { 4 };
    h.used_vcpus = (rng.gen_range(0..=over) * l.vcpus / 4) as u32;
    h.used_memory_mib = rng.gen_range(0..=over) * l.memory_mib / 4;
    h.used_disk_gib = rng.gen_range(0..=over) * l.disk_gib / 4;
    h
}

fn random_need(rng: &mut StdRng) -> Need {
    if rng.gen_bool(0.15) {
        return Need::Pool { gib: rng.gen_range(0..120) };
    }
    let vcpus = [0, 1, 1, 2, 4, 8][rng.gen_range(0..6)];
    let memory_mib = [0, 512, 1024, 2048, 4096, 8192][rng.gen_range(0..6)];
    Need::Instance(Demand { vcpus, memory_mib, disk_gib: rng.gen_range(0..60) })
}

fn random_policy(rng: &mut StdRng) -> Policy {
    Policy {
        cpu_overcommit: [1.0, 2.5, 4.0][rng.gen_range(0..3)],
        memory_overcommit: [1.0, 1.5][rng.gen_range(0..2)],
        disk_overcommit: [0.5, 1.0][rng.gen_range(0..2)],
        weigher: if rng.gen_bool(0.5) { Weigher::Spread } else { Weigher::Pack },
    }
}

fn ids(hosts: &[&HostSnapshot]) -> Vec<String> {
    hosts.iter().map(|h| h.id.clone()).collect()
}

/// One random request, answered by the index and by the scan.
fn compare(index: &HostIndex, rng: &mut StdRng, n_hosts: usize, step: usize) -> Option<String> {
    let need = random_need(rng);
    let externals: Vec<String> = NETS.iter().filter(|_| rng.gen_bool(0.2)).map(|n| n.to_string()).collect();
    let pin = format!("id-{}", rng.gen_range(0..n_hosts + 1));
    let exclude = format!("id-{}", rng.gen_range(0..n_hosts + 1));
    let c = Constraints {
        pin: rng.gen_bool(0.05).then_some(pin.as_str()),
        exclude: rng.gen_bool(0.3).then_some(exclude.as_str()),
        underlay: rng.gen_bool(0.3),
        shared_storage: if rng.gen_bool(0.2) { STORAGES[rng.gen_range(0..STORAGES.len())] } else { None },
        externals: &externals,
        require_up: rng.gen_bool(0.9),
        weigher: [None, None, Some(Weigher::Spread), Some(Weigher::Pack), Some(Weigher::FreeDisk)][rng.gen_range(0..5)],
    };
    let k = [1, 3, 8, 1000][rng.gen_range(0..4)];
    let by_index = index.choose(&need, &c, k);
    let by_scan = choose(index.hosts(), &need, index.policy(), &c);
    match (&by_index, &by_scan) {
        (Ok(a), Ok(b)) => {
            let b: Vec<&HostSnapshot> = b.iter().take(k).copied().collect();
            assert_eq!(ids(a), ids(&b), "step {step}: {need:?} {c:?} k={k} policy {:?}", index.policy());
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "step {step}"),
        _ => panic!("step {step}: index {by_index:?} vs scan {by_scan:?} for {need:?} {c:?}"),
    }
    by_index.ok().map(|v| v[0].id.clone())
}

#[test]
fn the_index_answers_what_the_scan_answers() {
    let mut rng = StdRng::seed_from_u64(25);
    let mut answered = 0;
    for round in 0..150 {
        let policy = random_policy(&mut rng);
        let n_hosts = rng.gen_range(0..80);
        let hosts: Vec<HostSnapshot> = (0..n_hosts).map(|i| random_host(&mut rng, i, &policy)).collect();
        let mut index = HostIndex::new(hosts, policy);
        let mut next_id = n_hosts;
        for step in 0..200 {
            let step = round * 1000 + step;
            let chosen = compare(&index, &mut rng, next_id, step);
            answered += usize::from(chosen.is_some());
            match rng.gen_range(0..10) {
                // A claim on the chosen host (what a launch does).
                0..=5 => {
                    if let Some(id) = chosen {
                        let i = index.position(&id).unwrap();
                        let h = &index.hosts()[i];
                        let d = Demand { vcpus: rng.gen_range(0..4), memory_mib: rng.gen_range(0..4096), disk_gib: 5 };
                        let used = (h.used_vcpus + d.vcpus, h.used_memory_mib + d.memory_mib, h.used_disk_gib + 5);
                        index.set_used(i, used.0, used.1, used.2);
                    }
                }
                // A release somewhere (a delete).
                6 | 7 if next_id > 0 => {
                    let i = rng.gen_range(0..index.hosts().len());
                    let h = index.hosts()[i].clone();
                    index.set_used(i, h.used_vcpus / 2, h.used_memory_mib / 3, h.used_disk_gib.saturating_sub(10));
                }
                // A host changes (down, up, re-registered with another size).
                8 if next_id > 0 => {
                    let i = rng.gen_range(0..index.hosts().len());
                    let mut h = random_host(&mut rng, i, &policy);
                    h.id = index.hosts()[i].id.clone();
                    assert!(index.update(h));
                }
                // A new host registers.
                _ => {
                    index.push(random_host(&mut rng, next_id, &policy));
                    next_id += 1;
                }
            }
        }
    }
    assert!(answered > 10_000, "too few requests found a host ({answered}): the test would prove little");
}

#[test]
fn pick_is_the_scans_pick_on_a_uniform_fleet() {
    for weigher in [Weigher::Spread, Weigher::Pack] {
        let p = Policy { weigher, ..Policy::default() };
        let mut by_index = crate::InMemoryHostSet::uniform(50, 4, 8192, 100);
        let mut by_scan = crate::InMemoryHostSet::uniform(50, 4, 8192, 100);
        let d = Demand { vcpus: 1, memory_mib: 512, disk_gib: 1 };
        loop {
            let (a, b) = (by_index.place(&d, &p), by_scan.place_by_scan(&d, &p));
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{weigher:?}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a, b);
                    break;
                }
                (a, b) => panic!("{weigher:?}: index {a:?}, scan {b:?}"),
            }
        }
        assert_eq!(by_index.hosts(), by_scan.hosts(), "{weigher:?}: the fleets end the same");
    }
}

#[test]
fn an_update_of_an_unknown_host_changes_nothing() {
    let mut index = HostIndex::new(Vec::new(), Policy::default());
    let mut rng = StdRng::seed_from_u64(1);
    assert!(!index.update(random_host(&mut rng, 0, &Policy::default())));
    assert!(index.hosts().is_empty());
}

/// Usages whose free fractions are equal as fractions but not always as
/// floating-point numbers (limits of 12 vCPUs and 3000 MiB, usages in
/// twelfths of each): the index must still rank them by the scan's exact
/// weights, not by its own order of them.
#[test]
fn near_ties_in_floating_point_are_ranked_as_the_scan_ranks_them() {
    let mut rng = StdRng::seed_from_u64(7);
    let p = Policy { cpu_overcommit: 4.0, ..Policy::default() };
    for weigher in [Weigher::Spread, Weigher::Pack] {
        let p = Policy { weigher, ..p };
        let hosts: Vec<HostSnapshot> = (0..400)
            .map(|i| HostSnapshot {
                id: format!("id-{i}"),
                name: format!("host-{i}"),
                up: true,
                vcpus: 3,
                memory_mib: 3000,
                disk_gib: 100,
                used_vcpus: rng.gen_range(0..=12),
                used_memory_mib: rng.gen_range(0..=12) * 250,
                used_disk_gib: 0,
                underlay: false,
                shared_storage: None,
                externals: Vec::new(),
            })
            .collect();
        let index = HostIndex::new(hosts, p);
        for _ in 0..2_000 {
            let need =
                Need::Instance(Demand { vcpus: rng.gen_range(0..3), memory_mib: rng.gen_range(0..1000), disk_gib: 1 });
            for k in [1, 8] {
                let by_scan: Vec<&HostSnapshot> =
                    choose(index.hosts(), &need, &p, &Constraints::default()).unwrap().into_iter().take(k).collect();
                let by_index = index.choose(&need, &Constraints::default(), k).unwrap();
                assert_eq!(ids(&by_index), ids(&by_scan), "{weigher:?} {need:?} k={k}");
            }
        }
    }
}
