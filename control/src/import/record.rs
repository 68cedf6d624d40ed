//! One line of an import: a JSON object naming one key by its SHA-256, checked by the
//! rules `POST /v1/keys` applies to the keys it issues (`keys.rs`), made into a
//! [`NewKey`].
//!
//! ```json
//! {"sha256": "<64 lower-case hex>", "user_id": "user_1", "tenant_id": "acme",
//!  "plan": "team", "expires_at": "2027-01-01T00:00:00Z", "scopes": ["billing"],
//!  "key_id": "legacy-42", "device_name": "ci runner"}
//! ```
//!
//! `sha256`, `user_id`, `tenant_id` and `plan` are required; `expires_at` (RFC 3339,
//! after now and at most ten years ahead, as issuance allows), `scopes` (as issuance),
//! `key_id` (the id rule; when it is absent the service draws one of an issued key's
//! format, whose first characters tell the second: `keys::new_import_key_id`)
//! and `device_name` (as issuance; `imported` when absent) may be left out or `null`.
//!
//! Never: take a plaintext key. A field whose name could hold one (`key`, `api_key`,
//! `secret`, `token`, ...) refuses the line, as does any other field not listed above. No
//! message quotes a value, nor a field name the client wrote.

use crate::clock::Clock;
use crate::keys::{
    MAX_EXPIRES_IN_DAYS, checked_device_name, checked_scopes, id_rule, new_import_key_id, plan_rule,
};
use crate::plans::Plans;
use crate::store::NewKey;
use gatehouse_core::authn::api_key::is_valid_id;
use gatehouse_core::time::parse_rfc3339;
use serde_json::{Map, Value};

/// The device name of an imported key that gives none.
pub const DEFAULT_DEVICE_NAME: &str = "imported";

/// The fields a line may have, for messages.
pub const FIELDS: &str =
    "sha256, user_id, tenant_id, plan, and optionally expires_at, scopes, key_id, device_name";

/// Ids no imported key may have: `/v1/keys/<id>` would name the route, not the key, so
/// the key could be neither shown nor revoked.
const RESERVED_IDS: [&str; 2] = ["import", "verify"];

/// What a line is checked against.
pub struct Rules<'a> {
    /// The plans keys may be on (`plans.rs`).
    pub plans: &'a Plans,
    /// Now, in Unix seconds: expiries must be after it.
    pub now: i64,
    /// Dates the ids drawn for keys that bring none, as they are drawn
    /// ([`new_import_key_id`]).
    pub clock: &'a dyn Clock,
}

/// `line` (one line of NDJSON, its newline removed) as a key to insert, or what is wrong
/// with it: the message names the field and never holds what the client sent.
pub fn parse(line: &[u8], rules: &Rules<'_>) -> Result<NewKey, String> {
    let mut fields = object(line)?;
    if fields.keys().any(|name| may_hold_a_secret(name)) {
        return Err(format!(
            "a field that may hold a plaintext key: an import takes each key's sha256, never \
             the key; a line has {FIELDS}"
        ));
    }
    if fields.keys().any(|name| !is_field(name)) {
        return Err(format!("unknown field: a line has {FIELDS}"));
    }
    let sha256 = required(&mut fields, "sha256")?;
    if !is_sha256_hex(&sha256) {
        return Err("sha256 must be 64 lower-case hex digits (the SHA-256 of the key)".into());
    }
    let user_id = id(&mut fields, "user_id")?;
    let tenant_id = id(&mut fields, "tenant_id")?;
    let plan = id(&mut fields, "plan")?;
    if !rules.plans.contains(&plan) {
        return Err(plan_rule(rules.plans));
    }
    let expires_at = expires_at(optional(&mut fields, "expires_at"), rules.now)?;
    let scopes = match optional(&mut fields, "scopes") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(id_rule("each scope")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("scopes must be a list of scopes, or null".into()),
    };
    let scopes = checked_scopes(scopes)?;
    let id = match optional(&mut fields, "key_id") {
        None => new_import_key_id(rules.clock.now_secs())
            .map_err(|e| format!("no randomness from the OS: {e}"))?,
        Some(Value::String(id)) if is_valid_id(&id) => {
            if RESERVED_IDS.contains(&id.as_str()) {
                return Err(format!(
                    "key_id must not be {} (paths of the key API)",
                    RESERVED_IDS.join(" or ")
                ));
            }
            id
        }
        Some(_) => return Err(id_rule("key_id")),
    };
    let device_name = match optional(&mut fields, "device_name") {
        None => DEFAULT_DEVICE_NAME.to_string(),
        Some(Value::String(name)) => checked_device_name(&name)?,
        // The rule's message, as for a name that breaks it.
        Some(_) => return Err(checked_device_name("").err().unwrap_or_default()),
    };
    Ok(NewKey {
        id,
        sha256,
        user_id,
        tenant_id,
        plan,
        device_name,
        scopes,
        expires_at,
    })
}

/// The line as a JSON object.
fn object(line: &[u8]) -> Result<Map<String, Value>, String> {
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err("a line must be one JSON object (or blank)".into());
    }
    serde_json::from_slice(line).map_err(|_| "the line is not valid JSON".to_string())
}

fn is_field(name: &str) -> bool {
    matches!(
        name,
        "sha256"
            | "user_id"
            | "tenant_id"
            | "plan"
            | "expires_at"
            | "scopes"
            | "key_id"
            | "device_name"
    )
}

/// A name someone would give a field holding a key or another secret: `key`, `api_key`,
/// `apiKey`, `secret`, `token`, `password`, `plaintext`... (`key_id` is ours).
fn may_hold_a_secret(name: &str) -> bool {
    if name == "key_id" {
        return false;
    }
    let name = name.to_ascii_lowercase();
    ["key", "secret", "token", "passw", "plain"]
        .iter()
        .any(|word| name.contains(word))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn required(fields: &mut Map<String, Value>, name: &str) -> Result<String, String> {
    match fields.remove(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(format!("{name} is missing")),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

/// A required field under the id rule.
fn id(fields: &mut Map<String, Value>, name: &str) -> Result<String, String> {
    let value = required(fields, name)?;
    if is_valid_id(&value) {
        Ok(value)
    } else {
        Err(id_rule(name))
    }
}

/// A field that may be left out: absent and `null` are both `None`.
fn optional(fields: &mut Map<String, Value>, name: &str) -> Option<Value> {
    fields.remove(name).filter(|v| !v.is_null())
}

fn expires_at(value: Option<Value>, now: i64) -> Result<Option<i64>, String> {
    let latest = now.saturating_add(i64::from(MAX_EXPIRES_IN_DAYS) * 86_400);
    let rule = || {
        format!(
            "expires_at must be an RFC 3339 time after now and at most {MAX_EXPIRES_IN_DAYS} \
             days ahead, or null"
        )
    };
    match value {
        None => Ok(None),
        Some(Value::String(s)) => match parse_rfc3339(&s).and_then(|t| i64::try_from(t).ok()) {
            Some(t) if t > now && t <= latest => Ok(Some(t)),
            _ => Err(rule()),
        },
        Some(_) => Err(rule()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::ManualClock;
    use serde_json::json;

    /// 2026-01-01T00:00:00Z
    const NOW: i64 = 1_767_225_600;
    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn check(line: &Value) -> Result<NewKey, String> {
        let plans = Plans::default();
        parse(
            line.to_string().as_bytes(),
            &Rules {
                plans: &plans,
                now: NOW,
                clock: &ManualClock::at_secs(NOW as u64),
            },
        )
    }

    fn good() -> Value {
        json!({"sha256": SHA, "user_id": "user_1", "tenant_id": "acme", "plan": "team"})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = good();
        v[field] = value;
        v
    }

    #[test]
    fn a_minimal_line_is_a_key_with_a_drawn_id_and_no_expiry() {
        let k = check(&good()).unwrap();
        assert_eq!(k.sha256, SHA);
        assert_eq!(
            (k.user_id.as_str(), k.tenant_id.as_str()),
            ("user_1", "acme")
        );
        assert_eq!(k.plan, "team");
        assert!(k.id.starts_with("key_") && is_valid_id(&k.id), "{}", k.id);
        assert_ne!(k.id, check(&good()).unwrap().id);
        assert_eq!(k.device_name, DEFAULT_DEVICE_NAME);
        assert_eq!(k.scopes, Vec::<String>::new());
        assert_eq!(k.expires_at, None);
    }

    #[test]
    fn every_optional_field_is_kept_as_issuance_would_store_it() {
        let mut v = good();
        v["expires_at"] = json!("2027-01-01T01:00:00+01:00");
        v["scopes"] = json!(["orders", "billing", "orders"]);
        v["key_id"] = json!("legacy-42");
        v["device_name"] = json!("  ci runner ");
        let k = check(&v).unwrap();
        assert_eq!(k.expires_at, Some(NOW + 365 * 86_400));
        assert_eq!(k.scopes, ["billing", "orders"]);
        assert_eq!(k.id, "legacy-42");
        assert_eq!(k.device_name, "ci runner");
        for null in ["expires_at", "scopes", "key_id", "device_name"] {
            assert!(check(&with(null, Value::Null)).is_ok(), "{null}: null");
        }
    }

    #[test]
    fn each_rule_names_its_field_and_never_the_value() {
        let secret = "ghk_Zx9Qp2Lm7Rw8Tb4Kc1Yv6Nd5Hs2Ja9Q0wE";
        let mut missing = good();
        missing.as_object_mut().unwrap().remove("plan");
        for (line, want) in [
            (
                with("sha256", json!(SHA.to_uppercase())),
                "sha256 must be 64",
            ),
            (with("sha256", json!(&SHA[1..])), "sha256 must be 64"),
            (with("sha256", json!(secret)), "sha256 must be 64"),
            (with("sha256", json!(5)), "sha256 must be a string"),
            (
                with("user_id", json!(format!("a {secret}"))),
                "user_id must be 1 to 128",
            ),
            (with("tenant_id", json!("")), "tenant_id must be 1 to 128"),
            (
                with("plan", json!(secret)),
                "plan must be one of [free, solo, team",
            ),
            (missing, "plan is missing"),
            (
                with("expires_at", json!("2025-12-31T23:59:59Z")),
                "expires_at must be",
            ),
            (
                with("expires_at", json!("2026-01-01T00:00:00Z")),
                "expires_at must be",
            ),
            (
                with("expires_at", json!("2037-01-01T00:00:00Z")),
                "expires_at must be",
            ),
            (with("expires_at", json!(secret)), "expires_at must be"),
            (with("expires_at", json!(NOW + 60)), "expires_at must be"),
            (with("scopes", json!([])), "scopes must not be empty"),
            (with("scopes", json!([secret, "a b"])), "each scope must be"),
            (with("scopes", json!([1])), "each scope must be"),
            (with("scopes", json!(secret)), "scopes must be a list"),
            (with("scopes", json!(vec!["s"; 33])), "at most 32"),
            (
                with("key_id", json!(format!("{secret}!"))),
                "key_id must be 1 to 128",
            ),
            (
                with("key_id", json!("import")),
                "key_id must not be import or verify",
            ),
            (
                with("key_id", json!("verify")),
                "key_id must not be import or verify",
            ),
            (with("device_name", json!("a\nb")), "device_name must be"),
            (with("device_name", json!(7)), "device_name must be"),
        ] {
            let err = check(&line).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
            assert!(!err.contains("ghk_"), "{err}");
        }
    }

    #[test]
    fn a_field_that_may_hold_a_plaintext_key_refuses_the_line_unquoted() {
        for name in [
            "key",
            "api_key",
            "apiKey",
            "API_KEY",
            "secret",
            "token",
            "plaintext",
            "zq_key_x",
        ] {
            let err = check(&with(name, json!("ghk_x"))).unwrap_err();
            assert!(
                err.starts_with("a field that may hold a plaintext key"),
                "{name}: {err}"
            );
            assert!(!err.contains("ghk_x") && !err.contains("zq_"), "{err}");
        }
        let err = check(&with("ghk_pasted_as_a_name", json!(1))).unwrap_err();
        assert!(err.starts_with("unknown field"), "{err}");
        assert!(!err.contains("ghk_"), "{err}");
        let err = check(&with("created_at", json!(1))).unwrap_err();
        assert!(err.starts_with("unknown field"), "{err}");
    }

    #[test]
    fn a_line_that_is_not_one_json_object_is_refused() {
        let plans = Plans::default();
        let clock = ManualClock::at_secs(NOW as u64);
        let rules = Rules {
            plans: &plans,
            now: NOW,
            clock: &clock,
        };
        for line in [
            &b"[1]"[..],
            b"\"x\"",
            b"null",
            b"{\"sha256\": ",
            b"{} {}",
            b"\xff{}",
        ] {
            let err = parse(line, &rules).unwrap_err();
            assert!(
                err == "a line must be one JSON object (or blank)"
                    || err == "the line is not valid JSON",
                "{err}"
            );
        }
    }
}
