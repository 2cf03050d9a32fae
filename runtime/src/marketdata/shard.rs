//! One market-data shard's worker: takes a micro-batch from its queue, offers it to its
//! [`MarketDataBuffer`], hands what the buffer releases to the consumer, yields, repeats.
//!
//! Owns the batch loop and the shard's statistics. It must never drop a message the machine
//! took, and never hold the runtime for more than one batch: `batch_max` messages or
//! `batch_window` of collecting, then a `yield_now`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use echo_statemachine::marketdata::{MarketDataBuffer, MarketDataMetrics, Output};
use echo_statemachine::time::Instant;
use tokio::sync::mpsc;

use super::{PathConfig, Queued, Sink};
use crate::histogram::Histogram;

/// Live statistics of one shard, readable while it runs.
#[derive(Debug)]
pub struct ShardStats {
    pub shard: usize,
    /// Time from `offer` to being taken off the queue.
    queue_time: Mutex<Histogram>,
    /// Highest queue depth seen at the start of a batch since the last [`ShardStats::take_depth_peak`].
    depth_peak_window: AtomicUsize,
    /// Highest queue depth seen at the start of a batch over the whole run.
    depth_peak: AtomicUsize,
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    /// Ticks the machine refused even with its stores drained (symbol table full).
    pub refused: AtomicU64,
    metrics: Mutex<MarketDataMetrics>,
}

impl ShardStats {
    pub(super) fn new(shard: usize) -> Self {
        ShardStats {
            shard,
            queue_time: Mutex::new(Histogram::default()),
            depth_peak_window: AtomicUsize::new(0),
            depth_peak: AtomicUsize::new(0),
            batches: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            metrics: Mutex::new(MarketDataMetrics::default()),
        }
    }

    /// A copy of the queue-time histogram so far.
    pub fn queue_time(&self) -> Histogram {
        self.queue_time
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    pub fn depth_peak(&self) -> usize {
        self.depth_peak.load(Ordering::Relaxed)
    }

    /// The depth peak since the previous call (for a timeline), reset to 0.
    pub fn take_depth_peak(&self) -> usize {
        self.depth_peak_window.swap(0, Ordering::Relaxed)
    }

    /// The shard machine's counters as of its last batch.
    pub fn machine(&self) -> MarketDataMetrics {
        self.metrics.lock().map(|m| *m).unwrap_or_default()
    }
}

/// Monotonic nanoseconds for the machine's `now` (the buffer keeps no timers; it only needs a
/// non-decreasing clock).
fn machine_now(origin: StdInstant) -> Instant {
    Instant(origin.elapsed().as_nanos() as u64)
}

fn drain(buf: &mut MarketDataBuffer, sink: &Sink) {
    while let Some(out) = buf.poll() {
        match out {
            Output::Fired(f) => tracing::trace!(fired = ?f, "marketdata"),
            Output::Deliver(md) => sink(&md),
        }
    }
}

pub(super) async fn run(
    mut rx: mpsc::Receiver<Queued>,
    config: PathConfig,
    sink: Sink,
    stats: Arc<ShardStats>,
) -> MarketDataMetrics {
    let origin = StdInstant::now();
    let mut buf = MarketDataBuffer::new(config.buffer);
    let mut batch_qt = Histogram::default();
    while let Some(first) = rx.recv().await {
        let depth = rx.len() + 1;
        stats.depth_peak.fetch_max(depth, Ordering::Relaxed);
        stats.depth_peak_window.fetch_max(depth, Ordering::Relaxed);
        let started = StdInstant::now();
        let mut next = Some(first);
        let mut n = 0;
        while let Some(q) = next.take() {
            batch_qt.record(started.saturating_duration_since(q.at).as_micros() as u64);
            let md = q.md;
            // A message the machine cannot take yet: hand the queued ones to the consumer,
            // which frees its stores, and offer it again. A critical message always fits then;
            // a tick that still does not (a symbol beyond `max_known_symbols`) is counted and
            // logged, never silently lost.
            if buf.offer(machine_now(origin), md.clone()).is_err() {
                drain(&mut buf, &sink);
                if buf.offer(machine_now(origin), md.clone()).is_err() {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        symbol = md.symbol.as_str(),
                        shard = stats.shard,
                        "market data refused: the shard tracks max_known_symbols symbols"
                    );
                }
            }
            n += 1;
            if n >= config.batch_max || started.elapsed() >= config.batch_window {
                break;
            }
            next = rx.try_recv().ok();
        }
        drain(&mut buf, &sink);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.messages.fetch_add(n as u64, Ordering::Relaxed);
        if let Ok(mut h) = stats.queue_time.lock() {
            h.merge(&batch_qt);
        }
        batch_qt = Histogram::default();
        if let Ok(mut m) = stats.metrics.lock() {
            *m = buf.metrics();
        }
        tokio::task::yield_now().await;
    }
    drain(&mut buf, &sink);
    let m = buf.metrics();
    if let Ok(mut s) = stats.metrics.lock() {
        *s = m;
    }
    m
}
