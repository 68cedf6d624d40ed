//! How long a JWT revocation must last: the proxies' bound on a token's life, learned from
//! the policy (`--policy`) or the environment, and the `until` it gives each entry.
//!
//! The plugin accepts a token while `now < exp + L` (`L`: the leeway for clock skew), and
//! with a lifetime bound `D` (`jwt.max_token_lifetime`) a token's effective `exp` is at
//! most `iat + D`; it refuses `iat > now + L`. So:
//!
//! - a user's watermark written at `T` ("tokens issued before `T` are revoked") covers
//!   tokens with `iat < T`, all of which are refused by the plugin itself from
//!   `T + D + L` on: the entry lasts until `T + A`, `A = D + L` ([`TokenLifetime::acceptance_secs`]);
//! - a jti entry for a token whose `exp` is `E` is needed until `E + L`; and since a token
//!   a proxy could accept at `T` has `iat <= T + L`, never past `T + L + A`, so a made-up
//!   `expires_at` (year 9999) cannot keep an entry forever. That clamp assumes no issuer's
//!   clock runs ahead of this service's by more than `L` (the proxies refuse such tokens
//!   until their clocks catch up).
//!
//! With an unbounded lifetime (`max_token_lifetime: unbounded` in any provider), `A` is
//! unbounded: a watermark never ends (`until: null`) and a jti entry lasts until `E + L`.
//!
//! Where `D` and `L` come from: the policy's JWT providers (the longest `D + L` of any,
//! and the largest `L`), or without a policy (or one without JWT providers)
//! `GATEHOUSE_MAX_JWT_LIFETIME` (default 24 h, the plugin's default) and
//! `GATEHOUSE_JWT_LEEWAY` (default 60 s, the plugin's default). Given with a policy, the
//! settings may only lengthen what the policy says: a shorter one stops start-up, since
//! revocations would then end while tokens they cover still work.

use gatehouse_core::authn::jwt::{DEFAULT_LEEWAY_SECS, DEFAULT_MAX_LIFETIME_SECS};
use gatehouse_core::policy::auth::JwtPolicy;

/// What revocation entries are computed from; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLifetime {
    /// `D + L`: how long after its `iat` a token can still be accepted. `None`: unbounded.
    pub acceptance_secs: Option<u64>,
    /// `L`: the clock skew the proxies allow on `exp` and `iat`.
    pub leeway_secs: u64,
}

impl Default for TokenLifetime {
    /// The plugin's defaults: 24 h and 60 s.
    fn default() -> TokenLifetime {
        TokenLifetime {
            acceptance_secs: Some(DEFAULT_MAX_LIFETIME_SECS + DEFAULT_LEEWAY_SECS),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// A lifetime setting: seconds, or `None` for unbounded.
pub type Lifetime = Option<u64>;

fn add(t: i64, secs: u64) -> i64 {
    t.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn shown(secs: Lifetime) -> String {
    match secs {
        None => "unbounded".to_string(),
        Some(s) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        Some(s) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        Some(s) => format!("{s}s"),
    }
}

impl TokenLifetime {
    /// From the policy's JWT providers (if it has any) and the two settings, as the module
    /// doc says; the error names the setting and the provider it falls short of.
    pub fn resolve(
        jwt: Option<&JwtPolicy>,
        env_lifetime: Option<Lifetime>,
        env_leeway: Option<u64>,
    ) -> Result<TokenLifetime, String> {
        let providers = jwt.map_or(&[][..], |j| j.providers.as_slice());
        if providers.is_empty() {
            let lifetime = env_lifetime.unwrap_or(Some(DEFAULT_MAX_LIFETIME_SECS));
            let leeway = env_leeway.unwrap_or(DEFAULT_LEEWAY_SECS);
            return Ok(TokenLifetime {
                acceptance_secs: lifetime.map(|d| d.saturating_add(leeway)),
                leeway_secs: leeway,
            });
        }
        let mut problems = Vec::new();
        for p in providers {
            let policy_lifetime = p.rules.max_lifetime_secs;
            if let Some(env) = env_lifetime {
                let shorter = match (env, policy_lifetime) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(e), Some(d)) => e < d,
                };
                if shorter {
                    problems.push(format!(
                        "GATEHOUSE_MAX_JWT_LIFETIME ({}) is shorter than the policy's {}.max_token_lifetime ({})",
                        shown(env),
                        p.path,
                        shown(policy_lifetime)
                    ));
                }
            }
            if let Some(env) = env_leeway
                && env < p.rules.leeway_secs
            {
                problems.push(format!(
                    "GATEHOUSE_JWT_LEEWAY ({}) is shorter than the policy's {}.leeway ({})",
                    shown(Some(env)),
                    p.path,
                    shown(Some(p.rules.leeway_secs))
                ));
            }
        }
        if !problems.is_empty() {
            return Err(format!(
                "{}: a revocation would end while tokens it covers are still accepted; raise \
                 the setting or leave it unset (the policy's bound is used then)",
                problems.join("; ")
            ));
        }
        let policy_leeway = providers
            .iter()
            .map(|p| p.rules.leeway_secs)
            .max()
            .unwrap_or(DEFAULT_LEEWAY_SECS);
        let leeway = env_leeway.unwrap_or(policy_leeway);
        let acceptance_secs = match (env_lifetime, env_leeway) {
            (None, None) => jwt.and_then(JwtPolicy::longest_acceptance_secs),
            _ => {
                // Each at least the policy's largest: the sum bounds every provider's.
                let lifetime = env_lifetime.unwrap_or_else(|| {
                    providers
                        .iter()
                        .try_fold(0, |m, p| p.rules.max_lifetime_secs.map(|d| d.max(m)))
                });
                lifetime.map(|d| d.saturating_add(leeway))
            }
        };
        Ok(TokenLifetime {
            acceptance_secs,
            leeway_secs: leeway,
        })
    }

    /// The end of a user's watermark written at `now`; `None`: never.
    pub fn watermark_until(&self, now: i64) -> Option<i64> {
        self.acceptance_secs.map(|a| add(now, a))
    }

    /// The end of a jti entry written at `now` for a token whose `exp` is `expires_at`.
    pub fn jti_until(&self, now: i64, expires_at: i64) -> i64 {
        let needed = add(expires_at, self.leeway_secs);
        match self.acceptance_secs {
            Some(a) => needed.min(add(add(now, self.leeway_secs), a)),
            None => needed,
        }
    }
}

/// `24h`, `90s`, or `unbounded`: a `GATEHOUSE_MAX_JWT_LIFETIME` value.
pub fn parse_lifetime(s: &str) -> Option<Lifetime> {
    if s.trim() == "unbounded" {
        return Some(None);
    }
    crate::config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .map(|d| Some(d.as_secs()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The JWT section of a policy with these providers' `max_token_lifetime` and
    /// `leeway` (`None`: left out, the defaults).
    fn jwt(providers: &[(Option<&str>, Option<&str>)]) -> JwtPolicy {
        let mut yaml = "version: 1\njwt:\n  providers:\n".to_string();
        for (i, (lifetime, leeway)) in providers.iter().enumerate() {
            yaml.push_str(&format!(
                "    - name: p{i}\n      issuers: [https://i{i}.example]\n      keys:\n        \
                 - {{ kid: k{i}, alg: HS256, secret_env: K{i} }}\n"
            ));
            if let Some(l) = lifetime {
                yaml.push_str(&format!("      max_token_lifetime: {l}\n"));
            }
            if let Some(l) = leeway {
                yaml.push_str(&format!("      leeway: {l}\n"));
            }
        }
        yaml.push_str("routes:\n  - match: { path_prefix: /v1/ }\n");
        match gatehouse_core::policy::load_yaml("p.yaml", &yaml) {
            Ok(p) => p.policy.jwt.unwrap(),
            Err(e) => panic!("{e}\n{yaml}"),
        }
    }

    const T: i64 = 1_767_225_600;

    #[test]
    fn without_a_policy_the_plugins_defaults_or_the_settings() {
        let t = TokenLifetime::resolve(None, None, None).unwrap();
        assert_eq!(t, TokenLifetime::default());
        assert_eq!(t.acceptance_secs, Some(86_400 + 60));
        let t = TokenLifetime::resolve(None, Some(Some(3600)), Some(30)).unwrap();
        assert_eq!(t.acceptance_secs, Some(3630));
        assert_eq!(t.leeway_secs, 30);
        let t = TokenLifetime::resolve(None, Some(None), None).unwrap();
        assert_eq!(t.acceptance_secs, None);
    }

    #[test]
    fn a_policy_gives_its_longest_provider() {
        let j = jwt(&[(Some("1h"), Some("30s")), (Some("2h"), None)]);
        let t = TokenLifetime::resolve(Some(&j), None, None).unwrap();
        assert_eq!(t.acceptance_secs, Some(7200 + 60));
        assert_eq!(t.leeway_secs, 60);
        // Defaults: 24 h and 60 s.
        let t = TokenLifetime::resolve(Some(&jwt(&[(None, None)])), None, None).unwrap();
        assert_eq!(t, TokenLifetime::default());
    }

    #[test]
    fn one_unbounded_provider_makes_revocations_last_forever() {
        let j = jwt(&[(Some("1h"), None), (Some("unbounded"), None)]);
        let t = TokenLifetime::resolve(Some(&j), None, None).unwrap();
        assert_eq!(t.acceptance_secs, None);
        assert_eq!(t.watermark_until(T), None);
        // A jti entry still ends with its token.
        assert_eq!(t.jti_until(T, T + 600), T + 660);
    }

    #[test]
    fn settings_shorter_than_the_policy_stop_start_up() {
        let j = jwt(&[(Some("1h"), None), (Some("2h"), Some("2m"))]);
        let err = TokenLifetime::resolve(Some(&j), Some(Some(5400)), None).unwrap_err();
        assert!(
            err.contains(
                "GATEHOUSE_MAX_JWT_LIFETIME (90m) is shorter than the policy's \
                 jwt.providers[1].max_token_lifetime (2h)"
            ),
            "{err}"
        );
        assert!(!err.contains("providers[0]"), "{err}");
        let err = TokenLifetime::resolve(Some(&j), None, Some(60)).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_JWT_LEEWAY (1m) is shorter than the policy's jwt.providers[1].leeway (2m)"),
            "{err}"
        );
        let unbounded = jwt(&[(Some("unbounded"), None)]);
        let err = TokenLifetime::resolve(Some(&unbounded), Some(Some(86_400)), None).unwrap_err();
        assert!(
            err.contains("(24h) is shorter than") && err.contains("(unbounded)"),
            "{err}"
        );
    }

    #[test]
    fn longer_settings_lengthen_what_the_policy_says() {
        let j = jwt(&[(Some("1h"), None)]);
        let t = TokenLifetime::resolve(Some(&j), Some(Some(7200)), None).unwrap();
        assert_eq!(t.acceptance_secs, Some(7260));
        let t = TokenLifetime::resolve(Some(&j), None, Some(300)).unwrap();
        assert_eq!(t.acceptance_secs, Some(3900));
        assert_eq!(t.leeway_secs, 300);
        let t = TokenLifetime::resolve(Some(&j), Some(None), None).unwrap();
        assert_eq!(t.acceptance_secs, None);
    }

    #[test]
    fn a_watermark_lasts_lifetime_plus_leeway() {
        let t = TokenLifetime::resolve(None, Some(Some(3600)), Some(60)).unwrap();
        assert_eq!(t.watermark_until(T), Some(T + 3660));
    }

    #[test]
    fn a_jti_entry_lasts_to_exp_plus_leeway_and_never_past_the_longest_token() {
        let t = TokenLifetime::resolve(None, Some(Some(3600)), Some(60)).unwrap();
        assert_eq!(t.jti_until(T, T + 600), T + 660);
        // Already expired: kept for the leeway (a proxy may still take it that long).
        assert_eq!(t.jti_until(T, T - 30), T + 30);
        // No token a proxy could accept now lives past now + L + D + L.
        assert_eq!(t.jti_until(T, T + 10 * 86_400), T + 60 + 3660);
        assert_eq!(t.jti_until(T, i64::MAX), T + 60 + 3660);
    }

    #[test]
    fn lifetimes_parse_as_durations_or_unbounded() {
        assert_eq!(parse_lifetime("24h"), Some(Some(86_400)));
        assert_eq!(parse_lifetime("unbounded"), Some(None));
        assert_eq!(parse_lifetime("0s"), None);
        assert_eq!(parse_lifetime("forever"), None);
    }
}
