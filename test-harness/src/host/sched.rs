//! The seeded scheduler that interleaves worker VMs at host-call boundaries.
//!
//! During [`super::Harness::concurrently`] each worker runs on its own OS thread, but only
//! one thread holds the turn at a time. At every host call the running worker hands the
//! turn to a worker picked by a seeded generator (possibly itself), and waits until it is
//! picked again. The order of host calls, and so every compare-and-swap race, is a pure
//! function of the seed: a failing seed replays exactly.
//!
//! Outside `concurrently` the scheduler is inactive and a host call does not wait.

use super::state::Rng;
use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct Scheduler {
    state: Mutex<Turns>,
    turn_changed: Condvar,
}

#[derive(Default)]
struct Turns {
    active: bool,
    /// Workers that have not finished, in ascending order (picks index into this).
    runnable: Vec<usize>,
    running: Option<usize>,
    rng: Option<Rng>,
    /// Turn changes to another worker, for tests that check interleaving happened.
    switches: u64,
}

impl Turns {
    fn pick(&mut self) {
        self.running = match self.runnable.len() {
            0 => None,
            n => {
                let draw = self.rng.as_mut().map_or(0, Rng::next_u64);
                let index = usize::try_from(draw % n as u64).unwrap_or(0);
                self.runnable.get(index).copied()
            }
        };
    }
}

impl Scheduler {
    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a round with these workers; the first to run is drawn from the seed.
    pub(crate) fn begin(&self, workers: &[usize], seed: u64) {
        let mut t = self.turns();
        let mut runnable = workers.to_vec();
        runnable.sort_unstable();
        runnable.dedup();
        t.runnable = runnable;
        t.rng = Some(Rng::new(seed));
        t.active = true;
        t.switches = 0;
        t.pick();
    }

    /// Blocks until `me` holds the turn (no wait when no round is active).
    pub(crate) fn wait_turn(&self, me: usize) {
        let mut t = self.turns();
        while t.active && t.running != Some(me) {
            t = self.turn_changed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A host-call boundary: hands the turn to a seeded pick and waits for it to return.
    pub(crate) fn yield_now(&self, me: usize) {
        {
            let mut t = self.turns();
            if !t.active || !t.runnable.contains(&me) {
                return;
            }
            t.pick();
            if t.running != Some(me) {
                t.switches += 1;
                self.turn_changed.notify_all();
            }
        }
        self.wait_turn(me);
    }

    /// `me` has nothing more to run: the turn passes on; the round ends with the last.
    pub(crate) fn finish(&self, me: usize) {
        let mut t = self.turns();
        t.runnable.retain(|w| *w != me);
        if t.runnable.is_empty() {
            t.active = false;
            t.running = None;
        } else if t.running == Some(me) || t.running.is_none() {
            t.pick();
        }
        self.turn_changed.notify_all();
    }

    /// Turn changes between different workers in the last round.
    pub(crate) fn switches(&self) -> u64 {
        self.turns().switches
    }
}
