//! The host's identity: a host id created once and kept in the data
//! directory, so a restarted agent is the same host to the control plane.

use nubo_api::ids::HostId;
use std::path::Path;

pub fn load_or_create(data_dir: &Path) -> anyhow::Result<HostId> {
    let path = data_dir.join("host-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|e| {
            anyhow::anyhow!(
                "{} holds an invalid host id ({e}); remove the file to register as a new host",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = HostId::generate();
            std::fs::write(&path, format!("{id}\n"))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// The host's credential, once it has joined.
pub fn load_credential(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join("host-credential");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Keeps the credential readable by the agent's user only.
pub fn save_credential(data_dir: &Path, credential: &str) -> anyhow::Result<()> {
    write_private(&data_dir.join("host-credential"), credential)
}

/// Writes a secret file readable by its owner only (0600), atomically
/// (temp file, then rename). Used for every credential Nubo keeps on disk.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
    f.write_all(contents.as_bytes()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    #[test]
    fn id_is_stable_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::load_or_create(dir.path()).unwrap();
        let b = super::load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
    }
}
