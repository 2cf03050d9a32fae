//! The ledger's value format: versioned JSON of one [`LedgerRecord`].
//!
//! Owns the on-disk shape (field names, enum spellings, the `v` version). It must never guess:
//! a value it cannot read back exactly is reported corrupt.

use echo_statemachine::agent::{LedgerRecord, LedgerState};
use echo_statemachine::ids::{AccountId, CommandId, IntentId, Symbol, TradeId};
use echo_statemachine::msg::{
    Command, CommandBody, ExecTerms, PendingResolution, PendingType, SlaveSizing,
};
use serde::{Deserialize, Serialize};

use crate::journal::codec as names;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct RecordV1 {
    v: u32,
    seq: u64,
    command_id: String,
    intent_id: String,
    trade_id: String,
    slave: String,
    body: BodyV1,
    state: StateV1,
    attempts: u32,
}

/// Floats are stored as their IEEE-754 bit patterns: decimal JSON numbers do not always read
/// back to the same `f64` (e.g. `0.1 * 14.0`), and the ledger must return exactly what it took.
mod bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum BodyV1 {
    Execute {
        symbol: String,
        side: String,
        #[serde(with = "bits")]
        volume: f64,
        #[serde(with = "bits")]
        price: f64,
        #[serde(with = "bits")]
        stop_loss: f64,
        #[serde(with = "bits")]
        take_profit: f64,
        /// Added after v1 records were written: absent reads as "no terms".
        #[serde(default)]
        terms: Option<TermsV1>,
        /// Added later still: absent (and written only when true) = a live open.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        catch_up: bool,
    },
    Modify {
        slave_ticket: i64,
        #[serde(with = "bits")]
        stop_loss: f64,
        #[serde(with = "bits")]
        take_profit: f64,
    },
    Close {
        slave_ticket: i64,
        #[serde(with = "bits")]
        volume: f64,
    },
    /// A partial close by fraction (added within v1: older records never hold one).
    ClosePart {
        slave_ticket: i64,
        #[serde(with = "bits")]
        master_closed: f64,
        #[serde(with = "bits")]
        master_volume_before: f64,
        #[serde(with = "bits")]
        slave_min: f64,
        #[serde(with = "bits")]
        slave_step: f64,
    },
    /// Pending orders (added within v1: older records never hold one).
    PlacePending {
        symbol: String,
        side: String,
        order_type: String,
        #[serde(with = "bits")]
        volume: f64,
        #[serde(with = "bits")]
        price: f64,
        #[serde(with = "bits")]
        stop_loss: f64,
        #[serde(with = "bits")]
        take_profit: f64,
        #[serde(default)]
        terms: Option<TermsV1>,
    },
    ModifyPending {
        slave_ticket: i64,
        #[serde(with = "bits")]
        price: f64,
        #[serde(with = "bits")]
        stop_loss: f64,
        #[serde(with = "bits")]
        take_profit: f64,
    },
    ResolvePending {
        slave_ticket: i64,
        resolution: String,
        symbol: String,
        side: String,
        #[serde(with = "bits")]
        price: f64,
        #[serde(with = "bits")]
        stop_loss: f64,
        #[serde(with = "bits")]
        take_profit: f64,
        #[serde(default)]
        terms: Option<TermsV1>,
    },
}

/// `ExecTerms`, floats as bit patterns like every other float here.
#[derive(Serialize, Deserialize)]
struct TermsV1 {
    sizing: String,
    #[serde(with = "bits")]
    sizing_value: f64,
    #[serde(with = "bits")]
    master_amount: f64,
    #[serde(with = "bits")]
    master_contract_size: f64,
    trade_min: bool,
    check_free_margin: bool,
    max_deviation_points: u32,
    deviation_window_ms: u32,
    max_open_positions: u32,
    #[serde(with = "bits")]
    max_total_lots: f64,
    /// Added with split positions: absent reads as 0 (one order).
    #[serde(default, with = "bits")]
    split_max_lots: f64,
    #[serde(default, with = "bits")]
    split_min_lots: f64,
}

impl TermsV1 {
    fn from_terms(t: &ExecTerms) -> Option<TermsV1> {
        (*t != ExecTerms::default()).then(|| TermsV1 {
            sizing: t.sizing.name().to_string(),
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
        })
    }

    fn into_terms(self) -> Result<ExecTerms, String> {
        Ok(ExecTerms {
            sizing: SlaveSizing::from_name(&self.sizing)
                .ok_or_else(|| format!("unknown sizing {:?}", self.sizing))?,
            sizing_value: self.sizing_value,
            master_amount: self.master_amount,
            master_contract_size: self.master_contract_size,
            trade_min: self.trade_min,
            check_free_margin: self.check_free_margin,
            max_deviation_points: self.max_deviation_points,
            deviation_window_ms: self.deviation_window_ms,
            max_open_positions: self.max_open_positions,
            max_total_lots: self.max_total_lots,
            split_max_lots: self.split_max_lots,
            split_min_lots: self.split_min_lots,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "state")]
enum StateV1 {
    Buffered,
    Delivered,
    Completed,
    Rejected { reason: String },
}

/// The record as stored, or why it cannot be stored.
pub(super) fn encode(r: &LedgerRecord) -> Result<Vec<u8>, String> {
    let c = &r.command;
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
        } => BodyV1::Execute {
            symbol: symbol.as_str().to_string(),
            side: names::side_str(*side).to_string(),
            volume: *volume,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: TermsV1::from_terms(terms),
            catch_up: *catch_up,
        },
        CommandBody::Modify {
            slave_ticket,
            stop_loss,
            take_profit,
        } => BodyV1::Modify {
            slave_ticket: *slave_ticket,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
        },
        CommandBody::Close {
            slave_ticket,
            volume,
        } => BodyV1::Close {
            slave_ticket: *slave_ticket,
            volume: *volume,
        },
        CommandBody::ClosePart {
            slave_ticket,
            fraction,
        } => BodyV1::ClosePart {
            slave_ticket: *slave_ticket,
            master_closed: fraction.master_closed,
            master_volume_before: fraction.master_volume_before,
            slave_min: fraction.slave_min,
            slave_step: fraction.slave_step,
        },
        CommandBody::PlacePending {
            symbol,
            side,
            order_type,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
        } => BodyV1::PlacePending {
            symbol: symbol.as_str().to_string(),
            side: names::side_str(*side).to_string(),
            order_type: order_type.name().to_string(),
            volume: *volume,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: TermsV1::from_terms(terms),
        },
        CommandBody::ModifyPending {
            slave_ticket,
            price,
            stop_loss,
            take_profit,
        } => BodyV1::ModifyPending {
            slave_ticket: *slave_ticket,
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
        },
        CommandBody::ResolvePending {
            slave_ticket,
            resolution,
            symbol,
            side,
            price,
            stop_loss,
            take_profit,
            terms,
        } => BodyV1::ResolvePending {
            slave_ticket: *slave_ticket,
            resolution: resolution.name().to_string(),
            symbol: symbol.as_str().to_string(),
            side: names::side_str(*side).to_string(),
            price: *price,
            stop_loss: *stop_loss,
            take_profit: *take_profit,
            terms: TermsV1::from_terms(terms),
        },
        CommandBody::TriggerPending { .. } => {
            return Err("a broker step (TriggerPending) is not a command".into())
        }
    };
    let state = match r.state {
        LedgerState::Buffered => StateV1::Buffered,
        LedgerState::Delivered => StateV1::Delivered,
        LedgerState::Completed => StateV1::Completed,
        LedgerState::Rejected { reason } => StateV1::Rejected {
            reason: names::reason_str(reason).to_string(),
        },
    };
    let v = RecordV1 {
        v: VERSION,
        seq: r.seq,
        command_id: c.command_id.as_str().to_string(),
        intent_id: c.intent_id.as_str().to_string(),
        trade_id: c.trade_id.as_str().to_string(),
        slave: c.slave.as_str().to_string(),
        body,
        state,
        attempts: r.attempts,
    };
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

pub(super) fn decode(bytes: &[u8]) -> Result<LedgerRecord, String> {
    let v: RecordV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.v != VERSION {
        return Err(format!(
            "record version {} (this build reads {VERSION})",
            v.v
        ));
    }
    let body = match v.body {
        BodyV1::Execute {
            symbol,
            side,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
            catch_up,
        } => CommandBody::Execute {
            terms: terms
                .map(TermsV1::into_terms)
                .transpose()?
                .unwrap_or_default(),
            symbol: Symbol::new(symbol),
            side: names::side_from(&side).map_err(|e| e.to_string())?,
            volume,
            price,
            stop_loss,
            take_profit,
            catch_up,
        },
        BodyV1::Modify {
            slave_ticket,
            stop_loss,
            take_profit,
        } => CommandBody::Modify {
            slave_ticket,
            stop_loss,
            take_profit,
        },
        BodyV1::Close {
            slave_ticket,
            volume,
        } => CommandBody::Close {
            slave_ticket,
            volume,
        },
        BodyV1::ClosePart {
            slave_ticket,
            master_closed,
            master_volume_before,
            slave_min,
            slave_step,
        } => CommandBody::ClosePart {
            slave_ticket,
            fraction: echo_statemachine::msg::CloseFraction {
                master_closed,
                master_volume_before,
                slave_min,
                slave_step,
            },
        },
        BodyV1::PlacePending {
            symbol,
            side,
            order_type,
            volume,
            price,
            stop_loss,
            take_profit,
            terms,
        } => CommandBody::PlacePending {
            symbol: Symbol::new(symbol),
            side: names::side_from(&side).map_err(|e| e.to_string())?,
            order_type: PendingType::from_name(&order_type)
                .ok_or_else(|| format!("unknown order type {order_type:?}"))?,
            volume,
            price,
            stop_loss,
            take_profit,
            terms: terms
                .map(TermsV1::into_terms)
                .transpose()?
                .unwrap_or_default(),
        },
        BodyV1::ModifyPending {
            slave_ticket,
            price,
            stop_loss,
            take_profit,
        } => CommandBody::ModifyPending {
            slave_ticket,
            price,
            stop_loss,
            take_profit,
        },
        BodyV1::ResolvePending {
            slave_ticket,
            resolution,
            symbol,
            side,
            price,
            stop_loss,
            take_profit,
            terms,
        } => CommandBody::ResolvePending {
            slave_ticket,
            resolution: PendingResolution::from_name(&resolution)
                .ok_or_else(|| format!("unknown resolution {resolution:?}"))?,
            symbol: Symbol::new(symbol),
            side: names::side_from(&side).map_err(|e| e.to_string())?,
            price,
            stop_loss,
            take_profit,
            terms: terms
                .map(TermsV1::into_terms)
                .transpose()?
                .unwrap_or_default(),
        },
    };
    let state = match v.state {
        StateV1::Buffered => LedgerState::Buffered,
        StateV1::Delivered => LedgerState::Delivered,
        StateV1::Completed => LedgerState::Completed,
        StateV1::Rejected { reason } => LedgerState::Rejected {
            reason: names::reason_from(&reason).map_err(|e| e.to_string())?,
        },
    };
    Ok(LedgerRecord {
        seq: v.seq,
        command: Command {
            command_id: CommandId::new(v.command_id),
            intent_id: IntentId::new(v.intent_id),
            trade_id: TradeId::new(v.trade_id),
            slave: AccountId::new(v.slave),
            body,
        },
        state,
        attempts: v.attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use echo_statemachine::msg::{ErrorCode, Side};

    #[test]
    fn records_round_trip() {
        let bodies = [
            CommandBody::Execute {
                terms: Default::default(),
                symbol: Symbol::new("EURUSD.m"),
                side: Side::Sell,
                volume: 0.1 * 14.0,
                price: 1.1,
                stop_loss: 1.2,
                take_profit: 1.0,
                catch_up: false,
            },
            CommandBody::Execute {
                terms: Default::default(),
                symbol: Symbol::new("EURUSD.m"),
                side: Side::Buy,
                volume: 0.5,
                price: 1.1,
                stop_loss: 0.0,
                take_profit: 0.0,
                catch_up: true,
            },
            CommandBody::Modify {
                slave_ticket: 7,
                stop_loss: 1.0,
                take_profit: 2.0,
            },
            CommandBody::Close {
                slave_ticket: 9,
                volume: 0.0,
            },
            CommandBody::PlacePending {
                symbol: Symbol::new("EURUSD"),
                side: Side::Buy,
                order_type: echo_statemachine::msg::PendingType::Stop,
                volume: 0.3,
                price: 1.0987,
                stop_loss: 1.09,
                take_profit: 1.11,
                terms: echo_statemachine::msg::ExecTerms {
                    max_open_positions: 3,
                    ..Default::default()
                },
            },
            CommandBody::ModifyPending {
                slave_ticket: 11,
                price: 1.0991,
                stop_loss: 0.0,
                take_profit: 1.12,
            },
            CommandBody::ResolvePending {
                slave_ticket: 11,
                resolution: echo_statemachine::msg::PendingResolution::Trigger,
                symbol: Symbol::new("EURUSD"),
                side: Side::Sell,
                price: 1.0991,
                stop_loss: 1.2,
                take_profit: 1.0,
                terms: echo_statemachine::msg::ExecTerms {
                    max_deviation_points: 25,
                    ..Default::default()
                },
            },
        ];
        let states = [
            LedgerState::Buffered,
            LedgerState::Delivered,
            LedgerState::Completed,
            LedgerState::Rejected {
                reason: ErrorCode::EaRejected,
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            for state in states {
                let r = LedgerRecord {
                    seq: i as u64 + 1,
                    command: Command {
                        command_id: CommandId::new("i1@s1"),
                        intent_id: IntentId::new("i1"),
                        trade_id: TradeId::new("t1"),
                        slave: AccountId::new("s1"),
                        body: body.clone(),
                    },
                    state,
                    attempts: 3,
                };
                let bytes = encode(&r).expect("finite record encodes");
                assert_eq!(decode(&bytes).ok(), Some(r));
            }
        }
        assert!(decode(b"{}").is_err());
        assert!(decode(b"\xff").is_err());
    }
}
