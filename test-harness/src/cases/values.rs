//! The values of a case file that are checked where they are written: ranges,
//! durations, names, bodies, header matches. Each refuses a wrong value with what it
//! expected, and `super::de` gives the error the value's position.

use super::de::{Entries, Scalar};
use super::parse::{STATUS_NAMES, parse_duration};
use super::tokens::When;
use super::{BackendKind, BodyExpect, CallEnd, UpstreamExpect, ValueMatch};
use crate::host::FailurePolicy;
use gatehouse_core::time::parse_rfc3339;
use serde::de::{Error as _, IgnoredAny, MapAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// Reads any value and keeps it if `convert` takes it; otherwise says what was expected.
fn scalar<'de, D: Deserializer<'de>, T>(
    d: D,
    expected: &str,
    convert: impl FnOnce(&Scalar) -> Option<T>,
) -> Result<T, D::Error> {
    let s = Scalar::deserialize(d)?;
    convert(&s).ok_or_else(|| D::Error::invalid_value(Unexpected::Other(&s.shown()), &expected))
}

/// A name from `names`.
fn named<'de, D: Deserializer<'de>, T: Copy>(d: D, names: &[(&str, T)]) -> Result<T, D::Error> {
    let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
    let expected = format!("one of [{}]", list.join(", "));
    scalar(d, &expected, |s| {
        let s = s.text()?;
        names.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    })
}

/// An integer from `LO` to `HI`.
pub struct Int<const LO: i64, const HI: i64>(pub i64);

impl<const LO: i64, const HI: i64> Int<LO, HI> {
    /// The value in a type its range fits in.
    pub fn get<T: TryFrom<i64> + Default>(&self) -> T {
        T::try_from(self.0).unwrap_or_default()
    }
}

impl<'de, const LO: i64, const HI: i64> Deserialize<'de> for Int<LO, HI> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, &format!("an integer from {LO} to {HI}"), |s| match s {
            Scalar::Int(n) if (LO..=HI).contains(n) => Some(Int(*n)),
            _ => None,
        })
    }
}

/// `500ms`, `61s`, `2m`, `1h`, `1d`.
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, "a duration like 500ms, 61s, 2m, 1h or 1d", |s| {
            s.text().and_then(|t| parse_duration(&t)).map(Dur)
        })
    }
}

/// A scalar read as text (`12`, `true`, `x`), as header values are.
pub struct Txt(pub String);

impl<'de> Deserialize<'de> for Txt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, "a scalar", |s| s.text().map(Txt))
    }
}

/// A header name, lower-cased.
pub struct Lower(pub String);

impl<'de> Deserialize<'de> for Lower {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Lower(s.to_ascii_lowercase()))
    }
}

/// `{name: value}` in file order, names lower-cased.
pub struct Headers<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Headers<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Entries::<T>::deserialize(d)?.0;
        Ok(Headers(
            entries
                .into_iter()
                .map(|(k, v)| (k.value.to_ascii_lowercase(), v))
                .collect(),
        ))
    }
}

/// An RFC 3339 time, as Unix seconds.
pub struct Rfc3339(pub u64);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(
            d,
            "an RFC 3339 time like 2026-01-01T00:00:00Z",
            |s| match s {
                Scalar::Str(t) => parse_rfc3339(t).map(Rfc3339),
                _ => None,
            },
        )
    }
}

/// A recipe's `encoding`: whether its secret is base64url.
#[derive(Clone, Copy)]
pub struct Base64url(pub bool);

impl<'de> Deserialize<'de> for Base64url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(
            d,
            &[("raw", Base64url(false)), ("base64url", Base64url(true))],
        )
    }
}

/// A proxy-wasm status, by value (0..12) or name.
pub struct WasmStatus(pub u32);

impl<'de> Deserialize<'de> for WasmStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = format!("0..12 or one of [{}]", STATUS_NAMES.join(", "));
        scalar(d, &expected, |s| match s {
            Scalar::Int(n) => u32::try_from(*n).ok().filter(|n| *n <= 12),
            Scalar::Str(name) => STATUS_NAMES
                .iter()
                .position(|n| n == name)
                .and_then(|i| u32::try_from(i).ok()),
            _ => None,
        })
        .map(WasmStatus)
    }
}

/// A body: text as is, a mapping or list as JSON.
pub struct Body(pub Vec<u8>);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Body(s.into_bytes())),
            v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
                Ok(Body(v.to_string().into_bytes()))
            }
            other => Err(refuse(&other, "a string or a mapping")),
        }
    }
}

impl<'de> Deserialize<'de> for BodyExpect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(BodyExpect::Text(s)),
            v @ serde_json::Value::Object(_) => Ok(BodyExpect::JsonSubset(v)),
            other => Err(refuse(
                &other,
                "a mapping (JSON fields) or a string (exact text)",
            )),
        }
    }
}

fn refuse<E: serde::de::Error>(v: &serde_json::Value, expected: &str) -> E {
    let kind = match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    };
    E::invalid_type(Unexpected::Other(kind), &expected)
}

/// `present`, or the exact value.
impl<'de> Deserialize<'de> for ValueMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Txt::deserialize(d)?.0 {
            p if p == "present" => ValueMatch::Present,
            text => ValueMatch::Equals(text),
        })
    }
}

/// `now`, `-60s`, `+1h`, an RFC 3339 time or Unix seconds.
impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expected = "relative to the request (now, -60s, +1h; units s, m, h, d), an RFC 3339 time or Unix seconds";
        scalar(d, expected, |s| match s {
            Scalar::Int(secs) => Some(When::At(*secs)),
            Scalar::Str(text) => When::parse(text),
            _ => None,
        })
    }
}

impl<'de> Deserialize<'de> for BackendKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(
            d,
            &[
                ("harness", BackendKind::Harness),
                ("envoy", BackendKind::Envoy),
            ],
        )
    }
}

impl<'de> Deserialize<'de> for FailurePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(
            d,
            &[
                ("FAIL_CLOSED", FailurePolicy::FailClosed),
                ("FAIL_OPEN", FailurePolicy::FailOpen),
                ("FAIL_RELOAD", FailurePolicy::FailReload),
            ],
        )
    }
}

impl<'de> Deserialize<'de> for CallEnd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named(d, &CallEnd::NAMES)
    }
}

/// `tick: true`, or `tick: {}`.
pub struct Tick;

impl<'de> Deserialize<'de> for Tick {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tick;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`true` or `{}`")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Tick, E> {
                b.then_some(Tick)
                    .ok_or_else(|| E::custom("write `tick: true` (or `tick: {}`)"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tick, A::Error> {
                match map.next_key::<IgnoredAny>()? {
                    None => Ok(Tick),
                    Some(_) => Err(A::Error::custom("write `tick: true` (or `tick: {}`)")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `upstream: none`, or what the upstream must have received.
impl<'de> Deserialize<'de> for UpstreamExpect {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UpstreamExpect;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none` or a mapping")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s {
                    "none" => Ok(UpstreamExpect::Never),
                    _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
                }
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Err(E::custom(
                    "upstream must be `none` or a mapping; write `upstream: none` for \"never reached\"",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let d = serde::de::value::MapAccessDeserializer::new(map);
                let r = RawReached::deserialize(d)?;
                Ok(UpstreamExpect::Reached {
                    headers: r.headers.map(|h| h.0).unwrap_or_default(),
                    absent_headers: lower(r.absent_headers),
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReached {
    headers: Option<Headers<ValueMatch>>,
    absent_headers: Option<Vec<Lower>>,
}

pub fn lower(names: Option<Vec<Lower>>) -> Vec<String> {
    names.unwrap_or_default().into_iter().map(|n| n.0).collect()
}
