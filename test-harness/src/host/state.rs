//! Everything one VM owns, held in its wasmtime `Store`: configuration buffers, the HTTP
//! stream being processed, the HTTP call response being delivered, its tick period; and
//! a handle on the [`World`] its harness's VMs share. Nothing here is process-global, so
//! tests run in parallel without seeing each other.
//!
//! Which header maps and buffers a host call may see follows Envoy's `Context`: a map is
//! reachable while Envoy still holds a pointer to it (during its callback, and after the
//! callback paused until the stream is continued), read-only in the access-log phase, and
//! absent otherwise.

use super::headers::HeaderMap;
use super::log::LogLevel;
use super::world::{VmId, World};
use std::collections::HashMap;
use std::sync::Arc;

/// Which callback the module is in; decides what host calls can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Idle,
    VmStart,
    Configure,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
}

/// `proxy_send_local_response` arguments, applied once the callback returns (Envoy defers
/// it with `addAfterVmCallAction`).
#[derive(Clone, Debug)]
pub(crate) struct LocalResponse {
    pub status: u32,
    pub body: Vec<u8>,
    pub headers: super::headers::RawPairs,
}

/// One HTTP stream (one `Harness::request`).
#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub context_id: u32,
    pub request_headers: HeaderMap,
    /// Envoy keeps the request header map reachable until the headers callback continues
    /// (or the stream is continued after a pause).
    pub request_headers_held: bool,
    pub request_body: Option<Vec<u8>>,
    pub request_body_held: bool,
    pub response_headers: Option<HeaderMap>,
    pub response_headers_held: bool,
    pub response_body: Option<Vec<u8>>,
    pub response_body_held: bool,
    pub local_response: Option<LocalResponse>,
    /// `proxy_close_stream` on the HTTP stream: Envoy resets it.
    pub reset: bool,
    pub resume_request: bool,
    pub resume_response: bool,
    pub source_address: String,
    pub method: Vec<u8>,
    pub path: Vec<u8>,
    pub request_id: Vec<u8>,
    /// Values stored with `proxy_set_property` (Envoy's filter state), by dotted path.
    pub properties: HashMap<String, Vec<u8>>,
}

/// The harness clock: wall time for `proxy_get_current_time_nanoseconds` and WASI
/// realtime, and a monotonic time that only moves forward with `advance`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub realtime_nanos: u64,
    pub monotonic_nanos: u64,
}

/// SplitMix64: small, fast, and fully determined by the seed, which is all tests need
/// (request ids and `random_get` must repeat from run to run, not be unpredictable).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(bytes.get(..chunk.len()).unwrap_or_default());
        }
    }

    /// A UUID v4 string, as Envoy's `generate_request_id` produces.
    pub(crate) fn uuid_v4(&mut self) -> String {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            hex.get(0..8).unwrap_or_default(),
            hex.get(8..12).unwrap_or_default(),
            hex.get(12..16).unwrap_or_default(),
            hex.get(16..20).unwrap_or_default(),
            hex.get(20..32).unwrap_or_default()
        )
    }
}

/// Metric kinds in the ABI numbering; Envoy keeps the kind in the low two bits of the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// Metrics by name. Defining the same name twice gives a new id for the same metric,
/// as in Envoy (the id indexes a stat looked up by name).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    ids: HashMap<u32, (MetricKind, String)>,
    values: HashMap<String, u64>,
    samples: HashMap<String, Vec<u64>>,
    next: u32,
}

/// Why a metric call was refused, mapped to a proxy-wasm status by the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetricError {
    NotFound,
    BadArgument,
}

impl Metrics {
    pub(crate) fn define(&mut self, kind: MetricKind, name: String) -> u32 {
        self.next += 1;
        let id = (self.next << 2) | kind as u32;
        if kind == MetricKind::Histogram {
            self.samples.entry(name.clone()).or_default();
        } else {
            self.values.entry(name.clone()).or_insert(0);
        }
        self.ids.insert(id, (kind, name));
        id
    }

    fn lookup(&self, id: u32) -> Result<(MetricKind, String), MetricError> {
        self.ids.get(&id).cloned().ok_or(MetricError::NotFound)
    }

    /// Counters only go up (Envoy refuses offsets <= 0); gauges move both ways.
    pub(crate) fn increment(&mut self, id: u32, offset: i64) -> Result<(), MetricError> {
        let (kind, name) = self.lookup(id)?;
        let value = self.values.entry(name).or_insert(0);
        match kind {
            MetricKind::Counter if offset > 0 => {
                *value = value.saturating_add(offset.unsigned_abs())
            }
            MetricKind::Gauge if offset >= 0 => {
                *value = value.saturating_add(offset.unsigned_abs())
            }
            MetricKind::Gauge => *value = value.saturating_sub(offset.unsigned_abs()),
            _ => return Err(MetricError::BadArgument),
        }
        Ok(())
    }

    /// Counters add, gauges set, histograms record a sample.
    pub(crate) fn record(&mut self, id: u32, sample: u64) -> Result<(), MetricError> {
        let (kind, name) = self.lookup(id)?;
        match kind {
            MetricKind::Counter => {
                let value = self.values.entry(name).or_insert(0);
                *value = value.saturating_add(sample);
            }
            MetricKind::Gauge => {
                self.values.insert(name, sample);
            }
            MetricKind::Histogram => self.samples.entry(name).or_default().push(sample),
        }
        Ok(())
    }

    /// Envoy cannot read a histogram back: `BadArgument`.
    pub(crate) fn get(&self, id: u32) -> Result<u64, MetricError> {
        let (kind, name) = self.lookup(id)?;
        match kind {
            MetricKind::Histogram => Err(MetricError::BadArgument),
            _ => Ok(self.values.get(&name).copied().unwrap_or(0)),
        }
    }

    /// Counter or gauge value; for a histogram, the number of samples recorded.
    pub(crate) fn by_name(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied().or_else(|| {
            self.samples
                .get(name)
                .map(|s| u64::try_from(s.len()).unwrap_or(u64::MAX))
        })
    }

    pub(crate) fn samples(&self, name: &str) -> Option<&[u64]> {
        self.samples.get(name).map(Vec::as_slice)
    }
}

/// Names the plugin is known by, returned by the `plugin_*` properties.
#[derive(Clone, Debug)]
pub(crate) struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    /// Envoy's node id (`node.id`; `--service-node` or the bootstrap's `node.id`).
    pub node_id: String,
}

pub(crate) struct HostState {
    /// What every VM of the harness shares (shared data, clock, log, stats, ...).
    pub world: Arc<World>,
    pub vm: VmId,
    /// Error and critical lines of the current callback, whatever the log level: a trap's
    /// report quotes them (the panic message comes this way).
    pub recent_errors: Vec<String>,
    /// Unterminated stdout/stderr bytes, flushed as a log line at a newline or when the
    /// callback returns.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub tick_period_ms: u32,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    pub plugin: PluginInfo,
    pub phase: Phase,
    pub stream: Option<Stream>,
    /// The response being delivered by `proxy_on_http_call_response`, readable only then.
    pub http_response: Option<(HeaderMap, Vec<u8>, HeaderMap)>,
    pub next_http_token: u32,
    /// Set by `proxy_set_effective_context` until the callback returns.
    pub effective_context: Option<u32>,
    /// Pending calls of this VM: token to index in the world's call record.
    pub pending_calls: HashMap<u32, usize>,
    pub limits: super::limits::MemoryCap,
    pub exports: super::memory::Exports,
}

impl HostState {
    /// Records a line if Envoy, at the configured level, would print it.
    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        if level >= LogLevel::Error {
            self.recent_errors.push(message.clone());
        }
        self.world.lock().log(self.vm, level, message);
    }

    /// Appends stdio bytes; complete lines become log records (stdout at info, stderr at
    /// error, as Envoy logs a module's fd 1 and 2).
    pub(crate) fn write_stdio(&mut self, fd: u32, bytes: &[u8]) {
        let (level, buffer) = if fd == 1 {
            (LogLevel::Info, &mut self.stdout)
        } else {
            (LogLevel::Error, &mut self.stderr)
        };
        buffer.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=pos).collect();
            lines.push(String::from_utf8_lossy(line.get(..pos).unwrap_or_default()).into_owned());
        }
        for line in lines {
            self.log(level, line);
        }
    }

    pub(crate) fn flush_stdio(&mut self) {
        for (level, bytes) in [
            (LogLevel::Info, std::mem::take(&mut self.stdout)),
            (LogLevel::Error, std::mem::take(&mut self.stderr)),
        ] {
            if !bytes.is_empty() {
                self.log(level, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }

    /// The context a host call acts for: the one `proxy_set_effective_context` named, else
    /// the stream's during a stream callback, else the root context.
    pub(crate) fn current_context(&self) -> u32 {
        if let Some(id) = self.effective_context {
            return id;
        }
        match (&self.stream, self.phase) {
            (
                Some(s),
                Phase::RequestHeaders
                | Phase::RequestBody
                | Phase::ResponseHeaders
                | Phase::ResponseBody
                | Phase::Log,
            ) => s.context_id,
            _ => super::ROOT_CONTEXT_ID,
        }
    }

    /// The header map of ABI type `map_type` if Envoy would let the module read it now.
    pub(crate) fn header_map(&self, map_type: u32) -> Option<&HeaderMap> {
        match (map_type, &self.http_response) {
            (6, Some((headers, _, _))) => return Some(headers),
            (7, Some((_, _, trailers))) => return Some(trailers),
            _ => {}
        }
        let stream = self.stream.as_ref()?;
        let log = self.phase == Phase::Log;
        match map_type {
            0 if log || stream.request_headers_held => Some(&stream.request_headers),
            2 if log || stream.response_headers_held => stream.response_headers.as_ref(),
            _ => None,
        }
    }

    /// The header map of ABI type `map_type` if Envoy would let the module change it now
    /// (never in the access-log phase).
    pub(crate) fn header_map_mut(&mut self, map_type: u32) -> Option<&mut HeaderMap> {
        if self.phase == Phase::Log {
            return None;
        }
        let stream = self.stream.as_mut()?;
        match map_type {
            0 if stream.request_headers_held => Some(&mut stream.request_headers),
            2 if stream.response_headers_held => stream.response_headers.as_mut(),
            _ => None,
        }
    }

    /// The buffer of ABI type `buffer_type`, as Envoy's `Context::getBuffer` exposes it:
    /// vm configuration always, plugin configuration only during `on_configure`, bodies
    /// during their callback or while paused on them.
    pub(crate) fn buffer(&self, buffer_type: u32) -> Option<&[u8]> {
        match buffer_type {
            6 => Some(&self.vm_config),
            7 if self.phase == Phase::Configure => Some(&self.plugin_config),
            4 => self
                .http_response
                .as_ref()
                .map(|(_, body, _)| body.as_slice()),
            0 => {
                let s = self.stream.as_ref()?;
                let reachable = self.phase == Phase::RequestBody || s.request_body_held;
                s.request_body.as_deref().filter(|_| reachable)
            }
            1 => {
                let s = self.stream.as_ref()?;
                let reachable = self.phase == Phase::ResponseBody || s.response_body_held;
                s.response_body.as_deref().filter(|_| reachable)
            }
            _ => None,
        }
    }

    pub(crate) fn buffer_mut(&mut self, buffer_type: u32) -> Option<&mut Vec<u8>> {
        let phase = self.phase;
        let s = self.stream.as_mut()?;
        match buffer_type {
            0 if phase == Phase::RequestBody || s.request_body_held => s.request_body.as_mut(),
            1 if phase == Phase::ResponseBody || s.response_body_held => s.response_body.as_mut(),
            _ => None,
        }
    }
}
