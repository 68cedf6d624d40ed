-- Background jobs (the cleanup job) run on one replica at a time. Processes sharing one
-- SQLite file share nothing else, so a job's lease is a row here: a replica takes it with
-- a conditional upsert (free, expired, or its own), runs one pass and deletes it. A
-- process killed mid-pass leaves a lease that expires at `until` (Unix seconds).
-- PostgreSQL uses advisory locks instead, and has no such table.
CREATE TABLE job_leases (
    job TEXT PRIMARY KEY,
    -- The replica holding it: random, drawn when the process opened the database.
    holder TEXT NOT NULL,
    until INTEGER NOT NULL
);
