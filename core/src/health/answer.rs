//! The health route's answer (`health:` in the policy). A request for its path, matched
//! byte for byte up to the first `?`, is answered here before routing: never
//! authenticated, limited or sent upstream. GET and HEAD get 200 with the key cache's
//! version and age, or 503 `NOT_READY` saying why ([`super::readiness`]); HEAD the same
//! without a body. Any other method is refused with 405 `METHOD_NOT_ALLOWED`, like any
//! refusal. A 200 or 503 answers a probe, not a client's request: it is counted apart and
//! never enters the refusal log or audit. Costs one comparison on any other request.

use super::{Cache, readiness};
use crate::clock::Clock;
use crate::policy::{HealthPolicy, Policy};
use crate::refusal::{Denial, LocalReply};
use crate::store::SharedStore;
use crate::text::push_decimal;

/// The health route's answer to a request for its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200 or 503, to send as it is; `ready` says which.
    Probe { reply: LocalReply, ready: bool },
    /// Neither GET nor HEAD: 405, recorded as a refusal.
    Refuse(Denial),
}

/// Whether `raw_path` (the `:path` header) is the health path: the part before the first
/// `?`, byte for byte. Any other spelling of it (`//readyz`, `/%72eadyz`, `/READYZ`,
/// `/readyz/`, `/readyz#x`) is not, and goes through routing like any request.
pub fn is_health_path(health: &HealthPolicy, raw_path: &[u8]) -> bool {
    let path = raw_path.split(|&b| b == b'?').next().unwrap_or(raw_path);
    path == health.path.as_bytes()
}

/// The answer to a request for the policy's health path; `None` for any other request
/// (the clock and the store are then not read).
pub fn answer(
    policy: &Policy,
    method: &[u8],
    raw_path: &[u8],
    request_id: &[u8],
    store: &impl SharedStore,
    clock: &impl Clock,
) -> Option<Answer> {
    let health = policy.health.as_ref()?;
    if !is_health_path(health, raw_path) {
        return None;
    }
    let head = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Some(Answer::Refuse(Denial::MethodNotAllowed)),
    };
    let now = clock.now();
    let (mut reply, ready) = match readiness(policy.feed.as_ref(), store, now.secs()) {
        Ok(cache) => (ready_reply(cache), true),
        Err(why) => (
            Denial::NotReady(why).render(now, request_id, policy.verbose_errors),
            false,
        ),
    };
    if head {
        reply.body.clear();
    }
    Some(Answer::Probe { reply, ready })
}

/// `{"status":"ok","cache_version":N,"cache_age_seconds":S}`, or `{"status":"ok"}`
/// without a feed.
fn ready_reply(cache: Option<Cache>) -> LocalReply {
    let mut body = String::with_capacity(64);
    body.push_str("{\"status\":\"ok\"");
    if let Some(c) = cache {
        body.push_str(",\"cache_version\":");
        push_decimal(&mut body, c.version);
        body.push_str(",\"cache_age_seconds\":");
        push_decimal(&mut body, c.age_secs);
    }
    body.push('}');
    LocalReply {
        status: 200,
        headers: vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
        ],
        body,
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::policy::load_yaml;
    use crate::store::MemoryStore;
    use crate::sync::feed::{STATE_KEY, SyncState};

    const NOW: u64 = 1_767_225_600;

    fn policy(feed: bool) -> Policy {
        let feed = if feed {
            "feed: { cluster: control, token_env: T, staleness: 30s }\n"
        } else {
            ""
        };
        let src = format!(
            "version: 1\n{feed}health: {{ path: /readyz }}\nroutes:\n  - match: {{ path_prefix: / }}\n    audience: external\n"
        );
        load_yaml("p.yaml", &src).unwrap().policy
    }

    fn ask(policy: &Policy, method: &str, path: &str, store: &MemoryStore, at: u64) -> Answer {
        answer(
            policy,
            method.as_bytes(),
            path.as_bytes(),
            b"req-1",
            store,
            &FixedClock::at_secs(at),
        )
        .unwrap_or_else(|| panic!("{method} {path} is the health path"))
    }

    fn probe(answer: Answer) -> (LocalReply, bool) {
        match answer {
            Answer::Probe { reply, ready } => (reply, ready),
            other => panic!("{other:?}"),
        }
    }

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(reply: &LocalReply) -> serde_json::Value {
        serde_json::from_str(&reply.body).unwrap()
    }

    fn applied(store: &MemoryStore, version: u64, at: u64) {
        let state = SyncState {
            epoch: "e1".into(),
            version,
            last_success: at,
            generation: 1,
            keys: 0,
        };
        store.set(STATE_KEY, &state.encode(), 0).unwrap();
    }

    #[test]
    fn before_the_first_snapshot_the_answer_is_503_not_ready_with_retry_after() {
        let (reply, ready) = probe(ask(
            &policy(true),
            "GET",
            "/readyz",
            &MemoryStore::default(),
            NOW,
        ));
        assert!(!ready);
        assert_eq!(reply.status, 503);
        assert_eq!(
            json(&reply),
            serde_json::json!({
                "error": "the key cache has not received its first snapshot",
                "code": "NOT_READY",
                "timestamp": "2026-01-01T00:00:00.000Z",
                "request_id": "req-1",
            })
        );
        assert_eq!(header(&reply, "retry-after"), Some("5"));
        assert_eq!(header(&reply, "cache-control"), Some("no-store"));
        assert_eq!(header(&reply, "content-type"), Some("application/json"));
    }

    #[test]
    fn after_a_snapshot_the_answer_is_200_with_the_cache_version_and_age() {
        let store = MemoryStore::default();
        applied(&store, 42, NOW);
        let (reply, ready) = probe(ask(&policy(true), "GET", "/readyz", &store, NOW + 3));
        assert!(ready);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body,
            r#"{"status":"ok","cache_version":42,"cache_age_seconds":3}"#
        );
        assert_eq!(header(&reply, "cache-control"), Some("no-store"));
        assert_eq!(header(&reply, "retry-after"), None);
    }

    #[test]
    fn a_cache_older_than_feed_staleness_is_503_saying_how_old() {
        let store = MemoryStore::default();
        applied(&store, 42, NOW);
        let p = policy(true);
        assert!(
            probe(ask(&p, "GET", "/readyz", &store, NOW + 30)).1,
            "at the bound"
        );
        let (reply, ready) = probe(ask(&p, "GET", "/readyz", &store, NOW + 45));
        assert!(!ready);
        assert_eq!(reply.status, 503);
        let body = json(&reply);
        assert_eq!(body["code"], "NOT_READY");
        assert_eq!(
            body["error"],
            "the key cache is 45 s old, over feed.staleness"
        );
        assert_eq!(
            body.as_object().unwrap().len(),
            4,
            "the standard shape: {body}"
        );
        assert_eq!(header(&reply, "retry-after"), Some("5"));
    }

    #[test]
    fn without_a_feed_the_answer_is_always_200() {
        let (reply, ready) = probe(ask(
            &policy(false),
            "GET",
            "/readyz",
            &MemoryStore::default(),
            NOW,
        ));
        assert!(ready);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, r#"{"status":"ok"}"#)
        );
    }

    #[test]
    fn head_gets_the_same_status_and_headers_without_a_body() {
        let store = MemoryStore::default();
        let p = policy(true);
        let (get, _) = probe(ask(&p, "GET", "/readyz", &store, NOW));
        let (head, ready) = probe(ask(&p, "HEAD", "/readyz", &store, NOW));
        assert!(!ready);
        assert_eq!((head.status, head.body.as_str()), (503, ""));
        assert_eq!(head.headers, get.headers);
        applied(&store, 1, NOW);
        let (head, ready) = probe(ask(&p, "HEAD", "/readyz", &store, NOW));
        assert!(ready);
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        assert_eq!(header(&head, "cache-control"), Some("no-store"));
    }

    #[test]
    fn another_method_is_refused_with_405_and_allow() {
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", "PATCH"] {
            assert_eq!(
                ask(
                    &policy(true),
                    method,
                    "/readyz",
                    &MemoryStore::default(),
                    NOW
                ),
                Answer::Refuse(Denial::MethodNotAllowed),
                "{method}"
            );
        }
        let reply = Denial::MethodNotAllowed.reply(crate::time::UnixNanos(0), b"r");
        assert_eq!(reply.status, 405);
        assert_eq!(header(&reply, "allow"), Some("GET, HEAD"));
        assert_eq!(json(&reply)["code"], "METHOD_NOT_ALLOWED");
    }

    #[test]
    fn only_the_exact_path_is_the_health_path_whatever_its_query() {
        let p = policy(false);
        let store = MemoryStore::default();
        for path in ["/readyz", "/readyz?", "/readyz?probe=1&x=%2F", "/readyz??"] {
            assert!(probe(ask(&p, "GET", path, &store, NOW)).1, "{path}");
        }
        for other in [
            "/readyz/",
            "//readyz",
            "/READYZ",
            "/%72eadyz",
            "/readyz%3F",
            "/readyz#x",
            "/readyz;x",
            "/./readyz",
            "/readyzz",
            "readyz",
            "",
        ] {
            let clock = FixedClock::at_secs(NOW);
            assert_eq!(
                answer(&p, b"GET", other.as_bytes(), b"", &store, &clock),
                None,
                "{other:?} goes through routing"
            );
        }
        let mut none = policy(false);
        none.health = None;
        let clock = FixedClock::at_secs(NOW);
        assert_eq!(answer(&none, b"GET", b"/readyz", b"", &store, &clock), None);
    }
}
