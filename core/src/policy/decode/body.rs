//! Decoding of the `body` section (top level and per route) and of routes' `webhook`
//! (types in [`crate::body`] and [`crate::body::webhook`]). Fields and the route
//! override rule: `docs/policy.md#body-limits`.

use super::auth::parse_duration_secs;
use super::{Decoder, Fields, field_pos, join};
use crate::body::webhook::{
    Algorithm, DEFAULT_REPLAY_WINDOW_SECS, DEFAULT_TOLERANCE_SECS, Encoding, Generic, Provider,
    Template, Webhook,
};
use crate::body::{BodyPolicy, MAX_BYTES_LIMIT, MAX_HELD_BYTES};
use crate::levers::Mode;
use crate::policy::tree::Pos;
use crate::policy::tree::{Node, Value};

/// `64KB`, `1MB`, `512`, `2 GiB`: a size in bytes (binary units). `None` when it is not
/// one or does not fit. Units `B`, `KB`, `MB`, `GB` with `KB` = 1024 bytes; `KiB`,
/// `MiB`, `GiB` mean the same, and units are case-insensitive.
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let s = text.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A size written back the way a person would: `64KB`, `1MB`, or bytes.
fn show_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KB", n >> 10),
        1 => "1 byte".to_string(),
        n => format!("{n} bytes"),
    }
}

/// A header name as a policy names it, lower-cased: letters, digits, `-` and `_`.
fn header_name(s: &str) -> Option<String> {
    let name = s.to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(name)
}

fn env_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The position of a field's key (where a reader looks for it), else of its value.
fn key_pos(f: &Fields<'_>, name: &str) -> Option<Pos> {
    f.entries
        .iter()
        .find(|(k, _)| k.name == name)
        .and_then(|(k, v)| k.pos.or(v.pos))
}

/// A mapping's value for `name`, if it has the field.
fn field_node<'a>(node: &'a Node, name: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(entries) => entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v),
        _ => None,
    }
}

/// `replay_window`'s bounds: from the default tolerance (a shorter window would remember
/// less than GitHub routes did before it existed) to 30 days.
const REPLAY_WINDOW_SECS: std::ops::RangeInclusive<u64> = 300..=30 * 86_400;

/// What a webhook's `replay_cache` field says.
enum ReplayCache {
    /// Absent: on where the provider signs no timestamp, else off.
    Unsaid,
    /// `false`.
    Off,
    /// A mapping, with `slots` or without (the provider's default size).
    On(Option<u32>),
}

/// The fields only `provider: generic` has.
const GENERIC_FIELDS: [&str; 6] = [
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "timestamp_header",
    "signed_payload",
];

impl Decoder {
    fn size(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let n = match &node.value {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Str(s) => parse_size(s),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.error(
                    path,
                    node.pos,
                    format!("must be between {} and {}", show_size(min), show_size(max)),
                );
                None
            }
            None => {
                self.error(
                    path,
                    node.pos,
                    "expected a size such as 65536, 64KB or 1MB (KB = 1024 bytes)",
                );
                None
            }
        }
    }

    fn count_cap(&mut self, node: &Node, path: &str) -> Option<u64> {
        self.integer(node, path, 1, 1_000_000_000)
            .and_then(|v| u64::try_from(v).ok())
    }

    /// A `body` section over `base` (the built-in defaults for the top level, the
    /// top-level section for a route).
    pub(super) fn body_policy(
        &mut self,
        node: &Node,
        path: &str,
        base: &BodyPolicy,
    ) -> Option<BodyPolicy> {
        let f = self.object(node, path, &["max_bytes", "json"])?;
        self.body_fields(&f, path, base)
    }

    /// The fields of a `body` section other than a route's `mode`.
    fn body_fields(&mut self, f: &Fields<'_>, path: &str, base: &BodyPolicy) -> Option<BodyPolicy> {
        let max_bytes = match f.get("max_bytes") {
            None => Some(base.max_bytes),
            Some(n) => self.size(n, &join(path, "max_bytes"), 1, MAX_BYTES_LIMIT),
        };
        let json = match f.get("json") {
            None => Some(base.json),
            Some(n) => {
                let jp = join(path, "json");
                match &n.value {
                    Value::Bool(false) => Some(None),
                    Value::Bool(true) => Some(Some(base.json.unwrap_or_default())),
                    _ => self
                        .object(n, &jp, &["max_string_bytes", "max_array_items"])
                        .and_then(|j| {
                            let mut caps = base.json.unwrap_or_default();
                            let mut ok = true;
                            if let Some(v) = j.get("max_string_bytes") {
                                match self.size(
                                    v,
                                    &join(&jp, "max_string_bytes"),
                                    1,
                                    MAX_BYTES_LIMIT,
                                ) {
                                    Some(s) => caps.max_string_bytes = s,
                                    None => ok = false,
                                }
                            }
                            if let Some(v) = j.get("max_array_items") {
                                match self.count_cap(v, &join(&jp, "max_array_items")) {
                                    Some(c) => caps.max_array_items = c,
                                    None => ok = false,
                                }
                            }
                            ok.then_some(Some(caps))
                        }),
                }
            }
        };
        Some(BodyPolicy {
            max_bytes: max_bytes?,
            json: json?,
        })
    }

    /// A route's `body` and `webhook`, with the rule that a route holding its body holds
    /// at most [`MAX_HELD_BYTES`].
    pub(super) fn route_body(
        &mut self,
        f: &Fields<'_>,
        path: &str,
        base: &BodyPolicy,
    ) -> Option<(BodyPolicy, Option<Webhook>, Mode, Mode)> {
        let (body, body_mode) = match f.get("body") {
            None => (Some(*base), Some(Mode::Enforce)),
            Some(n) => {
                let bp = join(path, "body");
                match self.object(n, &bp, &["max_bytes", "json", "mode"]) {
                    Some(b) => {
                        let mode = match b.get("mode") {
                            None => Some(Mode::Enforce),
                            Some(m) => self.mode(m, &join(&bp, "mode")),
                        };
                        (self.body_fields(&b, &bp, base), mode)
                    }
                    None => (None, None),
                }
            }
        };
        let (webhook, webhook_mode) = match f.get("webhook") {
            None => (Some(None), Some(Mode::Enforce)),
            Some(n) => {
                let wp = join(path, "webhook");
                let mode = match n.value {
                    Value::Map(_) => match field_node(n, "mode") {
                        None => Some(Mode::Enforce),
                        Some(m) => self.mode(m, &join(&wp, "mode")),
                    },
                    _ => Some(Mode::Enforce),
                };
                (self.webhook(n, &wp).map(Some), mode)
            }
        };
        let (body, webhook, body_mode, webhook_mode) = (body?, webhook?, body_mode?, webhook_mode?);
        if (webhook.is_some() || body.json.is_some()) && body.max_bytes > MAX_HELD_BYTES {
            let (field, pos) = match f.get("body").and_then(|b| field_pos(b, "max_bytes")) {
                Some(pos) => (join(path, "body.max_bytes"), Some(pos)),
                None => (path.to_string(), f.node.pos),
            };
            self.error(
                &field,
                pos,
                format!(
                    "a route that holds its body (webhook or json) holds at most {}; this one allows {} (set body.max_bytes on the route)",
                    show_size(MAX_HELD_BYTES),
                    show_size(body.max_bytes)
                ),
            );
            return None;
        }
        Some((body, webhook, body_mode, webhook_mode))
    }

    /// A route's `webhook`. Its replay fields depend on whether the provider signs a
    /// timestamp ([`Provider::signs_timestamp`]): with one, the cache is optional and
    /// remembers a message for `tolerance`, and `replay_window` is refused (a copy outside
    /// the tolerance fails the timestamp check anyway, so a longer memory would only fill
    /// the table); without one, the cache is on unless `replay_cache: false`, remembers a
    /// message for `replay_window`, and `tolerance` has nothing to check (a warning).
    pub(super) fn webhook(&mut self, node: &Node, path: &str) -> Option<Webhook> {
        let mut allowed = vec![
            "mode",
            "provider",
            "secrets_env",
            "tolerance",
            "replay_window",
            "replay_cache",
        ];
        allowed.extend(GENERIC_FIELDS);
        let f = self.object(node, path, &allowed)?;
        let provider_name = self.required(&f, path, "provider").and_then(|n| {
            let pp = join(path, "provider");
            match self.string(n, &pp)? {
                name if Provider::NAMES.contains(&name) => Some(name.to_string()),
                other => {
                    self.error(
                        &pp,
                        n.pos,
                        format!(
                            "unknown provider '{other}'; expected one of [{}]",
                            Provider::NAMES.join(", ")
                        ),
                    );
                    None
                }
            }
        });
        let secrets_env = self.required(&f, path, "secrets_env").and_then(|n| {
            let sp = join(path, "secrets_env");
            let items = self.list(n, &sp)?;
            if items.is_empty() || items.len() > 8 {
                self.error(&sp, n.pos, "name 1 to 8 environment variables");
                return None;
            }
            let mut names: Vec<String> = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{sp}[{i}]");
                match self.string(item, &ip) {
                    Some(s) if !env_name(s) => {
                        self.error(
                            &ip,
                            item.pos,
                            "must be an environment variable name (A-Z a-z 0-9 _); the secret itself never goes in a policy",
                        );
                        ok = false;
                    }
                    Some(s) if names.iter().any(|e| e == s) => {
                        self.error(&ip, item.pos, format!("{s} is named twice"));
                        ok = false;
                    }
                    Some(s) => names.push(s.to_string()),
                    None => ok = false,
                }
            }
            ok.then_some(names)
        });
        let tolerance = match f.get("tolerance") {
            None => Some(DEFAULT_TOLERANCE_SECS),
            Some(n) => self.webhook_duration(
                n,
                &join(path, "tolerance"),
                1..=86_400,
                "from 1s to 1d, such as 5m",
            ),
        };
        let replay_window = match f.get("replay_window") {
            None => Some(None),
            Some(n) => self
                .webhook_duration(
                    n,
                    &join(path, "replay_window"),
                    REPLAY_WINDOW_SECS,
                    "from 5m to 30d, such as 24h",
                )
                .map(Some),
        };
        let replay_cache = match f.get("replay_cache") {
            None => Some(ReplayCache::Unsaid),
            Some(n) if n.value == Value::Bool(false) => Some(ReplayCache::Off),
            Some(n) if !matches!(n.value, Value::Map(_)) => {
                self.error(
                    &join(path, "replay_cache"),
                    n.pos,
                    "expected a mapping such as { slots: 65536 }, or false",
                );
                None
            }
            Some(n) => {
                let rp = join(path, "replay_cache");
                self.object(n, &rp, &["slots"])
                    .and_then(|r| match r.get("slots") {
                        None => Some(ReplayCache::On(None)),
                        Some(s) => self
                            .integer(s, &join(&rp, "slots"), 16, 1_048_576)
                            .and_then(|v| u32::try_from(v).ok())
                            .map(|v| ReplayCache::On(Some(v))),
                    })
            }
        };
        let provider = match provider_name.as_deref() {
            Some("generic") => self.generic(&f, path).map(Provider::Generic),
            Some(name) => {
                let mut ok = true;
                for field in GENERIC_FIELDS {
                    if f.get(field).is_some() {
                        self.error(
                            &join(path, field),
                            key_pos(&f, field),
                            format!(
                                "only for provider: generic; {name} signatures have a fixed format"
                            ),
                        );
                        ok = false;
                    }
                }
                let p = match name {
                    "stripe" => Provider::Stripe,
                    "slack" => Provider::Slack,
                    _ => Provider::Github,
                };
                ok.then_some(p)
            }
            None => None,
        };
        let (provider, replay_window, replay_cache) = (provider?, replay_window?, replay_cache?);
        let replay_slots = if provider.signs_timestamp() {
            if replay_window.is_some() {
                self.error(
                    &join(path, "replay_window"),
                    key_pos(&f, "replay_window"),
                    format!(
                        "only for providers that sign no timestamp (github, or generic without timestamp_header); {} signs one, so a copy older than tolerance already fails and the replay cache remembers each message for tolerance",
                        provider.name()
                    ),
                );
                return None;
            }
            match replay_cache {
                ReplayCache::On(slots) => {
                    Some(slots.unwrap_or(crate::body::replay_cache::DEFAULT_SLOTS))
                }
                ReplayCache::Unsaid | ReplayCache::Off => None,
            }
        } else {
            if f.get("tolerance").is_some() {
                self.warn(
                    &join(path, "tolerance"),
                    key_pos(&f, "tolerance"),
                    format!(
                        "has no effect: {} signs no timestamp to check; an accepted message is remembered for replay_window (default 24h)",
                        provider.name()
                    ),
                );
            }
            match replay_cache {
                ReplayCache::On(slots) => {
                    Some(slots.unwrap_or(crate::body::replay_cache::DEFAULT_WINDOW_SLOTS))
                }
                ReplayCache::Unsaid => Some(crate::body::replay_cache::DEFAULT_WINDOW_SLOTS),
                ReplayCache::Off if replay_window.is_some() => {
                    self.error(
                        &join(path, "replay_window"),
                        key_pos(&f, "replay_window"),
                        "needs the replay cache, which replay_cache: false turns off",
                    );
                    return None;
                }
                ReplayCache::Off => None,
            }
        };
        Some(Webhook {
            provider,
            secrets_env: secrets_env?,
            tolerance_secs: tolerance?,
            replay_window_secs: replay_window.unwrap_or(DEFAULT_REPLAY_WINDOW_SECS),
            replay_slots,
        })
    }

    /// `tolerance` or `replay_window`: a duration string within `range` (seconds).
    fn webhook_duration(
        &mut self,
        n: &Node,
        path: &str,
        range: std::ops::RangeInclusive<u64>,
        expected: &str,
    ) -> Option<u64> {
        let secs = match &n.value {
            Value::Str(s) => parse_duration_secs(s),
            _ => None,
        };
        match secs {
            Some(secs) if range.contains(&secs) => Some(secs),
            _ => {
                self.error(path, n.pos, format!("expected a duration {expected}"));
                None
            }
        }
    }

    fn generic(&mut self, f: &Fields<'_>, path: &str) -> Option<Generic> {
        let header = self.required(f, path, "header").and_then(|n| {
            let hp = join(path, "header");
            let s = self.string(n, &hp)?;
            let name = header_name(s);
            if name.is_none() {
                self.error(
                    &hp,
                    n.pos,
                    "must be an HTTP header name (letters, digits, '-', '_')",
                );
            }
            name
        });
        let algorithm = match f.get("algorithm") {
            None => Some(Algorithm::Sha256),
            Some(n) => {
                let ap = join(path, "algorithm");
                match self.string(n, &ap)? {
                    "sha256" => Some(Algorithm::Sha256),
                    "sha512" => Some(Algorithm::Sha512),
                    other => {
                        self.error(
                            &ap,
                            n.pos,
                            format!(
                                "unknown algorithm '{other}'; expected one of [sha256, sha512]"
                            ),
                        );
                        None
                    }
                }
            }
        };
        let encoding = match f.get("encoding") {
            None => Some(Encoding::Hex),
            Some(n) => {
                let ep = join(path, "encoding");
                match self.string(n, &ep)? {
                    "hex" => Some(Encoding::Hex),
                    "base64" => Some(Encoding::Base64),
                    other => {
                        self.error(
                            &ep,
                            n.pos,
                            format!("unknown encoding '{other}'; expected one of [hex, base64]"),
                        );
                        None
                    }
                }
            }
        };
        let prefix = match f.get("prefix") {
            None => Some(None),
            Some(n) => {
                let pp = join(path, "prefix");
                let s = self.string(n, &pp)?;
                if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                    self.error(&pp, n.pos, "must be 1 to 64 visible ASCII characters");
                    None
                } else {
                    Some(Some(s.to_string()))
                }
            }
        };
        let timestamp_header = match f.get("timestamp_header") {
            None => Some(None),
            Some(n) => {
                let tp = join(path, "timestamp_header");
                let s = self.string(n, &tp)?;
                let name = header_name(s);
                if name.is_none() {
                    self.error(
                        &tp,
                        n.pos,
                        "must be an HTTP header name (letters, digits, '-', '_')",
                    );
                }
                name.map(Some)
            }
        };
        let payload_node = f.get("signed_payload");
        let payload = match payload_node {
            None => Some(None),
            Some(n) => {
                let pp = join(path, "signed_payload");
                let s = self.string(n, &pp)?;
                match Template::parse(s) {
                    Ok(t) => Some(Some(t)),
                    Err(e) => {
                        self.error(&pp, n.pos, e);
                        None
                    }
                }
            }
        };
        let (header, timestamp_header, payload) = (header?, timestamp_header?, payload?);
        // An unsigned timestamp could be changed at will: the window would protect nothing.
        let payload = match (payload, &timestamp_header) {
            (None, None) => Template::parse("{body}").ok()?,
            (None, Some(_)) => Template::parse("{timestamp}.{body}").ok()?,
            (Some(t), Some(_)) if !t.signs_timestamp() => {
                self.error(
                    &join(path, "signed_payload"),
                    payload_node.and_then(|n| n.pos),
                    "with a timestamp_header, the signed payload must contain {timestamp} (an unsigned timestamp proves nothing)",
                );
                return None;
            }
            (Some(t), None) if t.signs_timestamp() => {
                self.error(
                    &join(path, "signed_payload"),
                    payload_node.and_then(|n| n.pos),
                    "{timestamp} needs a timestamp_header to read it from",
                );
                return None;
            }
            (Some(t), _) => t,
        };
        if timestamp_header.as_deref() == Some(header.as_str()) {
            self.error(
                &join(path, "timestamp_header"),
                f.get("timestamp_header").and_then(|n| n.pos),
                "must differ from header",
            );
            return None;
        }
        Some(Generic {
            header,
            algorithm: algorithm?,
            encoding: encoding?,
            prefix: prefix?,
            timestamp_header,
            payload,
        })
    }
}

#[cfg(test)]
#[cfg(feature = "yaml")]
mod tests {
    use super::parse_size;
    use crate::body::webhook::{Algorithm, Encoding, Piece, Provider};
    use crate::body::{DEFAULT_MAX_ARRAY_ITEMS, DEFAULT_MAX_BYTES, JsonCaps};
    use crate::policy::load_yaml;

    fn policy(extra: &str, route: &str) -> Result<crate::policy::Policy, Vec<String>> {
        let src = format!(
            "version: 1\n{extra}routes:\n  - name: r\n    match: {{ path_prefix: /v1/ }}\n{route}"
        );
        load_yaml("p.yaml", &src)
            .map(|l| l.policy)
            .map_err(|e| e.to_string().lines().map(str::to_owned).collect())
    }

    #[test]
    fn the_webhooks_policy_is_valid_and_the_plugin_reads_it_the_same() {
        let loaded = load_yaml(
            "webhooks.yaml",
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/webhooks.yaml"
            )),
        )
        .unwrap();
        let from_json =
            crate::policy::Policy::from_json(loaded.plugin_config_json.as_bytes()).unwrap();
        assert_eq!(from_json, loaded.policy);
        let p = loaded.policy;
        assert_eq!(p.routes.iter().filter(|r| r.webhook.is_some()).count(), 5);
        assert_eq!(p.secret_env_names().len(), 6);
        let orders = p.routes.iter().find(|r| r.name == "orders").unwrap();
        assert_eq!(
            orders.body.json,
            Some(JsonCaps {
                max_string_bytes: 256 << 10,
                max_array_items: 100
            })
        );
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("64KB"), Some(65_536));
        assert_eq!(parse_size("64 kib"), Some(65_536));
        assert_eq!(parse_size("1MB"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("10B"), Some(10));
        for bad in [
            "",
            "MB",
            "1.5MB",
            "1TB",
            "-1",
            "1 M",
            "99999999999999999999GB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes_inherit_the_top_level_body_field_by_field() {
        let p = policy(
            "body: { max_bytes: 2MB, json: { max_array_items: 10 } }\n",
            "    body: { max_bytes: 64KB }\n",
        )
        .unwrap();
        let body = p.routes[0].body;
        assert_eq!(body.max_bytes, 64 << 10);
        assert_eq!(
            body.json,
            Some(JsonCaps {
                max_string_bytes: 256 << 10,
                max_array_items: 10
            })
        );
        let p = policy(
            "body: { json: { max_array_items: 10 } }\n",
            "    body: { json: false }\n",
        )
        .unwrap();
        assert_eq!(p.routes[0].body.json, None);
        assert_eq!(p.routes[0].body.max_bytes, DEFAULT_MAX_BYTES);
        let p = policy("", "    body: { json: true }\n").unwrap();
        assert_eq!(
            p.routes[0].body.json.unwrap().max_array_items,
            DEFAULT_MAX_ARRAY_ITEMS
        );
        let p = policy("", "").unwrap();
        assert_eq!(p.routes[0].body, crate::body::BodyPolicy::default());
    }

    #[test]
    fn body_mistakes_are_reported_with_their_position() {
        let errs = policy(
            "body: { max_bytes: lots, limit: 1 }\n",
            "    body: { json: { max_string_bytes: 0, max_items: 3 } }\n",
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "p.yaml:2:20: body.max_bytes: expected a size such as 65536, 64KB or 1MB",
            "p.yaml:2:26: body.limit: unknown field 'limit'; expected one of [max_bytes, json]",
            "p.yaml:6:39: routes[0].body.json.max_string_bytes: must be between 1 byte and 1GB",
            "routes[0].body.json.max_items: unknown field 'max_items'",
        ] {
            assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
        }
    }

    #[test]
    fn a_route_holding_its_body_holds_at_most_32mb() {
        let errs = policy(
            "",
            "    body: { max_bytes: 64MB }\n    webhook: { provider: github, secrets_env: [S] }\n",
        )
        .unwrap_err();
        assert!(
            errs[0].contains("routes[0].body.max_bytes: a route that holds its body"),
            "{errs:?}"
        );
        assert!(policy("", "    body: { max_bytes: 64MB }\n").is_ok());
    }

    #[test]
    fn webhooks_decode_per_provider() {
        let p = policy(
            "",
            "    webhook: { provider: stripe, secrets_env: [STRIPE_NEW, STRIPE_OLD], tolerance: 10m, replay_cache: { slots: 1024 } }\n",
        )
        .unwrap();
        let w = p.routes[0].webhook.as_ref().unwrap();
        assert_eq!(w.provider, Provider::Stripe);
        assert_eq!(w.secrets_env, ["STRIPE_NEW", "STRIPE_OLD"]);
        assert_eq!(w.tolerance_secs, 600);
        assert_eq!(w.replay_slots, Some(1024));
        assert_eq!(
            p.secret_env_names(),
            ["STRIPE_NEW".to_string(), "STRIPE_OLD".to_string()]
        );
        let p = policy(
            "",
            "    webhook: { provider: slack, secrets_env: [S], replay_cache: {} }\n",
        )
        .unwrap();
        let w = p.routes[0].webhook.as_ref().unwrap();
        assert_eq!(w.tolerance_secs, 300);
        assert_eq!(
            w.replay_slots,
            Some(crate::body::replay_cache::DEFAULT_SLOTS)
        );
        let p = policy(
            "",
            concat!(
                "    webhook:\n",
                "      provider: generic\n",
                "      secrets_env: [ACME]\n",
                "      header: X-Acme-Signature\n",
                "      algorithm: sha512\n",
                "      encoding: base64\n",
                "      prefix: \"sha512=\"\n",
                "      timestamp_header: X-Acme-Timestamp\n",
                "      signed_payload: \"{timestamp}:{body}\"\n",
            ),
        )
        .unwrap();
        let Provider::Generic(g) = &p.routes[0].webhook.as_ref().unwrap().provider else {
            panic!("not generic");
        };
        assert_eq!(g.header, "x-acme-signature");
        assert_eq!(g.algorithm, Algorithm::Sha512);
        assert_eq!(g.encoding, Encoding::Base64);
        assert_eq!(g.prefix.as_deref(), Some("sha512="));
        assert_eq!(g.timestamp_header.as_deref(), Some("x-acme-timestamp"));
        assert_eq!(
            g.payload.before,
            [Piece::Timestamp, Piece::Text(":".into())]
        );
    }

    #[test]
    fn a_route_without_a_signed_timestamp_gets_a_24h_replay_cache_by_default() {
        let webhook = |route: &str| {
            policy("", route).map(|p| {
                let w = p.routes[0].webhook.clone().unwrap();
                (w.replay_window_secs, w.replay_slots)
            })
        };
        let window_slots = Some(crate::body::replay_cache::DEFAULT_WINDOW_SLOTS);
        assert_eq!(
            webhook("    webhook: { provider: github, secrets_env: [S] }\n"),
            Ok((86_400, window_slots))
        );
        assert_eq!(
            webhook("    webhook: { provider: github, secrets_env: [S], replay_cache: {} }\n"),
            Ok((86_400, window_slots))
        );
        assert_eq!(
            webhook(
                "    webhook: { provider: github, secrets_env: [S], replay_window: 7d, replay_cache: { slots: 1024 } }\n"
            ),
            Ok((7 * 86_400, Some(1024)))
        );
        // Turned off on purpose: every captured delivery then verifies forever.
        assert_eq!(
            webhook("    webhook: { provider: github, secrets_env: [S], replay_cache: false }\n"),
            Ok((86_400, None))
        );
        assert_eq!(
            webhook(
                "    webhook: { provider: generic, secrets_env: [S], header: x-sig, replay_window: 2h }\n"
            ),
            Ok((7200, window_slots))
        );
        // With a signed timestamp the cache stays optional and its default small.
        assert_eq!(
            webhook(
                "    webhook: { provider: generic, secrets_env: [S], header: x-sig, timestamp_header: x-ts }\n"
            )
            .map(|w| w.1),
            Ok(None)
        );
        assert_eq!(
            webhook("    webhook: { provider: stripe, secrets_env: [S] }\n").map(|w| w.1),
            Ok(None)
        );
        assert_eq!(
            webhook("    webhook: { provider: slack, secrets_env: [S], replay_cache: {} }\n")
                .map(|w| w.1),
            Ok(Some(crate::body::replay_cache::DEFAULT_SLOTS))
        );
    }

    #[test]
    fn replay_window_is_refused_where_a_timestamp_is_signed_and_out_of_range_anywhere() {
        let errs = policy(
            "",
            concat!(
                "    webhook:\n",
                "      provider: stripe\n",
                "      secrets_env: [S]\n",
                "      replay_window: 24h\n",
            ),
        )
        .unwrap_err()
        .join("\n");
        assert!(
            errs.contains(
                "p.yaml:8:7: routes[0].webhook.replay_window: only for providers that sign no timestamp (github, or generic without timestamp_header); stripe signs one, so a copy older than tolerance already fails"
            ),
            "{errs}"
        );
        let errs = policy(
            "",
            "    webhook: { provider: generic, secrets_env: [S], header: x-sig, timestamp_header: x-ts, replay_window: 1h }\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(
            errs.contains(
                "routes[0].webhook.replay_window: only for providers that sign no timestamp"
            ) && errs.contains("generic signs one"),
            "{errs}"
        );
        for (route, expected) in [
            (
                "    webhook: { provider: github, secrets_env: [S], replay_window: 1m }\n",
                "p.yaml:5:67: routes[0].webhook.replay_window: expected a duration from 5m to 30d, such as 24h",
            ),
            (
                "    webhook: { provider: github, secrets_env: [S], replay_window: 31d }\n",
                "routes[0].webhook.replay_window: expected a duration from 5m to 30d",
            ),
            (
                "    webhook: { provider: github, secrets_env: [S], replay_window: 24h, replay_cache: false }\n",
                "routes[0].webhook.replay_window: needs the replay cache, which replay_cache: false turns off",
            ),
            (
                "    webhook: { provider: github, secrets_env: [S], replay_cache: true }\n",
                "p.yaml:5:66: routes[0].webhook.replay_cache: expected a mapping such as { slots: 65536 }, or false",
            ),
        ] {
            let errs = policy("", route).unwrap_err().join("\n");
            assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
        }
    }

    #[test]
    fn tolerance_on_a_route_without_a_signed_timestamp_is_a_warning_not_an_error() {
        // Policies written before replay_window still load; the warning says what counts.
        let src = "version: 1\nroutes:\n  - match: { path: /hooks }\n    webhook: { provider: github, secrets_env: [S], tolerance: 10m }\n";
        let loaded = load_yaml("p.yaml", src).unwrap();
        let w = loaded.policy.routes[0].webhook.as_ref().unwrap();
        assert_eq!(w.replay_window_secs, 86_400);
        let warnings = loaded.warnings.to_string();
        assert!(
            warnings.contains(
                "p.yaml:4:52: routes[0].webhook.tolerance: has no effect: github signs no timestamp to check; an accepted message is remembered for replay_window (default 24h)"
            ),
            "{warnings}"
        );
        let src = src.replace("github", "stripe");
        assert!(load_yaml("p.yaml", &src).unwrap().warnings.is_empty());
    }

    #[test]
    fn webhook_mistakes_are_reported_with_their_position() {
        let errs = policy(
            "",
            concat!(
                "    webhook:\n",
                "      provider: paypal\n",
                "      secrets_env: [\"whsec_abc def\"]\n",
                "      tolerance: forever\n",
                "      colour: blue\n",
            ),
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "p.yaml:6:17: routes[0].webhook.provider: unknown provider 'paypal'; expected one of [stripe, slack, github, generic]",
            "p.yaml:7:21: routes[0].webhook.secrets_env[0]: must be an environment variable name",
            "p.yaml:8:18: routes[0].webhook.tolerance: expected a duration",
            "p.yaml:9:7: routes[0].webhook.colour: unknown field 'colour'",
        ] {
            assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
        }
        assert!(!errs.contains("whsec_abc"), "the value is echoed: {errs}");
        let errs = policy(
            "",
            "    webhook: { provider: github, secrets_env: [S], header: x-sig }\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(
            errs.contains("routes[0].webhook.header: only for provider: generic"),
            "{errs}"
        );
        let errs = policy("", "    webhook: { provider: github, secrets_env: [] }\n")
            .unwrap_err()
            .join("\n");
        assert!(errs.contains("name 1 to 8 environment variables"), "{errs}");
        let errs = policy(
            "",
            "    webhook: { provider: generic, secrets_env: [S], header: x-sig, timestamp_header: x-ts, signed_payload: \"{body}\" }\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(errs.contains("must contain {timestamp}"), "{errs}");
        let errs = policy(
            "",
            "    webhook: { provider: generic, secrets_env: [S], header: x-sig, signed_payload: \"{timestamp}{body}\" }\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(errs.contains("needs a timestamp_header"), "{errs}");
        let errs = policy("", "    webhook: { provider: generic, secrets_env: [S] }\n")
            .unwrap_err()
            .join("\n");
        assert!(errs.contains("missing required field 'header'"), "{errs}");
    }
}
