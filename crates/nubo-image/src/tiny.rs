//! The `tiny` image recipe (CirrOS-like), built only from Debian packages:
//!
//! * `kernel`: the vmlinuz of `linux-image-<ver>-cloud-amd64`;
//! * `initrd`: busybox, `resize2fs` (+ its shared libraries and loader) and the
//!   virtio/vfat/ACPI modules; its `/init` loads the modules, mounts
//!   `/dev/vda`, grows the ext4 online to the disk size and `switch_root`s;
//! * `disk.qcow2`: a small ext4 root file system with busybox, its applet
//!   links, the init scripts in `assets/tiny/` (DHCP, NoCloud seed,
//!   boot marker, user-data, ACPI power button), the static
//!   `nubo-guest-agent` (QEMU Guest Agent protocol on the virtio-serial port
//!   `org.qemu.guest_agent.0`, at /usr/sbin/nubo-guest-agent) and Debian's
//!   `dropbear` SSH server (+ its shared libraries; key logins only, for
//!   root with the seed's public keys; host keys made on first connect).
//!
//! The guest agent binary is not built here: it is found through
//! [`guest_agent_binary`] (env `NUBO_GUEST_AGENT`, or next to the running
//! program) and its SHA-256 is part of the recipe, so a changed agent
//! rebuilds the image.
//!
//! The guest prints `NUBO_BOOT_COMPLETE instance-id=<id>` on the serial
//! console once it is up.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::apt::{self, DebPackage, DownloadCache};
use crate::elf::Elf;
use crate::error::{ImageError, IoContext};
use crate::initrd;
use crate::kmod::ModuleTree;
use crate::store::{self, Built, ManifestPackage};
use sha2::{Digest, Sha256};

/// Kernel command line for direct kernel boot of `tiny`.
pub(crate) const CMDLINE: &str = "console=ttyS0 root=/dev/vda rw quiet";

/// Size of the base root disk. VMs use a larger qcow2 overlay; the initramfs
/// grows the file system to fill it.
const DISK_SIZE: u64 = 64 * 1024 * 1024;

const KERNEL_META: &str = "linux-image-cloud-amd64";
const BUSYBOX: &str = "busybox-static";
/// `resize2fs` and the packages holding its shared libraries and loader.
const RESIZE_PACKAGES: &[&str] = &["e2fsprogs", "libext2fs2", "libcom-err2", "libblkid1", "libuuid1", "libc6"];
/// The SSH server and the packages holding its shared libraries (libc6
/// comes with [`RESIZE_PACKAGES`]).
const DROPBEAR_PACKAGES: &[&str] = &["dropbear-bin", "libcrypt1", "libtomcrypt1", "libtommath1", "libgmp10", "zlib1g"];
/// Where the guest agent lives in the root file system (inittab and rcS start it there).
const GUEST_AGENT_PATH: &str = "usr/sbin/nubo-guest-agent";
/// Environment variable naming the static guest agent binary to install.
pub(crate) const GUEST_AGENT_ENV: &str = "NUBO_GUEST_AGENT";
/// How to build the guest agent, for error messages.
const GUEST_AGENT_BUILD: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p nubo-guest-agent --target x86_64-unknown-linux-gnu";

/// Modules the image cannot work without (dependencies are added).
const REQUIRED_MODULES: &[&str] =
    &["virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "vfat", "nls_cp437", "nls_ascii", "button", "evdev"];
/// Modules that help when the kernel has them.
const OPTIONAL_MODULES: &[&str] = &["nls_utf8", "nls_iso8859_1", "virtio_rng", "qemu_fw_cfg", "efivarfs"];

const INITRAMFS_INIT: &str = include_str!("../assets/tiny/initramfs-init");
const INITTAB: &str = include_str!("../assets/tiny/inittab");
const RC_S: &str = include_str!("../assets/tiny/rcS");
const RC_K: &str = include_str!("../assets/tiny/rcK");
const USER_DATA: &str = include_str!("../assets/tiny/user-data");
const POWER_BUTTON: &str = include_str!("../assets/tiny/power-button");
const UDHCPC_SCRIPT: &str = include_str!("../assets/tiny/udhcpc.script");

/// Digest of everything that defines how `tiny` is built (apart from the
/// Debian package versions): the scripts, command line, module and package
/// lists, the disk size and the guest agent binary's SHA-256. `ensure`
/// rebuilds images made by another recipe. Without a guest agent binary the
/// digest matches no built image, so the build runs and says what is missing.
pub(crate) fn recipe() -> String {
    let mut h = Sha256::new();
    h.update(format!("tiny/{}\n{CMDLINE}\n{DISK_SIZE}\n{KERNEL_META}\n{BUSYBOX}\n", store::FORMAT));
    let agent = guest_agent_binary().ok().and_then(|p| guest_agent_sha256(&p));
    h.update(format!("guest-agent={}\n", agent.as_deref().unwrap_or("missing")).as_bytes());
    for list in [RESIZE_PACKAGES, DROPBEAR_PACKAGES, REQUIRED_MODULES, OPTIONAL_MODULES] {
        h.update(list.join(",").as_bytes());
        h.update(b"\n");
    }
    for script in [INITRAMFS_INIT, INITTAB, RC_S, RC_K, USER_DATA, POWER_BUTTON, UDHCPC_SCRIPT] {
        h.update(format!("{}\n", script.len()).as_bytes());
        h.update(script.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The guest agent binary's SHA-256, hashed again only when its path, size
/// or modification time changes: every instance start looks the image up,
/// and hashing megabytes each time cost more than the rest of a start.
fn guest_agent_sha256(path: &std::path::Path) -> Option<String> {
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static LAST: std::sync::Mutex<Option<(Key, String)>> = std::sync::Mutex::new(None);
    let meta = std::fs::metadata(path).ok()?;
    let key: Key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, sha)) = last.as_ref() {
        if *k == key {
            return Some(sha.clone());
        }
    }
    let sha = store::sha256_file(path).ok()?;
    *last = Some((key, sha.clone()));
    Some(sha)
}

/// The static `nubo-guest-agent` binary to install: `$NUBO_GUEST_AGENT`, else
/// the first static one of `<exe dir>/nubo-guest-agent`,
/// `<exe dir>/../x86_64-unknown-linux-gnu/{release,debug}/nubo-guest-agent` and
/// `<exe dir>/../../x86_64-unknown-linux-gnu/{release,debug}/nubo-guest-agent`
/// (the last for tests, which run from `target/debug/deps`). Dynamically
/// linked candidates (a plain `cargo build` output) are skipped: the guest
/// has no matching C library.
pub fn guest_agent_binary() -> Result<PathBuf, ImageError> {
    let missing = |detail: String| ImageError::GuestAgent { detail, build: GUEST_AGENT_BUILD.to_string() };
    if let Some(path) = std::env::var_os(GUEST_AGENT_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match is_static_elf(&path) {
            Ok(true) => Ok(path),
            Ok(false) => Err(missing(format!(
                "{GUEST_AGENT_ENV}={} is dynamically linked; the guest needs a static binary",
                path.display()
            ))),
            Err(e) => Err(missing(format!("{GUEST_AGENT_ENV}={}: {e}", path.display()))),
        };
    }
    let exe = std::env::current_exe().map_err(|e| missing(format!("cannot find the running program: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![dir.join("nubo-guest-agent")];
    for up in [dir.join(".."), dir.join("../..")] {
        for profile in ["release", "debug"] {
            candidates.push(up.join("x86_64-unknown-linux-gnu").join(profile).join("nubo-guest-agent"));
        }
    }
    for c in &candidates {
        if let Ok(true) = is_static_elf(c) {
            return Ok(c.clone());
        }
    }
    let tried = candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(missing(format!("no static nubo-guest-agent binary; {GUEST_AGENT_ENV} is not set and none of {tried} is one")))
}

/// True for an ELF file without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> Result<bool, String> {
    let data = fs::read(path).map_err(|e| e.to_string())?;
    let elf = Elf::parse(&data)?;
    Ok(elf.interpreter().is_none())
}

/// Builds `tiny` into `out` (which must exist and be empty), using `work`
/// as scratch space and `downloads` as the package cache.
pub(crate) fn build(
    work: &Path,
    out: &Path,
    downloads: &DownloadCache,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, ImageError> {
    // Before any download: without the agent there is nothing to build.
    let agent = guest_agent_binary()?;
    progress("resolving Debian packages");
    let meta = apt::candidates(&[KERNEL_META])?.into_iter().next().ok_or_else(|| ImageError::Package {
        package: KERNEL_META.to_string(),
        detail: "`apt-cache show` did not describe it".into(),
        hint: "run `apt-get update`".into(),
    })?;
    let kernel_name = meta
        .depends_names()
        .into_iter()
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-cloud-amd64"))
        .ok_or_else(|| ImageError::Package {
            package: KERNEL_META.to_string(),
            detail: format!("no linux-image-<version>-cloud-amd64 in Depends: {}", meta.depends),
            hint: "run `apt-get update`; the package index may be incomplete".to_string(),
        })?;
    let mut wanted = vec![kernel_name.as_str(), BUSYBOX];
    wanted.extend_from_slice(RESIZE_PACKAGES);
    wanted.extend_from_slice(DROPBEAR_PACKAGES);
    let packages: Vec<DebPackage> = apt::candidates(&wanted)?;

    let mut unpacked = BTreeMap::new();
    for pkg in &packages {
        let deb = downloads.fetch(pkg, progress)?;
        progress(&format!("unpacking {}", pkg.name));
        let dest = work.join("pkgs").join(&pkg.name);
        apt::unpack(&deb, &dest)?;
        unpacked.insert(pkg.name.clone(), dest);
    }
    let pkg_root = |name: &str| -> Result<&PathBuf, ImageError> {
        unpacked.get(name).ok_or_else(|| ImageError::Package {
            package: name.to_string(),
            detail: "was not unpacked".into(),
            hint: "this is a bug in nubo-image; please report it".into(),
        })
    };

    // Kernel and modules.
    let kernel_root = pkg_root(&kernel_name)?;
    let tree = ModuleTree::open(kernel_root, &kernel_name)?;
    let kver = tree.version().to_string();
    let vmlinuz = kernel_root.join("boot").join(format!("vmlinuz-{kver}"));
    if !vmlinuz.is_file() {
        return Err(ImageError::Package {
            package: kernel_name.clone(),
            detail: format!("no {}", vmlinuz.display()),
            hint: "check that the package is a Debian kernel image".into(),
        });
    }
    fs::copy(&vmlinuz, out.join("kernel")).ctx("copying the kernel to", out)?;
    progress("selecting kernel modules");
    let modules = tree.resolve(REQUIRED_MODULES, OPTIONAL_MODULES)?;
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    tracing::info!(kernel = %kver, modules = ?names, "kernel modules for the initramfs");

    let busybox = pkg_root(BUSYBOX)?.join("bin/busybox");
    let applets = busybox_applets(&busybox)?;

    // initramfs.
    progress(&format!("building initrd ({} kernel modules)", modules.len()));
    let staging = work.join("initrd");
    for dir in ["dev", "proc", "sys", "newroot", "tmp", "run", "etc", "root"] {
        mkdir(&staging.join(dir))?;
    }
    install_busybox(&staging, &busybox, &applets)?;
    write_file(&staging.join("init"), INITRAMFS_INIT, 0o755)?;
    symlink_at("/proc/mounts", &staging.join("etc/mtab"))?;
    let mut lib_roots = Vec::new();
    for name in RESIZE_PACKAGES {
        lib_roots.push(pkg_root(name)?.clone());
    }
    install_program(
        &staging,
        &pkg_root("e2fsprogs")?.join("sbin/resize2fs"),
        "sbin/resize2fs",
        &lib_roots,
        "e2fsprogs",
    )?;
    let mod_dir = staging.join("lib/modules");
    mkdir(&mod_dir)?;
    let mut order = String::new();
    for m in &modules {
        let path = mod_dir.join(m.file_name());
        fs::write(&path, &m.data).ctx("writing", &path)?;
        order.push_str(&m.file_name());
        order.push('\n');
    }
    write_file(&mod_dir.join("load-order"), &order, 0o644)?;
    initrd::write(&staging, &[initrd::CONSOLE], &out.join("initrd"))?;

    // Root disk.
    progress("building root disk");
    let rootfs = work.join("rootfs");
    stage_rootfs(&rootfs, &busybox, &applets)?;
    let agent_data = fs::read(&agent).ctx("reading the guest agent", &agent)?;
    write_bytes(&rootfs.join(GUEST_AGENT_PATH), &agent_data, 0o755)?;
    let mut ssh_roots = Vec::new();
    for name in DROPBEAR_PACKAGES.iter().chain(&["libc6"]) {
        ssh_roots.push(pkg_root(name)?.clone());
    }
    install_program(
        &rootfs,
        &pkg_root("dropbear-bin")?.join("usr/sbin/dropbear"),
        "usr/sbin/dropbear",
        &ssh_roots,
        "dropbear-bin",
    )?;
    crate::disk::root_disk(&rootfs, work, out, DISK_SIZE, &["-T", "default"], &mut |_| {})?;
    let files = crate::disk::seal(out)?;
    Ok(Built {
        kernel_version: kver,
        packages: packages
            .iter()
            .map(|p| ManifestPackage { name: p.name.clone(), version: p.version.clone(), sha256: p.sha256.clone() })
            .collect(),
        files,
    })
}

/// The applet paths (`bin/sh`, `sbin/init`, ...) of a busybox binary.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = std::process::Command::new(busybox).arg("--list-full").output().map_err(|e| ImageError::Package {
        package: BUSYBOX.into(),
        detail: format!("cannot run {} --list-full: {e}", busybox.display()),
        hint: "the image build runs the package's static busybox; it needs an x86-64 host".into(),
    })?;
    let applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && is_safe_relative(l))
        .collect();
    if !output.status.success() || !applets.iter().any(|a| a == "sbin/init") {
        return Err(ImageError::Package {
            package: BUSYBOX.into(),
            detail: "`busybox --list-full` did not list sbin/init".into(),
            hint: "check the busybox-static package".into(),
        });
    }
    Ok(applets)
}

/// True for a relative path without `..`, `.` or root components.
fn is_safe_relative(path: &str) -> bool {
    Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

fn mkdir(path: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(path).ctx("creating directory", path)
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::write(path, content).ctx("writing", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("setting permissions of", path)
}

fn symlink_at(target: &str, link: &Path) -> Result<(), ImageError> {
    if let Some(parent) = link.parent() {
        mkdir(parent)?;
    }
    symlink(target, link).ctx("creating symlink", link)
}

/// Copies busybox to `root/bin/busybox` and links every applet to it.
fn install_busybox(root: &Path, busybox: &Path, applets: &[String]) -> Result<(), ImageError> {
    let dest = root.join("bin/busybox");
    mkdir(&root.join("bin"))?;
    fs::copy(busybox, &dest).ctx("copying busybox to", &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).ctx("setting permissions of", &dest)?;
    for applet in applets {
        if applet == "bin/busybox" {
            continue;
        }
        let link = root.join(applet);
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        symlink_at("/bin/busybox", &link)?;
    }
    Ok(())
}

/// Resolves `rel` inside `root`, following symlinks (absolute targets are
/// taken relative to `root`, never the host's `/`).
fn resolve_in_root(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut current = rel.trim_start_matches('/').to_string();
    for _ in 0..16 {
        let path = root.join(&current);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = fs::read_link(&path).ok()?;
        let target = target.to_string_lossy();
        current = if let Some(abs) = target.strip_prefix('/') {
            abs.to_string()
        } else {
            let parent = Path::new(&current).parent().unwrap_or(Path::new(""));
            parent.join(target.as_ref()).to_string_lossy().into_owned()
        };
        // Normalise "a/b/../c".
        let mut parts: Vec<&str> = Vec::new();
        for part in current.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        current = parts.join("/");
    }
    None
}

/// Finds the shared library `name` in the unpacked packages.
fn find_library(roots: &[PathBuf], name: &str) -> Option<PathBuf> {
    const DIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib"];
    roots.iter().find_map(|root| DIRS.iter().find_map(|dir| resolve_in_root(root, &format!("{dir}/{name}"))))
}

/// Copies a dynamically linked program to `root/<dest>` with its shared
/// libraries (to `lib/x86_64-linux-gnu`) and its loader (to its PT_INTERP path).
fn install_program(
    root: &Path,
    program: &Path,
    dest: &str,
    lib_roots: &[PathBuf],
    package: &str,
) -> Result<(), ImageError> {
    let bad = |detail: String| ImageError::Package {
        package: package.into(),
        detail,
        hint: format!(
            "the {package} package or its libraries changed layout; update the package lists in nubo-image's tiny.rs"
        ),
    };
    let data = fs::read(program).ctx("reading", program)?;
    let elf = Elf::parse(&data).map_err(|e| bad(format!("{}: {e}", program.display())))?;
    let interp = elf.interpreter().ok_or_else(|| bad(format!("{} has no ELF interpreter", program.display())))?;
    let target = root.join(dest);
    write_bytes(&target, &data, 0o755)?;

    let loader_name = Path::new(&interp).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let loader = find_library(lib_roots, &loader_name)
        .ok_or_else(|| bad(format!("loader {interp} not found in the unpacked packages")))?;
    let loader_dest = interp.trim_start_matches('/');
    if !is_safe_relative(loader_dest) {
        return Err(bad(format!("unexpected loader path {interp}")));
    }
    let loader_data = fs::read(&loader).ctx("reading", &loader)?;
    write_bytes(&root.join(loader_dest), &loader_data, 0o755)?;

    let mut seen = HashSet::new();
    let mut queue = elf.needed();
    while let Some(lib) = queue.pop() {
        if !seen.insert(lib.clone()) || lib == loader_name {
            continue;
        }
        let path = find_library(lib_roots, &lib)
            .ok_or_else(|| bad(format!("shared library {lib} not found in the unpacked packages")))?;
        let lib_data = fs::read(&path).ctx("reading", &path)?;
        let lib_elf = Elf::parse(&lib_data).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        queue.extend(lib_elf.needed());
        write_bytes(&root.join("lib/x86_64-linux-gnu").join(&lib), &lib_data, 0o755)?;
    }
    Ok(())
}

fn write_bytes(path: &Path, data: &[u8], mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::write(path, data).ctx("writing", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("setting permissions of", path)
}

/// Lays out the root file system of the base disk in `root`.
fn stage_rootfs(root: &Path, busybox: &Path, applets: &[String]) -> Result<(), ImageError> {
    for dir in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "mnt",
        "home",
        "var/log",
        "var/lib",
        "var/www",
        "etc/init.d",
        "etc/dropbear",
    ] {
        mkdir(&root.join(dir))?;
    }
    install_busybox(root, busybox, applets)?;
    let set_mode = |rel: &str, mode: u32| {
        let path = root.join(rel);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).ctx("setting permissions of", &path)
    };
    mkdir(&root.join("root"))?;
    set_mode("root", 0o700)?;
    set_mode("tmp", 0o1777)?;
    symlink_at("/run", &root.join("var/run"))?;

    write_file(&root.join("etc/inittab"), INITTAB, 0o644)?;
    write_file(&root.join("etc/init.d/rcS"), RC_S, 0o755)?;
    write_file(&root.join("etc/init.d/rcK"), RC_K, 0o755)?;
    write_file(&root.join("etc/init.d/user-data"), USER_DATA, 0o755)?;
    write_file(&root.join("etc/acpi/PWRF/00000080"), POWER_BUTTON, 0o755)?;
    write_file(&root.join("usr/share/udhcpc/default.script"), UDHCPC_SCRIPT, 0o755)?;
    write_file(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    write_file(&root.join("etc/group"), "root:x:0:\ntty:x:5:\n", 0o644)?;
    // `*`: no password can match, so root logs in only with an SSH key.
    write_file(&root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n", 0o600)?;
    write_file(&root.join("etc/shells"), "/bin/sh\n/bin/ash\n", 0o644)?;
    // dropbear looks users up through glibc's NSS; say plainly to use the files.
    write_file(
        &root.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        0o644,
    )?;
    write_file(&root.join("etc/hostname"), "nubo\n", 0o644)?;
    write_file(&root.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n", 0o644)?;
    write_file(&root.join("etc/resolv.conf"), "", 0o644)?;
    write_file(
        &root.join("etc/profile"),
        "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\nexport PS1='\\h:\\w\\$ '\n",
        0o644,
    )?;
    write_file(
        &root.join("etc/os-release"),
        "NAME=\"Nubo tiny\"\nID=nubo-tiny\nPRETTY_NAME=\"Nubo tiny (busybox)\"\n",
        0o644,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_symlinks_inside_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).expect("mkdir");
        fs::create_dir_all(root.join("lib64")).expect("mkdir");
        fs::write(root.join("lib/x86_64-linux-gnu/ld.so.real"), b"x").expect("write");
        symlink("/lib/x86_64-linux-gnu/ld.so.real", root.join("lib64/ld.so")).expect("link");
        symlink("../lib/x86_64-linux-gnu/ld.so.real", root.join("lib64/rel.so")).expect("link");
        assert_eq!(resolve_in_root(root, "lib64/ld.so"), Some(root.join("lib/x86_64-linux-gnu/ld.so.real")));
        assert_eq!(resolve_in_root(root, "/lib64/rel.so"), Some(root.join("lib/x86_64-linux-gnu/ld.so.real")));
        assert_eq!(resolve_in_root(root, "lib64/missing"), None);
    }

    #[test]
    fn applet_paths_must_be_relative() {
        assert!(is_safe_relative("usr/bin/wget"));
        assert!(!is_safe_relative("../etc/passwd"));
        assert!(!is_safe_relative("/bin/sh"));
    }

    #[test]
    fn scripts_are_posix_shell() {
        for script in [INITRAMFS_INIT, RC_S, RC_K, USER_DATA, POWER_BUTTON, UDHCPC_SCRIPT] {
            assert!(script.starts_with("#!/bin/sh\n"));
        }
        assert!(RC_S.contains("echo \"NUBO_BOOT_COMPLETE instance-id=$instance_id\""));
    }
}
