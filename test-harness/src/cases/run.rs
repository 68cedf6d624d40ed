//! Runs a case file against one backend and reports per case.

use super::backend::{Backend, BackendConfig, BackendKind, EnvoyBackend};
use super::expect::{check, excerpt};
use super::{Action, CaseFile};
use anyhow::Context;
use std::path::PathBuf;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The gatehouse module (`gatehouse.wasm`).
    pub module: PathBuf,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            module: crate::envoy::default_wasm(),
        }
    }
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
}

impl CaseResult {
    /// The one line the CLI prints for this case.
    pub fn line(&self) -> String {
        let tag = match self.outcome {
            Outcome::Passed => "ok  ",
            Outcome::Failed(_) => "FAIL",
            Outcome::Skipped => "skip",
        };
        format!("{tag} [{}] {}: {}", self.backend, self.location, self.name)
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
    let policy_name = file.policy.display().to_string();
    let source = std::fs::read_to_string(&file.policy)
        .with_context(|| format!("{}: reading the policy {policy_name}", file.name))?;
    let loaded = gatehouse::policy::load_yaml(&policy_name, &source)
        .map_err(|e| anyhow::anyhow!("{}: the policy does not load:\n{e}", file.name))?;
    let config = BackendConfig {
        module: opts.module.clone(),
        plugin_config_json: loaded.plugin_config_json,
        env: file.env.clone(),
        workers: file.workers,
        start: file.start,
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
        };
        if !case.backends.contains(&kind) {
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
    for (i, step) in case.steps.iter().enumerate() {
        let at = match step.pos {
            Some(p) => format!("step {} ({}:{p})", i + 1, file.name),
            None => format!("step {}", i + 1),
        };
        match &step.action {
            Action::Advance(d) => {
                if let Err(e) = backend.advance(*d) {
                    return Outcome::Failed(format!("{at}: advance: {e:#}"));
                }
            }
            Action::Request { request, expect } => {
                let observed = match backend.request(request) {
                    Ok(o) => o,
                    Err(e) => {
                        return Outcome::Failed(format!(
                            "{at}: {} {}: {e:#}",
                            request.method, request.path
                        ));
                    }
                };
                let mismatches = check(expect, &observed);
                if !mismatches.is_empty() {
                    let mut msg = format!("{at}: {} {}", request.method, request.path);
                    for m in mismatches {
                        msg.push_str("\n  ");
                        msg.push_str(&m);
                    }
                    msg.push_str(&format!(
                        "\n  got status {}, body {}",
                        observed.status,
                        excerpt(&observed.body)
                    ));
                    let diag = backend.diagnostics();
                    if !diag.is_empty() {
                        msg.push('\n');
                        msg.push_str(&diag);
                    }
                    return Outcome::Failed(msg);
                }
            }
        }
    }
    Outcome::Passed
}
