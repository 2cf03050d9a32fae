//! Market data (seed 004): one [`MarketDataBuffer`] per agent between a price feed (the
//! producer) and the agent's slave terminals (a consumer slower than the feed), with a
//! reference model that checks every delivery.
//!
//! The feed sends bursts of ticks across symbols, each with a per-symbol `seq` and the
//! `routing_version` the feed knows (it learns of a routing change a little late), over a
//! jittery link so ticks arrive out of order; now and then it sends a critical session event,
//! which it keeps in its own durable outbox until the buffer takes it (and re-offers after the
//! agent crashed, since queued market data is not durable). The consumer takes a few messages
//! every few milliseconds, so ticks coalesce in between.
//!
//! The checks, at every delivery: a critical message is the oldest one taken and not yet
//! delivered (never dropped, never reordered, before every tick); a tick is exactly the newest
//! one the model says is queued for its symbol (latest wins, nothing stale, nothing from a
//! routing version below the minimum, per-symbol seq strictly increasing within one life of
//! the buffer); a refusal happens only when a bound is reached; no store exceeds its bound.
//! After healing, every critical event produced must be delivered and the buffers empty.
//!
//! This module owns the market-data path. It must never touch the trade path's machines or
//! stores, and never draw from anything but the run's generator.

use std::collections::{BTreeMap, VecDeque};

use echo_statemachine::ids::Symbol;
use echo_statemachine::marketdata::{MarketDataBuffer, MarketDataConfig, Output};
use echo_statemachine::msg::{MarketData, MarketDataKind};
use echo_statemachine::time::Duration;

use super::faults::F;
use super::{Capacity, Ev, World};

/// Symbols of the feed: more than the test_min buffer tracks, so its bounds are reached.
const SYMBOLS: [&str; 10] = [
    "EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "NZDUSD", "EURGBP", "XAUUSD", "US30", "DE40",
];

/// How often the consumer takes messages, and how many at a time.
const CONSUME_EVERY: Duration = Duration::from_millis(4);
const CONSUME_BATCH: usize = 3;

/// One agent's buffer, its feed, and the reference model of what the buffer holds.
#[derive(Default)]
pub(super) struct Feed {
    buffer: Option<MarketDataBuffer>,
    /// Next seq per symbol index.
    next_seq: Vec<u64>,
    /// The routing version the feed stamps on ticks (lags the world's).
    producer_rv: u64,
    /// Critical events produced and not yet taken by the buffer, oldest first.
    outbox: VecDeque<MarketData>,
    consume_scheduled: bool,
    // ---- the reference model of the buffer's contents (one life of the buffer) ----
    critical: VecDeque<MarketData>,
    pending: BTreeMap<Symbol, MarketData>,
    watermark: BTreeMap<Symbol, u64>,
    min_rv: u64,
    delivered_seq: BTreeMap<Symbol, u64>,
}

/// Market-data figures of a run, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MdBook {
    pub ticks_sent: u64,
    pub ticks_delivered: u64,
    pub critical_produced: u64,
    pub critical_delivered: u64,
    /// Ticks the feed let go when the buffer pushed back or its agent was down.
    pub ticks_shed: u64,
    pub coalesced: u64,
    pub stale_dropped: u64,
    pub routing_dropped: u64,
}

impl World {
    pub(super) fn md_config(&self) -> MarketDataConfig {
        match self.cfg.capacity {
            Capacity::TestMin => MarketDataConfig {
                max_symbols: 4,
                max_critical: 2,
                max_known_symbols: 8,
            },
            Capacity::Default => MarketDataConfig::default(),
        }
    }

    /// The agent's buffer comes (back) up: only the routing minimum survived.
    pub(super) fn md_start(&mut self, a: usize) {
        let cfg = self.md_config();
        let rv = self.routing_version;
        let f = &mut self.feeds[a];
        f.next_seq.resize(SYMBOLS.len(), 0);
        if f.producer_rv == 0 {
            f.producer_rv = rv;
        }
        f.buffer = Some(MarketDataBuffer::recover(cfg, rv));
        f.critical.clear();
        f.pending.clear();
        f.watermark.clear();
        f.delivered_seq.clear();
        f.min_rv = rv;
        // The routing config is re-read at start: no change, the minimum only rises.
        self.md_routing(a, rv);
        self.md_schedule_consume(a);
    }

    /// The agent crashed: queued market data is gone; critical events taken but not yet
    /// delivered go back to the feed's outbox, ahead of newer ones.
    pub(super) fn md_crash(&mut self, a: usize) {
        let f = &mut self.feeds[a];
        f.buffer = None;
        while let Some(md) = f.critical.pop_back() {
            f.outbox.push_front(md);
        }
        f.pending.clear();
    }

    pub(super) fn md_routing(&mut self, a: usize, v: u64) {
        let now = self.now;
        let Some(b) = self.feeds[a].buffer.as_mut() else {
            return;
        };
        b.handle_routing_version(now, v);
        let f = &mut self.feeds[a];
        if v > f.min_rv {
            f.min_rv = v;
            f.pending.retain(|_, md| md.routing_version >= v);
        }
        self.md_drain_fired(a, "routing version");
    }

    /// A burst from the feed: `n` ticks over random symbols, each arriving after its own
    /// jitter (so some arrive after a newer one of their symbol); sometimes a session event.
    pub(super) fn md_burst(&mut self, a: usize) {
        let n = self.draw(F::MdBurst).range(5, 60);
        self.fault("md_burst", format!("agent-{a} feed sends {n} ticks"));
        for _ in 0..n {
            let i = self.draw(F::MdBurst).below(SYMBOLS.len() as u64) as usize;
            let f = &mut self.feeds[a];
            f.next_seq[i] += 1;
            let md = MarketData {
                symbol: Symbol::new(SYMBOLS[i]),
                bid: 1.0,
                ask: 1.0001,
                kind: MarketDataKind::Tick,
                routing_version: f.producer_rv,
                seq: f.next_seq[i],
            };
            self.md.ticks_sent += 1;
            let d = Duration::from_micros(100 + self.draw(F::MdBurst).below(15_000));
            self.at(d, Ev::MdOffer { agent: a, md });
        }
        let critical = if self.draw(F::MdBurst).chance(1, 2) {
            self.draw(F::MdBurst).range(1, 4)
        } else {
            0
        };
        for _ in 0..critical {
            let i = self.draw(F::MdBurst).below(SYMBOLS.len() as u64) as usize;
            let md = MarketData {
                symbol: Symbol::new(SYMBOLS[i]),
                bid: 0.0,
                ask: 0.0,
                kind: MarketDataKind::SessionEvent,
                routing_version: self.feeds[a].producer_rv,
                seq: self.md.critical_produced,
            };
            self.md.critical_produced += 1;
            self.feeds[a].outbox.push_back(md);
        }
        self.md_offer_critical(a);
        self.md_schedule_consume(a);
    }

    /// A tick arrives at the agent.
    pub(super) fn md_on_tick(&mut self, a: usize, md: MarketData) {
        let now = self.now;
        let Some(b) = self.feeds[a].buffer.as_mut() else {
            self.md.ticks_shed += 1;
            return;
        };
        let r = b.offer(now, md.clone());
        let full = self.md_full(a, false);
        let f = &mut self.feeds[a];
        match r {
            Err(_) => {
                self.md.ticks_shed += 1;
                if !full {
                    let v = format!(
                        "market data: tick {} #{} refused below every bound",
                        md.symbol, md.seq
                    );
                    self.violation(v);
                }
            }
            Ok(()) if md.routing_version < f.min_rv => self.md.routing_dropped += 1,
            Ok(()) if f.watermark.get(&md.symbol).is_some_and(|w| md.seq <= *w) => {
                self.md.stale_dropped += 1
            }
            Ok(()) => {
                f.watermark.insert(md.symbol.clone(), md.seq);
                if f.pending.insert(md.symbol.clone(), md).is_some() {
                    self.md.coalesced += 1;
                }
            }
        }
        self.md_drain_fired(a, "tick");
        self.md_check_bounds(a);
        self.md_schedule_consume(a);
    }

    /// The feed offers its outbox, oldest first, until the buffer pushes back.
    fn md_offer_critical(&mut self, a: usize) {
        let now = self.now;
        while let Some(md) = self.feeds[a].outbox.front().cloned() {
            let Some(b) = self.feeds[a].buffer.as_mut() else {
                return;
            };
            let r = b.offer(now, md.clone());
            let full = self.md_full(a, true);
            self.md_drain_fired(a, "session event");
            if r.is_err() {
                if !full {
                    let v = format!(
                        "market data: critical event #{} refused below its bound",
                        md.seq
                    );
                    self.violation(v);
                }
                return;
            }
            let f = &mut self.feeds[a];
            f.outbox.pop_front();
            f.critical.push_back(md);
        }
    }

    /// Whether the buffer is at a bound that allows a refusal.
    fn md_full(&self, a: usize, critical: bool) -> bool {
        let cfg = self.md_config();
        let Some(b) = self.feeds[a].buffer.as_ref() else {
            return true;
        };
        let m = b.metrics();
        if critical {
            m.queued_critical >= cfg.max_critical
        } else {
            m.queued_ticks >= cfg.max_symbols || m.known_symbols >= cfg.max_known_symbols
        }
    }

    fn md_check_bounds(&mut self, a: usize) {
        let cfg = self.md_config();
        let Some(m) = self.feeds[a].buffer.as_ref().map(|b| b.metrics()) else {
            return;
        };
        if m.queued_ticks > cfg.max_symbols
            || m.queued_critical > cfg.max_critical
            || m.known_symbols > cfg.max_known_symbols
        {
            let v = format!("market data: agent-{a} buffer above its bounds: {m:?}");
            self.violation(v);
        }
    }

    fn md_schedule_consume(&mut self, a: usize) {
        let f = &self.feeds[a];
        let busy = !f.outbox.is_empty()
            || f.buffer
                .as_ref()
                .is_some_and(|b| b.metrics().queued_ticks + b.metrics().queued_critical > 0);
        if busy && !f.consume_scheduled && f.buffer.is_some() {
            self.feeds[a].consume_scheduled = true;
            self.at(CONSUME_EVERY, Ev::MdConsume { agent: a });
        }
    }

    /// The consumer takes up to a batch of messages, and the feed retries its outbox.
    pub(super) fn md_consume(&mut self, a: usize) {
        self.feeds[a].consume_scheduled = false;
        if self.feeds[a].buffer.is_none() {
            return;
        }
        for _ in 0..CONSUME_BATCH {
            let Some(fired) = self.feeds[a].buffer.as_mut().and_then(|b| b.poll()) else {
                break;
            };
            let Output::Fired(fired) = fired else {
                continue;
            };
            let md = match self.feeds[a].buffer.as_mut().and_then(|b| b.poll()) {
                Some(Output::Deliver(md)) => md,
                _ => {
                    self.violation("market data: a delivery record without its delivery".into());
                    break;
                }
            };
            let out = if self.trace.is_some() {
                vec![format!(
                    "Deliver {:?} {} #{} v{}",
                    md.kind, md.symbol, md.seq, md.routing_version
                )]
            } else {
                Vec::new()
            };
            self.trace_step(&format!("agent-{a}"), "consumer poll", &fired, &out);
            self.md_check_delivery(a, md);
        }
        self.md_offer_critical(a);
        self.md_schedule_consume(a);
    }

    /// The reference model's verdict on one delivery.
    fn md_check_delivery(&mut self, a: usize, md: MarketData) {
        let f = &mut self.feeds[a];
        let mut bad = None;
        if md.kind.is_critical() {
            match f.critical.pop_front() {
                Some(want) if want == md => self.md.critical_delivered += 1,
                want => {
                    bad = Some(format!(
                        "critical event #{} delivered, the oldest taken is {:?}",
                        md.seq,
                        want.map(|w| w.seq)
                    ))
                }
            }
        } else {
            self.md.ticks_delivered += 1;
            let want = f.pending.remove(&md.symbol);
            if !f.critical.is_empty() {
                bad = Some(format!(
                    "tick {} delivered before a queued critical event",
                    md.symbol
                ));
            } else if md.routing_version < f.min_rv {
                bad = Some(format!(
                    "tick {} #{} of routing version {} delivered below the minimum {}",
                    md.symbol, md.seq, md.routing_version, f.min_rv
                ));
            } else if want.as_ref() != Some(&md) {
                bad = Some(format!(
                    "tick {} #{} delivered, the latest taken is {:?}",
                    md.symbol,
                    md.seq,
                    want.map(|w| w.seq)
                ));
            } else if f
                .delivered_seq
                .get(&md.symbol)
                .is_some_and(|s| *s >= md.seq)
            {
                bad = Some(format!(
                    "tick {} #{} delivered after a newer one",
                    md.symbol, md.seq
                ));
            }
            f.delivered_seq.insert(md.symbol.clone(), md.seq);
        }
        if let Some(b) = bad {
            self.violation(format!("market data: agent-{a}: {b}"));
        }
    }

    /// Trace steps for the buffer's transition records (deliveries wait for the consumer).
    fn md_drain_fired(&mut self, a: usize, input: &str) {
        while let Some(f) = self.feeds[a].buffer.as_mut().and_then(|b| b.poll_fired()) {
            let node = if self.trace.is_some() {
                format!("agent-{a}")
            } else {
                String::new()
            };
            self.trace_step(&node, input, &f, &[]);
        }
    }

    /// The feed learns of the routing change.
    pub(super) fn md_producer_routing(&mut self, a: usize, v: u64) {
        let f = &mut self.feeds[a];
        f.producer_rv = f.producer_rv.max(v);
    }

    /// Nothing left on the market-data path.
    pub(super) fn md_settled(&self) -> bool {
        self.feeds.iter().all(|f| {
            f.outbox.is_empty()
                && f.critical.is_empty()
                && f.pending.is_empty()
                && f.buffer.as_ref().is_some_and(|b| {
                    let m = b.metrics();
                    m.queued_critical == 0 && m.queued_ticks == 0
                })
        })
    }

    /// What is still open on the market-data path, for a liveness failure message.
    pub(super) fn md_pending_summary(&self) -> String {
        let mut s = String::new();
        for (a, f) in self.feeds.iter().enumerate() {
            s.push_str(&format!(
                "  market data agent-{a}: outbox {}, taken critical {}, queued ticks {}, buffer {:?}\n",
                f.outbox.len(),
                f.critical.len(),
                f.pending.len(),
                f.buffer.as_ref().map(|b| b.metrics())
            ));
        }
        s
    }
}
