//! State each worker keeps for itself, apart from the policy (which is configuration).

pub mod secret_cache;
