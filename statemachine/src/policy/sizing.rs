//! Volume sizing: how many lots a slave opens for a master's open.
//!
//! This module owns the sizing modes (fixed lots, multiplier, balance or equity ratio, risk %
//! from the stop-loss distance), per-symbol multipliers, contract-size alignment, rounding to
//! the slave broker's step and the below-minimum / above-maximum / free-margin choices. It must
//! never return a volume the broker would refuse (off-step, below min, above max), never exceed
//! the risk budget except by the explicit `BelowMin::TradeMin` choice, and never guess a
//! number it was not given (a missing stop-loss under risk sizing is `NO_STOP_LOSS`).

use std::collections::BTreeMap;

use super::reason::SkipReason;
use super::volume::{SymbolLimits, Volume, UNITS_PER_LOT};
use crate::ids::Symbol;

/// Most orders one open is split into under `AboveMax::Split`; beyond it the rest is capped.
pub const MAX_SPLIT_LEGS: usize = 64;

/// How the slave's volume is derived.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizingMode {
    /// Always this volume.
    FixedLots(Volume),
    /// Master volume × factor.
    Multiplier(f64),
    /// Master volume × slave balance / master balance × factor.
    BalanceRatio(f64),
    /// Master volume × slave equity / master equity × factor.
    EquityRatio(f64),
    /// Risk this percent of the slave's equity between entry and stop-loss.
    RiskPercent(f64),
}

/// What to do when the sized volume is below the slave broker's minimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BelowMin {
    /// Do not open: `VOLUME_BELOW_MIN`.
    Skip,
    /// Open the broker's minimum (may exceed a risk budget: the desk chose so).
    TradeMin,
}

/// What to do when the sized volume is above the slave broker's maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AboveMax {
    /// Open the maximum.
    Cap,
    /// Open several orders, each within the limits, summing to the sized volume.
    Split,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SizingPolicy {
    pub mode: SizingMode,
    /// Master symbol → extra factor (not applied to risk sizing, whose budget is the cap).
    pub symbol_multipliers: BTreeMap<Symbol, f64>,
    /// Scale by master contract size / slave contract size, when the brokers' lots differ.
    pub align_contract_size: bool,
    pub below_min: BelowMin,
    pub above_max: AboveMax,
    /// Refuse an open whose margin exceeds the slave's free margin (`INSUFFICIENT_MARGIN`).
    pub check_free_margin: bool,
}

impl SizingPolicy {
    /// The extra factor for master symbol `symbol` (1 when none is configured).
    pub fn symbol_multiplier(&self, symbol: &Symbol) -> f64 {
        self.symbol_multipliers.get(symbol).copied().unwrap_or(1.0)
    }
}

impl Default for SizingPolicy {
    fn default() -> Self {
        SizingPolicy {
            mode: SizingMode::Multiplier(1.0),
            symbol_multipliers: BTreeMap::new(),
            align_contract_size: false,
            below_min: BelowMin::Skip,
            above_max: AboveMax::Cap,
            check_free_margin: false,
        }
    }
}

/// Everything sizing reads. The slave side comes from the slave EA (account info and symbol
/// info); the master side from the master's intent and account info.
#[derive(Clone, Debug, PartialEq)]
pub struct SizingFacts {
    /// The master's symbol name (per-symbol multipliers are keyed by it).
    pub symbol: Symbol,
    pub master_volume: Volume,
    pub master_contract_size: f64,
    pub master_balance: f64,
    pub master_equity: f64,
    pub slave_balance: f64,
    pub slave_equity: f64,
    pub slave_free_margin: f64,
    /// Margin one lot needs on the slave (0 = unknown: the margin check cannot refuse).
    pub margin_per_lot: f64,
    /// Entry price and stop-loss in the slave's direction (stop-loss 0 = none).
    pub entry: f64,
    pub stop_loss: f64,
    pub limits: SymbolLimits,
}

/// One open's orders: one leg, or several under `AboveMax::Split`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sized {
    pub legs: Vec<Volume>,
}

impl Sized {
    pub fn total(&self) -> Volume {
        Volume(self.legs.iter().map(|v| v.0).sum())
    }
}

/// Account-currency loss of `volume` if the price moves from `entry` to `stop_loss`.
pub fn risk_of(volume: Volume, entry: f64, stop_loss: f64, limits: &SymbolLimits) -> f64 {
    let ticks = (entry - stop_loss).abs() / limits.tick_size;
    volume.lots() * ticks * limits.tick_value
}

/// The risk budget of `RiskPercent(pct)` for these facts.
pub fn risk_budget(pct: f64, facts: &SizingFacts) -> f64 {
    facts.slave_equity.max(0.0) * pct / 100.0
}

/// The slave's order(s) for a master's open, or why there are none.
pub fn size(policy: &SizingPolicy, facts: &SizingFacts) -> Result<Sized, SkipReason> {
    let l = &facts.limits;
    let master_lots = facts.master_volume.lots();
    let per_symbol = policy.symbol_multiplier(&facts.symbol);
    let contract = if policy.align_contract_size && l.contract_size > 0.0 {
        facts.master_contract_size / l.contract_size
    } else {
        1.0
    };
    let ratio = |num: f64, den: f64| if den > 0.0 { num.max(0.0) / den } else { 0.0 };
    let raw_lots = match policy.mode {
        SizingMode::FixedLots(v) => v.lots() * per_symbol,
        SizingMode::Multiplier(m) => master_lots * m * per_symbol * contract,
        SizingMode::BalanceRatio(m) => {
            master_lots
                * ratio(facts.slave_balance, facts.master_balance)
                * m
                * per_symbol
                * contract
        }
        SizingMode::EquityRatio(m) => {
            master_lots * ratio(facts.slave_equity, facts.master_equity) * m * per_symbol * contract
        }
        SizingMode::RiskPercent(pct) => {
            let per_lot = risk_of(Volume(UNITS_PER_LOT), facts.entry, facts.stop_loss, l);
            if facts.stop_loss <= 0.0 || !(per_lot.is_finite() && per_lot > 0.0) {
                return Err(SkipReason::NoStopLoss);
            }
            risk_budget(pct, facts) / per_lot
        }
    };
    // Round to the nearest unit first (0.7 × 3 is 2.0999999999999996 in f64, which is 2.10
    // lots to a desk), then down to the step, so rounding never adds volume.
    let units = Volume::from_lots(raw_lots).unwrap_or(Volume::ZERO);
    let mut v = l.floor_to_step(units);
    if matches!(policy.mode, SizingMode::RiskPercent(_))
        && v != units
        && crate::mutants::active(crate::mutants::Mutant::RiskSizingIgnoresBudget)
    {
        v = v.saturating_add(l.step);
    }
    if v < l.min {
        match policy.below_min {
            BelowMin::TradeMin if !units.is_zero() => v = l.min,
            _ => return Err(SkipReason::VolumeBelowMin),
        }
    }
    let legs = if v > l.max {
        match policy.above_max {
            AboveMax::Cap => vec![l.max],
            AboveMax::Split => split(v, l),
        }
    } else {
        vec![v]
    };
    let sized = Sized { legs };
    if policy.check_free_margin
        && facts.margin_per_lot > 0.0
        && sized.total().lots() * facts.margin_per_lot > facts.slave_free_margin
    {
        return Err(SkipReason::InsufficientMargin);
    }
    Ok(sized)
}

/// `v` (on the step, above max) as legs each within the limits. The legs sum to `v` unless
/// the limits are so narrow (max < 2 × min) that the remainder cannot be placed, or `v` needs
/// more than [`MAX_SPLIT_LEGS`] orders; then they sum to less, never more. Only `min` and
/// `max` are read. A `v` at or below the maximum is one leg. Idempotent on its own total:
/// `split(total(split(v)))` is `split(v)`, so the slave EA may split again the total that
/// [`size`] returned.
pub fn split(v: Volume, l: &SymbolLimits) -> Vec<Volume> {
    if v <= l.max || l.max.is_zero() {
        return vec![v];
    }
    let full = (v.0 / l.max.0) as usize;
    let rem = Volume(v.0 % l.max.0);
    if full >= MAX_SPLIT_LEGS {
        return vec![l.max; MAX_SPLIT_LEGS];
    }
    let mut legs = vec![l.max; full];
    if rem.is_zero() {
        return legs;
    }
    if rem >= l.min {
        legs.push(rem);
        return legs;
    }
    // A remainder below the minimum: take it and one minimum from the last full leg, which
    // stays on the step because max, min and rem all are.
    let a = Volume(l.max.0 + rem.0 - l.min.0);
    if a >= l.min && legs.len() < MAX_SPLIT_LEGS {
        legs.pop();
        legs.push(a);
        legs.push(l.min);
    }
    legs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lots(x: f64) -> Volume {
        Volume::from_lots(x).unwrap()
    }

    fn facts(master: f64) -> SizingFacts {
        SizingFacts {
            symbol: Symbol::new("EURUSD"),
            master_volume: lots(master),
            master_contract_size: 100_000.0,
            master_balance: 10_000.0,
            master_equity: 10_000.0,
            slave_balance: 5_000.0,
            slave_equity: 4_000.0,
            slave_free_margin: 3_000.0,
            margin_per_lot: 1_000.0,
            entry: 1.10000,
            stop_loss: 1.09500,
            limits: SymbolLimits::fx(),
        }
    }

    fn policy(mode: SizingMode) -> SizingPolicy {
        SizingPolicy {
            mode,
            ..SizingPolicy::default()
        }
    }

    #[test]
    fn modes() {
        let f = facts(0.7);
        assert_eq!(
            size(&policy(SizingMode::Multiplier(3.0)), &f).unwrap().legs,
            vec![lots(2.1)]
        );
        assert_eq!(
            size(&policy(SizingMode::FixedLots(lots(0.25))), &f)
                .unwrap()
                .legs,
            vec![lots(0.25)]
        );
        assert_eq!(
            size(&policy(SizingMode::BalanceRatio(1.0)), &f)
                .unwrap()
                .legs,
            vec![lots(0.35)]
        );
        assert_eq!(
            size(&policy(SizingMode::EquityRatio(1.0)), &f)
                .unwrap()
                .legs,
            vec![lots(0.28)]
        );
        // 1% of 4000 = 40; 500 points × 1.0 per tick per lot = 500 per lot → 0.08 lots.
        assert_eq!(
            size(&policy(SizingMode::RiskPercent(1.0)), &f)
                .unwrap()
                .legs,
            vec![lots(0.08)]
        );
        let mut no_sl = f.clone();
        no_sl.stop_loss = 0.0;
        assert_eq!(
            size(&policy(SizingMode::RiskPercent(1.0)), &no_sl),
            Err(SkipReason::NoStopLoss)
        );
    }

    #[test]
    fn per_symbol_and_contract_alignment() {
        let mut p = policy(SizingMode::Multiplier(1.0));
        p.symbol_multipliers.insert(Symbol::new("EURUSD"), 2.0);
        p.align_contract_size = true;
        let mut f = facts(0.5);
        f.limits.contract_size = 10_000.0; // a mini-lot broker: 10× the lots for the same exposure
        assert_eq!(size(&p, &f).unwrap().legs, vec![lots(10.0)]);
    }

    #[test]
    fn below_min_and_above_max_and_margin() {
        let f = facts(0.001);
        let mut p = policy(SizingMode::Multiplier(1.0));
        assert_eq!(size(&p, &f), Err(SkipReason::VolumeBelowMin));
        p.below_min = BelowMin::TradeMin;
        assert_eq!(size(&p, &f).unwrap().legs, vec![lots(0.01)]);

        let big = facts(250.005);
        let mut p = policy(SizingMode::Multiplier(1.0));
        assert_eq!(size(&p, &big).unwrap().legs, vec![lots(100.0)]);
        p.above_max = AboveMax::Split;
        assert_eq!(
            size(&p, &big).unwrap().legs,
            vec![lots(100.0), lots(100.0), lots(50.0)]
        );
        let odd = facts(200.005);
        assert_eq!(size(&p, &odd).unwrap().legs, vec![lots(100.0), lots(100.0)]);
        let tail = facts(100.005);
        assert_eq!(size(&p, &tail).unwrap().legs, vec![lots(100.0)]);

        let mut p = policy(SizingMode::Multiplier(1.0));
        p.check_free_margin = true;
        assert_eq!(size(&p, &facts(3.0)).unwrap().total(), lots(3.0));
        assert_eq!(size(&p, &facts(3.01)), Err(SkipReason::InsufficientMargin));
    }

    #[test]
    fn split_remainder_below_min_is_rebalanced() {
        let mut l = SymbolLimits::fx();
        l.min = lots(1.0);
        l.max = lots(10.0);
        assert_eq!(
            split(lots(20.5), &l),
            vec![lots(10.0), lots(9.5), lots(1.0)]
        );
    }
}
