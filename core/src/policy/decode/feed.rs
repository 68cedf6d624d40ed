//! Decoding of the `feed` section (type in [`crate::policy::FeedPolicy`]).

use super::{Decoder, join};
use crate::policy::tree::Node;
use crate::policy::{FeedPolicy, OnStale};

/// The server holds a long poll at most this long (FEED.md).
const MAX_WAIT_SECS: u64 = 60;

impl Decoder {
    fn non_empty(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.is_empty() {
            self.error(path, node.pos, "must not be empty");
            return None;
        }
        Some(s.to_string())
    }

    pub(super) fn feed(&mut self, node: &Node, path: &str) -> Option<FeedPolicy> {
        let f = self.object(
            node,
            path,
            &[
                "cluster",
                "authority",
                "path",
                "token_env",
                "interval",
                "wait",
                "staleness",
                "on_stale",
            ],
        )?;
        let cluster = self
            .required(&f, path, "cluster")
            .and_then(|n| self.non_empty(n, &join(path, "cluster")));
        let authority = f
            .get("authority")
            .map(|n| self.non_empty(n, &join(path, "authority")));
        let url_path = match f.get("path") {
            None => Some("/v1/cache".to_string()),
            Some(n) => {
                let pp = join(path, "path");
                match self.string(n, &pp) {
                    Some(s) if s.starts_with('/') && !s.contains('?') && !s.contains('#') => {
                        Some(s.to_string())
                    }
                    Some(_) => {
                        self.error(&pp, n.pos, "must start with / and have no query");
                        None
                    }
                    None => None,
                }
            }
        };
        let token_env = self.required(&f, path, "token_env").and_then(|n| {
            let ep = join(path, "token_env");
            let name = self.string(n, &ep)?;
            let valid = !name.is_empty()
                && name.len() <= 128
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                self.error(
                    &ep,
                    n.pos,
                    "must be an environment variable name (A-Z a-z 0-9 _)",
                );
                return None;
            }
            Some(name.to_string())
        });
        let interval = match f.get("interval") {
            None => Some(1),
            Some(n) => {
                let ip = join(path, "interval");
                match self.duration(n, &ip, 3600) {
                    Some(0) => {
                        self.error(&ip, n.pos, "must be at least 1s");
                        None
                    }
                    other => other,
                }
            }
        };
        let wait = match f.get("wait") {
            None => Some(20),
            Some(n) => self.duration(n, &join(path, "wait"), MAX_WAIT_SECS),
        };
        let staleness = match f.get("staleness") {
            None => Some(30),
            Some(n) => self.duration(n, &join(path, "staleness"), 86_400),
        };
        let on_stale = match f.get("on_stale") {
            None => Some(OnStale::FailClosed),
            Some(n) => {
                let op = join(path, "on_stale");
                match self.string(n, &op) {
                    Some("fail_closed") => Some(OnStale::FailClosed),
                    Some("keep_serving") => Some(OnStale::KeepServing),
                    Some(other) => {
                        self.error(
                            &op,
                            n.pos,
                            format!(
                                "unknown value '{other}'; expected one of [fail_closed, keep_serving]"
                            ),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        // A long poll that finds nothing new answers after `wait`, and the next one
        // starts on the next tick: a healthy cache gets that old between two answers.
        if let (Some(i), Some(w), Some(s)) = (interval, wait, staleness)
            && s <= i + w
        {
            let pos = f.get("staleness").and_then(|n| n.pos).or(node.pos);
            self.error(
                &join(path, "staleness"),
                pos,
                format!(
                    "must be longer than interval + wait ({}s): a healthy long poll leaves the cache that old",
                    i + w
                ),
            );
            return None;
        }
        let cluster = cluster?;
        let authority = match authority {
            None => cluster.clone(),
            Some(a) => a?,
        };
        Some(FeedPolicy {
            cluster,
            authority,
            path: url_path?,
            token_env: token_env?,
            interval_secs: interval?,
            wait_secs: wait?,
            staleness_secs: staleness?,
            on_stale: on_stale?,
        })
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use crate::policy::{OnStale, load_yaml};

    fn policy(feed: &str) -> Result<crate::policy::Policy, Vec<String>> {
        let src = format!("version: 1\nroutes:\n  - match: {{ path_prefix: /v1/ }}\n{feed}");
        load_yaml("p.yaml", &src)
            .map(|l| l.policy)
            .map_err(|e| e.to_string().lines().map(str::to_owned).collect())
    }

    #[test]
    fn a_minimal_feed_takes_the_documented_defaults() {
        let p = policy("feed: { cluster: control, token_env: FEED_TOKEN }\n").unwrap();
        let f = p.feed.clone().unwrap();
        assert_eq!(f.authority, "control");
        assert_eq!(f.path, "/v1/cache");
        assert_eq!(
            (f.interval_secs, f.wait_secs, f.staleness_secs),
            (1, 20, 30)
        );
        assert_eq!(f.on_stale, OnStale::FailClosed);
        assert_eq!(p.secret_env_names(), vec!["FEED_TOKEN".to_string()]);
        assert_eq!(policy("").unwrap().feed, None);
    }

    #[test]
    fn every_field_can_be_set() {
        let f = policy(concat!(
            "feed:\n  cluster: c\n  authority: control.internal\n  path: /feed\n",
            "  token_env: T\n  interval: 2s\n  wait: 10\n  staleness: 1m\n",
            "  on_stale: keep_serving\n",
        ))
        .unwrap()
        .feed
        .unwrap();
        assert_eq!(f.authority, "control.internal");
        assert_eq!(f.path, "/feed");
        assert_eq!(
            (f.interval_secs, f.wait_secs, f.staleness_secs),
            (2, 10, 60)
        );
        assert_eq!(f.on_stale, OnStale::KeepServing);
    }

    #[test]
    fn feed_mistakes_are_reported_with_their_position() {
        let errs = policy(concat!(
            "feed:\n  path: cache\n  token_env: \"A B\"\n  wait: 2m\n",
            "  on_stale: maybe\n  colour: red\n",
        ))
        .unwrap_err();
        let joined = errs.join("\n");
        for expected in [
            "p.yaml:5:3: feed: missing required field 'cluster'",
            "p.yaml:5:9: feed.path: must start with / and have no query",
            "p.yaml:6:14: feed.token_env: must be an environment variable name",
            "p.yaml:7:9: feed.wait: at most 60 seconds",
            "p.yaml:8:13: feed.on_stale: unknown value 'maybe'; expected one of [fail_closed, keep_serving]",
            "p.yaml:9:3: feed.colour: unknown field 'colour'",
        ] {
            assert!(
                joined.contains(expected),
                "missing {expected:?} in:\n{joined}"
            );
        }
        let errs = policy("feed: { cluster: c, staleness: 20s }\n").unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("missing required field 'token_env'")),
            "{errs:?}"
        );
        let errs = policy("feed: { cluster: c, token_env: T, staleness: 21s }\n").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "p.yaml:4:46: feed.staleness: must be longer than interval + wait (21s)"
            ),
            "{errs:?}"
        );
    }
}
