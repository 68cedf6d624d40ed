//! Reads a case file into [`CaseFile`], through the same positioned YAML reader as
//! policies, so every mistake is reported as `file:line:column: message`.
//!
//! The `Raw*` structs mirror the file's format and are read by serde (`super::de`); the
//! value types below them refuse a wrong value where it is written (a range, a duration,
//! a name). `Check` then turns the structs into the runner's types, making the checks that
//! span fields (one action per step, one key per token, token references, what only the
//! harness can do). Token recipes, upstreams, routes, cases and steps are read one by one,
//! so a mistake in one does not hide those in the next; within one of them, reading stops
//! at its first mistake.

use super::de::{self, Entries, Spanned};
use super::signing_key::PrivateKey;
use super::tokens::{TIME_CLAIMS, Text, TextError, TokenRecipe, When, valid_name};
use super::values::{
    Base64url, Body, Dur, Headers, Int, Lower, Rfc3339, Tick, Txt, WasmStatus, lower,
};
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
use serde::Deserialize;
use serde::de::IgnoredAny;
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
    let mut c = Check {
        file: name,
        errors: Vec::new(),
        tokens: Vec::new(),
        broken_tokens: Vec::new(),
    };
    match c.file(&root, dir) {
        Some(f) if c.errors.is_empty() => Ok(f),
        _ => {
            // Top to bottom, like the file.
            c.errors.sort_by_key(|(pos, _)| in_file_order(*pos));
            Err(CaseError {
                lines: c.errors.into_iter().map(|(_, line)| line).collect(),
            })
        }
    }
}

// The file's format. `Spanned` where a check reports at the value or its key;
// `IgnoredAny` for lists and mappings whose items are read one by one.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    policy: Option<String>,
    plugin_config: Option<Spanned<Txt>>,
    module: Option<String>,
    workers: Option<Int<1, 64>>,
    start: Option<Rfc3339>,
    env: Option<Entries<Txt>>,
    failure_policy: Option<FailurePolicy>,
    #[allow(dead_code)] // read one by one
    upstreams: Option<Vec<IgnoredAny>>,
    #[allow(dead_code)] // read one by one
    tokens: Option<Entries<IgnoredAny>>,
    #[allow(dead_code)] // read one by one
    cases: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    alg: Spanned<String>,
    secret_env: Option<Spanned<String>>,
    encoding: Option<Spanned<Base64url>>,
    key_file: Option<Spanned<String>>,
    test_key: Option<Spanned<String>>,
    kid: Option<String>,
    header: Option<Entries<serde_json::Value>>,
    claims: Option<Entries<serde_json::Value>>,
    iat: Option<When>,
    nbf: Option<When>,
    exp: Option<When>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    cluster: String,
    #[allow(dead_code)] // read one by one
    routes: Vec<IgnoredAny>,
}

/// `{match: {...}, respond: {...}}`, `{match, hang: true}` or `{match, reset: true, delay}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(rename = "match")]
    matches: Option<RawMatch>,
    respond: Option<Spanned<RawRespond>>,
    hang: Option<Spanned<bool>>,
    reset: Option<Spanned<bool>>,
    delay: Option<Spanned<Dur>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    method: Option<String>,
    path: Option<String>,
    headers: Option<Headers<Txt>>,
}

/// A scripted response. Status defaults to 200.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    status: Option<Int<100, 599>>,
    headers: Option<Headers<Txt>>,
    body: Option<Body>,
    delay: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    backends: Option<Vec<Spanned<BackendKind>>>,
    #[allow(dead_code)] // read one by one
    steps: Vec<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    request: Option<Spanned<RawRequest>>,
    worker: Option<Spanned<Int<0, 63>>>,
    expect: Option<Spanned<RawExpect>>,
    advance: Option<Spanned<Dur>>,
    tick: Option<Spanned<Tick>>,
    fault: Option<Spanned<RawFault>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    method: Option<String>,
    path: Spanned<String>,
    headers: Option<Headers<Spanned<Txt>>>,
    body: Option<Body>,
    chunk: Option<Int<1, { 1 << 30 }>>,
    reply: Option<RawReply>,
}

/// What the echo upstream answers instead of the echo, if the request reaches it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReply {
    status: Option<Int<200, 599>>,
    headers: Option<Headers<Txt>>,
    body: Option<Body>,
    chunk: Option<Int<1, { 1 << 20 }>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    call: String,
    nth: Option<Int<1, { i64::MAX }>>,
    status: WasmStatus,
}

/// `expect:`; only a request's may look at the response.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    status: Option<Spanned<Int<100, 599>>>,
    body: Option<Spanned<BodyExpect>>,
    headers: Option<Spanned<Headers<ValueMatch>>>,
    absent_headers: Option<Spanned<Vec<Lower>>>,
    upstream: Option<Spanned<UpstreamExpect>>,
    metrics: Option<Entries<Int<0, { i64::MAX }>>>,
    logs: Option<RawLogs>,
    calls: Option<Vec<RawCall>>,
    trapped: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    contains: Option<Vec<Txt>>,
    absent: Option<Vec<Txt>>,
}

/// `{cluster, method, path, result, status}`, each optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    cluster: Option<String>,
    method: Option<String>,
    path: Option<String>,
    result: Option<CallEnd>,
    status: Option<Spanned<Int<100, 599>>>,
}

fn texts(list: Option<Vec<Txt>>) -> Vec<String> {
    list.unwrap_or_default().into_iter().map(|t| t.0).collect()
}

fn plain(headers: Option<Headers<Txt>>) -> Vec<(String, String)> {
    let headers = headers.map(|h| h.0).unwrap_or_default();
    headers.into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// The list under `name` in the mapping `node`, whose items are read one by one.
fn items<'n>(node: &'n Node, name: &str) -> &'n [Node] {
    match entry(node, name).map(|n| &n.value) {
        Some(Value::Seq(items)) => items,
        _ => &[],
    }
}

/// The entries of the mapping under `name` in the mapping `node`.
fn entries<'n>(node: &'n Node, name: &str) -> &'n [(Key, Node)] {
    match entry(node, name).map(|n| &n.value) {
        Some(Value::Map(entries)) => entries,
        _ => &[],
    }
}

fn entry<'n>(node: &'n Node, name: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v),
        _ => None,
    }
}

/// Orders positions as the file does.
fn in_file_order(pos: Option<Pos>) -> Option<(usize, usize)> {
    pos.map(|p| (p.line, p.column))
}

/// Turns the raw structs into the runner's types; every mistake found goes to `errors`.
struct Check<'a> {
    file: &'a str,
    errors: Vec<(Option<Pos>, String)>,
    /// The file's `tokens:`, read before its cases so requests can name them.
    tokens: Vec<Arc<TokenRecipe>>,
    /// Recipes already reported as wrong: a reference to one is not reported again.
    broken_tokens: Vec<String>,
}

impl Check<'_> {
    fn error(&mut self, pos: Option<Pos>, message: impl fmt::Display) {
        let line = match pos {
            Some(p) => format!("{}:{p}: {message}", self.file),
            None => format!("{}: {message}", self.file),
        };
        self.errors.push((pos, line));
    }

    /// `T` from `node` (written under `key`), or its first mistake reported.
    fn read<'n, T: Deserialize<'n>>(&mut self, key: Option<&'n Key>, node: &'n Node) -> Option<T> {
        de::from_node(key, node)
            .map_err(|e| self.error(e.pos, e.message))
            .ok()
    }

    /// `where` for a harness-only reason: `file:line:column`.
    fn at(&self, pos: Option<Pos>) -> String {
        match pos {
            Some(p) => format!("{}:{p}", self.file),
            None => self.file.to_string(),
        }
    }

    fn file(&mut self, root: &Node, dir: &Path) -> Option<CaseFile> {
        // The cases are read even when the file's own fields are wrong, so their
        // mistakes show too.
        let raw: Option<RawFile> = self.read(None, root);
        let plugin = match raw.as_ref().map(|r| (&r.policy, &r.plugin_config)) {
            None => None,
            Some((Some(p), None)) => Some(PluginSource::Policy(dir.join(p))),
            Some((None, Some(c))) => Some(PluginSource::Raw(c.value.0.clone())),
            Some((Some(_), Some(c))) => {
                self.error(
                    c.pos,
                    "give either `policy` (a policy file) or `plugin_config` (the configuration as is), not both",
                );
                None
            }
            Some((None, None)) => {
                self.error(
                    root.pos,
                    "the case file needs the field 'policy' (a policy file) or 'plugin_config' (the plugin configuration as is)",
                );
                None
            }
        };
        let env: Vec<(String, String)> = raw
            .as_ref()
            .and_then(|r| r.env.as_ref())
            .map(|e| {
                e.0.iter()
                    .map(|(k, v)| (k.value.clone(), v.0.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // File-level features Envoy cannot provide make every case harness-only.
        let written = |name: &str| match &root.value {
            Value::Map(fields) => fields
                .iter()
                .find(|(k, _)| k.name == name)
                .map(|(k, _)| k.pos),
            _ => None,
        };
        let file_harness_only = match (written("upstreams"), written("failure_policy")) {
            (Some(at), _) => Some(format!("the file scripts `upstreams` ({})", self.at(at))),
            (None, Some(at)) => Some(format!("the file sets `failure_policy` ({})", self.at(at))),
            (None, None) => None,
        };
        let mut upstreams: Vec<Upstream> = Vec::new();
        for item in items(root, "upstreams") {
            let Some(u) = self.upstream(item) else {
                continue;
            };
            if upstreams.iter().any(|o| o.cluster == u.cluster) {
                self.error(item.pos, format!("cluster '{}' is listed twice", u.cluster));
            }
            upstreams.push(u);
        }
        for (key, node) in entries(root, "tokens") {
            match raw {
                Some(_) => self.token(key, node, dir, &env),
                // Without the file's env a recipe cannot be checked; nor its references.
                None => self.broken_tokens.push(key.name.clone()),
            }
        }
        let mut cases = Vec::new();
        for item in items(root, "cases") {
            if let Some(c) = self.case(item, file_harness_only.as_deref()) {
                cases.push(c);
            }
        }
        let raw = raw?;
        Some(CaseFile {
            name: self.file.to_string(),
            plugin: plugin?,
            module: raw.module.map(|m| dir.join(m)),
            workers: raw.workers.map_or(1, |w| w.get()),
            start: raw.start.map(|s| s.0),
            env,
            upstreams,
            failure_policy: raw.failure_policy,
            tokens: self.tokens.clone(),
            cases,
        })
    }

    /// One `tokens:` entry, into `self.tokens` (or `self.broken_tokens`).
    fn token(&mut self, key: &Key, node: &Node, dir: &Path, env: &[(String, String)]) {
        let recipe = if valid_name(&key.name) {
            self.read(Some(key), node)
                .and_then(|raw| self.recipe(&key.name, node.pos, raw, dir, env))
        } else {
            self.error(
                key.pos,
                format!(
                    "token name '{}' must be 1 to 64 letters, digits, '_' or '-'",
                    key.name
                ),
            );
            return;
        };
        match recipe {
            Some(recipe) => self.tokens.push(Arc::new(recipe)),
            None => self.broken_tokens.push(key.name.clone()),
        }
    }

    /// One token recipe: its key, `kid`, `header`, `claims` and time claims.
    fn recipe(
        &mut self,
        name: &str,
        at: Option<Pos>,
        r: RawRecipe,
        dir: &Path,
        env: &[(String, String)],
    ) -> Option<TokenRecipe> {
        let what = format!("token '{name}'");
        let alg = Alg::from_name(&r.alg.value);
        if alg.is_none() {
            let names: Vec<&str> = Alg::ALL.iter().map(|a| a.as_str()).collect();
            self.error(
                r.alg.pos,
                format!(
                    "{what}: unknown alg '{}'; expected one of [{}] (paste attack tokens such as alg none as they are)",
                    r.alg.value,
                    names.join(", ")
                ),
            );
        }
        let mut sources: Vec<(&str, &Spanned<String>)> = [
            ("secret_env", &r.secret_env),
            ("key_file", &r.key_file),
            ("test_key", &r.test_key),
        ]
        .into_iter()
        .filter_map(|(field, s)| s.as_ref().map(|s| (field, s)))
        .collect();
        sources.sort_by_key(|(_, s)| in_file_order(s.key_pos));
        let key = match (sources.as_slice(), alg) {
            ([(field, s)], Some(alg)) => self.private_key(
                &what,
                alg,
                (field, s),
                r.encoding.as_ref().map(|e| e.value),
                dir,
                env,
            ),
            ([_], None) => None,
            _ => {
                self.error(
                    sources.get(1).and_then(|(_, s)| s.key_pos).or(at),
                    format!(
                        "{what} signs with exactly one of `secret_env` (HS256, HS384, HS512: a variable of the file's env), `key_file` (a PEM or JWK private key) or `test_key`"
                    ),
                );
                None
            }
        };
        if let Some(e) = &r.encoding
            && sources
                .first()
                .is_some_and(|(field, _)| *field != "secret_env")
        {
            self.error(
                e.key_pos,
                format!("{what}: `encoding` goes with `secret_env`"),
            );
        }
        // Each part on its own, so one mistake does not hide the next.
        let header = self.json_object(r.header, &format!("{what}: header"), &["alg", "kid"], |m| {
            format!("the header's `{m}` is the recipe's own `{m}:` field; a token whose header does not match its signature is an attack token: paste it as is")
        });
        let claims = self.json_object(r.claims, &format!("{what}: claims"), &TIME_CLAIMS, |m| {
            format!("write `{m}` beside `claims`, where it can be relative to the request (`{m}: -60s`, `{m}: +1h`) or fixed (`{m}: 2026-01-01T00:00:00Z`)")
        });
        let times = TIME_CLAIMS
            .into_iter()
            .zip([r.iat, r.nbf, r.exp])
            .filter_map(|(claim, when)| Some((claim, when?)))
            .collect();
        Some(TokenRecipe {
            name: name.to_string(),
            alg: alg?,
            key: key?,
            kid: r.kid,
            header: header?,
            claims: claims?,
            times,
        })
    }

    /// The key behind `secret_env`, `key_file` or `test_key`. A secret's value is never
    /// part of a message.
    fn private_key(
        &mut self,
        what: &str,
        alg: Alg,
        (field, s): (&str, &Spanned<String>),
        encoding: Option<Base64url>,
        dir: &Path,
        env: &[(String, String)],
    ) -> Option<PrivateKey> {
        let text = &s.value;
        let key = match field {
            "secret_env" => {
                let Some((_, secret)) = env.iter().find(|(k, _)| k == text) else {
                    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
                    self.error(
                        s.pos,
                        format!(
                            "{what}: secret_env '{text}' is not in the file's env; expected one of [{}]",
                            names.join(", ")
                        ),
                    );
                    return None;
                };
                let secret = match encoding {
                    Some(Base64url(true)) => match URL_SAFE_NO_PAD.decode(secret) {
                        Ok(bytes) => bytes,
                        Err(_) => {
                            self.error(
                                s.pos,
                                format!("{what}: the value of '{text}' is not base64url (encoding: base64url)"),
                            );
                            return None;
                        }
                    },
                    _ => secret.as_bytes().to_vec(),
                };
                PrivateKey::hmac(alg, secret, text)
            }
            "key_file" => PrivateKey::from_file(alg, &dir.join(text)),
            _ => PrivateKey::built_in(alg, text),
        };
        key.map_err(|why| self.error(s.pos, format!("{what}: {why}")))
            .ok()
    }

    /// A mapping as a JSON object, refusing the members in `reserved` (with `why`).
    fn json_object(
        &mut self,
        entries: Option<Entries<serde_json::Value>>,
        what: &str,
        reserved: &[&str],
        why: impl Fn(&str) -> String,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let mut ok = true;
        let mut map = serde_json::Map::new();
        for (k, v) in entries.unwrap_or_default().0 {
            if reserved.contains(&k.value.as_str()) {
                self.error(k.pos, format!("{what}: {}", why(&k.value)));
                ok = false;
            }
            map.insert(k.value, v);
        }
        ok.then_some(map)
    }

    /// A path or header value, with its `${token:NAME}` references resolved.
    fn text(&mut self, source: &str, pos: Option<Pos>, what: &str) -> Option<Text> {
        let parsed = Text::parse(source, |name| {
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
        self.error(pos, format!("{what}: {why}"));
        None
    }

    fn upstream(&mut self, node: &Node) -> Option<Upstream> {
        let raw: RawUpstream = self.read(None, node)?;
        let mut upstream = Upstream::new(&raw.cluster);
        for r in items(node, "routes") {
            if let Some(route) = self.route(r) {
                upstream = upstream.route(route);
            }
        }
        Some(upstream)
    }

    fn route(&mut self, node: &Node) -> Option<Route> {
        let raw: RawRoute = self.read(None, node)?;
        let mut route = Route::any();
        if let Some(m) = raw.matches {
            route.method = m.method;
            route.path = m.path;
            for (name, value) in plain(m.headers) {
                route = route.header(&name, &value);
            }
        }
        let mut answers: Vec<Option<Pos>> = [
            raw.respond.as_ref().map(|s| s.key_pos),
            raw.hang.as_ref().map(|s| s.key_pos),
            raw.reset.as_ref().map(|s| s.key_pos),
        ]
        .into_iter()
        .flatten()
        .collect();
        answers.sort_by_key(|p| in_file_order(*p));
        if answers.len() != 1 {
            self.error(
                answers.get(1).copied().flatten().or(node.pos),
                "a route answers with exactly one of `respond: {...}`, `hang: true` or `reset: true`",
            );
            return None;
        }
        let delay_at = raw.delay.as_ref().map(|d| d.key_pos);
        if let Some(r) = raw.respond {
            if let Some(at) = delay_at {
                self.error(at, "put a response's delay inside `respond`");
            }
            let r = r.value;
            let mut reply = Reply::status(r.status.map_or(200, |s| s.get()));
            for (name, value) in plain(r.headers) {
                reply = reply.header(&name, &value);
            }
            if let (Some(b), Reply::Respond { body, .. }) = (r.body, &mut reply) {
                *body = b.0;
            }
            if let Some(d) = r.delay {
                reply = reply.delay(d.0);
            }
            route.reply = reply;
        } else if let Some(hang) = raw.hang {
            if !hang.value {
                self.error(hang.pos, "hang can only be true; leave it out otherwise");
            }
            if let Some(at) = delay_at {
                self.error(at, "a hanging route has no delay: it never answers");
            }
            route.reply = Reply::hang();
        } else if let Some(reset) = raw.reset {
            if !reset.value {
                self.error(reset.pos, "reset can only be true; leave it out otherwise");
            }
            route.reply = Reply::reset().delay(raw.delay.map(|d| d.value.0).unwrap_or_default());
        }
        Some(route)
    }

    fn case(&mut self, node: &Node, file_harness_only: Option<&str>) -> Option<Case> {
        // The steps are read even when the case's own fields are wrong.
        let raw: Option<RawCase> = self.read(None, node);
        let backends = raw.as_ref().and_then(|r| r.backends.as_ref());
        let envoy_written_at = backends
            .and_then(|list| list.iter().find(|b| b.value == BackendKind::Envoy))
            .map(|b| b.pos);
        let backends = match backends {
            Some(list) => list.iter().map(|b| b.value).collect(),
            None => vec![BackendKind::Harness, BackendKind::Envoy],
        };
        let mut steps = Vec::new();
        let mut harness_only = file_harness_only.map(str::to_string);
        for s in items(node, "steps") {
            if let Some((step, why)) = self.step(s) {
                if harness_only.is_none() {
                    harness_only = why;
                }
                steps.push(step);
            }
        }
        if let (Some(at), Some(why)) = (envoy_written_at, &harness_only) {
            self.error(
                at,
                format!(
                    "this case cannot run on envoy: {why}, which only the harness can do; write `backends: [harness]`, or leave `backends` out to have it skipped on Envoy"
                ),
            );
        }
        Some(Case {
            name: raw?.name,
            pos: node.pos,
            backends,
            harness_only,
            steps,
        })
    }

    /// A step, and why it needs the harness if it does.
    fn step(&mut self, node: &Node) -> Option<(Step, Option<String>)> {
        let raw: RawStep = self.read(None, node)?;
        let mut actions: Vec<(&str, Option<Pos>)> = [
            ("request", raw.request.as_ref().map(|s| s.key_pos)),
            ("advance", raw.advance.as_ref().map(|s| s.key_pos)),
            ("tick", raw.tick.as_ref().map(|s| s.key_pos)),
            ("fault", raw.fault.as_ref().map(|s| s.key_pos)),
        ]
        .into_iter()
        .filter_map(|(name, at)| at.map(|at| (name, at)))
        .collect();
        actions.sort_by_key(|(_, at)| in_file_order(*at));
        let Some(&(action, action_at)) = actions.first() else {
            self.error(
                node.pos,
                "a step needs one of `request`, `advance`, `tick` or `fault`",
            );
            return None;
        };
        if let Some((second, at)) = actions.get(1) {
            self.error(
                *at,
                format!("a step does one thing: `{action}` and `{second}` go in separate steps"),
            );
            return None;
        }
        let is_request = action == "request";
        let mut why = (!is_request).then(|| format!("it uses `{action}` ({})", self.at(action_at)));
        let expect = match raw.expect {
            Some(e) => {
                let expect = self.expect(e.value, is_request);
                if expect.needs_host() {
                    why.get_or_insert_with(|| {
                        format!(
                            "it expects metrics, logs, calls or traps ({})",
                            self.at(e.key_pos)
                        )
                    });
                }
                expect
            }
            None if is_request => {
                self.error(node.pos, "a step needs the field 'expect'");
                return None;
            }
            None => Expect::default(),
        };
        let worker = match raw.worker {
            Some(w) if is_request => {
                why.get_or_insert_with(|| format!("it picks a `worker` ({})", self.at(w.key_pos)));
                Some(w.value.get())
            }
            Some(w) => {
                self.error(w.key_pos, "`worker` goes on a `request` step");
                return None;
            }
            None => None,
        };
        let action = if let Some(r) = raw.request {
            let mut request = self.request(r.value)?;
            if request.chunk.is_some() {
                why.get_or_insert_with(|| {
                    format!("it sends the body in `chunk`s ({})", self.at(r.pos))
                });
            }
            request.worker = worker;
            Action::Request(request)
        } else if let Some(d) = raw.advance {
            Action::Advance(d.value.0)
        } else if raw.tick.is_some() {
            Action::Tick
        } else {
            let f = raw.fault?.value;
            Action::Fault(FaultSpec {
                call: f.call,
                nth: f.nth.map_or(1, |n| n.get()),
                status: f.status.0,
            })
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

    fn request(&mut self, raw: RawRequest) -> Option<RequestSpec> {
        let path = self.text(&raw.path.value, raw.path.pos, "path");
        let mut headers = Some(Vec::new());
        for (name, v) in raw.headers.map(|h| h.0).unwrap_or_default() {
            let value = self.text(&v.value.0, v.pos, &format!("header '{name}'"));
            match (value, &mut headers) {
                (Some(value), Some(headers)) => headers.push((name, value)),
                _ => headers = None,
            }
        }
        let reply = raw.reply.map(|r| EchoReply {
            status: r.status.map_or(200, |s| s.get()),
            headers: plain(r.headers),
            body: r.body.map(|b| b.0).unwrap_or_default(),
            chunk: r.chunk.map(|c| c.get()),
        });
        Some(RequestSpec {
            method: raw.method.unwrap_or_else(|| "GET".to_string()),
            path: path?,
            headers: headers?,
            body: raw.body.map(|b| b.0).unwrap_or_default(),
            chunk: raw.chunk.map(|c| c.get()),
            worker: None,
            reply,
        })
    }

    fn expect(&mut self, raw: RawExpect, is_request: bool) -> Expect {
        if !is_request {
            let response = [
                ("status", raw.status.as_ref().map(|s| s.key_pos)),
                ("body", raw.body.as_ref().map(|s| s.key_pos)),
                ("headers", raw.headers.as_ref().map(|s| s.key_pos)),
                (
                    "absent_headers",
                    raw.absent_headers.as_ref().map(|s| s.key_pos),
                ),
                ("upstream", raw.upstream.as_ref().map(|s| s.key_pos)),
            ];
            for (name, at) in response {
                if let Some(at) = at {
                    self.error(
                        at,
                        format!("'{name}' needs a response: only a `request` step's expect has one; here expect may hold [metrics, logs, calls, trapped]"),
                    );
                }
            }
        }
        let calls = raw.calls.map(|calls| {
            let calls = calls.into_iter().map(|c| {
                if let (Some(r), Some(s)) = (c.result, &c.status)
                    && r != CallEnd::Responded
                {
                    self.error(s.pos, "a call with a status was `responded`");
                }
                CallExpect {
                    cluster: c.cluster,
                    method: c.method,
                    path: c.path,
                    result: c.result,
                    status: c.status.map(|s| s.value.get()),
                }
            });
            calls.collect()
        });
        let logs = raw.logs.map(|l| (texts(l.contains), texts(l.absent)));
        let (logs_contain, logs_absent) = logs.unwrap_or_default();
        Expect {
            status: raw.status.map(|s| s.value.get()),
            body: raw.body.map(|b| b.value),
            headers: raw.headers.map(|h| h.value.0).unwrap_or_default(),
            absent_headers: lower(raw.absent_headers.map(|a| a.value)),
            upstream: raw.upstream.map(|u| u.value),
            metrics: raw
                .metrics
                .map(|m| m.0.into_iter().map(|(k, v)| (k.value, v.get())).collect())
                .unwrap_or_default(),
            logs_contain,
            logs_absent,
            calls,
            trapped: raw.trapped,
        }
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
        assert!(
            err.lines[1].starts_with(
                "t.cases.yaml:5:16: backends: expected one of [harness, envoy], found 'nginx'"
            ),
            "{err}"
        );
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
        expect: { calls: [{ result: finished }], logs: { contains: [x] } }
      - request: { path: / }
        expect: { metrics: { m: -1 } }
      - request: { path: / }
        expect: { logs: { has: [x] } }
",
        );
        let want = [
            "t.cases.yaml:2:17: failure_policy: expected one of [FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD], found 'FAIL_SOMETIMES'",
            "t.cases.yaml:6:18: unknown field 'pth' in match; expected one of [method, path, headers]",
            "t.cases.yaml:8:33: unknown field 'bodyy' in respond; expected one of [status, headers, body, delay]",
            "t.cases.yaml:11:9: a route answers with exactly one of",
            "t.cases.yaml:14:16: this case cannot run on envoy: the file scripts `upstreams` (t.cases.yaml:3:1)",
            "t.cases.yaml:16:15: write `tick: true`",
            "t.cases.yaml:17:43: status: expected 0..12 or one of [Ok, NotFound,",
            "t.cases.yaml:19:9: a step does one thing: `advance` and `tick` go in separate steps",
            "t.cases.yaml:21:19: 'status' needs a response",
            "t.cases.yaml:23:37: result: expected one of [responded, timed_out, reset, unmatched, pending], found 'finished'",
            "t.cases.yaml:25:33: m: expected an integer from 0 to 9223372036854775807, found -1",
            "t.cases.yaml:27:27: unknown field 'has' in logs; expected one of [contains, absent]",
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
            "policy: p.yaml\ncases:\n  - name: x\n    steps:\n      - request: { path: /, reply: { status: 200, bodi: x } }\n        expect: { status: 200 }\n      - request: { path: /, reply: { status: 100 } }\n        expect: { status: 200 }\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.cases.yaml:5:51: unknown field 'bodi' in reply; expected one of [status, headers, body, chunk]"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "t.cases.yaml:7:46: status: expected an integer from 200 to 599, found 100"
            ),
            "{e:?}"
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
  c: { alg: RS256, test_key: rfc7515-a2, exp: 1h }
  g: { alg: RS256, test_key: rfc7515-a2, iat: yesterday }
  d: { alg: RS256, test_key: rfc7515-a2, header: { alg: HS256 }, claims: { exp: 1 } }
  e: { alg: RS256, test_key: rfc7515-a2, encoding: raw }
  f: { alg: RS256, test_key: rfc7515-a2, secret: x }
cases: []
",
        );
        let want = [
            "t.cases.yaml:4:3: token name 'bad name' must be 1 to 64 letters",
            "t.cases.yaml:5:13: token 'a': unknown alg 'none'; expected one of [HS256,",
            "t.cases.yaml:6:42: token 'b' signs with exactly one of `secret_env`",
            "t.cases.yaml:7:47: exp: expected relative to the request (now, -60s, +1h;",
            "t.cases.yaml:8:47: iat: expected relative to the request",
            "t.cases.yaml:9:52: token 'd': header: the header's `alg` is the recipe's own `alg:` field",
            "t.cases.yaml:9:76: token 'd': claims: write `exp` beside `claims`",
            "t.cases.yaml:10:42: token 'e': `encoding` goes with `secret_env`",
            "t.cases.yaml:11:42: unknown field 'secret' in f; expected one of [alg, secret_env,",
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
