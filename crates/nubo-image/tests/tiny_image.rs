//! Builds the `tiny` image for real (Debian packages via apt-get, host
//! mkfs.ext4 and qemu-img) into the shared cache `$NUBO_IMAGE_CACHE`, or
//! `<workspace>/.cache/images`, and checks the artefacts and the cache
//! behaviour. Booting the image is tested by the hypervisor/agent crates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nubo_image::seed::{read_seed_file, write_nocloud_seed, SeedData};
use nubo_image::{ImageCache, BOOT_COMPLETE_MARKER, BUILTIN_IMAGES};

fn cache_root() -> PathBuf {
    match std::env::var_os("NUBO_IMAGE_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/images"),
    }
}

fn head(path: &std::path::Path, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut f = fs::File::open(path).expect("open artefact");
    f.read_exact(&mut buf).expect("read artefact header");
    buf
}

#[test]
fn tiny_builds_and_is_cached() {
    let cache = ImageCache::new(cache_root());
    let mut messages = Vec::new();
    let image = cache
        .ensure("tiny", &mut |m: &str| {
            eprintln!("[nubo-image] {m}");
            messages.push(m.to_string());
        })
        .expect("building the tiny image");

    assert_eq!(image.name, "tiny");
    assert_eq!(image.sha256.len(), 64);
    assert!(image.dir.ends_with(format!("sha256/{}", image.sha256)));
    assert!(image.cmdline.contains("console=ttyS0"));
    assert!(image.cmdline.contains("root=/dev/vda"));

    // Kernel: an x86 bzImage ("HdrS" setup header magic at 0x202).
    assert_eq!(&head(&image.kernel, 0x206)[0x202..], b"HdrS");
    // initrd: gzip; disk: qcow2.
    assert_eq!(&head(&image.initrd, 2), &[0x1f, 0x8b]);
    assert_eq!(&head(&image.disk, 4), b"QFI\xfb");
    for path in [&image.kernel, &image.initrd, &image.disk] {
        let len = fs::metadata(path).expect("stat artefact").len();
        assert!(len > 100_000, "{} is only {len} bytes", path.display());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(image.dir.join("manifest.json")).expect("read manifest"))
            .expect("manifest is JSON");
    assert_eq!(manifest["name"], "tiny");
    assert_eq!(manifest["sha256"], image.sha256.as_str());
    assert_eq!(manifest["cmdline"], image.cmdline.as_str());
    assert!(manifest["built_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(manifest["files"].as_array().map(Vec::len), Some(3));
    let pointer = fs::read_to_string(cache_root().join("names/tiny")).expect("name pointer");
    assert_eq!(pointer.trim(), image.sha256);
    image.verify().expect("artefacts match the manifest");

    // A second ensure() neither downloads nor builds.
    let started = Instant::now();
    let mut again_messages = Vec::new();
    let again = cache.ensure("tiny", &mut |m: &str| again_messages.push(m.to_string())).expect("second ensure");
    let elapsed = started.elapsed();
    assert_eq!(again, image);
    assert!(elapsed < Duration::from_secs(1), "second ensure took {elapsed:?}");
    assert!(again_messages.is_empty(), "unexpected work: {again_messages:?}");
    assert_eq!(cache.lookup("tiny").expect("lookup"), Some(image.clone()));

    // Concurrent callers all get the same image.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || cache.ensure("tiny", &mut |_| {}))
        })
        .collect();
    for handle in handles {
        let got = handle.join().expect("thread").expect("concurrent ensure");
        assert_eq!(got.sha256, image.sha256);
    }
}

#[test]
fn unknown_image_is_a_helpful_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = ImageCache::new(dir.path()).ensure("windows", &mut |_| {}).expect_err("unknown image");
    let msg = err.to_string();
    for (name, _) in BUILTIN_IMAGES {
        assert!(msg.contains(name), "{msg}");
    }
    // Nothing was created for an unknown name.
    assert!(fs::read_dir(dir.path()).expect("list").next().is_none());
}

#[test]
fn seed_for_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = dir.path().join("seed.img");
    write_nocloud_seed(
        &seed,
        &SeedData {
            instance_id: "i-42".into(),
            hostname: "vm-42".into(),
            user_data: Some("#!/bin/sh\necho hi\n".into()),
            public_keys: vec![],
        },
    )
    .expect("seed");
    let meta = read_seed_file(&seed, "meta-data").expect("meta-data");
    assert!(meta.contains("instance-id: i-42"));
    assert_eq!(BOOT_COMPLETE_MARKER, "NUBO_BOOT_COMPLETE");
}
