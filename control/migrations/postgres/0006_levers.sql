-- The twin of migrations/sqlite/0006_levers.sql: operators' levers (issue 23,
-- control/FEED.md "Levers"): per-key and per-tenant rate overrides, limit modes (kill
-- switch and shadow) and allowlist entries, set through the admin API and sent whole to
-- the proxies in the feed's `levers` field. Every lever change is a change of the feed: it
-- bumps meta.seq in its transaction and records that version in meta.levers_version, so a
-- feed answer carries `levers` when the levers changed in its (since, version]. At most
-- 10,000 entries are in force in all (control/src/levers.rs).

-- The version of the last lever change; 0: never changed.
ALTER TABLE meta ADD COLUMN levers_version BIGINT NOT NULL DEFAULT 0;

-- Lever changes are audit events of kind 'lever', with the operator's reason and what was
-- set (e.g. "requests_per_minute=20000 expires_at=never", "mode=shadow").
ALTER TABLE audit_events ADD COLUMN reason TEXT;
ALTER TABLE audit_events ADD COLUMN detail TEXT;

-- A key's or a tenant's own rate, replacing its plan limit's. In force while expires_at
-- is NULL (never) or after now; an expired row is left out everywhere and purged by the
-- cleanup job.
CREATE TABLE limit_overrides (
    scope TEXT NOT NULL CHECK (scope IN ('key', 'tenant')),
    id TEXT COLLATE "C" NOT NULL,
    requests_per_minute BIGINT NOT NULL,
    expires_at BIGINT,
    reason TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (scope, id)
);
CREATE INDEX limit_overrides_expires ON limit_overrides (expires_at);

-- A named limit or rule turned to 'shadow' or 'off'; no row: the policy's mode applies.
CREATE TABLE limit_modes (
    name TEXT COLLATE "C" PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('shadow', 'off')),
    reason TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

-- Who a rate limit (limit_name) or every rate limit ('') does not apply to: one subject,
-- a CIDR (canonical: host bits zero), a key id, a user or a tenant.
CREATE TABLE allowlist (
    id TEXT COLLATE "C" PRIMARY KEY,
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('cidr', 'key_id', 'user', 'tenant')),
    subject TEXT COLLATE "C" NOT NULL,
    limit_name TEXT COLLATE "C" NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    UNIQUE (subject_kind, subject, limit_name)
);
