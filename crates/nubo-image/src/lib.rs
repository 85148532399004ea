//! Nubo's boot images: builds them from Debian packages, keeps them in a
//! content-addressed cache, and writes per-VM NoCloud seed disks.
//!
//! Two builtin images:
//! * `tiny` ([`tiny`]): CirrOS-like busybox guest assembled from unpacked
//!   `.deb`s, no root needed, about 20 s to build;
//! * `debian` ([`debian`]): a real Debian (the host's release) installed by
//!   `mmdebstrap` from the host's apt sources, with cloud-init,
//!   qemu-guest-agent and openssh-server, plus any extra packages
//!   ([`BuildOptions::packages`], e.g. `nubo image build debian --packages
//!   nginx`); needs root, about a minute to build.
//!
//! Extra packages do not make another image: the build is still `debian`
//! (the name points at the newest build) and its manifest records them in
//! `extra_packages`. They are left out of the recipe digest, so `ensure`
//! (what the agent calls) accepts a `debian` built with extras instead of
//! rebuilding it; [`ImageCache::ensure_with`] reuses a cached build only when
//! it already holds every requested package.
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
//! `qemu-img` (qemu-utils), plus the static `nubo-guest-agent` binary for
//! `tiny` (see [`guest_agent_binary`]); `debian` also needs `mmdebstrap` and root.
//!
//! [`inspect`] checks untrusted disk images (user uploads, raw or qcow2)
//! before any QEMU tool opens them.
//!
//! All functions block (they run host tools); call them from
//! `spawn_blocking` in async code.

mod apt;
mod debian;
mod disk;
mod elf;
mod error;
mod host;
mod initrd;
pub mod inspect;
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
pub const BUILTIN_IMAGES: &[(&str, &str)] = &[
    (
        "tiny",
        "CirrOS-like busybox guest on Debian's cloud kernel: DHCP, NoCloud seed, user-data scripts, ACPI power-off, guest agent (QGA protocol), dropbear SSH (key logins)",
    ),
    (
        "debian",
        "Debian (the host's release) with systemd, cloud-init, qemu-guest-agent and openssh-server; extra packages on request",
    ),
];

/// What a build may add to an image's recipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Extra Debian packages to install (`debian` only), e.g. `nginx`.
    pub packages: Vec<String>,
}

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
    /// Packages installed on top of the recipe's (sorted; empty for most builds).
    pub extra_packages: Vec<String>,
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

/// The recipe digest of a known image.
fn recipe_of(name: &str) -> String {
    match name {
        "debian" => debian::recipe(),
        _ => tiny::recipe(),
    }
}

/// The options, checked for `name` (package names validated, sorted, de-duplicated).
fn check_options(name: &str, options: &BuildOptions) -> Result<BuildOptions, ImageError> {
    let packages = debian::normalise_packages(&options.packages)?;
    if name != "debian" && !packages.is_empty() {
        return Err(ImageError::Unsupported {
            detail: format!("the image `{name}` takes no extra packages"),
            hint: "extra packages go into the `debian` image".into(),
        });
    }
    Ok(BuildOptions { packages })
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
        store::resolve_name(&self.layout, name, &recipe_of(name))
    }

    /// The image `name`, built first if it is not in the cache yet. When
    /// another process is building it, waits for that build and uses it.
    pub fn ensure(&self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<BuiltImage, ImageError> {
        self.ensure_with(name, &BuildOptions::default(), progress)
    }

    /// Like [`ImageCache::ensure`], but a cached image is used only when it
    /// holds every package of `options` (any extra packages do for none).
    pub fn ensure_with(
        &self,
        name: &str,
        options: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuiltImage, ImageError> {
        check_known(name)?;
        let options = check_options(name, options)?;
        let fits = |image: &BuiltImage| options.packages.iter().all(|p| image.extra_packages.contains(p));
        if let Some(image) = self.lookup(name)?.filter(fits) {
            return Ok(image);
        }
        let _lock = CacheLock::acquire(&self.layout, progress)?;
        if let Some(image) = self.lookup(name)?.filter(fits) {
            progress(&format!("{name}: built by another process"));
            return Ok(image);
        }
        self.build_locked(name, &options, progress)
    }

    /// Builds the image `name` even if it is cached, and points the name at
    /// the result. Downloaded packages are reused when still current.
    pub fn build(&self, name: &str, progress: &mut dyn FnMut(&str)) -> Result<BuiltImage, ImageError> {
        self.build_with(name, &BuildOptions::default(), progress)
    }

    /// [`ImageCache::build`] with options (extra packages for `debian`).
    pub fn build_with(
        &self,
        name: &str,
        options: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuiltImage, ImageError> {
        check_known(name)?;
        let options = check_options(name, options)?;
        let _lock = CacheLock::acquire(&self.layout, progress)?;
        self.build_locked(name, &options, progress)
    }

    fn build_locked(
        &self,
        name: &str,
        options: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuiltImage, ImageError> {
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

        let (built, cmdline) = if name == "debian" {
            (debian::build(&work, &out, &options.packages, progress)?, debian::CMDLINE)
        } else {
            let downloads = apt::DownloadCache::new(layout.downloads());
            downloads.remove_partial_downloads();
            (tiny::build(&work, &out, &downloads, progress)?, tiny::CMDLINE)
        };
        let sha256 = store::image_digest(&built.files);
        let manifest = Manifest {
            format: store::FORMAT,
            name: name.to_string(),
            sha256: sha256.clone(),
            cmdline: cmdline.to_string(),
            built_at: store::now_rfc3339(),
            kernel_version: built.kernel_version,
            recipe: recipe_of(name),
            extra_packages: options.packages.clone(),
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
    fn options_are_checked_before_building() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path());
        let nginx = BuildOptions { packages: vec!["nginx".into()] };
        let err = cache.build_with("tiny", &nginx, &mut |_| {}).expect_err("tiny takes no packages");
        assert!(err.to_string().contains("takes no extra packages"), "{err}");
        let bad = BuildOptions { packages: vec!["nginx; rm -rf /".into()] };
        let err = cache.ensure_with("debian", &bad, &mut |_| {}).expect_err("invalid name");
        assert!(matches!(err, ImageError::InvalidPackageName { .. }), "{err}");
        assert!(!dir.path().join(".lock").exists(), "nothing was started");
    }

    /// A fake `debian` image with extra packages in the cache, as a build would leave it.
    fn fake_debian(cache: &ImageCache, extras: &[&str]) -> String {
        let layout = &cache.layout;
        let tmp = layout.root.join("img");
        fs::create_dir_all(&tmp).expect("mkdir");
        let mut files = Vec::new();
        for (role, file) in [("kernel", "kernel"), ("initrd", "initrd"), ("disk", "disk.qcow2")] {
            fs::write(tmp.join(file), role).expect("write");
            files.push(store::describe(&tmp, role, file).expect("describe"));
        }
        let sha256 = store::image_digest(&files);
        let manifest = Manifest {
            format: store::FORMAT,
            name: "debian".into(),
            sha256: sha256.clone(),
            cmdline: debian::CMDLINE.into(),
            built_at: store::now_rfc3339(),
            kernel_version: "test".into(),
            recipe: recipe_of("debian"),
            extra_packages: extras.iter().map(|s| s.to_string()).collect(),
            files,
            packages: Vec::new(),
        };
        fs::write(tmp.join(MANIFEST), serde_json::to_vec(&manifest).expect("json")).expect("manifest");
        fs::create_dir_all(layout.images()).expect("mkdir");
        fs::rename(&tmp, layout.image_dir(&sha256)).expect("rename");
        store::set_name(layout, "debian", &sha256).expect("name");
        sha256
    }

    #[test]
    fn a_debian_with_extras_satisfies_ensure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path());
        let sha = fake_debian(&cache, &["curl", "nginx"]);
        let fail = &mut |msg: &str| panic!("must not build: {msg}");
        let image = cache.ensure("debian", fail).expect("cached");
        assert_eq!(image.sha256, sha);
        assert_eq!(image.extra_packages, ["curl", "nginx"]);
        let nginx = BuildOptions { packages: vec!["nginx".into(), "nginx".into()] };
        assert_eq!(cache.ensure_with("debian", &nginx, fail).expect("cached").sha256, sha);
        // Asking for a package the cached build lacks means building (which
        // would take a minute): check only that the cached one is refused.
        let image = cache.lookup("debian").expect("lookup").expect("present");
        assert!(!image.extra_packages.contains(&"redis-server".to_string()));
    }

    #[test]
    fn lookup_of_empty_cache_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ImageCache::new(dir.path().join("images"));
        assert_eq!(cache.lookup("tiny").expect("lookup"), None);
    }
}
