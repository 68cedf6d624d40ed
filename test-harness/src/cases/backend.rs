//! Where a case's requests go: the [`Backend`] trait and its implementations.
//!
//! - [`EnvoyBackend`]: one real Envoy per case file, with the echo upstream behind it.
//! - `HarnessBackend` (in `harness_backend.rs`): the wasmtime host, fresh per case.
//!
//! Both report an [`Observed`]: the response, and what the upstream received when the
//! request got there. Only the harness can also tick, inject faults and report a
//! [`HostSeen`] (metrics, logs, calls, traps); the runner never asks Envoy for them, since
//! cases that need them are harness-only (see the module doc of [`crate::cases`]).

use super::{FaultSpec, SentRequest};
use crate::echo_reply::{RECEIVED_HEADER, REPLY_HEADER};
use crate::envoy::echo::ECHO_MARKER;
use crate::envoy::http1::ClientRequest;
use crate::envoy::{Envoy, EnvoyOptions};
use crate::host::{FailurePolicy, HttpCall, Upstream};
use anyhow::bail;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Harness,
    Envoy,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Harness => "harness",
            BackendKind::Envoy => "envoy",
        })
    }
}

/// What came back from one request.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub status: u16,
    /// Response headers, names lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What the upstream received; `None` when the request was answered before it.
    pub upstream: Option<UpstreamSeen>,
}

#[derive(Clone, Debug, Default)]
pub struct UpstreamSeen {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the host saw so far in a case: only the harness can tell.
#[derive(Clone, Debug, Default)]
pub struct HostSeen {
    /// The metrics the expectation asked for, `None` when the module never defined it.
    pub metrics: Vec<(String, Option<u64>)>,
    /// Every log line, as `[worker 0] [info] message`.
    pub logs: Vec<String>,
    pub calls: Vec<HttpCall>,
    /// Each trap: the VM and the message (with the module's panic message).
    pub traps: Vec<String>,
}

/// Everything a case needs from where it runs.
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// Called before each case. The harness starts a fresh host; Envoy keeps running.
    fn begin_case(&mut self) -> anyhow::Result<()>;
    /// The time a request sent now is judged at, in Unix seconds: the harness's virtual
    /// clock, or the machine's that Envoy reads. Tokens are minted against it.
    fn now_unix(&self) -> anyhow::Result<u64>;
    fn request(&mut self, req: &SentRequest) -> anyhow::Result<Observed>;
    /// Moves the clock forward. Only the harness can.
    fn advance(&mut self, by: Duration) -> anyhow::Result<()>;
    /// `on_tick` on every VM. Only the harness can.
    fn tick(&mut self) -> anyhow::Result<()>;
    /// Makes a host call fail. Only the harness can.
    fn fault(&mut self, fault: &FaultSpec) -> anyhow::Result<()>;
    /// Lets the counters gatehouse keeps per worker reach the stats before they are read:
    /// one `on_tick` on every worker VM, as Envoy's stats are a second later. Only the
    /// harness reads stats; elsewhere nothing to do.
    fn flush_stats(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Metrics (those named), logs, calls and traps so far; `None` where the backend
    /// cannot see them.
    fn host_seen(&self, metric_names: &[&str]) -> Option<HostSeen>;
    /// Context for a failure report (e.g. the end of the module's log).
    fn diagnostics(&self) -> String;
}

/// What both backends are built from.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub module: PathBuf,
    /// The plugin configuration: a policy's JSON, or a case file's `plugin_config`.
    pub plugin_config: String,
    pub env: Vec<(String, String)>,
    pub workers: u32,
    /// Unix seconds for the harness clock at the start of each case.
    pub start: Option<u64>,
    /// Scripted clusters for HTTP calls (harness only).
    pub upstreams: Vec<Upstream>,
    /// Harness only; `None`: a trap is an error for the case.
    pub failure_policy: Option<FailurePolicy>,
    /// Envoy only: render the filter-only bootstrap ([`EnvoyOptions::filter_only`]).
    pub filter_only: bool,
    /// Envoy only: the Wasm filter's whole `typed_config` ([`EnvoyOptions::filter_config`]).
    pub filter_config: Option<serde_json::Value>,
}

/// A real Envoy: requests go over loopback TCP; the echo upstream's answer tells what
/// the upstream received.
pub struct EnvoyBackend {
    envoy: Envoy,
}

impl EnvoyBackend {
    pub fn start(config: &BackendConfig) -> anyhow::Result<EnvoyBackend> {
        let opts = EnvoyOptions {
            plugin_config_json: config.plugin_config.clone(),
            wasm: config.module.clone(),
            env: config.env.clone(),
            concurrency: config.workers,
            filter_only: config.filter_only,
            filter_config: config.filter_config.clone(),
        };
        Ok(EnvoyBackend {
            envoy: Envoy::start(&opts)?,
        })
    }

    pub fn envoy(&self) -> &Envoy {
        &self.envoy
    }
}

fn text_headers(headers: Vec<(String, Vec<u8>)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Reads the echo upstream's answer back into what the upstream received.
pub fn upstream_from_echo(body: &[u8]) -> anyhow::Result<UpstreamSeen> {
    let json: serde_json::Value = serde_json::from_slice(body)?;
    let headers = json
        .get("headers")
        .and_then(|h| h.as_object())
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let body = json
        .get("body")
        .and_then(|b| b.as_str())
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    Ok(UpstreamSeen { headers, body })
}

impl Backend for EnvoyBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Envoy
    }

    fn begin_case(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "Envoy judges tokens by the machine's clock, so tokens are minted by it"
    )]
    fn now_unix(&self) -> anyhow::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs())
    }

    fn request(&mut self, req: &SentRequest) -> anyhow::Result<Observed> {
        if req.worker.is_some() || req.chunk.is_some() {
            bail!(
                "Envoy cannot be told which worker serves a request or how to chunk its body; give this case `backends: [harness]`"
            );
        }
        let client = ClientRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
                .chain(
                    req.reply
                        .iter()
                        .map(|r| (REPLY_HEADER.to_string(), r.to_header_value().into_bytes())),
                )
                .collect(),
            body: req.body.clone(),
        };
        let resp = self.envoy.send(&client)?;
        let from_upstream = resp.headers.iter().any(|(n, _)| n == ECHO_MARKER);
        // A scripted reply's body is not the echo: what the upstream received comes in a
        // header instead.
        let received = resp
            .headers
            .iter()
            .find(|(n, _)| n == RECEIVED_HEADER)
            .map(|(_, v)| v.as_slice());
        let upstream = match (from_upstream, received) {
            (false, _) => None,
            (true, Some(echo)) => Some(upstream_from_echo(echo)?),
            (true, None) => Some(upstream_from_echo(&resp.body)?),
        };
        Ok(Observed {
            status: resp.status,
            headers: text_headers(resp.headers),
            body: resp.body,
            upstream,
        })
    }

    fn advance(&mut self, _by: Duration) -> anyhow::Result<()> {
        bail!("Envoy's clock cannot be moved; give this case `backends: [harness]`")
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        bail!("Envoy cannot be made to tick now; give this case `backends: [harness]`")
    }

    fn fault(&mut self, _fault: &FaultSpec) -> anyhow::Result<()> {
        bail!("Envoy's host calls cannot be made to fail; give this case `backends: [harness]`")
    }

    fn host_seen(&self, _metric_names: &[&str]) -> Option<HostSeen> {
        None
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- Envoy log (last lines) ---\n{}",
            self.envoy.log_tail(15)
        )
    }
}
