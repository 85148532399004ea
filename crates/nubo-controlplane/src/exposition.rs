//! The Prometheus text exposition format (0.0.4) of the whole cloud: the
//! newest value of every host and instance series, each check's state,
//! and the number of firing alerts. Names follow Prometheus conventions
//! (`nubo_<kind>_<metric>`, counters ending in `_total`, base units), and
//! labels name the resource (`host`, `instance`, `project`, ...). Written
//! by hand: it is a few lines of escaping, and a client library would
//! want to own the registry instead of reading our store.

use crate::error::AppResult;
use crate::Ctx;
use nubo_api::monitoring::CheckStateType;
use nubo_api::views::InstanceState;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// Help texts of the metrics the agent sends.
fn help(metric: &str) -> &'static str {
    match metric {
        "cpu_percent" => "CPU utilisation, percent (an instance's: of its vCPUs)",
        "cpu_seconds_total" => "CPU time of the instance's vCPUs",
        "load1" | "load5" | "load15" => "Load average of the host",
        "memory_total_bytes" => "Memory of the host",
        "memory_used_bytes" => "Memory in use on the host (total less available)",
        "memory_used_percent" => "Memory in use on the host, percent",
        "memory_rss_bytes" => "Resident memory of the instance's QEMU process",
        "memory_bytes" => "Memory given to the instance",
        "disk_total_bytes" | "disk_used_bytes" | "disk_used_percent" => "The host's data directory file system",
        "instances_running" => "Instances running on the host",
        "fs_used_bytes" | "fs_total_bytes" | "fs_used_percent" => "The guest's root file system, from its guest agent",
        m if m.starts_with("disk_") => "Disk I/O of all the instance's disks",
        m if m.starts_with("net_") => "Network I/O (host: all but loopback; instance: its guest's interfaces)",
        m if m.starts_with("check_") => "Performance data of a health check",
        _ => "A Nubo metric",
    }
}

/// A metric name with only `[a-z0-9_]` (Prometheus reserves `:` for rules).
fn prom_name(kind: &str, metric: &str) -> String {
    let m: String = metric.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("nubo_{kind}_{m}")
}

/// A label value escaped as the text format wants.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// Renders the exposition.
pub async fn render(ctx: &Ctx) -> AppResult<String> {
    let hosts: HashMap<String, String> = ctx.store.hosts().await?.into_iter().map(|h| (h.id, h.name)).collect();
    let projects: HashMap<String, String> = ctx.store.projects().await?.into_iter().map(|p| (p.id, p.name)).collect();
    let instances: HashMap<String, (String, String, String)> = ctx
        .store
        .instances(None)
        .await?
        .into_iter()
        .filter(|i| i.state != InstanceState::Terminated)
        .map(|i| {
            let project = i.project_id.as_ref().and_then(|p| projects.get(p)).cloned().unwrap_or_default();
            (i.id, (i.name, project, i.host_id.unwrap_or_default()))
        })
        .collect();
    // family name -> (type, help, lines)
    let mut families: BTreeMap<String, (&'static str, &'static str, Vec<String>)> = BTreeMap::new();
    for (resource, metric, at_ms, value) in ctx.store.all_latest().await? {
        let (kind, label_text) = if let Some(name) = hosts.get(&resource) {
            ("host", labels(&[("host", &resource), ("host_name", name)]))
        } else if let Some((name, project, host)) = instances.get(&resource) {
            ("instance", labels(&[("instance", &resource), ("name", name), ("project", project), ("host", host)]))
        } else {
            continue;
        };
        let family = prom_name(kind, &metric);
        let kind = if metric.ends_with("_total") { "counter" } else { "gauge" };
        let entry = families.entry(family.clone()).or_insert((kind, help(&metric), Vec::new()));
        entry.2.push(format!("{family}{label_text} {value} {at_ms}"));
    }
    let mut checks = Vec::new();
    for c in ctx.store.checks(None).await? {
        let state = c.state.status().map(f64::from).unwrap_or(-1.0);
        let hard = if c.state_type == CheckStateType::Hard { "1" } else { "0" };
        checks.push(format!(
            "nubo_check_state{} {state}",
            labels(&[("check", &c.id), ("name", &c.name), ("target", &c.target), ("kind", &c.kind), ("hard", hard)])
        ));
    }
    let firing = ctx.store.alerts(None, false).await?.len();
    let mut out = String::new();
    for (name, (kind, help, lines)) in &families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP nubo_check_state State of a health check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, -1 not run yet"
    );
    let _ = writeln!(out, "# TYPE nubo_check_state gauge");
    for l in checks {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(out, "# HELP nubo_alerts_firing Alerts firing now");
    let _ = writeln!(out, "# TYPE nubo_alerts_firing gauge");
    let _ = writeln!(out, "nubo_alerts_firing {firing}");
    if let Some(w) = ctx.store.metrics_remote().and_then(|r| r.writer.as_ref()) {
        crate::metrics_remote::write::expose(w, &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_escapes() {
        assert_eq!(prom_name("instance", "check_web.time"), "nubo_instance_check_web_time");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(labels(&[("a", "1"), ("b", "x\"y")]), "{a=\"1\",b=\"x\\\"y\"}");
    }
}
