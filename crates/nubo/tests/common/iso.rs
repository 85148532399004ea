//! Builds, in a test's own directory, an installer CD for the ISO tests:
//! a BIOS-bootable ISO 9660 image (xorriso, isolinux) whose kernel is
//! tiny's and whose initrd "installs": it writes a prepared disk (an MBR
//! from syslinux, a FAT partition with syslinux, tiny's kernel and an
//! initrd that prints [`INSTALLED_MARKER`]) onto the blank root disk
//! `/dev/vda`, then prints [`INSTALL_DONE`]. Both initrds are tiny's with
//! a second cpio archive appended (the kernel unpacks them in turn, the
//! later `/init` replacing tiny's), so no root, loop device or cpio
//! program is needed. Nothing is cached: the files go in `dir`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Printed by the installer's init when it starts.
pub const INSTALLER_STARTED: &str = "NUBO_ISO_INSTALLER_STARTED";
/// Printed by the installer once the disk is written and synced.
pub const INSTALL_DONE: &str = "NUBO_ISO_INSTALL_DONE";
/// Printed by the installed system's init, booted from the disk.
pub const INSTALLED_MARKER: &str = "NUBO_ISO_INSTALLED_OS_BOOTED";

/// What both inits do first: tiny's modules (virtio, ACPI button, evdev),
/// and a power button that powers off at once (so a stop is quick).
const INIT_HEAD: &str = r#"#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while IFS= read -r mod; do
    [ -n "$mod" ] && insmod "/lib/modules/$mod" 2>/dev/null
done < /lib/modules/load-order
mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\nexec poweroff -f\n' > /etc/acpi/PWRF/00000080
chmod 755 /etc/acpi/PWRF/00000080
acpid
"#;

/// Waits forever (until the power button).
const INIT_TAIL: &str = "while :; do sleep 60; done\n";

fn installer_init() -> String {
    format!(
        r#"{INIT_HEAD}echo {INSTALLER_STARTED}
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if gunzip -c /installer/disk.img.gz | dd of=/dev/vda bs=1M 2>/dev/null && sync; then
    echo {INSTALL_DONE}
else
    echo NUBO_ISO_INSTALL_FAILED
fi
{INIT_TAIL}"#
    )
}

fn installed_init() -> String {
    format!("{INIT_HEAD}echo {INSTALLED_MARKER}\n{INIT_TAIL}")
}

/// One entry of a "newc" cpio archive.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// tiny's initrd with `/init` replaced, plus `extra` files (path, bytes)
/// under new directories `dirs`.
fn initrd_over_tiny(tiny: &Path, init: &str, dirs: &[&str], extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = std::fs::read(tiny.join("initrd")).expect("tiny's initrd");
    // The next archive starts on a 4-byte boundary (zeros are skipped).
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    let mut ino = 900_000;
    cpio_entry(&mut out, ino, "init", 0o100_755, init.as_bytes());
    for d in dirs {
        ino += 1;
        cpio_entry(&mut out, ino, d, 0o040_755, &[]);
    }
    for (name, data) in extra {
        ino += 1;
        cpio_entry(&mut out, ino, name, 0o100_644, data);
    }
    cpio_entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

fn sh(script: &str, args: &[&str], what: &str) {
    let out = Command::new("sh").arg("-c").arg(script).arg("sh").args(args).output().expect("sh");
    assert!(
        out.status.success(),
        "{what} (needs xorriso, isolinux, syslinux, mtools, dosfstools, fdisk: scripts/install-deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the installer ISO in `dir` from tiny's image directory `tiny`;
/// its path.
pub fn build_installer_iso(tiny: &Path, dir: &Path) -> PathBuf {
    let d = |p: &str| dir.join(p).display().to_string();
    // The installed system: an MBR disk, one FAT partition booted by syslinux.
    std::fs::write(dir.join("installed-initrd"), initrd_over_tiny(tiny, &installed_init(), &[], &[])).unwrap();
    sh(
        r#"set -eu
T="$1"; cd "$2"
truncate -s 24M boot.img && mkfs.vfat -n NUBOOS boot.img >/dev/null
printf 'DEFAULT os\nPROMPT 0\nTIMEOUT 1\nLABEL os\n  KERNEL vmlinuz\n  INITRD initrd\n  APPEND console=ttyS0 quiet\n' > syslinux.cfg
mcopy -i boot.img "$T/kernel" ::vmlinuz && mcopy -i boot.img installed-initrd ::initrd && mcopy -i boot.img syslinux.cfg ::syslinux.cfg
syslinux --install boot.img
truncate -s $((1048576 + 25165824)) disk.img
printf 'label: dos\nstart=2048, type=c, bootable\n' | sfdisk -q disk.img
dd if=boot.img of=disk.img bs=1M seek=1 conv=notrunc status=none
dd if=/usr/lib/syslinux/mbr/mbr.bin of=disk.img bs=440 count=1 conv=notrunc status=none
gzip -1 -f disk.img
"#,
        &[tiny.to_str().unwrap(), &d("")],
        "building the disk the installer writes",
    );
    // The installer: tiny's kernel and an initrd carrying that disk.
    let payload = std::fs::read(dir.join("disk.img.gz")).unwrap();
    let installer = initrd_over_tiny(tiny, &installer_init(), &["installer"], &[("installer/disk.img.gz", payload)]);
    std::fs::create_dir_all(dir.join("cd/isolinux")).unwrap();
    std::fs::write(dir.join("cd/installer.img"), installer).unwrap();
    sh(
        r#"set -eu
T="$1"; cd "$2"
cp "$T/kernel" cd/vmlinuz
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 cd/isolinux/
printf 'DEFAULT install\nPROMPT 0\nTIMEOUT 1\nLABEL install\n  KERNEL /vmlinuz\n  INITRD /installer.img\n  APPEND console=ttyS0 quiet\n' > cd/isolinux/isolinux.cfg
xorriso -as mkisofs -quiet -o installer.iso -V NUBO_INSTALLER -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table cd
"#,
        &[tiny.to_str().unwrap(), &d("")],
        "building the installer ISO",
    );
    dir.join("installer.iso")
}
