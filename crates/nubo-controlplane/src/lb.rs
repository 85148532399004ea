//! Load balancers' state: rows in `load_balancers` (migration 0009), the
//! host port each one listens on (from the host's forwarded-port range,
//! shared with instances' forwards), which instances are its backends
//! right now (its explicit targets and its group's members that should
//! run on its host and forward its guest port), the host's desired
//! balancers, and the host's reports of each backend's health and counters.

use crate::store::{now_ms, Store};
use nubo_api::agent::PowerState;
use nubo_api::ids::{InstanceId, LoadBalancerId};
use nubo_api::lb::BackendHealth;
use nubo_api::lb::{ActualBalancer, DesiredBackend, DesiredBalancer, LbBackend, LbHealthCheck, LoadBalancerCreate};
use nubo_api::views::InstanceState;
use sqlx::FromRow;
use std::collections::BTreeMap;

/// Most explicit targets one balancer takes.
pub const MAX_TARGETS: usize = 100;
/// Weights are 1 to this.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, FromRow)]
pub struct LbRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub protocol: String,
    pub algorithm: String,
    pub guest_port: i64,
    pub targets_json: String,
    pub group_name: Option<String>,
    pub weights_json: String,
    pub health_json: String,
    pub host_id: String,
    pub host_port: i64,
    pub actual_json: Option<String>,
    pub reported_at_ms: Option<i64>,
    pub created_at_ms: i64,
    /// Set for a balancer on a private network: the network, and the
    /// balancer's own address and MAC there.
    pub network_id: Option<String>,
    pub address: Option<String>,
    pub mac: Option<String>,
}

impl LbRow {
    pub fn targets(&self) -> Vec<InstanceId> {
        serde_json::from_str(&self.targets_json).unwrap_or_default()
    }

    pub fn weights(&self) -> BTreeMap<String, u32> {
        serde_json::from_str(&self.weights_json).unwrap_or_default()
    }

    pub fn health(&self) -> LbHealthCheck {
        serde_json::from_str(&self.health_json).unwrap_or_else(|_| fill_health(None, &self.protocol))
    }

    pub fn actual(&self) -> Option<ActualBalancer> {
        self.actual_json.as_deref().and_then(|a| serde_json::from_str(a).ok())
    }
}

/// The health check with every default filled in.
pub fn fill_health(h: Option<&LbHealthCheck>, protocol: &str) -> LbHealthCheck {
    let h = h.cloned().unwrap_or(LbHealthCheck {
        path: None,
        interval_secs: None,
        timeout_secs: None,
        expect_status: None,
        healthy_threshold: None,
        unhealthy_threshold: None,
    });
    let interval = h.interval_secs.unwrap_or(5);
    LbHealthCheck {
        path: if protocol == "http" { Some(h.path.unwrap_or_else(|| "/".into())) } else { None },
        interval_secs: Some(interval),
        timeout_secs: Some(h.timeout_secs.unwrap_or(interval.min(2))),
        expect_status: h.expect_status,
        healthy_threshold: Some(h.healthy_threshold.unwrap_or(1)),
        unhealthy_threshold: Some(h.unhealthy_threshold.unwrap_or(1)),
    }
}

/// Checks what can be checked without the database; returns the health
/// check with defaults filled in.
pub fn validate(c: &LoadBalancerCreate) -> Result<LbHealthCheck, String> {
    crate::validate::name(&c.name).map_err(|e| e.to_string())?;
    if !matches!(c.protocol.as_str(), "http" | "tcp") {
        return Err(format!("protocol '{}' is not supported: use http or tcp", c.protocol));
    }
    if let Some(a) = &c.algorithm {
        if !nubo_api::lb::ALGORITHMS.contains(&a.as_str()) {
            return Err(format!(
                "algorithm '{a}' is not supported: use one of {}",
                nubo_api::lb::ALGORITHMS.join(", ")
            ));
        }
    }
    if c.port == 0 {
        return Err("port must be the targets' guest port, 1 to 65535".into());
    }
    if c.targets.is_empty() && c.group.is_none() {
        return Err("a load balancer needs targets: give instance ids (--target) and/or a group (--group)".into());
    }
    if c.targets.len() > MAX_TARGETS {
        return Err(format!("{} targets; at most {MAX_TARGETS} (use a group for more)", c.targets.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for t in &c.targets {
        if !seen.insert(t) {
            return Err(format!("target {t} is listed twice"));
        }
    }
    if let Some(g) = &c.group {
        crate::validate::name_of("group name", g, 63).map_err(|e| e.to_string())?;
    }
    for (id, w) in &c.weights {
        let parsed: InstanceId = id.parse().map_err(|e: nubo_api::ids::IdError| format!("weight for '{id}': {e}"))?;
        if c.group.is_none() && !c.targets.contains(&parsed) {
            return Err(format!("weight for {id}, which is not a target; add it with --target"));
        }
        if *w == 0 || *w > MAX_WEIGHT {
            return Err(format!("weight {w} for {id}: use 1 to {MAX_WEIGHT}"));
        }
    }
    let h = c.health_check.as_ref();
    if let Some(h) = h {
        if c.protocol == "tcp" && (h.path.is_some() || h.expect_status.is_some()) {
            return Err(
                "a tcp balancer checks its backends by connecting: drop health_check.path and expect_status".into()
            );
        }
        if let Some(p) = &h.path {
            if !p.starts_with('/') || p.len() > 1024 || p.chars().any(|c| c.is_control() || c == ' ') {
                return Err(format!("health check path '{p}' must start with '/' and hold no spaces"));
            }
        }
        if h.interval_secs.is_some_and(|i| !(1..=300).contains(&i)) {
            return Err("health check interval must be 1 to 300 seconds".into());
        }
        if h.timeout_secs.is_some_and(|t| !(1..=60).contains(&t)) {
            return Err("health check timeout must be 1 to 60 seconds".into());
        }
        if h.expect_status.is_some_and(|s| !(100..=599).contains(&s)) {
            return Err("health check expect_status must be an HTTP status, 100 to 599".into());
        }
        for t in [h.healthy_threshold, h.unhealthy_threshold].into_iter().flatten() {
            if !(1..=10).contains(&t) {
                return Err("health check thresholds must be 1 to 10".into());
            }
        }
    }
    Ok(fill_health(h, &c.protocol))
}

/// One candidate backend of a balancer: a backend (`address` set) or the
/// reason it is not one.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub instance_id: String,
    pub address: Option<String>,
    pub weight: u32,
    pub reason: Option<BackendHealth>,
}

/// Why a new balancer cannot get a port.
#[derive(Debug)]
pub enum InsertError {
    /// The project has a balancer of that name.
    NameTaken,
    /// The host's forwarded-port range is used up.
    NoPorts,
    /// The balancer's network has no free address.
    NoAddress,
    /// The floating IP is associated with an instance or another balancer.
    FloatingIpInUse,
    /// A concurrent request took the address chosen; retry.
    Raced,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for InsertError {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// Whether the project has a balancer named `name`.
async fn name_taken(tx: &mut crate::store::Tx<'_>, project: &str, name: &str) -> Result<bool, sqlx::Error> {
    let taken: Option<String> = sqlx::query_scalar("SELECT id FROM load_balancers WHERE project_id = $1 AND name = $2")
        .bind(project)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(taken.is_some())
}

/// Inserts a balancer's row; `network` is (network, address, MAC) for one on a network.
#[allow(clippy::too_many_arguments)] // one row's columns, named at the two call sites
async fn insert_row(
    tx: &mut crate::store::Tx<'_>,
    id: &LoadBalancerId,
    project: &str,
    c: &LoadBalancerCreate,
    health: &LbHealthCheck,
    host: &str,
    host_port: i64,
    network: Option<(&str, &str, &str)>,
) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO load_balancers (id, project_id, name, protocol, algorithm, guest_port, targets_json, group_name,
           weights_json, health_json, host_id, host_port, created_at_ms, network_id, address, mac)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
    )
    .bind(id.as_str())
    .bind(project)
    .bind(&c.name)
    .bind(&c.protocol)
    .bind(c.algorithm.as_deref().unwrap_or("round-robin"))
    .bind(i64::from(c.port))
    .bind(serde_json::to_string(&c.targets).unwrap_or_else(|_| "[]".into()))
    .bind(&c.group)
    .bind(serde_json::to_string(&c.weights).unwrap_or_else(|_| "{}".into()))
    .bind(serde_json::to_string(health).unwrap_or_else(|_| "{}".into()))
    .bind(host)
    .bind(host_port)
    .bind(now_ms())
    .bind(network.map(|n| n.0))
    .bind(network.map(|n| n.1))
    .bind(network.map(|n| n.2))
    .execute(&mut **tx)
    .await
}

impl Store {
    /// Inserts a balancer on `host` with the lowest free host port of
    /// `range` (free of instances' forwards and other balancers).
    pub async fn insert_lb(
        &self,
        project: &str,
        c: &LoadBalancerCreate,
        health: &LbHealthCheck,
        host: &str,
        range: (u16, u16),
    ) -> Result<LbRow, InsertError> {
        let mut tx = self.begin().await?;
        // Write first: SQLite then holds its write lock for the whole
        // transaction, so the free port read below cannot be taken by a
        // concurrent instance launch (which takes the lock the same way).
        sqlx::query("UPDATE hosts SET enabled = enabled WHERE id = $1").bind(host).execute(&mut *tx).await?;
        if name_taken(&mut tx, project, &c.name).await? {
            return Err(InsertError::NameTaken);
        }
        let used: Vec<i64> = sqlx::query_scalar(
            "SELECT host_port FROM instance_ports WHERE host_id = $1 UNION SELECT host_port FROM load_balancers WHERE host_id = $1",
        )
        .bind(host)
        .fetch_all(&mut *tx)
        .await?;
        let used: std::collections::HashSet<i64> = used.into_iter().collect();
        let port = (range.0..=range.1).find(|p| !used.contains(&i64::from(*p))).ok_or(InsertError::NoPorts)?;
        let id = LoadBalancerId::generate();
        insert_row(&mut tx, &id, project, c, health, host, i64::from(port), None).await?;
        let row =
            sqlx::query_as("SELECT * FROM load_balancers WHERE id = $1").bind(id.as_str()).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Inserts a balancer on `host` that runs on `network`: it takes the
    /// lowest free address of the network's range (free of instances' NICs
    /// and other balancers), and `floating_ip` (id) if given, which must be
    /// the project's and associated with nothing.
    pub async fn insert_network_lb(
        &self,
        project: &str,
        c: &LoadBalancerCreate,
        health: &LbHealthCheck,
        host: &str,
        network: &crate::networks::NetworkRow,
        floating_ip: Option<&str>,
    ) -> Result<LbRow, InsertError> {
        let mut tx = self.begin().await?;
        if name_taken(&mut tx, project, &c.name).await? {
            return Err(InsertError::NameTaken);
        }
        let cidr = crate::networks::Cidr::parse_network(&network.cidr).map_err(sqlx::Error::Protocol)?;
        let used = crate::networks::private_addresses_used(&mut tx, &network.id).await?;
        let address = cidr.hosts().map(|a| a.to_string()).find(|a| !used.contains(a)).ok_or(InsertError::NoAddress)?;
        let id = LoadBalancerId::generate();
        let mac = crate::networks::mac_for(id.as_str(), &network.id);
        insert_row(&mut tx, &id, project, c, health, host, 0, Some((&network.id, &address, &mac))).await.map_err(
            |e| match e.as_database_error() {
                // Another balancer or a launch took the address at the same moment.
                Some(d) if d.is_unique_violation() => InsertError::Raced,
                _ => InsertError::Db(e),
            },
        )?;
        if let Some(fip) = floating_ip {
            let took = sqlx::query(
                "UPDATE floating_ips SET lb_id = $1 WHERE id = $2 AND project_id = $3 AND instance_id IS NULL AND lb_id IS NULL",
            )
            .bind(id.as_str())
            .bind(fip)
            .bind(project)
            .execute(&mut *tx)
            .await?;
            if took.rows_affected() != 1 {
                return Err(InsertError::FloatingIpInUse);
            }
        }
        let row =
            sqlx::query_as("SELECT * FROM load_balancers WHERE id = $1").bind(id.as_str()).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// The floating IP a balancer listens on: (address, external network id).
    pub async fn lb_floating_ip(&self, lb: &str) -> Result<Option<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT address, network_id FROM floating_ips WHERE lb_id = $1")
            .bind(lb)
            .fetch_optional(&self.pool)
            .await
    }

    /// Moves a balancer on a network off a dead host to `target`; false when
    /// it moved already or the dead host renewed its lease since
    /// `heartbeat_ms` was read (it is alive and keeps it).
    pub async fn move_lb(&self, lb: &str, dead: &str, heartbeat_ms: i64, target: &str) -> Result<bool, sqlx::Error> {
        let moved = sqlx::query(
            "UPDATE load_balancers SET host_id = $1, actual_json = NULL, reported_at_ms = NULL
             WHERE id = $2 AND host_id = $3 AND network_id IS NOT NULL
               AND (SELECT last_heartbeat_ms FROM hosts WHERE id = $3) = $4",
        )
        .bind(target)
        .bind(lb)
        .bind(dead)
        .bind(heartbeat_ms)
        .execute(&self.pool)
        .await?;
        Ok(moved.rows_affected() == 1)
    }

    pub async fn lbs(&self, project: Option<&str>) -> Result<Vec<LbRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM load_balancers WHERE ($1 IS NULL OR project_id = $1) ORDER BY name, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// A balancer by id (any project: the caller checks access) or by name in `project`.
    pub async fn lb_by_key(&self, project: Option<&str>, key: &str) -> Result<Option<LbRow>, sqlx::Error> {
        if key.starts_with(LoadBalancerId::PREFIX) && key.parse::<LoadBalancerId>().is_ok() {
            return sqlx::query_as("SELECT * FROM load_balancers WHERE id = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await;
        }
        sqlx::query_as("SELECT * FROM load_balancers WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn delete_lb(&self, id: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.begin().await?;
        // Its floating IP stays the project's, free to associate again.
        sqlx::query("UPDATE floating_ips SET lb_id = NULL WHERE lb_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM load_balancers WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn lbs_on_host(&self, host: &str) -> Result<Vec<LbRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM load_balancers WHERE host_id = $1 ORDER BY id")
            .bind(host)
            .fetch_all(&self.pool)
            .await
    }

    /// Records the host's report of one of its balancers; false when the
    /// balancer is not (or no longer) on that host.
    pub async fn apply_lb_report(&self, host: &str, a: &ActualBalancer) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "UPDATE load_balancers SET actual_json = $1, reported_at_ms = $2 WHERE id = $3 AND host_id = $4",
        )
        .bind(serde_json::to_string(a).unwrap_or_default())
        .bind(now_ms())
        .bind(a.id.as_str())
        .bind(host)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// The balancer's candidate backends, explicit targets first, then the
    /// group's members (oldest first).
    pub async fn resolve_lb(&self, lb: &LbRow) -> Result<Vec<Resolved>, sqlx::Error> {
        let mut rows = Vec::new();
        for t in lb.targets() {
            match self.instance(t.as_str()).await? {
                Some(r) => rows.push(r),
                None => continue,
            }
        }
        if let Some(g) = &lb.group_name {
            if let Some(group) = self.group_by_name(&lb.project_id, g).await? {
                for m in self.group_members(&group.id).await? {
                    if !rows.iter().any(|r| r.id == m.id) {
                        rows.push(m);
                    }
                }
            }
        }
        let weights = lb.weights();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let weight = weights.get(&r.id).copied().unwrap_or(1);
            let reason = if r.state == InstanceState::Terminated || r.desired == PowerState::Deleted {
                Some(BackendHealth::Terminated)
            } else if r.desired != PowerState::Running {
                Some(BackendHealth::NotRunning)
            } else if lb.network_id.is_none() && r.host_id.as_deref() != Some(lb.host_id.as_str()) {
                Some(BackendHealth::OnAnotherHost)
            } else {
                None
            };
            // On a network: the instance's address there, on whichever host.
            if let Some(net) = &lb.network_id {
                let on_net = match reason {
                    None => self.instance_network_ports(&r.id).await?.into_iter().find(|p| &p.network_id == net),
                    Some(_) => None,
                };
                out.push(Resolved {
                    instance_id: r.id,
                    address: on_net.as_ref().map(|p| format!("{}:{}", p.address, lb.guest_port)),
                    weight,
                    reason: reason.or(on_net.is_none().then_some(BackendHealth::OffNetwork)),
                });
                continue;
            }
            let port = match reason {
                None => self.ports(&r.id).await?.into_iter().find(|p| p.guest_port == lb.guest_port),
                Some(_) => None,
            };
            let reason = match (reason, &port) {
                (None, None) => Some(BackendHealth::NoForwardedPort),
                (r, _) => r,
            };
            out.push(Resolved {
                instance_id: r.id,
                address: port.map(|p| format!("127.0.0.1:{}", p.host_port)),
                weight,
                reason,
            });
        }
        Ok(out)
    }

    /// What `host` should run: its balancers with their backends resolved.
    pub async fn desired_balancers(&self, host: &str) -> Result<Vec<DesiredBalancer>, sqlx::Error> {
        let mut out = Vec::new();
        for lb in self.lbs_on_host(host).await? {
            let Ok(id) = lb.id.parse::<LoadBalancerId>() else { continue };
            let mut backends = Vec::new();
            for r in self.resolve_lb(&lb).await? {
                if let (Some(address), Ok(instance_id)) = (r.address, r.instance_id.parse()) {
                    backends.push(DesiredBackend { instance_id, address, weight: r.weight });
                }
            }
            // A balancer on a network listens on the targets' port, on its own address.
            let network = match (&lb.network_id, &lb.address, &lb.mac) {
                (Some(net), Some(address), Some(mac)) => match self.network(net).await? {
                    Some(n) => Some(nubo_api::lb::BalancerLeg {
                        vni: n.vni as u32,
                        cidr: n.cidr,
                        gateway: n.gateway,
                        address: address.clone(),
                        mac: mac.clone(),
                    }),
                    None => continue,
                },
                _ => None,
            };
            out.push(DesiredBalancer {
                health_check: lb.health(),
                id,
                name: lb.name,
                protocol: lb.protocol,
                algorithm: lb.algorithm,
                listen_port: if network.is_some() { lb.guest_port as u16 } else { lb.host_port as u16 },
                backends,
                network,
            });
        }
        Ok(out)
    }
}

/// The view's backends: each candidate with what the host last said about
/// it, then backends the host still drains or still serves although they
/// are no longer wanted (a member the group just let go, before the host
/// has reconfigured): the view shows what the data plane does, so a
/// backend leaves it only once the host no longer sends it traffic.
pub fn backends_view(resolved: Vec<Resolved>, actual: Option<&ActualBalancer>) -> Vec<LbBackend> {
    let reported = |id: &str| actual.and_then(|a| a.backends.iter().find(|b| b.instance_id == id));
    let mut out: Vec<LbBackend> = resolved
        .iter()
        .map(|r| match (r.reason, reported(&r.instance_id)) {
            (None, Some(b)) => LbBackend { weight: r.weight, address: r.address.clone(), ..b.clone() },
            (reason, _) => LbBackend {
                instance_id: r.instance_id.clone(),
                address: r.address.clone(),
                weight: r.weight,
                health: reason.unwrap_or(BackendHealth::Unknown),
                requests: 0,
                errors: 0,
                in_flight: 0,
                cpu_percent: None,
                last_error: None,
            },
        })
        .collect();
    if let Some(a) = actual {
        for b in &a.backends {
            let wanted = resolved.iter().any(|r| r.reason.is_none() && r.instance_id == b.instance_id);
            let listed = resolved.iter().any(|r| r.instance_id == b.instance_id);
            if (b.health == BackendHealth::Draining && !wanted) || !listed {
                out.push(b.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_the_host_still_serves_stays_in_the_view_until_it_is_gone() {
        let served = |id: &str, health: &str| LbBackend {
            instance_id: id.into(),
            address: Some("127.0.0.1:20000".into()),
            weight: 1,
            health: health.parse().unwrap(),
            requests: 3,
            errors: 0,
            in_flight: 0,
            cpu_percent: None,
            last_error: None,
        };
        let a = Resolved { instance_id: "i-a".into(), address: None, weight: 1, reason: None };
        let stopped =
            Resolved { instance_id: "i-c".into(), address: None, weight: 1, reason: Some(BackendHealth::NotRunning) };
        let actual = ActualBalancer {
            id: "lb-0123456789abcdef0".parse().expect("id"),
            state: nubo_api::lb::BalancerState::Active,
            error: None,
            started_at_ms: Some(1),
            backends: vec![served("i-a", "up"), served("i-b", "up"), served("i-c", "down")],
        };
        let view = backends_view(vec![a, stopped], Some(&actual));
        let ids: Vec<(&str, &str)> = view.iter().map(|b| (b.instance_id.as_str(), b.health.as_str())).collect();
        // b was let go but still gets traffic on the host: it stays, as the
        // host reports it; c is listed once, with why it is not a backend.
        assert_eq!(ids, vec![("i-a", "up"), ("i-c", "not running"), ("i-b", "up")]);
        // Once the host no longer reports b, it is gone from the view.
        let actual = ActualBalancer { backends: vec![served("i-a", "up")], ..actual };
        let a = Resolved { instance_id: "i-a".into(), address: None, weight: 1, reason: None };
        let view = backends_view(vec![a], Some(&actual));
        assert_eq!(view.iter().map(|b| b.instance_id.as_str()).collect::<Vec<_>>(), vec!["i-a"]);
    }

    fn create(v: serde_json::Value) -> LoadBalancerCreate {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let ok = create(serde_json::json!({"name": "web", "port": 80, "targets": ["i-0123456789abcdef0"]}));
        let h = validate(&ok).unwrap();
        assert_eq!((h.path.as_deref(), h.interval_secs, h.timeout_secs), (Some("/"), Some(5), Some(2)));
        let cases = [
            (serde_json::json!({"name": "web", "port": 80}), "needs targets"),
            (serde_json::json!({"name": "web", "port": 80, "group": "g", "protocol": "udp"}), "use http or tcp"),
            (serde_json::json!({"name": "web", "port": 80, "group": "g", "algorithm": "random"}), "least-loaded"),
            (serde_json::json!({"name": "web", "port": 0, "group": "g"}), "guest port"),
            (
                serde_json::json!({"name": "web", "port": 80, "targets": ["i-0123456789abcdef0"], "weights": {"i-0123456789abcdef1": 2}}),
                "not a target",
            ),
            (
                serde_json::json!({"name": "web", "port": 80, "group": "g", "weights": {"i-0123456789abcdef1": 0}}),
                "use 1 to 1000",
            ),
            (
                serde_json::json!({"name": "web", "port": 80, "group": "g", "protocol": "tcp", "health_check": {"path": "/"}}),
                "by connecting",
            ),
            (
                serde_json::json!({"name": "web", "port": 80, "group": "g", "health_check": {"interval_secs": 0}}),
                "1 to 300",
            ),
            (
                serde_json::json!({"name": "web", "port": 80, "group": "g", "health_check": {"path": "x"}}),
                "start with '/'",
            ),
            (serde_json::json!({"name": "../x", "port": 80, "group": "g"}), "not valid"),
        ];
        for (v, want) in cases {
            let err = validate(&create(v.clone())).unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
        let tcp = validate(&create(serde_json::json!({"name": "db", "port": 5432, "group": "g", "protocol": "tcp"})))
            .unwrap();
        assert_eq!(tcp.path, None);
    }
}
