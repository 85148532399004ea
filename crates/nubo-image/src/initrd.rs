//! The initramfs archive: a gzip-compressed "newc" cpio written in Rust from a
//! staging directory, plus the device nodes the kernel needs before any
//! filesystem is mounted. Owners are 0:0 and timestamps 0, so the archive only
//! depends on the staged content.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{ImageError, IoContext};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// A character device node to add to the archive (it cannot be staged
/// without privileges).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CharDevice {
    pub path: &'static str,
    pub mode: u32,
    pub major: u32,
    pub minor: u32,
}

/// `/dev/console`, which the kernel opens as init's stdin/stdout/stderr.
pub(crate) const CONSOLE: CharDevice = CharDevice { path: "dev/console", mode: 0o600, major: 5, minor: 1 };

struct Archive<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> Archive<W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> io::Result<()> {
        self.next_ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large for cpio"))?;
        let mut w = cpio::newc::Builder::new(name)
            .ino(self.next_ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(if mode & S_IFDIR == S_IFDIR { 2 } else { 1 })
            .mtime(0)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1)
            .write(&mut self.out, size);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    /// Adds `dir` (relative name `prefix`) and everything below it, parents first.
    fn add_tree(&mut self, dir: &Path, prefix: &str) -> Result<(), ImageError> {
        let mut entries: Vec<_> =
            fs::read_dir(dir).ctx("listing", dir)?.collect::<Result<_, _>>().ctx("listing", dir)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                return Err(ImageError::io(
                    "non-UTF-8 file name in initramfs staging",
                    &path,
                    io::Error::from(io::ErrorKind::InvalidData),
                ));
            };
            let name = if prefix.is_empty() { file_name.to_string() } else { format!("{prefix}/{file_name}") };
            let meta = fs::symlink_metadata(&path).ctx("inspecting", &path)?;
            let perm = meta.permissions().mode() & 0o7777;
            let add = |a: &mut Self, mode: u32, data: &[u8]| {
                a.entry(&name, mode, data, (0, 0)).ctx("adding to initramfs", &path)
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).ctx("reading symlink", &path)?;
                add(self, S_IFLNK | 0o777, target.as_os_str().as_encoded_bytes())?;
            } else if meta.is_dir() {
                add(self, S_IFDIR | perm, &[])?;
                self.add_tree(&path, &name)?;
            } else if meta.is_file() {
                let data = fs::read(&path).ctx("reading", &path)?;
                add(self, S_IFREG | perm, &data)?;
            } else {
                tracing::warn!(path = %path.display(), "skipping special file in initramfs staging");
            }
        }
        Ok(())
    }
}

/// Writes `staging` (plus `devices`) as a gzip-compressed newc cpio to `out`.
pub(crate) fn write(staging: &Path, devices: &[CharDevice], out: &Path) -> Result<(), ImageError> {
    let file = File::create(out).ctx("creating", out)?;
    let gz = GzEncoder::new(BufWriter::new(file), Compression::default());
    let mut archive = Archive { out: gz, next_ino: 0 };
    archive.add_tree(staging, "")?;
    for dev in devices {
        archive.entry(dev.path, S_IFCHR | dev.mode, &[], (dev.major, dev.minor)).ctx("adding a device node to", out)?;
    }
    let gz = cpio::newc::trailer(archive.out).ctx("writing", out)?;
    let mut buffered = gz.finish().ctx("compressing", out)?;
    buffered.flush().ctx("writing", out)?;
    buffered.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).ctx("writing", out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn archive_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = dir.path().join("root");
        fs::create_dir_all(staging.join("bin")).expect("mkdir");
        fs::create_dir_all(staging.join("dev")).expect("mkdir");
        fs::write(staging.join("init"), b"#!/bin/sh\necho hi\n").expect("write");
        fs::set_permissions(staging.join("init"), fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("/bin/busybox", staging.join("bin/sh")).expect("symlink");
        let out = dir.path().join("initrd");
        write(&staging, &[CONSOLE], &out).expect("write initrd");

        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(File::open(&out).expect("open")).read_to_end(&mut raw).expect("gunzip");
        let mut rest = raw.as_slice();
        let mut seen = Vec::new();
        loop {
            let mut reader = cpio::newc::Reader::new(rest).expect("entry");
            if reader.entry().is_trailer() {
                break;
            }
            let name = reader.entry().name().to_string();
            let mode = reader.entry().mode();
            let mut data = Vec::new();
            reader.read_to_end(&mut data).expect("read entry");
            seen.push((name, mode, data));
            rest = reader.finish().expect("finish");
        }
        let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "dev", "init", "dev/console"]);
        assert_eq!(seen[1].1, S_IFLNK | 0o777);
        assert_eq!(seen[1].2, b"/bin/busybox");
        assert_eq!(seen[3].1, S_IFREG | 0o755);
        assert_eq!(seen[4].1, S_IFCHR | 0o600);
    }
}
