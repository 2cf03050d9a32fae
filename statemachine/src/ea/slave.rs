//! The slave EA's executor: each `command_id` reaches the broker at most once, durably.
//!
//! This module owns the slave side of a command: the handshake gate of the pipe session, the
//! validation of the command, the write-ahead record (`PersistExecuting`) that must be durable
//! before the EA says `PipeDeliveryAck{Ok}` and places the order, the durable result
//! (`PersistExecuted`) that must be on disk before the `ExecutionResult` is reported, the
//! deduplication of repeated deliveries, and the recovery of commands left in doubt by a crash
//! (asked of the broker with `QueryOrder`, never placed again). It also applies an open's copy
//! terms (`policy::terms`: sizing from its own account, free margin, exposure limits, the
//! price-deviation guard with its wait window) with the account, symbol and price facts its
//! terminal feeds it ([`Fact`]), at the moment it would place the order. It is a sans-IO
//! machine: broker, file, pipe and terminal facts are outputs and inputs.
//!
//! It must never emit two `PlaceOrder` for one `command_id` — across repeats, failures and
//! `recover()` — never answer `PipeDeliveryAck{Ok}` for a command whose write-ahead record is
//! not durable, never report a result that is not durable, and never second-guess the broker
//! about a position it knows (the broker's answer is passed through as is).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ids::{AccountId, CommandId, Symbol};
use crate::msg::{
    AgentToEa, BrokerStatus, Command, CommandBody, EaToAgent, ErrorCode, ExecTerms,
    ExecutionResult, Leg, PendingResolution, PipeDeliveryAck, PipeStatus, SlaveSizing,
};
use crate::policy::partial::{fraction_limits, slave_close, take_from_legs, CloseDecision};
use crate::policy::sizing::MAX_SPLIT_LEGS;
use crate::policy::terms::{
    decide_open, open_legs, AccountFacts, OpenDecision, OpenOrder, SlaveView, SymbolFacts,
};
use crate::policy::{SkipReason, SymbolLimits, Volume};
use crate::spec::{Fired, MachineSpec, Subject};
use crate::time::Duration;
use crate::time::{backoff, Instant};
use crate::transitions;

/// Identifies one storage request so its result can be matched to it.
pub type OpId = u64;

/// How many refused command ids are remembered so a retry gets the same answer. Refusal is a
/// pure function of the command, so forgetting the oldest only costs a re-validation.
pub const FAILED_MEMORY: usize = 4_096;

/// Default of [`SlaveConfig::max_executed_retained`]: twice the agent's default
/// `max_completed_retained` (16 384), and above it plus the agent's `max_active_commands`
/// (4 096). SPEC.md §8 `ea.slave` (dedupe window) gives the argument.
pub const MAX_EXECUTED_RETAINED: usize = 32_768;

/// Default of [`SlaveConfig::min_retained_ms`]: a minute, twelve times the core's default
/// `reconcile_interval_ms` (5 s) and above its and the agent's retry schedules.
pub const MIN_RETAINED_MS: u64 = 60_000;

/// Most symbols whose facts the executor keeps; facts of further symbols are ignored (counted):
/// an open on such a symbol needing them is refused `ACCOUNT_FACTS_UNKNOWN`, never guessed.
pub const MAX_SYMBOLS: usize = 1_024;

/// What the slave's terminal reports to its EA (MQL `AccountInfoDouble`, `SymbolInfoDouble`,
/// `SymbolInfoTick`): the latest of each replaces the previous one.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    Account(AccountFacts),
    Symbol(Symbol, SymbolFacts),
    Quote { symbol: Symbol, bid: f64, ask: f64 },
}

transitions! {
    /// Transitions of the slave EA's executor. One command moves
    /// `persisting → executing (or in_doubt after recover) → recording ⇄ record_retry_wait → executed`.
    pub enum T ("ea.slave") {
        HandshakeAccepted = "T01": "gate: any", "AgentToEa::Handshake for this EA's account" => "gate: open"; "nothing; commands are taken from now on",
        HandshakeRefused = "T02": "gate: any", "AgentToEa::Handshake for another account" => "gate: closed"; "nothing; counted handshake_refused",
        PipeClosed = "T03": "gate: any", "handle_pipe_closed" => "gate: closed"; "nothing; the next session must handshake again",
        GateClosed = "T04": "gate: closed", "Command before this session's handshake" => "gate: closed"; "ToAgent(PipeAck{Retry}); nothing remembered, nothing executed; counted retry_gate",
        Malformed = "T05": "(none)", "Command that fails validation (volume <= 0 or not finite, non-finite price/SL/TP, copy terms negative or not finite, ticket <= 0 on modify/close, another account)" => "refused"; "ToAgent(PipeAck{Failed, InvalidArgument / UnknownAccount}); the refusal is remembered; counted malformed",
        RefusedAgain = "T06": "refused", "the same command_id again" => "refused"; "ToAgent(PipeAck{Failed, same reason}); never executed",
        Busy = "T07": "(none)", "new Command, or Cancel of an unseen command, while `max_pending` commands are unfinished" => "(none)"; "ToAgent(PipeAck{Retry}); nothing remembered; counted retry_busy",
        Accepted = "T08": "(none)", "new valid Command, gate open, room for it" => "persisting"; "PersistExecuting{op, command} (write-ahead)",
        Place = "T09": "persisting", "persist result Ok for its write-ahead record; an open its copy terms admit now (policy::terms), or a modify/close of a ticket with an open position" => "executing"; "ToAgent(PipeAck{Ok}); PlaceOrder{command_id (client order id), body — an open's volume as the terms sized it}; counted placed",
        NoPosition = "T10": "persisting", "persist result Ok for its write-ahead record; a modify/close of a ticket with no open position (a close of a ticket it closed in full is T26; a modify or full close of a ticket holding one of its pending orders goes to the broker — the order may have filled on its own)" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: Rejected} — answered as the broker would, without placing",
        WriteAheadFailed = "T11": "persisting", "persist result Failed for its write-ahead record" => "(none)"; "ToAgent(PipeAck{Retry}); the command is forgotten, so a redelivery starts afresh; counted write_ahead_failures",
        NotYetDurable = "T12": "persisting, or recording a CANCELLED result", "the same command_id again" => "unchanged"; "ToAgent(PipeAck{Retry}) — Ok would claim a durability not yet reported",
        Repeated = "T13": "executing / waiting_price / waiting_exposure / in_doubt / recording / record_retry_wait / executed", "the same command_id again" => "unchanged"; "ToAgent(PipeAck{Ok}); if executed, ToAgent(Execution(stored result)) again; never placed again; counted duplicates",
        BrokerAnswered = "T14": "executing / in_doubt", "handle_broker_result(Filled or Rejected)" => "recording"; "PersistExecuted{op, command_id, result}",
        BrokerIgnored = "T15": "any", "handle_broker_result for an unknown command or one already answered" => "unchanged"; "counted ignored_broker_results",
        Executed = "T16": "recording", "persist result Ok for its result record" => "executed"; "ToAgent(Execution(result)); open positions updated from the result",
        RecordFailed = "T17": "recording", "persist result Failed for its result record" => "record_retry_wait"; "timer at now + backoff(retry_backoff_ms, failures); counted record_failures; the result is kept",
        RecordRetry = "T18": "record_retry_wait", "record retry timer expired" => "recording"; "PersistExecuted{op (new), command_id, result}",
        PersistIgnored = "T19": "any", "persist result for an op that is not a command's current op" => "unchanged"; "counted ignored_persist_results",
        NotForSlave = "T20": "any", "AgentToEa::IntentAck or DeliveryConfig (master-EA messages)" => "unchanged"; "nothing; counted ignored_messages",
        RecoveredExecuted = "T21": "(durable)", "recover(): a record with its result" => "executed"; "nothing; the command is deduplicated and its position restored",
        RecoveredInDoubt = "T22": "(durable)", "recover(): a write-ahead record without a result (crash after the write-ahead: the order may or may not have reached the broker)" => "in_doubt"; "QueryOrder{command_id} — asked of the broker by client order id, never placed again",
        CancelUnknown = "T23": "(none), gate open", "AgentToEa::Cancel(command) for a command never seen" => "recording"; "PersistCancelled{op, command, result: CANCELLED} — once durable the command is answered CANCELLED forever and never placed (a Cancel for a known or refused command gets the same answer as a redelivery: T04/T06/T12/T13)",
        CancelRefused = "T24": "refused", "AgentToEa::Cancel(command) for a command it refused (T05/T06 answer first)" => "refused"; "ToAgent(Execution(REJECTED, no ticket)) — never executed; a core that gave up learns it from the result even through a legacy agent that sends no stage acks",
        KeepShare = "T25": "persisting", "persist result Ok for its write-ahead record; a ClosePart whose share of the open position is below one step or the minimum (policy::partial: Keep)" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: Filled, 0 lots, same ticket} — nothing to close now, the master's later closes carry the share; never placed",
        AlreadyClosed = "T26": "persisting", "persist result Ok for its write-ahead record; a Close or ClosePart of a ticket this EA already closed in full (a partial close took the rest with it: no dust)" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: Filled, 0 lots, same ticket} — the position is closed as the master asked; never placed, never a rejection",
        TermsRefused = "T27": "persisting", "persist result Ok for the write-ahead record of an open its copy terms refuse (MAX_OPEN_POSITIONS, MAX_TOTAL_LOTS, VOLUME_BELOW_MIN, NO_STOP_LOSS, INSUFFICIENT_MARGIN, ACCOUNT_FACTS_UNKNOWN, or PRICE_DEVIATION with no wait window)" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: REJECTED with the reason} — never placed; counted terms_refused",
        WaitPrice = "T28": "persisting", "persist result Ok for the write-ahead record of an open beyond deviation/max_points, with a wait window" => "waiting_price"; "ToAgent(PipeAck{Ok}); timer at now + deviation_window_ms",
        PriceBack = "T29": "waiting_price", "a Quote (or account/symbol fact) with which the copy terms admit the open" => "executing"; "PlaceOrder{command_id, body as sized}; counted placed",
        WindowClosed = "T30": "waiting_price", "its wait timer expired" => "executing or recording"; "the terms decide once more without waiting: PlaceOrder, or PersistExecuted{REJECTED, PRICE_DEVIATION (or another reason)}",
        PlacePending = "T31": "persisting", "persist result Ok for the write-ahead record of a PlacePending its copy terms admit (sizing, free margin, exposure limits counting its pending orders; no deviation guard: the order waits for its own price)" => "executing"; "ToAgent(PipeAck{Ok}); PlaceOrder{command_id, PlacePending with the volume the terms sized}; counted placed",
        PendingRefused = "T32": "persisting", "persist result Ok for the write-ahead record of a PlacePending its copy terms refuse (as T27)" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: REJECTED with the reason} — never placed; counted terms_refused",
        ChangePending = "T33": "persisting", "persist result Ok for the write-ahead record of a ModifyPending or a ResolvePending{Cancel} of a ticket holding one of its pending orders" => "executing"; "ToAgent(PipeAck{Ok}); PlaceOrder{command_id, body as is} — the broker changes or deletes the pending order, or, if it filled on its own, changes the position's SL/TP or closes it (the master decided); counted placed",
        Trigger = "T34": "persisting", "persist result Ok for the write-ahead record of a ResolvePending{Trigger} of a ticket holding one of its pending orders" => "executing"; "ToAgent(PipeAck{Ok}); PlaceOrder{command_id, TriggerPending{ticket, market}} — market: the deviation guard admits a market open of the pending's volume now; the broker reports the ticket's position if the pending filled on its own (nothing placed), else deletes it and opens at market (or nothing when !market: it answers FILLED with no volume, T36); counted placed",
        NoPending = "T35": "persisting", "persist result Ok for the write-ahead record of a ModifyPending or ResolvePending of a ticket holding no pending order of this EA" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: Rejected} — answered as the broker would, without placing; counted no_position",
        TriggerGuardRefused = "T36": "executing", "handle_broker_result(Filled with no volume) for a TriggerPending sent with market = false: the pending had not filled and the broker deleted it (a broker Rejected of the step — market closed — is T14: the pending order still rests, stays booked and counts against the limits)" => "recording"; "PersistExecuted{op, command_id, result: REJECTED with the guard's reason (PRICE_DEVIATION, ACCOUNT_FACTS_UNKNOWN)}",
        Evicted = "T39": "executed", "after T16, executed records exceed `max_executed_retained` and the oldest (by completion; after recover(), by file order) is at least `min_retained_ms` old (recovered records count from the first input after recover())" => "(forgotten)"; "nothing; counted evicted — an unfinished command is never evicted, open positions and closed tickets are kept apart from the records; the record leaves the file at the terminal's next compaction (durable_image), and a later delivery of the id would be taken as new (the bound is sized so none can come: SPEC §8 ea.slave, dedupe window)",
        RecoveredPositions = "T40": "(durable)", "recover(): a positions row (written by a compaction after the retained records)" => "(positions replaced)"; "nothing; open positions (with the legs of split ones), pending orders and tickets closed in full are exactly the row's — the retained records before it are for dedupe only, records after it update the positions as in T16/T21",
        SplitOpen = "T41": "executing", "an open its copy terms admit (T09, T29, T30) with split allowed (ExecTerms.split_max_lots > 0) and a volume above the per-order maximum (policy::terms::open_legs: more than one leg)" => "executing (legs)"; "PlaceLeg{command_id, leg 0, order id = command_id, the first leg's lots} — the legs, each within the limits and together the sized volume, are placed one at a time, each once the one before it filled; counted legs_placed",
        LegAnswered = "T42": "executing (legs) / in_doubt (legs)", "handle_leg_result for the current leg, and another follows (an open: this leg filled and legs remain; a modify or close of a split position: steps remain, whatever this one's answer)" => "unchanged"; "PlaceLeg{next leg, order id command_id#n}; in doubt: QueryLeg{next leg} — asked, never placed again; counted legs_placed",
        LegsDone = "T43": "executing (legs) / in_doubt (legs)", "handle_leg_result for the last leg, or for an open's leg that did not fill (no further leg is placed)" => "recording"; "PersistExecuted{op, command_id, result}: the position's ticket (the first leg's) with its legs after the command and the total opened or closed; reason SPLIT_INCOMPLETE when some legs did not execute — FILLED, except a close that left legs open (REJECTED: the core keeps the ticket); nothing executed: REJECTED as the broker answered",
        SplitSteps = "T44": "persisting", "persist result Ok for the write-ahead record of a Modify / Close / ClosePart of a split position (a ClosePart is resolved once against the position's total, policy::partial; a share it keeps is T25)" => "executing (legs)"; "ToAgent(PipeAck{Ok}); PlaceLeg{step 0}: one order per leg — a modify every leg, a close every leg (last first), a partial close the legs policy::partial::take_from_legs takes (whole legs last-first, then a part of one; no dust); counted placed",
        RecoveredSplitInDoubt = "T45": "(durable)", "recover(): a write-ahead record without a result of an open with split allowed, or of a modify / close of a split position" => "in_doubt (legs)"; "QueryLeg{leg 0}, then each further leg in turn (an open's until one did not fill; a split position's every step, planned again from its durable legs) — asked of the broker by order id, never placed again",
        LegIgnored = "T46": "any", "handle_leg_result for a command without legs, or a leg that is not its current one (stale, repeated)" => "unchanged"; "counted ignored_broker_results",
        CatchUpExpired = "T47": "persisting", "persist result Ok for the write-ahead record of an open sent as a catch-up (Execute.catch_up) whose price is beyond deviation/max_points (policy::catchup::admit)" => "recording"; "ToAgent(PipeAck{Ok}); PersistExecuted{op, command_id, result: REJECTED with EXPIRED} — never placed and never waiting for the price (the wait window is for live opens); counted terms_refused and catch_up_expired",
        WaitExposure = "T48": "persisting", "persist result Ok for the write-ahead record of an open or a PlacePending whose copy terms limit max_total_lots, while an open recovered in doubt (T22, T45) was sized by this EA (its ExecTerms.sizing is not FINAL: the lots it placed are not in its write-ahead record, so the exposure is not known until the broker answers the query)" => "waiting_exposure"; "ToAgent(PipeAck{Ok}); nothing placed, no timer",
        ExposureKnown = "T49": "waiting_exposure", "the broker answered the last open recovered in doubt with a size this EA chose (its answered lots count from now on, as a reservation until its result is durable)" => "executing, waiting_price or recording"; "the copy terms decide as at T09 / T28 / T27 / T47 (or T31 / T32 for a PlacePending), counting the answered lots; nothing is acknowledged again"
    }
}

pub const SPEC: MachineSpec = MachineSpec {
    name: "ea.slave",
    summary: "The slave EA's executor: answers every command on the pipe with PipeDeliveryAck \
              (OK / RETRY / FAILED), writes ahead before it places an order, places each \
              command_id at most once, records the broker's answer durably and reports it as an \
              ExecutionResult — again on every redelivery, never by executing again.",
    states: &[
        ("gate: closed / open", "whether this pipe session has seen the agent's Handshake for this EA's account; closed on every new session"),
        ("refused", "the command failed validation; remembered (bounded) so a retry gets the same answer"),
        ("persisting", "PersistExecuting issued, not yet durable; not acknowledged, not placed"),
        ("executing", "write-ahead durable, PipeAck{Ok} sent, PlaceOrder issued; waits for the broker"),
        ("executing (legs)", "a split open or a command on a split position: its broker steps (legs) are placed one at a time, each with its own order id (PlaceLeg); waits for the current one's answer"),
        ("waiting_price", "an open's write-ahead durable, PipeAck{Ok} sent, not placed: its price is beyond the deviation guard and the wait window is open (not durable: after a crash it is in_doubt and the broker says it was never placed)"),
        ("waiting_exposure", "an open's (or PlacePending's) write-ahead durable, PipeAck{Ok} sent, not placed: its terms limit max_total_lots and an open recovered in doubt has lots this EA sized and the broker has not reported yet (not durable: after a crash it is in_doubt and the broker says it was never placed)"),
        ("in_doubt", "found after a crash with a write-ahead record and no result; QueryOrder issued; waits for the broker"),
        ("in_doubt (legs)", "in_doubt for a split open or a command on a split position: its legs are asked of the broker one at a time (QueryLeg), never placed"),
        ("recording", "the broker answered; PersistExecuted issued, not yet durable"),
        ("record_retry_wait", "the result write failed; waits for its backoff"),
        ("executed", "result durable and reported; every repeat is answered from it"),
    ],
    invariants: &[
        "No command_id ever produces two PlaceOrder outputs, and no (command_id, leg) two PlaceLeg outputs, across any sequence of inputs including recover().",
        "A split position's legs are exactly what the broker reported for them: they sum to its open volume, each on the step and within the limits the split used; no leg is ever left out of the EA's position (untracked).",
        "PipeDeliveryAck{Ok} is sent only for a command whose PersistExecuting was reported durable (in this life or a previous one).",
        "An ExecutionResult is reported only after its PersistExecuted was reported durable — except the REJECTED answer to a Cancel of a command the EA refused (T24), which needs no record: a refusal is a pure function of the command, so it can never turn into an execution.",
        "No command is accepted (written ahead) before the current pipe session's Handshake for this EA's account.",
        "A command found in doubt after a crash is resolved by QueryOrder and the broker's answer, never by placing it again.",
        "Unfinished commands are bounded by `max_pending`; beyond it the EA answers RETRY, never drops silently.",
        "The same command_id always gets the same verdict: refused stays refused, executed is answered from its stored result.",
        "A cancelled command is never placed: its CANCELLED result is durable before it is reported, and every later delivery of it is answered from that result.",
        "An open is placed only with a volume its copy terms sized from the facts of that moment: within the broker's limits and on its step, never above the risk budget (unless trade_min), never beyond max_open_positions / max_total_lots counting the opens already placed (one recovered in doubt with the lots the broker reports for it: until then an open limited by max_total_lots waits, T48/T49), never beyond the deviation guard.",
        "Bounded: executed records <= max_executed_retained plus those executed within min_retained_ms (oldest evicted first, T39), tickets closed in full <= max_executed_retained (oldest forgotten first), refusals <= FAILED_MEMORY, symbols <= MAX_SYMBOLS; an unfinished command is never evicted, and open positions never depend on which records are retained.",
        "durable_image() is exactly what the EA's file must hold to recover the same dedupe set, positions and commands in doubt: the retained records oldest first, a positions row, then every unfinished command whose write-ahead is durable; it is offered only when no storage write is in flight.",
    ],
    transitions: T::TABLE,
};

/// What builds a [`SlaveExecutor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlaveConfig {
    /// The slave account this EA trades; handshakes and commands for others are refused.
    pub account: AccountId,
    /// Most commands unfinished at once (persisting, at the broker, or recording).
    pub max_pending: usize,
    /// Base of the backoff for re-writing a result that failed to persist.
    pub retry_backoff_ms: u64,
    /// Executed (terminal) command records kept to answer redeliveries, oldest evicted first
    /// (T39); also the most tickets closed in full that are remembered. It must be at least
    /// the agent's `max_completed_retained + max_active_commands`, and above the number of
    /// commands this slave executes while the core may still re-send one (SPEC.md §8
    /// `ea.slave`, dedupe window). At least 1.
    pub max_executed_retained: usize,
    /// No executed record younger than this is evicted, however many newer ones there are:
    /// a burst of commands must not push out a record whose result may still be on its way
    /// (a lost result is recovered by the core's reconciler after `reconcile_interval_ms`).
    /// Records recovered from the file count as executed at the first input after
    /// `recover()`. Retained records stay below `max_executed_retained` plus the records
    /// executed within this time.
    pub min_retained_ms: u64,
}

impl SlaveConfig {
    pub fn new(account: impl AsRef<str>) -> Self {
        SlaveConfig {
            account: AccountId::new(account),
            max_pending: 64,
            retry_backoff_ms: 100,
            max_executed_retained: MAX_EXECUTED_RETAINED,
            min_retained_ms: MIN_RETAINED_MS,
        }
    }
}

/// A storage request that did not complete (a lost reply looks the same: writes are keyed by
/// command id, so repeating one is harmless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistError {
    pub retryable: bool,
}

/// One command as the EA's file holds it: written ahead (`result: None`) and later completed.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutedRecord {
    pub command: Command,
    pub result: Option<ExecutionResult>,
}

/// One row of the EA's file as [`SlaveExecutor::recover_rows`] reads it, in file order.
#[derive(Clone, Debug, PartialEq)]
pub enum DurableRow {
    /// A command written ahead, with its result once that is durable.
    Record(ExecutedRecord),
    /// Written by a compaction after the retained records: the open positions
    /// (slave_ticket → open lots), the pending orders this EA placed and still holds
    /// (slave_ticket → lots) and the tickets closed in full (oldest first) at that moment. It
    /// replaces whatever the rows before it derived (T40).
    /// `split`: the legs (ticket, lots) of each split position in `open`, by its id (the
    /// first leg's ticket); absent for a position that is one order.
    Positions {
        open: Vec<(i64, f64)>,
        pendings: Vec<(i64, f64)>,
        closed: Vec<i64>,
        split: Vec<(i64, Vec<(i64, f64)>)>,
    },
}

/// The client order id of leg `leg` of a command's broker steps (SPEC.md §5.2 "Split"): the
/// command id itself for leg 0 (so a one-order command and the first leg share it), and
/// `"{command_id}#{leg}"` after it. Deterministic: after a crash every leg in doubt is asked
/// of the broker by it.
pub fn leg_order_id(command_id: &CommandId, leg: u32) -> CommandId {
    if leg == 0 {
        command_id.clone()
    } else {
        CommandId::new(format!("{command_id}#{leg}"))
    }
}

/// What the broker did with an order, or answered to a query by client order id. A driver maps
/// every broker error, and "no such client order id" for a query, to `Rejected`.
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerOutcome {
    Filled {
        ticket: i64,
        price: f64,
        volume: f64,
    },
    Rejected {
        reason: String,
    },
}

/// Everything the executor asks its driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Fired(Fired),
    /// Write on the pipe to the agent.
    ToAgent(EaToAgent),
    /// Write-ahead: record the command as executing, then `handle_persist_result(op, …)`.
    PersistExecuting {
        op: OpId,
        command: Command,
    },
    /// Record the result of the command, then `handle_persist_result(op, …)`.
    PersistExecuted {
        op: OpId,
        command_id: CommandId,
        result: ExecutionResult,
    },
    /// Send the order to the broker with `command_id` as its client order id, then
    /// `handle_broker_result(command_id, …)`.
    PlaceOrder {
        command_id: CommandId,
        body: CommandBody,
    },
    /// Durably record that the command was cancelled before it ever executed (the record
    /// holds the command and its CANCELLED result), then `handle_persist_result(op, …)`.
    PersistCancelled {
        op: OpId,
        command: Command,
        result: ExecutionResult,
    },
    /// Ask the broker what became of the order with this client order id, then
    /// `handle_broker_result(command_id, …)`.
    QueryOrder {
        command_id: CommandId,
    },
    /// One leg (broker step) of a split open or of a command on a split position: send
    /// `body` to the broker with `order_id` ([`leg_order_id`]) as its client order id, then
    /// `handle_leg_result(command_id, leg, …)`. Legs of one command are issued one at a time.
    PlaceLeg {
        command_id: CommandId,
        leg: u32,
        order_id: CommandId,
        body: CommandBody,
    },
    /// Ask the broker what became of leg `leg` (client order id `order_id`), then
    /// `handle_leg_result(command_id, leg, …)`; "no such order" is `Rejected`.
    QueryLeg {
        command_id: CommandId,
        leg: u32,
        order_id: CommandId,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlaveMetrics {
    /// Commands not yet executed (persisting, at the broker, in doubt or recording).
    pub pending: usize,
    pub known_commands: usize,
    pub open_positions: usize,
    pub placed: u64,
    pub queried: u64,
    pub executed: u64,
    pub rejected_by_broker: u64,
    pub no_position: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub retry_gate: u64,
    pub retry_busy: u64,
    pub retry_not_durable: u64,
    pub write_ahead_failures: u64,
    pub record_failures: u64,
    pub handshake_refused: u64,
    pub ignored_broker_results: u64,
    pub ignored_persist_results: u64,
    pub ignored_messages: u64,
    /// Opens the copy terms refused (reported as REJECTED with the reason).
    pub terms_refused: u64,
    /// Catch-up opens beyond the deviation guard, refused EXPIRED (T47; also in
    /// `terms_refused`).
    pub catch_up_expired: u64,
    /// Facts ignored: a new symbol beyond [`MAX_SYMBOLS`], or non-finite numbers.
    pub ignored_facts: u64,
    /// Executed records evicted by `max_executed_retained` (T39).
    pub evicted: u64,
    /// Executed records retained for dedupe now.
    pub retained_executed: usize,
    /// Tickets closed in full remembered now.
    pub closed_tickets: usize,
    /// Legs (broker steps of split commands) placed or asked about.
    pub legs_placed: u64,
    /// Positions held as several legs now.
    pub split_positions: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Persisting { op: OpId },
    Executing,
    InDoubt,
    WaitingPrice,
    WaitingExposure,
    Recording { op: OpId, result: ExecutionResult },
    RecordRetryWait { result: ExecutionResult },
    Executed { result: ExecutionResult },
}

#[derive(Clone, Debug)]
struct Entry {
    command: Command,
    state: State,
    record_failures: u32,
    deadline: Option<Instant>,
    /// A trigger sent without its market fallback: why the guard refused it (T36).
    refusal: Option<SkipReason>,
    /// The broker steps of a split open or of a command on a split position (T41–T45).
    steps: Option<Steps>,
}

/// What a command's legs are for.
#[derive(Clone, Debug, PartialEq)]
enum StepsOf {
    /// A split open: `planned` legs (0 when not known: recovered in doubt, slave-sized).
    Open { planned: usize },
    /// A modify or close of split position `position`, whose legs (ticket, lots) were `legs`
    /// when the command was resolved. `whole`: a Close of everything.
    Position {
        position: i64,
        legs: Vec<(i64, f64)>,
        modify: bool,
        whole: bool,
    },
}

/// A command's broker steps, placed (or, in doubt, asked about) one at a time.
#[derive(Clone, Debug, PartialEq)]
struct Steps {
    of: StepsOf,
    /// The orders in turn: (index into the position's legs, body). Empty for an open
    /// recovered in doubt (its legs are asked about until one did not fill).
    orders: Vec<(usize, CommandBody)>,
    answers: Vec<BrokerOutcome>,
    in_doubt: bool,
}

/// Sum of legs' lots in integer volume units, back to lots (no f64 dust).
fn legs_total(legs: &[(i64, f64)]) -> f64 {
    legs.iter()
        .fold(Volume::ZERO, |acc, (_, v)| {
            acc.saturating_add(Volume::from_lots(*v).unwrap_or_default())
        })
        .lots()
}

/// The slave EA's at-most-once executor.
#[derive(Debug)]
pub struct SlaveExecutor {
    config: SlaveConfig,
    gate_open: bool,
    next_op: OpId,
    commands: BTreeMap<CommandId, Entry>,
    pending: usize,
    refused: BTreeMap<CommandId, ErrorCode>,
    refused_order: VecDeque<CommandId>,
    /// slave_ticket → open volume, from durable results only.
    positions: BTreeMap<i64, f64>,
    /// slave_ticket → volume of the pending orders this EA placed and its master has not yet
    /// triggered or cancelled, from durable results only.
    pendings: BTreeMap<i64, f64>,
    /// Tickets this EA closed in full, from durable results only: a later close of one is
    /// already done (a partial close that left dust closed the whole position). Bounded by
    /// `max_executed_retained`, oldest forgotten first (`closed_order`).
    closed: BTreeSet<i64>,
    closed_order: VecDeque<i64>,
    /// Executed commands retained for dedupe with when they became executed, oldest first
    /// (completion order; after recover(), file order, stamped with the first input's time —
    /// `unstamped` until then). Only `State::Executed` entries are ever in it.
    executed_order: VecDeque<(Option<Instant>, CommandId)>,
    unstamped: bool,
    ops: BTreeMap<OpId, CommandId>,
    timers: BTreeSet<(Instant, CommandId)>,
    out: VecDeque<Output>,
    m: SlaveMetrics,
    account: Option<AccountFacts>,
    symbols: BTreeMap<Symbol, SymbolFacts>,
    quotes: BTreeMap<Symbol, (f64, f64)>,
    /// Opens placed (or in doubt) whose result is not recorded yet: they count against the
    /// exposure limits like open positions.
    reserved: BTreeMap<CommandId, Volume>,
    /// Opens recovered in doubt that this EA sized itself: their reservation is only the
    /// master's lots of the write-ahead record until the broker answers (T48/T49).
    unsized_in_doubt: BTreeSet<CommandId>,
    /// position id → its legs (ticket, lots), for the positions held as several orders (a
    /// split open); `positions` holds their total under the same id. From durable results.
    legs: BTreeMap<i64, Vec<(i64, f64)>>,
}

impl SlaveExecutor {
    /// A fresh executor with no history and the gate closed.
    pub fn new(config: SlaveConfig) -> Self {
        SlaveExecutor {
            config,
            gate_open: false,
            next_op: 0,
            commands: BTreeMap::new(),
            pending: 0,
            refused: BTreeMap::new(),
            refused_order: VecDeque::new(),
            positions: BTreeMap::new(),
            pendings: BTreeMap::new(),
            closed: BTreeSet::new(),
            closed_order: VecDeque::new(),
            executed_order: VecDeque::new(),
            unstamped: false,
            ops: BTreeMap::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            m: SlaveMetrics::default(),
            account: None,
            symbols: BTreeMap::new(),
            quotes: BTreeMap::new(),
            reserved: BTreeMap::new(),
            unsized_in_doubt: BTreeSet::new(),
            legs: BTreeMap::new(),
        }
    }

    /// Rebuilds the executor from its file, in file order. Completed records are remembered
    /// for dedupe and rebuild the open positions; records without a result are in doubt and
    /// are asked of the broker (`QueryOrder`), never placed again.
    pub fn recover(config: SlaveConfig, durable: Vec<ExecutedRecord>) -> Self {
        Self::recover_rows(
            config,
            durable.into_iter().map(DurableRow::Record).collect(),
        )
    }

    /// [`SlaveExecutor::recover`] from a file that may have been compacted: a `Positions` row
    /// replaces the positions the rows before it derived (T40). Then the retention bound is
    /// enforced, oldest first (T39).
    pub fn recover_rows(config: SlaveConfig, rows: Vec<DurableRow>) -> Self {
        let mut s = SlaveExecutor::new(config);
        type SplitLegs = Vec<(i64, Vec<(i64, f64)>)>;
        enum Item {
            Command(CommandId),
            Positions(Vec<(i64, f64)>, Vec<(i64, f64)>, Vec<i64>, SplitLegs),
        }
        // The file is keyed by command id: of two rows for one id, the completed one wins.
        let mut order: Vec<Item> = Vec::new();
        let mut records: BTreeMap<CommandId, ExecutedRecord> = BTreeMap::new();
        for row in rows {
            let rec = match row {
                DurableRow::Record(rec) => rec,
                DurableRow::Positions {
                    open,
                    pendings,
                    closed,
                    split,
                } => {
                    order.push(Item::Positions(open, pendings, closed, split));
                    continue;
                }
            };
            let id = rec.command.command_id.clone();
            match records.get_mut(&id) {
                Some(prev) => {
                    if prev.result.is_none() {
                        *prev = rec;
                    }
                }
                None => {
                    order.push(Item::Command(id.clone()));
                    records.insert(id, rec);
                }
            }
        }
        for item in order {
            let id = match item {
                Item::Command(id) => id,
                Item::Positions(open, pendings, closed, split) => {
                    s.positions = open.into_iter().collect();
                    // Legs only of positions the row holds open.
                    s.legs = split
                        .into_iter()
                        .filter(|(id, legs)| s.positions.contains_key(id) && !legs.is_empty())
                        .collect();
                    s.pendings = pendings.into_iter().collect();
                    s.closed.clear();
                    s.closed_order.clear();
                    for t in closed {
                        s.remember_closed(t);
                    }
                    s.fire(T::RecoveredPositions, Subject::None);
                    continue;
                }
            };
            let Some(rec) = records.remove(&id) else {
                continue;
            };
            let subject = Subject::Command(id.clone());
            match rec.result {
                Some(result) => {
                    s.apply_to_positions(&rec.command.body, &result);
                    s.commands.insert(
                        id.clone(),
                        Entry {
                            command: rec.command,
                            state: State::Executed { result },
                            record_failures: 0,
                            deadline: None,
                            refusal: None,
                            steps: None,
                        },
                    );
                    s.executed_order.push_back((None, id));
                    s.unstamped = true;
                    s.fire(T::RecoveredExecuted, subject);
                }
                None => {
                    if let CommandBody::Execute { volume, terms, .. }
                    | CommandBody::PlacePending { volume, terms, .. } = &rec.command.body
                    {
                        // Maybe placed: it counts against the exposure limits until answered.
                        s.reserved
                            .insert(id.clone(), Volume::from_lots(*volume).unwrap_or_default());
                        if terms.sizing != SlaveSizing::Final {
                            // `volume` is the master's lots; what was placed is the broker's
                            // to say (T48).
                            s.unsized_in_doubt.insert(id.clone());
                        }
                    }
                    let steps = s.doubt_steps(&rec.command.body);
                    let split = steps.is_some();
                    s.commands.insert(
                        id.clone(),
                        Entry {
                            command: rec.command,
                            state: State::InDoubt,
                            record_failures: 0,
                            deadline: None,
                            refusal: None,
                            steps,
                        },
                    );
                    s.pending += 1;
                    s.m.queried += 1;
                    if split {
                        s.fire(T::RecoveredSplitInDoubt, subject);
                        s.emit_step(&id, 0);
                    } else {
                        s.fire(T::RecoveredInDoubt, subject);
                        s.out.push_back(Output::QueryOrder { command_id: id });
                    }
                }
            }
        }
        s
    }

    /// What a compacted file must hold to recover the same executor (dedupe set, positions,
    /// closed tickets, commands in doubt): the retained records oldest first, a `Positions`
    /// row, then every unfinished command whose write-ahead is durable (as a record without
    /// result — after a crash it is in doubt, exactly as its write-ahead row alone would
    /// make it). `None` while a storage write is in flight: its row may or may not be on
    /// disk, so the file cannot be summarised yet. A cancel whose record is not durable has
    /// no write-ahead and is left out, as a crash would leave it.
    pub fn durable_image(&self) -> Option<Vec<DurableRow>> {
        self.durable_rows().map(Iterator::collect)
    }

    /// [`SlaveExecutor::durable_image`] one row at a time (each cloned when it is reached),
    /// so a driver can stream a compaction without holding the image twice.
    pub fn durable_rows(&self) -> Option<impl Iterator<Item = DurableRow> + '_> {
        if !self.ops.is_empty() {
            return None;
        }
        let retained =
            self.executed_order
                .iter()
                .filter_map(move |(_, id)| match self.commands.get(id) {
                    Some(Entry {
                        command,
                        state: State::Executed { result },
                        ..
                    }) => Some(DurableRow::Record(ExecutedRecord {
                        command: command.clone(),
                        result: Some(result.clone()),
                    })),
                    _ => None,
                });
        let positions = std::iter::once_with(move || DurableRow::Positions {
            open: self.positions.iter().map(|(t, v)| (*t, *v)).collect(),
            pendings: self.pendings.iter().map(|(t, v)| (*t, *v)).collect(),
            closed: self.closed_order.iter().copied().collect(),
            split: self
                .legs
                .iter()
                .map(|(id, legs)| (*id, legs.clone()))
                .collect(),
        });
        let written_ahead = self
            .commands
            .values()
            .filter(|e| match &e.state {
                State::Executed { .. } | State::Persisting { .. } => false,
                State::Recording { result, .. } | State::RecordRetryWait { result } => {
                    result.status != BrokerStatus::Cancelled
                }
                State::Executing
                | State::InDoubt
                | State::WaitingPrice
                | State::WaitingExposure => true,
            })
            .map(|e| {
                DurableRow::Record(ExecutedRecord {
                    command: e.command.clone(),
                    result: None,
                })
            });
        Some(retained.chain(positions).chain(written_ahead))
    }

    /// A message from the agent on the pipe.
    pub fn handle_from_agent(&mut self, now: Instant, msg: AgentToEa) {
        self.stamp(now);
        match msg {
            AgentToEa::Handshake { account, .. } => {
                if account == self.config.account {
                    self.gate_open = true;
                    self.fire(T::HandshakeAccepted, Subject::Account(account));
                } else {
                    self.gate_open = false;
                    self.m.handshake_refused += 1;
                    self.fire(T::HandshakeRefused, Subject::Account(account));
                }
            }
            AgentToEa::Command(c) => self.handle_command(now, c),
            AgentToEa::Cancel(c) => {
                let known = self.commands.contains_key(&c.command_id)
                    || self.refused.contains_key(&c.command_id);
                // Refused for this EA's own account (a command naming another account gets no
                // result: it would name a slave that is not this one).
                let refusal = self
                    .refused
                    .get(&c.command_id)
                    .copied()
                    .or_else(|| self.validate(&c).err());
                let refused = self.gate_open
                    && !self.commands.contains_key(&c.command_id)
                    && refusal.is_some_and(|e| e != ErrorCode::UnknownAccount);
                // A malformed command is refused whatever asks for it: same verdict always.
                if !self.gate_open || known || self.validate(&c).is_err() {
                    let result = unfilled(&c, BrokerStatus::Rejected);
                    // Same verdict as a redelivery: the stored result, a refusal, or RETRY.
                    self.handle_command(now, c);
                    if refused {
                        // The core gave up and must learn the command never executes, even
                        // through a legacy agent that sends no stage acks.
                        self.fire(
                            T::CancelRefused,
                            Subject::Command(result.command_id.clone()),
                        );
                        self.out
                            .push_back(Output::ToAgent(EaToAgent::Execution(result)));
                    }
                } else if self.pending >= self.config.max_pending {
                    // A cancel record is unfinished work too: the same bound applies.
                    let id = c.command_id.clone();
                    self.m.retry_busy += 1;
                    self.fire(T::Busy, Subject::Command(id.clone()));
                    self.pipe_ack(&id, PipeStatus::Retry, None);
                } else {
                    self.cancel_unknown(c);
                }
            }
            AgentToEa::IntentAck(_) | AgentToEa::DeliveryConfig(_) => {
                self.m.ignored_messages += 1;
                self.fire(T::NotForSlave, Subject::None);
            }
        }
    }

    /// The pipe session ended: the next one must handshake before anything is executed.
    pub fn handle_pipe_closed(&mut self, now: Instant) {
        self.stamp(now);
        self.gate_open = false;
        self.fire(T::PipeClosed, Subject::None);
    }

    /// The result of a `PersistExecuting` or `PersistExecuted`.
    pub fn handle_persist_result(
        &mut self,
        now: Instant,
        op: OpId,
        result: Result<(), PersistError>,
    ) {
        self.stamp(now);
        let Some(id) = self.ops.remove(&op) else {
            self.m.ignored_persist_results += 1;
            self.fire(T::PersistIgnored, Subject::None);
            return;
        };
        let subject = Subject::Command(id.clone());
        let Some(entry) = self.commands.get(&id) else {
            self.m.ignored_persist_results += 1;
            self.fire(T::PersistIgnored, subject);
            return;
        };
        match (&entry.state, result) {
            (State::Persisting { op: cur }, Ok(())) if *cur == op => {
                let body = entry.command.body.clone();
                if self.waits_for_exposure(&body) {
                    self.fire(T::WaitExposure, subject);
                    self.pipe_ack(&id, PipeStatus::Ok, None);
                    self.set_state(&id, State::WaitingExposure);
                    return;
                }
                if body_is_pending(&body) {
                    self.execute_pending(id, body, subject);
                    return;
                }
                let known_position = match &body {
                    CommandBody::Execute { .. } => true,
                    // A pending order of ours may have filled on its own at the broker (its
                    // master's trigger may never come, e.g. refused as malformed): a modify or
                    // a full close of its ticket is the broker's to answer, not ours.
                    CommandBody::Modify { slave_ticket, .. } => {
                        self.positions.contains_key(slave_ticket)
                            || self.pendings.contains_key(slave_ticket)
                    }
                    CommandBody::Close {
                        slave_ticket,
                        volume,
                        ..
                    } if *volume == 0.0 => {
                        self.positions.contains_key(slave_ticket)
                            || self.pendings.contains_key(slave_ticket)
                    }
                    b => self.positions.contains_key(&b.slave_ticket()),
                };
                let closed_ticket = match &body {
                    CommandBody::Close { slave_ticket, .. }
                    | CommandBody::ClosePart { slave_ticket, .. } => {
                        Some(*slave_ticket).filter(|t| !known_position && self.closed.contains(t))
                    }
                    _ => None,
                };
                if let Some(ticket) = closed_ticket {
                    let done = ExecutionResult {
                        slave_ticket: ticket,
                        ..unfilled(&entry.command, BrokerStatus::Filled)
                    };
                    self.fire(T::AlreadyClosed, subject);
                    self.pipe_ack(&id, PipeStatus::Ok, None);
                    self.issue_record(&id, done);
                    return;
                }
                // A split position: one broker step per leg (T44), or a share kept (T25).
                if known_position && self.legs.contains_key(&body.slave_ticket()) {
                    let ticket = body.slave_ticket();
                    match self.position_steps(&body) {
                        Some(steps) if !steps.orders.is_empty() => {
                            self.fire(T::SplitSteps, subject);
                            self.pipe_ack(&id, PipeStatus::Ok, None);
                            self.m.placed += 1;
                            self.start_steps(&id, steps);
                        }
                        _ => {
                            let kept = ExecutionResult {
                                slave_ticket: ticket,
                                legs: self.leg_list(ticket),
                                ..unfilled(&entry.command, BrokerStatus::Filled)
                            };
                            self.fire(T::KeepShare, subject);
                            self.pipe_ack(&id, PipeStatus::Ok, None);
                            self.issue_record(&id, kept);
                        }
                    }
                    return;
                }
                // A partial close is resolved here, once: the write-ahead is durable, so this
                // command is never placed again, and the position it reads is final (the
                // core sends a trade's next command only after this one's result).
                let body = match (known_position, &body) {
                    (
                        true,
                        CommandBody::ClosePart {
                            slave_ticket,
                            fraction,
                        },
                    ) => {
                        let open = self.positions.get(slave_ticket).copied().unwrap_or(0.0);
                        match slave_close(fraction, open) {
                            Some(CloseDecision::Partial(v)) => CommandBody::Close {
                                slave_ticket: *slave_ticket,
                                volume: v.lots(),
                            },
                            Some(CloseDecision::All) => CommandBody::Close {
                                slave_ticket: *slave_ticket,
                                volume: 0.0,
                            },
                            // Validated at T05, so only Keep remains.
                            Some(CloseDecision::Keep) | None => {
                                let kept = ExecutionResult {
                                    slave_ticket: *slave_ticket,
                                    ..unfilled(&entry.command, BrokerStatus::Filled)
                                };
                                self.fire(T::KeepShare, subject);
                                self.pipe_ack(&id, PipeStatus::Ok, None);
                                self.issue_record(&id, kept);
                                return;
                            }
                        }
                    }
                    _ => body,
                };
                if let CommandBody::Execute { .. } = &body {
                    self.decide_open_now(now, id, body, subject, true);
                } else if known_position {
                    self.set_state(&id, State::Executing);
                    self.m.placed += 1;
                    self.fire(T::Place, subject);
                    self.pipe_ack(&id, PipeStatus::Ok, None);
                    self.out.push_back(Output::PlaceOrder {
                        command_id: id,
                        body,
                    });
                } else {
                    // The broker would refuse a ticket we never opened or already closed;
                    // answering as it would keeps one path for every rejection.
                    self.answer_unheld(id, T::NoPosition, "no open position for this ticket");
                }
            }
            (State::Persisting { op: cur }, Err(_)) if *cur == op => {
                self.m.write_ahead_failures += 1;
                self.commands.remove(&id);
                self.pending = self.pending.saturating_sub(1);
                self.fire(T::WriteAheadFailed, subject);
                self.pipe_ack(&id, PipeStatus::Retry, None);
            }
            (State::Recording { op: cur, result: r }, Ok(())) if *cur == op => {
                let r = r.clone();
                let body = entry.command.body.clone();
                self.reserved.remove(&id);
                self.apply_to_positions(&body, &r);
                self.set_state(&id, State::Executed { result: r.clone() });
                self.executed_order.push_back((Some(now), id.clone()));
                self.pending = self.pending.saturating_sub(1);
                self.m.executed += 1;
                if r.status == BrokerStatus::Rejected {
                    self.m.rejected_by_broker += 1;
                }
                self.fire(T::Executed, subject);
                self.out.push_back(Output::ToAgent(EaToAgent::Execution(r)));
                self.enforce_retention(now);
            }
            (State::Recording { op: cur, result: r }, Err(_)) if *cur == op => {
                let r = r.clone();
                self.m.record_failures += 1;
                let failures = self.commands.get_mut(&id).map_or(1, |e| {
                    e.record_failures = e.record_failures.saturating_add(1);
                    e.record_failures
                });
                self.set_state(&id, State::RecordRetryWait { result: r });
                let at = now + backoff(self.config.retry_backoff_ms, failures);
                self.arm(&id, at);
                self.fire(T::RecordFailed, subject);
            }
            _ => {
                self.m.ignored_persist_results += 1;
                self.fire(T::PersistIgnored, subject);
            }
        }
    }

    /// What the broker answered to a `PlaceOrder` or `QueryOrder`.
    pub fn handle_broker_result(
        &mut self,
        now: Instant,
        command_id: CommandId,
        outcome: BrokerOutcome,
    ) {
        self.stamp(now);
        let subject = Subject::Command(command_id.clone());
        let waiting = matches!(
            self.commands.get(&command_id),
            Some(Entry {
                state: State::Executing | State::InDoubt,
                steps: None,
                ..
            })
        );
        if !waiting {
            self.m.ignored_broker_results += 1;
            self.fire(T::BrokerIgnored, subject);
            return;
        }
        let Some(mut result) = self.result_for(&command_id, &outcome) else {
            return;
        };
        let (refusal, trigger) = self.commands.get(&command_id).map_or((None, false), |e| {
            let trigger = matches!(
                e.command.body,
                CommandBody::ResolvePending {
                    resolution: PendingResolution::Trigger,
                    ..
                }
            );
            (e.refusal, trigger)
        });
        let deleted =
            trigger && matches!(outcome, BrokerOutcome::Filled { volume, .. } if volume == 0.0);
        if deleted {
            // The broker deleted the pending order, which had not filled, and opened nothing
            // (the guard refused the market fallback): REJECTED, leaving no ticket. A broker
            // *rejection* of the step (market closed) deleted nothing: the pending order still
            // rests and may fill, so it stays booked under its ticket (T14).
            result.status = BrokerStatus::Rejected;
            result.slave_ticket = 0;
            result.fill_price = 0.0;
        }
        match refusal {
            Some(r) if deleted => {
                result.reason = Some(r.error_code());
                self.m.terms_refused += 1;
                self.fire(T::TriggerGuardRefused, subject);
            }
            // Deleted by a step sent before a crash: the guard's reason died with it, the
            // core records BROKER_REJECTED.
            _ => self.fire(T::BrokerAnswered, subject),
        }
        self.issue_record(&command_id, result.clone());
        self.learn_in_doubt_size(now, &command_id, &result);
    }

    /// What the broker answered to a `PlaceLeg` or `QueryLeg` (leg `leg` of `command_id`).
    pub fn handle_leg_result(
        &mut self,
        now: Instant,
        command_id: CommandId,
        leg: u32,
        outcome: BrokerOutcome,
    ) {
        self.stamp(now);
        let subject = Subject::Command(command_id.clone());
        let k = leg as usize;
        let next = match self.commands.get_mut(&command_id) {
            Some(Entry {
                state: State::Executing | State::InDoubt,
                steps: Some(steps),
                ..
            }) if steps.answers.len() == k => {
                let filled = matches!(outcome, BrokerOutcome::Filled { .. });
                steps.answers.push(outcome);
                match &steps.of {
                    StepsOf::Open { .. } if !filled => None,
                    StepsOf::Open { .. } if steps.in_doubt => {
                        Some(k + 1).filter(|n| *n < MAX_SPLIT_LEGS)
                    }
                    _ => Some(k + 1).filter(|n| *n < steps.orders.len()),
                }
            }
            _ => {
                self.m.ignored_broker_results += 1;
                self.fire(T::LegIgnored, subject);
                return;
            }
        };
        match next {
            Some(n) => {
                self.fire(T::LegAnswered, subject);
                self.emit_step(&command_id, n);
            }
            None => {
                self.fire(T::LegsDone, subject);
                if let Some(result) = self.steps_result(&command_id) {
                    self.issue_record(&command_id, result.clone());
                    self.learn_in_doubt_size(now, &command_id, &result);
                }
            }
        }
    }

    /// Processes every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.stamp(now);
        let due: Vec<(Instant, CommandId)> = self
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .cloned()
            .collect();
        for (at, id) in due {
            self.timers.remove(&(at, id.clone()));
            let Some(e) = self.commands.get_mut(&id) else {
                continue;
            };
            e.deadline = None;
            if let State::RecordRetryWait { result } = &e.state {
                let result = result.clone();
                self.fire(T::RecordRetry, Subject::Command(id.clone()));
                self.issue_record(&id, result);
            } else if e.state == State::WaitingPrice {
                let body = e.command.body.clone();
                self.fire(T::WindowClosed, Subject::Command(id.clone()));
                match self.decide(&body, false) {
                    OpenDecision::Place(v) => self.place_open(id, body, v),
                    OpenDecision::Refuse(r) => self.refuse_open(&id, r),
                    // Unreachable without waiting; refusing keeps the verdict final.
                    OpenDecision::WaitForPrice => self.refuse_open(&id, SkipReason::PriceDeviation),
                }
            }
        }
    }

    /// A fact from the slave's terminal. A quote (or any fact) may let an open waiting for
    /// its price be placed now (`T29`).
    pub fn handle_fact(&mut self, now: Instant, fact: Fact) {
        self.stamp(now);
        let fin = |x: f64| x.is_finite();
        let touched = match fact {
            Fact::Account(a) if fin(a.balance) && fin(a.equity) && fin(a.free_margin) => {
                self.account = Some(a);
                None
            }
            Fact::Symbol(sym, f)
                if f.limits.is_valid()
                    && fin(f.margin_per_lot)
                    && (self.symbols.contains_key(&sym) || self.symbols.len() < MAX_SYMBOLS) =>
            {
                self.symbols.insert(sym.clone(), f);
                Some(sym)
            }
            Fact::Quote { symbol, bid, ask }
                if fin(bid)
                    && fin(ask)
                    && (self.quotes.contains_key(&symbol) || self.quotes.len() < MAX_SYMBOLS) =>
            {
                self.quotes.insert(symbol.clone(), (bid, ask));
                Some(symbol)
            }
            _ => {
                self.m.ignored_facts += 1;
                return;
            }
        };
        let waiting: Vec<(CommandId, CommandBody)> = self
            .commands
            .iter()
            .filter(|(_, e)| e.state == State::WaitingPrice)
            .filter(|(_, e)| match (&e.command.body, &touched) {
                (CommandBody::Execute { symbol, .. }, Some(t)) => symbol == t,
                _ => true,
            })
            .map(|(id, e)| (id.clone(), e.command.body.clone()))
            .collect();
        for (id, body) in waiting {
            if let OpenDecision::Place(v) = self.decide(&body, true) {
                if let Some(at) = self.commands.get_mut(&id).and_then(|e| e.deadline.take()) {
                    self.timers.remove(&(at, id.clone()));
                }
                self.fire(T::PriceBack, Subject::Command(id.clone()));
                self.place_open(id, body, v);
            }
        }
    }

    /// Copied positions held plus opens placed and not yet answered.
    pub fn exposure(&self) -> (u32, Volume) {
        // A pending order may fill on its own at any moment: it counts like a position.
        let held = self
            .positions
            .values()
            .chain(self.pendings.values())
            .fold(Volume::ZERO, |acc, lots| {
                acc.saturating_add(Volume::from_lots(*lots).unwrap_or_default())
            });
        let in_flight = if crate::mutants::active(crate::mutants::Mutant::ExposureIgnoresInFlight) {
            0
        } else {
            self.reserved.len()
        };
        let reserved = self
            .reserved
            .values()
            .take(in_flight)
            .fold(Volume::ZERO, |acc, v| acc.saturating_add(*v));
        let count = self.positions.len() + self.pendings.len() + in_flight;
        (
            u32::try_from(count).unwrap_or(u32::MAX),
            held.saturating_add(reserved),
        )
    }

    /// What the terminal last reported for `symbol` (facts, quote).
    pub fn symbol_view(&self, symbol: &Symbol) -> (Option<SymbolFacts>, Option<(f64, f64)>) {
        (
            self.symbols.get(symbol).copied(),
            self.quotes.get(symbol).copied(),
        )
    }

    pub fn account_facts(&self) -> Option<AccountFacts> {
        self.account
    }

    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub fn metrics(&self) -> SlaveMetrics {
        SlaveMetrics {
            pending: self.pending,
            known_commands: self.commands.len(),
            open_positions: self.positions.len(),
            retained_executed: self.executed_order.len(),
            closed_tickets: self.closed_order.len(),
            split_positions: self.legs.len(),
            ..self.m
        }
    }

    pub fn is_gate_open(&self) -> bool {
        self.gate_open
    }

    /// Open volume of a slave position, as known from durable results.
    pub fn open_volume(&self, slave_ticket: i64) -> Option<f64> {
        self.positions.get(&slave_ticket).copied()
    }

    /// The legs (ticket, lots) of a split position, as known from durable results; `None` for
    /// a position that is one order (or none).
    pub fn position_legs(&self, position: i64) -> Option<&[(i64, f64)]> {
        self.legs.get(&position).map(Vec::as_slice)
    }

    /// Volume of one of this EA's pending orders (placed, not yet triggered or cancelled by
    /// its master), as known from durable results.
    pub fn pending_volume(&self, slave_ticket: i64) -> Option<f64> {
        self.pendings.get(&slave_ticket).copied()
    }

    // ---- internals ----

    fn handle_command(&mut self, _now: Instant, c: Command) {
        let id = c.command_id.clone();
        let subject = Subject::Command(id.clone());
        if !self.gate_open {
            self.m.retry_gate += 1;
            self.fire(T::GateClosed, subject);
            self.pipe_ack(&id, PipeStatus::Retry, None);
            return;
        }
        let forget = crate::mutants::active(crate::mutants::Mutant::SlaveForgetsDedupe)
            && matches!(
                self.commands.get(&id).map(|e| &e.state),
                Some(State::Executed { result }) if result.status == BrokerStatus::Filled
            );
        if forget {
            self.commands.remove(&id);
        }
        if let Some(e) = self.commands.get(&id) {
            let cancel_pending = matches!(
                &e.state,
                State::Recording { result, .. } | State::RecordRetryWait { result }
                    if result.status == BrokerStatus::Cancelled
            );
            if cancel_pending {
                self.m.retry_not_durable += 1;
                self.fire(T::NotYetDurable, subject);
                self.pipe_ack(&id, PipeStatus::Retry, None);
                return;
            }
            match &e.state {
                // A cancel record not yet durable has no durable write-ahead either.
                State::Persisting { .. } => {
                    self.m.retry_not_durable += 1;
                    self.fire(T::NotYetDurable, subject);
                    self.pipe_ack(&id, PipeStatus::Retry, None);
                }
                State::Executed { result } => {
                    let result = result.clone();
                    self.m.duplicates += 1;
                    self.fire(T::Repeated, subject);
                    self.pipe_ack(&id, PipeStatus::Ok, None);
                    self.out
                        .push_back(Output::ToAgent(EaToAgent::Execution(result)));
                }
                _ => {
                    self.m.duplicates += 1;
                    self.fire(T::Repeated, subject);
                    self.pipe_ack(&id, PipeStatus::Ok, None);
                }
            }
            return;
        }
        if let Some(&reason) = self.refused.get(&id) {
            self.fire(T::RefusedAgain, subject);
            self.pipe_ack(&id, PipeStatus::Failed, Some(reason));
            return;
        }
        if let Err(reason) = self.validate(&c) {
            self.m.malformed += 1;
            self.remember_refusal(id.clone(), reason);
            self.fire(T::Malformed, subject);
            self.pipe_ack(&id, PipeStatus::Failed, Some(reason));
            return;
        }
        if self.pending >= self.config.max_pending {
            self.m.retry_busy += 1;
            self.fire(T::Busy, subject);
            self.pipe_ack(&id, PipeStatus::Retry, None);
            return;
        }
        let op = self.alloc_op(&id);
        self.pending += 1;
        self.commands.insert(
            id,
            Entry {
                command: c.clone(),
                state: State::Persisting { op },
                record_failures: 0,
                deadline: None,
                refusal: None,
                steps: None,
            },
        );
        self.fire(T::Accepted, subject);
        self.out
            .push_back(Output::PersistExecuting { op, command: c });
    }

    fn validate(&self, c: &Command) -> Result<(), ErrorCode> {
        if c.slave != self.config.account {
            return Err(ErrorCode::UnknownAccount);
        }
        let level = |x: f64| x.is_finite() && x >= 0.0;
        // An open or a placement: positive lots, valid terms, SL/TP levels; `priced` for
        // the price (an open's may be 0 = market, a pending order's must be > 0).
        let entry = |volume: f64, terms: &ExecTerms, priced: bool, sl: f64, tp: f64| {
            terms.is_valid()
                && volume.is_finite()
                && volume > 0.0
                && priced
                && level(sl)
                && level(tp)
        };
        let ok = !c.command_id.as_str().is_empty()
            && match &c.body {
                CommandBody::Execute {
                    volume,
                    price,
                    stop_loss,
                    take_profit,
                    terms,
                    ..
                } => entry(*volume, terms, level(*price), *stop_loss, *take_profit),
                CommandBody::Modify {
                    slave_ticket,
                    stop_loss,
                    take_profit,
                } => *slave_ticket > 0 && level(*stop_loss) && level(*take_profit),
                // volume 0 closes the whole position.
                CommandBody::Close {
                    slave_ticket,
                    volume,
                } => *slave_ticket > 0 && level(*volume),
                // A fraction that cannot be evaluated is refused, never guessed.
                CommandBody::ClosePart {
                    slave_ticket,
                    fraction,
                } => *slave_ticket > 0 && slave_close(fraction, 1.0).is_some(),
                CommandBody::PlacePending {
                    volume,
                    price,
                    stop_loss,
                    take_profit,
                    terms,
                    ..
                } => {
                    let priced = price.is_finite() && *price > 0.0;
                    entry(*volume, terms, priced, *stop_loss, *take_profit)
                }
                CommandBody::ModifyPending {
                    slave_ticket,
                    price,
                    stop_loss,
                    take_profit,
                } => {
                    *slave_ticket > 0
                        && price.is_finite()
                        && *price > 0.0
                        && level(*stop_loss)
                        && level(*take_profit)
                }
                CommandBody::ResolvePending {
                    slave_ticket,
                    price,
                    stop_loss,
                    take_profit,
                    terms,
                    ..
                } => {
                    *slave_ticket > 0
                        && terms.is_valid()
                        && level(*price)
                        && level(*stop_loss)
                        && level(*take_profit)
                }
                // The EA's own broker step: never a command.
                CommandBody::TriggerPending { .. } => false,
            };
        if ok {
            Ok(())
        } else {
            Err(ErrorCode::InvalidArgument)
        }
    }

    fn remember_refusal(&mut self, id: CommandId, reason: ErrorCode) {
        if self.refused_order.len() >= FAILED_MEMORY {
            if let Some(old) = self.refused_order.pop_front() {
                self.refused.remove(&old);
            }
        }
        self.refused_order.push_back(id.clone());
        self.refused.insert(id, reason);
    }

    /// Remembers a ticket closed in full, forgetting the oldest past the bound (a close of a
    /// forgotten one is then answered as the broker would: no position, T10).
    fn remember_closed(&mut self, ticket: i64) {
        if !self.closed.insert(ticket) {
            return;
        }
        self.closed_order.push_back(ticket);
        while self.closed_order.len() > self.config.max_executed_retained.max(1) {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
    }

    /// Evicts executed records past `max_executed_retained`, oldest first, each only once it
    /// is `min_retained_ms` old (T39). Only executed records are ever in `executed_order`,
    /// so an unfinished command is never evicted; positions and closed tickets are kept apart
    /// and stay.
    fn enforce_retention(&mut self, now: Instant) {
        let bound = self.config.max_executed_retained.max(1);
        let min_age = Duration::from_millis(self.config.min_retained_ms);
        let ignore_age = crate::mutants::active(crate::mutants::Mutant::SlaveEvictsYoung);
        while self.executed_order.len() > bound {
            if crate::mutants::active(crate::mutants::Mutant::SlaveEvictsUnfinished) {
                // The planted bug: an unfinished command is evicted along with the oldest.
                let unfinished = self
                    .commands
                    .iter()
                    .find(|(_, e)| !matches!(e.state, State::Executed { .. }))
                    .map(|(id, _)| id.clone());
                if let Some(id) = unfinished {
                    self.commands.remove(&id);
                    self.reserved.remove(&id);
                    self.pending = self.pending.saturating_sub(1);
                    self.m.evicted += 1;
                    self.fire(T::Evicted, Subject::Command(id));
                }
            }
            let old_enough = match self.executed_order.front() {
                Some((Some(at), _)) => *at + min_age <= now,
                Some((None, _)) => false,
                None => break,
            };
            if !old_enough && !ignore_age {
                break;
            }
            let Some((_, id)) = self.executed_order.pop_front() else {
                break;
            };
            self.commands.remove(&id);
            self.m.evicted += 1;
            self.fire(T::Evicted, Subject::Command(id));
        }
    }

    /// Stamps the records recovered from the file with the first time the driver reports:
    /// their age is counted from the restart (they are at least that old).
    fn stamp(&mut self, now: Instant) {
        if !self.unstamped {
            return;
        }
        self.unstamped = false;
        for (at, _) in self.executed_order.iter_mut() {
            if at.is_none() {
                *at = Some(now);
            }
        }
    }

    fn result_for(&self, id: &CommandId, outcome: &BrokerOutcome) -> Option<ExecutionResult> {
        let c = &self.commands.get(id)?.command;
        let command_ticket = c.body.slave_ticket();
        let (slave_ticket, fill_price, filled_volume, status) = match outcome {
            BrokerOutcome::Filled {
                ticket,
                price,
                volume,
            } => (*ticket, *price, *volume, BrokerStatus::Filled),
            BrokerOutcome::Rejected { .. } => (command_ticket, 0.0, 0.0, BrokerStatus::Rejected),
        };
        Some(ExecutionResult {
            command_id: id.clone(),
            trade_id: c.trade_id.clone(),
            slave: c.slave.clone(),
            slave_ticket,
            fill_price,
            filled_volume,
            status,
            reason: None,
            legs: Vec::new(),
        })
    }

    fn issue_record(&mut self, id: &CommandId, result: ExecutionResult) {
        let op = self.alloc_op(id);
        self.set_state(
            id,
            State::Recording {
                op,
                result: result.clone(),
            },
        );
        if result.status == BrokerStatus::Cancelled {
            // A cancelled command has no write-ahead record: this write carries the command.
            if let Some(command) = self.commands.get(id).map(|e| e.command.clone()) {
                self.out.push_back(Output::PersistCancelled {
                    op,
                    command,
                    result,
                });
            }
            return;
        }
        self.out.push_back(Output::PersistExecuted {
            op,
            command_id: id.clone(),
            result,
        });
    }

    /// The core gave up on a command this EA never saw: refuse it durably, forever.
    fn cancel_unknown(&mut self, c: Command) {
        let id = c.command_id.clone();
        let result = unfilled(&c, BrokerStatus::Cancelled);
        self.commands.insert(
            id.clone(),
            Entry {
                command: c,
                state: State::Executing,
                record_failures: 0,
                deadline: None,
                refusal: None,
                steps: None,
            },
        );
        self.pending += 1;
        self.fire(T::CancelUnknown, Subject::Command(id.clone()));
        self.issue_record(&id, result);
    }

    fn apply_to_positions(&mut self, body: &CommandBody, r: &ExecutionResult) {
        if self.apply_to_split(body, r) {
            return;
        }
        if let CommandBody::ResolvePending { slave_ticket, .. } = body {
            // A trigger whose market fallback the guard refused: the broker deleted the
            // pending order and no ticket is left (T36; a copy-policy reason in records
            // written before the ticket said so). A rejection that names the ticket leaves
            // the order resting.
            if r.status == BrokerStatus::Rejected && (r.slave_ticket == 0 || r.reason.is_some()) {
                self.pendings.remove(slave_ticket);
            }
        }
        if r.status != BrokerStatus::Filled {
            return;
        }
        match body {
            CommandBody::Execute { .. } => {
                self.positions.insert(r.slave_ticket, r.filled_volume);
            }
            CommandBody::PlacePending { .. } => {
                self.pendings.insert(r.slave_ticket, r.filled_volume);
            }
            CommandBody::ResolvePending {
                slave_ticket,
                resolution,
                ..
            } => {
                // The master decided: the pending order is gone either way; a trigger leaves
                // the position under the ticket the broker named (the pending's own when it
                // had filled), a cancel nothing (a filled pending was closed).
                self.pendings.remove(slave_ticket);
                if *resolution == PendingResolution::Trigger && r.slave_ticket > 0 {
                    self.positions.insert(r.slave_ticket, r.filled_volume);
                }
            }
            // A modify of a ticket we know as a pending order leaves it where it is: whether the
            // broker changed the order or the position it became, only its trigger or its
            // close resolves it.
            CommandBody::Modify { .. }
            | CommandBody::ModifyPending { .. }
            | CommandBody::TriggerPending { .. } => {}
            CommandBody::Close { slave_ticket, .. }
            | CommandBody::ClosePart { slave_ticket, .. } => {
                let whole = matches!(body, CommandBody::Close { volume, .. } if *volume == 0.0);
                // A full close of a pending order of ours that had filled on its own.
                if whole && self.pendings.remove(slave_ticket).is_some() {
                    self.remember_closed(*slave_ticket);
                }
                let remaining = self
                    .positions
                    .remove(slave_ticket)
                    .map(|open| open - r.filled_volume);
                // What a partial close leaves may live on under a new ticket (MT4 moves it).
                let ticket = if r.slave_ticket > 0 {
                    r.slave_ticket
                } else {
                    *slave_ticket
                };
                match remaining {
                    // Lots have two or three decimals; anything below a micro-lot is gone.
                    Some(left) if !whole && left > 1e-9 => {
                        self.positions.insert(ticket, left);
                    }
                    Some(_) => self.remember_closed(*slave_ticket),
                    None => {}
                }
            }
        }
    }

    /// A split open's or a split position's result (T43): the legs it names are the
    /// position's from now on (`true`: handled here).
    fn apply_to_split(&mut self, body: &CommandBody, r: &ExecutionResult) -> bool {
        let legs: Vec<(i64, f64)> = r.legs.iter().map(|l| (l.ticket, l.volume)).collect();
        match body {
            CommandBody::Execute { .. } => {
                if r.status != BrokerStatus::Filled || legs.len() < 2 {
                    return false;
                }
                self.positions.insert(r.slave_ticket, legs_total(&legs));
                self.legs.insert(r.slave_ticket, legs);
                true
            }
            CommandBody::Modify { slave_ticket, .. }
            | CommandBody::Close { slave_ticket, .. }
            | CommandBody::ClosePart { slave_ticket, .. }
                if self.legs.contains_key(slave_ticket) =>
            {
                let closes = !matches!(body, CommandBody::Modify { .. });
                if !legs.is_empty() {
                    self.positions.insert(*slave_ticket, legs_total(&legs));
                    self.legs.insert(*slave_ticket, legs);
                } else if closes && r.status == BrokerStatus::Filled {
                    // Every leg closed: the position is gone.
                    self.positions.remove(slave_ticket);
                    self.legs.remove(slave_ticket);
                    self.remember_closed(*slave_ticket);
                }
                true
            }
            _ => false,
        }
    }

    /// The legs of a split position as a result names them.
    fn leg_list(&self, position: i64) -> Vec<Leg> {
        self.legs.get(&position).map_or_else(Vec::new, |legs| {
            legs.iter()
                .map(|(ticket, volume)| Leg {
                    ticket: *ticket,
                    volume: *volume,
                })
                .collect()
        })
    }

    /// The broker steps of a modify or close of a split position (T44; T45 plans them again
    /// from the same durable legs): `None` if the ticket is not a split position. A partial
    /// close is resolved against the position's total (`policy::partial`), then taken from the
    /// legs; no orders: nothing to close now (the share is kept).
    fn position_steps(&self, body: &CommandBody) -> Option<Steps> {
        let position = body.slave_ticket();
        let legs = self.legs.get(&position)?.clone();
        let volumes: Vec<Volume> = legs
            .iter()
            .map(|(_, v)| Volume::from_lots(*v).unwrap_or_default())
            .collect();
        let all = || -> Vec<(usize, CommandBody)> {
            (0..legs.len())
                .rev()
                .map(|i| {
                    (
                        i,
                        CommandBody::Close {
                            slave_ticket: legs[i].0,
                            volume: 0.0,
                        },
                    )
                })
                .collect()
        };
        let take = |close: Volume, limits: &SymbolLimits| -> Vec<(usize, CommandBody)> {
            let takes = take_from_legs(&volumes, close, limits);
            (0..legs.len())
                .rev()
                .filter(|&i| !takes[i].is_zero())
                .map(|i| {
                    let volume = if takes[i] == volumes[i] {
                        0.0
                    } else {
                        takes[i].lots()
                    };
                    (
                        i,
                        CommandBody::Close {
                            slave_ticket: legs[i].0,
                            volume,
                        },
                    )
                })
                .collect()
        };
        let (mut orders, modify, whole) = match body {
            CommandBody::Modify {
                stop_loss,
                take_profit,
                ..
            } => (
                legs.iter()
                    .enumerate()
                    .map(|(i, (ticket, _))| {
                        (
                            i,
                            CommandBody::Modify {
                                slave_ticket: *ticket,
                                stop_loss: *stop_loss,
                                take_profit: *take_profit,
                            },
                        )
                    })
                    .collect(),
                true,
                false,
            ),
            CommandBody::Close { volume, .. } if *volume == 0.0 => (all(), false, true),
            CommandBody::Close { volume, .. } => {
                // Lots, not a fraction: taken as they come, on the unit step.
                let close = Volume::from_lots(*volume).unwrap_or_default();
                let unit = SymbolLimits {
                    min: Volume(1),
                    step: Volume(1),
                    ..SymbolLimits::fx()
                };
                (take(close, &unit), false, false)
            }
            CommandBody::ClosePart { fraction, .. } => {
                let total = legs_total(&legs);
                let orders = match (slave_close(fraction, total), fraction_limits(fraction)) {
                    (Some(CloseDecision::All), _) => all(),
                    (Some(CloseDecision::Partial(v)), Some(limits)) => take(v, &limits),
                    _ => Vec::new(),
                };
                (orders, false, false)
            }
            _ => return None,
        };
        if !modify && crate::mutants::active(crate::mutants::Mutant::SplitCloseFirstLegOnly) {
            // The planted bug: a close of a split position acts on one leg only.
            orders.truncate(1);
        }
        Some(Steps {
            of: StepsOf::Position {
                position,
                legs,
                modify,
                whole,
            },
            orders,
            answers: Vec::new(),
            in_doubt: false,
        })
    }

    /// The legs to ask about for a command recovered in doubt (T45): an open with split
    /// allowed, or a modify / close of a split position; `None` otherwise (one QueryOrder).
    fn doubt_steps(&self, body: &CommandBody) -> Option<Steps> {
        let mut steps = match body {
            CommandBody::Execute { volume, terms, .. } if terms.split_max_lots > 0.0 => {
                // A core-sized split is planned from the command alone; a slave-sized one
                // from facts of that moment, not known now.
                let planned = if terms.sizing == SlaveSizing::Final {
                    open_legs(terms, Volume::from_lots(*volume).unwrap_or_default(), None).len()
                } else {
                    0
                };
                Steps {
                    of: StepsOf::Open { planned },
                    orders: Vec::new(),
                    answers: Vec::new(),
                    in_doubt: true,
                }
            }
            CommandBody::Modify { .. }
            | CommandBody::Close { .. }
            | CommandBody::ClosePart { .. } => {
                self.position_steps(body).filter(|s| !s.orders.is_empty())?
            }
            _ => return None,
        };
        steps.in_doubt = true;
        Some(steps)
    }

    /// Starts a command's broker steps: executing (legs), step 0 issued.
    fn start_steps(&mut self, id: &CommandId, steps: Steps) {
        if let Some(e) = self.commands.get_mut(id) {
            e.steps = Some(steps);
        }
        self.set_state(id, State::Executing);
        self.emit_step(id, 0);
    }

    /// Issues step `n` of a command's legs: placed, or asked about when in doubt.
    fn emit_step(&mut self, id: &CommandId, n: usize) {
        let Some(steps) = self.commands.get(id).and_then(|e| e.steps.as_ref()) else {
            return;
        };
        let leg = u32::try_from(n).unwrap_or(u32::MAX);
        let order_id = leg_order_id(id, leg);
        self.m.legs_placed += 1;
        if steps.in_doubt {
            self.out.push_back(Output::QueryLeg {
                command_id: id.clone(),
                leg,
                order_id,
            });
            return;
        }
        let Some((_, body)) = steps.orders.get(n) else {
            return;
        };
        let body = body.clone();
        self.out.push_back(Output::PlaceLeg {
            command_id: id.clone(),
            leg,
            order_id,
            body,
        });
    }

    /// The result of a command whose legs all answered (T43).
    fn steps_result(&self, id: &CommandId) -> Option<ExecutionResult> {
        let e = self.commands.get(id)?;
        let steps = e.steps.as_ref()?;
        let c = &e.command;
        let filled: Vec<(i64, f64, f64)> = steps
            .answers
            .iter()
            .filter_map(|a| match a {
                BrokerOutcome::Filled {
                    ticket,
                    price,
                    volume,
                } => Some((*ticket, *price, *volume)),
                BrokerOutcome::Rejected { .. } => None,
            })
            .collect();
        let units = |v: f64| Volume::from_lots(v).unwrap_or_default();
        let mut r = unfilled(c, BrokerStatus::Rejected);
        match &steps.of {
            StepsOf::Open { planned } => {
                let Some(first) = filled.first() else {
                    return Some(r);
                };
                let total = filled
                    .iter()
                    .fold(Volume::ZERO, |acc, (_, _, v)| acc.saturating_add(units(*v)));
                let weighted: f64 = filled.iter().map(|(_, p, v)| p * v).sum();
                r.status = BrokerStatus::Filled;
                r.slave_ticket = first.0;
                r.filled_volume = total.lots();
                r.fill_price = if total.is_zero() {
                    first.1
                } else {
                    weighted / total.lots()
                };
                let planned = if steps.in_doubt {
                    *planned
                } else {
                    steps.orders.len()
                };
                if filled.len() < planned {
                    r.reason = Some(ErrorCode::SplitIncomplete);
                }
                if filled.len() >= 2 {
                    r.legs = filled
                        .iter()
                        .map(|(ticket, _, volume)| Leg {
                            ticket: *ticket,
                            volume: *volume,
                        })
                        .collect();
                }
            }
            StepsOf::Position {
                position,
                legs,
                modify,
                whole,
            } => {
                let mut after: Vec<Option<(i64, f64)>> = legs.iter().copied().map(Some).collect();
                let mut closed = Volume::ZERO;
                let mut all_ok = true;
                let mut any_ok = false;
                let mut price = 0.0;
                for (k, (i, _)) in steps.orders.iter().enumerate() {
                    match steps.answers.get(k) {
                        Some(BrokerOutcome::Filled {
                            ticket,
                            price: p,
                            volume,
                        }) => {
                            if !any_ok {
                                price = *p;
                            }
                            any_ok = true;
                            if *modify {
                                continue;
                            }
                            let Some(Some((t, held))) = after.get(*i).copied() else {
                                continue;
                            };
                            let took = units(*volume).min(units(held));
                            closed = closed.saturating_add(took);
                            let left = units(held).saturating_sub(took);
                            // What a partial close leaves may live on under a new ticket.
                            let t = if *ticket > 0 { *ticket } else { t };
                            after[*i] = (!left.is_zero()).then(|| (t, left.lots()));
                        }
                        _ => all_ok = false,
                    }
                }
                if *whole && crate::mutants::active(crate::mutants::Mutant::SplitCloseFirstLegOnly)
                {
                    // The planted bug, its lie: the position is reported closed in full.
                    after.clear();
                }
                let after: Vec<(i64, f64)> = after.into_iter().flatten().collect();
                r.slave_ticket = *position;
                r.fill_price = price;
                r.filled_volume = closed.lots();
                r.legs = after
                    .iter()
                    .map(|(ticket, volume)| Leg {
                        ticket: *ticket,
                        volume: *volume,
                    })
                    .collect();
                let (status, reason) = match (any_ok, all_ok) {
                    (false, _) => (BrokerStatus::Rejected, None),
                    // A close that left legs open: not done, and the core keeps the ticket.
                    _ if *whole && !after.is_empty() => {
                        (BrokerStatus::Rejected, Some(ErrorCode::SplitIncomplete))
                    }
                    (true, true) => (BrokerStatus::Filled, None),
                    (true, false) => (BrokerStatus::Filled, Some(ErrorCode::SplitIncomplete)),
                };
                r.status = status;
                r.reason = reason;
            }
        }
        Some(r)
    }

    /// A command for a ticket this EA does not hold (as a position: T10; as a pending order:
    /// T35), its write-ahead durable: answered REJECTED as the broker would, never placed.
    fn answer_unheld(&mut self, id: CommandId, t: T, why: &str) {
        self.m.no_position += 1;
        let result = self.result_for(&id, &BrokerOutcome::Rejected { reason: why.into() });
        self.fire(t, Subject::Command(id.clone()));
        self.pipe_ack(&id, PipeStatus::Ok, None);
        if let Some(result) = result {
            self.issue_record(&id, result);
        }
    }

    /// A pending order's command, its write-ahead durable (SPEC.md §5.2 "Pending orders"): a
    /// placement is decided by the copy terms like an open; a modify or cancel is passed to
    /// the broker as is; a trigger converges the slave's pending order to the master's fill.
    fn execute_pending(&mut self, id: CommandId, body: CommandBody, subject: Subject) {
        if let CommandBody::PlacePending { .. } = &body {
            self.decide_placement(id, body, subject, true);
            return;
        }
        let ticket = body.slave_ticket();
        let Some(pending_volume) = self.pendings.get(&ticket).copied() else {
            // Never placed here, or already triggered / cancelled: the broker would refuse.
            self.answer_unheld(id, T::NoPending, "no pending order for this ticket");
            return;
        };
        self.pipe_ack(&id, PipeStatus::Ok, None);
        self.set_state(&id, State::Executing);
        self.m.placed += 1;
        let order = match body {
            CommandBody::ResolvePending {
                slave_ticket,
                resolution: PendingResolution::Trigger,
                symbol,
                side,
                price,
                stop_loss,
                take_profit,
                terms,
            } => {
                self.fire(T::Trigger, subject);
                // The market fallback is an open of the pending's volume at the master's
                // fill: the same guard (and facts) as any open, decided once, no waiting.
                let guard = ExecTerms {
                    max_deviation_points: terms.max_deviation_points,
                    ..ExecTerms::default()
                };
                let view = SlaveView {
                    account: self.account,
                    symbol: self.symbols.get(&symbol).copied(),
                    quote: self.quotes.get(&symbol).copied(),
                    open_positions: 0,
                    open_volume: Volume::ZERO,
                };
                let open = OpenOrder {
                    side,
                    volume: pending_volume,
                    price,
                    stop_loss,
                };
                let refusal = match decide_open(&guard, &open, &view, false) {
                    OpenDecision::Place(_) => None,
                    OpenDecision::Refuse(r) => Some(r),
                    OpenDecision::WaitForPrice => Some(SkipReason::PriceDeviation),
                };
                if let Some(e) = self.commands.get_mut(&id) {
                    e.refusal = refusal;
                }
                if crate::mutants::active(crate::mutants::Mutant::TriggerIgnoresFill) {
                    // The planted bug: open at market whatever became of the pending order.
                    CommandBody::Execute {
                        symbol,
                        side,
                        volume: pending_volume,
                        price: 0.0,
                        stop_loss,
                        take_profit,
                        terms: ExecTerms::default(),
                        catch_up: false,
                    }
                } else {
                    CommandBody::TriggerPending {
                        slave_ticket,
                        symbol,
                        side,
                        stop_loss,
                        take_profit,
                        market: refusal.is_none(),
                    }
                }
            }
            other => {
                self.fire(T::ChangePending, subject);
                other
            }
        };
        self.out.push_back(Output::PlaceOrder {
            command_id: id,
            body: order,
        });
    }

    /// An open whose write-ahead is durable, decided by its copy terms with the facts of
    /// this moment. `first`: straight from its write-ahead (fires T09 / T28 / T27 / T47 and
    /// acknowledges it); otherwise it waited for its exposure (T49 already fired and acked).
    fn decide_open_now(
        &mut self,
        now: Instant,
        id: CommandId,
        body: CommandBody,
        subject: Subject,
        first: bool,
    ) {
        let CommandBody::Execute {
            terms, catch_up, ..
        } = &body
        else {
            return;
        };
        let window = Duration::from_millis(terms.deviation_window_ms.into());
        // A catch-up never waits for the price: beyond the guard it has expired.
        let catch_up =
            *catch_up && !crate::mutants::active(crate::mutants::Mutant::CatchUpIgnoresFlag);
        let may_wait = terms.deviation_window_ms > 0 && !catch_up;
        let announce = |me: &mut Self, t: T| {
            if first {
                me.fire(t, subject.clone());
                me.pipe_ack(&id, PipeStatus::Ok, None);
            }
        };
        // The write-ahead is durable: whatever the terms decide, the EA owns it.
        match self.decide(&body, may_wait) {
            OpenDecision::Refuse(SkipReason::PriceDeviation) if catch_up => {
                let reason = crate::policy::catchup::admit(
                    crate::policy::catchup::CatchUpPolicy::default(),
                    crate::msg::IntentKind::Open,
                    0,
                    true,
                    false,
                )
                .err()
                .unwrap_or(SkipReason::Expired);
                announce(self, T::CatchUpExpired);
                self.m.catch_up_expired += 1;
                self.refuse_open(&id, reason);
            }
            OpenDecision::Place(v) => {
                announce(self, T::Place);
                self.place_open(id, body, v);
            }
            OpenDecision::WaitForPrice => {
                announce(self, T::WaitPrice);
                self.set_state(&id, State::WaitingPrice);
                self.arm(&id, now + window);
            }
            OpenDecision::Refuse(r) => {
                announce(self, T::TermsRefused);
                self.refuse_open(&id, r);
            }
        }
    }

    /// Whether an open (or placement) must wait for its exposure (T48): its terms limit the
    /// total lots, and an open recovered in doubt holds lots this EA sized that the broker
    /// has not reported yet.
    fn waits_for_exposure(&self, body: &CommandBody) -> bool {
        let limited = match body {
            CommandBody::Execute { terms, .. } | CommandBody::PlacePending { terms, .. } => {
                terms.max_total_lots > 0.0
            }
            _ => false,
        };
        limited && self.exposure_unknown()
    }

    fn exposure_unknown(&self) -> bool {
        self.unsized_in_doubt.iter().any(|id| {
            self.commands
                .get(id)
                .is_some_and(|e| e.state == State::InDoubt)
        })
    }

    /// The broker answered an open recovered in doubt (`result`, about to be recorded): its
    /// reservation becomes what the broker reports, and once no sized lots are unknown, every
    /// open waiting for its exposure is decided (T49), in command order.
    fn learn_in_doubt_size(&mut self, now: Instant, id: &CommandId, result: &ExecutionResult) {
        if !self.unsized_in_doubt.remove(id) {
            return;
        }
        if result.status == BrokerStatus::Filled {
            let lots = Volume::from_lots(result.filled_volume).unwrap_or_default();
            self.reserved.insert(id.clone(), lots);
        } else {
            self.reserved.remove(id);
        }
        // Lazily forget entries that left in_doubt some other way.
        let unknown: BTreeSet<CommandId> = self
            .unsized_in_doubt
            .iter()
            .filter(|i| {
                self.commands
                    .get(*i)
                    .is_some_and(|e| e.state == State::InDoubt && *i != id)
            })
            .cloned()
            .collect();
        self.unsized_in_doubt = unknown;
        if !self.unsized_in_doubt.is_empty() {
            return;
        }
        let waiting: Vec<(CommandId, CommandBody)> = self
            .commands
            .iter()
            .filter(|(_, e)| e.state == State::WaitingExposure)
            .map(|(i, e)| (i.clone(), e.command.body.clone()))
            .collect();
        for (wid, body) in waiting {
            let subject = Subject::Command(wid.clone());
            self.fire(T::ExposureKnown, subject.clone());
            if body_is_pending(&body) {
                self.decide_placement(wid, body, subject, false);
            } else {
                self.decide_open_now(now, wid, body, subject, false);
            }
        }
    }

    /// A PlacePending decided by its copy terms (T31 / T32); `first` as for
    /// [`Self::decide_open_now`].
    fn decide_placement(
        &mut self,
        id: CommandId,
        body: CommandBody,
        subject: Subject,
        first: bool,
    ) {
        if first {
            self.pipe_ack(&id, PipeStatus::Ok, None);
        }
        let fire = |me: &mut Self, t: T| {
            if first {
                me.fire(t, subject.clone());
            }
        };
        match self.decide(&body, false) {
            OpenDecision::Place(v) => {
                fire(self, T::PlacePending);
                self.place_open(id, body, v);
            }
            OpenDecision::Refuse(r) => {
                fire(self, T::PendingRefused);
                self.refuse_open(&id, r);
            }
            // A placement has no deviation guard, so it never waits.
            OpenDecision::WaitForPrice => {
                fire(self, T::PendingRefused);
                self.refuse_open(&id, SkipReason::PriceDeviation);
            }
        }
    }

    /// The copy terms' decision about an open command with the facts of this moment.
    fn decide(&self, body: &CommandBody, may_wait: bool) -> OpenDecision {
        let (CommandBody::Execute {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            terms,
            ..
        }
        | CommandBody::PlacePending {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            terms,
            ..
        }) = body
        else {
            return OpenDecision::Refuse(SkipReason::AccountFactsUnknown);
        };
        let (open_positions, open_volume) = self.exposure();
        let view = SlaveView {
            account: self.account,
            symbol: self.symbols.get(symbol).copied(),
            quote: self.quotes.get(symbol).copied(),
            open_positions,
            open_volume,
        };
        let order = OpenOrder {
            side: *side,
            volume: *volume,
            price: *price,
            stop_loss: *stop_loss,
        };
        decide_open(terms, &order, &view, may_wait)
    }

    /// Places an open the terms admitted, with the volume they sized (a core-sized volume is
    /// placed exactly as commanded).
    fn place_open(&mut self, id: CommandId, mut body: CommandBody, v: Volume) {
        if let CommandBody::Execute { volume, terms, .. }
        | CommandBody::PlacePending { volume, terms, .. } = &mut body
        {
            if terms.sizing != SlaveSizing::Final {
                *volume = v.lots();
            }
        }
        self.reserved.insert(id.clone(), v);
        self.m.placed += 1;
        if let CommandBody::Execute { symbol, terms, .. } = &body {
            let legs = open_legs(terms, v, self.symbols.get(symbol));
            if legs.len() > 1 {
                let orders = legs
                    .iter()
                    .map(|leg| {
                        let mut b = body.clone();
                        if let CommandBody::Execute { volume, .. } = &mut b {
                            *volume = leg.lots();
                        }
                        (0, b)
                    })
                    .collect();
                self.fire(T::SplitOpen, Subject::Command(id.clone()));
                let steps = Steps {
                    of: StepsOf::Open {
                        planned: legs.len(),
                    },
                    orders,
                    answers: Vec::new(),
                    in_doubt: false,
                };
                self.start_steps(&id, steps);
                return;
            }
        }
        self.set_state(&id, State::Executing);
        self.out.push_back(Output::PlaceOrder {
            command_id: id,
            body,
        });
    }

    /// Records an open the terms refused as REJECTED with the policy reason (durable before it
    /// is reported, like any result).
    fn refuse_open(&mut self, id: &CommandId, reason: SkipReason) {
        let Some(c) = self.commands.get(id).map(|e| e.command.clone()) else {
            return;
        };
        self.m.terms_refused += 1;
        let mut result = unfilled(&c, BrokerStatus::Rejected);
        result.reason = Some(reason.error_code());
        self.issue_record(id, result);
    }

    fn pipe_ack(&mut self, id: &CommandId, status: PipeStatus, reason: Option<ErrorCode>) {
        self.out
            .push_back(Output::ToAgent(EaToAgent::PipeAck(PipeDeliveryAck {
                command_id: id.clone(),
                status,
                reason,
            })));
    }

    fn fire(&mut self, t: T, subject: Subject) {
        self.out.push_back(Output::Fired(Fired {
            transition: t.spec(),
            subject,
        }));
    }

    fn alloc_op(&mut self, id: &CommandId) -> OpId {
        let op = self.next_op;
        self.next_op += 1;
        self.ops.insert(op, id.clone());
        op
    }

    fn set_state(&mut self, id: &CommandId, state: State) {
        if let Some(e) = self.commands.get_mut(id) {
            e.state = state;
        }
    }

    fn arm(&mut self, id: &CommandId, at: Instant) {
        if let Some(e) = self.commands.get_mut(id) {
            if let Some(old) = e.deadline.replace(at) {
                self.timers.remove(&(old, id.clone()));
            }
            self.timers.insert((at, id.clone()));
        }
    }
}

/// A command of a pending order's lifecycle (placement, modify, cancel, trigger).
fn body_is_pending(body: &CommandBody) -> bool {
    matches!(
        body,
        CommandBody::PlacePending { .. }
            | CommandBody::ModifyPending { .. }
            | CommandBody::ResolvePending { .. }
            | CommandBody::TriggerPending { .. }
    )
}

/// The result of a command that was never executed: no ticket, nothing filled.
fn unfilled(c: &Command, status: BrokerStatus) -> ExecutionResult {
    ExecutionResult {
        command_id: c.command_id.clone(),
        trade_id: c.trade_id.clone(),
        slave: c.slave.clone(),
        slave_ticket: 0,
        fill_price: 0.0,
        filled_volume: 0.0,
        status,
        reason: None,
        legs: Vec::new(),
    }
}
