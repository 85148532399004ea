//! What this host can offer: CPUs, memory (less a reserve for the host
//! itself) and the disk space of the data directory's filesystem.

use std::path::Path;

/// Memory kept back for the host's own use.
pub const HOST_MEMORY_RESERVE_MIB: u64 = 512;

pub fn cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

pub fn memory_mib() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(1024 * 1024);
    (total_kib / 1024).saturating_sub(HOST_MEMORY_RESERVE_MIB).max(128)
}

/// Total size in GiB of the filesystem holding `path`, which must exist:
/// a path that cannot be measured is an error, never 0 GiB, since a host
/// offering no disk gets nothing placed on it and says nothing about why.
pub fn disk_gib(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path contains a NUL byte"))?;
    // SAFETY: statvfs is plain old data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_blocks as u64).saturating_mul(st.f_frsize as u64) >> 30)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_machine() {
        assert!(super::cpus() >= 1);
        assert!(super::memory_mib() >= 128);
        assert!(super::disk_gib(std::path::Path::new("/")).unwrap() >= 1);
    }

    #[test]
    fn a_missing_directory_is_an_error_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let e = super::disk_gib(&dir.path().join("not-made-yet")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
