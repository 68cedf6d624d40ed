//! Case files: requests and what must come back, run against the harness or a real Envoy.
//!
//! A case file (`policies/*.cases.yaml`) names a policy (or gives the plugin configuration
//! directly) and lists cases; each case is a list of steps: a request, a move of the
//! virtual clock, a tick, or a fault to inject, each with what must be true afterwards.
//!
//! ```yaml
//! policy: example.yaml          # relative to the case file; or instead:
//! plugin_config: "raw text"     # the plugin configuration as is (exactly one of the two)
//! module: ../target/x.wasm      # relative to the case file; `run --module` overrides it.
//!                               # Defaults to $GATEHOUSE_WASM, else the release build.
//! workers: 2                    # Envoy `--concurrency` / harness VMs. Defaults to `1`.
//! start: 2026-01-01T00:00:00Z   # harness clock at the start of each case. Defaults to now.
//! env: { NAME: value }          # environment the module sees. Defaults to none.
//! tokens:                       # JWTs minted at each request that names them (below).
//!   user_jwt:                   #   Defaults to none.
//!     alg: HS256                # HS256/384/512, RS256/384/512, PS256, ES256, ES384, EdDSA
//!     secret_env: NAME          # the key, one of: an HMAC secret, a variable of `env`,
//!     encoding: raw             #   read as the policy's key says (raw, base64url;
//!                               #   defaults to `raw`);
//!     # key_file: keys/ec.pem   # or a PEM (PKCS#8, PKCS#1, SEC1) or private JWK file,
//!                               #   relative to this file;
//!     # test_key: rfc7515-a2    # or a published test key: rfc7515-a2 (RSA), rfc7515-a3
//!                               #   (P-256), rfc8037-a1 (Ed25519), gatehouse-p384
//!     kid: demo-hs256           # header `kid`. Defaults to none.
//!     header: { cty: x, typ: null }   # over {alg, typ: JWT, kid}; null removes a member
//!     claims: { sub: user_jwt, plan: team }   # any YAML, as JSON; not iat/nbf/exp
//!     iat: -60s                 # from the request's clock: now, +1h, -60s (s, m, h, d);
//!     nbf: now                  #   or fixed: 2026-01-01T00:00:00Z, 1767225600.
//!     exp: +1h                  #   Each defaults to absent.
//! failure_policy: FAIL_CLOSED   # or FAIL_OPEN, FAIL_RELOAD. Defaults to none: a trap
//!                               # fails the case with the module's panic message.
//! upstreams:                    # clusters `proxy_http_call` may name. Defaults to none.
//!   - cluster: control
//!     routes:                   # tried in order; `match` defaults to every call
//!       - match: { method: GET, path: /v1/keys, headers: { x-token: t } }  # path `/v1/*`: prefix
//!         respond: { status: 200, headers: { content-type: text/plain }, body: hi, delay: 30ms }
//!       - match: { path: /slow }
//!         hang: true            # never answers: the call times out
//!       - match: { path: /broken }
//!         reset: true           # the connection fails, after `delay` (default 0ms)
//!         delay: 10ms
//! cases:
//!   - name: missing key is refused            # required
//!     backends: [harness, envoy]              # Defaults to both (see "Envoy" below).
//!     steps:
//!       - request: { method: GET, path: /v1/things, headers: { x-api-key: "..." }, body: "",
//!                    # in `path` and header values, ${token:user_jwt} is minted now
//!                    chunk: 4,                # body delivered in chunks of 4 bytes
//!                    reply: { status: 500, headers: { content-type: text/html },
//!                             body: "Traceback ...", chunk: 16 } }
//!         # `reply`: what the upstream answers, if the request gets there, instead of the
//!         # echo (status defaults to 200; `chunk`: the body in pieces of that many bytes);
//!         # `expect.upstream` still sees what it received. Both backends.
//!         worker: 1                           # which VM. Defaults to rotation: 0, 1, 0, ...
//!         expect:
//!           status: 401
//!           body: { code: UNAUTHORIZED, request_id: present }   # JSON subset; a string: exact text
//!           headers: { content-type: application/json, www-authenticate: present }
//!           absent_headers: [server]
//!           upstream: { headers: { x-gatehouse-user: user_demo }, absent_headers: [x-evil] }
//!           # or `upstream: none`: the request never reached the upstream
//!       - advance: 61s                        # ms, s, m, h, d; fires ticks, call replies, timeouts
//!       - tick: true                          # (or `tick: {}`) on_tick once on every VM, now
//!       - fault: { call: proxy_set_shared_data, nth: 1, status: CasMismatch }
//!         # the nth (default 1) call of that host function from now returns `status`:
//!         # 0..12 or Ok, NotFound, BadArgument, SerializationFailure, ParseFailure,
//!         # BadExpression, InvalidMemoryAccess, Empty, CasMismatch, ResultMismatch,
//!         # InternalFailure, BrokenConnection, Unimplemented
//!         expect:                             # on any step; these look at the whole case so far:
//!           metrics: { probe_ticks: 2 }       # exact values (summed over VMs); gatehouse.*
//!                                             # ones after one tick of every worker (gatehouse
//!                                             # flushes its counters on its tick)
//!           logs:                             # substrings of log lines "[worker 0] [info] msg"
//!             contains: ["tick at"]
//!             absent: ["panic"]
//!           calls:                            # every HTTP call so far, in order: the count must
//!             - { cluster: control, method: GET, path: /v1/keys, result: responded, status: 200 }
//!             # result: responded | timed_out | reset | unmatched | pending; fields optional
//!           trapped: false                    # whether the module trapped
//! ```
//!
//! A request's `path` and header values may hold `${token:NAME}`, minted from recipe
//! `NAME` when the request is sent, against the clock of the backend that sends it: the
//! harness's (`start`, moved by `advance`) or the machine's, which a real Envoy reads. So
//! `iat: -60s, exp: +1h` is fresh on both, however long after it was written the file
//! runs. `$${` is a literal `${`; any other `${`, or an unknown name, is an error. Tokens
//! that must be wrong in their signature, `alg` or shape are pasted as they are. The
//! minting is [`tokens`]; messages never show a secret or a key.
//!
//! Unknown fields are errors with `file:line:column`. `request` steps need `expect`; on
//! `advance`, `tick` and `fault` steps it is optional and may only hold `metrics`, `logs`,
//! `calls` and `trapped`. An HTTP call no route answers fails the case (naming cluster,
//! method and path) unless the same step's `calls` lists it.
//!
//! The harness backend starts a fresh host per case (at `start`). The Envoy backend starts
//! one Envoy per file and can only send requests: it cannot move its clock, tick, inject
//! faults, script upstreams, set a failure policy, pick a worker or a chunk size, or read
//! metrics, logs, calls and traps. A case that needs any of these runs on the harness only:
//! with `backends` left out it is reported as skipped on Envoy (saying why); with `envoy`
//! written in `backends` it is a parse error. A case that depends on earlier state must
//! say `backends: [harness]` itself.
//!
//! - [`parse`]: YAML to [`CaseFile`]: derived structs mirroring the format, then checks.
//! - `de`: the serde deserializer those structs are read with, keeping line:column.
//! - `values`: the values checked where they are written (ranges, durations, names).
//! - [`tokens`]: `tokens:` recipes, `${token:NAME}` in request text, and minting.
//! - [`signing_key`]: the keys recipes sign with (env secrets, key files, test keys).
//! - [`expect`]: compares what a backend [`Observed`](backend::Observed) with an [`Expect`].
//! - [`backend`]: the [`Backend`](backend::Backend) trait and its harness and Envoy impls.
//! - [`run`]: runs a file against a backend and reports per case.
//! - [`junit`]: the results as JUnit XML, for CI.

pub mod backend;
mod de;
pub mod expect;
mod harness_backend;
pub mod junit;
pub mod parse;
pub mod run;
pub mod signing_key;
pub mod tokens;
mod values;

pub use backend::{Backend, BackendKind, HostSeen, Observed};
pub use parse::{CaseError, load};
pub use run::{CaseResult, Outcome as CaseOutcome, RunOptions, run_file, summary};

use crate::host::{FailurePolicy, Upstream};
use gatehouse_core::policy::tree::Pos;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokens::{Text, TokenRecipe};

/// A parsed case file.
#[derive(Clone, Debug)]
pub struct CaseFile {
    /// The case file as it was named (used in messages).
    pub name: String,
    pub plugin: PluginSource,
    /// `module:`, resolved against the case file's directory.
    pub module: Option<PathBuf>,
    pub workers: u32,
    /// Unix seconds the harness clock starts at; `None`: the wall clock.
    pub start: Option<u64>,
    pub env: Vec<(String, String)>,
    pub upstreams: Vec<Upstream>,
    pub failure_policy: Option<FailurePolicy>,
    /// `tokens:` recipes, by name, in file order.
    pub tokens: Vec<Arc<TokenRecipe>>,
    pub cases: Vec<Case>,
}

/// Where the plugin configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginSource {
    /// `policy:` a gatehouse policy file (resolved against the case file's directory),
    /// checked and turned into its JSON plugin configuration before anything runs.
    Policy(PathBuf),
    /// `plugin_config:` the bytes as written, for modules that are not gatehouse.
    Raw(String),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub pos: Option<Pos>,
    pub backends: Vec<BackendKind>,
    /// Why the case can only run in the harness (a file-level feature, else the first step
    /// that needs the harness, with its position); the runner reports it when skipping the
    /// case on Envoy.
    pub harness_only: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub pos: Option<Pos>,
    pub action: Action,
    /// What must hold after the action; empty when the step has no `expect`.
    pub expect: Box<Expect>,
}

#[derive(Clone, Debug)]
pub enum Action {
    Request(RequestSpec),
    Advance(Duration),
    /// `on_tick` on every VM, without moving time.
    Tick,
    Fault(FaultSpec),
}

/// A request a step sends. As read, its path and header values are [`Text`]s that may
/// mint tokens; [`RequestSpec::at`] gives the request as sent, with plain strings, which
/// is what a [`Backend`] takes.
#[derive(Clone, Debug, Default)]
pub struct RequestSpec<T = Text> {
    pub method: String,
    pub path: T,
    pub headers: Vec<(String, T)>,
    pub body: Vec<u8>,
    /// The body arrives in chunks of this many bytes; `None`: in one piece.
    pub chunk: Option<usize>,
    /// The worker VM that serves it; `None`: the next in rotation.
    pub worker: Option<usize>,
    /// What the upstream answers instead of the echo (`reply:`); `None`: the echo.
    pub reply: Option<crate::echo_reply::EchoReply>,
}

/// A request as a backend sends it: every token minted.
pub type SentRequest = RequestSpec<String>;

impl RequestSpec {
    /// The request as sent at `now` (Unix seconds, the backend's clock): each
    /// `${token:NAME}` minted for that moment.
    pub fn at(&self, now: u64) -> SentRequest {
        RequestSpec {
            method: self.method.clone(),
            path: self.path.at(now),
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.at(now)))
                .collect(),
            body: self.body.clone(),
            chunk: self.chunk,
            worker: self.worker,
            reply: self.reply.clone(),
        }
    }
}

/// `fault:`: the `nth` call (from now) of host function `call` returns `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    pub call: String,
    pub nth: u64,
    pub status: u32,
}

/// What must come back. Every part is optional; an empty expectation always passes.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub status: Option<u16>,
    pub body: Option<BodyExpect>,
    /// Response headers (names lower-case).
    pub headers: Vec<(String, ValueMatch)>,
    pub absent_headers: Vec<String>,
    pub upstream: Option<UpstreamExpect>,
    /// Metric values, summed over VMs.
    pub metrics: Vec<(String, u64)>,
    /// Substrings some log line so far must contain.
    pub logs_contain: Vec<String>,
    /// Substrings no log line so far may contain.
    pub logs_absent: Vec<String>,
    /// Every HTTP call so far, in order.
    pub calls: Option<Vec<CallExpect>>,
    pub trapped: Option<bool>,
}

impl Expect {
    /// Whether it looks at what only the harness can see (metrics, logs, calls, traps).
    pub fn needs_host(&self) -> bool {
        !self.metrics.is_empty()
            || !self.logs_contain.is_empty()
            || !self.logs_absent.is_empty()
            || self.calls.is_some()
            || self.trapped.is_some()
    }
}

/// One HTTP call as a case expects it; `None` fields match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallExpect {
    pub cluster: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub result: Option<CallEnd>,
    /// The response status (implies `responded`).
    pub status: Option<u16>,
}

/// How a call ended, as a case names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    Responded,
    TimedOut,
    Reset,
    Unmatched,
    Pending,
}

impl CallEnd {
    pub const NAMES: [(&'static str, CallEnd); 5] = [
        ("responded", CallEnd::Responded),
        ("timed_out", CallEnd::TimedOut),
        ("reset", CallEnd::Reset),
        ("unmatched", CallEnd::Unmatched),
        ("pending", CallEnd::Pending),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, e)| *e == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A header or JSON field expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    /// Written `present`: it exists, with any value.
    Present,
    Equals(String),
}

#[derive(Clone, Debug)]
pub enum BodyExpect {
    /// The body is JSON containing these fields (recursively); the string `present` means
    /// the field exists.
    JsonSubset(serde_json::Value),
    /// The body is exactly this text.
    Text(String),
}

#[derive(Clone, Debug)]
pub enum UpstreamExpect {
    /// `upstream: none`: the request was answered without reaching the upstream.
    Never,
    /// The upstream received the request, with these headers and without those.
    Reached {
        headers: Vec<(String, ValueMatch)>,
        absent_headers: Vec<String>,
    },
}
