//! Pipe frames: the JSON object of one line, both directions, encoded and decoded.
//!
//! This module owns the mapping between the machines' messages ([`EaToAgent`], [`AgentToEa`])
//! and the wire objects of SPEC.md's "Pipe protocol": the `type` names, the field names, the
//! enum spellings, and the typed [`DecodeError`] of every way a line can be malformed.
//! Decoding is total: any byte string yields a frame or a `DecodeError`, never a panic. It must
//! never judge a message's content (a negative volume, an unknown command id, a master account
//! that differs from the pipe's): that is the machines' job, so a well-typed frame always
//! reaches them.

use std::fmt;

use echo_statemachine::config::AgentDeliveryConfig;
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{
    AckResult, AgentToEa, BrokerStatus, CloseFraction, Command, CommandBody, EaToAgent, ErrorCode,
    ExecTerms, ExecutionResult, IntentKind, Leg, MasterFacts, OrderType, PendingResolution,
    PendingType, PipeDeliveryAck, PipeStatus, Role, Side, SlaveSizing, TradeIntent, TradeIntentAck,
};
use serde_json::{Map, Value};

/// Longest line accepted, in bytes, without its `\n` (and optional `\r`).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The terminal's introduction, the first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub account: AccountId,
    pub role: Role,
    pub protocol_version: u32,
    /// Free text naming the EA build (logged only).
    pub software: Option<String>,
}

/// The codes of an `error` frame (SPEC.md "Pipe protocol", error frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PipeErrorCode {
    /// The line exceeded [`MAX_FRAME_LEN`] bytes; it was discarded up to its `\n`.
    TooLong,
    /// The line is not valid UTF-8.
    NotUtf8,
    /// The line is not valid JSON.
    BadJson,
    /// The line is JSON but not an object.
    NotAnObject,
    /// The object has no string `type` field.
    MissingType,
    /// `type` names no frame this side accepts.
    UnknownType,
    /// A required field is absent or `null`.
    MissingField,
    /// A field has the wrong JSON type, is out of range, or is not one of its enum spellings.
    BadField,
    /// A frame other than `hello` came before the `hello`.
    HelloRequired,
    /// The `hello` names another account or role than this pipe serves.
    BadHello,
    /// The `hello` asks for a protocol version this side does not speak.
    UnsupportedVersion,
    /// No `hello` came within the hello timeout.
    HelloTimeout,
    /// A newer connection for the same account said `hello`; this one is closed.
    Replaced,
    /// A code this implementation does not know (kept verbatim).
    Other(String),
}

impl PipeErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            PipeErrorCode::TooLong => "TOO_LONG",
            PipeErrorCode::NotUtf8 => "NOT_UTF8",
            PipeErrorCode::BadJson => "BAD_JSON",
            PipeErrorCode::NotAnObject => "NOT_AN_OBJECT",
            PipeErrorCode::MissingType => "MISSING_TYPE",
            PipeErrorCode::UnknownType => "UNKNOWN_TYPE",
            PipeErrorCode::MissingField => "MISSING_FIELD",
            PipeErrorCode::BadField => "BAD_FIELD",
            PipeErrorCode::HelloRequired => "HELLO_REQUIRED",
            PipeErrorCode::BadHello => "BAD_HELLO",
            PipeErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            PipeErrorCode::HelloTimeout => "HELLO_TIMEOUT",
            PipeErrorCode::Replaced => "REPLACED",
            PipeErrorCode::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> PipeErrorCode {
        match s {
            "TOO_LONG" => PipeErrorCode::TooLong,
            "NOT_UTF8" => PipeErrorCode::NotUtf8,
            "BAD_JSON" => PipeErrorCode::BadJson,
            "NOT_AN_OBJECT" => PipeErrorCode::NotAnObject,
            "MISSING_TYPE" => PipeErrorCode::MissingType,
            "UNKNOWN_TYPE" => PipeErrorCode::UnknownType,
            "MISSING_FIELD" => PipeErrorCode::MissingField,
            "BAD_FIELD" => PipeErrorCode::BadField,
            "HELLO_REQUIRED" => PipeErrorCode::HelloRequired,
            "BAD_HELLO" => PipeErrorCode::BadHello,
            "UNSUPPORTED_VERSION" => PipeErrorCode::UnsupportedVersion,
            "HELLO_TIMEOUT" => PipeErrorCode::HelloTimeout,
            "REPLACED" => PipeErrorCode::Replaced,
            other => PipeErrorCode::Other(other.to_string()),
        }
    }
}

impl fmt::Display for PipeErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `error` frame: the answer to a frame that could not be taken, in either direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: PipeErrorCode,
    pub message: String,
    /// The offending frame's `type`, when it could be read.
    pub ref_type: Option<String>,
    /// The offending frame's id (`intent_id`, `command_id` or `account`), when it could be read.
    pub ref_id: Option<String>,
}

/// A frame the terminal writes to the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum EaFrame {
    Hello(Hello),
    Msg(EaToAgent),
    Error(ErrorFrame),
}

/// A frame the agent writes to the terminal.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentFrame {
    Msg(AgentToEa),
    Error(ErrorFrame),
}

/// What exactly was wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeErrorKind {
    TooLong {
        len: usize,
        max: usize,
    },
    NotUtf8 {
        valid_up_to: usize,
    },
    BadJson {
        detail: String,
    },
    NotAnObject,
    MissingType,
    UnknownType {
        ty: String,
    },
    MissingField {
        field: &'static str,
    },
    BadField {
        field: &'static str,
        expected: &'static str,
    },
}

/// A line that is not a frame this side accepts, with what could be read of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    /// The line's `type`, if it had a string one.
    pub frame_type: Option<String>,
    /// The line's id field, if it had a string one (see [`ErrorFrame::ref_id`]).
    pub frame_id: Option<String>,
}

impl DecodeError {
    fn bare(kind: DecodeErrorKind) -> Self {
        DecodeError {
            kind,
            frame_type: None,
            frame_id: None,
        }
    }

    /// A line longer than `max` bytes (the reader discarded it).
    pub fn too_long(len: usize, max: usize) -> Self {
        DecodeError::bare(DecodeErrorKind::TooLong { len, max })
    }

    pub fn code(&self) -> PipeErrorCode {
        match self.kind {
            DecodeErrorKind::TooLong { .. } => PipeErrorCode::TooLong,
            DecodeErrorKind::NotUtf8 { .. } => PipeErrorCode::NotUtf8,
            DecodeErrorKind::BadJson { .. } => PipeErrorCode::BadJson,
            DecodeErrorKind::NotAnObject => PipeErrorCode::NotAnObject,
            DecodeErrorKind::MissingType => PipeErrorCode::MissingType,
            DecodeErrorKind::UnknownType { .. } => PipeErrorCode::UnknownType,
            DecodeErrorKind::MissingField { .. } => PipeErrorCode::MissingField,
            DecodeErrorKind::BadField { .. } => PipeErrorCode::BadField,
        }
    }

    /// Whether the peer should be answered: never for a broken `error` frame, so two
    /// confused peers cannot bounce errors at each other forever.
    pub fn deserves_reply(&self) -> bool {
        self.frame_type.as_deref() != Some("error")
    }

    /// The `error` frame that answers this line.
    pub fn to_error_frame(&self) -> ErrorFrame {
        ErrorFrame {
            code: self.code(),
            message: self.to_string(),
            ref_type: self.frame_type.clone(),
            ref_id: self.frame_id.clone(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DecodeErrorKind::TooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
            DecodeErrorKind::NotUtf8 { valid_up_to } => {
                write!(f, "frame is not UTF-8 (valid up to byte {valid_up_to})")
            }
            DecodeErrorKind::BadJson { detail } => write!(f, "frame is not JSON: {detail}"),
            DecodeErrorKind::NotAnObject => f.write_str("frame is not a JSON object"),
            DecodeErrorKind::MissingType => f.write_str("frame has no string field \"type\""),
            DecodeErrorKind::UnknownType { ty } => {
                write!(f, "frame type {ty:?} is not accepted on this side")
            }
            DecodeErrorKind::MissingField { field } => {
                write!(f, "required field {field:?} is missing or null")
            }
            DecodeErrorKind::BadField { field, expected } => {
                write!(f, "field {field:?} must be {expected}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------- enum spellings

/// Declares the two directions of one enum's wire spelling: `$to` and `$from`.
macro_rules! spelling {
    ($to:ident, $from:ident, $ty:ty { $($v:path => $s:literal),+ $(,)? }) => {
        fn $to(x: $ty) -> &'static str {
            match x {
                $($v => $s,)+
            }
        }

        fn $from(s: &str) -> Option<$ty> {
            match s {
                $($s => Some($v),)+
                _ => None,
            }
        }
    };
}

spelling!(role_str, parse_role, Role {
    Role::Master => "MASTER",
    Role::Slave => "SLAVE",
});
/// Intent kinds are spelled as the journal and the wire spell them (`IntentKind::name`).
fn kind_str(k: IntentKind) -> &'static str {
    k.name()
}

fn parse_kind(s: &str) -> Option<IntentKind> {
    IntentKind::from_name(s)
}
spelling!(side_str, parse_side, Side {
    Side::Buy => "BUY",
    Side::Sell => "SELL",
});
spelling!(ack_result_str, parse_ack_result, AckResult {
    AckResult::Pending => "PENDING",
    AckResult::Ok => "OK",
    AckResult::Failed => "FAILED",
});
spelling!(pipe_status_str, parse_pipe_status, PipeStatus {
    PipeStatus::Ok => "OK",
    PipeStatus::Retry => "RETRY",
    PipeStatus::Failed => "FAILED",
});
spelling!(broker_status_str, parse_broker_status, BrokerStatus {
    BrokerStatus::Filled => "FILLED",
    BrokerStatus::Rejected => "REJECTED",
    BrokerStatus::Cancelled => "CANCELLED",
});

/// The wire name of an error code (`ERROR_CODE_BROKER_BUSY`, …).
pub fn error_code_str(c: ErrorCode) -> &'static str {
    c.name()
}

/// Parses an `ERROR_CODE_*` wire name.
pub fn parse_error_code(s: &str) -> Option<ErrorCode> {
    ErrorCode::ALL.iter().copied().find(|c| c.name() == s)
}

// ---------------------------------------------------------------- encoding

/// Writes one JSON object with its fields in a fixed order (`type` first), as one line.
struct Line {
    out: String,
}

impl Line {
    fn new(ty: &str) -> Self {
        let mut l = Line {
            out: String::with_capacity(256),
        };
        l.out.push_str("{\"type\":");
        l.push_json_str(ty);
        l
    }

    fn push_json_str(&mut self, s: &str) {
        // Serialising a &str cannot fail; the fallback keeps the line valid JSON regardless.
        match serde_json::to_string(s) {
            Ok(q) => self.out.push_str(&q),
            Err(_) => self.out.push_str("\"\""),
        }
    }

    fn key(&mut self, k: &str) {
        self.out.push(',');
        self.push_json_str(k);
        self.out.push(':');
    }

    fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        self.push_json_str(v);
        self
    }

    fn opt_str(mut self, k: &str, v: Option<&str>) -> Self {
        self.key(k);
        match v {
            Some(v) => self.push_json_str(v),
            None => self.out.push_str("null"),
        }
        self
    }

    fn f64(mut self, k: &str, v: f64) -> Self {
        self.key(k);
        // Non-finite numbers have no JSON spelling: they go out as null, which every decoder
        // refuses (MISSING_FIELD), so they can never be mistaken for a price.
        match serde_json::Number::from_f64(v) {
            Some(n) => self.out.push_str(&n.to_string()),
            None => self.out.push_str("null"),
        }
        self
    }

    fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    /// A command's copy terms (EXECUTE, PLACE_PENDING, RESOLVE_PENDING).
    fn terms(self, t: &ExecTerms) -> Self {
        self.str("sizing", t.sizing.name())
            .f64("sizing_value", t.sizing_value)
            .f64("master_amount", t.master_amount)
            .f64("master_contract_size", t.master_contract_size)
            .bool("trade_min", t.trade_min)
            .bool("check_free_margin", t.check_free_margin)
            .int("max_deviation_points", t.max_deviation_points)
            .int("deviation_window_ms", t.deviation_window_ms)
            .int("max_open_positions", t.max_open_positions)
            .f64("max_total_lots", t.max_total_lots)
            .split_terms(t)
    }

    /// `split_max_lots` / `split_min_lots` only when the open may be split (absent = one
    /// order), so frames without a split read exactly as before and a legacy EA ignores them.
    fn split_terms(self, t: &ExecTerms) -> Self {
        if t.split_max_lots > 0.0 {
            self.f64("split_max_lots", t.split_max_lots)
                .f64("split_min_lots", t.split_min_lots)
        } else {
            self
        }
    }

    /// `legs` of a split position's result, `[[ticket, lots], …]`, only when it has legs.
    fn legs(mut self, legs: &[Leg]) -> Self {
        if legs.is_empty() {
            return self;
        }
        self.key("legs");
        self.out.push('[');
        for (i, l) in legs.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push('[');
            self.out.push_str(&l.ticket.to_string());
            self.out.push(',');
            match serde_json::Number::from_f64(l.volume) {
                Some(n) => self.out.push_str(&n.to_string()),
                None => self.out.push_str("null"),
            }
            self.out.push(']');
        }
        self.out.push(']');
        self
    }

    fn int(mut self, k: &str, v: impl fmt::Display) -> Self {
        self.key(k);
        self.out.push_str(&v.to_string());
        self
    }

    fn finish(mut self) -> String {
        self.out.push_str("}\n");
        self.out
    }
}

fn intent_line(i: &TradeIntent) -> String {
    let l = Line::new("intent")
        .str("intent_id", i.intent_id.as_str())
        .str("trade_id", i.trade_id.as_str())
        .str("master", i.master.as_str())
        .str("kind", kind_str(i.kind))
        .str("symbol", i.symbol.as_str())
        .str("side", side_str(i.side))
        .f64("volume", i.volume)
        .f64("price", i.price)
        .f64("stop_loss", i.stop_loss)
        .f64("take_profit", i.take_profit)
        .int("master_ticket", i.master_ticket)
        .int("master_seq", i.master_seq)
        .int("emitted_at_ms", i.emitted_at_ms)
        .int("magic", i.origin.magic)
        .str("comment", &i.origin.comment)
        .str("order_type", order_type_str(i.origin.order_type))
        .f64("master_balance", i.origin.balance)
        .f64("master_equity", i.origin.equity);
    // Optional on the wire: only a partial close carries it, so other frames stay as before.
    let l = if i.master_volume_before != 0.0 {
        l.f64("master_volume_before", i.master_volume_before)
    } else {
        l
    };
    l.finish()
}

fn order_type_str(t: OrderType) -> &'static str {
    match t {
        OrderType::Market => "MARKET",
        OrderType::Limit => "LIMIT",
        OrderType::Stop => "STOP",
        OrderType::StopLimit => "STOP_LIMIT",
    }
}

fn parse_order_type(s: &str) -> Option<OrderType> {
    OrderType::ALL
        .iter()
        .copied()
        .find(|t| order_type_str(*t) == s)
}

fn command_line(ty: &str, c: &Command) -> String {
    let l = Line::new(ty)
        .str("command_id", c.command_id.as_str())
        .str("intent_id", c.intent_id.as_str())
        .str("trade_id", c.trade_id.as_str())
        .str("slave", c.slave.as_str());
    match &c.body {
        CommandBody::Execute {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
            catch_up,
        } => {
            let l = l
                .str("action", "EXECUTE")
                .str("symbol", symbol.as_str())
                .str("side", side_str(*side))
                .f64("volume", *volume)
                .f64("price", *price)
                .f64("stop_loss", *stop_loss)
                .f64("take_profit", *take_profit)
                .terms(terms);
            // Written only when set: a live open's frame is the same as before the field.
            if *catch_up {
                l.bool("catch_up", true)
            } else {
                l
            }
        }
        CommandBody::Modify {
            slave_ticket,
            stop_loss,
            take_profit,
        } => l
            .str("action", "MODIFY")
            .int("slave_ticket", slave_ticket)
            .f64("stop_loss", *stop_loss)
            .f64("take_profit", *take_profit),
        CommandBody::Close {
            slave_ticket,
            volume,
        } => l
            .str("action", "CLOSE")
            .int("slave_ticket", slave_ticket)
            .f64("volume", *volume),
        CommandBody::ClosePart {
            slave_ticket,
            fraction,
        } => l
            .str("action", "CLOSE_PART")
            .int("slave_ticket", slave_ticket)
            .f64("master_closed", fraction.master_closed)
            .f64("master_volume_before", fraction.master_volume_before)
            .f64("slave_min", fraction.slave_min)
            .f64("slave_step", fraction.slave_step),
        CommandBody::PlacePending {
            symbol,
            side,
            order_type,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
        } => l
            .str("action", "PLACE_PENDING")
            .str("symbol", symbol.as_str())
            .str("side", side_str(*side))
            .str("order_type", order_type.name())
            .f64("volume", *volume)
            .f64("price", *price)
            .f64("stop_loss", *stop_loss)
            .f64("take_profit", *take_profit)
            .terms(terms),
        CommandBody::ModifyPending {
            slave_ticket,
            price,
            stop_loss,
            take_profit,
        } => l
            .str("action", "MODIFY_PENDING")
            .int("slave_ticket", slave_ticket)
            .f64("price", *price)
            .f64("stop_loss", *stop_loss)
            .f64("take_profit", *take_profit),
        CommandBody::ResolvePending {
            slave_ticket,
            resolution,
            symbol,
            side,
            price,
            stop_loss,
            take_profit,
            terms,
        } => l
            .str("action", "RESOLVE_PENDING")
            .int("slave_ticket", slave_ticket)
            .str("resolution", resolution.name())
            .str("symbol", symbol.as_str())
            .str("side", side_str(*side))
            .f64("price", *price)
            .f64("stop_loss", *stop_loss)
            .f64("take_profit", *take_profit)
            .terms(terms),
        // The slave EA's broker step is never a frame; were it handed here it goes as the
        // trigger it came from (the slave EA refuses it: no TRIGGER_PENDING action exists).
        CommandBody::TriggerPending {
            slave_ticket,
            symbol,
            side,
            stop_loss,
            take_profit,
            ..
        } => l
            .str("action", "TRIGGER_PENDING")
            .int("slave_ticket", slave_ticket)
            .str("symbol", symbol.as_str())
            .str("side", side_str(*side))
            .f64("stop_loss", *stop_loss)
            .f64("take_profit", *take_profit),
    }
    .finish()
}

fn error_line(e: &ErrorFrame) -> String {
    Line::new("error")
        .str("code", e.code.as_str())
        .str("message", &e.message)
        .opt_str("ref_type", e.ref_type.as_deref())
        .opt_str("ref_id", e.ref_id.as_deref())
        .finish()
}

/// One terminal → agent frame as a `\n`-terminated line.
pub fn encode_ea(frame: &EaFrame) -> String {
    match frame {
        EaFrame::Hello(h) => {
            let l = Line::new("hello")
                .str("account", h.account.as_str())
                .str("role", role_str(h.role))
                .int("protocol_version", h.protocol_version);
            match &h.software {
                Some(s) => l.str("software", s),
                None => l,
            }
            .finish()
        }
        EaFrame::Msg(EaToAgent::Intent(i)) => intent_line(i),
        EaFrame::Msg(EaToAgent::PipeAck(a)) => Line::new("pipe_ack")
            .str("command_id", a.command_id.as_str())
            .str("status", pipe_status_str(a.status))
            .opt_str("reason", a.reason.map(error_code_str))
            .finish(),
        EaFrame::Msg(EaToAgent::Execution(r)) => Line::new("execution")
            .str("command_id", r.command_id.as_str())
            .str("trade_id", r.trade_id.as_str())
            .str("slave", r.slave.as_str())
            .int("slave_ticket", r.slave_ticket)
            .f64("fill_price", r.fill_price)
            .f64("filled_volume", r.filled_volume)
            .str("status", broker_status_str(r.status))
            .opt_str("reason", r.reason.map(error_code_str))
            .legs(&r.legs)
            .finish(),
        EaFrame::Error(e) => error_line(e),
    }
}

/// One agent → terminal frame as a `\n`-terminated line.
pub fn encode_agent(frame: &AgentFrame) -> String {
    match frame {
        AgentFrame::Msg(AgentToEa::Handshake {
            account,
            protocol_version,
        }) => Line::new("handshake")
            .str("account", account.as_str())
            .int("protocol_version", protocol_version)
            .finish(),
        AgentFrame::Msg(AgentToEa::IntentAck(a)) => Line::new("intent_ack")
            .str("intent_id", a.intent_id.as_str())
            .str("trade_id", a.trade_id.as_str())
            .str("result", ack_result_str(a.result))
            .opt_str("error", a.error.map(error_code_str))
            .int("retry_after_ms", a.retry_after_ms)
            .finish(),
        AgentFrame::Msg(AgentToEa::Command(c)) => command_line("command", c),
        AgentFrame::Msg(AgentToEa::Cancel(c)) => command_line("cancel", c),
        AgentFrame::Msg(AgentToEa::DeliveryConfig(d)) => Line::new("delivery_config")
            .int("ack_timeout_ms", d.ack_timeout_ms)
            .int("retry_backoff_ms", d.retry_backoff_ms)
            .int("max_retries", d.max_retries)
            .int("heartbeat_interval_ms", d.heartbeat_interval_ms)
            .finish(),
        AgentFrame::Error(e) => error_line(e),
    }
}

// ---------------------------------------------------------------- decoding

/// The fields of one frame object, read with typed errors.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

type R<T> = Result<T, DecodeErrorKind>;

impl<'a> Fields<'a> {
    fn get(&self, field: &'static str) -> R<&'a Value> {
        match self.map.get(field) {
            None | Some(Value::Null) => Err(DecodeErrorKind::MissingField { field }),
            Some(v) => Ok(v),
        }
    }

    fn string(&self, field: &'static str) -> R<&'a str> {
        self.get(field)?.as_str().ok_or(DecodeErrorKind::BadField {
            field,
            expected: "a string",
        })
    }

    fn opt_string(&self, field: &'static str) -> R<Option<&'a str>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or(DecodeErrorKind::BadField {
                field,
                expected: "a string or null",
            }),
        }
    }

    fn f64(&self, field: &'static str) -> R<f64> {
        self.get(field)?.as_f64().ok_or(DecodeErrorKind::BadField {
            field,
            expected: "a number",
        })
    }

    fn opt_f64(&self, field: &'static str) -> R<Option<f64>> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(DecodeErrorKind::BadField {
                field,
                expected: "a number or null",
            }),
        }
    }

    fn u64(&self, field: &'static str) -> R<u64> {
        self.get(field)?.as_u64().ok_or(DecodeErrorKind::BadField {
            field,
            expected: "an integer in 0..=18446744073709551615",
        })
    }

    fn u32(&self, field: &'static str) -> R<u32> {
        self.get(field)?
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(DecodeErrorKind::BadField {
                field,
                expected: "an integer in 0..=4294967295",
            })
    }

    fn i64(&self, field: &'static str) -> R<i64> {
        self.get(field)?.as_i64().ok_or(DecodeErrorKind::BadField {
            field,
            expected: "an integer in -9223372036854775808..=9223372036854775807",
        })
    }

    fn spelled<T>(
        &self,
        field: &'static str,
        parse: fn(&str) -> Option<T>,
        expected: &'static str,
    ) -> R<T> {
        parse(self.string(field)?).ok_or(DecodeErrorKind::BadField { field, expected })
    }

    /// A field added after version 1 of a frame: absent (an older peer) reads as `default`.
    fn or<T>(
        &self,
        field: &'static str,
        default: T,
        read: fn(&Self, &'static str) -> R<T>,
    ) -> R<T> {
        match self.map.get(field) {
            None => Ok(default),
            Some(_) => read(self, field),
        }
    }

    fn boolean(&self, field: &'static str) -> R<bool> {
        self.get(field)?.as_bool().ok_or(DecodeErrorKind::BadField {
            field,
            expected: "true or false",
        })
    }

    fn opt_error_code(&self, field: &'static str) -> R<Option<ErrorCode>> {
        match self.opt_string(field)? {
            None => Ok(None),
            Some(s) => parse_error_code(s)
                .map(Some)
                .ok_or(DecodeErrorKind::BadField {
                    field,
                    expected: "an ERROR_CODE_* name or null",
                }),
        }
    }
}

const ROLES: &str = "\"MASTER\" or \"SLAVE\"";
const KINDS: &str = "\"OPEN\", \"MODIFY\", \"PARTIAL_CLOSE\", \"CLOSE\", \"PLACE_LIMIT\", \"PLACE_STOP\", \"PENDING_MODIFY\", \"PENDING_CANCEL\" or \"PENDING_TRIGGER\"";
const SIDES: &str = "\"BUY\" or \"SELL\"";
const ACK_RESULTS: &str = "\"PENDING\", \"OK\" or \"FAILED\"";
const PIPE_STATUSES: &str = "\"OK\", \"RETRY\" or \"FAILED\"";
const BROKER_STATUSES: &str = "\"FILLED\", \"REJECTED\" or \"CANCELLED\"";
const ACTIONS: &str = "\"EXECUTE\", \"MODIFY\", \"CLOSE\", \"CLOSE_PART\", \"PLACE_PENDING\", \"MODIFY_PENDING\" or \"RESOLVE_PENDING\"";
const PENDING_TYPES: &str = "\"LIMIT\" or \"STOP\"";
const RESOLUTIONS: &str = "\"CANCEL\" or \"TRIGGER\"";

fn decode_intent(f: &Fields) -> R<TradeIntent> {
    Ok(TradeIntent {
        intent_id: IntentId::new(f.string("intent_id")?),
        trade_id: TradeId::new(f.string("trade_id")?),
        master: AccountId::new(f.string("master")?),
        kind: f.spelled("kind", parse_kind, KINDS)?,
        symbol: Symbol::new(f.string("symbol")?),
        side: f.spelled("side", parse_side, SIDES)?,
        volume: f.f64("volume")?,
        price: f.f64("price")?,
        stop_loss: f.f64("stop_loss")?,
        take_profit: f.f64("take_profit")?,
        master_ticket: f.i64("master_ticket")?,
        master_seq: f.u64("master_seq")?,
        emitted_at_ms: f.i64("emitted_at_ms")?,
        origin: MasterFacts {
            magic: f.or("magic", 0, Fields::i64)?,
            comment: f.or("comment", "", Fields::string)?.to_string(),
            order_type: match f.map.get("order_type") {
                None => OrderType::Market,
                Some(_) => f.spelled("order_type", parse_order_type, ORDER_TYPES)?,
            },
            balance: f.or("master_balance", 0.0, Fields::f64)?,
            equity: f.or("master_equity", 0.0, Fields::f64)?,
        },
        // Absent from EAs older than partial closes by fraction: the core then refuses a
        // PARTIAL_CLOSE (INVALID_ARGUMENT) rather than guess the fraction.
        master_volume_before: f.opt_f64("master_volume_before")?.unwrap_or(0.0),
    })
}

const ORDER_TYPES: &str = "\"MARKET\", \"LIMIT\", \"STOP\" or \"STOP_LIMIT\"";
const SIZINGS: &str = "\"FINAL\", \"BALANCE_RATIO\", \"EQUITY_RATIO\" or \"RISK_PERCENT\"";

fn decode_terms(f: &Fields) -> R<ExecTerms> {
    Ok(ExecTerms {
        sizing: match f.map.get("sizing") {
            None => SlaveSizing::Final,
            Some(_) => f.spelled("sizing", SlaveSizing::from_name, SIZINGS)?,
        },
        sizing_value: f.or("sizing_value", 0.0, Fields::f64)?,
        master_amount: f.or("master_amount", 0.0, Fields::f64)?,
        master_contract_size: f.or("master_contract_size", 0.0, Fields::f64)?,
        trade_min: f.or("trade_min", false, Fields::boolean)?,
        check_free_margin: f.or("check_free_margin", false, Fields::boolean)?,
        max_deviation_points: f.or("max_deviation_points", 0, Fields::u32)?,
        deviation_window_ms: f.or("deviation_window_ms", 0, Fields::u32)?,
        max_open_positions: f.or("max_open_positions", 0, Fields::u32)?,
        max_total_lots: f.or("max_total_lots", 0.0, Fields::f64)?,
        split_max_lots: f.or("split_max_lots", 0.0, Fields::f64)?,
        split_min_lots: f.or("split_min_lots", 0.0, Fields::f64)?,
    })
}

fn decode_command(f: &Fields) -> R<Command> {
    let action = f.string("action")?;
    let body = match action {
        "EXECUTE" => CommandBody::Execute {
            terms: decode_terms(f)?,
            symbol: Symbol::new(f.string("symbol")?),
            side: f.spelled("side", parse_side, SIDES)?,
            volume: f.f64("volume")?,
            price: f.f64("price")?,
            stop_loss: f.f64("stop_loss")?,
            take_profit: f.f64("take_profit")?,
            catch_up: f.or("catch_up", false, Fields::boolean)?,
        },
        "MODIFY" => CommandBody::Modify {
            slave_ticket: f.i64("slave_ticket")?,
            stop_loss: f.f64("stop_loss")?,
            take_profit: f.f64("take_profit")?,
        },
        "CLOSE" => CommandBody::Close {
            slave_ticket: f.i64("slave_ticket")?,
            volume: f.f64("volume")?,
        },
        "CLOSE_PART" => CommandBody::ClosePart {
            slave_ticket: f.i64("slave_ticket")?,
            fraction: CloseFraction {
                master_closed: f.f64("master_closed")?,
                master_volume_before: f.f64("master_volume_before")?,
                slave_min: f.f64("slave_min")?,
                slave_step: f.f64("slave_step")?,
            },
        },
        "PLACE_PENDING" => CommandBody::PlacePending {
            terms: decode_terms(f)?,
            symbol: Symbol::new(f.string("symbol")?),
            side: f.spelled("side", parse_side, SIDES)?,
            order_type: f.spelled("order_type", PendingType::from_name, PENDING_TYPES)?,
            volume: f.f64("volume")?,
            price: f.f64("price")?,
            stop_loss: f.f64("stop_loss")?,
            take_profit: f.f64("take_profit")?,
        },
        "MODIFY_PENDING" => CommandBody::ModifyPending {
            slave_ticket: f.i64("slave_ticket")?,
            price: f.f64("price")?,
            stop_loss: f.f64("stop_loss")?,
            take_profit: f.f64("take_profit")?,
        },
        "RESOLVE_PENDING" => CommandBody::ResolvePending {
            terms: decode_terms(f)?,
            slave_ticket: f.i64("slave_ticket")?,
            resolution: f.spelled("resolution", PendingResolution::from_name, RESOLUTIONS)?,
            symbol: Symbol::new(f.string("symbol")?),
            side: f.spelled("side", parse_side, SIDES)?,
            price: f.f64("price")?,
            stop_loss: f.f64("stop_loss")?,
            take_profit: f.f64("take_profit")?,
        },
        _ => {
            return Err(DecodeErrorKind::BadField {
                field: "action",
                expected: ACTIONS,
            })
        }
    };
    Ok(Command {
        command_id: CommandId::new(f.string("command_id")?),
        intent_id: IntentId::new(f.string("intent_id")?),
        trade_id: TradeId::new(f.string("trade_id")?),
        slave: AccountId::new(f.string("slave")?),
        body,
    })
}

fn decode_error_frame(f: &Fields) -> R<ErrorFrame> {
    Ok(ErrorFrame {
        code: PipeErrorCode::parse(f.string("code")?),
        message: f.opt_string("message")?.unwrap_or_default().to_string(),
        ref_type: f.opt_string("ref_type")?.map(str::to_string),
        ref_id: f.opt_string("ref_id")?.map(str::to_string),
    })
}

/// Parses the line into an object and hands its fields to `by_type`, wrapping any error with
/// the frame's type and id.
fn decode_with<T>(
    line: &[u8],
    by_type: impl FnOnce(&str, &Fields) -> Option<R<T>>,
) -> Result<T, DecodeError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        DecodeError::bare(DecodeErrorKind::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        DecodeError::bare(DecodeErrorKind::BadJson {
            detail: e.to_string(),
        })
    })?;
    let Value::Object(map) = &value else {
        return Err(DecodeError::bare(DecodeErrorKind::NotAnObject));
    };
    let frame_id = ["command_id", "intent_id", "account"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str))
        .map(str::to_string);
    let Some(ty) = map.get("type").and_then(Value::as_str) else {
        return Err(DecodeError {
            kind: DecodeErrorKind::MissingType,
            frame_type: None,
            frame_id,
        });
    };
    let fields = Fields { map };
    let wrap = |kind| DecodeError {
        kind,
        frame_type: Some(ty.to_string()),
        frame_id: frame_id.clone(),
    };
    match by_type(ty, &fields) {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(kind)) => Err(wrap(kind)),
        None => Err(wrap(DecodeErrorKind::UnknownType { ty: ty.to_string() })),
    }
}

fn decode_hello(f: &Fields) -> R<Hello> {
    Ok(Hello {
        account: AccountId::new(f.string("account")?),
        role: f.spelled("role", parse_role, ROLES)?,
        protocol_version: f.u32("protocol_version")?,
        software: f.opt_string("software")?.map(str::to_string),
    })
}

fn decode_pipe_ack(f: &Fields) -> R<PipeDeliveryAck> {
    Ok(PipeDeliveryAck {
        command_id: CommandId::new(f.string("command_id")?),
        status: f.spelled("status", parse_pipe_status, PIPE_STATUSES)?,
        reason: f.opt_error_code("reason")?,
    })
}

fn decode_execution(f: &Fields) -> R<ExecutionResult> {
    Ok(ExecutionResult {
        reason: f.opt_error_code("reason")?,
        command_id: CommandId::new(f.string("command_id")?),
        trade_id: TradeId::new(f.string("trade_id")?),
        slave: AccountId::new(f.string("slave")?),
        slave_ticket: f.i64("slave_ticket")?,
        fill_price: f.f64("fill_price")?,
        filled_volume: f.f64("filled_volume")?,
        status: f.spelled("status", parse_broker_status, BROKER_STATUSES)?,
        legs: decode_legs(f)?,
    })
}

/// `legs`: absent or null = none; else `[[ticket, lots], …]` with an integer ticket and a
/// finite number of lots.
fn decode_legs(f: &Fields) -> R<Vec<Leg>> {
    let bad = DecodeErrorKind::BadField {
        field: "legs",
        expected: "an array of [ticket, lots] pairs",
    };
    let items = match f.map.get("legs") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad),
    };
    items
        .iter()
        .map(|p| {
            match (
                p.get(0).and_then(Value::as_i64),
                p.get(1).and_then(Value::as_f64),
                p.as_array().map(Vec::len),
            ) {
                (Some(ticket), Some(volume), Some(2)) if volume.is_finite() => {
                    Ok(Leg { ticket, volume })
                }
                _ => Err(bad.clone()),
            }
        })
        .collect()
}

fn decode_handshake(f: &Fields) -> R<AgentToEa> {
    Ok(AgentToEa::Handshake {
        account: AccountId::new(f.string("account")?),
        protocol_version: f.u32("protocol_version")?,
    })
}

fn decode_intent_ack(f: &Fields) -> R<TradeIntentAck> {
    Ok(TradeIntentAck {
        intent_id: IntentId::new(f.string("intent_id")?),
        trade_id: TradeId::new(f.string("trade_id")?),
        result: f.spelled("result", parse_ack_result, ACK_RESULTS)?,
        error: f.opt_error_code("error")?,
        retry_after_ms: f.u32("retry_after_ms")?,
    })
}

fn decode_delivery_config(f: &Fields) -> R<AgentDeliveryConfig> {
    Ok(AgentDeliveryConfig {
        ack_timeout_ms: f.u32("ack_timeout_ms")?,
        retry_backoff_ms: f.u32("retry_backoff_ms")?,
        max_retries: f.u32("max_retries")?,
        heartbeat_interval_ms: f.u32("heartbeat_interval_ms")?,
    })
}

/// Decodes one line (without its `\n`) written by a terminal.
pub fn decode_ea(line: &[u8]) -> Result<EaFrame, DecodeError> {
    decode_with(line, |ty, f| {
        Some(match ty {
            "hello" => decode_hello(f).map(EaFrame::Hello),
            "intent" => decode_intent(f).map(|i| EaFrame::Msg(EaToAgent::Intent(i))),
            "pipe_ack" => decode_pipe_ack(f).map(|a| EaFrame::Msg(EaToAgent::PipeAck(a))),
            "execution" => decode_execution(f).map(|r| EaFrame::Msg(EaToAgent::Execution(r))),
            "error" => decode_error_frame(f).map(EaFrame::Error),
            _ => return None,
        })
    })
}

/// Decodes one line (without its `\n`) written by an agent.
pub fn decode_agent(line: &[u8]) -> Result<AgentFrame, DecodeError> {
    decode_with(line, |ty, f| {
        Some(match ty {
            "handshake" => decode_handshake(f).map(AgentFrame::Msg),
            "intent_ack" => decode_intent_ack(f).map(|a| AgentFrame::Msg(AgentToEa::IntentAck(a))),
            "command" => decode_command(f).map(|c| AgentFrame::Msg(AgentToEa::Command(c))),
            "cancel" => decode_command(f).map(|c| AgentFrame::Msg(AgentToEa::Cancel(c))),
            "delivery_config" => {
                decode_delivery_config(f).map(|d| AgentFrame::Msg(AgentToEa::DeliveryConfig(d)))
            }
            "error" => decode_error_frame(f).map(AgentFrame::Error),
            _ => return None,
        })
    })
}

/// The `intent` frame's fields as a JSON object (also the terminal's file rows).
pub fn intent_value(i: &TradeIntent) -> Value {
    serde_json::json!({
        "intent_id": i.intent_id.as_str(),
        "trade_id": i.trade_id.as_str(),
        "master": i.master.as_str(),
        "kind": kind_str(i.kind),
        "symbol": i.symbol.as_str(),
        "side": side_str(i.side),
        "volume": i.volume,
        "price": i.price,
        "stop_loss": i.stop_loss,
        "take_profit": i.take_profit,
        "master_ticket": i.master_ticket,
        "master_seq": i.master_seq,
        "emitted_at_ms": i.emitted_at_ms,
        "magic": i.origin.magic,
        "comment": i.origin.comment,
        "order_type": order_type_str(i.origin.order_type),
        "master_balance": i.origin.balance,
        "master_equity": i.origin.equity,
        "master_volume_before": i.master_volume_before,
    })
}

/// The `command` frame's fields as a JSON object (also the terminal's file rows).
pub fn command_value(c: &Command) -> Value {
    let mut v = serde_json::json!({
        "command_id": c.command_id.as_str(),
        "intent_id": c.intent_id.as_str(),
        "trade_id": c.trade_id.as_str(),
        "slave": c.slave.as_str(),
    });
    let body = match &c.body {
        CommandBody::Execute {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
            catch_up,
        } => {
            let mut v = serde_json::json!({
                "action": "EXECUTE",
                "symbol": symbol.as_str(),
                "side": side_str(*side),
                "volume": volume,
                "price": price,
                "stop_loss": stop_loss,
                "take_profit": take_profit,
            })
            .with_terms(terms);
            if *catch_up {
                v["catch_up"] = serde_json::Value::Bool(true);
            }
            v
        }
        CommandBody::Modify {
            slave_ticket,
            stop_loss,
            take_profit,
        } => serde_json::json!({
            "action": "MODIFY",
            "slave_ticket": slave_ticket,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
        }),
        CommandBody::Close {
            slave_ticket,
            volume,
        } => serde_json::json!({
            "action": "CLOSE",
            "slave_ticket": slave_ticket,
            "volume": volume,
        }),
        CommandBody::ClosePart {
            slave_ticket,
            fraction,
        } => serde_json::json!({
            "action": "CLOSE_PART",
            "slave_ticket": slave_ticket,
            "master_closed": fraction.master_closed,
            "master_volume_before": fraction.master_volume_before,
            "slave_min": fraction.slave_min,
            "slave_step": fraction.slave_step,
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
        } => serde_json::json!({
            "action": "PLACE_PENDING",
            "symbol": symbol.as_str(),
            "side": side_str(*side),
            "order_type": order_type.name(),
            "volume": volume,
            "price": price,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
        })
        .with_terms(terms),
        CommandBody::ModifyPending {
            slave_ticket,
            price,
            stop_loss,
            take_profit,
        } => serde_json::json!({
            "action": "MODIFY_PENDING",
            "slave_ticket": slave_ticket,
            "price": price,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
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
        } => serde_json::json!({
            "action": "RESOLVE_PENDING",
            "slave_ticket": slave_ticket,
            "resolution": resolution.name(),
            "symbol": symbol.as_str(),
            "side": side_str(*side),
            "price": price,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
        })
        .with_terms(terms),
        CommandBody::TriggerPending {
            slave_ticket,
            symbol,
            side,
            stop_loss,
            take_profit,
            market,
        } => serde_json::json!({
            "action": "TRIGGER_PENDING",
            "slave_ticket": slave_ticket,
            "symbol": symbol.as_str(),
            "side": side_str(*side),
            "stop_loss": stop_loss,
            "take_profit": take_profit,
            "market": market,
        }),
    };
    if let (Value::Object(m), Value::Object(b)) = (&mut v, body) {
        m.extend(b);
    }
    v
}

/// The `execution` frame's fields as a JSON object (also the terminal's file rows).
pub fn execution_value(r: &ExecutionResult) -> Value {
    serde_json::json!({
        "command_id": r.command_id.as_str(),
        "trade_id": r.trade_id.as_str(),
        "slave": r.slave.as_str(),
        "slave_ticket": r.slave_ticket,
        "fill_price": r.fill_price,
        "filled_volume": r.filled_volume,
        "status": broker_status_str(r.status),
        // A refusal by the copy terms keeps its reason across a restart of the terminal.
        "reason": r.reason.map(error_code_str),
    })
    .with_legs(&r.legs)
}

/// A split position's legs as a result's field (absent when it has none).
trait WithLegs {
    fn with_legs(self, legs: &[Leg]) -> Self;
}

impl WithLegs for Value {
    fn with_legs(mut self, legs: &[Leg]) -> Value {
        if let (Value::Object(m), false) = (&mut self, legs.is_empty()) {
            let legs: Vec<Value> = legs
                .iter()
                .map(|l| serde_json::json!([l.ticket, l.volume]))
                .collect();
            m.insert("legs".into(), Value::Array(legs));
        }
        self
    }
}

/// The wire spelling of an intent kind (`OPEN`, `MODIFY`, `PARTIAL_CLOSE`, `CLOSE`).
pub fn intent_kind_str(k: IntentKind) -> &'static str {
    kind_str(k)
}

/// The wire spelling of a command's action (`EXECUTE`, `MODIFY`, `CLOSE`, `CLOSE_PART`,
/// `PLACE_PENDING`, `MODIFY_PENDING`, `RESOLVE_PENDING`; `TRIGGER_PENDING` is the slave EA's
/// broker step, never a frame).
pub fn action_str(b: &CommandBody) -> &'static str {
    match b {
        CommandBody::Execute { .. } => "EXECUTE",
        CommandBody::Modify { .. } => "MODIFY",
        CommandBody::Close { .. } => "CLOSE",
        CommandBody::ClosePart { .. } => "CLOSE_PART",
        CommandBody::PlacePending { .. } => "PLACE_PENDING",
        CommandBody::ModifyPending { .. } => "MODIFY_PENDING",
        CommandBody::ResolvePending { .. } => "RESOLVE_PENDING",
        CommandBody::TriggerPending { .. } => "TRIGGER_PENDING",
    }
}

/// A command's copy terms as frame fields (EXECUTE, PLACE_PENDING, RESOLVE_PENDING).
trait WithTerms {
    fn with_terms(self, t: &ExecTerms) -> Self;
}

impl WithTerms for Value {
    fn with_terms(mut self, t: &ExecTerms) -> Value {
        if let Value::Object(m) = &mut self {
            let terms = serde_json::json!({
                "sizing": t.sizing.name(),
                "sizing_value": t.sizing_value,
                "master_amount": t.master_amount,
                "master_contract_size": t.master_contract_size,
                "trade_min": t.trade_min,
                "check_free_margin": t.check_free_margin,
                "max_deviation_points": t.max_deviation_points,
                "deviation_window_ms": t.deviation_window_ms,
                "max_open_positions": t.max_open_positions,
                "max_total_lots": t.max_total_lots,
            });
            if let Value::Object(t) = terms {
                m.extend(t);
            }
            if t.split_max_lots > 0.0 {
                m.insert("split_max_lots".into(), t.split_max_lots.into());
                m.insert("split_min_lots".into(), t.split_min_lots.into());
            }
        }
        self
    }
}

/// Decodes a `TradeIntent` from any JSON object carrying the `intent` frame's fields.
pub fn intent_from_value(v: &Value) -> Result<TradeIntent, DecodeErrorKind> {
    let Value::Object(map) = v else {
        return Err(DecodeErrorKind::NotAnObject);
    };
    decode_intent(&Fields { map })
}

/// Decodes a `Command` from any JSON object carrying the `command` frame's fields.
pub fn command_from_value(v: &Value) -> Result<Command, DecodeErrorKind> {
    let Value::Object(map) = v else {
        return Err(DecodeErrorKind::NotAnObject);
    };
    decode_command(&Fields { map })
}

/// Decodes an `ExecutionResult` from any JSON object carrying the `execution` frame's fields.
pub fn execution_from_value(v: &Value) -> Result<ExecutionResult, DecodeErrorKind> {
    let Value::Object(map) = v else {
        return Err(DecodeErrorKind::NotAnObject);
    };
    decode_execution(&Fields { map })
}
