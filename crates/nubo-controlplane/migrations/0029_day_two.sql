-- Day-two operations (rebuild, revert): counters the agents compare with
-- what they last applied, so that each replacement of a disk happens once
-- however often an agent restarts (see `day_two` and the agent's storage).
--
-- instances.rebuild_seq: bumped by each rebuild or instance revert; the
-- host replaces the root disk (from the instance's image, which the
-- operation set) before the next boot whose count is higher.
-- volumes.revert_seq / revert_snapshot_id: bumped by each volume revert;
-- the host replaces the volume's file by a copy of the snapshot (by
-- rename) and records the count it applied next to the file.

ALTER TABLE instances ADD COLUMN rebuild_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN revert_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN revert_snapshot_id TEXT;

-- EC2's CreateReplaceRootVolumeTask: each task as asked (a rebuild or a
-- revert of a running instance); its state is read from the instance's
-- life events after `started_at_ms` (see `ec2::replace_root`).
CREATE TABLE replace_root_volume_tasks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    image_id TEXT,
    snapshot_id TEXT,
    started_at_ms BIGINT NOT NULL
);
CREATE INDEX replace_root_volume_tasks_project ON replace_root_volume_tasks (project_id, started_at_ms);
