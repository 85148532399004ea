//! Debian packages as build inputs: resolving the candidate version with
//! `apt-cache`, fetching `.deb` files with `apt-get download` into a download
//! cache (reused across builds, checked against the archive's SHA-256), and
//! unpacking them with `dpkg -x`. Nothing is ever installed on the host.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{ImageError, IoContext};
use crate::host::{APT_CACHE, APT_GET, DPKG};
use crate::store::sha256_file;

/// The architecture of every package the images use.
pub(crate) const ARCH: &str = "amd64";

const APT_HINT: &str = "run `apt-get update` and check that Debian's package mirror is reachable";

/// One package version as the archive describes it.
#[derive(Debug, Clone)]
pub(crate) struct DebPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
    pub size: u64,
    pub depends: String,
}

impl DebPackage {
    /// The file name the download cache stores this version under.
    pub fn file_name(&self) -> String {
        format!("{}_{}_{}.deb", self.name, self.version.replace(':', "%3a"), self.arch)
    }

    /// Names of the packages in the `Depends:` field (version constraints and
    /// alternatives after the first dropped).
    pub fn depends_names(&self) -> Vec<String> {
        self.depends
            .split(',')
            .filter_map(|dep| {
                let first = dep.split('|').next()?.trim();
                let name = first.split([' ', '(', ':']).next()?.trim();
                (!name.is_empty()).then(|| name.to_string())
            })
            .collect()
    }
}

/// The candidate versions of `names` for [`ARCH`], in the same order, from
/// one `apt-cache show` call (each call re-reads the package lists, ~1 s).
pub(crate) fn candidates(names: &[&str]) -> Result<Vec<DebPackage>, ImageError> {
    let mut cmd = APT_CACHE.command();
    cmd.args(["show", "--no-all-versions"]);
    for name in names {
        cmd.arg(format!("{name}:{ARCH}"));
    }
    let output = APT_CACHE.run(&mut cmd, APT_HINT)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let stanzas: Vec<&str> = text.split("\n\n").filter(|s| !s.trim().is_empty()).collect();
    names
        .iter()
        .map(|name| {
            let stanza = stanzas.iter().find(|s| field(s, "Package").as_deref() == Some(*name)).ok_or_else(|| {
                ImageError::Package {
                    package: name.to_string(),
                    detail: "`apt-cache show` did not describe it".into(),
                    hint: APT_HINT.to_string(),
                }
            })?;
            parse_stanza(name, stanza)
        })
        .collect()
}

/// The value of `key` in the first stanza of `text`.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn parse_stanza(name: &str, text: &str) -> Result<DebPackage, ImageError> {
    let field = |key: &str| field(text, key);
    let missing = |what: &str| ImageError::Package {
        package: name.to_string(),
        detail: format!("`apt-cache show` gave no {what} field"),
        hint: APT_HINT.to_string(),
    };
    let version = field("Version").ok_or_else(|| missing("Version"))?;
    let sha256 = field("SHA256").ok_or_else(|| missing("SHA256"))?;
    let arch = field("Architecture").unwrap_or_else(|| ARCH.to_string());
    let size = field("Size").and_then(|s| s.parse().ok()).unwrap_or(0);
    let depends = field("Depends").unwrap_or_default();
    Ok(DebPackage { name: name.to_string(), version, arch, sha256: sha256.to_ascii_lowercase(), size, depends })
}

/// The directory of downloaded `.deb` files, shared by all builds.
#[derive(Debug, Clone)]
pub(crate) struct DownloadCache {
    dir: PathBuf,
}

impl DownloadCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Removes temporary download directories left by a build that died.
    /// Call it only while holding the cache lock.
    pub fn remove_partial_downloads(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".download-") {
                tracing::info!(dir = %entry.path().display(), "removing a partial download");
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Returns the path of `pkg`'s `.deb`, downloading it unless a copy with
    /// the right SHA-256 is already cached. Older versions of the same package
    /// are removed after a download.
    pub fn fetch(&self, pkg: &DebPackage, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, ImageError> {
        fs::create_dir_all(&self.dir).ctx("creating download directory", &self.dir)?;
        let path = self.dir.join(pkg.file_name());
        if path.is_file() {
            if sha256_file(&path)? == pkg.sha256 {
                progress(&format!("using cached {} {}", pkg.name, pkg.version));
                return Ok(path);
            }
            tracing::warn!(path = %path.display(), "cached package has the wrong SHA-256, downloading it again");
        }
        progress(&format!("downloading {} {} ({:.1} MiB)", pkg.name, pkg.version, pkg.size as f64 / (1024.0 * 1024.0)));
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&self.dir)
            .ctx("creating a temporary directory in", &self.dir)?;
        let spec = format!("{}:{}={}", pkg.name, pkg.arch, pkg.version);
        APT_GET.run(APT_GET.command().current_dir(tmp.path()).args(["download", "-q", &spec]), APT_HINT)?;
        let downloaded = single_deb(tmp.path(), &pkg.name)?;
        let got = sha256_file(&downloaded)?;
        if got != pkg.sha256 {
            return Err(ImageError::Package {
                package: pkg.name.clone(),
                detail: format!("downloaded file has SHA-256 {got}, the archive index says {}", pkg.sha256),
                hint: APT_HINT.to_string(),
            });
        }
        fs::rename(&downloaded, &path).ctx("moving downloaded package to", &path)?;
        self.prune_other_versions(pkg);
        Ok(path)
    }

    fn prune_other_versions(&self, pkg: &DebPackage) {
        let keep = pkg.file_name();
        let prefix = format!("{}_", pkg.name);
        let suffix = format!("_{}.deb", pkg.arch);
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // "<name>_<version>_<arch>.deb": the version never contains '_'.
            let is_other_version = name != keep
                && name.starts_with(&prefix)
                && name.ends_with(&suffix)
                && name[prefix.len()..name.len() - suffix.len()].find('_').is_none();
            if is_other_version {
                tracing::info!(file = %name, "removing an older cached package version");
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn single_deb(dir: &Path, package: &str) -> Result<PathBuf, ImageError> {
    let mut debs = Vec::new();
    for entry in fs::read_dir(dir).ctx("listing", dir)? {
        let entry = entry.ctx("listing", dir)?;
        if entry.file_name().to_string_lossy().ends_with(".deb") {
            debs.push(entry.path());
        }
    }
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => Err(ImageError::Package {
            package: package.to_string(),
            detail: format!("`apt-get download` produced {n} .deb files, expected 1"),
            hint: APT_HINT.to_string(),
        }),
    }
}

/// Unpacks `deb` into `dest` with `dpkg -x` (no maintainer scripts run).
pub(crate) fn unpack(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(dest).ctx("creating directory", dest)?;
    DPKG.run(
        DPKG.command().arg("-x").arg(deb).arg(dest),
        "the cached .deb may be damaged: delete it from the download cache and build again",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANZA: &str = "Package: linux-image-cloud-amd64\n\
Source: linux-signed-amd64 (6.1.192+2)\n\
Version: 6.1.192-2\n\
Architecture: amd64\n\
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2), foo | bar, libc6:any (>= 2.3)\n\
Size: 1500\n\
SHA256: ABCDEF\n\
\n\
Package: other\nVersion: 9\n";

    #[test]
    fn parses_first_stanza() {
        let pkg = parse_stanza("linux-image-cloud-amd64", STANZA).expect("parse");
        assert_eq!(pkg.version, "6.1.192-2");
        assert_eq!(pkg.sha256, "abcdef");
        assert_eq!(pkg.size, 1500);
        assert_eq!(pkg.depends_names(), ["linux-image-6.1.0-56-cloud-amd64", "foo", "libc6"]);
    }

    #[test]
    fn file_name_escapes_epoch() {
        let pkg = DebPackage {
            name: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            arch: "amd64".into(),
            sha256: String::new(),
            size: 0,
            depends: String::new(),
        };
        assert_eq!(pkg.file_name(), "busybox-static_1%3a1.35.0-4_amd64.deb");
    }
}
