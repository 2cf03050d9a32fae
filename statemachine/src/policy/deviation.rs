//! The price-deviation guard: the slave does not open far from the master's fill.
//!
//! This module owns the comparison of the slave's executable price (ask for a buy, bid for a
//! sell, in the slave's direction) with the master's fill, in points. It must never refuse a
//! close or a modify: the guard is about entering at a worse price, not about leaving.

use super::reason::SkipReason;
use crate::msg::Side;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviationGuard {
    /// 0 = off.
    pub max_points: u32,
    /// How long the slave may wait for the price to come back before `PRICE_DEVIATION`.
    pub retry_window_ms: u32,
}

/// Deviation of the slave's executable price from the master's fill, in points.
pub fn deviation_points(side: Side, master_fill: f64, bid: f64, ask: f64, point: f64) -> f64 {
    let price = match side {
        Side::Buy => ask,
        Side::Sell => bid,
    };
    if point > 0.0 {
        (price - master_fill).abs() / point
    } else {
        0.0
    }
}

/// Whether the slave may open now. Reversed copies compare against the master's fill too:
/// the desk wants the mirrored entry near the master's, whichever side it is.
pub fn check(
    guard: DeviationGuard,
    side: Side,
    master_fill: f64,
    bid: f64,
    ask: f64,
    point: f64,
) -> Result<(), SkipReason> {
    if guard.max_points == 0 {
        return Ok(());
    }
    // A hair of tolerance: 1.10020 - 1.10000 is 20.000000000000018 points in f64.
    let dev = if crate::mutants::active(crate::mutants::Mutant::DeviationGuardSignFlipped) {
        let price = if side == Side::Buy { ask } else { bid };
        (master_fill - price) / point
    } else {
        deviation_points(side, master_fill, bid, ask, point)
    };
    if dev <= f64::from(guard.max_points) + 1e-6 {
        Ok(())
    } else {
        Err(SkipReason::PriceDeviation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_uses_the_side_price_and_the_limit_inclusive() {
        let g = DeviationGuard {
            max_points: 20,
            retry_window_ms: 0,
        };
        assert_eq!(
            check(g, Side::Buy, 1.10000, 1.09990, 1.10020, 0.00001),
            Ok(())
        );
        assert_eq!(
            check(g, Side::Buy, 1.10000, 1.09990, 1.10021, 0.00001),
            Err(SkipReason::PriceDeviation)
        );
        assert_eq!(check(g, Side::Sell, 1.10000, 1.09980, 1.2, 0.00001), Ok(()));
        let off = DeviationGuard {
            max_points: 0,
            retry_window_ms: 0,
        };
        assert_eq!(check(off, Side::Buy, 1.0, 2.0, 2.0, 0.00001), Ok(()));
    }
}
