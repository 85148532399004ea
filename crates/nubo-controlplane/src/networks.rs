//! Private networks in SQL: a project's networks (an IPv4 range, its
//! gateway, the VXLAN id that carries it between hosts), the NIC each
//! attached instance has on them (MAC and address, fixed for the
//! instance's life), and what one host must run for them: the networks
//! with local ports, their VXLAN peers, each port's inbound and outbound
//! firewall rules resolved from its security groups, and the names the
//! network's DNS answers.

use crate::store::{now_ms, ClaimError, Store, Tx};
use nubo_api::agent::{DesiredNetwork, DesiredNic, DesiredPort, DnsRecord, FirewallRule};
use nubo_api::ids::NetworkId;
use sqlx::FromRow;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// The network a launch names to ask for user-mode networking alone
/// (no NIC on any network, not even the default one); no network can
/// have this name.
pub const USER_MODE: &str = "none";

/// The name and range of a project's default network (EC2's default
/// VPC has 172.31.0.0/16; a /20 leaves room beside it for the project's
/// own networks while giving 4093 addresses).
pub const DEFAULT_NAME: &str = "default";
pub const DEFAULT_CIDR: &str = "172.31.0.0/20";

/// The EC2 API's ids of a network: it is one VPC with one subnet,
/// `net-<hex>` is `vpc-<hex>` and `subnet-<hex>` (the same hex digits, so
/// each maps back to the network: see [`network_of_ec2_id`]).
pub fn ec2_ids(network: &str) -> (String, String) {
    let hex = network.strip_prefix("net-").unwrap_or(network);
    (format!("vpc-{hex}"), format!("subnet-{hex}"))
}

/// The network id of a `vpc-...` or `subnet-...` id (`prefix` says which),
/// or `None` when it is not one of that shape.
pub fn network_of_ec2_id(prefix: &str, id: &str) -> Option<String> {
    let hex = id.strip_prefix(prefix)?.strip_prefix('-')?;
    let net = format!("net-{hex}");
    net.parse::<NetworkId>().ok().map(|n| n.to_string())
}

/// The first VXLAN id handed out (low ids are left to the operator).
const FIRST_VNI: i64 = 1000;

/// The networks a host (`$1`) has ports on: its live instances' and those
/// of instances being migrated to it. A subquery, with aliases of its own.
const LOCAL_NETWORKS: &str = "SELECT lp.network_id FROM network_ports lp JOIN instances li ON li.id = lp.instance_id
     WHERE li.state <> 'terminated' AND (li.host_id = $1 OR lp.instance_id IN
       (SELECT instance_id FROM migrations WHERE target_host = $1 AND state IN ('preparing', 'migrating')))
     UNION SELECT lb.network_id FROM load_balancers lb WHERE lb.host_id = $1 AND lb.network_id IS NOT NULL";

#[derive(Debug, Clone, FromRow)]
pub struct NetworkRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub vni: i64,
    pub created_at_ms: i64,
    /// Set for an external network: the name hosts map to an interface.
    pub external_interface: Option<String>,
    pub vlan: Option<i64>,
    pub pool_start: Option<String>,
    pub pool_end: Option<String>,
    /// 1: the project's default network (see `app::networks::ensure_default`).
    pub is_default: i64,
    /// 1: its one EC2 subnet exists (see migration 0019).
    pub has_subnet: i64,
    /// 1: an external network that gives instances on their project's
    /// default network an address automatically (see migration 0022).
    pub auto_assign: i64,
}

impl NetworkRow {
    /// The addresses instances and floating IPs of an external network
    /// get: its pool less the first address (each host's DHCP). None for a
    /// private network.
    pub fn pool(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let start: Ipv4Addr = self.pool_start.as_deref()?.parse().ok()?;
        let end: Ipv4Addr = self.pool_end.as_deref()?.parse().ok()?;
        Some((Ipv4Addr::from(u32::from(start).checked_add(1)?), end))
    }

    pub fn is_external(&self) -> bool {
        self.external_interface.is_some()
    }
}

/// The first address of `pool` (`first..=last`) not in `used`.
pub fn first_free(pool: (Ipv4Addr, Ipv4Addr), used: &HashSet<String>) -> Option<Ipv4Addr> {
    (u32::from(pool.0)..=u32::from(pool.1)).map(Ipv4Addr::from).find(|a| !used.contains(&a.to_string()))
}

/// Addresses of a private network taken by instances' NICs or balancers.
pub(crate) async fn private_addresses_used(tx: &mut Tx<'_>, network: &str) -> Result<HashSet<String>, sqlx::Error> {
    let used: Vec<String> = sqlx::query_scalar(
        "SELECT address FROM network_ports WHERE network_id = $1
         UNION SELECT address FROM load_balancers WHERE network_id = $1 AND address IS NOT NULL",
    )
    .bind(network)
    .fetch_all(&mut **tx)
    .await?;
    Ok(used.into_iter().collect())
}

/// Serialises the transactions that take addresses of external network
/// `network`'s pool until this one ends (a row lock on PostgreSQL; SQLite
/// runs one writer at a time anyway). Ports and floating IPs share the
/// pool but not a unique index, so without it two allocations at once, one
/// of each, could both take the same free address.
pub(crate) async fn lock_pool(tx: &mut Tx<'_>, network: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE networks SET vni = vni WHERE id = $1").bind(network).execute(&mut **tx).await?;
    Ok(())
}

/// Addresses of an external network taken by ports or floating IPs.
pub(crate) async fn external_addresses_used(tx: &mut Tx<'_>, network: &str) -> Result<HashSet<String>, sqlx::Error> {
    let used: Vec<String> = sqlx::query_scalar(
        "SELECT address FROM network_ports WHERE network_id = $1 UNION SELECT address FROM floating_ips WHERE network_id = $1",
    )
    .bind(network)
    .fetch_all(&mut **tx)
    .await?;
    Ok(used.into_iter().collect())
}

#[derive(Debug, Clone, FromRow)]
pub struct NetworkPortRow {
    pub instance_id: String,
    pub network_id: String,
    pub nic_index: i64,
    pub mac: String,
    pub address: String,
}

/// An IPv4 range `a.b.c.d/len`, aligned on its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    /// Parses a network's range; the text says what is wrong and what to use.
    pub fn parse_network(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').ok_or_else(|| format!("'{s}' is not a CIDR: write it as 10.20.0.0/24"))?;
        let base: Ipv4Addr = addr.parse().map_err(|_| format!("'{addr}' is not an IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| format!("'/{len}' is not a prefix length"))?;
        if !(16..=29).contains(&len) {
            return Err(format!("a network's prefix must be /16 to /29, not /{len}"));
        }
        let c = Cidr { base, len };
        if c.network() != base {
            return Err(format!("'{s}' has host bits set: the network is {}/{len}", c.network()));
        }
        Ok(c)
    }

    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.len))
    }

    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) & self.mask())
    }

    /// The gateway: the first address after the network's.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    /// How many addresses instances may get.
    pub fn host_count(self) -> usize {
        (!self.mask() as usize).saturating_sub(2)
    }

    /// Whether `a` is an address instances may get (see [`Cidr::hosts`]).
    pub fn is_host(self, a: Ipv4Addr) -> bool {
        let (first, last) = (u32::from(self.network()) + 2, (u32::from(self.network()) | !self.mask()) - 1);
        (first..=last).contains(&u32::from(a))
    }

    /// Addresses instances may get: all but the network, gateway and broadcast.
    pub fn hosts(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network()) + 2;
        let last = (u32::from(self.network()) | !self.mask()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }
}

/// A MAC for a NIC: QEMU's 52:54:00 prefix and the address's last three
/// bytes would collide across networks, so it is derived from the instance
/// and network ids instead (FNV-1a over both).
pub(crate) fn mac_for(instance: &str, network: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in instance.bytes().chain([0]).chain(network.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", (h >> 24) & 0xff, (h >> 16) & 0xff, (h >> 8) & 0xff, h & 0xff)
}

/// Why a network was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("the project already has a network named '{0}'")]
    Duplicate(String),
    /// A concurrent create took the name, the VXLAN id or the project's
    /// default first: trying again reads what it made.
    #[error("a concurrent request created a network at the same time; retry")]
    Raced,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Gives the new instance a NIC on each network (ids, already checked to
/// be the project's), in order: the lowest free address of each, or on
/// the first network `requested` when given (EC2's PrivateIpAddress,
/// already checked to be one of its hosts' addresses). Runs in the
/// launch's transaction; on PostgreSQL a concurrent launch that took the
/// same address first makes the claim `Lost`, and placement retries (a
/// requested address that is taken is `AddressTaken`: no retry gets it).
pub(crate) async fn attach_new_instance(
    tx: &mut Tx<'_>,
    instance: &str,
    networks: &[String],
    requested: Option<&str>,
) -> Result<(), ClaimError> {
    for (index, net) in networks.iter().enumerate() {
        let row: NetworkRow =
            sqlx::query_as("SELECT * FROM networks WHERE id = $1").bind(net).fetch_one(&mut **tx).await?;
        // An external network hands out its pool, shared with floating
        // IPs; a private one its range. A requested address (EC2's
        // PrivateIpAddress, first NIC only) must be free.
        let used: HashSet<String> = match row.pool() {
            Some(_) => {
                lock_pool(tx, net).await?;
                external_addresses_used(tx, net).await?
            }
            None => private_addresses_used(tx, net).await?,
        };
        let address = match (requested.filter(|_| index == 0), row.pool()) {
            (Some(a), _) if used.contains(a) => {
                return Err(ClaimError::AddressTaken(format!("address {a} of network {net} is in use")))
            }
            (Some(a), _) => a.to_string(),
            (None, Some(pool)) => first_free(pool, &used).map(|a| a.to_string()).ok_or_else(|| {
                ClaimError::Quota(format!(
                    "external network {} has no free address left in its pool; release floating IPs or ask the operator for a larger pool",
                    row.name
                ))
            })?,
            (None, None) => {
                let cidr = Cidr::parse_network(&row.cidr).map_err(|e| ClaimError::Db(sqlx::Error::Protocol(e)))?;
                cidr.hosts()
                    .map(|a| a.to_string())
                    .find(|a| !used.contains(a))
                    .ok_or_else(|| ClaimError::Quota(format!("network {net} ({cidr:?}) has no free address left")))?
            }
        };
        sqlx::query(
            "INSERT INTO network_ports (instance_id, network_id, nic_index, mac, address) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(instance)
        .bind(net)
        .bind(index as i64)
        .bind(mac_for(instance, net))
        .bind(&address)
        .execute(&mut **tx)
        .await
        .map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => ClaimError::Lost,
            _ => ClaimError::Db(e),
        })?;
    }
    Ok(())
}

/// The next VXLAN id: one above the highest given (a concurrent create
/// may pick the same; the UNIQUE constraint then makes it retry).
async fn next_vni(tx: &mut Tx<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(vni) + 1, $1) FROM networks").bind(FIRST_VNI).fetch_one(&mut **tx).await
}

/// Inserts a network's row, every column.
async fn insert_row(tx: &mut Tx<'_>, row: &NetworkRow) -> Result<sqlx::any::AnyQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO networks (id, project_id, name, cidr, gateway, vni, created_at_ms, external_interface, vlan,
           pool_start, pool_end, is_default, has_subnet, auto_assign)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&row.id)
    .bind(&row.project_id)
    .bind(&row.name)
    .bind(&row.cidr)
    .bind(&row.gateway)
    .bind(row.vni)
    .bind(row.created_at_ms)
    .bind(&row.external_interface)
    .bind(row.vlan)
    .bind(&row.pool_start)
    .bind(&row.pool_end)
    .bind(row.is_default)
    .bind(row.has_subnet)
    .bind(row.auto_assign)
    .execute(&mut **tx)
    .await
}

impl Store {
    pub async fn create_network(&self, project: &str, name: &str, cidr: Cidr) -> Result<NetworkRow, CreateError> {
        self.insert_network(&NetworkId::generate(), project, name, cidr, false, true).await
    }

    /// Creates a network: the project's default one (`is_default`), and
    /// with or without its EC2 subnet (`has_subnet`). A unique violation
    /// (name, VXLAN id or default taken by a concurrent create) is `Raced`.
    pub async fn insert_network(
        &self,
        id: &NetworkId,
        project: &str,
        name: &str,
        cidr: Cidr,
        is_default: bool,
        has_subnet: bool,
    ) -> Result<NetworkRow, CreateError> {
        let mut tx = self.begin().await?;
        let taken: Option<String> = sqlx::query_scalar("SELECT id FROM networks WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(CreateError::Duplicate(name.to_string()));
        }
        let vni = next_vni(&mut tx).await?;
        let row = NetworkRow {
            id: id.to_string(),
            project_id: project.to_string(),
            name: name.to_string(),
            cidr: format!("{}/{}", cidr.network(), cidr.len),
            gateway: cidr.gateway().to_string(),
            vni,
            created_at_ms: now_ms(),
            external_interface: None,
            vlan: None,
            pool_start: None,
            pool_end: None,
            is_default: i64::from(is_default),
            has_subnet: i64::from(has_subnet),
            auto_assign: 0,
        };
        insert_row(&mut tx, &row).await.map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => CreateError::Raced,
            _ => CreateError::Db(e),
        })?;
        tx.commit().await.map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => CreateError::Raced,
            _ => CreateError::Db(e),
        })?;
        Ok(row)
    }

    /// Creates an external network (checked by the caller): a row like a
    /// private network's, with the interface name, VLAN and pool set.
    pub async fn create_external_network(&self, row: &NetworkRow) -> Result<NetworkRow, CreateError> {
        let mut tx = self.begin().await?;
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT id FROM networks WHERE name = $1 AND (project_id = $2 OR external_interface IS NOT NULL)",
        )
        .bind(&row.name)
        .bind(&row.project_id)
        .fetch_optional(&mut *tx)
        .await?;
        if taken.is_some() {
            return Err(CreateError::Duplicate(row.name.clone()));
        }
        let vni = next_vni(&mut tx).await?;
        let row = NetworkRow { vni, ..row.clone() };
        insert_row(&mut tx, &row).await.map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => CreateError::Raced,
            _ => CreateError::Db(e),
        })?;
        tx.commit().await?;
        Ok(row)
    }

    /// The interface names of the external networks among `networks` (ids).
    pub async fn external_names(&self, networks: &[String]) -> Result<Vec<String>, sqlx::Error> {
        let mut out = Vec::new();
        for id in networks {
            if let Some(name) = self.network(id).await?.and_then(|n| n.external_interface) {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// The external networks' interface names an instance needs on its
    /// host: those it is attached to, and its floating IP's.
    pub async fn instance_external_names(&self, instance: &str) -> Result<Vec<String>, sqlx::Error> {
        let mut ids: Vec<String> =
            self.instance_network_ports(instance).await?.into_iter().map(|p| p.network_id).collect();
        let floating: Vec<String> = sqlx::query_scalar("SELECT network_id FROM floating_ips WHERE instance_id = $1")
            .bind(instance)
            .fetch_all(&self.pool)
            .await?;
        ids.extend(floating);
        self.external_names(&ids).await
    }

    /// The project's default network, if it was made.
    /// The external network that assigns addresses automatically, if any.
    pub async fn auto_assign_network(&self) -> Result<Option<NetworkRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM networks WHERE auto_assign = 1").fetch_optional(&self.pool).await
    }

    pub async fn default_network(&self, project: &str) -> Result<Option<NetworkRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM networks WHERE project_id = $1 AND is_default = 1")
            .bind(project)
            .fetch_optional(&self.pool)
            .await
    }

    /// Makes or removes a network's EC2 subnet; false if another request
    /// did it first (the subnet already was, or no longer is, there).
    pub async fn set_network_subnet(&self, id: &str, present: bool) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE networks SET has_subnet = $1 WHERE id = $2 AND has_subnet = $3")
            .bind(i64::from(present))
            .bind(id)
            .bind(i64::from(!present))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether some host that is up (and not drained) runs private
    /// networks: a launch without networks then gets the default network.
    pub async fn bridging_host_up(&self, heartbeat_timeout_ms: i64) -> Result<bool, sqlx::Error> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT id FROM hosts WHERE underlay IS NOT NULL AND enabled = 1 AND last_heartbeat_ms >= $1 LIMIT 1",
        )
        .bind(now_ms() - heartbeat_timeout_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// All networks, or one project's and the external ones (every project sees those).
    pub async fn networks(&self, project: Option<&str>) -> Result<Vec<NetworkRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM networks WHERE ($1 IS NULL OR project_id = $1 OR external_interface IS NOT NULL) ORDER BY name, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    pub async fn network(&self, id: &str) -> Result<Option<NetworkRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM networks WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    /// A project's network by id or name, or an external network (which
    /// every project may attach to); the project's own name wins.
    pub async fn network_by_ref(&self, project: &str, reference: &str) -> Result<Option<NetworkRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT * FROM networks WHERE (project_id = $1 OR external_interface IS NOT NULL) AND (id = $2 OR name = $2)
             ORDER BY CASE WHEN project_id = $1 THEN 0 ELSE 1 END LIMIT 1",
        )
            .bind(project)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
    }

    /// Ports of instances not terminated: of one network, or of all.
    pub async fn network_ports(&self, network: Option<&str>) -> Result<Vec<NetworkPortRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT p.instance_id, p.network_id, p.nic_index, p.mac, p.address FROM network_ports p
             JOIN instances i ON i.id = p.instance_id
             WHERE ($1 IS NULL OR p.network_id = $1) AND i.state <> 'terminated'
             ORDER BY p.instance_id, p.nic_index",
        )
        .bind(network)
        .fetch_all(&self.pool)
        .await
    }

    /// One instance's NICs, in order.
    pub async fn instance_network_ports(&self, instance: &str) -> Result<Vec<NetworkPortRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT instance_id, network_id, nic_index, mac, address FROM network_ports
             WHERE instance_id = $1 ORDER BY nic_index",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await
    }

    /// Deletes a network without attached instances; otherwise returns them.
    pub async fn delete_network(&self, id: &str) -> Result<Vec<String>, sqlx::Error> {
        let users: Vec<String> = self.network_ports(Some(id)).await?.into_iter().map(|p| p.instance_id).collect();
        if !users.is_empty() {
            return Ok(users);
        }
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM network_ports WHERE network_id = $1").bind(id).execute(&mut *tx).await?;
        // Groups an EC2 client made in its VPC outlive it, VPC-less, as
        // groups made over REST are.
        sqlx::query("UPDATE security_groups SET network_id = NULL WHERE network_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM networks WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Vec::new())
    }

    /// What `host` runs for private networks: each instance's NICs (by
    /// instance id) and the networks with ports there.
    pub async fn desired_networks(
        &self,
        host: &str,
    ) -> Result<(HashMap<String, Vec<DesiredNic>>, Vec<DesiredNetwork>), sqlx::Error> {
        // Most hosts (and every host of a cloud without networks) have no
        // port: one indexed lookup, before reading the networks' ports.
        let any_local: Option<String> =
            sqlx::query_scalar(&format!("{LOCAL_NETWORKS} LIMIT 1")).bind(host).fetch_optional(&self.pool).await?;
        if any_local.is_none() {
            return Ok((HashMap::new(), Vec::new()));
        }
        // Every live port of the networks this host has ports on, with its
        // host: peers and source groups need the ports elsewhere too. Other
        // networks cannot reach this host's ports, so they are not read.
        let mut ports: Vec<(String, String, i64, String, String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT p.instance_id, p.network_id, p.nic_index, p.mac, p.address, i.host_id FROM network_ports p
             JOIN instances i ON i.id = p.instance_id
             WHERE i.state <> 'terminated' AND p.network_id IN ({LOCAL_NETWORKS}) ORDER BY p.instance_id, p.nic_index"
        ))
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        // An instance being migrated has its ports on both hosts meanwhile.
        let moving: Vec<(String, String)> =
            sqlx::query_as("SELECT instance_id, target_host FROM migrations WHERE state IN ('preparing', 'migrating')")
                .fetch_all(&self.pool)
                .await?;
        for (instance, target) in &moving {
            let copies: Vec<_> = ports
                .iter()
                .filter(|p| &p.0 == instance)
                .map(|p| (p.0.clone(), p.1.clone(), p.2, p.3.clone(), p.4.clone(), Some(target.clone())))
                .collect();
            ports.extend(copies);
        }
        let local: Vec<_> = ports.iter().filter(|p| p.5.as_deref() == Some(host)).collect();
        // Balancers on networks, everywhere: a host with one is a VXLAN
        // peer of the network's other hosts, as one with an instance is.
        let balancers: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT id, network_id, host_id FROM load_balancers WHERE network_id IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let local_balancer_nets: Vec<&str> = balancers.iter().filter(|b| b.2 == host).map(|b| b.1.as_str()).collect();
        if local.is_empty() && local_balancer_nets.is_empty() {
            return Ok((HashMap::new(), Vec::new()));
        }
        let mut nics: HashMap<String, Vec<DesiredNic>> = HashMap::new();
        for p in &local {
            let network_id = p.1.parse().map_err(|e| sqlx::Error::Protocol(format!("network id: {e}")))?;
            nics.entry(p.0.clone()).or_default().push(DesiredNic {
                network_id,
                mac: p.3.clone(),
                address: p.4.clone(),
            });
        }
        let underlays: HashMap<String, String> =
            sqlx::query_as::<_, (String, String)>("SELECT id, underlay FROM hosts WHERE underlay IS NOT NULL")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        // Security groups: each instance's groups, each group's rules (in
        // and out), and each group's members (for rules by source group).
        // Only the members on this host's networks matter (a source group
        // is resolved to addresses on the port's network), and only the
        // rules of their groups.
        let on_local_networks =
            format!("SELECT np.instance_id FROM network_ports np WHERE np.network_id IN ({LOCAL_NETWORKS})");
        let memberships: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT instance_id, group_id FROM instance_security_groups WHERE instance_id IN ({on_local_networks})"
        ))
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        let mut groups_of: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut members_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for (i, g) in &memberships {
            groups_of.entry(i.as_str()).or_default().push(g.as_str());
            members_of.entry(g.as_str()).or_default().push(i.as_str());
        }
        let rules: Vec<crate::security_groups::RuleRow> = sqlx::query_as(&format!(
            "SELECT id, group_id, direction, protocol, from_port, to_port, cidr, source_group_id, description
             FROM security_group_rules WHERE direction IN ('ingress', 'egress') AND group_id IN
               (SELECT group_id FROM instance_security_groups WHERE instance_id IN ({on_local_networks}))
             ORDER BY id"
        ))
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        // Names for each network's DNS: every live instance on the
        // networks here, wherever it runs.
        let names: Vec<(String, String, String)> = sqlx::query_as(&format!(
            "SELECT p.network_id, i.name, p.address FROM network_ports p JOIN instances i ON i.id = p.instance_id
             WHERE i.state <> 'terminated' AND p.network_id IN ({LOCAL_NETWORKS}) ORDER BY p.network_id, i.name, p.address"
        ))
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        let local_nets: Vec<&str> = {
            let mut v: Vec<&str> =
                local.iter().map(|p| p.1.as_str()).chain(local_balancer_nets.iter().copied()).collect();
            v.sort();
            v.dedup();
            v
        };
        // Floating IPs of this host's instances (not of copies being
        // migrated here: the address moves when the instance does), each
        // on its instance's first private NIC.
        let floating: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT f.instance_id, f.address, f.network_id FROM floating_ips f JOIN instances i ON i.id = f.instance_id
             WHERE i.host_id = $1 AND i.state <> 'terminated' ORDER BY f.address",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        // Floating IPs of this host's balancers: (address, external
        // network, the balancer's network, its address there).
        let balancer_floating: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT f.address, f.network_id, l.network_id, l.address FROM floating_ips f
             JOIN load_balancers l ON l.id = f.lb_id WHERE l.host_id = $1 AND l.address IS NOT NULL ORDER BY f.address",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        let mut rows: HashMap<String, NetworkRow> = HashMap::new();
        for net in local_nets
            .iter()
            .copied()
            .chain(floating.iter().map(|f| f.2.as_str()))
            .chain(balancer_floating.iter().map(|f| f.1.as_str()))
        {
            if !rows.contains_key(net) {
                if let Some(row) = self.network(net).await? {
                    rows.insert(net.to_string(), row);
                }
            }
        }
        let mut floating_on: HashMap<&str, Vec<nubo_api::agent::FloatingNat>> = HashMap::new();
        for (instance, address, external) in &floating {
            let private = local
                .iter()
                .filter(|p| p.5.as_deref() == Some(host) && &p.0 == instance)
                .find(|p| rows.get(&p.1).is_some_and(|r| !r.is_external()));
            let Some(private) = private else { continue };
            floating_on.entry(private.1.as_str()).or_default().push(nubo_api::agent::FloatingNat {
                address: address.clone(),
                private: private.4.clone(),
                external: external.parse().map_err(|e| sqlx::Error::Protocol(format!("network id: {e}")))?,
            });
        }
        for (address, external, net, private) in &balancer_floating {
            floating_on.entry(net.as_str()).or_default().push(nubo_api::agent::FloatingNat {
                address: address.clone(),
                private: private.clone(),
                external: external.parse().map_err(|e| sqlx::Error::Protocol(format!("network id: {e}")))?,
            });
        }
        // The external networks of those floating IPs run here too, with
        // or without ports of their own: their bridge is where the host
        // answers for the addresses.
        let mut wanted: Vec<String> = local_nets.iter().map(|n| n.to_string()).collect();
        for f in floating_on.values().flatten() {
            if !wanted.iter().any(|w| w == f.external.as_str()) {
                wanted.push(f.external.to_string());
            }
        }
        wanted.sort();
        let mut networks = Vec::new();
        for net in &wanted {
            let net = net.as_str();
            let Some(row) = rows.get(net).cloned() else { continue };
            let external = match (&row.external_interface, &row.pool_start) {
                (Some(interface), Some(service)) => Some(nubo_api::agent::ExternalLink {
                    interface: interface.clone(),
                    vlan: row.vlan.and_then(|v| u16::try_from(v).ok()),
                    service_address: service.clone(),
                }),
                _ => None,
            };
            let mut peers: Vec<String> = ports
                .iter()
                .filter(|p| p.1 == net)
                .filter_map(|p| p.5.as_deref())
                .chain(balancers.iter().filter(|b| b.1 == net).map(|b| b.2.as_str()))
                .filter(|h| *h != host)
                .filter_map(|h| underlays.get(h).cloned())
                .collect();
            peers.sort();
            peers.dedup();
            // An external network is the hosts' own LAN: no VXLAN between them.
            if external.is_some() {
                peers.clear();
            }
            // Addresses on this network of each instance.
            let address_on_net: HashMap<&str, &str> =
                ports.iter().filter(|p| p.1 == net).map(|p| (p.0.as_str(), p.4.as_str())).collect();
            let mut desired_ports = Vec::new();
            for p in local.iter().filter(|p| p.1 == net) {
                let (mut ingress, mut egress) = (Vec::new(), Vec::new());
                for g in groups_of.get(p.0.as_str()).into_iter().flatten() {
                    for r in rules.iter().filter(|r| r.group_id == *g) {
                        let sources = match (&r.cidr, &r.source_group_id) {
                            (Some(c), _) => match nubo_api::cidr::parse_rule_cidr(c) {
                                Ok(net) => vec![nubo_api::cidr::canonical(&net)],
                                // A row stored before CIDRs were parsed at the
                                // edge. Sent on, it would make the host's
                                // whole ruleset fail; left out, it allows
                                // nothing, which is what it can be trusted to mean.
                                Err(e) => {
                                    tracing::warn!(rule = %r.id, group = %r.group_id, instance = %p.0, error = %e,
                                        "left a security-group rule out of the host's firewall: its stored CIDR does not parse; delete the rule and add it again");
                                    continue;
                                }
                            },
                            (None, Some(src)) => members_of
                                .get(src.as_str())
                                .into_iter()
                                .flatten()
                                .filter_map(|m| address_on_net.get(m))
                                .map(|a| format!("{a}/32"))
                                .collect(),
                            (None, None) => Vec::new(),
                        };
                        let rule = firewall_rule(r, sources);
                        if r.direction == "egress" {
                            egress.push(rule);
                        } else {
                            ingress.push(rule);
                        }
                    }
                }
                desired_ports.push(DesiredPort {
                    instance_id: p.0.parse().map_err(|e| sqlx::Error::Protocol(format!("instance id: {e}")))?,
                    mac: p.3.clone(),
                    address: p.4.clone(),
                    ingress,
                    egress: Some(egress),
                });
            }
            let dns = dns_records(names.iter().filter(|n| n.0 == net).map(|n| (n.1.as_str(), n.2.as_str())));
            networks.push(DesiredNetwork {
                id: row.id.parse().map_err(|e| sqlx::Error::Protocol(format!("network id: {e}")))?,
                vni: row.vni as u32,
                cidr: row.cidr,
                gateway: row.gateway,
                peers,
                ports: desired_ports,
                floating: floating_on.remove(net).unwrap_or_default(),
                external,
                domain: dns_domain(&row.name, &row.id),
                dns,
            });
        }
        Ok((nics, networks))
    }
}

/// A stored rule as the host's firewall takes it: `-1` (EC2's "all") is
/// `all`, and ports are meaningful for tcp and udp only.
fn firewall_rule(r: &crate::security_groups::RuleRow, sources: Vec<String>) -> FirewallRule {
    let protocol = match r.protocol.as_str() {
        "tcp" | "udp" | "icmp" => r.protocol.clone(),
        _ => "all".to_string(),
    };
    let (from_port, to_port) = if matches!(protocol.as_str(), "tcp" | "udp") && r.from_port >= 0 {
        (r.from_port.clamp(0, 65535) as u16, r.to_port.clamp(0, 65535) as u16)
    } else {
        (0, 65535)
    };
    FirewallRule { protocol, from_port, to_port, sources }
}

/// A network's DNS domain: `<name>.internal` when its name is a DNS
/// label, else `<id>.internal` (names may hold `_` and `.`).
fn dns_domain(name: &str, id: &str) -> String {
    let label = nubo_api::agent::dns_label(name).or_else(|| nubo_api::agent::dns_label(id)).unwrap_or_default();
    format!("{label}.internal")
}

/// DNS records of (instance name, address) pairs: instances whose name is
/// not a DNS label are left out (they have no name in DNS, the others keep
/// theirs); each (name, address) once.
fn dns_records<'a>(named: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<DnsRecord> {
    let mut out: Vec<DnsRecord> = named
        .filter_map(|(name, address)| {
            let name = nubo_api::agent::dns_label(name)?;
            address.parse::<Ipv4Addr>().ok()?;
            Some(DnsRecord { name, address: address.to_string() })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, &a.address).cmp(&(&b.name, &b.address)));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_ranges() {
        let c = Cidr::parse_network("10.20.0.0/24").unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 20, 0, 1));
        let hosts: Vec<_> = c.hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(10, 20, 0, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(10, 20, 0, 254)));
        assert_eq!(hosts.len(), 253);
        assert_eq!(c.host_count(), 253);
        assert!(c.is_host(Ipv4Addr::new(10, 20, 0, 2)) && c.is_host(Ipv4Addr::new(10, 20, 0, 254)));
        assert!(!c.is_host(Ipv4Addr::new(10, 20, 0, 1)) && !c.is_host(Ipv4Addr::new(10, 20, 0, 255)));
        assert!(!c.is_host(Ipv4Addr::new(10, 20, 1, 2)));
        assert_eq!(Cidr::parse_network("10.20.0.0/29").unwrap().hosts().count(), 5);
        assert!(Cidr::parse_network("10.20.0.5/24").unwrap_err().contains("10.20.0.0/24"));
        assert!(Cidr::parse_network("10.20.0.0/30").unwrap_err().contains("/16 to /29"));
        assert!(Cidr::parse_network("10.20.0.0").is_err());
        assert!(Cidr::parse_network("nonsense/24").is_err());
    }

    #[test]
    fn ec2_ids_map_back_to_the_network() {
        let net = NetworkId::generate().to_string();
        let (vpc, subnet) = ec2_ids(&net);
        assert!(vpc.starts_with("vpc-") && subnet.starts_with("subnet-"));
        assert_eq!(network_of_ec2_id("vpc", &vpc), Some(net.clone()));
        assert_eq!(network_of_ec2_id("subnet", &subnet), Some(net));
        assert_eq!(network_of_ec2_id("vpc", &subnet), None);
        assert_eq!(network_of_ec2_id("vpc", "vpc-zz"), None);
    }

    #[test]
    fn macs_are_unicast_stable_and_differ_per_network() {
        let a = mac_for("i-1", "net-a");
        assert_eq!(a, mac_for("i-1", "net-a"));
        assert_ne!(a, mac_for("i-1", "net-b"));
        assert!(a.starts_with("52:54:"));
    }

    #[test]
    fn dns_names_are_labels_and_bad_ones_are_left_out() {
        let named = [("Web-1", "10.0.0.2"), ("bad_name", "10.0.0.3"), ("web.2", "10.0.0.4"), ("db", "10.0.0.5")];
        let r = dns_records(named.iter().copied().chain([("db", "10.0.0.5"), ("x", "nonsense")]));
        let got: Vec<(&str, &str)> = r.iter().map(|r| (r.name.as_str(), r.address.as_str())).collect();
        assert_eq!(got, [("db", "10.0.0.5"), ("web-1", "10.0.0.2")]);
        assert_eq!(dns_domain("Blue", "net-0123456789abcdef0"), "blue.internal");
        assert_eq!(dns_domain("blue_net", "net-0123456789abcdef0"), "net-0123456789abcdef0.internal");
    }

    #[test]
    fn ec2_all_protocol_becomes_all_ports() {
        let r = crate::security_groups::RuleRow {
            id: "sgr-1".into(),
            group_id: "sg-1".into(),
            direction: "ingress".into(),
            protocol: "-1".into(),
            from_port: -1,
            to_port: -1,
            cidr: None,
            source_group_id: Some("sg-1".into()),
            description: String::new(),
        };
        let f = firewall_rule(&r, vec!["10.0.0.2/32".into()]);
        assert_eq!((f.protocol.as_str(), f.from_port, f.to_port), ("all", 0, 65535));
        let tcp = crate::security_groups::RuleRow { protocol: "tcp".into(), from_port: 80, to_port: 81, ..r };
        let f = firewall_rule(&tcp, vec![]);
        assert_eq!((f.protocol.as_str(), f.from_port, f.to_port), ("tcp", 80, 81));
    }
}
