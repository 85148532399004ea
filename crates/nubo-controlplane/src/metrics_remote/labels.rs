//! The labels of Nubo's series in Prometheus. Every series has
//! `__name__` = `nubo_<metric>` (sanitized to Prometheus' name rules),
//! `metric` = Nubo's own name (exact, so that two names that sanitize
//! alike stay apart and reading back finds the right one) and `resource` =
//! the instance or host id. An instance's series add `instance_id`,
//! `project` (its project's id) and `host` (the host running it); a host's
//! add `host`. All of them are ids: bounded by the fleet, and stable
//! where names and tags are not (a rename or a retag would start new
//! series and split their history).
//!
//! What an instance's project and host are is learnt from the ingest
//! path, which already loaded the sending host's instances
//! ([`LabelCache::note_instances`]); nothing queries the database here.

use crate::metrics_remote::prompb::Label;
use std::collections::HashMap;
use std::sync::Mutex;

/// A metric name as Prometheus accepts it (`[a-zA-Z_:][a-zA-Z0-9_:]*`),
/// prefixed with `nubo_`. Colons are reserved for recording rules, so
/// they become `_` too, as does anything else outside `[a-zA-Z0-9_]`.
pub fn prom_name(metric: &str) -> String {
    let mut out = String::with_capacity(metric.len() + 5);
    out.push_str("nubo_");
    out.extend(metric.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    out
}

/// An instance's labels beyond its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLabels {
    pub project: Option<String>,
    pub host: String,
}

/// Instance id -> its project and host, as last seen on ingest.
#[derive(Default)]
pub struct LabelCache {
    instances: Mutex<HashMap<String, InstanceLabels>>,
}

/// Entries past which the cache starts over: a bound on memory should
/// instances churn for months; it refills from the next round of batches.
const MAX_ENTRIES: usize = 1_000_000;

impl LabelCache {
    /// Records the instances `host` runs (called with the rows ingest
    /// loaded anyway). A migrated instance's host label follows it.
    pub fn note_instances<'a>(&self, host: &str, instances: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) {
        let Ok(mut map) = self.instances.lock() else { return };
        if map.len() > MAX_ENTRIES {
            map.clear();
        }
        for (id, project) in instances {
            let fresh = InstanceLabels { project: project.map(str::to_string), host: host.to_string() };
            match map.get(id) {
                Some(known) if *known == fresh => {}
                _ => {
                    map.insert(id.to_string(), fresh);
                }
            }
        }
    }

    /// The labels of one series of `resource`, sorted by name as the
    /// protocol requires.
    pub fn series_labels(&self, resource: &str, metric: &str) -> Vec<Label> {
        let mut labels = vec![
            Label { name: "__name__".into(), value: prom_name(metric) },
            Label { name: "metric".into(), value: metric.to_string() },
            Label { name: "resource".into(), value: resource.to_string() },
        ];
        if resource.starts_with("h-") {
            labels.push(Label { name: "host".into(), value: resource.to_string() });
        } else if resource.starts_with("i-") {
            labels.push(Label { name: "instance_id".into(), value: resource.to_string() });
            let known = self.instances.lock().ok().and_then(|m| m.get(resource).cloned());
            if let Some(l) = known {
                labels.push(Label { name: "host".into(), value: l.host });
                if let Some(p) = l.project {
                    labels.push(Label { name: "project".into(), value: p });
                }
            }
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_rules() {
        assert_eq!(prom_name("cpu_percent"), "nubo_cpu_percent");
        assert_eq!(prom_name("check_web.time"), "nubo_check_web_time");
        assert_eq!(prom_name("a:b-c d/é"), "nubo_a_b_c_d__");
        // Whatever comes in, the result is a valid name.
        for m in ["x", "9lives", "check_disk_/var", "ü", ""] {
            let n = prom_name(m);
            let mut chars = n.chars();
            assert!(chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'), "{n}");
            assert!(chars.all(|c| c.is_ascii_alphanumeric() || c == '_'), "{n}");
        }
    }

    #[test]
    fn an_instance_gets_its_project_and_host_sorted() {
        let cache = LabelCache::default();
        cache.note_instances("h-00000000000000aa", [("i-0123456789abcdef0", Some("p-1"))]);
        let l = cache.series_labels("i-0123456789abcdef0", "cpu_percent");
        let pairs: Vec<(&str, &str)> = l.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        assert_eq!(
            pairs,
            vec![
                ("__name__", "nubo_cpu_percent"),
                ("host", "h-00000000000000aa"),
                ("instance_id", "i-0123456789abcdef0"),
                ("metric", "cpu_percent"),
                ("project", "p-1"),
                ("resource", "i-0123456789abcdef0"),
            ]
        );
        // It migrates: the host label follows.
        cache.note_instances("h-00000000000000bb", [("i-0123456789abcdef0", Some("p-1"))]);
        let l = cache.series_labels("i-0123456789abcdef0", "cpu_percent");
        assert!(l.iter().any(|l| l.name == "host" && l.value == "h-00000000000000bb"));
        // A host's series name the host.
        let h = cache.series_labels("h-00000000000000aa", "load1");
        assert!(h.iter().any(|l| l.name == "host" && l.value == "h-00000000000000aa"));
        assert!(!h.iter().any(|l| l.name == "instance_id"));
    }
}
