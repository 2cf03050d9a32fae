//! The messages machines exchange, as plain Rust values.
//!
//! These mirror the `echo.v1` wire contract (crate `echo-proto`) without depending on it: the
//! runtime converts at the edge, so this crate stays free of codecs and IO. This module owns the
//! vocabulary (stages, results, error codes, commands); it must never hold behaviour beyond
//! small, pure helpers.

use crate::config::{AgentDeliveryConfig, DeliveryConfig};
use crate::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};

/// Current protocol version spoken by lossless peers.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntentKind {
    Open,
    Modify,
    PartialClose,
    Close,
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
        | ErrorCode::NoStopLoss => {}
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
