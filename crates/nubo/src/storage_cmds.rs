//! Client commands for storage: image import (hashed and uploaded with
//! progress on stderr), image list/show, instance snapshots, volumes
//! (create, attach, detach, extend, snapshot, delete) and volume
//! snapshots. `--wait` polls until the change is done as the user would
//! judge it: an attach until the guest sees the disk, an extend until the
//! guest sees the new size.

use crate::cli::{Conn, SnapshotCmd, VolumeCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::Context;
use nubo_api::params::{ImageCreate, InstanceSnapshot, SnapshotCreate, VolumeCreate};
use nubo_api::views::{AttachState, Image, ImageState, Snapshot, SnapshotState, Volume, VolumeState};
use nubo_client::Client;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT_LIMIT: Duration = Duration::from_secs(900);
const GIB: u64 = 1 << 30;

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{b} B"),
    }
}

/// Polls `check` every 300 ms until it gives a value, printing each new
/// `status` line on stderr; fails after [`WAIT_LIMIT`] or when `check` does.
async fn wait_until<T>(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<(Option<T>, String)>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let (done, status) = check().await?;
        if status != last {
            eprintln!("[{:>5.1}s] {status}", started.elapsed().as_secs_f64());
            last = status;
        }
        if let Some(v) = done {
            return Ok(v);
        }
        if started.elapsed() > WAIT_LIMIT {
            anyhow::bail!("{what} did not finish within {} s ({last})", WAIT_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ---- images ----

pub struct ImportOptions {
    pub name: String,
    pub format: Option<String>,
    pub min_disk: Option<u64>,
    pub min_memory: Option<u64>,
    pub public: bool,
    pub kernel_image: Option<String>,
    pub description: Option<String>,
    pub hardware: nubo_api::hardware::HardwareRequest,
}

/// The file's SHA-256 and whether it starts like a qcow2 (blocking).
fn hash_and_sniff(path: &Path) -> anyhow::Result<(String, bool)> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut first = true;
    let mut qcow2 = false;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        if first {
            qcow2 = buf[..n].starts_with(b"QFI\xfb");
            first = false;
        }
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), qcow2))
}

pub async fn import_image(conn: &Conn, file: &Path, o: ImportOptions) -> anyhow::Result<()> {
    let c = client(conn)?;
    let meta = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file; import a disk image file", file.display());
    }
    let size = meta.len();
    let started = Instant::now();
    eprintln!("hashing {} ({})...", file.display(), human_bytes(size));
    let path = file.to_path_buf();
    let (sha256, looks_qcow2) = tokio::task::spawn_blocking(move || hash_and_sniff(&path)).await??;
    let format = o.format.unwrap_or_else(|| if looks_qcow2 { "qcow2" } else { "raw" }.to_string());
    let req = ImageCreate {
        name: o.name,
        disk_format: format.clone(),
        size_bytes: size,
        sha256: Some(sha256.clone()),
        min_disk_gib: o.min_disk,
        min_memory_mib: o.min_memory,
        visibility: o.public.then(|| "public".to_string()),
        kernel_image: o.kernel_image,
        description: o.description,
        hardware: o.hardware,
    };
    let image = c.create_image(&req).await?;
    eprintln!("registered {} ({format}, sha256 {}); uploading...", image.id, &sha256[..12]);
    let mut next_report = 0u64;
    let t0 = Instant::now();
    let progress = move |sent: u64| {
        if sent >= next_report || sent == size {
            let pct = if size == 0 { 100.0 } else { sent as f64 * 100.0 / size as f64 };
            let rate = sent as f64 / t0.elapsed().as_secs_f64().max(0.001) / (1u64 << 20) as f64;
            eprintln!("  {pct:5.1}%  {} of {}  {rate:.0} MiB/s", human_bytes(sent), human_bytes(size));
            next_report = sent + (size / 10).max(64 << 20);
        }
    };
    let image = match c.upload_image(image.id.as_str(), file, progress).await {
        Ok(i) => i,
        Err(e) => anyhow::bail!("{e}"),
    };
    eprintln!("checked and stored in {:.1} s", started.elapsed().as_secs_f64());
    emit(conn.output, &image, |i| println!("{}", i.id))
}

fn print_image(i: &Image) {
    let rows = vec![
        ("id", i.id.to_string()),
        ("name", i.name.clone()),
        ("state", i.state.to_string()),
        ("source", i.source.clone()),
        ("visibility", i.visibility.clone()),
        ("project", i.project.clone().unwrap_or_default()),
        ("format", i.disk_format.clone().unwrap_or_default()),
        ("hardware", i.hardware.to_string()),
        ("sha256", i.sha256.clone().unwrap_or_default()),
        ("size", i.size_bytes.map(human_bytes).unwrap_or_default()),
        ("virtual_size", i.virtual_size_bytes.map(human_bytes).unwrap_or_default()),
        ("min_disk_gib", i.min_disk_gib.to_string()),
        ("min_memory", i.min_memory_mib.to_string()),
        ("boot", i.kernel_image.as_ref().map(|k| format!("kernel of {k}")).unwrap_or_else(|| "firmware".into())),
        ("parent", i.parent.as_ref().map(|p| p.to_string()).unwrap_or_default()),
        ("instance", i.source_instance.as_ref().map(|p| p.to_string()).unwrap_or_default()),
        ("description", i.description.clone()),
        ("error", i.error.clone().unwrap_or_default()),
        ("job", i.job.as_ref().map(crate::image_cmds::job_summary).unwrap_or_default()),
    ];
    for (k, v) in rows {
        println!("{k:<13} {v}");
    }
}

pub async fn list_images(conn: &Conn, filter: &[String]) -> anyhow::Result<()> {
    let images: Vec<nubo_api::views::Image> = {
        let c = client(conn)?;
        if filter.is_empty() {
            c.images().await?
        } else {
            c.list_tagged("/api/v1/images", &crate::tag_cmds::tag_filters(filter)?).await?
        }
    };
    emit(conn.output, &images, |images| {
        let rows: Vec<Vec<String>> = images
            .iter()
            .map(|i| {
                vec![
                    i.id.to_string(),
                    i.name.clone(),
                    i.source.clone(),
                    i.state.to_string(),
                    i.visibility.clone(),
                    i.disk_format.clone().unwrap_or_default(),
                    i.virtual_size_bytes.map(human_bytes).unwrap_or_default(),
                    i.description.chars().take(60).collect(),
                ]
            })
            .collect();
        table(&["ID", "NAME", "SOURCE", "STATE", "VISIBILITY", "FORMAT", "SIZE", "DESCRIPTION"], &rows);
    })
}

pub async fn show_image(conn: &Conn, key: &str) -> anyhow::Result<()> {
    let i = client(conn)?.image(key).await?;
    emit(conn.output, &i, print_image)
}

async fn wait_image_active(c: &Client, id: &str) -> anyhow::Result<Image> {
    wait_until(&format!("image {id}"), async || {
        let i = c.image(id).await?;
        match i.state {
            ImageState::Active => Ok((Some(i), format!("image {id} is active"))),
            ImageState::Error => anyhow::bail!("image {id} failed: {}", i.error.unwrap_or_default()),
            s => Ok((None, format!("image {id} is {s}"))),
        }
    })
    .await
}

pub async fn snapshot_instance(
    conn: &Conn,
    id: &str,
    name: String,
    description: Option<String>,
    wait: bool,
) -> anyhow::Result<()> {
    let c = client(conn)?;
    let mut image = c.snapshot_instance(id, &InstanceSnapshot { name, description }).await?;
    if wait {
        image = wait_image_active(&c, image.id.as_str()).await?;
    }
    emit(conn.output, &image, |i| println!("{}", i.id))
}

// ---- volumes ----

pub(crate) fn print_volume(v: &Volume) {
    let mut rows = vec![
        ("id", v.id.to_string()),
        ("name", v.name.clone()),
        ("state", v.state.to_string()),
        ("size_gib", v.size_gib.to_string()),
        ("actual_gib", v.actual_size_gib.to_string()),
        ("host", v.host_name.clone().unwrap_or_default()),
        ("snapshot", v.snapshot_id.as_ref().map(|s| s.to_string()).unwrap_or_default()),
    ];
    if let Some(a) = &v.attachment {
        rows.push(("attached_to", a.instance_id.to_string()));
        rows.push(("attachment", a.state.to_string()));
        rows.push(("serial", a.serial.clone()));
        rows.push(("guest_device", a.guest_device.clone().unwrap_or_default()));
        rows.push(("guest_size", a.guest_size_bytes.map(human_bytes).unwrap_or_default()));
    }
    rows.push(("error", v.error.clone().unwrap_or_default()));
    for (k, val) in rows {
        println!("{k:<12} {val}");
    }
}

fn volume_line(v: &Volume) -> String {
    let attach = match &v.attachment {
        Some(a) => format!(
            ", {} {} {}{}",
            a.state,
            if a.state == AttachState::Detaching { "from" } else { "to" },
            a.instance_id,
            a.guest_device.as_ref().map(|d| format!(" as {d}")).unwrap_or_default()
        ),
        None => String::new(),
    };
    let err = v.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default();
    format!("volume {} is {}, {} GiB{attach}{err}", v.id, v.state, v.actual_size_gib)
}

/// Waits until `done` says the volume is where it should be.
async fn wait_volume(c: &Client, id: &str, done: impl Fn(&Volume) -> bool) -> anyhow::Result<Volume> {
    wait_until(&format!("volume {id}"), async || {
        let v = c.volume(id).await?;
        if v.state == VolumeState::Error {
            anyhow::bail!("volume {id} failed: {}", v.error.clone().unwrap_or_default());
        }
        let line = volume_line(&v);
        Ok((done(&v).then_some(v), line))
    })
    .await
}

pub async fn volume(cmd: VolumeCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create { size, name, snapshot, instance, wait } => {
            let c = client(conn)?;
            let snapshot_id =
                snapshot.map(|s| s.parse().map_err(|e| anyhow::anyhow!("--snapshot: {e}"))).transpose()?;
            let instance_id =
                instance.map(|s| s.parse().map_err(|e| anyhow::anyhow!("--instance: {e}"))).transpose()?;
            let req = VolumeCreate { size_gib: size, name, snapshot_id, instance_id };
            let mut v = c.create_volume(&req).await?;
            if wait {
                v = wait_volume(&c, v.id.as_str(), |v| v.state == VolumeState::Available).await?;
            }
            emit(conn.output, &v, |v| println!("{}", v.id))
        }
        VolumeCmd::List { filter } => {
            let list: Vec<nubo_api::views::Volume> = {
                let c = client(conn)?;
                if filter.is_empty() {
                    c.volumes().await?
                } else {
                    c.list_tagged("/api/v1/volumes", &crate::tag_cmds::tag_filters(&filter)?).await?
                }
            };
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        vec![
                            v.id.to_string(),
                            v.name.clone(),
                            v.size_gib.to_string(),
                            v.state.to_string(),
                            v.attachment.as_ref().map(|a| a.instance_id.to_string()).unwrap_or_default(),
                            v.attachment.as_ref().map(|a| a.state.to_string()).unwrap_or_default(),
                            v.attachment.as_ref().and_then(|a| a.guest_device.clone()).unwrap_or_default(),
                            v.host_name.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "SIZE_GIB", "STATE", "INSTANCE", "ATTACHMENT", "DEVICE", "HOST"], &rows);
            })
        }
        VolumeCmd::Show { volume } => {
            let v = client(conn)?.volume(&volume).await?;
            emit(conn.output, &v, print_volume)
        }
        VolumeCmd::Attach { volume, instance, wait } => {
            let c = client(conn)?;
            let mut v = c.attach_volume(&volume, &instance).await?;
            if wait {
                v = wait_volume(&c, &volume, |v| {
                    v.attachment.as_ref().is_some_and(|a| a.state == AttachState::Attached)
                })
                .await?;
            }
            emit(conn.output, &v, |v| println!("{}", volume_line(v)))
        }
        VolumeCmd::Detach { volume, wait } => {
            let c = client(conn)?;
            let mut v = c.detach_volume(&volume).await?;
            if wait {
                v = wait_volume(&c, &volume, |v| v.attachment.is_none()).await?;
            }
            emit(conn.output, &v, |v| println!("{}", volume_line(v)))
        }
        VolumeCmd::Extend { volume, size, wait } => {
            let c = client(conn)?;
            let mut v = c.extend_volume(&volume, size).await?;
            if wait {
                v = wait_volume(&c, &volume, |v| {
                    v.actual_size_gib >= size
                        && v.attachment.as_ref().is_none_or(|a| {
                            a.state == AttachState::Attached && a.guest_size_bytes.is_some_and(|b| b >= size * GIB)
                        })
                })
                .await?;
            }
            emit(conn.output, &v, |v| println!("{}", volume_line(v)))
        }
        VolumeCmd::Snapshot { volume, name, wait } => {
            let c = client(conn)?;
            let mut s = c.snapshot_volume(&volume, &SnapshotCreate { name }).await?;
            if wait {
                s = wait_snapshot(&c, s.id.as_str()).await?;
            }
            emit(conn.output, &s, |s| println!("{}", s.id))
        }
        VolumeCmd::Revert { volume, snapshot, wait } => {
            let c = client(conn)?;
            let mut v = c.revert_volume(&volume, &nubo_api::params::VolumeRevert { snapshot }).await?;
            if wait {
                v = wait_volume(&c, &volume, |v| v.state.is_live()).await?;
            }
            emit(conn.output, &v, |v| println!("{}", volume_line(v)))
        }
        VolumeCmd::Delete { volume, wait } => {
            let c = client(conn)?;
            let v = c.delete_volume(&volume).await?;
            if wait {
                wait_until(&format!("volume {volume}"), async || match c.volume(&volume).await {
                    Err(nubo_client::ClientError::Api { status: 404, .. }) => {
                        Ok((Some(()), format!("volume {volume} is deleted")))
                    }
                    Err(e) => Err(e.into()),
                    Ok(v) => Ok((None, volume_line(&v))),
                })
                .await?;
            }
            emit(conn.output, &v, |v| println!("{} {}", v.id, if wait { "deleted" } else { "deleting" }))
        }
    }
}

// ---- snapshots ----

async fn wait_snapshot(c: &Client, id: &str) -> anyhow::Result<Snapshot> {
    wait_until(&format!("snapshot {id}"), async || {
        let s = c.snapshot(id).await?;
        match s.state {
            SnapshotState::Completed => {
                Ok((Some(s.clone()), format!("snapshot {id} is completed ({})", s.consistency.unwrap_or_default())))
            }
            SnapshotState::Error => anyhow::bail!("snapshot {id} failed: {}", s.error.unwrap_or_default()),
            st => Ok((None, format!("snapshot {id} is {st}"))),
        }
    })
    .await
}

pub async fn snapshot(cmd: SnapshotCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::List { filter } => {
            let list: Vec<nubo_api::views::Snapshot> = {
                let c = client(conn)?;
                if filter.is_empty() {
                    c.snapshots().await?
                } else {
                    c.list_tagged("/api/v1/snapshots", &crate::tag_cmds::tag_filters(&filter)?).await?
                }
            };
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            s.name.clone(),
                            s.volume_id.to_string(),
                            s.size_gib.to_string(),
                            s.state.to_string(),
                            s.consistency.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "VOLUME", "SIZE_GIB", "STATE", "CONSISTENCY"], &rows);
            })
        }
        SnapshotCmd::Show { snapshot } => {
            let s = client(conn)?.snapshot(&snapshot).await?;
            emit(conn.output, &s, |s| {
                for (k, v) in [
                    ("id", s.id.to_string()),
                    ("name", s.name.clone()),
                    ("volume", s.volume_id.to_string()),
                    ("size_gib", s.size_gib.to_string()),
                    ("state", s.state.to_string()),
                    ("consistency", s.consistency.clone().unwrap_or_default()),
                    ("error", s.error.clone().unwrap_or_default()),
                ] {
                    println!("{k:<12} {v}");
                }
            })
        }
        SnapshotCmd::Delete { snapshot } => {
            let s = client(conn)?.delete_snapshot(&snapshot).await?;
            emit(conn.output, &s, |s| println!("{} {}", s.id, s.state))
        }
    }
}
