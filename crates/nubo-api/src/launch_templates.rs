//! Launch templates: a project's named launch parameters (`lt-...`), in
//! numbered immutable versions with one default. `nubo instance run
//! --template`, instance groups and EC2's RunInstances launch from them;
//! the EC2 API's LaunchTemplateData maps onto `LaunchTemplateData`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one version launches; every field may be left out (a launch
/// supplies or overrides it). Sizes come from `instance_type`, or from
/// `vcpus` and `memory_mib`, not both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateData {
    /// Image name (e.g. `tiny`) or id (`ami-...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// An instance type of the catalog (`t3.small`, see `DescribeInstanceTypes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Root disk in GiB (default: the image's minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// Security groups, names or `sg-...` ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// Networks, names or `net-...` ids, one NIC each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Tags each instance launched gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<crate::params::MetadataOptions>,
    /// Guest TCP ports to forward from the host's 127.0.0.1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl LaunchTemplateData {
    /// `self` with every field `over` sets replacing this one's; tags
    /// are merged (`over`'s value wins). A size given in `over` (type, or
    /// vCPUs/memory) replaces the whole size.
    pub fn overridden_by(&self, over: &LaunchTemplateData) -> LaunchTemplateData {
        let sized = over.instance_type.is_some() || over.vcpus.is_some() || over.memory_mib.is_some();
        let mut tags = self.tags.clone();
        tags.extend(over.tags.clone());
        LaunchTemplateData {
            image: over.image.clone().or_else(|| self.image.clone()),
            instance_type: if sized { over.instance_type.clone() } else { self.instance_type.clone() },
            vcpus: if sized { over.vcpus } else { self.vcpus },
            memory_mib: if sized { over.memory_mib } else { self.memory_mib },
            disk_gib: over.disk_gib.or(self.disk_gib),
            key_name: over.key_name.clone().or_else(|| self.key_name.clone()),
            security_groups: pick(&over.security_groups, &self.security_groups),
            networks: pick(&over.networks, &self.networks),
            user_data: over.user_data.clone().or_else(|| self.user_data.clone()),
            tags,
            metadata: over.metadata.clone().or_else(|| self.metadata.clone()),
            ports: pick(&over.ports, &self.ports),
        }
    }
}

fn pick<T: Clone>(over: &[T], base: &[T]) -> Vec<T> {
    if over.is_empty() { base } else { over }.to_vec()
}

/// `POST /api/v1/launch-templates`: the template and its version 1.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateCreate {
    /// 3-128 letters, digits, `(`, `)`, `.`, `-`, `/` or `_` (as EC2); unique in the project.
    pub name: String,
    /// Version 1's description (at most 255 characters).
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub data: LaunchTemplateData,
    /// Tags of the template itself (not of the instances it launches).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// `POST /api/v1/launch-templates/{name}/versions`: a new version, the
/// template's latest (not its default until set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateVersionCreate {
    /// Start from this version (`3`, `$Latest`, `$Default`): `data` overrides
    /// its fields. None: `data` alone.
    #[serde(default)]
    pub source_version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub data: LaunchTemplateData,
}

/// `POST /api/v1/launch-templates/{name}/default`
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateDefault {
    /// A version number, or `$Latest`.
    pub version: String,
}

/// `POST /api/v1/launch-templates/{name}/instances`: launch one instance
/// from a version, with fields overridden.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchTemplateLaunch {
    /// A version number, `$Latest` or `$Default` (the default).
    #[serde(default)]
    pub version: Option<String>,
    /// The instance's name.
    #[serde(default)]
    pub name: Option<String>,
    /// What replaces the version's fields (tags are merged).
    #[serde(default)]
    pub overrides: LaunchTemplateData,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LaunchTemplateVersion {
    pub version: u64,
    #[serde(default)]
    pub description: Option<String>,
    /// Is it the template's default version?
    pub default: bool,
    pub data: LaunchTemplateData,
    pub created_by: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LaunchTemplate {
    /// `lt-` and 17 hex digits.
    pub id: String,
    pub name: String,
    pub default_version: u64,
    pub latest_version: u64,
    pub created_by: String,
    pub created_at_ms: i64,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Every version, newest first (show and create only; empty in lists).
    #[serde(default)]
    pub versions: Vec<LaunchTemplateVersion>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_fields_merge_tags_and_replace_the_whole_size() {
        let base = LaunchTemplateData {
            image: Some("tiny".into()),
            vcpus: Some(2),
            memory_mib: Some(512),
            key_name: Some("k".into()),
            security_groups: vec!["web".into()],
            tags: [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into(),
            ..Default::default()
        };
        let over = LaunchTemplateData {
            instance_type: Some("t3.small".into()),
            tags: [("b".to_string(), "3".to_string())].into(),
            ..Default::default()
        };
        let m = base.overridden_by(&over);
        assert_eq!(m.image.as_deref(), Some("tiny"));
        assert_eq!((m.instance_type.as_deref(), m.vcpus, m.memory_mib), (Some("t3.small"), None, None));
        assert_eq!(m.key_name.as_deref(), Some("k"));
        assert_eq!(m.security_groups, ["web"]);
        assert_eq!(m.tags.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.tags.get("b").map(String::as_str), Some("3"));
        assert_eq!(base.overridden_by(&LaunchTemplateData::default()), base);
    }
}
