//! Identity commands: `login`, `token`, `project`, `user`, `audit`.

use crate::cli::Conn;
use crate::cli::{AccessKeyCmd, AuditCmd, LoginArgs, ProjectCmd, TokenCmd, UserCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::Context;
use nubo_api::params::{Login, ProjectCreate, Quota, TokenCreate, UserCreate};
use std::io::Read;
use std::path::PathBuf;

fn session_file() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root")).join(".config")
    });
    base.join("nubo").join("session.env")
}

/// (url, token) saved by `nubo login`, if any.
pub fn saved_session() -> Option<(String, String)> {
    let text = std::fs::read_to_string(session_file()).ok()?;
    let get = |k: &str| {
        text.lines().find_map(|l| l.strip_prefix(&format!("export {k}=")).map(|v| v.trim_matches('\'').to_string()))
    };
    Some((get("NUBO_URL")?, get("NUBO_TOKEN")?))
}

fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the password from standard input")?;
        Ok(s.trim_end_matches(['\n', '\r']).to_string())
    } else {
        rpassword::prompt_password(prompt).context("cannot read the password (use --password-stdin in scripts)")
    }
}

pub async fn login(a: LoginArgs, conn: &Conn) -> anyhow::Result<()> {
    let Some(url) = conn.url() else {
        anyhow::bail!("which server? give its URL with --url or NUBO_URL (e.g. https://nubo.example:8780)");
    };
    let password = read_password(a.password_stdin, "Password: ")?;
    let anonymous = nubo_client::Client::with_ca(url, "", crate::client_cmds::ca_cert().as_deref())?;
    let issued = anonymous.login(&Login { username: a.user.clone(), password, project: a.project.clone() }).await?;
    let path = session_file();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    nubo_agent::identity::write_private(
        &path,
        &format!("export NUBO_URL='{url}'\nexport NUBO_TOKEN='{}'\n", issued.token),
    )?;
    println!(
        "Signed in as {} in project {} (role {}); session saved to {}",
        issued.user,
        issued.project.as_deref().unwrap_or("-"),
        issued.role,
        path.display()
    );
    Ok(())
}

pub async fn token(cmd: TokenCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create { name, expires_in } => {
            let t = client(conn)?.create_token(&TokenCreate { name, expires_in_secs: expires_in }).await?;
            emit(conn.output, &t, |t| println!("{}\n(id {}; shown once: store it now)", t.token, t.id))
        }
        TokenCmd::List => {
            let list = client(conn)?.tokens().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.to_string(),
                            t.name.clone(),
                            t.user.clone(),
                            t.project.clone().unwrap_or_default(),
                            t.expires_at_ms.map(|e| e.to_string()).unwrap_or_else(|| "never".into()),
                            if t.revoked { "revoked".into() } else { "active".into() },
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "USER", "PROJECT", "EXPIRES_AT_MS", "STATUS"], &rows);
            })
        }
        TokenCmd::Revoke { id } => {
            client(conn)?.revoke_token(&id).await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}

pub async fn project(cmd: ProjectCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        ProjectCmd::Create { name } => {
            let p = client(conn)?.create_project(&ProjectCreate { name, quota: None }).await?;
            emit(conn.output, &p, |p| println!("{}", p.id))
        }
        ProjectCmd::List => {
            let list = client(conn)?.projects().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.id.to_string(),
                            p.name.clone(),
                            format!("{}/{}", p.used.instances, p.quota.instances),
                            format!("{}/{}", p.used.vcpus, p.quota.vcpus),
                            format!("{}/{}", p.used.memory_mib, p.quota.memory_mib),
                            format!("{}/{}", p.used.volume_gib, p.quota.volume_gib),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "INSTANCES", "VCPUS", "MEMORY_MIB", "VOLUME_GIB"], &rows);
            })
        }
        ProjectCmd::Quota { project, instances, vcpus, memory_mib, volume_gib, floating_ips } => {
            let p = client(conn)?
                .set_quota(&project, &Quota { instances, vcpus, memory_mib, volume_gib, floating_ips })
                .await?;
            emit(conn.output, &p, |p| {
                println!(
                    "{}: instances {}, vCPUs {}, memory {} MiB, volumes {} GiB",
                    p.name, p.quota.instances, p.quota.vcpus, p.quota.memory_mib, p.quota.volume_gib
                )
            })
        }
        ProjectCmd::AddMember { project, user, role } => {
            client(conn)?.set_member(&project, &user, &role).await?;
            println!("{user} is {role} of {project}");
            Ok(())
        }
        ProjectCmd::RemoveMember { project, user } => {
            client(conn)?.remove_member(&project, &user).await?;
            println!("{user} is no longer a member of {project}");
            Ok(())
        }
    }
}

pub async fn user(cmd: UserCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create { name, admin } => {
            let password = read_password(true, "")?;
            let u = client(conn)?.create_user(&UserCreate { name, password, admin }).await?;
            emit(conn.output, &u, |u| println!("{}", u.id))
        }
        UserCmd::List => {
            let list = client(conn)?.users().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|u| {
                        let projects: Vec<String> = u.projects.iter().map(|(p, r)| format!("{p}:{r}")).collect();
                        vec![
                            u.id.to_string(),
                            u.name.clone(),
                            u.source.clone(),
                            u.admin.to_string(),
                            projects.join(","),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "SOURCE", "ADMIN", "PROJECTS"], &rows);
            })
        }
    }
}

pub async fn audit(cmd: AuditCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::List { limit } => {
            let list = client(conn)?.audit(limit).await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|e| {
                        vec![
                            e.at_ms.to_string(),
                            e.actor.clone(),
                            e.project.clone().unwrap_or_default(),
                            format!("{} {}", e.method, e.path),
                            e.source.clone(),
                            e.status.to_string(),
                            e.outcome.clone(),
                        ]
                    })
                    .collect();
                table(&["AT_MS", "ACTOR", "PROJECT", "REQUEST", "SOURCE", "STATUS", "OUTCOME"], &rows);
            })
        }
    }
}

pub async fn access_key(cmd: AccessKeyCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        AccessKeyCmd::Create => {
            let k = client(conn)?.create_access_key().await?;
            emit(conn.output, &k, |k| {
                println!("AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}", k.access_key_id, k.secret_access_key);
                println!("(the secret is shown once: store it now)");
            })
        }
        AccessKeyCmd::List => {
            let list = client(conn)?.access_keys().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|k| {
                        vec![
                            k.access_key_id.clone(),
                            k.user.clone(),
                            k.project.clone().unwrap_or_default(),
                            if k.revoked { "revoked".into() } else { "active".into() },
                        ]
                    })
                    .collect();
                table(&["ACCESS_KEY_ID", "USER", "PROJECT", "STATUS"], &rows);
            })
        }
        AccessKeyCmd::Delete { id } => {
            client(conn)?.revoke_access_key(&id).await?;
            println!("revoked {id}");
            Ok(())
        }
    }
}
