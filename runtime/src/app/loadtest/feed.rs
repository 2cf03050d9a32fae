//! The load test's market-data feed: `--md-rate` messages/s over `--symbols` symbols through
//! the runtime's [`MarketDataPath`], and the sink counting what comes out.
//!
//! Owns pacing and message generation: each symbol's `seq` rises by one per message (a feed
//! in order), one message in [`CRITICAL_EVERY`] is a critical `SessionEvent`. It must never
//! drop or reorder a message itself: when the path pushes back, the feed waits, and the rate
//! it reached is reported as measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use echo_statemachine::ids::Symbol;
use echo_statemachine::msg::{MarketData, MarketDataKind};

use crate::marketdata::{MarketDataPath, Sink};

pub const CRITICAL_EVERY: u64 = 1_000;

#[derive(Debug, Default)]
pub struct FeedCounters {
    pub offered: AtomicU64,
    pub offered_critical: AtomicU64,
    pub delivered: AtomicU64,
    pub delivered_critical: AtomicU64,
    /// Times the feed saw its symbol's shard above the pressure mark.
    pub pressured: AtomicU64,
}

/// The consumer end: counts deliveries.
pub fn sink(c: Arc<FeedCounters>) -> Sink {
    Arc::new(move |md: &MarketData| {
        c.delivered.fetch_add(1, Ordering::Relaxed);
        if md.kind.is_critical() {
            c.delivered_critical.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Offers `rate` messages/s for `duration`, then returns (dropping its path handle).
pub async fn run(
    path: MarketDataPath,
    rate: f64,
    symbols: usize,
    duration: Duration,
    c: Arc<FeedCounters>,
) {
    if rate <= 0.0 {
        return;
    }
    let names: Vec<Symbol> = (0..symbols.max(1))
        .map(|i| Symbol::new(format!("SYM{i:04}")))
        .collect();
    let mut seq = vec![0u64; names.len()];
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let i = (sent % names.len() as u64) as usize;
            seq[i] += 1;
            sent += 1;
            let critical = sent.is_multiple_of(CRITICAL_EVERY);
            let md = MarketData {
                symbol: names[i].clone(),
                bid: 1.0 + (seq[i] % 100) as f64 * 1e-4,
                ask: 1.0002 + (seq[i] % 100) as f64 * 1e-4,
                kind: if critical {
                    MarketDataKind::SessionEvent
                } else {
                    MarketDataKind::Tick
                },
                routing_version: 0,
                seq: seq[i],
            };
            if path.pressured(names[i].as_str()) {
                c.pressured.fetch_add(1, Ordering::Relaxed);
            }
            if !path.offer(md).await {
                return;
            }
            c.offered.fetch_add(1, Ordering::Relaxed);
            if critical {
                c.offered_critical.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
