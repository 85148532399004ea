-- Access-key pairs for the EC2 API's SigV4 signatures. SigV4 needs the
-- secret itself on the server (it is an HMAC key), so it is stored
-- encrypted with the server's key (DATA_DIR/secret.key), never in clear.
CREATE TABLE access_keys (
    id TEXT PRIMARY KEY,
    secret_sealed TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id),
    project_id TEXT REFERENCES projects(id),
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
