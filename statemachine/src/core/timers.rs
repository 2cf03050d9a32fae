//! The core's deadlines, in `(deadline, key)` order.
//!
//! The per-delivery and per-intent timers (the hot ones: one per command sent) live in a
//! min-heap with lazy removal. Each has one owner that remembers its armed deadline (a
//! delivery's `deadline`, an intent's `retry_at`), and a heap entry is live exactly when its
//! owner still holds that deadline. Arming pushes (O(1) for the usual, latest deadline),
//! disarming only counts the entry stale, and stale entries are dropped when they reach the
//! top or when they outnumber the live ones — so the heap stays within a constant factor of
//! the armed timers. The two singleton timers (heartbeat tick, journal probe) stay in a small
//! sorted set with exact removal. Live entries come out in the order one sorted set of all of
//! them would give. This module must never let a stale entry fire, nor one deadline fire
//! twice.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use super::intake::IntentState;
use super::{Core, TimerKey};
use crate::time::Instant;

/// Stale entries tolerated beyond half the heap before it is compacted.
const STALE_SLACK: usize = 512;

#[derive(Default)]
pub(crate) struct Timers {
    /// `Delivery` and `IntentRetry` deadlines, live or stale.
    heap: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    /// Heap entries known to be stale (disarmed or re-armed since pushed).
    stale: usize,
    /// `HeartbeatTick` and `JournalProbe` deadlines.
    exact: BTreeSet<(Instant, TimerKey)>,
}

fn lazy(key: &TimerKey) -> bool {
    matches!(key, TimerKey::Delivery(_) | TimerKey::IntentRetry(_))
}

impl Core {
    /// Whether the owner of heap entry `key` still holds deadline `at`.
    fn timer_live(&self, at: Instant, key: &TimerKey) -> bool {
        match key {
            TimerKey::Delivery(k) => self
                .deliveries
                .get(k)
                .is_some_and(|d| d.deadline == Some(at)),
            TimerKey::IntentRetry(id) => matches!(
                self.intents.get(id).map(|e| &e.state),
                Some(IntentState::Persisting { retry_at: Some(t), .. }) if *t == at
            ),
            TimerKey::HeartbeatTick | TimerKey::JournalProbe => false,
        }
    }

    /// Arms `key` at `at`, in addition to any deadline it already has.
    pub(crate) fn arm(&mut self, key: TimerKey, at: Instant) {
        if lazy(&key) {
            self.timers.heap.push(Reverse((at, key)));
        } else {
            self.timers.exact.insert((at, key));
        }
    }

    /// Arms `key` at `at` in place of its previous deadline `old`, if it had one. For a heap
    /// timer the owner already holds `at`.
    pub(crate) fn rearm(&mut self, key: TimerKey, old: Option<Instant>, at: Instant) {
        if let Some(o) = old {
            if lazy(&key) {
                self.timers.stale += 1;
            } else {
                self.timers.exact.remove(&(o, key.clone()));
            }
        }
        self.arm(key, at);
    }

    /// `key`, armed at `old` if at all, no longer has that deadline (for a heap timer, its
    /// owner forgot it).
    pub(crate) fn disarm(&mut self, key: TimerKey, old: Option<Instant>) {
        if let Some(o) = old {
            if lazy(&key) {
                self.timers.stale += 1;
            } else {
                self.timers.exact.remove(&(o, key));
            }
        }
    }

    /// Drops stale entries from the top of the heap.
    fn prune_heap_top(&mut self) {
        while let Some(Reverse((at, key))) = self.timers.heap.peek() {
            if self.timer_live(*at, key) {
                break;
            }
            self.timers.heap.pop();
            self.timers.stale = self.timers.stale.saturating_sub(1);
        }
    }

    /// The earliest live deadline at or before `now`, removed (with any duplicate of it).
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerKey> {
        self.prune_heap_top();
        let from_heap = match (self.timers.heap.peek(), self.timers.exact.first()) {
            (Some(Reverse(h)), Some(e)) => h < e,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !from_heap {
            return match self.timers.exact.first() {
                Some((at, _)) if *at <= now => self.timers.exact.pop_first().map(|(_, k)| k),
                _ => None,
            };
        }
        match self.timers.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => {}
            _ => return None,
        }
        let Reverse((at, key)) = self.timers.heap.pop()?;
        // A deadline disarmed and armed again at the same instant left two equal entries.
        while self
            .timers
            .heap
            .peek()
            .is_some_and(|Reverse((a, k))| *a == at && *k == key)
        {
            self.timers.heap.pop();
            self.timers.stale = self.timers.stale.saturating_sub(1);
        }
        Some(key)
    }

    /// Called at the end of every input: compacts a heap mostly made of stale entries and
    /// drops stale entries from its top, so `poll_timeout` sees a live deadline.
    pub(crate) fn settle_timers(&mut self) {
        // Every public handler ends here: commands waiting for a window go out first.
        self.pump_windows(self.now);
        if self.timers.stale > self.timers.heap.len() / 2 + STALE_SLACK {
            let mut entries = std::mem::take(&mut self.timers.heap).into_vec();
            entries.retain(|Reverse((at, key))| self.timer_live(*at, key));
            self.timers.heap = BinaryHeap::from(entries);
            self.timers.stale = 0;
        }
        // Without a disarm since the last prune the top is still what a sorted set would hold.
        if self.timers.stale > 0 {
            self.prune_heap_top();
        }
    }

    /// The earliest live deadline (once `settle_timers` ran).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let heap = self.timers.heap.peek().map(|Reverse((at, _))| *at);
        let exact = self.timers.exact.first().map(|(at, _)| *at);
        match (heap, exact) {
            (Some(h), Some(e)) => Some(h.min(e)),
            (h, e) => h.or(e),
        }
    }

    /// Live timers, each counted once.
    pub(crate) fn live_timers(&self) -> usize {
        let mut live: Vec<&(Instant, TimerKey)> = self
            .timers
            .heap
            .iter()
            .map(|Reverse(e)| e)
            .filter(|(at, key)| self.timer_live(*at, key))
            .collect();
        live.sort_unstable();
        live.dedup();
        live.len() + self.timers.exact.len()
    }
}
