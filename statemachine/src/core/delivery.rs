//! One (intent, slave) delivery, from CORE_ACCEPTED to a durable EA_CONFIRMED or FAILED.
//!
//! Deliveries of one trade to one slave form a chain in master order; only the chain's head is
//! ever sent, and the next one starts only after the head's final state is journaled — so a
//! slave sees open before modify before close, and a modify always knows the slave ticket the
//! open produced. A delivery not yet in the agent's ledger is retried on `ack_timeout_ms` with
//! exponential backoff and FAILED after `max_retries`; once the agent has it (AGENT_BUFFERED,
//! PIPE_DELIVERED) only the reconciler re-sends it, because the agent and the EA own it now
//! and re-sending is harmless (both dedupe by `command_id`). Deliveries of an offline agent
//! wait without spending attempts. This module must never send two deliveries of one chain at
//! once, never move a stage backwards, and never drop a final state before it is durable.

use super::journal::{DeliveryRecord, DeliveryStatus, JournalResult, JournalWrite};
use super::{Core, CoreLog, PendingOp, TimerKey};
use crate::config::Subscription;
use crate::ids::{AccountId, AgentId, CommandId, FastMap, IntentId, TradeId};
use crate::msg::{
    AckResult, AckStage, BrokerStatus, CloseFraction, Command, CommandAck, CommandBody,
    CoreToAgent, ErrorCode, ExecutionResult, IntentKind, TicketEffect,
};
use crate::spec::{MachineSpec, Subject};
use crate::time::{backoff, Duration, Instant};
use crate::transitions;
use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

transitions! {
    /// Delivery transitions.
    pub enum DeliveryT ("core.delivery") {
        SendHead = "T01": "New | Blocked",
            "becomes head of its (slave, trade) chain; slave's agent online" => "Inflight(CORE_ACCEPTED)";
            "Command to the slave's agent (attempt + 1); ack timer",
        ParkHead = "T02": "New | Blocked",
            "becomes head of its chain; slave's agent offline or unknown" => "Parked";
            "nothing: waits for the agent",
        Block = "T03": "New",
            "an earlier delivery of the same (slave, trade) is unfinished" => "Blocked";
            "nothing: waits for its turn",
        Unpark = "T04": "Parked",
            "slave's agent comes online" => "Inflight(CORE_ACCEPTED)";
            "Command re-sent (attempt + 1); ack timer",
        Progress = "T05": "Inflight(s) | Backoff | Queued",
            "CommandAck{OK} with stage s' > s, s' < EA_CONFIRMED" => "Inflight(s')";
            "UpdateStage write (best effort) if journal_stage_acks = 1; timer: reconcile_interval_ms",
        Stale = "T06": "any",
            "CommandAck or ExecutionResult that does not advance the delivery (duplicate, stale, PENDING)" => "unchanged";
            "nothing (counted)",
        Confirmed = "T07": "Blocked | Parked | Inflight | Backoff | Cancelling",
            "ExecutionResult{FILLED}" => "Finalizing(ACKED)";
            "FinishDelivery{acked, EA_CONFIRMED, slave_ticket}",
        BrokerRejected = "T08": "Blocked | Parked | Inflight | Backoff | Cancelling",
            "ExecutionResult{REJECTED}" => "Finalizing(FAILED)";
            "FinishDelivery{failed, BROKER_REJECTED}; log core_delivery_failed",
        Refused = "T09": "Inflight | Backoff | Cancelling",
            "CommandAck{FAILED} with a non-retryable error" => "Finalizing(FAILED)";
            "FinishDelivery{failed, that error}; log core_delivery_failed",
        Timeout = "T10": "Inflight(CORE_ACCEPTED)",
            "ack timer, attempts < max_retries" => "Backoff";
            "RecordRetry write; retry_total{stage,result=timeout}++; timer: retry_backoff_ms · 2^(attempts-1)",
        RetryableFailure = "T11": "Inflight",
            "CommandAck{FAILED} retryable (PIPE_UNAVAILABLE; BROKER_BUSY from a compat agent or past CORE_ACCEPTED — a full agent is T40), attempts < max_retries" => "Backoff";
            "RecordRetry write; retry_total{stage,result=failed}++; backoff timer",
        GiveUp = "T12": "Inflight",
            "ack timer or retryable failure with attempts = max_retries" => "Cancelling";
            "Cancel(command) to the slave's agent (the slave EA alone knows whether it executed it); timer: ack_timeout_ms",
        Retry = "T13": "Backoff",
            "backoff timer; slave's agent online" => "Inflight(CORE_ACCEPTED)";
            "Command re-sent (same command_id, attempt + 1); ack timer",
        RetryParked = "T14": "Backoff",
            "backoff timer; slave's agent offline" => "Parked";
            "nothing: waits for the agent",
        Reconcile = "T15": "Inflight(AGENT_BUFFERED | PIPE_DELIVERED)",
            "reconcile timer (no ExecutionResult within reconcile_interval_ms)" => "Inflight(same stage)";
            "Command re-sent (same command_id; the agent and EA dedupe); reconcile_resends++",
        Park = "T16": "Inflight | Queued | Backoff | Cancelling",
            "slave's agent goes offline" => "Parked";
            "timers cancelled; attempts kept",
        Done = "T17": "Finalizing(x)",
            "FinishDelivery answered Ok" => "Done(x)";
            "forgotten; ticket correlation updated; DeliveryReport to the master's agent; next delivery of the chain becomes head",
        FinishRetry = "T18": "Finalizing",
            "FinishDelivery answered Failed" => "Finalizing (backing off)";
            "timer: retry_backoff_ms · 2^(n-1); final states are retried until durable, never dropped",
        NoPosition = "T19": "New | Blocked",
            "becomes head; MODIFY / PARTIAL_CLOSE / CLOSE but the slave holds no ticket for the trade" => "Finalizing(FAILED)";
            "FinishDelivery{failed, NO_POSITION}; log core_delivery_failed",
        NotCopied = "T20": "New",
            "planned at intake; the subscription's copy policy does not copy it (SYMBOL_NOT_MAPPED, a filter, VOLUME_BELOW_MIN, …: SPEC.md §5.2)" => "Done(FAILED)";
            "journaled FAILED with the intent and the policy's reason; copy_skipped_total{reason}++; log core_delivery_failed; DeliveryReport",
        Unknown = "T21": "Done | never existed",
            "CommandAck or ExecutionResult for a command not in memory" => "unchanged";
            "nothing (late_or_unknown counted)",
        FinishRewrite = "T22": "Finalizing (backing off)",
            "retry timer" => "Finalizing";
            "FinishDelivery written again",
        CancelConfirmed = "T23": "Cancelling | Blocked | Parked | Inflight | Backoff",
            "ExecutionResult{CANCELLED}: the slave EA durably refused the command" => "Finalizing(FAILED)";
            "FinishDelivery{failed, MAX_RETRIES}; log core_delivery_failed",
        Expired = "T25": "New | Blocked | Parked | Queued",
            "becomes head, its agent comes back, or its window place comes (T39), for an OPEN never sent (planned by this core life, no attempt yet) planned longer ago than its subscription's catchup/max_age_ms" => "Finalizing(FAILED)";
            "FinishDelivery{failed, EXPIRED}; copy_skipped_total{reason=EXPIRED}++; log core_delivery_failed — a modify, partial close or close is never expired",
        OpenNotCopied = "T26": "New | Blocked",
            "becomes head; MODIFY / PARTIAL_CLOSE / CLOSE of a trade whose OPEN was not copied to the slave for a copy-policy reason: by this core life (T20, T25), by the slave EA's copy terms (T27), or as the journal holds it at recovery (T37)" => "Finalizing(FAILED)";
            "FinishDelivery{failed, the open's reason}; copy_skipped_total{reason}++; log core_delivery_failed — never sent, so no NO_POSITION noise at the slave",
        CancelResend = "T24": "Cancelling",
            "cancel timer; slave's agent online" => "Cancelling";
            "Cancel(command) re-sent; timer: w/2 + spread(command_id, n) with w = ack_timeout_ms · 2^(n-1) (capped) — a deterministic spread in [w/2, w], so the cancels of deliveries that gave up together do not reach a busy slave EA as one burst, again and again (a cancel is never given up: the outcome must be known)",
        SlaveRefused = "T27": "Blocked | Parked | Inflight | Backoff | Cancelling",
            "ExecutionResult{REJECTED, reason} with a copy-policy reason: the slave EA's copy terms refused the open (PRICE_DEVIATION, EXPIRED for a catch-up beyond the guard, MAX_OPEN_POSITIONS, MAX_TOTAL_LOTS, INSUFFICIENT_MARGIN, VOLUME_BELOW_MIN, NO_STOP_LOSS, ACCOUNT_FACTS_UNKNOWN)" => "Finalizing(FAILED)";
            "FinishDelivery{failed, that reason}; copy_skipped_total{reason}++; log core_delivery_failed; an OPEN or placement is remembered as skipped, so the trade's later intents at that slave end with this reason, never sent (T26, T30)",
        TermsRebuilt = "T28": "New | Blocked | Parked",
            "becomes head, or its agent comes back: an OPEN read back from the journal (recovery, IntentExisted), whose copy terms are not journaled" => "unchanged (then T01/T02/T04)";
            "terms rebuilt from the subscription in force and the master's facts journaled with its intent (balance/equity, symbol: the same terms as before the crash unless the subscription changed; rows journaled before the facts were read as not reported, so such a ratio-sized open is refused ACCOUNT_FACTS_UNKNOWN by the slave EA unless it executed it before); no subscription: terms the slave refuses that way — never failed at the core, since it may already have executed",
        PendingNoTicket = "T29": "New | Blocked",
            "becomes head; PENDING_MODIFY / PENDING_CANCEL / PENDING_TRIGGER but the slave holds no ticket for the trade (its placement failed, or was cancelled)" => "Finalizing(FAILED)";
            "FinishDelivery{failed, NO_POSITION}; log core_delivery_failed — never sent",
        PendingNotCopied = "T30": "New | Blocked",
            "becomes head; PENDING_MODIFY / PENDING_CANCEL / PENDING_TRIGGER of a trade whose placement was not copied to the slave for a copy-policy reason (T20, T27 after the EA's T32, T37)" => "Finalizing(FAILED)";
            "FinishDelivery{failed, the placement's reason}; copy_skipped_total{reason}++; log core_delivery_failed — never sent",
        PendingCorrelated = "T31": "Finalizing(ACKED) of a PLACE_LIMIT / PLACE_STOP / PENDING_TRIGGER / PENDING_CANCEL",
            "FinishDelivery answered Ok" => "Done(ACKED)";
            "ticket correlation (as T17 for the rest): a placement records the slave's pending ticket; a trigger replaces it by the position's ticket (the same one when the slave's pending had filled on its own), so the trade's later modifies and closes reach the position; a cancel forgets it — open_position changed in the same FinishDelivery transaction",
        PendingTermsRebuilt = "T32": "New | Blocked | Parked",
            "becomes head, or its agent comes back: a PLACE_LIMIT / PLACE_STOP / PENDING_TRIGGER read back from the journal (recovery, IntentExisted), whose copy terms are not journaled" => "unchanged (then T01/T02/T04)";
            "terms rebuilt as T28 does for an open, with the master's journaled facts (a trigger's: the deviation guard of the subscription in force, none without one) — never failed at the core, since it may already have executed",
        SplitIncomplete = "T33": "Blocked | Parked | Inflight | Backoff | Cancelling",
            "ExecutionResult{REJECTED, SPLIT_INCOMPLETE}: a close of a split position closed some of its legs, not all (a leg's close rejected by the broker, or in doubt after a slave crash and never placed)" => "Finalizing(FAILED)";
            "FinishDelivery{failed, SPLIT_INCOMPLETE}; split_incomplete_total++; log core_delivery_failed — the ticket correlation stays: the slave still holds the position (its remaining legs)",
        SplitPartlyFilled = "T34": "Blocked | Parked | Inflight | Backoff | Cancelling",
            "ExecutionResult{FILLED, SPLIT_INCOMPLETE}: a split open, modify or partial close executed on some legs only (the result names the position's ticket and what it holds)" => "Finalizing(ACKED)";
            "FinishDelivery{acked, EA_CONFIRMED, slave_ticket} as T07; split_incomplete_total++ — what filled is the position, so the trade's later intents follow it",
        CatchUpSend = "T36": "Parked",
            "slave's agent comes online, for an OPEN parked before its first send in this core life (it became head while its slave's agent was offline or unknown, e.g. after a core restart)" => "Inflight(CORE_ACCEPTED)";
            "Command sent as a catch-up (ExecuteOrder.catch_up = true, attempt + 1; every later re-send of it carries the same flag); ack timer — the slave EA answers a price beyond the deviation guard EXPIRED (ea.slave.T47)",
        RecoveredSkip = "T37": "(durable)",
            "recover(): the journal holds the OPEN or placement of a trade still live (an open slave ticket or an unfinished delivery of the trade) FAILED at a slave with a copy-policy reason (T20, T25, T27 of any life)" => "(remembered as skipped)";
            "nothing; the trade's later intents at that slave end FAILED with that reason (T26, T30), as in the life that decided it — never sent, never NO_POSITION",
        WindowFull = "T38": "New | Blocked | Parked | Backoff",
            "would be sent at CORE_ACCEPTED (T01, T04, T13, T36) while agent_window commands of the slave's agent await AGENT_BUFFERED, or while that agent is full (T40) (not for a compat agent)" => "Queued";
            "nothing sent, no attempt spent, no ack timer: waits for a place in the agent's window",
        WindowSend = "T39": "Queued",
            "a place in its agent's window frees up (one of the agent's commands reached AGENT_BUFFERED, failed, timed out, finished or was parked); queued heads go in delivery order. A full agent (T40) gets one command, its probe, each time it shows life (an ExecutionResult of one of its commands, or its heartbeat), and all again once one of its commands reaches AGENT_BUFFERED" => "Inflight(CORE_ACCEPTED)";
            "Command to the slave's agent (attempt + 1); ack timer",
        AgentFull = "T40": "Inflight(CORE_ACCEPTED)",
            "CommandAck{AGENT_BUFFERED, FAILED, BROKER_BUSY} from a non-compat agent: its table of active commands is full (agent.delivery.T17), it never took the command" => "Queued";
            "the attempt is given back (none spent: a busy agent is flow control, not a failure — it never ends a copy MAX_RETRIES); no ack timer; retry_total{stage=CORE_ACCEPTED,result=agent_full}++; the agent is full: nothing more is sent to it until it shows it has room (T39)",
    }
}

/// Where a full agent (T40) stands: whether a command may go to it as its probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// Nothing goes to it until it shows life (an ExecutionResult, its heartbeat).
    Waiting,
    /// It showed life: the next pump sends it one command (T39).
    Due,
    /// This delivery went as its probe: AGENT_BUFFERED of it opens the agent again.
    Sent(u64),
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "core.delivery",
    summary: "One slave copy of an intent through the ack stages CORE_ACCEPTED → AGENT_BUFFERED → PIPE_DELIVERED → EA_CONFIRMED, with ack timeout, backoff, max_retries, the reconciler and per-trade order (seed 001).",
    states: &[
        ("New", "just planned; journaled with its intent"),
        ("Blocked", "an earlier delivery of the same (slave, trade) is not finished"),
        ("Parked", "head of its chain, but the slave's agent is offline; no attempt is spent"),
        ("Queued", "head of its chain, ready to go at CORE_ACCEPTED, but agent_window commands of its agent await AGENT_BUFFERED, or the agent said it is full (T40); no attempt is spent, no timer runs"),
        ("Inflight(stage)", "sent; stage is the highest the agent reported"),
        ("Backoff", "an attempt failed; waiting to re-send"),
        ("Cancelling", "max_retries spent; waiting for the slave EA to confirm it will never execute the command (or to report that it did)"),
        ("Finalizing(ACKED|FAILED)", "final state decided, FinishDelivery not yet durable"),
        ("Done(ACKED|FAILED)", "final state durable; forgotten by the machine"),
    ],
    invariants: &[
        "At most one delivery per (slave, trade) is Inflight/Backoff/Finalizing: the chain's head.",
        "A delivery's stage never moves backwards.",
        "A delivery is Done only after its FinishDelivery write was reported durable.",
        "Every delivery ends ACKED or FAILED with a reason; FAILED is logged as core_delivery_failed.",
        "A delivery that reached AGENT_BUFFERED is never FAILED by a timeout; only explicit failures end it.",
        "Per agent (not in compat mode), at most agent_window deliveries are Inflight(CORE_ACCEPTED) (a live lowering of the key is honoured as they drain); the others ready to go wait Queued, in delivery order. While the agent is full (T40), nothing more goes to it but one probe at a time.",
        "An agent's refusal for a full table (BROKER_BUSY at AGENT_BUFFERED) never spends an attempt.",
        "FAILED(MAX_RETRIES) is decided only after the slave EA answered CANCELLED: a command the core gave up on can never execute later.",
    ],
    transitions: DeliveryT::TABLE,
};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum DState {
    Blocked,
    Parked,
    /// Ready to go, waiting for a place in its agent's send window (T38).
    Queued,
    Inflight(AckStage),
    Backoff,
    Cancelling {
        sends: u32,
    },
    Finalizing {
        status: DeliveryStatus,
        reason: Option<ErrorCode>,
        ticket: Option<i64>,
        writes: u32,
    },
}

pub(crate) struct Delivery {
    pub rec: DeliveryRecord,
    pub state: DState,
    pub stage: AckStage,
    pub deadline: Option<Instant>,
    /// The previous and next delivery of its (slave, trade) chain.
    pub prev: Option<u64>,
    pub next: Option<u64>,
    /// When this core planned (or, after a restart, recovered) it: the clock of catch-up
    /// expiry. A recovered delivery restarts its age, so a restart never expires an open early.
    pub planned_at: Instant,
    /// Certainly never sent to the slave's agent (in this life or an earlier one): only such
    /// an open may expire — one that was sent may already have executed.
    pub never_sent: bool,
    /// Accepted in this core's life: its stage latencies are measured from `planned_at`.
    pub timed: bool,
    /// Sent at least once in this core's life.
    pub sent: bool,
    /// An OPEN parked before its first send in this life: it goes out as a catch-up (T36),
    /// and keeps the flag on every re-send, so the agent and the EA see one command.
    pub catch_up: bool,
    /// The agent whose send window it holds a place in (sent, not yet AGENT_BUFFERED).
    pub window: Option<AgentId>,
    /// The agent whose queue it waits in (Queued).
    pub queued_for: Option<AgentId>,
}

/// The first and last delivery of one (slave, trade) chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub head: u64,
    pub tail: u64,
}

/// A read-only snapshot of one delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryView {
    pub command_id: CommandId,
    pub intent_id: IntentId,
    pub trade_id: TradeId,
    pub slave: AccountId,
    pub kind: IntentKind,
    /// `Blocked`, `Parked`, `Inflight`, `Backoff` or `Finalizing`.
    pub state: &'static str,
    pub stage: AckStage,
    pub attempts: u32,
}

impl Delivery {
    pub(crate) fn view(&self) -> DeliveryView {
        DeliveryView {
            command_id: self.rec.command_id.clone(),
            intent_id: self.rec.intent_id.clone(),
            trade_id: self.rec.trade_id.clone(),
            slave: self.rec.slave.clone(),
            kind: self.rec.kind,
            state: match self.state {
                DState::Blocked => "Blocked",
                DState::Parked => "Parked",
                DState::Queued => "Queued",
                DState::Inflight(_) => "Inflight",
                DState::Backoff => "Backoff",
                DState::Cancelling { .. } => "Cancelling",
                DState::Finalizing { .. } => "Finalizing",
            },
            stage: self.stage,
            attempts: self.rec.attempts,
        }
    }
}

impl Core {
    fn subject(&self, key: u64) -> Subject {
        if !self.trace {
            return Subject::None;
        }
        self.deliveries
            .get(&key)
            .map(|d| Subject::Command(d.rec.command_id.clone()))
            .unwrap_or(Subject::None)
    }

    /// Adds a journaled, unfinished delivery to memory and its chain.
    /// `fresh`: planned by this intake just now, so certainly never sent in any life of the
    /// core — the only deliveries catch-up expiry may drop.
    pub(crate) fn create_delivery(&mut self, now: Instant, rec: DeliveryRecord, fresh: bool) {
        let key = self.next_delivery;
        self.next_delivery += 1;
        let chain_key = (rec.slave.clone(), rec.trade_id.clone());
        self.by_command.insert(rec.command_id.clone(), key);
        let stage = rec.stage;
        let prev = match self.chains.entry(chain_key) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().tail, key)),
            Entry::Vacant(e) => {
                e.insert(Chain {
                    head: key,
                    tail: key,
                });
                None
            }
        };
        if let Some(p) = prev.and_then(|p| self.deliveries.get_mut(&p)) {
            p.next = Some(key);
        }
        self.deliveries.insert(
            key,
            Delivery {
                rec,
                state: DState::Blocked,
                stage,
                deadline: None,
                prev,
                next: None,
                planned_at: now,
                never_sent: fresh,
                timed: fresh,
                sent: false,
                catch_up: false,
                window: None,
                queued_for: None,
            },
        );
        if prev.is_none() {
            self.activate(now, key);
        } else {
            self.fire(DeliveryT::Block.spec(), self.subject(key));
        }
    }

    /// Rebuilds deliveries from journal rows (recovery): sorted per chain in master order.
    pub(crate) fn adopt_deliveries(&mut self, records: Vec<DeliveryRecord>, now: Instant) {
        for rec in records {
            if rec.status != DeliveryStatus::Inflight
                || self.by_command.contains_key(&rec.command_id)
            {
                continue;
            }
            self.register_recovered_intent(&rec);
            self.create_delivery(now, rec, false);
        }
    }

    /// A delivery planned FAILED at intake (already durable with its intent).
    pub(crate) fn failed_at_intake(&mut self, rec: DeliveryRecord) {
        let reason = rec.reason.unwrap_or(ErrorCode::SymbolNotMapped);
        self.fire(
            DeliveryT::NotCopied.spec(),
            Subject::Command(rec.command_id.clone()),
        );
        self.count_failed(reason);
        self.count_skip(reason);
        if rec.kind.starts_trade() {
            self.remember_skipped_open(&rec, reason);
        }
        self.log(CoreLog::DeliveryFailed {
            intent_id: rec.intent_id.clone(),
            command_id: Some(rec.command_id.clone()),
            reason,
        });
        self.report_to_master(
            &rec,
            AckStage::CoreAccepted,
            AckResult::Failed,
            Some(reason),
        );
    }

    /// `copy_skipped_total{reason}`, for a reason of the copy policy.
    /// One delivery ended FAILED with `reason` (`core_delivery_failed`).
    pub(crate) fn count_failed(&mut self, reason: ErrorCode) {
        self.metrics.delivery_failed_total += 1;
        *self
            .metrics
            .delivery_failed_by_reason
            .entry(reason.name().trim_start_matches("ERROR_CODE_"))
            .or_default() += 1;
    }

    fn count_skip(&mut self, reason: ErrorCode) {
        if let Some(r) = crate::policy::SkipReason::from_error_code(reason) {
            *self.metrics.copy_skipped_total.entry(r.name()).or_default() += 1;
        }
    }

    /// Opens and placements the journal holds FAILED by the copy policy, for trades still
    /// live (recovery, T37): the trade's later intents at that slave follow suit.
    pub(crate) fn adopt_skipped_opens(&mut self, records: Vec<DeliveryRecord>) {
        for rec in records {
            let reason = rec
                .reason
                .filter(|r| crate::policy::SkipReason::from_error_code(*r).is_some());
            let (Some(reason), true) = (reason, rec.kind.starts_trade()) else {
                continue;
            };
            if rec.status != DeliveryStatus::Failed
                || self
                    .tickets
                    .contains_key(&(rec.trade_id.clone(), rec.slave.clone()))
            {
                continue;
            }
            self.fire(
                DeliveryT::RecoveredSkip.spec(),
                Subject::Command(rec.command_id.clone()),
            );
            self.remember_skipped_open(&rec, reason);
        }
    }

    /// The open of (trade, slave) was not copied by policy: its later intents follow suit.
    fn remember_skipped_open(&mut self, rec: &DeliveryRecord, reason: ErrorCode) {
        const CAP: usize = 65_536;
        let pair = (rec.trade_id.clone(), rec.slave.clone());
        if self.skipped_opens.insert(pair.clone(), reason).is_none() {
            self.skipped_order.push_back(pair);
        }
        while self.skipped_order.len() > CAP {
            if let Some(old) = self.skipped_order.pop_front() {
                self.skipped_opens.remove(&old);
            }
        }
    }

    fn report_to_master(
        &mut self,
        rec: &DeliveryRecord,
        stage: AckStage,
        result: AckResult,
        error: Option<ErrorCode>,
    ) {
        if let Some(agent) = self.registry.agent_for(&rec.master) {
            self.send(
                agent,
                CoreToAgent::DeliveryReport(CommandAck {
                    command_id: rec.command_id.clone(),
                    trade_id: rec.trade_id.clone(),
                    slave: rec.slave.clone(),
                    stage,
                    result,
                    error,
                    attempt: rec.attempts,
                }),
            );
        }
    }

    /// The delivery just became head of its chain.
    fn activate(&mut self, now: Instant, key: u64) {
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        let pair = (d.rec.trade_id.clone(), d.rec.slave.clone());
        let pending = d.rec.kind.is_pending();
        if !d.rec.kind.starts_trade() && !self.tickets.contains_key(&pair) {
            if let Some(&reason) = self.skipped_opens.get(&pair) {
                // The open was a deliberate non-copy: follow it with the same reason.
                let t = if pending {
                    DeliveryT::PendingNotCopied
                } else {
                    DeliveryT::OpenNotCopied
                };
                self.fire(t.spec(), self.subject(key));
                self.count_skip(reason);
                self.finalize(now, key, DeliveryStatus::Failed, Some(reason), None);
                return;
            }
            let t = if pending {
                DeliveryT::PendingNoTicket
            } else {
                DeliveryT::NoPosition
            };
            self.fire(t.spec(), self.subject(key));
            self.finalize(
                now,
                key,
                DeliveryStatus::Failed,
                Some(ErrorCode::NoPosition),
                None,
            );
            return;
        }
        if self.expire_if_late(now, key) {
            return;
        }
        self.rebuild_lost_terms(key);
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        if self.registry.is_served(&d.rec.slave) {
            self.fire(DeliveryT::SendHead.spec(), self.subject(key));
            self.send_command(now, key);
        } else {
            self.fire(DeliveryT::ParkHead.spec(), self.subject(key));
            if let Some(d) = self.deliveries.get_mut(&key) {
                d.state = DState::Parked;
                // It could not go when it was ready: the slave catches up when it comes.
                if !d.sent && d.rec.kind == IntentKind::Open {
                    d.catch_up = true;
                }
            }
        }
    }

    /// Catch-up: an open that waited longer than its subscription allows is FAILED EXPIRED
    /// before it is sent; every other kind is always delivered (`policy::catchup`).
    fn expire_if_late(&mut self, now: Instant, key: u64) -> bool {
        let Some(d) = self.deliveries.get(&key) else {
            return false;
        };
        if !d.never_sent {
            return false;
        }
        let policy = self
            .subs
            .get(&d.rec.master)
            .and_then(|subs| subs.iter().find(|s| s.slave == d.rec.slave))
            .map(|s| s.policy.catch_up)
            .unwrap_or_default();
        let age_ms = now.saturating_since(d.planned_at).0 / 1_000_000;
        let Err(reason) = crate::policy::catchup::admit(policy, d.rec.kind, age_ms, true, true)
        else {
            return false;
        };
        let rec = d.rec.kind.starts_trade().then(|| d.rec.clone());
        self.fire(DeliveryT::Expired.spec(), self.subject(key));
        // Remembered before the delivery finishes: finishing it may make the trade's next
        // intent head of its chain, and that one must find the open's reason (T26).
        if let Some(rec) = rec {
            self.remember_skipped_open(&rec, reason.error_code());
        }
        self.fail_by_policy(now, key, reason);
        true
    }

    /// A delivery the copy policy does not make, after intake: FAILED with the policy reason
    /// and counted in `copy_skipped_total{reason}`.
    fn fail_by_policy(&mut self, now: Instant, key: u64, reason: crate::policy::SkipReason) {
        *self
            .metrics
            .copy_skipped_total
            .entry(reason.name())
            .or_default() += 1;
        self.finalize(
            now,
            key,
            DeliveryStatus::Failed,
            Some(reason.error_code()),
            None,
        );
    }

    /// An open read back from the journal has no copy terms (they are not journaled). It may
    /// have reached the slave before the crash, so it is never failed here: it is sent with
    /// terms rebuilt from the subscription in force and the master's facts journaled with its
    /// intent, so a ratio-sized open carries the master's balance/equity as it did before the
    /// crash (a row without them, journaled before they were, reads as "not reported": the
    /// slave EA refuses it `ACCOUNT_FACTS_UNKNOWN` unless it already executed it); with the
    /// subscription gone, with terms it refuses the same way rather than place the master's
    /// lots.
    fn rebuild_lost_terms(&mut self, key: u64) {
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        if !d.rec.kind.carries_terms() || d.rec.terms.is_some() {
            return;
        }
        let kind = d.rec.kind;
        let policy = self
            .subs
            .get(&d.rec.master)
            .and_then(|subs| subs.iter().find(|s| s.slave == d.rec.slave))
            .map(|s| &s.policy);
        let dropped = crate::mutants::active(crate::mutants::Mutant::RecoveryDropsFacts);
        let with_facts = |p| match (&d.rec.intent_facts, dropped) {
            (Some(f), false) => {
                crate::policy::terms::terms_with_facts(p, &f.master_symbol, &f.origin)
            }
            _ => crate::policy::terms::guard_terms(p),
        };
        let terms = match (kind, policy) {
            (IntentKind::PendingTrigger, Some(p)) => crate::policy::terms::trigger_terms(p),
            (IntentKind::PendingTrigger, None) => crate::msg::ExecTerms::default(),
            (IntentKind::Open, Some(p)) => with_facts(p),
            // A placement waits for its own price: no deviation guard; one ticket, no split.
            (_, Some(p)) => crate::msg::ExecTerms {
                max_deviation_points: 0,
                deviation_window_ms: 0,
                split_max_lots: 0.0,
                split_min_lots: 0.0,
                ..with_facts(p)
            },
            (_, None) => crate::policy::terms::unsubscribed_terms(),
        };
        let t = if kind == IntentKind::Open {
            DeliveryT::TermsRebuilt
        } else {
            DeliveryT::PendingTermsRebuilt
        };
        self.fire(t.spec(), self.subject(key));
        if let Some(d) = self.deliveries.get_mut(&key) {
            d.rec.terms = Some(terms);
        }
    }

    fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.delivery.reconcile_interval_ms.into())
    }

    fn set_deadline(&mut self, key: u64, at: Option<Instant>) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        let old = std::mem::replace(&mut d.deadline, at);
        match at {
            Some(at) => self.rearm(TimerKey::Delivery(key), old, at),
            None => self.disarm(TimerKey::Delivery(key), old),
        }
    }

    /// Builds the command for the slave as of now (ticket looked up at send time; an open
    /// has none yet). A partial close carries the master's fraction and the slave symbol's
    /// minimum and step from the subscription's `limits/*` (the same limits its open was
    /// sized with); the slave EA applies it to its own position, once (SPEC.md §5.2).
    fn build_command(
        tickets: &FastMap<(TradeId, AccountId), i64>,
        subs: &BTreeMap<AccountId, Vec<Subscription>>,
        d: &Delivery,
    ) -> Command {
        let ticket = || {
            tickets
                .get(&(d.rec.trade_id.clone(), d.rec.slave.clone()))
                .copied()
                .unwrap_or(0)
        };
        let body = match d.rec.kind {
            IntentKind::Open => CommandBody::Execute {
                symbol: d.rec.symbol.clone(),
                side: d.rec.side,
                volume: d.rec.volume,
                price: d.rec.price,
                stop_loss: d.rec.stop_loss,
                take_profit: d.rec.take_profit,
                terms: d.rec.terms.unwrap_or_default(),
                catch_up: d.catch_up,
            },
            IntentKind::Modify => CommandBody::Modify {
                slave_ticket: ticket(),
                stop_loss: d.rec.stop_loss,
                take_profit: d.rec.take_profit,
            },
            IntentKind::PartialClose => {
                let limits = subs
                    .get(&d.rec.master)
                    .and_then(|subs| subs.iter().find(|s| s.slave == d.rec.slave))
                    .map(|s| s.policy.limits)
                    .unwrap_or_default();
                CommandBody::ClosePart {
                    slave_ticket: ticket(),
                    fraction: CloseFraction {
                        master_closed: d.rec.volume,
                        master_volume_before: d.rec.master_volume_before,
                        slave_min: limits.min.lots(),
                        slave_step: limits.step.lots(),
                    },
                }
            }
            IntentKind::Close => CommandBody::Close {
                slave_ticket: ticket(),
                volume: 0.0,
            },
            IntentKind::PlaceLimit | IntentKind::PlaceStop => CommandBody::PlacePending {
                symbol: d.rec.symbol.clone(),
                side: d.rec.side,
                order_type: crate::policy::reverse::pending_type(d.rec.kind)
                    .unwrap_or(crate::msg::PendingType::Limit),
                volume: d.rec.volume,
                price: d.rec.price,
                stop_loss: d.rec.stop_loss,
                take_profit: d.rec.take_profit,
                terms: d.rec.terms.unwrap_or_default(),
            },
            IntentKind::PendingModify => CommandBody::ModifyPending {
                slave_ticket: ticket(),
                price: d.rec.price,
                stop_loss: d.rec.stop_loss,
                take_profit: d.rec.take_profit,
            },
            IntentKind::PendingCancel | IntentKind::PendingTrigger => CommandBody::ResolvePending {
                slave_ticket: ticket(),
                resolution: if d.rec.kind == IntentKind::PendingCancel {
                    crate::msg::PendingResolution::Cancel
                } else {
                    crate::msg::PendingResolution::Trigger
                },
                symbol: d.rec.symbol.clone(),
                side: d.rec.side,
                price: d.rec.price,
                stop_loss: d.rec.stop_loss,
                take_profit: d.rec.take_profit,
                terms: d.rec.terms.unwrap_or_default(),
            },
        };
        Command {
            command_id: d.rec.command_id.clone(),
            intent_id: d.rec.intent_id.clone(),
            trade_id: d.rec.trade_id.clone(),
            slave: d.rec.slave.clone(),
            body,
        }
    }

    /// Sends (or re-sends) the command, spending one attempt — unless it would go at
    /// CORE_ACCEPTED and its agent's window is full: then it waits, Queued (T38).
    fn send_command(&mut self, now: Instant, key: u64) {
        if !self.take_window_place(key) {
            self.fire(DeliveryT::WindowFull.spec(), self.subject(key));
            self.set_deadline(key, None);
            let Some(d) = self.deliveries.get_mut(&key) else {
                return;
            };
            d.state = DState::Queued;
            if let Some(route) = self.registry.account_agent.get(&d.rec.slave) {
                self.agent_queues
                    .entry(route.agent.clone())
                    .or_default()
                    .insert(key);
                d.queued_for = Some(route.agent.clone());
            }
            return;
        }
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        d.rec.attempts += 1;
        d.never_sent = false;
        d.sent = true;
        d.state = DState::Inflight(d.stage);
        let Some(route) = self.registry.account_agent.get(&d.rec.slave) else {
            return;
        };
        // Legacy (compat) agents never report AGENT_BUFFERED, so the first wait is the
        // reconciler's: a short ack timeout would burn their attempts for nothing.
        let ms = if d.stage >= AckStage::AgentBuffered || route.compat {
            self.cfg.delivery.reconcile_interval_ms
        } else {
            self.cfg.delivery.ack_timeout_ms
        };
        let at = now + Duration::from_millis(ms.into());
        let cmd = Self::build_command(&self.tickets, &self.subs, d);
        let old = d.deadline.replace(at);
        let agent = route.agent.clone();
        self.send(agent, CoreToAgent::Command(cmd));
        self.rearm(TimerKey::Delivery(key), old, at);
    }

    /// Whether the delivery may go now: it already holds a place in its agent's window, it
    /// needs none (already AGENT_BUFFERED, a compat agent that never reports that stage, no
    /// route), or a place is free — which it then takes.
    fn take_window_place(&mut self, key: u64) -> bool {
        let Some(d) = self.deliveries.get(&key) else {
            return true;
        };
        if d.window.is_some() || d.stage >= AckStage::AgentBuffered {
            return true;
        }
        let Some(route) = self.registry.account_agent.get(&d.rec.slave) else {
            return true;
        };
        if route.compat {
            return true;
        }
        let agent = route.agent.clone();
        match self.agents_full.get(&agent) {
            None => {}
            Some(Probe::Sent(k)) if *k == key => {}
            // A full agent takes nothing but its probe (T40).
            Some(_) => return false,
        }
        let limit = self.cfg.delivery.agent_window as usize;
        let window = self.agent_windows.entry(agent.clone()).or_default();
        if window.len() >= limit {
            return false;
        }
        window.insert(key);
        if let Some(d) = self.deliveries.get_mut(&key) {
            d.window = Some(agent);
        }
        true
    }

    /// The delivery no longer waits in its agent's queue (so the queue's length, which the
    /// intake bounds, counts exactly the Queued deliveries).
    fn leave_queue(&mut self, key: u64) {
        let Some(agent) = self
            .deliveries
            .get_mut(&key)
            .and_then(|d| d.queued_for.take())
        else {
            return;
        };
        if let Some(q) = self.agent_queues.get_mut(&agent) {
            q.remove(&key);
            if q.is_empty() {
                self.agent_queues.remove(&agent);
            }
        }
    }

    /// The delivery no longer awaits AGENT_BUFFERED from its agent: its place is free. (Nor
    /// does it wait in a queue any more: every way out of Queued passes here or T39.)
    fn leave_window(&mut self, key: u64) {
        self.leave_queue(key);
        let Some(agent) = self.deliveries.get_mut(&key).and_then(|d| d.window.take()) else {
            return;
        };
        if let Some(w) = self.agent_windows.get_mut(&agent) {
            w.remove(&key);
            if w.is_empty() {
                self.agent_windows.remove(&agent);
            }
        }
        if self.agent_queues.contains_key(&agent) {
            self.windows_freed.insert(agent);
        }
    }

    /// T39: queued heads of agents whose window has room go out, in delivery order.
    pub(crate) fn pump_windows(&mut self, now: Instant) {
        while let Some(agent) = self.windows_freed.pop_first() {
            let limit = self.cfg.delivery.agent_window as usize;
            loop {
                let used = self.agent_windows.get(&agent).map_or(0, |w| w.len());
                if used >= limit {
                    break;
                }
                let probe = match self.agents_full.get(&agent) {
                    None => false,
                    Some(Probe::Due) => true,
                    Some(Probe::Waiting | Probe::Sent(_)) => break,
                };
                let Some(key) = self
                    .agent_queues
                    .get_mut(&agent)
                    .and_then(|q| q.pop_first())
                else {
                    break;
                };
                let Some(d) = self.deliveries.get_mut(&key) else {
                    continue;
                };
                d.queued_for = None;
                // A delivery that left the queue (parked, finished) is simply dropped from it.
                if d.state != DState::Queued {
                    continue;
                }
                let route = self
                    .registry
                    .account_agent
                    .get(&d.rec.slave)
                    .map(|r| r.agent.clone());
                match route {
                    Some(a) if a == agent => {
                        if !self.expire_if_late(now, key) {
                            if probe {
                                self.agents_full.insert(agent.clone(), Probe::Sent(key));
                            }
                            self.fire(DeliveryT::WindowSend.spec(), self.subject(key));
                            self.send_command(now, key);
                        }
                    }
                    // Its slave moved to another agent: it waits in that one's queue.
                    Some(a) => {
                        d.queued_for = Some(a.clone());
                        self.agent_queues.entry(a.clone()).or_default().insert(key);
                        self.windows_freed.insert(a);
                    }
                    // Its slave has no agent any more (a re-hello left it out): it waits for
                    // one, Parked, like every head of an unserved slave (T16).
                    None => self.park(key),
                }
            }
            if self.agent_queues.get(&agent).is_some_and(|q| q.is_empty()) {
                self.agent_queues.remove(&agent);
            }
        }
    }

    /// T40: the agent refused the command because its table of active commands is full. It
    /// never took it, so no attempt is spent (a busy agent must not end copies MAX_RETRIES):
    /// the delivery waits Queued, first in its agent's queue by delivery order, and nothing
    /// more goes to the agent until it shows it has room.
    fn agent_full(&mut self, key: u64, agent: AgentId) {
        self.fire(DeliveryT::AgentFull.spec(), self.subject(key));
        *self
            .metrics
            .delivery_retry_total
            .entry((AckStage::CoreAccepted, "agent_full"))
            .or_insert(0) += 1;
        self.set_deadline(key, None);
        self.leave_window(key);
        // A refusal of a command sent before an outstanding probe says nothing the probe's
        // answer will not: that answer still decides.
        let probe_out = matches!(self.agents_full.get(&agent), Some(Probe::Sent(k)) if *k != key);
        if !probe_out {
            self.agents_full.insert(agent.clone(), Probe::Waiting);
        }
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        d.rec.attempts = d.rec.attempts.saturating_sub(1);
        d.state = DState::Queued;
        d.queued_for = Some(agent.clone());
        self.agent_queues.entry(agent).or_default().insert(key);
    }

    /// The delivery reached AGENT_BUFFERED: if it was its full agent's probe, the agent had
    /// room after all and takes its whole window again (T39).
    fn probe_buffered(&mut self, key: u64) {
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        let Some(route) = self.registry.account_agent.get(&d.rec.slave) else {
            return;
        };
        if self.agents_full.get(&route.agent) == Some(&Probe::Sent(key)) {
            let agent = route.agent.clone();
            self.agents_full.remove(&agent);
            self.windows_freed.insert(agent);
        }
    }

    /// A full agent showed life (an ExecutionResult — it finished a command — or its
    /// heartbeat): it may have room again, so one queued command goes as its probe (T39),
    /// unless the last probe is still out. With nothing queued for it, it is simply no longer
    /// full: its next command finds out.
    pub(crate) fn agent_showed_life(&mut self, agent: &AgentId) {
        let Some(&probe) = self.agents_full.get(agent) else {
            return;
        };
        if !self.agent_queues.contains_key(agent) {
            self.agents_full.remove(agent);
            return;
        }
        let out = match probe {
            Probe::Waiting => false,
            Probe::Due => true,
            Probe::Sent(k) => self.deliveries.get(&k).is_some_and(|d| {
                d.state == DState::Inflight(AckStage::CoreAccepted)
                    && d.window.as_ref() == Some(agent)
            }),
        };
        if !out {
            self.agents_full.insert(agent.clone(), Probe::Due);
            self.windows_freed.insert(agent.clone());
        }
    }

    /// Decides the final state; it becomes Done only when the journal says it is durable.
    fn finalize(
        &mut self,
        _now: Instant,
        key: u64,
        status: DeliveryStatus,
        reason: Option<ErrorCode>,
        ticket: Option<i64>,
    ) {
        self.set_deadline(key, None);
        if !crate::mutants::active(crate::mutants::Mutant::WindowLeaksOnFinish) {
            self.leave_window(key);
        }
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        d.state = DState::Finalizing {
            status,
            reason,
            ticket,
            writes: 1,
        };
        if status == DeliveryStatus::Acked {
            d.stage = AckStage::EaConfirmed;
        }
        let write = JournalWrite::FinishDelivery {
            command_id: d.rec.command_id.clone(),
            trade_id: d.rec.trade_id.clone(),
            slave: d.rec.slave.clone(),
            status,
            stage: d.stage,
            attempts: d.rec.attempts,
            slave_ticket: ticket,
            reason,
        };
        if status == DeliveryStatus::Failed {
            let (intent_id, command_id) = (d.rec.intent_id.clone(), d.rec.command_id.clone());
            let reason = reason.unwrap_or(ErrorCode::Internal);
            self.count_failed(reason);
            self.log(CoreLog::DeliveryFailed {
                intent_id,
                command_id: Some(command_id),
                reason,
            });
        }
        self.journal_write(write, Some(PendingOp::Finish(key)));
    }

    /// Asks the slave (through its agent) to refuse the command for good, or to report it.
    fn send_cancel(&mut self, now: Instant, key: u64) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        let sends = match &mut d.state {
            DState::Cancelling { sends } => {
                *sends += 1;
                *sends
            }
            _ => return,
        };
        // Spread over [w/2, w]: deliveries that gave up together (one outage) would otherwise
        // re-send their cancels in the same instant every time, and a slave EA with
        // `max_pending` unfinished commands answers all but the first few RETRY — the same
        // ones each round (echo-sim seed 4100, --trades 60: two cancels refused for minutes).
        // A pure function of the command id and send, so runs stay deterministic.
        let w = backoff(self.cfg.delivery.ack_timeout_ms.into(), sends);
        let salt = format!("{}#{sends}", d.rec.command_id);
        let spread = crate::ids::stable_hash(salt.as_bytes()) % (w.0 / 2 + 1);
        let at = now + Duration(w.0 / 2 + spread);
        if let Some(agent) = self.registry.agent_for(&d.rec.slave) {
            let cmd = Self::build_command(&self.tickets, &self.subs, d);
            self.send(agent, CoreToAgent::Cancel(cmd));
        }
        self.set_deadline(key, Some(at));
    }

    fn attempt_failed(&mut self, now: Instant, key: u64, timeout: bool) {
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        let (attempts, stage, cmd) = (d.rec.attempts, d.stage, d.rec.command_id.clone());
        if attempts >= self.cfg.delivery.max_retries {
            self.fire(DeliveryT::GiveUp.spec(), self.subject(key));
            if crate::mutants::active(crate::mutants::Mutant::GiveUpWithoutCancel) {
                let e = Some(ErrorCode::MaxRetries);
                self.finalize(now, key, DeliveryStatus::Failed, e, None);
                return;
            }
            self.leave_window(key);
            if let Some(d) = self.deliveries.get_mut(&key) {
                d.state = DState::Cancelling { sends: 0 };
            }
            self.send_cancel(now, key);
            return;
        }
        let (t, result, reason) = if timeout {
            (DeliveryT::Timeout, "timeout", ErrorCode::MaxRetries)
        } else {
            (
                DeliveryT::RetryableFailure,
                "failed",
                ErrorCode::PipeUnavailable,
            )
        };
        self.fire(t.spec(), self.subject(key));
        *self
            .metrics
            .delivery_retry_total
            .entry((stage, result))
            .or_insert(0) += 1;
        self.journal_write(
            JournalWrite::RecordRetry {
                command_id: cmd,
                attempt: attempts,
                stage,
                reason,
            },
            None,
        );
        self.leave_window(key);
        if let Some(d) = self.deliveries.get_mut(&key) {
            d.state = DState::Backoff;
        }
        let at = now + backoff(self.cfg.delivery.retry_backoff_ms.into(), attempts);
        self.set_deadline(key, Some(at));
    }

    /// Records how long after its accept a delivery reached `stage` (first time only: the
    /// machine calls this on a stage it had not reached).
    fn observe_stage(&mut self, now: Instant, key: u64, stage: AckStage) {
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        if d.timed {
            let us = now.saturating_since(d.planned_at).0 / 1_000;
            self.metrics
                .delivery_stage_latency_us
                .entry(stage)
                .or_default()
                .record(us);
        }
    }

    pub(crate) fn on_command_ack(&mut self, now: Instant, a: CommandAck) {
        let Some(&key) = self.by_command.get(&a.command_id) else {
            self.metrics.late_or_unknown_total += 1;
            self.fire(DeliveryT::Unknown.spec(), Subject::Command(a.command_id));
            return;
        };
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        let (state, stage) = (d.state, d.stage);
        // A Queued delivery was sent before (then backed off): a late ack of it still counts.
        let live = matches!(
            state,
            DState::Inflight(_) | DState::Backoff | DState::Queued
        );
        let cancelling = matches!(state, DState::Cancelling { .. });
        match a.result {
            AckResult::Ok if live && a.stage > stage && a.stage < AckStage::EaConfirmed => {
                self.fire(DeliveryT::Progress.spec(), self.subject(key));
                self.observe_stage(now, key, a.stage);
                let cmd = a.command_id.clone();
                if !crate::mutants::active(crate::mutants::Mutant::WindowLeaksOnFinish) {
                    self.leave_window(key);
                }
                self.probe_buffered(key);
                let attempts = match self.deliveries.get_mut(&key) {
                    Some(d) => {
                        d.stage = a.stage;
                        d.state = DState::Inflight(a.stage);
                        d.rec.stage = a.stage;
                        d.rec.attempts
                    }
                    None => return,
                };
                if self.cfg.delivery.journal_stage_acks != 0 {
                    self.journal_write(
                        JournalWrite::UpdateStage {
                            command_id: cmd,
                            stage: a.stage,
                            attempts,
                        },
                        None,
                    );
                }
                let at = now + self.reconcile_interval();
                self.set_deadline(key, Some(at));
            }
            AckResult::Failed
                if cancelling && !a.error.unwrap_or(ErrorCode::EaRejected).is_retryable() =>
            {
                let err = a.error.unwrap_or(ErrorCode::EaRejected);
                self.fire(DeliveryT::Refused.spec(), self.subject(key));
                self.finalize(now, key, DeliveryStatus::Failed, Some(err), None);
            }
            AckResult::Failed if live => {
                let err = a.error.unwrap_or(ErrorCode::EaRejected);
                let full_agent = (err == ErrorCode::BrokerBusy
                    && a.stage == AckStage::AgentBuffered
                    && state == DState::Inflight(AckStage::CoreAccepted))
                .then(|| self.registry.account_agent.get(&d.rec.slave))
                .flatten()
                .filter(|r| !r.compat)
                .filter(|_| {
                    !crate::mutants::active(crate::mutants::Mutant::AgentFullSpendsAttempts)
                })
                .map(|r| r.agent.clone());
                if let Some(agent) = full_agent {
                    self.agent_full(key, agent);
                } else if err.is_retryable() {
                    if matches!(state, DState::Inflight(_)) {
                        self.attempt_failed(now, key, false);
                    } else {
                        self.fire(DeliveryT::Stale.spec(), self.subject(key));
                    }
                } else {
                    self.fire(DeliveryT::Refused.spec(), self.subject(key));
                    self.finalize(now, key, DeliveryStatus::Failed, Some(err), None);
                }
            }
            _ => self.fire(DeliveryT::Stale.spec(), self.subject(key)),
        }
    }

    pub(crate) fn on_execution_result(&mut self, now: Instant, r: ExecutionResult) {
        let Some(&key) = self.by_command.get(&r.command_id) else {
            self.metrics.late_or_unknown_total += 1;
            self.fire(DeliveryT::Unknown.spec(), Subject::Command(r.command_id));
            return;
        };
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        if matches!(d.state, DState::Finalizing { .. }) || d.rec.slave != r.slave {
            self.fire(DeliveryT::Stale.spec(), self.subject(key));
            return;
        }
        self.observe_stage(now, key, AckStage::EaConfirmed);
        match r.status {
            BrokerStatus::Filled => {
                let t = if r.reason == Some(ErrorCode::SplitIncomplete) {
                    self.metrics.split_incomplete_total += 1;
                    DeliveryT::SplitPartlyFilled
                } else {
                    DeliveryT::Confirmed
                };
                self.fire(t.spec(), self.subject(key));
                self.finalize(now, key, DeliveryStatus::Acked, None, Some(r.slave_ticket));
            }
            BrokerStatus::Rejected if r.reason == Some(ErrorCode::SplitIncomplete) => {
                self.metrics.split_incomplete_total += 1;
                self.fire(DeliveryT::SplitIncomplete.spec(), self.subject(key));
                self.finalize(
                    now,
                    key,
                    DeliveryStatus::Failed,
                    Some(ErrorCode::SplitIncomplete),
                    None,
                );
            }
            BrokerStatus::Rejected => {
                // The slave EA's copy terms refused the open (a policy reason it reports), or
                // the broker did (no reason).
                match r
                    .reason
                    .and_then(crate::policy::SkipReason::from_error_code)
                {
                    Some(reason) => {
                        self.fire(DeliveryT::SlaveRefused.spec(), self.subject(key));
                        // Remembered before the delivery finishes, as T25 does: finishing it
                        // may make the trade's next intent head of its chain (T26).
                        let opening = self
                            .deliveries
                            .get(&key)
                            .filter(|d| d.rec.kind.starts_trade())
                            .map(|d| d.rec.clone());
                        if let Some(rec) = opening {
                            self.remember_skipped_open(&rec, reason.error_code());
                        }
                        self.fail_by_policy(now, key, reason);
                    }
                    None => {
                        self.fire(DeliveryT::BrokerRejected.spec(), self.subject(key));
                        self.finalize(
                            now,
                            key,
                            DeliveryStatus::Failed,
                            Some(ErrorCode::BrokerRejected),
                            None,
                        );
                    }
                }
            }
            BrokerStatus::Cancelled => {
                self.fire(DeliveryT::CancelConfirmed.spec(), self.subject(key));
                self.finalize(
                    now,
                    key,
                    DeliveryStatus::Failed,
                    Some(ErrorCode::MaxRetries),
                    None,
                );
            }
        }
    }

    pub(crate) fn on_delivery_timer(&mut self, now: Instant, key: u64) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        d.deadline = None; // popped by handle_timeout
        match d.state {
            DState::Inflight(AckStage::CoreAccepted) => self.attempt_failed(now, key, true),
            DState::Inflight(_) if crate::mutants::active(crate::mutants::Mutant::NoReconciler) => {
            }
            DState::Inflight(_) => {
                self.fire(DeliveryT::Reconcile.spec(), self.subject(key));
                self.metrics.reconcile_resends_total += 1;
                self.send_command(now, key);
            }
            DState::Backoff => {
                if self.registry.is_served(&d.rec.slave) {
                    self.fire(DeliveryT::Retry.spec(), self.subject(key));
                    self.send_command(now, key);
                } else {
                    self.fire(DeliveryT::RetryParked.spec(), self.subject(key));
                    if let Some(d) = self.deliveries.get_mut(&key) {
                        d.state = DState::Parked;
                    }
                }
            }
            DState::Finalizing { .. } => self.rewrite_finish(key),
            DState::Cancelling { .. } => {
                self.fire(DeliveryT::CancelResend.spec(), self.subject(key));
                self.send_cancel(now, key);
            }
            DState::Blocked | DState::Parked | DState::Queued => {}
        }
    }

    fn rewrite_finish(&mut self, key: u64) {
        let Some(d) = self.deliveries.get_mut(&key) else {
            return;
        };
        let DState::Finalizing {
            status,
            reason,
            ticket,
            writes,
        } = &mut d.state
        else {
            return;
        };
        *writes += 1;
        let write = JournalWrite::FinishDelivery {
            command_id: d.rec.command_id.clone(),
            trade_id: d.rec.trade_id.clone(),
            slave: d.rec.slave.clone(),
            status: *status,
            stage: d.stage,
            attempts: d.rec.attempts,
            slave_ticket: *ticket,
            reason: *reason,
        };
        self.fire(DeliveryT::FinishRewrite.spec(), self.subject(key));
        self.journal_write(write, Some(PendingOp::Finish(key)));
    }

    pub(crate) fn on_finish_result(&mut self, now: Instant, key: u64, result: JournalResult) {
        let Some(d) = self.deliveries.get(&key) else {
            return;
        };
        let DState::Finalizing {
            status,
            reason,
            ticket,
            writes,
        } = d.state
        else {
            return;
        };
        let skip = crate::mutants::active(crate::mutants::Mutant::SkipFinishRetry);
        if let (JournalResult::Failed { .. }, false) = (&result, skip) {
            self.metrics.journal_failures_total += 1;
            self.fire(DeliveryT::FinishRetry.spec(), self.subject(key));
            let at = now + backoff(self.cfg.delivery.retry_backoff_ms.into(), writes);
            self.set_deadline(key, Some(at));
            return;
        }
        self.fire(DeliveryT::Done.spec(), self.subject(key));
        let Some(d) = self.deliveries.remove(&key) else {
            return;
        };
        self.by_command.remove(&d.rec.command_id);
        let pair = || (d.rec.trade_id.clone(), d.rec.slave.clone());
        if status == DeliveryStatus::Acked {
            self.metrics.deliveries_acked_total += 1;
            if d.rec.kind.is_pending() && d.rec.kind != IntentKind::PendingModify {
                let subject = if self.trace {
                    Subject::Command(d.rec.command_id.clone())
                } else {
                    Subject::None
                };
                self.fire(DeliveryT::PendingCorrelated.spec(), subject);
            }
            // The same rule the journal applies to `open_position` (`TicketEffect`).
            let lost = d.rec.kind == IntentKind::PartialClose
                && crate::mutants::active(crate::mutants::Mutant::PartialLosesTicket);
            match d.rec.kind.ticket_effect() {
                // A broker may move what a partial close left to a new ticket (MT4 does):
                // later modifies and closes must address that one. A trigger's ticket is the
                // position's.
                TicketEffect::Set if !lost => {
                    if let Some(t) = ticket.filter(|t| *t > 0) {
                        self.tickets.insert(pair(), t);
                    }
                }
                TicketEffect::Remove => {
                    self.tickets.remove(&pair());
                }
                TicketEffect::Set | TicketEffect::Keep => {}
            }
        }
        let result = if status == DeliveryStatus::Acked {
            AckResult::Ok
        } else {
            AckResult::Failed
        };
        self.report_to_master(&d.rec, d.stage, result, reason);
        self.intent_delivery_finished(&d.rec.intent_id);
        // Advance the chain: the next delivery of this (slave, trade) may go now.
        let chain_key = (d.rec.slave, d.rec.trade_id);
        if let Some(p) = d.prev.and_then(|p| self.deliveries.get_mut(&p)) {
            p.next = d.next;
        }
        if let Some(n) = d.next.and_then(|n| self.deliveries.get_mut(&n)) {
            n.prev = d.prev;
        }
        let next = match self.chains.get_mut(&chain_key) {
            Some(chain) => {
                match (d.prev, d.next) {
                    (None, None) => {}
                    (None, Some(n)) => chain.head = n,
                    (Some(p), None) => chain.tail = p,
                    (Some(_), Some(_)) => {}
                }
                // A delivery that was not the head leaves the head in place (and as before,
                // the head is activated again).
                (d.prev.is_some() || d.next.is_some()).then_some(chain.head)
            }
            None => None,
        };
        match next {
            Some(n) => self.activate(now, n),
            None => {
                self.chains.remove(&chain_key);
            }
        }
    }

    /// Chain heads whose slave is one of `slaves`, in creation order (deterministic even
    /// though the chain index is a hash map: keys are sorted before use).
    fn heads_of(&self, slaves: &[AccountId]) -> Vec<u64> {
        let mut heads: Vec<u64> = self
            .chains
            .iter()
            .filter(|((s, _), _)| slaves.contains(s))
            .map(|(_, c)| c.head)
            .collect();
        heads.sort_unstable();
        heads
    }

    /// T16: a live head whose slave has no agent now waits for one, Parked, with no timer
    /// and no place in a window; a never-sent open (it was Queued) then goes out as a
    /// catch-up (T36), since it waited for its slave.
    fn park(&mut self, key: u64) {
        self.fire(DeliveryT::Park.spec(), self.subject(key));
        self.set_deadline(key, None);
        self.leave_window(key);
        if let Some(d) = self.deliveries.get_mut(&key) {
            d.state = DState::Parked;
            if !d.sent && d.rec.kind == IntentKind::Open {
                d.catch_up = true;
            }
        }
    }

    /// The agent serving `slaves` went away: its live deliveries wait without spending attempts.
    pub(crate) fn park_slaves(&mut self, slaves: &[AccountId]) {
        for key in self.heads_of(slaves) {
            let live = matches!(
                self.deliveries.get(&key).map(|d| d.state),
                Some(
                    DState::Inflight(_)
                        | DState::Queued
                        | DState::Backoff
                        | DState::Cancelling { .. }
                )
            );
            if live {
                self.park(key);
            }
        }
    }

    /// The agent serving `slaves` is back: parked heads go out again.
    pub(crate) fn unpark_slaves(&mut self, now: Instant, slaves: &[AccountId]) {
        for key in self.heads_of(slaves) {
            let parked = matches!(
                self.deliveries.get(&key).map(|d| d.state),
                Some(DState::Parked)
            );
            if parked && !self.expire_if_late(now, key) {
                let catch_up = self.deliveries.get(&key).is_some_and(|d| d.catch_up);
                let t = if catch_up {
                    DeliveryT::CatchUpSend
                } else {
                    DeliveryT::Unpark
                };
                self.fire(t.spec(), self.subject(key));
                self.send_command(now, key);
            }
        }
    }
}
