-- Live migrations. The target host's capacity is claimed when the row is
-- made; completion moves the instance (and its volumes) and frees the
-- source's, failure frees the target's. `cleaned` turns 1 once the target
-- of a failed migration has removed its copy.

CREATE TABLE migrations (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instances(id),
    source_host TEXT NOT NULL REFERENCES hosts(id),
    target_host TEXT NOT NULL REFERENCES hosts(id),
    state TEXT NOT NULL,
    nbd_host TEXT,
    nbd_port BIGINT,
    migrate_uri TEXT,
    downtime_ms BIGINT,
    total_ms BIGINT,
    disk_bytes BIGINT,
    ram_bytes BIGINT,
    error TEXT,
    cleaned BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX migrations_instance ON migrations(instance_id);
CREATE INDEX migrations_target ON migrations(target_host, state);

-- Hosts whose instance disks live on storage other hosts mount too (the
-- same path): a down host's instances restart on one of those.
ALTER TABLE hosts ADD COLUMN shared_storage TEXT;
