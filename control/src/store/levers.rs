//! The operators' levers as stored and as the feed sends them (control/FEED.md, "Levers"):
//! per-key and per-tenant rate overrides, the modes of named limits and rules, and the
//! allowlist. Both backends store them in the tables of migration `0006_levers.sql`; every
//! change of them is a change of the feed (it bumps the version in its transaction and
//! records it as the version of the last lever change), and the feed sends the whole set
//! in force, never a delta.
//!
//! What is in force at `now`: every mode and allowlist entry, and each override whose
//! `expires_at` is null or after `now`. An expired override is left out everywhere (the
//! API, the feed, the bound) as if it were gone; the cleanup job deletes it later.

use serde::Serialize;

/// The most entries in force in all (overrides + modes + allowlist): a change that would
/// add one more is refused (409 `LEVERS_FULL`), and a module that gets a larger set keeps
/// its previous one.
pub const MAX_LEVERS: u64 = 10_000;

/// Who an override is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Key,
    Tenant,
}

impl Scope {
    /// The value of the `scope` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Tenant => "tenant",
        }
    }

    pub fn of_column(s: &str) -> super::StoreResult<Scope> {
        match s {
            "key" => Ok(Scope::Key),
            "tenant" => Ok(Scope::Tenant),
            _ => Err(super::StoreError::Database(
                "limit_overrides.scope: unknown scope".to_string(),
            )),
        }
    }
}

/// A key's or a tenant's own rate, in place of its plan limit's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub scope: Scope,
    pub id: String,
    pub requests_per_minute: i64,
    /// Unix seconds; `None`: never.
    pub expires_at: Option<i64>,
    pub reason: String,
    pub updated_at: i64,
}

/// How a named limit or rule is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// As the policy says: no lever is stored for it.
    Enforce,
    /// Evaluated and counted, never refusing.
    Shadow,
    /// Not evaluated.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }

    pub fn of_column(s: &str) -> super::StoreResult<Mode> {
        match s {
            "shadow" => Ok(Mode::Shadow),
            "off" => Ok(Mode::Off),
            _ => Err(super::StoreError::Database(
                "limit_modes.mode: unknown mode".to_string(),
            )),
        }
    }
}

/// A limit's mode set through the API (never `enforce`: that removes the lever).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeLever {
    pub limit: String,
    pub mode: Mode,
    pub reason: String,
    pub updated_at: i64,
}

/// Who an allowlist entry exempts: exactly one of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// An IPv4 or IPv6 network, canonical (host bits zero).
    Cidr(String),
    KeyId(String),
    User(String),
    Tenant(String),
}

impl Subject {
    /// The `subject_kind` column (and the field's name in the API and the feed).
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Cidr(_) => "cidr",
            Subject::KeyId(_) => "key_id",
            Subject::User(_) => "user",
            Subject::Tenant(_) => "tenant",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Subject::Cidr(v) | Subject::KeyId(v) | Subject::User(v) | Subject::Tenant(v) => v,
        }
    }

    pub fn of_columns(kind: &str, value: String) -> super::StoreResult<Subject> {
        match kind {
            "cidr" => Ok(Subject::Cidr(value)),
            "key_id" => Ok(Subject::KeyId(value)),
            "user" => Ok(Subject::User(value)),
            "tenant" => Ok(Subject::Tenant(value)),
            _ => Err(super::StoreError::Database(
                "allowlist.subject_kind: unknown kind".to_string(),
            )),
        }
    }
}

/// One allowlist entry: `subject` is exempt from the rate limit `limit` (`None`: from
/// every rate limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    pub id: String,
    pub subject: Subject,
    pub limit: Option<String>,
    pub reason: String,
    pub created_at: i64,
}

impl AllowEntry {
    /// The `limit_name` column: `''` for every limit (a NULL would not take part in the
    /// table's unique constraint).
    pub fn limit_column(&self) -> &str {
        self.limit.as_deref().unwrap_or("")
    }
}

/// Every lever in force, each list in a fixed order: overrides by scope then id, modes by
/// limit, allowlist entries by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Levers {
    pub overrides: Vec<Override>,
    pub modes: Vec<ModeLever>,
    pub allowlist: Vec<AllowEntry>,
}

/// Refuses a change that adds an entry when `in_force` are in force already.
pub(crate) fn check_room(in_force: i64) -> super::StoreResult<()> {
    if u64::try_from(in_force).unwrap_or(0) >= MAX_LEVERS {
        return Err(super::StoreError::LeversFull(MAX_LEVERS));
    }
    Ok(())
}

/// The SQL (with one placeholder, `now`) that counts the entries in force.
pub(crate) fn count_sql(now_placeholder: &str) -> String {
    format!(
        "SELECT (SELECT COUNT(*) FROM limit_overrides WHERE expires_at IS NULL \
         OR expires_at > {now_placeholder}) + (SELECT COUNT(*) FROM limit_modes) \
         + (SELECT COUNT(*) FROM allowlist)"
    )
}

/// What the audit event of an override says was set.
pub(crate) fn override_detail(o: &Override) -> String {
    match o.expires_at {
        Some(e) => format!(
            "requests_per_minute={} expires_at={}",
            o.requests_per_minute, e
        ),
        None => format!(
            "requests_per_minute={} expires_at=never",
            o.requests_per_minute
        ),
    }
}

/// What the audit event of an allowlist entry says was added or removed, from its
/// `subject_kind`, `subject` and `limit_name` columns (`*`: every limit).
pub(crate) fn allow_detail(kind: &str, subject: &str, limit_column: &str) -> String {
    let limit = if limit_column.is_empty() {
        "*"
    } else {
        limit_column
    };
    format!("{kind}={subject} limit={limit}")
}

/// The audit target of an override.
pub(crate) fn override_target(scope: Scope, id: &str) -> String {
    format!("{}:{id}", scope.as_str())
}

/// The `levers` field of a feed answer (control/FEED.md, "Levers").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedLevers {
    pub overrides: Vec<FeedOverride>,
    pub modes: Vec<FeedMode>,
    pub allowlist: Vec<FeedAllow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedOverride {
    pub scope: Scope,
    pub id: String,
    pub requests_per_minute: i64,
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedMode {
    pub limit: String,
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedAllow {
    pub id: String,
    #[serde(flatten)]
    pub subject: Subject,
    pub limit: Option<String>,
}

impl From<Levers> for FeedLevers {
    fn from(l: Levers) -> FeedLevers {
        FeedLevers {
            overrides: l
                .overrides
                .into_iter()
                .map(|o| FeedOverride {
                    scope: o.scope,
                    id: o.id,
                    requests_per_minute: o.requests_per_minute,
                    expires_at: o.expires_at,
                })
                .collect(),
            modes: l
                .modes
                .into_iter()
                .map(|m| FeedMode {
                    limit: m.limit,
                    mode: m.mode,
                })
                .collect(),
            allowlist: l
                .allowlist
                .into_iter()
                .map(|e| FeedAllow {
                    id: e.id,
                    subject: e.subject,
                    limit: e.limit,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_feed_form_is_the_contracts() {
        let levers = Levers {
            overrides: vec![Override {
                scope: Scope::Key,
                id: "key_8f3a".to_string(),
                requests_per_minute: 20000,
                expires_at: Some(1_767_225_600),
                reason: "r".to_string(),
                updated_at: 1,
            }],
            modes: vec![ModeLever {
                limit: "team".to_string(),
                mode: Mode::Shadow,
                reason: "r".to_string(),
                updated_at: 1,
            }],
            allowlist: vec![
                AllowEntry {
                    id: "alw_7Hq2".to_string(),
                    subject: Subject::Cidr("203.0.113.0/24".to_string()),
                    limit: None,
                    reason: "r".to_string(),
                    created_at: 1,
                },
                AllowEntry {
                    id: "alw_9Kd1".to_string(),
                    subject: Subject::KeyId("key_8f3a".to_string()),
                    limit: Some("team".to_string()),
                    reason: "r".to_string(),
                    created_at: 1,
                },
            ],
        };
        let json = serde_json::to_value(FeedLevers::from(levers)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "overrides": [{"scope": "key", "id": "key_8f3a", "requests_per_minute": 20000,
                               "expires_at": 1_767_225_600}],
                "modes": [{"limit": "team", "mode": "shadow"}],
                "allowlist": [{"id": "alw_7Hq2", "cidr": "203.0.113.0/24", "limit": null},
                              {"id": "alw_9Kd1", "key_id": "key_8f3a", "limit": "team"}]
            })
        );
    }

    #[test]
    fn the_bound_refuses_the_ten_thousand_and_first_entry() {
        assert!(check_room(9_999).is_ok());
        assert!(matches!(
            check_room(10_000),
            Err(super::super::StoreError::LeversFull(10_000))
        ));
    }
}
