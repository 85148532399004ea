-- What EC2 keeps of storage beyond Nubo's own rows.
--
-- volume_modifications: each ModifyVolume (a volume grown) with its
-- original and target sizes and how far it got: 'modifying' until the
-- host has grown the file, 'optimizing' until an attached volume's guest
-- sees the new size, then 'completed' (or 'failed', with the host's
-- message). Kept after they end: DescribeVolumesModifications shows a
-- volume's latest one.
--
-- snapshots.description: the free text a CreateSnapshot gave (EC2's
-- Description), beside the snapshot's name.

CREATE TABLE volume_modifications (
    volume_id TEXT NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id),
    state TEXT NOT NULL,
    original_size_gib BIGINT NOT NULL,
    target_size_gib BIGINT NOT NULL,
    status_message TEXT,
    started_at_ms BIGINT NOT NULL,
    ended_at_ms BIGINT,
    PRIMARY KEY (volume_id, started_at_ms)
);
CREATE INDEX volume_modifications_project ON volume_modifications(project_id, started_at_ms);

ALTER TABLE snapshots ADD COLUMN description TEXT NOT NULL DEFAULT '';
