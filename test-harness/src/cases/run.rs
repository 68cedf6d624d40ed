//! Runs a case file against one backend and reports per case.

use super::backend::{Backend, BackendConfig, BackendKind, EnvoyBackend};
use super::expect::{check, check_host, excerpt, unmatched_calls};
use super::{Action, CaseFile, PluginSource};
use anyhow::Context;
use std::path::PathBuf;

/// The prefix of the counters gatehouse flushes on each worker's tick ([`Backend::flush_stats`]).
const GATEHOUSE_METRICS: &str = "gatehouse.";

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The module to load (`run --module`), over the case file's `module:`; `None`: the
    /// file's, else [`crate::envoy::default_wasm`].
    pub module: Option<PathBuf>,
    /// Envoy only: the filter-only bootstrap (no singleton service), as Istio and Envoy
    /// Gateway configure Envoy. Defaults to `false`.
    pub filter_only: bool,
    /// Envoy only: the Wasm filter's whole `typed_config`, as Istio or Envoy Gateway
    /// would deliver it. Defaults to `None`: the bootstrap's filter.
    pub filter_config: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// What went wrong, possibly several lines.
    Failed(String),
    /// The case does not run on this backend (`backends:`).
    Skipped,
}

#[derive(Clone, Debug)]
pub struct CaseResult {
    /// `file:line:column` of the case.
    pub location: String,
    pub name: String,
    pub backend: BackendKind,
    pub outcome: Outcome,
    /// Why it was skipped, when there is more to say than `backends:`.
    pub note: Option<String>,
}

impl CaseResult {
    /// The one line the CLI prints for this case.
    pub fn line(&self) -> String {
        let tag = match self.outcome {
            Outcome::Passed => "ok  ",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped => "skip",
        };
        let line = format!("{tag} [{}] {}: {}", self.backend, self.location, self.name);
        match &self.note {
            Some(note) => format!("{line} ({note})"),
            None => line,
        }
    }
}

/// How many cases passed and how many failed (skipped ones count in neither).
pub fn counts(results: &[CaseResult]) -> (usize, usize) {
    let passed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Passed)
        .count();
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    (passed, failed)
}

/// `12 passed, 0 failed`.
pub fn summary(results: &[CaseResult]) -> String {
    let (passed, failed) = counts(results);
    format!("{passed} passed, {failed} failed")
}

fn open(kind: BackendKind, config: &BackendConfig) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match kind {
        BackendKind::Envoy => Box::new(EnvoyBackend::start(config)?),
        BackendKind::Harness => {
            Box::new(super::harness_backend::HarnessBackend::new(config.clone()))
        }
    })
}

/// Runs every case of `file` on `kind`. `Err`: the file could not run at all (policy
/// does not load, backend does not start).
pub fn run_file(
    file: &CaseFile,
    kind: BackendKind,
    opts: &RunOptions,
) -> anyhow::Result<Vec<CaseResult>> {
    let plugin_config = match &file.plugin {
        PluginSource::Raw(text) => text.clone(),
        PluginSource::Policy(path) => {
            let policy_name = path.display().to_string();
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("{}: reading the policy {policy_name}", file.name))?;
            gatehouse_core::policy::load_yaml(&policy_name, &source)
                .map_err(|e| anyhow::anyhow!("{}: the policy does not load:\n{e}", file.name))?
                .plugin_config_json
        }
    };
    let module = opts
        .module
        .clone()
        .or_else(|| file.module.clone())
        .unwrap_or_else(crate::envoy::default_wasm);
    let config = BackendConfig {
        module,
        plugin_config,
        env: file.env.clone(),
        workers: file.workers,
        start: file.start,
        upstreams: file.upstreams.clone(),
        failure_policy: file.failure_policy,
        filter_only: opts.filter_only,
        filter_config: opts.filter_config.clone(),
    };

    let mut results = Vec::new();
    let mut backend: Option<Box<dyn Backend>> = None;
    for case in &file.cases {
        let location = match case.pos {
            Some(p) => format!("{}:{p}", file.name),
            None => file.name.clone(),
        };
        let mut result = CaseResult {
            location,
            name: case.name.clone(),
            backend: kind,
            outcome: Outcome::Skipped,
            note: None,
        };
        if !case.backends.contains(&kind) {
            results.push(result);
            continue;
        }
        if kind == BackendKind::Envoy
            && let Some(why) = &case.harness_only
        {
            result.note = Some(format!("harness only: {why}"));
            results.push(result);
            continue;
        }
        // Started lazily: a file whose cases all skip this backend never starts it.
        let b = match &mut backend {
            Some(b) => b,
            None => backend.insert(open(kind, &config)?),
        };
        result.outcome = run_case(b.as_mut(), file, case);
        results.push(result);
    }
    Ok(results)
}

fn run_case(backend: &mut dyn Backend, file: &CaseFile, case: &super::Case) -> Outcome {
    if let Err(e) = backend.begin_case() {
        return Outcome::Failed(format!("could not start the backend: {e:#}"));
    }
    // Calls up to here were accounted for by a `calls` expectation.
    let mut calls_listed = 0;
    for (i, step) in case.steps.iter().enumerate() {
        let at = match step.pos {
            Some(p) => format!("step {} ({}:{p})", i + 1, file.name),
            None => format!("step {}", i + 1),
        };
        let expect = &step.expect;
        let (what, done) = match &step.action {
            Action::Advance(d) => ("advance".to_string(), backend.advance(*d).map(|()| None)),
            Action::Tick => ("tick".to_string(), backend.tick().map(|()| None)),
            Action::Fault(f) => (
                format!("fault {} #{} -> {}", f.call, f.nth, f.status),
                backend.fault(f).map(|()| None),
            ),
            // Minted now, so a token's times follow the backend's clock (and `advance`).
            Action::Request(request) => (
                format!("{} {}", request.method, request.path),
                backend
                    .now_unix()
                    .and_then(|now| backend.request(&request.at(now)))
                    .map(Some),
            ),
        };
        let observed = match done {
            Ok(o) => o,
            Err(e) => {
                let mut msg = format!("{at}: {what}: {e:#}");
                append_diagnostics(&mut msg, backend);
                return Outcome::Failed(msg);
            }
        };
        let mut mismatches = match &observed {
            Some(o) => check(expect, o),
            None => Vec::new(),
        };
        let metric_names: Vec<&str> = expect.metrics.iter().map(|(n, _)| n.as_str()).collect();
        // gatehouse counts per worker and flushes to the stats on each worker's tick (they
        // lag by up to a second in Envoy): its counters are read after one.
        if metric_names
            .iter()
            .any(|n| n.starts_with(GATEHOUSE_METRICS))
            && let Err(e) = backend.flush_stats()
        {
            let mut msg = format!("{at}: {what}: flushing the stats: {e:#}");
            append_diagnostics(&mut msg, backend);
            return Outcome::Failed(msg);
        }
        match backend.host_seen(&metric_names) {
            Some(seen) => {
                mismatches.extend(check_host(expect, &seen));
                if expect.calls.is_some() {
                    calls_listed = seen.calls.len();
                }
                mismatches.extend(unmatched_calls(&seen.calls, calls_listed));
            }
            None if expect.needs_host() => mismatches.push(format!(
                "the {} backend cannot see metrics, logs, calls or traps",
                backend.kind()
            )),
            None => {}
        }
        if !mismatches.is_empty() {
            let mut msg = format!("{at}: {what}");
            for m in mismatches {
                msg.push_str("\n  ");
                msg.push_str(&m);
            }
            if let Some(o) = &observed {
                msg.push_str(&format!(
                    "\n  got status {}, body {}",
                    o.status,
                    excerpt(&o.body)
                ));
            }
            append_diagnostics(&mut msg, backend);
            return Outcome::Failed(msg);
        }
    }
    Outcome::Passed
}

fn append_diagnostics(msg: &mut String, backend: &dyn Backend) {
    let diag = backend.diagnostics();
    if !diag.is_empty() {
        msg.push('\n');
        msg.push_str(&diag);
    }
}
