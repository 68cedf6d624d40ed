//! What gatehouse tells operators: per-worker counts, refusal log lines, the audit.

pub mod events;
pub mod tally;
