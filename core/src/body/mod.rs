//! Body rules, the last step of the request path: the size limit, the JSON caps and the
//! webhook signature over the raw body, judged piece by piece without keeping the body.
//! Behaviour: `docs/policy.md#body-limits` and `docs/policy.md#webhook-signatures`.

pub mod json;
pub mod replay_cache;
pub mod webhook;

use crate::body::webhook::{Pending, Verifier};
use crate::request::Presented;
use crate::store::SharedStore;

/// `max_bytes` when neither the route nor the policy's `body` section says: 1 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// The largest `max_bytes` any route may set: 1 GiB (streamed, never held).
pub const MAX_BYTES_LIMIT: u64 = 1 << 30;
/// The largest `max_bytes` of a route that holds its body (webhook or JSON caps): 32 MiB,
/// held in Envoy's memory per request.
pub const MAX_HELD_BYTES: u64 = 32 << 20;
/// `json.max_string_bytes` when `json` does not say: 256 KiB.
pub const DEFAULT_MAX_STRING_BYTES: u64 = 256 << 10;
/// `json.max_array_items` when `json` does not say.
pub const DEFAULT_MAX_ARRAY_ITEMS: u64 = 100;
/// Envoy's own per-connection buffer limit when nothing asks for more (its default).
pub const ENVOY_DEFAULT_BUFFER_LIMIT: u64 = 1 << 20;

/// A route's body rules (the policy's `body` section, with a route's overrides applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyPolicy {
    /// The largest body accepted, in bytes. Defaults to [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
    /// JSON caps; the body must then be one valid JSON value. Defaults to none.
    pub json: Option<JsonCaps>,
}

impl Default for BodyPolicy {
    fn default() -> Self {
        BodyPolicy {
            max_bytes: DEFAULT_MAX_BYTES,
            json: None,
        }
    }
}

/// Caps on the parts of a JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonCaps {
    /// The longest string (keys included) or number, in bytes as written. Defaults to
    /// [`DEFAULT_MAX_STRING_BYTES`].
    pub max_string_bytes: u64,
    /// The most items in one array. Defaults to [`DEFAULT_MAX_ARRAY_ITEMS`].
    pub max_array_items: u64,
}

impl Default for JsonCaps {
    fn default() -> Self {
        JsonCaps {
            max_string_bytes: DEFAULT_MAX_STRING_BYTES,
            max_array_items: DEFAULT_MAX_ARRAY_ITEMS,
        }
    }
}

/// Why a body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// More bytes than `max_bytes` (declared or counted).
    TooLarge,
    /// The JSON rules refused it.
    Json(json::JsonError),
}

impl BodyError {
    /// The precise reason, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyError::TooLarge => "body_too_large",
            BodyError::Json(e) => e.as_str(),
        }
    }
}

/// Why a body check refused a request: the body itself, or its webhook signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Body(BodyError),
    Signature(webhook::SignatureError),
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        Refusal::Body(e)
    }
}

/// Whether a route holds its body back until it is checked: it has JSON caps or a
/// webhook to verify.
pub fn holds_body(policy: &BodyPolicy, has_webhook: bool) -> bool {
    has_webhook || policy.json.is_some()
}

/// The per-connection buffer Envoy needs so that its own limit (a plain-text 413) never
/// refuses a body the policy allows, or refuses one before the policy does: twice the
/// largest `max_bytes` of a route that holds its body, and never below Envoy's default.
///
/// Why twice: Envoy checks its limit when it appends a read to the held body, before the
/// filter sees the new bytes, so the read that crosses the policy's limit must still fit
/// (measured with Envoy 1.40: with the limit at exactly `max_bytes`, a body one byte over
/// got Envoy's own 413). One read can be large; the filter refuses as soon as the held
/// body passes `max_bytes`, so the extra room costs memory only for that one read.
pub fn envoy_buffer_limit<'a>(routes: impl IntoIterator<Item = (&'a BodyPolicy, bool)>) -> u64 {
    routes
        .into_iter()
        .filter(|(body, webhook)| holds_body(body, *webhook))
        .map(|(body, _)| body.max_bytes.saturating_mul(2))
        .max()
        .unwrap_or(0)
        .max(ENVOY_DEFAULT_BUFFER_LIMIT)
}

/// What the request headers say about the body.
#[derive(Clone, Copy, Debug)]
pub struct BodyHead<'a> {
    /// The `Content-Length` header, if any.
    pub content_length: Option<&'a [u8]>,
    /// The headers ended the request: there is no body.
    pub end_of_stream: bool,
    /// The webhook's signature header (ignored without a webhook).
    pub signature: Presented<'a>,
    /// The webhook's timestamp header, when it has one of its own.
    pub timestamp: Presented<'a>,
}

/// A body being checked.
#[derive(Clone, Debug)]
pub struct BodyCheck {
    max_bytes: u64,
    seen: u64,
    json: Option<json::Scanner>,
    signature: Option<Pending>,
}

/// A `Content-Length` value, when it is one (Envoy has already refused malformed ones).
fn declared_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Too many digits for a u64 is certainly too large.
    Some(
        std::str::from_utf8(digits)
            .ok()?
            .parse()
            .unwrap_or(u64::MAX),
    )
}

/// Judges the headers and returns the check the body goes through: a `Content-Length`
/// over `max_bytes` (413), then a webhook's signature headers ([`crate::body::webhook`]),
/// are refused before any body is read. The shell then feeds the body as Envoy delivers
/// it (held or streamed, [`holds_body`]; both refused at the byte past `max_bytes`) and
/// calls [`BodyCheck::finish`]. `verifier` is the route's, if it has a webhook.
pub fn start(
    policy: &BodyPolicy,
    verifier: Option<&Verifier>,
    head: &BodyHead<'_>,
    now_secs: u64,
) -> Result<BodyCheck, Refusal> {
    if head
        .content_length
        .and_then(declared_length)
        .is_some_and(|n| n > policy.max_bytes)
    {
        return Err(BodyError::TooLarge.into());
    }
    let signature = match verifier {
        Some(v) => Some(
            v.begin(head.signature, head.timestamp, now_secs)
                .map_err(Refusal::Signature)?,
        ),
        None => None,
    };
    Ok(BodyCheck {
        max_bytes: policy.max_bytes,
        seen: 0,
        json: policy
            .json
            .map(|c| json::Scanner::new(c.max_string_bytes, c.max_array_items)),
        signature,
    })
}

impl BodyCheck {
    /// Whether the body must be held back from the upstream until [`finish`](Self::finish).
    /// Otherwise only its size matters and [`count`](Self::count) is enough.
    pub fn holds(&self) -> bool {
        self.json.is_some() || self.signature.is_some()
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// `n` more bytes streamed past (a route that does not hold its body).
    pub fn count(&mut self, n: u64) -> Result<(), Refusal> {
        self.seen = self.seen.saturating_add(n);
        if self.seen > self.max_bytes {
            return Err(BodyError::TooLarge.into());
        }
        Ok(())
    }

    /// The next bytes of a held body, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        self.count(bytes.len() as u64)?;
        if let Some(scanner) = &mut self.json {
            scanner
                .feed(bytes)
                .map_err(|e| Refusal::Body(BodyError::Json(e)))?;
        }
        if let Some(pending) = &mut self.signature {
            pending.update(bytes);
        }
        Ok(())
    }

    /// The body is complete: the JSON checker must have seen one whole valid value (an
    /// empty body is not checked), one secret's MAC must equal a presented signature, and
    /// then the replay cache must not know it. `store` holds the replay cache.
    pub fn finish(
        self,
        verifier: Option<&Verifier>,
        store: &impl SharedStore,
        now_secs: u64,
    ) -> Result<(), Refusal> {
        if let Some(mut scanner) = self.json
            && self.seen > 0
        {
            scanner
                .finish()
                .map_err(|e| Refusal::Body(BodyError::Json(e)))?;
        }
        if let Some(pending) = self.signature {
            let accepted = pending.finish().map_err(Refusal::Signature)?;
            if let Some((table, slots)) = verifier.and_then(Verifier::replay_table) {
                crate::body::replay_cache::remember(store, table, slots, &accepted, now_secs)
                    .map_err(Refusal::Signature)?;
            }
        }
        Ok(())
    }
}

/// The precise reason, as logs and metrics name it.
impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Body(e) => e.fmt(f),
            Refusal::Signature(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::webhook::{Provider, SignatureError, Webhook, sign};
    use crate::store::MemoryStore;

    const NOW: u64 = 1_767_225_600;
    const SECRET: &str = "github-secret-0123456789";

    fn github(replay: Option<u32>) -> (Webhook, Verifier) {
        let w = Webhook {
            provider: Provider::Github,
            secrets_env: vec!["S".into()],
            tolerance_secs: 300,
            replay_window_secs: crate::body::webhook::DEFAULT_REPLAY_WINDOW_SECS,
            replay_slots: replay,
        };
        let v = Verifier::new(&w, "hooks", |_| Some(SECRET.into())).unwrap();
        (w, v)
    }

    fn head<'a>(len: Option<&'a str>, sig: Presented<'a>) -> BodyHead<'a> {
        BodyHead {
            content_length: len.map(str::as_bytes),
            end_of_stream: false,
            signature: sig,
            timestamp: Presented::None,
        }
    }

    fn small(max: u64) -> BodyPolicy {
        BodyPolicy {
            max_bytes: max,
            json: None,
        }
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_any_body() {
        let r = small(10);
        let too_large = Err(Refusal::Body(BodyError::TooLarge));
        assert_eq!(
            start(&r, None, &head(Some("11"), Presented::None), NOW).map(|_| ()),
            too_large
        );
        assert_eq!(
            start(
                &r,
                None,
                &head(Some("99999999999999999999999"), Presented::None),
                NOW
            )
            .map(|_| ()),
            too_large
        );
        assert!(start(&r, None, &head(Some("10"), Presented::None), NOW).is_ok());
        assert!(start(&r, None, &head(None, Presented::None), NOW).is_ok());
    }

    #[test]
    fn a_streamed_body_is_refused_once_over_the_limit() {
        let r = small(10);
        let mut c = start(&r, None, &head(None, Presented::None), NOW).unwrap();
        assert!(!c.holds());
        assert_eq!(c.count(6), Ok(()));
        assert_eq!(c.count(4), Ok(()));
        assert_eq!(c.count(1), Err(Refusal::Body(BodyError::TooLarge)));
    }

    #[test]
    fn json_caps_hold_the_body_and_refuse_what_breaks_them() {
        let r = BodyPolicy {
            max_bytes: 1000,
            json: Some(JsonCaps {
                max_string_bytes: 8,
                max_array_items: 2,
            }),
        };
        let store = MemoryStore::default();
        let run = |body: &[u8]| {
            let mut c = start(&r, None, &head(None, Presented::None), NOW)?;
            assert!(c.holds());
            for b in body.chunks(3) {
                c.feed(b)?;
            }
            c.finish(None, &store, NOW)
        };
        assert_eq!(run(br#"{"a":[1,2]}"#), Ok(()));
        assert_eq!(run(b""), Ok(()));
        assert_eq!(
            run(br#"{"a":[1,2,3]}"#),
            Err(Refusal::Body(BodyError::Json(
                json::JsonError::TooManyItems
            )))
        );
        assert_eq!(
            run(br#"{"a":"123456789"}"#),
            Err(Refusal::Body(BodyError::Json(
                json::JsonError::StringTooLong
            )))
        );
        assert_eq!(
            run(br#"{"a":"#),
            Err(Refusal::Body(BodyError::Json(json::JsonError::Malformed)))
        );
    }

    #[test]
    fn a_webhook_body_is_verified_at_the_end_and_replays_are_refused() {
        let (_, v) = github(Some(64));
        let store = MemoryStore::default();
        crate::body::replay_cache::prepare(&store, "hooks", 64).unwrap();
        let r = small(100);
        let body = b"{\"action\":\"opened\"}";
        let sig = sign(&Provider::Github, SECRET.as_bytes(), 0, body);
        let run = |body: &[u8], now: u64| {
            let mut c = start(
                &r,
                Some(&v),
                &head(None, Presented::One(sig.as_bytes())),
                now,
            )?;
            assert!(c.holds());
            for b in body.chunks(2) {
                c.feed(b)?;
            }
            c.finish(Some(&v), &store, now)
        };
        assert_eq!(run(body, NOW), Ok(()));
        assert_eq!(
            run(body, NOW + 1),
            Err(Refusal::Signature(SignatureError::Replayed))
        );
        assert_eq!(
            run(b"{\"action\":\"closed\"}", NOW),
            Err(Refusal::Signature(SignatureError::Mismatch))
        );
        // GitHub signs no timestamp: the delivery is remembered for the replay window (24
        // hours), not the 5-minute tolerance, and only then accepted again.
        assert_eq!(
            run(body, NOW + 301),
            Err(Refusal::Signature(SignatureError::Replayed))
        );
        assert_eq!(run(body, NOW + 86_400), Ok(()));
        assert_eq!(
            start(&r, Some(&v), &head(None, Presented::None), NOW).map(|_| ()),
            Err(Refusal::Signature(SignatureError::Missing))
        );
    }

    #[test]
    fn the_envoy_buffer_follows_the_largest_held_body() {
        let (plain, held) = (small(50 << 20), small(4 << 20));
        assert_eq!(envoy_buffer_limit([(&plain, false)]), 1 << 20);
        assert_eq!(
            envoy_buffer_limit([(&plain, false), (&held, true)]),
            8 << 20
        );
    }
}
