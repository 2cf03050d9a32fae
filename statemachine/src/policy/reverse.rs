//! Reverse copying: the slave takes the opposite side of the master's trade.
//!
//! This module owns the mirror of a trade — buy ↔ sell, and the master's stop-loss becomes the
//! slave's take-profit and vice versa, because the price that stops a buy out is the price a
//! sell takes profit at. It must never touch volumes or symbols.
//!
//! A reversed **pending order** keeps the price it rests at and the direction the market must
//! move to reach it, and takes the opposite side: a buy limit (resting below the market, filled
//! when the price falls to it) becomes a sell stop (also below, also filled when the price falls
//! to it), a buy stop (above) a sell limit (above). So limit ↔ stop swap with the side, and the
//! mirrored order fills at the same moment as the master's — [`mirror_pending`].

use crate::msg::{IntentKind, PendingType, Side};

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

/// The slave's kind of a master's pending placement: reversal swaps limit ↔ stop (with the
/// side, by [`mirror`]); every other kind is unchanged.
pub fn mirror_pending(reverse: bool, kind: IntentKind) -> IntentKind {
    match (reverse, kind) {
        (true, IntentKind::PlaceLimit) => IntentKind::PlaceStop,
        (true, IntentKind::PlaceStop) => IntentKind::PlaceLimit,
        (_, k) => k,
    }
}

/// Whether a pending order of this side and type rests below the market (it fills when the
/// price falls to it): a buy limit and a sell stop do; a buy stop and a sell limit rest above.
pub fn rests_below(side: Side, order_type: PendingType) -> bool {
    matches!(
        (side, order_type),
        (Side::Buy, PendingType::Limit) | (Side::Sell, PendingType::Stop)
    )
}

/// A placement kind's order type.
pub fn pending_type(kind: IntentKind) -> Option<PendingType> {
    match kind {
        IntentKind::PlaceLimit => Some(PendingType::Limit),
        IntentKind::PlaceStop => Some(PendingType::Stop),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_pendings_rest_on_the_same_side_of_the_market() {
        for kind in [IntentKind::PlaceLimit, IntentKind::PlaceStop] {
            for side in [Side::Buy, Side::Sell] {
                let (s, _, _) = mirror(true, side, 0.0, 0.0);
                let k = mirror_pending(true, kind);
                assert_ne!(k, kind);
                assert_eq!(mirror_pending(true, k), kind);
                let (Some(t), Some(mt)) = (pending_type(kind), pending_type(k)) else {
                    panic!("placements have a type");
                };
                assert_eq!(rests_below(side, t), rests_below(s, mt));
            }
        }
        assert_eq!(
            mirror_pending(true, IntentKind::PendingTrigger),
            IntentKind::PendingTrigger
        );
        assert_eq!(
            mirror_pending(false, IntentKind::PlaceLimit),
            IntentKind::PlaceLimit
        );
    }

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
