-- What the proxies report (POST /v1/events, control/FEED.md "Events"): refusals, kept in
-- the audit log beside the changes; when each key was last used; per-plan request counts
-- per minute; and the cache version each proxy has applied. None of it is part of the
-- feed: nothing here bumps meta.seq or a row's version.

-- The latest use a proxy reported (Unix seconds), never moved back; NULL: never seen.
ALTER TABLE api_keys ADD COLUMN last_used INTEGER;

-- 'change' (a change of the feed, written with it) or 'refusal' (reported by a proxy).
ALTER TABLE audit_events ADD COLUMN kind TEXT NOT NULL DEFAULT 'change';
-- Refusals only: the refusal's code, HTTP status and method, the caller's plan if known,
-- and the proxy that reported it.
ALTER TABLE audit_events ADD COLUMN code TEXT;
ALTER TABLE audit_events ADD COLUMN status INTEGER;
ALTER TABLE audit_events ADD COLUMN method TEXT;
ALTER TABLE audit_events ADD COLUMN plan TEXT;
ALTER TABLE audit_events ADD COLUMN proxy TEXT;
CREATE INDEX audit_events_kind_id ON audit_events (kind, id);
CREATE INDEX audit_events_kind_at ON audit_events (kind, at);

-- Requests per plan per minute ('' = anonymous callers); `minute` is the bucket's start,
-- Unix seconds, a multiple of 60.
CREATE TABLE usage_buckets (
    plan TEXT NOT NULL,
    minute INTEGER NOT NULL,
    allowed INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    PRIMARY KEY (plan, minute)
);
CREATE INDEX usage_buckets_minute ON usage_buckets (minute);

-- Each proxy (Envoy node id) as last heard from.
CREATE TABLE proxies (
    proxy TEXT PRIMARY KEY,
    -- The feed version its cache had applied; NULL until it says.
    cache_version INTEGER,
    seen_at INTEGER NOT NULL
);
CREATE INDEX proxies_seen_at ON proxies (seen_at);
