//! Many instances and their related rows, read with a fixed number of
//! queries however many instances there are. A [`Selection`] (a
//! project's instances, one host's, one instance, or a page of them) is
//! one SQL subquery on `instances`; the rows are one query, and each
//! related table (ports, tags, addresses, volumes, security groups,
//! hosts) one more, filtered by `instance_id IN (the subquery)`. Lists,
//! EC2 descriptions and each host's desired state read through here, so
//! their cost is a constant number of round trips, not one per instance.

use crate::networks::NetworkPortRow;
use crate::pagination::{Cursor, PageRequest};
use crate::store::{Db, HostRow, InstanceRow, PortRow, Store};
use crate::volumes::VolumeRow;
use sqlx::any::AnyArguments;
use sqlx::query::QueryAs;
use std::collections::{BTreeMap, HashMap};

/// Which instances are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every project's (operators).
    All,
    Project(&'a str),
    /// One instance by id.
    One(&'a str),
    /// These instances (an explicit list in a request).
    Ids(&'a [String]),
}

/// A set of instances in list order (`created_at_ms`, then `id`),
/// optionally one page of it.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub scope: Scope<'a>,
    /// Terminated instances last updated before this are left out (EC2
    /// shows them for an hour); `None` keeps them all.
    pub terminated_since_ms: Option<i64>,
    pub page: PageRequest,
}

/// Adds `a` to `args`; its placeholder (`$n`).
fn arg(a: Arg, args: &mut Vec<Arg>) -> String {
    args.push(a);
    format!("${}", args.len())
}

/// A value bound to a `$n` of a generated query.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    Int(i64),
}

impl<'a> Selection<'a> {
    pub fn new(scope: Scope<'a>) -> Self {
        Self { scope, terminated_since_ms: None, page: PageRequest::default() }
    }

    pub fn page(mut self, page: PageRequest) -> Self {
        self.page = page;
        self
    }

    /// The selection to read `rows`' related rows by, once `rows` were
    /// read with `self`: their ids when they fit in a page (so that each
    /// related table is read by its index on `instance_id`, whatever the
    /// planner makes of a subquery), else `self` as a subquery (a whole
    /// list would bind too many values).
    pub fn for_related<'r>(&'r self, ids: &'r [String]) -> Selection<'r> {
        if ids.len() <= crate::pagination::MAX_PAGE as usize + 1 {
            Selection::new(Scope::Ids(ids))
        } else {
            self.clone()
        }
    }

    pub fn terminated_since(mut self, at_ms: i64) -> Self {
        self.terminated_since_ms = Some(at_ms);
        self
    }

    /// `WHERE ... ORDER BY ... LIMIT ...` on `instances`, with its
    /// arguments numbered from `$1`. Only our own text goes into the SQL;
    /// every value is bound.
    fn clause(&self) -> (String, Vec<Arg>) {
        let mut conditions = Vec::new();
        let mut args = Vec::new();
        match self.scope {
            Scope::All => {}
            Scope::Project(p) => conditions.push(format!("project_id = {}", arg(Arg::Text(p.into()), &mut args))),
            Scope::One(id) => conditions.push(format!("id = {}", arg(Arg::Text(id.into()), &mut args))),
            Scope::Ids([]) => conditions.push("1 = 0".into()),
            Scope::Ids(ids) => {
                let list: Vec<String> = ids.iter().map(|id| arg(Arg::Text(id.clone()), &mut args)).collect();
                conditions.push(format!("id IN ({})", list.join(", ")));
            }
        }
        if let Some(since) = self.terminated_since_ms {
            conditions.push(format!("(state <> 'terminated' OR updated_at_ms >= {})", arg(Arg::Int(since), &mut args)));
        }
        if let Some(Cursor { created_at_ms, id }) = &self.page.after {
            let at = arg(Arg::Int(*created_at_ms), &mut args);
            let id = arg(Arg::Text(id.clone()), &mut args);
            conditions.push(format!("(created_at_ms > {at} OR (created_at_ms = {at} AND id > {id}))"));
        }
        let mut sql = String::new();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY created_at_ms, id");
        if let Some(n) = self.page.rows_to_read() {
            sql.push_str(&format!(" LIMIT {}", arg(Arg::Int(n), &mut args)));
        }
        (sql, args)
    }

    /// `SELECT id FROM instances ...`: the selection as a subquery.
    fn ids(&self) -> (String, Vec<Arg>) {
        let (clause, args) = self.clause();
        (format!("SELECT id FROM instances{clause}"), args)
    }
}

fn bind_all<'q, O>(
    mut q: QueryAs<'q, Db, O, AnyArguments<'q>>,
    args: Vec<Arg>,
) -> QueryAs<'q, Db, O, AnyArguments<'q>> {
    for a in args {
        q = match a {
            Arg::Text(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
        };
    }
    q
}

/// Rows of related tables, by instance id.
fn group<K: Eq + std::hash::Hash, V>(rows: impl IntoIterator<Item = (K, V)>) -> HashMap<K, Vec<V>> {
    let mut out: HashMap<K, Vec<V>> = HashMap::new();
    for (k, v) in rows {
        out.entry(k).or_default().push(v);
    }
    out
}

/// A NIC as read for a selection: instance, network, index, MAC,
/// address, the network's name and the floating IP on it.
type AddressRow = (String, String, i64, String, String, Option<String>, Option<String>);

/// A NIC of an instance with its network's name.
#[derive(Debug, Clone)]
pub struct Address {
    pub port: NetworkPortRow,
    pub network_name: String,
    /// The floating IP translated to this NIC's address (the instance's
    /// first NIC on a private network has it, if any).
    pub floating_ip: Option<String>,
}

/// What an instance's REST view shows beside its row, for a selection.
#[derive(Debug, Default)]
pub struct Related {
    pub ports: HashMap<String, Vec<PortRow>>,
    pub tags: HashMap<String, BTreeMap<String, String>>,
    pub addresses: HashMap<String, Vec<Address>>,
    pub volumes: HashMap<String, Vec<VolumeRow>>,
    pub hosts: HashMap<String, HostRow>,
}

impl Store {
    /// The selected instances, in list order (one query). For a page,
    /// one row more than the page is read (see `PageRequest::cut`).
    pub async fn select_instances(&self, s: &Selection<'_>) -> Result<Vec<InstanceRow>, sqlx::Error> {
        let (clause, args) = s.clause();
        bind_all(sqlx::query_as(&format!("SELECT * FROM instances{clause}")), args).fetch_all(&self.pool).await
    }

    /// Forwarded ports of the selection, each instance's by guest port.
    pub async fn ports_of_selection(&self, s: &Selection<'_>) -> Result<HashMap<String, Vec<PortRow>>, sqlx::Error> {
        let (ids, args) = s.ids();
        let rows: Vec<PortRow> = bind_all(
            sqlx::query_as(&format!(
                "SELECT instance_id, guest_port, host_port FROM instance_ports WHERE instance_id IN ({ids})
                 ORDER BY instance_id, guest_port"
            )),
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(group(rows.into_iter().map(|p| (p.instance_id.clone(), p))))
    }

    /// Tags of the selection's instances.
    pub async fn tags_of_selection(
        &self,
        s: &Selection<'_>,
    ) -> Result<HashMap<String, BTreeMap<String, String>>, sqlx::Error> {
        let (ids, args) = s.ids();
        let rows: Vec<(String, String, String)> = bind_all(
            sqlx::query_as(&format!("SELECT resource_id, key, value FROM tags WHERE resource_id IN ({ids})")),
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for (resource, key, value) in rows {
            out.entry(resource).or_default().insert(key, value);
        }
        Ok(out)
    }

    /// NICs of the selection's instances with their networks' names, by NIC index.
    pub async fn addresses_of_selection(
        &self,
        s: &Selection<'_>,
    ) -> Result<HashMap<String, Vec<Address>>, sqlx::Error> {
        let (ids, args) = s.ids();
        let rows: Vec<AddressRow> = bind_all(
            sqlx::query_as(&format!(
                "SELECT p.instance_id, p.network_id, p.nic_index, p.mac, p.address, n.name, f.address FROM network_ports p
                 LEFT JOIN networks n ON n.id = p.network_id
                 LEFT JOIN floating_ips f ON f.instance_id = p.instance_id AND n.external_interface IS NULL
                   AND p.nic_index = (SELECT MIN(q.nic_index) FROM network_ports q JOIN networks qn ON qn.id = q.network_id
                                      WHERE q.instance_id = p.instance_id AND qn.external_interface IS NULL)
                 WHERE p.instance_id IN ({ids})
                 ORDER BY p.instance_id, p.nic_index"
            )),
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(group(rows.into_iter().map(|(instance_id, network_id, nic_index, mac, address, name, floating_ip)| {
            let port = NetworkPortRow { instance_id: instance_id.clone(), network_id, nic_index, mac, address };
            (instance_id, Address { port, network_name: name.unwrap_or_default(), floating_ip })
        })))
    }

    /// Volumes attached to the selection's instances (deleted ones
    /// included when `live_only` is false), each instance's by slot.
    pub async fn volumes_of_selection(
        &self,
        s: &Selection<'_>,
        live_only: bool,
    ) -> Result<HashMap<String, Vec<VolumeRow>>, sqlx::Error> {
        let (ids, args) = s.ids();
        let live = if live_only { "AND state <> 'deleted'" } else { "" };
        // Volumes without a slot first, as SQLite sorts NULLs and as
        // PostgreSQL (NULLs last) would not by `slot` alone.
        let rows: Vec<VolumeRow> = bind_all(
            sqlx::query_as(&format!(
                "SELECT * FROM volumes WHERE instance_id IN ({ids}) {live}
                 ORDER BY instance_id, (slot IS NOT NULL), slot, id"
            )),
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(group(rows.into_iter().filter_map(|v| Some((v.instance_id.clone()?, v)))))
    }

    /// Security groups (id, name) of the selection's instances, by name.
    pub async fn groups_of_selection(
        &self,
        s: &Selection<'_>,
    ) -> Result<HashMap<String, Vec<(String, String)>>, sqlx::Error> {
        let (ids, args) = s.ids();
        let rows: Vec<(String, String, String)> = bind_all(
            sqlx::query_as(&format!(
                "SELECT m.instance_id, g.id, g.name FROM instance_security_groups m
                 JOIN security_groups g ON g.id = m.group_id WHERE m.instance_id IN ({ids})
                 ORDER BY m.instance_id, g.name"
            )),
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(group(rows.into_iter().map(|(instance, id, name)| (instance, (id, name)))))
    }

    /// The hosts the selection's instances are on, by id.
    pub async fn hosts_of_selection(&self, s: &Selection<'_>) -> Result<HashMap<String, HostRow>, sqlx::Error> {
        let (clause, args) = s.clause();
        let rows: Vec<HostRow> = bind_all(
            sqlx::query_as(&format!("SELECT * FROM hosts WHERE id IN (SELECT host_id FROM instances{clause})")),
            args,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|h| (h.id.clone(), h)).collect())
    }

    /// Everything an instance's REST view shows beside its row, for the
    /// whole selection: five queries.
    pub async fn related(&self, s: &Selection<'_>) -> Result<Related, sqlx::Error> {
        Ok(Related {
            ports: self.ports_of_selection(s).await?,
            tags: self.tags_of_selection(s).await?,
            addresses: self.addresses_of_selection(s).await?,
            volumes: self.volumes_of_selection(s, false).await?,
            hosts: self.hosts_of_selection(s).await?,
        })
    }
}

/// Instances being migrated to a host (their rows still name the
/// source), and their volumes: what the target's desired state adds.
#[derive(Debug, Default)]
pub struct Incoming {
    pub instances: Vec<InstanceRow>,
    pub volumes: HashMap<String, Vec<VolumeRow>>,
}

/// Ids of the instances a host is the target of a migration for (one
/// under way, or a failed one whose copy is still to be removed).
const ARRIVING: &str = "SELECT instance_id FROM migrations WHERE target_host = $1
    AND (state IN ('preparing', 'migrating') OR (state = 'failed' AND cleaned = 0))";

impl Store {
    /// The instances migrating to `host` and their volumes (two queries).
    pub async fn incoming_migrations(&self, host: &str) -> Result<Incoming, sqlx::Error> {
        let instances = sqlx::query_as(&format!("SELECT * FROM instances WHERE id IN ({ARRIVING}) ORDER BY id"))
            .bind(host)
            .fetch_all(&self.pool)
            .await?;
        let volumes: Vec<VolumeRow> = sqlx::query_as(&format!(
            "SELECT * FROM volumes WHERE instance_id IN ({ARRIVING}) ORDER BY instance_id, (slot IS NOT NULL), slot, id"
        ))
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        Ok(Incoming {
            instances,
            volumes: group(volumes.into_iter().filter_map(|v| Some((v.instance_id.clone()?, v)))),
        })
    }

    /// The images named by `ids` (distinct image ids: there are at most
    /// as many as images, whatever the number of instances): one query.
    pub async fn images_by_ids(&self, ids: &[String]) -> Result<Vec<crate::images::ImageRow>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT * FROM images WHERE id IN ({})", crate::store::placeholders(1, ids.len()));
        let mut q = sqlx::query_as(&sql);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(&self.pool).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_after_a_cursor_is_one_range_with_bound_values() {
        let s = Selection::new(Scope::Project("p-1"))
            .terminated_since(5)
            .page(PageRequest { limit: Some(10), after: Some(Cursor { created_at_ms: 7, id: "i-a".into() }) });
        let (sql, args) = s.clause();
        assert_eq!(
            sql,
            " WHERE project_id = $1 AND (state <> 'terminated' OR updated_at_ms >= $2) \
             AND (created_at_ms > $3 OR (created_at_ms = $3 AND id > $4)) ORDER BY created_at_ms, id LIMIT $5"
        );
        assert!(matches!(args.as_slice(), [Arg::Text(p), Arg::Int(5), Arg::Int(7), Arg::Text(i), Arg::Int(11)]
            if p == "p-1" && i == "i-a"));
        let (sql, args) = Selection::new(Scope::All).clause();
        assert_eq!((sql.as_str(), args.len()), (" ORDER BY created_at_ms, id", 0));
    }
}
