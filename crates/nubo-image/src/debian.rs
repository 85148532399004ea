//! The `debian` image recipe: a real Debian system (systemd, cloud-init,
//! qemu-guest-agent, openssh-server, ifupdown + DHCP) plus any packages the
//! operator asks for, installed by `mmdebstrap` with the host's own apt
//! sources (`/etc/apt/sources.list{,.d}`) for the host's suite
//! (`VERSION_CODENAME` of `/etc/os-release`).
//!
//! No bootloader, partition table or loop mount: the root file system is
//! built in a directory, configured there, and turned into a whole-disk
//! ext4 with `mkfs.ext4 -d`, then into `disk.qcow2`. The kernel and initrd
//! come out of the root file system's `/boot` and are booted directly with
//! [`CMDLINE`] (`/dev/vda` is the root disk). In the guest:
//!
//! * cloud-init reads only the NoCloud seed (`datasource_list: [NoCloud,
//!   None]`), leaves the locale alone (none is generated), renders the seed's `network-config` for ifupdown (`eni`), sets
//!   the hostname and grows the root file system to the overlay's size
//!   (`resize_rootfs`: resize2fs works online on the unpartitioned
//!   `/dev/vda`, so no growpart);
//! * `nubo-boot-complete.service` prints
//!   `NUBO_BOOT_COMPLETE instance-id=<id>` on `/dev/ttyS0` once
//!   cloud-final has run and `multi-user.target` is reached;
//! * SSH host keys and `/etc/hostname` are removed from the image, so every
//!   VM gets its own.
//!
//! Building needs root (mmdebstrap's `root` mode) and the host tools
//! `mmdebstrap`, `chroot`, `mkfs.ext4` and `qemu-img`.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext};
use crate::host::{APT_CACHE, CHROOT, DPKG_QUERY, MMDEBSTRAP};
use crate::store::{self, Built, ManifestPackage};

/// Kernel command line for direct kernel boot of `debian`. `net.ifnames=0`
/// keeps the classic `eth0`, which the seed's network-config names.
pub(crate) const CMDLINE: &str = "console=ttyS0 root=/dev/vda rw net.ifnames=0";

/// mmdebstrap's package set: the essential packages plus apt; everything
/// else is listed in [`BASE_PACKAGES`] (no recommends), so the image stays small.
const VARIANT: &str = "apt";

/// What every `debian` image holds.
const BASE_PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "cloud-init",
    "qemu-guest-agent",
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "e2fsprogs",
    "sudo",
    "procps",
    "less",
];

/// Modules the initramfs needs to find the root disk; `MODULES=most` (the
/// default) includes them, the build checks it.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "virtio_blk"];

/// Free space added to the root file system on top of its content (the
/// guest grows it to the VM's disk size anyway).
const HEADROOM: u64 = 256 * 1024 * 1024;

const CLOUD_CFG: &str = "# Written by nubo-image: NoCloud seed only, ifupdown networking, grow the root fs.
# The locale module is off: the image has no generated locales, so its
# default (en_US.UTF-8) made every boot end in cloud-init status 'error'.
# A user-data `locale:` still turns it on (with the locales it needs).
datasource_list: [NoCloud, None]
locale: false
resize_rootfs: true
growpart:
  mode: off
system_info:
  network:
    renderers: [eni]
";

const BOOT_COMPLETE_UNIT: &str = "[Unit]
Description=Tell the Nubo agent that boot has finished
After=cloud-final.service multi-user.target
Wants=cloud-final.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/nubo-boot-complete
StandardOutput=journal

[Install]
WantedBy=multi-user.target
";

const BOOT_COMPLETE_SCRIPT: &str = r#"#!/bin/sh
# Prints the boot-complete marker that the Nubo agent watches for on the console.
id=$(cat /run/cloud-init/.instance-id 2>/dev/null || cloud-init query instance_id 2>/dev/null || echo unknown)
echo "NUBO_BOOT_COMPLETE instance-id=$id" > /dev/ttyS0
"#;

/// Keys were removed from the image; generate them if sshd starts before
/// cloud-init has (cloud-init orders itself before `sshd.service`, Debian's
/// unit is `ssh.service`).
const SSH_KEYGEN_DROPIN: &str = "[Service]\nExecStartPre=/usr/bin/ssh-keygen -A\n";

const FSTAB: &str =
    "# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 defaults,errors=remount-ro 0 1\n";

/// Digest of everything that defines a `debian` build apart from package
/// versions and extra packages: ensure() rebuilds images made by another
/// recipe, never one that merely has extra packages.
pub(crate) fn recipe() -> String {
    let suite = host_suite().unwrap_or_else(|_| "unknown".into());
    let mut h = Sha256::new();
    h.update(format!("debian/{}\n{CMDLINE}\n{VARIANT}\n{suite}\n{HEADROOM}\n", store::FORMAT));
    for list in [BASE_PACKAGES, INITRAMFS_MODULES] {
        h.update(list.join(",").as_bytes());
        h.update(b"\n");
    }
    for text in [CLOUD_CFG, BOOT_COMPLETE_UNIT, BOOT_COMPLETE_SCRIPT, SSH_KEYGEN_DROPIN, FSTAB] {
        h.update(format!("{}\n", text.len()).as_bytes());
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

/// True for a valid Debian package name (Debian Policy 5.6.1): at least two
/// characters of `[a-z0-9+.-]`, starting with a letter or digit.
pub(crate) fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'))
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Checks, sorts and de-duplicates the extra packages.
pub(crate) fn normalise_packages(packages: &[String]) -> Result<Vec<String>, ImageError> {
    let mut out = Vec::new();
    for p in packages {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        if !valid_package_name(p) {
            return Err(ImageError::InvalidPackageName { name: p.to_string() });
        }
        out.push(p.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The host's release code name, e.g. `bookworm`.
fn host_suite() -> Result<String, ImageError> {
    let path = Path::new("/etc/os-release");
    let text = fs::read_to_string(path).ctx("reading", path)?;
    suite_from_os_release(&text).ok_or_else(|| ImageError::Unsupported {
        detail: "/etc/os-release has no VERSION_CODENAME".into(),
        hint: "the debian image is built for the host's Debian release; build it on a Debian host".into(),
    })
}

fn suite_from_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The host's apt source files, passed to mmdebstrap as MIRROR arguments
/// (it pastes an existing file into the chroot's sources, one-line or deb822).
fn host_sources() -> Result<Vec<PathBuf>, ImageError> {
    let mut files = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if has_entries(main) {
        files.push(main.to_path_buf());
    }
    let dir = Path::new("/etc/apt/sources.list.d");
    if let Ok(entries) = fs::read_dir(dir) {
        let mut more: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources") && has_entries(p))
            .collect();
        more.sort();
        files.extend(more);
    }
    if files.is_empty() {
        return Err(ImageError::Unsupported {
            detail: "this host has no apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/*)".into(),
            hint: "the debian image is installed from the host's apt sources; configure a Debian mirror".into(),
        });
    }
    Ok(files)
}

/// True when `path` has a non-comment line.
fn has_entries(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| !l.trim().is_empty() && !l.trim().starts_with('#')))
}

/// The effective uid of this process (the owner of `/proc/self`).
fn euid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Fails with the list of `packages` that the host's apt lists do not know,
/// before a minute is spent in mmdebstrap. The base packages are checked
/// too: when even they are missing, the lists are stale or empty.
fn check_packages_exist(packages: &[String]) -> Result<(), ImageError> {
    let mut cmd = APT_CACHE.command();
    cmd.args(["show", "--no-all-versions", "cloud-init"]).args(packages);
    let output = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ImageError::ToolMissing { tool: "apt-cache".into(), package: "apt".into() }
        } else {
            ImageError::Command {
                command: "apt-cache show".into(),
                detail: e.to_string(),
                hint: "check the host's apt installation".into(),
            }
        }
    })?;
    // `apt-cache show` is silent about unknown names when some are known
    // (and fails when none is), so compare the stanzas with the request.
    let text = String::from_utf8_lossy(&output.stdout);
    let known: std::collections::HashSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("Package:")).map(str::trim).collect();
    if !known.contains("cloud-init") {
        return Err(ImageError::Unsupported {
            detail: "the host's apt lists do not describe cloud-init".into(),
            hint: "run `apt-get update`".into(),
        });
    }
    let unknown: Vec<&str> = packages.iter().map(String::as_str).filter(|p| !known.contains(p)).collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ImageError::UnknownPackages { packages: unknown.join(", ") })
    }
}

/// Packages that apt inside mmdebstrap could not find (`E: Unable to locate package X`).
fn unlocatable(output: &str) -> Vec<String> {
    let mut out: Vec<String> = output
        .lines()
        .filter_map(|l| l.split("Unable to locate package ").nth(1))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Builds `debian` with `extra` packages (already normalised) into `out`,
/// using `work` as scratch space.
pub(crate) fn build(
    work: &Path,
    out: &Path,
    extra: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<Built, ImageError> {
    if euid() != Some(0) {
        return Err(ImageError::Unsupported {
            detail: "building the debian image needs root (mmdebstrap installs packages in a chroot)".into(),
            hint: "run the build (or the agent) as root, e.g. with sudo".into(),
        });
    }
    let suite = host_suite()?;
    let sources = host_sources()?;
    progress("checking the package names against the host's apt lists");
    check_packages_exist(extra)?;

    let rootfs = work.join("rootfs");
    let mut include: Vec<&str> = BASE_PACKAGES.to_vec();
    include.extend(extra.iter().map(String::as_str));
    progress(&format!("mmdebstrap {suite}: {} packages and their dependencies (about a minute)", include.len()));
    let mut cmd = MMDEBSTRAP.command();
    cmd.arg("--mode=root")
        .arg(format!("--variant={VARIANT}"))
        .arg("--format=directory")
        .arg(format!("--include={}", include.join(",")))
        // No dialogs from maintainer scripts.
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg(&suite)
        .arg(&rootfs)
        .args(&sources);
    // Kept whole: apt names every package it cannot find, and the error
    // keeps only the last lines.
    let mut log = String::new();
    let result = MMDEBSTRAP.run_streaming(
        &mut cmd,
        "check the host's apt sources and network (`apt-get update` must work)",
        &mut |line| {
            log.push_str(line);
            log.push('\n');
            progress(&format!("mmdebstrap: {line}"));
        },
    );
    if let Err(e) = result {
        let missing = unlocatable(&log);
        if !missing.is_empty() {
            return Err(ImageError::UnknownPackages { packages: missing.join(", ") });
        }
        return Err(e);
    }

    progress("configuring the root file system (cloud-init, boot marker, fstab)");
    configure(&rootfs)?;
    let kernel_version = extract_boot(&rootfs, out, progress)?;
    let packages = installed_packages(&rootfs)?;

    let size = disk_size(&rootfs)?;
    progress(&format!("making the ext4 root file system ({} MiB)", size >> 20));
    crate::disk::root_disk(&rootfs, work, out, size, &[], progress)?;
    let files = crate::disk::seal(out)?;
    Ok(Built { kernel_version, packages, files })
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).ctx("creating directory", parent)?;
    }
    fs::write(path, content).ctx("writing", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("setting permissions of", path)
}

fn remove_if_present(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io("removing", path, e)),
    }
}

/// Writes the guest configuration into the unpacked root file system.
fn configure(root: &Path) -> Result<(), ImageError> {
    write_file(&root.join("etc/cloud/cloud.cfg.d/90-nubo.cfg"), CLOUD_CFG, 0o644)?;
    write_file(&root.join("etc/systemd/system/nubo-boot-complete.service"), BOOT_COMPLETE_UNIT, 0o644)?;
    write_file(&root.join("usr/local/sbin/nubo-boot-complete"), BOOT_COMPLETE_SCRIPT, 0o755)?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants).ctx("creating directory", &wants)?;
    let link = wants.join("nubo-boot-complete.service");
    remove_if_present(&link)?;
    symlink("/etc/systemd/system/nubo-boot-complete.service", &link).ctx("creating symlink", &link)?;
    write_file(&root.join("etc/systemd/system/ssh.service.d/nubo-keygen.conf"), SSH_KEYGEN_DROPIN, 0o644)?;
    write_file(&root.join("etc/fstab"), FSTAB, 0o644)?;
    // Per-VM identity comes from cloud-init: hostname, SSH host keys;
    // mmdebstrap copied the build host's hostname and resolv.conf.
    remove_if_present(&root.join("etc/hostname"))?;
    remove_if_present(&root.join("etc/resolv.conf"))?;
    let ssh = root.join("etc/ssh");
    if let Ok(entries) = fs::read_dir(&ssh) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
                remove_if_present(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// Copies `/boot/vmlinuz-*` and its `initrd.img-*` to `out/kernel` and
/// `out/initrd` after checking that the initramfs can reach a virtio disk.
/// Returns the kernel version.
fn extract_boot(root: &Path, out: &Path, progress: &mut dyn FnMut(&str)) -> Result<String, ImageError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = fs::read_dir(&boot)
        .ctx("listing", &boot)?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    versions.sort();
    let kernel_error = |detail: String| ImageError::Package {
        package: "linux-image-cloud-amd64".into(),
        detail,
        hint: "check the kernel package in the host's apt sources".into(),
    };
    let version = match versions.as_slice() {
        [one] => one.clone(),
        _ => return Err(kernel_error(format!("expected one /boot/vmlinuz-*, found {versions:?}"))),
    };
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        return Err(kernel_error(format!("no {} (initramfs-tools did not run)", initrd.display())));
    }
    if !initramfs_has_modules(root, &version)? {
        progress("adding virtio modules to the initramfs");
        let modules = root.join("etc/initramfs-tools/modules");
        let mut text = fs::read_to_string(&modules).unwrap_or_default();
        for m in INITRAMFS_MODULES {
            text.push_str(&format!("{m}\n"));
        }
        write_file(&modules, &text, 0o644)?;
        CHROOT.run(
            CHROOT.command().arg(root).args(["update-initramfs", "-u", "-k", &version]),
            "the initramfs of the debian image could not be rebuilt",
        )?;
        if !initramfs_has_modules(root, &version)? {
            return Err(kernel_error(format!("the initramfs lacks {}", INITRAMFS_MODULES.join(", "))));
        }
    }
    fs::copy(boot.join(format!("vmlinuz-{version}")), out.join("kernel")).ctx("copying the kernel to", out)?;
    fs::copy(&initrd, out.join("initrd")).ctx("copying the initrd to", out)?;
    Ok(version)
}

/// True when the initramfs holds every module of [`INITRAMFS_MODULES`].
fn initramfs_has_modules(root: &Path, version: &str) -> Result<bool, ImageError> {
    let output = CHROOT.run(
        CHROOT.command().arg(root).args(["lsinitramfs", &format!("/boot/initrd.img-{version}")]),
        "lsinitramfs (initramfs-tools) failed inside the debian root file system",
    )?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(INITRAMFS_MODULES.iter().all(|m| {
        let file = format!("/{m}.ko");
        listing
            .lines()
            .any(|l| l.ends_with(&file) || l.ends_with(&format!("{file}.xz")) || l.ends_with(&format!("{file}.zst")))
    }))
}

/// Name and version of every package installed in the root file system.
fn installed_packages(root: &Path) -> Result<Vec<ManifestPackage>, ImageError> {
    let admindir = root.join("var/lib/dpkg");
    let output = DPKG_QUERY.run(
        DPKG_QUERY.command().arg(format!("--admindir={}", admindir.display())).args([
            "-W",
            "-f",
            "${Package}\t${Version}\n",
        ]),
        "could not list the packages of the debian root file system",
    )?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(name, version)| ManifestPackage { name: name.into(), version: version.into(), sha256: String::new() })
        .collect())
}

/// Size of the raw disk: the tree's content (in 4 KiB blocks, plus one
/// block per directory and inode overhead), a quarter more and
/// [`HEADROOM`], rounded up to a MiB.
fn disk_size(root: &Path) -> Result<u64, ImageError> {
    let mut bytes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
            let entry = entry.ctx("listing", &dir)?;
            let meta = entry.metadata().ctx("inspecting", &entry.path())?;
            // 256-byte inode per entry plus the data rounded up to blocks.
            bytes += 256 + meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    let size = bytes + bytes / 4 + HEADROOM;
    Ok(size.div_ceil(1 << 20) << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        for ok in ["nginx", "g++", "libc6", "python3.11", "0ad", "lib-x.y+z"] {
            assert!(valid_package_name(ok), "{ok}");
        }
        for bad in ["", "a", "Nginx", "-x", ".x", "nginx;rm", "ngi nx", "foo_bar", "nginx=1.0", "../x"] {
            assert!(!valid_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn normalises_packages() {
        let list = ["curl".to_string(), " nginx".into(), "curl".into(), String::new()];
        assert_eq!(normalise_packages(&list).expect("valid"), ["curl", "nginx"]);
        let err = normalise_packages(&["ok".into(), "BAD".into()]).expect_err("invalid");
        assert!(err.to_string().contains("`BAD`"), "{err}");
    }

    #[test]
    fn suite_from_os_release_text() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(suite_from_os_release(text).as_deref(), Some("bookworm"));
        assert_eq!(suite_from_os_release("VERSION_CODENAME=\"trixie\"\n").as_deref(), Some("trixie"));
        assert_eq!(suite_from_os_release("ID=debian\n"), None);
        assert_eq!(suite_from_os_release("VERSION_CODENAME=a b\n"), None);
    }

    #[test]
    fn finds_unlocatable_packages_in_apt_output() {
        let out = "I: x\nE: Unable to locate package other\nE: Unable to locate package nosuch\nE: apt-get failed\n";
        assert_eq!(unlocatable(out), ["nosuch", "other"]);
        assert!(unlocatable("E: apt-get failed\n").is_empty());
    }

    #[test]
    fn boot_marker_and_recipe() {
        assert!(BOOT_COMPLETE_SCRIPT.contains(&format!("{} instance-id=", crate::BOOT_COMPLETE_MARKER)));
        assert!(!BOOT_COMPLETE_UNIT.contains(crate::BOOT_COMPLETE_MARKER), "the unit's description must not match");
        assert_eq!(recipe(), recipe());
        assert_eq!(recipe().len(), 64);
    }

    #[test]
    fn configures_a_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc/ssh")).expect("mkdir");
        fs::write(root.join("etc/hostname"), "buildhost\n").expect("write");
        fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "secret").expect("write");
        fs::write(root.join("etc/ssh/sshd_config"), "").expect("write");
        configure(root).expect("configure");
        configure(root).expect("configure twice");
        assert!(!root.join("etc/hostname").exists());
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(root.join("etc/ssh/sshd_config").exists());
        let cfg = fs::read_to_string(root.join("etc/cloud/cloud.cfg.d/90-nubo.cfg")).expect("cfg");
        assert!(cfg.contains("datasource_list: [NoCloud, None]"));
        let link = fs::read_link(root.join("etc/systemd/system/multi-user.target.wants/nubo-boot-complete.service"))
            .expect("link");
        assert_eq!(link, Path::new("/etc/systemd/system/nubo-boot-complete.service"));
        assert!(fs::read_to_string(root.join("etc/fstab")).expect("fstab").contains("/dev/vda / ext4"));
        assert!(disk_size(root).expect("size") >= HEADROOM);
    }
}
