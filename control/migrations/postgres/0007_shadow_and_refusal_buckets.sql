-- The twin of migrations/sqlite/0007_shadow_and_refusal_buckets.sql. Seeing the traffic
-- (issue 23): shadow counts, and refusals counted per minute by what people group them
-- by. (0006 is the levers' migration.) Not part of the feed: nothing here bumps meta.seq
-- or a row's version.

-- Requests that passed but a rule in shadow mode would have refused
-- (POST /v1/events `requests[].shadow_refused`), per plan per minute like the others.
ALTER TABLE usage_buckets ADD COLUMN shadow_refused BIGINT NOT NULL DEFAULT 0;

-- Refusals per minute of their `at`, by what the dashboard groups them by: the
-- refusal's code and status, the route, the caller (`key:<id>`, `user:<id>`,
-- `ip:<address>` or `anonymous`) and whether it was a shadow "would refuse" or a real
-- refusal. The audit log keeps each refusal; this table is what the summaries read
-- (GET /v1/stats/refusals), so they never scan one row per refusal: a caller refused a
-- thousand times in a minute is one row here. The primary key starts with the minute, so
-- a window is one range of it. Purged with the refusals after the event retention.
CREATE TABLE refusal_buckets (
    minute BIGINT NOT NULL,
    shadow BOOLEAN NOT NULL,
    code TEXT COLLATE "C" NOT NULL,
    status INTEGER NOT NULL,
    route TEXT COLLATE "C" NOT NULL,
    caller TEXT COLLATE "C" NOT NULL,
    count BIGINT NOT NULL,
    -- The earliest and latest `at` of these refusals (Unix seconds).
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (minute, shadow, code, status, route, caller)
);
