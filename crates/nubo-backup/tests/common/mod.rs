//! Shared by the repository tests: qcow2 copies made with qemu-img and
//! qemu-io, and one scenario (full and incremental backups, dedup,
//! restore, wrong key, delete and prune) run against each backend.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nubo_api::backup::RepositoryLocation;
use nubo_backup::{BackupError, CopySource, Extent, Manifest, ManifestDisk, RepoKey, Repository, CHUNK_SIZE};

pub const M: u64 = CHUNK_SIZE;
/// Written into the first disk; must never be readable in the repository.
pub const MARKER: &str = "NUBO-BACKUP-TEST-MARKER-7f3a9c";

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A qcow2 of `size` bytes with each qemu-io command applied.
pub fn qcow2(path: &Path, size: u64, cluster: u64, io: &[String]) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!("cluster_size={cluster}"))
        .arg(path)
        .arg(size.to_string()));
    if !io.is_empty() {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "qcow2"]);
        for cmd in io {
            c.arg("-c").arg(cmd);
        }
        run(c.arg(path));
    }
}

pub fn map(path: &Path) -> Vec<Extent> {
    let out = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "qcow2"]).arg(path));
    serde_json::from_str(&out).unwrap()
}

/// The disk's content as raw bytes.
pub fn raw(path: &Path) -> Vec<u8> {
    let out = path.with_extension("expected.raw");
    run(Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(path).arg(&out));
    let v = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    v
}

pub fn source(path: &Path, size: u64, incremental: bool) -> CopySource {
    CopySource { file: path.to_path_buf(), size, extents: map(path), incremental }
}

pub fn manifest(id: &str, disks: &[(&str, u64)]) -> Manifest {
    Manifest {
        backup_id: id.into(),
        instance_id: "i-test".into(),
        taken_at_ms: 1_700_000_000_000,
        disks: disks.iter().map(|(n, s)| ManifestDisk { name: n.to_string(), size: *s }).collect(),
        meta: serde_json::json!({"name": "test"}),
    }
}

pub async fn restored(repo: &Repository, id: &str, disk: &str, dir: &Path) -> Vec<u8> {
    let target = dir.join(format!("{id}-{disk}.raw"));
    repo.restore_disk(id, disk, &target, &|_, _| {}).await.unwrap();
    let v = std::fs::read(&target).unwrap();
    std::fs::remove_file(&target).unwrap();
    v
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// The whole scenario against the repository at `location`. `stored`,
/// when the test can see the repository's files, is their directory.
pub async fn scenario(location: RepositoryLocation, work: &Path, stored: Option<&Path>) {
    let key = RepoKey::generate();
    let repo = Repository::open(&location, &key).await.unwrap();
    let size = 24 * M;

    // A full copy: data, a zeroed range, a marker, a chunk of another pattern.
    let marker_file = work.join("marker.txt");
    std::fs::write(&marker_file, MARKER).unwrap();
    let disk1 = work.join("disk1.qcow2");
    qcow2(
        &disk1,
        size,
        65536,
        &[
            "write -P 0x41 0 4M".into(),
            "write -P 0x42 6M 1M".into(),
            "write -z 2M 1M".into(),
            format!("write -s {} 12M 64k", marker_file.display()),
            "write -P 0x43 20M 512k".into(),
        ],
    );
    let disk1_raw = raw(&disk1);
    assert!(disk1_raw.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "the marker is in the disk");
    let calls = std::sync::Mutex::new(Vec::new());
    let (ix1, st1) = repo
        .write_disk("bak-a", "root", &source(&disk1, size, false), None, &|d, t| calls.lock().unwrap().push((d, t)))
        .await
        .unwrap();
    assert_eq!(ix1.chunks.len(), 24);
    // Chunk 2 of the 0x41 range was zeroed.
    assert_eq!(ix1.chunks.iter().flatten().count(), 3 + 1 + 1 + 1, "{ix1:?}");
    // The 0x41 chunks are one content, stored once.
    assert_eq!(st1.chunks_new, 4, "{st1:?}");
    assert_eq!(st1.chunks, 24);
    let calls = calls.into_inner().unwrap();
    assert_eq!(calls.last(), Some(&(size, size)), "progress ends at the total");
    repo.put_manifest(&manifest("bak-a", &[("root", size)])).await.unwrap();
    assert_eq!(restored(&repo, "bak-a", "root", work).await, disk1_raw);
    assert_eq!(repo.manifest("bak-a").await.unwrap(), manifest("bak-a", &[("root", size)]));
    assert_eq!(repo.disk_index("bak-a", "root").await.unwrap(), ix1);

    // An incremental copy: small clusters so that a chunk is partly present.
    let incr = work.join("incr.qcow2");
    qcow2(
        &incr,
        size,
        4096,
        &[
            "write -P 0x61 1052672 8192".into(), // 1M + 4K: part of chunk 1
            "write -P 0x62 10M 1M".into(),       // all of chunk 10 (was zeros)
            "write -z 6M 1M".into(),             // chunk 6 zeroed
            "write -P 0x63 20M 4096".into(),     // part of chunk 20, rest from the parent
        ],
    );
    let incr_src = source(&incr, size, true);
    let incr_raw = raw(&incr);
    let mut expected = disk1_raw.clone();
    for e in incr_src.extents.iter().filter(|e| e.present) {
        let r = e.start as usize..(e.start + e.length) as usize;
        expected[r.clone()].copy_from_slice(&incr_raw[r]);
    }
    assert_ne!(expected, disk1_raw);
    let (ix2, st2) = repo.write_disk("bak-b", "root", &incr_src, Some(&ix1), &|_, _| {}).await.unwrap();
    assert_eq!(st2.chunks_new, 3, "chunks 1, 10 and 20 are new: {st2:?}");
    assert_eq!(ix2.chunks[6], None, "a zeroed chunk is a zero chunk");
    assert_eq!(ix2.chunks[0], ix1.chunks[0], "an untouched chunk is the parent's");
    repo.put_manifest(&manifest("bak-b", &[("root", size)])).await.unwrap();
    assert_eq!(restored(&repo, "bak-b", "root", work).await, expected);

    // Dedup: the same content as another disk adds nothing.
    let (ix3, st3) = repo.write_disk("bak-c", "vol-1", &source(&disk1, size, false), None, &|_, _| {}).await.unwrap();
    assert_eq!(ix3, ix1);
    // Only its index is sent and stored: no chunk.
    assert_eq!(st3.chunks_new, 0, "{st3:?}");
    assert!(st3.bytes_sent < 4096 && st3.bytes_stored == st3.bytes_sent, "{st3:?}");
    repo.put_manifest(&manifest("bak-c", &[("vol-1", size)])).await.unwrap();

    // A backup of its own content, and one never finished (no manifest).
    let disk4 = work.join("disk4.qcow2");
    qcow2(&disk4, 4 * M, 65536, &["write -P 0x77 0 2M".into(), "write -P 0x41 3M 1M".into()]);
    let (_, st4) = repo.write_disk("bak-d", "root", &source(&disk4, 4 * M, false), None, &|_, _| {}).await.unwrap();
    assert_eq!(st4.chunks_new, 1, "the 0x41 chunk is bak-a's: {st4:?}");
    repo.put_manifest(&manifest("bak-d", &[("root", 4 * M)])).await.unwrap();
    let disk5 = work.join("disk5.qcow2");
    qcow2(&disk5, 2 * M, 65536, &["write -P 0x99 0 1M".into()]);
    repo.write_disk("bak-e", "root", &source(&disk5, 2 * M, false), None, &|_, _| {}).await.unwrap();
    assert_eq!(repo.backups().await.unwrap(), vec!["bak-a", "bak-b", "bak-c", "bak-d"]);

    if let Some(dir) = stored {
        let all = files(dir);
        assert!(all.len() > 10, "{all:?}");
        for f in all {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                "the marker is readable in {}",
                f.display()
            );
            assert!(
                !bytes.windows(10).any(|w| w == b"test\",\"nam" || w == b"i-test\"}]}"),
                "plain metadata in {}",
                f.display()
            );
        }
    }

    // Another key is refused with a clear error.
    match Repository::open(&location, &RepoKey::generate()).await {
        Err(e @ BackupError::WrongKey { .. }) => assert!(e.to_string().contains("another key"), "{e}"),
        Err(e) => panic!("wrong error for another key: {e}"),
        Ok(_) => panic!("a repository opened with another key"),
    }

    // Delete and prune: bak-d's own chunk and bak-e's go, the rest stays.
    let before = repo.prune().await.unwrap();
    assert_eq!(before.chunks_deleted, 1, "bak-e was never finished: {before:?}");
    assert_eq!(before.chunks_kept, 4 + 3 + 1);
    repo.delete_backup("bak-d").await.unwrap();
    assert!(matches!(repo.manifest("bak-d").await, Err(BackupError::Missing { .. })));
    let after = repo.prune().await.unwrap();
    assert_eq!(after.chunks_deleted, 1, "{after:?}");
    assert!(after.bytes_freed > 0);
    assert_eq!(after.chunks_kept, 4 + 3);
    assert_eq!(repo.backups().await.unwrap(), vec!["bak-a", "bak-b", "bak-c"]);
    assert_eq!(restored(&repo, "bak-a", "root", work).await, disk1_raw);
    assert_eq!(restored(&repo, "bak-b", "root", work).await, expected);
    assert_eq!(restored(&repo, "bak-c", "vol-1", work).await, disk1_raw);
    // Reopened with its key, it is the same repository.
    let again = Repository::open(&location, &key).await.unwrap();
    assert_eq!(again.disk_index("bak-b", "root").await.unwrap(), ix2);
    assert!(matches!(again.disk_index("bak-e", "root").await, Err(BackupError::Missing { .. })));
}
