//! Conversions between the `echo.v1` wire messages (prost) and the machines' plain messages.
//!
//! Owns the mapping only: every field, every enum value, in both directions. Decoding is
//! total — an unknown or UNSPECIFIED enum, or a message without its required body, is a typed
//! [`WireError`] (the caller answers `ERROR_CODE_PROTOCOL_VIOLATION`), never a guess and never
//! a panic. It must never decide about trades: whether an intent is valid (volume, ids,
//! accounts) is the core machine's call, so values pass through unchanged.

use echo_proto::v1 as pb;
use echo_statemachine::config::{AgentDeliveryConfig, DeliveryConfig};
use echo_statemachine::ids::{AccountId, AgentId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{
    AckResult, AckStage, AgentHello, AgentToCore, BrokerStatus, CloseFraction, Command, CommandAck,
    CommandBody, CoreHello, CoreToAgent, DeliveryHeartbeat, ErrorCode, ExecTerms, ExecutionResult,
    IntentKind, Leg, MasterFacts, OrderType, PendingResolution, PendingType, Role, Side,
    SlaveSizing, TradeIntent, TradeIntentAck,
};

/// Why a wire message could not become a machine message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message has no body")]
    EmptyBody,
    #[error("field {field}: {value} is not a value this side understands")]
    BadEnum { field: &'static str, value: i32 },
    #[error("field {0} is required")]
    Missing(&'static str),
}

/// What an agent's stream delivered, once decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum FromAgent {
    /// The hello, and the token it presented (checked by the link, never by the machine).
    Hello {
        hello: AgentHello,
        token: String,
    },
    Msg(AgentToCore),
    /// Market data is not routed by this core version; the link counts and drops it.
    MarketData,
}

fn bad(field: &'static str, value: i32) -> WireError {
    WireError::BadEnum { field, value }
}

// ----- enums ------------------------------------------------------------------------------

pub fn kind_from_wire(v: i32) -> Result<IntentKind, WireError> {
    match pb::IntentKind::try_from(v) {
        Ok(pb::IntentKind::Open) => Ok(IntentKind::Open),
        Ok(pb::IntentKind::Modify) => Ok(IntentKind::Modify),
        Ok(pb::IntentKind::PartialClose) => Ok(IntentKind::PartialClose),
        Ok(pb::IntentKind::Close) => Ok(IntentKind::Close),
        Ok(pb::IntentKind::PlaceLimit) => Ok(IntentKind::PlaceLimit),
        Ok(pb::IntentKind::PlaceStop) => Ok(IntentKind::PlaceStop),
        Ok(pb::IntentKind::PendingModify) => Ok(IntentKind::PendingModify),
        Ok(pb::IntentKind::PendingCancel) => Ok(IntentKind::PendingCancel),
        Ok(pb::IntentKind::PendingTrigger) => Ok(IntentKind::PendingTrigger),
        _ => Err(bad("kind", v)),
    }
}

pub fn kind_to_wire(k: IntentKind) -> pb::IntentKind {
    match k {
        IntentKind::Open => pb::IntentKind::Open,
        IntentKind::Modify => pb::IntentKind::Modify,
        IntentKind::PartialClose => pb::IntentKind::PartialClose,
        IntentKind::Close => pb::IntentKind::Close,
        IntentKind::PlaceLimit => pb::IntentKind::PlaceLimit,
        IntentKind::PlaceStop => pb::IntentKind::PlaceStop,
        IntentKind::PendingModify => pb::IntentKind::PendingModify,
        IntentKind::PendingCancel => pb::IntentKind::PendingCancel,
        IntentKind::PendingTrigger => pb::IntentKind::PendingTrigger,
    }
}

pub fn pending_type_from_wire(v: i32) -> Result<PendingType, WireError> {
    match pb::PendingOrderType::try_from(v) {
        Ok(pb::PendingOrderType::Limit) => Ok(PendingType::Limit),
        Ok(pb::PendingOrderType::Stop) => Ok(PendingType::Stop),
        _ => Err(bad("order_type", v)),
    }
}

pub fn pending_type_to_wire(t: PendingType) -> pb::PendingOrderType {
    match t {
        PendingType::Limit => pb::PendingOrderType::Limit,
        PendingType::Stop => pb::PendingOrderType::Stop,
    }
}

pub fn resolution_from_wire(v: i32) -> Result<PendingResolution, WireError> {
    match pb::PendingResolution::try_from(v) {
        Ok(pb::PendingResolution::Cancel) => Ok(PendingResolution::Cancel),
        Ok(pb::PendingResolution::Trigger) => Ok(PendingResolution::Trigger),
        _ => Err(bad("resolution", v)),
    }
}

pub fn resolution_to_wire(r: PendingResolution) -> pb::PendingResolution {
    match r {
        PendingResolution::Cancel => pb::PendingResolution::Cancel,
        PendingResolution::Trigger => pb::PendingResolution::Trigger,
    }
}

pub fn side_from_wire(v: i32) -> Result<Side, WireError> {
    match pb::Side::try_from(v) {
        Ok(pb::Side::Buy) => Ok(Side::Buy),
        Ok(pb::Side::Sell) => Ok(Side::Sell),
        _ => Err(bad("side", v)),
    }
}

pub fn side_to_wire(s: Side) -> pb::Side {
    match s {
        Side::Buy => pb::Side::Buy,
        Side::Sell => pb::Side::Sell,
    }
}

pub fn role_from_wire(v: i32) -> Result<Role, WireError> {
    match pb::Role::try_from(v) {
        Ok(pb::Role::Master) => Ok(Role::Master),
        Ok(pb::Role::Slave) => Ok(Role::Slave),
        _ => Err(bad("role", v)),
    }
}

pub fn role_to_wire(r: Role) -> pb::Role {
    match r {
        Role::Master => pb::Role::Master,
        Role::Slave => pb::Role::Slave,
    }
}

pub fn stage_from_wire(v: i32) -> Result<AckStage, WireError> {
    match pb::AckStage::try_from(v) {
        Ok(pb::AckStage::CoreAccepted) => Ok(AckStage::CoreAccepted),
        Ok(pb::AckStage::AgentBuffered) => Ok(AckStage::AgentBuffered),
        Ok(pb::AckStage::PipeDelivered) => Ok(AckStage::PipeDelivered),
        Ok(pb::AckStage::EaConfirmed) => Ok(AckStage::EaConfirmed),
        _ => Err(bad("stage", v)),
    }
}

pub fn stage_to_wire(s: AckStage) -> pb::AckStage {
    match s {
        AckStage::CoreAccepted => pb::AckStage::CoreAccepted,
        AckStage::AgentBuffered => pb::AckStage::AgentBuffered,
        AckStage::PipeDelivered => pb::AckStage::PipeDelivered,
        AckStage::EaConfirmed => pb::AckStage::EaConfirmed,
    }
}

pub fn result_from_wire(v: i32) -> Result<AckResult, WireError> {
    match pb::AckResult::try_from(v) {
        Ok(pb::AckResult::Pending) => Ok(AckResult::Pending),
        Ok(pb::AckResult::Ok) => Ok(AckResult::Ok),
        Ok(pb::AckResult::Failed) => Ok(AckResult::Failed),
        _ => Err(bad("result", v)),
    }
}

pub fn result_to_wire(r: AckResult) -> pb::AckResult {
    match r {
        AckResult::Pending => pb::AckResult::Pending,
        AckResult::Ok => pb::AckResult::Ok,
        AckResult::Failed => pb::AckResult::Failed,
    }
}

/// Every machine error code and its wire value; one table keeps both directions in step.
const ERROR_CODES: [(ErrorCode, pb::ErrorCode); 28] = [
    (ErrorCode::BrokerBusy, pb::ErrorCode::BrokerBusy),
    (ErrorCode::InvalidArgument, pb::ErrorCode::InvalidArgument),
    (ErrorCode::Unauthenticated, pb::ErrorCode::Unauthenticated),
    (ErrorCode::UnknownAccount, pb::ErrorCode::UnknownAccount),
    (
        ErrorCode::JournalUnavailable,
        pb::ErrorCode::JournalUnavailable,
    ),
    (ErrorCode::SymbolNotMapped, pb::ErrorCode::SymbolNotMapped),
    (ErrorCode::MaxRetries, pb::ErrorCode::MaxRetries),
    (ErrorCode::BrokerRejected, pb::ErrorCode::BrokerRejected),
    (ErrorCode::EaRejected, pb::ErrorCode::EaRejected),
    (ErrorCode::NoPosition, pb::ErrorCode::NoPosition),
    (ErrorCode::Duplicate, pb::ErrorCode::Duplicate),
    (
        ErrorCode::ProtocolViolation,
        pb::ErrorCode::ProtocolViolation,
    ),
    (ErrorCode::PipeUnavailable, pb::ErrorCode::PipeUnavailable),
    (ErrorCode::Internal, pb::ErrorCode::Internal),
    (ErrorCode::VolumeBelowMin, pb::ErrorCode::VolumeBelowMin),
    (ErrorCode::PriceDeviation, pb::ErrorCode::PriceDeviation),
    (ErrorCode::Expired, pb::ErrorCode::Expired),
    (ErrorCode::FilteredSymbol, pb::ErrorCode::FilteredSymbol),
    (ErrorCode::FilteredMagic, pb::ErrorCode::FilteredMagic),
    (ErrorCode::FilteredComment, pb::ErrorCode::FilteredComment),
    (
        ErrorCode::FilteredDirection,
        pb::ErrorCode::FilteredDirection,
    ),
    (
        ErrorCode::FilteredOrderType,
        pb::ErrorCode::FilteredOrderType,
    ),
    (ErrorCode::MaxOpenPositions, pb::ErrorCode::MaxOpenPositions),
    (ErrorCode::MaxTotalLots, pb::ErrorCode::MaxTotalLots),
    (
        ErrorCode::InsufficientMargin,
        pb::ErrorCode::InsufficientMargin,
    ),
    (ErrorCode::NoStopLoss, pb::ErrorCode::NoStopLoss),
    (
        ErrorCode::AccountFactsUnknown,
        pb::ErrorCode::AccountFactsUnknown,
    ),
    (ErrorCode::SplitIncomplete, pb::ErrorCode::SplitIncomplete),
];

/// `ERROR_CODE_UNSPECIFIED` (0) is "no error"; any other unknown value is refused.
pub fn error_from_wire(v: i32) -> Result<Option<ErrorCode>, WireError> {
    if v == pb::ErrorCode::Unspecified as i32 {
        return Ok(None);
    }
    ERROR_CODES
        .iter()
        .find(|(_, w)| *w as i32 == v)
        .map(|(m, _)| Some(*m))
        .ok_or(bad("error_code", v))
}

pub fn error_to_wire(e: Option<ErrorCode>) -> pb::ErrorCode {
    match e {
        None => pb::ErrorCode::Unspecified,
        Some(e) => ERROR_CODES
            .iter()
            .find(|(m, _)| *m == e)
            .map(|(_, w)| *w)
            .unwrap_or(pb::ErrorCode::Internal),
    }
}

/// The machine error code whose SPEC name is `name` (`CoreHello.reason` carries the name).
pub fn error_from_name(name: &str) -> Option<ErrorCode> {
    ERROR_CODES
        .iter()
        .map(|(m, _)| *m)
        .find(|m| m.name() == name)
}

pub fn broker_status_from_wire(v: i32) -> Result<BrokerStatus, WireError> {
    match pb::BrokerStatus::try_from(v) {
        // Partial fills and modifications are executions: `filled_volume` says how much.
        Ok(pb::BrokerStatus::Filled | pb::BrokerStatus::PartiallyFilled)
        | Ok(pb::BrokerStatus::Modified) => Ok(BrokerStatus::Filled),
        Ok(pb::BrokerStatus::Rejected | pb::BrokerStatus::NoPosition) => Ok(BrokerStatus::Rejected),
        Ok(pb::BrokerStatus::Cancelled) => Ok(BrokerStatus::Cancelled),
        _ => Err(bad("broker_status", v)),
    }
}

pub fn broker_status_to_wire(s: BrokerStatus) -> pb::BrokerStatus {
    match s {
        BrokerStatus::Filled => pb::BrokerStatus::Filled,
        BrokerStatus::Rejected => pb::BrokerStatus::Rejected,
        BrokerStatus::Cancelled => pb::BrokerStatus::Cancelled,
    }
}

// ----- messages ---------------------------------------------------------------------------

pub fn intent_from_wire(w: pb::TradeIntent) -> Result<TradeIntent, WireError> {
    let order_type = match pb::MasterOrderType::try_from(w.order_type) {
        Ok(pb::MasterOrderType::Unspecified | pb::MasterOrderType::Market) => OrderType::Market,
        Ok(pb::MasterOrderType::Limit) => OrderType::Limit,
        Ok(pb::MasterOrderType::Stop) => OrderType::Stop,
        Ok(pb::MasterOrderType::StopLimit) => OrderType::StopLimit,
        Err(_) => return Err(bad("order_type", w.order_type)),
    };
    Ok(TradeIntent {
        origin: MasterFacts {
            magic: w.magic,
            comment: w.comment,
            order_type,
            balance: w.master_balance,
            equity: w.master_equity,
        },
        intent_id: IntentId::new(&w.intent_id),
        trade_id: TradeId::new(&w.trade_id),
        master: AccountId::new(&w.master_account),
        kind: kind_from_wire(w.kind)?,
        symbol: Symbol::new(&w.symbol),
        side: side_from_wire(w.side)?,
        volume: w.volume,
        price: w.price,
        stop_loss: w.stop_loss,
        take_profit: w.take_profit,
        master_ticket: w.master_ticket,
        master_seq: w.master_seq,
        emitted_at_ms: w.emitted_at_unix_ms,
        master_volume_before: w.master_volume_before,
    })
}

pub fn intent_to_wire(m: &TradeIntent) -> pb::TradeIntent {
    pb::TradeIntent {
        intent_id: m.intent_id.to_string(),
        trade_id: m.trade_id.to_string(),
        master_account: m.master.to_string(),
        kind: kind_to_wire(m.kind) as i32,
        symbol: m.symbol.to_string(),
        side: side_to_wire(m.side) as i32,
        volume: m.volume,
        price: m.price,
        stop_loss: m.stop_loss,
        take_profit: m.take_profit,
        magic: m.origin.magic,
        comment: m.origin.comment.clone(),
        order_type: match m.origin.order_type {
            OrderType::Market => pb::MasterOrderType::Market,
            OrderType::Limit => pb::MasterOrderType::Limit,
            OrderType::Stop => pb::MasterOrderType::Stop,
            OrderType::StopLimit => pb::MasterOrderType::StopLimit,
        } as i32,
        master_balance: m.origin.balance,
        master_equity: m.origin.equity,
        master_ticket: m.master_ticket,
        master_seq: m.master_seq,
        emitted_at_unix_ms: m.emitted_at_ms,
        master_volume_before: m.master_volume_before,
    }
}

pub fn intent_ack_from_wire(w: pb::TradeIntentAck) -> Result<TradeIntentAck, WireError> {
    Ok(TradeIntentAck {
        intent_id: IntentId::new(&w.intent_id),
        trade_id: TradeId::new(&w.trade_id),
        result: result_from_wire(w.result)?,
        error: error_from_wire(w.error_code)?,
        retry_after_ms: w.retry_after_ms,
    })
}

pub fn intent_ack_to_wire(m: &TradeIntentAck) -> pb::TradeIntentAck {
    pb::TradeIntentAck {
        intent_id: m.intent_id.to_string(),
        trade_id: m.trade_id.to_string(),
        result: result_to_wire(m.result) as i32,
        error_code: error_to_wire(m.error) as i32,
        retry_after_ms: m.retry_after_ms,
        message: m.error.map(|e| e.name().to_string()).unwrap_or_default(),
    }
}

pub fn command_from_wire(w: pb::SlaveCommand) -> Result<Command, WireError> {
    use pb::slave_command::Command as C;
    match w.command.ok_or(WireError::Missing("command"))? {
        C::Execute(e) => Ok(Command {
            command_id: CommandId::new(&e.command_id),
            intent_id: IntentId::new(&e.intent_id),
            trade_id: TradeId::new(&e.trade_id),
            slave: AccountId::new(&e.slave_account),
            body: CommandBody::Execute {
                terms: terms_from_wire(e.terms.unwrap_or_default())?,
                symbol: Symbol::new(&e.symbol),
                side: side_from_wire(e.side)?,
                volume: e.volume,
                price: e.price,
                stop_loss: e.stop_loss,
                take_profit: e.take_profit,
                catch_up: e.catch_up,
            },
        }),
        C::Modify(m) => Ok(Command {
            command_id: CommandId::new(&m.command_id),
            intent_id: IntentId::new(&m.intent_id),
            trade_id: TradeId::new(&m.trade_id),
            slave: AccountId::new(&m.slave_account),
            body: CommandBody::Modify {
                slave_ticket: m.slave_ticket,
                stop_loss: m.stop_loss,
                take_profit: m.take_profit,
            },
        }),
        C::PlacePending(p) => Ok(Command {
            command_id: CommandId::new(&p.command_id),
            intent_id: IntentId::new(&p.intent_id),
            trade_id: TradeId::new(&p.trade_id),
            slave: AccountId::new(&p.slave_account),
            body: CommandBody::PlacePending {
                symbol: Symbol::new(&p.symbol),
                side: side_from_wire(p.side)?,
                order_type: pending_type_from_wire(p.order_type)?,
                volume: p.volume,
                price: p.price,
                stop_loss: p.stop_loss,
                take_profit: p.take_profit,
                terms: terms_from_wire(p.terms.unwrap_or_default())?,
            },
        }),
        C::ModifyPending(m) => Ok(Command {
            command_id: CommandId::new(&m.command_id),
            intent_id: IntentId::new(&m.intent_id),
            trade_id: TradeId::new(&m.trade_id),
            slave: AccountId::new(&m.slave_account),
            body: CommandBody::ModifyPending {
                slave_ticket: m.slave_ticket,
                price: m.price,
                stop_loss: m.stop_loss,
                take_profit: m.take_profit,
            },
        }),
        C::ResolvePending(r) => Ok(Command {
            command_id: CommandId::new(&r.command_id),
            intent_id: IntentId::new(&r.intent_id),
            trade_id: TradeId::new(&r.trade_id),
            slave: AccountId::new(&r.slave_account),
            body: CommandBody::ResolvePending {
                slave_ticket: r.slave_ticket,
                resolution: resolution_from_wire(r.resolution)?,
                symbol: Symbol::new(&r.symbol),
                side: side_from_wire(r.side)?,
                price: r.price,
                stop_loss: r.stop_loss,
                take_profit: r.take_profit,
                terms: terms_from_wire(r.terms.unwrap_or_default())?,
            },
        }),
        C::Close(c) => Ok(Command {
            command_id: CommandId::new(&c.command_id),
            intent_id: IntentId::new(&c.intent_id),
            trade_id: TradeId::new(&c.trade_id),
            slave: AccountId::new(&c.slave_account),
            // A fraction (master_volume_before > 0) is a partial close the slave sizes itself.
            body: if c.master_volume_before > 0.0 {
                CommandBody::ClosePart {
                    slave_ticket: c.slave_ticket,
                    fraction: CloseFraction {
                        master_closed: c.master_closed_volume,
                        master_volume_before: c.master_volume_before,
                        slave_min: c.min_volume,
                        slave_step: c.volume_step,
                    },
                }
            } else {
                CommandBody::Close {
                    slave_ticket: c.slave_ticket,
                    volume: c.volume,
                }
            },
        }),
    }
}

pub fn command_to_wire(m: &Command) -> pb::SlaveCommand {
    use pb::slave_command::Command as C;
    let (command_id, intent_id, trade_id, slave_account) = (
        m.command_id.to_string(),
        m.intent_id.to_string(),
        m.trade_id.to_string(),
        m.slave.to_string(),
    );
    let command = match &m.body {
        CommandBody::Execute {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
            catch_up,
        } => C::Execute(pb::ExecuteOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            symbol: symbol.to_string(),
            side: side_to_wire(*side) as i32,
            volume: *volume,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: (*terms != ExecTerms::default()).then(|| terms_to_wire(terms)),
            catch_up: *catch_up,
        }),
        CommandBody::Modify {
            slave_ticket,
            stop_loss,
            take_profit,
        } => C::Modify(pb::ModifyOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            slave_ticket: *slave_ticket,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
        }),
        CommandBody::Close {
            slave_ticket,
            volume,
        } => C::Close(pb::CloseOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            slave_ticket: *slave_ticket,
            volume: *volume,
            ..pb::CloseOrder::default()
        }),
        CommandBody::ClosePart {
            slave_ticket,
            fraction,
        } => C::Close(pb::CloseOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            slave_ticket: *slave_ticket,
            volume: 0.0,
            master_closed_volume: fraction.master_closed,
            master_volume_before: fraction.master_volume_before,
            min_volume: fraction.slave_min,
            volume_step: fraction.slave_step,
        }),
        CommandBody::PlacePending {
            symbol,
            side,
            order_type,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
        } => C::PlacePending(pb::PlacePendingOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            symbol: symbol.to_string(),
            side: side_to_wire(*side) as i32,
            order_type: pending_type_to_wire(*order_type) as i32,
            volume: *volume,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: (*terms != ExecTerms::default()).then(|| terms_to_wire(terms)),
        }),
        CommandBody::ModifyPending {
            slave_ticket,
            price,
            stop_loss,
            take_profit,
        } => C::ModifyPending(pb::ModifyPendingOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            slave_ticket: *slave_ticket,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
        }),
        CommandBody::ResolvePending {
            slave_ticket,
            resolution,
            symbol,
            side,
            price,
            stop_loss,
            take_profit,
            terms,
        } => C::ResolvePending(pb::ResolvePendingOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            slave_ticket: *slave_ticket,
            resolution: resolution_to_wire(*resolution) as i32,
            symbol: symbol.to_string(),
            side: side_to_wire(*side) as i32,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: (*terms != ExecTerms::default()).then(|| terms_to_wire(terms)),
        }),
        // The slave EA's own broker step never travels; were it handed here, it goes as the
        // trigger it came from (the slave EA refuses a TriggerPending command as malformed).
        CommandBody::TriggerPending {
            slave_ticket,
            symbol,
            side,
            stop_loss,
            take_profit,
            ..
        } => C::ResolvePending(pb::ResolvePendingOrder {
            command_id,
            intent_id,
            trade_id,
            slave_account,
            slave_ticket: *slave_ticket,
            resolution: pb::PendingResolution::Trigger as i32,
            symbol: symbol.to_string(),
            side: side_to_wire(*side) as i32,
            price: 0.0,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: None,
        }),
    };
    pb::SlaveCommand {
        command: Some(command),
    }
}

pub fn command_ack_from_wire(w: pb::CommandAck) -> Result<CommandAck, WireError> {
    Ok(CommandAck {
        command_id: CommandId::new(&w.command_id),
        trade_id: TradeId::new(&w.trade_id),
        slave: AccountId::new(&w.slave_account),
        stage: stage_from_wire(w.stage)?,
        result: result_from_wire(w.result)?,
        error: error_from_wire(w.error_code)?,
        attempt: w.attempt,
    })
}

pub fn command_ack_to_wire(m: &CommandAck) -> pb::CommandAck {
    pb::CommandAck {
        command_id: m.command_id.to_string(),
        trade_id: m.trade_id.to_string(),
        slave_account: m.slave.to_string(),
        stage: stage_to_wire(m.stage) as i32,
        result: result_to_wire(m.result) as i32,
        error_code: error_to_wire(m.error) as i32,
        message: String::new(),
        attempt: m.attempt,
    }
}

fn sizing_to_wire(s: SlaveSizing) -> pb::SlaveSizing {
    match s {
        SlaveSizing::Final => pb::SlaveSizing::Final,
        SlaveSizing::BalanceRatio => pb::SlaveSizing::BalanceRatio,
        SlaveSizing::EquityRatio => pb::SlaveSizing::EquityRatio,
        SlaveSizing::RiskPercent => pb::SlaveSizing::RiskPercent,
    }
}

pub fn terms_from_wire(w: pb::ExecTerms) -> Result<ExecTerms, WireError> {
    let sizing = SlaveSizing::ALL
        .iter()
        .copied()
        .find(|s| sizing_to_wire(*s) as i32 == w.sizing)
        .ok_or(bad("terms.sizing", w.sizing))?;
    Ok(ExecTerms {
        sizing,
        sizing_value: w.sizing_value,
        master_amount: w.master_amount,
        master_contract_size: w.master_contract_size,
        trade_min: w.trade_min,
        check_free_margin: w.check_free_margin,
        max_deviation_points: w.max_deviation_points,
        deviation_window_ms: w.deviation_window_ms,
        max_open_positions: w.max_open_positions,
        max_total_lots: w.max_total_lots,
        split_max_lots: w.split_max_lots,
        split_min_lots: w.split_min_lots,
    })
}

pub fn terms_to_wire(t: &ExecTerms) -> pb::ExecTerms {
    pb::ExecTerms {
        sizing: sizing_to_wire(t.sizing) as i32,
        sizing_value: t.sizing_value,
        master_amount: t.master_amount,
        master_contract_size: t.master_contract_size,
        trade_min: t.trade_min,
        check_free_margin: t.check_free_margin,
        max_deviation_points: t.max_deviation_points,
        deviation_window_ms: t.deviation_window_ms,
        max_open_positions: t.max_open_positions,
        max_total_lots: t.max_total_lots,
        split_max_lots: t.split_max_lots,
        split_min_lots: t.split_min_lots,
    }
}

pub fn execution_from_wire(w: pb::ExecutionResult) -> Result<ExecutionResult, WireError> {
    // Only a copy-policy reason (or a split's SPLIT_INCOMPLETE) travels in the machine's
    // result; the broker's own classification is implied by the status.
    let reason = error_from_wire(w.error_code)?.filter(|e| {
        *e == ErrorCode::SplitIncomplete
            || echo_statemachine::policy::SkipReason::from_error_code(*e).is_some()
    });
    Ok(ExecutionResult {
        reason,
        command_id: CommandId::new(&w.command_id),
        trade_id: TradeId::new(&w.trade_id),
        slave: AccountId::new(&w.slave_account),
        slave_ticket: w.slave_ticket,
        fill_price: w.fill_price,
        filled_volume: w.filled_volume,
        status: broker_status_from_wire(w.broker_status)?,
        legs: w
            .legs
            .iter()
            .map(|l| Leg {
                ticket: l.ticket,
                volume: l.volume,
            })
            .collect(),
    })
}

pub fn execution_to_wire(m: &ExecutionResult) -> pb::ExecutionResult {
    pb::ExecutionResult {
        command_id: m.command_id.to_string(),
        trade_id: m.trade_id.to_string(),
        slave_account: m.slave.to_string(),
        slave_ticket: m.slave_ticket,
        fill_price: m.fill_price,
        filled_volume: m.filled_volume,
        broker_status: broker_status_to_wire(m.status) as i32,
        broker_message: String::new(),
        executed_at_unix_ms: 0,
        error_code: error_to_wire(m.reason) as i32,
        legs: m
            .legs
            .iter()
            .map(|l| pb::SplitLeg {
                ticket: l.ticket,
                volume: l.volume,
            })
            .collect(),
    }
}

/// A wire value of 0 means "not set": the receiver keeps its default.
fn or_default(v: u32, d: u32) -> u32 {
    if v == 0 {
        d
    } else {
        v
    }
}

pub fn core_delivery_to_wire(c: &DeliveryConfig) -> pb::DeliveryConfig {
    pb::DeliveryConfig {
        ack_timeout_ms: c.ack_timeout_ms,
        retry_backoff_ms: c.retry_backoff_ms,
        max_retries: c.max_retries,
        heartbeat_interval_ms: c.heartbeat_interval_ms,
        reconcile_interval_ms: c.reconcile_interval_ms,
    }
}

pub fn core_delivery_from_wire(w: Option<pb::DeliveryConfig>) -> DeliveryConfig {
    let d = DeliveryConfig::default();
    let w = w.unwrap_or_default();
    DeliveryConfig {
        ack_timeout_ms: or_default(w.ack_timeout_ms, d.ack_timeout_ms),
        retry_backoff_ms: or_default(w.retry_backoff_ms, d.retry_backoff_ms),
        max_retries: or_default(w.max_retries, d.max_retries),
        heartbeat_interval_ms: or_default(w.heartbeat_interval_ms, d.heartbeat_interval_ms),
        reconcile_interval_ms: or_default(w.reconcile_interval_ms, d.reconcile_interval_ms),
        // Not on the wire: agents do not journal, and the send window is the core's own.
        journal_stage_acks: d.journal_stage_acks,
        agent_window: d.agent_window,
    }
}

pub fn agent_delivery_to_wire(c: &AgentDeliveryConfig) -> pb::DeliveryConfig {
    pb::DeliveryConfig {
        ack_timeout_ms: c.ack_timeout_ms,
        retry_backoff_ms: c.retry_backoff_ms,
        max_retries: c.max_retries,
        heartbeat_interval_ms: c.heartbeat_interval_ms,
        reconcile_interval_ms: 0,
    }
}

pub fn agent_delivery_from_wire(w: Option<pb::DeliveryConfig>) -> AgentDeliveryConfig {
    let d = AgentDeliveryConfig::default();
    let w = w.unwrap_or_default();
    AgentDeliveryConfig {
        ack_timeout_ms: or_default(w.ack_timeout_ms, d.ack_timeout_ms),
        retry_backoff_ms: or_default(w.retry_backoff_ms, d.retry_backoff_ms),
        max_retries: or_default(w.max_retries, d.max_retries),
        heartbeat_interval_ms: or_default(w.heartbeat_interval_ms, d.heartbeat_interval_ms),
    }
}

pub fn heartbeat_to_wire(
    m: &DeliveryHeartbeat,
    core_id: &str,
    sent_at_unix_ms: i64,
) -> pb::DeliveryHeartbeat {
    pb::DeliveryHeartbeat {
        core_id: core_id.to_string(),
        agent_id: String::new(),
        sent_at_unix_ms,
        core: Some(core_delivery_to_wire(&m.core)),
        agent: Some(agent_delivery_to_wire(&m.agent)),
        config_version: m.config_version,
    }
}

pub fn heartbeat_from_wire(w: pb::DeliveryHeartbeat) -> DeliveryHeartbeat {
    DeliveryHeartbeat {
        core: core_delivery_from_wire(w.core),
        agent: agent_delivery_from_wire(w.agent),
        config_version: w.config_version,
    }
}

pub fn hello_from_wire(w: pb::AgentHello) -> Result<(AgentHello, String), WireError> {
    let accounts = w
        .accounts
        .into_iter()
        .map(|b| Ok((AccountId::new(&b.account_id), role_from_wire(b.role)?)))
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok((
        AgentHello {
            agent_id: AgentId::new(&w.agent_id),
            protocol_version: w.protocol_version,
            supports_lossless_delivery: w.supports_lossless_delivery,
            accounts,
        },
        w.auth_token,
    ))
}

pub fn hello_to_wire(m: &AgentHello, token: &str) -> pb::AgentHello {
    pb::AgentHello {
        agent_id: m.agent_id.to_string(),
        auth_token: token.to_string(),
        protocol_version: m.protocol_version,
        supports_lossless_delivery: m.supports_lossless_delivery,
        accounts: m
            .accounts
            .iter()
            .map(|(a, r)| pb::AccountBinding {
                account_id: a.to_string(),
                role: role_to_wire(*r) as i32,
            })
            .collect(),
    }
}

pub fn core_hello_to_wire(m: &CoreHello, core_id: &str) -> pb::CoreHello {
    pb::CoreHello {
        core_id: core_id.to_string(),
        protocol_version: m.protocol_version,
        supports_lossless_delivery: !m.compat_mode,
        accepted: m.accepted,
        compat_mode: m.compat_mode,
        reason: m.reason.map(|e| e.name().to_string()).unwrap_or_default(),
        delivery_config: Some(agent_delivery_to_wire(&m.delivery.agent)),
    }
}

/// The core's hello carries the agent's block only; the machine wants the whole heartbeat,
/// so the core block and version come from the first `DeliveryHeartbeat` (sent with it).
pub fn core_hello_from_wire(w: pb::CoreHello) -> CoreHello {
    CoreHello {
        protocol_version: w.protocol_version,
        accepted: w.accepted,
        compat_mode: w.compat_mode,
        reason: error_from_name(&w.reason),
        delivery: DeliveryHeartbeat {
            core: DeliveryConfig::default(),
            agent: agent_delivery_from_wire(w.delivery_config),
            config_version: 0,
        },
    }
}

// ----- envelopes --------------------------------------------------------------------------

pub fn agent_to_core_from_wire(w: pb::AgentToCore) -> Result<FromAgent, WireError> {
    use pb::agent_to_core::Body;
    Ok(match w.body.ok_or(WireError::EmptyBody)? {
        Body::Hello(h) => {
            let (hello, token) = hello_from_wire(h)?;
            FromAgent::Hello { hello, token }
        }
        Body::Intent(i) => FromAgent::Msg(AgentToCore::Intent(intent_from_wire(i)?)),
        Body::CommandAck(a) => FromAgent::Msg(AgentToCore::CommandAck(command_ack_from_wire(a)?)),
        Body::ExecutionResult(r) => {
            FromAgent::Msg(AgentToCore::ExecutionResult(execution_from_wire(r)?))
        }
        Body::Heartbeat(_) => FromAgent::Msg(AgentToCore::Heartbeat),
        Body::MarketData(_) => FromAgent::MarketData,
    })
}

/// `token` is only sent in the hello.
pub fn agent_to_core_to_wire(m: &AgentToCore, token: &str, agent_id: &str) -> pb::AgentToCore {
    use pb::agent_to_core::Body;
    let body = match m {
        AgentToCore::Hello(h) => Body::Hello(hello_to_wire(h, token)),
        AgentToCore::Intent(i) => Body::Intent(intent_to_wire(i)),
        AgentToCore::CommandAck(a) => Body::CommandAck(command_ack_to_wire(a)),
        AgentToCore::ExecutionResult(r) => Body::ExecutionResult(execution_to_wire(r)),
        AgentToCore::Heartbeat => Body::Heartbeat(pb::DeliveryHeartbeat {
            agent_id: agent_id.to_string(),
            ..Default::default()
        }),
    };
    pb::AgentToCore { body: Some(body) }
}

/// One machine message may need two wire messages: a `CoreHello` carries only the agent's
/// delivery block, so it is followed by a heartbeat with the whole configuration.
pub fn core_to_agent_to_wire(
    m: &CoreToAgent,
    core_id: &str,
    now_unix_ms: i64,
) -> Vec<pb::CoreToAgent> {
    use pb::core_to_agent::Body;
    let one = |b: Body| pb::CoreToAgent { body: Some(b) };
    match m {
        CoreToAgent::Hello(h) => {
            let mut v = vec![one(Body::Hello(core_hello_to_wire(h, core_id)))];
            if h.accepted {
                v.push(one(Body::Heartbeat(heartbeat_to_wire(
                    &h.delivery,
                    core_id,
                    now_unix_ms,
                ))));
            }
            v
        }
        CoreToAgent::IntentAck(a) => vec![one(Body::IntentAck(intent_ack_to_wire(a)))],
        CoreToAgent::Command(c) => vec![one(Body::Command(command_to_wire(c)))],
        CoreToAgent::Heartbeat(h) => vec![one(Body::Heartbeat(heartbeat_to_wire(
            h,
            core_id,
            now_unix_ms,
        )))],
        CoreToAgent::DeliveryReport(a) => vec![one(Body::CommandAck(command_ack_to_wire(a)))],
        CoreToAgent::Cancel(c) => vec![one(Body::Cancel(command_to_wire(c)))],
    }
}

/// What the core's stream delivered to an agent. Market data is not routed yet: `None`.
pub fn core_to_agent_from_wire(w: pb::CoreToAgent) -> Result<Option<CoreToAgent>, WireError> {
    use pb::core_to_agent::Body;
    Ok(Some(match w.body.ok_or(WireError::EmptyBody)? {
        Body::Hello(h) => CoreToAgent::Hello(core_hello_from_wire(h)),
        Body::IntentAck(a) => CoreToAgent::IntentAck(intent_ack_from_wire(a)?),
        Body::Command(c) => CoreToAgent::Command(command_from_wire(c)?),
        Body::Heartbeat(h) => CoreToAgent::Heartbeat(heartbeat_from_wire(h)),
        Body::MarketData(_) => return Ok(None),
        Body::CommandAck(a) => CoreToAgent::DeliveryReport(command_ack_from_wire(a)?),
        Body::Cancel(c) => CoreToAgent::Cancel(command_from_wire(c)?),
    }))
}

/// The fuzz target's body (also replayed on stable by `tests/wire_fuzz_corpus.rs`): `data` as
/// either envelope, through the conversion and back. Panics only on a real bug: a decoded
/// message that does not survive machine → wire → machine unchanged.
pub fn exercise_untrusted(data: &[u8]) {
    use prost::Message as _;
    if let Ok(w) = pb::AgentToCore::decode(data) {
        if let Ok(m) = agent_to_core_from_wire(w) {
            let again = match &m {
                FromAgent::Hello { hello, token } => agent_to_core_from_wire(
                    agent_to_core_to_wire(&AgentToCore::Hello(hello.clone()), token, ""),
                ),
                FromAgent::Msg(msg) => agent_to_core_from_wire(agent_to_core_to_wire(msg, "", "")),
                FromAgent::MarketData => Ok(FromAgent::MarketData),
            };
            assert_eq!(format!("{again:?}"), format!("{:?}", Ok::<_, WireError>(m)));
        }
    }
    if let Ok(w) = pb::CoreToAgent::decode(data) {
        if let Ok(Some(m)) = core_to_agent_from_wire(w) {
            // A CoreHello's core block travels in the heartbeat that follows it; compare the rest.
            if !matches!(m, CoreToAgent::Hello(_)) {
                let wire = core_to_agent_to_wire(&m, "core", 0);
                let again: Vec<_> = wire.into_iter().map(core_to_agent_from_wire).collect();
                assert_eq!(
                    format!("{:?}", again[0]),
                    format!("{:?}", Ok::<_, WireError>(Some(m)))
                );
            }
        }
    }
}
