//! Placement rate over 1,000 and 10,000 hosts held in memory
//! (`InMemoryHostSet`, used by benchmarks and tests only), through the
//! index and, as the baseline in the same run, by the full scan.
//! Run: `cargo bench -p nubo-scheduler`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nubo_scheduler::{Demand, InMemoryHostSet, Policy, Weigher};

fn placement(c: &mut Criterion) {
    for hosts in [1_000, 10_000] {
        let mut g = c.benchmark_group(format!("placement_{hosts}_hosts"));
        g.throughput(Throughput::Elements(1));
        for weigher in [Weigher::Spread, Weigher::Pack] {
            let policy = Policy { weigher, ..Policy::default() };
            let d = Demand { vcpus: 2, memory_mib: 2048, disk_gib: 20 };
            for method in ["index", "scan"] {
                g.bench_function(BenchmarkId::new(format!("{weigher:?}"), method), |b| {
                    // Hosts of 64 CPUs and 512 GiB: room for 128 instances
                    // each. A fast run can fill the fleet: it then starts
                    // over on an empty one (once per 128 x hosts placements).
                    let fresh = || InMemoryHostSet::uniform(hosts, 64, 512 * 1024, 100_000);
                    let mut set = fresh();
                    b.iter(|| {
                        let placed =
                            if method == "index" { set.place(&d, &policy) } else { set.place_by_scan(&d, &policy) };
                        if placed.is_err() {
                            set = fresh();
                        }
                    });
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, placement);
criterion_main!(benches);
