//! Where the stage reads the time: when coalesced snapshots fall due, and
//! the `updated_at` of each. Injected so that the stage's tests run on
//! tokio's paused time instead of sleeping.

use otstream_model::raw::now_ms;

/// The time, in ms since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Tokio's clock from a starting wall time: it stands still and jumps with
/// `tokio::time::pause` and `advance`, as the stage's timers do.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
    start_ms: i64,
}

impl TokioClock {
    /// Reads `start_ms` now, and tokio's elapsed time after.
    pub fn new(start_ms: i64) -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
            start_ms,
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }
}
