-- Private networks: one per row, carried between hosts by VXLAN (vni),
-- and the NICs of instances on them. An address is the instance's for its
-- whole life; the UNIQUE constraint is the guard when two servers' launches
-- pick the same free one at once.

ALTER TABLE hosts ADD COLUMN underlay TEXT;

CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    cidr TEXT NOT NULL,
    gateway TEXT NOT NULL,
    vni BIGINT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE network_ports (
    instance_id TEXT NOT NULL REFERENCES instances(id),
    network_id TEXT NOT NULL REFERENCES networks(id),
    nic_index BIGINT NOT NULL,
    mac TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (instance_id, network_id),
    UNIQUE (network_id, address)
);
CREATE INDEX network_ports_network ON network_ports(network_id);
