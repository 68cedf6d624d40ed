//! Operators' levers, live from the control service through the feed (`levers` in an
//! answer, `control/FEED.md`): per-key and per-tenant overrides of the plan limit's rate,
//! allowlists that skip rate limits, and each named rule's mode (`enforce`, `shadow`,
//! `off`). The sync checks a set strictly and keeps it whole in shared data
//! ([`SET_KEY`]); each worker keeps a parsed copy ([`CachedLevers`]) refreshed on its
//! tick, so a request never parses JSON and looks up only what the set holds. Nothing
//! here calls the host or panics on input.

use crate::authn::api_key::is_valid_id;
use crate::store::{SharedStore, StoreError};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Where the sync keeps the levers in force: the `levers` object as the feed sent it,
/// checked by [`parse`]. Written before [`STAMP_KEY`].
pub const SET_KEY: &str = "lv/set";
/// A counter (8 bytes, big-endian) the sync moves on with each new set: workers read
/// this small value on every tick and the set only when it moved, so a large set is never
/// copied out of shared data ten times a second.
pub const STAMP_KEY: &str = "lv/stamp";
/// The most entries a set may hold (overrides, modes and allowlist entries together).
pub const MAX_ENTRIES: usize = 10_000;
/// The highest `requests_per_minute` an override may set.
pub const MAX_OVERRIDE_RPM: u64 = 10_000_000;

/// A rule's mode. Defaults to `Enforce`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Applied: a request over it is refused.
    #[default]
    Enforce,
    /// Evaluated and counted as it would apply (a rate limit consumes its own state),
    /// logged as "would refuse", never refusing.
    Shadow,
    /// Not evaluated at all.
    Off,
}

impl Mode {
    pub const NAMES: [&'static str; 3] = ["enforce", "shadow", "off"];

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "enforce" => Some(Mode::Enforce),
            "shadow" => Some(Mode::Shadow),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Off => "off",
        }
    }
}

/// A named rule of the policy, as levers and shadow counts name it: a plan limit (by
/// the plan's index), the anonymous limit, a route's limit, a route's webhook check or
/// a route's body limit (by route index). [`crate::policy::Policy::rule_name`] spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Plan(usize),
    Anonymous,
    /// (route, limit) indexes.
    RouteLimit(usize, usize),
    Webhook(usize),
    Body(usize),
}

/// A caller's own rate in place of its plan's, until `expires_at` (unix secs; `None`:
/// for good).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub requests_per_minute: u32,
    pub expires_at: Option<u64>,
}

impl Override {
    /// In force at `now_secs`: not past its expiry.
    pub fn live(&self, now_secs: u64) -> bool {
        self.expires_at.is_none_or(|at| now_secs < at)
    }
}

/// An IPv4 or IPv6 network with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    /// `203.0.113.0/24` or `2001:db8::/32`; `None` when not canonical (host bits set). An
    /// IPv4-mapped IPv6 network (`::ffff:203.0.113.0/120`) is the IPv4 network it maps,
    /// as a client's mapped address is the IPv4 address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = s.split_once('/')?;
        if bits.is_empty() || bits.len() > 3 || !bits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let bits: u8 = bits.parse().ok()?;
        match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) if bits <= 32 => {
                let a = u32::from(a);
                (a & !mask32(bits) == 0).then_some(Cidr::V4(a, bits))
            }
            IpAddr::V6(a) if bits <= 128 => {
                let net = u128::from(a);
                if net & !mask128(bits) != 0 {
                    return None;
                }
                match a.to_ipv4_mapped() {
                    Some(v4) if bits >= 96 => Some(Cidr::V4(u32::from(v4), bits - 96)),
                    _ => Some(Cidr::V6(net, bits)),
                }
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Cidr {
    /// The canonical form: `203.0.113.0/24`, `2001:db8::/32`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Cidr::V4(net, bits) => write!(f, "{}/{bits}", std::net::Ipv4Addr::from(net)),
            Cidr::V6(net, bits) => write!(f, "{}/{bits}", std::net::Ipv6Addr::from(net)),
        }
    }
}

fn mask32(bits: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(bits.min(32)))
        .unwrap_or(0)
}

fn mask128(bits: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(bits.min(128)))
        .unwrap_or(0)
}

/// Which limits an allowlist entry skips: `None` every rate limit, else the one named.
type Skips = Vec<Option<Box<str>>>;

/// The levers in force, checked and indexed for the request path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Levers {
    key_overrides: HashMap<Box<str>, Override>,
    tenant_overrides: HashMap<Box<str>, Override>,
    modes: HashMap<Box<str>, Mode>,
    allow_keys: HashMap<Box<str>, Skips>,
    allow_users: HashMap<Box<str>, Skips>,
    allow_tenants: HashMap<Box<str>, Skips>,
    /// CIDR entries grouped by family and prefix length: a lookup masks the address
    /// once per group and looks the network up, whatever the number of entries.
    allow_cidrs: Vec<CidrGroup>,
    entries: usize,
}

/// Allowlisted networks of one family and prefix length, by network (an IPv4 one as its
/// 32 bits).
#[derive(Clone, Debug, PartialEq, Eq)]
struct CidrGroup {
    v6: bool,
    bits: u8,
    nets: HashMap<u128, Skips>,
}

/// Why a `levers` value was refused whole (the previous set stays in force). Names the
/// part, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeversError {
    /// More than [`MAX_ENTRIES`] entries.
    TooMany(usize),
    /// Not an object of the three lists.
    Shape,
    /// An entry of this list breaks the contract (its index).
    Entry(&'static str, usize),
}

impl std::fmt::Display for LeversError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeversError::TooMany(n) => {
                write!(f, "{n} entries, more than the {MAX_ENTRIES} accepted")
            }
            LeversError::Shape => {
                f.write_str("not an object of 'overrides', 'modes' and 'allowlist' lists")
            }
            LeversError::Entry(list, i) => write!(f, "{list}[{i}] breaks the contract"),
        }
    }
}

fn list<'a>(o: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a [Value], LeversError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(LeversError::Shape),
    }
}

fn id<'a>(o: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    o.get(name)
        .and_then(Value::as_str)
        .filter(|s| is_valid_id(s))
}

fn parse_override(v: &Value) -> Option<(bool, Box<str>, Override)> {
    let o = v.as_object()?;
    let tenant = match o.get("scope")?.as_str()? {
        "key" => false,
        "tenant" => true,
        _ => return None,
    };
    let rpm = o.get("requests_per_minute")?.as_u64()?;
    if !(1..=MAX_OVERRIDE_RPM).contains(&rpm) {
        return None;
    }
    let expires_at = match o.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(n) => Some(n.as_u64()?),
    };
    Some((
        tenant,
        id(o, "id")?.into(),
        Override {
            requests_per_minute: u32::try_from(rpm).ok()?,
            expires_at,
        },
    ))
}

/// What an allowlist entry matches.
enum Match {
    Cidr(Cidr),
    Key(Box<str>),
    User(Box<str>),
    Tenant(Box<str>),
}

fn parse_allow(v: &Value) -> Option<(Match, Option<Box<str>>)> {
    let o = v.as_object()?;
    id(o, "id")?;
    let limit = match o.get("limit") {
        None | Some(Value::Null) => None,
        Some(_) => Some(id(o, "limit")?.into()),
    };
    let present = ["cidr", "key_id", "user", "tenant"]
        .iter()
        .filter(|f| o.get(**f).is_some_and(|v| !v.is_null()))
        .count();
    if present != 1 {
        return None;
    }
    let m = if let Some(c) = o.get("cidr").filter(|v| !v.is_null()) {
        Match::Cidr(Cidr::parse(c.as_str()?)?)
    } else if o.get("key_id").is_some_and(|v| !v.is_null()) {
        Match::Key(id(o, "key_id")?.into())
    } else if o.get("user").is_some_and(|v| !v.is_null()) {
        Match::User(id(o, "user")?.into())
    } else {
        Match::Tenant(id(o, "tenant")?.into())
    };
    Some((m, limit))
}

/// Checks a `levers` value whole: at most [`MAX_ENTRIES`] entries, each as the contract
/// says (ids by the id rule, rates 1 to [`MAX_OVERRIDE_RPM`], canonical CIDRs, one
/// match per allowlist entry). One bad entry refuses the set: a partial set could lift an
/// operator's kill switch or allowlist by omission.
pub fn parse(v: &Value) -> Result<Levers, LeversError> {
    let o = v.as_object().ok_or(LeversError::Shape)?;
    let overrides = list(o, "overrides")?;
    let modes = list(o, "modes")?;
    let allowlist = list(o, "allowlist")?;
    let entries = overrides.len() + modes.len() + allowlist.len();
    if entries > MAX_ENTRIES {
        return Err(LeversError::TooMany(entries));
    }
    let mut out = Levers {
        entries,
        ..Levers::default()
    };
    for (i, item) in overrides.iter().enumerate() {
        let (tenant, id, o) = parse_override(item).ok_or(LeversError::Entry("overrides", i))?;
        if tenant {
            out.tenant_overrides.insert(id, o);
        } else {
            out.key_overrides.insert(id, o);
        }
    }
    for (i, item) in modes.iter().enumerate() {
        let parsed = item.as_object().and_then(|m| {
            let name = id(m, "limit")?;
            let mode = Mode::parse(m.get("mode")?.as_str()?)?;
            Some((name, mode))
        });
        let (name, mode) = parsed.ok_or(LeversError::Entry("modes", i))?;
        out.modes.insert(name.into(), mode);
    }
    for (i, item) in allowlist.iter().enumerate() {
        let (m, limit) = parse_allow(item).ok_or(LeversError::Entry("allowlist", i))?;
        match m {
            Match::Cidr(c) => {
                let (v6, bits, net) = match c {
                    Cidr::V4(net, bits) => (false, bits, u128::from(net)),
                    Cidr::V6(net, bits) => (true, bits, net),
                };
                let group = match out
                    .allow_cidrs
                    .iter()
                    .position(|g| g.v6 == v6 && g.bits == bits)
                {
                    Some(g) => out.allow_cidrs.get_mut(g),
                    None => {
                        out.allow_cidrs.push(CidrGroup {
                            v6,
                            bits,
                            nets: HashMap::new(),
                        });
                        out.allow_cidrs.last_mut()
                    }
                };
                if let Some(group) = group {
                    group.nets.entry(net).or_default().push(limit);
                }
            }
            Match::Key(k) => out.allow_keys.entry(k).or_default().push(limit),
            Match::User(u) => out.allow_users.entry(u).or_default().push(limit),
            Match::Tenant(t) => out.allow_tenants.entry(t).or_default().push(limit),
        }
    }
    Ok(out)
}

/// A caller as allowlists match it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Who<'a> {
    pub key_id: Option<&'a str>,
    pub user: Option<&'a str>,
    pub tenant: Option<&'a str>,
    /// The client's address, when the set has CIDR entries ([`Levers::has_cidrs`]).
    pub ip: Option<IpAddr>,
}

fn skips(list: &HashMap<Box<str>, Skips>, id: Option<&str>, limit: &str) -> bool {
    match id.and_then(|id| list.get(id)) {
        Some(s) => s.iter().any(|l| l.as_deref().is_none_or(|l| l == limit)),
        None => false,
    }
}

impl Levers {
    /// Entries in the set.
    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The mode the feed sets for a rule, if any.
    pub fn mode(&self, name: &str) -> Option<Mode> {
        if self.modes.is_empty() {
            return None;
        }
        self.modes.get(name).copied()
    }

    /// The mode the feed sets for `<prefix><name>` (`webhook:` and `body:` rules); builds
    /// the name only when the set has modes.
    pub fn rule_mode(&self, prefix: &str, name: &str) -> Option<Mode> {
        if self.modes.is_empty() {
            return None;
        }
        self.modes.get([prefix, name].concat().as_str()).copied()
    }

    /// The names the set gives modes to.
    pub fn mode_names(&self) -> impl Iterator<Item = &str> {
        self.modes.keys().map(|k| &**k)
    }

    /// The rate override in force for a caller at `now_secs`: its key's, else its
    /// tenant's (an expired key override gives way to a live tenant one).
    pub fn override_for(
        &self,
        key_id: Option<&str>,
        tenant: Option<&str>,
        now_secs: u64,
    ) -> Option<Override> {
        fn live(
            m: &HashMap<Box<str>, Override>,
            id: Option<&str>,
            now_secs: u64,
        ) -> Option<Override> {
            id.and_then(|id| m.get(id))
                .filter(|o| o.live(now_secs))
                .copied()
        }
        if !self.key_overrides.is_empty()
            && let Some(o) = live(&self.key_overrides, key_id, now_secs)
        {
            return Some(o);
        }
        if self.tenant_overrides.is_empty() {
            return None;
        }
        live(&self.tenant_overrides, tenant, now_secs)
    }

    /// Whether the set has CIDR entries: only then is the client's address needed.
    pub fn has_cidrs(&self) -> bool {
        !self.allow_cidrs.is_empty()
    }

    /// Whether any allowlist entry could skip a limit.
    pub fn has_allowlist(&self) -> bool {
        self.has_cidrs()
            || !self.allow_keys.is_empty()
            || !self.allow_users.is_empty()
            || !self.allow_tenants.is_empty()
    }

    /// Whether an allowlist entry skips the rate limit named `limit` for this caller.
    pub fn allowlisted(&self, who: &Who<'_>, limit: &str) -> bool {
        skips(&self.allow_keys, who.key_id, limit)
            || skips(&self.allow_users, who.user, limit)
            || skips(&self.allow_tenants, who.tenant, limit)
            || who.ip.is_some_and(|ip| self.cidr_skips(ip, limit))
    }

    /// Whether a CIDR entry holding `ip` skips `limit`: one masked lookup per group.
    fn cidr_skips(&self, ip: IpAddr, limit: &str) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (v6, addr) = match ip {
            IpAddr::V4(a) => (false, u128::from(u32::from(a))),
            IpAddr::V6(a) => (true, u128::from(a)),
        };
        self.allow_cidrs.iter().filter(|g| g.v6 == v6).any(|g| {
            let net = if v6 {
                addr & mask128(g.bits)
            } else {
                addr & u128::from(mask32(g.bits))
            };
            g.nets
                .get(&net)
                .is_some_and(|s| s.iter().any(|l| l.as_deref().is_none_or(|l| l == limit)))
        })
    }
}

/// Writes a set the sync checked: the set, then a new stamp, so a worker that sees the
/// stamp move reads the whole new set.
pub fn store(store: &impl SharedStore, raw: &[u8]) -> Result<(), StoreError> {
    store.set(SET_KEY, raw, 0)?;
    let stamp = read_stamp(store).wrapping_add(1).max(1);
    store.set(STAMP_KEY, &stamp.to_be_bytes(), 0)
}

/// The stamp of the set in shared data; 0 when none was ever written.
pub fn read_stamp(store: &impl SharedStore) -> u64 {
    store
        .get(STAMP_KEY)
        .and_then(|(b, _)| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// The set in shared data, parsed; `None` when there is none or it does not parse (it
/// always does: the sync wrote it after [`parse`]).
pub fn read(store: &impl SharedStore) -> Option<Levers> {
    let (bytes, _) = store.get(SET_KEY)?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    parse(&value).ok()
}

/// A worker's parsed copy of the set ([`CachedLevers::refresh`] on its tick). A request
/// takes the current copy ([`CachedLevers::get`]: a lock and a reference count, no
/// parsing, no allocation).
#[derive(Debug, Default)]
pub struct CachedLevers {
    stamp: std::sync::atomic::AtomicU64,
    /// The current set has CIDR entries: the filter reads the client's address for every
    /// request, not only for those that may be anonymous.
    cidrs: std::sync::atomic::AtomicBool,
    /// The current set has entries: without, a request takes no lock.
    any: std::sync::atomic::AtomicBool,
    current: Mutex<Arc<Levers>>,
}

impl CachedLevers {
    /// Reads the stamp and, when it moved, the set. Returns the new set when it changed.
    pub fn refresh(&self, store: &impl SharedStore) -> Option<Arc<Levers>> {
        use std::sync::atomic::Ordering::Relaxed;
        let stamp = read_stamp(store);
        if stamp == self.stamp.load(Relaxed) {
            return None;
        }
        let levers = Arc::new(read(store)?);
        if let Ok(mut current) = self.current.lock() {
            *current = Arc::clone(&levers);
        }
        self.cidrs.store(levers.has_cidrs(), Relaxed);
        self.any.store(!levers.is_empty(), Relaxed);
        self.stamp.store(stamp, Relaxed);
        Some(levers)
    }

    /// The set as last refreshed when it has entries; `None` (no lock taken) when it has
    /// none, as for every request of a fleet without levers.
    pub fn current(&self) -> Option<Arc<Levers>> {
        if self.any.load(std::sync::atomic::Ordering::Relaxed) {
            Some(self.get())
        } else {
            None
        }
    }

    /// Whether the set in force has CIDR entries ([`Levers::has_cidrs`]), without a lock.
    pub fn has_cidrs(&self) -> bool {
        self.cidrs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The set as last refreshed (empty before any).
    pub fn get(&self) -> Arc<Levers> {
        self.current
            .lock()
            .map(|c| Arc::clone(&c))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "overrides": [
                {"scope": "key", "id": "key_8f3a", "requests_per_minute": 20000, "expires_at": 1767225600},
                {"scope": "tenant", "id": "tenant_1", "requests_per_minute": 30, "expires_at": null}
            ],
            "modes": [{"limit": "team", "mode": "shadow"}, {"limit": "webhook:stripe", "mode": "off"}],
            "allowlist": [
                {"id": "alw_7Hq2", "cidr": "203.0.113.0/24", "limit": null},
                {"id": "alw_9Kd1", "key_id": "key_8f3a", "limit": "team"},
                {"id": "alw_2Pz8", "user": "user_1", "limit": null},
                {"id": "alw_5Mn3", "tenant": "tenant_1", "limit": "search"},
                {"id": "alw_6v6", "cidr": "2001:db8::/32"}
            ]
        })
    }

    #[test]
    fn the_contracts_example_is_read_whole() {
        let l = parse(&sample()).unwrap();
        assert_eq!(l.entries(), 9);
        assert_eq!(l.mode("team"), Some(Mode::Shadow));
        assert_eq!(l.mode("webhook:stripe"), Some(Mode::Off));
        assert_eq!(l.mode("free"), None);
        let key = l.override_for(Some("key_8f3a"), Some("tenant_1"), 1_767_225_599);
        assert_eq!(key.unwrap().requests_per_minute, 20_000);
        // Past its expiry the key's override gives way to its tenant's.
        let later = l.override_for(Some("key_8f3a"), Some("tenant_1"), 1_767_225_600);
        assert_eq!(later.unwrap().requests_per_minute, 30);
        assert_eq!(l.override_for(Some("key_x"), Some("tenant_2"), 0), None);
    }

    /// A caller known only by its address.
    fn ip(s: &str) -> Who<'static> {
        Who {
            ip: Some(s.parse().unwrap()),
            ..Who::default()
        }
    }

    #[test]
    fn allowlists_skip_every_limit_or_the_one_they_name() {
        let l = parse(&sample()).unwrap();
        let key = Who {
            key_id: Some("key_8f3a"),
            ..Who::default()
        };
        assert!(l.allowlisted(&key, "team"));
        assert!(!l.allowlisted(&key, "login"));
        let user = Who {
            user: Some("user_1"),
            ..Who::default()
        };
        assert!(l.allowlisted(&user, "anything"));
        let tenant = Who {
            tenant: Some("tenant_1"),
            ..Who::default()
        };
        assert!(l.allowlisted(&tenant, "search"));
        assert!(!l.allowlisted(&tenant, "team"));
        assert!(l.allowlisted(&ip("203.0.113.9"), "free"));
        assert!(l.allowlisted(&ip("::ffff:203.0.113.9"), "free"));
        assert!(!l.allowlisted(&ip("203.0.114.9"), "free"));
        assert!(l.allowlisted(&ip("2001:db8:1::7"), "free"));
        assert!(!l.allowlisted(&ip("2001:db9::7"), "free"));
        assert!(!l.allowlisted(&Who::default(), "free"));
    }

    #[test]
    fn cidrs_must_be_canonical() {
        assert_eq!(Cidr::parse("10.0.0.0/8"), Some(Cidr::V4(0x0a00_0000, 8)));
        assert_eq!(Cidr::parse("0.0.0.0/0"), Some(Cidr::V4(0, 0)));
        assert!(Cidr::parse("10.0.0.1/8").is_none());
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0.0").is_none());
        assert!(Cidr::parse("10.0.0.0/").is_none());
        assert!(Cidr::parse("2001:db8::1/32").is_none());
        assert!(Cidr::parse("2001:db8::/129").is_none());
        assert!(Cidr::parse("::/0").is_some());
        assert_eq!(
            Cidr::parse("::ffff:203.0.113.0/120"),
            Some(Cidr::V4(0xcb00_7100, 24))
        );
        assert_eq!(Cidr::parse("::ffff:0.0.0.0/96"), Some(Cidr::V4(0, 0)));
        assert!(Cidr::parse("::ffff:203.0.113.1/120").is_none());
        // Wider than the mapped block: an IPv6 network, which IPv4 clients are not in.
        assert!(matches!(Cidr::parse("::/64"), Some(Cidr::V6(0, 64))));
    }

    #[test]
    fn a_mapped_ipv6_entry_holds_the_ipv4_clients_it_maps() {
        let l = parse(&json!({"allowlist": [
            {"id": "a", "cidr": "::ffff:198.51.100.0/120", "limit": "free"}
        ]}))
        .unwrap();
        assert!(l.allowlisted(&ip("198.51.100.7"), "free"));
        assert!(l.allowlisted(&ip("::ffff:198.51.100.7"), "free"));
        assert!(!l.allowlisted(&ip("198.51.101.7"), "free"));
    }

    #[test]
    fn one_bad_entry_refuses_the_whole_set() {
        let bad = [
            json!({"overrides": [{"scope": "key", "id": "k", "requests_per_minute": 0}]}),
            json!({"overrides": [{"scope": "key", "id": "k", "requests_per_minute": 10_000_001}]}),
            json!({"overrides": [{"scope": "user", "id": "k", "requests_per_minute": 5}]}),
            json!({"overrides": [{"scope": "key", "id": "a b", "requests_per_minute": 5}]}),
            json!({"overrides": [{"scope": "key", "id": "k", "requests_per_minute": 5, "expires_at": "soon"}]}),
            json!({"modes": [{"limit": "team", "mode": "loud"}]}),
            json!({"modes": [{"limit": "", "mode": "off"}]}),
            json!({"allowlist": [{"id": "a", "cidr": "10.0.0.1/8"}]}),
            json!({"allowlist": [{"id": "a", "user": "u", "tenant": "t"}]}),
            json!({"allowlist": [{"id": "a"}]}),
            json!({"allowlist": [{"user": "u"}]}),
            json!({"allowlist": [{"id": "a", "user": "u", "limit": 3}]}),
            json!({"allowlist": {"id": "a"}}),
            json!([]),
        ];
        for v in bad {
            assert!(parse(&v).is_err(), "{v}");
        }
        let too_many: Vec<Value> = (0..=MAX_ENTRIES)
            .map(|i| json!({"limit": format!("l{i}"), "mode": "off"}))
            .collect();
        assert_eq!(
            parse(&json!({ "modes": too_many })),
            Err(LeversError::TooMany(MAX_ENTRIES + 1))
        );
        assert!(parse(&json!({})).unwrap().is_empty());
    }

    #[test]
    fn a_worker_reads_the_set_again_only_when_its_stamp_moves() {
        let s = MemoryStore::default();
        let cached = CachedLevers::default();
        assert!(cached.refresh(&s).is_none());
        assert!(cached.get().is_empty());
        store(&s, sample().to_string().as_bytes()).unwrap();
        assert!(cached.refresh(&s).is_some());
        assert_eq!(cached.get().entries(), 9);
        assert!(cached.refresh(&s).is_none());
        store(&s, b"{}").unwrap();
        assert!(cached.refresh(&s).is_some());
        assert!(cached.get().is_empty());
    }
}
