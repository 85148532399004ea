//! The on-disk, content-addressed image store under the cache root:
//!
//! ```text
//! ROOT/.lock                   flock()ed by whoever builds
//! ROOT/downloads/*.deb         package download cache, shared by all builds
//! ROOT/sha256/<hex>/           one built image: kernel, initrd, disk.qcow2, manifest.json
//! ROOT/names/<name>            text file holding the <hex> the name points at
//! ROOT/tmp/                    build scratch space (same file system, for rename)
//! ```
//!
//! An image's `<hex>` is the SHA-256 of its manifest's file list
//! ([`image_digest`]), i.e. of the artefacts themselves. Images and name
//! pointers are published with `rename`, so readers never see partial state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ImageError, IoContext};
use crate::BuiltImage;

/// Version of the manifest format and of the digest recipe.
pub(crate) const FORMAT: u32 = 1;

/// Paths inside the cache root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("sha256")
    }
    pub fn image_dir(&self, hex: &str) -> PathBuf {
        self.images().join(hex)
    }
    pub fn names(&self) -> PathBuf {
        self.root.join("names")
    }
    pub fn name_file(&self, name: &str) -> PathBuf {
        self.names().join(name)
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }
}

/// One artefact of an image, as recorded in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ManifestFile {
    /// `kernel`, `initrd` or `disk`.
    pub role: String,
    /// File name inside the image directory.
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

/// A Debian package the image was built from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ManifestPackage {
    pub name: String,
    pub version: String,
    /// SHA-256 of the `.deb` when the build fetched it itself (`tiny`);
    /// empty when apt installed it inside a root file system (`debian`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// What a recipe's build produced, for the manifest.
#[derive(Debug)]
pub(crate) struct Built {
    pub kernel_version: String,
    pub packages: Vec<ManifestPackage>,
    pub files: Vec<ManifestFile>,
}

/// `manifest.json` of an image directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    pub name: String,
    pub sha256: String,
    pub cmdline: String,
    pub built_at: String,
    pub kernel_version: String,
    /// Digest of the build recipe (scripts, module and package lists); a
    /// cached image built by another recipe is rebuilt by `ensure`.
    #[serde(default)]
    pub recipe: String,
    /// Packages asked for on top of the recipe's own (sorted). They do not
    /// change `recipe`: the image keeps its name and satisfies `ensure`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_packages: Vec<String>,
    pub files: Vec<ManifestFile>,
    pub packages: Vec<ManifestPackage>,
}

pub(crate) const MANIFEST: &str = "manifest.json";

impl Manifest {
    fn file(&self, role: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.role == role)
    }

    /// The [`BuiltImage`] for this manifest stored in `dir`.
    pub fn to_image(&self, dir: &Path) -> Result<BuiltImage, ImageError> {
        let path_of = |role: &str| {
            self.file(role).map(|f| dir.join(&f.file)).ok_or_else(|| ImageError::Corrupt {
                path: dir.join(MANIFEST),
                detail: format!("the manifest lists no {role} file"),
            })
        };
        Ok(BuiltImage {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            dir: dir.to_path_buf(),
            kernel: path_of("kernel")?,
            initrd: path_of("initrd")?,
            disk: path_of("disk")?,
            cmdline: self.cmdline.clone(),
            extra_packages: self.extra_packages.clone(),
        })
    }
}

/// The image identity: SHA-256 over `nubo-image/<FORMAT>` and one
/// `<role> <sha256> <size>` line per artefact, in manifest order.
pub(crate) fn image_digest(files: &[ManifestFile]) -> String {
    let mut h = Sha256::new();
    h.update(format!("nubo-image/{FORMAT}\n"));
    for f in files {
        h.update(format!("{} {} {}\n", f.role, f.sha256, f.size));
    }
    hex::encode(h.finalize())
}

/// Hex SHA-256 of a file's contents.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).ctx("opening", path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).ctx("reading", path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Records `file` (inside `dir`) with its hash and size.
pub(crate) fn describe(dir: &Path, role: &str, file: &str) -> Result<ManifestFile, ImageError> {
    let path = dir.join(file);
    let size = fs::metadata(&path).ctx("inspecting", &path)?.len();
    Ok(ManifestFile { role: role.to_string(), file: file.to_string(), sha256: sha256_file(&path)?, size })
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Reads and checks `dir/manifest.json`.
pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest, ImageError> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).ctx("reading", &path)?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| ImageError::Corrupt { path: path.clone(), detail: format!("invalid manifest: {e}") })?;
    if manifest.format != FORMAT {
        return Err(ImageError::Corrupt {
            path,
            detail: format!("manifest format {} (expected {FORMAT})", manifest.format),
        });
    }
    if image_digest(&manifest.files) != manifest.sha256 {
        return Err(ImageError::Corrupt { path, detail: "the manifest's sha256 does not match its file list".into() });
    }
    Ok(manifest)
}

/// Re-hashes every artefact and compares it with the manifest.
pub(crate) fn verify(dir: &Path, manifest: &Manifest) -> Result<(), ImageError> {
    for f in &manifest.files {
        let path = dir.join(&f.file);
        let actual = sha256_file(&path)?;
        if actual != f.sha256 {
            return Err(ImageError::Corrupt {
                path,
                detail: format!("SHA-256 is {actual}, the manifest says {}", f.sha256),
            });
        }
    }
    Ok(())
}

/// The image `name` points at, when the pointer and the image are intact and
/// the image was built by `recipe`. A dangling, damaged or outdated entry is
/// logged and reported as absent, so that the caller rebuilds it.
pub(crate) fn resolve_name(layout: &Layout, name: &str, recipe: &str) -> Result<Option<BuiltImage>, ImageError> {
    let pointer = layout.name_file(name);
    let hex = match fs::read_to_string(&pointer) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io("reading", &pointer, e)),
    };
    if !is_hex_digest(&hex) {
        tracing::warn!(pointer = %pointer.display(), "image name pointer does not hold a SHA-256, ignoring it");
        return Ok(None);
    }
    let dir = layout.image_dir(&hex);
    let manifest = match read_manifest(&dir) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "image named by {} is unusable, ignoring it", pointer.display());
            return Ok(None);
        }
    };
    if manifest.sha256 != hex || manifest.name != name {
        tracing::warn!(dir = %dir.display(), "manifest does not match its directory or name, ignoring it");
        return Ok(None);
    }
    if manifest.recipe != recipe {
        tracing::info!(dir = %dir.display(), "cached image was built by another version of the recipe, ignoring it");
        return Ok(None);
    }
    let image = manifest.to_image(&dir)?;
    for path in [&image.kernel, &image.initrd, &image.disk] {
        if !path.is_file() {
            tracing::warn!(file = %path.display(), "image file is missing, ignoring the image");
            return Ok(None);
        }
    }
    Ok(Some(image))
}

/// Points `name` at image `hex` (atomic replace).
pub(crate) fn set_name(layout: &Layout, name: &str, hex: &str) -> Result<(), ImageError> {
    let names = layout.names();
    fs::create_dir_all(&names).ctx("creating directory", &names)?;
    let tmp = names.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).ctx("creating", &tmp)?;
    f.write_all(format!("{hex}\n").as_bytes()).and_then(|()| f.sync_all()).ctx("writing", &tmp)?;
    let target = layout.name_file(name);
    fs::rename(&tmp, &target).ctx("publishing image name", &target)?;
    Ok(())
}

/// An exclusive `flock` on `ROOT/.lock`, held while building.
#[derive(Debug)]
pub(crate) struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Takes the lock, waiting (and saying so through `progress`) while
    /// another process holds it.
    pub fn acquire(layout: &Layout, progress: &mut dyn FnMut(&str)) -> Result<Self, ImageError> {
        fs::create_dir_all(&layout.root).ctx("creating image cache directory", &layout.root)?;
        let path = layout.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .ctx("opening lock file", &path)?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                progress(&format!("waiting for another process that is building into {}", layout.root.display()));
                fs4::FileExt::lock(&file).ctx("locking", &path)?;
            }
            Err(fs4::TryLockError::Error(e)) => return Err(ImageError::io("locking", &path, e)),
        }
        Ok(Self { _file: file })
    }
}

/// Current time as RFC 3339 UTC (`2024-05-01T12:34:56Z`).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_714_566_896), "2024-05-01T12:34:56Z");
    }

    #[test]
    fn digest_depends_on_files() {
        let a = ManifestFile { role: "kernel".into(), file: "kernel".into(), sha256: "00".into(), size: 1 };
        let mut b = a.clone();
        b.size = 2;
        assert_ne!(image_digest(std::slice::from_ref(&a)), image_digest(&[b]));
        assert!(is_hex_digest(&image_digest(&[a])));
    }

    #[test]
    fn name_pointer_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout { root: dir.path().to_path_buf() };
        assert!(resolve_name(&layout, "tiny", "r1").expect("lookup").is_none());

        let hexdir_files = ["kernel", "initrd", "disk.qcow2"];
        let tmp = dir.path().join("img");
        fs::create_dir_all(&tmp).expect("mkdir");
        let mut files = Vec::new();
        for (role, file) in ["kernel", "initrd", "disk"].iter().zip(hexdir_files) {
            fs::write(tmp.join(file), role.as_bytes()).expect("write");
            files.push(describe(&tmp, role, file).expect("describe"));
        }
        let hex = image_digest(&files);
        let manifest = Manifest {
            format: FORMAT,
            name: "tiny".into(),
            sha256: hex.clone(),
            cmdline: "console=ttyS0".into(),
            built_at: now_rfc3339(),
            kernel_version: "test".into(),
            recipe: "r1".into(),
            extra_packages: Vec::new(),
            files,
            packages: Vec::new(),
        };
        fs::write(tmp.join(MANIFEST), serde_json::to_vec(&manifest).expect("json")).expect("write manifest");
        fs::create_dir_all(layout.images()).expect("mkdir");
        fs::rename(&tmp, layout.image_dir(&hex)).expect("rename");
        set_name(&layout, "tiny", &hex).expect("set name");

        let image = resolve_name(&layout, "tiny", "r1").expect("lookup").expect("present");
        assert!(resolve_name(&layout, "tiny", "r2").expect("lookup").is_none());
        assert_eq!(image.sha256, hex);
        assert_eq!(image.disk, layout.image_dir(&hex).join("disk.qcow2"));
        verify(&image.dir, &manifest).expect("verify");

        fs::write(&image.kernel, b"tampered").expect("tamper");
        assert!(verify(&image.dir, &manifest).is_err());
        fs::remove_file(&image.initrd).expect("rm");
        assert!(resolve_name(&layout, "tiny", "r1").expect("lookup").is_none());
    }
}
