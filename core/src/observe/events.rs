//! The refusal audit on the sync's side: worker batches in from [`QUEUE`], one
//! `POST /v1/events` out; never panics on a batch (a malformed one is refused whole) or
//! grows without bound. Contract: `control/FEED.md#events`.

use crate::authn::api_key::is_valid_id;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The shared queue the sync registers and the workers resolve (same vm_id).
pub const QUEUE: &str = "gatehouse_events";
/// Where batches are posted on the feed's cluster.
pub const PATH: &str = "/v1/events";
/// Refusals per post (the contract's bound).
pub const MAX_REFUSALS: usize = 1000;
/// Key uses per post (the contract's bound).
pub const MAX_KEY_USES: usize = 1000;
/// Request counts per post, anonymous callers included (the contract's bound).
pub const MAX_PLANS: usize = 64;
/// The largest worker batch read: 256 refusals of at most about 900 bytes each, and room.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Why a worker batch was not merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchError {
    TooLarge,
    Malformed,
}

/// What to do with a post after its answer: one that may pass later is merged back in
/// front of what arrived meanwhile; one refused as bad input or never takeable (400,
/// 404, 405) is dropped whole, its refusals counted in the sync's metrics only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// 2xx: stored.
    Accepted,
    /// No answer, or a status that may pass (5xx, 401 while a token rotates, 429, 413,
    /// 415, ...): send it again (`control/FEED.md`).
    Retry,
    /// 400 (bad input: stored whole or not at all, so never), or no such endpoint (404,
    /// 405): the server will never take it; drop it.
    Refused,
}

impl Posted {
    /// From the answer's `:status` (empty when there was no answer).
    pub fn from_status(status: &[u8]) -> Posted {
        match status {
            [b'2', _, _] => Posted::Accepted,
            b"400" | b"404" | b"405" => Posted::Refused,
            _ => Posted::Retry,
        }
    }
}

/// The batch waiting to be posted: every worker batch merged, refusals in arrival order
/// (at most [`MAX_REFUSALS`], more counted in `dropped`), each key id's latest use (at
/// most [`MAX_KEY_USES`]), request counts summed per plan (at most [`MAX_PLANS`]). Posted
/// at most once a second, never with a post in flight, with `proxy` and `cache_version`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pending {
    refusals: Vec<Value>,
    key_uses: BTreeMap<String, u64>,
    requests: BTreeMap<String, [u64; 3]>,
    dropped: u64,
}

/// Envoy's node id as the contract's `proxy`: a valid id, else left out.
pub fn proxy_id(node_id: &[u8]) -> Option<String> {
    std::str::from_utf8(node_id)
        .ok()
        .filter(|s| is_valid_id(s))
        .map(str::to_string)
}

fn count(v: &Value) -> Option<u64> {
    v.as_u64()
}

impl Pending {
    /// Nothing to post.
    pub fn is_empty(&self) -> bool {
        self.refusals.is_empty()
            && self.key_uses.is_empty()
            && self.requests.is_empty()
            && self.dropped == 0
    }

    /// Refusals waiting.
    pub fn refusals(&self) -> usize {
        self.refusals.len()
    }

    /// Refusals counted as dropped so far (sent as `dropped`).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Merges one worker's batch; returns how many of its refusals found no room.
    pub fn merge(&mut self, batch: &[u8]) -> Result<u64, BatchError> {
        if batch.len() > MAX_BATCH_BYTES {
            return Err(BatchError::TooLarge);
        }
        let parsed = Pending::parse(batch).ok_or(BatchError::Malformed)?;
        Ok(self.absorb(parsed))
    }

    /// A worker batch, checked field by field; `None` when it is not one.
    fn parse(batch: &[u8]) -> Option<Pending> {
        let v: Value = serde_json::from_slice(batch).ok()?;
        let o = v.as_object()?;
        let mut p = Pending {
            dropped: o.get("dropped").map_or(Some(0), count)?,
            ..Pending::default()
        };
        for r in o.get("refusals")?.as_array()? {
            if !r.is_object() {
                return None;
            }
            p.refusals.push(r.clone());
        }
        for u in o.get("key_uses")?.as_array()? {
            let key_id = u.get("key_id")?.as_str().filter(|k| is_valid_id(k))?;
            let at = count(u.get("at")?)?;
            let latest = p.key_uses.entry(key_id.to_string()).or_insert(at);
            *latest = (*latest).max(at);
        }
        for r in o.get("requests")?.as_array()? {
            let plan = r.get("plan")?.as_str()?;
            if !plan.is_empty() && !is_valid_id(plan) {
                return None;
            }
            let shadow = r.get("shadow_refused").map_or(Some(0), count)?;
            let counts = [count(r.get("allowed")?)?, count(r.get("refused")?)?, shadow];
            let sum = p.requests.entry(plan.to_string()).or_insert([0; 3]);
            for (s, c) in sum.iter_mut().zip(counts) {
                *s = s.saturating_add(c);
            }
        }
        Some(p)
    }

    /// Adds `newer` after what is here, within the bounds; returns the refusals of `newer`
    /// that found no room (counted in `dropped`).
    pub fn absorb(&mut self, newer: Pending) -> u64 {
        let room = MAX_REFUSALS.saturating_sub(self.refusals.len());
        let overflow = newer.refusals.len().saturating_sub(room) as u64;
        self.refusals.extend(newer.refusals.into_iter().take(room));
        for (key_id, at) in newer.key_uses {
            let len = self.key_uses.len();
            match self.key_uses.get_mut(&key_id) {
                Some(latest) => *latest = (*latest).max(at),
                None if len < MAX_KEY_USES => {
                    self.key_uses.insert(key_id, at);
                }
                // The key's next use, a minute later, reports it again.
                None => {}
            }
        }
        for (plan, counts) in newer.requests {
            let len = self.requests.len();
            let sum = match self.requests.get_mut(&plan) {
                Some(sum) => sum,
                None if len < MAX_PLANS => self.requests.entry(plan).or_insert([0; 3]),
                None => continue,
            };
            for (s, c) in sum.iter_mut().zip(counts) {
                *s = s.saturating_add(c);
            }
        }
        self.dropped = self
            .dropped
            .saturating_add(newer.dropped)
            .saturating_add(overflow);
        overflow
    }

    /// The body of `POST /v1/events`.
    pub fn body(&self, proxy: Option<&str>, cache_version: Option<u64>) -> String {
        let mut o = Map::new();
        if let Some(p) = proxy {
            o.insert("proxy".into(), Value::from(p));
        }
        if let Some(v) = cache_version {
            o.insert("cache_version".into(), Value::from(v));
        }
        o.insert("refusals".into(), Value::Array(self.refusals.clone()));
        let uses: Vec<Value> = self
            .key_uses
            .iter()
            .map(|(k, at)| serde_json::json!({ "key_id": k, "at": at }))
            .collect();
        o.insert("key_uses".into(), Value::Array(uses));
        let requests: Vec<Value> = self
            .requests
            .iter()
            .map(|(plan, [a, r, s])| {
                let mut v = serde_json::json!({ "plan": plan, "allowed": a, "refused": r });
                // Absent means 0 (the events contract): a post without shadowed rules
                // is what it was before there were any.
                if *s > 0
                    && let Some(o) = v.as_object_mut()
                {
                    o.insert("shadow_refused".into(), Value::from(*s));
                }
                v
            })
            .collect();
        o.insert("requests".into(), Value::Array(requests));
        o.insert("dropped".into(), Value::from(self.dropped));
        Value::Object(o).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refusal(n: u64) -> Value {
        json!({"at": n, "request_id": format!("r{n}"), "method": "GET", "route": "/v1/",
               "code": "NOT_FOUND", "status": 404})
    }

    fn batch(refusals: Vec<Value>, uses: Value, requests: Value, dropped: u64) -> Vec<u8> {
        json!({"refusals": refusals, "key_uses": uses, "requests": requests, "dropped": dropped})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn shadow_refused_counts_are_summed_and_posted_only_when_there_are_some() {
        let mut p = Pending::default();
        let batch = |shadow: u64| {
            serde_json::to_vec(&json!({"refusals": [], "key_uses": [], "dropped": 0,
                "requests": [{"plan": "team", "allowed": 3, "refused": 0, "shadow_refused": shadow}]}))
            .unwrap()
        };
        p.merge(&batch(2)).unwrap();
        p.merge(&batch(1)).unwrap();
        let body: Value = serde_json::from_str(&p.body(None, None)).unwrap();
        assert_eq!(
            body["requests"],
            json!([{"plan": "team", "allowed": 6, "refused": 0, "shadow_refused": 3}])
        );
        let mut p = Pending::default();
        p.merge(&batch(0)).unwrap();
        let body: Value = serde_json::from_str(&p.body(None, None)).unwrap();
        assert_eq!(body["requests"][0].get("shadow_refused"), None);
    }

    #[test]
    fn batches_merge_into_one_post_body() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        p.merge(&batch(
            vec![refusal(1)],
            json!([{"key_id": "key_a", "at": 10}]),
            json!([{"plan": "team", "allowed": 2, "refused": 1}, {"plan": "", "allowed": 1, "refused": 0}]),
            0,
        ))
        .unwrap();
        p.merge(&batch(
            vec![refusal(2)],
            json!([{"key_id": "key_a", "at": 70}, {"key_id": "key_b", "at": 5}]),
            json!([{"plan": "team", "allowed": 3, "refused": 0}]),
            4,
        ))
        .unwrap();
        let body: Value = serde_json::from_str(&p.body(Some("node-1"), Some(42))).unwrap();
        assert_eq!(
            body,
            json!({
                "proxy": "node-1", "cache_version": 42,
                "refusals": [refusal(1), refusal(2)],
                "key_uses": [{"key_id": "key_a", "at": 70}, {"key_id": "key_b", "at": 5}],
                "requests": [{"plan": "", "allowed": 1, "refused": 0},
                             {"plan": "team", "allowed": 5, "refused": 1}],
                "dropped": 4
            })
        );
        let bare: Value = serde_json::from_str(&Pending::default().body(None, None)).unwrap();
        assert_eq!(
            bare,
            json!({"refusals": [], "key_uses": [], "requests": [], "dropped": 0})
        );
    }

    #[test]
    fn the_pending_batch_is_bounded_and_counts_what_it_drops() {
        let mut p = Pending::default();
        let many: Vec<Value> = (0..600).map(refusal).collect();
        assert_eq!(
            p.merge(&batch(many.clone(), json!([]), json!([]), 0)),
            Ok(0)
        );
        assert_eq!(p.merge(&batch(many, json!([]), json!([]), 1)), Ok(200));
        assert_eq!(p.refusals(), MAX_REFUSALS);
        assert_eq!(p.dropped(), 201);
        let uses: Vec<Value> = (0..MAX_KEY_USES + 10)
            .map(|i| json!({"key_id": format!("key_{i}"), "at": 1}))
            .collect();
        p.merge(&batch(vec![], Value::Array(uses), json!([]), 0))
            .unwrap();
        let plans: Vec<Value> = (0..MAX_PLANS + 3)
            .map(|i| json!({"plan": format!("p{i}"), "allowed": 1, "refused": 0}))
            .collect();
        p.merge(&batch(vec![], json!([]), Value::Array(plans), 0))
            .unwrap();
        let body: Value = serde_json::from_str(&p.body(None, None)).unwrap();
        assert_eq!(body["refusals"].as_array().unwrap().len(), MAX_REFUSALS);
        assert_eq!(body["key_uses"].as_array().unwrap().len(), MAX_KEY_USES);
        assert_eq!(body["requests"].as_array().unwrap().len(), MAX_PLANS);
    }

    #[test]
    fn a_failed_post_goes_back_in_front_of_newer_batches() {
        let mut sent = Pending::default();
        sent.merge(&batch(vec![refusal(1)], json!([]), json!([]), 0))
            .unwrap();
        let mut newer = Pending::default();
        newer
            .merge(&batch(vec![refusal(2)], json!([]), json!([]), 0))
            .unwrap();
        assert_eq!(sent.absorb(newer), 0);
        let body: Value = serde_json::from_str(&sent.body(None, None)).unwrap();
        assert_eq!(body["refusals"], json!([refusal(1), refusal(2)]));
    }

    #[test]
    fn malformed_or_oversized_batches_are_refused_whole() {
        let mut p = Pending::default();
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"refusals": 1, "key_uses": [], "requests": []}"#,
            br#"{"refusals": [1], "key_uses": [], "requests": []}"#,
            br#"{"refusals": [], "key_uses": [{"key_id": "a b", "at": 1}], "requests": []}"#,
            br#"{"refusals": [], "key_uses": [], "requests": [{"plan": "x", "allowed": -1, "refused": 0}]}"#,
        ] {
            assert_eq!(p.merge(bad), Err(BatchError::Malformed), "{bad:?}");
        }
        let huge = vec![b' '; MAX_BATCH_BYTES + 1];
        assert_eq!(p.merge(&huge), Err(BatchError::TooLarge));
        assert!(p.is_empty());
    }

    #[test]
    fn answers_decide_between_done_retry_and_drop() {
        assert_eq!(Posted::from_status(b"202"), Posted::Accepted);
        for retry in [
            &b""[..],
            b"401",
            b"408",
            b"413",
            b"415",
            b"429",
            b"500",
            b"503",
        ] {
            assert_eq!(Posted::from_status(retry), Posted::Retry);
        }
        for refused in [&b"400"[..], b"404", b"405"] {
            assert_eq!(Posted::from_status(refused), Posted::Refused);
        }
    }

    #[test]
    fn only_a_valid_node_id_is_the_proxy() {
        assert_eq!(proxy_id(b"envoy-1.eu"), Some("envoy-1.eu".into()));
        assert_eq!(proxy_id(b""), None);
        assert_eq!(proxy_id(b"has space"), None);
        assert_eq!(proxy_id(&[b'a'; 129]), None);
    }

    #[test]
    fn a_tally_batch_is_a_batch_the_sync_merges() {
        let plans = ["team".to_string()];
        let mut t = crate::observe::tally::Tally::new(&plans, true);
        t.allowed(Some(0), false, Some(("key_a", 9)));
        let f = crate::observe::tally::RefusalFacts {
            at: crate::time::UnixNanos::from_secs(9),
            denial: crate::refusal::Denial::NoRoute,
            request_id: b"r",
            method: b"GET",
            route: None,
            identity: None,
            credential: None,
            client: None,
            shadow: None,
        };
        t.refused(&f, None);
        let mut p = Pending::default();
        p.merge(t.take_batch().unwrap().as_bytes()).unwrap();
        let body: Value = serde_json::from_str(&p.body(None, Some(1))).unwrap();
        assert_eq!(body["refusals"][0]["code"], "NOT_FOUND");
        assert_eq!(body["key_uses"], json!([{"key_id": "key_a", "at": 9}]));
        assert_eq!(
            body["requests"],
            json!([{"plan": "", "allowed": 0, "refused": 1}, {"plan": "team", "allowed": 1, "refused": 0}])
        );
    }
}
