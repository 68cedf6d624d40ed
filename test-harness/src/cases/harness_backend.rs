//! The harness backend: the module in the wasmtime host ([`crate::host`]), no Envoy.
//! Each case gets a fresh host (fresh shared data, clock at the file's `start`), so cases
//! do not depend on each other's order.

use super::backend::{Backend, BackendConfig, BackendKind, HostSeen, Observed, UpstreamSeen};
use super::{FaultSpec, SentRequest};
use crate::echo_reply::REPLY_HEADER;
use crate::host::{Harness, Request};
use anyhow::{Context, anyhow};
use std::time::Duration;

/// Seed for the host's randomness: fixed, so runs repeat.
const SEED: u64 = 0x6761_7465;

pub struct HarnessBackend {
    config: BackendConfig,
    harness: Option<Harness>,
}

impl HarnessBackend {
    pub fn new(config: BackendConfig) -> HarnessBackend {
        HarnessBackend {
            config,
            harness: None,
        }
    }

    fn harness(&mut self) -> anyhow::Result<&mut Harness> {
        self.harness
            .as_mut()
            .ok_or_else(|| anyhow!("the harness was not started (begin_case not called)"))
    }
}

fn text_headers(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

impl Backend for HarnessBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Harness
    }

    fn begin_case(&mut self) -> anyhow::Result<()> {
        self.harness = None;
        let c = &self.config;
        let mut builder = Harness::builder(&c.module)
            .plugin_config(c.plugin_config.as_bytes().to_vec())
            .workers(usize::try_from(c.workers).unwrap_or(1))
            // As the Envoy backend's bootstrap (envoy/envoy.yaml.tmpl) configures it.
            .allow_on_headers_stop_iteration(true)
            .seed(SEED);
        for upstream in &c.upstreams {
            builder = builder.upstream(upstream.clone());
        }
        if let Some(policy) = c.failure_policy {
            builder = builder.failure_policy(policy);
        }
        for (k, v) in &c.env {
            builder = builder.env(k, v);
        }
        if let Some(secs) = c.start {
            builder = builder.time(secs.saturating_mul(1_000_000_000));
        }
        let harness = builder
            .build()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("loading {} in the harness", c.module.display()))?;
        self.harness = Some(harness);
        Ok(())
    }

    fn now_unix(&self) -> anyhow::Result<u64> {
        match &self.harness {
            Some(h) => Ok(h.now_nanos() / 1_000_000_000),
            None => Err(anyhow!(
                "the harness was not started (begin_case not called)"
            )),
        }
    }

    fn request(&mut self, req: &SentRequest) -> anyhow::Result<Observed> {
        let mut request = Request::new(req.method.as_str(), req.path.as_str());
        for (name, value) in &req.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(reply) = &req.reply {
            request = request.header(REPLY_HEADER, reply.to_header_value());
        }
        if !req.body.is_empty() {
            request = request.body(req.body.clone());
        }
        if let Some(size) = req.chunk {
            request = request.chunked(size);
        }
        let harness = self.harness()?;
        let outcome = match req.worker {
            Some(worker) => harness.request_on(worker, request)?,
            None => harness.request(request)?,
        };
        Ok(Observed {
            status: outcome.status,
            headers: text_headers(&outcome.headers),
            body: outcome.body.clone(),
            upstream: outcome.upstream.as_ref().map(|u| UpstreamSeen {
                headers: text_headers(&u.headers),
                body: u.body.clone(),
            }),
        })
    }

    fn advance(&mut self, by: Duration) -> anyhow::Result<()> {
        self.harness()?.advance(by)?;
        Ok(())
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        self.harness()?.tick()
    }

    fn flush_stats(&mut self) -> anyhow::Result<()> {
        let h = self.harness()?;
        for n in 0..h.workers() {
            h.tick_on(crate::host::VmId::Worker(n))?;
        }
        Ok(())
    }

    fn fault(&mut self, fault: &FaultSpec) -> anyhow::Result<()> {
        self.harness()?.fault(&fault.call, fault.nth, fault.status);
        Ok(())
    }

    fn host_seen(&self, metric_names: &[&str]) -> Option<HostSeen> {
        let h = self.harness.as_ref()?;
        Some(HostSeen {
            metrics: metric_names
                .iter()
                .map(|name| (name.to_string(), h.metric(name)))
                .collect(),
            logs: h.logs().iter().map(ToString::to_string).collect(),
            calls: h.http_calls(),
            traps: h
                .traps()
                .into_iter()
                .map(|(vm, message)| format!("{vm}: {message}"))
                .collect(),
        })
    }

    fn diagnostics(&self) -> String {
        let Some(h) = &self.harness else {
            return String::new();
        };
        let logs = h.logs();
        let tail: Vec<String> = logs
            .iter()
            .skip(logs.len().saturating_sub(15))
            .map(|r| r.to_string())
            .collect();
        if tail.is_empty() {
            return String::new();
        }
        format!("--- module log (last lines) ---\n{}", tail.join("\n"))
    }
}
