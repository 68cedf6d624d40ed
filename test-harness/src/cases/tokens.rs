//! JWTs a case file mints when a request is sent, so they are fresh on the clock of the
//! backend that runs the case: the harness's virtual clock (after any `advance`) or the
//! machine's for a real Envoy. A pasted token cannot be both short-lived and valid on
//! both clocks for long.
//!
//! A recipe (`tokens:`, one per name) gives the key, the header and the claims; its time
//! claims are relative to the moment of the request (`iat: -60s`, `exp: +1h`) or fixed.
//! Request paths and header values name recipes with `${token:NAME}` (a [`Text`]); `$${`
//! is a literal `${`, and any other `${` is an error, so a reference is never a typo that
//! goes out as text.
//!
//! Minting is [`gatehouse_core::authn::jwt::test_tokens::sign`] over `BASE64URL(header) '.'
//! BASE64URL(claims)` (RFC 7515 §5.1): the signer the plugin's own tests pin against the
//! RFC vectors. Every signature it makes is deterministic, so the same recipe at the same
//! second gives the same token.

use super::signing_key::PrivateKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::authn::jwt::test_tokens;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;

/// The time claims a recipe sets relative to the request (or fixed), in this order.
pub const TIME_CLAIMS: [&str; 3] = ["iat", "nbf", "exp"];

/// How a reference starts inside a path or header value.
const OPEN: &str = "${";
const PREFIX: &str = "token:";

/// One `tokens:` entry.
#[derive(Clone, Debug)]
pub struct TokenRecipe {
    pub name: String,
    pub alg: Alg,
    pub key: PrivateKey,
    pub kid: Option<String>,
    /// Header members over `alg`, `typ: JWT` and `kid`; a `null` removes one.
    pub header: Map<String, Value>,
    /// Every claim but the time claims, as written.
    pub claims: Map<String, Value>,
    /// `iat`, `nbf`, `exp`, those the recipe sets.
    pub times: Vec<(&'static str, When)>,
}

/// A time claim's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Seconds from the request's clock: `-60s`, `+1h`, `now`.
    Relative(i64),
    /// Unix seconds, written as a number or an RFC 3339 time.
    At(i64),
}

impl When {
    /// `now`, `+1h`, `-60s` (units s, m, h, d; whole seconds) or an RFC 3339 time.
    pub fn parse(text: &str) -> Option<When> {
        let text = text.trim();
        if text == "now" {
            return Some(When::Relative(0));
        }
        let sign = match text.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => {
                let secs = gatehouse_core::time::parse_rfc3339(text)?;
                return i64::try_from(secs).ok().map(When::At);
            }
        };
        let d = super::parse::parse_duration(text.get(1..)?)?;
        if d.subsec_nanos() != 0 {
            return None;
        }
        i64::try_from(d.as_secs())
            .ok()
            .map(|s| When::Relative(sign * s))
    }

    /// The claim's value for a request at `now` (Unix seconds).
    pub fn at(self, now: u64) -> i64 {
        match self {
            When::Relative(by) => i64::try_from(now).unwrap_or(i64::MAX).saturating_add(by),
            When::At(secs) => secs,
        }
    }
}

impl TokenRecipe {
    /// The token for a request at `now` (Unix seconds, the backend's clock).
    pub fn mint(&self, now: u64) -> String {
        let mut header = Map::new();
        header.insert("alg".into(), self.alg.as_str().into());
        header.insert("typ".into(), "JWT".into());
        if let Some(kid) = &self.kid {
            header.insert("kid".into(), kid.clone().into());
        }
        for (name, value) in &self.header {
            match value {
                Value::Null => header.remove(name),
                v => header.insert(name.clone(), v.clone()),
            };
        }
        let mut claims = self.claims.clone();
        for (name, when) in &self.times {
            claims.insert((*name).to_string(), when.at(now).into());
        }
        let input = test_tokens::signing_input(
            &Value::Object(header).to_string(),
            &Value::Object(claims).to_string(),
        );
        let sig = test_tokens::sign(self.alg, self.key.signer(), input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Whether `name` can be a recipe's name: it must end at the `}` of a reference.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A request path or header value: text with tokens minted into it when it is sent.
#[derive(Clone, Debug, Default)]
pub struct Text(Vec<Part>);

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Token(Arc<TokenRecipe>),
}

/// What is wrong with the first bad reference in a [`Text`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextError {
    /// `${token:NAME}` names no recipe.
    UnknownToken(String),
    /// A `${` that is not a well-formed reference.
    Syntax(String),
}

impl Text {
    /// Reads `source`, resolving each `${token:NAME}` with `lookup`.
    pub fn parse(
        source: &str,
        lookup: impl Fn(&str) -> Option<Arc<TokenRecipe>>,
    ) -> Result<Text, TextError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(at) = rest.find('$') {
            let (before, from) = rest.split_at(at);
            literal.push_str(before);
            if let Some(after) = from.strip_prefix("$${") {
                literal.push_str(OPEN);
                rest = after;
            } else if let Some(after) = from.strip_prefix(OPEN) {
                let Some(end) = after.find('}') else {
                    return Err(TextError::Syntax(
                        "'${' starts a reference that never ends: write ${token:NAME}, or $${ for a literal '${'".into()
                    ));
                };
                let (inner, after) = after.split_at(end);
                let Some(name) = inner.strip_prefix(PREFIX) else {
                    return Err(TextError::Syntax(format!(
                        "'${{{inner}}}' is not a reference: write ${{token:NAME}}, or $${{ for a literal '${{'"
                    )));
                };
                let recipe = lookup(name).ok_or_else(|| TextError::UnknownToken(name.into()))?;
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Token(recipe));
                rest = after.get(1..).unwrap_or_default();
            } else {
                literal.push('$');
                rest = from.get(1..).unwrap_or_default();
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() || parts.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Text(parts))
    }

    /// The text as it is sent at `now` (Unix seconds, the backend's clock).
    pub fn at(&self, now: u64) -> String {
        self.0
            .iter()
            .map(|part| match part {
                Part::Literal(s) => s.clone(),
                Part::Token(recipe) => recipe.mint(now),
            })
            .collect()
    }
}

/// Literal text, with no reference in it.
impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(vec![Part::Literal(s.to_string())])
    }
}

/// As a case file would write it (for messages).
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.0 {
            match part {
                Part::Literal(s) => f.write_str(&s.replace(OPEN, "$${"))?,
                Part::Token(recipe) => write!(f, "${{token:{}}}", recipe.name)?,
            }
        }
        Ok(())
    }
}

/// Texts are equal when written the same (a reference by its recipe's name).
impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.to_string() == other.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use gatehouse_core::authn::jwt::{JwtError, Key, KeySet, Rules, verify};

    /// 2026-01-01T00:00:00Z, the case files' `start`.
    const NOW: u64 = 1_767_225_600;
    const SECRET: &[u8] = b"gatehouse-test-secret-0123456789abcdef-xyz";

    fn hs256(times: &[(&'static str, When)]) -> TokenRecipe {
        TokenRecipe {
            name: "user".into(),
            alg: Alg::HS256,
            key: PrivateKey::hmac(Alg::HS256, SECRET.to_vec(), "S").unwrap(),
            kid: Some("demo-hs256".into()),
            header: Map::new(),
            claims: serde_json::from_str(r#"{"sub":"user_jwt","plan":"team"}"#).unwrap(),
            times: times.to_vec(),
        }
    }

    fn keys() -> KeySet {
        KeySet::new(vec![
            Key::hmac(Alg::HS256, SECRET, Some("demo-hs256".into())).unwrap(),
        ])
    }

    /// The policy default: tokens live at most a day.
    fn day_rules() -> Rules {
        Rules {
            max_lifetime_secs: Some(24 * 3600),
            ..Rules::default()
        }
    }

    #[test]
    fn a_minted_token_verifies_at_its_clock_and_is_refused_25_hours_later() {
        let recipe = hs256(&[("iat", When::Relative(-60)), ("exp", When::Relative(3600))]);
        let token = recipe.mint(NOW);
        let ok = verify(token.as_bytes(), &keys(), NOW, &day_rules()).unwrap();
        assert_eq!(ok.kid.as_deref(), Some("demo-hs256"));
        assert_eq!(ok.sub.as_deref(), Some("user_jwt"));
        assert_eq!(ok.claim_str("plan"), Some("team"));
        assert_eq!((ok.iat, ok.exp), (Some(1_767_225_540), Some(1_767_229_200)));
        let later = NOW + 25 * 3600;
        assert_eq!(
            verify(token.as_bytes(), &keys(), later, &day_rules()).err(),
            Some(JwtError::Expired)
        );
        // Minted at that later moment instead, it is fresh again.
        assert!(verify(recipe.mint(later).as_bytes(), &keys(), later, &day_rules()).is_ok());
    }

    #[test]
    fn lifetimes_past_the_bound_or_without_iat_are_refused_by_the_plugin() {
        let long = hs256(&[
            ("iat", When::Relative(-60)),
            ("exp", When::Relative(25 * 3600)),
        ]);
        assert_eq!(
            verify(long.mint(NOW).as_bytes(), &keys(), NOW, &day_rules()).err(),
            Some(JwtError::LifetimeTooLong)
        );
        let day = hs256(&[
            ("iat", When::Relative(-3600)),
            ("exp", When::Relative(23 * 3600)),
        ]);
        assert!(verify(day.mint(NOW).as_bytes(), &keys(), NOW, &day_rules()).is_ok());
        let no_iat = hs256(&[("exp", When::Relative(3600))]);
        assert_eq!(
            verify(no_iat.mint(NOW).as_bytes(), &keys(), NOW, &day_rules()).err(),
            Some(JwtError::MissingClaim("iat".into()))
        );
    }

    #[test]
    fn fixed_times_do_not_move_and_the_header_can_be_changed() {
        let mut recipe = hs256(&[("iat", When::At(1_000)), ("nbf", When::Relative(0))]);
        recipe.header = serde_json::from_str(r#"{"typ":null,"cty":"x"}"#).unwrap();
        let token = recipe.mint(NOW);
        let (header, rest) = token.split_once('.').unwrap();
        let header = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","cty":"x","kid":"demo-hs256"}"#);
        let claims = URL_SAFE_NO_PAD
            .decode(rest.split_once('.').unwrap().0)
            .unwrap();
        let claims: Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["iat"], 1_000);
        assert_eq!(claims["nbf"], NOW);
        assert_eq!(recipe.mint(NOW), token, "minting is deterministic");
    }

    #[test]
    fn a_built_in_rsa_key_mints_what_its_public_key_verifies() {
        let recipe = TokenRecipe {
            alg: Alg::RS256,
            key: PrivateKey::built_in(Alg::RS256, "rfc7515-a2").unwrap(),
            kid: Some("adv-rs256".into()),
            ..hs256(&[("iat", When::Relative(-60)), ("exp", When::Relative(3600))])
        };
        let keys = KeySet::new(vec![test_tokens::public_key(Alg::RS256, Some("adv-rs256"))]);
        let ok = verify(recipe.mint(NOW).as_bytes(), &keys, NOW, &day_rules()).unwrap();
        assert_eq!(ok.alg, Alg::RS256);
    }

    #[test]
    fn times_are_relative_with_a_sign_or_fixed() {
        assert_eq!(When::parse("-60s"), Some(When::Relative(-60)));
        assert_eq!(When::parse("+1h"), Some(When::Relative(3600)));
        assert_eq!(When::parse("+2d"), Some(When::Relative(172_800)));
        assert_eq!(When::parse("now"), Some(When::Relative(0)));
        assert_eq!(
            When::parse("2026-01-01T00:00:00Z"),
            Some(When::At(NOW as i64))
        );
        assert_eq!(When::parse("1h"), None, "a sign says which way");
        assert_eq!(When::parse("+1500ms"), None, "JWT times are whole seconds");
        assert_eq!(When::parse("+1000ms"), Some(When::Relative(1)));
        assert_eq!(When::Relative(-60).at(NOW), NOW as i64 - 60);
    }

    fn parse(text: &str) -> Result<Text, TextError> {
        let recipe = Arc::new(hs256(&[]));
        Text::parse(text, |name| (name == "user").then(|| recipe.clone()))
    }

    fn syntax(text: &str) -> String {
        match parse(text) {
            Err(TextError::Syntax(why)) => why,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn references_are_minted_and_escapes_stay_literal() {
        let text = parse("Bearer ${token:user}").unwrap();
        assert_eq!(text.to_string(), "Bearer ${token:user}");
        assert_eq!(text.at(NOW), format!("Bearer {}", hs256(&[]).mint(NOW)));
        let literal = parse("cost: $5, template $${name}").unwrap();
        assert_eq!(literal.at(NOW), "cost: $5, template ${name}");
        assert_eq!(literal.to_string(), "cost: $5, template $${name}");
        assert_eq!(parse("").unwrap().at(NOW), "");
        assert_eq!(
            parse("a ${token:nobody}").unwrap_err(),
            TextError::UnknownToken("nobody".into())
        );
        assert!(
            syntax("${HOME}")
                .starts_with("'${HOME}' is not a reference: write ${token:NAME}, or $${")
        );
        assert!(syntax("x ${token:user").contains("never ends"));
    }
}
