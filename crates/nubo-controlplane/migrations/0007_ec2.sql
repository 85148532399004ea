-- The EC2 API: instance types and reservations on instances, generic tags,
-- security groups (rules and memberships, enforced by a later issue), and
-- RunInstances' ClientToken idempotency.

-- The instance type an instance was launched by (NULL: launched by size).
ALTER TABLE instances ADD COLUMN instance_type TEXT;
-- EC2 groups the instances of one RunInstances call in a reservation.
ALTER TABLE instances ADD COLUMN reservation_id TEXT;
ALTER TABLE instances ADD COLUMN launch_index BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN client_token TEXT;

-- Tags of any resource (instance, volume, image, snapshot, security group),
-- by its id. The project is the resource's, so tenancy checks need no join.
CREATE TABLE tags (
    resource_id TEXT NOT NULL,
    -- 'instance', 'volume', 'image', 'snapshot', 'security-group'
    resource_type TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_id, key)
);
CREATE INDEX tags_project_key ON tags(project_id, key);

CREATE TABLE security_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    -- 1 for the project's 'default' group (made on first use, never deleted).
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE security_group_rules (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES security_groups(id),
    -- 'ingress' or 'egress'
    direction TEXT NOT NULL,
    -- 'tcp', 'udp', 'icmp' or '-1' (all)
    protocol TEXT NOT NULL,
    -- -1 for all ports (and for protocol '-1'); ICMP type and code for icmp.
    from_port BIGINT NOT NULL,
    to_port BIGINT NOT NULL,
    -- Exactly one of a CIDR and a source group.
    cidr TEXT,
    source_group_id TEXT,
    description TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX security_group_rules_group ON security_group_rules(group_id);

CREATE TABLE instance_security_groups (
    instance_id TEXT NOT NULL REFERENCES instances(id),
    group_id TEXT NOT NULL REFERENCES security_groups(id),
    PRIMARY KEY (instance_id, group_id)
);
CREATE INDEX instance_security_groups_group ON instance_security_groups(group_id);

-- RunInstances ClientToken: the first request with a token claims it; its
-- parameters' hash and, once launched, its instances answer every retry.
CREATE TABLE client_tokens (
    project_id TEXT NOT NULL REFERENCES projects(id),
    token TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    reservation_id TEXT NOT NULL,
    -- Space-separated instance ids; NULL while the first request runs.
    instance_ids TEXT,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (project_id, token)
);

-- The device name an EC2 AttachVolume asked for (/dev/sdf), echoed back.
ALTER TABLE volumes ADD COLUMN device_name TEXT;
