//! The journal's vocabulary: what the core asks storage to make durable, what storage answers,
//! and what a restarted core reads back.
//!
//! The journal is an output of the core machine, never a call it makes. This module owns the
//! record shapes (they map 1:1 onto `delivery_journal` / `delivery_retry_event` rows) and the
//! durable snapshot `Core::recover` starts from. It must never decide anything.

use crate::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use crate::msg::{AckStage, ErrorCode, ExecTerms, IntentKind, MasterFacts, Side, TradeIntent};

/// Identifies one journal write so its result can be matched to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// A delivery's durable status (`delivery_journal.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryStatus {
    /// Not finished: waiting, in flight, or backing off.
    Inflight,
    /// EA_CONFIRMED with a filled ExecutionResult.
    Acked,
    /// Explicitly failed, with a reason.
    Failed,
}

/// One per-slave copy of an intent, as journaled. Everything needed to rebuild the command
/// after a crash is here; the slave ticket of a modify/close is looked up at dispatch time.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryRecord {
    pub command_id: CommandId,
    pub intent_id: IntentId,
    pub trade_id: TradeId,
    pub master: AccountId,
    pub slave: AccountId,
    pub kind: IntentKind,
    /// The slave's symbol (after mapping).
    pub symbol: Symbol,
    pub side: Side,
    /// The slave's volume (after the multiplier) of an open; for a partial close the
    /// master's closed lots, the numerator of the fraction the slave closes.
    pub volume: f64,
    pub price: f64,
    pub stop_loss: f64,
    pub take_profit: f64,
    /// Orders a trade's deliveries to one slave after a restart.
    pub master_seq: u64,
    pub status: DeliveryStatus,
    pub stage: AckStage,
    pub attempts: u32,
    pub slave_ticket: Option<i64>,
    pub reason: Option<ErrorCode>,
    /// An open's copy terms for the slave EA, as planned. Not journaled: a record read back
    /// from the journal has `None`, which `core.delivery.T28` rebuilds from the subscription
    /// in force and [`DeliveryRecord::intent_facts`].
    pub terms: Option<ExecTerms>,
    /// What its intent carried, as journaled with the intent (`trade_intent`): set on a
    /// record read back from the journal (the journal's load joins its intent), `None` on one
    /// planned now (its `terms` are already built) and on an `AcceptIntent`'s own records
    /// (the intent is written beside them).
    pub intent_facts: Option<Box<IntentFacts>>,
    /// For a partial close: the master's lots before it (the fraction's denominator,
    /// `TradeIntent::master_volume_before`); 0 for every other kind.
    pub master_volume_before: f64,
}

/// The master's side of an intent that an open's copy terms are built from, journaled with the
/// intent: its symbol (per-symbol multipliers) and the facts the master EA reported
/// (`TradeIntent::origin`: magic, comment, order type, balance, equity).
#[derive(Clone, Debug, PartialEq)]
pub struct IntentFacts {
    pub master_symbol: Symbol,
    pub origin: MasterFacts,
}

impl IntentFacts {
    pub fn of(intent: &TradeIntent) -> Self {
        IntentFacts {
            master_symbol: intent.symbol.clone(),
            origin: intent.origin.clone(),
        }
    }
}

/// Everything the core asks the journal to do. Every write is idempotent: keyed by intent id
/// or command id, and a finished delivery never goes back to unfinished.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalWrite {
    /// Insert the intent and all its deliveries in one transaction, unless the intent id is
    /// already journaled — then answer [`JournalReply::IntentExisted`] with its unfinished
    /// deliveries and change nothing.
    AcceptIntent {
        intent: TradeIntent,
        deliveries: Vec<DeliveryRecord>,
    },
    /// Make a delivery's final state durable (never regresses an already-final row).
    FinishDelivery {
        command_id: CommandId,
        trade_id: TradeId,
        slave: AccountId,
        status: DeliveryStatus,
        stage: AckStage,
        attempts: u32,
        slave_ticket: Option<i64>,
        reason: Option<ErrorCode>,
    },
    /// Best effort: a delivery reached a later stage (audit only; nothing waits on it).
    UpdateStage {
        command_id: CommandId,
        stage: AckStage,
        attempts: u32,
    },
    /// Best effort: a `delivery_retry_event` row.
    RecordRetry {
        command_id: CommandId,
        attempt: u32,
        stage: AckStage,
        reason: ErrorCode,
    },
    /// Best effort: an intent refused with backpressure (seed 000's persisted rejection).
    RecordRejection {
        intent_id: IntentId,
        trade_id: TradeId,
        worker: u32,
        reason: ErrorCode,
    },
    /// A cheap round trip that tells whether the journal is back.
    Probe,
}

impl JournalWrite {
    /// Whether the core waits for this write's result. Best-effort writes are audit rows:
    /// losing one loses no trade, so nothing is held back for them.
    pub fn is_awaited(&self) -> bool {
        matches!(
            self,
            JournalWrite::AcceptIntent { .. }
                | JournalWrite::FinishDelivery { .. }
                | JournalWrite::Probe
        )
    }
}

/// A successful journal answer.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalReply {
    Done,
    /// `AcceptIntent` found the intent already journaled (a retry after a lost reply, or a
    /// master re-sending an old intent): these are its deliveries that are not finished.
    IntentExisted {
        unfinished: Vec<DeliveryRecord>,
    },
}

/// The result of one journal write, as the driver reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum JournalResult {
    Ok(JournalReply),
    /// The write may or may not have committed; `retryable` says whether trying again can help.
    Failed {
        retryable: bool,
    },
}

/// What a restarted core reads from the journal: nothing else survives a crash.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoreDurableState {
    /// Deliveries whose status is not final, any order.
    pub unfinished: Vec<DeliveryRecord>,
    /// Slave tickets of positions still open: (trade, slave, ticket) — the ticket of the
    /// latest filled OPEN or PARTIAL_CLOSE (a broker may move the rest of a partially closed
    /// position to a new ticket), until a filled CLOSE.
    pub open_tickets: Vec<(TradeId, AccountId, i64)>,
    /// The OPEN and placement rows FAILED with a copy-policy reason (`policy::SkipReason`) of
    /// every trade still live — one that has an open ticket or an unfinished delivery — so
    /// the trade's later intents at that slave keep that reason (`core.delivery.T37`). Trades
    /// with neither are not read (nothing bounds them); their later intents end NO_POSITION.
    pub skipped_opens: Vec<DeliveryRecord>,
}
