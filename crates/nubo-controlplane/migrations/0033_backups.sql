-- Backups that leave the host (see docs/backups.md).
--
-- A repository is cluster-wide (an operator registers it); its location
-- is kept without its secret, the secret (SFTP private key, S3 secret
-- key) and the repository's encryption key sealed with the server key.
CREATE TABLE backup_repositories (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- dir | sftp | s3
    kind TEXT NOT NULL,
    -- RepositoryLocation as JSON with its secret field emptied
    location_json TEXT NOT NULL,
    -- the secret field's value, sealed (none for kind dir)
    sealed_secret TEXT,
    -- the 32-byte key that encrypts every object in the repository, sealed
    sealed_key TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- A project's plan: which instances, when (cron, UTC), where, what to keep.
CREATE TABLE backup_plans (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    name TEXT NOT NULL,
    repository_id TEXT NOT NULL REFERENCES backup_repositories(id),
    -- PlanSelector as JSON: instance ids, tags, groups
    selector_json TEXT NOT NULL,
    schedule TEXT NOT NULL,
    keep_last INTEGER NOT NULL,
    keep_daily INTEGER NOT NULL,
    keep_weekly INTEGER NOT NULL,
    keep_monthly INTEGER NOT NULL,
    -- none | each | daily
    verify TEXT NOT NULL,
    -- when the schedule next fires, and when it last did
    next_run_ms BIGINT,
    last_run_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- One backup of one instance. No foreign key to instances: a backup
-- outlives its instance (and its host).
CREATE TABLE backups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    instance_name TEXT NOT NULL,
    -- none: taken by `nubo backup run` without a plan
    plan_id TEXT,
    repository_id TEXT NOT NULL REFERENCES backup_repositories(id),
    -- the host that takes (took) it
    host_id TEXT,
    -- the backup it counts changes from
    parent_id TEXT,
    -- pending | running | completed | failed
    state TEXT NOT NULL,
    -- what the instance was: size, image, volumes, networks, tags (JSON)
    instance_json TEXT NOT NULL,
    -- per disk: size, incremental or why full, bytes read/sent/stored (JSON)
    disks_json TEXT NOT NULL DEFAULT '[]',
    consistency TEXT,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    bytes_total BIGINT,
    bytes_sent BIGINT NOT NULL DEFAULT 0,
    bytes_stored BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    -- none | pending | running | verified | failed
    verify_state TEXT NOT NULL DEFAULT 'none',
    verify_detail TEXT,
    -- the throwaway instance a verification runs
    verify_instance_id TEXT,
    created_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT
);
CREATE INDEX backups_by_instance ON backups (instance_id, created_at_ms);
CREATE INDEX backups_by_state ON backups (state);
CREATE INDEX backups_by_plan ON backups (plan_id, created_at_ms);
