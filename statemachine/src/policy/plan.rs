//! The core's share of the copy policy: what one subscription makes of one master intent,
//! from the intent (with the master's reported facts) and the subscription alone.
//!
//! This module owns the order in which the core applies the policy when it plans a delivery
//! (filters → symbol mapping → sizing → reversal → SL/TP), which decisions it may take
//! without the slave's account or market data, and the hand-over of the rest to the slave EA
//! as the open's [`ExecTerms`] (`policy::terms`). It must never decide anything that needs the
//! slave's balance, equity, free margin, price or own positions (balance/equity-ratio and risk
//! sizing, the free-margin check, exposure limits and the deviation guard belong to the slave
//! EA, which knows them live), and never refuse a modify, partial close or close for a policy
//! reason other than an unmapped symbol: a copied position is always followed to its end.

use super::filters::{admit_trade, TradeFacts};
use super::reason::SkipReason;
use super::reverse::{mirror, mirror_pending};
use super::sizing::{size, AboveMax, SizingFacts, SizingMode};
use super::stops::{slave_stops, StopsFacts};
use super::subscription::SizingKind;
use super::terms::{exec_terms, trigger_terms};
use super::volume::Volume;
use crate::config::Subscription;
use crate::ids::Symbol;
use crate::msg::{ExecTerms, IntentKind, Side, SlaveSizing, TradeIntent};

/// One slave's copy of an intent, as the core plans it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedCopy {
    /// The slave's kind: the master's, except a reversed pending placement (limit ↔ stop,
    /// `policy::reverse::mirror_pending`).
    pub kind: IntentKind,
    pub symbol: Symbol,
    pub side: Side,
    /// Lots: the sized open (the master's lots when the slave EA sizes it: see `terms`); for a
    /// partial close the master's closed lots, the numerator of the fraction the slave EA
    /// applies to its own position (`policy::partial`).
    pub volume: f64,
    pub stop_loss: f64,
    pub take_profit: f64,
    /// An open's or a pending placement's terms for the slave EA (a placement's without the
    /// deviation guard: it waits for its own price), a trigger's the guard of its market
    /// fallback; `None` for every other kind.
    pub terms: Option<ExecTerms>,
}

/// The slave's copy of `intent` under subscription `sub` (its `multiplier`, explicit
/// `symbol_map` and policy), or why there is none.
pub fn plan(sub: &Subscription, intent: &TradeIntent) -> Result<PlannedCopy, SkipReason> {
    let policy = &sub.policy;
    let limits = &policy.limits;
    let opens = intent.kind.starts_trade();
    if opens {
        admit_trade(
            &policy.filters,
            &TradeFacts {
                symbol: &intent.symbol,
                side: intent.side,
                magic: intent.origin.magic,
                comment: &intent.origin.comment,
                // A placement's own type, whatever the master reported beside it.
                order_type: intent
                    .kind
                    .placed_order_type()
                    .unwrap_or(intent.origin.order_type),
            },
        )?;
    }
    let terms = match intent.kind {
        IntentKind::Open => Some(exec_terms(policy, intent)),
        // A pending order waits for its own price: no deviation guard when it is placed. It
        // is one order at the slave's broker: above the maximum it is capped, never split.
        IntentKind::PlaceLimit | IntentKind::PlaceStop => Some(ExecTerms {
            max_deviation_points: 0,
            deviation_window_ms: 0,
            split_max_lots: 0.0,
            split_min_lots: 0.0,
            ..exec_terms(policy, intent)
        }),
        IntentKind::PendingTrigger => Some(trigger_terms(policy)),
        _ => None,
    };
    let symbol = sub.map_symbol(&intent.symbol)?;
    let (side, sl, tp) = mirror(
        policy.reverse,
        intent.side,
        intent.stop_loss,
        intent.take_profit,
    );
    let kind = mirror_pending(policy.reverse, intent.kind);
    let volume = match intent.kind {
        // The slave EA sizes from its own account: it gets the master's lots.
        k if k.starts_trade() && terms.is_some_and(|t| t.sizing != SlaveSizing::Final) => {
            intent.volume
        }
        // A placement is sized exactly as an open (entry: the pending's price).
        IntentKind::Open | IntentKind::PlaceLimit | IntentKind::PlaceStop => {
            let facts = SizingFacts {
                symbol: intent.symbol.clone(),
                master_volume: Volume::from_lots(intent.volume).unwrap_or_default(),
                master_contract_size: limits.contract_size,
                master_balance: 0.0,
                master_equity: 0.0,
                slave_balance: 0.0,
                slave_equity: 0.0,
                slave_free_margin: 0.0,
                margin_per_lot: 0.0,
                entry: intent.price,
                stop_loss: sl,
                limits: *limits,
            };
            let mut sizing = policy.sizing.clone();
            if policy.sizing_kind == SizingKind::Multiplier {
                sizing.mode = SizingMode::Multiplier(sub.multiplier);
            }
            // A pending order is one ticket: split applies to market opens only.
            if intent.kind != IntentKind::Open {
                sizing.above_max = AboveMax::Cap;
            }
            // Split: the total of the legs; the slave EA places them (`terms::open_legs`).
            let sized = size(&sizing, &facts)?;
            sized.total().lots()
        }
        IntentKind::PartialClose => intent.volume,
        // A trigger's market fallback opens what the slave's own pending order holds.
        IntentKind::Modify
        | IntentKind::Close
        | IntentKind::PendingModify
        | IntentKind::PendingCancel
        | IntentKind::PendingTrigger => intent.volume,
    };
    let (stop_loss, take_profit) = match intent.kind {
        IntentKind::Open
        | IntentKind::Modify
        | IntentKind::PlaceLimit
        | IntentKind::PlaceStop
        | IntentKind::PendingModify
        | IntentKind::PendingTrigger => slave_stops(
            policy.stops.0,
            &StopsFacts {
                master_side: intent.side,
                master_entry: intent.price,
                master_stop_loss: intent.stop_loss,
                master_take_profit: intent.take_profit,
                reverse: policy.reverse,
                // The slave's fill is not known when the core plans: distances are measured
                // from the master's price (SPEC.md §5.2).
                slave_fill: intent.price,
                point: limits.point,
            },
        ),
        IntentKind::PartialClose | IntentKind::Close | IntentKind::PendingCancel => (sl, tp),
    };
    Ok(PlannedCopy {
        kind,
        symbol,
        side,
        volume,
        stop_loss,
        take_profit,
        terms,
    })
}
