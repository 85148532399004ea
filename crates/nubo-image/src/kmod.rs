//! Kernel modules for the initramfs: finds the module tree of an unpacked
//! Debian kernel package, resolves the modules an image needs together with
//! their dependencies (from each module's `.modinfo`, since the package ships
//! no `modules.dep`), decompresses `.ko.xz`/`.ko.gz`, and orders them so that
//! `insmod` in list order always finds its dependencies already loaded.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::elf;
use crate::error::{ImageError, IoContext};

/// A kernel module ready to be copied into an image.
#[derive(Debug, Clone)]
pub(crate) struct Module {
    /// Module name (underscores), e.g. `virtio_blk`.
    pub name: String,
    /// Uncompressed module contents.
    pub data: Vec<u8>,
}

impl Module {
    /// File name inside the image, e.g. `virtio_blk.ko`.
    pub fn file_name(&self) -> String {
        format!("{}.ko", self.name)
    }
}

/// The `lib/modules/<version>` tree of an unpacked kernel package.
#[derive(Debug)]
pub(crate) struct ModuleTree {
    package: String,
    version: String,
    files: HashMap<String, PathBuf>,
    builtin: HashSet<String>,
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a file name like `virtio-blk.ko.xz`, if it is a module.
fn module_name(file: &str) -> Option<String> {
    [".ko", ".ko.xz", ".ko.gz", ".ko.zst"].iter().find_map(|ext| file.strip_suffix(ext)).map(normalize)
}

impl ModuleTree {
    /// Finds the single `lib/modules/<version>` (or `usr/lib/modules/...`)
    /// directory under `unpacked`, the root where `package` was unpacked.
    pub fn open(unpacked: &Path, package: &str) -> Result<Self, ImageError> {
        let bad = |detail: String| ImageError::Package {
            package: package.to_string(),
            detail,
            hint: "this does not look like a Debian kernel image package; check the package name".to_string(),
        };
        let mut found = Vec::new();
        for base in ["lib/modules", "usr/lib/modules"] {
            let dir = unpacked.join(base);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.path().join("kernel").is_dir() {
                    found.push(entry.path());
                }
            }
        }
        let root = match found.len() {
            1 => found.remove(0),
            0 => return Err(bad("no lib/modules/<version>/kernel directory".into())),
            n => return Err(bad(format!("{n} kernel module trees, expected one"))),
        };
        let version = root.file_name().map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
        let mut files = HashMap::new();
        let mut stack = vec![root.join("kernel")];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
                let entry = entry.ctx("listing", &dir)?;
                let path = entry.path();
                let file_type = entry.file_type().ctx("inspecting", &path)?;
                if file_type.is_dir() {
                    stack.push(path);
                } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
                    files.insert(name, path);
                }
            }
        }
        let builtin = fs::read_to_string(root.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name(l.rsplit('/').next()?))
            .collect();
        Ok(Self { package: package.to_string(), version, files, builtin })
    }

    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The modules `required` and `optional` name, plus everything they depend
    /// on, in load order. Built-in modules are skipped; a missing required
    /// module is an error, a missing optional one only a warning.
    pub fn resolve(&self, required: &[&str], optional: &[&str]) -> Result<Vec<Module>, ImageError> {
        let mut resolver = Resolver { tree: self, done: HashSet::new(), visiting: HashSet::new(), order: Vec::new() };
        for name in required {
            resolver.visit(&normalize(name), true)?;
        }
        for name in optional {
            resolver.visit(&normalize(name), false)?;
        }
        Ok(resolver.order)
    }

    fn error(&self, detail: String) -> ImageError {
        ImageError::Package {
            package: self.package.clone(),
            detail,
            hint: "the kernel package's module set differs from what the image expects; \
                   check the kernel flavour (linux-image-cloud-amd64) or update nubo-image"
                .to_string(),
        }
    }

    fn load(&self, name: &str, path: &Path) -> Result<Vec<u8>, ImageError> {
        let raw = fs::read(path).ctx("reading kernel module", path)?;
        let file = path.to_string_lossy();
        let data = if file.ends_with(".xz") {
            let mut out = Vec::new();
            lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
                .map_err(|e| self.error(format!("cannot decompress {name} ({file}): {e}")))?;
            out
        } else if file.ends_with(".gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .map_err(|e| self.error(format!("cannot decompress {name} ({file}): {e}")))?;
            out
        } else if file.ends_with(".zst") {
            return Err(self.error(format!("module {name} is zstd-compressed ({file}), which is not supported")));
        } else {
            raw
        };
        Ok(data)
    }
}

struct Resolver<'a> {
    tree: &'a ModuleTree,
    done: HashSet<String>,
    visiting: HashSet<String>,
    order: Vec<Module>,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str, required: bool) -> Result<(), ImageError> {
        if self.done.contains(name) || self.tree.builtin.contains(name) {
            return Ok(());
        }
        if !self.visiting.insert(name.to_string()) {
            return Err(self.tree.error(format!("module dependency cycle through {name}")));
        }
        let Some(path) = self.tree.files.get(name) else {
            self.visiting.remove(name);
            if required {
                return Err(self
                    .tree
                    .error(format!("kernel {} has no module {name} and does not build it in", self.tree.version)));
            }
            tracing::warn!(module = name, "optional kernel module not found, skipping it");
            return Ok(());
        };
        let data = self.tree.load(name, path)?;
        let info = elf::modinfo(&data).map_err(|e| self.tree.error(format!("module {name}: {e}")))?;
        for (key, value) in &info {
            match key.as_str() {
                "depends" => {
                    for dep in value.split(',').filter(|d| !d.is_empty()) {
                        self.visit(&normalize(dep), true)?;
                    }
                }
                "softdep" => {
                    // "pre: a b post: c": load the "pre" ones first when present.
                    let mut pre = false;
                    for word in value.split_whitespace() {
                        match word {
                            "pre:" => pre = true,
                            "post:" => pre = false,
                            dep if pre => self.visit(&normalize(dep), false)?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        self.visiting.remove(name);
        self.done.insert(name.to_string());
        self.order.push(Module { name: name.to_string(), data });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_normalized() {
        assert_eq!(module_name("virtio-blk.ko.xz").as_deref(), Some("virtio_blk"));
        assert_eq!(module_name("fat.ko").as_deref(), Some("fat"));
        assert_eq!(module_name("modules.dep"), None);
    }
}
