//! Provisioning commands: key pairs, the recipe catalogue, and runs
//! (recipes and commands inside instances), with live logs on stdout and
//! progress on stderr.

use crate::cli::Conn;
use crate::cli::{Format, KeypairCmd, RecipeCmd, RunCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::Context;
use nubo_api::params::{KeypairCreate, RecipeCreate, RunCreate};
use nubo_api::views::Run;
use nubo_client::Client;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// `NAME=VALUE` pairs from the command line.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').with_context(|| format!("--param '{p}' is not NAME=VALUE"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            anyhow::bail!("--param {k} is given twice");
        }
    }
    Ok(out)
}

/// Reads a recipe file: TOML (`.toml` or anything else) or JSON (`.json`).
pub fn read_recipe(path: &Path) -> anyhow::Result<RecipeCreate> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read recipe file {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid JSON recipe", path.display()))
    } else {
        toml::from_str(&text).with_context(|| {
            format!("{} is not a valid TOML recipe (name, version, kind, body, [[params]])", path.display())
        })
    }
}

pub async fn keypair(cmd: KeypairCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        KeypairCmd::Create { name, private_key_file } => {
            if let Some(f) = &private_key_file {
                if f.exists() {
                    anyhow::bail!("{} exists; choose another --private-key-file", f.display());
                }
            }
            let created = client(conn)?.create_keypair(&KeypairCreate { name, public_key: None }).await?;
            let private = created.private_key.clone().context("the server returned no private key")?;
            match &private_key_file {
                Some(f) => {
                    nubo_agent::identity::write_private(f, &private)
                        .with_context(|| format!("cannot write the private key to {}", f.display()))?;
                    eprintln!("private key saved to {} (mode 0600); it cannot be shown again", f.display());
                    emit(conn.output, &created, |c| println!("{} {}", c.keypair.name, c.keypair.fingerprint))
                }
                None => match conn.output {
                    Format::Json => crate::output::print_json(&created),
                    Format::Table => {
                        print!("{private}");
                        eprintln!(
                            "{} {}: save the private key above; it cannot be shown again",
                            created.keypair.name, created.keypair.fingerprint
                        );
                        Ok(())
                    }
                },
            }
        }
        KeypairCmd::Import { name, public_key_file } => {
            let key = std::fs::read_to_string(&public_key_file)
                .with_context(|| format!("cannot read {}", public_key_file.display()))?;
            let created = client(conn)?.create_keypair(&KeypairCreate { name, public_key: Some(key) }).await?;
            emit(conn.output, &created, |c| println!("{} {}", c.keypair.name, c.keypair.fingerprint))
        }
        KeypairCmd::List { filter } => {
            let c = client(conn)?;
            let list: Vec<nubo_api::views::Keypair> = if filter.is_empty() {
                c.keypairs().await?
            } else {
                c.list_tagged("/api/v1/keypairs", &crate::tag_cmds::tag_filters(&filter)?).await?
            };
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> =
                    list.iter().map(|k| vec![k.name.clone(), k.key_type.clone(), k.fingerprint.clone()]).collect();
                table(&["NAME", "TYPE", "FINGERPRINT"], &rows);
            })
        }
        KeypairCmd::Delete { name } => {
            client(conn)?.delete_keypair(&name).await?;
            eprintln!("deleted key pair {name}");
            Ok(())
        }
    }
}

pub async fn recipe(cmd: RecipeCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        RecipeCmd::List => {
            let list = client(conn)?.recipes().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.name.clone(),
                            r.version.clone(),
                            r.kind.clone(),
                            r.source.clone(),
                            r.params
                                .iter()
                                .map(|p| match &p.default {
                                    Some(d) => format!("{}={d}", p.name),
                                    None => format!("{}=(required)", p.name),
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                                .chars()
                                .take(60)
                                .collect(),
                        ]
                    })
                    .collect();
                table(&["NAME", "VERSION", "KIND", "SOURCE", "PARAMS"], &rows);
            })
        }
        RecipeCmd::Show { name, version } => {
            let r = client(conn)?.recipe(&name, version.as_deref()).await?;
            emit(conn.output, &r, |r| {
                println!("name        {}@{}", r.name, r.version);
                println!("kind        {}", r.kind);
                println!("source      {}", r.source);
                println!("timeout     {} s", r.timeout_secs);
                println!("description {}", r.description);
                println!("params:");
                for p in &r.params {
                    let d = p.default.as_deref().map(|d| format!("default {d:?}")).unwrap_or_else(|| "required".into());
                    println!("  {:<12} {d}  {}", p.name, p.description);
                }
                println!("body:\n{}", r.body);
            })
        }
        RecipeCmd::Create { file } => {
            let r = read_recipe(&file)?;
            let created = client(conn)?.create_recipe(&r).await?;
            emit(conn.output, &created, |r| println!("{}@{}", r.name, r.version))
        }
        RecipeCmd::Delete { name, version } => {
            client(conn)?.delete_recipe(&name, version.as_deref()).await?;
            eprintln!("deleted recipe {name}");
            Ok(())
        }
    }
}

pub async fn run(cmd: RunCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        RunCmd::Show { id } => {
            let r = client(conn)?.run(&id, None).await?;
            emit(conn.output, &r, print_run)
        }
        RunCmd::Logs { id, follow } => {
            let c = client(conn)?;
            if follow {
                let r = follow_run(&c, &id, 0, Duration::from_secs(24 * 3600)).await?;
                report_end(&r);
            } else {
                let r = c.run(&id, Some(0)).await?;
                print!("{}", r.log);
            }
            Ok(())
        }
    }
}

pub fn print_run(r: &Run) {
    println!("id          {}", r.id);
    println!("instance    {}", r.instance_id);
    println!("{:<11} {}", r.kind, r.what);
    if !r.params.is_empty() {
        let p: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("params      {}", p.join(" "));
    }
    println!("state       {}", r.state);
    if let Some(c) = r.exit_code {
        println!("exit_code   {c}");
    }
    if let Some(e) = &r.error {
        println!("error       {e}");
    }
    if let (Some(s), Some(f)) = (r.started_at_ms, r.finished_at_ms) {
        println!("took        {:.1} s", (f - s) as f64 / 1000.0);
    }
    println!("log (tail):");
    for line in r.log.lines() {
        println!("  {line}");
    }
}

/// Prints the run's log from `from` as it grows, until the run ends (or
/// `limit` passes); returns the finished run.
pub async fn follow_run(c: &Client, id: &str, from: u64, limit: Duration) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut offset = from;
    let mut state = String::new();
    loop {
        let r = c.run(id, Some(offset)).await?;
        if !r.log.is_empty() {
            print!("{}", r.log);
            let _ = std::io::stdout().flush();
        }
        if r.state.as_str() != state {
            eprintln!("[{:>5.1}s] run {} is {}", started.elapsed().as_secs_f64(), r.id, r.state);
            state = r.state.to_string();
        }
        offset = r.log_next;
        if r.finished() {
            return Ok(r);
        }
        if started.elapsed() > limit {
            anyhow::bail!(
                "run {id} is still {} after {} s; follow it with `nubo run logs -f {id}`",
                r.state,
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One line on stderr saying how a run ended.
pub fn report_end(r: &Run) {
    let code = r.exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
    let why = r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    eprintln!("run {} {}{code}{why}", r.id, r.state);
}

/// Starts a recipe run in an instance; follows it unless `detach`.
pub async fn provision(
    c: &Client,
    instance: &str,
    recipe: RunCreate,
    detach: bool,
    output: Format,
) -> anyhow::Result<()> {
    let run = c.provision(instance, &recipe).await?;
    if detach {
        return emit(output, &run, |r| println!("{}", r.id));
    }
    eprintln!("run {} of {} in {instance}", run.id, run.what);
    let done = follow_run(c, run.id.as_str(), 0, Duration::from_secs(24 * 3600)).await?;
    report_end(&done);
    if output == Format::Json {
        crate::output::print_json(&done)?;
    }
    if done.state != nubo_api::views::RunState::Succeeded {
        anyhow::bail!("recipe {} failed in {instance}; see `nubo run show {}`", done.what, done.id);
    }
    Ok(())
}

/// Runs a command through the guest agent and prints its output; returns
/// its exit code.
pub async fn exec(c: &Client, instance: &str, command: Vec<String>, timeout: u64) -> anyhow::Result<i32> {
    let run = c.exec(instance, &nubo_api::params::ExecCreate { command, timeout_secs: Some(timeout) }).await?;
    let done = follow_run(c, run.id.as_str(), 0, Duration::from_secs(timeout + 300)).await?;
    match (done.exit_code, &done.error) {
        (Some(code), _) => Ok(code),
        (None, Some(e)) => anyhow::bail!("the command did not complete: {e}"),
        (None, None) => anyhow::bail!("the command ended without an exit code"),
    }
}
