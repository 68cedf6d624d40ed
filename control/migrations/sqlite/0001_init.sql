-- The control service's schema (SQLite). Times are Unix seconds; NULL expiry = never.
-- Every change bumps meta.seq in its own transaction and stamps the rows it touched with
-- the new value in `version`: the cache feed serves rows with version > since.

CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- The feed version: bumped once per committed change.
    seq INTEGER NOT NULL,
    -- Made once when the database is created; a new database means a new epoch.
    epoch TEXT NOT NULL,
    -- The highest version of any row the cleanup job deleted: a `since` below it cannot
    -- be served as a delta (410 Gone).
    purged_through INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    -- SHA-256 of the key, 64 lower-case hex digits; the key itself is never stored.
    sha256 TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    plan TEXT NOT NULL,
    device_name TEXT NOT NULL,
    -- JSON array of route groups; empty: every route.
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- Set at issuance and never changed: the cleanup job purges by it, so every state of
    -- the key a proxy may still hold has expired by the time the row goes.
    expires_at INTEGER,
    -- End of a rotation's grace: the key is fed with expiry min(expires_at, grace_until).
    grace_until INTEGER,
    revoked_at INTEGER,
    -- 0 once revoked: sent to the proxies as a tombstone (`active: false`).
    active INTEGER NOT NULL,
    replaced_by TEXT,
    version INTEGER NOT NULL
);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_version ON api_keys (version);
CREATE INDEX api_keys_expires ON api_keys (expires_at);

CREATE TABLE user_revocations (
    user_id TEXT PRIMARY KEY,
    tokens_issued_before INTEGER NOT NULL,
    until INTEGER,
    version INTEGER NOT NULL
);
CREATE INDEX user_revocations_version ON user_revocations (version);
CREATE INDEX user_revocations_until ON user_revocations (until);

CREATE TABLE jti_revocations (
    -- SHA-256 of the jti, hex; the jti itself is never stored.
    jti_sha256 TEXT PRIMARY KEY,
    until INTEGER,
    version INTEGER NOT NULL
);
CREATE INDEX jti_revocations_version ON jti_revocations (version);
CREATE INDEX jti_revocations_until ON jti_revocations (until);

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    request_id TEXT NOT NULL,
    client TEXT,
    version INTEGER NOT NULL
);
