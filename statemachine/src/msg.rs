//! The messages machines exchange, as plain Rust values.
//!
//! These mirror the `echo.v1` wire contract (crate `echo-proto`) without depending on it: the
//! runtime converts at the edge, so this crate stays free of codecs and IO. This module owns the
//! vocabulary (stages, results, error codes, commands); it must never hold behaviour beyond
//! small, pure helpers.

use crate::config::{AgentDeliveryConfig, DeliveryConfig};
use crate::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
pub use crate::policy::filters::OrderType;

/// Current protocol version spoken by lossless peers.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntentKind {
    Open,
    Modify,
    PartialClose,
    Close,
    /// A pending limit order was placed (buy limit / sell limit by `side`) at `price`.
    PlaceLimit,
    /// A pending stop order was placed (buy stop / sell stop by `side`) at `price`.
    PlaceStop,
    /// The pending order's price, SL or TP changed.
    PendingModify,
    /// The master deleted its pending order (or its broker expired it): the trade ends.
    PendingCancel,
    /// The master's pending order filled: from now on the trade is a position (`volume`
    /// filled at `price`); its later MODIFY / PARTIAL_CLOSE / CLOSE address that position.
    PendingTrigger,
}

/// What a delivery of one kind does to the core's `(trade, slave) → slave ticket`
/// correlation once it is ACKED (SPEC.md §5.2 "Ticket correlation"; the journal applies the
/// same rule to `open_position` in the `FinishDelivery` transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketEffect {
    /// The result's ticket (when > 0) becomes the trade's: an open, a pending placement, a
    /// trigger (the position's ticket), a partial close (a broker may move the rest).
    Set,
    /// The trade has nothing left at the slave: a close, a pending cancel.
    Remove,
    /// Nothing changes: a modify.
    Keep,
}

impl IntentKind {
    pub const ALL: &'static [IntentKind] = &[
        IntentKind::Open,
        IntentKind::Modify,
        IntentKind::PartialClose,
        IntentKind::Close,
        IntentKind::PlaceLimit,
        IntentKind::PlaceStop,
        IntentKind::PendingModify,
        IntentKind::PendingCancel,
        IntentKind::PendingTrigger,
    ];

    /// The kinds that start a trade at a slave (no ticket needed): an open, a placement.
    pub fn starts_trade(self) -> bool {
        matches!(
            self,
            IntentKind::Open | IntentKind::PlaceLimit | IntentKind::PlaceStop
        )
    }

    /// A pending placement's order type (`PlaceLimit` → Limit, `PlaceStop` → Stop).
    pub fn placed_order_type(self) -> Option<OrderType> {
        match self {
            IntentKind::PlaceLimit => Some(OrderType::Limit),
            IntentKind::PlaceStop => Some(OrderType::Stop),
            _ => None,
        }
    }

    /// Every kind of a pending order's lifecycle (placement to trigger or cancel).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            IntentKind::PlaceLimit
                | IntentKind::PlaceStop
                | IntentKind::PendingModify
                | IntentKind::PendingCancel
                | IntentKind::PendingTrigger
        )
    }

    /// The kinds whose command carries copy terms for the slave EA (sizing and guards of an
    /// open or placement; the deviation guard of a trigger's market fallback).
    pub fn carries_terms(self) -> bool {
        self.starts_trade() || self == IntentKind::PendingTrigger
    }

    pub fn ticket_effect(self) -> TicketEffect {
        match self {
            IntentKind::Open
            | IntentKind::PlaceLimit
            | IntentKind::PlaceStop
            | IntentKind::PendingTrigger
            | IntentKind::PartialClose => TicketEffect::Set,
            IntentKind::Close | IntentKind::PendingCancel => TicketEffect::Remove,
            IntentKind::Modify | IntentKind::PendingModify => TicketEffect::Keep,
        }
    }

    /// The wire / journal spelling.
    pub fn name(self) -> &'static str {
        match self {
            IntentKind::Open => "OPEN",
            IntentKind::Modify => "MODIFY",
            IntentKind::PartialClose => "PARTIAL_CLOSE",
            IntentKind::Close => "CLOSE",
            IntentKind::PlaceLimit => "PLACE_LIMIT",
            IntentKind::PlaceStop => "PLACE_STOP",
            IntentKind::PendingModify => "PENDING_MODIFY",
            IntentKind::PendingCancel => "PENDING_CANCEL",
            IntentKind::PendingTrigger => "PENDING_TRIGGER",
        }
    }

    pub fn from_name(s: &str) -> Option<IntentKind> {
        IntentKind::ALL.iter().copied().find(|k| k.name() == s)
    }
}

/// The type of a pending order at the slave's broker (with its side: buy/sell limit/stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PendingType {
    /// Buy below / sell above the market.
    Limit,
    /// Buy above / sell below the market.
    Stop,
}

impl PendingType {
    pub fn name(self) -> &'static str {
        match self {
            PendingType::Limit => "LIMIT",
            PendingType::Stop => "STOP",
        }
    }

    pub fn from_name(s: &str) -> Option<PendingType> {
        [PendingType::Limit, PendingType::Stop]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

/// What the master decided about its pending order, which the slave converges to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PendingResolution {
    /// The master deleted it: the slave deletes its own (and closes it, if it already filled).
    Cancel,
    /// The master's filled: the slave's becomes a position (its own fill if it filled, else
    /// it is deleted and the slave opens at market, within the deviation guard).
    Trigger,
}

impl PendingResolution {
    pub fn name(self) -> &'static str {
        match self {
            PendingResolution::Cancel => "CANCEL",
            PendingResolution::Trigger => "TRIGGER",
        }
    }

    pub fn from_name(s: &str) -> Option<PendingResolution> {
        [PendingResolution::Cancel, PendingResolution::Trigger]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Master,
    Slave,
}

/// What a master EA saw happen to one of its positions.
#[derive(Clone, Debug, PartialEq)]
pub struct TradeIntent {
    pub intent_id: IntentId,
    pub trade_id: TradeId,
    pub master: AccountId,
    pub kind: IntentKind,
    /// What the master EA reports about the order and its account (filters, ratio sizing).
    pub origin: MasterFacts,
    pub symbol: Symbol,
    pub side: Side,
    /// Lots: the opened volume, or the closed volume for a partial close.
    pub volume: f64,
    pub price: f64,
    pub stop_loss: f64,
    pub take_profit: f64,
    pub master_ticket: i64,
    /// Per-master sequence number, increasing in emission order.
    pub master_seq: u64,
    pub emitted_at_ms: i64,
    /// Lots the master's position held *before* this intent: with `volume` it states the
    /// fraction a PARTIAL_CLOSE closed (`volume / master_volume_before`), which each slave
    /// applies to its own position (SPEC.md §5.2). 0 for every other kind.
    pub master_volume_before: f64,
}

/// What a master EA reports with each intent beyond the trade itself: the order's origin, which
/// the subscription filters read (`filters/magic_*`, `filters/comment_*`, `filters/order_types`),
/// and its account at the moment of the trade, which balance/equity-ratio sizing reads. Zero
/// balance or equity means "not reported": ratio sizing then refuses `ACCOUNT_FACTS_UNKNOWN`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MasterFacts {
    pub magic: i64,
    /// The order comment (at most [`MasterFacts::MAX_COMMENT`] bytes).
    pub comment: String,
    pub order_type: OrderType,
    pub balance: f64,
    pub equity: f64,
}

impl MasterFacts {
    /// Longest comment the core accepts (MetaTrader's own limit is 31 characters).
    pub const MAX_COMMENT: usize = 255;

    pub fn is_valid(&self) -> bool {
        self.comment.len() <= Self::MAX_COMMENT
            && self.balance.is_finite()
            && self.balance >= 0.0
            && self.equity.is_finite()
            && self.equity >= 0.0
    }
}

/// Ack stages, in the only order a delivery may move through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AckStage {
    CoreAccepted,
    AgentBuffered,
    PipeDelivered,
    EaConfirmed,
}

impl AckStage {
    pub fn name(self) -> &'static str {
        match self {
            AckStage::CoreAccepted => "CORE_ACCEPTED",
            AckStage::AgentBuffered => "AGENT_BUFFERED",
            AckStage::PipeDelivered => "PIPE_DELIVERED",
            AckStage::EaConfirmed => "EA_CONFIRMED",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AckResult {
    Pending,
    Ok,
    Failed,
}

/// The closed set of reasons Echo answers with. Mirrors `echo.v1.ErrorCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// A worker queue is full: the master must retry later.
    BrokerBusy,
    InvalidArgument,
    Unauthenticated,
    UnknownAccount,
    /// The journal stayed down past `max_retries`: nothing was accepted, retry later.
    JournalUnavailable,
    SymbolNotMapped,
    MaxRetries,
    BrokerRejected,
    EaRejected,
    /// A modify or close found no slave position (its open failed or never executed).
    NoPosition,
    Duplicate,
    ProtocolViolation,
    /// The agent could not deliver to the pipe within its retries (retryable at the core).
    PipeUnavailable,
    Internal,
    /// Copy policy (see [`crate::policy::SkipReason`]): The sized volume is below the slave broker's minimum and the policy says skip. Final.
    VolumeBelowMin,
    /// Copy policy (see [`crate::policy::SkipReason`]): The slave's price is further from the master's fill than the subscription allows. Final.
    PriceDeviation,
    /// Copy policy (see [`crate::policy::SkipReason`]): An open reached the slave too late (catch-up after an absence). Never a close. Final.
    Expired,
    /// Copy policy (see [`crate::policy::SkipReason`]): The subscription's symbol filter does not copy this symbol. Final.
    FilteredSymbol,
    /// Copy policy (see [`crate::policy::SkipReason`]): The subscription's magic-number filter does not copy this trade. Final.
    FilteredMagic,
    /// Copy policy (see [`crate::policy::SkipReason`]): The subscription's comment filter does not copy this trade. Final.
    FilteredComment,
    /// Copy policy (see [`crate::policy::SkipReason`]): The subscription copies only the other direction. Final.
    FilteredDirection,
    /// Copy policy (see [`crate::policy::SkipReason`]): The subscription does not copy this order type. Final.
    FilteredOrderType,
    /// Copy policy (see [`crate::policy::SkipReason`]): The slave already holds its maximum of copied positions. Final.
    MaxOpenPositions,
    /// Copy policy (see [`crate::policy::SkipReason`]): Opening would take the slave above its maximum of copied lots. Final.
    MaxTotalLots,
    /// Copy policy (see [`crate::policy::SkipReason`]): The slave's free margin cannot carry the sized volume. Final.
    InsufficientMargin,
    /// Copy policy (see [`crate::policy::SkipReason`]): Risk sizing needs a stop-loss (and tick value) the trade does not have. Final.
    NoStopLoss,
    /// Copy policy (see [`crate::policy::SkipReason`]): The sizing mode needs an account or symbol fact nobody reported (master balance/equity, slave account or symbol info). Final.
    AccountFactsUnknown,
    /// A command on a split position (or a split open) executed on some of its legs only: a
    /// leg's order was rejected by the broker, or was in doubt after a crash and never placed
    /// (SPEC.md §5.2 "Split"). The result names what the slave holds now. Final.
    SplitIncomplete,
}

/// Fails to compile when a variant is added and not listed here: the reminder to add it to
/// [`ErrorCode::ALL`] too, which the journal and the pipe codec parse names against.
#[allow(dead_code)]
fn all_codes_listed(c: ErrorCode) {
    match c {
        ErrorCode::BrokerBusy
        | ErrorCode::InvalidArgument
        | ErrorCode::Unauthenticated
        | ErrorCode::UnknownAccount
        | ErrorCode::JournalUnavailable
        | ErrorCode::SymbolNotMapped
        | ErrorCode::MaxRetries
        | ErrorCode::BrokerRejected
        | ErrorCode::EaRejected
        | ErrorCode::NoPosition
        | ErrorCode::Duplicate
        | ErrorCode::ProtocolViolation
        | ErrorCode::PipeUnavailable
        | ErrorCode::Internal
        | ErrorCode::VolumeBelowMin
        | ErrorCode::PriceDeviation
        | ErrorCode::Expired
        | ErrorCode::FilteredSymbol
        | ErrorCode::FilteredMagic
        | ErrorCode::FilteredComment
        | ErrorCode::FilteredDirection
        | ErrorCode::FilteredOrderType
        | ErrorCode::MaxOpenPositions
        | ErrorCode::MaxTotalLots
        | ErrorCode::InsufficientMargin
        | ErrorCode::NoStopLoss
        | ErrorCode::AccountFactsUnknown
        | ErrorCode::SplitIncomplete => {}
    }
}

impl ErrorCode {
    /// Every code, in declaration order (wire names are parsed against it).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BrokerBusy,
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::UnknownAccount,
        ErrorCode::JournalUnavailable,
        ErrorCode::SymbolNotMapped,
        ErrorCode::MaxRetries,
        ErrorCode::BrokerRejected,
        ErrorCode::EaRejected,
        ErrorCode::NoPosition,
        ErrorCode::Duplicate,
        ErrorCode::ProtocolViolation,
        ErrorCode::PipeUnavailable,
        ErrorCode::Internal,
        ErrorCode::VolumeBelowMin,
        ErrorCode::PriceDeviation,
        ErrorCode::Expired,
        ErrorCode::FilteredSymbol,
        ErrorCode::FilteredMagic,
        ErrorCode::FilteredComment,
        ErrorCode::FilteredDirection,
        ErrorCode::FilteredOrderType,
        ErrorCode::MaxOpenPositions,
        ErrorCode::MaxTotalLots,
        ErrorCode::InsufficientMargin,
        ErrorCode::NoStopLoss,
        ErrorCode::AccountFactsUnknown,
        ErrorCode::SplitIncomplete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BrokerBusy => "ERROR_CODE_BROKER_BUSY",
            ErrorCode::InvalidArgument => "ERROR_CODE_INVALID_ARGUMENT",
            ErrorCode::Unauthenticated => "ERROR_CODE_UNAUTHENTICATED",
            ErrorCode::UnknownAccount => "ERROR_CODE_UNKNOWN_ACCOUNT",
            ErrorCode::JournalUnavailable => "ERROR_CODE_JOURNAL_UNAVAILABLE",
            ErrorCode::SymbolNotMapped => "ERROR_CODE_SYMBOL_NOT_MAPPED",
            ErrorCode::MaxRetries => "ERROR_CODE_MAX_RETRIES",
            ErrorCode::BrokerRejected => "ERROR_CODE_BROKER_REJECTED",
            ErrorCode::EaRejected => "ERROR_CODE_EA_REJECTED",
            ErrorCode::NoPosition => "ERROR_CODE_NO_POSITION",
            ErrorCode::Duplicate => "ERROR_CODE_DUPLICATE",
            ErrorCode::ProtocolViolation => "ERROR_CODE_PROTOCOL_VIOLATION",
            ErrorCode::PipeUnavailable => "ERROR_CODE_PIPE_UNAVAILABLE",
            ErrorCode::Internal => "ERROR_CODE_INTERNAL",
            ErrorCode::VolumeBelowMin => "ERROR_CODE_VOLUME_BELOW_MIN",
            ErrorCode::PriceDeviation => "ERROR_CODE_PRICE_DEVIATION",
            ErrorCode::Expired => "ERROR_CODE_EXPIRED",
            ErrorCode::FilteredSymbol => "ERROR_CODE_FILTERED_SYMBOL",
            ErrorCode::FilteredMagic => "ERROR_CODE_FILTERED_MAGIC",
            ErrorCode::FilteredComment => "ERROR_CODE_FILTERED_COMMENT",
            ErrorCode::FilteredDirection => "ERROR_CODE_FILTERED_DIRECTION",
            ErrorCode::FilteredOrderType => "ERROR_CODE_FILTERED_ORDER_TYPE",
            ErrorCode::MaxOpenPositions => "ERROR_CODE_MAX_OPEN_POSITIONS",
            ErrorCode::MaxTotalLots => "ERROR_CODE_MAX_TOTAL_LOTS",
            ErrorCode::InsufficientMargin => "ERROR_CODE_INSUFFICIENT_MARGIN",
            ErrorCode::NoStopLoss => "ERROR_CODE_NO_STOP_LOSS",
            ErrorCode::AccountFactsUnknown => "ERROR_CODE_ACCOUNT_FACTS_UNKNOWN",
            ErrorCode::SplitIncomplete => "ERROR_CODE_SPLIT_INCOMPLETE",
        }
    }

    /// Whether the sender should try again (same id) after a pause.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::BrokerBusy | ErrorCode::JournalUnavailable | ErrorCode::PipeUnavailable
        )
    }
}

/// The core's answer to one `TradeIntent`.
#[derive(Clone, Debug, PartialEq)]
pub struct TradeIntentAck {
    pub intent_id: IntentId,
    pub trade_id: TradeId,
    /// `Ok` means CORE_ACCEPTED: the intent and its deliveries are durable in the journal.
    pub result: AckResult,
    pub error: Option<ErrorCode>,
    pub retry_after_ms: u32,
}

/// What a slave must do, built by the core when the delivery is dispatched.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandBody {
    Execute {
        symbol: Symbol,
        side: Side,
        volume: f64,
        price: f64,
        stop_loss: f64,
        take_profit: f64,
        /// What the slave EA decides with its own account and prices before it places the
        /// order (SPEC.md §5.2): default = place `volume` as is.
        terms: ExecTerms,
        /// Sent as a **catch-up** (SPEC.md §5.2 "Catch-up"): the open could not go to the
        /// slave when the core first had it ready (its slave's agent was offline or unknown,
        /// `core.delivery.T36`), so the slave EA answers a price beyond the deviation guard
        /// `EXPIRED` at once instead of waiting for it or answering `PRICE_DEVIATION`
        /// (`ea.slave.T47`). `false` (and absent, from a legacy peer) = as before.
        catch_up: bool,
    },
    Modify {
        slave_ticket: i64,
        stop_loss: f64,
        take_profit: f64,
    },
    /// `volume == 0.0` closes the whole position.
    Close { slave_ticket: i64, volume: f64 },
    /// A partial close by fraction: the slave EA closes the same share of its own position
    /// that the master closed of its own (`policy::partial::partial_close`), so the volume is
    /// decided where the slave's open volume is known, once, when the command is placed.
    ClosePart {
        slave_ticket: i64,
        fraction: CloseFraction,
    },
    /// Place a pending order (`order_type` with `side`: buy/sell limit/stop) at `price`,
    /// sized by the same copy terms as an open (SPEC.md §5.2 "Pending orders").
    PlacePending {
        symbol: Symbol,
        side: Side,
        order_type: PendingType,
        volume: f64,
        price: f64,
        stop_loss: f64,
        take_profit: f64,
        terms: ExecTerms,
    },
    /// Change the slave's pending order: its price, SL and TP (0 = none).
    ModifyPending {
        slave_ticket: i64,
        price: f64,
        stop_loss: f64,
        take_profit: f64,
    },
    /// The master cancelled or triggered its pending order: the slave converges its own
    /// (`slave_ticket`) to the master's decision. A trigger carries what a market fallback
    /// needs: the symbol, the slave's side, the master's fill `price` (deviation guard), the
    /// position's SL/TP and the guard's terms.
    ResolvePending {
        slave_ticket: i64,
        resolution: PendingResolution,
        symbol: Symbol,
        side: Side,
        price: f64,
        stop_loss: f64,
        take_profit: f64,
        terms: ExecTerms,
    },
    /// What the slave EA hands its broker for a trigger (never sent by the core, refused as
    /// malformed if it is): one atomic step at the broker — if `slave_ticket` is a position
    /// (the slave's pending filled on its own) it is the trade's position and nothing is
    /// placed; if it is still a pending order it is deleted and, when `market` holds, its
    /// volume is opened at market with this SL/TP (client order id = the command id), else
    /// nothing is opened (the guard refused: answered Rejected).
    TriggerPending {
        slave_ticket: i64,
        symbol: Symbol,
        side: Side,
        stop_loss: f64,
        take_profit: f64,
        market: bool,
    },
}

impl CommandBody {
    /// The slave ticket a command addresses (0 for an open or a placement).
    pub fn slave_ticket(&self) -> i64 {
        match self {
            CommandBody::Execute { .. } | CommandBody::PlacePending { .. } => 0,
            CommandBody::Modify { slave_ticket, .. }
            | CommandBody::Close { slave_ticket, .. }
            | CommandBody::ClosePart { slave_ticket, .. }
            | CommandBody::ModifyPending { slave_ticket, .. }
            | CommandBody::ResolvePending { slave_ticket, .. }
            | CommandBody::TriggerPending { slave_ticket, .. } => *slave_ticket,
        }
    }
}

/// What a slave needs to close the master's fraction of its own position: the master's
/// closed volume over its volume before the close (an exact pair, not a rounded ratio), and
/// the slave symbol's minimum and step the result is rounded to. All in lots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CloseFraction {
    pub master_closed: f64,
    pub master_volume_before: f64,
    pub slave_min: f64,
    pub slave_step: f64,
}

/// Who sizes an open: the core (`Final`: the command's volume is placed as is) or the slave EA
/// from its own account facts (the command's volume is the master's lots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlaveSizing {
    #[default]
    Final,
    /// master lots × slave balance / `master_amount` (the master's balance) × `sizing_value`.
    BalanceRatio,
    /// master lots × slave equity / `master_amount` (the master's equity) × `sizing_value`.
    EquityRatio,
    /// `sizing_value` percent of the slave's equity between entry and stop-loss.
    RiskPercent,
}

impl SlaveSizing {
    pub const ALL: &'static [SlaveSizing] = &[
        SlaveSizing::Final,
        SlaveSizing::BalanceRatio,
        SlaveSizing::EquityRatio,
        SlaveSizing::RiskPercent,
    ];

    /// The wire name (pipe protocol, ledger).
    pub fn name(self) -> &'static str {
        match self {
            SlaveSizing::Final => "FINAL",
            SlaveSizing::BalanceRatio => "BALANCE_RATIO",
            SlaveSizing::EquityRatio => "EQUITY_RATIO",
            SlaveSizing::RiskPercent => "RISK_PERCENT",
        }
    }

    pub fn from_name(s: &str) -> Option<SlaveSizing> {
        SlaveSizing::ALL.iter().copied().find(|m| m.name() == s)
    }
}

/// The copy terms of one open that only the slave EA can apply, because they need its own
/// account, positions or prices (`policy::terms`). Built by the core from the subscription and
/// the master's facts when it plans the open; all zero means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExecTerms {
    pub sizing: SlaveSizing,
    /// Ratio factor (× the per-symbol multiplier) or risk percent.
    pub sizing_value: f64,
    /// The master's balance (`BalanceRatio`) or equity (`EquityRatio`) when it traded.
    pub master_amount: f64,
    /// The master's contract size, to align lots to the slave's (0 = no alignment).
    pub master_contract_size: f64,
    /// Below the slave's minimum: open the minimum instead of refusing `VOLUME_BELOW_MIN`.
    pub trade_min: bool,
    /// Refuse `INSUFFICIENT_MARGIN` when the slave's free margin cannot carry the volume.
    pub check_free_margin: bool,
    /// Refuse `PRICE_DEVIATION` beyond this many points from the master's fill (0 = off).
    pub max_deviation_points: u32,
    /// How long the slave may wait for the price to come back within the deviation.
    pub deviation_window_ms: u32,
    /// Refuse `MAX_OPEN_POSITIONS` when the slave holds this many positions (0 = no limit).
    pub max_open_positions: u32,
    /// Refuse `MAX_TOTAL_LOTS` when the open would take the slave above it (0 = no limit).
    pub max_total_lots: f64,
    /// `sizing/above_max = split` (SPEC.md §5.2 "Split"): 0 = one order (a volume above the
    /// maximum is capped). Otherwise the open may be placed as several orders ("legs"), each
    /// at most this many lots: a core-sized (`Final`) volume is split with this maximum and
    /// [`ExecTerms::split_min_lots`] (the subscription's `limits/*` it was sized with); a
    /// slave-sized one with the slave's own reported symbol limits.
    pub split_max_lots: f64,
    /// The minimum lots of one leg of a core-sized split (`limits/min_lots`).
    pub split_min_lots: f64,
}

impl ExecTerms {
    pub fn is_valid(&self) -> bool {
        let fin = |x: f64| x.is_finite() && x >= 0.0;
        fin(self.sizing_value)
            && fin(self.master_amount)
            && fin(self.master_contract_size)
            && fin(self.max_total_lots)
            && fin(self.split_max_lots)
            && fin(self.split_min_lots)
            && (self.sizing == SlaveSizing::Final || self.sizing_value > 0.0)
            // A core-sized split needs both limits of a leg.
            && (self.split_max_lots == 0.0
                || self.sizing != SlaveSizing::Final
                || (self.split_min_lots > 0.0 && self.split_min_lots <= self.split_max_lots))
    }
}

/// One per-slave command (`ExecuteOrder` / `ModifyOrder` / `CloseOrder` on the wire).
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub command_id: CommandId,
    pub intent_id: IntentId,
    pub trade_id: TradeId,
    pub slave: AccountId,
    pub body: CommandBody,
}

/// Progress of one command, reported by the slave's agent to the core.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandAck {
    pub command_id: CommandId,
    pub trade_id: TradeId,
    pub slave: AccountId,
    pub stage: AckStage,
    pub result: AckResult,
    pub error: Option<ErrorCode>,
    pub attempt: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PipeStatus {
    /// The EA has the command durably and will execute it (or already did).
    Ok,
    /// The EA cannot take it now (not ready, busy): write it again later.
    Retry,
    /// The EA refuses it for good (malformed, unknown account).
    Failed,
}

/// The slave EA's answer to a command written on its pipe.
#[derive(Clone, Debug, PartialEq)]
pub struct PipeDeliveryAck {
    pub command_id: CommandId,
    pub status: PipeStatus,
    pub reason: Option<ErrorCode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BrokerStatus {
    Filled,
    Rejected,
    /// Never executed: the slave EA durably refused the command after the core cancelled it.
    Cancelled,
}

/// The slave EA's report of what its broker did with one command.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionResult {
    pub command_id: CommandId,
    pub trade_id: TradeId,
    pub slave: AccountId,
    /// The slave's own position ticket: later modify/close commands address it.
    pub slave_ticket: i64,
    pub fill_price: f64,
    pub filled_volume: f64,
    pub status: BrokerStatus,
    /// Why a `Rejected` open was never placed, when the slave EA's copy terms refused it
    /// (a policy reason: `PRICE_DEVIATION`, `MAX_OPEN_POSITIONS`, …); `None` for the broker's
    /// own rejections. `SPLIT_INCOMPLETE`: a split's legs executed only in part.
    pub reason: Option<ErrorCode>,
    /// A split position (SPEC.md §5.2 "Split"): its legs after this command, each its own
    /// broker ticket and lots (`slave_ticket` is then the position's id, the first leg's
    /// ticket, and `filled_volume` the total of what the command opened or closed). Empty for
    /// a position that is one order, and for a split position the command closed in full.
    pub legs: Vec<Leg>,
}

/// One order ("leg") of a split position at the slave's broker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Leg {
    pub ticket: i64,
    pub volume: f64,
}

/// The live delivery configuration, pushed core → agent → master EA.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeliveryHeartbeat {
    pub core: DeliveryConfig,
    pub agent: AgentDeliveryConfig,
    pub config_version: u64,
}

/// An agent's introduction on a new stream.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentHello {
    pub agent_id: AgentId,
    pub protocol_version: u32,
    pub supports_lossless_delivery: bool,
    pub accounts: Vec<(AccountId, Role)>,
}

/// The core's answer to `AgentHello`.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreHello {
    pub protocol_version: u32,
    pub accepted: bool,
    pub compat_mode: bool,
    pub reason: Option<ErrorCode>,
    pub delivery: DeliveryHeartbeat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MarketDataKind {
    /// A price update: may be coalesced, latest wins per symbol.
    Tick,
    /// Trading halted / resumed, session open / close: critical, never dropped.
    SessionEvent,
}

impl MarketDataKind {
    pub fn is_critical(self) -> bool {
        !matches!(self, MarketDataKind::Tick)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MarketData {
    pub symbol: Symbol,
    pub bid: f64,
    pub ask: f64,
    pub kind: MarketDataKind,
    pub routing_version: u64,
    pub seq: u64,
}

/// Everything an agent sends the core.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentToCore {
    Hello(AgentHello),
    Intent(TradeIntent),
    CommandAck(CommandAck),
    ExecutionResult(ExecutionResult),
    Heartbeat,
}

/// Everything the core sends an agent.
#[derive(Clone, Debug, PartialEq)]
pub enum CoreToAgent {
    Hello(CoreHello),
    IntentAck(TradeIntentAck),
    Command(Command),
    Heartbeat(DeliveryHeartbeat),
    /// Final outcome of one delivery, reported to the master's agent (informational).
    DeliveryReport(CommandAck),
    /// The core gave up on this command after `max_retries`: the slave EA must refuse it
    /// from now on, or report its result if it already executed it.
    Cancel(Command),
}

/// Everything an EA writes on its local pipe to the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum EaToAgent {
    /// Master EA: one intent from its IntentQueue (sent again on every retry, same id).
    Intent(TradeIntent),
    /// Slave EA: its answer to a command written on the pipe.
    PipeAck(PipeDeliveryAck),
    /// Slave EA: what the broker did (sent again whenever the command is re-delivered).
    Execution(ExecutionResult),
}

/// Everything the agent writes on an EA's local pipe.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentToEa {
    /// Sent first on every (re)opened pipe; a slave EA executes nothing before it.
    Handshake {
        account: AccountId,
        protocol_version: u32,
    },
    /// To a master EA: the core's answer to one of its intents.
    IntentAck(TradeIntentAck),
    /// To a slave EA: a command to execute at most once.
    Command(Command),
    /// To a master EA: the live retry settings for its IntentQueue.
    DeliveryConfig(AgentDeliveryConfig),
    /// To a slave EA: the core cancelled this command (see `CoreToAgent::Cancel`).
    Cancel(Command),
}
