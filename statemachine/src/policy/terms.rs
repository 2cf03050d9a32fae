//! The slave EA's share of the copy policy: what it decides about an open with its own
//! account, positions and prices, and the terms the core hands it for that.
//!
//! This module owns (1) [`exec_terms`], the core building an open's [`ExecTerms`] from the
//! subscription and the master's reported facts when it plans the delivery, and (2)
//! [`decide_open`], the slave EA deciding — from those terms and the facts it alone knows
//! (balance, equity, free margin, its broker's symbol limits, its price, its open positions) —
//! whether to place the open, with which volume, or why not. Sizing that needs the slave's
//! account (balance / equity ratio, risk %), the free-margin check, the exposure limits and
//! the price-deviation guard all live here, so `plan.rs` keeps its contract: the core never
//! decides anything that needs the slave's account. It must never place a volume outside the
//! slave broker's limits or above the risk budget (except the desk's explicit `trade_min`),
//! never guess a fact that was not reported (`ACCOUNT_FACTS_UNKNOWN`), and never apply to a
//! modify or close.

use super::deviation::{check as deviation_check, DeviationGuard};
use super::filters::{admit_exposure, Filters};
use super::reason::SkipReason;
use super::sizing::{size, AboveMax, BelowMin, SizingFacts, SizingMode, SizingPolicy};
use super::subscription::{CopyPolicy, SizingKind};
use super::volume::{SymbolLimits, Volume};
use crate::ids::Symbol;
use crate::msg::{ExecTerms, MasterFacts, Side, SlaveSizing, TradeIntent};

/// The open's terms for the slave EA under `policy`. Ratio modes carry the master's balance or
/// equity as the master reported it with this intent (0 = not reported: the slave refuses
/// `ACCOUNT_FACTS_UNKNOWN` rather than guess), and the per-symbol multiplier of the master's
/// symbol folded into the factor.
pub fn exec_terms(policy: &CopyPolicy, intent: &TradeIntent) -> ExecTerms {
    terms_with_facts(policy, &intent.symbol, &intent.origin)
}

/// [`exec_terms`] from the master's symbol and reported facts alone: what an open read back
/// from the journal is planned with (`core.delivery.T28`), the same as before the crash.
pub fn terms_with_facts(
    policy: &CopyPolicy,
    master_symbol: &Symbol,
    origin: &MasterFacts,
) -> ExecTerms {
    let mut t = guard_terms(policy);
    let per_symbol = policy.sizing.symbol_multiplier(master_symbol);
    match t.sizing {
        SlaveSizing::BalanceRatio => {
            t.sizing_value *= per_symbol;
            t.master_amount = origin.balance;
        }
        SlaveSizing::EquityRatio => {
            t.sizing_value *= per_symbol;
            t.master_amount = origin.equity;
        }
        // The risk budget is the cap: per-symbol multipliers do not apply (sizing.rs).
        SlaveSizing::RiskPercent | SlaveSizing::Final => {}
    }
    t
}

/// The legs the slave EA places for an open the terms admitted with `volume` (SPEC.md §5.2
/// "Split"): one order unless the terms allow a split and the volume is above the per-order
/// maximum — a core-sized volume's maximum and minimum are the terms' own (the limits the
/// core sized with), a slave-sized one's the slave's reported symbol limits (`symbol`; none
/// reported: one order, though a slave-sized open is never admitted without them). The legs
/// sum to `volume` (or less, never more, past [`super::sizing::MAX_SPLIT_LEGS`]).
pub fn open_legs(terms: &ExecTerms, volume: Volume, symbol: Option<&SymbolFacts>) -> Vec<Volume> {
    if terms.split_max_lots <= 0.0 {
        return vec![volume];
    }
    let limits = if terms.sizing == SlaveSizing::Final {
        match (
            Volume::from_lots(terms.split_min_lots),
            Volume::from_lots(terms.split_max_lots),
        ) {
            (Some(min), Some(max)) if !min.is_zero() && min <= max => SymbolLimits {
                min,
                max,
                ..SymbolLimits::fx()
            },
            _ => return vec![volume],
        }
    } else {
        match symbol {
            Some(s) => s.limits,
            None => return vec![volume],
        }
    };
    super::sizing::split(volume, &limits)
}

/// The terms of a trigger's market fallback (the slave's pending order had not filled): the
/// deviation guard only — the volume is the slave's own pending order's, sized when it was
/// placed, and the order is already counted in the exposure limits.
pub fn trigger_terms(policy: &CopyPolicy) -> ExecTerms {
    ExecTerms {
        max_deviation_points: policy.deviation.max_points,
        ..ExecTerms::default()
    }
}

/// The terms of an open read back from the journal whose subscription is gone
/// (`core.delivery.T28`): ratio sizing against a master amount nobody reported, so the slave
/// EA refuses it `ACCOUNT_FACTS_UNKNOWN` (unless it executed it before the crash) rather than
/// place the master's lots for a subscription that no longer exists.
pub fn unsubscribed_terms() -> ExecTerms {
    ExecTerms {
        sizing: SlaveSizing::BalanceRatio,
        sizing_value: 1.0,
        ..ExecTerms::default()
    }
}

/// The terms `policy` gives any open, before the intent's own facts (master amount,
/// per-symbol factor) are added.
pub fn guard_terms(policy: &CopyPolicy) -> ExecTerms {
    let v = &policy.sizing_values;
    let (sizing, sizing_value) = match policy.sizing_kind {
        SizingKind::Multiplier | SizingKind::FixedLots => (SlaveSizing::Final, 0.0),
        SizingKind::BalanceRatio => (SlaveSizing::BalanceRatio, v.ratio),
        SizingKind::EquityRatio => (SlaveSizing::EquityRatio, v.ratio),
        SizingKind::RiskPercent => (SlaveSizing::RiskPercent, v.risk_percent),
    };
    let slave_sized = sizing != SlaveSizing::Final;
    ExecTerms {
        sizing,
        sizing_value,
        master_amount: 0.0,
        master_contract_size: if slave_sized && policy.sizing.align_contract_size {
            policy.limits.contract_size
        } else {
            0.0
        },
        trade_min: policy.sizing.below_min == BelowMin::TradeMin,
        check_free_margin: policy.sizing.check_free_margin,
        max_deviation_points: policy.deviation.max_points,
        deviation_window_ms: policy.deviation.retry_window_ms,
        max_open_positions: policy.filters.max_open_positions,
        max_total_lots: policy.filters.max_total_lots.lots(),
        split_max_lots: if policy.sizing.above_max == AboveMax::Split {
            policy.limits.max.lots()
        } else {
            0.0
        },
        split_min_lots: if policy.sizing.above_max == AboveMax::Split {
            policy.limits.min.lots()
        } else {
            0.0
        },
    }
}

/// The slave's account as its terminal reports it (`AccountInfoDouble`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AccountFacts {
    pub balance: f64,
    pub equity: f64,
    pub free_margin: f64,
}

/// One of the slave broker's symbols as its terminal reports it (`SymbolInfoDouble`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SymbolFacts {
    pub limits: SymbolLimits,
    /// Margin one lot needs (0 = unknown: the free-margin check refuses rather than guess).
    pub margin_per_lot: f64,
}

/// Everything the slave EA knows when it decides an open.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlaveView {
    pub account: Option<AccountFacts>,
    pub symbol: Option<SymbolFacts>,
    /// (bid, ask) now.
    pub quote: Option<(f64, f64)>,
    /// Positions the slave holds or is opening (placed, result not yet recorded).
    pub open_positions: u32,
    pub open_volume: Volume,
}

/// The open as the command states it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenOrder {
    pub side: Side,
    /// The core's final volume, or the master's lots when the slave sizes.
    pub volume: f64,
    /// The master's fill: risk distances and the deviation are measured from it.
    pub price: f64,
    pub stop_loss: f64,
}

/// What the slave EA does with an open now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpenDecision {
    /// Place this volume.
    Place(Volume),
    /// The price is beyond the deviation: look again when the price moves, until the window
    /// closes (`may_wait` false: refuse now).
    WaitForPrice,
    /// Never place it: the reason is final and reported.
    Refuse(SkipReason),
}

/// The slave's decision about one open. `may_wait`: the deviation window is still open.
pub fn decide_open(
    terms: &ExecTerms,
    order: &OpenOrder,
    view: &SlaveView,
    may_wait: bool,
) -> OpenDecision {
    match decide(terms, order, view, may_wait) {
        Ok(v) => OpenDecision::Place(v),
        Err(None) => OpenDecision::WaitForPrice,
        Err(Some(r)) => OpenDecision::Refuse(r),
    }
}

/// A reported amount: zero (or less, or NaN) is "not reported".
fn known(x: f64) -> bool {
    x > 0.0
}

fn decide(
    terms: &ExecTerms,
    order: &OpenOrder,
    view: &SlaveView,
    may_wait: bool,
) -> Result<Volume, Option<SkipReason>> {
    let unknown = Some(SkipReason::AccountFactsUnknown);
    let exposure = Filters {
        max_open_positions: terms.max_open_positions,
        max_total_lots: Volume::from_lots(terms.max_total_lots).unwrap_or_default(),
        ..Filters::default()
    };
    // Count first: a slave at its limit refuses whatever the volume would be.
    admit_exposure(
        &exposure,
        view.open_positions,
        view.open_volume,
        Volume::ZERO,
    )
    .map_err(Some)?;
    let volume = match terms.sizing {
        SlaveSizing::Final => {
            let v = Volume::from_lots(order.volume).ok_or(unknown)?;
            if terms.check_free_margin {
                let (Some(a), Some(s)) = (view.account, view.symbol) else {
                    return Err(unknown);
                };
                if !known(s.margin_per_lot) {
                    return Err(unknown);
                }
                if v.lots() * s.margin_per_lot > a.free_margin {
                    return Err(Some(SkipReason::InsufficientMargin));
                }
            }
            v
        }
        mode => {
            let (Some(a), Some(s)) = (view.account, view.symbol) else {
                return Err(unknown);
            };
            if terms.check_free_margin && !known(s.margin_per_lot) {
                return Err(unknown);
            }
            let mode = match mode {
                SlaveSizing::BalanceRatio | SlaveSizing::EquityRatio
                    if !known(terms.master_amount) =>
                {
                    return Err(unknown)
                }
                SlaveSizing::BalanceRatio => SizingMode::BalanceRatio(terms.sizing_value),
                SlaveSizing::EquityRatio => SizingMode::EquityRatio(terms.sizing_value),
                _ => SizingMode::RiskPercent(terms.sizing_value),
            };
            let policy = SizingPolicy {
                mode,
                align_contract_size: terms.master_contract_size > 0.0,
                below_min: if terms.trade_min {
                    BelowMin::TradeMin
                } else {
                    BelowMin::Skip
                },
                above_max: if terms.split_max_lots > 0.0 {
                    AboveMax::Split
                } else {
                    AboveMax::Cap
                },
                check_free_margin: terms.check_free_margin,
                ..SizingPolicy::default()
            };
            let facts = SizingFacts {
                // Per-symbol factors are folded into `sizing_value` by the core.
                symbol: Symbol::new(""),
                master_volume: Volume::from_lots(order.volume).ok_or(unknown)?,
                master_contract_size: terms.master_contract_size,
                master_balance: terms.master_amount,
                master_equity: terms.master_amount,
                slave_balance: a.balance,
                slave_equity: a.equity,
                slave_free_margin: a.free_margin,
                margin_per_lot: s.margin_per_lot,
                entry: order.price,
                stop_loss: order.stop_loss,
                limits: s.limits,
            };
            let sized = size(&policy, &facts).map_err(Some)?;
            sized.total()
        }
    };
    admit_exposure(&exposure, 0, view.open_volume, volume).map_err(Some)?;
    if terms.max_deviation_points > 0 {
        let (Some((bid, ask)), Some(s)) = (view.quote, view.symbol) else {
            return Err(unknown);
        };
        let guard = DeviationGuard {
            max_points: terms.max_deviation_points,
            retry_window_ms: terms.deviation_window_ms,
        };
        if let Err(r) = deviation_check(guard, order.side, order.price, bid, ask, s.limits.point) {
            return Err(if may_wait { None } else { Some(r) });
        }
    }
    Ok(volume)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lots(x: f64) -> Volume {
        Volume::from_lots(x).unwrap()
    }

    fn view() -> SlaveView {
        SlaveView {
            account: Some(AccountFacts {
                balance: 5_000.0,
                equity: 4_000.0,
                free_margin: 3_000.0,
            }),
            symbol: Some(SymbolFacts {
                limits: SymbolLimits::fx(),
                margin_per_lot: 1_000.0,
            }),
            quote: Some((1.09990, 1.10010)),
            open_positions: 0,
            open_volume: Volume::ZERO,
        }
    }

    fn order(volume: f64) -> OpenOrder {
        OpenOrder {
            side: Side::Buy,
            volume,
            price: 1.10000,
            stop_loss: 1.09500,
        }
    }

    #[test]
    fn slave_sizes_from_its_own_account() {
        let mut t = ExecTerms {
            sizing: SlaveSizing::BalanceRatio,
            sizing_value: 1.0,
            master_amount: 10_000.0,
            ..ExecTerms::default()
        };
        assert_eq!(
            decide_open(&t, &order(0.7), &view(), false),
            OpenDecision::Place(lots(0.35))
        );
        t.master_amount = 0.0;
        assert_eq!(
            decide_open(&t, &order(0.7), &view(), false),
            OpenDecision::Refuse(SkipReason::AccountFactsUnknown)
        );
        let risk = ExecTerms {
            sizing: SlaveSizing::RiskPercent,
            sizing_value: 1.0,
            ..ExecTerms::default()
        };
        assert_eq!(
            decide_open(&risk, &order(5.0), &view(), false),
            OpenDecision::Place(lots(0.08))
        );
        let mut blind = view();
        blind.symbol = None;
        assert_eq!(
            decide_open(&risk, &order(5.0), &blind, false),
            OpenDecision::Refuse(SkipReason::AccountFactsUnknown)
        );
    }

    #[test]
    fn final_volume_guards() {
        let mut t = ExecTerms {
            check_free_margin: true,
            ..ExecTerms::default()
        };
        assert_eq!(
            decide_open(&t, &order(3.0), &view(), false),
            OpenDecision::Place(lots(3.0))
        );
        assert_eq!(
            decide_open(&t, &order(3.01), &view(), false),
            OpenDecision::Refuse(SkipReason::InsufficientMargin)
        );
        t.check_free_margin = false;
        t.max_open_positions = 2;
        t.max_total_lots = 1.0;
        let mut v = view();
        v.open_positions = 2;
        assert_eq!(
            decide_open(&t, &order(0.1), &v, false),
            OpenDecision::Refuse(SkipReason::MaxOpenPositions)
        );
        v.open_positions = 1;
        v.open_volume = lots(0.95);
        assert_eq!(
            decide_open(&t, &order(0.1), &v, false),
            OpenDecision::Refuse(SkipReason::MaxTotalLots)
        );
        assert_eq!(
            decide_open(&t, &order(0.05), &v, false),
            OpenDecision::Place(lots(0.05))
        );
    }

    #[test]
    fn deviation_waits_inside_the_window_then_refuses() {
        let t = ExecTerms {
            max_deviation_points: 5,
            deviation_window_ms: 500,
            ..ExecTerms::default()
        };
        // ask 1.10010 is 10 points above the master's 1.10000.
        assert_eq!(
            decide_open(&t, &order(1.0), &view(), true),
            OpenDecision::WaitForPrice
        );
        assert_eq!(
            decide_open(&t, &order(1.0), &view(), false),
            OpenDecision::Refuse(SkipReason::PriceDeviation)
        );
        let mut back = view();
        back.quote = Some((1.09990, 1.10004));
        assert_eq!(
            decide_open(&t, &order(1.0), &back, true),
            OpenDecision::Place(lots(1.0))
        );
    }
}
