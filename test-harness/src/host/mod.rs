//! A wasmtime host that runs the gatehouse proxy-wasm module the way Envoy does: one VM
//! per worker, all sharing shared data, shared queues, stats and the log, plus the
//! optional singleton service VM, on a virtual clock.
//!
//! It implements every host function of the proxy-wasm ABI 0.2.1 and the WASI calls a
//! Rust module makes, with Envoy's statuses and semantics: start-up order (`_initialize`,
//! root context, `on_vm_start`, `on_configure`), header maps, buffers (bodies, VM and
//! plugin configuration, HTTP call responses), properties with Envoy's encodings (strings
//! raw, integers 8-byte little-endian), metrics readable by name, logs by level, ticks,
//! HTTP calls to scripted upstreams ([`Upstream`]), shared data (one CAS counter for all
//! keys, `cas = 0` unconditional, an absent key written whatever the cas), shared queues
//! (the last registrant gets `on_queue_ready`, delivered after the enqueuing callback),
//! local responses applied after the callback returns, paused streams holding their body
//! callbacks, chunked bodies. gRPC calls fail as for an unknown cluster (`ParseFailure`):
//! the harness has no gRPC upstreams. Any other import is linked and traps with
//! `unimplemented host call MODULE.NAME` only if called.
//!
//! ```no_run
//! use gatehouse_harness::host::{Harness, Request};
//! let mut h = Harness::builder("target/wasm32-wasip1/release/gatehouse.wasm")
//!     .plugin_config(r#"{"routes": []}"#)
//!     .workers(2)
//!     .build()?;
//! let out = h.request(Request::get("/v1/things").header("x-api-key", "k"))?;
//! assert_eq!(out.status, 401);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What no other harness has: [`Harness::concurrently`] runs requests on several workers
//! interleaved at every host call in an order drawn from a seed ([`sched`]), and
//! [`Harness::explore`] tries many seeds; [`Harness::advance`] moves virtual time and fires
//! ticks, HTTP call responses and timeouts at their moment; [`Harness::fault`] makes the
//! Nth call of a host function fail; memory and per-callback work are capped ([`limits`]);
//! a trap follows Envoy's `failure_policy` ([`FailurePolicy`]) or, by default, fails the
//! test with the module's panic message.
//!
//! All state belongs to one [`Harness`] ([`world`]), so tests run in parallel. The compiled
//! module is shared process-wide ([`module_cache`]).
//!
//! Where things live: [`abi`] and [`calls`] the `env.proxy_*` calls, [`wasi`] the WASI
//! calls, [`linking`] the import set (scheduling points, call counts, faults, trapping
//! stand-ins), [`vm`] one VM's life, [`stream`] the order Envoy calls an HTTP stream's
//! callbacks in, [`state`] what a VM owns, [`world`] what the VMs share, [`upstream`] the
//! scripted clusters, [`headers`] and [`shared_data`] the two data structures with exact
//! Envoy behaviour.

mod abi;
mod calls;
mod headers;
mod limits;
mod linking;
mod log;
mod memory;
mod module_cache;
mod request;
mod sched;
mod shared_data;
mod state;
mod stream;
mod upstream;
mod vm;
mod wasi;
mod world;

pub use limits::{DEFAULT_FUEL_PER_CALLBACK, DEFAULT_MEMORY_LIMIT};
pub use log::{LogLevel, LogRecord};
pub use request::{Outcome, Request, UpstreamRequest};
pub use upstream::{CallResult, HttpCall, Reply, Route, Upstream};
pub use world::VmId;

use state::Clock;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vm::{Trapped, Vm};
use world::{Fault, World};

/// Envoy numbers the root context 1; stream contexts follow.
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// Seed used when a test does not choose one: runs repeat by default.
const DEFAULT_SEED: u64 = 0x5eed;

/// What Envoy does with a request when the module traps (`failure_policy` of the Wasm
/// filter). Without one ([`HarnessBuilder::failure_policy`] not called), a trap is an error
/// for the test, carrying the module's panic message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// 503 for the request that trapped and every later one on that VM.
    FailClosed,
    /// The filter is skipped: the request goes on to the upstream as the client sent it.
    FailOpen,
    /// 503 for the request that trapped; the next request on that VM gets a fresh VM.
    FailReload,
}

/// The module running as Envoy runs it: one VM per worker, all sharing shared data,
/// queues, stats, the log and a virtual clock, and optionally the singleton service VM.
pub struct Harness {
    world: Arc<World>,
    workers: Vec<Vm>,
    singleton: Option<Vm>,
    config: HarnessBuilder,
    /// Worker for [`Harness::request`]: requests rotate over the workers, as Envoy spreads
    /// connections.
    next_worker: usize,
    /// VMs held up ([`Harness::stall`]) and the events held for them.
    stalled: std::collections::BTreeSet<VmId>,
    held: Vec<world::Event>,
}

/// Configures a [`Harness`]; [`HarnessBuilder::build`] starts the VMs.
#[derive(Clone, Debug)]
pub struct HarnessBuilder {
    module_path: PathBuf,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    env: Vec<(String, String)>,
    time: Option<u64>,
    seed: u64,
    log_level: LogLevel,
    workers: usize,
    singleton: Option<Vec<u8>>,
    upstreams: Vec<Upstream>,
    failure_policy: Option<FailurePolicy>,
    memory_limit: usize,
    fuel_per_callback: u64,
    allow_on_headers_stop_iteration: bool,
    node_id: String,
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

    /// Number of worker VMs (Envoy's `--concurrency`). Defaults to 1; at least 1.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Also run the singleton service VM (Envoy's wasm `bootstrap_extensions` service on
    /// the main thread), with its own plugin configuration. Its root id is `gatehouse_sync`,
    /// the one gatehouse runs its feed sync under.
    pub fn singleton(mut self, plugin_config: impl Into<Vec<u8>>) -> Self {
        self.singleton = Some(plugin_config.into());
        self
    }

    /// A cluster HTTP calls may name, with its scripted answers.
    pub fn upstream(mut self, upstream: Upstream) -> Self {
        self.upstreams.retain(|u| u.cluster != upstream.cluster);
        self.upstreams.push(upstream);
        self
    }

    /// What a trap does to requests (see [`FailurePolicy`]). Without it, a trap is an
    /// error for the test.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = Some(policy);
        self
    }

    /// Cap on each VM's linear memory, in bytes ([`DEFAULT_MEMORY_LIMIT`] by default).
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Bound on the work of one callback, in wasmtime fuel units
    /// ([`DEFAULT_FUEL_PER_CALLBACK`] by default). A callback that exceeds it traps.
    pub fn fuel_per_callback(mut self, fuel: u64) -> Self {
        self.fuel_per_callback = fuel.max(1);
        self
    }

    /// Envoy's `allow_on_headers_stop_iteration` (wasm `PluginConfig`, Envoy 1.35+): a
    /// filter that pauses in `on_request_headers` still gets the body callbacks, while the
    /// headers wait. Without it (Envoy's default, and the harness's) Envoy holds the body
    /// until the stream continues. gatehouse's bootstrap sets it, so the case runner does
    /// too.
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.allow_on_headers_stop_iteration = allow;
        self
    }

    /// Envoy's node id, the `xds.node.id` (and older `node.id`) property (Envoy's
    /// `--service-node`). Defaults to empty, as Envoy's is without one.
    pub fn node_id(mut self, id: &str) -> Self {
        self.node_id = id.to_string();
        self
    }

    /// Loads the module and starts every VM as Envoy does: `_initialize` (or `_start`),
    /// root context creation, `on_vm_start`, `on_configure`; the singleton first, then
    /// the workers in order.
    pub fn build(self) -> Result<Harness, BuildError> {
        let clock = Clock {
            realtime_nanos: self.time.unwrap_or_else(real_time_nanos),
            monotonic_nanos: 1_000_000_000,
        };
        let world = Arc::new(World::new(self.log_level, clock, self.seed));
        world.lock().upstreams = self.upstreams.clone();
        let singleton = match &self.singleton {
            Some(config) => Some(Vm::build(&self, &world, VmId::Singleton, config)?),
            None => None,
        };
        let mut workers = Vec::with_capacity(self.workers);
        for n in 0..self.workers {
            workers.push(Vm::build(
                &self,
                &world,
                VmId::Worker(n),
                &self.plugin_config,
            )?);
        }
        Ok(Harness {
            world,
            workers,
            singleton,
            config: self,
            next_worker: 0,
            stalled: std::collections::BTreeSet::new(),
            held: Vec::new(),
        })
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
            workers: 1,
            singleton: None,
            upstreams: Vec::new(),
            failure_policy: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            fuel_per_callback: DEFAULT_FUEL_PER_CALLBACK,
            allow_on_headers_stop_iteration: false,
            node_id: String::new(),
        }
    }

    /// Runs `check` on a fresh harness from `builder` for each seed, stopping at the first
    /// failure: `Err((seed, message))` names the seed that replays it. `check` typically
    /// calls [`Harness::concurrently`] with the seed it is given.
    pub fn explore<F>(
        builder: &HarnessBuilder,
        seeds: impl IntoIterator<Item = u64>,
        mut check: F,
    ) -> Result<usize, (u64, String)>
    where
        F: FnMut(&mut Harness, u64) -> Result<(), String>,
    {
        let mut explored = 0;
        for seed in seeds {
            let mut h = builder
                .clone()
                .seed(seed)
                .build()
                .map_err(|e| (seed, e.to_string()))?;
            check(&mut h, seed).map_err(|m| (seed, m))?;
            explored += 1;
        }
        Ok(explored)
    }

    /// Number of worker VMs.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sends one request to the next worker in turn (worker 0 first), then delivers the
    /// events that became due (queue notifications, ...). See [`Harness::request_on`].
    pub fn request(&mut self, req: Request) -> anyhow::Result<Outcome> {
        let worker = self.next_worker % self.workers.len().max(1);
        self.next_worker = self.next_worker.wrapping_add(1);
        self.request_on(worker, req)
    }

    /// Sends one request through the filter on one worker and returns what the client got.
    ///
    /// An `Err` means the stream could not complete as Envoy would run it: the module
    /// trapped and no failure policy is set (the message includes its panic message), or
    /// it paused the stream and nothing can resume it.
    pub fn request_on(&mut self, worker: usize, req: Request) -> anyhow::Result<Outcome> {
        let policy = self.config.failure_policy;
        let config = self.config.clone();
        let Some(vm) = self.workers.get_mut(worker) else {
            anyhow::bail!(
                "there is no worker {worker} (the harness has {})",
                self.workers.len()
            );
        };
        let outcome = serve(vm, &config, policy, req)?;
        self.run_due()?;
        Ok(outcome)
    }

    /// Runs the requests at the same time, each on its worker, interleaving the workers at
    /// every host call in an order drawn from `seed`: the same seed gives the same
    /// interleaving. Requests for the same worker run one after the other, in order.
    /// Results come back in the order of `requests`. Events that became due are delivered
    /// afterwards.
    pub fn concurrently(
        &mut self,
        seed: u64,
        requests: Vec<(usize, Request)>,
    ) -> Vec<anyhow::Result<Outcome>> {
        let count = requests.len();
        let mut by_worker: Vec<Vec<(usize, Request)>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        let mut results: Vec<Option<anyhow::Result<Outcome>>> = (0..count).map(|_| None).collect();
        for (index, (worker, req)) in requests.into_iter().enumerate() {
            match by_worker.get_mut(worker) {
                Some(jobs) => jobs.push((index, req)),
                None => {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = Some(Err(anyhow::anyhow!(
                            "there is no worker {worker} (the harness has {})",
                            self.workers.len()
                        )));
                    }
                }
            }
        }
        let participants: Vec<usize> = by_worker
            .iter()
            .enumerate()
            .filter(|(_, jobs)| !jobs.is_empty())
            .map(|(n, _)| n)
            .collect();
        self.world.sched.begin(&participants, seed);
        let policy = self.config.failure_policy;
        let config = &self.config;
        let world = &self.world;
        let done: Vec<(usize, anyhow::Result<Outcome>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .workers
                .iter_mut()
                .zip(by_worker)
                .enumerate()
                .filter(|(_, (_, jobs))| !jobs.is_empty())
                .map(|(n, (vm, jobs))| {
                    let builder = std::thread::Builder::new()
                        .name(format!("harness-worker-{n}"))
                        .stack_size(8 << 20);
                    builder.spawn_scoped(scope, move || {
                        // Hands the turn on even if this worker's request panics the host.
                        struct Finish<'a>(&'a World, usize);
                        impl Drop for Finish<'_> {
                            fn drop(&mut self) {
                                self.0.sched.finish(self.1);
                            }
                        }
                        let _finish = Finish(world, n);
                        world.sched.wait_turn(n);
                        jobs.into_iter()
                            .map(|(index, req)| (index, serve(vm, config, policy, req)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| match h {
                    Ok(handle) => handle.join().unwrap_or_else(|_| {
                        vec![(usize::MAX, Err(anyhow::anyhow!("a worker thread panicked")))]
                    }),
                    Err(e) => vec![(usize::MAX, Err(anyhow::anyhow!("spawning a worker: {e}")))],
                })
                .collect()
        });
        for (index, result) in done {
            match results.get_mut(index) {
                Some(slot) => *slot = Some(result),
                None => {
                    if let Some(empty) = results.iter_mut().find(|r| r.is_none()) {
                        *empty = Some(result);
                    }
                }
            }
        }
        let pumped = self.run_due();
        let mut out: Vec<anyhow::Result<Outcome>> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("the request did not run"))))
            .collect();
        if let (Err(e), Some(last)) = (pumped, out.last_mut())
            && last.is_ok()
        {
            *last = Err(e);
        }
        out
    }

    /// Turn changes between workers in the last [`Harness::concurrently`] round: 0 means
    /// the requests did not interleave.
    pub fn interleavings(&self) -> u64 {
        self.world.sched.switches()
    }

    /// Delivers every event due by now, to whichever VM it is for, in time order.
    fn run_due(&mut self) -> anyhow::Result<()> {
        loop {
            let now = self.world.lock().clock.monotonic_nanos;
            let next = self.world.lock().take_due(now, None);
            let Some((_, event)) = next else {
                return Ok(());
            };
            self.deliver(event)?;
        }
    }

    fn vm_mut(&mut self, id: VmId) -> Option<&mut Vm> {
        match id {
            VmId::Worker(n) => self.workers.get_mut(n),
            VmId::Singleton => self.singleton.as_mut(),
        }
    }

    fn deliver(&mut self, event: world::Event) -> anyhow::Result<()> {
        if self.stalled.contains(&event.vm) {
            // A thread busy elsewhere: its timer fires late (missed ticks are not made
            // up), and what else arrives waits for it.
            if !matches!(event.kind, world::EventKind::Tick) {
                self.held.push(event);
            }
            return Ok(());
        }
        let policy = self.config.failure_policy;
        let Some(vm) = self.vm_mut(event.vm) else {
            return Ok(());
        };
        match vm.deliver(event.kind) {
            // Under a failure policy a trap in an event callback fails the VM, and requests
            // then follow the policy; without one the test sees the trap.
            Err(e) if policy.is_some() && e.downcast_ref::<Trapped>().is_some() => Ok(()),
            other => other,
        }
    }

    /// All log lines so far, from every VM, in order (`proxy_log` at or above the log
    /// level, and stdout/stderr lines).
    pub fn logs(&self) -> Vec<LogRecord> {
        self.world.lock().logs.clone()
    }

    /// Every trap so far: the VM and the message (with the module's panic message).
    pub fn traps(&self) -> Vec<(VmId, String)> {
        self.world.lock().traps.clone()
    }

    /// Fails with every trap's message if the module trapped at all.
    pub fn assert_no_trap(&self) -> anyhow::Result<()> {
        let traps = self.traps();
        if traps.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = traps.iter().map(|(vm, m)| format!("{vm}: {m}")).collect();
        anyhow::bail!(
            "the module trapped {} time(s):\n{}",
            traps.len(),
            all.join("\n")
        )
    }

    /// A shared-data entry as the module would read it: value and cas.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.world
            .lock()
            .shared
            .get(key.as_bytes())
            .map(|(v, cas)| (v.to_vec(), cas))
    }

    /// The shared-data keys that start with `prefix`, sorted. Shared data has no delete, so
    /// this is everything the module ever stored there (e.g. `rl/`: the rate limiter's
    /// slot table, which must stay within its configured size).
    pub fn shared_data_keys(&self, prefix: &str) -> Vec<String> {
        let world = self.world.lock();
        let mut keys: Vec<String> = world
            .shared
            .keys()
            .filter(|k| k.starts_with(prefix.as_bytes()))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Writes a shared-data entry unconditionally (as the sync service would); the entry
    /// gets a new cas like any write.
    pub fn set_shared_data(&mut self, key: &str, value: &[u8]) {
        // cas 0 never mismatches
        let _ = self.world.lock().shared.set(key.as_bytes(), value, 0);
    }

    /// A metric by the name the module defined it with, summed over all VMs as Envoy's
    /// stats are: counter or gauge value; for a histogram, the number of samples.
    pub fn metric(&self, name: &str) -> Option<u64> {
        self.world.lock().metrics.by_name(name)
    }

    /// The samples recorded in a histogram.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        self.world.lock().metrics.samples(name).map(<[u64]>::to_vec)
    }

    /// Replaces (or adds) a scripted cluster while the harness runs, e.g. to make an
    /// upstream fail after it answered well. Calls already made keep their answers.
    pub fn set_upstream(&mut self, upstream: Upstream) {
        let mut world = self.world.lock();
        world.upstreams.retain(|u| u.cluster != upstream.cluster);
        world.upstreams.push(upstream);
    }

    /// Every HTTP call the module made, in order, with how it ended.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        self.world.lock().calls.clone()
    }

    /// How many times the module called a host function (e.g. `proxy_set_shared_data`,
    /// `fd_write`), over all VMs.
    pub fn host_calls(&self, name: &str) -> u64 {
        self.world
            .lock()
            .call_counts
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Every host call the module made so far, by import name, over all VMs: compare two
    /// snapshots to count one request's calls.
    pub fn host_call_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let world = self.world.lock();
        world
            .call_counts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Wasmtime fuel the module's callbacks consumed so far, over all VMs: about one unit
    /// per wasm instruction, deterministic for a given module and input, so the difference
    /// across one request is an instruction-like count that machine noise does not move.
    pub fn fuel_used(&self) -> u64 {
        self.world.lock().fuel_used
    }

    /// Makes the `nth` call (1-based, counted from now, over all VMs) of host function
    /// `call` return `status` without doing anything: e.g. `fault("proxy_set_shared_data",
    /// 1, 8)` makes the next write a `CasMismatch`. Statuses are proxy-wasm `WasmResult`s
    /// (WASI errnos for WASI calls).
    pub fn fault(&mut self, call: &str, nth: u64, status: u32) {
        let mut world = self.world.lock();
        let so_far = world.call_counts.get(call).copied().unwrap_or(0);
        world.faults.push(Fault {
            call: call.to_string(),
            at_count: so_far.saturating_add(nth.max(1)),
            status: i32::from_ne_bytes(status.to_ne_bytes()),
        });
    }

    /// Wall-clock time the module sees, nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.world.lock().clock.realtime_nanos
    }

    /// Sets the wall clock (may go backwards, like a real clock being corrected); the
    /// monotonic clock, and so timers, are not affected.
    pub fn set_time(&mut self, nanos: u64) {
        self.world.lock().clock.realtime_nanos = nanos;
    }

    /// Moves virtual time forward by `d`, delivering on the way, each at its moment, every
    /// event that falls due: ticks on schedule, HTTP call responses and timeouts, queue
    /// notifications.
    pub fn advance(&mut self, d: Duration) -> anyhow::Result<()> {
        let target = {
            let w = self.world.lock();
            w.clock.monotonic_nanos.saturating_add(duration_nanos(d))
        };
        loop {
            let next = {
                let mut w = self.world.lock();
                let event = w.take_due(target, None);
                if let Some((due, _)) = &event {
                    w.move_clock_to(*due);
                }
                event
            };
            match next {
                Some((_, event)) => self.deliver(event)?,
                None => break,
            }
        }
        self.world.lock().move_clock_to(target);
        Ok(())
    }

    /// The tick period worker 0 asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        let vm = self.workers.first()?;
        match vm.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }

    /// Calls `proxy_on_tick` once on every VM's root context (singleton first), whatever
    /// the tick period and without moving time.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        let mut ids: Vec<VmId> = Vec::new();
        if self.singleton.is_some() {
            ids.push(VmId::Singleton);
        }
        ids.extend((0..self.workers.len()).map(VmId::Worker));
        for id in ids {
            self.tick_on(id)?;
        }
        Ok(())
    }

    /// Holds up `vm` as a worker thread stuck in other work would be: it gets no ticks,
    /// and HTTP call answers and queue notifications wait, until [`Harness::resume`].
    pub fn stall(&mut self, vm: VmId) {
        self.stalled.insert(vm);
    }

    /// Lets a stalled VM go on: what waited for it is delivered, in order, then one tick.
    pub fn resume(&mut self, vm: VmId) -> anyhow::Result<()> {
        self.stalled.remove(&vm);
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|e| e.vm == vm);
        self.held = later;
        for event in now {
            self.deliver(event)?;
        }
        self.tick_on(vm)
    }

    /// Fails `vm` as a trap would: Envoy never calls into it again (under a failure
    /// policy, requests on it then follow the policy).
    pub fn crash(&mut self, vm: VmId) {
        if let Some(v) = self.vm_mut(vm) {
            v.failed = Some("crashed by the test (Harness::crash)".to_string());
        }
    }

    /// Calls `proxy_on_tick` once on one VM.
    pub fn tick_on(&mut self, vm: VmId) -> anyhow::Result<()> {
        self.deliver(world::Event {
            vm,
            kind: world::EventKind::Tick,
        })?;
        self.run_due()
    }
}

/// One request on one worker VM, under the failure policy.
fn serve(
    vm: &mut Vm,
    config: &HarnessBuilder,
    policy: Option<FailurePolicy>,
    req: Request,
) -> anyhow::Result<Outcome> {
    if vm.failed.is_some() {
        match policy {
            None => {}
            Some(FailurePolicy::FailClosed) => return Ok(stream::fail_closed()),
            Some(FailurePolicy::FailOpen) => return Ok(stream::bypass(&req)),
            Some(FailurePolicy::FailReload) => {
                let id = vm.id();
                let world = vm.world();
                match Vm::build(config, &world, id, &config.plugin_config) {
                    Ok(fresh) => *vm = fresh,
                    // Envoy keeps failing closed while the reload fails.
                    Err(_) => return Ok(stream::fail_closed()),
                }
            }
        }
    }
    let copy = (policy == Some(FailurePolicy::FailOpen)).then(|| req.clone());
    match vm.request(req) {
        Err(e) if e.downcast_ref::<Trapped>().is_some() => match (policy, copy) {
            (None, _) => Err(e),
            (Some(FailurePolicy::FailOpen), Some(req)) => Ok(stream::bypass(&req)),
            _ => Ok(stream::fail_closed()),
        },
        other => other,
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
