//! Readiness: whether this Envoy's key cache is one the filter can judge credentials
//! against, for the policy's health route (`health:`, answered in [`answer`]). Ready once
//! the sync has applied a first whole snapshot (`feed/state` with a success) and the cache
//! is no older than `feed.staleness`, the bound `on_stale` applies to credentials
//! ([`crate::sync::feed::stale`]); a policy without a feed has nothing to wait for. Reads
//! one shared-data entry and never writes one.

pub mod answer;

use crate::policy::FeedPolicy;
use crate::store::SharedStore;
use crate::sync::feed;

/// The key cache of a ready Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cache {
    /// The feed version applied (`feed/state`).
    pub version: u64,
    /// Seconds since the sync's last successful poll.
    pub age_secs: u64,
}

/// Why the health route answers 503 `NOT_READY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unready {
    /// No snapshot applied yet: the cache holds the policy's own keys only, and a fed key
    /// would get 503 `AUTH_UNAVAILABLE`.
    NoSnapshot,
    /// The last successful poll is `age_secs` old, over `feed.staleness`: credentials get
    /// 503 (`on_stale: fail_closed`) or are judged against an old cache (`keep_serving`).
    Stale { age_secs: u64 },
}

impl Unready {
    /// The precise reason, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unready::NoSnapshot => "no_snapshot",
            Unready::Stale { .. } => "feed_stale",
        }
    }
}

impl std::fmt::Display for Unready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the key cache is ready: `Ok(None)` without a feed (keys come from the policy
/// alone), `Ok(Some(cache))` once a snapshot is applied and the cache is fresh.
///
/// "Applied" is `feed/state` holding a success: the sync writes it only after the last
/// page of a snapshot (`control/FEED.md`, "How the sync applies a snapshot"). "Fresh" is
/// [`feed::stale`]'s test on the same state: age over the bound is stale, so a cache
/// exactly `staleness` old is still ready, as a credential is still served then.
pub fn readiness(
    feed: Option<&FeedPolicy>,
    store: &impl SharedStore,
    now_secs: u64,
) -> Result<Option<Cache>, Unready> {
    let Some(feed) = feed else {
        return Ok(None);
    };
    let state = feed::read_state(store)
        .filter(|s| s.last_success > 0 && s.has_snapshot())
        .ok_or(Unready::NoSnapshot)?;
    // `feed::age_secs` reads the state again; one read keeps version and age together.
    let age_secs = now_secs.saturating_sub(state.last_success);
    if age_secs > feed.staleness_secs {
        return Err(Unready::Stale { age_secs });
    }
    Ok(Some(Cache {
        version: state.version,
        age_secs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OnStale;
    use crate::store::MemoryStore;
    use crate::sync::feed::{STARTED_KEY, STATE_KEY, SyncState};

    const NOW: u64 = 1_767_225_600;

    fn feed() -> FeedPolicy {
        FeedPolicy {
            cluster: "control".into(),
            authority: "control".into(),
            path: "/v1/cache".into(),
            token_env: "T".into(),
            interval_secs: 1,
            wait_secs: 20,
            staleness_secs: 30,
            on_stale: OnStale::FailClosed,
        }
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
    fn without_a_feed_there_is_nothing_to_wait_for() {
        assert_eq!(readiness(None, &MemoryStore::default(), NOW), Ok(None));
    }

    #[test]
    fn the_grace_period_before_the_first_snapshot_is_not_ready() {
        let store = MemoryStore::default();
        assert_eq!(
            readiness(Some(&feed()), &store, NOW),
            Err(Unready::NoSnapshot)
        );
        // The filter serves during its first poll (the grace period)...
        crate::sync::feed::mark_started(&store, NOW).unwrap();
        assert!(!crate::sync::feed::stale(&store, NOW + 1, 30));
        // ...but a fed key would still get 503: not ready.
        assert_eq!(
            readiness(Some(&feed()), &store, NOW + 1),
            Err(Unready::NoSnapshot)
        );
        assert!(store.get(STARTED_KEY).is_some());
        applied(&store, 0, 0);
        assert_eq!(
            readiness(Some(&feed()), &store, NOW + 1),
            Err(Unready::NoSnapshot),
            "a state without a success is no snapshot"
        );
    }

    #[test]
    fn ready_after_a_snapshot_until_the_same_bound_that_refuses_credentials() {
        let store = MemoryStore::default();
        applied(&store, 7, NOW);
        assert_eq!(
            readiness(Some(&feed()), &store, NOW + 5),
            Ok(Some(Cache {
                version: 7,
                age_secs: 5
            }))
        );
        for age in 0..=40 {
            let ready = readiness(Some(&feed()), &store, NOW + age);
            assert_eq!(
                ready.is_err(),
                crate::sync::feed::stale(&store, NOW + age, 30),
                "age {age}: the health route and on_stale must agree"
            );
        }
        assert_eq!(
            readiness(Some(&feed()), &store, NOW + 31),
            Err(Unready::Stale { age_secs: 31 })
        );
        assert_eq!(
            readiness(Some(&feed()), &store, NOW - 3),
            Ok(Some(Cache {
                version: 7,
                age_secs: 0
            })),
            "a success ahead of this worker's clock is no age"
        );
    }
}
