//! Simulated-or-real time as plain numbers.
//!
//! Machines never read a clock: the driver passes `now` into every call. This module owns the
//! two time types every machine speaks; it must never call `std::time::Instant::now()`.

use std::fmt;
use std::ops::{Add, Sub};

/// A point in time, in nanoseconds since an arbitrary epoch chosen by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

/// A span of time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_millis(ms: u64) -> Self {
        Duration(ms.saturating_mul(1_000_000))
    }
    pub const fn from_micros(us: u64) -> Self {
        Duration(us.saturating_mul(1_000))
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
}

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1_000_000))
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }
    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d.0))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}ms", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Exponential backoff shared by every retry loop in Echo: `base · 2^(attempt-1)`, with the
/// exponent capped at 6 and the result capped at 30 s so a long outage never parks a retry
/// for minutes. `attempt` counts from 1. Deterministic on purpose: jitter, if a driver wants
/// it, is added outside the machine.
pub fn backoff(base_ms: u64, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(6);
    let ms = base_ms.saturating_mul(1u64 << exp).min(30_000);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(100, 1), Duration::from_millis(100));
        assert_eq!(backoff(100, 2), Duration::from_millis(200));
        assert_eq!(backoff(100, 4), Duration::from_millis(800));
        assert_eq!(backoff(100, 7), Duration::from_millis(6_400));
        assert_eq!(backoff(100, 50), Duration::from_millis(6_400));
        assert_eq!(backoff(10_000, 10), Duration::from_millis(30_000));
        assert_eq!(backoff(100, 0), Duration::from_millis(100));
    }

    #[test]
    fn instant_arithmetic_saturates() {
        let a = Instant::from_millis(5);
        assert_eq!(a + Duration::from_millis(3), Instant::from_millis(8));
        assert_eq!(Instant::from_millis(2) - a, Duration::ZERO);
        assert_eq!(a - Instant::from_millis(2), Duration::from_millis(3));
    }
}
