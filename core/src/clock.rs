//! Wall-clock time as the core sees it. The core never reads `SystemTime::now` (clippy
//! forbids it): time comes from a [`Clock`], the host's clock in the plugin, a
//! [`FixedClock`] in tests and the harness.

use crate::time::UnixNanos;
use std::cell::Cell;

/// Wall-clock time.
pub trait Clock {
    fn now(&self) -> UnixNanos;
}

/// One reading per decision: the first `now` is read from the wrapped clock (a host call
/// in the module), every later one repeats it, so the parts of one decision agree on the
/// time and a request pays for one clock read at most.
pub struct OnceClock<'a, C: Clock> {
    clock: &'a C,
    at: Cell<Option<UnixNanos>>,
}

impl<'a, C: Clock> OnceClock<'a, C> {
    pub fn new(clock: &'a C) -> Self {
        OnceClock {
            clock,
            at: Cell::new(None),
        }
    }
}

impl<C: Clock> Clock for OnceClock<'_, C> {
    fn now(&self) -> UnixNanos {
        match self.at.get() {
            Some(at) => at,
            None => {
                let at = self.clock.now();
                self.at.set(Some(at));
                at
            }
        }
    }
}

/// A clock that says what the test sets.
pub struct FixedClock(pub Cell<UnixNanos>);

impl FixedClock {
    pub fn at_secs(secs: u64) -> Self {
        FixedClock(Cell::new(UnixNanos::from_secs(secs)))
    }

    pub fn set_secs(&self, secs: u64) {
        self.0.set(UnixNanos::from_secs(secs));
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixNanos {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_once_clock_reads_its_clock_once() {
        let clock = FixedClock::at_secs(10);
        let once = OnceClock::new(&clock);
        assert_eq!(once.now().secs(), 10);
        clock.set_secs(20);
        assert_eq!(once.now().secs(), 10);
        assert_eq!(OnceClock::new(&clock).now().secs(), 20);
    }
}
