-- Monitoring: time series (raw samples kept a day, one-minute rollups a
-- month), Nagios-style health checks with soft and hard states and their
-- history, alert rules, alerts, webhook notifications, and the event log.

CREATE TABLE metric_samples (
    resource TEXT NOT NULL,
    metric TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (resource, metric, at_ms)
);
CREATE INDEX metric_samples_at ON metric_samples(at_ms);

-- One row per series and minute: enough for min, max and average.
CREATE TABLE metric_rollups (
    resource TEXT NOT NULL,
    metric TEXT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    min_value DOUBLE PRECISION NOT NULL,
    max_value DOUBLE PRECISION NOT NULL,
    sum_value DOUBLE PRECISION NOT NULL,
    samples BIGINT NOT NULL,
    PRIMARY KEY (resource, metric, bucket_ms)
);
CREATE INDEX metric_rollups_at ON metric_rollups(bucket_ms);

-- The newest value of every series (for /metrics, rules and listings).
CREATE TABLE metric_latest (
    resource TEXT NOT NULL,
    metric TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (resource, metric)
);

-- Up to which minute the raw samples have been rolled up.
CREATE TABLE metric_rollup_mark (
    id BIGINT PRIMARY KEY,
    done_until_ms BIGINT NOT NULL
);

CREATE TABLE checks (
    id TEXT PRIMARY KEY,
    -- NULL for checks of hosts (operators').
    project_id TEXT REFERENCES projects(id),
    name TEXT NOT NULL,
    -- What it watches: a host (h-...) or an instance (i-...).
    target TEXT NOT NULL,
    -- 'plugin', 'tcp', 'http', 'liveness' or 'heartbeat'
    kind TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    interval_secs BIGINT NOT NULL,
    retry_interval_secs BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    -- 'PENDING', 'OK', 'WARNING', 'CRITICAL' or 'UNKNOWN'; 'SOFT' or 'HARD'.
    state TEXT NOT NULL,
    state_type TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    output TEXT NOT NULL DEFAULT '',
    perfdata TEXT NOT NULL DEFAULT '',
    last_check_ms BIGINT,
    last_change_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (target, name)
);

CREATE TABLE check_history (
    check_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    state_type TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (check_id, seq)
);

CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    project_id TEXT REFERENCES projects(id),
    name TEXT NOT NULL,
    -- 'metric' or 'check'
    kind TEXT NOT NULL,
    -- A resource id, or '*' for every instance of the project.
    target TEXT NOT NULL,
    metric TEXT,
    op TEXT,
    threshold DOUBLE PRECISION,
    for_secs BIGINT NOT NULL DEFAULT 0,
    -- For check rules: the check (NULL: any check of the target), and the
    -- lowest state that fires ('WARNING' or 'CRITICAL').
    check_id TEXT,
    min_state TEXT,
    webhook_url TEXT,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    project_id TEXT,
    resource TEXT NOT NULL,
    -- 'pending' (condition holds, not yet for long enough), 'firing' or 'resolved'
    state TEXT NOT NULL,
    summary TEXT NOT NULL,
    value DOUBLE PRECISION,
    started_at_ms BIGINT NOT NULL,
    fired_at_ms BIGINT,
    resolved_at_ms BIGINT,
    acknowledged_by TEXT,
    acknowledged_at_ms BIGINT,
    silenced_until_ms BIGINT
);
CREATE INDEX alerts_rule ON alerts(rule_id, resource, state);

CREATE TABLE notifications (
    id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    -- 'firing' or 'resolved'
    kind TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- 'pending', 'sent' or 'failed'
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX notifications_due ON notifications(state, next_attempt_ms);

CREATE TABLE cloud_events (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    project_id TEXT,
    resource TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
