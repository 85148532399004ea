-- Sagas: multi-step operations of the control plane, each step's progress
-- recorded so that a restarted server resumes them (see src/saga).
-- `saga_key` says what a saga is for (a firing's action, a group's launch)
-- so that creating it again is a no-op.

CREATE TABLE sagas (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    saga_key TEXT NOT NULL UNIQUE,
    params_json TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX sagas_unfinished ON sagas(state, name);

-- One row per step that has begun: `started` (its action may have run),
-- `done` (its output recorded), `undoing`, `undone`.
CREATE TABLE saga_steps (
    saga_id TEXT NOT NULL REFERENCES sagas(id),
    step BIGINT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    output_json TEXT,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (saga_id, step)
);
