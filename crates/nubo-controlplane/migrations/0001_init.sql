-- Nubo's initial schema. Portable SQL: TEXT ids, BIGINT times in ms since
-- the epoch, no engine-specific types, so PostgreSQL can run it as is.

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    accel TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    used_vcpus BIGINT NOT NULL DEFAULT 0,
    used_memory_mib BIGINT NOT NULL DEFAULT 0,
    used_disk_gib BIGINT NOT NULL DEFAULT 0,
    enabled BIGINT NOT NULL DEFAULT 1,
    last_heartbeat_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    vcpus BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    disk_gib BIGINT NOT NULL,
    host_id TEXT REFERENCES hosts(id),
    desired TEXT NOT NULL,
    state TEXT NOT NULL,
    start_seq BIGINT NOT NULL DEFAULT 1,
    reboot_count BIGINT NOT NULL DEFAULT 0,
    user_data TEXT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX instances_host ON instances(host_id);

CREATE TABLE instance_ports (
    instance_id TEXT NOT NULL REFERENCES instances(id),
    guest_port BIGINT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    host_port BIGINT NOT NULL,
    PRIMARY KEY (instance_id, guest_port),
    UNIQUE (host_id, host_port)
);

CREATE TABLE instance_events (
    instance_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    stage TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);

CREATE TABLE consoles (
    instance_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    next_offset BIGINT NOT NULL
);

CREATE TABLE images (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Credentials are stored as SHA-256 of high-entropy random tokens.
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
