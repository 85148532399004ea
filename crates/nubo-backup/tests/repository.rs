//! A repository in a directory: full and incremental backups, restore,
//! dedup, encryption at rest, wrong key, delete and prune.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use nubo_api::backup::RepositoryLocation;
use nubo_backup::{BackupError, RepoKey, Repository};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("repo");
    let location = RepositoryLocation::Dir { path: store.display().to_string() };
    common::scenario(location, tmp.path(), Some(&store)).await;
}

#[tokio::test]
async fn damaged_objects_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("repo");
    let location = RepositoryLocation::Dir { path: store.display().to_string() };
    let repo = Repository::open(&location, &RepoKey([9; 32])).await.unwrap();
    let disk = tmp.path().join("d.qcow2");
    common::qcow2(&disk, 2 * common::M, 65536, &["write -P 0x41 0 1M".into()]);
    let (ix, _) =
        repo.write_disk("bak-x", "root", &common::source(&disk, 2 * common::M, false), None, &|_, _| {}).await.unwrap();
    repo.put_manifest(&common::manifest("bak-x", &[("root", 2 * common::M)])).await.unwrap();
    // A chunk altered on the storage is refused on restore, not written.
    let name = hex::encode(ix.chunks[0].unwrap());
    let chunk = store.join("chunks").join(&name[..2]).join(&name);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&chunk, &bytes).unwrap();
    let err = repo.restore_disk("bak-x", "root", &tmp.path().join("out.raw"), &|_, _| {}).await.unwrap_err();
    assert!(matches!(err, BackupError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    // A chunk gone is reported as missing.
    std::fs::remove_file(&chunk).unwrap();
    let err = repo.restore_disk("bak-x", "root", &tmp.path().join("out.raw"), &|_, _| {}).await.unwrap_err();
    assert!(matches!(err, BackupError::Missing { .. }), "{err}");
    // Names that are not plain are refused before touching the store.
    let err = repo.manifest("../config").await.unwrap_err();
    assert!(matches!(err, BackupError::Invalid(_)), "{err}");
}

/// A disk grown between backups (to a size that was not a whole number of
/// chunks before): an incremental copy takes the parent's short last chunk
/// and pads it with zeros, and the new chunks are zeros unless written.
#[tokio::test]
async fn incremental_after_growth() {
    let tmp = tempfile::tempdir().unwrap();
    let location = RepositoryLocation::Dir { path: tmp.path().join("repo").display().to_string() };
    let repo = Repository::open(&location, &RepoKey::generate()).await.unwrap();
    let m = common::M;
    let small = 2 * m + m / 2;
    let parent = tmp.path().join("parent.qcow2");
    common::qcow2(&parent, small, 65536, &["write -P 0x51 0 2560k".into()]);
    let (pix, _) =
        repo.write_disk("bak-p", "root", &common::source(&parent, small, false), None, &|_, _| {}).await.unwrap();
    repo.put_manifest(&common::manifest("bak-p", &[("root", small)])).await.unwrap();

    let big = 4 * m;
    let incr = tmp.path().join("incr.qcow2");
    common::qcow2(&incr, big, 65536, &["write -P 0x52 3M 64k".into()]);
    let (ix, st) =
        repo.write_disk("bak-q", "root", &common::source(&incr, big, true), Some(&pix), &|_, _| {}).await.unwrap();
    assert_eq!(ix.chunks[..2], pix.chunks[..2], "untouched whole chunks are the parent's");
    assert_ne!(ix.chunks[2], pix.chunks[2], "the short chunk is re-chunked at full length");
    assert_eq!(st.chunks_new, 2, "chunk 2 (padded) and chunk 3 (written): {st:?}");
    repo.put_manifest(&common::manifest("bak-q", &[("root", big)])).await.unwrap();

    let mut expected = vec![0u8; big as usize];
    expected[..small as usize].fill(0x51);
    expected[3 << 20..(3 << 20) + 65536].fill(0x52);
    assert_eq!(common::restored(&repo, "bak-q", "root", tmp.path()).await, expected);
    assert_eq!(common::restored(&repo, "bak-p", "root", tmp.path()).await, vec![0x51u8; small as usize]);
}
