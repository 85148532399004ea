//! Client commands: thin wrappers over the typed API client, with
//! progress on stderr for long operations (`--wait`).

use crate::cli::{Conn, Format, HostCmd, ImageCmd, InstanceCmd};
use crate::output::{emit, table};
use anyhow::Context;
use nubo_api::params::{InstanceCreate, InstanceProtection, MetadataOptions, RunCreate};
use nubo_api::views::{Instance, InstanceState, Migration};
use nubo_client::{Client, InstanceAction};
use std::time::{Duration, Instant};

/// The API client, from flags/env, else the session saved by `nubo login`.
pub fn client(c: &Conn) -> anyhow::Result<Client> {
    let saved = crate::identity_cmds::saved_session();
    let url = c.url().map(str::to_string).or_else(|| saved.as_ref().map(|s| s.0.clone()));
    let token = c.token().map(str::to_string).or_else(|| saved.as_ref().map(|s| s.1.clone()));
    match (url, token) {
        (Some(u), Some(t)) => Ok(Client::with_ca(&u, &t, ca_cert().as_deref())?),
        _ => anyhow::bail!(
            "no credentials: set NUBO_URL and NUBO_TOKEN (e.g. `. DATA_DIR/admin.env`) or sign in with `nubo login`"
        ),
    }
}

/// The extra CA to trust (`NUBO_CA_CERT`), for an https:// server with its own CA.
pub fn ca_cert() -> Option<std::path::PathBuf> {
    std::env::var_os(nubo_client::CA_CERT_ENV).filter(|v| !v.is_empty()).map(std::path::PathBuf::from)
}

fn ports_text(i: &Instance) -> String {
    i.ports.iter().map(|(g, h)| format!("{g}->{h}")).collect::<Vec<_>>().join(",")
}

/// A `--X` / `--no-X` pair: whichever was given last (clap keeps one).
fn flag(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

pub(crate) fn print_instance(i: &Instance) {
    let rows = vec![
        ("id", i.id.to_string()),
        ("name", i.name.clone()),
        ("state", i.state.as_str().to_string()),
        ("desired", i.desired_state.as_str().to_string()),
        (
            "image",
            match &i.image_id {
                Some(id) => format!("{} ({id})", i.image),
                None => i.image.clone(),
            },
        ),
        ("vcpus", i.vcpus.to_string()),
        ("memory_mib", i.memory_mib.to_string()),
        ("disk_gib", i.disk_gib.to_string()),
        ("hardware", i.hardware.to_string()),
        ("host", i.host_name.clone().unwrap_or_default()),
        ("ports", ports_text(i)),
        (
            "addresses",
            i.addresses
                .iter()
                .map(|a| match &a.floating_ip {
                    Some(f) => format!("{} {} (floating {f})", a.network, a.address),
                    None => format!("{} {}", a.network, a.address),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("key_name", i.key_name.clone().unwrap_or_default()),
        (
            "protection",
            match (i.termination_protection, i.stop_protection) {
                (true, true) => "termination, stop".to_string(),
                (true, false) => "termination".to_string(),
                (false, true) => "stop".to_string(),
                (false, false) => "none".to_string(),
            },
        ),
        ("shutdown_behavior", i.shutdown_behavior.clone()),
        ("tags", i.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")),
        ("metadata", format!("http_tokens={}", i.metadata_http_tokens)),
        ("error", i.error.clone().unwrap_or_default()),
    ];
    for (k, v) in rows {
        println!("{k:<11} {v}");
    }
    if let Some(cd) = &i.cdrom {
        let disc = cd.image_id.as_ref().map_or_else(|| "(empty)".to_string(), |id| id.to_string());
        println!("{:<11} {disc}, boot {}", "cdrom", cd.boot_order);
    }
    if let Some(g) = &i.guest {
        println!("guest:");
        println!("  agent      {}", g.agent_version.as_deref().unwrap_or("?"));
        println!("  os         {} ({})", g.os.as_deref().unwrap_or("?"), g.kernel.as_deref().unwrap_or("?"));
        for f in &g.filesystems {
            let mib = |b: Option<u64>| b.map(|b| format!("{:.1}", b as f64 / 1048576.0)).unwrap_or_else(|| "?".into());
            println!(
                "  fs         {} {} {} MiB used of {} MiB",
                f.mountpoint,
                f.fs_type,
                mib(f.used_bytes),
                mib(f.total_bytes)
            );
        }
        for n in &g.interfaces {
            println!("  net        {} {} {}", n.name, n.mac.as_deref().unwrap_or(""), n.addresses.join(" "));
        }
    }
    if !i.volumes.is_empty() {
        println!("volumes:");
        for v in &i.volumes {
            println!(
                "  {} {:>5} GiB {:<10} {}",
                v.volume_id,
                v.size_gib,
                v.state,
                v.guest_device.as_deref().unwrap_or("")
            );
        }
    }
    if !i.runs.is_empty() {
        println!("runs:");
        for r in &i.runs {
            let code = r.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default();
            println!("  {} {:<10} {}{code} {}", r.id, r.state, r.what, r.error.as_deref().unwrap_or(""));
            if r.state == nubo_api::views::RunState::Failed {
                for line in r.log.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev() {
                    println!("      | {line}");
                }
            }
        }
    }
    if !i.events.is_empty() {
        println!("events:");
        let t0 = i.events[0].at_ms;
        for e in &i.events {
            println!("  +{:>7.3}s {:<20} {}", (e.at_ms - t0) as f64 / 1000.0, e.stage, e.detail);
        }
    }
}

/// Polls until the instance reaches `target` (or fails), printing each
/// state change on stderr.
pub(crate) async fn wait_for(c: &Client, id: &str, target: InstanceState, limit: Duration) -> anyhow::Result<Instance> {
    let started = Instant::now();
    let mut last: Option<InstanceState> = None;
    loop {
        let i = c.instance(id).await?;
        if last != Some(i.state) {
            eprintln!("[{:>5.1}s] {} is {}", started.elapsed().as_secs_f64(), i.id, i.state.as_str());
            last = Some(i.state);
        }
        if i.state == target {
            return Ok(i);
        }
        if i.state == InstanceState::Error {
            anyhow::bail!(
                "instance {} failed: {}; see `nubo instance show {}` and its console",
                i.id,
                i.error.unwrap_or_else(|| "unknown error".into()),
                i.id
            );
        }
        if started.elapsed() > limit {
            anyhow::bail!("instance {} is still {} after {}s", i.id, i.state.as_str(), limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

const WAIT_LIMIT: Duration = Duration::from_secs(600);

pub async fn instance(cmd: InstanceCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        InstanceCmd::Run {
            template,
            image,
            vcpus,
            memory,
            disk,
            name,
            user_data,
            ports,
            key_name,
            recipe,
            recipe_version,
            params,
            metadata_tokens,
            networks,
            security_groups,
            tags,
            termination_protection,
            cdrom,
            boot,
            wait,
            hardware,
        } => {
            let user_data = match user_data {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read user-data file {}", p.display()))?,
                ),
                None => None,
            };
            let recipe = match recipe {
                Some(recipe) => Some(RunCreate {
                    recipe,
                    version: recipe_version,
                    params: crate::provision_cmds::parse_params(&params)?,
                }),
                None => None,
            };
            let c = client(conn)?;
            let metadata = metadata_tokens.map(|t| MetadataOptions { http_tokens: Some(t) });
            let hardware = hardware.request();
            let mut i = match template {
                Some(_) if !hardware.is_empty() => anyhow::bail!(
                    "--firmware, --secure-boot, --tpm and --display cannot be combined with --template (launch templates do not carry hardware); launch without --template, or set them on the image with `nubo image hardware`"
                ),
                // The flags given override the template's fields.
                Some(template) => {
                    let overrides = nubo_api::launch_templates::LaunchTemplateData {
                        image,
                        instance_type: None,
                        vcpus,
                        memory_mib: memory,
                        disk_gib: disk,
                        key_name,
                        security_groups,
                        networks,
                        user_data,
                        tags: tags.into_iter().collect(),
                        metadata,
                        ports,
                    };
                    let l = nubo_api::launch_templates::LaunchTemplateLaunch { version: None, name, overrides };
                    c.launch_from_template(&template, &l).await?
                }
                None => {
                    let req = InstanceCreate {
                        image: image.unwrap_or_else(|| "tiny".into()),
                        vcpus: vcpus.unwrap_or(1),
                        memory_mib: memory.unwrap_or(256),
                        disk_gib: disk.unwrap_or(1),
                        name,
                        user_data,
                        ports,
                        key_name,
                        recipe,
                        metadata,
                        tags: tags.into_iter().collect(),
                        networks,
                        security_groups,
                        cdrom,
                        boot,
                        hardware,
                    };
                    c.create_instance(&req).await?
                }
            };
            if termination_protection {
                let p = InstanceProtection { termination_protection: Some(true), ..Default::default() };
                i = c.protect_instance(i.id.as_str(), &p).await.with_context(|| {
                    format!("instance {} was launched, but its termination protection could not be turned on: retry with `nubo instance protect {} --termination`", i.id, i.id)
                })?;
            }
            if wait {
                i = wait_for(&c, i.id.as_str(), InstanceState::Running, WAIT_LIMIT).await?;
                // Then the launch recipe, with its log on stdout... unless
                // stdout is for JSON.
                if let Some(run) = c.runs(i.id.as_str()).await?.into_iter().last() {
                    let done = if conn.output == Format::Json {
                        loop {
                            let r = c.run(run.id.as_str(), None).await?;
                            if r.finished() {
                                break r;
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    } else {
                        crate::provision_cmds::follow_run(&c, run.id.as_str(), 0, WAIT_LIMIT).await?
                    };
                    crate::provision_cmds::report_end(&done);
                    i = c.instance(i.id.as_str()).await?;
                    if done.state != nubo_api::views::RunState::Succeeded {
                        anyhow::bail!(
                            "instance {} is running but its recipe {} failed; see `nubo run show {}`",
                            i.id,
                            done.what,
                            done.id
                        );
                    }
                }
            }
            match conn.output {
                Format::Json => crate::output::print_json(&i)?,
                Format::Table => println!("{}", i.id),
            }
            Ok(())
        }
        InstanceCmd::List { filter } => {
            let list: Vec<nubo_api::views::Instance> = {
                let c = client(conn)?;
                if filter.is_empty() {
                    c.instances().await?
                } else {
                    c.list_tagged("/api/v1/instances", &crate::tag_cmds::tag_filters(&filter)?).await?
                }
            };
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        vec![
                            i.id.to_string(),
                            i.name.clone(),
                            i.state.as_str().into(),
                            i.vcpus.to_string(),
                            i.memory_mib.to_string(),
                            i.disk_gib.to_string(),
                            i.host_name.clone().unwrap_or_default(),
                            ports_text(i),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "STATE", "VCPUS", "MEMORY_MIB", "DISK_GIB", "HOST", "PORTS"], &rows);
            })
        }
        InstanceCmd::Provision { id, recipe, version, params, detach } => {
            let c = client(conn)?;
            let req = RunCreate { recipe, version, params: crate::provision_cmds::parse_params(&params)? };
            crate::provision_cmds::provision(&c, &id, req, detach, conn.output).await
        }
        InstanceCmd::Exec { id, timeout, command } => {
            let c = client(conn)?;
            let code = crate::provision_cmds::exec(&c, &id, command, timeout).await?;
            if code != 0 {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                std::process::exit(code.clamp(1, 255));
            }
            Ok(())
        }
        InstanceCmd::Runs { id } => {
            let runs = client(conn)?.runs(&id).await?;
            emit(conn.output, &runs, |runs| {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.kind.clone(),
                            r.what.chars().take(40).collect(),
                            r.state.to_string(),
                            r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["ID", "KIND", "WHAT", "STATE", "EXIT"], &rows);
            })
        }
        InstanceCmd::Protect { id, termination, no_termination, stop, no_stop, shutdown_behavior } => {
            let p = InstanceProtection {
                termination_protection: flag(termination, no_termination),
                stop_protection: flag(stop, no_stop),
                shutdown_behavior,
            };
            if p.termination_protection.is_none() && p.stop_protection.is_none() && p.shutdown_behavior.is_none() {
                anyhow::bail!(
                    "nothing to change: give --termination or --no-termination, --stop or --no-stop, or --shutdown-behavior stop|terminate"
                );
            }
            let i = client(conn)?.protect_instance(&id, &p).await?;
            emit(conn.output, &i, print_instance)
        }
        InstanceCmd::Show { id } => {
            let i = client(conn)?.instance(&id).await?;
            emit(conn.output, &i, print_instance)
        }
        InstanceCmd::Console { id, attach: true } => crate::console_cmds::attach(&client(conn)?, &id).await,
        InstanceCmd::Console { id, attach: false } => {
            let out = client(conn)?.console(&id).await?;
            emit(conn.output, &out, |o| print!("{}", o.output))
        }
        InstanceCmd::Stop { id, wait } => {
            action(conn, &id, InstanceAction::Stop, wait.then_some(InstanceState::Stopped)).await
        }
        InstanceCmd::Start { id, wait } => {
            action(conn, &id, InstanceAction::Start, wait.then_some(InstanceState::Running)).await
        }
        InstanceCmd::Reboot { id } => action(conn, &id, InstanceAction::Reboot, None).await,
        InstanceCmd::Migrate { id, to, wait } => {
            let c = client(conn)?;
            let mut m = c.migrate_instance(&id, &nubo_api::params::InstanceMigrate { to }).await?;
            if wait {
                m = wait_migration(&c, m.id.as_str()).await?;
            }
            emit(conn.output, &m, |m| print_migrations(std::slice::from_ref(m)))
        }
        InstanceCmd::Terminate { id, wait } => {
            action(conn, &id, InstanceAction::Terminate, wait.then_some(InstanceState::Terminated)).await
        }
        InstanceCmd::Snapshot { id, name, description, wait } => {
            crate::storage_cmds::snapshot_instance(conn, &id, name, description, wait).await
        }
        InstanceCmd::Cdrom { cmd } => {
            let c = client(conn)?;
            let i = match cmd {
                crate::cli::CdromCmd::Eject { id } => c.eject_cdrom(&id).await?,
                crate::cli::CdromCmd::Insert { id, iso } => c.insert_cdrom(&id, &iso).await?,
            };
            emit(conn.output, &i, print_instance)
        }
        InstanceCmd::BootOrder { id, order } => {
            let i = client(conn)?.set_boot_order(&id, &order).await?;
            emit(conn.output, &i, print_instance)
        }
        InstanceCmd::Resize { id, vcpus, memory } => {
            if vcpus.is_none() && memory.is_none() {
                anyhow::bail!("nothing to change: give --vcpus N and/or --memory MIB");
            }
            let p = nubo_api::params::InstanceResize { vcpus, memory_mib: memory };
            let i = client(conn)?.resize_instance(&id, &p).await?;
            emit(conn.output, &i, print_instance)
        }
        InstanceCmd::Rebuild { id, image, wait } => {
            let c = client(conn)?;
            let mut i = c.rebuild_instance(&id, &nubo_api::params::InstanceRebuild { image }).await?;
            if wait && i.desired_state == nubo_api::views::DesiredInstanceState::Running {
                // It still runs on its old disk until its host stops it:
                // wait for the host to have made the new disk, then for it
                // to run again.
                let asked = i.events.iter().rposition(|e| e.stage == "rebuild").unwrap_or(0);
                let started = Instant::now();
                loop {
                    i = c.instance(&id).await?;
                    if i.events.iter().skip(asked).any(|e| e.stage == "root_disk_removed") {
                        break;
                    }
                    if i.state == InstanceState::Error || started.elapsed() > WAIT_LIMIT {
                        anyhow::bail!(
                            "instance {id} is {} and its host has not made the new root disk yet: see `nubo instance show {id}`",
                            i.state.as_str()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                i = wait_for(&c, &id, InstanceState::Running, WAIT_LIMIT).await?;
            }
            emit(conn.output, &i, print_instance)
        }
        InstanceCmd::Restore { id, backup } => crate::restore_cmds::restore_in_place(conn, &id, backup).await,
        InstanceCmd::Revert { id, snapshot } => {
            let i = client(conn)?.revert_instance(&id, &nubo_api::params::InstanceRevert { snapshot }).await?;
            emit(conn.output, &i, print_instance)
        }
    }
}

async fn action(conn: &Conn, id: &str, what: InstanceAction, wait: Option<InstanceState>) -> anyhow::Result<()> {
    let c = client(conn)?;
    let mut i = c.instance_action(id, what).await?;
    if let Some(target) = wait {
        i = wait_for(&c, id, target, WAIT_LIMIT).await?;
    }
    emit(conn.output, &i, |i| println!("{} {}", i.id, i.state.as_str()))
}

fn print_migrations(ms: &[Migration]) {
    let ms_text = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.instance_id.to_string(),
                format!("{} -> {}", m.source_host, m.target_host),
                m.state.to_string(),
                ms_text(m.downtime_ms),
                ms_text(m.total_ms),
                m.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["MIGRATION", "INSTANCE", "HOSTS", "STATE", "DOWNTIME", "TOTAL", "ERROR"], &rows);
}

/// Polls a migration until it ends, with its state changes on stderr.
async fn wait_migration(c: &nubo_client::Client, id: &str) -> anyhow::Result<Migration> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let m = c.migration(id).await?;
        if m.state.as_str() != last {
            eprintln!("[{:>5.1}s] migration {id} is {}", started.elapsed().as_secs_f64(), m.state);
            last = m.state.to_string();
        }
        match m.state.as_str() {
            "completed" => return Ok(m),
            "failed" => anyhow::bail!("migration {id} failed: {}", m.error.unwrap_or_default()),
            _ => {}
        }
        if started.elapsed() > WAIT_LIMIT {
            anyhow::bail!("migration {id} did not end within {} s", WAIT_LIMIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn host(cmd: HostCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        HostCmd::List => {
            let hosts = client(conn)?.hosts().await?;
            emit(conn.output, &hosts, |hosts| {
                let rows: Vec<Vec<String>> = hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.id.to_string(),
                            h.name.clone(),
                            h.state.as_str().to_string(),
                            h.accel.clone(),
                            format!("{}/{}", h.used_vcpus, h.schedulable_vcpus),
                            format!("{}/{}", h.used_memory_mib, h.memory_mib),
                            format!("{}/{}", h.used_disk_gib, h.disk_gib),
                            h.instances.to_string(),
                            match &h.underlay {
                                Some(u) => format!("bridged ({u})"),
                                None => "user-mode".to_string(),
                            },
                        ]
                    })
                    .collect();
                table(
                    &["ID", "NAME", "STATE", "ACCEL", "VCPUS", "MEMORY_MIB", "DISK_GIB", "INSTANCES", "NETWORKING"],
                    &rows,
                );
            })
        }
        HostCmd::JoinToken => {
            let t = client(conn)?.join_token().await?;
            emit(conn.output, &t, |t| println!("{}", t.token))
        }
        HostCmd::Drain { host } => client(conn)?.host_action::<()>(&host, "drain").await.map_err(Into::into),
        HostCmd::Enable { host } => client(conn)?.host_action::<()>(&host, "enable").await.map_err(Into::into),
        HostCmd::Evacuate { host, wait, from_backups: true } => {
            crate::restore_cmds::evacuate_from_backups(conn, &host, wait).await
        }
        HostCmd::Evacuate { host, wait, from_backups: false } => {
            let c = client(conn)?;
            let mut started: Vec<Migration> = c.host_action(&host, "evacuate").await?;
            if wait {
                let mut done = Vec::new();
                for m in &started {
                    done.push(wait_migration(&c, m.id.as_str()).await?);
                }
                started = done;
            }
            emit(conn.output, &started, |ms| print_migrations(ms))
        }
        HostCmd::Migrations => {
            let ms = client(conn)?.migrations().await?;
            emit(conn.output, &ms, |ms| print_migrations(ms))
        }
    }
}

pub async fn image(cmd: ImageCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        ImageCmd::List { filter } => crate::storage_cmds::list_images(conn, &filter).await,
        ImageCmd::Import {
            file,
            sha256,
            name,
            format,
            min_disk,
            min_memory,
            public,
            kernel_image,
            description,
            hardware,
        } => {
            let source = file.to_string_lossy();
            if source.starts_with("http://") || source.starts_with("https://") {
                if hardware.request() != nubo_api::hardware::HardwareRequest::default() {
                    anyhow::bail!(
                        "a URL import takes no hardware flags yet: import it, then set them with `nubo image hardware NAME --firmware ...`"
                    );
                }
                let opts = crate::image_cmds::UrlImport {
                    url: source.into_owned(),
                    sha256,
                    name,
                    format,
                    min_disk,
                    min_memory,
                    public,
                    kernel_image,
                    description,
                };
                return crate::image_cmds::import_url(conn, opts).await;
            }
            if sha256.is_some() {
                anyhow::bail!("--sha256 is for imports from a URL; an upload's checksum is computed from the file");
            }
            let Some(name) = name else {
                anyhow::bail!("give the image a name: nubo image import FILE --name NAME");
            };
            let opts = crate::storage_cmds::ImportOptions {
                name,
                format,
                min_disk,
                min_memory,
                public,
                kernel_image,
                description,
                hardware: hardware.request(),
            };
            crate::storage_cmds::import_image(conn, &file, opts).await
        }
        ImageCmd::Hardware { image, change } => {
            let image = client(conn)?.set_image_hardware(&image, &change.request()).await?;
            emit(conn.output, &image, |i| println!("{} {}", i.id, i.hardware))
        }
        ImageCmd::Show { image } => crate::storage_cmds::show_image(conn, &image).await,
        ImageCmd::Delete { image } => {
            client(conn)?.delete_image(&image).await?;
            println!("deleted {image}");
            Ok(())
        }
        ImageCmd::Build { name, image_name: Some(image), local, public, packages, cache, data_dir, force } => {
            let build = crate::image_cmds::Build { base: name, image, packages, public };
            if local {
                let cache =
                    cache.unwrap_or_else(|| data_dir.unwrap_or_else(crate::daemon::default_data_dir).join("images"));
                crate::image_cmds::build_local_and_upload(conn, build, cache, force).await
            } else {
                crate::image_cmds::build_in_cloud(conn, build).await
            }
        }
        ImageCmd::Build { name, image_name: None, packages, cache, data_dir, force, .. } => {
            let cache =
                cache.unwrap_or_else(|| data_dir.unwrap_or_else(crate::daemon::default_data_dir).join("images"));
            let started = Instant::now();
            let options = nubo_image::BuildOptions { packages };
            let built = tokio::task::spawn_blocking(move || {
                let images = nubo_image::ImageCache::new(cache);
                let mut progress = |msg: &str| eprintln!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
                if force {
                    images.build_with(&name, &options, &mut progress)
                } else {
                    images.ensure_with(&name, &options, &mut progress)
                }
            })
            .await??;
            let extras = if built.extra_packages.is_empty() {
                String::new()
            } else {
                format!(" (extra packages: {})", built.extra_packages.join(", "))
            };
            println!("{} sha256:{} in {}{extras}", built.name, built.sha256, built.dir.display());
            if !built.extra_packages.is_empty() {
                eprintln!(
                    "note: this build is in the local image cache only; a cloud's hosts never see it: give --name \
                     IMAGE to build into the cloud's image registry"
                );
            }
            Ok(())
        }
    }
}
