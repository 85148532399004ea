//! `nubo lb`: load balancers through the API (create, list, show with
//! each backend's health and counters, delete), and `nubo lb serve`, the
//! data plane on its own from a configuration file (`nubo_lb::serve`).

use crate::cli::Conn;
use crate::cli::LbCmd;
use crate::client_cmds::client;
use crate::output::{emit, table};
use anyhow::Context;
use nubo_api::ids::InstanceId;
use nubo_api::lb::{LbHealthCheck, LoadBalancer, LoadBalancerCreate};
use std::time::{Duration, Instant};

/// How long `create --wait` waits for the host to start the balancer.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

fn clock(ms: i64) -> String {
    let day = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, (day / 60) % 60, day % 60)
}

fn check_text(lb: &LoadBalancer) -> String {
    let h = &lb.health_check;
    let what = match (lb.protocol.as_str(), &h.path) {
        ("http", p) => format!(
            "GET {} expecting {}",
            p.as_deref().unwrap_or("/"),
            h.expect_status.map(|s| s.to_string()).unwrap_or_else(|| "2xx/3xx".into())
        ),
        _ => "TCP connect".into(),
    };
    format!(
        "{what} every {} s (timeout {} s, down after {} failures, up after {} passes)",
        h.interval_secs.unwrap_or(5),
        h.timeout_secs.unwrap_or(2),
        h.unhealthy_threshold.unwrap_or(1),
        h.healthy_threshold.unwrap_or(1)
    )
}

fn print_lb(lb: &LoadBalancer) {
    println!("{} ({}) {} {}", lb.name, lb.id, lb.protocol, lb.algorithm);
    println!("listen      {} on host {}", lb.listen, lb.host_id);
    let started = lb.started_at_ms.map(|t| format!(" since {}", clock(t))).unwrap_or_default();
    println!("state       {}{started}{}", lb.state, lb.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default());
    let mut targets: Vec<String> = lb.targets.iter().map(|t| t.to_string()).collect();
    if let Some(g) = &lb.group {
        targets.push(format!("group {g}"));
    }
    println!(
        "targets     {} on guest port {}",
        if targets.is_empty() { "-".into() } else { targets.join(", ") },
        lb.port
    );
    println!("check       {}", check_text(lb));
    let rows: Vec<Vec<String>> = lb
        .backends
        .iter()
        .map(|b| {
            vec![
                b.instance_id.clone(),
                b.address.clone().unwrap_or_else(|| "-".into()),
                b.weight.to_string(),
                b.health.to_string(),
                b.requests.to_string(),
                b.errors.to_string(),
                b.in_flight.to_string(),
                b.cpu_percent.map(|c| format!("{c:.0}%")).unwrap_or_else(|| "-".into()),
                // The last error is history once the backend is up again.
                if b.health == nubo_api::lb::BackendHealth::Up {
                    String::new()
                } else {
                    b.last_error.clone().unwrap_or_default()
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        table(
            &["BACKEND", "ADDRESS", "WEIGHT", "HEALTH", "REQUESTS", "ERRORS", "IN_FLIGHT", "CPU", "LAST_ERROR"],
            &rows,
        );
    }
}

/// Polls until the balancer's host runs it, printing each state on stderr.
async fn wait_active(c: &nubo_client::Client, id: &str) -> anyhow::Result<LoadBalancer> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let lb = c.lb(id).await?;
        if lb.state.as_str() != last {
            eprintln!("[{:>5.1}s] {} is {}", started.elapsed().as_secs_f64(), lb.id, lb.state);
            last = lb.state.to_string();
        }
        match lb.state.as_str() {
            "active" => return Ok(lb),
            "error" => anyhow::bail!(
                "load balancer {} could not start on host {}: {}",
                lb.id,
                lb.host_id,
                lb.error.as_deref().unwrap_or("no reason given; see the agent's log")
            ),
            _ => {}
        }
        if started.elapsed() > WAIT_LIMIT {
            anyhow::bail!(
                "load balancer {} is still {} after {} s: is the agent of host {} running? (`nubo host list`)",
                lb.id,
                lb.state,
                WAIT_LIMIT.as_secs(),
                lb.host_id
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn lb(cmd: LbCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        LbCmd::Create {
            name,
            port,
            protocol,
            algorithm,
            targets,
            group,
            weights,
            check_path,
            check_interval,
            check_timeout,
            check_status,
            healthy_threshold,
            unhealthy_threshold,
            network,
            floating_ip,
            wait,
        } => {
            let targets = targets
                .iter()
                .map(|t| {
                    t.parse::<InstanceId>()
                        .map_err(|e| anyhow::anyhow!("--target {t}: {e} (give instance ids, see `nubo instance list`)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let any_check = check_path.is_some()
                || check_interval.is_some()
                || check_timeout.is_some()
                || check_status.is_some()
                || healthy_threshold.is_some()
                || unhealthy_threshold.is_some();
            let body = LoadBalancerCreate {
                name,
                protocol,
                algorithm: Some(algorithm),
                port,
                targets,
                group,
                weights: weights.into_iter().collect(),
                health_check: any_check.then_some(LbHealthCheck {
                    path: check_path,
                    interval_secs: check_interval,
                    timeout_secs: check_timeout,
                    expect_status: check_status,
                    healthy_threshold,
                    unhealthy_threshold,
                }),
                network,
                floating_ip,
            };
            let c = client(conn)?;
            let mut lb = c.create_lb(&body).await?;
            eprintln!("{} created on host {}, listening on {}", lb.id, lb.host_id, lb.listen);
            if wait {
                lb = wait_active(&c, lb.id.as_str()).await?;
            }
            emit(conn.output, &lb, print_lb)
        }
        LbCmd::List => {
            let list = client(conn)?.lbs().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|lb| {
                        let up = lb.backends.iter().filter(|b| b.health == nubo_api::lb::BackendHealth::Up).count();
                        vec![
                            lb.id.to_string(),
                            lb.name.clone(),
                            lb.protocol.clone(),
                            lb.algorithm.clone(),
                            lb.listen.clone(),
                            lb.state.to_string(),
                            format!("{up}/{}", lb.backends.len()),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "PROTOCOL", "ALGORITHM", "LISTEN", "STATE", "UP/BACKENDS"], &rows);
            })
        }
        LbCmd::Show { lb } => {
            let lb = client(conn)?.lb(&lb).await?;
            emit(conn.output, &lb, print_lb)
        }
        LbCmd::Delete { lb } => {
            client(conn)?.delete_lb(&lb).await?;
            println!("deleted {lb}");
            Ok(())
        }
        LbCmd::Serve { config } => {
            nubo_lb::serve::run(&config).await.with_context(|| format!("nubo lb serve --config {}", config.display()))
        }
    }
}
