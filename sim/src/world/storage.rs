//! Simulated storage and the broker: what each node's storage has made durable (the core's
//! Postgres journal, each agent's ledger, each master's IntentQueue file, each slave's
//! executed-record file), the completion of every write, and the broker's idempotent book of
//! orders by client order id.
//!
//! This module owns durability: a write is durable exactly when it is applied here, and a
//! node recovering reads only what is applied here. Whether a write fails, is slow or loses its
//! reply is decided when it is issued (in [`super::nodes`]) or by an outage window
//! ([`super::faults`]); this module must never decide a fault itself, except that the broker
//! draws its rejections from the run's generator.

use std::collections::BTreeMap;

use echo_statemachine::agent::{LedgerOpId, LedgerResult};
use echo_statemachine::core::{
    CoreDurableState, DeliveryStatus, JournalReply, JournalResult, JournalWrite, OpId,
};
use echo_statemachine::ea::master::{self, PersistError};
use echo_statemachine::ea::slave::{self, BrokerOutcome, ExecutedRecord};
use echo_statemachine::ids::{CommandId, IntentId};
use echo_statemachine::msg::*;
use echo_statemachine::policy::SkipReason;
use echo_statemachine::time::Instant;

use super::faults::F;
use super::nodes::{AgentM, CoreM, MasterM, SlaveM};
use super::World;
use crate::journal_book::JournalBook;

/// What storage has made durable.
#[derive(Default)]
pub(super) struct Journal {
    pub(super) book: JournalBook,
    pub(super) down_until: Option<Instant>,
    pub(super) pending: BTreeMap<OpId, JournalWrite>,
}

impl std::ops::Deref for Journal {
    type Target = JournalBook;
    fn deref(&self) -> &JournalBook {
        &self.book
    }
}

#[derive(Clone, Debug)]
pub(super) enum MasterWrite {
    Append(TradeIntent),
    Remove(IntentId),
}

#[derive(Clone, Debug)]
pub(super) enum SlaveWrite {
    Cancelled(Command, ExecutionResult),
    Executing(Command),
    Executed(CommandId, ExecutionResult),
}

impl World {
    pub(super) fn on_journal_done(&mut self, op: OpId, epoch: u64, commit: bool, reply: bool) {
        let now = self.now;
        if epoch != self.core_epoch {
            return;
        }
        let Some(w) = self.journal.pending.remove(&op) else {
            return;
        };
        let down = self.journal.down_until.is_some_and(|t| t > now);
        let result = if down || !commit {
            JournalResult::Failed { retryable: true }
        } else {
            let r = self.apply_journal(&w);
            if reply {
                JournalResult::Ok(r)
            } else {
                JournalResult::Failed { retryable: true }
            }
        };
        if let Some(c) = self.core.as_mut() {
            c.handle_journal_result(now, op, result);
            self.drain::<CoreM>(0, "journal result");
        }
    }

    pub(super) fn on_ledger_done(&mut self, agent: usize, op: LedgerOpId, epoch: u64, ok: bool) {
        let now = self.now;
        if epoch != self.agent_epoch[agent] {
            return;
        }
        let Some(rec) = self.ledger_pending[agent].remove(&op) else {
            return;
        };
        let res = if ok {
            self.ledgers[agent].insert(rec.command.command_id.clone(), rec);
            LedgerResult::Ok
        } else {
            LedgerResult::Failed { retryable: true }
        };
        if let Some(x) = self.agents[agent].as_mut() {
            x.handle_ledger_result(now, op, res);
            self.drain::<AgentM>(agent, "ledger result");
        }
    }

    pub(super) fn on_master_disk_done(
        &mut self,
        master: usize,
        op: master::OpId,
        epoch: u64,
        ok: bool,
    ) {
        let now = self.now;
        if epoch != self.master_epoch[master] {
            return;
        }
        let Some(w) = self.master_pending[master].remove(&op) else {
            return;
        };
        let res = if ok {
            self.apply_master_write(master, w);
            Ok(())
        } else {
            Err(PersistError { retryable: true })
        };
        if let Some(q) = self.masters[master].as_mut() {
            q.handle_persist_result(now, op, res);
            self.drain::<MasterM>(master, "disk result");
        }
    }

    pub(super) fn on_slave_disk_done(
        &mut self,
        slave: usize,
        op: slave::OpId,
        epoch: u64,
        ok: bool,
    ) {
        let now = self.now;
        if epoch != self.slave_epoch[slave] {
            return;
        }
        let Some(w) = self.slave_pending[slave].remove(&op) else {
            return;
        };
        let res = if ok {
            self.apply_slave_write(slave, w);
            Ok(())
        } else {
            Err(slave::PersistError { retryable: true })
        };
        if let Some(x) = self.slaves[slave].as_mut() {
            x.handle_persist_result(now, op, res);
            self.drain::<SlaveM>(slave, "");
        }
    }

    pub(super) fn on_broker_answer(
        &mut self,
        slave: usize,
        epoch: u64,
        command_id: CommandId,
        body: Option<CommandBody>,
        leg: Option<(CommandId, u32)>,
    ) {
        let now = self.now;
        let parent = leg.as_ref().map_or(&command_id, |(c, _)| c).clone();
        let outcome = self.broker(slave, &command_id, &parent, body.as_ref(), leg.is_some());
        if epoch != self.slave_epoch[slave] {
            return; // the order was placed; its answer is lost with the crashed EA
        }
        if let Some(x) = self.slaves[slave].as_mut() {
            match leg {
                Some((parent, n)) => x.handle_leg_result(now, parent, n, outcome),
                None => x.handle_broker_result(now, command_id, outcome),
            }
            self.drain::<SlaveM>(slave, "");
        }
    }

    /// The simulated broker: idempotent by client order id (`order_id`: the command id, or a
    /// leg's). `None` is a query for an order whose fate the EA does not know. `leg`: one
    /// broker step of a split (`command_id` its command).
    pub(super) fn broker(
        &mut self,
        slave: usize,
        order_id: &CommandId,
        command_id: &CommandId,
        body: Option<&CommandBody>,
        leg: bool,
    ) -> BrokerOutcome {
        let key = (slave, order_id.clone());
        if let Some(o) = self.broker.get(&key) {
            return o.clone();
        }
        let Some(body) = body else {
            return BrokerOutcome::Rejected {
                reason: "no such client order id".into(),
            };
        };
        let outcome = if self.chance(F::BrokerReject) {
            self.fault("broker_reject", format!("slave-{slave} {order_id}"));
            BrokerOutcome::Rejected {
                reason: "market closed".into(),
            }
        } else {
            self.broker_fill(slave, order_id, command_id, body, leg)
        };
        self.broker.insert(key, outcome.clone());
        outcome
    }

    pub(super) fn apply_journal(&mut self, w: &JournalWrite) -> JournalReply {
        if let JournalWrite::AcceptIntent { intent, deliveries } = w {
            if !self.journal.intents.contains_key(&intent.intent_id) {
                self.book.plan.insert(
                    intent.intent_id.clone(),
                    deliveries.iter().map(|d| d.slave.clone()).collect(),
                );
                for d in deliveries.iter().filter(|d| d.kind.starts_trade()) {
                    let key = (d.slave.clone(), d.trade_id.as_str().to_lowercase());
                    self.positions
                        .openings
                        .entry(key)
                        .or_insert_with(|| d.command_id.clone());
                }
            }
        }
        if let JournalWrite::FinishDelivery {
            command_id, reason, ..
        } = w
        {
            // A close or modify is always delivered: the copy policy may skip opens only —
            // and the later intents of an open it skipped, with that open's reason
            // (`core.delivery.T26`).
            let dropped_close = self.journal.deliveries.get(command_id).and_then(|d| {
                let policy = reason.and_then(SkipReason::from_error_code)?;
                let trade = d.trade_id.as_str().to_lowercase();
                let open_skipped_alike = || {
                    self.journal.deliveries.values().any(|o| {
                        o.kind.starts_trade()
                            && o.slave == d.slave
                            && o.trade_id.as_str().to_lowercase() == trade
                            && o.status == DeliveryStatus::Failed
                            && o.reason == *reason
                    })
                };
                // A trigger's market fallback is an entry: its guard may refuse it.
                let guard_refused = d.kind == IntentKind::PendingTrigger
                    && matches!(
                        policy,
                        SkipReason::PriceDeviation | SkipReason::AccountFactsUnknown
                    );
                (!d.kind.starts_trade()
                    && !guard_refused
                    && d.status == DeliveryStatus::Inflight
                    && policy != SkipReason::SymbolNotMapped
                    && !open_skipped_alike())
                    .then(|| {
                        format!(
                            "{:?} {command_id} FAILED {policy} by the copy policy: a close or modify is always delivered",
                            d.kind
                        )
                    })
            });
            if let Some(v) = dropped_close {
                self.violation(v);
            }
            if *reason == Some(ErrorCode::NoPosition) {
                self.check_no_position_noise(command_id);
            }
            self.check_later_reason(command_id, *reason);
        }
        self.journal.book.apply(w)
    }

    pub(super) fn journal_durable_state(&self) -> CoreDurableState {
        self.journal.durable_state()
    }

    pub(super) fn apply_master_write(&mut self, m: usize, w: MasterWrite) {
        match w {
            MasterWrite::Append(i) => {
                self.unappended[m].remove(&i.intent_id);
                self.book.emitted.entry(i.intent_id.clone()).or_insert((
                    self.now,
                    i.kind,
                    i.trade_id.clone(),
                ));
                self.master_files[m].insert(i.intent_id.clone(), i);
            }
            MasterWrite::Remove(id) => {
                self.master_files[m].remove(&id);
            }
        }
    }

    pub(super) fn apply_slave_write(&mut self, s: usize, w: SlaveWrite) {
        if let SlaveWrite::Executing(c) | SlaveWrite::Cancelled(c, _) = &w {
            let at = self.slave_file_appends;
            if let std::collections::btree_map::Entry::Vacant(e) =
                self.slave_file_order[s].entry(c.command_id.clone())
            {
                e.insert(at);
                self.slave_file_appends += 1;
            }
        }
        match w {
            SlaveWrite::Executing(c) => {
                self.slave_files[s]
                    .entry(c.command_id.clone())
                    .or_insert(ExecutedRecord {
                        command: c,
                        result: None,
                    });
            }
            SlaveWrite::Cancelled(c, r) => {
                // An upsert over a write-ahead whose success was never reported.
                self.slave_files[s].insert(
                    c.command_id.clone(),
                    ExecutedRecord {
                        command: c,
                        result: Some(r),
                    },
                );
            }
            SlaveWrite::Executed(id, r) => {
                if let Some(rec) = self.slave_files[s].get_mut(&id) {
                    rec.result = Some(r);
                }
            }
        }
    }
}
