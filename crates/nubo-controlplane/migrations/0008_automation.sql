-- Automation: service policies (a document per policy), the breach state
-- of each policy and target, firings with the outcome of each action, and
-- instance groups with their members and activity history.

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    doc_json TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- Per policy and target (an instance, or '*' for the whole scope):
-- since when the condition holds, whether a breach is on, the last firing.
CREATE TABLE policy_states (
    policy_id TEXT NOT NULL,
    target TEXT NOT NULL,
    since_ms BIGINT,
    breaching BIGINT NOT NULL DEFAULT 0,
    last_fired_ms BIGINT,
    PRIMARY KEY (policy_id, target)
);

CREATE TABLE policy_firings (
    id TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    target TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    dry_run BIGINT NOT NULL,
    values_json TEXT NOT NULL,
    -- 'running', 'succeeded' or 'failed'
    state TEXT NOT NULL,
    -- The actions with what became of each (and what each made, so that a
    -- retry never does it twice).
    actions_json TEXT NOT NULL,
    next_attempt_ms BIGINT NOT NULL
);
CREATE INDEX policy_firings_policy ON policy_firings(policy_id, at_ms);
CREATE INDEX policy_firings_state ON policy_firings(state, next_attempt_ms);

CREATE TABLE instance_groups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    template_json TEXT NOT NULL,
    min_size BIGINT NOT NULL,
    max_size BIGINT NOT NULL,
    desired BIGINT NOT NULL,
    health_json TEXT,
    schedules_json TEXT NOT NULL,
    -- Schedules have been applied up to this instant.
    schedule_mark_ms BIGINT NOT NULL,
    -- Members launched so far (names the next one).
    launched BIGINT NOT NULL DEFAULT 0,
    -- After a failed launch, the next one waits until then.
    launch_retry_ms BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

ALTER TABLE instances ADD COLUMN group_id TEXT;
CREATE INDEX instances_group ON instances(group_id);

CREATE TABLE group_activities (
    group_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (group_id, seq)
);
