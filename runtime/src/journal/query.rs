//! Plain rows for the operator (`echo journal ls|show`) and the row decoding both backends
//! share.
//!
//! Owns the shapes handed to the printing code and the checked conversion of raw columns into
//! the machine's types. It must never write, and never interpret a row beyond decoding it.

use echo_statemachine::core::{DeliveryRecord, IntentFacts};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{AckStage, ErrorCode, MasterFacts, TradeIntent};

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
    pub(crate) master_volume_before: f64,
}

/// The delivery columns in [`RawDelivery`] order (both schemas name them alike).
pub(crate) const DELIVERY_COLUMNS: &str = "command_id, intent_id, trade_id, master_account, \
     slave_account, kind, symbol, side, volume, price, stop_loss, take_profit, master_seq, \
     status, stage, attempts, slave_ticket, reason, master_volume_before";

/// The intent columns in [`RawIntent`] order.
pub(crate) const INTENT_COLUMNS: &str = "intent_id, trade_id, master_account, kind, symbol, \
     side, volume, price, stop_loss, take_profit, master_ticket, master_seq, emitted_at_ms, \
     master_volume_before, magic, comment, order_type, master_balance, master_equity";

/// The unfinished deliveries joined with their intent's facts (`d` the delivery, `i` the
/// intent; the facts under names that do not clash with the delivery's), for [`RawFacts`].
pub(crate) const FACTS_COLUMNS: &str = "i.symbol AS master_symbol, i.magic, i.comment, \
     i.order_type, i.master_balance, i.master_equity";

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
            master_volume_before: r.try_get("master_volume_before")?,
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
            master_volume_before: r.try_get("master_volume_before")?,
            facts: $crate::journal::query::raw_facts!(r, "symbol"),
        }
    }};
}
pub(crate) use raw_intent;

/// Reads a [`RawFacts`] from any sqlx row; `$symbol` names the master's symbol column.
macro_rules! raw_facts {
    ($row:expr, $symbol:literal) => {{
        use sqlx::Row as _;
        let r = $row;
        $crate::journal::query::RawFacts {
            master_symbol: r.try_get($symbol)?,
            magic: r.try_get("magic")?,
            comment: r.try_get("comment")?,
            order_type: r.try_get("order_type")?,
            balance: r.try_get("master_balance")?,
            equity: r.try_get("master_equity")?,
        }
    }};
}
pub(crate) use raw_facts;

/// The master's facts journaled with an intent (`trade_intent`), as the database returns them.
pub(crate) struct RawFacts {
    pub(crate) master_symbol: String,
    pub(crate) magic: i64,
    pub(crate) comment: String,
    pub(crate) order_type: String,
    pub(crate) balance: f64,
    pub(crate) equity: f64,
}

impl RawFacts {
    pub(crate) fn decode(self) -> Result<IntentFacts, JournalError> {
        Ok(IntentFacts {
            master_symbol: Symbol::new(&self.master_symbol),
            origin: MasterFacts {
                magic: self.magic,
                comment: self.comment,
                order_type: codec::order_type_from(&self.order_type)?,
                balance: self.balance,
                equity: self.equity,
            },
        })
    }
}

impl RawDelivery {
    pub(crate) fn decode(self) -> Result<DeliveryRecord, JournalError> {
        Ok(DeliveryRecord {
            terms: None,
            intent_facts: None,
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
            master_volume_before: self.master_volume_before,
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
    pub(crate) master_volume_before: f64,
    pub(crate) facts: RawFacts,
}

impl RawIntent {
    pub(crate) fn decode(self) -> Result<TradeIntent, JournalError> {
        Ok(TradeIntent {
            origin: self.facts.decode()?.origin,
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
            master_volume_before: self.master_volume_before,
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

/// The read side (restart load and operator queries), the same SQL on both backends apart from
/// the table prefix and the millisecond-timestamp expressions. Expands in the backend module,
/// which supplies `decode_deliveries` for its row type.
macro_rules! read_side {
    ($pool:ty, $prefix:literal, $updated_ms:literal, $accepted_ms:literal, $retry_ms:literal,
     $rejected_ms:literal) => {
        /// Everything a restarted core needs: unfinished deliveries and open slave tickets.
        pub(crate) async fn load(pool: &$pool) -> Result<CoreDurableState, JournalError> {
            let p = $prefix;
            // Each with the master's facts journaled with its intent: the open's copy terms
            // are rebuilt from them (core.delivery.T28).
            let d_columns = DELIVERY_COLUMNS
                .split(", ")
                .map(|c| format!("d.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let rows = sqlx::query(&format!(
                "SELECT {d_columns}, {facts} FROM {p}delivery_journal d \
                 JOIN {p}trade_intent i ON i.intent_id = d.intent_id \
                 WHERE d.status = 'inflight'",
                facts = $crate::journal::query::FACTS_COLUMNS,
            ))
            .fetch_all(pool)
            .await?;
            let mut unfinished = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut d = $crate::journal::query::raw_delivery!(r).decode()?;
                let facts = $crate::journal::query::raw_facts!(r, "master_symbol").decode()?;
                d.intent_facts = Some(Box::new(facts));
                unfinished.push(d);
            }
            let rows = sqlx::query(&format!(
                "SELECT trade_id, slave_account, slave_ticket FROM {p}open_position \
                 ORDER BY trade_id, slave_account"
            ))
            .fetch_all(pool)
            .await?;
            let mut open_tickets = Vec::with_capacity(rows.len());
            for r in rows {
                let t: String = r.try_get("trade_id")?;
                let s: String = r.try_get("slave_account")?;
                let k: i64 = r.try_get("slave_ticket")?;
                open_tickets.push((TradeId::new(t), AccountId::new(s), k));
            }
            // The opens and placements the copy policy did not make, of trades still live
            // (SPEC.md §5.2 "Later intents of a skipped open"): read by trade, never the
            // whole history.
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM {p}delivery_journal \
                 WHERE status = 'failed' AND kind IN ({kinds}) AND reason IN ({reasons}) \
                 AND trade_id IN (SELECT trade_id FROM {p}open_position \
                   UNION SELECT trade_id FROM {p}delivery_journal WHERE status = 'inflight') \
                 ORDER BY command_id",
                kinds = $crate::journal::codec::opening_kinds_sql(),
                reasons = $crate::journal::codec::policy_reasons_sql(),
            ))
            .fetch_all(pool)
            .await?;
            let skipped_opens = decode_deliveries(rows)?;
            Ok(CoreDurableState {
                unfinished,
                open_tickets,
                skipped_opens,
            })
        }

        /// Deliveries with `status`: unfinished oldest first, finished newest first.
        pub(crate) async fn deliveries_by_status(
            pool: &$pool,
            status: &str,
            limit: u32,
        ) -> Result<Vec<DeliveryRow>, JournalError> {
            let (p, ms) = ($prefix, $updated_ms);
            let order = if status == "inflight" { "ASC" } else { "DESC" };
            let rows = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS}, {ms} AS updated_at_ms \
                 FROM {p}delivery_journal WHERE status = $1 \
                 ORDER BY updated_at {order}, command_id LIMIT $2"
            ))
            .bind(status)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(DeliveryRow {
                        updated_at_ms: r.try_get("updated_at_ms")?,
                        record: raw_delivery!(r).decode()?,
                    })
                })
                .collect()
        }

        /// Everything journaled about one trade.
        pub(crate) async fn trade(
            pool: &$pool,
            trade_id: &TradeId,
        ) -> Result<TradeReport, JournalError> {
            let p = $prefix;
            let (upd, acc, rty, rej) = ($updated_ms, $accepted_ms, $retry_ms, $rejected_ms);
            let t = trade_id.as_str();
            let intents = sqlx::query(&format!(
                "SELECT {INTENT_COLUMNS}, {acc} AS at_ms FROM {p}trade_intent \
                 WHERE trade_id = $1 ORDER BY master_seq, intent_id"
            ))
            .bind(t)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(IntentRow {
                    accepted_at_ms: r.try_get("at_ms")?,
                    intent: raw_intent!(r).decode()?,
                })
            })
            .collect::<Result<Vec<_>, JournalError>>()?;
            let deliveries = sqlx::query(&format!(
                "SELECT {DELIVERY_COLUMNS}, {upd} AS updated_at_ms FROM {p}delivery_journal \
                 WHERE trade_id = $1 ORDER BY master_seq, slave_account, command_id"
            ))
            .bind(t)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok(DeliveryRow {
                    updated_at_ms: r.try_get("updated_at_ms")?,
                    record: raw_delivery!(r).decode()?,
                })
            })
            .collect::<Result<Vec<_>, JournalError>>()?;
            let mut retries = Vec::new();
            for r in sqlx::query(&format!(
                "SELECT e.command_id, e.attempt, e.stage, e.reason, {rty} AS at_ms \
                 FROM {p}delivery_retry_event e \
                 JOIN {p}delivery_journal d ON d.command_id = e.command_id \
                 WHERE d.trade_id = $1 ORDER BY e.id"
            ))
            .bind(t)
            .fetch_all(pool)
            .await?
            {
                retries.push($crate::journal::query::retry_row(
                    r.try_get("command_id")?,
                    i64::from(r.try_get::<i32, _>("attempt")?),
                    r.try_get("stage")?,
                    r.try_get("reason")?,
                    r.try_get("at_ms")?,
                )?);
            }
            let mut rejections = Vec::new();
            for r in sqlx::query(&format!(
                "SELECT intent_id, trade_id, worker_id, reason, {rej} AS at_ms \
                 FROM {p}router_rejection WHERE trade_id = $1 ORDER BY id"
            ))
            .bind(t)
            .fetch_all(pool)
            .await?
            {
                rejections.push($crate::journal::query::rejection_row(
                    r.try_get("intent_id")?,
                    r.try_get("trade_id")?,
                    i64::from(r.try_get::<i32, _>("worker_id")?),
                    r.try_get("reason")?,
                    r.try_get("at_ms")?,
                )?);
            }
            let mut open_tickets = Vec::new();
            for r in sqlx::query(&format!(
                "SELECT slave_account, slave_ticket FROM {p}open_position \
                 WHERE trade_id = $1 ORDER BY slave_account"
            ))
            .bind(t)
            .fetch_all(pool)
            .await?
            {
                let s: String = r.try_get("slave_account")?;
                open_tickets.push((AccountId::new(s), r.try_get::<i64, _>("slave_ticket")?));
            }
            Ok(TradeReport {
                intents,
                deliveries,
                retries,
                rejections,
                open_tickets,
            })
        }
    };
}
pub(crate) use read_side;
