//! The simulated driver: it starts no VM. It keeps each "VM"'s state in
//! its instance directory and reports plausible figures (vCPU time, memory,
//! disk I/O, a console with the boot marker), so that one machine can run
//! hundreds of agents against a real control plane for scale tests and
//! benchmarks. It is never a default: `--hypervisor simulated` must be
//! asked for, and the host it runs on reports the driver's name.
//!
//! Volume and snapshot files are real sparse files of the right size, but
//! nothing is copied into them: a simulated snapshot has the size of its
//! source and no data.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{
    AttachedDisk, BackupJob, BlockStats, DataDisk, Hypervisor, HypervisorError, VmConfig, VmDir, VmStatus, VmUsage,
};

/// What a simulated VM is doing; kept in `sim.json` so that a restarted
/// agent (a fresh driver) sees the VMs an earlier one started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SimVm {
    id: String,
    running: bool,
    vcpus: u32,
    memory_mib: u64,
    /// When the current run started (ms since the epoch).
    started_ms: u64,
    /// Fraction of its vCPUs the VM keeps busy (0.05..0.65, from its id).
    load: f64,
    disks: Vec<SimDisk>,
}

/// A data disk of a simulated VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct SimDisk {
    id: String,
    path: PathBuf,
    size: u64,
}

impl From<&SimDisk> for AttachedDisk {
    fn from(d: &SimDisk) -> Self {
        AttachedDisk { id: d.id.clone(), path: d.path.clone(), size: d.size }
    }
}

/// A driver that simulates VMs: see the module documentation.
pub struct Simulated {
    /// How long a simulated boot takes before the console shows the marker.
    boot_delay: Duration,
    /// The line a booted guest prints (the agent's boot-complete marker).
    boot_marker: String,
    /// State by instance directory; the file is the truth after a restart.
    vms: Mutex<HashMap<PathBuf, SimVm>>,
}

impl Simulated {
    /// `boot_marker` is what the console shows once the "guest" has booted
    /// (`boot_delay` after a start), followed by ` instance-id=<id>`.
    pub fn new(boot_delay: Duration, boot_marker: impl Into<String>) -> Self {
        Self { boot_delay, boot_marker: boot_marker.into(), vms: Mutex::new(HashMap::new()) }
    }

    fn state_file(dir: &VmDir) -> PathBuf {
        dir.path().join("sim.json")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, SimVm>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM's state: from memory, else from its file.
    fn get(&self, dir: &VmDir) -> Option<SimVm> {
        if let Some(vm) = self.lock().get(dir.path()) {
            return Some(vm.clone());
        }
        let vm: SimVm = serde_json::from_slice(&fs::read(Self::state_file(dir)).ok()?).ok()?;
        self.lock().insert(dir.path().to_path_buf(), vm.clone());
        Some(vm)
    }

    fn put(&self, dir: &VmDir, vm: SimVm) -> Result<(), HypervisorError> {
        let path = Self::state_file(dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&vm).map_err(|e| HypervisorError::InvalidConfig(e.to_string()))?;
        fs::write(&tmp, bytes).map_err(|e| HypervisorError::io("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| HypervisorError::io("rename", &path, e))?;
        self.lock().insert(dir.path().to_path_buf(), vm);
        Ok(())
    }

    fn update(&self, dir: &VmDir, f: impl FnOnce(&mut SimVm)) -> Result<(), HypervisorError> {
        let mut vm = self.get(dir).ok_or_else(|| HypervisorError::NotRunning { dir: dir.path().to_path_buf() })?;
        if !vm.running {
            return Err(HypervisorError::NotRunning { dir: dir.path().to_path_buf() });
        }
        f(&mut vm);
        self.put(dir, vm)
    }

    fn running(&self, dir: &VmDir) -> Result<SimVm, HypervisorError> {
        match self.get(dir) {
            Some(vm) if vm.running => Ok(vm),
            _ => Err(HypervisorError::NotRunning { dir: dir.path().to_path_buf() }),
        }
    }

    fn stop(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        match self.get(dir) {
            Some(mut vm) if vm.running => {
                vm.running = false;
                vm.disks.clear();
                self.put(dir, vm)
            }
            _ => Ok(()),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A stable load in 0.05..0.65 from the id (FNV-1a), so that instances
/// differ but each one's figures are steady.
fn load_for(id: &str) -> f64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    0.05 + (h % 600) as f64 / 1000.0
}

fn sparse_file(path: &Path, size: u64) -> Result<(), HypervisorError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| HypervisorError::io("create", path, e))?;
    let len = file.metadata().map_err(|e| HypervisorError::io("stat", path, e))?.len();
    if len < size {
        file.set_len(size).map_err(|e| HypervisorError::io("resize", path, e))?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Hypervisor for Simulated {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn prepare_disk(&self, dir: &VmDir, cfg: &VmConfig) -> Result<(), HypervisorError> {
        cfg.validate()?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.path())
            .map_err(|e| HypervisorError::io("create directory", dir.path(), e))?;
        Ok(())
    }

    async fn start(&self, dir: &VmDir, cfg: &VmConfig) -> Result<u32, HypervisorError> {
        if let Some(vm) = self.get(dir) {
            if vm.running {
                return Err(HypervisorError::AlreadyRunning { id: cfg.id.clone(), pid: std::process::id() });
            }
        }
        let disks = cfg
            .disks
            .iter()
            .map(|d| SimDisk {
                id: d.id.clone(),
                path: d.path.clone(),
                size: fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0),
            })
            .collect();
        self.put(
            dir,
            SimVm {
                id: cfg.id.clone(),
                running: true,
                vcpus: cfg.vcpus,
                memory_mib: cfg.memory_mib,
                started_ms: now_ms(),
                load: load_for(&cfg.id),
                disks,
            },
        )?;
        // The console shows the boot marker after the simulated boot, as a
        // real guest prints it, so that boot_complete events still happen.
        let log = dir.console_log();
        let line = format!("simulated VM (no guest runs)\n{} instance-id={}\n", self.boot_marker, cfg.id);
        let delay = self.boot_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            use std::io::Write;
            if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&log) {
                let _ = f.write_all(line.as_bytes());
            }
        });
        Ok(std::process::id())
    }

    async fn status(&self, dir: &VmDir) -> VmStatus {
        match self.get(dir) {
            Some(vm) if vm.running => VmStatus::Running { pid: std::process::id(), paused: false },
            _ => VmStatus::NotRunning,
        }
    }

    async fn shutdown(&self, dir: &VmDir, _grace: Duration) -> Result<(), HypervisorError> {
        self.stop(dir)
    }

    async fn reboot(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        self.update(dir, |vm| vm.started_ms = now_ms())
    }

    async fn kill(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        self.stop(dir)
    }

    async fn destroy(&self, dir: &VmDir) -> Result<(), HypervisorError> {
        self.lock().remove(dir.path());
        match fs::remove_dir_all(dir.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HypervisorError::io("remove", dir.path(), e)),
        }
    }

    fn cpu_time(&self, dir: &VmDir) -> Option<Duration> {
        self.usage(dir).map(|u| u.vcpu_time)
    }

    fn usage(&self, dir: &VmDir) -> Option<VmUsage> {
        let vm = self.get(dir).filter(|vm| vm.running)?;
        let up = Duration::from_millis(now_ms().saturating_sub(vm.started_ms));
        Some(VmUsage {
            pid: std::process::id(),
            vcpu_time: up.mul_f64(vm.load * f64::from(vm.vcpus)),
            rss_bytes: vm.memory_mib * 1024 * 1024 * 6 / 10,
        })
    }

    async fn block_stats(&self, dir: &VmDir) -> Result<BlockStats, HypervisorError> {
        let vm = self.running(dir)?;
        let secs = now_ms().saturating_sub(vm.started_ms) / 1000;
        // A steady trickle: 64 KiB/s read, 16 KiB/s written, in 4 KiB ops.
        Ok(BlockStats { read_bytes: secs * 65536, write_bytes: secs * 16384, read_ops: secs * 16, write_ops: secs * 4 })
    }

    async fn create_volume(&self, path: &Path, size: u64) -> Result<(), HypervisorError> {
        sparse_file(path, size)
    }

    async fn resize_volume(&self, path: &Path, size: u64) -> Result<(), HypervisorError> {
        sparse_file(path, size)
    }

    async fn volume_size(&self, path: &Path) -> Result<u64, HypervisorError> {
        Ok(fs::metadata(path).map_err(|e| HypervisorError::io("stat", path, e))?.len())
    }

    async fn copy_disk_file(&self, src: &Path, dst: &Path) -> Result<(), HypervisorError> {
        let size = self.volume_size(src).await?;
        sparse_file(dst, size)
    }

    async fn attach_disk(&self, dir: &VmDir, disk: &DataDisk) -> Result<(), HypervisorError> {
        let size = self.volume_size(&disk.path).await?;
        self.update(dir, |vm| {
            if !vm.disks.iter().any(|d| d.id == disk.id) {
                vm.disks.push(SimDisk { id: disk.id.clone(), path: disk.path.clone(), size });
            }
        })
    }

    async fn set_vcpus(&self, dir: &VmDir, vcpus: u32) -> Result<(), HypervisorError> {
        let vm = self.running(dir)?;
        if vcpus < vm.vcpus {
            return Err(HypervisorError::Vcpus(format!(
                "it has {} vCPUs and removing vCPUs from a running guest is not offered; stop the instance, resize it, then start it",
                vm.vcpus
            )));
        }
        self.update(dir, |vm| vm.vcpus = vcpus)
    }

    async fn change_cdrom(&self, dir: &VmDir, _media: Option<&Path>) -> Result<(), HypervisorError> {
        // No drive to model: only that the VM runs, as QEMU's QMP needs.
        self.update(dir, |_| ())
    }

    async fn detach_disk(&self, dir: &VmDir, id: &str, _timeout: Duration) -> Result<(), HypervisorError> {
        match self.update(dir, |vm| vm.disks.retain(|d| d.id != id)) {
            Err(HypervisorError::NotRunning { .. }) => Ok(()),
            r => r,
        }
    }

    async fn attached_disks(&self, dir: &VmDir) -> Result<Vec<AttachedDisk>, HypervisorError> {
        Ok(self.running(dir)?.disks.iter().map(AttachedDisk::from).collect())
    }

    async fn resize_attached_disk(&self, dir: &VmDir, id: &str, size: u64) -> Result<(), HypervisorError> {
        let vm = self.running(dir)?;
        let disk = vm
            .disks
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| HypervisorError::InvalidConfig(format!("disk {id} is not attached; attach it first")))?;
        sparse_file(&disk.path, size)?;
        self.update(dir, |vm| {
            for d in vm.disks.iter_mut().filter(|d| d.id == id) {
                d.size = d.size.max(size);
            }
        })
    }

    async fn backup_start(&self, dir: &VmDir, node: &str, target: &Path) -> Result<BackupJob, HypervisorError> {
        let vm = self.running(dir)?;
        let size = match vm.disks.iter().find(|d| d.id == node) {
            Some(d) => d.size,
            None => 1 << 30,
        };
        sparse_file(target, size)?;
        Ok(BackupJob { job: format!("sim-{node}"), target: target.to_path_buf() })
    }

    async fn backup_finish(&self, _dir: &VmDir, _job: &BackupJob, _timeout: Duration) -> Result<(), HypervisorError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accel, Boot};

    fn cfg(id: &str) -> VmConfig {
        VmConfig {
            id: id.into(),
            name: id.into(),
            vcpus: 2,
            memory_mib: 512,
            disk_gib: 1,
            boot: Boot::Firmware,
            base_disk: "/nonexistent/base.qcow2".into(),
            seed_image: None,
            port_forwards: vec![],
            accel: Accel::Tcg,
            hotplug_slots: 8,
            metadata_relay: None,
            mac: None,
            base_format: None,
            disks: vec![],
            taps: vec![],
            incoming: false,
            cdrom: None,
            hardware: Default::default(),
            max_vcpus: None,
        }
    }

    #[tokio::test]
    async fn lifecycle_survives_a_new_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path().join("i-1"));
        let sim = Simulated::new(Duration::from_millis(1), "NUBO_BOOT_COMPLETE");
        sim.prepare_disk(&dir, &cfg("i-1")).await.unwrap();
        assert_eq!(sim.status(&dir).await, VmStatus::NotRunning);
        sim.start(&dir, &cfg("i-1")).await.unwrap();
        assert!(matches!(sim.start(&dir, &cfg("i-1")).await, Err(HypervisorError::AlreadyRunning { .. })));
        // A fresh driver (an agent restart) sees the VM from its file.
        let again = Simulated::new(Duration::from_millis(1), "NUBO_BOOT_COMPLETE");
        assert!(again.status(&dir).await.is_running());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let console = fs::read_to_string(dir.console_log()).unwrap();
        assert!(console.contains("NUBO_BOOT_COMPLETE instance-id=i-1"), "{console}");
        let usage = again.usage(&dir).unwrap();
        assert_eq!(usage.rss_bytes, 512 * 1024 * 1024 * 6 / 10);
        again.shutdown(&dir, Duration::ZERO).await.unwrap();
        assert_eq!(again.status(&dir).await, VmStatus::NotRunning);
        assert!(again.usage(&dir).is_none());
        again.destroy(&dir).await.unwrap();
        assert!(!dir.path().exists());
    }

    #[tokio::test]
    async fn vcpus_grow_while_running_and_never_shrink() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path().join("i-1"));
        let sim = Simulated::new(Duration::from_millis(1), "NUBO_BOOT_COMPLETE");
        assert!(matches!(sim.set_vcpus(&dir, 3).await, Err(HypervisorError::NotRunning { .. })));
        sim.prepare_disk(&dir, &cfg("i-1")).await.unwrap();
        sim.start(&dir, &cfg("i-1")).await.unwrap();
        sim.set_vcpus(&dir, 3).await.unwrap();
        sim.set_vcpus(&dir, 3).await.unwrap();
        assert_eq!(sim.get(&dir).unwrap().vcpus, 3);
        let msg = sim.set_vcpus(&dir, 1).await.unwrap_err().to_string();
        assert!(msg.contains("stop the instance"), "{msg}");
        assert_eq!(sim.get(&dir).unwrap().vcpus, 3);
    }

    #[tokio::test]
    async fn disks_attach_resize_detach() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::new(tmp.path().join("i-2"));
        let vol = tmp.path().join("vol-a.qcow2");
        let sim = Simulated::new(Duration::from_millis(1), "NUBO_BOOT_COMPLETE");
        sim.create_volume(&vol, 1 << 30).await.unwrap();
        // The file is sparse: a GiB of size, next to nothing on disk.
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&vol).unwrap().blocks() < 16);
        let disk = DataDisk { id: "vol-a".into(), path: vol.clone(), serial: "vola".into(), slot: 0 };
        assert!(sim.attach_disk(&dir, &disk).await.is_err(), "no VM, no attach");
        sim.prepare_disk(&dir, &cfg("i-2")).await.unwrap();
        sim.start(&dir, &cfg("i-2")).await.unwrap();
        sim.attach_disk(&dir, &disk).await.unwrap();
        sim.attach_disk(&dir, &disk).await.unwrap();
        assert_eq!(sim.attached_disks(&dir).await.unwrap().len(), 1);
        sim.resize_attached_disk(&dir, "vol-a", 2 << 30).await.unwrap();
        assert_eq!(sim.attached_disks(&dir).await.unwrap()[0].size, 2 << 30);
        assert_eq!(sim.volume_size(&vol).await.unwrap(), 2 << 30);
        sim.detach_disk(&dir, "vol-a", Duration::ZERO).await.unwrap();
        assert!(sim.attached_disks(&dir).await.unwrap().is_empty());
    }

    #[test]
    fn loads_differ_and_stay_in_range() {
        let a = load_for("i-aaaa");
        let b = load_for("i-bbbb");
        assert_ne!(a, b);
        for id in ["i-1", "i-2", "x", ""] {
            assert!((0.05..0.65).contains(&load_for(id)));
        }
    }
}
