//! Instance types: names (`t3.micro`) mapped to vCPUs and memory, with
//! the common EC2 names and AWS's real figures as defaults so that copied
//! examples work, extended or replaced by `--instance-types FILE` (TOML or
//! JSON). An instance launched by size has no type; it is reported as
//! `custom-<vcpus>-<mib>`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// The table the EC2 API launches by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypes {
    types: BTreeMap<String, InstanceType>,
}

/// The file `--instance-types` reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypesFile {
    /// true: the file's types are the whole table; false (default): they
    /// are added to the defaults (a default of the same name is replaced).
    #[serde(default)]
    replace_defaults: bool,
    #[serde(rename = "type", alias = "types", default)]
    types: Vec<InstanceType>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceTypesError {
    #[error("cannot read the instance types file {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{path} is not a valid instance types file: {detail}; see the README's EC2 section for the format")]
    Parse { path: String, detail: String },
    #[error("{path}: instance type '{name}': {detail}")]
    Invalid { path: String, name: String, detail: String },
}

/// (size, vCPUs, memory MiB) of one family.
type Sizes = &'static [(&'static str, u32, u64)];

/// (family, sizes) as AWS publishes them.
const DEFAULTS: &[(&str, Sizes)] = &[
    (
        "t2",
        &[
            ("nano", 1, 512),
            ("micro", 1, 1024),
            ("small", 1, 2048),
            ("medium", 2, 4096),
            ("large", 2, 8192),
            ("xlarge", 4, 16384),
            ("2xlarge", 8, 32768),
        ],
    ),
    ("t3", BURSTABLE),
    ("t3a", BURSTABLE),
    ("m5", GENERAL),
    ("m6i", GENERAL),
    ("c5", COMPUTE),
    ("c6i", COMPUTE),
    ("r5", MEMORY),
    ("r6i", MEMORY),
    // The first generation, still the default of old playbooks and
    // tutorials (m1.small is Ansible's and boto's long-standing example).
    ("m1", &[("small", 1, 1740), ("medium", 1, 3840), ("large", 2, 7680), ("xlarge", 4, 15360)]),
];
const BURSTABLE: Sizes = &[
    ("nano", 2, 512),
    ("micro", 2, 1024),
    ("small", 2, 2048),
    ("medium", 2, 4096),
    ("large", 2, 8192),
    ("xlarge", 4, 16384),
    ("2xlarge", 8, 32768),
];
const GENERAL: Sizes = &[("large", 2, 8192), ("xlarge", 4, 16384), ("2xlarge", 8, 32768), ("4xlarge", 16, 65536)];
const COMPUTE: Sizes = &[("large", 2, 4096), ("xlarge", 4, 8192), ("2xlarge", 8, 16384), ("4xlarge", 16, 32768)];
const MEMORY: Sizes = &[("large", 2, 16384), ("xlarge", 4, 32768), ("2xlarge", 8, 65536), ("4xlarge", 16, 131072)];

impl Default for InstanceTypes {
    fn default() -> Self {
        let mut types = BTreeMap::new();
        for (family, sizes) in DEFAULTS {
            for (size, vcpus, memory_mib) in *sizes {
                let name = format!("{family}.{size}");
                types.insert(name.clone(), InstanceType { name, vcpus: *vcpus, memory_mib: *memory_mib });
            }
        }
        Self { types }
    }
}

impl InstanceTypes {
    /// Reads a TOML (`[[type]]` tables) or JSON (`{"types": [...]}`) file,
    /// by its extension (`.json` is JSON, anything else TOML).
    pub fn load(path: &Path) -> Result<Self, InstanceTypesError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| InstanceTypesError::Read { path: p.clone(), detail: e.to_string() })?;
        let file: TypesFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .map_err(|e| InstanceTypesError::Parse { path: p.clone(), detail: e.to_string() })?
        } else {
            toml::from_str(&text).map_err(|e| InstanceTypesError::Parse { path: p.clone(), detail: e.to_string() })?
        };
        let mut table = if file.replace_defaults { Self { types: BTreeMap::new() } } else { Self::default() };
        for t in file.types {
            let invalid =
                |detail: String| InstanceTypesError::Invalid { path: p.clone(), name: t.name.clone(), detail };
            crate::validate::name_of("instance type name", &t.name, 63).map_err(|e| invalid(e.to_string()))?;
            if t.name.starts_with("custom-") {
                return Err(invalid("names starting with 'custom-' are kept for instances launched by size".into()));
            }
            if t.vcpus == 0 || t.vcpus > crate::validate::MAX_VCPUS {
                return Err(invalid(format!("vcpus must be between 1 and {}", crate::validate::MAX_VCPUS)));
            }
            if !(crate::validate::MIN_MEMORY_MIB..=crate::validate::MAX_MEMORY_MIB).contains(&t.memory_mib) {
                return Err(invalid(format!(
                    "memory_mib must be between {} and {}",
                    crate::validate::MIN_MEMORY_MIB,
                    crate::validate::MAX_MEMORY_MIB
                )));
            }
            table.types.insert(t.name.clone(), t);
        }
        if table.types.is_empty() {
            return Err(InstanceTypesError::Parse { path: p, detail: "it defines no instance type".into() });
        }
        Ok(table)
    }

    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types.get(name)
    }

    /// Every type, by name.
    pub fn iter(&self) -> impl Iterator<Item = &InstanceType> {
        self.types.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_aws_figures() {
        let t = InstanceTypes::default();
        assert_eq!(t.get("t2.micro").map(|t| (t.vcpus, t.memory_mib)), Some((1, 1024)));
        assert_eq!(t.get("t3.nano").map(|t| (t.vcpus, t.memory_mib)), Some((2, 512)));
        assert_eq!(t.get("m5.4xlarge").map(|t| (t.vcpus, t.memory_mib)), Some((16, 65536)));
        assert_eq!(t.get("r5.large").map(|t| (t.vcpus, t.memory_mib)), Some((2, 16384)));
        assert_eq!(t.get("c5.xlarge").map(|t| (t.vcpus, t.memory_mib)), Some((4, 8192)));
        assert_eq!(t.get("m1.small").map(|t| (t.vcpus, t.memory_mib)), Some((1, 1740)));
        assert_eq!(t.get("m1.xlarge").map(|t| (t.vcpus, t.memory_mib)), Some((4, 15360)));
        assert!(t.get("t9.huge").is_none());
    }

    #[test]
    fn files_add_or_replace() {
        let dir = tempfile::tempdir().unwrap();
        let toml_file = dir.path().join("types.toml");
        std::fs::write(&toml_file, "[[type]]\nname = \"nubo.small\"\nvcpus = 1\nmemory_mib = 256\n").unwrap();
        let t = InstanceTypes::load(&toml_file).unwrap();
        assert_eq!(t.get("nubo.small").map(|t| t.memory_mib), Some(256));
        assert!(t.get("t2.micro").is_some());
        let json_file = dir.path().join("types.json");
        std::fs::write(
            &json_file,
            r#"{"replace_defaults": true, "types": [{"name": "x.1", "vcpus": 2, "memory_mib": 512}]}"#,
        )
        .unwrap();
        let t = InstanceTypes::load(&json_file).unwrap();
        assert_eq!(t.iter().count(), 1);
        std::fs::write(&json_file, r#"{"types": [{"name": "x.1", "vcpus": 0, "memory_mib": 512}]}"#).unwrap();
        let e = InstanceTypes::load(&json_file).unwrap_err().to_string();
        assert!(e.contains("vcpus must be between"), "{e}");
        std::fs::write(&json_file, r#"{"types": [{"name": "custom-1-2", "vcpus": 1, "memory_mib": 512}]}"#).unwrap();
        assert!(InstanceTypes::load(&json_file).is_err());
    }
}
