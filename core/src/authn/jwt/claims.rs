//! The claims of a token whose signature has been checked: the rules they must meet
//! (RFC 7519 §4.1), and the small owned map the request path reads them from.
//! Lifetime and revocation: `docs/policy.md#token-lifetime-and-revocation`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::JwtError;

/// What a token's claims must satisfy. Built once from the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The longest token accepted, in bytes, checked before anything else.
    /// Defaults to `8192`.
    pub max_size: usize,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds. Defaults to `60`.
    pub leeway_secs: u64,
    /// Whether a token without `exp` is refused. Defaults to `true`.
    pub require_exp: bool,
    /// When not empty, `iss` must equal one of these. Defaults to `[]` (any issuer).
    pub issuers: Vec<String>,
    /// When not empty, `aud` (a string or an array) must contain one of these.
    /// Defaults to `[]` (any audience).
    pub audiences: Vec<String>,
    /// Claims that must be present and not `null`. Defaults to `[]`.
    pub required_claims: Vec<String>,
    /// The longest a token may live, `exp - iat`, in seconds; `None`: unbounded (a
    /// revocation must then last forever). `Rules::default()` holds RFC 7519's rules
    /// alone, so `None`; a policy's `jwt.max_token_lifetime` defaults to
    /// [`DEFAULT_MAX_LIFETIME_SECS`].
    pub max_lifetime_secs: Option<u64>,
}

impl Rules {
    /// How long after its `iat` a token can still be accepted: the lifetime bound plus
    /// the leeway; `None` when the lifetime is unbounded. A per-user revocation written at
    /// `T` must last until `T` plus this, and may end then.
    pub fn longest_acceptance_secs(&self) -> Option<u64> {
        self.max_lifetime_secs
            .map(|m| m.saturating_add(self.leeway_secs))
    }
}

/// The default [`Rules::max_size`].
pub const DEFAULT_MAX_SIZE: usize = 8 * 1024;
/// The default [`Rules::leeway_secs`].
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// The policy's default `jwt.max_token_lifetime`: 24 hours.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 24 * 3600;

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_size: DEFAULT_MAX_SIZE,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            require_exp: true,
            issuers: Vec::new(),
            audiences: Vec::new(),
            required_claims: Vec::new(),
            max_lifetime_secs: None,
        }
    }
}

/// One claim's value, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimValue {
    String(String),
    /// Exactly as JSON had it: integers keep every digit.
    Number(serde_json::Number),
    Bool(bool),
    /// Arrays, objects and `null`, as compact JSON text.
    Json(String),
}

impl ClaimValue {
    fn from_json(value: Value) -> ClaimValue {
        match value {
            Value::String(s) => ClaimValue::String(s),
            Value::Number(n) => ClaimValue::Number(n),
            Value::Bool(b) => ClaimValue::Bool(b),
            other => ClaimValue::Json(other.to_string()),
        }
    }

    /// The string, when the claim is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ClaimValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The claim as text for a header or a log line: strings as they are, everything
    /// else as JSON (`42`, `true`, `["a","b"]`).
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            ClaimValue::String(s) => Cow::Borrowed(s),
            ClaimValue::Number(n) => Cow::Owned(n.to_string()),
            ClaimValue::Bool(true) => Cow::Borrowed("true"),
            ClaimValue::Bool(false) => Cow::Borrowed("false"),
            ClaimValue::Json(text) => Cow::Borrowed(text),
        }
    }
}

/// All claims of a token, sorted by name for lookup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    entries: Vec<(String, ClaimValue)>,
}

impl Claims {
    /// The claim named `name`, if the token has it.
    pub fn get(&self, name: &str) -> Option<&ClaimValue> {
        self.entries
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .and_then(|i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every claim, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ClaimValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// What the claim checks pass on to [`super::Verified`].
pub(crate) struct Checked {
    pub claims: Claims,
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub times: Times,
}

/// The time claims as numbers, exactly as the token had them (fractions included): all
/// the time rules need. A cached token is checked against these again on every use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Times {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

impl Times {
    /// The time rules at `now_unix` (see the module's documentation).
    pub(crate) fn check(&self, now_unix: u64, rules: &Rules) -> Result<(), JwtError> {
        let now = now_unix as f64;
        let leeway = rules.leeway_secs as f64;
        match self.exp {
            None if rules.require_exp => return Err(JwtError::MissingClaim("exp".to_owned())),
            Some(exp) if now >= exp + leeway => return Err(JwtError::Expired),
            _ => {}
        }
        if let Some(max) = rules.max_lifetime_secs {
            let max = max as f64;
            let iat = self
                .iat
                .ok_or_else(|| JwtError::MissingClaim("iat".to_owned()))?;
            match self.exp {
                Some(exp) if exp - iat > max => return Err(JwtError::LifetimeTooLong),
                // No `exp`: the bound is the token's expiry.
                None if now >= iat + max + leeway => return Err(JwtError::Expired),
                _ => {}
            }
        }
        if self.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(JwtError::IssuedInFuture);
        }
        Ok(())
    }
}

fn number(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(JwtError::InvalidClaim(name)),
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

fn string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwtError::InvalidClaim(name)),
    }
}

/// Checks the claims of an authenticated payload against `rules` at `now_unix`.
///
/// With leeway `L`, compared as numbers (a NumericDate may have a fraction): `exp` valid
/// while `now < exp + L` (required unless [`Rules::require_exp`] is off); `nbf` once
/// `now + L >= nbf`; `iat > now + L` refused (a broken or hostile issuer clock). With a
/// lifetime bound `M`, `iat` is required, `exp - iat > M` refused, and a token without
/// `exp` expires at `iat + M`. `exp`/`nbf`/`iat` must be numbers, `iss`/`sub`/`jti`
/// strings, `aud` a string or array of strings: anything else is refused, not ignored,
/// so `"exp": "never"` dodges nothing.
pub(crate) fn check(
    claims: Map<String, Value>,
    now_unix: u64,
    rules: &Rules,
) -> Result<Checked, JwtError> {
    let exp = number(&claims, "exp")?;
    let nbf = number(&claims, "nbf")?;
    let iat = number(&claims, "iat")?;
    let iss = string(&claims, "iss")?;
    string(&claims, "sub")?;
    string(&claims, "jti")?;
    let aud: Vec<&str> = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(JwtError::InvalidClaim("aud")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtError::InvalidClaim("aud")),
    };

    let times = Times { exp, nbf, iat };
    times.check(now_unix, rules)?;
    if !rules.issuers.is_empty() {
        let iss = iss.ok_or_else(|| JwtError::MissingClaim("iss".to_owned()))?;
        if !rules.issuers.iter().any(|want| want == iss) {
            return Err(JwtError::BadIssuer);
        }
    }
    if !rules.audiences.is_empty() {
        if !claims.contains_key("aud") {
            return Err(JwtError::MissingClaim("aud".to_owned()));
        }
        if !aud
            .iter()
            .any(|a| rules.audiences.iter().any(|want| want == a))
        {
            return Err(JwtError::BadAudience);
        }
    }
    for name in &rules.required_claims {
        if matches!(claims.get(name), None | Some(Value::Null)) {
            return Err(JwtError::MissingClaim(name.clone()));
        }
    }

    // `as` saturates: a NumericDate beyond i64 is clamped, never wraps.
    let exp = exp.map(|t| t.floor() as i64);
    let iat = iat.map(|t| t.floor() as i64);
    let mut sub = None;
    let mut jti = None;
    let mut entries: Vec<(String, ClaimValue)> = Vec::with_capacity(claims.len());
    for (name, value) in claims {
        let value = ClaimValue::from_json(value);
        match (name.as_str(), &value) {
            ("sub", ClaimValue::String(s)) => sub = Some(s.clone()),
            ("jti", ClaimValue::String(s)) => jti = Some(s.clone()),
            _ => {}
        }
        entries.push((name, value));
    }
    // serde_json's map is sorted unless some crate turns on `preserve_order`; sort anyway
    // so lookups never depend on a feature elsewhere in the build.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Checked {
        claims: Claims { entries },
        sub,
        jti,
        iat,
        exp,
        times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn run(json: &str, now: u64, rules: &Rules) -> Result<Checked, JwtError> {
        check(obj(json), now, rules)
    }

    const EXP: u64 = 1_000_000;

    #[test]
    fn exp_is_honoured_up_to_the_leeway_and_not_one_second_more() {
        let r = Rules::default();
        let tok = r#"{"exp":1000000}"#;
        assert!(run(tok, EXP - 1, &r).is_ok());
        assert!(run(tok, EXP + 59, &r).is_ok());
        assert_eq!(run(tok, EXP + 60, &r).err(), Some(JwtError::Expired));
        let strict = Rules {
            leeway_secs: 0,
            ..Rules::default()
        };
        assert_eq!(run(tok, EXP, &strict).err(), Some(JwtError::Expired));
        assert!(run(tok, EXP - 1, &strict).is_ok());
        // Fractions count.
        assert!(run(r#"{"exp":1000000.5}"#, EXP, &strict).is_ok());
    }

    #[test]
    fn exp_is_required_unless_the_rules_say_otherwise() {
        assert_eq!(
            run("{}", EXP, &Rules::default()).err(),
            Some(JwtError::MissingClaim("exp".into()))
        );
        let lax = Rules {
            require_exp: false,
            ..Rules::default()
        };
        assert!(run("{}", EXP, &lax).is_ok());
    }

    #[test]
    fn nbf_and_iat_allow_the_leeway_into_the_future() {
        let r = Rules::default();
        let nbf = r#"{"exp":2000000,"nbf":1000000}"#;
        assert!(run(nbf, EXP - 60, &r).is_ok());
        assert_eq!(run(nbf, EXP - 61, &r).err(), Some(JwtError::NotYetValid));
        let iat = r#"{"exp":2000000,"iat":1000000}"#;
        assert!(run(iat, EXP - 60, &r).is_ok());
        assert_eq!(run(iat, EXP - 61, &r).err(), Some(JwtError::IssuedInFuture));
    }

    #[test]
    fn a_lifetime_bound_needs_iat_and_caps_exp_minus_iat() {
        let r = Rules {
            max_lifetime_secs: Some(3600),
            ..Rules::default()
        };
        // Exactly the bound passes; a second more is refused.
        assert!(run(r#"{"iat":1000000,"exp":1003600}"#, EXP, &r).is_ok());
        assert_eq!(
            run(r#"{"iat":1000000,"exp":1003601}"#, EXP, &r).err(),
            Some(JwtError::LifetimeTooLong)
        );
        assert_eq!(
            run(r#"{"iat":1000000,"exp":1003600.5}"#, EXP, &r).err(),
            Some(JwtError::LifetimeTooLong)
        );
        // Without iat nothing bounds the token.
        assert_eq!(
            run(r#"{"exp":1003600}"#, EXP, &r).err(),
            Some(JwtError::MissingClaim("iat".into()))
        );
        // An iat far in the past does not stretch a short token: exp still decides.
        assert_eq!(
            run(r#"{"iat":1000000,"exp":1000010}"#, EXP + 100, &r).err(),
            Some(JwtError::Expired)
        );
        // Unbounded: RFC 7519's rules alone.
        assert!(run(r#"{"exp":9000000}"#, EXP, &Rules::default()).is_ok());
    }

    #[test]
    fn without_exp_the_bound_is_the_expiry() {
        let r = Rules {
            require_exp: false,
            max_lifetime_secs: Some(3600),
            ..Rules::default()
        };
        let tok = r#"{"iat":1000000}"#;
        assert!(run(tok, EXP + 3600 + 59, &r).is_ok());
        assert_eq!(run(tok, EXP + 3600 + 60, &r).err(), Some(JwtError::Expired));
        assert_eq!(
            run("{}", EXP, &r).err(),
            Some(JwtError::MissingClaim("iat".into()))
        );
        assert_eq!(r.longest_acceptance_secs(), Some(3660));
        assert_eq!(Rules::default().longest_acceptance_secs(), None);
    }

    #[test]
    fn time_claims_must_be_numbers() {
        let r = Rules::default();
        for (tok, name) in [
            (r#"{"exp":"2000000"}"#, "exp"),
            (r#"{"exp":2000000,"nbf":null}"#, "nbf"),
            (r#"{"exp":2000000,"iat":[1]}"#, "iat"),
            (r#"{"exp":true}"#, "exp"),
            (r#"{"exp":2000000,"iss":7}"#, "iss"),
            (r#"{"exp":2000000,"sub":{}}"#, "sub"),
            (r#"{"exp":2000000,"aud":["a",1]}"#, "aud"),
            (r#"{"exp":2000000,"aud":3}"#, "aud"),
        ] {
            assert_eq!(
                run(tok, EXP, &r).err(),
                Some(JwtError::InvalidClaim(name)),
                "{tok}"
            );
        }
    }

    #[test]
    fn iss_must_be_one_of_the_issuers() {
        let r = Rules {
            issuers: vec!["https://a.example".into(), "https://b.example".into()],
            ..Rules::default()
        };
        assert!(run(r#"{"exp":2000000,"iss":"https://b.example"}"#, EXP, &r).is_ok());
        assert_eq!(
            run(r#"{"exp":2000000,"iss":"https://c.example"}"#, EXP, &r).err(),
            Some(JwtError::BadIssuer)
        );
        assert_eq!(
            run(r#"{"exp":2000000,"iss":"https://a.example/"}"#, EXP, &r).err(),
            Some(JwtError::BadIssuer)
        );
        assert_eq!(
            run(r#"{"exp":2000000}"#, EXP, &r).err(),
            Some(JwtError::MissingClaim("iss".into()))
        );
    }

    #[test]
    fn aud_string_or_array_must_contain_an_audience() {
        let r = Rules {
            audiences: vec!["api".into()],
            ..Rules::default()
        };
        assert!(run(r#"{"exp":2000000,"aud":"api"}"#, EXP, &r).is_ok());
        assert!(run(r#"{"exp":2000000,"aud":["web","api"]}"#, EXP, &r).is_ok());
        for tok in [
            r#"{"exp":2000000,"aud":"web"}"#,
            r#"{"exp":2000000,"aud":[]}"#,
            r#"{"exp":2000000,"aud":["API"]}"#,
        ] {
            assert_eq!(
                run(tok, EXP, &r).err(),
                Some(JwtError::BadAudience),
                "{tok}"
            );
        }
        assert_eq!(
            run(r#"{"exp":2000000}"#, EXP, &r).err(),
            Some(JwtError::MissingClaim("aud".into()))
        );
    }

    #[test]
    fn required_claims_must_be_present_and_not_null() {
        let r = Rules {
            required_claims: vec!["tenant".into(), "plan".into()],
            ..Rules::default()
        };
        assert!(run(r#"{"exp":2000000,"tenant":"t1","plan":0}"#, EXP, &r).is_ok());
        assert_eq!(
            run(r#"{"exp":2000000,"tenant":"t1"}"#, EXP, &r).err(),
            Some(JwtError::MissingClaim("plan".into()))
        );
        assert_eq!(
            run(r#"{"exp":2000000,"tenant":null,"plan":"p"}"#, EXP, &r).err(),
            Some(JwtError::MissingClaim("tenant".into()))
        );
    }

    #[test]
    fn claims_are_kept_with_their_types_and_read_by_name() {
        let c = run(
            r#"{"exp":2000000.9,"iat":900000,"sub":"u1","jti":"j","n":12345678901234567890,
                "f":1.5,"b":false,"arr":["x",1],"o":{"k":null},"z":null}"#,
            EXP,
            &Rules::default(),
        )
        .unwrap();
        assert_eq!(c.exp, Some(2_000_000));
        assert_eq!(c.iat, Some(900_000));
        assert_eq!(c.sub.as_deref(), Some("u1"));
        assert_eq!(c.jti.as_deref(), Some("j"));
        let get = |n: &str| c.claims.get(n).map(|v| v.to_text().into_owned());
        assert_eq!(get("sub").as_deref(), Some("u1"));
        assert_eq!(get("n").as_deref(), Some("12345678901234567890"));
        assert_eq!(get("f").as_deref(), Some("1.5"));
        assert_eq!(get("b").as_deref(), Some("false"));
        assert_eq!(get("arr").as_deref(), Some(r#"["x",1]"#));
        assert_eq!(get("o").as_deref(), Some(r#"{"k":null}"#));
        assert_eq!(get("z").as_deref(), Some("null"));
        assert_eq!(get("missing"), None);
        assert_eq!(c.claims.get("sub").and_then(ClaimValue::as_str), Some("u1"));
        assert_eq!(c.claims.get("n").and_then(ClaimValue::as_str), None);
        assert_eq!(c.claims.len(), 10);
    }
}
