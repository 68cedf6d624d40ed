//! Case files: requests and what must come back, run against the harness or a real Envoy.
//!
//! A case file (`policies/*.cases.yaml`) names a policy and lists cases; each case is a
//! list of steps, each step a request with its expectation or a move of the virtual clock:
//!
//! ```yaml
//! policy: example.yaml          # relative to the case file; required
//! workers: 1                    # Envoy workers / harness VMs. Defaults to `1`.
//! start: 2026-01-01T00:00:00Z   # harness clock at the start of each case. Defaults to now.
//! env: { NAME: value }          # environment the module sees. Defaults to none.
//! cases:
//!   - name: missing key is refused            # required
//!     backends: [harness, envoy]              # Defaults to both.
//!     steps:
//!       - request: { method: GET, path: /v1/things, headers: { x-api-key: "..." }, body: "" }
//!         expect:
//!           status: 401
//!           body: { code: UNAUTHORIZED, request_id: present }   # JSON subset; a string: exact text
//!           headers: { content-type: application/json, www-authenticate: present }
//!           absent_headers: [server]
//!           upstream: { headers: { x-gatehouse-user: user_demo }, absent_headers: [x-evil] }
//!           # or `upstream: none`: the request never reached the upstream
//!       - advance: 61s                        # ms, s, m, h, d
//! ```
//!
//! Unknown fields are errors with `file:line:column`. The harness backend starts a fresh
//! host per case (at `start`); the Envoy backend starts one Envoy per file and cannot move
//! its clock, so a case with `advance` or one that depends on earlier state must say
//! `backends: [harness]`.
//!
//! - [`parse`]: YAML to [`CaseFile`].
//! - [`expect`]: compares what a backend [`Observed`](backend::Observed) with an [`Expect`].
//! - [`backend`]: the [`Backend`](backend::Backend) trait and its harness and Envoy impls.
//! - [`run`]: runs a file against a backend and reports per case.

pub mod backend;
pub mod expect;
mod harness_backend;
pub mod parse;
pub mod run;

pub use backend::{Backend, BackendKind, Observed};
pub use parse::{CaseError, load};
pub use run::{CaseResult, Outcome as CaseOutcome, RunOptions, run_file, summary};

use gatehouse::policy::tree::Pos;
use std::path::PathBuf;
use std::time::Duration;

/// A parsed case file.
#[derive(Clone, Debug)]
pub struct CaseFile {
    /// The case file as it was named (used in messages).
    pub name: String,
    /// The policy file, resolved against the case file's directory.
    pub policy: PathBuf,
    pub workers: u32,
    /// Unix seconds the harness clock starts at; `None`: the wall clock.
    pub start: Option<u64>,
    pub env: Vec<(String, String)>,
    pub cases: Vec<Case>,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub pos: Option<Pos>,
    pub backends: Vec<BackendKind>,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub pos: Option<Pos>,
    pub action: Action,
}

#[derive(Clone, Debug)]
pub enum Action {
    Request {
        request: RequestSpec,
        expect: Box<Expect>,
    },
    Advance(Duration),
}

/// A request a step sends.
#[derive(Clone, Debug, Default)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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
