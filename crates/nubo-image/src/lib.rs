//! Nubo's boot images: builds them from Debian packages, keeps them in a
//! content-addressed cache, and writes per-VM NoCloud seed disks.
//!
//! An image is a direct-kernel-boot triple (`kernel`, `initrd`, base root
//! disk `disk.qcow2`) plus a kernel command line. VMs boot it with a qcow2
//! overlay on `disk.qcow2` (resized to the flavour's disk size; the guest
//! grows its file system to fill it) and a seed disk from
//! [`seed::write_nocloud_seed`] as the second virtio disk:
//!
//! ```text
//! qemu-img create -f qcow2 -F qcow2 -b DISK /abs/overlay.qcow2 5G
//! qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 1 -m 256 \
//!   -nodefaults -display none \
//!   -kernel KERNEL -initrd INITRD -append CMDLINE \
//!   -drive file=/abs/overlay.qcow2,if=virtio \
//!   -drive file=/abs/seed.img,if=virtio,format=raw \
//!   -netdev user,id=n0,hostfwd=tcp:127.0.0.1:PORT-:80 -device virtio-net-pci,netdev=n0 \
//!   -serial file:/abs/console.log -qmp unix:/abs/qmp.sock,server=on,wait=off
//! ```
//!
//! The root disk must be the first virtio disk (`/dev/vda`); the seed is
//! found by its `cidata` label (falling back to `/dev/vdb`). The guest prints
//! [`BOOT_COMPLETE_MARKER`]` instance-id=<id>` on the serial console when it
//! is up, runs a `#!` user-data script on every boot with its output on the
//! console, and powers off on an ACPI power-button press (QMP
//! `system_powerdown`, q35's ACPI is on by default). It runs a guest agent
//! (QEMU Guest Agent protocol) on the virtio-serial port
//! `org.qemu.guest_agent.0` when the VM has one, and an SSH server on port
//! 22 that accepts only the seed's public keys, for root.
//!
//! Building needs these host tools: `apt-get`/`apt-cache` (with current
//! package lists, `apt-get update`), `dpkg`, `mkfs.ext4` (e2fsprogs) and
//! `qemu-img` (qemu-utils), plus the static `nubo-guest-agent` binary (see
//! [`guest_agent_binary`]).
//!
//! All functions block (they run host tools); call them from
//! `spawn_blocking` in async code.

mod apt;
mod elf;
mod error;
mod host;
mod initrd;
mod kmod;
pub mod seed;
mod store;
mod tiny;

use std::fs;
use std::path::PathBuf;
use std::time::Instant;

pub use error::ImageError;
pub use tiny::guest_agent_binary;

use crate::error::IoContext;
use crate::store::{CacheLock, Layout, Manifest, MANIFEST};

/// Images this crate can build: `(name, one-line description)`.
pub const BUILTIN_IMAGES: &[(&str, &str)] = &[(
    "tiny",
    "CirrOS-like busybox guest on Debian's cloud kernel: DHCP, NoCloud seed, user-data scripts, ACPI power-off, guest agent (QGA protocol), dropbear SSH (key logins)",
)];

/// What the guest prints on the serial console (followed by
/// ` instance-id=<id>`) once it has booted.
pub const BOOT_COMPLETE_MARKER: &str = "NUBO_BOOT_COMPLETE";

/// A built image in the cache. All paths are absolute when the cache root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// Image name, e.g. `tiny`.
    pub name: String,
    /// Content address (hex SHA-256 over the artefacts' hashes).
    pub sha256: String,
    /// The image directory, `ROOT/sha256/<sha256>`.
    pub dir: PathBuf,
    /// Kernel (bzImage) for `-kernel`.
    pub kernel: PathBuf,
    /// Initramfs for `-initrd`.
    pub initrd: PathBuf,
    /// Base root disk (qcow2, read-only): use it as the backing file of a per-VM overlay.
    pub disk: PathBuf,
    /// Kernel command line for `-append`.
    pub cmdline: String,
}

impl BuiltImage {
    /// Re-hashes the artefacts and checks them against the manifest.
    pub fn verify(&self) -> Result<(), ImageError> {
        let manifest = store::read_manifest(&self.dir)?;
        store::verify(&self.dir, &manifest)
    }
}

/// The image cache rooted at one directory (e.g. `DATA_DIR/images`).
/// Several processes may share it: builds are serialised with a lock file
/// and published atomically.
#[derive(Debug, Clone)]
pub struct ImageCache {
    layout: Layout,
}

fn check_known(name: &str) -> Result<(), ImageError> {
    if BUILTIN_IMAGES.iter().any(|(n, _)| *n == name) {
        return Ok(());
    }
    let known = BUILTIN_IMAGES.iter().map(|(n, d)| format!("`{n}` ({d})")).collect::<Vec<_>>().join(", ");
    Err(ImageError::UnknownImage { name: name.to_string(), known })
}

impl ImageCache {
    /// A cache rooted at `root` (created on the first build).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { layout: Layout { root: root.into() } }
    }

    /// The cache root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.layout.root
    }

    /// The image `name` if it has been built (no downloads, no hashing).
    pub fn lookup(&self, name: &str) -> Result<Option<BuiltImage>, ImageError> {
        check_known(name)?;
        store::resolve_name(&self.layout, name, &tiny::recipe())
    }

    /// The image `name`, built first if it is not in the cache yet. When
    /// another process is building it, waits for that build and uses it.
    pub fn ensure(&self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<BuiltImage, ImageError> {
        if let Some(image) = self.lookup(name)? {
            return Ok(image);
        }
        let _lock = CacheLock::acquire(&self.layout, progress)?;
        if let Some(image) = self.lookup(name)? {
            progress(&format!("{name}: built by another process"));
            return Ok(image);
        }
        self.build_locked(name, progress)
    }

    /// Builds the image `name` even if it is cached, and points the name at
    /// the result. Downloaded packages are reused when still current.
    pub fn build(&self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<BuiltImage, ImageError> {
        check_known(name)?;
        let _lock = CacheLock::acquire(&self.layout, progress)?;
        self.build_locked(name, progress)
    }

    fn build_locked(&self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<BuiltImage, ImageError> {
        check_known(name)?;
        let started = Instant::now();
        let layout = &self.layout;
        let tmp_root = layout.tmp();
        // We hold the lock: anything left in tmp/ is from a build that died.
        if tmp_root.exists() {
            fs::remove_dir_all(&tmp_root).ctx("removing stale build directory", &tmp_root)?;
        }
        fs::create_dir_all(&tmp_root).ctx("creating directory", &tmp_root)?;
        fs::create_dir_all(layout.images()).ctx("creating directory", &layout.images())?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("build-{name}-"))
            .tempdir_in(&tmp_root)
            .ctx("creating a build directory in", &tmp_root)?;
        let out = tmp.path().join("out");
        let work = tmp.path().join("work");
        fs::create_dir_all(&out).ctx("creating directory", &out)?;
        fs::create_dir_all(&work).ctx("creating directory", &work)?;

        let downloads = apt::DownloadCache::new(layout.downloads());
        downloads.remove_partial_downloads();
        let built = tiny::build(&work, &out, &downloads, progress)?;
        let sha256 = store::image_digest(&built.files);
        let manifest = Manifest {
            format: store::FORMAT,
            name: name.to_string(),
            sha256: sha256.clone(),
            cmdline: tiny::CMDLINE.to_string(),
            built_at: store::now_rfc3339(),
            kernel_version: built.kernel_version,
            recipe: tiny::recipe(),
            files: built.files,
            packages: built.packages,
        };
        let manifest_path = out.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| {
            ImageError::io("serialising", &manifest_path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        fs::write(&manifest_path, json).ctx("writing", &manifest_path)?;

        let dir = layout.image_dir(&sha256);
        if store::read_manifest(&dir).is_ok() {
            tracing::info!(dir = %dir.display(), "identical image already stored");
        } else {
            if dir.exists() {
                fs::remove_dir_all(&dir).ctx("removing damaged image directory", &dir)?;
            }
            fs::rename(&out, &dir).ctx("publishing image directory", &dir)?;
        }
        store::set_name(layout, name, &sha256)?;
        drop(tmp);
        let image = manifest.to_image(&dir)?;
        progress(&format!("done: {name} sha256:{} in {:.1} s", &sha256[..12], started.elapsed().as_secs_f64()));
        tracing::info!(image = name, sha256 = %sha256, dir = %dir.display(), "image built");
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_image_lists_known_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path());
        let err = cache.ensure("ubuntu", &mut |_| {}).expect_err("unknown image");
        let msg = err.to_string();
        assert!(msg.contains("unknown image `ubuntu`"), "{msg}");
        assert!(msg.contains("`tiny`"), "{msg}");
        assert!(matches!(cache.lookup("../etc"), Err(ImageError::UnknownImage { .. })));
    }

    #[test]
    fn lookup_of_empty_cache_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path().join("images"));
        assert_eq!(cache.lookup("tiny").expect("lookup"), None);
    }
}
