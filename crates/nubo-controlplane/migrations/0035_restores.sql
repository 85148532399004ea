-- Disks written from a backup (see src/restores.rs): an instance's root
-- disk or a volume, each restored once per `seq` by its host before the
-- VM boots or the volume is used. One row per disk that was ever
-- restored; a new restore of the same disk bumps `seq`.
CREATE TABLE disk_restores (
    -- the instance (root disk) or volume written
    target_id TEXT PRIMARY KEY,
    -- instance | volume
    target_kind TEXT NOT NULL,
    backup_id TEXT NOT NULL,
    -- root, or the volume id inside the backup
    disk TEXT NOT NULL,
    repository_id TEXT NOT NULL REFERENCES backup_repositories(id),
    seq BIGINT NOT NULL,
    -- the backup's point in time (its created_at_ms): how old the data is
    data_as_of_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
