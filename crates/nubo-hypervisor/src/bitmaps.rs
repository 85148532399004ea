//! Incremental disk copies for backups: QEMU's persistent dirty bitmaps
//! (which clusters a guest wrote since a point in time, kept in the qcow2
//! file across stop and start), point-in-time copies that start a new
//! bitmap in the same instant (one QMP `transaction`) and copy either the
//! whole disk or only what an older bitmap marks, and the allocation map
//! of a finished copy (`qemu-img map`), which says which parts it holds.
//!
//! Everything here speaks QMP to whatever serves the disk's node: the
//! running VM's QEMU, or a [`crate::StorageDaemon`] for a stopped one
//! (both are addressed through a [`VmDir`]), so a stopped instance's
//! bitmaps are read and written the same way.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::info;

use crate::disks::is_not_found;
use crate::{BackupJob, HypervisorError, Qemu, VmDir};

/// A dirty bitmap of a disk node, as QEMU reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyBitmap {
    pub name: String,
    /// Bytes each bit stands for.
    pub granularity: u64,
    /// Bytes marked dirty.
    pub count: u64,
    /// Kept in the qcow2 file when the node closes.
    pub persistent: bool,
    /// Recording writes now (false when disabled).
    pub recording: bool,
    /// In use by a block job (cannot be used by another one).
    pub busy: bool,
    /// Loaded from a file that was not closed cleanly (QEMU was killed):
    /// it may have missed writes, so it must not be trusted.
    pub inconsistent: bool,
}

impl DirtyBitmap {
    /// Whether a copy may rely on it to find every write since it began.
    pub fn usable(&self) -> bool {
        !self.inconsistent && !self.busy && self.recording
    }
}

/// A tracked copy: a point-in-time copy of disk `node` into `target` (a
/// new qcow2 file) that starts the dirty bitmap `new_bitmap` in the same
/// instant, so the next copy can take only what changed after this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedCopy {
    /// `root`, or a data disk's id.
    pub node: String,
    pub target: PathBuf,
    /// The bitmap to create (persistent); it must not exist.
    pub new_bitmap: String,
    /// Bytes per bit of the new bitmap (the backup's chunk size).
    pub granularity: u64,
    /// Copy only the clusters this existing bitmap marks (left as it is);
    /// `None` copies the whole disk.
    pub since: Option<String>,
}

/// One extent of an image file, as `qemu-img map --output=json` lists it.
/// `present` false: the file does not hold it (in an incremental copy:
/// unchanged); `data` true: its bytes are at `offset` in the file; present
/// and not data: zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapExtent {
    pub start: u64,
    pub length: u64,
    /// Older qemu-img does not print it; they only list present extents then.
    #[serde(default = "yes")]
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    #[serde(default)]
    pub offset: Option<u64>,
}

fn yes() -> bool {
    true
}

/// The dirty bitmaps of `node` in a `query-named-block-nodes` answer.
/// `None` when there is no such node.
fn parse_bitmaps(v: &Value, node: &str) -> Option<Vec<DirtyBitmap>> {
    let n = v.as_array()?.iter().find(|n| n["node-name"] == node)?;
    let list = n["dirty-bitmaps"].as_array().map(Vec::as_slice).unwrap_or_default();
    Some(
        list.iter()
            .filter_map(|b| {
                Some(DirtyBitmap {
                    name: b["name"].as_str()?.to_string(),
                    granularity: b["granularity"].as_u64().unwrap_or(0),
                    count: b["count"].as_u64().unwrap_or(0),
                    persistent: b["persistent"].as_bool().unwrap_or(false),
                    recording: b["recording"].as_bool().unwrap_or(true),
                    busy: b["busy"].as_bool().unwrap_or(false),
                    inconsistent: b["inconsistent"].as_bool().unwrap_or(false),
                })
            })
            .collect(),
    )
}

/// The QMP `transaction` actions of a tracked copy into the node `job`.
fn tracked_actions(copy: &TrackedCopy, job: &str) -> Value {
    let mut backup = json!({
        "job-id": job,
        "device": copy.node,
        "target": job,
        "sync": "full",
        "auto-dismiss": false,
    });
    if let Some(since) = &copy.since {
        backup["sync"] = json!("bitmap");
        backup["bitmap"] = json!(since);
        // The old bitmap stays as it is: if this backup fails, it still
        // holds every change since the parent.
        backup["bitmap-mode"] = json!("never");
    }
    json!({"actions": [
        {"type": "block-dirty-bitmap-add", "data": {
            "node": copy.node,
            "name": copy.new_bitmap,
            "persistent": true,
            "granularity": copy.granularity,
        }},
        {"type": "blockdev-backup", "data": backup},
    ]})
}

impl Qemu {
    /// The dirty bitmaps of disk `node` of the VM (or storage daemon) in `dir`.
    pub async fn dirty_bitmaps(&self, dir: &VmDir, node: &str) -> Result<Vec<DirtyBitmap>, HypervisorError> {
        let mut c = self.qmp(dir).await?;
        let v = c.execute("query-named-block-nodes", Some(json!({"flat": true}))).await?;
        parse_bitmaps(&v, node)
            .ok_or_else(|| HypervisorError::InvalidConfig(format!("there is no disk node {node:?} to read bitmaps of")))
    }

    /// Start a [`TrackedCopy`]; finish it with [`Qemu::backup_finish`].
    /// The new bitmap and the copy begin atomically: every write after
    /// the copy's point in time is in the bitmap, none before it.
    #[tracing::instrument(skip_all, fields(vm = %dir.label(), node = %copy.node))]
    pub async fn backup_start_tracked(&self, dir: &VmDir, copy: &TrackedCopy) -> Result<BackupJob, HypervisorError> {
        if copy.granularity == 0 || !copy.granularity.is_power_of_two() {
            return Err(HypervisorError::InvalidConfig(format!(
                "bitmap granularity {} must be a power of two",
                copy.granularity
            )));
        }
        let job = self
            .start_copy_job(dir, &copy.node, &copy.target, |job| ("transaction", tracked_actions(copy, job)))
            .await?;
        info!(job = %job.job, bitmap = %copy.new_bitmap, since = ?copy.since, "tracked copy started");
        Ok(job)
    }

    /// Remove the dirty bitmap `name` of `node`; done if it is not there.
    pub async fn remove_dirty_bitmap(&self, dir: &VmDir, node: &str, name: &str) -> Result<(), HypervisorError> {
        let mut c = self.qmp(dir).await?;
        match c.execute("block-dirty-bitmap-remove", Some(json!({"node": node, "name": name}))).await {
            Ok(_) => {
                info!(node, bitmap = name, "dirty bitmap removed");
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The extents of the qcow2 file at `path` (no VM may be writing it).
    pub async fn allocation_map(&self, path: &Path) -> Result<Vec<MapExtent>, HypervisorError> {
        let out =
            self.qemu_img(&["map".into(), "--output=json".into(), "-f".into(), "qcow2".into(), path.into()]).await?;
        serde_json::from_str(&out).map_err(|e| HypervisorError::QemuImg {
            args: format!("map --output=json {}", path.display()),
            status: "unparsable output".into(),
            stderr: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_of_a_node() {
        let v = json!([
            {"node-name": "#block123"},
            {"node-name": "root", "dirty-bitmaps": [
                {"name": "nubo-bak-1", "recording": true, "persistent": true, "busy": false,
                 "granularity": 1048576, "count": 2097152},
                {"name": "old", "recording": true, "persistent": true, "busy": false,
                 "granularity": 65536, "count": 0, "inconsistent": true},
            ]},
        ]);
        let got = parse_bitmaps(&v, "root").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            DirtyBitmap {
                name: "nubo-bak-1".into(),
                granularity: 1 << 20,
                count: 2 << 20,
                persistent: true,
                recording: true,
                busy: false,
                inconsistent: false
            }
        );
        assert!(got[0].usable());
        assert!(got[1].inconsistent && !got[1].usable());
        assert_eq!(parse_bitmaps(&v, "#block123"), Some(vec![]));
        assert_eq!(parse_bitmaps(&v, "vol-1"), None);
    }

    #[test]
    fn transaction_of_full_and_incremental_copies() {
        let mut copy = TrackedCopy {
            node: "root".into(),
            target: "/w/root.qcow2".into(),
            new_bitmap: "nubo-bak-2".into(),
            granularity: 1 << 20,
            since: None,
        };
        let full = tracked_actions(&copy, "bk1");
        assert_eq!(full["actions"][0]["type"], "block-dirty-bitmap-add");
        assert_eq!(full["actions"][0]["data"]["persistent"], true);
        assert_eq!(full["actions"][0]["data"]["granularity"], 1 << 20);
        assert_eq!(full["actions"][1]["data"]["sync"], "full");
        assert!(full["actions"][1]["data"].get("bitmap").is_none());
        copy.since = Some("nubo-bak-1".into());
        let inc = tracked_actions(&copy, "bk1");
        assert_eq!(inc["actions"][1]["data"]["sync"], "bitmap");
        assert_eq!(inc["actions"][1]["data"]["bitmap"], "nubo-bak-1");
        assert_eq!(inc["actions"][1]["data"]["bitmap-mode"], "never");
        assert_eq!(inc["actions"][1]["data"]["device"], "root");
    }

    #[test]
    fn map_extents_parse() {
        let text = r#"[{ "start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 1048576, "length": 7340032, "depth": 0, "present": false, "zero": true, "data": false}]"#;
        let m: Vec<MapExtent> = serde_json::from_str(text).unwrap();
        assert_eq!(
            m[0],
            MapExtent { start: 0, length: 1 << 20, present: true, zero: false, data: true, offset: Some(327680) }
        );
        assert!(!m[1].present && m[1].offset.is_none());
    }
}
