//! Placement rate over 10,000 hosts held in memory (`InMemoryHostSet`,
//! used by this benchmark only). Run: `cargo bench -p nubo-scheduler`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nubo_scheduler::{Demand, InMemoryHostSet, Policy, Weigher};

fn placement(c: &mut Criterion) {
    let mut g = c.benchmark_group("placement_10k_hosts");
    g.throughput(Throughput::Elements(1));
    for weigher in [Weigher::Spread, Weigher::Pack] {
        let policy = Policy { weigher, ..Policy::default() };
        let d = Demand { vcpus: 2, memory_mib: 2048, disk_gib: 20 };
        g.bench_function(format!("{weigher:?}"), |b| {
            // 10,000 hosts of 64 CPUs and 512 GiB: room for ~1.3M
            // instances, so the set never fills during a run.
            let mut set = InMemoryHostSet::uniform(10_000, 64, 512 * 1024, 100_000);
            b.iter(|| set.place(&d, &policy).map(|_| ()).ok());
        });
    }
    g.finish();
}

criterion_group!(benches, placement);
criterion_main!(benches);
