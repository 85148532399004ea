-- Storage: the image registry (builtin images beside imported ones and
-- instance snapshots), volumes on hosts' storage pools with their
-- attachments, and volume snapshots.

-- Images get ids (ami-...), owners and files. The builtin rows are written
-- again by every server start, so the old table's rows need no copying.
DROP TABLE images;
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- The owning project; NULL for builtin images.
    project_id TEXT REFERENCES projects(id),
    -- 'public' or 'project'
    visibility TEXT NOT NULL,
    -- 'builtin', 'import' or 'snapshot'
    source TEXT NOT NULL,
    -- 'queued', 'saving', 'active' or 'error'
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    -- 'raw' or 'qcow2'; the file is stored under its sha256.
    disk_format TEXT,
    sha256 TEXT,
    -- What the importer said the file's SHA-256 is; checked at upload.
    expected_sha256 TEXT,
    size_bytes BIGINT,
    virtual_size_bytes BIGINT,
    min_disk_gib BIGINT NOT NULL DEFAULT 0,
    min_memory_mib BIGINT NOT NULL DEFAULT 0,
    -- A builtin image whose kernel, initrd and command line it boots with.
    kernel_image TEXT,
    -- For instance snapshots: the image the instance ran, and the instance.
    parent_id TEXT,
    source_instance TEXT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX images_name ON images(COALESCE(project_id, ''), name);

ALTER TABLE instances ADD COLUMN image_id TEXT;

CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    -- Volumes live on one host's storage pool, where they are claimed.
    host_id TEXT NOT NULL REFERENCES hosts(id),
    -- The size asked for (and claimed), and the file's size as reported.
    size_gib BIGINT NOT NULL,
    actual_size_gib BIGINT NOT NULL DEFAULT 0,
    -- 'present' or 'deleted'
    desired TEXT NOT NULL,
    -- 'creating', 'available', 'in-use', 'deleting', 'deleted' or 'error'
    state TEXT NOT NULL,
    snapshot_id TEXT,
    -- The attachment: its instance, 'attaching' | 'attached' | 'detaching',
    -- the root port it sits on, and what the guest sees.
    instance_id TEXT REFERENCES instances(id),
    attach_state TEXT,
    slot BIGINT,
    guest_device TEXT,
    guest_size_bytes BIGINT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX volumes_host ON volumes(host_id);
CREATE INDEX volumes_instance ON volumes(instance_id);

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    host_id TEXT NOT NULL REFERENCES hosts(id),
    size_gib BIGINT NOT NULL,
    -- 'present' or 'deleted'
    desired TEXT NOT NULL,
    -- 'pending', 'completed', 'deleting', 'deleted' or 'error'
    state TEXT NOT NULL,
    consistency TEXT,
    error TEXT,
    created_at_ms BIGINT NOT NULL,
    completed_at_ms BIGINT
);
CREATE INDEX snapshots_host ON snapshots(host_id);
CREATE INDEX snapshots_volume ON snapshots(volume_id);
