-- The background work that makes a registry image: a fetch from a URL
-- (`nubo image import URL`) or a build on a host (`nubo image build`).
-- One row per image while it is being made and after (its progress and
-- what it was made from stay visible); it goes with its image.
CREATE TABLE image_jobs (
    image_id TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    -- 'url' or 'build'
    kind TEXT NOT NULL,
    -- the URL fetched (kind 'url')
    url TEXT,
    -- the builtin image built on, and the packages added, space-separated (kind 'build')
    base TEXT,
    packages TEXT,
    -- the host doing the build, once one took it
    host_id TEXT,
    -- the last step the host reported (a build's progress in words)
    status TEXT,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    -- unknown until the server (or the host) says how large the file is
    bytes_total BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
