//! What all VMs of one harness share, as all of Envoy's workers share it: shared data,
//! shared queues, the clock, stats, the log, the clusters HTTP calls go to, and the timer
//! wheel that fires ticks, delivers HTTP call responses and queue notifications.
//!
//! Every VM's `HostState` holds an `Arc<World>`. Host calls lock it briefly and never hold
//! the lock across a call into the module, so a VM that calls back into the guest (to
//! allocate) cannot deadlock another.

use super::log::{LogLevel, LogRecord};
use super::sched::Scheduler;
use super::shared_data::SharedData;
use super::state::{Clock, Metrics, Rng};
use super::upstream::{CallResult, HttpCall, Upstream};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// Which VM: one of the workers (Envoy's worker threads, numbered from 0) or the
/// singleton service VM on the main thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmId {
    Worker(usize),
    Singleton,
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmId::Worker(n) => write!(f, "worker {n}"),
            VmId::Singleton => f.write_str("singleton"),
        }
    }
}

/// Something that happens to a VM at a moment of virtual time.
#[derive(Clone, Debug)]
pub(crate) enum EventKind {
    /// `proxy_on_tick` on the root context.
    Tick,
    /// An HTTP call ends: `proxy_on_http_call_response`. `None` is a failure (reset,
    /// timeout): Envoy then reports no headers, no body, no trailers.
    HttpDone {
        token: u32,
        context_id: u32,
        response: Option<HttpResponse>,
        /// Index in the world's call record, and how the call ended.
        call: usize,
        result: CallResult,
    },
    /// `proxy_on_queue_ready`, posted to the registering VM's dispatcher.
    QueueReady { context_id: u32, token: u32 },
}

#[derive(Clone, Debug, Default)]
pub(crate) struct HttpResponse {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub vm: VmId,
    pub kind: EventKind,
}

/// One registered shared queue (proxy-wasm-cpp-host `SharedQueue`): the last VM to
/// register a name owns its notifications; items survive re-registration.
#[derive(Debug)]
pub(crate) struct Queue {
    pub owner: VmId,
    pub context_id: u32,
    pub items: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default)]
pub(crate) struct Queues {
    tokens: HashMap<(String, String), u32>,
    pub queues: HashMap<u32, Queue>,
    next: u32,
}

impl Queues {
    /// Registers (or takes over) `vm_id`/`name`; the token stays the same for the name.
    pub(crate) fn register(
        &mut self,
        vm_id: &str,
        name: &str,
        owner: VmId,
        context_id: u32,
    ) -> u32 {
        let key = (vm_id.to_string(), name.to_string());
        let token = match self.tokens.get(&key) {
            Some(t) => *t,
            None => {
                self.next = self.next.wrapping_add(1).max(1);
                self.tokens.insert(key, self.next);
                self.next
            }
        };
        let queue = self.queues.entry(token).or_insert_with(|| Queue {
            owner,
            context_id,
            items: VecDeque::new(),
        });
        queue.owner = owner;
        queue.context_id = context_id;
        token
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.tokens
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }
}

/// A planned host-call failure: the `nth` call of `call` (counted over all VMs from the
/// moment the fault was added, 1-based) returns `status` without doing anything.
#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub call: String,
    pub at_count: u64,
    pub status: i32,
}

pub(crate) struct WorldState {
    pub log_level: LogLevel,
    pub logs: Vec<LogRecord>,
    pub clock: Clock,
    pub rng: Rng,
    pub shared: SharedData,
    pub queues: Queues,
    pub metrics: Metrics,
    pub upstreams: Vec<Upstream>,
    pub calls: Vec<HttpCall>,
    /// Host calls made so far, by import name, over all VMs.
    pub call_counts: HashMap<String, u64>,
    /// Wasmtime fuel the module's callbacks consumed so far, over all VMs.
    pub fuel_used: u64,
    pub faults: Vec<Fault>,
    /// Every trap so far: which VM, and the message.
    pub traps: Vec<(VmId, String)>,
    /// Pending events by (monotonic due time, sequence): ordered, ties in posting order.
    timers: BTreeMap<(u64, u64), Event>,
    seq: u64,
}

pub(crate) struct World {
    state: Mutex<WorldState>,
    pub sched: Scheduler,
}

impl World {
    pub(crate) fn new(log_level: LogLevel, clock: Clock, seed: u64) -> World {
        World {
            state: Mutex::new(WorldState {
                log_level,
                logs: Vec::new(),
                clock,
                rng: Rng::new(seed),
                shared: SharedData::default(),
                queues: Queues::default(),
                metrics: Metrics::default(),
                upstreams: Vec::new(),
                calls: Vec::new(),
                call_counts: HashMap::new(),
                fuel_used: 0,
                faults: Vec::new(),
                traps: Vec::new(),
                timers: BTreeMap::new(),
                seq: 0,
            }),
            sched: Scheduler::default(),
        }
    }

    /// The shared state. A thread that panicked while holding the lock (a host bug) does
    /// not make every later test fail with a poison error: the state is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, WorldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WorldState {
    /// Records a line if Envoy, at the configured level, would print it.
    pub(crate) fn log(&mut self, vm: VmId, level: LogLevel, message: String) {
        if level >= self.log_level {
            self.logs.push(LogRecord { vm, level, message });
        }
    }

    pub(crate) fn post(&mut self, due: u64, event: Event) {
        self.seq += 1;
        self.timers.insert((due, self.seq), event);
    }

    /// Posts an event for now: delivered after the current callback returns.
    pub(crate) fn post_now(&mut self, event: Event) {
        let now = self.clock.monotonic_nanos;
        self.post(now, event);
    }

    /// Removes the pending ticks of `vm` (the tick period changed).
    pub(crate) fn cancel_ticks(&mut self, vm: VmId) {
        self.timers
            .retain(|_, e| !(e.vm == vm && matches!(e.kind, EventKind::Tick)));
    }

    pub(crate) fn has_tick(&self, vm: VmId) -> bool {
        self.timers
            .values()
            .any(|e| e.vm == vm && matches!(e.kind, EventKind::Tick))
    }

    /// The earliest pending event, optionally only for one VM: (due, event).
    pub(crate) fn next_event(&self, only: Option<VmId>) -> Option<u64> {
        self.timers
            .iter()
            .find(|(_, e)| only.is_none_or(|vm| e.vm == vm))
            .map(|((due, _), _)| *due)
    }

    /// Takes the earliest event due at or before `limit` (monotonic), optionally only
    /// for one VM.
    pub(crate) fn take_due(&mut self, limit: u64, only: Option<VmId>) -> Option<(u64, Event)> {
        let key = self
            .timers
            .iter()
            .find(|((due, _), e)| *due <= limit && only.is_none_or(|vm| e.vm == vm))
            .map(|(k, _)| *k)?;
        self.timers.remove(&key).map(|e| (key.0, e))
    }

    /// Moves both clocks so that monotonic time is `to` (never backwards).
    pub(crate) fn move_clock_to(&mut self, to: u64) {
        let delta = to.saturating_sub(self.clock.monotonic_nanos);
        self.clock.monotonic_nanos = self.clock.monotonic_nanos.saturating_add(delta);
        self.clock.realtime_nanos = self.clock.realtime_nanos.saturating_add(delta);
    }

    /// Counts a host call and returns the status of a planned fault for it, if any.
    pub(crate) fn count_call(&mut self, call: &str) -> Option<i32> {
        // No allocation on the hot path: the name is new only on a call's first use.
        let count = match self.call_counts.get_mut(call) {
            Some(c) => {
                *c += 1;
                *c
            }
            None => {
                self.call_counts.insert(call.to_string(), 1);
                1
            }
        };
        if self.faults.is_empty() {
            return None;
        }
        let index = self
            .faults
            .iter()
            .position(|f| f.call == call && f.at_count == count)?;
        Some(self.faults.remove(index).status)
    }
}
