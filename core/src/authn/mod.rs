//! Who is calling: API keys and their cache, JWTs and their key sets, revocation.

pub mod api_key;
pub mod jwks_cache;
pub mod jwt;
pub mod key_cache;
pub mod revocation;
