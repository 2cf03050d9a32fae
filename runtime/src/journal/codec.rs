//! Text forms of the machine's enums as the journal stores them, and back.
//!
//! Owns the spelling of `kind`, `side`, `stage`, `status`, `reason` and `order_type` columns (the same in
//! SQLite and Postgres, and the same names the wire and the logs use). A row read back with a
//! spelling not listed here is corrupt: decoding fails with [`JournalError::Corrupt`]; nothing
//! is guessed.

use super::JournalError;
use echo_statemachine::core::DeliveryStatus;
use echo_statemachine::msg::{AckStage, ErrorCode, IntentKind, OrderType, Side};

pub(crate) fn kind_str(k: IntentKind) -> &'static str {
    k.name()
}

pub(crate) fn kind_from(s: &str) -> Result<IntentKind, JournalError> {
    IntentKind::from_name(s).ok_or_else(|| corrupt("kind", s))
}

/// The master's order type as the journal stores it (the pipe's spelling).
pub(crate) fn order_type_str(t: OrderType) -> &'static str {
    match t {
        OrderType::Market => "MARKET",
        OrderType::Limit => "LIMIT",
        OrderType::Stop => "STOP",
        OrderType::StopLimit => "STOP_LIMIT",
    }
}

pub(crate) fn order_type_from(s: &str) -> Result<OrderType, JournalError> {
    [
        OrderType::Market,
        OrderType::Limit,
        OrderType::Stop,
        OrderType::StopLimit,
    ]
    .into_iter()
    .find(|t| order_type_str(*t) == s)
    .ok_or_else(|| corrupt("order_type", s))
}

pub(crate) fn side_str(s: Side) -> &'static str {
    match s {
        Side::Buy => "BUY",
        Side::Sell => "SELL",
    }
}

pub(crate) fn side_from(s: &str) -> Result<Side, JournalError> {
    Ok(match s {
        "BUY" => Side::Buy,
        "SELL" => Side::Sell,
        other => return Err(corrupt("side", other)),
    })
}

pub(crate) fn stage_str(s: AckStage) -> &'static str {
    s.name()
}

/// Position of a stage in the only order a delivery moves through them.
pub(crate) fn stage_rank(s: AckStage) -> i32 {
    match s {
        AckStage::CoreAccepted => 0,
        AckStage::AgentBuffered => 1,
        AckStage::PipeDelivered => 2,
        AckStage::EaConfirmed => 3,
    }
}

pub(crate) fn stage_from(s: &str) -> Result<AckStage, JournalError> {
    [
        AckStage::CoreAccepted,
        AckStage::AgentBuffered,
        AckStage::PipeDelivered,
        AckStage::EaConfirmed,
    ]
    .into_iter()
    .find(|st| st.name() == s)
    .ok_or_else(|| corrupt("stage", s))
}

pub(crate) fn status_str(s: DeliveryStatus) -> &'static str {
    match s {
        DeliveryStatus::Inflight => "inflight",
        DeliveryStatus::Acked => "acked",
        DeliveryStatus::Failed => "failed",
    }
}

pub(crate) fn status_from(s: &str) -> Result<DeliveryStatus, JournalError> {
    Ok(match s {
        "inflight" => DeliveryStatus::Inflight,
        "acked" => DeliveryStatus::Acked,
        "failed" => DeliveryStatus::Failed,
        other => return Err(corrupt("status", other)),
    })
}

pub(crate) fn reason_str(r: ErrorCode) -> &'static str {
    r.name()
}

/// `kind IN (…)` of the kinds that start a trade (an OPEN, a placement), as SQL literals.
pub(crate) fn opening_kinds_sql() -> String {
    sql_list(
        IntentKind::ALL
            .iter()
            .filter(|k| k.starts_trade())
            .map(|k| kind_str(*k)),
    )
}

/// `reason IN (…)` of the copy policy's reasons (`policy::SkipReason`), as SQL literals.
pub(crate) fn policy_reasons_sql() -> String {
    sql_list(
        echo_statemachine::policy::SkipReason::ALL
            .iter()
            .map(|r| reason_str(r.error_code())),
    )
}

/// Fixed identifiers (never outside input) as a SQL list: `'A', 'B'`.
fn sql_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn reason_from(s: &str) -> Result<ErrorCode, JournalError> {
    ErrorCode::ALL
        .iter()
        .copied()
        .find(|c| c.name() == s)
        .ok_or_else(|| corrupt("reason", s))
}

pub(crate) fn opt_reason_from(s: Option<&str>) -> Result<Option<ErrorCode>, JournalError> {
    s.map(reason_from).transpose()
}

/// `u64` sequence numbers are stored as SQL `BIGINT`.
pub(crate) fn seq_to_sql(v: u64) -> Result<i64, JournalError> {
    i64::try_from(v).map_err(|_| JournalError::OutOfRange {
        field: "master_seq",
        value: v.to_string(),
    })
}

/// Attempt and worker counts go into `INTEGER` columns; they never come near `i32::MAX`, so
/// saturate rather than wrap.
pub(crate) fn count_to_sql(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

pub(crate) fn seq_from_sql(v: i64) -> Result<u64, JournalError> {
    u64::try_from(v).map_err(|_| corrupt("master_seq", &v.to_string()))
}

pub(crate) fn attempts_from_sql(v: i64) -> Result<u32, JournalError> {
    u32::try_from(v).map_err(|_| corrupt("attempts", &v.to_string()))
}

fn corrupt(column: &'static str, value: &str) -> JournalError {
    JournalError::Corrupt {
        column,
        value: value.chars().take(64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips() {
        for &c in ErrorCode::ALL {
            assert_eq!(reason_from(reason_str(c)).ok(), Some(c));
        }
        for &k in IntentKind::ALL {
            assert_eq!(kind_from(kind_str(k)).ok(), Some(k));
        }
        for s in [
            AckStage::CoreAccepted,
            AckStage::AgentBuffered,
            AckStage::PipeDelivered,
            AckStage::EaConfirmed,
        ] {
            assert_eq!(stage_from(stage_str(s)).ok(), Some(s));
        }
        for s in [
            DeliveryStatus::Inflight,
            DeliveryStatus::Acked,
            DeliveryStatus::Failed,
        ] {
            assert_eq!(status_from(status_str(s)).ok(), Some(s));
        }
        assert!(reason_from("nope").is_err());
        assert!(seq_from_sql(-1).is_err());
    }
}
