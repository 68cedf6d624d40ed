//! The service's one clock, behind a trait so tests move time by hand (key expiry, grace
//! periods, retention) instead of sleeping.

use gatehouse_core::time::UnixNanos;
use std::sync::atomic::{AtomicU64, Ordering};

pub trait Clock: Send + Sync {
    fn now(&self) -> UnixNanos;

    /// Whole Unix seconds, as the store and the feed keep time.
    fn now_secs(&self) -> i64 {
        i64::try_from(self.now().secs()).unwrap_or(i64::MAX)
    }
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(
        clippy::disallowed_methods,
        reason = "the service's one wall-clock read; everything else asks a Clock"
    )]
    fn now(&self) -> UnixNanos {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        UnixNanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at_secs(secs: u64) -> ManualClock {
        ManualClock(AtomicU64::new(UnixNanos::from_secs(secs).0))
    }

    pub fn advance_secs(&self, secs: u64) {
        self.0
            .fetch_add(secs.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixNanos {
        UnixNanos(self.0.load(Ordering::SeqCst))
    }
}
