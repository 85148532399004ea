-- External (provider) networks and floating IPs.
--
-- An external network is a row of `networks` with an interface name that
-- each host maps to one of its own interfaces (`nubo agent --external
-- NAME=IFACE`), an optional VLAN tag, and the pool Nubo may hand out. It
-- belongs to the operator's project and is visible to every project.
-- `hosts.externals` lists the names a host maps (comma-separated).
-- A floating IP is an address of such a pool held by a project, and
-- associated with at most one instance's private address at a time.

ALTER TABLE networks ADD COLUMN external_interface TEXT;
ALTER TABLE networks ADD COLUMN vlan BIGINT;
ALTER TABLE networks ADD COLUMN pool_start TEXT;
ALTER TABLE networks ADD COLUMN pool_end TEXT;
ALTER TABLE hosts ADD COLUMN externals TEXT NOT NULL DEFAULT '';
ALTER TABLE projects ADD COLUMN quota_floating_ips BIGINT NOT NULL DEFAULT 5;

CREATE TABLE floating_ips (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    network_id TEXT NOT NULL REFERENCES networks(id),
    address TEXT NOT NULL,
    instance_id TEXT REFERENCES instances(id),
    created_at_ms BIGINT NOT NULL,
    UNIQUE (network_id, address)
);
CREATE INDEX floating_ips_project ON floating_ips(project_id);
CREATE INDEX floating_ips_instance ON floating_ips(instance_id);
