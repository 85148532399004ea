-- Provisioning: SSH key pairs, the recipe catalogue, runs of recipes and
-- commands inside instances, and what each instance's guest agent reports.

CREATE TABLE keypairs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    key_type TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- The key is copied into the instance at launch, as EC2 does: deleting the
-- key pair later does not change running instances.
ALTER TABLE instances ADD COLUMN key_name TEXT;
ALTER TABLE instances ADD COLUMN public_key TEXT;
ALTER TABLE instances ADD COLUMN imds_tokens TEXT NOT NULL DEFAULT 'optional';
ALTER TABLE instances ADD COLUMN guest_json TEXT;

-- project_id NULL: shipped with Nubo, visible to every project.
CREATE TABLE recipes (
    project_id TEXT REFERENCES projects(id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    description TEXT NOT NULL,
    kind TEXT NOT NULL,
    params_json TEXT NOT NULL,
    body TEXT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE UNIQUE INDEX recipes_key ON recipes(COALESCE(project_id, ''), name, version);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instances(id),
    kind TEXT NOT NULL,
    what TEXT NOT NULL,
    params_json TEXT NOT NULL,
    action_json TEXT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    state TEXT NOT NULL,
    guest_pid BIGINT,
    exit_code BIGINT,
    error TEXT,
    log TEXT NOT NULL DEFAULT '',
    log_offset BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT
);
CREATE INDEX runs_instance ON runs(instance_id, created_at_ms);
