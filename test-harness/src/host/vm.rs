//! One VM of the module: a worker's copy, or the singleton. It owns its wasmtime store and
//! instance; everything shared lives in the [`World`] its state points to.
//!
//! A VM starts as Envoy starts one (`_initialize` or `_start`, root context, `on_vm_start`,
//! `on_configure`), receives events from the world (ticks, HTTP call responses, queue
//! notifications) between callbacks, and after a trap is failed: Envoy never calls into it
//! again (what happens to requests then is the harness's failure policy).

use super::headers::HeaderMap;
use super::limits::MemoryCap;
use super::log::LogRecord;
use super::memory::Exports;
use super::state::{HostState, Phase, PluginInfo};
use super::world::{Event, EventKind, VmId, World};
use super::{BuildError, HarnessBuilder, ROOT_CONTEXT_ID, len_u32, module_cache};
use std::fmt;
use std::sync::Arc;
use wasmtime::{Instance, Store, Trap, WasmParams, WasmResults};

pub(crate) struct Vm {
    pub store: Store<HostState>,
    instance: Instance,
    pub next_context_id: u32,
    /// Set by the first trap: Envoy does not call into a failed VM again.
    pub failed: Option<String>,
    fuel: u64,
    /// Body callbacks run while the request headers are paused (see
    /// `HarnessBuilder::allow_on_headers_stop_iteration`).
    pub allow_on_headers_stop_iteration: bool,
}

/// A trap inside the module, with its message (the panic message when there is one).
/// Travels inside `anyhow::Error` so the failure policy can tell traps from other errors.
#[derive(Debug, Clone)]
pub(crate) struct Trapped(pub String);

impl fmt::Display for Trapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Trapped {}

impl Vm {
    /// Loads the module and starts it as Envoy does. `plugin_config` is this VM's plugin
    /// configuration (the singleton has its own).
    pub(crate) fn build(
        config: &HarnessBuilder,
        world: &Arc<World>,
        vm: VmId,
        plugin_config: &[u8],
    ) -> Result<Vm, BuildError> {
        let (engine, module) = module_cache::load(&config.module_path).map_err(BuildError::Load)?;
        let state = HostState {
            world: Arc::clone(world),
            vm,
            recent_errors: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            env: config.env.clone(),
            tick_period_ms: 0,
            vm_config: config.vm_config.clone(),
            plugin_config: plugin_config.to_vec(),
            plugin: PluginInfo {
                name: "gatehouse".to_string(),
                root_id: match vm {
                    VmId::Singleton => "gatehouse_sync".to_string(),
                    VmId::Worker(_) => String::new(),
                },
                vm_id: "gatehouse".to_string(),
                node_id: config.node_id.clone(),
            },
            phase: Phase::Idle,
            stream: None,
            http_response: None,
            next_http_token: 0,
            effective_context: None,
            pending_calls: Default::default(),
            limits: MemoryCap {
                max_bytes: config.memory_limit,
                refused: None,
            },
            exports: Exports::default(),
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limits);
        let load = |e: wasmtime::Error| BuildError::Load(anyhow::anyhow!("{e:?}"));
        let linker = super::linking::linker_for(&engine, &module, &mut store).map_err(load)?;
        let instance = linker.instantiate(&mut store, &module).map_err(load)?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .ok();
        store.data_mut().exports = Exports { memory, alloc };
        let mut vm = Vm {
            store,
            instance,
            next_context_id: ROOT_CONTEXT_ID + 1,
            failed: None,
            fuel: config.fuel_per_callback,
            allow_on_headers_stop_iteration: config.allow_on_headers_stop_iteration,
        };
        vm.start()?;
        Ok(vm)
    }

    pub(crate) fn id(&self) -> VmId {
        self.store.data().vm
    }

    pub(crate) fn world(&self) -> Arc<World> {
        Arc::clone(&self.store.data().world)
    }

    fn logs(&self) -> Vec<LogRecord> {
        self.store.data().world.lock().logs.clone()
    }

    fn start(&mut self) -> Result<(), BuildError> {
        let trap = |vm: &Vm, message: String| BuildError::Trap {
            message,
            logs: vm.logs(),
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
    /// callbacks). A trap marks the VM failed and returns its message together with what
    /// the module said at error level during the call (a Rust panic message arrives
    /// through the SDK's panic hook as a critical log, or on stderr), and why, when the
    /// harness's memory cap or work bound caused it.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
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
        let fuel = self.fuel;
        self.store.set_fuel(fuel).map_err(|e| format!("{e}"))?;
        let state = self.store.data_mut();
        state.recent_errors.clear();
        state.effective_context = None;
        state.limits.refused = None;
        let result = typed.call(&mut self.store, params);
        let left = self.store.get_fuel().unwrap_or(0);
        let state = self.store.data_mut();
        state.world.lock().fuel_used += fuel.saturating_sub(left);
        state.flush_stdio();
        state.effective_context = None;
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let state = self.store.data_mut();
                let said = std::mem::take(&mut state.recent_errors);
                let vm = state.vm;
                let mut message = format!("{name} trapped on {vm}: {e:?}");
                if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
                    message = format!(
                        "{name} on {vm} did more work than the harness allows one callback \
                         ({fuel} fuel units; see HarnessBuilder::fuel_per_callback): the module \
                         may be looping forever"
                    );
                }
                if let Some(wanted) = state.limits.refused {
                    message.push_str(&format!(
                        "\nthe module asked for {wanted} bytes of memory, over the harness's \
                         limit of {} (HarnessBuilder::memory_limit)",
                        state.limits.max_bytes
                    ));
                }
                if !said.is_empty() {
                    message.push_str("\nthe module said:\n  ");
                    message.push_str(&said.join("\n  "));
                }
                state.world.lock().traps.push((vm, message.clone()));
                self.failed = Some(message.clone());
                Err(message)
            }
        }
    }

    /// Delivers one event to this VM as Envoy's dispatcher would, between callbacks.
    pub(crate) fn deliver(&mut self, event: EventKind) -> anyhow::Result<()> {
        if self.failed.is_some() {
            // A failed VM gets no more callbacks; its events are dropped as Envoy drops them.
            return Ok(());
        }
        let saved_phase = self.store.data().phase;
        self.store.data_mut().phase = Phase::Idle;
        let result = match event {
            EventKind::Tick => {
                let r = self.call::<u32, ()>("proxy_on_tick", ROOT_CONTEXT_ID);
                // Envoy re-arms the timer after the callback, one period later.
                let state = self.store.data();
                let (vm, period) = (state.vm, state.tick_period_ms);
                let mut world = state.world.lock();
                if period > 0 && !world.has_tick(vm) {
                    let due = world.clock.monotonic_nanos + u64::from(period) * 1_000_000;
                    world.post(
                        due,
                        Event {
                            vm,
                            kind: EventKind::Tick,
                        },
                    );
                }
                r.map(|_| ())
            }
            EventKind::HttpDone {
                token,
                context_id,
                response,
                call,
                result,
            } => {
                let state = self.store.data_mut();
                state.pending_calls.remove(&token);
                if let Some(record) = state.world.lock().calls.get_mut(call) {
                    record.result = result;
                }
                let response = response.unwrap_or_default();
                let sizes = (
                    len_u32(response.headers.len()),
                    len_u32(response.body.len()),
                    len_u32(response.trailers.len()),
                );
                state.http_response = Some((
                    HeaderMap::from_pairs(response.headers),
                    response.body,
                    HeaderMap::from_pairs(response.trailers),
                ));
                let r = self.call::<(u32, u32, u32, u32, u32), ()>(
                    "proxy_on_http_call_response",
                    (context_id, token, sizes.0, sizes.1, sizes.2),
                );
                self.store.data_mut().http_response = None;
                r.map(|_| ())
            }
            EventKind::QueueReady { context_id, token } => self
                .call::<(u32, u32), ()>("proxy_on_queue_ready", (context_id, token))
                .map(|_| ()),
        };
        self.store.data_mut().phase = saved_phase;
        result.map_err(|m| anyhow::Error::new(Trapped(m)))
    }
}
