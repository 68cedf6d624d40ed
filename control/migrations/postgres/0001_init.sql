-- The control service's schema (PostgreSQL), the twin of migrations/sqlite/0001_init.sql:
-- same tables, same meaning. Times are Unix seconds (BIGINT); NULL expiry = never.
-- Every change bumps meta.seq in its own transaction and stamps the rows it touched with
-- the new value in `version`: the cache feed serves rows with version > since.
-- Identifiers are COLLATE "C" so they sort byte by byte, as SQLite sorts them, whatever
-- the database's locale.

CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- The feed version: bumped once per committed change. A counter in this row, not a
    -- sequence: a sequence hands out values outside the transaction, so numbers would be
    -- skipped on rollback and could commit out of order.
    seq BIGINT NOT NULL,
    -- Made once when the database is created; a new database means a new epoch.
    epoch TEXT NOT NULL,
    -- The highest version of any row the cleanup job deleted: a `since` below it cannot
    -- be served as a delta (410 Gone).
    purged_through BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    -- SHA-256 of the key, 64 lower-case hex digits; the key itself is never stored.
    sha256 TEXT COLLATE "C" NOT NULL UNIQUE,
    user_id TEXT COLLATE "C" NOT NULL,
    tenant_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    device_name TEXT NOT NULL,
    -- Route groups; empty: every route.
    scopes TEXT[] NOT NULL,
    created_at BIGINT NOT NULL,
    -- Set at issuance and never changed: the cleanup job purges by it, so every state of
    -- the key a proxy may still hold has expired by the time the row goes.
    expires_at BIGINT,
    -- End of a rotation's grace: the key is fed with expiry min(expires_at, grace_until).
    grace_until BIGINT,
    revoked_at BIGINT,
    -- false once revoked: sent to the proxies as a tombstone (`active: false`).
    active BOOLEAN NOT NULL,
    replaced_by TEXT COLLATE "C",
    version BIGINT NOT NULL
);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_version ON api_keys (version);
CREATE INDEX api_keys_expires ON api_keys (expires_at);

CREATE TABLE user_revocations (
    user_id TEXT COLLATE "C" PRIMARY KEY,
    tokens_issued_before BIGINT NOT NULL,
    until BIGINT,
    version BIGINT NOT NULL
);
CREATE INDEX user_revocations_version ON user_revocations (version);
CREATE INDEX user_revocations_until ON user_revocations (until);

CREATE TABLE jti_revocations (
    -- SHA-256 of the jti, hex; the jti itself is never stored.
    jti_sha256 TEXT COLLATE "C" PRIMARY KEY,
    until BIGINT,
    version BIGINT NOT NULL
);
CREATE INDEX jti_revocations_version ON jti_revocations (version);
CREATE INDEX jti_revocations_until ON jti_revocations (until);

-- No foreign key to api_keys: audit rows outlive the keys the cleanup job deletes.
CREATE TABLE audit_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT,
    version BIGINT NOT NULL
);
