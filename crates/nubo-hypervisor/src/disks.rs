//! Data disks (volumes) of the QEMU driver: the block node and device a
//! data disk becomes (the same at boot and at hot-plug), hot-plug and
//! unplug over QMP, online resize, point-in-time copies of a running VM's
//! disk (`blockdev-backup`), and the offline operations on disk files that
//! go through `qemu-img`.
//!
//! QEMU serves one QMP client at a time, so every operation here keeps its
//! connections short; waiting (for an unplug, for a copy job) is done by
//! polling over fresh connections, which leaves the monitor free for the
//! agent's status checks in between.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::qmp::{QmpClient, QmpError};
use crate::{DataDisk, HypervisorError, Qemu, VmDir};

/// How often an unplug or a copy job is checked on.
const POLL: Duration = Duration::from_millis(200);

/// A data disk as a running VM has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDisk {
    /// The device id (= block node name), e.g. the volume id.
    pub id: String,
    /// The file behind it, as QEMU reports it.
    pub path: PathBuf,
    /// Virtual size in bytes.
    pub size: u64,
}

/// A point-in-time copy under way: started by [`Qemu::backup_start`], to be
/// finished with [`Qemu::backup_finish`]. The copy holds the disk's content
/// as of the start, whatever the guest writes afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupJob {
    /// Job id and the target's node name.
    pub job: String,
    /// Where the copy is written (renamed by the caller when done).
    pub target: PathBuf,
}

/// The `-blockdev` / `blockdev-add` value of a data disk. Keys in
/// alphabetical order so the text is stable.
pub(crate) fn data_disk_node(d: &DataDisk, filename: &str) -> Value {
    json!({
        "discard": "unmap",
        "driver": "qcow2",
        "file": {"discard": "unmap", "driver": "file", "filename": filename},
        "node-name": d.id,
    })
}

/// The `-device` value of a data disk (validated fields only: no escaping needed).
pub(crate) fn data_disk_device(d: &DataDisk) -> String {
    format!("virtio-blk-pci,drive={id},id={id},serial={},bus=hp{}", d.serial, d.slot, id = d.id)
}

/// The device id in a `query-block` entry's `qdev` path
/// (`/machine/peripheral/<id>/virtio-backend`).
fn device_id_of(qdev: &str) -> Option<&str> {
    qdev.strip_prefix("/machine/peripheral/")?.split('/').next().filter(|s| !s.is_empty())
}

/// Data disks in a `query-block` answer: devices whose id is not one of the
/// VM's own disks (root, seed).
fn parse_query_block(v: &Value) -> Vec<AttachedDisk> {
    let mut out = Vec::new();
    for entry in v.as_array().into_iter().flatten() {
        let Some(id) = entry["qdev"].as_str().and_then(device_id_of) else { continue };
        if matches!(id, "root-disk" | "seed-disk") {
            continue;
        }
        let inserted = &entry["inserted"];
        out.push(AttachedDisk {
            id: id.to_string(),
            path: PathBuf::from(inserted["file"].as_str().unwrap_or_default()),
            size: inserted["image"]["virtual-size"].as_u64().unwrap_or(0),
        });
    }
    out
}

/// The I/O of every disk of the VM in a `query-blockstats` answer, summed.
pub(crate) fn sum_blockstats(v: &Value) -> crate::BlockStats {
    let mut t = crate::BlockStats::default();
    for dev in v.as_array().into_iter().flatten() {
        let s = &dev["stats"];
        let get = |k: &str| s[k].as_u64().unwrap_or(0);
        t.read_bytes += get("rd_bytes");
        t.write_bytes += get("wr_bytes");
        t.read_ops += get("rd_operations");
        t.write_ops += get("wr_operations");
    }
    t
}

/// Whether a QMP error says the thing was not there (so removing it is done).
pub(crate) fn is_not_found(e: &QmpError) -> bool {
    match e {
        QmpError::Command { class, desc, .. } => {
            class == "DeviceNotFound" || desc.contains("not found") || desc.contains("Failed to find node")
        }
        _ => false,
    }
}

/// The node names that exist (`query-named-block-nodes`).
async fn node_names(c: &mut QmpClient) -> Result<Vec<String>, QmpError> {
    let v = c.execute("query-named-block-nodes", Some(json!({"flat": true}))).await?;
    Ok(v.as_array().into_iter().flatten().filter_map(|n| n["node-name"].as_str().map(str::to_string)).collect())
}

/// The ids of the VM's user-created devices (`/machine/peripheral`).
async fn device_ids(c: &mut QmpClient) -> Result<Vec<String>, QmpError> {
    let v = c.execute("qom-list", Some(json!({"path": "/machine/peripheral"}))).await?;
    Ok(v.as_array().into_iter().flatten().filter_map(|p| p["name"].as_str().map(str::to_string)).collect())
}

impl Qemu {
    /// Hot-plug `disk` into the running VM in `dir`: its block node, then
    /// the device on its root port. Idempotent: an already attached disk
    /// is left alone, and a node left behind by a half-done attempt is reused.
    #[tracing::instrument(skip_all, fields(vm = %dir.label(), disk = %disk.id))]
    pub async fn attach_data_disk(&self, dir: &VmDir, disk: &DataDisk) -> Result<(), HypervisorError> {
        disk.validate(u32::MAX)?;
        let filename = disk.path.to_str().ok_or_else(|| {
            HypervisorError::InvalidConfig(format!("data disk path {} is not valid UTF-8", disk.path.display()))
        })?;
        if !disk.path.is_file() {
            return Err(HypervisorError::MissingFile {
                what: "data disk",
                path: disk.path.clone(),
                hint: "create the volume file before attaching it",
            });
        }
        let mut c = self.qmp(dir).await?;
        if device_ids(&mut c).await?.iter().any(|d| d == &disk.id) {
            debug!("already attached");
            return Ok(());
        }
        if !node_names(&mut c).await?.iter().any(|n| n == &disk.id) {
            c.execute("blockdev-add", Some(data_disk_node(disk, filename))).await?;
        }
        let device = json!({
            "driver": "virtio-blk-pci",
            "id": disk.id,
            "drive": disk.id,
            "serial": disk.serial,
            "bus": format!("hp{}", disk.slot),
        });
        if let Err(e) = c.execute("device_add", Some(device)).await {
            // Undo the node so a retry starts clean; the device error is what matters.
            if let Err(undo) = c.execute("blockdev-del", Some(json!({"node-name": disk.id}))).await {
                warn!(error = %undo, "cannot remove the block node after a failed device_add");
            }
            return Err(e.into());
        }
        info!(slot = disk.slot, "data disk hot-plugged");
        Ok(())
    }

    /// Hot-unplug the data disk `id`: ask the guest to release the device,
    /// wait up to `timeout` for QEMU to remove it, then drop its block node.
    /// Ok if it was not attached. Linux guests take about 5 s (the PCIe
    /// attention-button delay).
    #[tracing::instrument(skip_all, fields(vm = %dir.label(), disk = %id))]
    pub async fn detach_data_disk(&self, dir: &VmDir, id: &str, timeout: Duration) -> Result<(), HypervisorError> {
        let started = Instant::now();
        {
            let mut c = self.qmp(dir).await?;
            if device_ids(&mut c).await?.iter().any(|d| d == id) {
                match c.execute("device_del", Some(json!({"id": id}))).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    // A second request while the guest is still on the first one.
                    Err(QmpError::Command { desc, .. }) if desc.contains("pending") || desc.contains("progress") => {
                        debug!("unplug already requested")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        loop {
            let gone = {
                let mut c = self.qmp(dir).await?;
                !device_ids(&mut c).await?.iter().any(|d| d == id)
            };
            if gone {
                break;
            }
            if started.elapsed() >= timeout {
                return Err(HypervisorError::DetachTimeout { id: id.to_string(), waited: timeout });
            }
            tokio::time::sleep(POLL).await;
        }
        let mut c = self.qmp(dir).await?;
        match c.execute("blockdev-del", Some(json!({"node-name": id}))).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        info!(after = ?started.elapsed(), "data disk unplugged");
        Ok(())
    }

    /// The data disks the running VM in `dir` has, with their sizes.
    pub async fn attached_data_disks(&self, dir: &VmDir) -> Result<Vec<AttachedDisk>, HypervisorError> {
        let mut c = self.qmp(dir).await?;
        let v = c.execute("query-block", None).await?;
        Ok(parse_query_block(&v))
    }

    /// Grow an attached data disk to `size` bytes while the guest runs; the
    /// guest is told of the new capacity at once.
    #[tracing::instrument(skip_all, fields(vm = %dir.label(), disk = %id))]
    pub async fn resize_data_disk(&self, dir: &VmDir, id: &str, size: u64) -> Result<(), HypervisorError> {
        let mut c = self.qmp(dir).await?;
        c.execute("block_resize", Some(json!({"node-name": id, "size": size}))).await?;
        info!(size, "data disk resized online");
        Ok(())
    }

    /// Start a point-in-time copy of the running VM's disk `node` (`root`
    /// for the root disk, or a data disk's id) into a new self-contained
    /// qcow2 at `target` (which must not exist). The copy holds the disk as
    /// it is now, including what its backing image provides.
    #[tracing::instrument(skip_all, fields(vm = %dir.label(), node = %node))]
    pub async fn backup_start(&self, dir: &VmDir, node: &str, target: &Path) -> Result<BackupJob, HypervisorError> {
        let job = self
            .start_copy_job(dir, node, target, |job| {
                (
                    "blockdev-backup",
                    json!({"job-id": job, "device": node, "target": job, "sync": "full", "auto-dismiss": false}),
                )
            })
            .await?;
        info!(job = %job.job, "point-in-time copy started");
        Ok(job)
    }

    /// Creates the copy's target file, attaches it as a node named after a
    /// new job id, and runs the QMP command `start(job)` gives, which
    /// starts the copy job (a plain `blockdev-backup`, or a transaction
    /// that also starts a dirty bitmap). On failure the node is detached
    /// and the file removed.
    pub(crate) async fn start_copy_job(
        &self,
        dir: &VmDir,
        node: &str,
        target: &Path,
        start: impl FnOnce(&str) -> (&'static str, Value),
    ) -> Result<BackupJob, HypervisorError> {
        let (filename, size) = self.create_copy_target(dir, node, target).await?;
        let job = format!("bk{:08x}", rand_u32());
        let (command, args) = start(&job);
        let mut c = self.qmp(dir).await?;
        let started = async {
            c.execute(
                "blockdev-add",
                Some(json!({
                    "driver": "qcow2",
                    "node-name": job,
                    "file": {"driver": "file", "filename": filename},
                })),
            )
            .await?;
            c.execute(command, Some(args)).await
        };
        if let Err(e) = started.await {
            let _ = c.execute("blockdev-del", Some(json!({"node-name": job}))).await;
            let _ = std::fs::remove_file(target);
            return Err(e.into());
        }
        debug!(%job, size, "copy job started");
        Ok(BackupJob { job, target: target.to_path_buf() })
    }

    /// Create the empty qcow2 a copy of disk `node` is written into, as
    /// large as the disk; returns its file name (as QEMU takes it) and size.
    pub(crate) async fn create_copy_target(
        &self,
        dir: &VmDir,
        node: &str,
        target: &Path,
    ) -> Result<(String, u64), HypervisorError> {
        let filename = target.to_str().filter(|_| target.is_absolute()).ok_or_else(|| {
            HypervisorError::InvalidConfig(format!("backup target {} must be an absolute UTF-8 path", target.display()))
        })?;
        let size = {
            let mut c = self.qmp(dir).await?;
            let v = c.execute("query-named-block-nodes", Some(json!({"flat": true}))).await?;
            v.as_array()
                .into_iter()
                .flatten()
                .find(|n| n["node-name"] == node)
                .and_then(|n| n["image"]["virtual-size"].as_u64())
                .ok_or_else(|| HypervisorError::InvalidConfig(format!("the VM has no disk node {node:?} to copy")))?
        };
        if target.exists() {
            return Err(HypervisorError::InvalidConfig(format!(
                "backup target {} already exists; remove it or pick another path",
                target.display()
            )));
        }
        self.qemu_img(&[
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            target.into(),
            size.to_string().into(),
        ])
        .await?;
        Ok((filename.to_string(), size))
    }

    /// Wait (up to `timeout`) for a copy started by [`Self::backup_start`]
    /// to finish, then detach its target. On failure or timeout the job is
    /// cancelled and the partial file removed.
    #[tracing::instrument(skip_all, fields(vm = %dir.label(), job = %job.job))]
    pub async fn backup_finish(&self, dir: &VmDir, job: &BackupJob, timeout: Duration) -> Result<(), HypervisorError> {
        let started = Instant::now();
        let outcome: Result<(), HypervisorError> = loop {
            let status = {
                let mut c = self.qmp(dir).await?;
                let jobs = c.execute("query-jobs", None).await?;
                jobs.as_array().into_iter().flatten().find(|j| j["id"] == job.job.as_str()).cloned()
            };
            match status {
                None => {
                    break Err(HypervisorError::CopyFailed {
                        what: job.target.display().to_string(),
                        reason: "the copy job vanished (QEMU restarted?)".into(),
                    })
                }
                Some(j) if j["status"] == "concluded" => {
                    break match j["error"].as_str() {
                        Some(err) => Err(HypervisorError::CopyFailed {
                            what: job.target.display().to_string(),
                            reason: err.to_string(),
                        }),
                        None => Ok(()),
                    }
                }
                Some(_) if started.elapsed() >= timeout => {
                    break Err(HypervisorError::CopyFailed {
                        what: job.target.display().to_string(),
                        reason: format!("it did not finish within {timeout:?}"),
                    })
                }
                Some(_) => tokio::time::sleep(POLL).await,
            }
        };
        // Clean up whatever happened: dismiss (or cancel) the job, detach the target.
        if let Ok(mut c) = self.qmp(dir).await {
            if outcome.is_err() {
                let _ = c.execute("job-cancel", Some(json!({"id": job.job}))).await;
                for _ in 0..25 {
                    let concluded = match c.execute("query-jobs", None).await {
                        Ok(jobs) => jobs
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|j| j["id"] == job.job.as_str())
                            .is_none_or(|j| j["status"] == "concluded"),
                        Err(_) => true,
                    };
                    if concluded {
                        break;
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
            let _ = c.execute("job-dismiss", Some(json!({"id": job.job}))).await;
            if let Err(e) = c.execute("blockdev-del", Some(json!({"node-name": job.job}))).await {
                if !is_not_found(&e) {
                    warn!(error = %e, "cannot detach the copy's target node");
                }
            }
        }
        match outcome {
            Ok(()) => {
                info!(after = ?started.elapsed(), "point-in-time copy done");
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&job.target);
                Err(e)
            }
        }
    }

    /// Create a sparse qcow2 volume of `size` bytes at `path`. Idempotent:
    /// an existing file is kept (and grown if smaller). Written under a
    /// temporary name and renamed, so a crash never leaves half a volume.
    pub async fn create_volume_file(&self, path: &Path, size: u64) -> Result<(), HypervisorError> {
        if path.exists() {
            if self.virtual_size(path, "qcow2").await? < size {
                self.resize_volume_file(path, size).await?;
            }
            return Ok(());
        }
        let tmp = tmp_path(path);
        let _ = std::fs::remove_file(&tmp);
        self.qemu_img(&[
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            tmp.clone().into(),
            size.to_string().into(),
        ])
        .await?;
        std::fs::rename(&tmp, path).map_err(|e| HypervisorError::io("rename", &tmp, e))?;
        info!(path = %path.display(), size, "volume file created");
        Ok(())
    }

    /// Grow a qcow2 file that no running VM has open.
    pub async fn resize_volume_file(&self, path: &Path, size: u64) -> Result<(), HypervisorError> {
        self.qemu_img(&[
            "resize".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            path.into(),
            size.to_string().into(),
        ])
        .await?;
        info!(path = %path.display(), size, "volume file resized");
        Ok(())
    }

    /// Virtual size in bytes of a qcow2 file (readable while a VM uses it).
    pub async fn qcow2_size(&self, path: &Path) -> Result<u64, HypervisorError> {
        self.virtual_size(path, "qcow2").await
    }

    /// Copy a qcow2 file (with its backing chain, flattened) into a new
    /// self-contained qcow2 at `dst`. Refused by QEMU's image locking if a
    /// running VM writes `src`. Written under a temporary name, then renamed.
    pub async fn copy_qcow2_file(&self, src: &Path, dst: &Path) -> Result<(), HypervisorError> {
        let tmp = tmp_path(dst);
        let _ = std::fs::remove_file(&tmp);
        let args: Vec<OsString> = vec![
            "convert".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-O".into(),
            "qcow2".into(),
            src.into(),
            tmp.clone().into(),
        ];
        if let Err(e) = self.qemu_img(&args).await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, dst).map_err(|e| HypervisorError::io("rename", &tmp, e))?;
        info!(src = %src.display(), dst = %dst.display(), "disk copied");
        Ok(())
    }
}

/// `<path>.tmp`, beside it (same file system, for rename).
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // Job names only need to differ between concurrent copies of one VM.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_data_disks_in_query_block() {
        let v = json!([
            {"device": "", "qdev": "/machine/peripheral/root-disk/virtio-backend",
             "inserted": {"file": "/d/disk.qcow2", "image": {"virtual-size": 1073741824u64}}},
            {"device": "", "qdev": "/machine/peripheral/seed-disk/virtio-backend", "inserted": {}},
            {"device": "", "qdev": "/machine/peripheral/vol-0123456789abcdef0/virtio-backend",
             "inserted": {"file": "/v/vol.qcow2", "image": {"virtual-size": 2147483648u64}}},
            {"device": "floppy0", "inserted": {}},
        ]);
        assert_eq!(
            parse_query_block(&v),
            vec![AttachedDisk { id: "vol-0123456789abcdef0".into(), path: "/v/vol.qcow2".into(), size: 2147483648 }]
        );
        assert_eq!(device_id_of("/machine/peripheral/x/virtio-backend"), Some("x"));
        assert_eq!(device_id_of("/machine/unattached/device[3]"), None);
    }

    #[test]
    fn blockstats_are_summed() {
        let v = json!([
            {"device": "", "qdev": "root-disk", "stats": {"rd_bytes": 100, "wr_bytes": 10, "rd_operations": 2, "wr_operations": 1}},
            {"device": "", "stats": {"rd_bytes": 5, "wr_bytes": 7, "rd_operations": 1, "wr_operations": 3}},
        ]);
        let t = sum_blockstats(&v);
        assert_eq!((t.read_bytes, t.write_bytes, t.read_ops, t.write_ops), (105, 17, 3, 4));
    }

    #[test]
    fn tmp_names_stay_beside_the_file() {
        assert_eq!(tmp_path(Path::new("/v/vol-1.qcow2")), PathBuf::from("/v/vol-1.qcow2.tmp"));
    }
}
