//! The market-data buffer between a producer (terminal, feed) and its consumer (seed 004).
//!
//! This module owns what may be dropped and what may not: ticks coalesce latest-wins per symbol,
//! stale ticks (an older `seq` than one already taken for the symbol) and ticks from a
//! `routing_version` below the current minimum are dropped and counted; critical kinds
//! (`MarketDataKind::is_critical`) are never coalesced, filtered or dropped — they wait in a
//! bounded FIFO and a full FIFO pushes back on the producer. Every store is bounded.
//!
//! It must never drop a critical message, never deliver a symbol's ticks out of `seq` order,
//! never grow without bound (overload is `Err(Backpressure)`, never a silent drop of something
//! that may not be dropped) and never depend on a clock or on hash iteration order.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::Symbol;
use crate::msg::MarketData;
use crate::spec::{Fired, MachineSpec, Subject};
use crate::time::Instant;
use crate::transitions;

transitions! {
    /// Transitions of the market-data buffer. A tick moves `(none) → tick_queued → delivered`,
    /// a critical message `(none) → critical_queued → delivered`.
    pub enum T ("marketdata") {
        CriticalQueued = "T01": "(none)", "offer(critical message), FIFO has room" => "critical_queued"; "offer returns Ok; counted accepted_critical",
        CriticalRefused = "T02": "(none)", "offer(critical message), FIFO holds `max_critical`" => "(none)"; "offer returns Err(Backpressure): the producer keeps it and slows down; counted backpressure_critical",
        TickQueued = "T03": "(none)", "offer(tick): symbol has no queued tick, seq newer than the last taken, routing_version current, room for the symbol" => "tick_queued"; "offer returns Ok; the symbol joins the end of the delivery order",
        TickCoalesced = "T04": "tick_queued", "offer(tick) for the same symbol with a newer seq" => "tick_queued"; "the queued tick is replaced (latest wins), keeping the symbol's place in line; offer returns Ok; counted coalesced",
        TickStale = "T05": "any", "offer(tick) whose seq is not newer than the last tick taken for its symbol" => "unchanged"; "dropped; offer returns Ok; counted stale_dropped",
        TickOldRouting = "T06": "any", "offer(tick) with routing_version below the current minimum" => "unchanged"; "dropped; offer returns Ok; counted routing_dropped",
        TickRefused = "T07": "(none)", "offer(tick) for a symbol with no queued tick when `max_symbols` symbols are queued, or a never-seen symbol when `max_known_symbols` are tracked" => "(none)"; "offer returns Err(Backpressure); counted backpressure_ticks",
        RoutingRaised = "T08": "min_routing_version = v", "handle_routing_version(w) with w > v" => "min_routing_version = w"; "T09 for every queued tick below w",
        TickPurged = "T09": "tick_queued", "routing minimum raised above the queued tick's routing_version" => "(none)"; "the queued tick is dropped; counted routing_dropped",
        RoutingNotRaised = "T10": "min_routing_version = v", "handle_routing_version(w) with w <= v" => "unchanged"; "nothing: the minimum only rises",
        CriticalDelivered = "T11": "critical_queued", "poll(), critical FIFO not empty" => "delivered"; "Deliver(message), oldest first, before any tick",
        TickDelivered = "T12": "tick_queued", "poll(), critical FIFO empty" => "delivered"; "Deliver(tick) of the symbol queued earliest",
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "marketdata",
    summary: "Seed 004's market-data buffer: latest-wins coalescing of ticks per symbol, stale \
              and old-routing ticks dropped and counted, critical kinds never dropped, every \
              store bounded with explicit backpressure.",
    states: &[
        ("tick_queued", "the newest tick of a symbol waits for delivery; at most one per symbol, at most `max_symbols` symbols"),
        ("critical_queued", "a critical message waits in the FIFO; at most `max_critical`"),
        ("delivered", "handed to the consumer by poll(); the symbol's watermark keeps its seq"),
        ("min_routing_version = v", "ticks from a routing version below v are dropped; only rises"),
    ],
    invariants: &[
        "At most one tick per symbol is queued, at most `max_symbols` symbols have a queued tick, at most `max_known_symbols` symbols are tracked and at most `max_critical` critical messages are queued.",
        "A critical message offered with Ok is delivered exactly once, in offer order, and before every tick queued at that time.",
        "Per symbol, delivered ticks have strictly increasing seq.",
        "No tick below the current minimum routing_version is delivered.",
        "Every drop is counted (coalesced, stale_dropped, routing_dropped); overload is Err(Backpressure).",
        "Delivery order is deterministic: critical FIFO first, then ticks in the order their symbols were queued.",
    ],
    transitions: T::TABLE,
};

/// Bounds of a [`MarketDataBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarketDataConfig {
    /// Most symbols with a queued tick.
    pub max_symbols: usize,
    /// Most critical messages queued.
    pub max_critical: usize,
    /// Most symbols whose last seq is remembered (the stale check needs it after delivery).
    pub max_known_symbols: usize,
}

impl Default for MarketDataConfig {
    fn default() -> Self {
        MarketDataConfig {
            max_symbols: 1_024,
            max_critical: 256,
            max_known_symbols: 8_192,
        }
    }
}

/// The producer must slow down: nothing was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backpressure;

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Fired(Fired),
    /// Hand this message to the consumer.
    Deliver(MarketData),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarketDataMetrics {
    pub queued_ticks: usize,
    pub queued_critical: usize,
    pub known_symbols: usize,
    pub min_routing_version: u64,
    pub accepted_ticks: u64,
    pub accepted_critical: u64,
    pub coalesced: u64,
    pub stale_dropped: u64,
    pub routing_dropped: u64,
    pub backpressure_ticks: u64,
    pub backpressure_critical: u64,
    pub delivered_ticks: u64,
    pub delivered_critical: u64,
}

/// Bounded, coalescing, never-drop-critical buffer.
#[derive(Debug)]
pub struct MarketDataBuffer {
    config: MarketDataConfig,
    min_routing_version: u64,
    critical: VecDeque<MarketData>,
    ticks: BTreeMap<Symbol, MarketData>,
    /// Symbols with a queued tick, in the order they were queued.
    tick_order: VecDeque<Symbol>,
    /// Highest seq taken per symbol (queued or delivered).
    watermark: BTreeMap<Symbol, u64>,
    /// Fired records not yet polled; deliveries are produced lazily by poll().
    events: VecDeque<Output>,
    m: MarketDataMetrics,
}

impl MarketDataBuffer {
    pub fn new(config: MarketDataConfig) -> Self {
        MarketDataBuffer {
            config,
            min_routing_version: 0,
            critical: VecDeque::new(),
            ticks: BTreeMap::new(),
            tick_order: VecDeque::new(),
            watermark: BTreeMap::new(),
            events: VecDeque::new(),
            m: MarketDataMetrics::default(),
        }
    }

    /// Market data is not durable: only the routing minimum (kept with the routing config)
    /// survives a restart. Queued messages are gone; producers resend critical events from
    /// their own durable sources.
    pub fn recover(config: MarketDataConfig, min_routing_version: u64) -> Self {
        let mut b = MarketDataBuffer::new(config);
        b.min_routing_version = min_routing_version;
        b
    }

    /// Offers one message. `Ok` means it was taken (queued, coalesced or knowingly dropped as
    /// stale/old); `Err(Backpressure)` means nothing was taken and the producer must slow down.
    pub fn offer(&mut self, _now: Instant, md: MarketData) -> Result<(), Backpressure> {
        let subject = Subject::Symbol(md.symbol.clone());
        if md.kind.is_critical() {
            if self.critical.len() >= self.config.max_critical
                && crate::mutants::active(crate::mutants::Mutant::MdCriticalEvictsOldest)
            {
                self.critical.pop_front();
            }
            if self.critical.len() >= self.config.max_critical {
                self.m.backpressure_critical += 1;
                self.fire(T::CriticalRefused, subject);
                return Err(Backpressure);
            }
            self.critical.push_back(md);
            self.m.accepted_critical += 1;
            self.fire(T::CriticalQueued, subject);
            return Ok(());
        }
        if md.routing_version < self.min_routing_version {
            self.m.routing_dropped += 1;
            self.fire(T::TickOldRouting, subject);
            return Ok(());
        }
        let last = self.watermark.get(&md.symbol).copied();
        if last.is_some_and(|last| md.seq <= last) {
            self.m.stale_dropped += 1;
            self.fire(T::TickStale, subject);
            return Ok(());
        }
        if let Some(slot) = self.ticks.get_mut(&md.symbol) {
            self.watermark.insert(md.symbol.clone(), md.seq);
            if !crate::mutants::active(crate::mutants::Mutant::MdCoalesceKeepsOldest) {
                *slot = md;
            }
            self.m.coalesced += 1;
            self.m.accepted_ticks += 1;
            self.fire(T::TickCoalesced, subject);
            return Ok(());
        }
        let untracked = last.is_none() && self.watermark.len() >= self.config.max_known_symbols;
        if self.ticks.len() >= self.config.max_symbols || untracked {
            self.m.backpressure_ticks += 1;
            self.fire(T::TickRefused, subject);
            return Err(Backpressure);
        }
        self.watermark.insert(md.symbol.clone(), md.seq);
        self.tick_order.push_back(md.symbol.clone());
        self.ticks.insert(md.symbol.clone(), md);
        self.m.accepted_ticks += 1;
        self.fire(T::TickQueued, subject);
        Ok(())
    }

    /// A routing change: ticks from versions below `v` are no longer wanted.
    pub fn handle_routing_version(&mut self, _now: Instant, v: u64) {
        if v <= self.min_routing_version {
            self.fire(T::RoutingNotRaised, Subject::None);
            return;
        }
        self.min_routing_version = v;
        self.fire(T::RoutingRaised, Subject::None);
        let order = std::mem::take(&mut self.tick_order);
        for sym in order {
            let old = self.ticks.get(&sym).is_some_and(|t| t.routing_version < v)
                && !crate::mutants::active(crate::mutants::Mutant::MdRoutingKeepsQueued);
            if old {
                self.ticks.remove(&sym);
                self.m.routing_dropped += 1;
                self.fire(T::TickPurged, Subject::Symbol(sym));
            } else {
                self.tick_order.push_back(sym);
            }
        }
    }

    /// No deadlines: the buffer has no timers. Kept for the common machine shape.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Next output: pending Fired records, then critical messages, then ticks. Each delivery
    /// is preceded by its own Fired record.
    pub fn poll(&mut self) -> Option<Output> {
        if let Some(o) = self.events.pop_front() {
            return Some(o);
        }
        if let Some(md) = self.critical.pop_front() {
            self.m.delivered_critical += 1;
            self.events.push_back(Output::Deliver(md.clone()));
            return Some(fired(T::CriticalDelivered, Subject::Symbol(md.symbol)));
        }
        while let Some(sym) = self.tick_order.pop_front() {
            if let Some(md) = self.ticks.remove(&sym) {
                self.m.delivered_ticks += 1;
                self.events.push_back(Output::Deliver(md));
                return Some(fired(T::TickDelivered, Subject::Symbol(sym)));
            }
        }
        None
    }

    /// Next pending transition record, without starting a delivery. A driver whose consumer
    /// is slower than the producer calls this after every input (to log the trace) and
    /// `poll()` only when the consumer can take a message — that gap is where coalescing
    /// happens.
    pub fn poll_fired(&mut self) -> Option<Fired> {
        match self.events.front() {
            Some(Output::Fired(_)) => match self.events.pop_front() {
                Some(Output::Fired(f)) => Some(f),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn metrics(&self) -> MarketDataMetrics {
        MarketDataMetrics {
            queued_ticks: self.ticks.len(),
            queued_critical: self.critical.len(),
            known_symbols: self.watermark.len(),
            min_routing_version: self.min_routing_version,
            ..self.m
        }
    }

    pub fn config(&self) -> MarketDataConfig {
        self.config
    }

    fn fire(&mut self, t: T, subject: Subject) {
        self.events.push_back(fired(t, subject));
    }
}

fn fired(t: T, subject: Subject) -> Output {
    Output::Fired(Fired {
        transition: t.spec(),
        subject,
    })
}
