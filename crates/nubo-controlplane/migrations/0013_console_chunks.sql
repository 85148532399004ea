-- Console output as appended chunks instead of one row rewritten whole for
-- each chunk (up to 1 MiB written per 64 KiB of output). A chunk is keyed
-- by the log offset it ends at, which only grows per instance, so it is
-- the chunk's sequence number too. `text_end` is the instance's running
-- total of stored text bytes at the chunk's end: chunks that end more
-- than the kept size before the newest are deleted as new ones arrive.
-- `consoles` keeps only where each instance's log is up to (`next_offset`)
-- and the running text total; its `data` column is no longer used.

CREATE TABLE console_chunks (
    instance_id TEXT NOT NULL,
    end_offset BIGINT NOT NULL,
    text_end BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (instance_id, end_offset)
);

ALTER TABLE consoles ADD COLUMN text_bytes BIGINT NOT NULL DEFAULT 0;

-- length() counts characters on both databases (not bytes): close enough
-- for where trimming starts, and exact for ASCII consoles.
INSERT INTO console_chunks (instance_id, end_offset, text_end, data)
    SELECT instance_id, next_offset, length(data), data FROM consoles WHERE data <> '';
UPDATE consoles SET text_bytes = length(data), data = '';
