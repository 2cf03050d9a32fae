//! Plain rows for the operator (`echo journal ls|show`) and the row decoding both backends
//! share.
//!
//! Owns the shapes handed to the printing code and the checked conversion of raw columns into
//! the machine's types. It must never write, and never interpret a row beyond decoding it.

use echo_statemachine::core::DeliveryRecord;
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{AckStage, ErrorCode, TradeIntent};

use super::codec;
use super::JournalError;

/// One `delivery_journal` row.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryRow {
    pub record: DeliveryRecord,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

/// One `trade_intent` row.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentRow {
    pub intent: TradeIntent,
    /// When the journal accepted it, milliseconds since the Unix epoch.
    pub accepted_at_ms: i64,
}

/// One `delivery_retry_event` row.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryRow {
    pub command_id: CommandId,
    pub attempt: u32,
    pub stage: AckStage,
    pub reason: ErrorCode,
    pub at_ms: i64,
}

/// One `router_rejection` row.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectionRow {
    pub intent_id: IntentId,
    pub trade_id: TradeId,
    pub worker: u32,
    pub reason: ErrorCode,
    pub at_ms: i64,
}

/// Everything the journal holds about one trade, each list in journal order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TradeReport {
    pub intents: Vec<IntentRow>,
    pub deliveries: Vec<DeliveryRow>,
    pub retries: Vec<RetryRow>,
    pub rejections: Vec<RejectionRow>,
    /// Slave positions of this trade still open: (slave, ticket).
    pub open_tickets: Vec<(AccountId, i64)>,
}

/// A delivery row's columns as the database returns them.
pub(crate) struct RawDelivery {
    pub(crate) command_id: String,
    pub(crate) intent_id: String,
    pub(crate) trade_id: String,
    pub(crate) master: String,
    pub(crate) slave: String,
    pub(crate) kind: String,
    pub(crate) symbol: String,
    pub(crate) side: String,
    pub(crate) volume: f64,
    pub(crate) price: f64,
    pub(crate) stop_loss: f64,
    pub(crate) take_profit: f64,
    pub(crate) master_seq: i64,
    pub(crate) status: String,
    pub(crate) stage: String,
    pub(crate) attempts: i64,
    pub(crate) slave_ticket: Option<i64>,
    pub(crate) reason: Option<String>,
}

/// The delivery columns in [`RawDelivery`] order (both schemas name them alike).
pub(crate) const DELIVERY_COLUMNS: &str = "command_id, intent_id, trade_id, master_account, \
     slave_account, kind, symbol, side, volume, price, stop_loss, take_profit, master_seq, \
     status, stage, attempts, slave_ticket, reason";

/// The intent columns in [`RawIntent`] order.
pub(crate) const INTENT_COLUMNS: &str = "intent_id, trade_id, master_account, kind, symbol, \
     side, volume, price, stop_loss, take_profit, master_ticket, master_seq, emitted_at_ms";

/// Reads a [`RawDelivery`] from any sqlx row (column by name).
macro_rules! raw_delivery {
    ($row:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        $crate::journal::query::RawDelivery {
            command_id: r.try_get("command_id")?,
            intent_id: r.try_get("intent_id")?,
            trade_id: r.try_get("trade_id")?,
            master: r.try_get("master_account")?,
            slave: r.try_get("slave_account")?,
            kind: r.try_get("kind")?,
            symbol: r.try_get("symbol")?,
            side: r.try_get("side")?,
            volume: r.try_get("volume")?,
            price: r.try_get("price")?,
            stop_loss: r.try_get("stop_loss")?,
            take_profit: r.try_get("take_profit")?,
            master_seq: r.try_get("master_seq")?,
            status: r.try_get("status")?,
            stage: r.try_get("stage")?,
            attempts: i64::from(r.try_get::<i32, _>("attempts")?),
            slave_ticket: r.try_get("slave_ticket")?,
            reason: r.try_get("reason")?,
        }
    }};
}
pub(crate) use raw_delivery;

/// Reads a [`RawIntent`] from any sqlx row (column by name).
macro_rules! raw_intent {
    ($row:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        $crate::journal::query::RawIntent {
            intent_id: r.try_get("intent_id")?,
            trade_id: r.try_get("trade_id")?,
            master: r.try_get("master_account")?,
            kind: r.try_get("kind")?,
            symbol: r.try_get("symbol")?,
            side: r.try_get("side")?,
            volume: r.try_get("volume")?,
            price: r.try_get("price")?,
            stop_loss: r.try_get("stop_loss")?,
            take_profit: r.try_get("take_profit")?,
            master_ticket: r.try_get("master_ticket")?,
            master_seq: r.try_get("master_seq")?,
            emitted_at_ms: r.try_get("emitted_at_ms")?,
        }
    }};
}
pub(crate) use raw_intent;

impl RawDelivery {
    pub(crate) fn decode(self) -> Result<DeliveryRecord, JournalError> {
        Ok(DeliveryRecord {
            command_id: CommandId::new(&self.command_id),
            intent_id: IntentId::new(&self.intent_id),
            trade_id: TradeId::new(&self.trade_id),
            master: AccountId::new(&self.master),
            slave: AccountId::new(&self.slave),
            kind: codec::kind_from(&self.kind)?,
            symbol: Symbol::new(&self.symbol),
            side: codec::side_from(&self.side)?,
            volume: self.volume,
            price: self.price,
            stop_loss: self.stop_loss,
            take_profit: self.take_profit,
            master_seq: codec::seq_from_sql(self.master_seq)?,
            status: codec::status_from(&self.status)?,
            stage: codec::stage_from(&self.stage)?,
            attempts: codec::attempts_from_sql(self.attempts)?,
            slave_ticket: self.slave_ticket,
            reason: codec::opt_reason_from(self.reason.as_deref())?,
        })
    }
}

/// An intent row's columns as the database returns them.
pub(crate) struct RawIntent {
    pub(crate) intent_id: String,
    pub(crate) trade_id: String,
    pub(crate) master: String,
    pub(crate) kind: String,
    pub(crate) symbol: String,
    pub(crate) side: String,
    pub(crate) volume: f64,
    pub(crate) price: f64,
    pub(crate) stop_loss: f64,
    pub(crate) take_profit: f64,
    pub(crate) master_ticket: i64,
    pub(crate) master_seq: i64,
    pub(crate) emitted_at_ms: i64,
}

impl RawIntent {
    pub(crate) fn decode(self) -> Result<TradeIntent, JournalError> {
        Ok(TradeIntent {
            intent_id: IntentId::new(&self.intent_id),
            trade_id: TradeId::new(&self.trade_id),
            master: AccountId::new(&self.master),
            kind: codec::kind_from(&self.kind)?,
            symbol: Symbol::new(&self.symbol),
            side: codec::side_from(&self.side)?,
            volume: self.volume,
            price: self.price,
            stop_loss: self.stop_loss,
            take_profit: self.take_profit,
            master_ticket: self.master_ticket,
            master_seq: codec::seq_from_sql(self.master_seq)?,
            emitted_at_ms: self.emitted_at_ms,
        })
    }
}

pub(crate) fn retry_row(
    command_id: String,
    attempt: i64,
    stage: String,
    reason: String,
    at_ms: i64,
) -> Result<RetryRow, JournalError> {
    Ok(RetryRow {
        command_id: CommandId::new(&command_id),
        attempt: codec::attempts_from_sql(attempt)?,
        stage: codec::stage_from(&stage)?,
        reason: codec::reason_from(&reason)?,
        at_ms,
    })
}

pub(crate) fn rejection_row(
    intent_id: String,
    trade_id: String,
    worker: i64,
    reason: String,
    at_ms: i64,
) -> Result<RejectionRow, JournalError> {
    Ok(RejectionRow {
        intent_id: IntentId::new(&intent_id),
        trade_id: TradeId::new(&trade_id),
        worker: codec::attempts_from_sql(worker)?,
        reason: codec::reason_from(&reason)?,
        at_ms,
    })
}
