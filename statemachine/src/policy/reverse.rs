//! Reverse copying: the slave takes the opposite side of the master's trade.
//!
//! This module owns the mirror of a trade — buy ↔ sell, and the master's stop-loss becomes the
//! slave's take-profit and vice versa, because the price that stops a buy out is the price a
//! sell takes profit at. It must never touch volumes or symbols.

use crate::msg::Side;

pub fn opposite(side: Side) -> Side {
    match side {
        Side::Buy => Side::Sell,
        Side::Sell => Side::Buy,
    }
}

/// The slave's side and (stop_loss, take_profit) prices for a master trade; 0 means none.
pub fn mirror(reverse: bool, side: Side, stop_loss: f64, take_profit: f64) -> (Side, f64, f64) {
    if reverse {
        (opposite(side), take_profit, stop_loss)
    } else {
        (side, stop_loss, take_profit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buy_becomes_sell_with_levels_swapped() {
        assert_eq!(
            mirror(true, Side::Buy, 1.09, 1.12),
            (Side::Sell, 1.12, 1.09)
        );
        assert_eq!(
            mirror(false, Side::Buy, 1.09, 1.12),
            (Side::Buy, 1.09, 1.12)
        );
        // Mirroring twice is the identity.
        let (s, sl, tp) = mirror(true, Side::Sell, 1.2, 0.0);
        assert_eq!(mirror(true, s, sl, tp), (Side::Sell, 1.2, 0.0));
    }
}
