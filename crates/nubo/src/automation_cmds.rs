//! Client commands for automation: policies and instance groups, both
//! written as YAML or JSON documents (read here, sent as JSON).

use crate::cli::Conn;
use crate::cli::{GroupCmd, PolicyCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::Context;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Reads a YAML (or JSON, which is YAML too) document into `T`, going
/// through JSON's data model so that `- attach_volume: {size_gib: 100}`
/// reads as the enum it names.
pub fn read_document<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        yaml_serde::from_str(&text).with_context(|| format!("{} is not YAML or JSON", path.display()))?;
    serde_json::from_value(value).with_context(|| format!("{} is not a valid document", path.display()))
}

fn clock(ms: i64) -> String {
    let day = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, (day / 60) % 60, day % 60)
}

pub async fn policy(cmd: PolicyCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Apply { file } => {
            let doc: nubo_api::automation::PolicyDoc = read_document(&file)?;
            let p = client(conn)?.apply_policy(&doc).await?;
            emit(conn.output, &p, |p| println!("{} {}{}", p.id, p.name, if p.doc.dry_run { " (dry run)" } else { "" }))
        }
        PolicyCmd::List => {
            let list = client(conn)?.policies().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        let c = &p.doc.condition;
                        let cond = match (&c.metric, &c.check_state) {
                            (Some(m), _) => format!(
                                "{}({m}) {} {} for {}",
                                c.aggregate,
                                c.op.as_deref().unwrap_or("?"),
                                c.threshold.unwrap_or_default(),
                                c.hold.as_deref().unwrap_or("0s")
                            ),
                            (_, Some(s)) => format!("check state {s}"),
                            _ => "?".into(),
                        };
                        vec![
                            p.name.clone(),
                            cond,
                            p.doc.actions.len().to_string(),
                            p.doc.dry_run.to_string(),
                            p.breaching.join(","),
                        ]
                    })
                    .collect();
                table(&["NAME", "CONDITION", "ACTIONS", "DRY_RUN", "BREACHING"], &rows);
            })
        }
        PolicyCmd::Show { name } => {
            let p = client(conn)?.policy(&name).await?;
            emit(conn.output, &p, |p| {
                println!("{} ({}){}", p.name, p.id, if p.doc.dry_run { " dry run" } else { "" });
                println!("breaching: {}", if p.breaching.is_empty() { "-".into() } else { p.breaching.join(", ") });
                for f in &p.firings {
                    println!("firing {} at {} on {} {} values {:?}", f.id, clock(f.at_ms), f.target, f.state, f.values);
                    for a in &f.actions {
                        println!(
                            "  {:<9} {} {}{}",
                            a.state,
                            a.action,
                            a.result.as_deref().unwrap_or(""),
                            a.error.as_ref().map(|e| format!(" ({e}, attempt {})", a.attempts)).unwrap_or_default()
                        );
                    }
                }
            })
        }
        PolicyCmd::Delete { name } => {
            client(conn)?.delete_policy(&name).await?;
            println!("deleted {name}");
            Ok(())
        }
    }
}

pub async fn group(cmd: GroupCmd, conn: &Conn) -> anyhow::Result<()> {
    let print = |g: &nubo_api::automation::Group| {
        println!("{} ({}) min {} desired {} max {}", g.name, g.id, g.min, g.desired, g.max);
        for m in &g.members {
            println!("  {} {:<10} {}", m.instance_id, m.state, m.health);
        }
        for a in &g.activities {
            println!("  {} {:<13} {}", clock(a.at_ms), a.kind, a.detail);
        }
    };
    match cmd {
        GroupCmd::Create { file, template } => {
            let mut g: nubo_api::automation::GroupCreate = read_document(&file)?;
            // The flag replaces the document's own launch parameters.
            if let Some(t) = template {
                g.launch_template = Some(t);
                g.template = None;
            }
            let g = client(conn)?.create_group(&g).await?;
            emit(conn.output, &g, print)
        }
        GroupCmd::List => {
            let list = client(conn)?.groups().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|g| {
                        let healthy = g.members.iter().filter(|m| m.health == "healthy").count();
                        vec![
                            g.name.clone(),
                            format!("{}/{}/{}", g.min, g.desired, g.max),
                            format!("{healthy}/{}", g.members.len()),
                            g.template.image.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "MIN/DESIRED/MAX", "HEALTHY/MEMBERS", "IMAGE"], &rows);
            })
        }
        GroupCmd::Show { name } => {
            let g = client(conn)?.group(&name).await?;
            emit(conn.output, &g, print)
        }
        GroupCmd::SetDesired { name, desired } => {
            let g = client(conn)?.set_group_desired(&name, desired).await?;
            emit(conn.output, &g, print)
        }
        GroupCmd::Delete { name } => {
            client(conn)?.delete_group(&name).await?;
            println!("deleted {name} (its members are terminating)");
            Ok(())
        }
    }
}
