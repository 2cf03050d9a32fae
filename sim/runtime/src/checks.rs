//! The checkers, as in the model simulator (`sim/src/world/checks.rs`): no loss, no duplicate
//! execution, per-trade order, liveness after heal — read from what the terminals and the
//! broker made durable.
//!
//! Owns the verdicts only; it must never look at a machine's memory.

use std::collections::BTreeMap;

use echo_statemachine::core::DeliveryStatus;

use crate::world::World;

/// Every violation, sorted; empty when the run is correct.
pub fn check(w: &World) -> Vec<String> {
    let mut v = Vec::new();
    let seq_of: BTreeMap<_, _> = w
        .emitted
        .iter()
        .map(|i| (i.intent_id.clone(), (i.master_seq, i.trade_id.clone())))
        .collect();
    // No duplicate execution: one order per (intent, slave), whatever its command id.
    let mut per_intent: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for o in &w.orders {
        per_intent
            .entry((o.command.intent_id.clone(), o.command.slave.clone()))
            .or_default()
            .push(o.command.command_id.clone());
        if !seq_of.contains_key(&o.command.intent_id) {
            v.push(format!(
                "phantom: order {} for intent {} the master never emitted",
                o.command.command_id, o.command.intent_id
            ));
        }
    }
    for ((intent, slave), cmds) in &per_intent {
        if cmds.len() > 1 {
            v.push(format!(
                "duplicate: intent {intent} executed {} times on {slave}: {cmds:?}",
                cmds.len()
            ));
        }
    }
    // No loss + liveness after heal: every emitted intent was executed by the end.
    for i in &w.emitted {
        if !per_intent.keys().any(|(id, _)| id == &i.intent_id) {
            v.push(format!(
                "lost: intent {} (trade {}, seq {}) never executed on the slave",
                i.intent_id, i.trade_id, i.master_seq
            ));
        }
    }
    // Per-trade order: a trade's orders reach the broker in master_seq order.
    let mut last: BTreeMap<_, u64> = BTreeMap::new();
    for o in &w.orders {
        let Some((seq, trade)) = seq_of.get(&o.command.intent_id) else {
            continue;
        };
        let key = (trade.clone(), o.command.slave.clone());
        if let Some(prev) = last.get(&key) {
            if seq < prev {
                v.push(format!(
                    "order: trade {trade} on {}: seq {seq} executed after seq {prev}",
                    o.command.slave
                ));
            }
        }
        last.insert(key, *seq);
    }
    // Liveness of the durable side: after the heal every journaled delivery reached a final
    // status (a write the core never re-issued leaves it in flight forever).
    for d in w.journal.deliveries.values() {
        if d.status == DeliveryStatus::Inflight {
            v.push(format!(
                "stuck: delivery {} (intent {}) still in flight in the journal after the heal",
                d.command_id, d.intent_id
            ));
        }
    }
    if w.emitted.is_empty() {
        v.push("liveness: the master emitted nothing".into());
    }
    v.sort();
    v
}
