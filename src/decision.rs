//! The request path, top to bottom: match the route, authenticate, allow or refuse.
//!
//! [`decide`] takes the few request values it needs (the shell fetches them), the shared
//! store and the clock, and returns a [`Decision`]. It never calls the host and never
//! sends anything: the shell applies the decision.

use crate::api_key::{KeyRecord, check_format, hash_presented_key};
use crate::error::{AuthFailure, Denial};
use crate::key_cache;
use crate::policy::{KeyFormat, Policy};
use crate::route::{self, Audience};
use crate::store::{Clock, SharedStore};

/// Identity headers set for the upstream. Client-sent `x-gatehouse-*` headers are always
/// removed first, so an upstream can trust every header with this prefix.
pub const IDENTITY_HEADER_PREFIX: &str = "x-gatehouse-";
pub const HEADER_USER: &str = "x-gatehouse-user";
pub const HEADER_TENANT: &str = "x-gatehouse-tenant";
pub const HEADER_PLAN: &str = "x-gatehouse-plan";
pub const HEADER_KEY_ID: &str = "x-gatehouse-key-id";

/// The credential header as the request carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    One(&'a [u8]),
    /// Sent more than once: refused, since proxies and upstreams may pick different ones.
    Several,
}

/// What the core needs from a request's headers.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a [u8],
    /// The raw `:path`, query string included.
    pub path: &'a [u8],
    pub api_key: Presented<'a>,
}

/// Who is calling, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub key_id: String,
    pub user: String,
    pub tenant: String,
    pub plan: String,
}

impl From<KeyRecord> for Identity {
    fn from(r: KeyRecord) -> Self {
        Identity {
            key_id: r.key_id,
            user: r.user,
            tenant: r.tenant,
            plan: r.plan,
        }
    }
}

impl Identity {
    /// The headers the upstream receives. Values are validated ids: header-safe.
    pub fn headers(&self) -> [(&'static str, &str); 4] {
        [
            (HEADER_USER, &self.user),
            (HEADER_TENANT, &self.tenant),
            (HEADER_PLAN, &self.plan),
            (HEADER_KEY_ID, &self.key_id),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Index of the matched route in the policy.
    pub route: usize,
    /// `None` for an anonymous caller on an external route.
    pub identity: Option<Identity>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial),
}

/// Decides a request from its headers.
pub fn decide(
    policy: &Policy,
    head: &RequestHead<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> Decision {
    let path = route::path_only(head.path);
    if route::check_normal_form(path).is_err() {
        return Decision::Deny(Denial::AmbiguousPath);
    }
    let Some(route_index) = route::find(&policy.routes, head.method, path) else {
        return Decision::Deny(Denial::NoRoute);
    };
    let route = policy.routes.get(route_index);
    let audience = route.map_or(Audience::Internal, |r| r.audience);
    let group = route.and_then(|r| r.group.as_deref());

    let record = match authenticate(policy, head, store, clock) {
        Ok(record) => record,
        Err(failure) => return Decision::Deny(Denial::Unauthorized(failure)),
    };
    match record {
        None if audience == Audience::Internal => {
            Decision::Deny(Denial::Unauthorized(AuthFailure::Missing))
        }
        // A scoped key calls only its route groups, external routes included: a key
        // limited to `billing` is not a general-purpose credential anywhere.
        Some(r) if !r.allows(group) => Decision::Deny(Denial::Forbidden),
        record => Decision::Allow(Allowed {
            route: route_index,
            identity: record.map(Identity::from),
        }),
    }
}

/// `Ok(None)`: no credential presented. A credential that is presented must be valid,
/// on external routes too: a caller who sends a bad key learns it instead of silently
/// running anonymous.
fn authenticate(
    policy: &Policy,
    head: &RequestHead<'_>,
    store: &impl SharedStore,
    clock: &impl Clock,
) -> Result<Option<KeyRecord>, AuthFailure> {
    let raw = match head.api_key {
        Presented::None => return Ok(None),
        Presented::Several => return Err(AuthFailure::Duplicate),
        Presented::One(raw) => raw,
    };
    if policy.api_key_format == KeyFormat::Checksummed {
        check_format(raw).map_err(AuthFailure::Key)?;
    }
    let hash = hash_presented_key(raw).map_err(AuthFailure::Key)?;
    let record = key_cache::lookup(policy, store, &hash, clock.now()).map_err(AuthFailure::Key)?;
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api_key::KeyFailure;
    use crate::policy::load_yaml;
    use crate::store::{FixedClock, MemoryStore};

    const DEMO: &[u8] = b"ghk_demo_5f0c1b8e2d7a4c9e8b3f6A2d4hG5";
    const REVOKED: &[u8] = b"ghk_revoked_7d1e3a5c9b0f2e4d6c8a1B2tc9GC";
    const EXPIRED: &[u8] = b"ghk_expired_2b4d6f8a0c1e3a5c7e9b1D0ZaY1i";
    /// Well-formed (valid checksum) but in no policy.
    const UNKNOWN: &[u8] = b"ghk_nobody_00000000000000000000004NBVVD";
    const BILLING: &[u8] = b"ghk_billing_9c8b7a6d5e4f3a2b1c0dEf32tzAe";
    // 2026-01-01T00:00:00Z
    const NOW: u64 = 1_767_225_600;

    fn setup() -> (Policy, MemoryStore, FixedClock) {
        let policy = load_yaml("example.yaml", include_str!("../policies/example.yaml"))
            .unwrap()
            .policy;
        let store = MemoryStore::default();
        key_cache::install_policy_keys(&policy, &store).unwrap();
        (policy, store, FixedClock::at_secs(NOW))
    }

    fn run(method: &str, path: &str, key: Presented<'_>) -> Decision {
        let (policy, store, clock) = setup();
        let head = RequestHead {
            method: method.as_bytes(),
            path: path.as_bytes(),
            api_key: key,
        };
        decide(&policy, &head, &store, &clock)
    }

    #[test]
    fn a_valid_key_on_an_internal_route_is_allowed_with_its_identity() {
        let Decision::Allow(a) = run("GET", "/v1/things?x=1", Presented::One(DEMO)) else {
            panic!("refused")
        };
        assert_eq!(
            a.identity,
            Some(Identity {
                key_id: "key_demo".into(),
                user: "user_demo".into(),
                tenant: "tenant_demo".into(),
                plan: "team".into()
            })
        );
    }

    #[test]
    fn each_key_failure_is_refused_with_401() {
        let deny = |k| Decision::Deny(Denial::Unauthorized(k));
        assert_eq!(
            run("GET", "/v1/x", Presented::None),
            deny(AuthFailure::Missing)
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::Several),
            deny(AuthFailure::Duplicate)
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(b"nope")),
            deny(AuthFailure::Key(KeyFailure::Malformed))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(UNKNOWN)),
            deny(AuthFailure::Key(KeyFailure::Unknown))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(b"has space")),
            deny(AuthFailure::Key(KeyFailure::Malformed))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(REVOKED)),
            deny(AuthFailure::Key(KeyFailure::Revoked))
        );
        assert_eq!(
            run("GET", "/v1/x", Presented::One(EXPIRED)),
            deny(AuthFailure::Key(KeyFailure::Expired))
        );
    }

    #[test]
    fn a_key_expires_at_its_expiry_instant() {
        let (mut policy, store, clock) = setup();
        policy.keys.truncate(1);
        let key = &mut policy.keys[0];
        key.record.expires_at = Some(NOW + 10);
        key_cache::install_policy_keys(&policy, &store).unwrap();
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(DEMO),
        };
        clock.set_secs(NOW + 9);
        assert!(matches!(
            decide(&policy, &head, &store, &clock),
            Decision::Allow(_)
        ));
        clock.set_secs(NOW + 10);
        assert_eq!(
            decide(&policy, &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Expired)))
        );
    }

    #[test]
    fn external_routes_let_anonymous_callers_through() {
        assert_eq!(
            run("GET", "/healthz", Presented::None),
            Decision::Allow(Allowed {
                route: 0,
                identity: None
            })
        );
        assert!(matches!(
            run("GET", "/docs/intro", Presented::None),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn a_scoped_key_calls_only_routes_in_its_groups() {
        assert!(matches!(
            run("GET", "/v1/billing/invoices", Presented::One(BILLING)),
            Decision::Allow(_)
        ));
        assert_eq!(
            run("GET", "/v1/things", Presented::One(BILLING)),
            Decision::Deny(Denial::Forbidden)
        );
        // External routes too: a scoped key is not a general credential anywhere.
        assert_eq!(
            run("GET", "/healthz", Presented::One(BILLING)),
            Decision::Deny(Denial::Forbidden)
        );
        // An unscoped key calls every group.
        assert!(matches!(
            run("GET", "/v1/billing/invoices", Presented::One(DEMO)),
            Decision::Allow(_)
        ));
    }

    #[test]
    fn an_opaque_key_format_skips_the_checksum() {
        let (mut policy, store, clock) = setup();
        policy.api_key_format = crate::policy::KeyFormat::Opaque;
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(b"legacy-key-123"),
        };
        assert_eq!(
            decide(&policy, &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn a_bad_key_on_an_external_route_is_still_refused() {
        assert_eq!(
            run("GET", "/healthz", Presented::One(UNKNOWN)),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn unmatched_routes_and_methods_are_404() {
        assert_eq!(
            run("GET", "/v2/x", Presented::One(DEMO)),
            Decision::Deny(Denial::NoRoute)
        );
        assert_eq!(
            run("POST", "/healthz", Presented::None),
            Decision::Deny(Denial::NoRoute)
        );
    }

    #[test]
    fn ambiguous_paths_are_refused_before_matching() {
        assert_eq!(
            run("GET", "/docs/../v1/x", Presented::None),
            Decision::Deny(Denial::AmbiguousPath)
        );
        assert_eq!(
            run("GET", "/docs/%2e%2e/v1/x", Presented::None),
            Decision::Deny(Denial::AmbiguousPath)
        );
    }

    #[test]
    fn a_key_from_an_older_policy_stops_working_when_the_policy_changes() {
        let (mut policy, store, clock) = setup();
        policy.fingerprint ^= 1;
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(DEMO),
        };
        assert_eq!(
            decide(&policy, &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }

    #[test]
    fn a_corrupt_cache_entry_is_an_unknown_key_not_a_crash() {
        let (policy, store, clock) = setup();
        let hash = crate::api_key::KeyHash::of_key(DEMO);
        store.set(&hash.cache_key(), b"\xff garbage", 0).unwrap();
        let head = RequestHead {
            method: b"GET",
            path: b"/v1/x",
            api_key: Presented::One(DEMO),
        };
        assert_eq!(
            decide(&policy, &head, &store, &clock),
            Decision::Deny(Denial::Unauthorized(AuthFailure::Key(KeyFailure::Unknown)))
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::policy::load_yaml;
    use crate::store::{FixedClock, MemoryStore};
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, the core answers with a decision; it never panics, and
        /// an identity is only ever granted for a key whose record exists.
        #[test]
        fn any_request_bytes_get_a_decision_without_panicking(
            method in proptest::collection::vec(any::<u8>(), 0..16),
            path in proptest::collection::vec(any::<u8>(), 0..64),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            several in any::<bool>(),
        ) {
            let policy = load_yaml("example.yaml", include_str!("../policies/example.yaml")).unwrap().policy;
            let store = MemoryStore::default();
            crate::key_cache::install_policy_keys(&policy, &store).unwrap();
            let api_key = match (&key, several) {
                (None, _) => Presented::None,
                (Some(_), true) => Presented::Several,
                (Some(k), false) => Presented::One(k),
            };
            let head = RequestHead { method: &method, path: &path, api_key };
            let decision = decide(&policy, &head, &store, &FixedClock::at_secs(1_767_225_600));
            if let Decision::Allow(Allowed { identity: Some(_), .. }) = decision {
                prop_assert!(false, "random key bytes were granted an identity");
            }
        }
    }
}
