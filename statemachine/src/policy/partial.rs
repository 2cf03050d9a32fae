//! Partial closes: the slave closes the same *fraction* of its own position.
//!
//! This module owns the arithmetic of a partial close in integer [`Volume`] units: the
//! fraction is the master's closed volume over the master's open volume *before* this close,
//! applied to the slave's open volume now, rounded down to the slave's step. Because each
//! partial is a fraction of what is left on both sides, a partial skipped for being below the
//! step is caught up by the next one. It must never leave dust (a remainder below the slave's
//! minimum is closed with the partial) and never close more than the slave holds; a final
//! close closes exactly the remainder, whatever earlier partials did.

use super::volume::{SymbolLimits, Volume};
use crate::msg::CloseFraction;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseDecision {
    /// Close this much; the rest stays open and is tradable (≥ min).
    Partial(Volume),
    /// Close the whole position, exactly what remains.
    All,
    /// Nothing to close now: the fraction is below one step (or below the minimum). Not a
    /// failure — the master's later closes carry it.
    Keep,
}

impl CloseDecision {
    /// The volume this decision closes out of `slave_open`.
    pub fn closed(self, slave_open: Volume) -> Volume {
        match self {
            CloseDecision::Partial(v) => v.min(slave_open),
            CloseDecision::All => slave_open,
            CloseDecision::Keep => Volume::ZERO,
        }
    }
}

/// The slave's share of a master's partial close of `master_closed` out of
/// `master_open_before`, for a slave position of `slave_open`.
pub fn partial_close(
    master_open_before: Volume,
    master_closed: Volume,
    slave_open: Volume,
    limits: &SymbolLimits,
) -> CloseDecision {
    if slave_open.is_zero() || master_open_before.is_zero() || master_closed >= master_open_before {
        return CloseDecision::All;
    }
    let share = if crate::mutants::active(crate::mutants::Mutant::PartialByMasterLots) {
        master_closed
    } else {
        // u128: 10¹¹ lots × 10⁸ units squared does not fit u64.
        let exact = u128::from(slave_open.0) * u128::from(master_closed.0)
            / u128::from(master_open_before.0);
        Volume(exact as u64)
    };
    let close = if crate::mutants::active(crate::mutants::Mutant::PartialCloseRoundsUp) {
        let step = limits.step.0.max(1);
        Volume(share.0.div_ceil(step) * step)
    } else {
        limits.floor_to_step(share)
    };
    if close >= slave_open || slave_open.saturating_sub(close) < limits.min {
        return CloseDecision::All;
    }
    if close.is_zero() || close < limits.min {
        return CloseDecision::Keep;
    }
    CloseDecision::Partial(close)
}

/// How a close of `close` lots is taken from a split position's `legs` (SPEC.md §5.2
/// "Split"): per leg, what its close order takes — 0 (untouched), the whole leg, or a part on
/// the step that is itself at least the minimum and leaves at least the minimum (never dust,
/// never below zero). Whole legs are taken last-first while what is left to take stays 0 or
/// at least the minimum; the rest is taken as parts of the legs left (last-first), each part
/// leaving either nothing more to take or at least the minimum for the next. The takes sum to
/// `close` whenever one leg holds at least `close` plus the minimum (a split's full legs do,
/// for any share up to its maximum less the minimum), and often otherwise; when no orders
/// can take it exactly (legs 1.0 + 0.4 with a minimum of 0.4 cannot give 0.7) they sum to
/// less, never more: the close is rounded down like a share below the step, and the master's
/// later closes carry the rest (its final close takes every leg).
///
/// Legs need not be on the step: the slave's limits may have changed since the split (a
/// subscription's `limits/*` edited, legs left by partials under the old step). A whole leg
/// off the step would leave a rest no order on the step can take, so whole legs are first
/// taken only while the rest stays on the step; the plan that ignores the step is kept when
/// it takes more (two off-step legs can add up to an on-step close).
pub fn take_from_legs(legs: &[Volume], close: Volume, limits: &SymbolLimits) -> Vec<Volume> {
    let on_step = plan_takes(legs, close, limits, true);
    let any = plan_takes(legs, close, limits, false);
    let sum = |t: &[Volume]| t.iter().fold(Volume::ZERO, |a, v| a.saturating_add(*v));
    if sum(&any) >= sum(&on_step) {
        any
    } else {
        on_step
    }
}

/// One plan of [`take_from_legs`]; `keep_step`: a whole leg is taken in the first pass only
/// if what is left to take stays on the step.
fn plan_takes(
    legs: &[Volume],
    close: Volume,
    limits: &SymbolLimits,
    keep_step: bool,
) -> Vec<Volume> {
    let min = limits.min;
    let mut take = vec![Volume::ZERO; legs.len()];
    let mut rest = limits.floor_to_step(close);
    if rest < min {
        return take;
    }
    for i in (0..legs.len()).rev() {
        let leg = legs[i];
        if rest.is_zero() {
            break;
        }
        let left = rest.saturating_sub(leg);
        if !leg.is_zero()
            && (leg == rest
                || (leg < rest && left >= min && (!keep_step || limits.is_on_step(left))))
        {
            take[i] = leg;
            rest = rest.saturating_sub(leg);
        }
    }
    for i in (0..legs.len()).rev() {
        if rest.is_zero() {
            break;
        }
        let leg = legs[i];
        if !take[i].is_zero() {
            continue;
        }
        if leg == rest {
            take[i] = leg;
            break;
        }
        // A part leaves at least the minimum in the leg.
        let mut part = rest.min(leg.saturating_sub(min));
        let left = rest.saturating_sub(part);
        if !left.is_zero() && left < min {
            // Leave the minimum to take from the next leg instead of a remainder below it.
            part = rest.saturating_sub(min);
        }
        let part = limits.floor_to_step(part);
        if part >= min && leg.saturating_sub(part) >= min {
            take[i] = part;
            rest = rest.saturating_sub(part);
        }
    }
    // Not takeable exactly: take what valid orders can of the rest (whole legs, parts that
    // leave the minimum), last-first; the takes then sum to less, never dust.
    for i in (0..legs.len()).rev() {
        if rest < min {
            break;
        }
        let leg = legs[i];
        if !take[i].is_zero() || leg.is_zero() {
            continue;
        }
        let part = if leg <= rest {
            leg
        } else {
            limits.floor_to_step(rest.min(leg.saturating_sub(min)))
        };
        if part == leg || (part >= min && leg.saturating_sub(part) >= min) {
            take[i] = part;
            rest = rest.saturating_sub(part);
        }
    }
    take
}

/// The slave EA's decision for a `ClosePart` command, from the lots on the wire and its own
/// open volume: `None` when the inputs cannot describe a partial close (non-finite or
/// negative lots, a zero master volume, limits that are not valid), which the EA refuses as
/// malformed rather than guess.
pub fn slave_close(fraction: &CloseFraction, slave_open_lots: f64) -> Option<CloseDecision> {
    let master_before = Volume::from_lots(fraction.master_volume_before)?;
    let master_closed = Volume::from_lots(fraction.master_closed)?;
    let slave_open = Volume::from_lots(slave_open_lots)?;
    let limits = fraction_limits(fraction)?;
    if master_before.is_zero() || master_closed.is_zero() {
        return None;
    }
    Some(partial_close(
        master_before,
        master_closed,
        slave_open,
        &limits,
    ))
}

/// The slave symbol's minimum and step as [`SymbolLimits`] (the maximum does not bound a
/// close), or `None` if they are not a valid pair.
pub fn fraction_limits(fraction: &CloseFraction) -> Option<SymbolLimits> {
    let limits = SymbolLimits {
        min: Volume::from_lots(fraction.slave_min)?,
        step: Volume::from_lots(fraction.slave_step)?,
        max: Volume(u64::MAX / 2),
        ..SymbolLimits::fx()
    };
    let max = limits.floor_to_step(limits.max);
    let limits = SymbolLimits { max, ..limits };
    limits.is_valid().then_some(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lots(x: f64) -> Volume {
        Volume::from_lots(x).unwrap()
    }

    #[test]
    fn fraction_of_the_slave_position() {
        let l = SymbolLimits::fx();
        // Master closes 0.3 of 1.0; the slave holds 0.5 → closes 0.15.
        assert_eq!(
            partial_close(lots(1.0), lots(0.3), lots(0.5), &l),
            CloseDecision::Partial(lots(0.15))
        );
        // Rounded down to the step: 1/3 of 0.1 is 0.0333 → 0.03.
        assert_eq!(
            partial_close(lots(3.0), lots(1.0), lots(0.1), &l),
            CloseDecision::Partial(lots(0.03))
        );
        assert_eq!(
            partial_close(lots(1.0), lots(0.9), lots(0.05), &l),
            CloseDecision::Partial(lots(0.04))
        );
        // Would leave 0.08 with a minimum of 0.1: dust, so close all.
        let mut coarse = l;
        coarse.min = lots(0.1);
        assert_eq!(
            partial_close(lots(1.0), lots(0.5), lots(0.15), &coarse),
            CloseDecision::All
        );
        // Below one step: keep for now.
        assert_eq!(
            partial_close(lots(1.0), lots(0.1), lots(0.05), &l),
            CloseDecision::Keep
        );
        assert_eq!(
            partial_close(lots(1.0), lots(1.0), lots(0.05), &l),
            CloseDecision::All
        );
    }
}
