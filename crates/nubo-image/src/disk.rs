//! The last steps every image build shares: the root file system made
//! from a staged directory into an ext4 image (`mkfs.ext4 -d`, no mount
//! needed), converted to the qcow2 base disk, and the artefacts made
//! read-only and hashed for the manifest.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{ImageError, IoContext};
use crate::host::{MKFS_EXT4, QEMU_IMG};
use crate::store::{describe, ManifestFile};

/// Writes `out/disk.qcow2`: an ext4 file system of `size` bytes holding
/// `rootfs`, built as a raw image in `work` first. `mkfs_extra` are more
/// `mkfs.ext4` options (e.g. a usage type).
pub(crate) fn root_disk(
    rootfs: &Path,
    work: &Path,
    out: &Path,
    size: u64,
    mkfs_extra: &[&str],
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let raw = work.join("disk.raw");
    {
        let f = fs::File::create(&raw).ctx("creating", &raw)?;
        f.set_len(size).ctx("sizing", &raw)?;
    }
    MKFS_EXT4.run(
        MKFS_EXT4
            .command()
            .args(["-q", "-F", "-t", "ext4"])
            .args(mkfs_extra)
            .args(["-b", "4096", "-m", "0"])
            .args(["-L", "nubo-root", "-E", "root_owner=0:0", "-d"])
            .arg(rootfs)
            .arg(&raw),
        "check that e2fsprogs >= 1.43 is installed (`apt-get install e2fsprogs`) and that the disk is not full",
    )?;
    progress("converting to qcow2");
    QEMU_IMG.run(
        QEMU_IMG.command().args(["convert", "-q", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(out.join("disk.qcow2")),
        "check that qemu-utils is installed (`apt-get install qemu-utils`) and that the disk is not full",
    )?;
    fs::remove_file(&raw).ctx("removing", &raw)
}

/// Makes `out`'s kernel, initrd and disk read-only and describes them for
/// the manifest.
pub(crate) fn seal(out: &Path) -> Result<Vec<ManifestFile>, ImageError> {
    let mut files = Vec::new();
    for (role, file) in [("kernel", "kernel"), ("initrd", "initrd"), ("disk", "disk.qcow2")] {
        let path = out.join(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).ctx("making read-only", &path)?;
        files.push(describe(out, role, file)?);
    }
    Ok(files)
}
