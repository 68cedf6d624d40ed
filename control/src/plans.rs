//! The plans a key may be issued on, and the check `POST /v1/keys` and rotation make.
//!
//! The proxies refuse a credential whose plan their policy does not know, so a key issued
//! on a mistyped, renamed or dropped plan would be refused on every request. The service
//! therefore issues keys only on plans it knows, from the first of:
//!
//! 1. `GATEHOUSE_PLANS`, comma-separated names (with a policy, each must be one of the
//!    policy's plans: start-up fails otherwise);
//! 2. the policy's plans (`--policy FILE`);
//! 3. the plugin's default plans ([`gatehouse_core::policy::DEFAULT_PLANS`]).
//!
//! Keys already stored on another plan are left as they are; rotating one is refused, so
//! no new secret is issued on a plan the proxies would refuse.

use gatehouse_core::authn::api_key::is_valid_id;
use gatehouse_core::policy::{DEFAULT_PLANS, Policy};

/// The configured plan names, in the order they were given, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plans(Vec<String>);

impl Default for Plans {
    /// The plugin's default plans.
    fn default() -> Plans {
        Plans(DEFAULT_PLANS.iter().map(|(n, _)| n.to_string()).collect())
    }
}

impl Plans {
    /// From `GATEHOUSE_PLANS` (`env`) and the policy, as the module doc says. The error
    /// names the setting and what is wrong with it.
    pub fn resolve(env: Option<&str>, policy: Option<&Policy>) -> Result<Plans, String> {
        let Some(list) = env else {
            return Ok(match policy {
                Some(p) => Plans(p.plans.iter().map(|plan| plan.name.clone()).collect()),
                None => Plans::default(),
            });
        };
        let mut names: Vec<String> = Vec::new();
        for name in list.split(',').map(str::trim) {
            if !is_valid_id(name) {
                return Err(format!(
                    "GATEHOUSE_PLANS must be plan names separated by commas, each 1 to 128 of \
                     A-Z a-z 0-9 . _ : @ + -, got {list:?}"
                ));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        if let Some(p) = policy {
            let unknown: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| p.plan(n).is_none())
                .collect();
            if !unknown.is_empty() {
                let known: Vec<&str> = p.plans.iter().map(|plan| plan.name.as_str()).collect();
                return Err(format!(
                    "GATEHOUSE_PLANS names plans the policy does not have: [{}]; the policy's \
                     plans are [{}] (the proxies would refuse keys on the others)",
                    unknown.join(", "),
                    known.join(", ")
                ));
            }
        }
        Ok(Plans(names))
    }

    pub fn contains(&self, plan: &str) -> bool {
        self.0.iter().any(|p| p == plan)
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// `[free, solo, team, enterprise]`, for messages.
    pub fn listed(&self) -> String {
        format!("[{}]", self.0.join(", "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(plans: &str) -> Policy {
        let yaml = format!("version: 1\n{plans}routes:\n  - match: {{ path_prefix: /v1/ }}\n");
        gatehouse_core::policy::load_yaml("p.yaml", &yaml)
            .unwrap()
            .policy
    }

    #[test]
    fn without_a_setting_or_policy_the_plugins_defaults() {
        let plans = Plans::resolve(None, None).unwrap();
        assert_eq!(plans.listed(), "[free, solo, team, enterprise]");
        assert!(plans.contains("team") && !plans.contains("pro"));
    }

    #[test]
    fn a_policy_gives_its_own_plans() {
        let p = policy("plans:\n  gold: { requests_per_minute: 10 }\n");
        let plans = Plans::resolve(None, Some(&p)).unwrap();
        assert!(plans.contains("gold"));
        assert_eq!(
            plans.names(),
            p.plans.iter().map(|x| x.name.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_setting_wins_and_is_trimmed_and_deduplicated() {
        let plans = Plans::resolve(Some(" gold, silver ,gold"), None).unwrap();
        assert_eq!(plans.listed(), "[gold, silver]");
        assert!(!plans.contains("team"));
    }

    #[test]
    fn a_malformed_setting_is_refused() {
        for bad in ["", "gold,,silver", "gold,", "go ld", "gold;silver"] {
            let err = Plans::resolve(Some(bad), None).unwrap_err();
            assert!(
                err.contains("GATEHOUSE_PLANS must be plan names"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn with_a_policy_the_setting_may_name_only_its_plans() {
        let p = policy("plans:\n  gold: { requests_per_minute: 10 }\n");
        let plans = Plans::resolve(Some("gold,team"), Some(&p)).unwrap();
        assert_eq!(plans.listed(), "[gold, team]");
        let err = Plans::resolve(Some("gold,platinum,pro"), Some(&p)).unwrap_err();
        assert!(
            err.contains("GATEHOUSE_PLANS names plans the policy does not have: [platinum, pro]"),
            "{err}"
        );
        assert!(err.contains("gold"), "{err}");
    }
}
