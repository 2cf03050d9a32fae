//! Intent intake: dedupe, fan-out planning and journaling of one `TradeIntent`.
//!
//! An intent is acknowledged `CORE_ACCEPTED` only after the journal reported the intent and
//! all its per-slave deliveries durable in one write. A retried intent (same id) is answered
//! from memory while it is open or recently completed, and by the journal's own dedupe
//! (`IntentExisted`) after that. Journal failures are retried with backoff up to
//! `max_retries`; then the intent is refused with `JOURNAL_UNAVAILABLE` (the master still holds
//! it), `core_delivery_failed` is logged and fan-out stops until the journal answers again.
//! This module must never acknowledge an intent whose write has not been reported durable.

use super::journal::{DeliveryRecord, DeliveryStatus, JournalReply, JournalResult, JournalWrite};
use super::router::RouterT;
use super::{Core, CoreLog, PendingOp, TimerKey};
use crate::ids::{AccountId, AgentId, CommandId, IntentId, TradeId};
use crate::msg::{
    AckResult, AckStage, CoreToAgent, ErrorCode, IntentKind, Role, TradeIntent, TradeIntentAck,
};
use crate::spec::{MachineSpec, Subject};
use crate::time::{backoff, Instant};
use crate::transitions;

transitions! {
    /// Intent intake transitions.
    pub enum IntakeT ("core.intake") {
        Admit = "T01": "New",
            "TradeIntent admitted by core.router" => "Persisting";
            "Journal AcceptIntent{intent, deliveries} (one write: intent + every slave copy)",
        DupPersisting = "T02": "Persisting",
            "the same intent_id again" => "Persisting";
            "nothing: the ack follows the pending write",
        DupAccepted = "T03": "Accepted | Completed (recent)",
            "the same intent_id again" => "unchanged";
            "TradeIntentAck{OK} again (CORE_ACCEPTED)",
        Persisted = "T04": "Persisting",
            "journal Ok(Done) for AcceptIntent" => "Accepted";
            "TradeIntentAck{OK} (CORE_ACCEPTED); each delivery enters core.delivery",
        Existed = "T05": "Persisting",
            "journal Ok(IntentExisted{unfinished})" => "Accepted";
            "TradeIntentAck{OK}; the journal's unfinished deliveries enter core.delivery",
        PersistRetry = "T06": "Persisting",
            "journal Failed{retryable}, attempts < max_retries" => "Persisting (backing off)";
            "retry timer at retry_backoff_ms · 2^(attempt-1)",
        RetryWrite = "T07": "Persisting (backing off)",
            "retry timer" => "Persisting";
            "Journal AcceptIntent again (same payload)",
        PersistGaveUp = "T08": "Persisting",
            "journal Failed, attempts = max_retries or not retryable" => "Refused";
            "TradeIntentAck{FAILED, JOURNAL_UNAVAILABLE, retry_after_ms}; log core_delivery_failed; core.journal → Down",
        JournalDown = "T09": "New",
            "TradeIntent while core.journal is Down" => "Refused";
            "TradeIntentAck{FAILED, JOURNAL_UNAVAILABLE, retry_after_ms} (fan-out stopped, nothing written)",
        Invalid = "T10": "New",
            "TradeIntent with empty ids, non-finite numbers or negative volume, or a PARTIAL_CLOSE without 0 < volume <= master_volume_before" => "Refused";
            "TradeIntentAck{FAILED, INVALID_ARGUMENT}",
        UnknownAccount = "T11": "New",
            "TradeIntent for a master account the sending agent does not serve" => "Refused";
            "TradeIntentAck{FAILED, UNKNOWN_ACCOUNT}",
        Completed = "T12": "Accepted",
            "its last delivery's final state journaled" => "Completed";
            "forgotten; its id kept in the recent-dedupe window",
        TradeBusy = "T13": "New",
            "TradeIntent for a trade that has another intent Persisting" => "Refused";
            "TradeIntentAck{FAILED, BROKER_BUSY, retry_after_ms} (keeps per-trade order)",
        InvalidPending = "T14": "New",
            "TradeIntent of a pending order's lifecycle that cannot be copied as stated: a PLACE_LIMIT / PLACE_STOP or PENDING_MODIFY without a price > 0, a placement or PENDING_TRIGGER without volume > 0" => "Refused";
            "TradeIntentAck{FAILED, INVALID_ARGUMENT} — never guessed",
        SlaveBacklog = "T15": "New",
            "TradeIntent of a master one of whose slaves' agents has AGENT_BACKLOG_FACTOR × agent_window deliveries Queued for its send window (the agent is slower than the masters)" => "Refused";
            "TradeIntentAck{FAILED, BROKER_BUSY, retry_after_ms}; backlog_rejections_total++ — nothing journaled: overload is answered at the door, the core's queue stays bounded",
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "core.intake",
    summary: "One TradeIntent from arrival to CORE_ACCEPTED: dedupe, fan-out planning, journaling with retry, and the stop-fan-out rule of seed 001.",
    states: &[
        ("New", "not seen (or forgotten beyond the recent window; the journal still dedupes)"),
        ("Persisting", "AcceptIntent written, result pending (or backing off after a failure)"),
        ("Accepted", "durable with its deliveries; acknowledged CORE_ACCEPTED"),
        ("Completed", "every delivery final and journaled; id in the recent window"),
        ("Refused", "answered FAILED with a reason; nothing durable; the master retries if retryable"),
    ],
    invariants: &[
        "TradeIntentAck{OK} is sent only for an intent whose AcceptIntent write was reported durable.",
        "A trade has at most one intent Persisting, so per-trade order is the order of acceptance.",
        "An intent id yields one set of deliveries, whatever the number of retries (journal dedupe).",
        "While the journal is Down no intent is admitted: every one is refused with JOURNAL_UNAVAILABLE.",
    ],
    transitions: IntakeT::TABLE,
};

const DEFAULT_RECENT: usize = 4_096;

/// Deliveries one agent may have Queued for its send window, in units of `agent_window`,
/// before its masters' new intents are answered BROKER_BUSY (T15). 16 × the default window is
/// 16 384 deliveries, one to two seconds of a saturated agent's work: a burst is absorbed at
/// the core, sustained overload goes back to the masters. (With 4 ×, `e2e_bench` at 150 % load
/// bounced most intents and the masters' growing backoff halved the throughput.)
pub const AGENT_BACKLOG_FACTOR: usize = 16;

pub(crate) enum IntentState {
    Persisting {
        /// Boxed: an intent (with its master's facts) dwarfs the other state.
        intent: Box<TradeIntent>,
        deliveries: Vec<DeliveryRecord>,
        attempts: u32,
        admitted_at: Instant,
        retry_at: Option<Instant>,
    },
    Accepted {
        open: u32,
    },
}

pub(crate) struct IntentEntry {
    pub worker: u32,
    pub reply_to: AgentId,
    pub state: IntentState,
}

fn intent_is_valid(i: &TradeIntent) -> bool {
    !i.intent_id.as_str().is_empty()
        && !i.master.as_str().is_empty()
        && !i.symbol.as_str().is_empty()
        && i.volume.is_finite()
        && i.volume >= 0.0
        && i.price.is_finite()
        && i.stop_loss.is_finite()
        && i.take_profit.is_finite()
        && i.origin.is_valid()
        && partial_close_is_valid(i)
}

/// A pending order rests at a price, and a placement or trigger moves lots: without them the
/// slave could only guess, so such an intent is refused (`core.intake.T14`).
fn pending_is_valid(i: &TradeIntent) -> bool {
    let priced = i.price > 0.0;
    let lots = i.volume > 0.0;
    match i.kind {
        IntentKind::PlaceLimit | IntentKind::PlaceStop => priced && lots,
        IntentKind::PendingModify => priced,
        IntentKind::PendingTrigger => lots,
        _ => true,
    }
}

/// A partial close states its fraction exactly: the closed lots out of the master's lots
/// before it, both positive and the part no larger than the whole. Without it a slave could
/// only guess its share, so such an intent is refused rather than copied wrongly.
fn partial_close_is_valid(i: &TradeIntent) -> bool {
    i.kind != IntentKind::PartialClose
        || (i.master_volume_before.is_finite()
            && i.volume > 0.0
            && i.master_volume_before >= i.volume)
}

impl Core {
    fn ack_intent(
        &mut self,
        agent: AgentId,
        intent_id: IntentId,
        trade_id: TradeId,
        error: Option<ErrorCode>,
    ) {
        let (result, retry_after_ms) = match error {
            None => (AckResult::Ok, 0),
            Some(e) if e.is_retryable() => (AckResult::Failed, self.cfg.delivery.retry_backoff_ms),
            Some(_) => (AckResult::Failed, 0),
        };
        if error.is_some() {
            self.metrics.intents_rejected_total += 1;
        }
        self.send(
            agent,
            CoreToAgent::IntentAck(TradeIntentAck {
                intent_id,
                trade_id,
                result,
                error,
                retry_after_ms,
            }),
        );
    }

    pub(crate) fn on_intent(&mut self, now: Instant, agent: &AgentId, i: TradeIntent) {
        let subject = self.intent_subject(&i.intent_id);
        if i.trade_id.is_empty() {
            // No trade id: nothing to route by. Intents always need one.
            self.fire(IntakeT::Invalid.spec(), subject);
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::InvalidArgument),
            );
            return;
        }
        if let Some(e) = self.intents.get(&i.intent_id) {
            match e.state {
                IntentState::Persisting { .. } => self.fire(IntakeT::DupPersisting.spec(), subject),
                IntentState::Accepted { .. } => {
                    self.fire(IntakeT::DupAccepted.spec(), subject);
                    self.ack_intent(agent.clone(), i.intent_id, i.trade_id, None);
                }
            }
            return;
        }
        if self.recent_set.contains(&i.intent_id) {
            self.fire(IntakeT::DupAccepted.spec(), subject);
            self.ack_intent(agent.clone(), i.intent_id, i.trade_id, None);
            return;
        }
        let invalid = if !intent_is_valid(&i) {
            Some(IntakeT::Invalid)
        } else if !pending_is_valid(&i) {
            Some(IntakeT::InvalidPending)
        } else {
            None
        };
        if let Some(t) = invalid {
            self.fire(t.spec(), subject);
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::InvalidArgument),
            );
            return;
        }
        if !self.registry.serves(agent, &i.master, Role::Master) {
            self.fire(IntakeT::UnknownAccount.spec(), subject);
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::UnknownAccount),
            );
            return;
        }
        if self.journal.is_down() {
            self.fire(IntakeT::JournalDown.spec(), subject);
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::JournalUnavailable),
            );
            return;
        }
        if self.slave_backlog_full(&i.master) {
            self.fire(IntakeT::SlaveBacklog.spec(), subject);
            self.metrics.backlog_rejections_total += 1;
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::BrokerBusy),
            );
            return;
        }
        if self.persisting_trades.contains(&i.trade_id) {
            self.fire(IntakeT::TradeBusy.spec(), subject);
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::BrokerBusy),
            );
            return;
        }
        let worker = self.router.worker_for(&i.trade_id);
        if !self.router.try_admit(worker) {
            if crate::mutants::active(crate::mutants::Mutant::FullQueueDrops) {
                return;
            }
            self.fire(RouterT::RejectFull.spec(), Subject::Worker(worker));
            self.metrics.router_rejections_total[worker as usize] += 1;
            self.journal_write(
                JournalWrite::RecordRejection {
                    intent_id: i.intent_id.clone(),
                    trade_id: i.trade_id.clone(),
                    worker,
                    reason: ErrorCode::BrokerBusy,
                },
                None,
            );
            self.ack_intent(
                agent.clone(),
                i.intent_id,
                i.trade_id,
                Some(ErrorCode::BrokerBusy),
            );
            return;
        }
        self.fire(RouterT::Enqueue.spec(), Subject::Worker(worker));
        self.fire(IntakeT::Admit.spec(), subject);
        let deliveries = self.plan_deliveries(&i);
        let write = JournalWrite::AcceptIntent {
            intent: i.clone(),
            deliveries: deliveries.clone(),
        };
        self.journal_write(write, Some(PendingOp::Accept(i.intent_id.clone())));
        if crate::mutants::active(crate::mutants::Mutant::AckBeforeDurable) {
            self.ack_intent(agent.clone(), i.intent_id.clone(), i.trade_id.clone(), None);
        }
        self.persisting_trades.insert(i.trade_id.clone());
        self.intents.insert(
            i.intent_id.clone(),
            IntentEntry {
                worker,
                reply_to: agent.clone(),
                state: IntentState::Persisting {
                    intent: Box::new(i),
                    deliveries,
                    attempts: 1,
                    admitted_at: now,
                    retry_at: None,
                },
            },
        );
    }

    /// Whether an agent serving one of `master`'s slaves has a full backlog of deliveries
    /// waiting for its send window (T15).
    fn slave_backlog_full(&self, master: &AccountId) -> bool {
        let Some(subs) = self.subs.get(master) else {
            return false;
        };
        let bound = AGENT_BACKLOG_FACTOR * self.cfg.delivery.agent_window as usize;
        subs.iter().any(|s| {
            self.registry
                .account_agent
                .get(&s.slave)
                .and_then(|r| self.agent_queues.get(&r.agent))
                .is_some_and(|q| q.len() >= bound)
        })
    }

    /// One delivery record per subscribed slave, as of now.
    fn plan_deliveries(&self, i: &TradeIntent) -> Vec<DeliveryRecord> {
        let Some(subs) = self.subs.get(&i.master) else {
            return Vec::new();
        };
        subs.iter()
            .map(|s| {
                let planned = crate::policy::plan::plan(s, i);
                let (status, reason) = match &planned {
                    Ok(_) => (DeliveryStatus::Inflight, None),
                    Err(r) => (DeliveryStatus::Failed, Some(r.error_code())),
                };
                let (kind, symbol, side, volume, stop_loss, take_profit, terms) = match planned {
                    Ok(p) => (
                        p.kind,
                        p.symbol,
                        p.side,
                        p.volume,
                        p.stop_loss,
                        p.take_profit,
                        p.terms,
                    ),
                    // Journaled for the record only: a FAILED delivery is never sent.
                    Err(_) => (
                        i.kind,
                        i.symbol.clone(),
                        i.side,
                        0.0,
                        i.stop_loss,
                        i.take_profit,
                        None,
                    ),
                };
                DeliveryRecord {
                    command_id: CommandId::for_delivery(&i.intent_id, &s.slave),
                    intent_id: i.intent_id.clone(),
                    trade_id: i.trade_id.clone(),
                    master: i.master.clone(),
                    slave: s.slave.clone(),
                    kind,
                    symbol,
                    side,
                    volume,
                    price: i.price,
                    stop_loss,
                    take_profit,
                    master_seq: i.master_seq,
                    status,
                    stage: AckStage::CoreAccepted,
                    attempts: 0,
                    slave_ticket: None,
                    reason,
                    terms,
                    intent_facts: None,
                    master_volume_before: if i.kind == IntentKind::PartialClose {
                        i.master_volume_before
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    }

    fn release_admission(&mut self, now: Instant, worker: u32, admitted_at: Instant, ok: bool) {
        self.router.release(worker);
        self.fire(RouterT::Dequeue.spec(), Subject::Worker(worker));
        if ok {
            self.metrics.router_dispatch_total[worker as usize] += 1;
            self.metrics.router_dispatch_duration_ns_sum += now.saturating_since(admitted_at).0;
            self.metrics.router_dispatch_duration_count += 1;
        }
    }

    pub(crate) fn on_accept_result(&mut self, now: Instant, id: IntentId, result: JournalResult) {
        let Some(entry) = self.intents.get_mut(&id) else {
            return;
        };
        let IntentState::Persisting {
            attempts, retry_at, ..
        } = &mut entry.state
        else {
            return;
        };
        match result {
            JournalResult::Failed { retryable }
                if retryable && *attempts < self.cfg.delivery.max_retries =>
            {
                let at = now + backoff(self.cfg.delivery.retry_backoff_ms.into(), *attempts);
                let old = retry_at.replace(at);
                self.metrics.journal_failures_total += 1;
                self.fire(IntakeT::PersistRetry.spec(), self.intent_subject(&id));
                self.rearm(TimerKey::IntentRetry(id), old, at);
            }
            JournalResult::Failed { .. } => {
                self.metrics.journal_failures_total += 1;
                let Some(entry) = self.intents.remove(&id) else {
                    return;
                };
                let IntentState::Persisting {
                    intent,
                    admitted_at,
                    retry_at,
                    ..
                } = entry.state
                else {
                    return;
                };
                self.disarm(TimerKey::IntentRetry(id.clone()), retry_at);
                self.persisting_trades.remove(&intent.trade_id);
                self.fire(IntakeT::PersistGaveUp.spec(), self.intent_subject(&id));
                self.release_admission(now, entry.worker, admitted_at, false);
                self.ack_intent(
                    entry.reply_to,
                    id.clone(),
                    intent.trade_id,
                    Some(ErrorCode::JournalUnavailable),
                );
                self.count_failed(ErrorCode::JournalUnavailable);
                self.log(CoreLog::DeliveryFailed {
                    intent_id: id,
                    command_id: None,
                    reason: ErrorCode::JournalUnavailable,
                });
                self.journal_gave_up(now);
            }
            JournalResult::Ok(reply) => {
                let Some(entry) = self.intents.get_mut(&id) else {
                    return;
                };
                let state = std::mem::replace(&mut entry.state, IntentState::Accepted { open: 0 });
                let IntentState::Persisting {
                    intent,
                    deliveries,
                    admitted_at,
                    retry_at,
                    ..
                } = state
                else {
                    return;
                };
                // Only for journal rows read back: the facts their terms are rebuilt from.
                let facts = matches!(reply, JournalReply::IntentExisted { .. })
                    .then(|| super::journal::IntentFacts::of(&intent));
                // The kept intent's ids are the entry's: moved, not cloned.
                let (worker, trade, master) = (entry.worker, intent.trade_id, intent.master);
                if retry_at.is_some() {
                    self.disarm(TimerKey::IntentRetry(id.clone()), retry_at);
                }
                self.persisting_trades.remove(&trade);
                self.metrics.intents_accepted_total += 1;
                let reply_to = self.registry.agent_for(&master).unwrap_or_else(|| {
                    self.intents
                        .get(&id)
                        .map(|e| e.reply_to.clone())
                        .unwrap_or_else(|| AgentId::new(""))
                });
                let (records, fresh) = match reply {
                    JournalReply::Done => {
                        self.fire(IntakeT::Persisted.spec(), self.intent_subject(&id));
                        (deliveries, true)
                    }
                    JournalReply::IntentExisted { mut unfinished } => {
                        self.fire(IntakeT::Existed.spec(), self.intent_subject(&id));
                        // The journal holds this intent's facts; the same intent id is the
                        // same intent, so the one in hand carries them (T28 reads them).
                        for r in unfinished.iter_mut().filter(|r| r.intent_facts.is_none()) {
                            r.intent_facts = facts.clone().map(Box::new);
                        }
                        // Final rows are not returned, and this plan may not be the one the
                        // journal holds (an earlier life planned under other subscriptions):
                        // a skip is not remembered from it, so the trade's later intents end
                        // NO_POSITION (T19), never with a reason the journal does not hold.
                        (unfinished, false)
                    }
                };
                self.release_admission(now, worker, admitted_at, true);
                self.ack_intent(reply_to, id.clone(), trade, None);
                let mut open = 0;
                for rec in records {
                    if rec.status == DeliveryStatus::Failed {
                        self.failed_at_intake(rec);
                    } else if rec.status == DeliveryStatus::Inflight
                        && !self.by_command.contains_key(&rec.command_id)
                    {
                        open += 1;
                        self.create_delivery(now, rec, fresh);
                    }
                }
                self.count_open(&id, |o| *o += open);
            }
        }
    }

    pub(crate) fn on_intent_retry(&mut self, _now: Instant, id: IntentId) {
        let Some(entry) = self.intents.get_mut(&id) else {
            return;
        };
        let IntentState::Persisting {
            intent,
            deliveries,
            attempts,
            retry_at,
            ..
        } = &mut entry.state
        else {
            return;
        };
        *retry_at = None;
        *attempts += 1;
        let write = JournalWrite::AcceptIntent {
            intent: intent.as_ref().clone(),
            deliveries: deliveries.clone(),
        };
        self.fire(IntakeT::RetryWrite.spec(), self.intent_subject(&id));
        self.journal_write(write, Some(PendingOp::Accept(id)));
    }

    /// A delivery of `id` reached a durable final state.
    pub(crate) fn intent_delivery_finished(&mut self, id: &IntentId) {
        self.count_open(id, |o| *o = o.saturating_sub(1));
    }

    /// Updates an accepted intent's count of unfinished deliveries; completes it at zero.
    fn count_open(&mut self, id: &IntentId, update: impl FnOnce(&mut u32)) {
        let done = match self.intents.get_mut(id).map(|e| &mut e.state) {
            Some(IntentState::Accepted { open }) => {
                update(open);
                *open == 0
            }
            _ => false,
        };
        if !done {
            return;
        }
        self.intents.remove(id);
        self.fire(IntakeT::Completed.spec(), self.intent_subject(id));
        let cap = if self.cfg.recent_intents == 0 {
            DEFAULT_RECENT
        } else {
            self.cfg.recent_intents
        };
        if self.recent_set.insert(id.clone()) {
            self.recent.push_back(id.clone());
        }
        while self.recent.len() > cap {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    /// Registers intents for deliveries rebuilt from the journal (recovery), so retries of
    /// them are re-acked and completion is tracked.
    pub(crate) fn register_recovered_intent(&mut self, rec: &DeliveryRecord) {
        let worker = self.router.worker_for(&rec.trade_id);
        let entry = self
            .intents
            .entry(rec.intent_id.clone())
            .or_insert_with(|| IntentEntry {
                worker,
                reply_to: AgentId::new(""),
                state: IntentState::Accepted { open: 0 },
            });
        if let IntentState::Accepted { open } = &mut entry.state {
            *open += 1;
        }
    }
}
