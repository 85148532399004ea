-- Raw metric samples as compressed chunks: one row per resource (instance
-- or host) per flush of a server's in-memory head, holding every series of
-- the resource (Gorilla streams, see tsdb/chunk.rs), instead of a row per
-- sample. Newest values likewise: one row per resource.

CREATE TABLE metric_chunks (
    resource TEXT NOT NULL,
    -- The first and last sample in the chunk, of any of its series.
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    data BYTEA NOT NULL
);
-- A series' range (most ranges end now), and expiry.
CREATE INDEX metric_chunks_resource ON metric_chunks(resource, end_ms);
CREATE INDEX metric_chunks_end ON metric_chunks(end_ms);

CREATE TABLE metric_latest_sets (
    resource TEXT PRIMARY KEY,
    -- The newest sample of any of its series.
    at_ms BIGINT NOT NULL,
    -- One sample per series, in the chunk format.
    data BYTEA NOT NULL
);

-- Raw samples from before this migration end here: queries of a range
-- that starts earlier read the rollups.
CREATE TABLE metric_raw_start (
    id BIGINT PRIMARY KEY,
    from_ms BIGINT NOT NULL
);
INSERT INTO metric_raw_start (id, from_ms) SELECT 1, COALESCE(MAX(at_ms) + 1, 0) FROM metric_samples;

-- The minutes not rolled up yet are rolled up now, from the last rows.
INSERT INTO metric_rollups (resource, metric, bucket_ms, min_value, max_value, sum_value, samples)
SELECT resource, metric, (at_ms / 60000) * 60000, MIN(value), MAX(value), SUM(value), COUNT(*)
FROM metric_samples
WHERE at_ms >= COALESCE((SELECT done_until_ms FROM metric_rollup_mark WHERE id = 1), 0)
GROUP BY resource, metric, (at_ms / 60000) * 60000
ON CONFLICT DO NOTHING;
INSERT INTO metric_rollup_mark (id, done_until_ms) SELECT 1, from_ms FROM metric_raw_start WHERE id = 1 AND from_ms > 0
ON CONFLICT (id) DO UPDATE SET done_until_ms = excluded.done_until_ms
WHERE excluded.done_until_ms > metric_rollup_mark.done_until_ms;

DROP TABLE metric_samples;
-- Newest values come back with each host's next batch of samples.
DROP TABLE metric_latest;
