-- Load balancers: one listener per row, placed on one host with a host
-- port from the host's forwarded-port range (instances' forwards and
-- balancers share that range, each port used once per host). Targets are
-- instance ids and/or a group (by name: members join and leave as it
-- scales). What the host last reported (backends' health and counters)
-- is kept with the row.

CREATE TABLE load_balancers (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    protocol TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    guest_port BIGINT NOT NULL,
    targets_json TEXT NOT NULL,
    group_name TEXT,
    weights_json TEXT NOT NULL,
    health_json TEXT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    host_port BIGINT NOT NULL,
    -- The host's last report: an ActualBalancer as JSON.
    actual_json TEXT,
    reported_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name),
    UNIQUE (host_id, host_port)
);
CREATE INDEX load_balancers_host ON load_balancers(host_id);
