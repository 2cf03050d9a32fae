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
use super::reverse::mirror;
use super::sizing::{size, SizingFacts, SizingMode};
use super::stops::{slave_stops, StopsFacts};
use super::subscription::SizingKind;
use super::terms::exec_terms;
use super::volume::Volume;
use crate::config::Subscription;
use crate::ids::Symbol;
use crate::msg::{ExecTerms, IntentKind, Side, SlaveSizing, TradeIntent};

/// One slave's copy of an intent, as the core plans it.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedCopy {
    pub symbol: Symbol,
    pub side: Side,
    /// Lots: the sized open (the master's lots when the slave EA sizes it: see `terms`); for a
    /// partial close the master's closed lots, the numerator of the fraction the slave EA
    /// applies to its own position (`policy::partial`).
    pub volume: f64,
    pub stop_loss: f64,
    pub take_profit: f64,
    /// An open's terms for the slave EA; `None` for every other kind.
    pub terms: Option<ExecTerms>,
}

/// The slave's copy of `intent` under subscription `sub` (its `multiplier`, explicit
/// `symbol_map` and policy), or why there is none.
pub fn plan(sub: &Subscription, intent: &TradeIntent) -> Result<PlannedCopy, SkipReason> {
    let policy = &sub.policy;
    let limits = &policy.limits;
    let opens = intent.kind == IntentKind::Open;
    if opens {
        admit_trade(
            &policy.filters,
            &TradeFacts {
                symbol: &intent.symbol,
                side: intent.side,
                magic: intent.origin.magic,
                comment: &intent.origin.comment,
                order_type: intent.origin.order_type,
            },
        )?;
    }
    let terms = opens.then(|| exec_terms(policy, intent));
    let symbol = sub.map_symbol(&intent.symbol)?;
    let (side, sl, tp) = mirror(
        policy.reverse,
        intent.side,
        intent.stop_loss,
        intent.take_profit,
    );
    let volume = match intent.kind {
        // The slave EA sizes from its own account: it gets the master's lots.
        IntentKind::Open if terms.is_some_and(|t| t.sizing != SlaveSizing::Final) => intent.volume,
        IntentKind::Open => {
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
            let sized = if policy.sizing_kind == SizingKind::Multiplier {
                let mut sizing = policy.sizing.clone();
                sizing.mode = SizingMode::Multiplier(sub.multiplier);
                size(&sizing, &facts)?
            } else {
                size(&policy.sizing, &facts)?
            };
            sized.total().lots()
        }
        IntentKind::PartialClose => intent.volume,
        IntentKind::Modify | IntentKind::Close => intent.volume,
    };
    let (stop_loss, take_profit) = match intent.kind {
        IntentKind::Open | IntentKind::Modify => slave_stops(
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
        IntentKind::PartialClose | IntentKind::Close => (sl, tp),
    };
    Ok(PlannedCopy {
        symbol,
        side,
        volume,
        stop_loss,
        take_profit,
        terms,
    })
}
