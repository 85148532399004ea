//! Client commands for launch templates: create, list, show, delete,
//! versions and the default version. Launching from one is `nubo instance
//! run --template`; groups take `nubo group create --template`.

use crate::cli::{Conn, TemplateCmd, TemplateFlags, TemplateVersionCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::Context;
use nubo_api::launch_templates::{
    LaunchTemplate, LaunchTemplateCreate, LaunchTemplateData, LaunchTemplateVersion, LaunchTemplateVersionCreate,
};
use nubo_api::params::MetadataOptions;

/// The flags as a version's data (a user-data file read).
pub fn data_of(f: TemplateFlags) -> anyhow::Result<LaunchTemplateData> {
    let user_data = match &f.user_data {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read user-data file {}", p.display()))?)
        }
        None => None,
    };
    Ok(LaunchTemplateData {
        image: f.image,
        instance_type: f.instance_type,
        vcpus: f.vcpus,
        memory_mib: f.memory,
        disk_gib: f.disk,
        key_name: f.key,
        security_groups: f.security_groups,
        networks: f.networks,
        user_data,
        tags: f.tags.into_iter().collect(),
        metadata: f.metadata_tokens.map(|t| MetadataOptions { http_tokens: Some(t) }),
        ports: f.ports,
    })
}

/// One line of what a version launches.
fn summary(d: &LaunchTemplateData) -> String {
    let mut parts = Vec::new();
    if let Some(i) = &d.image {
        parts.push(format!("image {i}"));
    }
    match (&d.instance_type, d.vcpus, d.memory_mib) {
        (Some(t), _, _) => parts.push(format!("type {t}")),
        (None, Some(v), m) => parts.push(format!("{v} vCPU {} MiB", m.map(|m| m.to_string()).unwrap_or("-".into()))),
        (None, None, Some(m)) => parts.push(format!("{m} MiB")),
        _ => {}
    }
    if let Some(g) = d.disk_gib {
        parts.push(format!("disk {g} GiB"));
    }
    if let Some(k) = &d.key_name {
        parts.push(format!("key {k}"));
    }
    if !d.security_groups.is_empty() {
        parts.push(format!("groups {}", d.security_groups.join(",")));
    }
    if !d.networks.is_empty() {
        parts.push(format!("networks {}", d.networks.join(",")));
    }
    if !d.tags.is_empty() {
        parts.push(format!("tags {}", d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")));
    }
    if d.user_data.is_some() {
        parts.push("user-data".into());
    }
    parts.join(", ")
}

fn print_version(v: &LaunchTemplateVersion) {
    println!(
        "  {:>4}{} {}{}",
        v.version,
        if v.default { "*" } else { " " },
        summary(&v.data),
        v.description.as_deref().map(|d| format!("  ({d})")).unwrap_or_default()
    );
}

fn print_template(t: &LaunchTemplate) {
    println!("{} ({}) default {} latest {}", t.name, t.id, t.default_version, t.latest_version);
    for v in &t.versions {
        print_version(v);
    }
}

pub async fn template(cmd: TemplateCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        TemplateCmd::Create { name, description, data } => {
            let c = LaunchTemplateCreate { name, description, data: data_of(data)?, tags: Default::default() };
            let t = client(conn)?.create_launch_template(&c).await?;
            emit(conn.output, &t, print_template)
        }
        TemplateCmd::List => {
            let list = client(conn)?.launch_templates().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![t.name.clone(), t.id.clone(), t.default_version.to_string(), t.latest_version.to_string()]
                    })
                    .collect();
                table(&["NAME", "ID", "DEFAULT", "LATEST"], &rows);
            })
        }
        TemplateCmd::Show { name } => {
            let t = client(conn)?.launch_template(&name).await?;
            emit(conn.output, &t, print_template)
        }
        TemplateCmd::Delete { name } => {
            client(conn)?.delete_launch_template(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
        TemplateCmd::Version(TemplateVersionCmd::Create { name, from, description, data }) => {
            let c = LaunchTemplateVersionCreate { source_version: from, description, data: data_of(data)? };
            let v = client(conn)?.create_launch_template_version(&name, &c).await?;
            emit(conn.output, &v, |v| {
                println!("{name} version {}", v.version);
                print_version(v);
            })
        }
        TemplateCmd::Default { name, version } => {
            let t = client(conn)?.set_launch_template_default(&name, &version).await?;
            emit(conn.output, &t, print_template)
        }
    }
}
