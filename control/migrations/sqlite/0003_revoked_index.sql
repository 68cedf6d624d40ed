-- Revoked keys leave the feed too: the cleanup job purges a key whose revoked_at (the
-- revocation, or the end of a rotation's grace) is older than the retention, as it purges
-- one whose expires_at is, and raises meta.purged_through past it (control/FEED.md,
-- "Records"). This index serves that search, which otherwise reads every key per pass.
CREATE INDEX api_keys_revoked ON api_keys (revoked_at);
