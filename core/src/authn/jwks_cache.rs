//! A JWKS fetched from a URL, shared by all workers through shared data and fetched by
//! one worker at a time; each provider's document is its own, so a key fetched for one
//! issuer never verifies another's tokens. Behaviour: `docs/policy.md#writing-a-policy`.

use crate::authn::jwt::{Alg, JwkError, Jwks, Key, parse_jwks};
use crate::policy::auth::JwksUrl;
use crate::store::{SharedStore, StoreError};

/// Provider `p`'s document entry (`p` its index in `jwt.providers`):
/// `jwks/<p>/doc` = `1|<fetched at, unix secs>|<JWKS JSON>`; beside it `jwks/<p>/lease` =
/// `<held until>` and `jwks/<p>/want` = `<when a refetch was asked for>`, unix secs. Each
/// worker re-parses the document when its cas changes.
pub fn doc_key(p: usize) -> String {
    format!("jwks/{p}/doc")
}

fn lease_key(p: usize) -> String {
    format!("jwks/{p}/lease")
}

fn want_key(p: usize) -> String {
    format!("jwks/{p}/want")
}

/// How long a fetch lease lasts: longer than an HTTP call may take, so two workers never
/// fetch at once, and it also spaces out retries after a failure.
pub const LEASE_SECS: u64 = 10;

/// The HTTP call's timeout.
pub const FETCH_TIMEOUT_MS: u64 = 5_000;

fn read_u64(store: &impl SharedStore, key: &str) -> Option<(u64, u32)> {
    let (bytes, cas) = store.get(key)?;
    let n = std::str::from_utf8(&bytes).ok()?.parse().ok()?;
    Some((n, cas))
}

/// The stored document: (cas, fetched at, JSON).
pub fn current(store: &impl SharedStore, p: usize) -> Option<(u32, u64, Vec<u8>)> {
    let (bytes, cas) = store.get(&doc_key(p))?;
    let rest = bytes.strip_prefix(b"1|")?;
    let bar = rest.iter().position(|b| *b == b'|')?;
    let fetched_at = std::str::from_utf8(rest.get(..bar)?).ok()?.parse().ok()?;
    Some((cas, fetched_at, rest.get(bar + 1..)?.to_vec()))
}

/// Makes sure the lease entry exists, so that taking it is always a compare-and-swap
/// (shared data writes an absent key whatever cas is given).
pub fn init(store: &impl SharedStore, p: usize) -> Result<(), StoreError> {
    if store.get(&lease_key(p)).is_none() {
        store.set(&lease_key(p), b"0", 0)?;
    }
    Ok(())
}

/// Whether this worker should fetch now; `true` means it holds the lease. Only when the
/// document is missing, older than `refresh`, or a refetch was asked for (at most once
/// per `min_refetch`), and only if the compare-and-swap on the lease wins: N workers
/// make one HTTP call, not N.
pub fn should_fetch(store: &impl SharedStore, p: usize, cfg: &JwksUrl, now: u64) -> bool {
    let fetched_at = current(store, p).map_or(0, |(_, at, _)| at);
    let wanted = read_u64(store, &want_key(p)).map_or(0, |(w, _)| w);
    let due = fetched_at == 0
        || now >= fetched_at.saturating_add(cfg.refresh_secs)
        || (wanted > fetched_at && now >= fetched_at.saturating_add(cfg.min_refetch_secs));
    if !due {
        return false;
    }
    let Some((held_until, cas)) = read_u64(store, &lease_key(p)) else {
        return false;
    };
    if held_until > now || cas == 0 {
        return false;
    }
    let until = now.saturating_add(LEASE_SECS).to_string();
    store.set(&lease_key(p), until.as_bytes(), cas).is_ok()
}

/// A request met an unknown `kid`: ask for a refetch (written at most once per
/// `min_refetch`, so a flood of bad tokens costs one get each, not a write each).
pub fn want_refetch(store: &impl SharedStore, p: usize, cfg: &JwksUrl, now: u64) {
    let last = read_u64(store, &want_key(p)).map_or(0, |(w, _)| w);
    if now >= last.saturating_add(cfg.min_refetch_secs.max(1)) {
        let _ = store.set(&want_key(p), now.to_string().as_bytes(), 0);
    }
}

/// Stores a fetched document if it parses with at least one usable key; otherwise keeps the last good one and says
/// why. Returns the number of usable keys.
pub fn store_fetched(
    store: &impl SharedStore,
    p: usize,
    body: &[u8],
    rsa_alg: Alg,
    now: u64,
) -> Result<usize, String> {
    let jwks: Jwks = parse_jwks(body, Some(rsa_alg)).map_err(|e| e.to_string())?;
    if jwks.keys.is_empty() {
        return Err(format!(
            "the JWKS has no usable key ({} skipped)",
            jwks.skipped.len()
        ));
    }
    let mut value = format!("1|{now}|").into_bytes();
    value.extend_from_slice(body);
    store
        .set(&doc_key(p), &value, 0)
        .map_err(|e| format!("writing the JWKS to shared data: {e:?}"))?;
    Ok(jwks.keys.len())
}

/// What a worker's tick finds in provider `p`'s stored JWKS ([`Picked::pick_up`]).
#[derive(Debug)]
pub enum PickUp {
    /// Nothing stored, or the document the worker's keys were built from.
    Same,
    /// A document the worker has not used: the provider's keys are now `static_keys`
    /// followed by its keys.
    Keys(Vec<Key>),
    /// A new document that does not parse (it is not tried again until it changes).
    Unreadable(JwkError),
}

/// Per provider, the version (cas) of the stored JWKS a worker built its keys from.
#[derive(Clone, Debug, Default)]
pub struct Picked(Vec<u32>);

impl Picked {
    /// Provider `p`'s keys if another worker (or this one) stored a new JWKS for it.
    /// `rsa_alg` is the provider's; `static_keys` its keys from the policy and the
    /// environment, which a fetched set adds to.
    pub fn pick_up(
        &mut self,
        store: &impl SharedStore,
        p: usize,
        rsa_alg: Alg,
        static_keys: &[Key],
    ) -> PickUp {
        let Some((cas, _, doc)) = current(store, p) else {
            return PickUp::Same;
        };
        if self.0.len() <= p {
            self.0.resize(p + 1, 0);
        }
        match self.0.get_mut(p) {
            Some(seen) if *seen != cas => *seen = cas,
            _ => return PickUp::Same,
        }
        match parse_jwks(&doc, Some(rsa_alg)) {
            Ok(jwks) => PickUp::Keys(static_keys.iter().cloned().chain(jwks.keys).collect()),
            Err(e) => PickUp::Unreadable(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed-1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn cfg() -> JwksUrl {
        JwksUrl {
            cluster: "auth".into(),
            path: "/jwks".into(),
            authority: "auth".into(),
            refresh_secs: 600,
            min_refetch_secs: 30,
        }
    }

    #[test]
    fn a_worker_picks_up_each_stored_jwks_once_after_its_static_keys() {
        let store = MemoryStore::default();
        let mut picked = Picked::default();
        let fixed = [crate::authn::jwt::test_tokens::public_key(
            Alg::ES256,
            Some("static"),
        )];
        assert!(matches!(
            picked.pick_up(&store, 1, Alg::RS256, &fixed),
            PickUp::Same
        ));
        store_fetched(&store, 1, JWKS.as_bytes(), Alg::RS256, 100).unwrap();
        let PickUp::Keys(keys) = picked.pick_up(&store, 1, Alg::RS256, &fixed) else {
            panic!("a new document");
        };
        let kids: Vec<Option<&str>> = keys.iter().map(|k| k.kid()).collect();
        assert_eq!(kids, [Some("static"), Some("ed-1")]);
        assert!(matches!(
            picked.pick_up(&store, 1, Alg::RS256, &fixed),
            PickUp::Same
        ));
        assert!(matches!(
            picked.pick_up(&store, 0, Alg::RS256, &[]),
            PickUp::Same
        ));
        store.set(&doc_key(1), b"1|200|{not json", 0).unwrap();
        assert!(matches!(
            picked.pick_up(&store, 1, Alg::RS256, &fixed),
            PickUp::Unreadable(_)
        ));
        assert!(
            matches!(picked.pick_up(&store, 1, Alg::RS256, &fixed), PickUp::Same),
            "a bad document is not parsed again on every tick"
        );
    }

    #[test]
    fn only_one_worker_wins_the_lease() {
        let store = MemoryStore::default();
        init(&store, 0).unwrap();
        assert!(should_fetch(&store, 0, &cfg(), 100));
        assert!(!should_fetch(&store, 0, &cfg(), 100), "the lease is held");
        assert!(!should_fetch(&store, 0, &cfg(), 109));
        assert!(
            should_fetch(&store, 0, &cfg(), 110),
            "a lapsed lease is taken again"
        );
    }

    #[test]
    fn each_provider_has_its_own_document_and_lease() {
        let store = MemoryStore::default();
        init(&store, 0).unwrap();
        init(&store, 1).unwrap();
        assert!(should_fetch(&store, 0, &cfg(), 100));
        assert!(
            should_fetch(&store, 1, &cfg(), 100),
            "another provider's lease"
        );
        store_fetched(&store, 1, JWKS.as_bytes(), Alg::RS256, 100).unwrap();
        assert!(
            current(&store, 0).is_none(),
            "provider 1's keys are not provider 0's"
        );
        assert_eq!(current(&store, 1).unwrap().1, 100);
    }

    #[test]
    fn without_init_nobody_fetches_rather_than_everybody() {
        let store = MemoryStore::default();
        assert!(!should_fetch(&store, 0, &cfg(), 100));
    }

    #[test]
    fn a_good_document_is_kept_until_refresh_and_a_bad_one_never_replaces_it() {
        let store = MemoryStore::default();
        init(&store, 0).unwrap();
        assert_eq!(
            store_fetched(&store, 0, JWKS.as_bytes(), Alg::RS256, 100),
            Ok(1)
        );
        let (_, at, doc) = current(&store, 0).unwrap();
        assert_eq!((at, doc.as_slice()), (100, JWKS.as_bytes()));
        assert!(!should_fetch(&store, 0, &cfg(), 699), "fresh until refresh");
        assert!(store_fetched(&store, 0, b"<html>oops</html>", Alg::RS256, 700).is_err());
        assert!(store_fetched(&store, 0, br#"{"keys":[]}"#, Alg::RS256, 700).is_err());
        assert_eq!(
            current(&store, 0).unwrap().1,
            100,
            "the last good document stays"
        );
        assert!(should_fetch(&store, 0, &cfg(), 700));
    }

    #[test]
    fn an_unknown_kid_brings_the_refetch_forward_but_not_more_than_once_per_interval() {
        let store = MemoryStore::default();
        init(&store, 0).unwrap();
        store_fetched(&store, 0, JWKS.as_bytes(), Alg::RS256, 100).unwrap();
        want_refetch(&store, 0, &cfg(), 110);
        assert!(
            !should_fetch(&store, 0, &cfg(), 120),
            "min_refetch not yet passed"
        );
        assert!(should_fetch(&store, 0, &cfg(), 130));
        // Many unknown kids within the interval write once.
        let before = store.get(&want_key(0)).unwrap().1;
        want_refetch(&store, 0, &cfg(), 131);
        assert_eq!(store.get(&want_key(0)).unwrap().1, before);
    }
}
