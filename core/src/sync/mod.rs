//! The control service's cache feed: applying its answers, and when to ask.

pub mod exchange;
pub mod feed;
pub mod lease;
pub mod schedule;

/// Feed answers and key records as the feed and scheduler tests build them.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::authn::api_key::{KeyHash, KeyRecord};
    use crate::store::SharedStore;
    use serde_json::{Value, json};

    pub(crate) fn hash(n: u8) -> String {
        KeyHash::of_key(&[n]).to_hex()
    }

    /// A fed key record, `key_<n>`, of the shape the control service sends.
    pub(crate) fn key(n: u8, active: bool) -> Value {
        json!({"sha256": hash(n), "key_id": format!("key_{n}"), "user": "user_1",
               "tenant": "tenant_1", "plan": "team", "expires_at": null,
               "active": active, "scopes": ["billing"]})
    }

    /// One feed answer's body.
    pub(crate) fn answer(epoch: &str, version: u64, full: bool, keys: Vec<Value>) -> Vec<u8> {
        json!({"epoch": epoch, "version": version, "full": full, "keys": keys,
               "users": [], "jtis": []})
        .to_string()
        .into_bytes()
    }

    /// The record the feed wrote for key `n`, if any.
    pub(crate) fn record(store: &impl SharedStore, n: u8) -> Option<KeyRecord> {
        let (bytes, _) = store.get(&KeyHash::of_key(&[n]).cache_key())?;
        KeyRecord::decode(&bytes).map(|(_, record)| record)
    }
}
