//! Decoding of the `jwt`, `revocations` and `hide_credentials` sections (types in
//! [`crate::policy::auth`]).

use super::{Decoder, field_pos, join};
use crate::authn::api_key::Origin;
use crate::authn::jwt::{
    Alg, DEFAULT_LEEWAY_SECS, DEFAULT_MAX_LIFETIME_SECS, DEFAULT_MAX_SIZE, Key, Rules, parse_jwks,
};
use crate::authn::revocation::{JtiRevocation, UserRevocation};
use crate::policy::Plan;
use crate::policy::auth::{
    ClaimNames, HmacKey, JwksUrl, JwtPolicy, JwtProvider, Revocations, SINGLE_PROVIDER_NAME,
    Secret, SecretEncoding,
};
use crate::policy::tree::{Node, Value};
use crate::time::parse_rfc3339;

/// The longest `max_token_lifetime` a policy may set (a year); beyond it, say
/// `unbounded` and accept that revocations must then last forever.
const MAX_TOKEN_LIFETIME_SECS: u64 = 366 * 86_400;

/// `30s`, `10m`, `2h`, `1d` or a plain number of seconds.
pub(super) fn parse_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (s.get(..i)?, s.get(i..)?),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn alg_names() -> String {
    Alg::ALL
        .iter()
        .map(|a| a.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Decoder {
    pub(super) fn duration(&mut self, node: &Node, path: &str, max_secs: u64) -> Option<u64> {
        let secs = match &node.value {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Str(s) => parse_duration_secs(s),
            _ => None,
        };
        match secs {
            Some(s) if s <= max_secs => Some(s),
            Some(_) => {
                self.error(path, node.pos, format!("at most {max_secs} seconds"));
                None
            }
            None => {
                self.error(
                    path,
                    node.pos,
                    "expected a duration such as 30s, 10m, 2h or 1d",
                );
                None
            }
        }
    }

    fn date(&mut self, node: &Node, path: &str) -> Option<u64> {
        let s = self.string(node, path)?;
        let t = parse_rfc3339(s);
        if t.is_none() {
            self.error(
                path,
                node.pos,
                "expected an RFC 3339 date-time such as 2027-01-01T00:00:00Z",
            );
        }
        t
    }

    fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = self.list(node, path)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{path}[{i}]")) {
                Some(s) if !s.is_empty() => out.push(s.to_string()),
                Some(_) => {
                    self.error(&format!("{path}[{i}]"), item.pos, "must not be empty");
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn alg(&mut self, node: &Node, path: &str) -> Option<Alg> {
        let name = self.string(node, path)?;
        let alg = Alg::from_name(name);
        if alg.is_none() {
            self.error(
                path,
                node.pos,
                format!(
                    "unsupported algorithm '{name}'; expected one of [{}]",
                    alg_names()
                ),
            );
        }
        alg
    }

    fn upstream_header(&mut self, node: &Node, path: &str) -> Option<String> {
        let name = self.string(node, path)?.to_ascii_lowercase();
        let ok = name.starts_with("x-gatehouse-")
            && name.len() > "x-gatehouse-".len()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            self.error(
                path,
                node.pos,
                "must be an x-gatehouse-* header name (a-z 0-9 -): upstreams trust only that prefix",
            );
            return None;
        }
        Some(name)
    }

    /// `jwt:` as one provider, or `jwt: { providers: [...] }`.
    pub(super) fn jwt(&mut self, node: &Node, path: &str, plans: &[Plan]) -> Option<JwtPolicy> {
        let grouped = matches!(&node.value, Value::Map(entries)
            if entries.iter().any(|(k, _)| k.name == "providers"));
        if !grouped {
            return self
                .jwt_provider(node, path, plans, false)
                .map(|p| JwtPolicy { providers: vec![p] });
        }
        // Every setting belongs to a provider: a shared one would blur whose it is.
        let f = self.object(node, path, &["providers"])?;
        let pp = join(path, "providers");
        let list_node = f.get("providers")?;
        let items = self.list(list_node, &pp)?;
        if items.is_empty() {
            self.error(&pp, list_node.pos, "give at least one provider");
            return None;
        }
        let mut ok = true;
        let mut providers: Vec<JwtProvider> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{pp}[{i}]");
            let Some(provider) = self.jwt_provider(item, &p, plans, true) else {
                ok = false;
                continue;
            };
            if providers.iter().any(|o| o.name == provider.name) {
                self.error(
                    &join(&p, "name"),
                    field_pos(item, "name"),
                    "duplicate provider name",
                );
                ok = false;
            }
            if items.len() > 1 && provider.rules.issuers.is_empty() {
                self.error(
                    &join(&p, "issuers"),
                    field_pos(item, "issuers").or(item.pos),
                    "with more than one provider, each lists its issuers: a token goes to \
                     the provider its iss names, and only that provider's keys verify it",
                );
                ok = false;
            }
            for iss in &provider.rules.issuers {
                if let Some(other) = providers.iter().find(|o| o.rules.issuers.contains(iss)) {
                    self.error(
                        &join(&p, "issuers"),
                        field_pos(item, "issuers"),
                        format!("issuer '{iss}' is already provider '{}''s", other.name),
                    );
                    ok = false;
                }
            }
            providers.push(provider);
        }
        ok.then_some(JwtPolicy { providers })
    }

    /// `issuers` or `audiences`: a list, or `any` said explicitly (an empty list).
    fn any_or_strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Str(s) if s == "any" => Some(Vec::new()),
            Value::Seq(items) if items.is_empty() => {
                self.error(
                    path,
                    node.pos,
                    "must not be empty; write any to accept every value",
                );
                None
            }
            _ => self.strings(node, path),
        }
    }

    fn jwt_provider(
        &mut self,
        node: &Node,
        path: &str,
        plans: &[Plan],
        grouped: bool,
    ) -> Option<JwtProvider> {
        let f = self.object(
            node,
            path,
            &[
                "name",
                "issuers",
                "audiences",
                "leeway",
                "max_token_bytes",
                "require_exp",
                "max_token_lifetime",
                "required_claims",
                "claims",
                "default_tenant",
                "default_plan",
                "forward_claims",
                "keys",
                "jwks",
                "jwks_url",
                "rsa_alg",
            ],
        )?;
        let mut ok = true;
        let opt_strings = |d: &mut Decoder, name: &str| match f.get(name) {
            None => Some(Vec::new()),
            Some(n) => d.strings(n, &join(path, name)),
        };
        let name = match f.get("name") {
            None if grouped => {
                self.error(path, node.pos, "missing required field 'name'");
                None
            }
            None => Some(SINGLE_PROVIDER_NAME.to_string()),
            Some(n) => {
                let np = join(path, "name");
                let s = self.string(n, &np)?;
                let valid = !s.is_empty()
                    && s.len() <= 32
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !valid {
                    self.error(&np, n.pos, "must be 1 to 32 of a-z 0-9 _ -");
                }
                valid.then(|| s.to_string())
            }
        };
        // A JWKS is usually an identity provider's, which mints tokens for other
        // applications too: which issuers and audiences this API takes must be said, even
        // if the answer is `any`.
        let fetched_or_public = f.get("jwks").is_some() || f.get("jwks_url").is_some();
        let explicit = |d: &mut Decoder, field: &str, what: &str| match f.get(field) {
            Some(n) => d.any_or_strings(n, &join(path, field)),
            None if fetched_or_public => {
                d.error(
                    path,
                    node.pos,
                    format!(
                        "missing required field '{field}': with jwks or jwks_url, list the \
                         {what} this API accepts, or write {field}: any (an identity \
                         provider's keys also sign tokens meant for other applications)"
                    ),
                );
                None
            }
            None => Some(Vec::new()),
        };
        let issuers = explicit(self, "issuers", "issuers");
        let audiences = explicit(self, "audiences", "audiences");
        let required_claims = opt_strings(self, "required_claims");
        let leeway = match f.get("leeway") {
            None => Some(DEFAULT_LEEWAY_SECS),
            Some(n) => self.duration(n, &join(path, "leeway"), 3600),
        };
        let max_size = match f.get("max_token_bytes") {
            None => Some(DEFAULT_MAX_SIZE),
            Some(n) => self
                .integer(n, &join(path, "max_token_bytes"), 256, 65_536)
                .map(|v| usize::try_from(v).unwrap_or(DEFAULT_MAX_SIZE)),
        };
        let require_exp = match f.get("require_exp") {
            None => Some(true),
            Some(n) => self.boolean(n, &join(path, "require_exp")),
        };
        let max_lifetime = match f.get("max_token_lifetime") {
            None => Some(Some(DEFAULT_MAX_LIFETIME_SECS)),
            Some(n) if matches!(&n.value, Value::Str(s) if s == "unbounded") => Some(None),
            Some(n) => {
                let mp = join(path, "max_token_lifetime");
                match self.duration(n, &mp, MAX_TOKEN_LIFETIME_SECS) {
                    Some(0) => {
                        self.error(&mp, n.pos, "must be longer than 0s");
                        None
                    }
                    Some(secs) => Some(Some(secs)),
                    None => None,
                }
            }
        };
        let claims = match f.get("claims") {
            None => Some(ClaimNames {
                user: "sub".into(),
                tenant: "tenant".into(),
                plan: "plan".into(),
            }),
            Some(n) => self.claim_names(n, &join(path, "claims")),
        };
        let default_tenant = match f.get("default_tenant") {
            None => Some(None),
            Some(n) => self.id(n, &join(path, "default_tenant")).map(Some),
        };
        let default_plan = match f.get("default_plan") {
            None => Some(None),
            Some(n) => {
                let pp = join(path, "default_plan");
                match self.string(n, &pp) {
                    Some(name) if plans.iter().any(|p| p.name == name) => {
                        Some(Some(name.to_string()))
                    }
                    Some(name) => {
                        self.error(&pp, n.pos, format!("unknown plan '{name}'"));
                        None
                    }
                    None => None,
                }
            }
        };
        let forward_claims = match f.get("forward_claims") {
            None => Some(Vec::new()),
            Some(n) => self.forward_claims(n, &join(path, "forward_claims")),
        };
        let rsa_alg = match f.get("rsa_alg") {
            None => Some(Alg::RS256),
            Some(n) => {
                let rp = join(path, "rsa_alg");
                match self.alg(n, &rp) {
                    Some(a @ (Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256)) => Some(a),
                    Some(other) => {
                        self.error(&rp, n.pos, format!("{other} is not an RSA algorithm"));
                        None
                    }
                    None => None,
                }
            }
        };
        let hmac_keys = match f.get("keys") {
            None => Some(Vec::new()),
            Some(n) => self.hmac_keys(n, &join(path, "keys")),
        };
        let jwks_inline = match (f.get("jwks"), rsa_alg) {
            (None, _) => Some(None),
            (Some(n), rsa) => self.inline_jwks(n, &join(path, "jwks"), rsa.unwrap_or(Alg::RS256)),
        };
        let jwks_url = match f.get("jwks_url") {
            None => Some(None),
            Some(n) => self.jwks_url(n, &join(path, "jwks_url")).map(Some),
        };
        if let (Some(h), Some(i), Some(u)) = (&hmac_keys, &jwks_inline, &jwks_url)
            && h.is_empty()
            && i.is_none()
            && u.is_none()
        {
            self.error(
                path,
                node.pos,
                "no keys: give at least one of keys, jwks or jwks_url",
            );
            ok = false;
        }
        let rules = Rules {
            max_size: max_size?,
            leeway_secs: leeway?,
            require_exp: require_exp?,
            issuers: issuers?,
            audiences: audiences?,
            required_claims: required_claims?,
            max_lifetime_secs: max_lifetime?,
        };
        let policy = JwtProvider {
            name: name?,
            path: path.to_string(),
            rules,
            claims: claims?,
            default_tenant: default_tenant?,
            default_plan: default_plan?,
            forward_claims: forward_claims?,
            hmac_keys: hmac_keys?,
            jwks_inline: jwks_inline?,
            jwks_url: jwks_url?,
            rsa_alg: rsa_alg?,
        };
        ok.then_some(policy)
    }

    fn claim_names(&mut self, node: &Node, path: &str) -> Option<ClaimNames> {
        let f = self.object(node, path, &["user", "tenant", "plan"])?;
        let name = |d: &mut Decoder, field: &str, default: &str| match f.get(field) {
            None => Some(default.to_string()),
            Some(n) => d
                .string(n, &join(path, field))
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        };
        Some(ClaimNames {
            user: name(self, "user", "sub")?,
            tenant: name(self, "tenant", "tenant")?,
            plan: name(self, "plan", "plan")?,
        })
    }

    fn forward_claims(&mut self, node: &Node, path: &str) -> Option<Vec<(String, String)>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(
                path,
                node,
                "a mapping of claim names to x-gatehouse-* headers",
            );
            return None;
        };
        let mut out: Vec<(String, String)> = Vec::new();
        let mut ok = true;
        for (key, value) in entries {
            let p = join(path, &key.name);
            match self.upstream_header(value, &p) {
                Some(h) if crate::request::is_identity_header(&h) => {
                    self.error(
                        &p,
                        value.pos,
                        format!("{h} is set from the identity itself"),
                    );
                    ok = false;
                }
                Some(h) if out.iter().any(|(_, existing)| *existing == h) => {
                    self.error(
                        &p,
                        value.pos,
                        format!("{h} is already used by another claim"),
                    );
                    ok = false;
                }
                Some(h) => out.push((key.name.clone(), h)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn hmac_keys(&mut self, node: &Node, path: &str) -> Option<Vec<HmacKey>> {
        let items = self.list(node, path)?;
        let mut out: Vec<HmacKey> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match self.hmac_key(item, &p) {
                Some(k) => {
                    if k.kid.is_some() && out.iter().any(|o| o.kid == k.kid) {
                        self.error(&join(&p, "kid"), field_pos(item, "kid"), "duplicate kid");
                        ok = false;
                    }
                    out.push(k);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn hmac_key(&mut self, node: &Node, path: &str) -> Option<HmacKey> {
        let f = self.object(
            node,
            path,
            &[
                "kid",
                "alg",
                "secret_env",
                "secret",
                "encoding",
                "test_fixture",
            ],
        )?;
        let encoding = match f.get("encoding") {
            None => Some(SecretEncoding::Raw),
            Some(n) => {
                let ep = join(path, "encoding");
                match self.string(n, &ep) {
                    Some("raw") => Some(SecretEncoding::Raw),
                    Some("base64url") => Some(SecretEncoding::Base64Url),
                    Some(other) => {
                        self.error(
                            &ep,
                            n.pos,
                            format!("unknown encoding '{other}'; expected one of [raw, base64url]"),
                        );
                        None
                    }
                    None => None,
                }
            }
        };
        let kid = match f.get("kid") {
            None => Some(None),
            Some(n) => self.id(n, &join(path, "kid")).map(Some),
        };
        let alg = self.required(&f, path, "alg").and_then(|n| {
            let ap = join(path, "alg");
            match self.alg(n, &ap)? {
                a @ (Alg::HS256 | Alg::HS384 | Alg::HS512) => Some(a),
                other => {
                    self.error(
                        &ap,
                        n.pos,
                        format!("{other} keys come from jwks or jwks_url; keys: holds HMAC keys (HS256, HS384, HS512)"),
                    );
                    None
                }
            }
        });
        let fixture = match f.get("test_fixture") {
            None => Some(false),
            Some(n) => self.boolean(n, &join(path, "test_fixture")),
        };
        let secret = match (f.get("secret_env"), f.get("secret")) {
            (Some(n), None) => {
                let ep = join(path, "secret_env");
                let name = self.string(n, &ep)?;
                let valid = !name.is_empty()
                    && name.len() <= 128
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if valid {
                    Some(Secret::Env(name.to_string()))
                } else {
                    self.error(
                        &ep,
                        n.pos,
                        "must be an environment variable name (A-Z a-z 0-9 _)",
                    );
                    None
                }
            }
            (None, Some(n)) => {
                let sp = join(path, "secret");
                // Never echo the value: it is a secret.
                let value = match &n.value {
                    Value::Str(s) => Some(s.as_bytes().to_vec()),
                    _ => {
                        self.error(&sp, n.pos, "expected a string");
                        None
                    }
                };
                if fixture == Some(false) {
                    self.error(
                        &sp,
                        n.pos,
                        "a literal secret does not belong in a policy: name an environment variable with secret_env (or mark the key test_fixture: true in test policies)",
                    );
                    None
                } else {
                    value.map(Secret::Literal)
                }
            }
            (Some(_), Some(n)) => {
                self.error(
                    &join(path, "secret"),
                    n.pos,
                    "give secret_env or secret, not both",
                );
                None
            }
            (None, None) => {
                self.error(path, node.pos, "missing required field 'secret_env'");
                None
            }
        };
        let key = HmacKey {
            kid: kid?,
            alg: alg?,
            secret: secret?,
            encoding: encoding?,
        };
        if let Secret::Literal(text) = &key.secret {
            let checked = key
                .decode_secret(text)
                .and_then(|bytes| Key::hmac(key.alg, &bytes, None).map_err(|e| e.to_string()));
            if let Err(e) = checked {
                self.error(&join(path, "secret"), field_pos(node, "secret"), e);
                return None;
            }
        }
        Some(key)
    }

    fn inline_jwks(&mut self, node: &Node, path: &str, rsa_alg: Alg) -> Option<Option<String>> {
        if !matches!(node.value, Value::Map(_)) {
            self.wrong_type(path, node, "a JWKS mapping with a keys list");
            return None;
        }
        let doc = node.to_json().to_string();
        match parse_jwks(doc.as_bytes(), Some(rsa_alg)) {
            Ok(jwks) => {
                let mut ok = true;
                for skipped in &jwks.skipped {
                    self.error(
                        &format!("{path}.keys[{}]", skipped.index),
                        None,
                        skipped.reason.to_string(),
                    );
                    ok = false;
                }
                if jwks.keys.is_empty() && ok {
                    self.error(path, node.pos, "the JWKS holds no key");
                    ok = false;
                }
                ok.then_some(Some(doc))
            }
            Err(e) => {
                self.error(path, node.pos, e.to_string());
                None
            }
        }
    }

    fn jwks_url(&mut self, node: &Node, path: &str) -> Option<JwksUrl> {
        let f = self.object(
            node,
            path,
            &["cluster", "path", "authority", "refresh", "min_refetch"],
        )?;
        let cluster = self.required(&f, path, "cluster").and_then(|n| {
            let s = self.string(n, &join(path, "cluster"))?;
            if s.is_empty() {
                self.error(&join(path, "cluster"), n.pos, "must not be empty");
                return None;
            }
            Some(s.to_string())
        });
        let url_path = self.required(&f, path, "path").and_then(|n| {
            let s = self.string(n, &join(path, "path"))?;
            if !s.starts_with('/') {
                self.error(&join(path, "path"), n.pos, "must start with /");
                return None;
            }
            Some(s.to_string())
        });
        let authority = f
            .get("authority")
            .map(|n| self.string(n, &join(path, "authority")).map(str::to_string));
        let refresh = match f.get("refresh") {
            None => Some(600),
            Some(n) => self.duration(n, &join(path, "refresh"), 86_400),
        };
        let min_refetch = match f.get("min_refetch") {
            None => Some(30),
            Some(n) => self.duration(n, &join(path, "min_refetch"), 86_400),
        };
        let cluster = cluster?;
        let authority = match authority {
            None => cluster.clone(),
            Some(a) => a?,
        };
        Some(JwksUrl {
            authority,
            cluster,
            path: url_path?,
            refresh_secs: refresh?.max(1),
            min_refetch_secs: min_refetch?,
        })
    }

    pub(super) fn revocations(
        &mut self,
        node: &Node,
        path: &str,
        fingerprint: u64,
        longest_acceptance: Option<Option<u64>>,
    ) -> Option<Revocations> {
        let f = self.object(node, path, &["users", "jtis"])?;
        let origin = Origin::Policy(fingerprint);
        let mut ok = true;
        let mut users = Vec::new();
        if let Some(list) = f.get("users") {
            let lp = join(path, "users");
            for (i, item) in self.list(list, &lp).unwrap_or_default().iter().enumerate() {
                let p = format!("{lp}[{i}]");
                let Some(e) = self.object(item, &p, &["user", "tokens_issued_before", "until"])
                else {
                    ok = false;
                    continue;
                };
                let user = self
                    .required(&e, &p, "user")
                    .and_then(|n| self.id(n, &join(&p, "user")));
                let before = self
                    .required(&e, &p, "tokens_issued_before")
                    .and_then(|n| self.date(n, &join(&p, "tokens_issued_before")));
                let until = match e.get("until") {
                    None => Some(None),
                    Some(n) => self.date(n, &join(&p, "until")).map(Some),
                };
                // The watermark must outlive every token it covers: one issued just before
                // it is accepted for up to the lifetime bound plus the leeway.
                if let (Some(before), Some(until), Some(bound)) =
                    (before, until, longest_acceptance)
                {
                    let needed = bound.map(|b| before.saturating_add(b));
                    let short = match (until, needed) {
                        (Some(u), Some(n)) => u < n,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    if short {
                        let why = match needed {
                            Some(n) => format!(
                                "ends before the tokens it revokes do: tokens issued before \
                                 tokens_issued_before are accepted until {} (jwt.max_token_lifetime \
                                 plus jwt.leeway); set until to that or later, or leave it out",
                                crate::time::format_rfc3339(crate::time::UnixNanos::from_secs(n))
                            ),
                            None => "must be left out: jwt.max_token_lifetime is unbounded, so \
                                     the tokens it revokes never expire"
                                .to_string(),
                        };
                        self.error(&join(&p, "until"), field_pos(item, "until"), why);
                        ok = false;
                    }
                }
                match (user, before, until) {
                    (Some(user), Some(before), Some(until)) => users.push(UserRevocation {
                        user,
                        origin,
                        before,
                        until,
                    }),
                    _ => ok = false,
                }
            }
        }
        let mut jtis = Vec::new();
        if let Some(list) = f.get("jtis") {
            let lp = join(path, "jtis");
            for (i, item) in self.list(list, &lp).unwrap_or_default().iter().enumerate() {
                let p = format!("{lp}[{i}]");
                let Some(e) = self.object(item, &p, &["jti", "until"]) else {
                    ok = false;
                    continue;
                };
                let jti = self.required(&e, &p, "jti").and_then(|n| {
                    let s = self.string(n, &join(&p, "jti"))?;
                    if s.is_empty() || s.len() > 256 {
                        self.error(&join(&p, "jti"), n.pos, "must be 1 to 256 characters");
                        return None;
                    }
                    Some(s.to_string())
                });
                let until = match e.get("until") {
                    None => Some(None),
                    Some(n) => self.date(n, &join(&p, "until")).map(Some),
                };
                match (jti, until) {
                    (Some(jti), Some(until)) => jtis.push(JtiRevocation { jti, origin, until }),
                    _ => ok = false,
                }
            }
        }
        ok.then_some(Revocations { users, jtis })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration_secs;

    #[test]
    fn durations_take_a_unit_or_plain_seconds() {
        assert_eq!(parse_duration_secs("30s"), Some(30));
        assert_eq!(parse_duration_secs("10m"), Some(600));
        assert_eq!(parse_duration_secs("2h"), Some(7200));
        assert_eq!(parse_duration_secs("1d"), Some(86_400));
        assert_eq!(parse_duration_secs("45"), Some(45));
        for bad in ["", "s", "1w", "-1s", "1.5m", "99999999999999999999d"] {
            assert_eq!(parse_duration_secs(bad), None, "{bad}");
        }
    }
}
