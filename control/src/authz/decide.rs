//! `/v1/authz` with a policy: the plugin's own decision (`gatehouse_core::pipeline`), run
//! against the database instead of a proxy's shared data.
//!
//! **Passes.** The core reads one shared-data entry at a time, and which ones it reads
//! depends on the request: the key record of the presented key, or, once a JWT has
//! verified, its user's watermark and its jti's entry. So [`PolicyCheck::decide`] runs the
//! decision over a [`RequestStore`] holding what is known so far, takes the entries it
//! asked for and did not find, looks those up in the database, writes them into the
//! store with `gatehouse_core::sync::feed::apply` (the sync's own encoder, from a page shaped like a
//! `GET /v1/cache` answer, so there is one encoding), and decides again. An API key takes
//! two passes, a JWT two (watermark and jti are asked for in the same pass); a pass that
//! asks for nothing new is the answer. After [`MAX_PASSES`] the request is refused 503
//! `AUTH_UNAVAILABLE` (logged as an error: it means the core reads something new).
//!
//! **Freshness.** A policy with a `feed` section makes the core refuse credentials when
//! the feed's cache is stale (`feed.staleness`) and answer 503 for an unknown key before
//! the first feed answer. The database *is* what the feed would be stale against, so
//! every decision starts with the feed state written as a success at this instant
//! (`feed::apply` of an empty page): never stale, never before the first answer.
//!
//! **Rate limits** are not enforced here: ext_authz has no limiter shared across
//! requests, and each decision gets empty limiter tables ([`RequestStore`]), so every
//! limit passes and nothing is counted. **JWT keys** are built once, at start-up, from
//! the policy: HMAC keys (secrets from this service's environment) and an inline JWKS.
//! A `jwks_url` is an Envoy cluster this service cannot fetch from: tokens signed with
//! its keys are refused 401 `INVALID_CREDENTIALS`, as the plugin refuses them before its
//! first fetch. A secret that is not set leaves no JWT key at all: every token is
//! refused. Both are logged at start-up.
//!
//! Never: decide with a database entry missing (a lookup that fails is a 500), or keep a
//! decision's entries for another request.

use super::request_store::{Entries, RequestStore};
use crate::store::{FeedKey, FeedPage, Store, StoreError};
use gatehouse_core::authn::jwt::KeySet;
use gatehouse_core::clock::Clock;
use gatehouse_core::pipeline::{Decision, Refused};
use gatehouse_core::worker::Caches;

use gatehouse_core::policy::Policy;
use gatehouse_core::refusal::Denial;
use gatehouse_core::request::RequestHead;
use gatehouse_core::time::UnixNanos;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Decisions per request at most (see the module doc).
pub const MAX_PASSES: usize = 3;

/// The epoch of the pages written into a request's store: any valid epoch does, the
/// store lives for one request.
const EPOCH: &str = "authz";

/// The policy, the JWT keys and the policy's own entries, made once at start-up.
pub struct PolicyCheck {
    policy: Arc<Policy>,
    core: Core,
    /// The policy's keys and revocations in shared-data encoding.
    base: Entries,
}

impl PolicyCheck {
    /// `env` gives the JWT secrets the policy names (`secret_env`).
    pub fn new(policy: Arc<Policy>, env: &dyn Fn(&str) -> Option<String>) -> PolicyCheck {
        let core = Core::new(&policy, env);
        let mut base = Entries::default();
        {
            let writer = base.writer();
            // Writes into a map: they cannot fail.
            let _ = gatehouse_core::authn::key_cache::install_policy_keys(&policy, &writer);
            let r = &policy.revocations;
            let _ = gatehouse_core::authn::revocation::install(&r.users, &r.jtis, &writer);
        }
        let unchecked: Vec<&str> = policy
            .routes
            .iter()
            .filter(|r| r.webhook.is_some())
            .map(|r| r.name.as_str())
            .collect();
        if !unchecked.is_empty() {
            tracing::warn!(
                routes = ?unchecked,
                "/v1/authz does not see request bodies: webhook signatures on these routes \
                 are not checked by ext_authz"
            );
        }
        PolicyCheck { policy, core, base }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The plugin's decision for `head`, from the database `db` at `now`.
    pub async fn decide(
        &self,
        head: &RequestHead<'_>,
        db: &dyn Store,
        now: UnixNanos,
    ) -> Result<(Decision, Refused), StoreError> {
        let mut fetched = Entries::default();
        apply(&mut fetched, page(Vec::new(), Vec::new(), Vec::new()), now)?;
        let mut looked_up = BTreeSet::new();
        for _ in 0..MAX_PASSES {
            let (outcome, missing) = {
                let store = RequestStore::new(&fetched, &self.base);
                let outcome = self.core.decide(&self.policy, head, &store, now);
                (outcome, store.missing())
            };
            let wanted: Vec<String> = missing
                .into_iter()
                .filter(|key| looked_up.insert(key.clone()))
                .collect();
            if wanted.is_empty() {
                return Ok(outcome);
            }
            apply(&mut fetched, fetch(db, &wanted).await?, now)?;
        }
        tracing::error!(
            passes = MAX_PASSES,
            "/v1/authz: the decision still asked for new entries; refused"
        );
        Ok((Decision::Deny(Denial::AuthUnavailable), Refused::default()))
    }
}

/// The plugin's core as this service calls it: the JWT keys (one set per provider of the
/// policy's `jwt` section) and the one call into `gatehouse_core::pipeline`. Everything that
/// depends on the core's signature and on the shape of the `jwt` section is here and in
/// [`claim_header_names`].
struct Core {
    jwt_keys: Vec<KeySet>,
    /// As a proxy worker's: presented keys, decoded records and limiter places.
    caches: Caches,
}

impl Core {
    fn new(policy: &Policy, env: &dyn Fn(&str) -> Option<String>) -> Core {
        let providers = policy.jwt.iter().flat_map(|jwt| &jwt.providers);
        let jwt_keys = providers
            .map(|provider| {
                if provider.jwks_url.is_some() {
                    tracing::warn!(
                        provider = %provider.path,
                        "/v1/authz cannot fetch jwks_url (an Envoy cluster): tokens signed \
                         with its keys are refused"
                    );
                }
                provider.static_keys(env).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "/v1/authz: every token of this provider is refused");
                    KeySet::default()
                })
            })
            .collect();
        Core {
            jwt_keys,
            caches: Caches::default(),
        }
    }

    fn decide(
        &self,
        policy: &Policy,
        head: &RequestHead<'_>,
        store: &RequestStore<'_>,
        now: UnixNanos,
    ) -> (Decision, Refused) {
        gatehouse_core::pipeline::decide_explained(
            policy,
            &self.caches,
            &self.jwt_keys,
            head,
            store,
            &At(now),
        )
    }
}

/// The headers the policy forwards verified claims in (`forward_claims`).
pub fn claim_header_names(policy: &Policy) -> impl Iterator<Item = &str> {
    policy
        .jwt
        .iter()
        .flat_map(|jwt| &jwt.providers)
        .flat_map(|p| p.forward_claims.iter().map(|(_, header)| header.as_str()))
}

/// One reading of the service's clock, for the whole request.
struct At(UnixNanos);

impl Clock for At {
    fn now(&self) -> UnixNanos {
        self.0
    }
}

fn page(
    keys: Vec<FeedKey>,
    users: Vec<crate::store::UserRevocation>,
    jtis: Vec<crate::store::JtiRevocation>,
) -> FeedPage {
    FeedPage {
        epoch: EPOCH.to_string(),
        version: 0,
        full: false,
        more: false,
        next: None,
        keys,
        users,
        jtis,
        levers: None,
    }
}

/// The database rows behind `wanted` (`K<84 bits>`, `u/<user>`, `j/<hash>`), as a feed page.
async fn fetch(db: &dyn Store, wanted: &[String]) -> Result<FeedPage, StoreError> {
    let (mut keys, mut users, mut jtis) = (Vec::new(), Vec::new(), Vec::new());
    for key in wanted {
        if let Some(prefix) = gatehouse_core::authn::api_key::KeyHash::entry_hex_prefix(key) {
            // Every key of those 84 bits, as a proxy's entry of that name may hold any of
            // them: the record decides, by its whole hash.
            keys.extend(
                db.find_keys_by_hash_prefix(&prefix)
                    .await?
                    .iter()
                    .map(FeedKey::from),
            );
        } else if let Some(user) = key.strip_prefix("u/") {
            users.extend(db.find_user_revocation(user).await?);
        } else if let Some(sha256) = key.strip_prefix("j/") {
            jtis.extend(db.find_jti_revocation(sha256).await?);
        }
    }
    Ok(page(keys, users, jtis))
}

/// Writes `page` into `entries` exactly as a proxy's sync writes a `GET /v1/cache` answer
/// into its shared data, with `now` as the last successful poll.
fn apply(entries: &mut Entries, page: FeedPage, now: UnixNanos) -> Result<(), StoreError> {
    let internal = |what: &str| StoreError::Database(format!("/v1/authz feed page: {what}"));
    let json = serde_json::to_vec(&page).map_err(|e| internal(&e.to_string()))?;
    let answer =
        gatehouse_core::sync::feed::parse_answer(&json).map_err(|e| internal(&e.to_string()))?;
    if answer.skipped > 0 {
        // The proxies skip these records too: the decision is the same as theirs.
        tracing::warn!(
            skipped = answer.skipped,
            "/v1/authz: database rows the feed contract refuses"
        );
    }
    gatehouse_core::sync::feed::apply(&entries.writer(), &answer, false, now.secs())
        .map_err(|e| internal(&format!("{e:?}")))?;
    Ok(())
}
