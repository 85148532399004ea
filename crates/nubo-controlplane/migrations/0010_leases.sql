-- Work that must run on one server at a time when several share one
-- database (the monitor's rounds): a named lease, held by one server until
-- it expires; the holder renews it, another server takes it only once it
-- has expired. Portable SQL (SQLite and PostgreSQL run this same file).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
