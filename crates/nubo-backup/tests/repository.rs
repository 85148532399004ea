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
