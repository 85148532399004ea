-- Launch templates: a project's named launch parameters with numbered,
-- immutable versions (their data as JSON in Nubo's own terms, see
-- nubo_api::launch_templates::LaunchTemplateData) and one default.
-- `latest_version` only grows, so a deleted version's number is never
-- given again (as on EC2). Instance groups may launch from a template:
-- `launch_template` is its reference, `NAME[:VERSION|$Default|$Latest]`.

CREATE TABLE launch_templates (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    default_version BIGINT NOT NULL,
    latest_version BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE launch_template_versions (
    template_id TEXT NOT NULL REFERENCES launch_templates(id),
    version BIGINT NOT NULL,
    description TEXT,
    data_json TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (template_id, version)
);

ALTER TABLE instance_groups ADD COLUMN launch_template TEXT;
