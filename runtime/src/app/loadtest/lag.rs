//! Tokio runtime lag: a ticker task asks to wake every 10 ms and records how late it woke.
//!
//! Owns the probe and its histograms (whole run and the current window). A starved runtime
//! (a loop that never yields, a blocking call on a worker) shows here first. It must never do
//! work of its own on the runtime beyond the probe.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::histogram::Histogram;

pub const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub struct Lag {
    run: Histogram,
    window_max_us: u64,
}

/// Shared with the ticker task.
pub type LagProbe = Arc<Mutex<Lag>>;

/// Starts the ticker on the current runtime; it ends when the probe is the only holder left.
pub fn start() -> LagProbe {
    let probe: LagProbe = Arc::default();
    let p = probe.clone();
    tokio::spawn(async move {
        loop {
            let asked = Instant::now() + TICK;
            tokio::time::sleep_until(asked.into()).await;
            let late = Instant::now().saturating_duration_since(asked).as_micros() as u64;
            if Arc::strong_count(&p) == 1 {
                return;
            }
            if let Ok(mut l) = p.lock() {
                l.run.record(late);
                l.window_max_us = l.window_max_us.max(late);
            }
        }
    });
    probe
}

/// The worst lag since the previous call, reset.
pub fn take_window_max(p: &LagProbe) -> u64 {
    p.lock()
        .map(|mut l| std::mem::take(&mut l.window_max_us))
        .unwrap_or(0)
}

/// The whole run's lag histogram.
pub fn run_histogram(p: &LagProbe) -> Histogram {
    p.lock().map(|l| l.run.clone()).unwrap_or_default()
}
