//! What the core's journal holds, in memory: accepted intents and their deliveries, the
//! effect of each [`JournalWrite`] on them, and the [`CoreDurableState`] a restarted core
//! loads. The model simulator's storage and the turmoil suite's journal server both keep their
//! committed state in one.
//!
//! It must never decide when a write commits or fails (its owner does) and never regress a
//! final delivery or a stage.

use std::collections::{BTreeMap, BTreeSet};

use echo_statemachine::core::{
    CoreDurableState, DeliveryRecord, DeliveryStatus, IntentFacts, JournalReply, JournalWrite,
};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, TradeId};
use echo_statemachine::msg::{ExecTerms, TicketEffect, TradeIntent};
use echo_statemachine::policy::SkipReason;

#[derive(Clone, Debug, Default)]
pub struct JournalBook {
    pub intents: BTreeMap<IntentId, TradeIntent>,
    /// As the real journal holds them: without the opens' copy terms (not journaled; the
    /// master's facts they are rebuilt from are journaled with the intent, in `intents`).
    pub deliveries: BTreeMap<CommandId, DeliveryRecord>,
    /// The copy terms each open was planned with — the checkers' copy, never read back by a
    /// core.
    pub terms: BTreeMap<CommandId, ExecTerms>,
}

impl JournalBook {
    /// Commits `w`; the reply is what the journal answers for it.
    pub fn apply(&mut self, w: &JournalWrite) -> JournalReply {
        match w {
            JournalWrite::AcceptIntent { intent, deliveries } => {
                if self.intents.contains_key(&intent.intent_id) {
                    let unfinished = self
                        .deliveries
                        .values()
                        .filter(|d| {
                            d.intent_id == intent.intent_id && d.status == DeliveryStatus::Inflight
                        })
                        .cloned()
                        .collect();
                    return JournalReply::IntentExisted { unfinished };
                }
                self.intents
                    .insert(intent.intent_id.clone(), intent.clone());
                for d in deliveries {
                    let mut row = d.clone();
                    if let Some(t) = row.terms.take() {
                        self.terms.insert(d.command_id.clone(), t);
                    }
                    self.deliveries.insert(d.command_id.clone(), row);
                }
                JournalReply::Done
            }
            JournalWrite::FinishDelivery {
                command_id,
                status,
                stage,
                attempts,
                slave_ticket,
                reason,
                ..
            } => {
                if let Some(d) = self.deliveries.get_mut(command_id) {
                    if d.status == DeliveryStatus::Inflight {
                        d.status = *status;
                        d.stage = *stage;
                        d.attempts = *attempts;
                        d.slave_ticket = *slave_ticket;
                        d.reason = *reason;
                    }
                }
                JournalReply::Done
            }
            JournalWrite::UpdateStage {
                command_id, stage, ..
            } => {
                if let Some(d) = self.deliveries.get_mut(command_id) {
                    if d.status == DeliveryStatus::Inflight && *stage > d.stage {
                        d.stage = *stage;
                    }
                }
                JournalReply::Done
            }
            _ => JournalReply::Done,
        }
    }

    /// What a restarted core loads: unfinished deliveries (each with its intent's journaled
    /// facts, as the real journals join them), the open slave tickets and the policy-failed
    /// opens of live trades.
    pub fn durable_state(&self) -> CoreDurableState {
        let unfinished = self
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Inflight)
            .map(|d| DeliveryRecord {
                intent_facts: self
                    .intents
                    .get(&d.intent_id)
                    .map(|i| Box::new(IntentFacts::of(i))),
                ..d.clone()
            })
            .collect();
        let mut open: BTreeMap<(TradeId, AccountId), i64> = BTreeMap::new();
        let mut ds: Vec<&DeliveryRecord> = self
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Acked)
            .collect();
        ds.sort_by_key(|d| d.master_seq);
        for d in ds {
            let k = (d.trade_id.clone(), d.slave.clone());
            // The journal's rule (`TicketEffect`): an open, a placement, a trigger or a partial
            // close (a broker may move the rest) sets the ticket; a close or cancel removes it.
            match d.kind.ticket_effect() {
                TicketEffect::Set => {
                    if let Some(t) = d.slave_ticket.filter(|t| *t > 0) {
                        open.insert(k, t);
                    }
                }
                TicketEffect::Remove => {
                    open.remove(&k);
                }
                TicketEffect::Keep => {}
            }
        }
        // The real journals' rule: the policy-failed opens and placements of trades still
        // live (an open ticket or an unfinished delivery).
        let live: BTreeSet<&TradeId> = open
            .keys()
            .map(|(t, _)| t)
            .chain(
                self.deliveries
                    .values()
                    .filter(|d| d.status == DeliveryStatus::Inflight)
                    .map(|d| &d.trade_id),
            )
            .collect();
        let skipped_opens = self
            .deliveries
            .values()
            .filter(|d| {
                d.kind.starts_trade()
                    && d.status == DeliveryStatus::Failed
                    && d.reason.and_then(SkipReason::from_error_code).is_some()
                    && live.contains(&d.trade_id)
            })
            .cloned()
            .collect();
        CoreDurableState {
            unfinished,
            open_tickets: open
                .iter()
                .map(|((t, s), x)| (t.clone(), s.clone(), *x))
                .collect(),
            skipped_opens,
        }
    }
}
