-- Identity and tenancy: projects with quotas, users (local or LDAP),
-- memberships with roles, API tokens with expiry and revocation, the
-- audit log, and agent join tokens / per-host credentials.

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    quota_instances BIGINT NOT NULL DEFAULT 20,
    quota_vcpus BIGINT NOT NULL DEFAULT 40,
    quota_memory_mib BIGINT NOT NULL DEFAULT 81920,
    quota_volume_gib BIGINT NOT NULL DEFAULT 1000,
    used_instances BIGINT NOT NULL DEFAULT 0,
    used_vcpus BIGINT NOT NULL DEFAULT 0,
    used_memory_mib BIGINT NOT NULL DEFAULT 0,
    used_volume_gib BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- 'local' (argon2id password) or 'ldap'
    source TEXT NOT NULL,
    password_hash TEXT,
    is_admin BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE memberships (
    user_id TEXT NOT NULL REFERENCES users(id),
    project_id TEXT NOT NULL REFERENCES projects(id),
    -- 'member' or 'reader'
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, project_id)
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users(id),
    project_id TEXT REFERENCES projects(id),
    name TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    project_id TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    source TEXT NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at_ms);

-- One-time tokens that let a new host join; consumed by the join.
CREATE TABLE join_tokens (
    hash TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT,
    used_by_host TEXT
);

-- Per-host credentials: a host can only act as itself.
CREATE TABLE host_credentials (
    hash TEXT PRIMARY KEY,
    host_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

ALTER TABLE instances ADD COLUMN project_id TEXT;
CREATE INDEX instances_project ON instances(project_id);

DROP TABLE tokens;
