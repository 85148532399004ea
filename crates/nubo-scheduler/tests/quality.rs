#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
//! Placement quality is unchanged by the index: the same fleet and the
//! same launches and deletes, placed once by the full scan and once
//! through the index, choose the same hosts and leave the fleet as
//! balanced (spread of used vCPU fractions). Run with `--nocapture` to
//! see the figures (docs/benchmarks.md quotes them).

use nubo_scheduler::{Demand, HostSnapshot, InMemoryHostSet, Policy, Weigher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 200 hosts of four sizes, a third of them already partly loaded.
fn fleet(rng: &mut StdRng) -> Vec<HostSnapshot> {
    const SIZES: &[(u32, u64)] = &[(16, 65_536), (32, 131_072), (64, 262_144), (96, 786_432)];
    (0..200)
        .map(|i| {
            let (vcpus, memory_mib) = SIZES[i % SIZES.len()];
            let loaded = rng.gen_bool(1.0 / 3.0);
            HostSnapshot {
                id: format!("h-{i:03}"),
                name: format!("host-{i}"),
                up: true,
                vcpus,
                memory_mib,
                disk_gib: 2_000,
                used_vcpus: if loaded { rng.gen_range(0..vcpus * 2) } else { 0 },
                used_memory_mib: if loaded { rng.gen_range(0..memory_mib / 2) } else { 0 },
                used_disk_gib: 0,
                underlay: false,
                shared_storage: None,
                externals: Vec::new(),
            }
        })
        .collect()
}

const FLAVOURS: &[Demand] = &[
    Demand { vcpus: 1, memory_mib: 1024, disk_gib: 10 },
    Demand { vcpus: 2, memory_mib: 4096, disk_gib: 20 },
    Demand { vcpus: 4, memory_mib: 8192, disk_gib: 40 },
    Demand { vcpus: 8, memory_mib: 32_768, disk_gib: 80 },
];

/// What one run ends with: each launch's host (None: refused), and the
/// fleet.
struct Run {
    choices: Vec<Option<usize>>,
    hosts: Vec<HostSnapshot>,
}

/// 3,000 launches of mixed sizes, one in five followed by the delete of
/// an earlier instance; the same sequence whatever `by_index` says.
fn run(weigher: Weigher, by_index: bool) -> Run {
    let mut rng = StdRng::seed_from_u64(2025);
    let policy = Policy { weigher, ..Policy::default() };
    let mut set = InMemoryHostSet::new(fleet(&mut rng));
    let mut live: Vec<(usize, Demand)> = Vec::new();
    let mut choices = Vec::new();
    for _ in 0..3_000 {
        let d = FLAVOURS[rng.gen_range(0..FLAVOURS.len())];
        let placed = if by_index { set.place(&d, &policy) } else { set.place_by_scan(&d, &policy) };
        if let Ok(i) = placed {
            live.push((i, d));
        }
        choices.push(placed.ok());
        if rng.gen_bool(0.2) && !live.is_empty() {
            let (i, d) = live.swap_remove(rng.gen_range(0..live.len()));
            set.release(i, &d);
        }
    }
    Run { choices, hosts: set.hosts().to_vec() }
}

/// Standard deviation and max - min of the used vCPU fractions.
fn spread(hosts: &[HostSnapshot]) -> (f64, f64) {
    let p = Policy::default();
    let fractions: Vec<f64> = hosts.iter().map(|h| f64::from(h.used_vcpus) / p.schedulable_vcpus(h) as f64).collect();
    let n = fractions.len() as f64;
    let mean = fractions.iter().sum::<f64>() / n;
    let sd = (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = fractions.iter().copied().fold(f64::MIN, f64::max);
    let min = fractions.iter().copied().fold(f64::MAX, f64::min);
    (sd, max - min)
}

#[test]
fn the_index_leaves_the_fleet_as_balanced_as_the_scan() {
    for weigher in [Weigher::Spread, Weigher::Pack] {
        let scan = run(weigher, false);
        let index = run(weigher, true);
        assert_eq!(scan.choices, index.choices, "{weigher:?}: the index chose other hosts than the scan");
        assert!(scan.choices.iter().filter(|c| c.is_some()).count() > 2_500, "{weigher:?}: most launches fit");
        assert_eq!(scan.hosts, index.hosts, "{weigher:?}: the fleets end differently");
        let (sd_scan, range_scan) = spread(&scan.hosts);
        let (sd_index, range_index) = spread(&index.hosts);
        println!(
            "{weigher:?}: used vCPU fraction over 200 hosts after 3,000 launches and ~600 deletes: \
             scan sd {sd_scan:.4} max-min {range_scan:.4}; index sd {sd_index:.4} max-min {range_index:.4}"
        );
        assert_eq!((sd_scan, range_scan), (sd_index, range_index));
    }
}
