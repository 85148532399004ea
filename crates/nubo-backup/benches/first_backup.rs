//! First-backup throughput: a qcow2 of random data (512 MiB, or
//! NUBO_BENCH_MIB) written to a new directory repository, against
//! `qemu-img convert -O qcow2` of the same file into the same directory,
//! the copy a backup without a repository would make. Random data is the
//! worst case: every chunk is new and nothing compresses. Run with
//! `cargo bench -p nubo-backup --bench first_backup`; NUBO_BENCH_DIR
//! picks the file system (default: the system's temporary directory).
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is the failure report

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use nubo_api::backup::RepositoryLocation;
use nubo_backup::{CopySource, Extent, RepoKey, Repository};

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn main() {
    let mib: u64 = std::env::var("NUBO_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let size = mib << 20;
    let base = std::env::var_os("NUBO_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let raw = dir.path().join("source.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            buf.iter_mut().for_each(|b| *b = rand::random());
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let source = dir.path().join("source.qcow2");
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&source));
    std::fs::remove_file(&raw).unwrap();

    let copy = dir.path().join("copy.qcow2");
    let t = Instant::now();
    run(Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "qcow2"]).arg(&source).arg(&copy));
    // qemu-img does not flush; the repository does (each object reaches
    // stable storage before it is named): flush the copy too.
    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
    let convert = t.elapsed().as_secs_f64();
    std::fs::remove_file(&copy).unwrap();

    let extents: Vec<Extent> = serde_json::from_slice(&run(Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "qcow2"])
        .arg(&source)))
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (stats, backup) = rt.block_on(async {
        let location = RepositoryLocation::Dir { path: dir.path().join("repo").display().to_string() };
        let repo = Repository::open(&location, &RepoKey::generate()).await.unwrap();
        let src = CopySource { file: source.clone(), size, extents, incremental: false };
        let t = Instant::now();
        let (_, stats) = repo.write_disk("bak-bench", "root", &src, None, &|_, _| {}).await.unwrap();
        (stats, t.elapsed().as_secs_f64())
    });
    assert_eq!(stats.chunks_new, mib);
    println!(
        "first backup of {mib} MiB of random data ({} cores):",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("  qemu-img convert -O qcow2: {:8.1} MB/s ({convert:.2} s)", mb_s(size, convert));
    println!(
        "  nubo-backup write_disk:    {:8.1} MB/s ({backup:.2} s, {} bytes stored)",
        mb_s(size, backup),
        stats.bytes_sent
    );
}
