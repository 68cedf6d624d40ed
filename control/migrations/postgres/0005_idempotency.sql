-- The twin of migrations/sqlite/0005_idempotency.sql. Idempotent issuance (POST /v1/keys
-- with an Idempotency-Key header, control/src/idempotency.rs): the first request records
-- here, in the transaction that inserts its key, which key it made; a retry with the same
-- Idempotency-Key finds the row and is answered with that key (without its secret)
-- instead of a second key. Neither the Idempotency-Key nor the request is stored: only
-- their SHA-256s. Rows older than 24 h are ignored and purged by the cleanup job. Not
-- part of the feed: nothing here bumps meta.seq or a row's version.
CREATE TABLE idempotency_keys (
    -- SHA-256 of the Idempotency-Key header's value, 64 lower-case hex digits. The
    -- primary key is the unique constraint: two requests cannot both claim one value.
    key_sha256 TEXT PRIMARY KEY,
    -- SHA-256 of the request's canonical fields (user, tenant, plan, device name,
    -- expires_in_days, scopes as stored): a retry must be the same request.
    request_sha256 TEXT NOT NULL,
    -- The key the first request issued (no foreign key: the cleanup job may purge a
    -- revoked key first, and the retry must still not issue a second one).
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
