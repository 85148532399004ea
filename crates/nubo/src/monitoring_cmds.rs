//! Client commands for monitoring: metric charts drawn in the terminal
//! (block characters, eight levels per row), metric listings, health
//! checks with their history, alerts and rules, and the event log.

use crate::cli::Conn;
use crate::cli::{AlertCmd, AlertRuleCmd, CheckCmd, EventCmd, MetricsCmd};
use crate::client_cmds::client;
use crate::output::{emit, table};
use nubo_api::monitoring::{AlertRuleCreate, CheckCreate, MetricPoint};

const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A bar chart of `points`, `height` rows high, one column per point
/// (resampled to at most `width`), with the y range on the left.
pub fn chart(points: &[MetricPoint], height: usize, width: usize) -> String {
    if points.is_empty() {
        return "(no data in this range yet)\n".into();
    }
    let cols: Vec<f64> = if points.len() <= width {
        points.iter().map(|p| p.value).collect()
    } else {
        // Average groups of neighbours into `width` columns.
        (0..width)
            .map(|i| {
                let a = i * points.len() / width;
                let b = ((i + 1) * points.len() / width).max(a + 1);
                points[a..b].iter().map(|p| p.value).sum::<f64>() / (b - a) as f64
            })
            .collect()
    };
    let max = cols.iter().cloned().fold(f64::MIN, f64::max);
    let min = cols.iter().cloned().fold(f64::MAX, f64::min).min(0.0);
    let span = if max > min { max - min } else { 1.0 };
    let label = |v: f64| format!("{v:>10.1} ");
    let mut out = String::new();
    for row in (0..height).rev() {
        out.push_str(&if row == height - 1 {
            label(max)
        } else if row == 0 {
            label(min)
        } else {
            " ".repeat(11)
        });
        out.push('│');
        for v in &cols {
            let eighths = (((v - min) / span) * (height * 8) as f64).round() as usize;
            let full = row * 8;
            out.push(if eighths >= full + 8 {
                '█'
            } else if eighths > full {
                BLOCKS[eighths - full - 1]
            } else {
                ' '
            });
        }
        out.push('\n');
    }
    out.push_str(&" ".repeat(11));
    out.push('└');
    out.push_str(&"─".repeat(cols.len()));
    out.push('\n');
    out
}

fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, (day / 60) % 60, day % 60)
}

pub async fn metrics(cmd: MetricsCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        MetricsCmd::Show { resource, metric, since, step } => {
            let c = client(conn)?;
            let s = c.metric_series(&resource, &metric, &since, step.as_deref()).await?;
            emit(conn.output, &s, |s| {
                println!(
                    "{} of {} over the last {since} (step {} s, {} points, {} UTC)",
                    s.metric,
                    s.resource,
                    s.step_ms / 1000,
                    s.points.len(),
                    clock(s.to_ms)
                );
                print!("{}", chart(&s.points, 8, 72));
                if let (Some(first), Some(last)) = (s.points.first(), s.points.last()) {
                    println!("{:>12}{} .. {}   last {:.2}", "", clock(first.at_ms), clock(last.at_ms), last.value);
                }
            })
        }
        MetricsCmd::List { resource } => {
            let list = client(conn)?.metric_latest(&resource).await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> =
                    list.iter().map(|m| vec![m.metric.clone(), format!("{:.3}", m.value), clock(m.at_ms)]).collect();
                table(&["METRIC", "VALUE", "AT (UTC)"], &rows);
            })
        }
    }
}

fn parse_secs(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("'{s}' is not a duration like 30s, 5m, 1h or 2d"))?;
    Ok(n * match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("'{s}' is not a duration like 30s, 5m, 1h or 2d"),
    })
}

pub async fn check(cmd: CheckCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        CheckCmd::Create {
            target,
            name,
            tcp,
            http,
            path,
            expect,
            liveness,
            interval,
            retry_interval,
            max_attempts,
            timeout,
            plugin,
        } => {
            let kind = match (tcp, http, liveness, plugin.is_empty()) {
                (Some(_), None, false, true) => "tcp",
                (None, Some(_), false, true) => "http",
                (None, None, true, true) => "liveness",
                (None, None, false, false) => "plugin",
                _ => anyhow::bail!("give exactly one of --tcp PORT, --http PORT, --liveness, or a plugin after `--`"),
            };
            let req = CheckCreate {
                name,
                target,
                kind: kind.into(),
                port: tcp.or(http),
                path,
                expect_status: expect,
                command: plugin,
                interval_secs: interval,
                retry_interval_secs: retry_interval,
                max_attempts,
                timeout_secs: timeout,
            };
            let c = client(conn)?.create_check(&req).await?;
            emit(conn.output, &c, |c| println!("{}", c.id))
        }
        CheckCmd::List => {
            let list = client(conn)?.checks().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.to_string(),
                            c.name.clone(),
                            c.target.clone(),
                            c.kind.clone(),
                            format!("{} {}", c.state, c.state_type),
                            c.output.chars().take(60).collect(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "TARGET", "KIND", "STATE", "OUTPUT"], &rows);
            })
        }
        CheckCmd::Show { id } => {
            let c = client(conn)?.check(&id).await?;
            emit(conn.output, &c, |c| {
                for (k, v) in [
                    ("id", c.id.to_string()),
                    ("name", c.name.clone()),
                    ("target", c.target.clone()),
                    ("kind", c.kind.clone()),
                    ("spec", c.spec.to_string()),
                    ("state", format!("{} {} (attempt {}/{})", c.state, c.state_type, c.attempt, c.max_attempts)),
                    ("output", c.output.clone()),
                    ("perfdata", c.perfdata.clone()),
                    ("interval", format!("{} s (retry {} s)", c.interval_secs, c.retry_interval_secs)),
                ] {
                    println!("{k:<9} {v}");
                }
                if !c.history.is_empty() {
                    println!("history:");
                    for h in &c.history {
                        println!("  {} {:<8} {:<4} {}", clock(h.at_ms), h.state, h.state_type, h.output);
                    }
                }
            })
        }
        CheckCmd::Delete { id } => {
            client(conn)?.delete_check(&id).await?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

pub async fn alert(cmd: AlertCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        AlertCmd::List { all } => {
            let list = client(conn)?.alerts(all).await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.to_string(),
                            a.rule.clone(),
                            a.state.to_string(),
                            a.acknowledged_by.clone().unwrap_or_default(),
                            a.summary.chars().take(70).collect(),
                        ]
                    })
                    .collect();
                table(&["ID", "RULE", "STATE", "ACKED BY", "SUMMARY"], &rows);
            })
        }
        AlertCmd::Show { id } => {
            let a = client(conn)?.alert(&id).await?;
            emit(conn.output, &a, |a| {
                println!("{} {} ({}) {}", a.id, a.state, a.rule, a.summary);
                for n in &a.notifications {
                    println!(
                        "  notification {} to {}: {} after {} attempt(s) {}",
                        n.kind,
                        n.url,
                        n.state,
                        n.attempts,
                        n.last_error.as_deref().unwrap_or("")
                    );
                }
            })
        }
        AlertCmd::Ack { id } => {
            let a = client(conn)?.acknowledge_alert(&id).await?;
            emit(conn.output, &a, |a| {
                println!("{} acknowledged by {}", a.id, a.acknowledged_by.as_deref().unwrap_or("?"))
            })
        }
        AlertCmd::Silence { id, duration } => {
            let a = client(conn)?.silence_alert(&id, parse_secs(&duration)?).await?;
            emit(conn.output, &a, |a| {
                println!("{} silenced until {}", a.id, a.silenced_until_ms.map(clock).unwrap_or_default())
            })
        }
        AlertCmd::Rule(AlertRuleCmd::Create {
            name,
            target,
            metric,
            above,
            below,
            duration,
            check_state,
            check,
            webhook,
        }) => {
            let for_secs = duration.as_deref().map(parse_secs).transpose()?;
            let req = if let Some(state) = check_state {
                AlertRuleCreate {
                    name,
                    kind: "check".into(),
                    target,
                    metric: None,
                    op: None,
                    threshold: None,
                    for_secs,
                    check_id: check.map(|c| c.parse()).transpose().map_err(|e| anyhow::anyhow!("--check: {e}"))?,
                    min_state: Some(state.to_uppercase()),
                    webhook_url: webhook,
                }
            } else {
                let (op, threshold) = match (above, below) {
                    (Some(t), None) => (">=", t),
                    (None, Some(t)) => ("<=", t),
                    _ => anyhow::bail!("a metric rule needs --above X or --below X (or use --check-state)"),
                };
                AlertRuleCreate {
                    name,
                    kind: "metric".into(),
                    target,
                    metric: Some(metric.ok_or_else(|| anyhow::anyhow!("a metric rule needs --metric"))?),
                    op: Some(op.into()),
                    threshold: Some(threshold),
                    for_secs,
                    check_id: None,
                    min_state: None,
                    webhook_url: webhook,
                }
            };
            let r = client(conn)?.create_alert_rule(&req).await?;
            emit(conn.output, &r, |r| println!("{}", r.id))
        }
        AlertCmd::Rule(AlertRuleCmd::List) => {
            let list = client(conn)?.alert_rules().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        let cond = match r.kind.as_str() {
                            "metric" => format!(
                                "{} {} {} for {} s",
                                r.metric.as_deref().unwrap_or("?"),
                                r.op.as_deref().unwrap_or("?"),
                                r.threshold.unwrap_or_default(),
                                r.for_secs
                            ),
                            _ => format!("check state >= {}", r.min_state.map_or("CRITICAL", |s| s.as_str())),
                        };
                        vec![
                            r.id.to_string(),
                            r.name.clone(),
                            r.target.clone(),
                            cond,
                            r.webhook_url.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "TARGET", "CONDITION", "WEBHOOK"], &rows);
            })
        }
        AlertCmd::Rule(AlertRuleCmd::Delete { id }) => {
            client(conn)?.delete_alert_rule(&id).await?;
            println!("deleted {id}");
            Ok(())
        }
    }
}

pub async fn event(cmd: EventCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        EventCmd::List => {
            let list = client(conn)?.events().await?;
            emit(conn.output, &list, |list| {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|e| {
                        vec![clock(e.at_ms), e.kind.clone(), e.resource.clone(), e.message.chars().take(90).collect()]
                    })
                    .collect();
                table(&["AT (UTC)", "KIND", "RESOURCE", "MESSAGE"], &rows);
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts() {
        let pts: Vec<MetricPoint> = (0..10).map(|i| MetricPoint { at_ms: i, value: i as f64 * 10.0 }).collect();
        let c = chart(&pts, 4, 72);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].contains("90.0") && lines[3].contains("0.0"), "{c}");
        assert!(lines[0].ends_with('█'), "the highest point reaches the top: {c}");
        assert_eq!(chart(&[], 4, 10), "(no data in this range yet)\n");
        let many: Vec<MetricPoint> = (0..1000).map(|i| MetricPoint { at_ms: i, value: 1.0 }).collect();
        assert_eq!(chart(&many, 2, 50).lines().next().unwrap().chars().count(), 11 + 1 + 50);
        assert_eq!(parse_secs("5m").unwrap(), 300);
        assert!(parse_secs("5x").is_err());
    }
}
