//! The bridge between tokio's monotonic clock and the machines' [`Instant`].
//!
//! A machine's time starts at zero when its driver starts (a restarted process starts again at
//! zero: nothing durable holds a machine instant). This module must never hand a machine the
//! wall clock — only unix milliseconds for wire timestamps come from it.

use echo_statemachine::time::Instant;

/// Machine time for one driver: nanoseconds since the driver started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Instant {
        Instant(self.origin.elapsed().as_nanos() as u64)
    }

    /// The tokio deadline of a machine instant.
    pub fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_nanos(at.0)
    }
}

/// Milliseconds since the Unix epoch, for wire timestamps and reports only.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
