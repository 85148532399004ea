//! Metrics of this host and its instances, sampled every interval (10 s
//! by default) and sent to the control plane in one batch:
//!
//! * the host: CPU (`/proc/stat`), load, memory (`/proc/meminfo`), the data
//!   directory's file system, network (`/proc/net/dev`, all but loopback);
//! * each running instance: CPU utilisation of its vCPU threads (their
//!   CPU time over the interval, per vCPU), QEMU's resident memory, disk
//!   I/O of all its disks (QMP `query-blockstats`), network I/O and file
//!   system use inside the guest (from the guest agent, through the
//!   instance manager's guest poll).
//!
//! Counters go out as they are (`*_total`) and as rates over the last
//! interval (`*_per_second`); a counter that went backwards (a restarted
//! VM) starts a new rate instead of a negative one.

use crate::host::Host;
use crate::instances::Instances;
use nubo_api::agent::PowerState;
use nubo_api::ids::InstanceId;
use nubo_api::monitoring::{MetricSample, MetricsBatch};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters seen at the previous sample, to turn them into rates.
#[derive(Default)]
pub struct Sampler {
    /// (series key) -> (when, value)
    prev: HashMap<String, (Instant, f64)>,
    /// The vCPU time of each instance at the previous sample, with its pid.
    prev_cpu: HashMap<InstanceId, (Instant, u32, Duration)>,
    prev_host_cpu: Option<(u64, u64)>,
}

/// Host CPU jiffies: (busy, total) from the `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (total, available) bytes from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let kib: u64 = text.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// (rx, tx) bytes of every interface but loopback, from `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else { continue };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

/// (total, used) bytes of the file system holding `path`.
fn fs_usage(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid out-value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let total = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64);
    let free = (st.f_bfree as u64).saturating_mul(st.f_frsize as u64);
    Some((total, total.saturating_sub(free)))
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part * 100.0 / whole).clamp(0.0, 100.0)
    } else {
        0.0
    }
}

struct Out<'a> {
    resource: &'a str,
    at_ms: i64,
    samples: Vec<MetricSample>,
}

impl Out<'_> {
    fn push(&mut self, metric: &str, value: f64) {
        if value.is_finite() {
            self.samples.push(MetricSample {
                resource: self.resource.to_string(),
                metric: metric.to_string(),
                at_ms: self.at_ms,
                value,
            });
        }
    }
}

impl Sampler {
    /// `value` now, as a rate per second since the previous call with `key`.
    fn rate(&mut self, key: String, now: Instant, value: f64) -> Option<f64> {
        let prev = self.prev.insert(key, (now, value));
        let (then, old) = prev?;
        let secs = now.duration_since(then).as_secs_f64();
        (secs > 0.0 && value >= old).then(|| (value - old) / secs)
    }

    /// A counter and its rate.
    fn counter(&mut self, out: &mut Out<'_>, now: Instant, name: &str, value: u64) {
        out.push(&format!("{name}_total"), value as f64);
        if let Some(r) = self.rate(format!("{}/{name}", out.resource), now, value as f64) {
            out.push(&format!("{name}_per_second"), r);
        }
    }

    /// The host's samples.
    pub fn host(&mut self, host: &str, data_dir: &Path, at_ms: i64, running: usize) -> Vec<MetricSample> {
        let now = Instant::now();
        let mut out = Out { resource: host, at_ms, samples: Vec::new() };
        if let Some((busy, total)) = std::fs::read_to_string("/proc/stat").ok().and_then(|t| parse_proc_stat(&t)) {
            if let Some((b0, t0)) = self.prev_host_cpu.replace((busy, total)) {
                if total > t0 && busy >= b0 {
                    out.push("cpu_percent", percent((busy - b0) as f64, (total - t0) as f64));
                }
            }
        }
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            let v: Vec<f64> = load.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
            for (name, value) in ["load1", "load5", "load15"].iter().zip(v) {
                out.push(name, value);
            }
        }
        if let Some((total, avail)) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| parse_meminfo(&t)) {
            let used = total.saturating_sub(avail);
            out.push("memory_total_bytes", total as f64);
            out.push("memory_used_bytes", used as f64);
            out.push("memory_used_percent", percent(used as f64, total as f64));
        }
        if let Some((total, used)) = fs_usage(data_dir) {
            out.push("disk_total_bytes", total as f64);
            out.push("disk_used_bytes", used as f64);
            out.push("disk_used_percent", percent(used as f64, total as f64));
        }
        if let Ok(dev) = std::fs::read_to_string("/proc/net/dev") {
            let (rx, tx) = parse_net_dev(&dev);
            self.counter(&mut out, now, "net_rx_bytes", rx);
            self.counter(&mut out, now, "net_tx_bytes", tx);
        }
        out.push("instances_running", running as f64);
        out.samples
    }

    /// CPU utilisation of an instance's vCPUs since the previous sample.
    pub fn instance_cpu(
        &mut self,
        id: &InstanceId,
        now: Instant,
        pid: u32,
        vcpu_time: Duration,
        vcpus: u32,
    ) -> Option<f64> {
        let prev = self.prev_cpu.insert(id.clone(), (now, pid, vcpu_time));
        let (then, old_pid, old) = prev?;
        let wall = now.duration_since(then).as_secs_f64() * f64::from(vcpus.max(1));
        (old_pid == pid && vcpu_time >= old && wall > 0.0).then(|| percent((vcpu_time - old).as_secs_f64(), wall))
    }

    /// Forget instances that are gone. Through a set: scanning `live` for
    /// every key was quadratic, the agent's top cost at 4,000 instances.
    pub(crate) fn retain(&mut self, live: &[InstanceId]) {
        let live: std::collections::HashSet<&str> = live.iter().map(InstanceId::as_str).collect();
        self.prev_cpu.retain(|id, _| live.contains(id.as_str()));
        // Keys are `RESOURCE/NAME`.
        self.prev.retain(|k, _| !k.starts_with("i-") || k.split('/').next().is_some_and(|id| live.contains(id)));
    }
}

/// A running instance to sample, and what the guest agent last said about it.
pub struct SampledVm {
    pub id: InstanceId,
    pub dir: nubo_hypervisor::VmDir,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The newest guest status and network counters, when recent.
    pub guest: Option<(nubo_api::views::GuestStatus, Option<crate::guest::NetCounters>)>,
}

/// One round of samples of `vms` through `hv`; returns the samples and
/// the ids of the instances that were running.
pub async fn sample_instances(
    hv: &dyn nubo_hypervisor::Hypervisor,
    sampler: &mut Sampler,
    vms: &[SampledVm],
    at_ms: i64,
) -> (Vec<MetricSample>, Vec<InstanceId>) {
    let mut samples = Vec::new();
    let mut live = Vec::new();
    for vm in vms {
        let Some(usage) = hv.usage(&vm.dir) else { continue };
        live.push(vm.id.clone());
        let now = Instant::now();
        let mut out = Out { resource: vm.id.as_str(), at_ms, samples: Vec::new() };
        if let Some(cpu) = sampler.instance_cpu(&vm.id, now, usage.pid, usage.vcpu_time, vm.vcpus) {
            out.push("cpu_percent", cpu);
        }
        out.push("cpu_seconds_total", usage.vcpu_time.as_secs_f64());
        out.push("memory_rss_bytes", usage.rss_bytes as f64);
        out.push("memory_bytes", (vm.memory_mib * 1024 * 1024) as f64);
        match hv.block_stats(&vm.dir).await {
            Ok(b) => {
                sampler.counter(&mut out, now, "disk_read_bytes", b.read_bytes);
                sampler.counter(&mut out, now, "disk_write_bytes", b.write_bytes);
                sampler.counter(&mut out, now, "disk_read_ops", b.read_ops);
                sampler.counter(&mut out, now, "disk_write_ops", b.write_ops);
            }
            Err(e) => tracing::debug!(instance = %vm.id, error = %e, "no disk statistics this round"),
        }
        if let Some((status, counters)) = &vm.guest {
            if let Some(c) = counters {
                sampler.counter(&mut out, now, "net_rx_bytes", c.rx_bytes);
                sampler.counter(&mut out, now, "net_tx_bytes", c.tx_bytes);
            }
            let root = status.filesystems.iter().find(|f| f.mountpoint == "/");
            if let Some((used, total)) = root.and_then(|f| Some((f.used_bytes?, f.total_bytes?))) {
                out.push("fs_used_bytes", used as f64);
                out.push("fs_total_bytes", total as f64);
                out.push("fs_used_percent", percent(used as f64, total as f64));
            }
        }
        samples.append(&mut out.samples);
    }
    sampler.retain(&live);
    (samples, live)
}

/// One round of samples: the host and every running instance.
async fn sample_metrics(host: &Host, instances: &Instances, sampler: &mut Sampler) -> Vec<MetricSample> {
    let at_ms = crate::clock::now_ms();
    let desired = instances.desired();
    let vms: Vec<SampledVm> = desired
        .iter()
        .flat_map(|d| d.instances.iter())
        .filter(|i| i.power == PowerState::Running)
        .map(|i| SampledVm {
            dir: host.dir(&i.id),
            vcpus: i.vcpus,
            memory_mib: i.memory_mib,
            // Only what the guest agent said recently is about now.
            guest: instances.guest_latest(&i.id, Duration::from_secs(60)),
            id: i.id.clone(),
        })
        .collect();
    let (mut samples, live) = sample_instances(host.hypervisor.as_ref(), sampler, &vms, at_ms).await;
    let mut out = sampler.host(host.id.as_str(), &host.config.data_dir, at_ms, live.len());
    out.append(&mut samples);
    out
}

/// Samples every `interval` and sends each round to the control plane
/// (a round that cannot be sent is dropped: the next one follows).
pub(crate) async fn metrics_loop(host: Arc<Host>, instances: Arc<Instances>, interval: Duration) {
    let mut sampler = Sampler::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let samples = sample_metrics(&host, &instances, &mut sampler).await;
        // A host with over a thousand instances has more samples than one
        // batch may carry: the control plane refused the whole round.
        for part in samples.chunks(nubo_api::monitoring::MAX_METRICS_BATCH) {
            if let Err(e) = host.client.send_metrics(&host.id, &MetricsBatch { samples: part.to_vec() }).await {
                tracing::debug!(error = %e, "metrics not sent this round");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        let mem = "MemTotal:       2048 kB\nMemFree:  100 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(parse_meminfo(mem), Some((2048 * 1024, 1024 * 1024)));
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 999 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), (100, 200));
    }

    #[test]
    fn rates_and_cpu() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        assert_eq!(s.rate("k".into(), t0, 100.0), None);
        let r = s.rate("k".into(), t0 + Duration::from_secs(2), 300.0).unwrap();
        assert!((r - 100.0).abs() < 1e-9);
        assert_eq!(s.rate("k".into(), t0 + Duration::from_secs(3), 10.0), None, "a reset is not a negative rate");
        let id: InstanceId = "i-0123456789abcdef0".parse().unwrap();
        assert_eq!(s.instance_cpu(&id, t0, 7, Duration::from_secs(10), 2), None);
        let cpu = s.instance_cpu(&id, t0 + Duration::from_secs(10), 7, Duration::from_secs(20), 2).unwrap();
        assert!((cpu - 50.0).abs() < 1e-9, "{cpu}");
        assert_eq!(s.instance_cpu(&id, t0 + Duration::from_secs(20), 8, Duration::from_secs(1), 2), None, "new pid");
        let host = s.host("h-0123456789abcdef0", Path::new("/"), 1, 0);
        assert!(host.iter().any(|m| m.metric == "memory_used_bytes"));
        assert!(host.iter().any(|m| m.metric == "disk_used_percent"));
    }
}
