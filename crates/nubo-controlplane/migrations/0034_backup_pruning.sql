-- Pruning a backup repository (see src/backups.rs): while it runs the
-- repository is marked, so no host starts a backup into it; the last
-- prune's figures are shown in the repository's view.
ALTER TABLE backup_repositories ADD COLUMN pruning_since_ms BIGINT;
ALTER TABLE backup_repositories ADD COLUMN last_prune_ms BIGINT;
ALTER TABLE backup_repositories ADD COLUMN last_prune_bytes_freed BIGINT;
-- When the host taking a backup last reported on it: a running backup
-- whose host went silent is failed after a while.
ALTER TABLE backups ADD COLUMN reported_at_ms BIGINT;
