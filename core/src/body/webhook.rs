//! Webhook signatures: was this body really sent by the provider that shares our secret?
//! It must never compare in variable time (`subtle`'s `ct_eq` on equal-length tags), put
//! a signature, signed string or secret into an error, log or response, or read the clock.
//! Providers, order of checks, replay: `docs/policy.md#webhook-signatures`.

use crate::request::Presented;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The replay window when the policy does not set `tolerance`: 5 minutes, the window
/// Stripe's and Slack's own libraries use.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// How long a message without a signed timestamp is remembered when the policy does not
/// set `replay_window`: 24 hours, longer than any sender's own retries (GitHub does not
/// retry by itself; a redelivery is a person's doing).
pub const DEFAULT_REPLAY_WINDOW_SECS: u64 = 86_400;

/// Signatures one header may carry (Stripe's `v1` values). A header with more is refused:
/// the work per request stays bounded.
pub const MAX_SIGNATURES: usize = 8;

/// The shortest secret accepted: HMAC with a shorter key can be brute-forced offline
/// from one signed message.
pub const MIN_SECRET_LEN: usize = 16;

/// The longest tag: HMAC-SHA512.
const MAX_TAG_LEN: usize = 64;

/// The HMAC hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The tag length in bytes.
    pub fn tag_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// How a `generic` signature is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Hex digits, either case.
    Hex,
    /// Standard base64 (`+`, `/`), padded or not.
    Base64,
}

/// One piece of a signed-payload template other than the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// The timestamp header's value, exactly as sent.
    Timestamp,
}

/// `signed_payload`: the bytes signed around the raw body, e.g. `{timestamp}.{body}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub before: Vec<Piece>,
    pub after: Vec<Piece>,
}

impl Template {
    /// Parses a template: `{body}` exactly once, `{timestamp}` at most once, any other
    /// text literally. The error says what is wrong, for the policy decoder.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut before = Vec::new();
        let mut after = Vec::new();
        let mut seen_body = false;
        let mut seen_timestamp = false;
        let mut rest = text;
        while !rest.is_empty() {
            let target = if seen_body { &mut after } else { &mut before };
            match rest.find('{') {
                None => {
                    if rest.contains('}') {
                        return Err(
                            "unbalanced '}'; placeholders are {timestamp} and {body}".into()
                        );
                    }
                    target.push(Piece::Text(rest.to_string()));
                    rest = "";
                }
                Some(open) => {
                    let (text_part, tail) = rest.split_at(open);
                    if text_part.contains('}') {
                        return Err(
                            "unbalanced '}'; placeholders are {timestamp} and {body}".into()
                        );
                    }
                    if !text_part.is_empty() {
                        target.push(Piece::Text(text_part.to_string()));
                    }
                    let Some(close) = tail.find('}') else {
                        return Err(
                            "unbalanced '{'; placeholders are {timestamp} and {body}".into()
                        );
                    };
                    let name = tail.get(1..close).unwrap_or_default();
                    match name {
                        "body" if seen_body => return Err("{body} appears more than once".into()),
                        "body" => seen_body = true,
                        "timestamp" if seen_timestamp => {
                            return Err("{timestamp} appears more than once".into());
                        }
                        "timestamp" => {
                            seen_timestamp = true;
                            target.push(Piece::Timestamp);
                        }
                        other => {
                            return Err(format!(
                                "unknown placeholder '{{{other}}}'; expected {{timestamp}} or {{body}}"
                            ));
                        }
                    }
                    rest = tail.get(close + 1..).unwrap_or_default();
                }
            }
        }
        if !seen_body {
            return Err("must contain {body}".into());
        }
        Ok(Template { before, after })
    }

    /// Whether `{timestamp}` is part of what is signed.
    pub fn signs_timestamp(&self) -> bool {
        self.before
            .iter()
            .chain(&self.after)
            .any(|p| *p == Piece::Timestamp)
    }
}

/// A provider's scheme, configured (`provider: generic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generic {
    /// Lower-case header name.
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the signature in the header (`sha256=`). Defaults to none.
    pub prefix: Option<String>,
    /// Lower-case header with the Unix-seconds timestamp. Defaults to none (no window).
    pub timestamp_header: Option<String>,
    pub payload: Template,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    Stripe,
    Slack,
    Github,
    Generic(Generic),
}

/// Stripe sends one `v1` per active secret while one is rolled: any matching `v1` is
/// enough, and other schemes (`v0`) are ignored, as Stripe's own libraries do.
pub const STRIPE_HEADER: &str = "stripe-signature";
pub const SLACK_HEADER: &str = "x-slack-signature";
pub const SLACK_TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
pub const GITHUB_HEADER: &str = "x-hub-signature-256";

impl Provider {
    pub const NAMES: [&'static str; 4] = ["stripe", "slack", "github", "generic"];

    /// The (lower-case) header that carries the signature.
    pub fn signature_header(&self) -> &str {
        match self {
            Provider::Stripe => STRIPE_HEADER,
            Provider::Slack => SLACK_HEADER,
            Provider::Github => GITHUB_HEADER,
            Provider::Generic(g) => &g.header,
        }
    }

    /// The (lower-case) header that carries the timestamp, when it is a header of its own.
    /// Stripe's is inside its signature header.
    pub fn timestamp_header(&self) -> Option<&str> {
        match self {
            Provider::Slack => Some(SLACK_TIMESTAMP_HEADER),
            Provider::Generic(g) => g.timestamp_header.as_deref(),
            Provider::Stripe | Provider::Github => None,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Provider::Generic(g) => g.algorithm,
            _ => Algorithm::Sha256,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Slack => "slack",
            Provider::Github => "github",
            Provider::Generic(_) => "generic",
        }
    }

    /// Whether the sender signs a timestamp, so that an old copy of a message stops
    /// verifying on its own (see the module doc).
    pub fn signs_timestamp(&self) -> bool {
        match self {
            Provider::Stripe | Provider::Slack => true,
            Provider::Github => false,
            Provider::Generic(g) => g.timestamp_header.is_some(),
        }
    }
}

/// A route's `webhook` section, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub provider: Provider,
    /// Environment variables holding the secrets (1 or more; any may match).
    pub secrets_env: Vec<String>,
    /// Accepted distance between the signed timestamp and now, and how long the replay
    /// cache remembers a message with a signed timestamp (after `ts + tolerance` it fails
    /// the window check anyway). Defaults to [`DEFAULT_TOLERANCE_SECS`].
    pub tolerance_secs: u64,
    /// How long the replay cache remembers a message without a signed timestamp, from the
    /// moment it was accepted; unused when the provider signs one. Defaults to
    /// [`DEFAULT_REPLAY_WINDOW_SECS`].
    pub replay_window_secs: u64,
    /// Slots of the replay cache ([`crate::body::replay_cache`]). Defaults to
    /// [`crate::body::replay_cache::DEFAULT_WINDOW_SLOTS`] when the provider signs no timestamp,
    /// else to none: no cache.
    pub replay_slots: Option<u32>,
}

/// Why a signature was refused. Fieldless: nothing from the request or the secret is
/// carried, so nothing can leak through a log line or a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature header, or the timestamp header, is absent.
    Missing,
    /// Present more than once, or not in the provider's format.
    Malformed,
    /// No secret produces a signature the request carries.
    Mismatch,
    /// The timestamp is outside the window.
    Expired,
    /// The replay cache already holds this signature.
    Replayed,
    /// The replay cache could not remember the signature (every candidate slot is live,
    /// or writes kept conflicting): refused, since a later replay could not be caught.
    Unavailable,
}

impl SignatureError {
    /// The precise reason, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Expired => "signature_expired",
            SignatureError::Replayed => "signature_replayed",
            SignatureError::Unavailable => "replay_cache_unavailable",
        }
    }
}

/// An HMAC keyed with one secret; cloned per request, so the key schedule is computed
/// once at configure time.
#[derive(Clone)]
enum KeyedMac {
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

impl KeyedMac {
    fn new(alg: Algorithm, secret: &[u8]) -> Option<KeyedMac> {
        Some(match alg {
            Algorithm::Sha256 => KeyedMac::Sha256(Hmac::new_from_slice(secret).ok()?),
            Algorithm::Sha512 => KeyedMac::Sha512(Hmac::new_from_slice(secret).ok()?),
        })
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            KeyedMac::Sha256(m) => m.update(bytes),
            KeyedMac::Sha512(m) => m.update(bytes),
        }
    }

    /// The tag, in a fixed buffer; its length is the algorithm's.
    fn finalize(self) -> ([u8; MAX_TAG_LEN], usize) {
        let mut out = [0u8; MAX_TAG_LEN];
        let len = match self {
            KeyedMac::Sha256(m) => copy_tag(&m.finalize().into_bytes(), &mut out),
            KeyedMac::Sha512(m) => copy_tag(&m.finalize().into_bytes(), &mut out),
        };
        (out, len)
    }
}

fn copy_tag(tag: &[u8], out: &mut [u8; MAX_TAG_LEN]) -> usize {
    for (o, t) in out.iter_mut().zip(tag) {
        *o = *t;
    }
    tag.len().min(MAX_TAG_LEN)
}

/// The signatures a request carries, decoded to bytes, without allocating.
#[derive(Clone)]
struct Candidates {
    tags: [[u8; MAX_TAG_LEN]; MAX_SIGNATURES],
    count: usize,
    len: usize,
}

impl Candidates {
    fn new(len: usize) -> Candidates {
        Candidates {
            tags: [[0; MAX_TAG_LEN]; MAX_SIGNATURES],
            count: 0,
            len: len.min(MAX_TAG_LEN),
        }
    }

    /// Adds a hex-encoded signature. `Ok(false)`: not a tag of the right length (skipped);
    /// `Err`: one too many.
    fn push_hex(&mut self, text: &[u8]) -> Result<bool, SignatureError> {
        let len = self.len;
        let slot = self
            .tags
            .get_mut(self.count)
            .ok_or(SignatureError::Malformed)?;
        let Some(out) = slot.get_mut(..len) else {
            return Ok(false);
        };
        if crate::authn::api_key::unhex_into(text, out).is_none() {
            return Ok(false);
        }
        self.count += 1;
        Ok(true)
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Result<bool, SignatureError> {
        if bytes.len() != self.len {
            return Ok(false);
        }
        let slot = self
            .tags
            .get_mut(self.count)
            .ok_or(SignatureError::Malformed)?;
        for (o, b) in slot.iter_mut().zip(bytes) {
            *o = *b;
        }
        self.count += 1;
        Ok(true)
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.tags
            .iter()
            .take(self.count)
            .map(|t| t.get(..self.len).unwrap_or_default())
    }
}

/// A route's verifier: its scheme and the keyed MACs of its secrets.
#[derive(Clone)]
pub struct Verifier {
    provider: Provider,
    keys: Vec<KeyedMac>,
    tolerance_secs: u64,
    replay_window_secs: u64,
    /// The replay cache's table name and size, when the route has one.
    replay: Option<(String, u32)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Verifier({}, {} secrets)",
            self.provider.name(),
            self.keys.len()
        )
    }
}

/// A verification under way: the headers passed, the body is being fed.
#[derive(Clone)]
pub struct Pending {
    macs: Vec<KeyedMac>,
    candidates: Candidates,
    /// Signed bytes that follow the body (`generic` templates only; usually empty).
    after: Vec<u8>,
    /// [`Accepted::replayable_until`].
    replayable_until: u64,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending(<redacted>)")
    }
}

/// A verified message, as the replay cache knows it: the SHA-256 of the tag that matched
/// (never the tag itself) and how long it must be remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub fingerprint: [u8; 32],
    /// The first Unix second at which the cache may forget the message: `ts + tolerance +
    /// 1` with a signed timestamp (the first second it fails the window check), the
    /// moment it was accepted plus the replay window without one (nothing in such a
    /// message goes stale, so a copy after the window is accepted again).
    pub replayable_until: u64,
}

/// Unix seconds written as 1 to 19 ASCII digits.
fn parse_timestamp(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn one(p: Presented<'_>) -> Result<&[u8], SignatureError> {
    match p {
        Presented::None => Err(SignatureError::Missing),
        Presented::Several => Err(SignatureError::Malformed),
        Presented::One(v) => Ok(v.trim_ascii()),
    }
}

/// What the headers said: the signatures, and the timestamp's text and value.
struct Parsed<'a> {
    candidates: Candidates,
    timestamp: Option<(&'a [u8], u64)>,
}

/// Parses `Stripe-Signature`: comma-separated `key=value` items; `t` once, `v1` one or
/// more times, anything else ignored.
fn parse_stripe(value: &[u8]) -> Result<Parsed<'_>, SignatureError> {
    let mut candidates = Candidates::new(Algorithm::Sha256.tag_len());
    let mut timestamp = None;
    let mut v1_seen = 0usize;
    for item in value.split(|b| *b == b',') {
        let item = item.trim_ascii();
        let Some(eq) = item.iter().position(|b| *b == b'=') else {
            return Err(SignatureError::Malformed);
        };
        let key = item.get(..eq).unwrap_or_default();
        let val = item.get(eq + 1..).unwrap_or_default();
        match key {
            b"t" if timestamp.is_some() => return Err(SignatureError::Malformed),
            b"t" => {
                let ts = parse_timestamp(val).ok_or(SignatureError::Malformed)?;
                timestamp = Some((val, ts));
            }
            b"v1" => {
                v1_seen += 1;
                if v1_seen > MAX_SIGNATURES {
                    return Err(SignatureError::Malformed);
                }
                candidates.push_hex(val)?;
            }
            _ => {}
        }
    }
    if timestamp.is_none() || candidates.count == 0 {
        return Err(SignatureError::Malformed);
    }
    Ok(Parsed {
        candidates,
        timestamp,
    })
}

/// `<prefix><hex>` with one SHA-256 tag (Slack's `v0=`, GitHub's `sha256=`).
fn parse_prefixed_hex(value: &[u8], prefix: &[u8]) -> Result<Candidates, SignatureError> {
    let hex = value
        .strip_prefix(prefix)
        .ok_or(SignatureError::Malformed)?;
    let mut candidates = Candidates::new(Algorithm::Sha256.tag_len());
    if !candidates.push_hex(hex)? {
        return Err(SignatureError::Malformed);
    }
    Ok(candidates)
}

fn parse_generic(g: &Generic, value: &[u8]) -> Result<Candidates, SignatureError> {
    let text = match &g.prefix {
        Some(p) => value
            .strip_prefix(p.as_bytes())
            .ok_or(SignatureError::Malformed)?,
        None => value,
    };
    let mut candidates = Candidates::new(g.algorithm.tag_len());
    let pushed = match g.encoding {
        Encoding::Hex => candidates.push_hex(text)?,
        Encoding::Base64 => {
            let bytes = decode_standard(text).ok_or(SignatureError::Malformed)?;
            candidates.push_bytes(&bytes)?
        }
    };
    if !pushed {
        return Err(SignatureError::Malformed);
    }
    Ok(candidates)
}

impl Verifier {
    /// Builds the verifier of one route's webhook, reading each secret with `env` (the
    /// process environment in the plugin). `replay_table` names the route's replay cache.
    /// The error names the variable, never its value.
    pub fn new(
        webhook: &Webhook,
        replay_table: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Verifier, String> {
        let alg = webhook.provider.algorithm();
        let mut keys = Vec::with_capacity(webhook.secrets_env.len());
        for name in &webhook.secrets_env {
            let secret = match env(name) {
                Some(s) if !s.is_empty() => s,
                _ => {
                    return Err(format!(
                        "the environment variable {name} is not set or empty \
                         (Envoy passes it with vm_config.environment_variables)"
                    ));
                }
            };
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "the secret in {name} is shorter than {MIN_SECRET_LEN} bytes"
                ));
            }
            let key = KeyedMac::new(alg, secret.as_bytes())
                .ok_or_else(|| format!("the secret in {name} cannot key HMAC"))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no secret: secrets_env names at least one variable".into());
        }
        Ok(Verifier {
            provider: webhook.provider.clone(),
            keys,
            tolerance_secs: webhook.tolerance_secs,
            replay_window_secs: webhook.replay_window_secs,
            replay: webhook
                .replay_slots
                .map(|slots| (replay_table.to_string(), slots)),
        })
    }

    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The route's replay cache: table name and slots.
    pub fn replay_table(&self) -> Option<(&str, u32)> {
        self.replay.as_ref().map(|(n, s)| (n.as_str(), *s))
    }

    /// Judges the headers: the signature header's format, and the timestamp's window at
    /// `now_secs` (a future timestamp is as suspect as an old one), before a byte of the
    /// body is read. On success the MACs are started over the bytes signed before the body,
    /// which [`Pending::update`] then feeds piece by piece: the whole body is never held.
    pub fn begin(
        &self,
        signature: Presented<'_>,
        timestamp_header: Presented<'_>,
        now_secs: u64,
    ) -> Result<Pending, SignatureError> {
        let value = one(signature)?;
        let separate_timestamp = || -> Result<(&[u8], u64), SignatureError> {
            let text = one(timestamp_header)?;
            let ts = parse_timestamp(text).ok_or(SignatureError::Malformed)?;
            Ok((text, ts))
        };
        let parsed = match &self.provider {
            Provider::Stripe => parse_stripe(value)?,
            Provider::Slack => Parsed {
                candidates: parse_prefixed_hex(value, b"v0=")?,
                timestamp: Some(separate_timestamp()?),
            },
            Provider::Github => Parsed {
                candidates: parse_prefixed_hex(value, b"sha256=")?,
                timestamp: None,
            },
            Provider::Generic(g) => Parsed {
                candidates: parse_generic(g, value)?,
                timestamp: match g.timestamp_header {
                    Some(_) => Some(separate_timestamp()?),
                    None => None,
                },
            },
        };
        let replayable_until = match parsed.timestamp {
            Some((_, ts)) => {
                if ts.abs_diff(now_secs) > self.tolerance_secs {
                    return Err(SignatureError::Expired);
                }
                // The first second at which it no longer verifies: at `ts + tolerance` it
                // still does (the window is inclusive), so forgetting it then would let one
                // copy through.
                ts.saturating_add(self.tolerance_secs).saturating_add(1)
            }
            // Nothing in the message ages: remember it for the replay window instead.
            None => now_secs.saturating_add(self.replay_window_secs),
        };
        let ts_text = parsed.timestamp.map(|(t, _)| t).unwrap_or_default();
        let mut macs = self.keys.clone();
        let mut feed_all = |bytes: &[u8]| macs.iter_mut().for_each(|m| m.update(bytes));
        let mut after = Vec::new();
        match &self.provider {
            Provider::Stripe => {
                feed_all(ts_text);
                feed_all(b".");
            }
            Provider::Slack => {
                feed_all(b"v0:");
                feed_all(ts_text);
                feed_all(b":");
            }
            Provider::Github => {}
            Provider::Generic(g) => {
                for piece in &g.payload.before {
                    match piece {
                        Piece::Text(t) => feed_all(t.as_bytes()),
                        Piece::Timestamp => feed_all(ts_text),
                    }
                }
                for piece in &g.payload.after {
                    match piece {
                        Piece::Text(t) => after.extend_from_slice(t.as_bytes()),
                        Piece::Timestamp => after.extend_from_slice(ts_text),
                    }
                }
            }
        }
        Ok(Pending {
            macs,
            candidates: parsed.candidates,
            after,
            replayable_until,
        })
    }
}

impl Pending {
    /// The next bytes of the raw body, in order.
    pub fn update(&mut self, body: &[u8]) {
        for m in &mut self.macs {
            m.update(body);
        }
    }

    /// The body is complete: accepted when one secret's tag equals one presented
    /// signature. Every pair is compared, in constant time.
    pub fn finish(self) -> Result<Accepted, SignatureError> {
        let Pending {
            macs,
            candidates,
            after,
            replayable_until,
        } = self;
        let mut matched: Option<[u8; 32]> = None;
        for mut mac in macs {
            mac.update(&after);
            let (tag, len) = mac.finalize();
            let tag = tag.get(..len).unwrap_or_default();
            let mut hit = subtle::Choice::from(0u8);
            for presented in candidates.iter() {
                hit |= tag.ct_eq(presented);
            }
            if bool::from(hit) && matched.is_none() {
                matched = Some(Sha256::digest(tag).into());
            }
        }
        match matched {
            Some(fingerprint) => Ok(Accepted {
                fingerprint,
                replayable_until,
            }),
            None => Err(SignatureError::Mismatch),
        }
    }
}

/// Verifies a whole body at once (tests, benches and tools; the plugin streams).
pub fn verify(
    verifier: &Verifier,
    signature: Presented<'_>,
    timestamp_header: Presented<'_>,
    body: &[u8],
    now_secs: u64,
) -> Result<Accepted, SignatureError> {
    let mut pending = verifier.begin(signature, timestamp_header, now_secs)?;
    pending.update(body);
    pending.finish()
}

/// Signs `body` as the provider would (tests, examples and the harness suites): the header
/// value to send, with `timestamp` where the scheme has one.
pub fn sign(provider: &Provider, secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mut payload = Vec::with_capacity(body.len() + 32);
    match provider {
        Provider::Stripe => {
            payload.extend_from_slice(ts.as_bytes());
            payload.push(b'.');
            payload.extend_from_slice(body);
        }
        Provider::Slack => {
            payload.extend_from_slice(format!("v0:{ts}:").as_bytes());
            payload.extend_from_slice(body);
        }
        Provider::Github => payload.extend_from_slice(body),
        Provider::Generic(g) => {
            let piece = |p: &Piece, out: &mut Vec<u8>| match p {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::Timestamp => out.extend_from_slice(ts.as_bytes()),
            };
            for p in &g.payload.before {
                piece(p, &mut payload);
            }
            payload.extend_from_slice(body);
            for p in &g.payload.after {
                piece(p, &mut payload);
            }
        }
    }
    let Some(mac) = KeyedMac::new(provider.algorithm(), secret) else {
        return String::new();
    };
    let mut mac = mac;
    mac.update(&payload);
    let (tag, len) = mac.finalize();
    let tag = tag.get(..len).unwrap_or_default();
    let hex = crate::authn::api_key::hex(tag);
    match provider {
        Provider::Stripe => format!("t={ts},v1={hex}"),
        Provider::Slack => format!("v0={hex}"),
        Provider::Github => format!("sha256={hex}"),
        Provider::Generic(g) => {
            let text = match g.encoding {
                Encoding::Hex => hex,
                Encoding::Base64 => encode_standard(tag),
            };
            format!("{}{text}", g.prefix.as_deref().unwrap_or(""))
        }
    }
}

/// The precise reason, as logs and metrics name it.
impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes standard base64 (RFC 4648 §4, `+` and `/`), padded or not, as webhook
/// providers send signatures; as strictly as base64url. `None` for anything else.
fn decode_standard(input: &[u8]) -> Option<Vec<u8>> {
    // Padded text must be padded canonically; text without `=` must be unpadded.
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let engine = if input.ends_with(b"=") {
        &STANDARD
    } else {
        &STANDARD_NO_PAD
    };
    engine.decode(input).ok()
}

/// Encodes standard base64 with padding, as webhook providers send it.
fn encode_standard(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const SECRET: &str = "whsec_test_0123456789abcdef0123";
    const OLD_SECRET: &str = "whsec_old_fedcba9876543210fedc";

    fn webhook(provider: Provider, names: &[&str]) -> Webhook {
        Webhook {
            provider,
            secrets_env: names.iter().map(|s| s.to_string()).collect(),
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
            replay_window_secs: DEFAULT_REPLAY_WINDOW_SECS,
            replay_slots: None,
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some(SECRET.into()),
            "OLD" => Some(OLD_SECRET.into()),
            "GITHUB" => Some("It's a Secret to Everybody".into()),
            "SLACK" => Some("8f742231b10e8888abcd99yyyzzz85a5".into()),
            "SHORT" => Some("short".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn verifier(provider: Provider, names: &[&str]) -> Verifier {
        Verifier::new(&webhook(provider, names), "t", env).unwrap()
    }

    fn one(v: &str) -> Presented<'_> {
        Presented::One(v.as_bytes())
    }

    fn generic() -> Generic {
        Generic {
            header: "x-acme-signature".into(),
            algorithm: Algorithm::Sha512,
            encoding: Encoding::Base64,
            prefix: Some("sha512=".into()),
            timestamp_header: Some("x-acme-timestamp".into()),
            payload: Template::parse("{timestamp}.{body}.end").unwrap(),
        }
    }

    #[test]
    fn decodes_standard_base64_with_or_without_padding() {
        for (text, bytes) in [
            ("Zg==", "f"),
            ("Zg", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYmE=", "fooba"),
        ] {
            assert_eq!(decode_standard(text.as_bytes()).unwrap(), bytes.as_bytes());
        }
        assert_eq!(decode_standard(b"+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in [
            &b"-_-_"[..],
            b"Zg=",
            b"Zg===",
            b"Z===",
            b"=",
            b"Zm9v=",
            b"Zh==",
            b" Zg==",
        ] {
            assert_eq!(decode_standard(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_standard_base64_with_padding() {
        for (bytes, text) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode_standard(bytes.as_bytes()), text);
        }
        assert_eq!(encode_standard(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn githubs_documented_example_verifies() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let v = verifier(Provider::Github, &["GITHUB"]);
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify(&v, one(sig), Presented::None, b"Hello, World!", NOW).is_ok());
        assert_eq!(
            sign(
                &Provider::Github,
                b"It's a Secret to Everybody",
                0,
                b"Hello, World!"
            ),
            sig
        );
        assert_eq!(
            verify(&v, one(sig), Presented::None, b"Hello, World?", NOW),
            Err(SignatureError::Mismatch)
        );
        // Upper-case hex is the same signature.
        assert!(
            verify(
                &v,
                one(&sig.to_uppercase().replace("SHA256", "sha256")),
                Presented::None,
                b"Hello, World!",
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn slacks_documented_basestring_verifies() {
        // https://api.slack.com/authentication/verifying-requests-from-slack
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let v = verifier(Provider::Slack, &["SLACK"]);
        let ts = 1_531_420_618;
        assert!(verify(&v, one(sig), one("1531420618"), body.as_bytes(), ts + 10).is_ok());
        assert_eq!(
            verify(&v, one(sig), one("1531420618"), body.as_bytes(), ts + 301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&v, one(sig), Presented::None, body.as_bytes(), ts),
            Err(SignatureError::Missing)
        );
        // The timestamp is part of what is signed: another one does not verify.
        assert_eq!(
            verify(&v, one(sig), one("1531420619"), body.as_bytes(), ts),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stripe_accepts_any_of_several_v1_values_and_ignores_v0() {
        let v = verifier(Provider::Stripe, &["SECRET"]);
        let body = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;
        let good = sign(&Provider::Stripe, SECRET.as_bytes(), NOW, body);
        let v1 = good.split_once(",v1=").unwrap().1;
        let other = "5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd";
        // Stripe's documented shape, with the rolled secret's v1 first.
        let header = format!(
            "t={NOW},v1={other},v1={v1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
        );
        assert!(verify(&v, one(&header), Presented::None, body, NOW).is_ok());
        let only_other = format!("t={NOW},v1={other}");
        assert_eq!(
            verify(&v, one(&only_other), Presented::None, body, NOW),
            Err(SignatureError::Mismatch)
        );
        let only_v0 = format!("t={NOW},v0={v1}");
        assert_eq!(
            verify(&v, one(&only_v0), Presented::None, body, NOW),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn stripe_checks_the_window_both_ways_before_the_body() {
        let v = verifier(Provider::Stripe, &["SECRET"]);
        let body = b"{}";
        for (ts, ok) in [
            (NOW - 300, true),
            (NOW - 301, false),
            (NOW + 300, true),
            (NOW + 301, false),
        ] {
            let header = sign(&Provider::Stripe, SECRET.as_bytes(), ts, body);
            let result = v.begin(one(&header), Presented::None, NOW);
            assert_eq!(result.is_ok(), ok, "{ts}");
            if !ok {
                assert_eq!(result.unwrap_err(), SignatureError::Expired);
            }
        }
    }

    #[test]
    fn a_rotated_secret_still_verifies_and_an_unknown_one_does_not() {
        let v = verifier(Provider::Stripe, &["SECRET", "OLD"]);
        for secret in [SECRET, OLD_SECRET] {
            let header = sign(&Provider::Stripe, secret.as_bytes(), NOW, b"x");
            assert!(verify(&v, one(&header), Presented::None, b"x", NOW).is_ok());
        }
        let header = sign(
            &Provider::Stripe,
            b"whsec_someone_elses_secret_00",
            NOW,
            b"x",
        );
        assert_eq!(
            verify(&v, one(&header), Presented::None, b"x", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_and_duplicated_headers_are_refused() {
        let v = verifier(Provider::Stripe, &["SECRET"]);
        for bad in [
            "",
            "t=1",
            "v1=abcd",
            "garbage",
            "t=,v1=00",
            "t=1,t=2,v1=00",
            "t=-5,v1=00",
        ] {
            assert_eq!(
                v.begin(one(bad), Presented::None, NOW).unwrap_err(),
                SignatureError::Malformed,
                "{bad}"
            );
        }
        let many = format!("t={NOW}{}", ",v1=00".repeat(MAX_SIGNATURES + 1));
        assert_eq!(
            v.begin(one(&many), Presented::None, NOW).unwrap_err(),
            SignatureError::Malformed
        );
        assert_eq!(
            v.begin(Presented::Several, Presented::None, NOW)
                .unwrap_err(),
            SignatureError::Malformed
        );
        assert_eq!(
            v.begin(Presented::None, Presented::None, NOW).unwrap_err(),
            SignatureError::Missing
        );
        let g = verifier(Provider::Github, &["GITHUB"]);
        for bad in [
            "sha1=757107ea",
            "sha256=zz",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                g.begin(one(bad), Presented::None, NOW).unwrap_err(),
                SignatureError::Malformed
            );
        }
    }

    #[test]
    fn generic_schemes_sign_the_template_with_sha512_and_base64() {
        let p = Provider::Generic(generic());
        let v = verifier(p.clone(), &["SECRET"]);
        let body = b"hello";
        let header = sign(&p, SECRET.as_bytes(), NOW, body);
        assert!(
            header.starts_with("sha512=") && header.ends_with("=="),
            "{header}"
        );
        let ts = NOW.to_string();
        assert!(verify(&v, one(&header), one(&ts), body, NOW).is_ok());
        // The trailing text is signed too: the same MAC over `ts.hello` alone differs.
        let mut mac = Hmac::<Sha512>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{ts}.hello").as_bytes());
        let unsuffixed = format!("sha512={}", encode_standard(&mac.finalize().into_bytes()));
        assert_eq!(
            verify(&v, one(&unsuffixed), one(&ts), body, NOW),
            Err(SignatureError::Mismatch)
        );
        // Unpadded base64 is the same signature; a missing prefix is not.
        assert!(verify(&v, one(header.trim_end_matches('=')), one(&ts), body, NOW).is_ok());
        assert_eq!(
            verify(
                &v,
                one(header.trim_start_matches("sha512=")),
                one(&ts),
                body,
                NOW
            ),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&v, one(&header), Presented::None, body, NOW),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(&v, one(&header), one("soon"), body, NOW),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn generic_hex_without_timestamp_signs_the_body_alone() {
        let p = Provider::Generic(Generic {
            header: "x-sig".into(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: None,
            timestamp_header: None,
            payload: Template::parse("{body}").unwrap(),
        });
        let v = verifier(p.clone(), &["SECRET"]);
        let header = sign(&p, SECRET.as_bytes(), 0, b"abc");
        assert_eq!(header.len(), 64);
        assert!(verify(&v, one(&header), Presented::None, b"abc", NOW).is_ok());
    }

    #[test]
    fn the_body_may_arrive_in_any_number_of_pieces() {
        let v = verifier(Provider::Slack, &["SLACK"]);
        let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let header = sign(
            &Provider::Slack,
            b"8f742231b10e8888abcd99yyyzzz85a5",
            NOW,
            &body,
        );
        let ts = NOW.to_string();
        for size in [1, 7, 64, 2999, 5000] {
            let mut p = v.begin(one(&header), one(&ts), NOW).unwrap();
            for chunk in body.chunks(size) {
                p.update(chunk);
            }
            assert!(p.finish().is_ok(), "{size}");
        }
    }

    #[test]
    fn the_fingerprint_is_the_same_for_the_same_message_whatever_the_header_spelling() {
        let v = verifier(Provider::Github, &["GITHUB"]);
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let a = verify(&v, one(sig), Presented::None, b"Hello, World!", NOW).unwrap();
        let b = verify(
            &v,
            one(&sig.to_ascii_uppercase().replace("SHA256=", "sha256=")),
            Presented::None,
            b"Hello, World!",
            NOW + 5,
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.replayable_until, NOW + DEFAULT_REPLAY_WINDOW_SECS);
    }

    #[test]
    fn a_message_without_a_signed_timestamp_is_replayable_for_the_replay_window_not_the_tolerance()
    {
        let shop = Provider::Generic(Generic {
            header: "x-sig".into(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: None,
            timestamp_header: None,
            payload: Template::parse("{body}").unwrap(),
        });
        for provider in [Provider::Github, shop] {
            assert!(!provider.signs_timestamp(), "{}", provider.name());
            let mut w = webhook(provider.clone(), &["SECRET"]);
            w.tolerance_secs = 60;
            w.replay_window_secs = 7 * 86_400;
            let v = Verifier::new(&w, "t", env).unwrap();
            let header = sign(&provider, SECRET.as_bytes(), 0, b"{}");
            let a = verify(&v, one(&header), Presented::None, b"{}", NOW).unwrap();
            assert_eq!(a.replayable_until, NOW + 7 * 86_400, "{}", provider.name());
        }
    }

    #[test]
    fn a_message_with_a_signed_timestamp_is_replayable_until_its_timestamp_plus_the_tolerance() {
        for provider in [
            Provider::Stripe,
            Provider::Slack,
            Provider::Generic(generic()),
        ] {
            assert!(provider.signs_timestamp(), "{}", provider.name());
            let mut w = webhook(provider.clone(), &["SECRET"]);
            // The replay window is not theirs: the timestamp check already bounds a copy.
            w.replay_window_secs = 7 * 86_400;
            let v = Verifier::new(&w, "t", env).unwrap();
            let header = sign(&provider, SECRET.as_bytes(), NOW - 100, b"{}");
            let ts = (NOW - 100).to_string();
            let a = verify(&v, one(&header), one(&ts), b"{}", NOW).unwrap();
            // The first second at which a copy fails the window check.
            assert_eq!(a.replayable_until, NOW - 100 + 301, "{}", provider.name());
        }
    }

    #[test]
    fn missing_short_or_empty_secrets_are_named_never_shown() {
        let e = Verifier::new(&webhook(Provider::Github, &["NOPE"]), "t", env).unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        let e = Verifier::new(&webhook(Provider::Github, &["EMPTY"]), "t", env).unwrap_err();
        assert!(e.contains("EMPTY is not set or empty"), "{e}");
        let e = Verifier::new(&webhook(Provider::Github, &["SHORT"]), "t", env).unwrap_err();
        assert!(
            e.contains("SHORT is shorter") && !e.contains("short\""),
            "{e}"
        );
        assert!(!format!("{:?}", verifier(Provider::Github, &["GITHUB"])).contains("Secret"));
    }

    #[test]
    fn templates_need_the_body_once_and_know_their_placeholders() {
        let t = Template::parse("v1:{timestamp}:{body}").unwrap();
        assert!(t.signs_timestamp());
        assert_eq!(
            t.before,
            [
                Piece::Text("v1:".into()),
                Piece::Timestamp,
                Piece::Text(":".into())
            ]
        );
        assert!(t.after.is_empty());
        for (bad, why) in [
            ("{timestamp}", "must contain {body}"),
            ("{body}{body}", "more than once"),
            ("{ts}.{body}", "unknown placeholder '{ts}'"),
            ("{body", "unbalanced '{'"),
            ("}{body}", "unbalanced '}'"),
            ("{body}}", "unbalanced '}'"),
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_never_carry_request_or_secret_bytes() {
        // Fieldless by construction; the reason strings are fixed.
        for e in [
            SignatureError::Missing,
            SignatureError::Malformed,
            SignatureError::Mismatch,
            SignatureError::Expired,
            SignatureError::Replayed,
            SignatureError::Unavailable,
        ] {
            assert!(e.as_str().starts_with("signature_") || e.as_str().starts_with("replay_"));
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn all_providers() -> Vec<Provider> {
        vec![
            Provider::Stripe,
            Provider::Slack,
            Provider::Github,
            Provider::Generic(Generic {
                header: "x-sig".into(),
                algorithm: Algorithm::Sha512,
                encoding: Encoding::Base64,
                prefix: Some("v1=".into()),
                timestamp_header: Some("x-ts".into()),
                payload: Template::parse("{timestamp}:{body}").unwrap(),
            }),
            Provider::Generic(Generic {
                header: "x-sig".into(),
                algorithm: Algorithm::Sha256,
                encoding: Encoding::Hex,
                prefix: None,
                timestamp_header: None,
                payload: Template::parse("{body}").unwrap(),
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_header_bytes_are_judged_without_panicking(
            sig in proptest::collection::vec(any::<u8>(), 0..300),
            ts in proptest::collection::vec(any::<u8>(), 0..24),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<u64>(),
        ) {
            for provider in all_providers() {
                let w = Webhook {
                    provider,
                    secrets_env: vec!["S".into()],
                    tolerance_secs: 300,
                    replay_window_secs: DEFAULT_REPLAY_WINDOW_SECS,
                    replay_slots: None,
                };
                let v = Verifier::new(&w, "t", |_| Some("0123456789abcdef0123".into())).unwrap();
                let _ = verify(&v, Presented::One(&sig), Presented::One(&ts), &body, now);
            }
        }

        #[test]
        fn a_signed_body_verifies_and_any_change_to_it_does_not(
            body in proptest::collection::vec(any::<u8>(), 1..200),
            flip in any::<prop::sample::Index>(),
        ) {
            for provider in all_providers() {
                let secret = b"0123456789abcdef0123";
                let w = Webhook {
                    provider: provider.clone(),
                    secrets_env: vec!["S".into()],
                    tolerance_secs: 300,
                    replay_window_secs: DEFAULT_REPLAY_WINDOW_SECS,
                    replay_slots: None,
                };
                let v = Verifier::new(&w, "t", |_| Some(String::from_utf8_lossy(secret).into_owned())).unwrap();
                let header = sign(&provider, secret, 1000, &body);
                let ts = b"1000";
                prop_assert!(verify(&v, Presented::One(header.as_bytes()), Presented::One(ts), &body, 1000).is_ok());
                let mut tampered = body.clone();
                let i = flip.index(tampered.len());
                tampered[i] ^= 0x01;
                prop_assert_eq!(
                    verify(&v, Presented::One(header.as_bytes()), Presented::One(ts), &tampered, 1000),
                    Err(SignatureError::Mismatch)
                );
            }
        }
    }
}
