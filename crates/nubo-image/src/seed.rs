//! NoCloud seed disks: a small FAT image labelled `cidata` holding
//! `meta-data` (instance id, hostname, public SSH keys), `user-data` and
//! `network-config` ([`NETWORK_CONFIG`]: DHCP on the first ethernet NIC, for
//! cloud-init; `tiny` ignores it), written with the pure-Rust `fatfs` crate. Attach it to the VM as a second
//! (raw) disk; the guest finds it by its label.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::ImageError;

/// The FAT volume label NoCloud looks for.
pub const VOLUME_LABEL: &str = "cidata";

/// `network-config` (cloud-init network config version 2): DHCPv4 on the
/// virtio NIC. The entry is called `eth0` because cloud-init's ifupdown
/// renderer names the interface after the entry (the `debian` image boots
/// with `net.ifnames=0`); the name match lets netplan/networkd renderers
/// find the NIC whatever its name. (No `driver:` match: the ifupdown
/// renderer would copy it into `/etc/network/interfaces` as an option.)
pub const NETWORK_CONFIG: &str = "version: 2
ethernets:
  eth0:
    match:
      name: \"e*\"
    dhcp4: true
";

/// Smallest seed image size (the FAT file system needs some room; it is sparse).
const MIN_SIZE: u64 = 2 * 1024 * 1024;

/// What a VM learns from its seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedData {
    /// `instance-id` in meta-data; printed in the boot-complete marker.
    pub instance_id: String,
    /// `local-hostname` in meta-data.
    pub hostname: String,
    /// `user-data`; a script starting with `#!` is run at boot. `None` writes an empty file.
    pub user_data: Option<String>,
    /// `public-keys` in meta-data (OpenSSH public key lines).
    pub public_keys: Vec<String>,
}

/// A YAML scalar for `value`: plain when that is unambiguous, else a
/// double-quoted (JSON-escaped, which YAML accepts) string.
fn yaml_scalar(value: &str) -> String {
    let plain = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let reserved = matches!(
        value.to_ascii_lowercase().as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
    );
    if plain && !reserved && value.parse::<f64>().is_err() {
        value.to_string()
    } else {
        serde_json::Value::String(value.to_string()).to_string()
    }
}

/// The `meta-data` document for `data`.
pub fn meta_data(data: &SeedData) -> String {
    let mut out =
        format!("instance-id: {}\nlocal-hostname: {}\n", yaml_scalar(&data.instance_id), yaml_scalar(&data.hostname));
    if !data.public_keys.is_empty() {
        out.push_str("public-keys:\n");
        for key in &data.public_keys {
            // Always quoted: keys contain spaces and often '#', '@' or ':'.
            let key = key.trim();
            out.push_str(&format!("  - {}\n", serde_json::Value::String(key.into())));
        }
    }
    out
}

fn seed_error(path: &Path, detail: impl Into<String>) -> ImageError {
    ImageError::Seed { path: path.to_path_buf(), detail: detail.into() }
}

/// Writes a NoCloud seed image for `data` to `path` (replacing it).
pub fn write_nocloud_seed(path: &Path, data: &SeedData) -> Result<(), ImageError> {
    if data.instance_id.trim().is_empty() {
        return Err(seed_error(path, "the instance id is empty"));
    }
    if data.instance_id.contains(['\n', '\r']) || data.hostname.contains(['\n', '\r']) {
        return Err(seed_error(path, "the instance id and hostname must be single lines"));
    }
    let meta = meta_data(data);
    let user = data.user_data.as_deref().unwrap_or("");
    // Room for both files plus FAT overhead, rounded up to a MiB.
    let needed = (meta.len() as u64 + user.len() as u64 + NETWORK_CONFIG.len() as u64) * 2 + 512 * 1024;
    let size = needed.max(MIN_SIZE).div_ceil(1024 * 1024) * 1024 * 1024;

    // Build next to the target and rename, so a reader never sees half a seed.
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "seed".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let result = write_image(&tmp, size, &meta, user);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(seed_error(path, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        seed_error(path, format!("renaming {}: {e}", tmp.display()))
    })
}

fn write_image(tmp: &Path, size: u64, meta: &str, user: &str) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    file.set_len(size).map_err(|e| format!("sizing {}: {e}", tmp.display()))?;
    let mut label = [b' '; 11];
    label[..VOLUME_LABEL.len()].copy_from_slice(VOLUME_LABEL.as_bytes());
    fatfs::format_volume(&mut file, fatfs::FormatVolumeOptions::new().volume_label(label))
        .map_err(|e| format!("formatting FAT: {e}"))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| format!("seeking in {}: {e}", tmp.display()))?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())
            .map_err(|e| format!("opening the new FAT file system: {e}"))?;
        for (name, content) in [("meta-data", meta), ("user-data", user), ("network-config", NETWORK_CONFIG)] {
            let root = fs.root_dir();
            let mut f = root.create_file(name).map_err(|e| format!("creating {name}: {e}"))?;
            f.truncate().map_err(|e| format!("writing {name}: {e}"))?;
            f.write_all(content.as_bytes()).and_then(|()| f.flush()).map_err(|e| format!("writing {name}: {e}"))?;
        }
        fs.unmount().map_err(|e| format!("finishing the FAT file system: {e}"))?;
    }
    file.sync_all().map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    Ok(())
}

/// Reads a file back from a seed image (used by tests and diagnostics).
pub fn read_seed_file(path: &Path, name: &str) -> Result<String, ImageError> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| seed_error(path, format!("opening: {e}")))?;
    let fs = fatfs::FileSystem::new(file, fatfs::FsOptions::new())
        .map_err(|e| seed_error(path, format!("not a FAT image: {e}")))?;
    let mut f = fs.root_dir().open_file(name).map_err(|e| seed_error(path, format!("opening {name}: {e}")))?;
    let mut out = String::new();
    f.read_to_string(&mut out).map_err(|e| seed_error(path, format!("reading {name}: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.img");
        let data = SeedData {
            instance_id: "i-0123abcd".into(),
            hostname: "web-1".into(),
            user_data: Some("#!/bin/sh\necho hello\n".into()),
            public_keys: vec!["ssh-ed25519 AAAAC3Nza me@host # laptop".into()],
        };
        write_nocloud_seed(&path, &data).expect("write seed");

        let size = fs::metadata(&path).expect("stat").len();
        assert!((1 << 20..=2 << 20).contains(&size), "size {size}");
        let meta = read_seed_file(&path, "meta-data").expect("meta-data");
        assert_eq!(
            meta,
            "instance-id: i-0123abcd\nlocal-hostname: web-1\npublic-keys:\n  - \"ssh-ed25519 AAAAC3Nza me@host # laptop\"\n"
        );
        assert_eq!(read_seed_file(&path, "user-data").expect("user-data"), "#!/bin/sh\necho hello\n");
        let net = read_seed_file(&path, "network-config").expect("network-config");
        assert_eq!(net, NETWORK_CONFIG);
        assert!(net.starts_with("version: 2\n"));
        assert!(net.contains("dhcp4: true") && net.contains("name: \"e*\""));

        let fs = fatfs::FileSystem::new(File::open(&path).expect("open"), fatfs::FsOptions::new()).expect("fat");
        assert_eq!(fs.volume_label(), "cidata");
        assert!(!dir.path().join(".seed.img.tmp").exists());
    }

    #[test]
    fn empty_user_data_and_quoting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.img");
        let data =
            SeedData { instance_id: "yes".into(), hostname: "a: b".into(), user_data: None, public_keys: Vec::new() };
        write_nocloud_seed(&path, &data).expect("write seed");
        assert_eq!(read_seed_file(&path, "user-data").expect("user-data"), "");
        assert_eq!(
            read_seed_file(&path, "meta-data").expect("meta-data"),
            "instance-id: \"yes\"\nlocal-hostname: \"a: b\"\n"
        );
    }

    #[test]
    fn large_user_data_grows_the_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seed.img");
        let big = format!("#!/bin/sh\n{}", "# padding\n".repeat(300_000));
        let data = SeedData {
            instance_id: "i-1".into(),
            hostname: "h".into(),
            user_data: Some(big.clone()),
            public_keys: Vec::new(),
        };
        write_nocloud_seed(&path, &data).expect("write seed");
        assert_eq!(read_seed_file(&path, "user-data").expect("user-data"), big);
    }

    #[test]
    fn rejects_empty_instance_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_nocloud_seed(&dir.path().join("s.img"), &SeedData::default()).expect_err("must fail");
        assert!(err.to_string().contains("instance id is empty"));
    }
}
