//! The backup pipeline a host runs, measured on one disk in one run:
//!
//! 1. **Copy baseline**: `qemu-img convert -O qcow2` of the disk into the
//!    same directory (flushed), the plain copy a backup competes with.
//! 2. **First backup**: the disk opened by `qemu-storage-daemon` (as for a
//!    stopped instance; a running one takes the same QMP path in its own
//!    QEMU), a full tracked copy that starts a dirty bitmap, its map, and
//!    `write_disk` into a directory repository in the same directory.
//! 3. **Incremental backup** after 10 MiB were written (one 10 MiB file
//!    and eight scattered 4 KiB metadata writes, as a guest's file system
//!    makes them): bytes read, sent and stored, and its time.
//! 4. **Restore**: `restore_disk` into a sparse raw file and its conversion
//!    to the qcow2 the host boots, against the copy baseline.
//!
//! The disk is 4 GiB with NUBO_BENCH_DATA_MIB (default 1024) MiB of random
//! data (nothing compresses or deduplicates: the worst case). NUBO_BENCH_DIR
//! picks the file system (default: the system's temporary directory).
//!
//! ```sh
//! cargo bench -p nubo-agent --bench backup_pipeline
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nubo_api::backup::RepositoryLocation;
use nubo_backup::{CopySource, Extent, Manifest, ManifestDisk, RepoKey, Repository, CHUNK_SIZE};
use nubo_hypervisor::{Hypervisor, MapExtent, OfflineDisk, Qemu, TrackedCopy};

const MIB: u64 = 1 << 20;
const DISK: u64 = 4 << 30;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_file(path: &Path, mib: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        buf.iter_mut().for_each(|b| *b = rand::random());
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
}

fn extents(map: &[MapExtent]) -> Vec<Extent> {
    map.iter()
        .map(|e| Extent {
            start: e.start,
            length: e.length,
            present: e.present,
            zero: e.zero,
            data: e.data,
            offset: e.offset,
        })
        .collect()
}

fn sync(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// A tracked copy of the disk (full, or since `since`) into `target`,
/// through a storage daemon; the copy's extents.
async fn tracked_copy(
    hv: &dyn Hypervisor,
    work: &Path,
    disk: &Path,
    target: &Path,
    bitmap: &str,
    since: Option<&str>,
) -> Vec<Extent> {
    let disks = [OfflineDisk { node: "root".into(), path: disk.to_path_buf() }];
    let daemon = hv.open_disks_offline(&work.join("qsd"), &disks).await.unwrap();
    let copy = TrackedCopy {
        node: "root".into(),
        target: target.to_path_buf(),
        new_bitmap: bitmap.into(),
        granularity: CHUNK_SIZE,
        since: since.map(str::to_string),
    };
    let job = hv.backup_start_tracked(daemon.dir(), &copy).await.unwrap();
    hv.backup_finish(daemon.dir(), &job, Duration::from_secs(3600)).await.unwrap();
    if let Some(old) = since {
        hv.remove_dirty_bitmap(daemon.dir(), "root", old).await.unwrap();
    }
    daemon.stop().await.unwrap();
    extents(&hv.allocation_map(target).await.unwrap())
}

async fn store(repo: &Repository, id: &str, source: &CopySource, parent: Option<&nubo_backup::DiskIndex>) {
    let (_, stats) = repo.write_disk(id, "root", source, parent, &|_, _| {}).await.unwrap();
    let manifest = Manifest {
        backup_id: id.into(),
        instance_id: "i-bench".into(),
        taken_at_ms: 0,
        disks: vec![ManifestDisk { name: "root".into(), size: source.size }],
        meta: serde_json::Value::Null,
    };
    repo.put_manifest(&manifest).await.unwrap();
    println!(
        "    read {:.1} MiB, sent {:.1} MiB, stored {:.1} MiB, {} of {} chunks new",
        stats.bytes_read as f64 / MIB as f64,
        stats.bytes_sent as f64 / MIB as f64,
        stats.bytes_stored as f64 / MIB as f64,
        stats.chunks_new,
        stats.chunks
    );
}

#[tokio::main]
async fn main() {
    let data_mib: u64 = std::env::var("NUBO_BENCH_DATA_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let base = std::env::var_os("NUBO_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let t = tmp.path();
    let qemu = Qemu::default();
    let hv: &dyn Hypervisor = &qemu;

    // The disk: 4 GiB, the first data_mib MiB random.
    let raw = t.join("data.raw");
    random_file(&raw, data_mib);
    let disk = t.join("disk.qcow2");
    run(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&disk));
    run(Command::new("qemu-img").args(["resize", "-q", "-f", "qcow2"]).arg(&disk).arg(DISK.to_string()));
    std::fs::remove_file(&raw).unwrap();
    let data = data_mib * MIB;
    println!("disk: 4 GiB qcow2, {data_mib} MiB of random data, in {}", t.display());

    // 1. The copy baseline.
    let copy = t.join("copy.qcow2");
    let started = Instant::now();
    run(Command::new("qemu-img").args(["convert", "-q", "-f", "qcow2", "-O", "qcow2"]).arg(&disk).arg(&copy));
    sync(&copy);
    let convert = started.elapsed();
    std::fs::remove_file(&copy).unwrap();
    println!("qemu-img convert: {:.2} s, {:.0} MB/s", convert.as_secs_f64(), mb_s(data, convert));

    let location = RepositoryLocation::Dir { path: t.join("repo").to_str().unwrap().into() };
    let repo = Repository::open(&location, &RepoKey::generate()).await.unwrap();
    let work = t.join("work");
    std::fs::create_dir_all(&work).unwrap();

    // 2. The first backup.
    let target = work.join("full.qcow2");
    let started = Instant::now();
    let map = tracked_copy(hv, &work, &disk, &target, "nubo-bak-1", None).await;
    let copied = started.elapsed();
    let source = CopySource { file: target.clone(), size: DISK, extents: map, incremental: false };
    store(&repo, "bak-1", &source, None).await;
    let first = started.elapsed();
    std::fs::remove_file(&target).unwrap();
    println!(
        "first backup: {:.2} s ({:.2} s the point-in-time copy), {:.0} MB/s = {:.2}x qemu-img convert",
        first.as_secs_f64(),
        copied.as_secs_f64(),
        mb_s(data, first),
        convert.as_secs_f64() / first.as_secs_f64()
    );

    // 3. 10 MiB written, then the incremental backup.
    let ten = t.join("ten.raw");
    random_file(&ten, 10);
    let file = ten.to_str().unwrap();
    let mut cmds = vec![format!("write -s {file} {} {}", 2 * 1024 * MIB + 3 * 4096, 10 * MIB)];
    for i in 0..8u64 {
        cmds.push(format!("write -P 0x{:02x} {} 4k", 0x40 + i, (i * 397 + 11) * MIB + 8192));
    }
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for c in &cmds {
        io.args(["-c", c]);
    }
    run(io.arg(&disk));
    let parent = repo.disk_index("bak-1", "root").await.unwrap();
    let target = work.join("inc.qcow2");
    let started = Instant::now();
    let map = tracked_copy(hv, &work, &disk, &target, "nubo-bak-2", Some("nubo-bak-1")).await;
    let source = CopySource { file: target.clone(), size: DISK, extents: map, incremental: true };
    println!("incremental backup after 10 MiB written (plus 8 x 4 KiB):");
    store(&repo, "bak-2", &source, Some(&parent)).await;
    let inc = started.elapsed();
    std::fs::remove_file(&target).unwrap();
    println!("    {:.2} s", inc.as_secs_f64());

    // 4. The restore, into the qcow2 a host boots.
    let restored_raw = t.join("restored.raw");
    let restored = t.join("restored.qcow2");
    let started = Instant::now();
    repo.restore_disk("bak-2", "root", &restored_raw, &|_, _| {}).await.unwrap();
    run(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&restored_raw).arg(&restored));
    sync(&restored);
    let restore = started.elapsed();
    std::fs::remove_file(&restored_raw).unwrap();
    println!(
        "restore: {:.2} s, {:.0} MB/s = {:.2}x the copy's time",
        restore.as_secs_f64(),
        mb_s(data, restore),
        restore.as_secs_f64() / convert.as_secs_f64()
    );
    let same = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(&disk)
        .arg(&restored)
        .status()
        .unwrap();
    assert!(same.success(), "the restored disk differs from the disk");
    println!("restored disk identical to the disk (qemu-img compare)");
}
