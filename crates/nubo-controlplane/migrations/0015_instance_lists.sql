-- Lists of instances page by (created_at_ms, id): a page of a project's
-- instances, or of everyone's, is a range of one of these indexes
-- (and so is every related-table lookup filtered by that page).
CREATE INDEX instances_project_order ON instances(project_id, created_at_ms, id);
CREATE INDEX instances_order ON instances(created_at_ms, id);
