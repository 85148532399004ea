//! Security groups in SQL: per project, with ingress (and egress) rules
//! by protocol, port range and a CIDR or a source group, and the
//! instances that are members. Each project has a `default` group, made on
//! first use with EC2's default rules (all traffic from members of the
//! group itself in, everything out); any other group starts, as on EC2,
//! with one rule: everything out. Hosts enforce both directions (see
//! `networks::desired_networks`): a group without egress rules lets
//! nothing out but DHCP, DNS to the gateway and metadata.

use crate::store::{now_ms, Store};
use nubo_api::ids::{SecurityGroupId, SecurityGroupRuleId};
use sqlx::FromRow;

pub const DEFAULT_GROUP: &str = "default";

#[derive(Debug, Clone, FromRow)]
pub struct SecurityGroupRow {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    pub is_default: i64,
    pub created_at_ms: i64,
    /// The network whose VPC an EC2 client made the group in (migration
    /// 0027), if it named one.
    pub network_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RuleRow {
    pub id: String,
    pub group_id: String,
    pub direction: String,
    pub protocol: String,
    pub from_port: i64,
    pub to_port: i64,
    pub cidr: Option<String>,
    pub source_group_id: Option<String>,
    pub description: String,
}

/// A rule to add (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub direction: &'static str,
    pub protocol: String,
    pub from_port: i64,
    pub to_port: i64,
    pub cidr: Option<String>,
    pub source_group_id: Option<String>,
    pub description: String,
}

impl NewRule {
    fn same_as(&self, r: &RuleRow) -> bool {
        self.direction == r.direction
            && self.protocol == r.protocol
            && self.from_port == r.from_port
            && self.to_port == r.to_port
            && self.cidr == r.cidr
            && self.source_group_id == r.source_group_id
    }
}

/// Why rules were not added.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("the group already has this rule")]
    Duplicate,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Why a group was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// The project's default group stays.
    IsDefault,
    /// Instances (not terminated) are members.
    InUse(Vec<String>),
    /// Rules of other groups name it as their source.
    Referenced(Vec<String>),
}

use crate::store::Tx;

/// Everything out: the egress rule every group starts with (EC2's).
fn allow_all_out() -> NewRule {
    NewRule {
        direction: "egress",
        protocol: "-1".into(),
        from_port: -1,
        to_port: -1,
        cidr: Some("0.0.0.0/0".into()),
        source_group_id: None,
        description: String::new(),
    }
}

async fn insert_rule(tx: &mut Tx<'_>, group: &str, r: &NewRule) -> Result<RuleRow, sqlx::Error> {
    let id = SecurityGroupRuleId::generate().to_string();
    sqlx::query(
        "INSERT INTO security_group_rules (id, group_id, direction, protocol, from_port, to_port, cidr,
           source_group_id, description, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(group)
    .bind(r.direction)
    .bind(&r.protocol)
    .bind(r.from_port)
    .bind(r.to_port)
    .bind(&r.cidr)
    .bind(&r.source_group_id)
    .bind(&r.description)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(RuleRow {
        id,
        group_id: group.to_string(),
        direction: r.direction.to_string(),
        protocol: r.protocol.clone(),
        from_port: r.from_port,
        to_port: r.to_port,
        cidr: r.cidr.clone(),
        source_group_id: r.source_group_id.clone(),
        description: r.description.clone(),
    })
}

impl Store {
    /// The project's default group, made (with EC2's default rules) on first use.
    pub async fn ensure_default_security_group(&self, project: &str) -> Result<SecurityGroupRow, sqlx::Error> {
        if let Some(g) = self.security_group_by_name(project, DEFAULT_GROUP).await? {
            return Ok(g);
        }
        let mut tx = self.begin().await?;
        let id = SecurityGroupId::generate().to_string();
        let made = sqlx::query(
            "INSERT INTO security_groups (id, project_id, name, description, is_default, created_at_ms)
             VALUES ($1, $2, $3, 'default security group', 1, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(project)
        .bind(DEFAULT_GROUP)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 1 {
            let all = |direction, cidr: Option<&str>, source: Option<&str>| NewRule {
                direction,
                protocol: "-1".into(),
                from_port: -1,
                to_port: -1,
                cidr: cidr.map(str::to_string),
                source_group_id: source.map(str::to_string),
                description: String::new(),
            };
            insert_rule(&mut tx, &id, &all("ingress", None, Some(&id))).await?;
            insert_rule(&mut tx, &id, &allow_all_out()).await?;
        }
        tx.commit().await?;
        // A concurrent first use may have made it instead: read whichever won.
        self.security_group_by_name(project, DEFAULT_GROUP)
            .await?
            .ok_or_else(|| sqlx::Error::Protocol("the default security group vanished".into()))
    }

    /// A new group (made in `network`'s VPC when an EC2 client named
    /// one); `None` when the project has one of that name.
    pub async fn create_security_group(
        &self,
        project: &str,
        name: &str,
        description: &str,
        network: Option<&str>,
    ) -> Result<Option<SecurityGroupRow>, sqlx::Error> {
        let id = SecurityGroupId::generate().to_string();
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "INSERT INTO security_groups (id, project_id, name, description, is_default, created_at_ms, network_id)
             VALUES ($1, $2, $3, $4, 0, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(project)
        .bind(name)
        .bind(description)
        .bind(now_ms())
        .bind(network)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        // EC2's one rule of a new group: everything out (revoke it to
        // restrict what members may open).
        insert_rule(&mut tx, &id, &allow_all_out()).await?;
        tx.commit().await?;
        self.security_group(&id).await
    }

    pub async fn security_group(&self, id: &str) -> Result<Option<SecurityGroupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM security_groups WHERE id = $1").bind(id).fetch_optional(&self.pool).await
    }

    pub async fn security_group_by_name(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<SecurityGroupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM security_groups WHERE project_id = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// A project's groups (every project's for `None`), oldest first.
    pub async fn security_groups(&self, project: Option<&str>) -> Result<Vec<SecurityGroupRow>, sqlx::Error> {
        sqlx::query_as("SELECT * FROM security_groups WHERE ($1 IS NULL OR project_id = $1) ORDER BY created_at_ms, id")
            .bind(project)
            .fetch_all(&self.pool)
            .await
    }

    /// The rules of a project's groups (every project's for `None`).
    pub async fn security_group_rules(&self, project: Option<&str>) -> Result<Vec<RuleRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT r.id, r.group_id, r.direction, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id,
                    r.description
             FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id
             WHERE ($1 IS NULL OR g.project_id = $1) ORDER BY r.created_at_ms, r.id",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await
    }

    /// Adds rules to a group, all or none: one that the group already has
    /// (or that is given twice) refuses the whole request, as on EC2.
    pub async fn add_security_group_rules(&self, group: &str, rules: &[NewRule]) -> Result<Vec<RuleRow>, RuleError> {
        let mut tx = self.begin().await?;
        let existing: Vec<RuleRow> = sqlx::query_as(
            "SELECT id, group_id, direction, protocol, from_port, to_port, cidr, source_group_id, description
             FROM security_group_rules WHERE group_id = $1",
        )
        .bind(group)
        .fetch_all(&mut *tx)
        .await?;
        let mut added: Vec<RuleRow> = Vec::new();
        for r in rules {
            if existing.iter().chain(added.iter()).any(|e| r.same_as(e)) {
                return Err(RuleError::Duplicate);
            }
            added.push(insert_rule(&mut tx, group, r).await?);
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Removes rules of `group` equal to `rules` (EC2's revoke); returns
    /// how many went.
    pub async fn revoke_security_group_rules(&self, group: &str, rules: &[NewRule]) -> Result<u64, sqlx::Error> {
        let mut removed = 0;
        for r in self.security_group_rules_of(group).await? {
            if rules.iter().any(|n| n.same_as(&r)) {
                removed += self.delete_security_group_rule(group, &r.id).await? as u64;
            }
        }
        Ok(removed)
    }

    /// One group's rules.
    pub async fn security_group_rules_of(&self, group: &str) -> Result<Vec<RuleRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, group_id, direction, protocol, from_port, to_port, cidr, source_group_id, description
             FROM security_group_rules WHERE group_id = $1 ORDER BY id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await
    }

    /// Deletes one rule of `group`; false when there was none with that id.
    pub async fn delete_security_group_rule(&self, group: &str, rule: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM security_group_rules WHERE group_id = $1 AND id = $2")
            .bind(group)
            .bind(rule)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Deletes a group unless it is the default one, has members that are
    /// not terminated, or is the source of another group's rule.
    pub async fn delete_security_group(&self, group: &SecurityGroupRow) -> Result<DeleteOutcome, sqlx::Error> {
        if group.is_default == 1 {
            return Ok(DeleteOutcome::IsDefault);
        }
        let mut tx = self.begin().await?;
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT m.instance_id FROM instance_security_groups m JOIN instances i ON i.id = m.instance_id
             WHERE m.group_id = $1 AND i.state <> 'terminated' ORDER BY m.instance_id",
        )
        .bind(&group.id)
        .fetch_all(&mut *tx)
        .await?;
        if !members.is_empty() {
            return Ok(DeleteOutcome::InUse(members));
        }
        let referencing: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT group_id FROM security_group_rules WHERE source_group_id = $1 AND group_id <> $1",
        )
        .bind(&group.id)
        .fetch_all(&mut *tx)
        .await?;
        if !referencing.is_empty() {
            return Ok(DeleteOutcome::Referenced(referencing));
        }
        for q in [
            "DELETE FROM instance_security_groups WHERE group_id = $1",
            "DELETE FROM security_group_rules WHERE group_id = $1",
            "DELETE FROM tags WHERE resource_id = $1",
            "DELETE FROM security_groups WHERE id = $1",
        ] {
            sqlx::query(q).bind(&group.id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted)
    }

    /// The groups of each of a project's instances: (instance id, group id, group name).
    pub async fn instance_security_groups(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT m.instance_id, g.id, g.name FROM instance_security_groups m
             JOIN security_groups g ON g.id = m.group_id
             WHERE ($1 IS NULL OR g.project_id = $1) ORDER BY m.instance_id, g.name",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await
    }
}
