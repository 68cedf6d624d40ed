//! A wasmtime host that runs the gatehouse proxy-wasm module the way one Envoy worker does.
//!
//! It implements the proxy-wasm ABI 0.2.1 and the WASI calls a Rust module makes, with
//! Envoy's semantics: start-up order (`_initialize`, root context, `on_vm_start`,
//! `on_configure`), header map encoding, shared data with compare-and-swap, local
//! responses applied after the callback returns, which maps and buffers are reachable in
//! which callback. Every other import is linked and traps with
//! `unimplemented host call MODULE.NAME` only if called.
//!
//! ```no_run
//! use gatehouse_harness::host::{Harness, Request};
//! let mut h = Harness::builder("target/wasm32-wasip1/release/gatehouse.wasm")
//!     .plugin_config(r#"{"routes": []}"#)
//!     .build()?;
//! let out = h.request(Request::get("/v1/things").header("x-api-key", "k"))?;
//! assert_eq!(out.status, 401);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! All state (shared data, clock, logs, metrics) belongs to one [`Harness`], so tests run
//! in parallel. The compiled module is shared process-wide ([`module_cache`]).
//!
//! Where things live: [`abi`] the `env.proxy_*` calls, [`wasi`] the WASI calls,
//! [`linking`] the import set and the trapping stand-ins, [`stream`] the order Envoy calls
//! an HTTP stream's callbacks in, [`state`] what a harness owns, [`headers`] and
//! [`shared_data`] the two data structures with exact Envoy behaviour.

mod abi;
mod headers;
mod linking;
mod log;
mod memory;
mod module_cache;
mod request;
mod shared_data;
mod state;
mod stream;
mod wasi;

pub use log::{LogLevel, LogRecord};
pub use request::{Outcome, Request, UpstreamRequest};

use state::{Clock, HostState, Metrics, Phase, PluginInfo, Rng};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Instance, Store, WasmParams, WasmResults};

/// Envoy numbers the root context 1; stream contexts follow.
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// Seed used when a test does not choose one: runs repeat by default.
const DEFAULT_SEED: u64 = 0x5eed;

/// One Envoy worker's VM running the module, with its own shared data, clock and logs.
pub struct Harness {
    store: Store<HostState>,
    instance: Instance,
    next_context_id: u32,
    /// Set by the first trap: Envoy does not call into a failed VM again.
    failed: Option<String>,
}

/// Configures a [`Harness`]; [`HarnessBuilder::build`] starts the VM.
#[derive(Clone, Debug)]
pub struct HarnessBuilder {
    module_path: PathBuf,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    env: Vec<(String, String)>,
    time: Option<u64>,
    seed: u64,
    log_level: LogLevel,
}

/// Why a harness did not start.
#[derive(Debug)]
pub enum BuildError {
    /// The module could not be read, compiled or instantiated.
    Load(anyhow::Error),
    /// `proxy_on_vm_start` returned false.
    VmStartRejected { logs: Vec<LogRecord> },
    /// `proxy_on_configure` returned false: the plugin refused its configuration.
    ConfigureRejected { logs: Vec<LogRecord> },
    /// A start-up callback trapped (typically a panic in the module).
    Trap {
        message: String,
        logs: Vec<LogRecord>,
    },
}

fn write_logs(f: &mut fmt::Formatter<'_>, logs: &[LogRecord]) -> fmt::Result {
    if logs.is_empty() {
        return write!(f, " (the module logged nothing)");
    }
    write!(f, "; module log:")?;
    for record in logs {
        write!(f, "\n  {record}")?;
    }
    Ok(())
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Load(e) => write!(f, "could not load the module: {e:#}"),
            BuildError::VmStartRejected { logs } => {
                write!(f, "proxy_on_vm_start returned false")?;
                write_logs(f, logs)
            }
            BuildError::ConfigureRejected { logs } => {
                write!(
                    f,
                    "proxy_on_configure returned false (the plugin configuration was refused)"
                )?;
                write_logs(f, logs)
            }
            BuildError::Trap { message, logs } => {
                write!(f, "the module trapped while starting: {message}")?;
                write_logs(f, logs)
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// The default start of the virtual clock: read once, at build, never during a request.
#[allow(
    clippy::disallowed_methods,
    reason = "the harness starts at real time unless a test sets it"
)]
fn real_time_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl HarnessBuilder {
    /// The plugin configuration (`configuration` in Envoy's filter config): the JSON policy.
    pub fn plugin_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.plugin_config = bytes.into();
        self
    }

    /// The VM configuration (`vm_config.configuration`).
    pub fn vm_config(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_config = bytes.into();
        self
    }

    /// An environment variable (`vm_config.environment_variables.key_values`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Wall-clock start, nanoseconds since the Unix epoch. Defaults to the real time.
    pub fn time(mut self, nanos_since_epoch: u64) -> Self {
        self.time = Some(nanos_since_epoch);
        self
    }

    /// Seed of the host's randomness (`random_get`, generated request ids). Defaults to a
    /// fixed value, so runs repeat.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Envoy's log level: lines below it are not recorded. Defaults to `Info`, Envoy's.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// Loads the module and starts it as Envoy does: `_initialize` (or `_start`), root
    /// context creation, `on_vm_start`, `on_configure`.
    pub fn build(self) -> Result<Harness, BuildError> {
        let (engine, module) = module_cache::load(&self.module_path).map_err(BuildError::Load)?;
        let state = HostState {
            log_level: self.log_level,
            logs: Vec::new(),
            recent_errors: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            clock: Clock {
                realtime_nanos: self.time.unwrap_or_else(real_time_nanos),
                monotonic_nanos: 1_000_000_000,
            },
            rng: Rng::new(self.seed),
            env: self.env,
            shared: Default::default(),
            metrics: Metrics::default(),
            tick_period_ms: 0,
            vm_config: self.vm_config,
            plugin_config: self.plugin_config,
            plugin: PluginInfo {
                name: "gatehouse".to_string(),
                root_id: String::new(),
                vm_id: "gatehouse".to_string(),
            },
            phase: Phase::Idle,
            stream: None,
        };
        let mut store = Store::new(&engine, state);
        let load = |e: wasmtime::Error| BuildError::Load(anyhow::anyhow!("{e:?}"));
        let linker = linking::linker_for(&engine, &module, &mut store).map_err(load)?;
        let instance = linker.instantiate(&mut store, &module).map_err(load)?;
        let mut harness = Harness {
            store,
            instance,
            next_context_id: ROOT_CONTEXT_ID + 1,
            failed: None,
        };
        harness.start()?;
        Ok(harness)
    }
}

impl Harness {
    pub fn builder(module_path: impl AsRef<Path>) -> HarnessBuilder {
        HarnessBuilder {
            module_path: module_path.as_ref().to_path_buf(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            env: Vec::new(),
            time: None,
            seed: DEFAULT_SEED,
            log_level: LogLevel::Info,
        }
    }

    fn start(&mut self) -> Result<(), BuildError> {
        let trap = |h: &Harness, message: String| BuildError::Trap {
            message,
            logs: h.logs(),
        };
        let init = if self.has_export("_initialize") {
            "_initialize"
        } else {
            "_start"
        };
        self.call::<(), ()>(init, ()).map_err(|m| trap(self, m))?;
        self.call::<(u32, u32), ()>("proxy_on_context_create", (ROOT_CONTEXT_ID, 0))
            .map_err(|m| trap(self, m))?;

        self.store.data_mut().phase = Phase::VmStart;
        let size = len_u32(self.store.data().vm_config.len());
        let started = self
            .call::<(u32, u32), u32>("proxy_on_vm_start", (ROOT_CONTEXT_ID, size))
            .map_err(|m| trap(self, m))?;
        if started == Some(0) {
            return Err(BuildError::VmStartRejected { logs: self.logs() });
        }

        self.store.data_mut().phase = Phase::Configure;
        let size = len_u32(self.store.data().plugin_config.len());
        let configured = self
            .call::<(u32, u32), u32>("proxy_on_configure", (ROOT_CONTEXT_ID, size))
            .map_err(|m| trap(self, m))?;
        self.store.data_mut().phase = Phase::Idle;
        if configured == Some(0) {
            return Err(BuildError::ConfigureRejected { logs: self.logs() });
        }
        Ok(())
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls an export; `Ok(None)` when the module does not export it (Envoy skips absent
    /// callbacks). A trap marks the VM failed and returns the wasmtime error together with
    /// what the module said at error level during the call (a Rust panic message arrives
    /// through the SDK's panic hook as a critical log, or on stderr).
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &str,
        params: P,
    ) -> Result<Option<R>, String> {
        if let Some(first) = &self.failed {
            return Err(format!(
                "the VM failed earlier and Envoy does not call it again; first failure: {first}"
            ));
        }
        let func = match self.instance.get_func(&mut self.store, name) {
            Some(f) => f,
            None => return Ok(None),
        };
        let typed = func
            .typed::<P, R>(&self.store)
            .map_err(|e| format!("export {name} has an unexpected signature: {e}"))?;
        self.store.data_mut().recent_errors.clear();
        let result = typed.call(&mut self.store, params);
        self.store.data_mut().flush_stdio();
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let said = std::mem::take(&mut self.store.data_mut().recent_errors);
                let mut message = format!("{name} trapped: {e:?}");
                if !said.is_empty() {
                    message.push_str("\nthe module said:\n  ");
                    message.push_str(&said.join("\n  "));
                }
                self.failed = Some(message.clone());
                Err(message)
            }
        }
    }

    /// All log lines so far, in order (`proxy_log` at or above the log level, and
    /// stdout/stderr lines).
    pub fn logs(&self) -> Vec<LogRecord> {
        self.store.data().logs.clone()
    }

    /// A shared-data entry as the module would read it: value and cas.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store
            .data()
            .shared
            .get(key.as_bytes())
            .map(|(v, cas)| (v.to_vec(), cas))
    }

    /// Writes a shared-data entry unconditionally (as the sync service would); the entry
    /// gets a new cas like any write.
    pub fn set_shared_data(&mut self, key: &str, value: &[u8]) {
        // cas 0 never mismatches
        let _ = self.store.data_mut().shared.set(key.as_bytes(), value, 0);
    }

    /// A metric by the name the module defined it with: counter or gauge value; for a
    /// histogram, the number of samples.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.store.data().metrics.by_name(name)
    }

    /// The samples recorded in a histogram.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.store.data().metrics.samples(name).map(<[u64]>::to_vec)
    }

    /// Wall-clock time the module sees, nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.store.data().clock.realtime_nanos
    }

    /// Sets the wall clock (may go backwards, like a real clock being corrected); the
    /// monotonic clock is not affected.
    pub fn set_time(&mut self, nanos: u64) {
        self.store.data_mut().clock.realtime_nanos = nanos;
    }

    /// Moves both clocks forward. Ticks are not fired: call [`Harness::tick`].
    pub fn advance(&mut self, d: Duration) {
        let clock = &mut self.store.data_mut().clock;
        clock.realtime_nanos = clock.realtime_nanos.saturating_add(duration_nanos(d));
        clock.monotonic_nanos = clock.monotonic_nanos.saturating_add(duration_nanos(d));
    }

    /// The tick period the module asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// Calls `proxy_on_tick` on the root context once, whatever the tick period.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        self.store.data_mut().phase = Phase::Idle;
        self.call::<u32, ()>("proxy_on_tick", ROOT_CONTEXT_ID)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
