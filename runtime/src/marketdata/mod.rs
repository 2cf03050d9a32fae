//! The market-data path: producers → bounded per-shard queues → one worker task per shard, each
//! driving its own [`MarketDataBuffer`] (seed 004's coalescing machine) → the consumer.
//!
//! Owns the plumbing only: which shard a symbol goes to (a stable hash of the symbol, so one
//! symbol's ticks stay in one FIFO and stay in `seq` order), micro-batching (up to
//! `batch_max` messages or `batch_window`, whichever first), cooperative yielding after every
//! batch so no shard starves the runtime, bounded queues whose fill level is visible to the
//! producer early ([`MarketDataPath::pressured`]) and the per-shard queue-time / depth
//! statistics. What is coalesced, what is stale and what is critical is decided by the
//! machine, never here; this module must never drop a message itself — a full queue makes
//! the producer wait, and a critical message the machine refuses is retried after the worker
//! hands the queued ones to the consumer.

mod shard;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use echo_statemachine::marketdata::{MarketDataConfig, MarketDataMetrics};
use echo_statemachine::msg::MarketData;
use tokio::sync::mpsc;

pub use shard::ShardStats;

/// The consumer of delivered messages (a link writer, a strategy, a load test's sink). It is
/// called on the shard's task, so it must not block.
pub type Sink = Arc<dyn Fn(&MarketData) + Send + Sync>;

/// Sizes and timings of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathConfig {
    /// Worker tasks; a symbol always maps to the same one.
    pub shards: usize,
    /// Most messages a worker takes from its queue before delivering and yielding (200–500).
    pub batch_max: usize,
    /// Longest a worker collects a batch before delivering what it has.
    pub batch_window: Duration,
    /// Messages each shard's queue holds before a producer waits.
    pub queue_capacity: usize,
    /// Fraction of `queue_capacity` (in percent) above which [`MarketDataPath::pressured`] is
    /// true: the early signal, before a producer is made to wait.
    pub pressure_pct: u8,
    pub buffer: MarketDataConfig,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            shards: 4,
            batch_max: 256,
            batch_window: Duration::from_millis(50),
            queue_capacity: 4_096,
            pressure_pct: 50,
            buffer: MarketDataConfig::default(),
        }
    }
}

/// A message on a shard's queue, stamped when it was offered (for queue time).
struct Queued {
    md: MarketData,
    at: std::time::Instant,
}

/// The running path. Dropping every clone of it closes the queues and ends the workers.
#[derive(Clone)]
pub struct MarketDataPath {
    queues: Arc<Vec<mpsc::Sender<Queued>>>,
    config: PathConfig,
    waited: Arc<AtomicU64>,
}

/// Owned by whoever started the path: the workers' join handles and live statistics.
pub struct PathWorkers {
    handles: Vec<tokio::task::JoinHandle<MarketDataMetrics>>,
    stats: Vec<Arc<ShardStats>>,
}

/// A stable shard for a symbol: FNV-1a of its bytes (no per-process random seed, so the same
/// symbol lands on the same shard in every run).
pub fn shard_of(symbol: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in symbol.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

impl MarketDataPath {
    /// Starts one worker task per shard on the current tokio runtime.
    pub fn start(config: PathConfig, sink: Sink) -> (MarketDataPath, PathWorkers) {
        let config = PathConfig {
            shards: config.shards.max(1),
            batch_max: config.batch_max.max(1),
            queue_capacity: config.queue_capacity.max(1),
            ..config
        };
        let mut queues = Vec::with_capacity(config.shards);
        let mut handles = Vec::with_capacity(config.shards);
        let mut stats = Vec::with_capacity(config.shards);
        for i in 0..config.shards {
            let (tx, rx) = mpsc::channel(config.queue_capacity);
            let st = Arc::new(ShardStats::new(i));
            handles.push(tokio::spawn(shard::run(
                rx,
                config,
                sink.clone(),
                st.clone(),
            )));
            queues.push(tx);
            stats.push(st);
        }
        (
            MarketDataPath {
                queues: Arc::new(queues),
                config,
                waited: Arc::new(AtomicU64::new(0)),
            },
            PathWorkers { handles, stats },
        )
    }

    /// Offers one message; waits while its shard's queue is full (backpressure on the
    /// producer, never a drop). `false` once the path has stopped.
    pub async fn offer(&self, md: MarketData) -> bool {
        let q = &self.queues[shard_of(md.symbol.as_str(), self.queues.len())];
        let item = Queued {
            md,
            at: std::time::Instant::now(),
        };
        match q.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(item)) => {
                self.waited.fetch_add(1, Ordering::Relaxed);
                q.send(item).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the symbol's shard queue is filled above the pressure mark: a producer that can
    /// thin its own output (a feed that can skip intermediate quotes) should do it now.
    pub fn pressured(&self, symbol: &str) -> bool {
        let q = &self.queues[shard_of(symbol, self.queues.len())];
        let used = q.max_capacity() - q.capacity();
        used * 100 > q.max_capacity() * usize::from(self.config.pressure_pct)
    }

    /// Offers that found their queue full and had to wait.
    pub fn producer_waits(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> PathConfig {
        self.config
    }
}

impl PathWorkers {
    /// Live per-shard statistics (queue time, depth peak, batches).
    pub fn stats(&self) -> &[Arc<ShardStats>] {
        &self.stats
    }

    /// Waits for every worker to drain its queue and stop (after every [`MarketDataPath`]
    /// clone was dropped); returns each shard's machine metrics.
    pub async fn join(self) -> Vec<MarketDataMetrics> {
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            out.push(h.await.unwrap_or_default());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_statemachine::ids::Symbol;
    use echo_statemachine::msg::MarketDataKind;
    use std::sync::Mutex;

    fn md(sym: &str, seq: u64, kind: MarketDataKind) -> MarketData {
        MarketData {
            symbol: Symbol::new(sym),
            bid: 1.0,
            ask: 1.1,
            kind,
            routing_version: 0,
            seq,
        }
    }

    /// Every critical message arrives, per symbol ticks arrive in seq order, and a slow
    /// consumer makes ticks coalesce rather than queue without bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn critical_never_dropped_ticks_in_order() {
        let seen: Arc<Mutex<Vec<MarketData>>> = Arc::default();
        let s2 = seen.clone();
        let sink: Sink = Arc::new(move |m: &MarketData| {
            s2.lock().expect("test lock").push(m.clone());
        });
        let cfg = PathConfig {
            shards: 3,
            batch_max: 200,
            queue_capacity: 64,
            buffer: MarketDataConfig {
                max_critical: 4,
                ..MarketDataConfig::default()
            },
            ..PathConfig::default()
        };
        let (path, workers) = MarketDataPath::start(cfg, sink);
        let mut criticals = 0;
        for seq in 1..=2_000u64 {
            for sym in ["EURUSD", "GBPUSD", "USDJPY", "XAUUSD"] {
                let kind = if seq % 97 == 0 {
                    criticals += 1;
                    MarketDataKind::SessionEvent
                } else {
                    MarketDataKind::Tick
                };
                assert!(path.offer(md(sym, seq, kind)).await);
            }
        }
        drop(path);
        let metrics = workers.join().await;
        let seen = seen.lock().expect("test lock");
        let crit = seen
            .iter()
            .filter(|m| m.kind == MarketDataKind::SessionEvent)
            .count();
        assert_eq!(crit, criticals, "every critical message is delivered");
        let mut last: std::collections::BTreeMap<String, u64> = Default::default();
        for m in seen.iter().filter(|m| m.kind == MarketDataKind::Tick) {
            let prev = last.insert(m.symbol.as_str().to_string(), m.seq);
            assert!(
                prev.is_none_or(|p| p < m.seq),
                "ticks of a symbol in seq order"
            );
        }
        let stale: u64 = metrics.iter().map(|m| m.stale_dropped).sum();
        assert_eq!(stale, 0, "one producer per symbol in order: nothing stale");
        let ticks_in = 4 * 2_000 - criticals as u64;
        let delivered: u64 = metrics.iter().map(|m| m.delivered_ticks).sum();
        let coalesced: u64 = metrics.iter().map(|m| m.coalesced).sum();
        assert_eq!(
            delivered + coalesced,
            ticks_in,
            "every tick delivered or coalesced"
        );
    }

    #[test]
    fn a_symbol_always_lands_on_one_shard() {
        assert_eq!(shard_of("EURUSD", 8), shard_of("EURUSD", 8));
        let spread: std::collections::BTreeSet<usize> =
            (0..64).map(|i| shard_of(&format!("SYM{i}"), 4)).collect();
        assert_eq!(spread.len(), 4, "symbols spread over every shard");
    }
}
