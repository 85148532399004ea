-- Disks written from a backup (see src/restores.rs): an instance's root
-- disk or a volume, restored once per `restore_seq` by its host before
-- the VM boots or the volume is used. Kept on the rows themselves, so the
-- host's desired state reads them with the rows it reads anyway.
ALTER TABLE instances ADD COLUMN restore_backup_id TEXT;
ALTER TABLE instances ADD COLUMN restore_repository_id TEXT;
ALTER TABLE instances ADD COLUMN restore_seq BIGINT NOT NULL DEFAULT 0;
-- the backup's point in time (its created_at_ms): how old the data is
ALTER TABLE instances ADD COLUMN restore_data_ms BIGINT;
ALTER TABLE volumes ADD COLUMN restore_backup_id TEXT;
ALTER TABLE volumes ADD COLUMN restore_repository_id TEXT;
-- root, or the volume id inside the backup
ALTER TABLE volumes ADD COLUMN restore_disk TEXT;
ALTER TABLE volumes ADD COLUMN restore_seq BIGINT NOT NULL DEFAULT 0;
