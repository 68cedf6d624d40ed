//! Reads a case file into [`CaseFile`], through the same positioned YAML reader as
//! policies, so every mistake is reported as `file:line:column: message`.

use super::signing_key::PrivateKey;
use super::tokens::{TIME_CLAIMS, Text, TextError, TokenRecipe, When, valid_name};
use super::{
    Action, BodyExpect, CallEnd, CallExpect, Case, CaseFile, Expect, FaultSpec, PluginSource,
    RequestSpec, Step, UpstreamExpect, ValueMatch,
};
use crate::cases::BackendKind;
use crate::echo_reply::EchoReply;
use crate::host::{FailurePolicy, Reply, Route, Upstream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::authn::jwt::Alg;
use gatehouse_core::policy::tree::{Key, Node, Pos, Value};
use gatehouse_core::policy::yaml;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Everything wrong with a case file, one line each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseError {
    pub lines: Vec<String>,
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

impl std::error::Error for CaseError {}

/// Reads and checks a case file.
pub fn load(path: &Path) -> Result<CaseFile, CaseError> {
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| CaseError {
        lines: vec![format!("{name}: {e}")],
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    parse(&name, dir, &source)
}

/// Parses case-file text; `dir` resolves the relative policy path.
pub fn parse(name: &str, dir: &Path, source: &str) -> Result<CaseFile, CaseError> {
    let root = yaml::parse(source).map_err(|e| CaseError {
        lines: vec![format!("{name}:{}: {}", e.pos, e.message)],
    })?;
    let mut r = Reader {
        file: name,
        errors: Vec::new(),
        tokens: Vec::new(),
        broken_tokens: Vec::new(),
    };
    let file = r.file(&root, dir);
    match file {
        Some(f) if r.errors.is_empty() => Ok(f),
        _ => {
            // Top to bottom, like the file.
            r.errors
                .sort_by_key(|(pos, _)| pos.map(|p| (p.line, p.column)));
            Err(CaseError {
                lines: r.errors.into_iter().map(|(_, line)| line).collect(),
            })
        }
    }
}

struct Reader<'a> {
    file: &'a str,
    errors: Vec<(Option<Pos>, String)>,
    /// The file's `tokens:`, read before its cases so requests can name them.
    tokens: Vec<Arc<TokenRecipe>>,
    /// Recipes already reported as wrong: a reference to one is not reported again.
    broken_tokens: Vec<String>,
}

type Fields<'n> = Vec<(&'n Key, &'n Node)>;

fn get<'n>(fields: &Fields<'n>, name: &str) -> Option<&'n Node> {
    fields.iter().find(|(k, _)| k.name == name).map(|(_, v)| *v)
}

impl Reader<'_> {
    fn error(&mut self, pos: Option<Pos>, message: impl fmt::Display) {
        let line = match pos {
            Some(p) => format!("{}:{p}: {message}", self.file),
            None => format!("{}: {message}", self.file),
        };
        self.errors.push((pos, line));
    }

    /// The entries of a mapping, refusing names not in `allowed`.
    fn map<'n>(&mut self, node: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut fields = Vec::new();
        for (key, value) in entries {
            if allowed.contains(&key.name.as_str()) {
                fields.push((key, value));
            } else {
                self.error(
                    key.pos,
                    format!(
                        "unknown field '{}' in {what}; expected one of [{}]",
                        key.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(fields)
    }

    fn required<'n>(
        &mut self,
        fields: &Fields<'n>,
        name: &str,
        what: &str,
        at: &Node,
    ) -> Option<&'n Node> {
        let found = get(fields, name);
        if found.is_none() {
            self.error(at.pos, format!("{what} needs the field '{name}'"));
        }
        found
    }

    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A scalar read as text (`12`, `true`, `x`), for header values.
    fn scalar_text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a scalar, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            other => {
                self.error(
                    node.pos,
                    format!("{what} must be a list, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// An integer in `range`, or an error naming the field and the range.
    fn int_in(
        &mut self,
        node: &Node,
        what: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        match node.value {
            Value::Int(n) if range.contains(&n) => Some(n),
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be an integer from {} to {}, found {}",
                        range.start(),
                        range.end(),
                        node_text(node)
                    ),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = self.scalar_text(node, what)?;
        let d = parse_duration(&text);
        if d.is_none() {
            self.error(
                node.pos,
                format!("{what} must be a duration like 500ms, 61s, 2m, 1h or 1d; found '{text}'"),
            );
        }
        d
    }

    fn boolean(&mut self, node: &Node, what: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be true or false, found {}", node_text(node)),
                );
                None
            }
        }
    }

    /// `where` for a harness-only reason: `file:line:column`.
    fn at(&self, pos: Option<Pos>) -> String {
        match pos {
            Some(p) => format!("{}:{p}", self.file),
            None => self.file.to_string(),
        }
    }

    fn file(&mut self, root: &Node, dir: &Path) -> Option<CaseFile> {
        let f = self.map(
            root,
            "the case file",
            &[
                "policy",
                "plugin_config",
                "module",
                "workers",
                "start",
                "env",
                "upstreams",
                "failure_policy",
                "tokens",
                "cases",
            ],
        )?;
        let plugin = match (get(&f, "policy"), get(&f, "plugin_config")) {
            (Some(p), None) => self
                .string(p, "policy")
                .map(|p| PluginSource::Policy(dir.join(p))),
            (None, Some(c)) => self.scalar_text(c, "plugin_config").map(PluginSource::Raw),
            (Some(_), Some(c)) => {
                self.error(
                    c.pos,
                    "give either `policy` (a policy file) or `plugin_config` (the configuration as is), not both",
                );
                None
            }
            (None, None) => {
                self.error(
                    root.pos,
                    "the case file needs the field 'policy' (a policy file) or 'plugin_config' (the plugin configuration as is)",
                );
                None
            }
        };
        let module = get(&f, "module")
            .and_then(|n| self.string(n, "module"))
            .map(|m| dir.join(m));
        let workers = match get(&f, "workers") {
            None => 1,
            Some(n) => self
                .int_in(n, "workers", 1..=64)
                .and_then(|w| u32::try_from(w).ok())
                .unwrap_or(1),
        };
        let start = match get(&f, "start") {
            None => None,
            Some(n) => match self.string(n, "start") {
                Some(s) => match gatehouse_core::time::parse_rfc3339(&s) {
                    Some(secs) => Some(secs),
                    None => {
                        self.error(
                            n.pos,
                            format!("start must be an RFC 3339 time like 2026-01-01T00:00:00Z, found '{s}'"),
                        );
                        None
                    }
                },
                None => None,
            },
        };
        let mut env = Vec::new();
        if let Some(n) = get(&f, "env") {
            if let Value::Map(entries) = &n.value {
                for (k, v) in entries {
                    if let Some(v) = self.scalar_text(v, &format!("env.{}", k.name)) {
                        env.push((k.name.clone(), v));
                    }
                }
            } else {
                self.error(
                    n.pos,
                    format!("env must be a mapping, found {}", n.value.kind()),
                );
            }
        }
        // File-level features Envoy cannot provide make every case harness-only.
        let mut file_harness_only = None;
        let mut upstreams = Vec::new();
        if let Some((k, n)) = f.iter().find(|(k, _)| k.name == "upstreams") {
            file_harness_only = Some(format!("the file scripts `upstreams` ({})", self.at(k.pos)));
            for item in self.seq(n, "upstreams").unwrap_or_default() {
                if let Some(u) = self.upstream_cluster(item) {
                    if upstreams.iter().any(|o: &Upstream| o.cluster == u.cluster) {
                        self.error(item.pos, format!("cluster '{}' is listed twice", u.cluster));
                    }
                    upstreams.push(u);
                }
            }
        }
        let mut failure_policy = None;
        if let Some((k, n)) = f.iter().find(|(k, _)| k.name == "failure_policy") {
            file_harness_only.get_or_insert_with(|| {
                format!("the file sets `failure_policy` ({})", self.at(k.pos))
            });
            failure_policy = match self.string(n, "failure_policy").as_deref() {
                Some("FAIL_CLOSED") => Some(FailurePolicy::FailClosed),
                Some("FAIL_OPEN") => Some(FailurePolicy::FailOpen),
                Some("FAIL_RELOAD") => Some(FailurePolicy::FailReload),
                Some(other) => {
                    self.error(
                        n.pos,
                        format!("unknown failure_policy '{other}'; expected one of [FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD]"),
                    );
                    None
                }
                None => None,
            };
        }
        if let Some(n) = get(&f, "tokens") {
            self.tokens(n, dir, &env);
        }
        let mut cases = Vec::new();
        if let Some(n) = self.required(&f, "cases", "the case file", root) {
            for item in self.seq(n, "cases").unwrap_or_default() {
                if let Some(c) = self.case(item, file_harness_only.as_deref()) {
                    cases.push(c);
                }
            }
        }
        Some(CaseFile {
            name: self.file.to_string(),
            plugin: plugin?,
            module,
            workers,
            start,
            env,
            upstreams,
            failure_policy,
            tokens: self.tokens.clone(),
            cases,
        })
    }

    /// `tokens: { NAME: recipe, ... }`, into `self.tokens`.
    fn tokens(&mut self, node: &Node, dir: &Path, env: &[(String, String)]) {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!(
                    "tokens must be a mapping of name: recipe, found {}",
                    node.value.kind()
                ),
            );
            return;
        };
        for (key, value) in entries {
            if !valid_name(&key.name) {
                self.error(
                    key.pos,
                    format!(
                        "token name '{}' must be 1 to 64 letters, digits, '_' or '-'",
                        key.name
                    ),
                );
            } else if let Some(recipe) = self.recipe(&key.name, value, dir, env) {
                self.tokens.push(Arc::new(recipe));
            } else {
                self.broken_tokens.push(key.name.clone());
            }
        }
    }

    /// One token recipe: its key, `kid`, `header`, `claims` and time claims.
    fn recipe(
        &mut self,
        name: &str,
        node: &Node,
        dir: &Path,
        env: &[(String, String)],
    ) -> Option<TokenRecipe> {
        const KEYS: [&str; 3] = ["secret_env", "key_file", "test_key"];
        let what = format!("token '{name}'");
        let f = self.map(
            node,
            &what,
            &[
                "alg",
                "secret_env",
                "encoding",
                "key_file",
                "test_key",
                "kid",
                "header",
                "claims",
                "iat",
                "nbf",
                "exp",
            ],
        )?;
        let alg = self
            .required(&f, "alg", &what, node)
            .and_then(|n| self.alg(n, &what));
        let sources: Vec<(&Key, &Node)> = f
            .iter()
            .filter(|(k, _)| KEYS.contains(&k.name.as_str()))
            .map(|(k, v)| (*k, *v))
            .collect();
        let key = match (sources.as_slice(), alg) {
            ([(k, n)], Some(alg)) => {
                self.private_key(&what, alg, (k.name.as_str(), n), &f, dir, env)
            }
            ([_], None) => None,
            _ => {
                self.error(
                    sources.get(1).and_then(|(k, _)| k.pos).or(node.pos),
                    format!(
                        "{what} signs with exactly one of `secret_env` (HS256, HS384, HS512: a variable of the file's env), `key_file` (a PEM or JWK private key) or `test_key`"
                    ),
                );
                None
            }
        };
        if let Some((k, _)) = f.iter().find(|(k, _)| k.name == "encoding")
            && sources.first().is_some_and(|(s, _)| s.name != "secret_env")
        {
            self.error(k.pos, format!("{what}: `encoding` goes with `secret_env`"));
        }
        // Each part on its own, so one mistake does not hide the next.
        let kid = match get(&f, "kid") {
            Some(n) => self.string(n, &format!("{what}: kid")).map(Some),
            None => Some(None),
        };
        let header = match get(&f, "header") {
            Some(n) => self.json_object(n, &format!("{what}: header"), &["alg", "kid"], |m| {
                format!("the header's `{m}` is the recipe's own `{m}:` field; a token whose header does not match its signature is an attack token: paste it as is")
            }),
            None => Some(serde_json::Map::new()),
        };
        let claims = match get(&f, "claims") {
            Some(n) => self.json_object(n, &format!("{what}: claims"), &TIME_CLAIMS, |m| {
                format!("write `{m}` beside `claims`, where it can be relative to the request (`{m}: -60s`, `{m}: +1h`) or fixed (`{m}: 2026-01-01T00:00:00Z`)")
            }),
            None => Some(serde_json::Map::new()),
        };
        let mut times = Some(Vec::new());
        for claim in TIME_CLAIMS {
            if let Some(n) = get(&f, claim) {
                match (self.when(n, &format!("{what}: {claim}")), &mut times) {
                    (Some(when), Some(times)) => times.push((claim, when)),
                    _ => times = None,
                }
            }
        }
        Some(TokenRecipe {
            name: name.to_string(),
            alg: alg?,
            key: key?,
            kid: kid?,
            header: header?,
            claims: claims?,
            times: times?,
        })
    }

    /// A supported JWA name, exactly as the plugin reads it.
    fn alg(&mut self, node: &Node, what: &str) -> Option<Alg> {
        let text = self.string(node, &format!("{what}: alg"))?;
        let alg = Alg::from_name(&text);
        if alg.is_none() {
            let names: Vec<&str> = Alg::ALL.iter().map(|a| a.as_str()).collect();
            self.error(
                node.pos,
                format!(
                    "{what}: unknown alg '{text}'; expected one of [{}] (paste attack tokens such as alg none as they are)",
                    names.join(", ")
                ),
            );
        }
        alg
    }

    /// The key behind `secret_env`, `key_file` or `test_key`. A secret's value is never
    /// part of a message.
    fn private_key(
        &mut self,
        what: &str,
        alg: Alg,
        (field, node): (&str, &Node),
        f: &Fields<'_>,
        dir: &Path,
        env: &[(String, String)],
    ) -> Option<PrivateKey> {
        let text = self.string(node, &format!("{what}: {field}"))?;
        let key = match field {
            "secret_env" => {
                let Some((_, secret)) = env.iter().find(|(k, _)| *k == text) else {
                    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
                    self.error(
                        node.pos,
                        format!(
                            "{what}: secret_env '{text}' is not in the file's env; expected one of [{}]",
                            names.join(", ")
                        ),
                    );
                    return None;
                };
                let secret = match get(f, "encoding") {
                    None => secret.as_bytes().to_vec(),
                    Some(n) => match self.string(n, &format!("{what}: encoding"))?.as_str() {
                        "raw" => secret.as_bytes().to_vec(),
                        "base64url" => match URL_SAFE_NO_PAD.decode(secret) {
                            Ok(bytes) => bytes,
                            Err(_) => {
                                self.error(
                                    node.pos,
                                    format!("{what}: the value of '{text}' is not base64url (encoding: base64url)"),
                                );
                                return None;
                            }
                        },
                        other => {
                            self.error(
                                n.pos,
                                format!(
                                    "{what}: unknown encoding '{other}'; expected one of [raw, base64url]"
                                ),
                            );
                            return None;
                        }
                    },
                };
                PrivateKey::hmac(alg, secret, &text)
            }
            "key_file" => PrivateKey::from_file(alg, &dir.join(&text)),
            _ => PrivateKey::built_in(alg, &text),
        };
        key.map_err(|why| self.error(node.pos, format!("{what}: {why}")))
            .ok()
    }

    /// A mapping as a JSON object, refusing the members in `reserved` (with `why`).
    fn json_object(
        &mut self,
        node: &Node,
        what: &str,
        reserved: &[&str],
        why: impl Fn(&str) -> String,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut ok = true;
        for (k, _) in entries {
            if reserved.contains(&k.name.as_str()) {
                self.error(k.pos, format!("{what}: {}", why(&k.name)));
                ok = false;
            }
        }
        match node.to_json() {
            serde_json::Value::Object(map) if ok => Some(map),
            _ => None,
        }
    }

    /// A time claim: `now`, `-60s`, `+1h`, an RFC 3339 time or Unix seconds.
    fn when(&mut self, node: &Node, what: &str) -> Option<When> {
        let when = match &node.value {
            Value::Int(secs) => Some(When::At(*secs)),
            Value::Str(s) => When::parse(s),
            _ => None,
        };
        if when.is_none() {
            self.error(
                node.pos,
                format!(
                    "{what} must be relative to the request (now, -60s, +1h; units s, m, h, d), an RFC 3339 time or Unix seconds; found {}",
                    node_text(node)
                ),
            );
        }
        when
    }

    /// A path or header value, with its `${token:NAME}` references resolved.
    fn text(&mut self, node: &Node, what: &str) -> Option<Text> {
        let source = self.scalar_text(node, what)?;
        let parsed = Text::parse(&source, |name| {
            self.tokens.iter().find(|t| t.name == name).cloned()
        });
        let why = match parsed {
            Ok(text) => return Some(text),
            Err(TextError::UnknownToken(name)) if self.broken_tokens.contains(&name) => {
                return None;
            }
            Err(TextError::UnknownToken(name)) if self.tokens.is_empty() => {
                format!("unknown token '{name}': the file has no `tokens:`")
            }
            Err(TextError::UnknownToken(name)) => {
                let names: Vec<&str> = self.tokens.iter().map(|t| t.name.as_str()).collect();
                format!(
                    "unknown token '{name}'; expected one of [{}]",
                    names.join(", ")
                )
            }
            Err(TextError::Syntax(why)) => why,
        };
        self.error(node.pos, format!("{what}: {why}"));
        None
    }

    /// `{cluster: NAME, routes: [...]}`.
    fn upstream_cluster(&mut self, node: &Node) -> Option<Upstream> {
        let f = self.map(node, "an upstream", &["cluster", "routes"])?;
        let cluster = self
            .required(&f, "cluster", "an upstream", node)
            .and_then(|n| self.string(n, "cluster"))?;
        let mut upstream = Upstream::new(&cluster);
        if let Some(n) = self.required(&f, "routes", "an upstream", node) {
            for r in self.seq(n, "routes").unwrap_or_default() {
                if let Some(route) = self.route(r) {
                    upstream = upstream.route(route);
                }
            }
        }
        Some(upstream)
    }

    /// `{match: {...}, respond: {...}}`, `{match, hang: true}` or `{match, reset: true, delay}`.
    fn route(&mut self, node: &Node) -> Option<Route> {
        let f = self.map(
            node,
            "a route",
            &["match", "respond", "hang", "reset", "delay"],
        )?;
        let mut route = Route::any();
        if let Some(m) = get(&f, "match") {
            let mf = self.map(m, "a route's match", &["method", "path", "headers"])?;
            if let Some(n) = get(&mf, "method") {
                route.method = Some(self.string(n, "match.method")?);
            }
            if let Some(n) = get(&mf, "path") {
                route.path = Some(self.string(n, "match.path")?);
            }
            if let Some(n) = get(&mf, "headers") {
                for (name, value) in self.headers(n, "match.headers", false)? {
                    if let ValueMatch::Equals(v) = value {
                        route = route.header(&name, &v);
                    }
                }
            }
        }
        let answers: Vec<&&Key> = f
            .iter()
            .map(|(k, _)| k)
            .filter(|k| ["respond", "hang", "reset"].contains(&k.name.as_str()))
            .collect();
        if answers.len() != 1 {
            self.error(
                answers.get(1).and_then(|k| k.pos).or(node.pos),
                "a route answers with exactly one of `respond: {...}`, `hang: true` or `reset: true`",
            );
            return None;
        }
        let delay = match get(&f, "delay") {
            Some(n) => Some(self.duration(n, "delay")?),
            None => None,
        };
        if let Some(n) = get(&f, "respond") {
            if let Some((k, _)) = f.iter().find(|(k, _)| k.name == "delay") {
                self.error(k.pos, "put a response's delay inside `respond`");
            }
            route.reply = self.respond(n)?;
        } else if let Some(n) = get(&f, "hang") {
            if !self.boolean(n, "hang")? {
                self.error(n.pos, "hang can only be true; leave it out otherwise");
            }
            if let Some((k, _)) = f.iter().find(|(k, _)| k.name == "delay") {
                self.error(k.pos, "a hanging route has no delay: it never answers");
            }
            route.reply = Reply::hang();
        } else if let Some(n) = get(&f, "reset") {
            if !self.boolean(n, "reset")? {
                self.error(n.pos, "reset can only be true; leave it out otherwise");
            }
            route.reply = Reply::reset().delay(delay.unwrap_or_default());
        }
        Some(route)
    }

    /// `{status, headers, body, delay}`: a scripted response. Status defaults to 200.
    fn respond(&mut self, node: &Node) -> Option<Reply> {
        let f = self.map(node, "respond", &["status", "headers", "body", "delay"])?;
        let status = match get(&f, "status") {
            Some(n) => u16::try_from(self.int_in(n, "respond.status", 100..=599)?).ok()?,
            None => 200,
        };
        let mut reply = Reply::status(status);
        if let Some(n) = get(&f, "headers") {
            for (name, value) in self.headers(n, "respond.headers", false)? {
                if let ValueMatch::Equals(v) = value {
                    reply = reply.header(&name, &v);
                }
            }
        }
        if let Some(n) = get(&f, "body")
            && let Reply::Respond { body, .. } = &mut reply
        {
            *body = self.body(n, "respond.body")?;
        }
        if let Some(n) = get(&f, "delay") {
            reply = reply.delay(self.duration(n, "respond.delay")?);
        }
        Some(reply)
    }

    /// A body: text as is, a mapping or list as JSON.
    fn body(&mut self, node: &Node, what: &str) -> Option<Vec<u8>> {
        match &node.value {
            Value::Str(s) => Some(s.clone().into_bytes()),
            Value::Map(_) | Value::Seq(_) => Some(node.to_json().to_string().into_bytes()),
            other => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a string or a mapping, found {}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    fn case(&mut self, node: &Node, file_harness_only: Option<&str>) -> Option<Case> {
        let f = self.map(node, "a case", &["name", "backends", "steps"])?;
        let name = self
            .required(&f, "name", "a case", node)
            .and_then(|n| self.string(n, "name"));
        let mut backends = vec![BackendKind::Harness, BackendKind::Envoy];
        let mut envoy_written_at = None;
        if let Some(n) = get(&f, "backends") {
            backends.clear();
            for b in self.seq(n, "backends").unwrap_or_default() {
                match self.string(b, "a backend").as_deref() {
                    Some("harness") => backends.push(BackendKind::Harness),
                    Some("envoy") => {
                        envoy_written_at = b.pos;
                        backends.push(BackendKind::Envoy);
                    }
                    Some(other) => self.error(
                        b.pos,
                        format!("unknown backend '{other}'; expected one of [harness, envoy]"),
                    ),
                    None => {}
                }
            }
        }
        let mut steps = Vec::new();
        let mut harness_only = file_harness_only.map(str::to_string);
        if let Some(n) = self.required(&f, "steps", "a case", node) {
            for s in self.seq(n, "steps").unwrap_or_default() {
                if let Some((step, why)) = self.step(s) {
                    if harness_only.is_none() {
                        harness_only = why;
                    }
                    steps.push(step);
                }
            }
        }
        if let (Some(at), Some(why)) = (envoy_written_at, &harness_only) {
            self.error(
                Some(at),
                format!(
                    "this case cannot run on envoy: {why}, which only the harness can do; write `backends: [harness]`, or leave `backends` out to have it skipped on Envoy"
                ),
            );
        }
        Some(Case {
            name: name?,
            pos: node.pos,
            backends,
            harness_only,
            steps,
        })
    }

    /// A step, and why it needs the harness if it does.
    fn step(&mut self, node: &Node) -> Option<(Step, Option<String>)> {
        const ACTIONS: [&str; 4] = ["request", "advance", "tick", "fault"];
        let f = self.map(
            node,
            "a step",
            &["request", "worker", "expect", "advance", "tick", "fault"],
        )?;
        let actions: Vec<&&Key> = f
            .iter()
            .map(|(k, _)| k)
            .filter(|k| ACTIONS.contains(&k.name.as_str()))
            .collect();
        let Some(action_key) = actions.first() else {
            self.error(
                node.pos,
                "a step needs one of `request`, `advance`, `tick` or `fault`",
            );
            return None;
        };
        if let Some(second) = actions.get(1) {
            self.error(
                second.pos,
                format!(
                    "a step does one thing: `{}` and `{}` go in separate steps",
                    action_key.name, second.name
                ),
            );
            return None;
        }
        let is_request = action_key.name == "request";
        let mut why = (!is_request).then(|| {
            format!(
                "it uses `{}` ({})",
                action_key.name,
                self.at(action_key.pos)
            )
        });
        let expect = match get(&f, "expect") {
            Some(n) => self.expect(n, is_request)?,
            None if is_request => {
                self.error(node.pos, "a step needs the field 'expect'");
                return None;
            }
            None => Expect::default(),
        };
        if let Some((k, _)) = f.iter().find(|(k, _)| k.name == "expect")
            && expect.needs_host()
        {
            why.get_or_insert_with(|| {
                format!(
                    "it expects metrics, logs, calls or traps ({})",
                    self.at(k.pos)
                )
            });
        }
        let worker = match f.iter().find(|(k, _)| k.name == "worker") {
            Some((k, n)) if is_request => {
                why.get_or_insert_with(|| format!("it picks a `worker` ({})", self.at(k.pos)));
                Some(usize::try_from(self.int_in(n, "worker", 0..=63)?).ok()?)
            }
            Some((k, _)) => {
                self.error(k.pos, "`worker` goes on a `request` step");
                return None;
            }
            None => None,
        };
        let value = get(&f, action_key.name.as_str())?;
        let action = match action_key.name.as_str() {
            "request" => {
                let mut request = self.request(value)?;
                if request.chunk.is_some() {
                    why.get_or_insert_with(|| {
                        format!("it sends the body in `chunk`s ({})", self.at(value.pos))
                    });
                }
                request.worker = worker;
                Action::Request(request)
            }
            "advance" => Action::Advance(self.duration(value, "advance")?),
            "tick" => {
                match &value.value {
                    Value::Bool(true) => {}
                    Value::Map(entries) if entries.is_empty() => {}
                    _ => {
                        self.error(value.pos, "write `tick: true` (or `tick: {}`)");
                        return None;
                    }
                }
                Action::Tick
            }
            _ => Action::Fault(self.fault(value)?),
        };
        Some((
            Step {
                pos: node.pos,
                action,
                expect: Box::new(expect),
            },
            why,
        ))
    }

    /// `{call: NAME, nth: N, status: N | Name}`.
    fn fault(&mut self, node: &Node) -> Option<FaultSpec> {
        let f = self.map(node, "fault", &["call", "nth", "status"])?;
        let call = self
            .required(&f, "call", "fault", node)
            .and_then(|n| self.string(n, "fault.call"));
        let nth = match get(&f, "nth") {
            Some(n) => self
                .int_in(n, "fault.nth", 1..=i64::MAX)
                .and_then(|n| u64::try_from(n).ok()),
            None => Some(1),
        };
        let status = self
            .required(&f, "status", "fault", node)
            .and_then(|n| match &n.value {
                Value::Int(_) => self
                    .int_in(n, "fault.status", 0..=12)
                    .and_then(|s| u32::try_from(s).ok()),
                Value::Str(s) => match STATUS_NAMES.iter().position(|name| name == s) {
                    Some(i) => u32::try_from(i).ok(),
                    None => {
                        self.error(
                            n.pos,
                            format!(
                                "unknown status '{s}'; expected 0..12 or one of [{}]",
                                STATUS_NAMES.join(", ")
                            ),
                        );
                        None
                    }
                },
                other => {
                    self.error(
                        n.pos,
                        format!(
                            "fault.status must be 0..12 or a status name, found {}",
                            other.kind()
                        ),
                    );
                    None
                }
            });
        Some(FaultSpec {
            call: call?,
            nth: nth?,
            status: status?,
        })
    }

    fn request(&mut self, node: &Node) -> Option<RequestSpec> {
        let f = self.map(
            node,
            "a request",
            &["method", "path", "headers", "body", "chunk", "reply"],
        )?;
        let method = match get(&f, "method") {
            Some(n) => self.string(n, "method")?,
            None => "GET".to_string(),
        };
        let path = self.required(&f, "path", "a request", node)?;
        // A string, as before tokens; `text` alone would take `path: 12`.
        self.string(path, "path")?;
        let path = self.text(path, "path")?;
        let mut headers = Vec::new();
        if let Some(n) = get(&f, "headers") {
            let Value::Map(entries) = &n.value else {
                self.error(
                    n.pos,
                    format!(
                        "request headers must be a mapping, found {}",
                        n.value.kind()
                    ),
                );
                return None;
            };
            for (k, v) in entries {
                let value = self.text(v, &format!("header '{}'", k.name))?;
                headers.push((k.name.to_ascii_lowercase(), value));
            }
        }
        let body = match get(&f, "body") {
            None => Vec::new(),
            Some(n) => self.body(n, "body")?,
        };
        let chunk = match get(&f, "chunk") {
            Some(n) => Some(usize::try_from(self.int_in(n, "chunk", 1..=1 << 30)?).ok()?),
            None => None,
        };
        let reply = match get(&f, "reply") {
            Some(n) => Some(self.echo_reply(n)?),
            None => None,
        };
        Some(RequestSpec {
            method,
            path,
            headers,
            body,
            chunk,
            worker: None,
            reply,
        })
    }

    /// `reply: {status, headers, body, chunk}`: what the echo upstream answers instead of
    /// the echo, if the request reaches it. Status defaults to 200.
    fn echo_reply(&mut self, node: &Node) -> Option<EchoReply> {
        let f = self.map(node, "reply", &["status", "headers", "body", "chunk"])?;
        let mut reply = EchoReply {
            status: 200,
            ..EchoReply::default()
        };
        if let Some(n) = get(&f, "status") {
            reply.status = u16::try_from(self.int_in(n, "reply.status", 200..=599)?).ok()?;
        }
        if let Some(n) = get(&f, "headers") {
            for (name, value) in self.headers(n, "reply.headers", false)? {
                if let ValueMatch::Equals(v) = value {
                    reply.headers.push((name, v));
                }
            }
        }
        if let Some(n) = get(&f, "body") {
            reply.body = self.body(n, "reply.body")?;
        }
        if let Some(n) = get(&f, "chunk") {
            reply.chunk = Some(usize::try_from(self.int_in(n, "reply.chunk", 1..=1 << 20)?).ok()?);
        }
        Some(reply)
    }

    /// `{name: value}`; names are lower-cased. With `allow_present`, `present` is a match.
    fn headers(
        &mut self,
        node: &Node,
        what: &str,
        allow_present: bool,
    ) -> Option<Vec<(String, ValueMatch)>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let text = self.scalar_text(v, &format!("header '{}'", k.name))?;
            let m = if allow_present && text == "present" {
                ValueMatch::Present
            } else {
                ValueMatch::Equals(text)
            };
            out.push((k.name.to_ascii_lowercase(), m));
        }
        Some(out)
    }

    fn names(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for n in self.seq(node, what)? {
            out.push(self.string(n, what)?.to_ascii_lowercase());
        }
        Some(out)
    }

    /// `expect:`; only a request's may look at the response.
    fn expect(&mut self, node: &Node, is_request: bool) -> Option<Expect> {
        const RESPONSE: [&str; 5] = ["status", "body", "headers", "absent_headers", "upstream"];
        const HOST: [&str; 4] = ["metrics", "logs", "calls", "trapped"];
        let allowed: Vec<&str> = if is_request {
            RESPONSE.iter().chain(HOST.iter()).copied().collect()
        } else {
            HOST.to_vec()
        };
        if !is_request && let Value::Map(entries) = &node.value {
            for (k, _) in entries {
                if RESPONSE.contains(&k.name.as_str()) {
                    self.error(
                        k.pos,
                        format!(
                            "'{}' needs a response: only a `request` step's expect has one; here expect may hold [{}]",
                            k.name,
                            HOST.join(", ")
                        ),
                    );
                }
            }
        }
        let f = match &node.value {
            Value::Map(entries) => {
                let known: Vec<(&Key, &Node)> = entries
                    .iter()
                    .filter(|(k, _)| is_request || !RESPONSE.contains(&k.name.as_str()))
                    .map(|(k, v)| (k, v))
                    .collect();
                let mut fields = Vec::new();
                for (k, v) in known {
                    if allowed.contains(&k.name.as_str()) {
                        fields.push((k, v));
                    } else {
                        self.error(
                            k.pos,
                            format!(
                                "unknown field '{}' in expect; expected one of [{}]",
                                k.name,
                                allowed.join(", ")
                            ),
                        );
                    }
                }
                fields
            }
            _ => self.map(node, "expect", &allowed)?,
        };
        let mut e = Expect::default();
        if let Some(n) = get(&f, "status") {
            match n.value {
                Value::Int(s) if (100..=599).contains(&s) => e.status = u16::try_from(s).ok(),
                _ => self.error(n.pos, "status must be an HTTP status from 100 to 599"),
            }
        }
        if let Some(n) = get(&f, "body") {
            e.body = match &n.value {
                Value::Str(s) => Some(BodyExpect::Text(s.clone())),
                Value::Map(_) => Some(BodyExpect::JsonSubset(n.to_json())),
                other => {
                    self.error(n.pos, format!("expect.body must be a mapping (JSON fields) or a string (exact text), found {}", other.kind()));
                    None
                }
            };
        }
        if let Some(n) = get(&f, "headers") {
            e.headers = self.headers(n, "expect.headers", true)?;
        }
        if let Some(n) = get(&f, "absent_headers") {
            e.absent_headers = self.names(n, "absent_headers")?;
        }
        if let Some(n) = get(&f, "upstream") {
            e.upstream = Some(self.upstream(n)?);
        }
        // Each part on its own, so one mistake does not hide the next.
        if let Some(n) = get(&f, "metrics") {
            if let Value::Map(entries) = &n.value {
                for (k, v) in entries {
                    if let Some(value) = self
                        .int_in(v, &format!("metric '{}'", k.name), 0..=i64::MAX)
                        .and_then(|v| u64::try_from(v).ok())
                    {
                        e.metrics.push((k.name.clone(), value));
                    }
                }
            } else {
                self.error(
                    n.pos,
                    format!(
                        "expect.metrics must be a mapping of name: value, found {}",
                        n.value.kind()
                    ),
                );
            }
        }
        if let Some(n) = get(&f, "logs")
            && let Some(lf) = self.map(n, "expect.logs", &["contains", "absent"])
        {
            if let Some(c) = get(&lf, "contains") {
                e.logs_contain = self.texts(c, "logs.contains").unwrap_or_default();
            }
            if let Some(a) = get(&lf, "absent") {
                e.logs_absent = self.texts(a, "logs.absent").unwrap_or_default();
            }
        }
        if let Some(n) = get(&f, "calls") {
            let items = self.seq(n, "expect.calls").unwrap_or_default();
            let calls: Vec<Option<CallExpect>> = items.iter().map(|c| self.call(c)).collect();
            e.calls = Some(calls.into_iter().flatten().collect());
        }
        if let Some(n) = get(&f, "trapped") {
            e.trapped = Some(self.boolean(n, "trapped")?);
        }
        Some(e)
    }

    /// A list of strings, kept as written (log substrings are case-sensitive).
    fn texts(&mut self, node: &Node, what: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        for n in self.seq(node, what)? {
            out.push(self.scalar_text(n, what)?);
        }
        Some(out)
    }

    /// `{cluster, method, path, result, status}`, each optional.
    fn call(&mut self, node: &Node) -> Option<CallExpect> {
        let f = self.map(
            node,
            "an expected call",
            &["cluster", "method", "path", "result", "status"],
        )?;
        let mut c = CallExpect::default();
        if let Some(n) = get(&f, "cluster") {
            c.cluster = Some(self.string(n, "call.cluster")?);
        }
        if let Some(n) = get(&f, "method") {
            c.method = Some(self.string(n, "call.method")?);
        }
        if let Some(n) = get(&f, "path") {
            c.path = Some(self.string(n, "call.path")?);
        }
        if let Some(n) = get(&f, "result") {
            let text = self.string(n, "call.result")?;
            match CallEnd::NAMES.iter().find(|(name, _)| *name == text) {
                Some((_, end)) => c.result = Some(*end),
                None => {
                    let names: Vec<&str> = CallEnd::NAMES.iter().map(|(n, _)| *n).collect();
                    self.error(
                        n.pos,
                        format!(
                            "unknown call result '{text}'; expected one of [{}]",
                            names.join(", ")
                        ),
                    );
                    return None;
                }
            }
        }
        if let Some(n) = get(&f, "status") {
            c.status = Some(u16::try_from(self.int_in(n, "call.status", 100..=599)?).ok()?);
            if c.result.is_some_and(|r| r != CallEnd::Responded) {
                self.error(n.pos, "a call with a status was `responded`");
            }
        }
        Some(c)
    }

    fn upstream(&mut self, node: &Node) -> Option<UpstreamExpect> {
        if let Value::Str(s) = &node.value
            && s == "none"
        {
            return Some(UpstreamExpect::Never);
        }
        if matches!(node.value, Value::Null) {
            self.error(node.pos, "upstream must be `none` or a mapping; write `upstream: none` for \"never reached\"");
            return None;
        }
        let f = self.map(node, "expect.upstream", &["headers", "absent_headers"])?;
        let headers = match get(&f, "headers") {
            Some(n) => self.headers(n, "upstream.headers", true)?,
            None => Vec::new(),
        };
        let absent_headers = match get(&f, "absent_headers") {
            Some(n) => self.names(n, "upstream.absent_headers")?,
            None => Vec::new(),
        };
        Some(UpstreamExpect::Reached {
            headers,
            absent_headers,
        })
    }
}

/// proxy-wasm `WasmResult` names, by value: `fault.status` may say either.
pub const STATUS_NAMES: [&str; 13] = [
    "Ok",
    "NotFound",
    "BadArgument",
    "SerializationFailure",
    "ParseFailure",
    "BadExpression",
    "InvalidMemoryAccess",
    "Empty",
    "CasMismatch",
    "ResultMismatch",
    "InternalFailure",
    "BrokenConnection",
    "Unimplemented",
];

/// A scalar as it was written, for messages.
fn node_text(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.kind().to_string(),
    }
}

/// `500ms`, `61s`, `2m`, `1h`, `1d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(ms)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn parse_str(src: &str) -> Result<CaseFile, CaseError> {
        parse("t.cases.yaml", Path::new("/p"), src)
    }

    const GOOD: &str = "\
policy: example.yaml
start: 2026-01-01T00:00:00Z
env: { A: b }
cases:
  - name: one
    backends: [harness]
    steps:
      - request: { method: POST, path: /v1/x, headers: { x-api-key: k, X-N: 3 }, body: hi }
        expect:
          status: 401
          body: { code: UNAUTHORIZED, request_id: present }
          headers: { content-type: application/json, www-authenticate: present }
          absent_headers: [Server]
          upstream: none
      - advance: 61s
      - request: { path: /v1/y }
        expect:
          upstream: { headers: { x-gatehouse-user: u }, absent_headers: [x-evil] }
";

    #[test]
    fn a_case_file_is_read() {
        let f = parse_str(GOOD).unwrap();
        assert_eq!(
            f.plugin,
            PluginSource::Policy(Path::new("/p/example.yaml").to_path_buf())
        );
        assert_eq!(f.start, Some(1_767_225_600));
        assert_eq!(f.env, vec![("A".into(), "b".into())]);
        let case = &f.cases[0];
        assert_eq!(case.backends, vec![BackendKind::Harness]);
        assert_eq!(case.steps.len(), 3);
        let Action::Request(request) = &case.steps[0].action else {
            panic!()
        };
        let expect = &case.steps[0].expect;
        assert_eq!(request.method, "POST");
        assert_eq!(request.headers[1], ("x-n".into(), "3".into()));
        assert_eq!(request.body, b"hi");
        assert_eq!(expect.status, Some(401));
        assert_eq!(
            expect.headers[1],
            ("www-authenticate".into(), ValueMatch::Present)
        );
        assert_eq!(expect.absent_headers, vec!["server".to_string()]);
        assert!(matches!(expect.upstream, Some(UpstreamExpect::Never)));
        assert!(matches!(case.steps[1].action, Action::Advance(d) if d == Duration::from_secs(61)));
        let Action::Request(request) = &case.steps[2].action else {
            panic!()
        };
        assert_eq!(request.method, "GET");
    }

    #[test]
    fn unknown_fields_are_errors_with_their_position() {
        let err = parse_str("policy: p.yaml\ncases:\n  - name: x\n    steps:\n      - request: { path: / }\n        expect: { stauts: 200 }\n").unwrap_err();
        assert_eq!(err.lines.len(), 1, "{err}");
        assert!(
            err.lines[0].starts_with("t.cases.yaml:6:19: unknown field 'stauts'"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        let err = parse_str("policy: p.yaml\nworkers: 0\ncases:\n  - name: x\n    backends: [nginx]\n    steps:\n      - advance: soon\n").unwrap_err();
        assert_eq!(err.lines.len(), 3, "{err}");
        assert!(
            err.lines[0].starts_with("t.cases.yaml:2:10: workers"),
            "{err}"
        );
        assert!(err.lines[1].contains("unknown backend 'nginx'"), "{err}");
        assert!(
            err.lines[2].starts_with("t.cases.yaml:7:18: advance"),
            "{err}"
        );
    }

    const FEATURES: &str = "\
plugin_config: tick queue
module: probe.wasm
workers: 2
failure_policy: FAIL_OPEN
upstreams:
  - cluster: control
    routes:
      - match: { method: GET, path: /v1/*, headers: { X-T: a } }
        respond: { status: 201, headers: { x-a: b }, body: { ok: true }, delay: 30ms }
      - match: { path: /slow }
        hang: true
      - reset: true
        delay: 5ms
cases:
  - name: all
    steps:
      - tick: true
        expect: { metrics: { probe_ticks: 2 }, trapped: false }
      - tick: {}
      - fault: { call: proxy_set_shared_data, nth: 2, status: CasMismatch }
      - fault: { call: proxy_log, status: 10 }
      - request: { method: POST, path: /x, body: abc, chunk: 2 }
        worker: 1
        expect:
          status: 200
          logs: { contains: [a, b], absent: [c] }
          calls: [{ cluster: control, method: GET, path: /v1/k, result: responded, status: 201 }, { result: timed_out }]
";

    #[test]
    fn the_harness_features_are_read() {
        let f = parse_str(FEATURES).unwrap();
        assert_eq!(f.plugin, PluginSource::Raw("tick queue".into()));
        assert_eq!(f.module, Some(Path::new("/p/probe.wasm").to_path_buf()));
        assert_eq!(f.workers, 2);
        assert_eq!(f.failure_policy, Some(FailurePolicy::FailOpen));
        let up = &f.upstreams[0];
        assert_eq!(up.cluster, "control");
        assert_eq!(up.routes.len(), 3);
        assert_eq!(up.routes[0].method.as_deref(), Some("GET"));
        assert_eq!(up.routes[0].path.as_deref(), Some("/v1/*"));
        assert_eq!(up.routes[0].headers, vec![("x-t".into(), "a".into())]);
        let Reply::Respond {
            status,
            headers,
            body,
            delay,
        } = &up.routes[0].reply
        else {
            panic!("{:?}", up.routes[0].reply)
        };
        assert_eq!(*status, 201);
        assert_eq!(headers, &vec![("x-a".to_string(), "b".to_string())]);
        assert_eq!(body, br#"{"ok":true}"#);
        assert_eq!(*delay, Duration::from_millis(30));
        assert!(matches!(up.routes[1].reply, Reply::Hang));
        assert!(up.routes[2].path.is_none());
        assert!(
            matches!(up.routes[2].reply, Reply::Reset { delay } if delay == Duration::from_millis(5))
        );
        let case = &f.cases[0];
        assert!(
            case.harness_only
                .as_deref()
                .unwrap()
                .contains("`upstreams`")
        );
        let steps = &case.steps;
        assert!(matches!(steps[0].action, Action::Tick));
        assert_eq!(steps[0].expect.metrics, vec![("probe_ticks".into(), 2)]);
        assert_eq!(steps[0].expect.trapped, Some(false));
        assert!(matches!(steps[1].action, Action::Tick));
        let Action::Fault(fault) = &steps[2].action else {
            panic!()
        };
        assert_eq!(
            fault,
            &FaultSpec {
                call: "proxy_set_shared_data".into(),
                nth: 2,
                status: 8
            }
        );
        let Action::Fault(fault) = &steps[3].action else {
            panic!()
        };
        assert_eq!((fault.nth, fault.status), (1, 10));
        let Action::Request(r) = &steps[4].action else {
            panic!()
        };
        assert_eq!((r.chunk, r.worker), (Some(2), Some(1)));
        let e = &steps[4].expect;
        assert_eq!(e.logs_contain, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(e.logs_absent, vec!["c".to_string()]);
        let calls = e.calls.as_ref().unwrap();
        assert_eq!(calls[0].cluster.as_deref(), Some("control"));
        assert_eq!(calls[0].result, Some(CallEnd::Responded));
        assert_eq!(calls[0].status, Some(201));
        assert_eq!(calls[1].result, Some(CallEnd::TimedOut));
    }

    #[test]
    fn a_case_is_harness_only_for_its_first_harness_feature() {
        let f = parse_str("policy: p.yaml\ncases:\n  - name: a\n    steps:\n      - request: { path: / }\n        expect: { status: 200 }\n      - advance: 1s\n  - name: b\n    steps:\n      - request: { path: / }\n        expect: { status: 200 }\n").unwrap();
        assert_eq!(
            f.cases[0].harness_only.as_deref(),
            Some("it uses `advance` (t.cases.yaml:7:9)")
        );
        assert_eq!(f.cases[1].harness_only, None);
        assert_eq!(
            f.cases[1].backends,
            vec![BackendKind::Harness, BackendKind::Envoy]
        );
    }

    fn errors(src: &str) -> Vec<String> {
        parse_str(src).unwrap_err().lines
    }

    #[test]
    fn policy_and_plugin_config_are_exclusive_and_one_is_required() {
        let both = errors("policy: p.yaml\nplugin_config: x\ncases: []\n");
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(
            both[0].starts_with("t.cases.yaml:2:16: give either `policy`"),
            "{both:?}"
        );
        let neither = errors("cases: []\n");
        assert!(
            neither[0].contains("needs the field 'policy' (a policy file) or 'plugin_config'"),
            "{neither:?}"
        );
    }

    #[test]
    fn mistakes_in_the_new_fields_are_reported_at_their_position() {
        let e = errors(
            "\
plugin_config: x
failure_policy: FAIL_SOMETIMES
upstreams:
  - cluster: c
    routes:
      - match: { pth: /x }
        respond: { status: 200 }
      - respond: { status: 200, bodyy: x }
      - match: { path: /y }
        respond: { status: 200 }
        hang: true
cases:
  - name: x
    backends: [envoy]
    steps:
      - tick: false
      - fault: { call: proxy_log, status: Broken }
      - advance: 1s
        tick: true
      - advance: 1s
        expect: { status: 200 }
      - request: { path: / }
        expect: { calls: [{ result: finished }], logs: { has: [x] }, metrics: { m: -1 } }
",
        );
        let want = [
            "t.cases.yaml:2:17: unknown failure_policy 'FAIL_SOMETIMES'",
            "t.cases.yaml:6:18: unknown field 'pth' in a route's match",
            "t.cases.yaml:8:33: unknown field 'bodyy' in respond",
            "t.cases.yaml:11:9: a route answers with exactly one of",
            "t.cases.yaml:14:16: this case cannot run on envoy: the file scripts `upstreams` (t.cases.yaml:3:1)",
            "t.cases.yaml:16:15: write `tick: true`",
            "t.cases.yaml:17:43: unknown status 'Broken'; expected 0..12 or one of [Ok, NotFound,",
            "t.cases.yaml:19:9: a step does one thing: `advance` and `tick` go in separate steps",
            "t.cases.yaml:21:19: 'status' needs a response",
            "t.cases.yaml:23:37: unknown call result 'finished'",
            "t.cases.yaml:23:58: unknown field 'has' in expect.logs",
            "t.cases.yaml:23:84: metric 'm' must be an integer from 0",
        ];
        for w in want {
            assert!(
                e.iter().any(|l| l.starts_with(w)),
                "no line starting {w:?} in:\n{}",
                e.join("\n")
            );
        }
    }

    #[test]
    fn a_request_reply_scripts_the_echo_upstream_on_both_backends() {
        let f = parse_str(
            "policy: p.yaml\ncases:\n  - name: x\n    steps:\n      - request:\n          path: /v1/x\n          reply: { status: 500, headers: { Content-Type: text/html }, body: \"a\\nb\", chunk: 2 }\n        expect: { status: 500 }\n",
        )
        .unwrap();
        let case = &f.cases[0];
        assert_eq!(case.harness_only, None);
        let Action::Request(r) = &case.steps[0].action else {
            panic!()
        };
        assert_eq!(
            r.reply,
            Some(EchoReply {
                status: 500,
                headers: vec![("content-type".into(), "text/html".into())],
                body: b"a\nb".to_vec(),
                chunk: Some(2),
            })
        );
        let e = errors(
            "policy: p.yaml\ncases:\n  - name: x\n    steps:\n      - request: { path: /, reply: { status: 100, bodi: x } }\n        expect: { status: 200 }\n",
        );
        let joined = e.join("\n");
        assert!(
            joined.contains("t.cases.yaml:5:51: unknown field 'bodi' in reply"),
            "{joined}"
        );
        assert!(
            joined.contains("reply.status must be an integer from 200 to 599"),
            "{joined}"
        );
    }

    const TOKENS: &str = "\
policy: p.yaml
env: { S: gatehouse-test-secret-0123456789abcdef-xyz }
tokens:
  user_jwt:
    alg: HS256
    secret_env: S
    kid: demo-hs256
    header: { cty: x }
    claims: { sub: user_jwt, tags: [a, b], n: 3 }
    iat: -60s
    nbf: now
    exp: +1h
  rsa:
    alg: RS256
    test_key: rfc7515-a2
    iat: 2026-01-01T00:00:00Z
    exp: 1767229200
cases:
  - name: x
    steps:
      - request:
          path: /v1/x?t=${token:rsa}
          headers: { Authorization: \"Bearer ${token:user_jwt}\", x-t: \"$${literal}\" }
        expect: { status: 200 }
";

    #[test]
    fn token_recipes_are_read_and_requests_name_them() {
        use crate::cases::tokens::When;
        let f = parse_str(TOKENS).unwrap();
        assert_eq!(f.tokens.len(), 2);
        let t = &f.tokens[0];
        assert_eq!((t.name.as_str(), t.alg), ("user_jwt", Alg::HS256));
        assert_eq!(t.kid.as_deref(), Some("demo-hs256"));
        assert_eq!(t.header["cty"], "x");
        assert_eq!(
            serde_json::Value::Object(t.claims.clone()),
            serde_json::json!({ "sub": "user_jwt", "tags": ["a", "b"], "n": 3 })
        );
        assert_eq!(
            t.times,
            vec![
                ("iat", When::Relative(-60)),
                ("nbf", When::Relative(0)),
                ("exp", When::Relative(3600))
            ]
        );
        assert!(!format!("{t:?}").contains("gatehouse-test-secret"));
        let r = &f.tokens[1];
        assert_eq!(
            r.times,
            vec![
                ("iat", When::At(1_767_225_600)),
                ("exp", When::At(1_767_229_200))
            ]
        );
        let Action::Request(request) = &f.cases[0].steps[0].action else {
            panic!()
        };
        assert_eq!(request.path.to_string(), "/v1/x?t=${token:rsa}");
        let sent = request.at(1_767_225_600);
        assert_eq!(sent.path, format!("/v1/x?t={}", r.mint(1_767_225_600)));
        assert_eq!(
            sent.headers,
            vec![
                (
                    "authorization".to_string(),
                    format!("Bearer {}", t.mint(1_767_225_600))
                ),
                ("x-t".to_string(), "${literal}".to_string()),
            ]
        );
        // Tokens work on both backends.
        assert_eq!(f.cases[0].harness_only, None);
    }

    #[test]
    fn an_unknown_token_is_an_error_at_the_header() {
        let e = errors(
            "policy: p.yaml\ncases:\n  - name: x\n    steps:\n      - request: { path: /, headers: { authorization: \"Bearer ${token:user}\" } }\n        expect: { status: 200 }\n",
        );
        assert_eq!(
            e,
            vec![
                "t.cases.yaml:5:55: header 'authorization': unknown token 'user': the file has no `tokens:`"
            ]
        );
        let src = TOKENS.replace("${token:rsa}", "${token:rsa256}");
        let e = errors(&src);
        assert_eq!(
            e,
            vec![
                "t.cases.yaml:22:17: path: unknown token 'rsa256'; expected one of [user_jwt, rsa]"
            ]
        );
        let e = errors(&TOKENS.replace("$${literal}", "${literal}"));
        assert!(
            e[0].starts_with("t.cases.yaml:23:70: header 'x-t': '${literal}' is not a reference"),
            "{e:?}"
        );
    }

    #[test]
    fn a_secret_env_must_be_in_the_file_and_is_never_shown() {
        let e = errors(&TOKENS.replace("secret_env: S", "secret_env: SECRET"));
        assert_eq!(
            e,
            vec![
                "t.cases.yaml:6:17: token 'user_jwt': secret_env 'SECRET' is not in the file's env; expected one of [S]"
            ]
        );
        let e = errors(&TOKENS.replace("secret_env: S", "secret_env: S\n    encoding: base64url"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "t.cases.yaml:6:17: token 'user_jwt': the value of 'S' is not base64url"
            ),
            "{e:?}"
        );
        let e = errors(&TOKENS.replace("alg: HS256", "alg: RS256"));
        assert_eq!(
            e,
            vec![
                "t.cases.yaml:6:17: token 'user_jwt': secret_env 'S': an HMAC secret cannot sign RS256; RS256 needs an RSA key"
            ]
        );
        for line in errors(&TOKENS.replace("alg: HS256", "alg: ES256")) {
            assert!(!line.contains("gatehouse-test-secret"), "{line}");
        }
    }

    #[test]
    fn mistakes_in_a_recipe_are_reported_at_their_position() {
        let e = errors(
            "\
policy: p.yaml
env: { S: s }
tokens:
  bad name: { alg: HS256, secret_env: S }
  a: { alg: none, secret_env: S }
  b: { alg: RS256, test_key: rfc7515-a2, key_file: k.pem }
  c: { alg: RS256, test_key: rfc7515-a2, exp: 1h, iat: yesterday }
  d: { alg: RS256, test_key: rfc7515-a2, header: { alg: HS256 }, claims: { exp: 1 } }
  e: { alg: RS256, test_key: rfc7515-a2, encoding: raw, secret: x }
cases: []
",
        );
        let want = [
            "t.cases.yaml:4:3: token name 'bad name' must be 1 to 64 letters",
            "t.cases.yaml:5:13: token 'a': unknown alg 'none'; expected one of [HS256,",
            "t.cases.yaml:6:42: token 'b' signs with exactly one of `secret_env`",
            "t.cases.yaml:7:47: token 'c': exp must be relative to the request (now, -60s, +1h;",
            "t.cases.yaml:7:56: token 'c': iat must be relative",
            "t.cases.yaml:8:52: token 'd': header: the header's `alg` is the recipe's own `alg:` field",
            "t.cases.yaml:8:76: token 'd': claims: write `exp` beside `claims`",
            "t.cases.yaml:9:42: token 'e': `encoding` goes with `secret_env`",
            "t.cases.yaml:9:57: unknown field 'secret' in token 'e'",
        ];
        assert_eq!(e.len(), want.len(), "{}", e.join("\n"));
        for (line, w) in e.iter().zip(want) {
            assert!(line.starts_with(w), "{line:?} does not start with {w:?}");
        }
    }

    #[test]
    fn durations_have_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("61"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
