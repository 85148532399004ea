-- SigV4 signatures of EC2 requests already accepted, each kept until its
-- request would be refused as expired anyway (its X-Amz-Date plus the
-- 5-minute skew): a second copy of a signed request is refused. In the
-- database rather than a server's memory, so that a copy sent to another
-- server of the same cloud is refused too.
CREATE TABLE sigv4_signatures (
    signature TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX sigv4_signatures_expiry ON sigv4_signatures(expires_at_ms);
