//! Where a case's requests go: the [`Backend`] trait and its implementations.
//!
//! - [`EnvoyBackend`]: one real Envoy per case file, with the echo upstream behind it.
//! - `HarnessBackend` (in `harness_backend.rs`): the wasmtime host, fresh per case.
//!
//! Both report an [`Observed`]: the response, and what the upstream received when the
//! request got there.

use super::RequestSpec;
use crate::envoy::echo::ECHO_MARKER;
use crate::envoy::http1::ClientRequest;
use crate::envoy::{Envoy, EnvoyOptions};
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

/// Everything a case needs from where it runs.
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// Called before each case. The harness starts a fresh host; Envoy keeps running.
    fn begin_case(&mut self) -> anyhow::Result<()>;
    fn request(&mut self, req: &RequestSpec) -> anyhow::Result<Observed>;
    /// Moves the clock forward. Only the harness can.
    fn advance(&mut self, by: Duration) -> anyhow::Result<()>;
    /// Context for a failure report (e.g. the end of the module's log).
    fn diagnostics(&self) -> String;
}

/// What both backends are built from.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub module: PathBuf,
    pub plugin_config_json: String,
    pub env: Vec<(String, String)>,
    pub workers: u32,
    /// Unix seconds for the harness clock at the start of each case.
    pub start: Option<u64>,
}

/// A real Envoy: requests go over loopback TCP; the echo upstream's answer tells what
/// the upstream received.
pub struct EnvoyBackend {
    envoy: Envoy,
}

impl EnvoyBackend {
    pub fn start(config: &BackendConfig) -> anyhow::Result<EnvoyBackend> {
        let opts = EnvoyOptions {
            plugin_config_json: config.plugin_config_json.clone(),
            wasm: config.module.clone(),
            env: config.env.clone(),
            concurrency: config.workers,
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

    fn request(&mut self, req: &RequestSpec) -> anyhow::Result<Observed> {
        let client = ClientRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
                .collect(),
            body: req.body.clone(),
        };
        let resp = self.envoy.send(&client)?;
        let from_upstream = resp.headers.iter().any(|(n, _)| n == ECHO_MARKER);
        let upstream = if from_upstream {
            Some(upstream_from_echo(&resp.body)?)
        } else {
            None
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

    fn diagnostics(&self) -> String {
        format!(
            "--- Envoy log (last lines) ---\n{}",
            self.envoy.log_tail(15)
        )
    }
}
