//! Metrics collection overhead: what sampling 100 instances on one host
//! costs, in CPU, with the agent's own sampling code
//! (`nubo_agent::metrics::sample_instances` and the host sampler).
//!
//! Run: `cargo bench -p nubo-agent --bench metrics_overhead`
//! (NUBO_BENCH_VMS, default 100; NUBO_BENCH_ROUNDS, default 30).
//!
//! It starts NUBO_BENCH_VMS real QEMU processes (TCG, 32 MiB, a blank
//! qcow2 root disk; their vCPUs paused so they use no CPU), then runs
//! rounds of sampling one after the other as fast as they go, and reports
//! the CPU time per round of this process (the sampler: /proc reads,
//! QMP connections, query-blockstats) and of the QEMU processes (the same
//! span, less what they used idle over an equal span before). At the
//! agent's default interval of 10 s, a round's CPU time divided by 10 s is
//! the share of one core collection takes. Without `--bench` it does nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_agent::metrics::{sample_instances, SampledVm, Sampler};
use nubo_api::ids::InstanceId;
use nubo_hypervisor::{Accel, Boot, Hypervisor, Qemu, VmConfig, VmDir};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

/// CPU time (user + system) of this process so far.
fn self_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid out-value for getrusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// CPU ticks (user + system) of the processes in `pids`.
fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn ticks_to_secs(t: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    t as f64 / hz
}

struct Vms {
    qemu: Qemu,
    dirs: Vec<VmDir>,
}

impl Drop for Vms {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            for d in &self.dirs {
                let _ = rt.block_on(self.qemu.kill(d));
            }
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "metrics_overhead: run with `cargo bench -p nubo-agent --bench metrics_overhead` (starts real QEMUs)"
        );
        return;
    }
    let n = env_usize("NUBO_BENCH_VMS", 100);
    let rounds = env_usize("NUBO_BENCH_ROUNDS", 30);
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("blank.qcow2");
    let ok = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("16M").status();
    assert!(ok.is_ok_and(|s| s.success()), "qemu-img create failed (install qemu-utils)");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let qemu = Qemu::default();
    let mut vms = Vms { qemu: qemu.clone(), dirs: Vec::new() };
    let mut sampled = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let id = InstanceId::generate();
        let dir = VmDir::new(tmp.path().join(format!("vm{i}")));
        let cfg = VmConfig {
            id: id.to_string(),
            name: format!("bench {i}"),
            vcpus: 1,
            memory_mib: 32,
            disk_gib: 1,
            boot: Boot::Firmware,
            base_disk: base.clone(),
            seed_image: None,
            port_forwards: vec![],
            accel: Accel::Tcg,
            hotplug_slots: 0,
            metadata_relay: None,
            mac: None,
            base_format: Some("qcow2".into()),
            disks: vec![],
            taps: Vec::new(),
            incoming: false,
            cdrom: None,
            hardware: Default::default(),
            max_vcpus: None,
        };
        rt.block_on(async {
            qemu.prepare_disk(&dir, &cfg).await.expect("disk");
            qemu.start(&dir, &cfg).await.expect("start QEMU");
        });
        vms.dirs.push(dir.clone());
        sampled.push(SampledVm { id, dir, vcpus: 1, memory_mib: 32, guest: None });
    }
    eprintln!("{n} QEMU processes started in {:.1} s", t.elapsed().as_secs_f64());
    let pids: Vec<u32> = vms.dirs.iter().filter_map(|d| qemu.usage(d).map(|u| u.pid)).collect();
    assert_eq!(pids.len(), n, "every VM runs");

    // Pause their vCPUs (QMP `stop`): an idle guest's timer ticks under TCG
    // would otherwise drown QEMU's share of the sampling in noise. The
    // monitor, the block layer and /proc answer the same either way.
    for d in &vms.dirs {
        rt.block_on(qemu.pause(d)).expect("pause");
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut sampler = Sampler::default();
    // One warm-up round (first reads of /proc, first QMP connections).
    rt.block_on(sample_instances(&qemu, &mut sampler, &sampled, 0));

    let idle_start = ticks_of(&pids);
    let idle_t = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let idle_per_sec = ticks_to_secs(ticks_of(&pids) - idle_start) / idle_t.elapsed().as_secs_f64();

    let cpu0 = self_cpu();
    let q0 = ticks_of(&pids);
    let wall = Instant::now();
    let mut samples = 0;
    for r in 0..rounds {
        let (s, live) = rt.block_on(sample_instances(&qemu, &mut sampler, &sampled, r as i64));
        assert_eq!(live.len(), n);
        samples += s.len();
        let _host = sampler.host("h-0123456789abcdef0", Path::new("/"), r as i64, n);
    }
    let elapsed = wall.elapsed().as_secs_f64();
    let self_per_round = (self_cpu() - cpu0).as_secs_f64() / rounds as f64;
    let qemu_per_round = ((ticks_to_secs(ticks_of(&pids) - q0) - idle_per_sec * elapsed) / rounds as f64).max(0.0);
    drop(vms);

    let per_round = self_per_round + qemu_per_round;
    println!();
    println!("metrics collection: {n} instances, {rounds} rounds ({} samples per round)", samples / rounds);
    println!("machine: {} CPUs", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("wall time per round:               {:>8.1} ms", elapsed * 1e3 / rounds as f64);
    println!("CPU per round, sampler (agent):    {:>8.1} ms", self_per_round * 1e3);
    println!("CPU per round, QEMU answering QMP: {:>8.1} ms", qemu_per_round * 1e3);
    println!("QEMU idle CPU (all {n}, not counted): {:.1} % of one core", idle_per_sec * 100.0);
    for interval in [10.0, 5.0, 2.0] {
        println!("share of one core at a {interval:>4} s interval: {:>6.2} %", per_round / interval * 100.0);
    }
}
